"""The method itself (lightning_models.pmrf / flow), pinned by oracles rather than by "it runs".

Stub networks with known answers stand in for HDiT and SwinIR, so every assertion is an exact
statement of the method: the flow's target, the interpolation, the source and condition of each
method of the table, the clipped posterior mean, the Euler integrator and its float32 update.
"""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from arch import HDiT
from lightning_models.flow import euler_times, interpolate, sample_euler, sample_times
from lightning_models.pmrf import METHODS, PMRF, method_for

SEED = 11
B, H, W = 2, 4, 4


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: these tensors are tiny, and on a small, busy machine several threads mostly
    wait for each other (the two-point training takes ten times longer with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ stubs


class StubVelocity(HDiT):
    """A velocity network with a known answer: `fn(x_t, t)`. It is an HDiT to `run_network` (so it is
    called as v(x_t, t), like the real one) and records every input it sees."""

    def __init__(self, fn=None, in_channels: int = 3):
        nn.Module.__init__(self)
        self.fn = fn or (lambda x, t: torch.zeros_like(x[:, :3]))
        self.in_channels = in_channels
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t):
        self.calls.append((x.detach().clone(), t.detach().clone()))
        return self.fn(x, t)


class StubPosteriorMean(nn.Module):
    """f(y) = 3·y − 1 on RGB (a gray y is replicated): values well outside [0, 1]. Records its inputs."""

    def __init__(self):
        super().__init__()
        self.calls: list[torch.Tensor] = []

    @staticmethod
    def unclipped(y):
        return 3 * y.expand(-1, 3, -1, -1) - 1

    def forward(self, y):
        self.calls.append(y.detach().clone())
        return self.unclipped(y)


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


FLOWS = ["pmrf", "posterior_conditioned_on_mmse", "posterior_conditioned_on_y", "naive_flow"]


def build(name, velocity=None, colorization=False, sigma=0.1, eps=0.0, with_f=True):
    method = METHODS[name]
    f = StubPosteriorMean() if (with_f or method.uses_posterior_mean) else None
    return PMRF(method, velocity or StubVelocity(), f, source_noise_std=sigma, eps=eps)


# ------------------------------------------------------------------- the flow's target and path


@pytest.mark.parametrize("name", FLOWS)
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


@pytest.mark.parametrize("name", FLOWS)
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
@pytest.mark.parametrize("name", FLOWS)
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
    rows = {m.name: (m.stage, m.conditional, m.uses_posterior_mean) for m in METHODS.values()}
    assert rows == {
        "pmrf": ("flow", False, True),
        "posterior_conditioned_on_mmse": ("flow", True, True),
        "posterior_conditioned_on_y": ("flow", True, False),
        "naive_flow": ("naive_flow", False, False),
        "mmse": ("mmse", False, False),
    }
    for name, (stage, conditional, uses_f) in rows.items():
        assert method_for(stage, conditional, uses_f).name == name
    for stage in ("mmse", "naive_flow"):
        with pytest.raises(ValueError, match="conditional"):
            method_for(stage, True, False)


@pytest.mark.parametrize("colorization", [False, True], ids=["rgb", "colorization"])
@pytest.mark.parametrize("name", FLOWS)
def test_each_method_builds_the_source_condition_and_input_of_the_table(name, colorization):
    x, y = fixed_tensors(colorization)
    sigma = 0.1
    pmrf = build(name, sigma=sigma)
    f = pmrf.mmse_model
    y3 = y.expand(-1, 3, -1, -1)
    posterior_mean = StubPosteriorMean.unclipped(y).clamp(0, 1)
    n = noise()
    want_z0, want_condition = {
        "pmrf": (posterior_mean + sigma * n, None),
        "posterior_conditioned_on_mmse": (n, posterior_mean),
        "posterior_conditioned_on_y": (n, y),
        "naive_flow": (y3 + sigma * n, None),
    }[name]

    source = pmrf.source(y, seeded())
    torch.testing.assert_close(source.z0, want_z0, rtol=0, atol=1e-7)
    assert source.z0.shape == (B, 3, H, W)
    if want_condition is None:
        assert source.condition is None
    else:
        assert torch.equal(source.condition, want_condition)
        if name == "posterior_conditioned_on_y":
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
    if name == "posterior_conditioned_on_y":
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


@pytest.mark.parametrize("name", ["pmrf", "naive_flow"])
def test_reflow_source_replaces_the_posterior_mean_or_y_and_keeps_the_noise(name):
    _, y = fixed_tensors(colorization=(name == "naive_flow"))
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


class TinyMLPVelocity(HDiT):
    """A small MLP on the flattened image and t, called as v(x_t, t) like HDiT."""

    def __init__(self, dim: int, hidden: int = 64):
        nn.Module.__init__(self)
        self.in_channels = 3
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
