"""Rules of the reference implementation that this project keeps, each pinned by a test.

The MMSE loss is taken on the clipped output; the training loader drops the last incomplete batch;
the Euler update is float32 under bf16 autocast; outputs are rounded as torchvision's save_image and
JPEGs written at quality 75; the reference's method names (`forward`, `forward_flow`, ...) exist and
behave; `--conditional` is for the flow stage only; the Hugging Face entry points take the usual
arguments and work offline; `source_noise_std` is an alias of `mmse_noise_std`.
"""

import json
import shutil
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_HDIT, TINY_SWINIR
from helpers import write_images
from PIL import Image
from test_method import StubPosteriorMean, StubVelocity, one_torch_thread  # noqa: F401  (autouse fixture)
from torch import nn
from torch.nn import functional as F

from lightning_models.mmse_rectified_flow import MMSERectifiedFlow
from utils.images import ImageWriter, save_rgb, tensor_to_uint8

ROOT = Path(__file__).resolve().parents[1]
B, H, W = 2, 8, 8


def module(name: str, colorization: bool = False, **kwargs) -> MMSERectifiedFlow:
    """A tiny MMSERectifiedFlow of the named method, with stub networks (see test_method.py) put in."""
    args = {
        "mmse": dict(stage="mmse", arch=TINY_SWINIR),
        "pmrf": dict(stage="flow", arch=TINY_HDIT, mmse_model_arch=TINY_SWINIR),
        "posterior_conditioned_on_mmse": dict(stage="flow", conditional=True, arch=TINY_HDIT,
                                              mmse_model_arch=TINY_SWINIR),
        "posterior_conditioned_on_y": dict(stage="flow", conditional=True, arch=TINY_HDIT),
        "naive_flow": dict(stage="naive_flow", arch=TINY_HDIT),
    }[name]
    model = MMSERectifiedFlow(colorization=colorization, ema_decay=-1, **{**args, **kwargs})
    assert model.method_name == name
    if name == "mmse":
        model.model = StubPosteriorMean()
    else:
        model.model = StubVelocity(lambda x, t: 2 * x[:, :3] + x[:, 3:].sum(1, keepdim=True) * t.view(-1, 1, 1, 1))
        if model.mmse_model is not None:
            model.mmse_model = StubPosteriorMean()
    return model


def batch(colorization=False):
    gen = torch.Generator().manual_seed(3)
    return torch.rand(B, 3, H, W, generator=gen), torch.rand(B, 1 if colorization else 3, H, W, generator=gen)


# ------------------------------------------------------------------------------------ training


def test_the_mmse_stage_loss_is_the_mse_of_the_clipped_output():
    model = module("mmse")
    x, y = batch()
    out = StubPosteriorMean.unclipped(y)
    assert out.min() < 0 and out.max() > 1
    loss = model.training_loss({"x": x, "y": y})
    torch.testing.assert_close(loss, F.mse_loss(out.clamp(0, 1), x), rtol=0, atol=0)
    assert not torch.isclose(loss, F.mse_loss(out, x))


def test_the_training_loader_drops_the_last_incomplete_batch(tmp_path):
    import train

    write_images(tmp_path / "train", 5, (16, 16))
    args = Namespace(train_batch_size=2, num_workers=0, degradation="gaussian_noise_035", img_size=16,
                     train_data_root=str(tmp_path / "train"), source_samples_train_data_root=None,
                     val_data_root=None, val_batch_size=2, skip_bad_images=False)
    train_loader, val_loader = train.make_loaders(args, processes=1)
    assert train_loader.drop_last and val_loader is None
    sizes = [len(b["x"]) for b in train_loader]
    assert sizes == [2, 2]  # 5 images: the fifth is left out of this epoch


def test_under_bf16_autocast_the_euler_update_is_float32():
    """A real (tiny) HDiT under CPU bf16 autocast: its velocity comes out in bf16, every state stays
    float32 and each step is x + dt·v.float()."""
    model = MMSERectifiedFlow(stage="naive_flow", arch=TINY_HDIT, ema_decay=-1, mmse_noise_std=0.1)
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # the output layer starts at zero
    _, y = batch()
    states = []
    steps = 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sample = model.pmrf.sample(y, steps, torch.Generator().manual_seed(0), callback=states.append)
    assert all(s["velocity"].dtype == torch.bfloat16 for s in states)
    assert all(s["x"].dtype == torch.float32 for s in states) and sample.xhat.dtype == torch.float32
    previous = sample.source
    for state in states:
        assert state["velocity"].abs().max() > 0
        assert torch.equal(state["x"], previous + (1 / steps) * state["velocity"].float())
        previous = state["x"]


# ------------------------------------------------------------------------------------- outputs


def test_outputs_are_rounded_as_floor_255v_plus_half():
    v = torch.tensor([0.0, 0.5, 0.25, 0.999, 1.0, -0.01, 1.2, 0.1]).view(1, 1, 8)
    assert tensor_to_uint8(v)[0, :, 0].tolist() == [0, 128, 64, 255, 255, 0, 255, 26]


def test_outputs_are_rounded_exactly_as_torchvisions_save_image(tmp_path):
    from torchvision.utils import save_image

    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    save_image(image, tmp_path / "torchvision.png")
    assert np.array_equal(tensor_to_uint8(image), np.asarray(Image.open(tmp_path / "torchvision.png")))


def jpeg_tables(path):
    with Image.open(path) as image:
        return image.quantization


def test_jpgs_are_written_at_quality_75_unless_asked(tmp_path):
    array = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    for quality in (75, 90):
        Image.fromarray(array).save(tmp_path / f"pil{quality}.jpg", quality=quality)
    assert jpeg_tables(tmp_path / "pil75.jpg") != jpeg_tables(tmp_path / "pil90.jpg")

    save_rgb(array, tmp_path / "default.jpg")
    save_rgb(array, tmp_path / "asked.jpg", jpeg_quality=90)
    with ImageWriter() as writer:
        writer.submit(torch.from_numpy(array).permute(2, 0, 1) / 255, tmp_path / "writer.jpg")
    assert jpeg_tables(tmp_path / "default.jpg") == jpeg_tables(tmp_path / "pil75.jpg")
    assert jpeg_tables(tmp_path / "writer.jpg") == jpeg_tables(tmp_path / "pil75.jpg")
    assert jpeg_tables(tmp_path / "asked.jpg") == jpeg_tables(tmp_path / "pil90.jpg")

    from helpers import load_test_program

    import inference

    test_program = load_test_program()
    assert inference.build_parser().get_default("jpeg_quality") == 75
    assert test_program.build_parser().get_default("jpeg_quality") == 75


# ---------------------------------------------------------------------- the reference's aliases


@pytest.mark.parametrize("colorization", [False, True], ids=["rgb", "colorization"])
@pytest.mark.parametrize("name", ["pmrf", "posterior_conditioned_on_mmse", "posterior_conditioned_on_y", "naive_flow"])
def test_forward_and_forward_flow_return_the_velocity_of_x_t_and_the_condition(name, colorization):
    model = module(name, colorization)
    x_t, y = batch(colorization)
    t = torch.tensor([0.2, 0.7]).view(B, 1, 1, 1)  # as generate_random_t gives it
    condition = {"pmrf": None, "naive_flow": None, "posterior_conditioned_on_y": y,
                 "posterior_conditioned_on_mmse": StubPosteriorMean.unclipped(y).clamp(0, 1)}[name]
    want_input = x_t if condition is None else torch.cat([x_t, condition], dim=1)
    want = model.model.fn(want_input, t.view(-1))
    for call in (lambda: model(x_t, t, y), lambda: model.forward_flow(x_t, t, y)):
        model.model.calls.clear()
        torch.testing.assert_close(call(), want, rtol=0, atol=0)
        (seen, seen_t), = model.model.calls
        assert torch.equal(seen, want_input) and seen_t.shape == (B,) and torch.equal(seen_t, t.view(-1))


def test_forward_of_the_mmse_stage_is_clip_of_model_of_y():
    model = module("mmse")
    _, y = batch()
    want = StubPosteriorMean.unclipped(y).clamp(0, 1)
    assert torch.equal(model(None, None, y), want) and torch.equal(model.forward_mmse(y), want)


@pytest.mark.parametrize("name", ["pmrf", "posterior_conditioned_on_mmse", "posterior_conditioned_on_y", "naive_flow"])
def test_create_source_distribution_samples(name):
    model = module(name, mmse_noise_std=0.2)
    x, y = batch()
    torch.manual_seed(5)
    z0 = model.create_source_distribution_samples(x, y)
    torch.manual_seed(5)
    n = torch.randn(B, 3, H, W)
    want = {"pmrf": StubPosteriorMean.unclipped(y).clamp(0, 1) + 0.2 * n, "naive_flow": y + 0.2 * n,
            "posterior_conditioned_on_mmse": n, "posterior_conditioned_on_y": n}[name]
    torch.testing.assert_close(z0, want, rtol=0, atol=1e-7)
    if name in ("pmrf", "naive_flow"):  # reflow: the given source replaces clip(f(y)) or y
        torch.manual_seed(5)
        torch.testing.assert_close(model.create_source_distribution_samples(x, y, non_noisy_z0=x), x + 0.2 * n)


def test_generate_random_t_is_b_1_1_1_in_eps_to_1():
    model = module("naive_flow", eps=0.3)
    t = model.generate_random_t(64)
    assert t.shape == (64, 1, 1, 1) and t.dtype == torch.float32
    assert t.min() >= 0.3 and t.max() <= 1.0
    # stratified (the default): one draw in each of the 64 strata of [eps, 1]
    strata = torch.floor((t.view(-1) - 0.3) / 0.7 * 64).long()
    assert sorted(strata.tolist()) == list(range(64))
    assert model.generate_random_t(4, dtype=torch.bfloat16).dtype == torch.bfloat16


# ------------------------------------------------------------------------------- --conditional


@pytest.mark.parametrize("stage,arch", [("mmse", TINY_SWINIR), ("naive_flow", TINY_HDIT)])
def test_conditional_applies_to_the_flow_stage_only(stage, arch):
    with pytest.raises(ValueError, match="conditional"):
        MMSERectifiedFlow(stage=stage, arch=arch, conditional=True)


def test_train_py_refuses_conditional_outside_the_flow_stage_with_one_line(tmp_path, capsys):
    """The program's own check (one branch for both stages; the constructor test covers each stage)."""
    import train

    stage, arch = "naive_flow", "hdit_XL2"
    with pytest.raises(SystemExit) as exit_:
        train.main(["--stage", stage, "--conditional", "--arch", arch, "--degradation", "gaussian_noise_035",
                    "--train_data_root", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--accelerator", "cpu"])
    assert exit_.value.code != 0
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--conditional" in errors[0] and stage in errors[0], stderr
    assert not (tmp_path / "out").exists()  # it stopped before setting anything up


# ---------------------------------------------------------------------------- Hugging Face


@pytest.fixture
def saved(tmp_path):
    model = MMSERectifiedFlow(stage="flow", arch=TINY_HDIT, mmse_model_arch=TINY_SWINIR, ema_decay=0.9)
    with torch.no_grad():
        for shadow in model.ema.shadow_params:
            shadow.add_(0.25)  # the saved weights are the EMA ones
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def assert_same_weights(loaded, model):
    for param, shadow in zip(loaded.model.parameters(), model.ema.shadow_params, strict=True):
        assert torch.equal(param, shadow)
    for key, value in model.mmse_model.state_dict().items():
        assert torch.equal(loaded.mmse_model.state_dict()[key], value), key


def test_from_pretrained_takes_constructor_overrides(saved):
    model, folder = saved
    loaded = MMSERectifiedFlow.from_pretrained(folder, num_flow_steps=7, mmse_noise_std=0.05)
    assert loaded.num_flow_steps == 7 and loaded.hparams["num_flow_steps"] == 7
    assert loaded.mmse_noise_std == 0.05 and loaded.pmrf.source_noise_std == 0.05
    assert MMSERectifiedFlow.from_pretrained(folder).num_flow_steps == model.num_flow_steps == 50
    assert_same_weights(loaded, model)


def test_from_pretrained_passes_revision_cache_dir_and_local_files_only_to_the_hub(saved, tmp_path, monkeypatch):
    _, folder = saved
    asked = []

    def fake_download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename, kwargs))
        return str(folder / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    MMSERectifiedFlow.from_pretrained("someone/pmrf", revision="v1.0", cache_dir=tmp_path / "cache",
                                      local_files_only=True, token="hf_x", force_download=True)
    assert [(r, f) for r, f, _ in asked] == [("someone/pmrf", "config.json"), ("someone/pmrf", "model.safetensors")]
    for _, _, kwargs in asked:
        assert kwargs["revision"] == "v1.0" and Path(kwargs["cache_dir"]) == tmp_path / "cache"
        assert kwargs["local_files_only"] is True and kwargs["token"] == "hf_x" and kwargs["force_download"] is True


def test_push_to_hub_uploads_the_saved_layout(saved, tmp_path, monkeypatch):
    """Offline: the Hub API is replaced by a local copy; what is "uploaded" loads back to the same model."""
    from huggingface_hub import HfApi

    model, _ = saved
    remote = tmp_path / "remote"
    created, uploads = [], []

    def create_repo(self, repo_id, **kwargs):
        created.append(repo_id)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploads.append(repo_id)
        shutil.copytree(folder_path, remote / repo_id)
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    model.push_to_hub("someone/pmrf-tiny")
    model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="someone/pmrf-tiny-2")
    assert created == uploads == ["someone/pmrf-tiny", "someone/pmrf-tiny-2"]
    for repo in uploads:
        assert {"config.json", "model.safetensors"} <= {p.name for p in (remote / repo).iterdir()}
        assert_same_weights(MMSERectifiedFlow.from_pretrained(remote / repo), model)
    assert_same_weights(MMSERectifiedFlow.from_pretrained(tmp_path / "local"), model)


def test_source_noise_std_is_an_alias_of_mmse_noise_std(tmp_path):
    model = MMSERectifiedFlow(stage="naive_flow", arch=TINY_HDIT, source_noise_std=0.3, ema_decay=-1)
    assert model.mmse_noise_std == 0.3 and model.pmrf.source_noise_std == 0.3
    assert model.hparams["mmse_noise_std"] == 0.3 and "source_noise_std" not in model.hparams
    model.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["mmse_noise_std"] == 0.3 and "source_noise_std" not in config
    _, y = batch()
    z0 = model.pmrf.source(y, torch.Generator().manual_seed(0)).z0
    torch.testing.assert_close(z0, y + 0.3 * torch.randn((B, 3, H, W), generator=torch.Generator().manual_seed(0)))


# ------------------------------------------------------------------------------ proof fixture


class Constant(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, y):
        return self.value.expand(len(y), -1, -1, -1)


@pytest.fixture
def proof():
    """Hand-checkable numbers for three rules at once (binary fractions, so every value is exact)."""
    return {
        # MMSE stage: model(y) = [-0.5, 1.5, 0.5, 0.25], x = [0.25, 0.75, 0.5, 0]
        "model_output": torch.tensor([-0.5, 1.5, 0.5, 0.25]).view(1, 1, 2, 2).expand(1, 3, 2, 2),
        "x": torch.tensor([0.25, 0.75, 0.5, 0.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2),
        "mse_of_clipped": (0.0625 + 0.0625 + 0 + 0.0625) / 4,  # [0, 1, 0.5, 0.25] against x
        "mse_of_unclipped": (0.5625 + 0.5625 + 0 + 0.0625) / 4,
        # rounding: floor(255·v + 0.5); truncation would give [127, 63, 254]
        "values": [0.5, 0.25, 0.999],
        "levels": [128, 64, 255],
    }


def test_proof_fixture_mmse_loss_rounding_and_metric_layout(proof):
    model = module("mmse")
    model.model = Constant(proof["model_output"])
    loss = model.training_loss({"x": proof["x"], "y": torch.zeros(1, 3, 2, 2)})
    assert loss.item() == proof["mse_of_clipped"] != proof["mse_of_unclipped"]

    v = torch.tensor(proof["values"]).view(1, 1, -1)
    assert tensor_to_uint8(v)[0, :, 0].tolist() == proof["levels"]

    # The metric layout of compute_metrics_*: the reference's keys (torch-fidelity with FFHQ as input1)
    # next to the restored-image ones. FFHQ: 50 points, identical logits (IS exactly 1). Restored: those
    # 50 points plus 50 far away, confident logits of 20 classes (IS well above 1).
    from torch_fidelity.metric_isc import isc_features_to_metric

    from evaluation.fidelity import fidelity_from_features

    grid = torch.tensor([[i, j] for i in range(10) for j in range(5)], dtype=torch.float64) * 3.0
    ffhq = {"2048": grid, "logits_unbiased": torch.zeros(50, 20, dtype=torch.float64)}
    far = 100.0 + torch.arange(50, dtype=torch.float64)[:, None] * torch.tensor([[0.01, 0.0]])
    restored = {"2048": torch.cat([grid, far]),
                "logits_unbiased": 20.0 * torch.eye(20, dtype=torch.float64).repeat(5, 1)}
    results = fidelity_from_features(ffhq, restored, ["isc", "prc"])
    assert {"inception_score_mean", "inception_score_std", "precision", "recall", "inception_score_restored_mean",
            "inception_score_restored_std", "precision_restored", "recall_restored"} <= set(results)
    assert results["inception_score_mean"] == pytest.approx(1.0) and results["inception_score_std"] == pytest.approx(0)
    restored_is = isc_features_to_metric(restored["logits_unbiased"], splits=10)
    assert results["inception_score_restored_mean"] == restored_is["inception_score_mean"] > 1.5
    assert results["inception_score_restored_std"] == restored_is["inception_score_std"]
    # half the restored images lie on the FFHQ manifold: that is precision (restored) = recall (reference key)
    assert results["precision_restored"] == results["recall"] == 0.5
    assert results["recall_restored"] == results["precision"]
