"""The distortion–perception knob `--fidelity_weight w` through the programs: inference.py (aligned and
--whole_image), test.py and FaceRestorer give (1 − w)·PMRF + w·posterior mean, and models without a
posterior mean refuse w > 0 in one line. (The algebra itself is pinned in test_method.py; the web demo's
slider in test_app.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import build_method, call, load_program, randomize_, save_checkpoint, write_images
from PIL import Image

import inference
from lightning_models.restoration import FaceRestorer

test_program = load_program("test.py")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, mmse_ckpt):
    """A PMRF checkpoint (tiny HDiT over a tiny SwinIR, random weights) and a naive_flow one, no posterior mean."""
    root = tmp_path_factory.mktemp("knob")
    paths = {}
    for name in ("pmrf", "naive_flow"):
        torch.manual_seed(1)
        model = build_method(name, mmse_ckpt, ema_decay=-1)
        randomize_(model.model, 0.05)  # HDiT's output layer starts at zero: make the flow move
        paths[name] = save_checkpoint(model, root / f"{name}.ckpt")
    write_images(root / "lq", 2, (16, 16))
    return root, paths


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64)


def restore(root, ckpt, out, capsys, *extra) -> tuple[int, str]:
    code, _, err = call(inference.main, ["--ckpt_path", ckpt, "-i", root / "lq", "-o", out, "--device", "cpu",
                                         "--num_workers", 0, "--num_flow_steps", 2, *extra], capsys)
    return code, err


def test_inference_blends_pmrf_and_the_posterior_mean(checkpoints, tmp_path, capsys):
    root, paths = checkpoints
    for w in ("0", "0.5", "1"):
        code, err = restore(root, paths["pmrf"], tmp_path / w, capsys, "--fidelity_weight", w)
        assert code == 0, err
    name = "000.png"
    pmrf, mean = pixels(tmp_path / "0" / "restored_images" / name), pixels(tmp_path / "0" / "restored_images_posterior_mean" / name)
    assert np.abs(pmrf - mean).max() > 10  # the two estimates differ visibly
    assert np.array_equal(pixels(tmp_path / "1" / "restored_images" / name), mean)  # w = 1: the posterior mean
    half = pixels(tmp_path / "0.5" / "restored_images" / name)
    assert np.abs(half - (pmrf + mean) / 2).max() <= 1.0  # 8-bit rounding of each term
    # the posterior-mean folder is the same whatever w
    assert np.array_equal(pixels(tmp_path / "0.5" / "restored_images_posterior_mean" / name), mean)


def test_short_option_w_and_its_range(checkpoints, tmp_path, capsys):
    root, paths = checkpoints
    assert inference.build_parser().parse_args(["-i", str(root / "lq"), "-o", "x", "-w", "0.25"]).fidelity_weight == 0.25
    for bad in ("1.5", "-0.1", "nan", "half"):
        code, err = restore(root, paths["pmrf"], tmp_path / "out", capsys, "-w", bad)
        assert code == 2 and "argument -w/--fidelity_weight" in err, err


def test_a_model_without_a_posterior_mean_refuses_w_above_zero_in_one_line(checkpoints, tmp_path, capsys):
    root, paths = checkpoints
    code, err = restore(root, paths["naive_flow"], tmp_path / "out", capsys, "--fidelity_weight", "0.5")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "--fidelity_weight 0.5" in lines[0] and "naive_flow" in lines[0], err
    assert not (tmp_path / "out" / "restored_images").exists()  # refused before any work
    code, err = restore(root, paths["naive_flow"], tmp_path / "zero", capsys, "--fidelity_weight", "0")
    assert code == 0, err


def test_whole_image_mode_hands_the_weight_to_the_face_restorer(checkpoints, tmp_path, monkeypatch):
    root, paths = checkpoints
    seen = {}

    def fake_run_whole_image(options, restore_faces, device):
        seen["restorer"] = restore_faces

    monkeypatch.setattr("whole_image.cli.run_whole_image", fake_run_whole_image)
    inference.main(["--ckpt_path", str(paths["pmrf"]), "-i", str(root / "lq"), "-o", str(tmp_path), "--whole_image",
                    "--num_flow_steps", "1", "--device", "cpu", "--fidelity_weight", "0.75"])
    assert isinstance(seen["restorer"], FaceRestorer) and seen["restorer"].fidelity_weight == 0.75


def test_face_restorer_gives_the_blend(checkpoints):
    _, paths = checkpoints
    model = inference.load_model(paths["pmrf"], device="cpu")
    faces = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = FaceRestorer(model, 2, seed=5).restore(faces)
    assert torch.equal(FaceRestorer(model, 2, seed=5, fidelity_weight=1).restore(faces).xhat, plain.posterior_mean)
    blended = FaceRestorer(model, 2, seed=5, fidelity_weight=0.25).restore(faces)
    torch.testing.assert_close(blended.xhat, 0.75 * plain.xhat + 0.25 * plain.posterior_mean, atol=1e-6, rtol=0)
    naive = inference.load_model(paths["naive_flow"], device="cpu")
    with pytest.raises(ValueError, match="no posterior mean"):
        FaceRestorer(naive, 2, fidelity_weight=0.5)


def test_test_py_writes_the_blend_in_a_folder_of_its_own(checkpoints, tmp_path, capsys):
    root, paths = checkpoints
    base = ["--degradation", "gaussian_noise_035", "--test_data_root", root / "lq", "--ckpt_path", paths["pmrf"],
            "--results_path", tmp_path, "--img_size", 16, "--batch_size", 2, "--num_workers", 0,
            "--num_flow_steps", 2, "--accelerator", "cpu", "--seed", 0]
    assert call(test_program.main, base, capsys)[0] == 0
    code, _, err = call(test_program.main, [*base, "--fidelity_weight", "0.5"], capsys)
    assert code == 0, err
    plain = tmp_path / "gaussian_noise_035" / "pmrf"
    knob = tmp_path / "gaussian_noise_035" / "pmrf_fidelity_weight=0.5"
    name = "000.png"
    mean = pixels(plain / "mmse_samples" / name)
    assert np.array_equal(pixels(knob / "mmse_samples" / name), mean)  # same seed: same degradation and noise
    expected = (pixels(plain / "num_flow_steps=2" / "xhat" / name) + mean) / 2
    assert np.abs(pixels(knob / "num_flow_steps=2" / "xhat" / name) - expected).max() <= 1.0
    naive = [*base[:5], paths["naive_flow"], *base[6:], "--fidelity_weight", "0.5"]
    code, _, err = call(test_program.main, naive, capsys)
    assert code == 2 and "--fidelity_weight 0.5" in err and len(err.strip().splitlines()) == 1, err

