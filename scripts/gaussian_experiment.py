"""PMRF against closed-form answers: train the five methods on a Gaussian problem with the project's own
PMRF code (small MLPs) and compare each with what theory says it should reach.

X ~ N(0, Σ_X), Y = A X + N(0, σ² I). The defaults are Σ_X = [[1, .8], [.8, 1]], A = diag(1, .2), σ = 0.5,
σ_s = 0.1: MMSE 0.648857, posterior sampling 1.297714, MMSE + W2²(p_X, p_X*) 0.810932, PMRF's exact flow
0.902115. Writes OUTPUT_DIR/results.json and OUTPUT_DIR/distortion_perception.png, and prints the table.

    python scripts/gaussian_experiment.py                    # about 3-4 minutes on a 2-core CPU
    python scripts/gaussian_experiment.py --quick            # under a minute, looser targets
    python scripts/gaussian_experiment.py --prior_cov "1,.5,.2;.5,1,.3;.2,.3,1" --operator "1,.3,0;0,.6,0;0,0,.4"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repository's packages

from theory.gaussian import parse_matrix  # noqa: E402
from theory.gaussian_experiment import (  # noqa: E402
    DEFAULT_OPERATOR,
    DEFAULT_PRIOR_COV,
    QUICK,
    ExperimentSettings,
    check_targets,
    format_results,
    plot_distortion_perception,
    run_experiment,
)
from utils.cli import check_writable_folder, fail, int_range, positive_float, positive_int, seed_int  # noqa: E402
from utils.images import write_atomic  # noqa: E402


def matrix_argument(text: str) -> np.ndarray:
    try:
        return parse_matrix(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior_cov", type=matrix_argument, default=DEFAULT_PRIOR_COV,
                   help=f"Σ_X, rows separated by ';' and entries by ',' (default \"{DEFAULT_PRIOR_COV}\")")
    p.add_argument("--operator", type=matrix_argument, default=None,
                   help=f"the matrix A, same format (default: \"{DEFAULT_OPERATOR}\" with the default prior, the "
                        "identity otherwise)")
    p.add_argument("--noise_std", type=positive_float, default=0.5, help="σ of the measurement noise (default 0.5)")
    p.add_argument("--source_noise_std", type=positive_float, default=0.1,
                   help="σ_s of PMRF's source (and of the flow from Y) (default 0.1)")
    p.add_argument("--num_flow_steps", type=int_range(1, 100_000), default=None,
                   help="K Euler steps (default 256: an Euler error under 0.5 %% of the MSE at the defaults)")
    p.add_argument("--train_steps", type=positive_int, default=None,
                   help=f"optimizer steps per method (default {ExperimentSettings.train_steps}; --quick {QUICK['train_steps']})")
    p.add_argument("--num_samples", type=int_range(2), default=None,
                   help=f"test samples per method (default {ExperimentSettings.num_samples}; --quick {QUICK['num_samples']})")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--output_dir", default="gaussian_experiment", help="where results.json and the plot go")
    p.add_argument("--quick", action="store_true",
                   help="fewer training steps and samples; targets widened by 3 standard errors (and the velocity "
                        "target to 15 %%)")
    return p


def settings_from_args(args: argparse.Namespace) -> ExperimentSettings:
    prior = args.prior_cov  # argparse applies matrix_argument to the default too
    operator = args.operator
    if operator is None:
        default_prior = np.array_equal(prior, parse_matrix(DEFAULT_PRIOR_COV))
        operator = parse_matrix(DEFAULT_OPERATOR) if default_prior else np.eye(len(prior))
    sizes = {key: getattr(args, key) for key in ("num_flow_steps", "train_steps", "num_samples")}
    for key, value in sizes.items():
        if value is None:
            sizes[key] = QUICK[key] if args.quick and key in QUICK else getattr(ExperimentSettings, key)
    return ExperimentSettings(prior, operator, args.noise_std, args.source_noise_std, seed=args.seed, **sizes)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    output_dir = check_writable_folder(args.output_dir)
    try:
        settings = settings_from_args(args)
        results = run_experiment(settings)
    except ValueError as error:  # a prior that is not a covariance, an operator of the wrong size, ...
        fail(str(error))
    results["targets"] = check_targets(results, quick=args.quick)
    write_atomic(output_dir / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    plot_distortion_perception(results, output_dir / "distortion_perception.png")
    print(format_results(results))
    euler = results["euler"]["relative_error"]
    if abs(euler) > 0.005:
        print(f"\nnote: {settings.num_flow_steps} Euler steps are {100 * euler:+.2f} % off the exact flow's MSE; "
              "more --num_flow_steps bring the sampler closer")
    missed = [key for key, check in results["targets"].items() if not check["passed"]]
    print("\n" + (f"missed: {', '.join(missed)}" if missed else "every target met"))
    print(f"results: {output_dir / 'results.json'}, plot: {output_dir / 'distortion_perception.png'}")


if __name__ == "__main__":
    main()
