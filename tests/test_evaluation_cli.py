"""The evaluation programs end to end on tiny folders, with synthetic weight files made here."""

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import bomb_png, random_inception
from PIL import Image

from evaluation import compute_metrics_blind, compute_metrics_controlled_experiments
from evaluation.arcface_arch import resnet_face18
from evaluation.landmarks import build_fan
from utils.images import FILE_MODE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

INCEPTION = "weights-inception-2015-12-05-6726825d.pth"

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
    assert f"metric lpips skipped: VGG16 (LPIPS) weights not found: put vgg16-397923af.pth at {face_ckpt_dir}" in captured.err
    assert "metric fid, kid, isc, prc skipped: Inception (FID, KID, IS, precision/recall) weights not found: " \
        f"put {INCEPTION} at {face_ckpt_dir}" in captured.err
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
        output_json=root / "partial.json", num_workers=0, offline=True,
    ))  # fmt: skip
    err = capsys.readouterr().err
    assert status == 3
    for metric, file_name in (("deg", "resnet18_110.pth"), ("lmd", "alignment_WFLW_4HG.pth")):
        assert f"metric {metric} skipped: " in err and f"put {file_name} at {empty / file_name}" in err
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
    assert status == 3 and "metric lpips skipped: VGG16 (LPIPS) weights not found: put vgg16-397923af.pth" \
        in capsys.readouterr().err
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


@pytest.mark.parametrize("program", [compute_metrics_blind, compute_metrics_controlled_experiments])
def test_the_programs_leave_sys_path_alone(program):
    """Started as files they run as their modules (evaluation/run_as_module.py) instead."""
    import ast

    tree = ast.parse(Path(program.__file__).read_text())
    touched = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "path"
               and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert touched == []


def plant(path, planted_code, kind):
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "pickle":
        torch.save({"conv1.weight": planted_code}, path)
    else:  # a truncated download
        torch.save({"weight": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:300])
    return path


def skip_lines(err, metric):
    return [line for line in err.splitlines() if line.startswith(f"metric {metric} skipped: ")]


@pytest.mark.parametrize("kind", ["pickle", "truncated"])
def test_blind_unsafe_or_corrupt_weights_skip_their_metric_and_keep_the_rest(folders, tmp_path, capsys, kind,
                                                                           planted_code):
    root, pairs = folders
    ckpt = tmp_path / "ckpt"
    for name in ("resnet18_110.pth", "alignment_WFLW_4HG.pth", "vgg16-397923af.pth", INCEPTION):
        plant(ckpt / name, planted_code, kind)
    output = root / "planted.json"
    status = compute_metrics_blind.main(argv(
        rec_path=root / "rec", gt_path=root / "gt", parent_ffhq_512_path=root / "ffhq",
        metrics="mse,deg,lmd,lpips,fid,isc", metrics_ckpt_dir=ckpt, output_json=output, num_workers=0,
        offline=True,
    ))  # fmt: skip
    err = capsys.readouterr().err
    assert not planted_code.ran
    assert status == 3
    assert json.loads(output.read_text()) == {"mse": pytest.approx(expected_mse_psnr(pairs)[0])}
    reason = "refused" if kind == "pickle" else "not a readable checkpoint"
    for metric in ("deg", "lmd", "lpips", "fid, isc"):
        lines = skip_lines(err, metric)
        assert len(lines) == 1 and reason in lines[0], (metric, err)
    assert "Traceback" not in err


@pytest.mark.parametrize("planted", ["vgg16-397923af.pth", "lpips_weights.pt", INCEPTION])
def test_controlled_unsafe_weights_never_run(folders, tmp_path, capsys, planted, planted_code):
    from torchvision.models.vgg import cfgs, make_layers

    root, pairs = folders
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    vgg = {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}
    torch.save(vgg, ckpt / "vgg16-397923af.pth")
    torch.save([torch.rand(1, c, 1, 1) for c in (64, 128, 256, 512, 512)], ckpt / "lpips_weights.pt")
    plant(ckpt / planted, planted_code, "pickle")
    status = compute_metrics_controlled_experiments.main(argv(
        rec_path=root / "rec", gt_path=root / "gt", parent_ffhq_256_path=root / "ffhq",
        metrics="mse,lpips,fid" if planted == INCEPTION else "mse,lpips", metrics_ckpt_dir=ckpt,
        output_json=root / "c.json", num_workers=0, offline=True,
    ))  # fmt: skip
    err = capsys.readouterr().err
    results = json.loads((root / "c.json").read_text())
    assert not planted_code.ran and status == 3
    skipped = "fid" if planted == INCEPTION else "lpips"
    assert len(skip_lines(err, skipped)) == 1 and "refused" in skip_lines(err, skipped)[0]
    assert results["mse"] == pytest.approx(expected_mse_psnr(pairs)[0])
    assert ("lpips" in results) == (planted == INCEPTION)


def test_unreadable_images_are_skipped_listed_and_the_run_finishes(folders, face_ckpt_dir, capsys):
    root, pairs = folders
    bomb_png(root / "rec" / "002.png")
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(root / "gt" / "002.png")
    (root / "gt" / "003.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(root / "rec" / "003.png")
    output = root / "unreadable.json"
    status = compute_metrics_blind.main(argv(
        rec_path=root / "rec", gt_path=root / "gt", metrics="mse,psnr,deg", metrics_ckpt_dir=face_ckpt_dir,
        output_json=output, num_workers=0,
    ))  # fmt: skip
    captured = capsys.readouterr()
    results = json.loads(output.read_text())
    assert status == 3
    mse, psnr = expected_mse_psnr(pairs)
    assert results["mse"] == pytest.approx(mse) and results["psnr"] == pytest.approx(psnr, abs=1e-6)
    assert results["identity_count"] >= 1
    assert results["unreadable_images"] == [str(root / "gt" / "003.png"), str(root / "rec" / "002.png")]
    assert "2 unreadable image(s) left out" in captured.err and "Traceback" not in captured.err


def test_an_unexpected_error_in_one_metric_keeps_the_others(folders, monkeypatch, capsys):
    import evaluation.lpips_vgg

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(evaluation.lpips_vgg, "calculate_lpips", broken)
    root, pairs = folders
    status = compute_metrics_blind.main(argv(
        rec_path=root / "rec", gt_path=root / "gt", metrics="mse,lpips", output_json=root / "f.json",
        num_workers=0,
    ))  # fmt: skip
    err = capsys.readouterr().err
    assert status == 1 and "metric lpips failed: simulated failure" in err
    assert json.loads((root / "f.json").read_text()) == {"mse": pytest.approx(expected_mse_psnr(pairs)[0])}


@pytest.mark.parametrize(
    "program", [compute_metrics_blind, compute_metrics_controlled_experiments], ids=["blind", "controlled"]
)
@pytest.mark.parametrize(
    "option, value, message",
    [
        ("batch_size", "0", "expected a whole number >= 1, got 0"),
        ("batch_size", "many", "expected a whole number >= 1, got 'many'"),
        ("num_workers", "-1", "expected a whole number >= 0, got -1"),
    ],
)
def test_numeric_options_are_checked_when_parsed(folders, capsys, program, option, value, message):
    root, _ = folders
    with pytest.raises(SystemExit) as exit_info:
        program.main(["--rec_path", str(root / "rec"), f"--{option}", value])
    assert exit_info.value.code == 2 and f"argument --{option}: {message}" in capsys.readouterr().err


def test_results_json_is_written_with_umask_permissions_and_old_switch_is_accepted(folders):
    root, _ = folders
    output = root / "perm" / "m.json"
    status = compute_metrics_blind.main(argv(
        rec_path=root / "rec", gt_path=root / "gt", metrics="mse", output_json=output, num_workers=0,
        fidelity_ffhq_first=True,
    ))  # fmt: skip
    assert status == 0 and stat.S_IMODE(output.stat().st_mode) == FILE_MODE
    mask = os.umask(0)
    os.umask(mask)
    if mask == 0o022:
        assert FILE_MODE == 0o644


@pytest.mark.slow
def test_controlled_fidelity_end_to_end_with_safely_read_inception(tmp_path, capsys):
    """A random Inception-v3 in the metrics folder: every fidelity key, both orientations, safe cache."""
    rng = np.random.default_rng(3)
    for folder in ("rec", "ffhq/ffhq256"):
        (tmp_path / folder).mkdir(parents=True)
        for index in range(4):  # precision/recall needs 4 (3 nearest neighbours + the point)
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(tmp_path / folder / f"{index}.png")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.manual_seed(0)
    torch.save(random_inception(["2048"]).state_dict(), ckpt / INCEPTION)
    output = tmp_path / "fidelity.json"
    status = compute_metrics_controlled_experiments.main(argv(
        rec_path=tmp_path / "rec", parent_ffhq_256_path=tmp_path / "ffhq", metrics="fid,kid,isc,prc",
        metrics_ckpt_dir=ckpt, fidelity_cache_dir=tmp_path / "cache", output_json=output, num_workers=0,
        batch_size=4, offline=True,
    ))  # fmt: skip
    captured = capsys.readouterr()
    results = json.loads(output.read_text())
    assert status == 0, captured.err
    assert list(results) == [
        "inception_score_mean", "inception_score_std", "inception_score_restored_mean",
        "inception_score_restored_std", "frechet_inception_distance", "kernel_inception_distance_mean",
        "kernel_inception_distance_std", "precision", "recall", "f_score", "precision_restored",
        "recall_restored",
    ]  # fmt: skip
    assert results["precision_restored"] == results["recall"]
    assert results["recall_restored"] == results["precision"]
    assert [path.suffix for path in (tmp_path / "cache").iterdir()] == [".safetensors"]
    assert "of FFHQ (reference key" in captured.out and "usual precision" in captured.out
