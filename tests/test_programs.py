"""train.py, test.py and inference.py as a user runs them, on tiny data.

Training, resuming, DDP and one real photo run as subprocesses, where the process itself matters;
the other checks call the programs' `main(argv)` in the test's process, which a one-line error leaves
through SystemExit and anything else (what a traceback would show) fails the test.
"""

import ast
import csv
import re
import subprocess
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
from helpers import (
    TINY_HDIT,
    TINY_SWINIR,
    build_method,
    load_program,
    run_program,
    write_arch_json,
    write_images,
)
from PIL import Image

import inference
import train
from utils.images import InputError, RunInterrupted, WriteError
from utils.weights import MissingWeightsError, WeightsReadError

test_program = load_program("test.py")
PROGRAMS = {"train.py": train.main, "test.py": test_program.main, "inference.py": inference.main}


def run(*args, check=True, timeout=600):
    result = run_program(*args, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result


def call(program, *args, capsys):
    """(exit code, stdout, stderr) of `program`'s main() run in this process (helpers.call)."""
    return subprocess.CompletedProcess(program, *helpers.call(PROGRAMS[program], args, capsys))


def train_args(work, stage, arch, out, *extra):
    return ["train.py", "--stage", stage, "--arch", arch, "--degradation", "gaussian_noise_035",
            "--train_data_root", work / "train", "--val_data_root", work / "val", "--img_size", 16,
            "--train_batch_size", 2, "--val_batch_size", 2, "--num_workers", 0, "--precision", "32",
            "--accelerator", "cpu", "--num_flow_steps", 2, "--log_every_n_steps", 1, "--offline", "--output_dir", out,
            *extra]


def write_data(work):
    write_images(work / "train", 4, (16, 16))
    write_images(work / "val", 2, (16, 16), seed=1)
    write_arch_json(work / "swinir.json", TINY_SWINIR)
    write_arch_json(work / "hdit.json", TINY_HDIT)
    return work


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = write_data(tmp_path_factory.mktemp("programs"))
    swinir, hdit = work / "swinir.json", work / "hdit.json"
    run(*train_args(work, "mmse", swinir, work / "mmse", "--max_steps", 2))
    run(*train_args(work, "flow", hdit, work / "pmrf", "--max_steps", 2, "--betas", 0.8, 0.99,
                    "--mmse_model_ckpt_path", work / "mmse" / "checkpoints" / "last.ckpt", "--source_noise_std", 0.1))
    return work


def test_training_writes_checkpoints_csv_logs_and_validation_images(trained):
    checkpoint = torch.load(trained / "pmrf" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2 and "ema" in checkpoint
    assert tuple(checkpoint["hyper_parameters"]["betas"]) == (0.8, 0.99)  # two floats, not characters
    assert checkpoint["hyper_parameters"]["mmse_model_arch"]["type"] == "swinir"  # self-contained
    with open(next((trained / "pmrf" / "csv").glob("version_*/metrics.csv"))) as file:
        columns = next(csv.reader(file))
    assert "val_metrics/mse" in columns and "train/loss" in columns
    assert list((trained / "pmrf" / "csv").glob("version_*/val_images/epoch=*/xhat.png"))


@pytest.mark.slow
def test_resume_from_last_continues_the_step_count(trained, tmp_path):
    import shutil

    shutil.copytree(trained / "pmrf", tmp_path / "pmrf")
    run(*train_args(trained, "flow", trained / "hdit.json", tmp_path / "pmrf", "--max_steps", 4,
                    "--mmse_model_ckpt_path", trained / "mmse" / "checkpoints" / "last.ckpt", "--resume_from_ckpt", "last"))
    assert sorted(p.name for p in (tmp_path / "pmrf" / "checkpoints").iterdir())[-1] == "last.ckpt"  # no last-v1
    checkpoint = torch.load(tmp_path / "pmrf" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4 and checkpoint["ema"]["num_updates"] == 4


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_and_validates(tmp_path):
    work = write_data(tmp_path)
    run(*train_args(work, "naive_flow", work / "hdit.json", tmp_path / "ddp", "--max_steps", 2, "--devices", 2,
                    "--val_batch_size", 1), timeout=300)
    checkpoint = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert list((tmp_path / "ddp" / "csv").glob("version_*/val_images/epoch=*/xhat.png"))


def test_test_py_writes_the_reference_folder_layout(trained, tmp_path, capsys):
    call("test.py", "--degradation", "gaussian_noise_035", "--test_data_root", trained / "val",
        "--ckpt_path", trained / "pmrf" / "checkpoints" / "last.ckpt", "--results_path", tmp_path, "--img_size", 16,
        "--batch_size", 2, "--num_workers", 0, "--num_flow_steps", 1, 3, "--accelerator", "cpu", "--seed", 0, capsys=capsys)
    root = tmp_path / "gaussian_noise_035" / "pmrf"
    for folder in ["y", "mmse_samples", "num_flow_steps=1/xhat", "num_flow_steps=3/xhat",
                   "source_distribution_samples"]:
        assert sorted(p.name for p in (root / folder).iterdir()) == ["000.png", "001.png"], folder


def test_inference_py_on_a_messy_folder(trained, tmp_path, capsys):
    lq = tmp_path / "lq"
    write_images(lq, 2, (16, 16), ext="jpg")
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(lq / "gray_other_size.png")
    Image.fromarray(np.zeros((18, 18, 4), np.uint8)).save(lq / "odd_size.png")
    (lq / "broken.png").write_bytes(b"not an image")
    (lq / "notes.txt").write_text("hello")
    (lq / "sub").mkdir()
    result = call("inference.py", "--ckpt_path", trained / "pmrf" / "checkpoints" / "last.ckpt", "--lq_data_path", lq,
                  "--output_dir", tmp_path / "out", "--num_flow_steps", 2, "--batch_size", 4, "--device", "cpu",
                  "--seed", 3, capsys=capsys)
    assert result.returncode == 0, result.stderr
    restored = sorted(p.name for p in (tmp_path / "out" / "restored_images").iterdir())
    assert restored == ["000.jpg", "001.jpg", "gray_other_size.png"]
    assert sorted(p.name for p in (tmp_path / "out" / "restored_images_posterior_mean").iterdir()) == restored
    assert Image.open(tmp_path / "out" / "restored_images" / "gray_other_size.png").size == (32, 24)
    assert "broken.png" in result.stderr and "odd_size.png" in result.stderr


def test_inference_never_writes_into_its_input_folder(trained, tmp_path, capsys):
    lq = write_images(tmp_path / "restored_images", 1, (16, 16))
    result = call("inference.py", "--ckpt_path", trained / "pmrf" / "checkpoints" / "last.ckpt", "--lq_data_path", lq,
                  "--output_dir", tmp_path, "--device", "cpu", capsys=capsys)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]  # argparse: "prog: error:"
    assert result.returncode != 0 and len(errors) == 1 and "input folder" in errors[0], result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["inference.py", "--ckpt_path", "missing.ckpt", "--lq_data_path", "{images}", "--output_dir", "{out}"],
         "ckpt_path_is_huggingface"),
        (["train.py", "--stage", "flow", "--arch", "hdit_XXL", "--degradation", "difface", "--train_data_root", "."], "hdit_XXL"),
        (["train.py", "--stage", "mmse", "--arch", "swinir_M", "--degradation", "difface", "--train_data_root", "{empty}",
          "--accelerator", "cpu"], "no images"),
    ],
)
def test_bad_input_gives_a_one_line_error(args, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    places = {"{empty}": tmp_path / "empty", "{images}": write_images(tmp_path / "images", 1, (16, 16)),
              "{out}": tmp_path / "out"}
    result = call(*[str(places.get(a, a)) for a in args], capsys=capsys)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]  # argparse: "prog: error:"
    assert result.returncode != 0 and len(errors) == 1 and message in errors[0], result.stderr


@pytest.mark.parametrize(
    "error,code",
    [
        (InputError("--lq_data_path in: no images or videos"), 2),
        (InputError("no photo was restored (see the skipped photos above)"), 2),
        (MissingWeightsError("RealESRGAN_x2plus.pth is not in w/; download it from ..."), 2),
        (WeightsReadError("w/parsing_parsenet.pth: not a weights file"), 2),
        (WriteError("writing out/a.png failed: No space left on device; 3 image file(s) were written"), 2),
        (RunInterrupted("interrupted: 2 video(s) were written; run again with --skip_existing"), 130),
    ],
)
def test_inference_ends_what_the_library_raises_with_its_one_line(error, code, tmp_path, monkeypatch, capsys):
    def run(args):  # the library never ends the program: it raises, and inference.main says it
        raise error

    monkeypatch.setattr(inference, "run", run)
    result = call("inference.py", "--lq_data_path", tmp_path, "--output_dir", tmp_path / "out", capsys=capsys)
    assert (result.returncode, result.stderr) == (code, f"error: {error}\n")


LIBRARY = ("arch", "compat", "data", "degradations", "evaluation", "lightning_models", "theory", "utils", "whole_image")
PROGRAM_PARTS = {  # where a program's own code lives inside a library package: (file, function or None for all)
    ("utils/cli.py", None),  # fail(), the programs' one-line exit
    ("evaluation/run_as_module.py", None),  # an evaluation program started as a file hands over to its module
    ("evaluation/cli.py", "run_program"),  # the evaluation programs' shared main()
    ("evaluation/compute_metrics_blind.py", None),
    ("evaluation/compute_metrics_controlled_experiments.py", None),
}


def program_calls(tree: ast.AST) -> list[tuple[str | None, int, str]]:
    """(enclosing top-level function, line, what) of every way `tree` ends a program or reads argv."""
    found = []
    for top in tree.body:
        name = top.name if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else None
        for node in ast.walk(top):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "fail":
                found.append((name, node.lineno, "fail()"))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "parse_args":
                found.append((name, node.lineno, "parse_args()"))
            elif isinstance(node, ast.Name) and node.id == "SystemExit":
                found.append((name, node.lineno, "SystemExit"))
            elif (isinstance(node, ast.Attribute) and node.attr in ("exit", "argv")
                  and isinstance(node.value, ast.Name) and node.value.id == "sys"):
                found.append((name, node.lineno, f"sys.{node.attr}"))
    return found


def test_the_library_never_ends_the_program_or_reads_argv():
    root = Path(inference.__file__).resolve().parent
    offences = []
    for package in LIBRARY:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            for function, line, what in program_calls(ast.parse(path.read_text())):
                if (relative, None) not in PROGRAM_PARTS and (relative, function) not in PROGRAM_PARTS:
                    offences.append(f"{relative}:{line} {what}")
    assert not offences, "only programs end the program or read argv:\n" + "\n".join(offences)


ENVIRONMENT_READ = re.compile(r"""(?:environ\.get\(|getenv\(|environ\[)\s*["']([A-Z][A-Z0-9_]*)["']""")
ENVIRONMENT_CONSTANT = re.compile(r"""^[A-Z_]*ENV_VAR\s*=\s*["']([A-Z][A-Z0-9_]*)["']""", re.MULTILINE)


def test_every_environment_variable_the_code_reads_is_in_the_readme():
    root = Path(inference.__file__).resolve().parent
    read = set()
    for path in root.rglob("*.py"):
        if not {"tests", ".venv", ".git"} & set(path.relative_to(root).parts):
            text = path.read_text()
            read |= set(ENVIRONMENT_READ.findall(text)) | set(ENVIRONMENT_CONSTANT.findall(text))
    assert "PMRF_MAX_IMAGE_PIXELS" in read and "GRADIO_TEMP_DIR" in read  # the scan finds what it should
    table = (root / "README.md").read_text().split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    assert not sorted(name for name in read if f"`{name}`" not in table)


def test_whole_image_flag_hands_the_model_to_the_photo_pipeline(trained, tmp_path, monkeypatch):
    import inference

    calls = {}

    def fake_run_whole_image(options, restore_faces, device):
        calls["args"] = options
        calls["restored"] = restore_faces(torch.rand(2, 3, 16, 16))

    monkeypatch.setattr("whole_image.cli.run_whole_image", fake_run_whole_image)
    inference.main(["--ckpt_path", str(trained / "pmrf" / "checkpoints" / "last.ckpt"), "--lq_data_path",
                    str(trained / "val"), "--output_dir", str(tmp_path), "--whole_image", "--upscale", "1",
                    "--max_faces", "3", "--num_flow_steps", "1", "--device", "cpu", "--seed", "0"])
    assert calls["args"].upscale == 1 and calls["args"].max_faces == 3
    assert calls["restored"].shape == (2, 3, 16, 16) and 0 <= calls["restored"].min() <= calls["restored"].max() <= 1


@pytest.mark.slow
def test_inference_py_restores_a_real_photo_end_to_end(tmp_path, mmse_ckpt):
    """--whole_image through the program, offline: MTCNN finds the astronaut's face, a tiny PMRF (a
    save_pretrained folder) restores it, and the photo comes back at the asked scale."""
    from skimage import data

    build_method("pmrf", mmse_ckpt).save_pretrained(tmp_path / "model")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()).resize((256, 256)).save(photos / "astronaut.jpg", quality=90)
    result = run("inference.py", "--whole_image", "--detector", "mtcnn", "--face_mask", "ellipse",
                 "--ckpt_path", tmp_path / "model", "-i", photos, "-o", tmp_path / "out",
                 "--num_flow_steps", 1, "-s", 2, "--device", "cpu", "--seed", 0)
    assert "mtcnn" in result.stdout.lower()
    assert Image.open(tmp_path / "out" / "restored_imgs" / "astronaut.jpg").size == (512, 512)
    assert sorted(p.name for p in (tmp_path / "out" / "restored_faces").iterdir()) == ["astronaut_00.png"]
