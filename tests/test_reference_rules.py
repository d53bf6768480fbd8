"""Rules of the reference implementation that this project keeps, each pinned by a test.

The MMSE loss is taken on the clipped output; the training loader drops the last incomplete batch and,
on one device, visits the images in the order of the reference's DistributedSampler; the EMA is updated
before the optimizer step; validation and testing run the raw weights and inference the EMA weights;
train.py's checkpoints hold the reference's keys (FID / IS Inception networks included) and its
`--precision` default is Lightning's; the training scripts carry the reference's arguments; the Euler
update is float32 under bf16 autocast; outputs are rounded as torchvision's save_image and JPEGs written
at quality 75; the reference's module API (`forward`, `forward_flow`, `maybe_ema`, `ema_wanted`,
`stratified_uniform`, `test_step` writing to `test_results_path`, ...) exists and behaves; validation
panels have the reference's layout; inpainting drops int(0.9·H·W) pixels; `--conditional` is for the
flow stage only; the Hugging Face entry points take the usual arguments and work offline;
`source_noise_std` is an alias of `mmse_noise_std`.
"""

import json
import shutil
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import (
    FLOW_METHODS,
    TINY_HDIT,
    TINY_SWINIR,
    StubPosteriorMean,
    StubVelocity,
    build_method,
    load_program,
    method_arguments,
    random_inception,
    randomize_,
    save_checkpoint,
    table_condition,
    table_source,
    write_arch_json,
    write_images,
)
from PIL import Image
from torch import nn
from torch.nn import functional as F

from lightning_models.mmse_rectified_flow import MMSERectifiedFlow
from lightning_models.pmrf import METHODS, STAGES
from lightning_models.restoration import AlignedReport
from utils.images import ImageWriter, save_rgb, tensor_to_uint8

ROOT = Path(__file__).resolve().parents[1]
B, H, W = 2, 8, 8

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def module(name: str, colorization: bool = False, **kwargs) -> MMSERectifiedFlow:
    """A tiny MMSERectifiedFlow of the registered method `name`, with stub networks (helpers.StubVelocity,
    StubPosteriorMean) put in."""
    args = method_arguments(name, TINY_SWINIR)
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

    import inference

    test_program = load_program("test.py")
    assert inference.build_parser().get_default("jpeg_quality") == 75
    assert test_program.build_parser().get_default("jpeg_quality") == 75


# ---------------------------------------------------------------------- the reference's aliases


@pytest.mark.parametrize("colorization", [False, True], ids=["rgb", "colorization"])
@pytest.mark.parametrize("name", FLOW_METHODS)
def test_forward_and_forward_flow_return_the_velocity_of_x_t_and_the_condition(name, colorization):
    model = module(name, colorization)
    x_t, y = batch(colorization)
    t = torch.tensor([0.2, 0.7]).view(B, 1, 1, 1)  # as generate_random_t gives it
    condition = table_condition(METHODS[name], y, StubPosteriorMean.unclipped(y).clamp(0, 1))
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


@pytest.mark.parametrize("name", FLOW_METHODS)
def test_create_source_distribution_samples(name):
    model = module(name, mmse_noise_std=0.2)
    x, y = batch()
    torch.manual_seed(5)
    z0 = model.create_source_distribution_samples(x, y)
    torch.manual_seed(5)
    n = torch.randn(B, 3, H, W)
    want = table_source(METHODS[name], y, StubPosteriorMean.unclipped(y).clamp(0, 1), n, 0.2)
    torch.testing.assert_close(z0, want, rtol=0, atol=1e-7)
    if METHODS[name].source != "noise":  # reflow: the given source replaces clip(f(y)) or y
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


@pytest.mark.parametrize("stage", [stage for stage in STAGES if stage != "flow"])
def test_conditional_applies_to_the_flow_stage_only(stage):
    with pytest.raises(ValueError, match="conditional"):
        MMSERectifiedFlow(stage=stage, arch=TINY_SWINIR if stage == "mmse" else TINY_HDIT, conditional=True)


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


# ---------------------------------------------------------------- which weights: raw or EMA


@pytest.fixture(scope="module")
def ema_checkpoint(tmp_path_factory, mmse_ckpt):
    """A tiny PMRF checkpoint whose EMA weights differ from its raw weights, and two images."""
    root = tmp_path_factory.mktemp("ema_checkpoint")
    model = build_method("pmrf", mmse_ckpt, ema_decay=0.9, mmse_noise_std=0.1)
    with torch.no_grad():
        for shadow in model.ema.shadow_params:
            shadow.add_(0.25)
    save_checkpoint(model, root / "pmrf.ckpt")
    return SimpleNamespace(path=root / "pmrf.ckpt", images=write_images(root / "images", 2, (16, 16)),
                           raw=[p.detach().clone() for p in model.model.parameters()],
                           ema=[s.clone() for s in model.ema.shadow_params])


def weights_in(model, checkpoint) -> str:
    params = [p.detach().cpu() for p in model.model.parameters()]
    for name, values in (("raw", checkpoint.raw), ("ema", checkpoint.ema)):
        if all(torch.equal(p, v) for p, v in zip(params, values, strict=True)):
            return name
    return "neither"


def test_testing_and_validation_run_the_raw_weights_and_inference_the_ema(ema_checkpoint, tmp_path, monkeypatch):
    """The reference's maybe_ema never enters the EMA context, so its validation and test.py (the paper's
    published numbers) run the raw weights; its inference.py copies the EMA in. --use_ema opts in."""
    import lightning as L
    from torch.utils.data import DataLoader

    import inference
    import train
    from data import ImageFolderDataset, make_transform
    from degradations import create_degradation
    from lightning_models.pmrf import PMRF

    checkpoint, seen = ema_checkpoint, {}
    real_sample = PMRF.sample

    def recording(self, *args, **kwargs):  # the weights test_step and validation_step restore with
        seen[seen["now"]] = weights_in(self, checkpoint)
        return real_sample(self, *args, **kwargs)

    monkeypatch.setattr(PMRF, "sample", recording)

    test_program = load_program("test.py")
    for flags in ([], ["--use_ema"], ["--use_raw_weights"]):
        seen["now"] = " ".join(["test.py", *flags])
        test_program.main(["--degradation", "gaussian_noise_035", "--test_data_root", str(checkpoint.images),
                           "--ckpt_path", str(checkpoint.path), "--results_path", str(tmp_path / "results"),
                           "--img_size", "16", "--batch_size", "2", "--num_workers", "0", "--num_flow_steps", "1",
                           "--accelerator", "cpu", *flags])

    loader = DataLoader(ImageFolderDataset(checkpoint.images, create_degradation("gaussian_noise_035"), make_transform(16)),
                        batch_size=2)
    for use_ema in (False, True):
        seen["now"] = "validation" + (" (use_ema)" if use_ema else "")
        model = MMSERectifiedFlow.load_from_checkpoint(checkpoint.path)
        model.use_ema = use_ema
        L.Trainer(accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False).validate(model, loader, verbose=False)
    # train.py hands its --use_ema to the module it validates
    fitted = []
    monkeypatch.setattr(train.L.Trainer, "fit", lambda self, model, *args, **kwargs: fitted.append(model.use_ema))
    for flags in ([], ["--use_ema"]):
        train.main(["--stage", "mmse", "--arch", "swinir_M", "--degradation", "gaussian_noise_035",
                    "--train_data_root", str(checkpoint.images), "--img_size", "16", "--train_batch_size", "2",
                    "--num_workers", "0", "--accelerator", "cpu", "--logger", "csv",
                    "--output_dir", str(tmp_path / f"train{len(fitted)}"), *flags])

    def inference_model(*flags):
        captured = []
        monkeypatch.setattr(inference, "restore_aligned", lambda model, *a: captured.append(model) or
                            AlignedReport(written=1))
        monkeypatch.setattr("whole_image.cli.run_whole_image", lambda options, restorer, device: captured.append(restorer.model))
        inference.main(["--ckpt_path", str(checkpoint.path), "--lq_data_path", str(checkpoint.images),
                        "--output_dir", str(tmp_path / "out"), "--device", "cpu", *flags])
        return captured[0]

    for flags in ([], ["--whole_image"], ["--use_raw_weights"], ["--whole_image", "--use_raw_weights"]):
        seen[" ".join(["inference.py", *flags])] = weights_in(inference_model(*flags), checkpoint)

    import app

    for flags in ([], ["--use_raw_weights"]):
        settings = app.DemoSettings.from_args(app.parse_args(["--ckpt_path", str(checkpoint.path), *flags]))
        _, model = app.ModelStore(settings)._load_model()
        seen[" ".join(["app.py", *flags])] = weights_in(model, checkpoint)

    del seen["now"]
    assert seen == {
        "test.py": "raw", "test.py --use_ema": "ema", "test.py --use_raw_weights": "raw",
        "validation": "raw", "validation (use_ema)": "ema",
        "inference.py": "ema", "inference.py --whole_image": "ema",
        "inference.py --use_raw_weights": "raw", "inference.py --whole_image --use_raw_weights": "raw",
        "app.py": "ema", "app.py --use_raw_weights": "raw",
    }
    assert fitted == [False, True]


# ------------------------------------------------------------------------------------------ EMA


def test_the_ema_after_n_steps_averages_theta_0_to_theta_n_minus_1_as_the_reference(tmp_path):
    """The reference updates the EMA in on_before_zero_grad, before the step's optimizer step: after N
    steps it has averaged θ0 … θ_{N−1}. Pinned bit for bit against torch-ema fed those states."""
    import lightning as L
    from torch.utils.data import DataLoader
    from torch_ema import ExponentialMovingAverage

    from data import ImageFolderDataset, make_transform
    from degradations import create_degradation

    class RecordStates(L.Callback):
        states: list = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.states.append([p.detach().clone() for p in module.model.parameters()])

    steps, record = 3, RecordStates()
    model = MMSERectifiedFlow(stage="naive_flow", arch=TINY_HDIT, ema_decay=0.9, lr=1e-2)
    dataset = ImageFolderDataset(write_images(tmp_path / "train", 6, (16, 16)), create_degradation("gaussian_noise_035"),
                                 make_transform(16))
    L.Trainer(accelerator="cpu", devices=1, default_root_dir=tmp_path, max_steps=steps, logger=False,
              enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, callbacks=[record]).fit(
        model, DataLoader(dataset, batch_size=2))
    assert len(record.states) == steps
    reference = ExponentialMovingAverage([nn.Parameter(p.clone()) for p in record.states[0]], decay=0.9)
    for theta in record.states:  # θ0 … θ_{N−1}
        reference.update(theta)
    assert model.ema.num_updates == reference.num_updates == steps
    for ours, want in zip(model.ema.shadow_params, reference.shadow_params, strict=True):
        assert torch.equal(ours, want)
    final = list(model.model.parameters())  # θ_N is not in the average yet
    assert not all(torch.equal(a, b) for a, b in zip(final, record.states[-1]))


# ------------------------------------------------------------------------------- train.py rules


def test_train_py_precision_defaults_to_lightnings_own(tmp_path, monkeypatch):
    import train

    precisions = []
    monkeypatch.setattr(train.L.Trainer, "fit", lambda self, *args, **kwargs: precisions.append(self.precision))
    assert train.build_parser().get_default("precision") is None  # the reference's argument has no default
    train.main(["--stage", "mmse", "--arch", "swinir_M", "--degradation", "gaussian_noise_035",
                "--train_data_root", str(write_images(tmp_path / "train", 2, (16, 16))), "--img_size", "16",
                "--train_batch_size", "2", "--num_workers", "0", "--accelerator", "cpu", "--logger", "csv",
                "--output_dir", str(tmp_path / "out")])
    assert precisions == ["32-true"]


def test_on_one_device_the_training_order_is_the_reference_distributed_samplers(tmp_path, monkeypatch):
    """The reference always runs DDP: Lightning shuffles with DistributedSampler(shuffle, seed 0) and
    set_epoch each epoch. One process here visits the images in that order too."""
    import lightning as L
    from torch.utils.data import DistributedSampler

    import train

    class Names(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(list(batch["img_file_name"]))
            return (self.w - 1).square().sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    args = Namespace(train_batch_size=2, num_workers=0, degradation="gaussian_noise_035", img_size=16,
                     train_data_root=str(write_images(tmp_path / "train", 7, (16, 16))),
                     source_samples_train_data_root=None, val_data_root=None, val_batch_size=2, skip_bad_images=False)
    loader, _ = train.make_loaders(args, processes=1)
    module = Names()
    L.Trainer(accelerator="cpu", devices=1, default_root_dir=tmp_path, max_epochs=3, logger=False,
              enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False).fit(module, loader)

    names = sorted(p.name for p in (tmp_path / "train").iterdir())
    reference = DistributedSampler(loader.dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    expected = []
    for epoch in range(3):
        reference.set_epoch(epoch)
        order = [names[i] for i in reference]
        expected += [order[i:i + 2] for i in range(0, 6, 2)]  # 7 images, batches of 2: the last is dropped
    assert module.seen == expected
    assert module.seen[:3] != module.seen[3:6]  # reshuffled every epoch


# ----------------------------------------------------------------------------- training scripts


def script_arguments(path: Path) -> dict[str, str]:
    """{option: value} of the `python train.py ...` command of a training script ('' for a flag)."""
    import shlex

    tokens = shlex.split(path.read_text().split("python train.py", 1)[1].replace("\\\n", " "), comments=True)
    arguments, option = {}, None
    for token in tokens:
        if token.startswith("--"):
            option = token[2:]
            arguments[option] = ""
        else:
            arguments[option] = (arguments[option] + " " + token).strip()
    return arguments


def test_every_training_script_carries_the_references_arguments():
    """tests/data/reference_train_scripts.json: every argument of the reference's 21 scripts. The output
    folder and the W&B names are this project's own."""
    reference = json.loads((Path(__file__).parent / "data" / "reference_train_scripts.json").read_text())
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scripts" / "train").rglob("*.sh"))
    assert scripts == sorted(reference)
    own = {"output_dir", "wandb_group", "wandb_project_name", "wandb_id"}
    for script, arguments in reference.items():
        ours = script_arguments(ROOT / script)
        mine = {k: v for k, v in ours.items() if k not in own}
        assert mine == {k: v for k, v in arguments.items() if k not in own}, script
    import train

    options = {a.dest for a in train.build_parser()._actions}
    assert {k for arguments in reference.values() for k in arguments} <= options


# ------------------------------------------------------------------------- the module's API


def test_test_step_writes_the_results_of_every_k_itself(ema_checkpoint, tmp_path, monkeypatch):
    """A script written against the reference: load, set test_results_path and num_test_flow_steps,
    trainer.test. The model writes the reference's layout with those K."""
    import lightning as L
    from torch.utils.data import DataLoader

    from data import ImageFolderDataset, make_transform
    from degradations import create_degradation
    from lightning_models.pmrf import PMRF

    model = MMSERectifiedFlow.load_from_checkpoint(ema_checkpoint.path)
    assert model.test_results_path is None  # the reference's attribute, set by its test.py
    model.test_results_path = tmp_path / "results"
    model.num_test_flow_steps = [1, 3]
    steps_run = []
    real_sample = PMRF.sample
    monkeypatch.setattr(PMRF, "sample", lambda self, y, steps, *a, **k: steps_run.append(steps)
                        or real_sample(self, y, steps, *a, **k))
    loader = DataLoader(ImageFolderDataset(ema_checkpoint.images, create_degradation("gaussian_noise_035"),
                                           make_transform(16)), batch_size=2)
    L.Trainer(accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
              enable_model_summary=False).test(model, loader, verbose=False)
    assert steps_run == [1, 3]
    written = sorted(str(p.relative_to(tmp_path / "results")) for p in (tmp_path / "results").rglob("*.png"))
    assert written == sorted(f"{folder}/{name}" for name in ("000.png", "001.png") for folder in (
        "y", "num_flow_steps=1/xhat", "num_flow_steps=3/xhat", "source_distribution_samples", "mmse_samples"))


def test_ema_wanted_and_maybe_ema_keep_the_references_meaning(ema_checkpoint):
    model = MMSERectifiedFlow.load_from_checkpoint(ema_checkpoint.path)
    assert model.ema_wanted and not MMSERectifiedFlow(stage="mmse", arch=TINY_SWINIR, ema_decay=-1).ema_wanted
    with model.maybe_ema() as apply_ema:  # what the reference's `with self.maybe_ema():` runs: raw weights
        assert weights_in(model, ema_checkpoint) == "raw"
        with apply_ema:  # the yielded context manager swaps the EMA weights in
            assert weights_in(model, ema_checkpoint) == "ema"
        assert weights_in(model, ema_checkpoint) == "raw"
    model.use_ema = True
    with model.maybe_ema() as apply_ema:
        assert weights_in(model, ema_checkpoint) == "ema"
        with apply_ema:
            assert weights_in(model, ema_checkpoint) == "ema"
    assert weights_in(model, ema_checkpoint) == "raw" and model.ema.collected_params is None


def test_stratified_uniform_is_the_references_static_method():
    torch.manual_seed(11)
    t = MMSERectifiedFlow.stratified_uniform(6, group=1, groups=3, dtype=torch.float64)
    torch.manual_seed(11)
    u = torch.rand(6)
    want = (1 + torch.arange(6) * 3 + u) / (6 * 3)
    assert t.shape == (6, 1, 1, 1) and t.dtype == torch.float64
    torch.testing.assert_close(t.view(-1), want.double(), rtol=0, atol=0)


def test_from_pretrained_refuses_unknown_keywords_and_honours_strict(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = saved
    with pytest.raises(TypeError, match="num_flow_stepz"):
        MMSERectifiedFlow.from_pretrained(folder, num_flow_stepz=7)
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    state = load_file(partial / "model.safetensors")
    del state["model.patch_in.proj.weight"]
    save_file(state, partial / "model.safetensors")
    with pytest.raises(ValueError, match="patch_in.proj.weight"):
        MMSERectifiedFlow.from_pretrained(partial)
    loaded = MMSERectifiedFlow.from_pretrained(partial, strict=False)
    assert torch.equal(loaded.model.state_dict()["patch_out.proj.weight"], state["model.patch_out.proj.weight"])


def test_load_from_checkpoint_honours_hparams_file_and_lightnings_map_location(ema_checkpoint, tmp_path, monkeypatch):
    from lightning.pytorch.core import saving

    hparams = dict(torch.load(ema_checkpoint.path, weights_only=True)["hyper_parameters"], num_flow_steps=7)
    saving.save_hparams_to_yaml(tmp_path / "hparams.yaml", hparams)
    assert MMSERectifiedFlow.load_from_checkpoint(ema_checkpoint.path).num_flow_steps == 50
    assert MMSERectifiedFlow.load_from_checkpoint(ema_checkpoint.path, hparams_file=tmp_path / "hparams.yaml").num_flow_steps == 7

    asked = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: asked.append(k.get("map_location")) or real_load(*a, **k))
    MMSERectifiedFlow.load_from_checkpoint(ema_checkpoint.path)
    MMSERectifiedFlow.load_from_checkpoint(ema_checkpoint.path, map_location="cpu")
    # None: Lightning's default (tensors stay on the device they were saved from when it exists here)
    assert asked == [saving._default_map_location, "cpu"]


# ---------------------------------------------------------------------------- validation panels


def test_validation_panels_are_five_images_unpadded_and_every_trajectory_state(tmp_path, monkeypatch):
    from lightning_models.pmrf import PMRF
    from utils.images import read_rgb

    model = MMSERectifiedFlow(stage="naive_flow", arch=TINY_HDIT, ema_decay=-1, mmse_noise_std=0.1, num_flow_steps=4)
    randomize_(model.model, 0.1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 16, 16, generator=gen), torch.rand(8, 3, 16, 16, generator=gen)
    states = []
    real_sample = PMRF.sample

    def sample(self, *args, callback=None, **kwargs):
        def record(state):
            states.append(state["x"][0].clone())
            if callback is not None:
                callback(state)
        out = real_sample(self, *args, callback=record, **kwargs)
        states.insert(0, out.source[0].clone())
        return out

    monkeypatch.setattr(PMRF, "sample", sample)
    model.on_validation_epoch_start()
    model.validation_step({"x": x, "y": y}, 0)
    model._validation_images.save(tmp_path, epoch=0)
    folder = tmp_path / "epoch=0000"
    panel = {name: read_rgb(folder / f"{name}.png") for name in ("x", "y", "xhat", "x_t_seq", "source_distribution_samples")}
    assert panel["x"].shape == panel["y"].shape == panel["xhat"].shape == (16, 5 * 16, 3)  # no padding
    assert panel["x_t_seq"].shape == (16, 5 * 16, 3)  # z0 and the K = 4 Euler states, all of them
    assert np.array_equal(panel["x"], tensor_to_uint8(torch.cat(list(x[:5]), dim=2)))
    assert np.array_equal(panel["x_t_seq"], tensor_to_uint8(torch.cat([s.clamp(0, 1) for s in states], dim=2)))


# ----------------------------------------------------------------------------------- degradations


def test_inpainting_drops_int_of_ninety_percent_of_the_pixels():
    """8×8: 0.9·64 = 57.6 pixels; the reference drops int(57.6) = 57, not round(57.6) = 58."""
    from degradations.noise import RandomInpaintingNoise

    degradation = RandomInpaintingNoise(0.9, 0.0, torch.Generator().manual_seed(0))
    degradation(torch.ones(3, 8, 8))
    assert int((degradation.last_mask == 0).sum()) == 57


# ----------------------------------------------------------------------- checkpoints both ways


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """Synthetic Inception weights in the layout of torch-fidelity's file (random; nothing downloaded)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(random_inception(["2048"]).state_dict(), path)
    return path


def reference_keyed_module() -> nn.Module:
    """A module with the reference's state-dict keys for a tiny PMRF: `model`, `mmse_model`, and, as its
    __init__ creates them for flow stages, torchmetrics' FrechetInceptionDistance(reset_real_features=True,
    normalize=True) and InceptionScore(normalize=True) with their own default Inception networks (built on
    the meta device with nothing loaded: keys and shapes only)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore

    from arch import create_arch

    module = nn.Module()
    no_download = mock.patch.object(fidelity_inception, "load_state_dict_from_url", lambda *a, **k: {})
    no_load = mock.patch.object(nn.Module, "load_state_dict", lambda self, *a, **k: None)
    with torch.device("meta"):
        module.model, module.mmse_model = create_arch(TINY_HDIT), create_arch(TINY_SWINIR)
        with no_download, no_load:
            module.fid = FrechetInceptionDistance(reset_real_features=True, normalize=True)
            module.inception_score = InceptionScore(normalize=True)
    return module


def tensors_in(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else []
    return [t for value in values for t in tensors_in(value)]


@pytest.mark.slow
def test_train_py_checkpoints_hold_the_reference_keys_and_load_both_ways(inception_weights, tmp_path, monkeypatch,
                                                                          mmse_ckpt):
    import train

    write_images(tmp_path / "train", 4, (16, 16))
    write_images(tmp_path / "val", 2, (16, 16), seed=1)
    hdit = write_arch_json(tmp_path / "hdit.json", TINY_HDIT)

    def train_flow(out, *extra):
        train.main([str(a) for a in (
            "--stage", "flow", "--arch", hdit, "--mmse_model_ckpt_path", mmse_ckpt, "--source_noise_std", 0.1,
            "--degradation", "gaussian_noise_035", "--train_data_root", tmp_path / "train", "--val_data_root",
            tmp_path / "val", "--img_size", 16, "--train_batch_size", 2, "--val_batch_size", 2, "--num_workers", 0,
            "--num_flow_steps", 1, "--accelerator", "cpu", "--logger", "csv", "--max_steps", 2, "--output_dir", out,
            *extra)])
        path = out / "checkpoints" / "last.ckpt"
        return path, torch.load(path, weights_only=True)

    # With the Inception weights (--metrics_ckpt_dir may name the file): the reference's key set, the same
    # Inception weights, no second copy
    path, checkpoint = train_flow(tmp_path / "online", "--metrics_ckpt_dir", inception_weights)
    state = checkpoint["state_dict"]
    assert {key.split(".")[0] for key in state} == {"model", "mmse_model", "fid", "inception_score"}
    inception = torch.load(inception_weights, weights_only=True)
    for metric in ("fid", "inception_score"):
        prefix = f"{metric}.inception."
        held = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        assert held.keys() == inception.keys() and all(torch.equal(held[k], inception[k]) for k in inception)
    assert checkpoint["ema"]["collected_params"] is None
    assert "inception_weights_saved" not in checkpoint["hyper_parameters"]
    reference = reference_keyed_module()
    reference.load_state_dict(state, strict=True, assign=True)  # the reference's strict load_from_checkpoint

    parts = (state, checkpoint["ema"]["shadow_params"], checkpoint["optimizer_states"])
    payload = sum(t.numel() * t.element_size() for part in parts for t in tensors_in(part))
    count = sum(len(tensors_in(part)) for part in parts)
    assert path.stat().st_size <= payload + 512 * count + (64 << 10)

    # It loads here, for inference (without the metric networks) and to resume training
    loaded = MMSERectifiedFlow.load_from_checkpoint(path)
    assert loaded.fid is None and {k.split(".")[0] for k in loaded.state_dict()} == {"model", "mmse_model"}
    _, resumed = train_flow(tmp_path / "online", "--resume_from_ckpt", "last", "--max_steps", 3,
                            "--check_val_every_n_epoch", 9, "--metrics_ckpt_dir", inception_weights)
    assert resumed["global_step"] == 3 and resumed["state_dict"].keys() == state.keys()
    assert resumed["ema"]["collected_params"] is None

    # Without them (offline): the checkpoint says so, and the reference loads it with strict=False
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no Inception file in torch's hub cache
    path, offline = train_flow(tmp_path / "offline", "--offline")
    assert offline["hyper_parameters"]["inception_weights_saved"] is False
    missing, unexpected = reference_keyed_module().load_state_dict(offline["state_dict"], strict=False, assign=True)
    assert not unexpected and {key.split(".")[0] for key in missing} == {"fid", "inception_score"}
    assert "inception_weights_saved" not in MMSERectifiedFlow.load_from_checkpoint(path).hparams


# ------------------------------------------------------------------------------------- the README


def test_the_readme_lists_every_difference_and_claims_no_reference_seed_default():
    import inference

    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Differences from the reference code", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| difference")]
    for needle in ("`--use_ema`", "raw weights", "`strict=False`", "EXIF", "resized", "sorted order", "float64",
                   "chunked", "test.sh", "`--output_dir`", "--seed", "`--lr`"):
        assert any(needle in row for row in rows), needle
    seed_rows = [line for line in readme.splitlines() if "`--seed` (0)" in line]
    assert seed_rows and not any("reference's default" in line for line in seed_rows)
    seed = next(a for a in inference.build_parser()._actions if a.dest == "seed")
    assert seed.default == 0 and "as the reference" not in seed.help
