"""The method itself (lightning_models.pmrf / flow), pinned by oracles rather than by "it runs".

Stub networks with known answers stand in for HDiT and SwinIR, so every assertion is an exact
statement of the method: the flow's target, the interpolation, the source and condition of each
method of the table, the clipped posterior mean, the Euler integrator and its float32 update.
"""

import pytest
import torch
from helpers import (
    FLOW_METHODS,
    TINY_HDIT,
    TINY_SWINIR,
    StubPosteriorMean,
    StubVelocity,
    table_condition,
    table_source,
)
from torch import nn
from torch.nn import functional as F

from lightning_models.flow import euler_times, interpolate, sample_euler, sample_times, time_grid
from lightning_models.pmrf import METHODS, PMRF, STAGES, Sample, fidelity_blend, method_for

SEED = 11
B, H, W = 2, 4, 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fixed_tensors(colorization: bool = False):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(B, 3, H, W, generator=gen)
    y = torch.rand(B, 1 if colorization else 3, H, W, generator=gen)
    return x, y


def seeded():
    return torch.Generator().manual_seed(SEED)


def noise():
    """The n ~ N(0, I) a PMRF draws from `seeded()`: image-shaped (3 channels), float32."""
    return torch.randn((B, 3, H, W), generator=seeded())


def exact_field(x):
    """The velocity of the straight path to x: v(x_t, t) = (x − x_t) / (1 − t).

    On x_t = t·x + (1 − t)·z0 it equals x − z0 (so the flow loss is 0), and Euler steps along it reach
    x exactly from any start, any eps and any number of steps (the residual x − x_t shrinks by
    (1 − t_{i+1}) / (1 − t_i) per step, and t_K = 1)."""
    return lambda x_t, t: (x - x_t[:, :3]) / (1 - t.view(-1, 1, 1, 1))


def build(name, velocity=None, colorization=False, sigma=0.1, eps=0.0, with_f=True):
    method = METHODS[name]
    f = StubPosteriorMean() if (with_f or method.uses_posterior_mean) else None
    return PMRF(method, velocity or StubVelocity(), f, source_noise_std=sigma, eps=eps)


# ------------------------------------------------------------------- the flow's target and path


@pytest.mark.parametrize("name", FLOW_METHODS)
def test_the_exact_velocity_x_minus_z0_has_zero_loss(name):
    x, y = fixed_tensors()
    pmrf = build(name)
    z0 = pmrf.source(y, seeded()).z0
    pmrf.model.fn = lambda x_t, t: x - z0  # v = x − z0, the flow-matching target
    t = torch.tensor([0.25, 0.7])
    assert pmrf.loss(x, y, t, generator=seeded()).item() == 0.0
    assert pmrf.loss(x, y, torch.tensor([0.0, 1.0]), generator=seeded()).item() == 0.0
    # and a network that outputs the reversed target z0 − x is penalised by 4·‖x − z0‖²
    pmrf.model.fn = lambda x_t, t: z0 - x
    torch.testing.assert_close(pmrf.loss(x, y, t, generator=seeded()), 4 * (x - z0).square().mean())


@pytest.mark.parametrize("name", FLOW_METHODS)
def test_the_exact_field_on_the_interpolation_has_zero_loss(name):
    """(x − x_t)/(1 − t) equals x − z0 only where x_t = t·x + (1 − t)·z0: this pins the interpolation
    the loss trains on, not only its target."""
    x, y = fixed_tensors()
    pmrf = build(name, StubVelocity(exact_field(x)))
    t = torch.tensor([0.1, 0.6])
    assert pmrf.loss(x, y, t, generator=seeded()).item() < 1e-10


def test_the_loss_feeds_the_network_z0_at_t0_and_x_at_t1():
    x, y = fixed_tensors()
    pmrf = build("pmrf")
    z0 = pmrf.source(y, seeded()).z0
    pmrf.loss(x, y, torch.tensor([0.0, 1.0]), generator=seeded())
    (x_t, t), = pmrf.model.calls
    assert torch.equal(x_t[0], z0[0]) and torch.equal(x_t[1], x[1])
    assert t.shape == (B,) and t.tolist() == [0.0, 1.0]  # the network receives t as a vector (b,)


def test_interpolation_is_z0_at_0_x_at_1_and_linear_in_between():
    gen = torch.Generator().manual_seed(2)
    x, z0 = torch.rand(5, 3, 2, 2, generator=gen), torch.rand(5, 3, 2, 2, generator=gen)
    t = torch.tensor([0.0, 1.0, 0.25, 0.5, 0.9])
    x_t = interpolate(x, z0, t)
    assert torch.equal(x_t[0], z0[0]) and torch.equal(x_t[1], x[1])
    for i in (2, 3, 4):
        torch.testing.assert_close(x_t[i], t[i] * x[i] + (1 - t[i]) * z0[i])
    # linear in t: equal steps in t give equal steps in x_t
    ts = torch.linspace(0, 1, 5)
    path = interpolate(x[:1].expand(5, -1, -1, -1), z0[:1].expand(5, -1, -1, -1), ts)
    torch.testing.assert_close(path.diff(dim=0), ((x[0] - z0[0]) / 4).expand(4, -1, -1, -1))


@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("steps", [1, 2, 7])
@pytest.mark.parametrize("name", FLOW_METHODS)
def test_euler_along_the_exact_field_lands_on_x(name, steps, eps):
    x, y = fixed_tensors()
    pmrf = build(name, StubVelocity(exact_field(x)), eps=eps)
    sample = pmrf.sample(y, steps, seeded())
    torch.testing.assert_close(sample.xhat, x, atol=1e-5, rtol=0)
    assert len(pmrf.model.calls) == steps


@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_euler_with_the_constant_target_velocity(steps, eps):
    """v = x − z0 for K Euler steps of (1 − eps)/K from z0: z0 + (1 − eps)(x − z0), which is x for eps = 0
    (the reference starts the trajectory at z0 at time eps)."""
    x, y = fixed_tensors()
    pmrf = build("pmrf", sigma=0.05, eps=eps)
    z0 = pmrf.source(y, seeded()).z0
    pmrf.model.fn = lambda x_t, t: x - z0
    sample = pmrf.sample(y, steps, seeded())
    assert torch.equal(sample.source, z0)
    want = (z0 + (1 - eps) * (x - z0)).clamp(0, 1)
    torch.testing.assert_close(sample.xhat, want, atol=1e-6, rtol=0)
    if eps == 0:
        torch.testing.assert_close(sample.xhat, x, atol=1e-6, rtol=0)


# -------------------------------------------------------------------------- the methods table


def test_methods_table_rows():
    """The registry against the paper's table (pmrf.py's docstring); the other tests of this module read
    each method's source and condition from its row (helpers.table_source, table_condition)."""
    rows = {m.name: (m.stage, m.conditional, m.uses_posterior_mean) for m in METHODS.values()}
    assert rows == {
        "pmrf": ("flow", False, True),
        "posterior_conditioned_on_mmse": ("flow", True, True),
        "posterior_conditioned_on_y": ("flow", True, False),
        "naive_flow": ("naive_flow", False, False),
        "mmse": ("mmse", False, False),
    }
    assert {m.name: (m.source, m.condition) for m in METHODS.values()} == {
        "pmrf": ("posterior_mean", None),
        "posterior_conditioned_on_mmse": ("noise", "posterior_mean"),
        "posterior_conditioned_on_y": ("noise", "measurement"),
        "naive_flow": ("measurement", None),
        "mmse": (None, None),
    }
    for name, (stage, conditional, uses_f) in rows.items():
        assert method_for(stage, conditional, uses_f).name == name
    assert {m.stage for m in METHODS.values()} == set(STAGES)  # every stage trains some method
    for stage in STAGES:
        if stage != "flow":
            with pytest.raises(ValueError, match="conditional"):
                method_for(stage, True, False)


@pytest.mark.parametrize("colorization", [False, True], ids=["rgb", "colorization"])
@pytest.mark.parametrize("name", FLOW_METHODS)
def test_each_method_builds_the_source_condition_and_input_of_the_table(name, colorization):
    x, y = fixed_tensors(colorization)
    sigma = 0.1
    pmrf = build(name, sigma=sigma)
    f = pmrf.mmse_model
    posterior_mean = StubPosteriorMean.unclipped(y).clamp(0, 1)
    want_z0 = table_source(METHODS[name], y, posterior_mean, noise(), sigma)
    want_condition = table_condition(METHODS[name], y, posterior_mean)

    source = pmrf.source(y, seeded())
    torch.testing.assert_close(source.z0, want_z0, rtol=0, atol=1e-7)
    assert source.z0.shape == (B, 3, H, W)
    if want_condition is None:
        assert source.condition is None
    else:
        assert torch.equal(source.condition, want_condition)
        if METHODS[name].condition == "measurement":
            assert source.condition.shape[1] == (1 if colorization else 3)  # the gray y, not expanded
    # f sees y as given (a 1-channel y in colorization) and only in the methods that use it
    if METHODS[name].uses_posterior_mean:
        assert len(f.calls) == 1 and torch.equal(f.calls[0], y)
    else:
        assert f.calls == []

    # the network input during training: x_t, then the condition on channels
    t = torch.tensor([0.3, 0.8])
    pmrf.loss(x, y, t, generator=seeded())
    (seen, seen_t), = pmrf.model.calls
    x_t = t.view(-1, 1, 1, 1) * x + (1 - t.view(-1, 1, 1, 1)) * want_z0
    want_input = x_t if want_condition is None else torch.cat([x_t, want_condition], dim=1)
    torch.testing.assert_close(seen, want_input, rtol=0, atol=1e-6)
    assert torch.equal(seen_t, t)
    if METHODS[name].condition == "measurement":
        assert seen.shape[1] == 3 + (1 if colorization else 3)

    # sampling feeds the same condition at every step
    pmrf.model.calls.clear()
    pmrf.sample(y, 3, seeded())
    assert len(pmrf.model.calls) == 3
    for seen, _ in pmrf.model.calls:
        if want_condition is None:
            assert seen.shape[1] == 3
        else:
            assert torch.equal(seen[:, 3:], want_condition)


def test_naive_flow_without_sigma_starts_exactly_at_y():
    _, y = fixed_tensors(colorization=True)
    pmrf = build("naive_flow", sigma=0.0)
    assert torch.equal(pmrf.source(y, seeded()).z0, y.expand(-1, 3, -1, -1))


@pytest.mark.parametrize("name", [name for name in FLOW_METHODS if METHODS[name].source != "noise"])
def test_reflow_source_replaces_the_posterior_mean_or_y_and_keeps_the_noise(name):
    _, y = fixed_tensors(colorization=METHODS[name].source == "measurement")  # a gray y as the source
    given = torch.rand(B, 3, H, W, generator=torch.Generator().manual_seed(4))
    pmrf = build(name, sigma=0.2)
    z0 = pmrf.source(y, seeded(), non_noisy_z0=given).z0
    torch.testing.assert_close(z0, given + 0.2 * noise(), rtol=0, atol=1e-7)


def test_the_mmse_stage_trains_and_predicts_clip_of_model_of_y():
    x, y = fixed_tensors()
    model = StubPosteriorMean()
    pmrf = PMRF(METHODS["mmse"], model)
    clipped = StubPosteriorMean.unclipped(y).clamp(0, 1)
    torch.testing.assert_close(pmrf.loss(x, y), F.mse_loss(clipped, x), rtol=0, atol=0)
    assert pmrf.loss(x, y) != F.mse_loss(StubPosteriorMean.unclipped(y), x)
    assert torch.equal(model.calls[0], y)  # the network input is y
    sample = pmrf.sample(y, num_flow_steps=5)
    assert torch.equal(sample.xhat, clipped) and sample.source is None and sample.posterior_mean is None


# -------------------------------------------------------------------- the clipped posterior mean


def test_the_posterior_mean_is_clipped_everywhere_it_is_used():
    _, y = fixed_tensors()
    assert StubPosteriorMean.unclipped(y).min() < -0.5 and StubPosteriorMean.unclipped(y).max() > 1.5
    want = StubPosteriorMean.unclipped(y).clamp(0, 1)

    pmrf = build("pmrf", sigma=0.0)
    assert torch.equal(pmrf.posterior_mean(y), want)
    assert torch.equal(pmrf.source(y).z0, want)  # sigma 0: z0 is exactly clip(f(y))
    sample = pmrf.sample(y, 2)
    assert torch.equal(sample.posterior_mean, want) and torch.equal(sample.source, want)
    conditioned = build("posterior_conditioned_on_mmse")
    assert torch.equal(conditioned.source(y, seeded()).condition, want)


# ------------------------------------------------------------------------------ Euler sampling


def test_sample_euler_calls_back_once_per_step_with_i_t_and_x():
    steps, eps = 4, 0.2
    seen_t = []

    def velocity(x, t):
        seen_t.append(t.clone())
        return t.view(-1, 1) * torch.ones_like(x)  # v(x, t) = t

    states = []
    final = sample_euler(velocity, torch.zeros(3, 2), steps, eps, callback=states.append)
    assert [s["i"] for s in states] == [0, 1, 2, 3]
    assert [s["t"] for s in states] == euler_times(steps, eps) == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert all(t.shape == (3,) and t.dtype == torch.float32 for t in seen_t)
    # x in the callback is the state after step i: the running sum of dt·t_j
    dt = (1 - eps) / steps
    for i, state in enumerate(states):
        torch.testing.assert_close(state["x"], torch.full((3, 2), dt * sum(euler_times(steps, eps)[: i + 1])))
    assert states[-1]["x"] is final


def test_sample_euler_updates_in_float32_when_the_velocity_is_bf16():
    steps = 7
    z0 = torch.full((2, 3), 1.001)  # not a bf16 number
    one = torch.ones(2, 3, dtype=torch.bfloat16)
    states = []
    final = sample_euler(lambda x, t: one, z0, steps, callback=states.append)
    assert final.dtype == torch.float32 and all(s["x"].dtype == torch.float32 for s in states)
    assert states[0]["velocity"].dtype == torch.bfloat16
    want = z0.clone()
    for _ in range(steps):
        want = want + (1 / steps) * one.float()  # dt = 1/7 in float32, not rounded to bf16
    assert torch.equal(final, want)


def test_euler_matches_the_closed_form_for_a_constant_velocity():
    z0 = torch.zeros(1, 3, 4, 4)
    states = []
    final = sample_euler(lambda x, t: torch.ones_like(x), z0, num_steps=5, eps=0.2, callback=states.append)
    torch.testing.assert_close(final, torch.full_like(z0, 0.8))
    assert [s["i"] for s in states] == [0, 1, 2, 3, 4] and states[-1]["x"] is final


def test_euler_times_follow_the_spec():
    seen = []
    sample_euler(lambda x, t: seen.append(t[0].item()) or torch.zeros_like(x), torch.zeros(1, 1), 4, eps=0.2)
    assert seen == pytest.approx([0.2, 0.4, 0.6, 0.8])
    with pytest.raises(ValueError, match="at least 1"):
        euler_times(0)


# ------------------------------------------------------------------------------ training times


@pytest.mark.parametrize("schedule", ["stratified_uniform", "uniform", "logit-normal"])
def test_time_schedules_cover_eps_to_one(schedule):
    t = sample_times(4096, schedule, eps=0.1)
    assert t.shape == (4096,) and t.min() >= 0.1 and t.max() <= 1.0
    assert abs(t.mean().item() - 0.55) < 0.05


def test_stratified_schedule_gives_each_rank_its_own_strata():
    world, batch = 4, 8
    all_t = torch.cat([sample_times(batch, "stratified_uniform", rank=r, world_size=world) for r in range(world)])
    strata = torch.floor(all_t * batch * world).long().sort().values
    assert strata.tolist() == list(range(batch * world))


# ------------------------------------------------------------------------- a flow that learns


class TinyMLPVelocity(nn.Module):
    """A small MLP on the flattened image and t, called as v(x_t, t) like HDiT."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim))

    def forward(self, x, t):
        return self.net(torch.cat([x.flatten(1), t[:, None]], dim=1)).view_as(x)


def test_a_tiny_flow_trained_on_two_points_moves_its_samples_toward_them():
    torch.manual_seed(0)
    targets = torch.stack([torch.full((3, 2, 2), 0.85), torch.full((3, 2, 2), 0.15)])
    targets[1, 0] = 0.7  # two distinct "images"
    pmrf = PMRF(METHODS["naive_flow"], TinyMLPVelocity(12), source_noise_std=0.3)
    x = targets.repeat(16, 1, 1, 1)
    y = torch.full_like(x, 0.5)  # the source: 0.5 + 0.3·n, halfway between the two points
    optimizer = torch.optim.AdamW(pmrf.model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        pmrf.loss(x, y, sample_times(len(x), "stratified_uniform")).backward()
        optimizer.step()

    def distance_to_nearest_target(images):
        return torch.cdist(images.flatten(1), targets.flatten(1)).min(dim=1).values.mean().item()

    with torch.no_grad():
        sample = pmrf.sample(torch.full((64, 3, 2, 2), 0.5), 10, torch.Generator().manual_seed(1))
    before = distance_to_nearest_target(sample.source.clamp(0, 1))
    after = distance_to_nearest_target(sample.xhat)
    assert after < 0.5 * before, (before, after)


# ----------------------------------------------------------------- the network protocol, any shape


class TimeMLP(nn.Module):
    """A plain MLP velocity on (N, d) vectors, v(x_t, t): no HDiT anywhere. Records the t it is given."""

    def __init__(self, dim: int = 1, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim))
        self.seen_t: list[torch.Tensor] = []

    def forward(self, x, t):
        self.seen_t.append(t.detach().clone())
        return self.net(torch.cat([x, t[:, None]], dim=1))


class NoTimeMLP(nn.Module):
    def __init__(self, dim: int = 1):
        super().__init__()
        self.net = nn.Linear(dim, dim)

    def forward(self, x):
        return self.net(x)


def the_exact_rate(t, a, b):
    """dx/dt = m(t)·x is the rectified flow from N(0, a²) to an independent N(0, b²) in 1-D:
    m(t) = (t·b² − (1 − t)·a²) / (t²·b² + (1 − t)²·a²). It changes sign: no t-blind field follows it."""
    return (t * b**2 - (1 - t) * a**2) / (t**2 * b**2 + (1 - t) ** 2 * a**2)


def learned_rate(mlp, t: float, spread: float) -> float:
    """The slope of the learned field in x at time t, from two points ±spread/5 apart."""
    x = torch.tensor([[-0.2 * spread], [0.2 * spread]])
    v = mlp(x, torch.full((2,), t))
    return ((v[1] - v[0]) / (x[1] - x[0])).item()


def test_a_plain_mlp_velocity_receives_t_and_learns_a_field_that_depends_on_it(seed=0):
    torch.manual_seed(seed)
    a, b = 1.0, 0.3
    mlp = TimeMLP()
    pmrf = PMRF(METHODS["naive_flow"], mlp, source_noise_std=a, channels=1, clip=False)  # z0 = 0 + a·n
    optimizer = torch.optim.AdamW(mlp.parameters(), lr=1e-2)
    y = torch.zeros(512, 1)
    for _ in range(600):
        t = sample_times(len(y), "stratified_uniform")
        mlp.seen_t.clear()
        optimizer.zero_grad()
        pmrf.loss(b * torch.randn(len(y), 1), y, t).backward()
        optimizer.step()
        assert len(mlp.seen_t) == 1 and torch.equal(mlp.seen_t[0], t)  # the training times, as given

    with torch.no_grad():
        spread = lambda t: (t**2 * b**2 + (1 - t) ** 2 * a**2) ** 0.5  # noqa: E731 (the std of x_t)
        mid, late = learned_rate(mlp, 0.5, spread(0.5)), learned_rate(mlp, 0.9, spread(0.9))
        assert mid == pytest.approx(the_exact_rate(0.5, a, b), abs=0.3)  # −1.67
        assert late - mid > 0.7  # the exact field's slope rises by 1.44 from t = 0.5 to 0.9; a t-blind one by 0
        mlp.seen_t.clear()
        sample = pmrf.sample(torch.zeros(8192, 1), 20, torch.Generator().manual_seed(3))
    assert [t[0].item() for t in mlp.seen_t] == pytest.approx(euler_times(20))  # and the Euler times
    assert sample.xhat.shape == (8192, 1) and sample.source.std().item() == pytest.approx(a, rel=0.05)
    assert sample.xhat.std().item() == pytest.approx(b, rel=0.15)


def test_a_network_without_a_time_input_is_refused_as_a_velocity():
    from arch import create_arch

    for net in (NoTimeMLP(), create_arch(TINY_SWINIR)):
        with pytest.raises(ValueError, match="velocity\\(x_t, t\\).*takes no time input"):
            PMRF(METHODS["naive_flow"], net)
        PMRF(METHODS["mmse"], net)  # as f(y) it is fine
    with pytest.raises(ValueError, match="called as f\\(y\\)"):
        PMRF(METHODS["pmrf"], TimeMLP(), lambda x, t: x)  # a posterior mean that needs two inputs
    # compiled in place (as prepare_for_inference and train.py --compile do), a network keeps its forward:
    # judged the same, and nothing to unwrap (nothing is compiled until it is called)
    compiled_mlp, compiled_swinir = TimeMLP(), create_arch(TINY_SWINIR)
    compiled_mlp.compile()
    compiled_swinir.compile()
    PMRF(METHODS["naive_flow"], compiled_mlp)
    with pytest.raises(ValueError, match="takes no time input"):
        PMRF(METHODS["naive_flow"], compiled_swinir)


def test_hdit_and_swinir_fit_the_protocol_through_create_arch():
    from arch import create_arch

    velocity, f = create_arch(TINY_HDIT), create_arch(TINY_SWINIR)
    pmrf = PMRF(METHODS["pmrf"], velocity, f, source_noise_std=0.1)
    y = torch.rand(2, 1, 16, 16)  # a gray measurement: both networks take it as gray on 3 channels
    assert pmrf.sample(y, 2, seeded()).xhat.shape == (2, 3, 16, 16)
    mmse = PMRF(METHODS["mmse"], create_arch(TINY_HDIT))  # HDiT as f(y): its time input is then ones
    assert mmse.loss(torch.rand(2, 3, 16, 16), y).ndim == 0


@pytest.mark.parametrize("name", FLOW_METHODS)
def test_vectors_n_by_d_go_through_every_method_unclipped(name):
    d = 5
    gen = torch.Generator().manual_seed(6)
    x, y = 3 * torch.randn(4, d, generator=gen), torch.randn(4, d, generator=gen)
    f = lambda y: 2 * y  # noqa: E731 (a linear posterior mean, values far outside [0, 1])
    pmrf = PMRF(METHODS[name], StubVelocity(lambda x_t, t: (x - x_t[:, :d]) / (1 - t.view(-1, 1))), f,
                source_noise_std=0.1, channels=d, clip=False)
    source = pmrf.source(y, seeded())
    assert source.z0.shape == (4, d)
    if METHODS[name].uses_posterior_mean:
        assert torch.equal(source.posterior_mean, 2 * y)  # not clipped
    sample = pmrf.sample(y, 3, seeded())
    torch.testing.assert_close(sample.xhat, x, atol=1e-4, rtol=0)  # not clipped either
    assert pmrf.loss(x, y, torch.tensor([0.2, 0.4, 0.6, 0.8]), generator=seeded()).item() < 1e-8


def test_clip_is_one_setting_of_the_method():
    _, y = fixed_tensors()
    unclipped = StubPosteriorMean.unclipped(y)
    assert torch.equal(PMRF(METHODS["pmrf"], StubVelocity(), StubPosteriorMean(), clip=False).posterior_mean(y), unclipped)
    mmse = PMRF(METHODS["mmse"], StubPosteriorMean(), clip=False)
    assert torch.equal(mmse.sample(y, 1).xhat, unclipped)
    far = PMRF(METHODS["naive_flow"], StubVelocity(lambda x, t: torch.full_like(x, 5.0)), clip=False)
    assert far.sample(y, 2).xhat.min() > 1.5  # y + 5, unclipped


# ---------------------------------------------------------------------------------- time grids


def test_sample_euler_takes_a_time_grid_like_k_diffusion():
    seen = []

    def velocity(x, t):
        seen.append(t[0].item())
        return t.view(-1, 1) * torch.ones_like(x)

    out = sample_euler(velocity, torch.zeros(2, 1), [0.0, 0.1, 0.5, 1.0])
    assert seen == pytest.approx([0.0, 0.1, 0.5])
    torch.testing.assert_close(out, torch.full((2, 1), 0.0 * 0.1 + 0.1 * 0.4 + 0.5 * 0.5))
    x0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
    field = lambda x, t: -x * (1 + t.view(-1, 1))  # noqa: E731
    torch.testing.assert_close(sample_euler(field, x0, time_grid(7, 0.2)), sample_euler(field, x0, 7, 0.2))
    for bad in ([0.5], [0.0, 0.5, 0.5], torch.tensor([1.0, 0.0])):
        with pytest.raises(ValueError, match="increasing"):
            sample_euler(field, x0, bad)


def test_pmrf_samples_on_a_given_grid():
    x, y = fixed_tensors()
    pmrf = build("pmrf", StubVelocity(exact_field(x)))
    sample = pmrf.sample(y, torch.tensor([0.0, 0.3, 0.9, 1.0]), seeded())
    assert [t[0].item() for _, t in pmrf.model.calls] == pytest.approx([0.0, 0.3, 0.9])
    torch.testing.assert_close(sample.xhat, x, atol=1e-5, rtol=0)


# ------------------------------------------------------------------- the fidelity weight (knob)


def noisy_velocity(x_t, t):
    return torch.sin(3 * x_t[:, :3] + t.view(-1, 1, 1, 1))


@pytest.mark.parametrize("name", [name for name, method in METHODS.items() if method.uses_posterior_mean])
def test_fidelity_weight_zero_is_pmrf_bit_for_bit_and_one_is_the_posterior_mean(name):
    _, y = fixed_tensors()
    pmrf = build(name, StubVelocity(noisy_velocity), sigma=0.3)
    plain = pmrf.sample(y, 4, seeded())
    assert torch.equal(pmrf.sample(y, 4, seeded(), fidelity_weight=0.0).xhat, plain.xhat)
    assert torch.equal(pmrf.sample(y, 4, seeded(), fidelity_weight=1.0).xhat, plain.posterior_mean)
    assert not torch.equal(plain.xhat, plain.posterior_mean)
    for w in (0.25, 0.5, 0.75):
        blended = pmrf.sample(y, 4, seeded(), fidelity_weight=w)
        torch.testing.assert_close(blended.xhat, (1 - w) * plain.xhat + w * plain.posterior_mean, atol=1e-7, rtol=0)
        assert torch.equal(blended.posterior_mean, plain.posterior_mean) and torch.equal(blended.source, plain.source)
    calls = len(pmrf.model.calls), len(pmrf.mmse_model.calls)
    pmrf.sample(y, 4, seeded(), fidelity_weight=0.5)
    assert (len(pmrf.model.calls), len(pmrf.mmse_model.calls)) == (calls[0] + 4, calls[1] + 1)  # no extra call
    assert torch.equal(plain.with_fidelity_weight(0.5).xhat, fidelity_blend(plain.xhat, plain.posterior_mean, 0.5))


@pytest.mark.parametrize("name", [name for name, method in METHODS.items() if not method.uses_posterior_mean])
def test_methods_without_a_posterior_mean_refuse_a_fidelity_weight(name):
    _, y = fixed_tensors()
    pmrf = build(name, with_f=False) if METHODS[name].stage != "mmse" else PMRF(METHODS[name], StubPosteriorMean())
    assert pmrf.sample(y, 2, seeded(), fidelity_weight=0.0).xhat.shape == (B, 3, H, W)
    with pytest.raises(ValueError, match="has no posterior mean") as caught:
        pmrf.sample(y, 2, seeded(), fidelity_weight=0.5)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="needs a posterior mean"):
        Sample(torch.zeros(1), None, None).with_fidelity_weight(0.5)


def test_fidelity_weight_outside_zero_one_is_refused():
    _, y = fixed_tensors()
    pmrf = build("pmrf")
    for w in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="in \\[0, 1\\]"):
            pmrf.sample(y, 2, fidelity_weight=w)


def test_the_trainer_refuses_a_swinir_velocity_at_construction():
    from lightning_models.mmse_rectified_flow import MMSERectifiedFlow

    with pytest.raises(ValueError, match="naive_flow.*takes no time input"):
        MMSERectifiedFlow(stage="naive_flow", arch=TINY_SWINIR)
