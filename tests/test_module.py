"""MMSERectifiedFlow: every method trains, every degradation feeds its methods, EMA is used where it should.

The method's own pieces (sources, loss, Euler sampling, time schedules) are pinned in test_method.py."""

import math

import pytest
import torch
from helpers import build_method, randomize_

from degradations import DEGRADATION_NAMES, create_degradation, degradation_channels
from lightning_models.mmse_rectified_flow import MMSERectifiedFlow
from lightning_models.pmrf import METHODS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fixed_batch(channels_y=3, n=4, size=16):
    gen = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    x = torch.stack([yy, xx, (yy + xx) / 2]).expand(n, 3, size, size).clone()
    x = (x * 0.8 + 0.2 * torch.rand(n, 3, 1, 1, generator=gen)).clamp(0, 1)
    y = (x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    if channels_y == 1:
        y = y.mean(1, keepdim=True)
    return {"x": x, "y": y}


def seeded_loss(model, batch, seed=123, repeats=4):
    with torch.no_grad():
        torch.manual_seed(seed)
        return sum(model.training_loss(batch).item() for _ in range(repeats)) / repeats


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_learns_on_a_fixed_batch(method, mmse_ckpt):
    torch.manual_seed(0)
    model = build_method(method, mmse_ckpt, lr=2e-3, ema_decay=-1)
    assert model.method_name == method
    batch = fixed_batch()
    before = seeded_loss(model, batch)
    optimizer = model.configure_optimizers()
    for _ in range(30):
        optimizer.zero_grad()
        model.training_loss(batch).backward()
        optimizer.step()
    after = seeded_loss(model, batch)
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("degradation", DEGRADATION_NAMES)
@pytest.mark.parametrize("method", list(METHODS))
def test_every_degradation_feeds_every_method(degradation, method, mmse_ckpt):
    """Every registered method built, trained one step and sampled on every registered degradation's
    pairs (the x a degradation replaces, as DifFace's does, is the x trained on)."""
    colorization = degradation_channels(degradation) == 1  # a gray y
    model = build_method(method, mmse_ckpt, colorization=colorization)
    degrade = create_degradation(degradation)
    pairs = [degrade(torch.rand(3, 32, 32)) for _ in range(2)]
    y = torch.stack([p[0] for p in pairs])
    assert y.shape[1] == (1 if colorization else 3)
    x = torch.stack([p[1] if p[1] is not None else torch.rand(3, 32, 32) for p in pairs])
    batch = {"x": x, "y": y}
    loss = model.training_loss(batch)
    loss.backward()
    assert math.isfinite(loss.item())
    xhat, trajectory, z0 = model.generate_reconstructions(batch["x"], y, None, 2)
    assert xhat.shape == (2, 3, 32, 32) and 0 <= xhat.min() and xhat.max() <= 1
    if METHODS[method].condition == "measurement":
        assert model.model.in_channels == 3 + y.shape[1]


def test_pmrf_source_is_noisy_clipped_posterior_mean(mmse_ckpt):
    model = build_method("pmrf", mmse_ckpt, mmse_noise_std=0.1)
    y = torch.rand(2, 3, 16, 16)
    gen = torch.Generator().manual_seed(5)
    source = model.pmrf.source(y, generator=gen)
    noise = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(source.z0, model.mmse_model(y).clamp(0, 1) + 0.1 * noise)
    assert source.condition is None
    # reflow: a given source replaces the posterior mean, noise is still added
    reflow = model.pmrf.source(y, non_noisy_z0=torch.zeros_like(y), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(reflow.z0, 0.1 * noise)


def test_naive_flow_source_is_y_expanded_for_colorization():
    model = build_method("naive_flow", None, colorization=True, mmse_noise_std=0.0)
    y = torch.rand(2, 1, 16, 16)
    source = model.pmrf.source(y)
    assert source.z0.shape == (2, 3, 16, 16) and source.condition is None
    torch.testing.assert_close(source.z0, y.expand(-1, 3, -1, -1))


def test_mmse_network_is_frozen_and_in_eval_mode(mmse_ckpt):
    model = build_method("pmrf", mmse_ckpt).train()
    assert not model.mmse_model.training
    assert all(not p.requires_grad for p in model.mmse_model.parameters())
    assert all(id(p) not in {id(q) for q in model.mmse_model.parameters()}
               for group in model.configure_optimizers().param_groups for p in group["params"])


def test_pmrf_without_mmse_model_is_a_clear_error():
    with pytest.raises(ValueError, match="posterior-mean model"):
        build_method("pmrf", None)


def test_testing_runs_the_raw_weights_unless_use_ema_and_never_swaps_them(mmse_ckpt, tmp_path, monkeypatch):
    """With use_ema, testing runs the EMA copy itself: the raw weights stay in `model` throughout."""
    from lightning_models.pmrf import PMRF

    model = build_method("pmrf", mmse_ckpt, ema_decay=0.5)
    model.test_results_path, model.num_test_flow_steps = tmp_path, [1]
    raw = [p.detach().clone() for p in model.model.parameters()]
    with torch.no_grad():
        for shadow in model.ema.shadow_params:
            shadow.add_(1.0)
    ran, real_sample = [], PMRF.sample

    def recording(self, *args, **kwargs):
        ran.append(([p.detach().clone() for p in self.model.parameters()],
                    all(torch.equal(p, r) for p, r in zip(model.model.parameters(), raw))))
        return real_sample(self, *args, **kwargs)

    monkeypatch.setattr(PMRF, "sample", recording)
    assert model.use_ema is False  # the reference's numbers: raw weights
    batch = {"y": torch.rand(2, 3, 16, 16), "img_file_name": ["a.png", "b.png"]}
    for use_ema in (False, True):  # True: test.py --use_ema, train.py --use_ema
        model.use_ema = use_ema
        model.on_test_epoch_start()
        model.test_step(batch, 0)
        model.on_test_epoch_end()
    (raw_run, raw_kept), (ema_run, ema_kept) = ran
    assert all(torch.equal(p, r) for p, r in zip(raw_run, raw, strict=True))
    assert all(torch.equal(p, s) for p, s in zip(ema_run, model.ema.shadow_params, strict=True))
    assert raw_kept and ema_kept and all(torch.equal(p, r) for p, r in zip(model.model.parameters(), raw))
    assert model.ema.collected_params is None  # no second copy of the weights kept anywhere


def test_restore_runs_the_mmse_network_once(mmse_ckpt):
    model = build_method("pmrf", mmse_ckpt)
    calls = []
    model.mmse_model.register_forward_hook(lambda *args: calls.append(1))
    out = model.restore(torch.rand(2, 3, 16, 16), num_flow_steps=3)
    assert set(out) == {"xhat", "mmse"} and len(calls) == 1


def test_restore_is_reproducible_with_a_generator(mmse_ckpt):
    model = build_method("pmrf", mmse_ckpt)
    randomize_(model.model, 0.05)
    y = torch.rand(1, 3, 16, 16)
    a = model.restore(y, 2, generator=torch.Generator().manual_seed(7))["xhat"]
    b = model.restore(y, 2, generator=torch.Generator().manual_seed(7))["xhat"]
    c = model.restore(y, 2, generator=torch.Generator().manual_seed(8))["xhat"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_hyper_parameters_do_not_break_construction():
    model = MMSERectifiedFlow(stage="naive_flow", arch=build_method("naive_flow", None).hparams["arch"], some_old_flag=True)
    assert model.method_name == "naive_flow"


def test_missing_inception_weights_skip_fid_with_one_warning(monkeypatch, tmp_path):
    import warnings

    from lightning_models import validation

    monkeypatch.setattr(validation, "_warned", set())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no Inception file in torch's hub cache
    absent = tmp_path / "absent.pth"  # train.py --metrics_ckpt_dir may name the file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert validation.ValidationMetrics.create(metrics_ckpt_dir=absent) is None
        assert validation.ValidationMetrics.create(metrics_ckpt_dir=absent) is None
    messages = [str(w.message) for w in caught if "Inception" in str(w.message)]
    assert len(messages) == 1 and "absent.pth" in messages[0]
