"""train.py into a folder that already holds a run, and resuming a run with changed arguments.

A run never overwrites another run's checkpoints: it stops with one line unless it resumes, and clears
what a killed checkpoint write left behind. A resumed run applies the hyper-parameters it is given (and
says so), and refuses with one line what cannot change: the networks' architectures, the EMA on or off.
"""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_SWINIR, assert_one_line_error, call, write_arch_json, write_images

import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def argv(work, out, *extra):
    return ["--stage", "mmse", "--arch", work / "swinir.json", "--degradation", "gaussian_noise_035",
            "--train_data_root", work / "train", "--img_size", 16, "--train_batch_size", 2, "--num_workers", 0,
            "--precision", "32", "--accelerator", "cpu", "--logger", "csv", "--output_dir", out, *extra]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny MMSE run of one step (lr 5e-4, EMA decay 0.9999), in work/run."""
    work = tmp_path_factory.mktemp("resume")
    write_images(work / "train", 4, (16, 16))
    write_arch_json(work / "swinir.json", TINY_SWINIR)
    write_arch_json(work / "swinir_wider.json", dict(TINY_SWINIR, embed_dim=16))
    train.main([str(a) for a in argv(work, work / "run", "--max_steps", 1)])
    assert (work / "run" / "checkpoints" / "last.ckpt").is_file()
    return work


def fit_must_not_run(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train.L.Trainer, "fit", refuse)


def test_a_new_run_into_a_folder_with_checkpoints_stops_and_overwrites_nothing(work, capsys, monkeypatch):
    before = {p.name: p.read_bytes() for p in (work / "run" / "checkpoints").iterdir()}
    fit_must_not_run(monkeypatch)
    code, _, err = call(train.main, argv(work, work / "run", "--max_steps", 1), capsys)
    assert code == 2
    assert_one_line_error(err, "--output_dir", str(work / "run"), "already holds checkpoints", "--resume_from_ckpt")
    assert {p.name: p.read_bytes() for p in (work / "run" / "checkpoints").iterdir()} == before


def test_unfinished_checkpoint_files_of_a_killed_run_are_removed_at_the_next_start(work, tmp_path, capsys, monkeypatch):
    checkpoints = tmp_path / "out" / "checkpoints"
    checkpoints.mkdir(parents=True)
    left = [checkpoints / ".last.k3x9_a.ckpt.part", checkpoints / ".epoch=0-step=2.zz81.ckpt.part"]
    for path in left:
        path.write_bytes(b"PK\x03\x04 half a checkpoint")
    (checkpoints / "notes.part").write_text("not ours")
    monkeypatch.setattr(train.L.Trainer, "fit", lambda *args, **kwargs: None)
    code, out, err = call(train.main, argv(work, tmp_path / "out"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in checkpoints.iterdir()) == ["notes.part"]
    assert "removed 2 unfinished checkpoint file(s)" in out


def test_resuming_with_a_new_lr_and_ema_decay_applies_them_and_says_so(work, tmp_path, capsys):
    import shutil

    shutil.copytree(work / "run", tmp_path / "run")
    code, out, err = call(train.main, argv(work, tmp_path / "run", "--resume_from_ckpt", "last", "--max_steps", 2,
                                           "--lr", 0.01, "--ema_decay", 0.5), capsys)
    assert code == 0, err
    notes = [line for line in out.splitlines() if "changed hyper-parameters" in line]
    assert len(notes) == 1 and "lr 0.0005 -> 0.01" in notes[0] and "ema_decay 0.9999 -> 0.5" in notes[0], out
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == 0.01  # what the optimizer ran at
    assert checkpoint["ema"]["decay"] == 0.5
    assert checkpoint["hyper_parameters"]["lr"] == 0.01 and checkpoint["hyper_parameters"]["ema_decay"] == 0.5


@pytest.mark.parametrize("change,needles", [
    (["--arch", "{work}/swinir_wider.json"], ["--arch", "a JSON swinir config", "same networks"]),
    (["--arch", "swinir_M"], ["--arch", "'swinir_M'", "same networks"]),
    (["--ema_decay", "-1"], ["EMA", "--ema_decay"]),
])
def test_what_a_resumed_run_cannot_change_is_one_line(change, needles, work, tmp_path, capsys, monkeypatch):
    fit_must_not_run(monkeypatch)
    change = [c.replace("{work}", str(work)) for c in change]
    code, _, err = call(train.main, argv(work, tmp_path / "out", "--resume_from_ckpt",
                                         work / "run" / "checkpoints" / "last.ckpt", *change), capsys)
    assert code == 2
    assert_one_line_error(err, "--resume_from_ckpt", *needles)
