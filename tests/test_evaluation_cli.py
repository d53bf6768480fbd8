"""The evaluation programs end to end on tiny folders, with synthetic weight files made here."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import compute_metrics_blind, compute_metrics_controlled_experiments
from evaluation.arcface_arch import resnet_face18
from evaluation.landmarks import build_fan

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 192  # NIQE needs at least 192 pixels a side


@pytest.fixture(scope="module")
def face_ckpt_dir(tmp_path_factory):
    """Random ArcFace (saved through a DataParallel-style prefix) and FAN (under 'state_dict')."""
    folder = tmp_path_factory.mktemp("metrics_ckpt")
    torch.manual_seed(0)
    torch.save(
        {f"module.{k}": v for k, v in resnet_face18().state_dict().items()}, folder / "resnet18_110.pth"
    )
    torch.save({"state_dict": build_fan().state_dict()}, folder / "alignment_WFLW_4HG.pth")
    return folder


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """rec/gt/mmse/ffhq folders of two images; pair 000 is identical (gray, stored as 8 and 16 bits)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached ImageNet weights
    rng = np.random.default_rng(0)
    for name in ("rec", "gt", "mmse", "ffhq/ffhq512", "ffhq/ffhq256"):
        (tmp_path / name).mkdir(parents=True)
    gray = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gt" / "000.png")
    Image.fromarray(gray.astype(np.uint16) * 257, "I;16").save(tmp_path / "rec" / "000.png")
    gt = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    rec = np.clip(gt.astype(int) + rng.integers(-25, 26, gt.shape), 0, 255).astype(np.uint8)
    Image.fromarray(gt).save(tmp_path / "gt" / "001.png")
    Image.fromarray(np.dstack([rec, np.full((SIZE, SIZE), 255, np.uint8)])).save(tmp_path / "rec" / "001.png")
    (tmp_path / "rec" / "notes.txt").write_text("ignored")
    for index in range(2):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
            tmp_path / "mmse" / f"00{index}.png"
        )
        Image.fromarray(gt).save(tmp_path / "ffhq" / "ffhq512" / f"{index}.png")
        Image.fromarray(gt).save(tmp_path / "ffhq" / "ffhq256" / f"{index}.png")
    pairs = [(np.repeat(gray[..., None], 3, 2), np.repeat(gray[..., None], 3, 2)), (rec, gt)]
    return tmp_path, pairs


def expected_mse_psnr(pairs):
    mses = [np.mean((a.astype(float) - b.astype(float)) ** 2) for a, b in pairs]
    psnrs = [10 * math.log10(1.0 / (mse / 255.0**2 + 1e-8)) for mse in mses]
    return np.mean(mses), np.mean(psnrs)


def argv(**options):
    """Command-line arguments from keyword options; True becomes a bare flag."""
    args = []
    for name, value in options.items():
        args += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return args


def test_blind_cli_end_to_end_offline(folders, face_ckpt_dir, capsys):
    root, pairs = folders
    output = root / "out" / "metrics.json"
    status = compute_metrics_blind.main(argv(
        rec_path=root / "rec", gt_path=root / "gt", mmse_rec_path=root / "mmse",
        parent_ffhq_512_path=root / "ffhq", metrics_ckpt_dir=face_ckpt_dir, output_json=output,
        device="cpu", batch_size=2, num_workers=0, offline=True,
    ))  # fmt: skip
    captured = capsys.readouterr()
    assert status == 3  # some metrics skipped
    results = json.loads(output.read_text())
    assert list(results) == [
        "niqe", "landmark_distance", "arcface_cos_dist", "identity_count", "mse", "ssim", "psnr",
        "ind_psnr", "ind_mse",
    ]  # fmt: skip
    mse, psnr = expected_mse_psnr(pairs)
    assert results["mse"] == pytest.approx(mse) and results["psnr"] == pytest.approx(psnr, abs=1e-6)
    assert results["identity_count"] >= 1  # pair 000 is the same image
    assert results["landmark_distance"] >= 0 and results["niqe"] > 0
    assert "metric lpips skipped: vgg16-397923af.pth missing (offline)" in captured.err
    assert "metric fid, kid, isc, prc skipped: weights-inception-2015-12-05-6726825d.pth" in captured.err
    assert "landmark_distance" in captured.out and "Traceback" not in captured.err


def test_blind_cli_identical_folders_have_zero_landmark_distance(folders, face_ckpt_dir):
    root, _ = folders
    same = root / "same"
    same.mkdir()
    (root / "gt" / "000.png").rename(same / "000.png")
    output = root / "same.json"
    status = compute_metrics_blind.main(argv(
        rec_path=same, gt_path=same, metrics="lmd,deg,psnr", metrics_ckpt_dir=face_ckpt_dir,
        output_json=output, num_workers=0, device="cpu",
    ))  # fmt: skip
    results = json.loads(output.read_text())
    assert status == 0 and results["landmark_distance"] == 0.0
    assert results["identity_count"] == 1 and results["arcface_cos_dist"] is None  # every pair "identical"


def test_missing_face_weights_skip_only_their_metric(folders, tmp_path, capsys):
    root, pairs = folders
    empty = tmp_path / "no_weights"
    status = compute_metrics_blind.main(argv(
        rec_path=root / "rec", gt_path=root / "gt", metrics="deg,lmd,mse", metrics_ckpt_dir=empty,
        output_json=root / "partial.json", num_workers=0,
    ))  # fmt: skip
    err = capsys.readouterr().err
    assert status == 3
    for metric, file_name in (("deg", "resnet18_110.pth"), ("lmd", "alignment_WFLW_4HG.pth")):
        assert f"metric {metric} skipped: {file_name} missing, put it at {empty / file_name}" in err
    results = json.loads((root / "partial.json").read_text())
    assert results == {"mse": pytest.approx(expected_mse_psnr(pairs)[0])}


def test_asked_for_metric_without_its_folder_is_an_error(folders):
    root, _ = folders
    with pytest.raises(SystemExit, match="psnr needs --gt_path; fid needs --parent_ffhq_512_path"):
        compute_metrics_blind.main(argv(rec_path=root / "rec", metrics="psnr,fid"))


def test_mismatched_names_stop_before_any_metric(folders):
    root, _ = folders
    (root / "gt" / "001.png").rename(root / "gt" / "999.png")
    with pytest.raises(SystemExit, match=r"001\.png.*999\.png"):
        compute_metrics_blind.main(argv(rec_path=root / "rec", gt_path=root / "gt", metrics="mse"))


def test_controlled_cli_offline_skips_lpips_and_saves_next_to_rec(folders, capsys):
    root, pairs = folders
    status = compute_metrics_controlled_experiments.main(argv(
        rec_path=root / "rec", gt_path=root / "gt", metrics="psnr,ssim,mse,lpips", num_workers=0,
        offline=True,
    ))  # fmt: skip
    assert status == 3 and "metric lpips skipped: vgg16-397923af.pth" in capsys.readouterr().err
    results = json.loads((root / "rec_metrics_controlled.json").read_text())
    assert set(results) == {"psnr", "ssim", "mse"}
    assert results["mse"] == pytest.approx(expected_mse_psnr(pairs)[0])


@pytest.mark.parametrize(
    "cwd, script",
    [
        ("evaluation", "compute_metrics_blind.py"),
        (".", "evaluation/compute_metrics_controlled_experiments.py"),
    ],
)
def test_scripts_run_from_the_evaluation_folder_and_the_repo_root(folders, cwd, script):
    root, pairs = folders
    output = root / "script.json"
    options = argv(
        rec_path=root / "rec", gt_path=root / "gt", metrics="mse,psnr", num_workers=0, output_json=output
    )
    completed = subprocess.run(
        [sys.executable, script, *options], cwd=REPO_ROOT / cwd, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(output.read_text())["mse"] == pytest.approx(expected_mse_psnr(pairs)[0])
    assert "mse" in completed.stdout
