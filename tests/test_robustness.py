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
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    TINY_HDIT,
    TINY_SWINIR,
    PlantedCode,
    StubDetector,
    assert_one_line_error,
    bomb_png,
    build_method,
    call,
    face_at,
    load_program,
    parse_whole_photo_options,
    run_program,
    save_checkpoint,
    textured_photo,
    write_arch_json,
    write_images,
)
from PIL import Image
from safetensors.torch import save_file

import inference
import train
from arch import NAMED_CONFIGS

ROOT = Path(__file__).resolve().parents[1]
test_program = load_program("test.py")

DEGRADATION = "gaussian_noise_035"


# ----------------------------------------------------------------------------------------- helpers


def run(*args, umask=None, env=None, timeout=300):
    """A program as a user runs it, offline."""
    return run_program(*args, umask=umask, env={"HF_HUB_OFFLINE": "1", **(env or {})},
                       timeout=timeout)


def file_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def current_umask() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    raise RuntimeError("no Umask in /proc/self/status")


def plant_pickle(path: Path, marker: Path) -> Path:
    """A checkpoint-looking file that runs code when unpickled (checked: an unsafe load does run it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"model.weight": PlantedCode(marker)}, "hyper_parameters": {"stage": "flow"}}, path)
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
    return save_checkpoint(build_method("pmrf", mmse_ckpt, mmse_noise_std=0.1), path)


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
    bomb_png(work / "train_bad" / "bomb.png", 20000, 20000)
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
    planted = plant_pickle(tmp_path / "inception.pth", marker)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = ValidationMetrics.create(metrics_ckpt_dir=planted)  # train.py --metrics_ckpt_dir
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
    "--fidelity_weight": ["-0.1", "1.5", "nan", "abc"],
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
    bomb_png(lq / "bomb.png", 20000, 20000)
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


def test_pad_batches_gives_the_model_full_batches_and_one_output_per_input(pmrf_model, tmp_path, monkeypatch):
    from lightning_models.pmrf import PMRF
    from lightning_models.restoration import AlignedOptions, restore_aligned

    lq = write_images(tmp_path / "lq", 3, (16, 16))
    real_sample, seen = PMRF.sample, []

    def recording_sample(self, y, *args, **kwargs):
        seen.append(y.shape[0])
        return real_sample(self, y, *args, **kwargs)

    monkeypatch.setattr(PMRF, "sample", recording_sample)
    report = restore_aligned(pmrf_model, sorted(lq.iterdir()), tmp_path / "out",
                             AlignedOptions(num_flow_steps=1, batch_size=2, pad_batches=True))
    assert seen == [2, 2]
    assert report.written == 3 and not report.skipped
    assert outputs(tmp_path / "out" / "restored_images") == ["000.png", "001.png", "002.png"]
    assert outputs(tmp_path / "out" / "restored_images_posterior_mean") == ["000.png", "001.png", "002.png"]


# ------------------------------------------------- issue 21, 11. test.py scans its folder first


def test_21_11_test_py_lists_bad_images_before_the_first_batch(work, tmp_path, capsys):
    results = tmp_path / "results"
    code, _, err = call(test_program.main, argv_for_test_py(work, work / "train_bad", results), capsys)
    assert code == 2 and "Traceback" not in err
    for name in ("broken.png", "bomb.png", "wide.png"):
        lines = [line for line in err.splitlines() if name in line]
        assert len(lines) == 1, f"{name} should be listed on one line:\n{err}"
    assert "--skip_bad_images" in err and "--test_data_root" in err
    assert not [p for p in results.rglob("*") if p.is_file()], "results were written before the scan"


def test_21_11_test_py_with_skip_bad_images_tests_the_rest(work, tmp_path, capsys):
    results = tmp_path / "results"
    code, out, err = call(test_program.main,
                          argv_for_test_py(work, work / "train_bad", results, "--skip_bad_images"), capsys)
    assert code == 0, err[-3000:]
    assert "testing without 3 image(s)" in out + err
    method = results / DEGRADATION / "pmrf"
    good = ["000.png", "001.png", "002.png", "003.png"]
    assert outputs(method / "y") == good and outputs(method / "num_flow_steps=1" / "xhat") == good


def test_21_11_an_img_size_the_model_cannot_take_is_refused_before_the_first_batch(work, tmp_path, capsys):
    results = tmp_path / "results"
    code, _, err = call(test_program.main, argv_for_test_py(work, work / "val", results, "--img_size", 18), capsys)
    assert code == 2
    assert_one_line_error(err, "--img_size 18")
    assert not [p for p in results.rglob("*") if p.is_file()]


# ------------------------------------------- issue 21, 14. sizes are read the way pixels are read


def save_with_orientation(path: Path, array: np.ndarray, orientation: int) -> Path:
    """`array` stored as it is, with an EXIF orientation tag that tells viewers how to turn it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, exif=exif.tobytes())
    return path


def png_with_exif_after_the_pixels(path: Path, array: np.ndarray, orientation: int) -> Path:
    """A PNG whose eXIf chunk comes after IDAT (legal; Pillow sees it only once it decodes the pixels)."""
    save_with_orientation(path, array, orientation)
    data = path.read_bytes()
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        chunks.append(data[offset:offset + 12 + length])
        offset += 12 + length
    exif = [c for c in chunks if c[4:8] == b"eXIf"]
    assert len(exif) == 1
    rest = [c for c in chunks if c[4:8] != b"eXIf"]
    path.write_bytes(data[:8] + b"".join(rest[:-1] + exif + rest[-1:]))  # just before IEND
    return path


def test_21_14_displayed_size_is_the_size_read_rgb_returns(tmp_path):
    from utils.images import displayed_size, read_rgb

    array = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)  # 24 wide, 16 tall
    files = {
        "plain.png": Image.fromarray(array).save(tmp_path / "plain.png") or tmp_path / "plain.png",
        **{f"jpeg_{o}.jpg": save_with_orientation(tmp_path / f"jpeg_{o}.jpg", array, o) for o in (1, 3, 6, 8)},
        "png_6.png": save_with_orientation(tmp_path / "png_6.png", array, 6),
        "png_tail_6.png": png_with_exif_after_the_pixels(tmp_path / "png_tail_6.png", array, 6),
        "webp_5.webp": save_with_orientation(tmp_path / "webp_5.webp", array, 5),
    }
    for name, path in files.items():
        height, width = read_rgb(path).shape[:2]
        assert displayed_size(path) == (width, height), name
    assert displayed_size(files["jpeg_6.jpg"]) == (16, 24) and displayed_size(files["png_tail_6.png"]) == (16, 24)


def test_21_14_evaluation_of_exif_rotated_images(tmp_path):
    """A phone photo (stored 24×16, EXIF 'turn 90°') is 16×24 upright: its restoration, written upright
    without a tag, pairs with it; and a folder mixing it with unrotated 24×16 images is not one size."""
    from evaluation.distortion import calculate_psnr_ssim_mse
    from evaluation.inputs import forget_unreadable

    rng = np.random.default_rng(1)
    stored = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    flat = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    gt, rec, gt_copy = tmp_path / "gt", tmp_path / "rec", tmp_path / "gt_copy"
    for folder in (gt, rec, gt_copy):
        folder.mkdir()
    save_with_orientation(gt / "phone.png", stored, 6)
    Image.fromarray(flat).save(gt / "scan.png")
    upright = np.rot90(stored, -1)  # what read_rgb gives for orientation 6
    Image.fromarray(np.ascontiguousarray(np.clip(upright.astype(int) + 3, 0, 255).astype(np.uint8))).save(rec / "phone.png")
    Image.fromarray(np.clip(flat.astype(int) + 3, 0, 255).astype(np.uint8)).save(rec / "scan.png")
    shutil.copy(gt / "phone.png", gt_copy / "phone.png")
    shutil.copy(gt / "scan.png", gt_copy / "scan.png")
    forget_unreadable()
    result = calculate_psnr_ssim_mse(rec, gt, batch_size=4)  # upright restoration vs rotated original
    assert result["mse"] == pytest.approx(9.0, abs=0.5)
    result = calculate_psnr_ssim_mse(gt_copy, gt, batch_size=4)  # same headers, pixels of two shapes
    assert result["mse"] == 0.0


# ------------------------------------------------------- issue 21, 2. no silent NaNs in training


def all_checkpoints_finite(folder: Path) -> dict[str, int]:
    """{checkpoint name: global_step} of every checkpoint in `folder`, each checked to hold only finite
    weights and EMA weights."""
    steps = {}
    for path in sorted(folder.glob("*.ckpt")):
        checkpoint = torch.load(path, weights_only=True)
        tensors = list(checkpoint["state_dict"].values()) + list((checkpoint.get("ema") or {}).get("shadow_params", []))
        assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()), f"{path.name} is not finite"
        steps[path.name] = checkpoint["global_step"]
    return steps


def nan_loss_at(monkeypatch, steps: set[int]):
    """MMSERectifiedFlow's loss becomes NaN at these (1-based) training steps."""
    from lightning_models.mmse_rectified_flow import MMSERectifiedFlow

    real = MMSERectifiedFlow.training_loss

    def training_loss(self, batch):
        loss = real(self, batch)
        return loss * float("nan") if self.global_step + 1 in steps else loss

    monkeypatch.setattr(MMSERectifiedFlow, "training_loss", training_loss)


def test_21_2_diverging_training_stops_with_one_line_and_keeps_the_finite_checkpoints(work, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = call(train.main, train_argv(work, out, "--max_steps", 12, "--lr", "1e6", "--seed", 0), capsys)
    assert code == 2, err[-2000:]
    line = assert_one_line_error(err, "training stopped at step", "not finite" if "gradients" in err else "loss is nan")
    steps = all_checkpoints_finite(out / "checkpoints")
    assert steps and f"kept: {out / 'checkpoints' / 'last.ckpt'}" in line
    stopped_at = int(line.split("training stopped at step ")[1].split()[0])
    assert max(steps.values()) < stopped_at


def test_21_2_the_step_with_a_nan_loss_is_named_and_nothing_after_it_is_saved(work, tmp_path, capsys, monkeypatch):
    nan_loss_at(monkeypatch, {3})  # 2 steps an epoch: the epoch-0 checkpoint (step 2) is written before it
    out = tmp_path / "out"
    code, _, err = call(train.main, train_argv(work, out, "--max_steps", 6), capsys)
    assert code == 2
    assert_one_line_error(err, "training stopped at step 3 ", "the loss is nan", "--nan_policy skip")
    assert all_checkpoints_finite(out / "checkpoints") == {"epoch=0-step=2.ckpt": 2, "last.ckpt": 2}


def test_21_2_nan_policy_skip_leaves_the_weights_optimizer_and_ema_alone(work, tmp_path, capsys, monkeypatch):
    nan_loss_at(monkeypatch, {2})
    out = tmp_path / "out"
    code, _, err = call(train.main, train_argv(work, out, "--max_steps", 4, "--nan_policy", "skip"), capsys)
    assert code == 0, err[-2000:]
    assert [line for line in err.splitlines() if "skipped" in line] == [
        "warning: step 2 skipped: the loss is nan"]
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4
    adam = checkpoint["optimizer_states"][0]["state"]
    assert {float(state["step"]) for state in adam.values()} == {3.0}  # 3 real steps, not 4
    assert checkpoint["ema"]["num_updates"] == 3
    all_checkpoints_finite(out / "checkpoints")


def test_21_2_skipping_stops_when_every_step_is_bad(work, tmp_path, capsys, monkeypatch):
    from lightning_models.finite_guard import MAX_SKIPS_IN_A_ROW

    nan_loss_at(monkeypatch, set(range(1, 100)))
    out = tmp_path / "out"
    code, _, err = call(train.main, train_argv(work, out, "--max_steps", 50, "--nan_policy", "skip"), capsys)
    assert code == 2
    assert_one_line_error(err, f"step {MAX_SKIPS_IN_A_ROW + 1} ", f"after {MAX_SKIPS_IN_A_ROW} skipped steps in a row",
                          "the last checkpoint written before it is kept")
    all_checkpoints_finite(out / "checkpoints")  # the unchanged first weights, saved at each epoch's end


@pytest.mark.parametrize("weights", ["model", "ema"])
def test_21_2_a_checkpoint_with_non_finite_weights_is_never_written(weights, work, tmp_path, capsys, monkeypatch):
    from lightning_models.mmse_rectified_flow import MMSERectifiedFlow

    def poison_after_step_4(self, outputs, batch, batch_idx):  # weights break, the loss had been finite
        if self.global_step == 4:
            network = self.model if weights == "model" else self.ema.network  # the EMA copy alone, too
            with torch.no_grad():
                next(network.parameters()).fill_(float("inf"))

    monkeypatch.setattr(MMSERectifiedFlow, "on_train_batch_end", poison_after_step_4, raising=False)
    out = tmp_path / "out"
    code, _, err = call(train.main, train_argv(work, out, "--max_steps", 6), capsys)
    assert code == 2
    assert_one_line_error(err, "step 4", "NaN or infinite", "no checkpoint was written")
    assert all_checkpoints_finite(out / "checkpoints") == {"epoch=0-step=2.ckpt": 2, "last.ckpt": 2}


def poison(state: dict, key_start: str = "model.") -> dict:
    state = dict(state)
    key = next(k for k, v in state.items() if k.startswith(key_start) and v.is_floating_point())
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    return state


@pytest.fixture(scope="module")
def nan_checkpoints(work, tmp_path_factory):
    """The module's checkpoints, each with one NaN: PMRF (.ckpt; weights, EMA, posterior-mean net),
    a saved folder, and the MMSE training checkpoint."""
    folder = tmp_path_factory.mktemp("nan")
    good = torch.load(work / "pmrf.ckpt", weights_only=True)
    cases = {}
    cases["weights"] = folder / "weights.ckpt"
    torch.save({**good, "state_dict": poison(good["state_dict"])}, cases["weights"])
    cases["mmse_model"] = folder / "mmse_model.ckpt"
    torch.save({**good, "state_dict": poison(good["state_dict"], "mmse_model.")}, cases["mmse_model"])
    shadows = [t.clone() for t in good["ema"]["shadow_params"]]
    shadows[0].view(-1)[0] = float("inf")
    cases["ema"] = folder / "ema.ckpt"
    torch.save({**good, "ema": {**good["ema"], "shadow_params": shadows}}, cases["ema"])
    model = inference.load_model(str(work / "pmrf.ckpt"), device="cpu")
    cases["saved folder"] = model.save_pretrained(folder / "saved")
    from safetensors.torch import load_file

    weights = cases["saved folder"] / "model.safetensors"
    save_file(poison(load_file(str(weights))), str(weights))
    mmse = torch.load(work / "mmse" / "checkpoints" / "last.ckpt", weights_only=True)
    cases["mmse checkpoint"] = folder / "mmse.ckpt"
    torch.save({**mmse, "state_dict": poison(mmse["state_dict"])}, cases["mmse checkpoint"])
    return cases


def test_21_2_loading_a_checkpoint_with_non_finite_weights_is_refused_with_one_line(work, nan_checkpoints,
                                                                                   tmp_path, capsys):
    runs = {name: (inference.main, inference_argv(work, work / "val", tmp_path / name.replace(" ", "_"))[2:]
                   + ["--ckpt_path", path], path if name != "saved folder" else path / "model.safetensors")
            for name, path in nan_checkpoints.items() if name != "mmse checkpoint"}
    mmse = nan_checkpoints["mmse checkpoint"]
    runs["test.py"] = (test_program.main, argv_for_test_py(work, work / "val", tmp_path / "r")
                       + ["--ckpt_path", nan_checkpoints["weights"]], nan_checkpoints["weights"])
    runs["train --mmse_model_ckpt_path"] = (train.main, train_argv(
        work, tmp_path / "t1", "--mmse_model_ckpt_path", mmse, stage="flow", arch=work / "hdit.json"), mmse)
    runs["train --resume_from_ckpt"] = (train.main, train_argv(work, tmp_path / "t2", "--resume_from_ckpt", mmse), mmse)
    problems = []
    for name, (main, argv, named) in runs.items():
        code, _, err = call(main, argv, capsys)
        try:
            assert code == 2, f"exit {code}: {err[-500:]}"
            assert_one_line_error(err, str(named), "NaN or infinite", "use an earlier checkpoint")
        except AssertionError as error:
            problems.append(f"{name}: {error}")
    assert not problems, "\n".join(problems)
    assert not (tmp_path / "weights" / "restored_images").exists()


def test_21_2_aligned_inference_never_writes_a_non_finite_restoration(pmrf_model, tmp_path, monkeypatch):
    from lightning_models.pmrf import PMRF
    from lightning_models.restoration import AlignedOptions, restore_aligned

    lq = write_images(tmp_path / "lq", 3, (16, 16))
    real_sample = PMRF.sample

    def nan_for_the_second_image(self, y, *args, **kwargs):
        sample = real_sample(self, y, *args, **kwargs)
        sample.xhat[1:2] = float("nan")
        return sample

    monkeypatch.setattr(PMRF, "sample", nan_for_the_second_image)
    report = restore_aligned(pmrf_model, sorted(lq.iterdir()), tmp_path / "out",
                             AlignedOptions(num_flow_steps=1, batch_size=3))
    assert report.written == 2
    assert [name for name, _ in report.skipped] == ["001.png"] and "NaN" in report.skipped[0][1]
    assert outputs(tmp_path / "out" / "restored_images") == ["000.png", "002.png"]
    assert outputs(tmp_path / "out" / "restored_images_posterior_mean") == ["000.png", "002.png"]


def test_21_2_whole_photo_mode_never_writes_a_photo_made_from_non_finite_faces(tmp_path, capsys):
    from whole_image.cli import run_whole_image

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(textured_photo(96, 128)).save(inputs / name)
    calls = []

    def nan_for_the_first_photo(faces):
        calls.append(len(faces))
        return faces * (float("nan") if len(calls) == 1 else 1.0)

    argv = ["--lq_data_path", str(inputs), "--output_dir", str(tmp_path / "out"), "--face_mask", "ellipse", "-s", "1"]
    written = run_whole_image(parse_whole_photo_options(argv), nan_for_the_first_photo, "cpu",
                              detector=StubDetector({(96, 128): [face_at((60, 40), 20)]}))
    out = capsys.readouterr().out
    assert [p.name for p in written] == ["b.png"]
    assert outputs(tmp_path / "out" / "restored_imgs") == ["b.png"]
    listed = [line for line in out.splitlines() if "a.png" in line]
    assert len(listed) == 1 and "NaN" in listed[0] and "not written" in listed[0]


# ---------------------------------------------- issue 21, 6. architecture configs checked first


def test_21_6_two_million_blocks_are_refused_before_anything_is_built(monkeypatch):
    from arch import create_arch

    def no_build(*args, **kwargs):
        raise AssertionError("the network was built")

    monkeypatch.setattr("arch.configs.hdit_from_config", no_build)
    with pytest.raises(ValueError, match=r"'depths' make 2,000,003 blocks, more than the 1000 allowed") as error:
        create_arch({**TINY_HDIT, "depths": [1, 2_000_000]})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind,field,value", [
    ("hdit", "widths", [16.5, 32]), ("hdit", "widths", "16"), ("hdit", "depths", [1, True]),
    ("hdit", "patch_size", [2]), ("hdit", "mapping_width", 15), ("hdit", "d_ffs", [48, -1]),
    ("hdit", "dropout_rate", [0.0, 1.5]), ("hdit", "self_attns", [{"type": "global"}, "global"]),
    ("hdit", "in_channels", None),
    ("swinir", "embed_dim", 12.0), ("swinir", "depths", [2.5]), ("swinir", "num_heads", 2),
    ("swinir", "qkv_bias", "yes"), ("swinir", "window_size", 1), ("swinir", "mlp_ratio", float("nan")),
    ("swinir", "resi_connection", 1), ("swinir", "img_size", [8]),
])
def test_21_6_every_field_is_type_checked_with_one_line_naming_it(kind, field, value):
    from arch import create_arch

    with pytest.raises(ValueError) as error:
        create_arch({**(TINY_HDIT if kind == "hdit" else TINY_SWINIR), field: value})
    message = str(error.value)
    assert f"field '{field}'" in message and "\n" not in message and len(message) < 300


def test_21_6_attention_entries_are_type_checked():
    from arch import create_arch

    config = {**TINY_HDIT, "self_attns": [{"type": "neighborhood", "d_head": "8", "kernel_size": 3},
                                          {"type": "global", "d_head": 8}]}
    with pytest.raises(ValueError, match=r"self_attns\[0\].*field 'd_head' must be a whole multiple of 8, got '8'"):
        create_arch(config)


def test_21_6_the_checked_fields_are_the_networks_arguments():
    import dataclasses
    import inspect

    from arch.hdit import HDiTConfig
    from arch.swinir import SwinIR
    from arch.validate import HDIT_FIELDS, SWINIR_FIELDS

    assert set(HDIT_FIELDS) == {f.name for f in dataclasses.fields(HDiTConfig)}
    assert set(SWINIR_FIELDS) == set(inspect.signature(SwinIR.__init__).parameters) - {"self"}


SIZE_CASES = {
    "tiny_hdit+cond1": (TINY_HDIT, 1),
    "tiny_swinir": (TINY_SWINIR, 0),
    "swinir_3conv_gray": ({**TINY_SWINIR, "resi_connection": "3conv", "depths": [3, 2], "num_heads": [2, 3],
                           "qkv_bias": False, "patch_norm": False, "mlp_ratio": 1.5, "sf": 4, "in_channels": 1}, 2),
    "hdit_windows_and_no_attention": ({**TINY_HDIT, "depths": [2, 0], "d_ffs": [40, 24], "mapping_d_ff": 20,
                                       "mapping_depth": 3, "patch_size": [1, 3], "out_channels": 2,
                                       "self_attns": [{"type": "shifted-window", "d_head": 8, "window_size": 4},
                                                      {"type": "none"}]}, 0),
}


@pytest.mark.parametrize("name", [*NAMED_CONFIGS, *SIZE_CASES])
def test_21_6_the_size_counted_from_a_config_is_the_built_networks(name):
    from arch import create_arch
    from arch.validate import MAX_ELEMENTS, hdit_elements, swinir_elements

    config, condition = SIZE_CASES.get(name, (NAMED_CONFIGS.get(name), 3))
    with torch.device("meta"):
        net = create_arch(config, condition)
    built = sum(t.numel() for t in net.parameters()) + sum(t.numel() for t in net.buffers())
    count = hdit_elements if config["type"] == "hdit" else swinir_elements
    assert count({k: v for k, v in config.items() if k != "type"}, condition) == built
    assert built < MAX_ELEMENTS / 5  # the limit is far above every named config


@pytest.mark.parametrize("field,value", [("img_size", 100_000), ("window_size", 400), ("embed_dim", 60_000)])
def test_21_6_oversized_swinir_configs_are_refused(field, value, monkeypatch):
    from arch import create_arch

    monkeypatch.setattr("arch.swinir.SwinIR.__init__", lambda *a, **k: pytest.fail("built"))
    config = {**TINY_SWINIR, field: value}
    if field == "window_size":
        config["img_size"] = 800
    with pytest.raises(ValueError, match="weights and buffers .* GiB in float32.* PMRF_MAX_ARCH_ELEMENTS"):
        create_arch(config)


def test_21_6_crafted_configs_end_programs_with_one_line_naming_the_file(work, pmrf_model, tmp_path, capsys,
                                                                       monkeypatch):
    def no_build(*args, **kwargs):  # (without the check, 2 million blocks would take all the memory)
        raise AssertionError("the network was built")

    monkeypatch.setattr("arch.configs.hdit_from_config", no_build)
    crafted = write_arch_json(tmp_path / "crafted.json", {**TINY_HDIT, "depths": [1, 2_000_000]})
    code, _, err = call(train.main, train_argv(work, tmp_path / "t", stage="naive_flow", arch=crafted), capsys)
    assert code == 2
    assert_one_line_error(err, str(crafted), "blocks")
    folder = pmrf_model.save_pretrained(tmp_path / "saved")
    config = json.loads((folder / "config.json").read_text())
    for arch in ({**TINY_HDIT, "widths": [16.5, 32]}, {**TINY_HDIT, "depths": [1, 2_000_000]}):
        (folder / "config.json").write_text(json.dumps({**config, "arch": arch}))
        code, _, err = call(inference.main, inference_argv(work, work / "val", tmp_path / "o")[2:]
                            + ["--ckpt_path", folder], capsys)
        assert code == 2
        assert_one_line_error(err, str(folder / "config.json"), "'widths'" if 16.5 in arch["widths"] else "'depths'")


# =================================================================== round 2 (issue 21)
# Names: test_r2_<defect number of the issue>_...


def distinct_images(folder: Path, names: list[str], size: int = 16) -> Path:
    """One image per name, each a different flat colour with a gradient (so outputs can be told apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 60, size, dtype=np.float64)[None, :, None]
    for index, name in enumerate(names):
        colour = np.array([(37 * index) % 190, (91 * index) % 190, (53 * index + 40) % 190], np.float64)
        array = np.clip(colour[None, None, :] + ramp, 0, 255).astype(np.uint8).repeat(size, axis=0)
        Image.fromarray(array).save(folder / name)
    return folder


COLLIDING = ["anim.gif", "anim.png", "dup.png", "dup.jpg", "rgb.tif", "rgb.webp"]


@pytest.mark.parametrize("ext,expected", [
    ("auto", ["anim_gif.png", "anim_png.png", "dup.jpg", "dup.png", "rgb.tif", "rgb.webp"]),
    ("png", ["anim_gif.png", "anim_png.png", "dup_jpg.png", "dup_png.png", "rgb_tif.png", "rgb_webp.png"]),
])
def test_r2_1_aligned_inputs_whose_outputs_collide_are_all_written_and_the_renames_listed(
        ext, expected, work, tmp_path, capsys):
    lq = distinct_images(tmp_path / "lq", COLLIDING)
    out = tmp_path / "out"
    code, printed, err = call(inference.main, inference_argv(work, lq, out, "--ext", ext, "--batch_size", 4), capsys)
    assert code == 0, err
    for folder in ("restored_images", "restored_images_posterior_mean"):
        assert outputs(out / folder) == expected
    assert "restored 6 image(s)" in printed
    renamed = [line.strip() for line in printed.splitlines() if "->" in line]
    assert "anim.gif -> anim_gif.png" in renamed and "anim.png -> anim_png.png" in renamed
    assert len(renamed) == (2 if ext == "auto" else 6)
    # each input has its own output: the posterior means (deterministic) of distinct inputs differ
    means = [np.asarray(Image.open(out / "restored_images_posterior_mean" / name).convert("RGB")) for name in expected]
    assert len({mean.tobytes() for mean in means}) == 6


def test_r2_1_one_naming_rule_tells_apart_names_that_differ_in_case_or_clash_after_renaming():
    from utils.images import output_stems, renamed_outputs

    stems = output_stems(["x.png", "x.PNG", "y.jpg", "y_jpg.png", "y.png", "z.png"], "png")
    assert len({stem.casefold() for stem in stems.values()}) == 6
    assert stems["y_jpg.png"] == "y_jpg" and stems["z.png"] == "z"  # unique names are kept
    assert set(renamed_outputs(stems)) == {"x.png", "x.PNG", "y.jpg", "y.png"}
    assert output_stems(["a.png", "a.jpg"], "auto") == {"a.png": "a", "a.jpg": "a"}  # different files: kept
    assert output_stems(["a.png", "a.jpg"], "png") == {"a.png": "a_png", "a.jpg": "a_jpg"}


@pytest.mark.parametrize("suffix", ["/../../../../escaped", "..", "a/b", "a\\b", "../up"])
def test_r2_8_a_suffix_that_is_a_path_is_refused_when_parsed(suffix, work, tmp_path, capsys, monkeypatch):
    _compute_must_not_start(monkeypatch)
    for mode in ([], ["--whole_image"]):
        out = tmp_path / "out"
        code, _, err = call(inference.main, inference_argv(work, work / "val", out, "--suffix", suffix, *mode), capsys)
        assert code == 2, err
        assert_one_line_error(err, "--suffix")
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing written anywhere around it either


def test_r2_8_the_library_options_refuse_a_suffix_that_is_a_path():
    from lightning_models.restoration import AlignedOptions
    from whole_image.cli import WholeImageOptions

    for suffix in ("../x", "a/b"):
        with pytest.raises(ValueError, match="file name"):
            AlignedOptions(suffix=suffix)
        with pytest.raises(ValueError, match="file name"):
            WholeImageOptions(lq_data_path=Path("."), output_dir=Path("o"), suffix=suffix)


def test_r2_12_an_input_size_the_model_cannot_take_is_refused_before_loading(work, pmrf_model, tmp_path, capsys,
                                                                             monkeypatch):
    folder = tmp_path / "saved"
    pmrf_model.save_pretrained(folder)
    _compute_must_not_start(monkeypatch)
    for ckpt in (work / "pmrf.ckpt", folder):
        argv = inference_argv(work, work / "val", tmp_path / "out", "--input_size", 18)
        argv[argv.index("--ckpt_path") + 1] = ckpt
        code, _, err = call(inference.main, argv, capsys)
        assert code == 2, err
        assert_one_line_error(err, "--input_size 18", "multiple of 4")


def test_r2_12_an_input_size_the_model_takes_still_runs(work, tmp_path, capsys):
    code, _, err = call(inference.main, inference_argv(work, work / "val", tmp_path / "out", "--input_size", 24), capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "out" / "restored_images" / "000.png").size == (24, 24)


def _interrupt_on_call(monkeypatch, number: int) -> list:
    """PMRF.sample raises KeyboardInterrupt (Ctrl-C) on its `number`-th call."""
    from lightning_models.pmrf import PMRF

    real, calls = PMRF.sample, []

    def sample(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PMRF, "sample", sample)
    return calls


def test_r2_16_ctrl_c_says_how_many_were_written_and_skip_existing_finishes(work, tmp_path, capsys, monkeypatch):
    lq = write_images(tmp_path / "lq", 5, (16, 16))
    out = tmp_path / "out"
    _interrupt_on_call(monkeypatch, 3)
    try:
        code, _, err = call(inference.main, inference_argv(work, lq, out, "--batch_size", 1), capsys)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped inference.main (a traceback for the user)")
    assert code == 130
    assert_one_line_error(err, "interrupted", "4 image file(s) were written", "--skip_existing")
    assert outputs(out / "restored_images") == outputs(out / "restored_images_posterior_mean") == ["000.png", "001.png"]
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left
    before = {p.name: p.stat().st_mtime_ns for p in (out / "restored_images").iterdir()}
    monkeypatch.undo()
    code, printed, err = call(inference.main, inference_argv(work, lq, out, "--batch_size", 1, "--skip_existing"), capsys)
    assert code == 0, err
    assert "left 2 image(s)" in printed and "restored 3 image(s)" in printed
    assert outputs(out / "restored_images") == [f"00{i}.png" for i in range(5)]
    assert {name: (out / "restored_images" / name).stat().st_mtime_ns for name in before} == before  # not redone


@pytest.mark.slow
def test_r2_16_ctrl_c_in_a_real_process_ends_with_one_line_and_whole_files(work, tmp_path):
    import signal
    import subprocess
    import time

    lq = write_images(tmp_path / "lq", 64, (16, 16))
    out = tmp_path / "out"
    command = [sys.executable, "inference.py", *map(str, inference_argv(work, lq, out, "--batch_size", 1,
                                                                          "--num_flow_steps", 40))]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 240
        while not list((out / "restored_images").glob("*.png")) and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted: ") and "--skip_existing" in last
    files = [p for p in out.rglob("*") if p.is_file()]
    assert f"{len(files)} image file(s) were written" in last
    assert 0 < len(files) < 128 and not [p for p in files if p.name.startswith(".")]
    for path in files:
        assert Image.open(path).size == (16, 16)  # whole files only


# ------------------------------------------------------------------- whole photos (round 2)


class OneFaceInTheMiddle:
    """A detector that finds one face in the middle of any frame larger than 100 px."""

    def detect(self, image):
        from whole_image.align import FFHQ_TEMPLATE_512
        from whole_image.detect import DetectedFace

        height, width = image.shape[:2]
        if min(height, width) < 100:
            return []
        scale = min(height, width) / 4 / 126.0
        landmarks = (FFHQ_TEMPLATE_512 - FFHQ_TEMPLATE_512[:2].mean(axis=0)) * scale + [width / 2, height / 2.2]
        return [DetectedFace(box=np.array([0, 0, width, height], float), landmarks=landmarks, score=0.99)]


def invert_faces(faces: torch.Tensor) -> torch.Tensor:
    return 1.0 - faces


def whole_photo_options(lq, out, *extra: str):
    return parse_whole_photo_options(["--lq_data_path", str(lq), "--output_dir", str(out), "--face_mask", "ellipse",
                                      *extra])


def photos(folder: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (height, width) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_r2_5_thin_strips_do_not_stop_a_whole_photo_folder(work, tmp_path, capsys):
    """The real MTCNN (its weights ship with facenet-pytorch) on strips it used to crash on."""
    pytest.importorskip("facenet_pytorch")
    strips = {"a_8x3000.png": (8, 3000), "b_1x3000.png": (1, 3000), "c_3000x2.png": (3000, 2), "d.png": (64, 48)}
    lq = photos(tmp_path / "lq", strips)
    out = tmp_path / "out"
    code, printed, err = call(inference.main, inference_argv(work, lq, out, "--whole_image", "--detector", "mtcnn",
                                                             "--face_mask", "ellipse", "-s", "1"), capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert outputs(out / "restored_imgs") == sorted(strips)
    for name, (height, width) in strips.items():
        assert Image.open(out / "restored_imgs" / name).size == (width, height)
    assert "4 photo(s), 0 face(s)" in printed


def test_r2_5_a_photo_the_pipeline_fails_on_is_listed_and_the_folder_goes_on(tmp_path, capsys):
    from whole_image.cli import run_whole_image

    lq = photos(tmp_path / "lq", {"a.png": (200, 200), "b.png": (220, 200), "c.png": (200, 200)})
    seen = []

    def fails_on_the_second(faces):
        seen.append(faces.shape[0])
        if len(seen) == 2:
            raise RuntimeError("CUDA out of memory (a stand-in)\nwith more lines")
        return 1.0 - faces

    written = run_whole_image(whole_photo_options(lq, tmp_path / "out"), fails_on_the_second,
                              detector=OneFaceInTheMiddle())
    assert [p.name for p in written] == ["a.png", "c.png"]
    printed = capsys.readouterr().out
    listed = [line for line in printed.splitlines() if "b.png" in line]
    assert len(listed) == 1 and "RuntimeError: CUDA out of memory (a stand-in)" in listed[0]
    assert "with more lines" not in printed


def test_r2_9_whole_photo_name_collisions_lose_no_face(tmp_path, capsys):
    from whole_image.cli import run_whole_image

    names = ["x.png", "x.PNG", "y.jpg", "y_jpg.png", "y.png"]
    lq = photos(tmp_path / "lq", dict.fromkeys(names, (200, 160)))
    out = tmp_path / "out"
    written = run_whole_image(whole_photo_options(lq, out, "-s", "1"), invert_faces, detector=OneFaceInTheMiddle())
    assert len(written) == 5 and len({p.name.casefold() for p in written}) == 5
    for folder in ("restored_imgs", "restored_faces", "cropped_faces"):
        assert len({name.casefold() for name in outputs(out / folder)}) == 5, outputs(out / folder)
    assert len(outputs(out / "cmp")) == 10
    printed = capsys.readouterr().out
    assert "5 photo(s), 5 face(s)" in printed
    assert len([line for line in printed.splitlines() if "->" in line]) == 4  # y_jpg.png keeps its name
    assert "y_jpg.png" in outputs(out / "restored_imgs")


def test_r2_7_the_output_size_is_capped_by_one_rule_with_one_line():
    from whole_image.upsample import MAX_OUTPUT_SIDE, OutputTooLarge, output_scale

    scale, note = output_scale(750, 1000, 16.0, free=None)  # the issue's -s 16 on a 1000×750 photo
    assert scale == pytest.approx(MAX_OUTPUT_SIDE / 1000) and "16000×12000" in note and "4096" in note
    assert "\n" not in note
    assert output_scale(750, 1000, 2.0, free=None) == (2.0, None)
    assert output_scale(3000, 6000, 2.0, free=None)[0] == 1.0  # a big photo keeps its size, never shrinks
    assert output_scale(3000, 6000, 0.5, free=None) == (0.5, None)
    with pytest.raises(OutputTooLarge, match="GB of memory"):
        output_scale(750, 1000, 4.0, free=100 * 2**20)


def test_r2_7_whole_photo_mode_caps_the_scale_and_skips_what_does_not_fit(tmp_path, capsys, monkeypatch):
    import whole_image.upsample
    from whole_image.cli import run_whole_image

    lq = photos(tmp_path / "lq", {"small.png": (30, 40), "wide.png": (75, 100)})
    out = tmp_path / "out"
    written = run_whole_image(whole_photo_options(lq, out, "-s", "16", "--max_output_side", "400"), invert_faces,
                              detector=OneFaceInTheMiddle())
    assert [p.name for p in written] == ["small.png", "wide.png"]
    assert Image.open(out / "restored_imgs" / "wide.png").size == (400, 300)  # capped: 1600×1200 asked
    assert Image.open(out / "restored_imgs" / "small.png").size == (400, 300)  # 640×480 asked
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: wide.png")]
    assert len(notes) == 1 and "1600×1200" in notes[0] and "--max_output_side" in notes[0]
    # too little free memory for one photo: it is listed, the other is restored
    monkeypatch.setattr(whole_image.upsample, "available_memory", lambda: 60 * 200 * 200)
    written = run_whole_image(whole_photo_options(lq, tmp_path / "out2", "-s", "4"), invert_faces,
                              detector=OneFaceInTheMiddle())
    assert [p.name for p in written] == ["small.png"]
    listed = [line for line in capsys.readouterr().out.splitlines() if "wide.png" in line]
    assert len(listed) == 1 and "GB of memory" in listed[0]


def test_r2_16_whole_photo_ctrl_c_and_skip_existing(tmp_path, capsys):
    from utils.images import RunInterrupted
    from whole_image.cli import run_whole_image

    lq = photos(tmp_path / "lq", {f"{i}.png": (200, 160) for i in range(4)})
    out = tmp_path / "out"
    calls = []

    def interrupted_on_the_third(faces):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return 1.0 - faces

    with pytest.raises(RunInterrupted, match="2 photo"):
        run_whole_image(whole_photo_options(lq, out), interrupted_on_the_third, detector=OneFaceInTheMiddle())
    assert outputs(out / "restored_imgs") == ["0.png", "1.png"]
    calls.clear()
    written = run_whole_image(whole_photo_options(lq, out, "--skip_existing"), invert_faces,
                              detector=OneFaceInTheMiddle())
    assert [p.name for p in written] == ["2.png", "3.png"]
    assert outputs(out / "restored_imgs") == [f"{i}.png" for i in range(4)]
    assert "left 2 photo(s)" in capsys.readouterr().out


def test_inference_holds_one_set_of_weights_and_test_py_keeps_the_ema(work):
    """load_model drops the EMA copy once its weights are in the model (inference needs one set);
    test.py, which picks raw or EMA weights afterwards, keeps it."""
    from lightning_models.restoration import load_model

    assert load_model(str(work / "pmrf.ckpt"), device="cpu").ema is None
    assert load_model(str(work / "pmrf.ckpt"), device="cpu", use_ema=False).ema is None
    kept = load_model(str(work / "pmrf.ckpt"), device="cpu", use_ema=False, keep_ema=True)
    assert kept.ema is not None and len(kept.ema.shadow_params) == len(list(kept.model.parameters()))
