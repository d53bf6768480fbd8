"""Checkpoint formats: MMSE checkpoints, Lightning round trips, the Hugging Face layout, official checkpoints."""

import json

import lightning as L
import numpy as np
import pytest
import torch
from helpers import (
    TINY_HDIT,
    TINY_SWINIR,
    build_method,
    randomize_,
    save_lightning_mmse_checkpoint,
    write_images,
)
from PIL import Image
from torch.utils.data import DataLoader

import inference
from arch import create_arch
from data import ImageFolderDataset, make_transform
from degradations import create_degradation
from lightning_models.mmse_rectified_flow import MMSERectifiedFlow
from lightning_models.restoration import load_model
from utils.weights import WeightsReadError, read_checkpoint

SPEC_HPARAMS = dict(  # the official blind-face hyper-parameters
    stage="flow", arch="hdit_ImageNet256Sp4", conditional=False,
    mmse_model_ckpt_path="/home/someone/checkpoints/swinir_restoration512_L1.pth", mmse_model_arch="swinir_L",
    lr=5e-4, weight_decay=1e-2, betas=(0.9, 0.95), mmse_noise_std=0.1, num_flow_steps=50, ema_decay=0.9999,
    eps=0.0, t_schedule="stratified_uniform",
)


# ------------------------------------------------------------------------------------ MMSE checkpoints

def tiny_swinir_state(seed=1):
    torch.manual_seed(seed)
    return randomize_(create_arch(TINY_SWINIR), 0.05, torch.Generator().manual_seed(0)).state_dict()


@pytest.mark.parametrize("layout", ["params_ema", "params", "state_dict_module", "state_dict_model_module", "raw"])
def test_mmse_checkpoint_layouts(layout, tmp_path):
    state = tiny_swinir_state()
    if layout in ("params_ema", "params"):
        checkpoint = {layout: state}
    elif layout == "state_dict_module":
        checkpoint = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    elif layout == "state_dict_model_module":
        checkpoint = {"state_dict": {f"model.module.{k}": v for k, v in state.items()}}
    else:
        checkpoint = state
    torch.save(checkpoint, tmp_path / "mmse.pth")
    model = MMSERectifiedFlow(stage="flow", arch=TINY_HDIT, mmse_model_ckpt_path=str(tmp_path / "mmse.pth"),
                              mmse_model_arch=TINY_SWINIR)
    for key, value in state.items():
        assert torch.equal(model.mmse_model.state_dict()[key], value), key


def test_mmse_checkpoint_with_ema_uses_the_ema_weights_and_its_recorded_arch(tmp_path):
    path = save_lightning_mmse_checkpoint(tmp_path / "mmse.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["ema"]["shadow_params"] = [s + 0.5 for s in checkpoint["ema"]["shadow_params"]]
    torch.save(checkpoint, path)
    model = MMSERectifiedFlow(stage="flow", arch=TINY_HDIT, mmse_model_ckpt_path=str(path))  # arch from hparams
    for param, shadow in zip(model.mmse_model.parameters(), checkpoint["ema"]["shadow_params"]):
        assert torch.equal(param, shadow)
    assert model.hparams["mmse_model_arch"] == TINY_SWINIR


def test_mismatched_mmse_checkpoint_is_a_clear_error(tmp_path):
    torch.save({"params_ema": tiny_swinir_state()}, tmp_path / "mmse.pth")
    with pytest.raises(ValueError, match="does not match MMSE architecture"):
        MMSERectifiedFlow(stage="flow", arch=TINY_HDIT, mmse_model_ckpt_path=str(tmp_path / "mmse.pth"),
                          mmse_model_arch=dict(TINY_SWINIR, embed_dim=16))


def test_pickled_objects_are_refused(tmp_path, planted_code):
    torch.save({"params_ema": {}, "payload": planted_code}, tmp_path / "evil.pth")
    with pytest.raises(WeightsReadError, match="refused") as error:
        read_checkpoint(tmp_path / "evil.pth")
    assert "weights_only=False" not in str(error.value)  # never the unsafe advice
    assert not planted_code.ran


# ---------------------------------------------------------------------------------- Lightning round trip

def tiny_trainer(tmp_path, max_steps, **kwargs):
    return L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=str(tmp_path), **kwargs)


def tiny_loader(tmp_path, count=4, batch_size=2):
    dataset = ImageFolderDataset(write_images(tmp_path / "train", count, (16, 16)), create_degradation("gaussian_noise_035"),
                                 make_transform(16))
    return DataLoader(dataset, batch_size=batch_size)


def test_lightning_checkpoint_round_trip(tmp_path, mmse_ckpt):
    model = build_method("pmrf", mmse_ckpt, ema_decay=0.9)
    trainer = tiny_trainer(tmp_path, max_steps=3, enable_checkpointing=False)
    trainer.fit(model, tiny_loader(tmp_path))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = MMSERectifiedFlow.load_from_checkpoint(tmp_path / "model.ckpt")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.ema.num_updates == model.ema.num_updates == 3
    for a, b in zip(loaded.ema.shadow_params, model.ema.shadow_params):
        assert torch.equal(a, b)
    assert loaded.hparams["mmse_model_ckpt_path"] is None  # rebuilt from the checkpoint itself


def test_lightning_checkpoint_ignores_metric_keys_and_names_missing_ones(tmp_path, mmse_ckpt):
    model = build_method("pmrf", mmse_ckpt)
    checkpoint = {"state_dict": dict(model.state_dict()), "hyper_parameters": dict(model.hparams)}
    checkpoint["state_dict"]["fid.inception.weight"] = torch.zeros(2)
    torch.save(checkpoint, tmp_path / "with_fid.ckpt")
    MMSERectifiedFlow.load_from_checkpoint(tmp_path / "with_fid.ckpt")
    del checkpoint["state_dict"]["model.patch_in.proj.weight"]
    torch.save(checkpoint, tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="patch_in.proj.weight"):
        MMSERectifiedFlow.load_from_checkpoint(tmp_path / "missing.ckpt")


def test_resume_continues_from_the_saved_step_with_the_same_ema(tmp_path, mmse_ckpt):
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    loader = tiny_loader(tmp_path)
    first = build_method("pmrf", mmse_ckpt, ema_decay=0.9)
    trainer = tiny_trainer(tmp_path, max_steps=4, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)])
    trainer.fit(first, loader)
    saved = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4 and saved["ema"]["num_updates"] == 4

    class Capture(Callback):
        def on_train_start(self, trainer, module):
            self.step = trainer.global_step
            self.shadows = [s.clone() for s in module.ema.shadow_params]

    capture = Capture()
    second = build_method("pmrf", mmse_ckpt, ema_decay=0.9)
    trainer = tiny_trainer(tmp_path, max_steps=8, callbacks=[capture, ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)])
    trainer.fit(second, loader, ckpt_path=str(tmp_path / "ck" / "last.ckpt"), weights_only=True)
    assert capture.step == 4
    for got, want in zip(capture.shadows, saved["ema"]["shadow_params"]):
        assert torch.equal(got, want)
    final = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert final["global_step"] == 8 and final["ema"]["num_updates"] == 8


# ------------------------------------------------------------------------------- Hugging Face layout

def test_hugging_face_round_trip_copies_in_the_ema_weights(tmp_path, mmse_ckpt):
    model = build_method("pmrf", mmse_ckpt, ema_decay=0.9)
    with torch.no_grad():
        for shadow in model.ema.shadow_params:
            shadow.add_(0.25)
    model.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["stage"] == "flow" and config["mmse_model_ckpt_path"] is None
    loaded = MMSERectifiedFlow.from_pretrained(tmp_path / "hf")
    for param, shadow in zip(loaded.model.parameters(), model.ema.shadow_params):
        assert torch.equal(param, shadow)
    for key, value in model.mmse_model.state_dict().items():
        assert torch.equal(loaded.mmse_model.state_dict()[key], value)


def test_hub_ids_go_through_hf_hub_download(tmp_path, mmse_ckpt, monkeypatch):
    build_method("pmrf", mmse_ckpt).save_pretrained(tmp_path / "hf")
    asked = []

    def fake_download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        return str(tmp_path / "hf" / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    MMSERectifiedFlow.from_pretrained("someone/some-model")
    assert asked == [("someone/some-model", "config.json"), ("someone/some-model", "model.safetensors")]


def test_hub_download_failure_is_a_clear_message(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    with pytest.raises(RuntimeError, match="If you are offline"):
        MMSERectifiedFlow.from_pretrained("ohayonguy/PMRF_blind_face_image_restoration")


# ------------------------------------------------------------------- official layout, full-size networks

@pytest.fixture(scope="module")
def official_checkpoints(tmp_path_factory, arch_manifest):
    """A synthetic blind-face checkpoint in the official layouts (keys from the manifest)."""
    root = tmp_path_factory.mktemp("official")
    gen = torch.Generator().manual_seed(0)

    def values(entry, prefix):
        # attention scales must be positive (square roots); everything else small and random
        return {f"{prefix}{k}": torch.rand(shape, generator=gen) * 0.02 + 0.01 for k, shape in arch_manifest[entry].items()}

    state = {**values("hdit_ImageNet256Sp4+cond0", "model."), **values("swinir_L+cond0", "mmse_model.")}
    state["fid.inception.Conv2d_1a_3x3.conv.weight"] = torch.zeros(32, 3, 3, 3)  # stale metric module
    params = [k for k in arch_manifest["hdit_ImageNet256Sp4+cond0"]
              if not k.endswith(("time_emb.weight", "aug_emb.weight", "pos_emb.freqs"))]
    shadows = [state[f"model.{k}"] + 0.001 for k in params]
    checkpoint = {
        "state_dict": state,
        "hyper_parameters": dict(SPEC_HPARAMS, colorization=False),
        "ema": {"decay": 0.9999, "num_updates": 1000, "shadow_params": shadows, "collected_params": None},
        "global_step": 1000,
        "pytorch-lightning_version": "2.3.3",
    }
    torch.save(checkpoint, root / "blind_face_restoration_pmrf.ckpt")
    hf = root / "hf"
    hf.mkdir()
    config = {k: v for k, v in SPEC_HPARAMS.items()}
    config["betas"] = list(config["betas"])
    (hf / "config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    hf_state = {k: v for k, v in state.items() if not k.startswith("fid.")}
    for name, shadow in zip(params, shadows):
        hf_state[f"model.{name}"] = shadow
    save_file(hf_state, str(hf / "model.safetensors"))
    lq = root / "lq"
    lq.mkdir()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(lq / "face.png")
    return {"ckpt": root / "blind_face_restoration_pmrf.ckpt", "hf": hf, "lq": lq, "shadows": shadows, "params": params}


def test_official_lightning_checkpoint_loads_with_its_ema(official_checkpoints):
    model = load_model(str(official_checkpoints["ckpt"]), device="cpu")
    assert model.method_name == "pmrf" and model.mmse_model is not None
    named = dict(model.model.named_parameters())
    for name, shadow in zip(official_checkpoints["params"], official_checkpoints["shadows"]):
        assert torch.equal(named[name], shadow)


@pytest.mark.parametrize("path_kind", ["ckpt", "hf"])
def test_official_layouts_run_through_inference_py(path_kind, official_checkpoints, tmp_path):
    args = ["--ckpt_path", str(official_checkpoints[path_kind]), "--lq_data_path", str(official_checkpoints["lq"]),
            "--output_dir", str(tmp_path / "out"), "--num_flow_steps", "1", "--batch_size", "2", "--device", "cpu",
            "--num_workers", "0", "--input_size", "0"]
    if path_kind == "hf":
        args.append("--ckpt_path_is_huggingface")
    inference.main(args)
    for folder in ("restored_images", "restored_images_posterior_mean"):
        image = Image.open(tmp_path / "out" / folder / "face.png")
        assert image.size == (64, 64)
