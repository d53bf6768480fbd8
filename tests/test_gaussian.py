"""PMRF against closed-form answers (theory/): the Gaussian formulas pinned to the issue's digits and
checked against Monte Carlo, the Euler error of the chosen K, and the whole experiment (--quick) trained
by the project's own PMRF code, which must land on the theory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import FLOW_METHODS, load_program

from lightning_models.pmrf import METHODS
from theory.gaussian import (
    ExactRectifiedFlow,
    LinearGaussianProblem,
    distortion_perception_curve,
    gaussian_w2_squared,
    parse_matrix,
)
from theory.gaussian_experiment import QUICK, ExperimentSettings, check_targets

PRIOR, OPERATOR = parse_matrix("1,.8;.8,1"), parse_matrix("1,0;0,.2")


@pytest.fixture(scope="module")
def problem() -> LinearGaussianProblem:
    return LinearGaussianProblem(PRIOR, OPERATOR, 0.5)


def test_the_closed_forms_give_the_issues_table(problem):
    assert problem.mmse == pytest.approx(0.648857, abs=5e-7)
    assert 2 * problem.mmse == pytest.approx(1.297714, abs=5e-7)
    assert problem.w2_squared_posterior_mean == pytest.approx(0.162075, abs=5e-7)
    assert problem.optimal_perfect_perception_mse == pytest.approx(0.810932, abs=5e-7)
    for sigma_s, mse in ((0.1, 0.902115), (0.025, 0.872081)):
        flow = ExactRectifiedFlow(problem, sigma_s)
        assert flow.mse(flow.transition()) == pytest.approx(mse, abs=5e-7)


def test_the_posterior_mean_and_mmse_match_monte_carlo(problem):
    x, y = problem.sample(400_000, torch.Generator().manual_seed(0))
    x, y = x.double().numpy(), y.double().numpy()
    K, *_ = np.linalg.lstsq(y, x, rcond=None)  # the best linear estimator is the posterior mean here
    np.testing.assert_allclose(K.T, problem.posterior_mean_matrix, atol=0.01)
    residual = ((x - y @ problem.posterior_mean_matrix.T) ** 2).sum(axis=1).mean()
    assert residual == pytest.approx(problem.mmse, rel=0.01)


def test_w2_between_gaussians():
    a = np.array([[2.0, 0.3], [0.3, 0.5]])
    assert gaussian_w2_squared(a, a) == pytest.approx(0, abs=1e-12)
    # 1-D and commuting covariances: Σ (√a_i − √b_i)², plus the squared distance of the means
    assert gaussian_w2_squared(np.diag([4.0, 1.0]), np.diag([1.0, 9.0])) == pytest.approx(1 + 4)
    assert gaussian_w2_squared(np.eye(2), np.eye(2), [1.0, 0.0], [0.0, 2.0]) == pytest.approx(5)
    # symmetric in its arguments, and a rotation costs what the formula says for a 2-D rank-one pair
    b = np.array([[1.0, -0.2], [-0.2, 0.8]])
    assert gaussian_w2_squared(a, b) == pytest.approx(gaussian_w2_squared(b, a), rel=1e-9)
    u, v = np.outer([1, 0], [1, 0]), np.outer([0, 1], [0, 1])
    assert gaussian_w2_squared(u, v) == pytest.approx(2.0)  # N(0, e1e1ᵀ) to N(0, e2e2ᵀ): E‖(a, −a)‖² = 2


def test_the_exact_flow_is_the_regression_of_x_minus_z0_on_x_t(problem):
    """M(t) from the covariances equals a least-squares fit of X − Z0 on X_t over samples."""
    flow = ExactRectifiedFlow(problem, 0.1)
    gen = torch.Generator().manual_seed(1)
    x, y = problem.sample(300_000, gen)
    z0 = y.double().numpy() @ problem.posterior_mean_matrix.T + 0.1 * torch.randn(x.shape, generator=gen).double().numpy()
    x = x.double().numpy()
    for t in (0.0, 0.3, 0.8):
        x_t = t * x + (1 - t) * z0
        fitted, *_ = np.linalg.lstsq(x_t, x - z0, rcond=None)
        np.testing.assert_allclose(fitted.T, flow.velocity_matrix(t), atol=0.02 + 0.02 * np.abs(flow.velocity_matrix(t)).max())


def test_the_exact_flow_transports_its_source_onto_the_prior(problem):
    for sigma_s in (0.1, 0.025):
        flow = ExactRectifiedFlow(problem, sigma_s)
        phi = flow.transition()
        assert gaussian_w2_squared(flow.output_cov(phi), problem.prior_cov) < 1e-9  # marginals are preserved
        assert flow.mse(phi) > problem.optimal_perfect_perception_mse  # and it is not the optimal transport


@pytest.mark.parametrize("sigma_s", [0.1, 0.025])
def test_the_euler_error_at_the_chosen_k_is_below_half_a_percent(problem, sigma_s):
    flow = ExactRectifiedFlow(problem, sigma_s)
    exact = flow.mse(flow.transition())
    k = ExperimentSettings.num_flow_steps
    error = abs(flow.mse(flow.transition(k)) - exact) / exact
    assert error < 0.005, error  # 0.36 % (σ_s = 0.1), 0.40 % (σ_s = 0.025)
    # Euler is first order: twice the steps, about half the error
    coarse = abs(flow.mse(flow.transition(k // 2)) - exact) / exact
    assert coarse / error == pytest.approx(2, rel=0.1)


def test_the_knob_follows_the_orthogonality_identity_in_closed_form(problem):
    flow = ExactRectifiedFlow(problem, 0.1)
    phi = flow.transition()
    mse0 = flow.mse(phi)
    w2 = math.sqrt(problem.w2_squared_posterior_mean)
    for w in (0.0, 0.25, 0.5, 0.75, 1.0):
        mse, cov = flow.with_fidelity_weight(phi, w)
        assert mse == pytest.approx(problem.mmse + (1 - w) ** 2 * (mse0 - problem.mmse), rel=1e-9)
        perception = math.sqrt(gaussian_w2_squared(cov, problem.prior_cov))
        assert mse >= distortion_perception_curve(problem.mmse, w2, perception) - 1e-9  # never below the bound
    assert flow.with_fidelity_weight(phi, 1.0)[0] == pytest.approx(problem.mmse, rel=1e-12)


def test_the_curve_runs_from_mmse_plus_w2_squared_to_mmse(problem):
    w2 = math.sqrt(problem.w2_squared_posterior_mean)
    curve = distortion_perception_curve(problem.mmse, w2, [0.0, w2 / 2, w2, 2 * w2])
    np.testing.assert_allclose(curve, [problem.optimal_perfect_perception_mse, problem.mmse + w2**2 / 4,
                                       problem.mmse, problem.mmse])


def test_bad_problems_are_refused_in_one_line():
    for text in ("1,2;3", "a,b", "1,nan"):
        with pytest.raises(ValueError, match="matrix|same number|finite"):
            parse_matrix(text)
    for prior, operator, message in (
        (np.array([[1.0, 2.0], [2.0, 1.0]]), np.eye(2), "positive definite"),
        (np.array([[1.0, 0.5], [0.0, 1.0]]), np.eye(2), "symmetric"),
        (np.eye(2), np.eye(3), "2 columns"),
    ):
        with pytest.raises(ValueError, match=message):
            LinearGaussianProblem(prior, operator, 0.5)


def test_the_program_refuses_a_bad_prior_with_one_line(tmp_path, capsys):
    program = load_program("scripts/gaussian_experiment.py")
    with pytest.raises(SystemExit) as exit_info:
        program.main(["--prior_cov", "1,2;2,1", "--output_dir", str(tmp_path)])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert "positive definite" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        program.build_parser().parse_args(["--prior_cov", "1,2;3"])


# ------------------------------------------------------------------------------ the experiment


@pytest.mark.slow
def test_the_quick_experiment_lands_on_the_theory(tmp_path, capsys):
    """scripts/gaussian_experiment.py --quick: the five methods trained and sampled by PMRF's own code,
    each within its target widened by 3 standard errors of its 10 000 test samples."""
    program = load_program("scripts/gaussian_experiment.py")
    program.main(["--quick", "--output_dir", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "distortion_perception.png").stat().st_size > 10_000

    assert set(results["closed_form"]) >= {"mmse", "posterior_sampling", "w2_squared", "optimal_perfect_perception",
                                           "pmrf_exact_flow"}
    assert set(results["methods"]) == set(METHODS)  # every registered method
    for measured in results["methods"].values():
        assert set(measured) >= {"mse", "mse_stderr", "w2_squared_to_prior"}
    assert [p["w"] for p in results["fidelity_weight"]] == [0, 0.25, 0.5, 0.75, 1]
    for point in results["fidelity_weight"]:
        assert set(point) >= {"w", "mse", "w2_squared_to_prior", "theory_mse"}
    assert results["settings"]["train_steps"] == QUICK["train_steps"]

    targets = check_targets(results, quick=True)
    missed = {key: check for key, check in targets.items() if not check["passed"]}
    assert not missed, missed
    methods = results["methods"]
    # the perception side: the flows' outputs are distributed as the prior, the posterior mean is not
    for name in FLOW_METHODS:
        assert methods[name]["w2_squared_to_prior"] < 0.01, name
    assert methods["mmse"]["w2_squared_to_prior"] == pytest.approx(results["closed_form"]["w2_squared"], rel=0.15)
    # the knob: w = 0 is PMRF's sample, w = 1 the posterior mean, in between MSE falls as theory says
    knob = results["fidelity_weight"]
    assert knob[0]["mse"] == methods["pmrf"]["mse"]
    mses = [p["mse"] for p in knob]
    assert mses == sorted(mses, reverse=True)
    out = capsys.readouterr().out
    assert "0.648857" in out and "0.902115" in out and "every target met" in out
