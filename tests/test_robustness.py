"""Bad inputs and hostile surroundings: train.py, test.py and inference.py end every one of them in a
one-line error naming the file or option, a listed skip, or a correct output; never a traceback, a
silently wrong result, code run from a pickle, or lost work.

One tiny MMSE checkpoint is trained once for the module (train.py as a subprocess, under umask 022); the
PMRF checkpoint next to it is built, not trained.
Programs run in-process (`main([...])`) where an exit code and stderr tell enough, and as subprocesses
where the process itself matters (umask, no traceback on stderr).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_HDIT, TINY_SWINIR
from helpers import build_method, load_test_program, run_program, write_arch_json, write_images
from PIL import Image
from safetensors.torch import save_file

import inference
import train

ROOT = Path(__file__).resolve().parents[1]
test_program = load_test_program()

DEGRADATION = "gaussian_noise_035"


# ----------------------------------------------------------------------------------------- helpers


def run(*args, umask=None, env=None, timeout=300):
    """A program as a user runs it, offline."""
    return run_program(*args, umask=umask, env={"PMRF_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **(env or {})},
                       timeout=timeout)


def call(main, argv, capsys):
    """(exit code, stdout, stderr) of a program's main() run in-process; any exception but SystemExit
    (what a traceback would show) fails the test."""
    capsys.readouterr()
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str) -> str:
    """stderr holds exactly one error line, which contains every needle, and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    following = err[err.index(lines[0]) + len(lines[0]):].strip()
    assert not following, f"the error goes on over more lines:\n{err}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def file_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def current_umask() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    raise RuntimeError("no Umask in /proc/self/status")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and IHDR claiming width×height RGB pixels, followed by very little data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
                     + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))
    return path


class Evil:
    """Unpickling this creates `marker`: a stand-in for any code a malicious checkpoint could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickle(path: Path, marker: Path) -> Path:
    """A checkpoint-looking file that runs code when unpickled (checked: an unsafe load does run it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"model.weight": Evil(marker)}, "hyper_parameters": {"stage": "flow"}}, path)
    torch.load(path, weights_only=False)  # the file really is malicious...
    assert marker.exists()
    marker.unlink()  # ...and the marker is gone again before the program reads it
    return path


def train_argv(work: Path, out: Path, *extra, stage="mmse", arch=None, data=None):
    return ["--stage", stage, "--arch", arch or work / "swinir.json", "--degradation", DEGRADATION,
            "--train_data_root", data or work / "train", "--img_size", 16, "--train_batch_size", 2,
            "--num_workers", 0, "--precision", "32", "--accelerator", "cpu", "--num_flow_steps", 1,
            "--log_every_n_steps", 1, "--logger", "csv", "--output_dir", out, *extra]


def save_flow_checkpoint(path: Path, mmse_ckpt: Path) -> Path:
    """A PMRF checkpoint as train.py writes it (state_dict, hyper_parameters, ema), built, not trained."""
    torch.manual_seed(1)
    model = build_method("pmrf", mmse_ckpt, mmse_noise_std=0.1)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "ema": model.ema.state_dict(), "global_step": 0}, path)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Tiny configs and images; an MMSE checkpoint trained by train.py (umask 022) and a PMRF checkpoint
    built on it."""
    work = tmp_path_factory.mktemp("robust")
    write_arch_json(work / "swinir.json", TINY_SWINIR)
    write_arch_json(work / "hdit.json", TINY_HDIT)
    write_images(work / "train", 4, (16, 16))
    write_images(work / "val", 2, (16, 16), seed=1)
    write_images(work / "train_bad", 4, (16, 16))
    (work / "train_bad" / "broken.png").write_bytes(b"not an image at all")
    write_png_header(work / "train_bad" / "bomb.png", 20000, 20000)
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(work / "train_bad" / "wide.png")
    result = run("train.py", *train_argv(work, work / "mmse", "--max_steps", 1, "--val_data_root", work / "val",
                                         "--val_batch_size", 2), umask=0o022)
    assert result.returncode == 0, result.stderr[-4000:]
    save_flow_checkpoint(work / "pmrf.ckpt", work / "mmse" / "checkpoints" / "last.ckpt")
    return work


@pytest.fixture(scope="module")
def pmrf_model(work):
    return inference.load_model(str(work / "pmrf.ckpt"), device="cpu")


def inference_argv(work: Path, lq, out, *extra):
    return ["--ckpt_path", work / "pmrf.ckpt", "--lq_data_path", lq, "--output_dir", out, "--device", "cpu",
            "--num_workers", 0, "--num_flow_steps", 1, "--batch_size", 2, *extra]


def argv_for_test_py(work: Path, data, results, *extra):
    return ["--degradation", DEGRADATION, "--test_data_root", data, "--ckpt_path", work / "pmrf.ckpt",
            "--results_path", results, "--img_size", 16, "--batch_size", 2, "--num_workers", 0,
            "--num_flow_steps", 1, "--accelerator", "cpu", "--seed", 0, *extra]


def outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ---------------------------------------------------------------------- 1. no pickle ever runs


def test_1_no_pickle_runs_from_any_weights_path(work, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = plant_pickle(tmp_path / "evil.ckpt", marker)
    lq = work / "val"

    def test_py(ckpt, name):
        return ["--degradation", DEGRADATION, "--test_data_root", lq, "--ckpt_path", ckpt,
                "--results_path", tmp_path / name, "--num_flow_steps", 1, "--accelerator", "cpu"]

    # name: (program, arguments, the file the error must name)
    cases = {
        "inference --ckpt_path": (inference.main, ["--ckpt_path", evil, "--lq_data_path", lq,
                                                   "--output_dir", tmp_path / "o1", "--device", "cpu"], evil),
        "test.py --ckpt_path": (test_program.main, test_py(evil, "o2"), evil),
        "train --mmse_model_ckpt_path": (train.main, train_argv(work, tmp_path / "o3", "--mmse_model_ckpt_path",
                                                                evil, stage="flow", arch=work / "hdit.json"), evil),
        "train --resume_from_ckpt": (train.main, train_argv(work, tmp_path / "o4", "--resume_from_ckpt", evil), evil),
    }
    # save_pretrained folders holding a pickle as model.safetensors, as config.json, or as pytorch_model.bin
    # (the file PyTorchModelHubMixin would fall back to and unpickle; the error names the missing safetensors)
    for variant in ("model.safetensors", "config.json", "pytorch_model.bin"):
        folder = tmp_path / f"saved_{variant.replace('.', '_')}"
        folder.mkdir()
        if variant != "config.json":
            (folder / "config.json").write_text(json.dumps({"stage": "mmse", "arch": TINY_SWINIR}))
        else:
            save_file({"model.weight": torch.zeros(1)}, str(folder / "model.safetensors"))
        shutil.copy(evil, folder / variant)
        named = folder / ("model.safetensors" if variant == "pytorch_model.bin" else variant)
        cases[f"inference, saved folder with a pickled {variant}"] = (
            inference.main, ["--ckpt_path", folder, "--lq_data_path", lq, "--output_dir", tmp_path / f"o_{folder.name}",
                             "--device", "cpu"], named)
        cases[f"test.py, saved folder with a pickled {variant}"] = (test_program.main, test_py(folder, f"r_{folder.name}"),
                                                                   named)

    problems = []
    for name, (main, argv, named) in cases.items():
        code, _, err = call(main, argv, capsys)
        if marker.exists():
            problems.append(f"{name}: the pickle ran")
            marker.unlink()
        try:
            assert code == 2, f"exit {code}"
            assert_one_line_error(err, str(named))
            assert "weights_only=False" not in err
        except AssertionError as error:
            problems.append(f"{name}: {error}")
    assert not problems, "\n".join(problems)


def test_1_no_pickle_runs_from_the_validation_inception_weights(tmp_path, monkeypatch):
    from lightning_models.validation import ValidationMetrics

    marker = tmp_path / "pwned"
    monkeypatch.setenv("PMRF_INCEPTION_WEIGHTS", str(plant_pickle(tmp_path / "inception.pth", marker)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = ValidationMetrics.create()
    assert not marker.exists(), "the pickle ran"
    assert metrics is None
    messages = [str(w.message) for w in caught if "inception.pth" in str(w.message)]
    assert len(messages) == 1, [str(w.message) for w in caught]
    assert "\n" not in messages[0] and "weights_only=False" not in messages[0]


# ----------------------------------------------------------------------- 2. counts checked when parsed

COUNT = ["0", "-1", "abc", "2.5"]
BAD_VALUES = {
    "--num_flow_steps": ["0", "-3", "abc", "nan"],
    "--batch_size": ["0", "-1", "abc", "1.5"],
    "--train_batch_size": COUNT, "--val_batch_size": COUNT, "--num_gpus": COUNT, "--num_nodes": COUNT,
    "--check_val_every_n_epoch": COUNT, "--img_size": COUNT, "--devices": COUNT, "--log_every_n_steps": COUNT,
    "--num_workers": ["-1", "abc", "1.5"],
    "--max_epochs": ["-2", "abc"],
    "--max_steps": ["-2", "abc"],
    "--seed": ["-1", "abc", "1.5"],
    "--ema_decay": ["nan", "inf", "1.5", "-2", "abc"],
    "--eps": ["-0.1", "nan", "1.5"],
    "--weight_decay": ["-1", "nan", "inf"],
    "--lr": ["0", "-1", "nan", "inf", "abc"],
    "--betas": ["nan", "1.5", "-0.1", "abc"],
    "--source_noise_std": ["-0.1", "nan", "inf"],
    "--input_size": ["-1", "abc", "1.5"],
    "--jpeg_quality": ["0", "101", "abc"],
    "--crf": ["-1", "52", "abc", "1.5"],
}


def numeric_options(parser) -> list[tuple[str, int | str | None]]:
    """(option, nargs) of every integer or float option, whole-photo options aside (whole_image/ has
    its own tests)."""
    whole_photo = {id(a) for group in parser._action_groups if "whole photo" in (group.title or "")
                   for a in group._group_actions}
    options = []
    for action in parser._actions:
        kind = getattr(action.type, "__name__", "")
        if action.option_strings and kind in ("int", "float") and id(action) not in whole_photo:
            long_names = [o for o in action.option_strings if o.startswith("--")]
            options.append((long_names[-1] if action.dest in ("lq_data_path", "output_dir") else long_names[0],
                            action.nargs))
    return options


@pytest.mark.parametrize("program", ["train", "test", "inference"])
def test_2_every_bad_count_is_refused_when_parsed(program, tmp_path, capsys, monkeypatch):
    def past_parsing(*args, **kwargs):
        raise SystemExit(99)  # a bad value got through: stop here rather than train or load anything

    monkeypatch.setattr(train, "MMSERectifiedFlow", past_parsing)
    monkeypatch.setattr(test_program, "load_model", past_parsing)
    monkeypatch.setattr(inference, "load_model", past_parsing)
    images = write_images(tmp_path / "images", 1, (16, 16))
    out = tmp_path / "out"
    main, parser, base = {
        "train": (train.main, train.build_parser(),
                  ["--stage", "mmse", "--arch", "swinir_M", "--degradation", DEGRADATION, "--train_data_root",
                   images, "--output_dir", out]),
        "test": (test_program.main, test_program.build_parser(),
                 ["--degradation", DEGRADATION, "--test_data_root", images, "--ckpt_path", tmp_path / "x.ckpt",
                  "--results_path", out, "--num_flow_steps", "1"]),
        "inference": (inference.main, inference.build_parser(),
                      ["--ckpt_path", tmp_path / "x.ckpt", "--lq_data_path", images, "--output_dir", out]),
    }[program]
    options = numeric_options(parser)
    assert options, "no numeric options found"
    unknown = [o for o, _ in options if o not in BAD_VALUES]
    assert not unknown, f"add bad values for {unknown} to BAD_VALUES"
    problems = []
    for option, nargs in options:
        for value in BAD_VALUES[option]:
            given = {2: ["0.9", value], "+": ["1", value]}.get(nargs, [value])
            code, _, err = call(main, base + [option, *given], capsys)
            if code != 2 or "Traceback" in err or option not in err or "error:" not in err:
                problems.append(f"{option} {' '.join(given)}: exit {code}, stderr {err.strip()[-200:]!r}")
            if out.exists():
                problems.append(f"{option} {' '.join(given)}: wrote {out}")
                shutil.rmtree(out)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------- 3. one undecodable image never stops a run


@pytest.fixture(scope="module")
def messy_inference(work):
    """inference.py (subprocess, umask 022) on good images, a PNG claiming 20000×20000 and a .gif."""
    lq = work / "messy"
    write_images(lq, 3, (16, 16))
    write_png_header(lq / "bomb.png", 20000, 20000)
    Image.fromarray(np.full((16, 16), 90, np.uint8)).convert("P").save(lq / "zz_gray.gif")
    out = work / "messy_out"
    result = run("inference.py", *inference_argv(work, lq, out), umask=0o022)
    return result, out


def test_3_an_image_claiming_20000x20000_is_skipped_and_listed(messy_inference):
    result, out = messy_inference
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    listed = [line for line in result.stderr.splitlines() if "bomb.png" in line]
    assert len(listed) == 1, result.stderr
    assert outputs(out / "restored_images") == ["000.png", "001.png", "002.png", "zz_gray.png"]  # GIF in, PNG out


def test_3_training_lists_unreadable_and_non_square_images_before_the_first_step(work, tmp_path, capsys,
                                                                                   monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started before the images were checked")

    monkeypatch.setattr("lightning.Trainer.fit", no_training)
    code, _, err = call(train.main, train_argv(work, tmp_path / "out", data=work / "train_bad"), capsys)
    assert code == 2 and "Traceback" not in err
    for name in ("broken.png", "bomb.png", "wide.png"):
        lines = [line for line in err.splitlines() if name in line]
        assert len(lines) == 1, f"{name} should be listed on one line:\n{err}"
    assert "--skip_bad_images" in err
    assert not any(name in err for name in ("000.png", "001.png"))


def test_3_with_skip_bad_images_training_goes_on_without_them(work, tmp_path, capsys):
    code, out, err = call(train.main, train_argv(work, tmp_path / "out", "--max_steps", 1, "--skip_bad_images",
                                                 data=work / "train_bad"), capsys)
    assert code == 0, err
    assert "training without 3 image(s)" in out + err and "Traceback" not in err
    checkpoint = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 1


# ---------------------------------------------------------------- 4. outputs follow the user's umask


def test_4_restored_images_are_0644_under_umask_022(messy_inference):
    _, out = messy_inference
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 8  # 4 restorations + 4 posterior means
    assert {p.name: oct(file_mode(p)) for p in files if file_mode(p) != 0o644} == {}


def test_4_checkpoints_logs_and_validation_images_are_0644_under_umask_022(work):
    files = [p for p in (work / "mmse").rglob("*") if p.is_file()]
    assert any(p.name == "last.ckpt" for p in files) and any(p.suffix == ".png" for p in files)
    assert {str(p.relative_to(work)): oct(file_mode(p)) for p in files if file_mode(p) != 0o644} == {}


def test_4_test_results_are_0644_under_umask_022(work, tmp_path, capsys):
    previous = os.umask(0o022)  # test.py in this process, which is what a umask applies to
    try:
        code, _, err = call(test_program.main, argv_for_test_py(work, work / "val", tmp_path / "results"), capsys)
    finally:
        os.umask(previous)
    assert code == 0, err[-3000:]
    files = [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert len(files) == 8  # y, xhat (K=1), source sample and posterior mean of 2 images
    assert {str(p.relative_to(tmp_path)): oct(file_mode(p)) for p in files if file_mode(p) != 0o644} == {}


def test_4_save_pretrained_files_follow_the_umask(pmrf_model, tmp_path):
    pmrf_model.save_pretrained(tmp_path / "saved")
    expected = 0o666 & ~current_umask()
    files = list((tmp_path / "saved").iterdir())
    assert {"config.json", "model.safetensors"} <= {p.name for p in files}
    assert {p.name: oct(file_mode(p)) for p in files if file_mode(p) != expected} == {}


# ------------------------------------------------------------------------------- 6. write failures


def _compute_must_not_start(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("compute started before the output folder was checked")

    monkeypatch.setattr(inference, "load_model", refuse)
    monkeypatch.setattr(test_program, "load_model", refuse)
    monkeypatch.setattr(train, "MMSERectifiedFlow", refuse)


@pytest.mark.parametrize("case", ["file_in_its_place", "uncreatable_parent", "read_only"])
def test_6_output_folder_is_checked_before_any_compute(case, work, tmp_path, capsys, monkeypatch):
    if case == "read_only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    if case == "file_in_its_place":
        target = tmp_path / "taken"
        target.write_text("a file")
    elif case == "uncreatable_parent":
        (tmp_path / "plain_file").write_text("a file")
        target = tmp_path / "plain_file" / "out"
    else:
        target = tmp_path / "read_only"
        target.mkdir()
        target.chmod(0o555)
    _compute_must_not_start(monkeypatch)
    runs = {
        "--output_dir (inference.py)": (inference.main, inference_argv(work, work / "val", target)),
        "--results_path": (test_program.main, argv_for_test_py(work, work / "val", target)),
        "--output_dir (train.py)": (train.main, train_argv(work, target)),
    }
    try:
        for option, (main, argv) in runs.items():
            code, _, err = call(main, argv, capsys)
            assert code == 2, f"{option}: exit {code}\n{err}"
            assert_one_line_error(err, option.split()[0], str(target))
    finally:
        if case == "read_only":
            target.chmod(0o755)


def _disk_full_after(monkeypatch, written_names: set[str]):
    """utils.images.save_rgb writes files whose name is in `written_names`, and fails with ENOSPC after."""
    import utils.images

    real = utils.images.save_rgb

    def save_rgb(array, path, *args, **kwargs):
        if Path(path).name not in written_names:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(array, path, *args, **kwargs)

    monkeypatch.setattr(utils.images, "save_rgb", save_rgb)


def test_6_a_full_disk_during_inference_says_how_many_images_were_written(work, tmp_path, capsys, monkeypatch):
    lq = write_images(tmp_path / "lq", 5, (16, 16))
    _disk_full_after(monkeypatch, {"000.png", "001.png"})
    out = tmp_path / "out"
    code, _, err = call(inference.main, inference_argv(work, lq, out, "--batch_size", 1), capsys)
    assert code == 2
    assert_one_line_error(err, "No space left on device", "4 image(s) were written")
    assert len([p for p in out.rglob("*.png")]) == 4  # what it says: 000 and 001, restored and posterior mean


def test_6_a_full_disk_during_test_py_says_how_many_images_were_written(work, tmp_path, capsys, monkeypatch):
    _disk_full_after(monkeypatch, set())
    code, _, err = call(test_program.main, argv_for_test_py(work, work / "val", tmp_path / "results"), capsys)
    assert code == 2
    assert_one_line_error(err, "No space left on device", "0 image(s) were written")
    assert not [p for p in (tmp_path / "results").rglob("*.png")]


def test_6_a_failed_checkpoint_write_leaves_no_truncated_file(tmp_path, monkeypatch):
    real_save = torch.save
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    real_save({"global_step": 1}, path)  # the previous checkpoint

    def half_then_full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as file:
            file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", half_then_full_disk)
    with pytest.raises(OSError):
        train.AtomicCheckpointIO().save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, str(path))
    monkeypatch.setattr(torch, "save", real_save)
    assert outputs(path.parent) == ["last.ckpt"]  # no temporary file left behind either
    assert torch.load(path, weights_only=True) == {"global_step": 1}  # the previous one, intact


def test_6_a_full_disk_while_saving_a_checkpoint_ends_training_with_one_line(work, tmp_path, capsys, monkeypatch):
    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "out"
    code, _, err = call(train.main, train_argv(work, out, "--max_steps", 1), capsys)
    assert code == 2
    assert_one_line_error(err, "No space left on device", "checkpoint")
    assert [p.name for p in out.rglob("*.ckpt*")] == []


def test_6_resuming_from_a_truncated_checkpoint_names_it(work, tmp_path, capsys):
    truncated = tmp_path / "truncated.ckpt"
    data = (work / "mmse" / "checkpoints" / "last.ckpt").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    code, _, err = call(train.main, train_argv(work, tmp_path / "out", "--resume_from_ckpt", truncated), capsys)
    assert code == 2
    assert_one_line_error(err, "--resume_from_ckpt", str(truncated), "not a readable checkpoint")


# ------------------------------------------------------------------------------- 7. wrong-kind inputs


def test_7_random_bytes_are_not_a_readable_checkpoint(work, tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    for main, argv in ((inference.main, ["--ckpt_path", junk, "--lq_data_path", work / "val", "--output_dir", tmp_path / "o",
                                         "--device", "cpu"]),
                       (test_program.main, ["--degradation", DEGRADATION, "--test_data_root", work / "val", "--ckpt_path",
                                            junk, "--results_path", tmp_path / "r", "--num_flow_steps", 1])):
        code, _, err = call(main, argv, capsys)
        assert code == 2
        assert_one_line_error(err, str(junk), "not a readable checkpoint")
        assert "weights_only" not in err


@pytest.mark.parametrize("broken", ["config.json", "model.safetensors"])
def test_7_a_broken_file_in_a_saved_folder_is_named(broken, pmrf_model, work, tmp_path, capsys):
    folder = tmp_path / "saved"
    pmrf_model.save_pretrained(folder)
    data = (folder / broken).read_bytes()
    (folder / broken).write_bytes(data[: len(data) // 2] if broken == "model.safetensors" else b'{"stage": "fl')
    code, _, err = call(inference.main, ["--ckpt_path", folder, "--lq_data_path", work / "val",
                                         "--output_dir", tmp_path / "o", "--device", "cpu"], capsys)
    assert code == 2
    assert_one_line_error(err, str(folder / broken))


def test_7_resuming_a_flow_run_from_an_mmse_checkpoint_says_the_stages_differ(work, tmp_path, capsys):
    argv = train_argv(work, tmp_path / "out", "--resume_from_ckpt", work / "mmse" / "checkpoints" / "last.ckpt",
                      "--mmse_model_ckpt_path", work / "mmse" / "checkpoints" / "last.ckpt",
                      stage="flow", arch=work / "hdit.json")
    code, _, err = call(train.main, argv, capsys)
    assert code == 2
    assert_one_line_error(err, "--resume_from_ckpt", "stage='mmse'", "stage='flow'")


def test_7_an_image_file_as_lq_data_path_is_restored(work, tmp_path, capsys):
    code, _, err = call(inference.main, inference_argv(work, work / "val" / "001.png", tmp_path / "out"), capsys)
    assert code == 0, err
    assert outputs(tmp_path / "out" / "restored_images") == ["001.png"]


def test_7_gif_files_are_read(messy_inference):
    result, out = messy_inference
    assert "zz_gray.gif" not in result.stderr  # not skipped: restored
    restored = np.asarray(Image.open(out / "restored_images" / "zz_gray.png").convert("RGB"))
    assert restored.shape == (16, 16, 3)


# ------------------------------------------------------------------------- 8. bit depth, not values


def test_8_a_dark_16_bit_png_stays_dark(tmp_path):
    from data import ImageFolderDataset
    from utils.images import read_rgb

    Image.fromarray(np.full((8, 8), 200, np.uint16)).save(tmp_path / "dark16.png")
    assert Image.open(tmp_path / "dark16.png").mode.startswith("I")  # really a 16-bit file
    rgb = read_rgb(tmp_path / "dark16.png")
    assert rgb.shape == (8, 8, 3) and abs(rgb.mean() - 200 / 257) < 1  # 200/65535 of full scale, not 200/255
    x = ImageFolderDataset(tmp_path)[0]["x"]
    assert x.max().item() < 2 / 255


# ------------------------------------------------------------------------------------ 9. logging


def _no_network(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_9_logger_wandb_without_an_api_key_fails_fast(work, tmp_path, capsys, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    _no_network(monkeypatch)

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the logger was checked")

    monkeypatch.setattr(train, "MMSERectifiedFlow", refuse)
    code, _, err = call(train.main, train_argv(work, tmp_path / "out")[:-4] + ["--logger", "wandb", "--output_dir",
                                                                               tmp_path / "out"], capsys)
    assert code == 2
    assert_one_line_error(err, "--logger wandb")


def test_9_unreachable_wandb_by_default_falls_back_to_csv_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(train, "wandb_reachable", lambda *a, **k: False)
    _no_network(monkeypatch)
    args = train.build_parser().parse_args(["--stage", "mmse", "--arch", "swinir_M", "--degradation", DEGRADATION,
                                            "--train_data_root", str(tmp_path)])
    with pytest.warns(UserWarning, match="CSV"):
        logger = train.make_logger(args, tmp_path)
    assert type(logger).__name__ == "CSVLogger"


# ------------------------------------------------------------------ 10. oversized aligned inputs


def test_10_a_4000x4000_image_is_refused_by_the_aligned_512_model(tmp_path):
    from lightning_models.restoration import plan_batches

    big = tmp_path / "photo.png"
    Image.new("L", (4000, 4000)).save(big)
    small = tmp_path / "face.png"
    Image.new("RGB", (512, 512)).save(small)
    batches, resized, skipped = plan_batches([big, small], 512, lambda h, w: None, 4)
    assert batches == [[1]] and resized == 0
    assert [name for name, _ in skipped] == ["photo.png"] and "--whole_image" in skipped[0][1]


def test_10_oversized_input_end_to_end_is_listed_and_the_rest_restored(work, tmp_path, capsys):
    lq = write_images(tmp_path / "lq", 1, (16, 16))
    write_images(tmp_path / "big", 1, (64, 64))
    shutil.copy(tmp_path / "big" / "000.png", lq / "big.png")
    code, _, err = call(inference.main, inference_argv(work, lq, tmp_path / "out", "--input_size", 16), capsys)
    assert code == 0, err
    assert outputs(tmp_path / "out" / "restored_images") == ["000.png"]
    listed = [line for line in err.splitlines() if "big.png" in line]
    assert len(listed) == 1 and "--whole_image" in listed[0] and "64×64" in listed[0]


# ------------------------------------------------------------------------------------ aligned mode


def test_aligned_inputs_of_another_size_are_resized_to_the_model_size(work, tmp_path, capsys):
    lq = write_images(tmp_path / "lq", 1, (16, 16))
    Image.fromarray(np.full((24, 24, 3), 128, np.uint8)).save(lq / "larger.png")
    Image.fromarray(np.full((8, 12, 3), 64, np.uint8)).save(lq / "smaller.png")
    code, out, err = call(inference.main, inference_argv(work, lq, tmp_path / "out", "--input_size", 16), capsys)
    assert code == 0, err
    assert "resized 2 image(s)" in out
    for name in ("000.png", "larger.png", "smaller.png"):
        assert Image.open(tmp_path / "out" / "restored_images" / name).size == (16, 16)
    smooth = np.asarray(Image.open(tmp_path / "out" / "restored_images_posterior_mean" / "larger.png"))
    assert smooth.shape == (16, 16, 3)


def test_input_size_0_keeps_each_size(work, tmp_path, capsys):
    lq = write_images(tmp_path / "lq", 1, (16, 16))
    write_images(tmp_path / "other", 1, (24, 24))
    shutil.copy(tmp_path / "other" / "000.png", lq / "larger.png")
    code, out, err = call(inference.main, inference_argv(work, lq, tmp_path / "out", "--input_size", 0), capsys)
    assert code == 0, err
    assert "resized" not in out
    assert Image.open(tmp_path / "out" / "restored_images" / "000.png").size == (16, 16)
    assert Image.open(tmp_path / "out" / "restored_images" / "larger.png").size == (24, 24)


@pytest.mark.parametrize("ext,suffix", [("png", "restored"), ("jpg", None)])
def test_short_options_suffix_and_ext_name_the_outputs(ext, suffix, work, tmp_path, capsys):
    lq = write_images(tmp_path / "lq", 2, (16, 16), ext="jpg" if ext == "png" else "png")
    argv = ["--ckpt_path", work / "pmrf.ckpt", "-i", lq, "-o", tmp_path / "out", "--device", "cpu",
            "--num_workers", 0, "--num_flow_steps", 1, "--ext", ext] + (["--suffix", suffix] if suffix else [])
    code, _, err = call(inference.main, argv, capsys)
    assert code == 0, err
    stem = f"_{suffix}" if suffix else ""
    wanted = [f"000{stem}.{ext}", f"001{stem}.{ext}"]
    assert outputs(tmp_path / "out" / "restored_images") == wanted
    assert outputs(tmp_path / "out" / "restored_images_posterior_mean") == wanted
    assert Image.open(tmp_path / "out" / "restored_images" / wanted[0]).format == {"png": "PNG", "jpg": "JPEG"}[ext]


def test_pad_batches_gives_the_model_full_batches_and_one_output_per_input(pmrf_model, tmp_path):
    from lightning_models.restoration import AlignedOptions, restore_aligned

    lq = write_images(tmp_path / "lq", 3, (16, 16))
    core = pmrf_model.pmrf
    real_sample, seen = core.sample, []

    def recording_sample(y, *args, **kwargs):
        seen.append(y.shape[0])
        return real_sample(y, *args, **kwargs)

    core.sample = recording_sample
    try:
        report = restore_aligned(pmrf_model, sorted(lq.iterdir()), tmp_path / "out",
                                 AlignedOptions(num_flow_steps=1, batch_size=2, pad_batches=True))
    finally:
        del core.sample
    assert seen == [2, 2]
    assert report.written == 3 and not report.skipped
    assert outputs(tmp_path / "out" / "restored_images") == ["000.png", "001.png", "002.png"]
    assert outputs(tmp_path / "out" / "restored_images_posterior_mean") == ["000.png", "001.png", "002.png"]
