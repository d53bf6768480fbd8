"""--compile {auto,on,off}: the rule `auto` follows, the options of every program, and a real inductor
compile of a tiny flow network on CPU that must reproduce the eager output."""

import argparse
import copy
import math
import types

import pytest
import torch
from helpers import build_method, load_program, randomize_

import app
import inference
import train
from lightning_models.restoration import prepare_for_inference
from utils import auto_compile
from utils.auto_compile import AUTO_COMPILE_MIN_IMAGE_STEPS, image_steps, should_compile

CUDA, CPU = torch.device("cuda"), torch.device("cpu")  # the rule only reads the device's type


def test_auto_compiles_on_cuda_for_jobs_that_repay_the_compile():
    big, small = AUTO_COMPILE_MIN_IMAGE_STEPS, AUTO_COMPILE_MIN_IMAGE_STEPS - 1
    assert should_compile("auto", CUDA, big) and not should_compile("auto", CUDA, small)
    assert should_compile("auto", "cuda:1", math.inf)  # an open-ended job (the app)
    assert not should_compile("auto", CPU, math.inf) and not should_compile("auto", "mps", math.inf)
    assert should_compile("on", CPU, 0) and should_compile(True, CPU, 0)
    assert not should_compile("off", CUDA, math.inf) and not should_compile(False, CUDA) and not should_compile(None, CUDA)
    with pytest.raises(ValueError, match="maybe"):
        should_compile("maybe", CUDA)


def test_the_threshold_is_about_350_faces_at_25_steps_and_counts_pixels():
    assert image_steps(343, 25) < AUTO_COMPILE_MIN_IMAGE_STEPS <= image_steps(344, 25)
    assert image_steps(512, 25) >= AUTO_COMPILE_MIN_IMAGE_STEPS  # a 512-image folder compiles
    assert image_steps(1, 1, 256, 256) == 0.25 and image_steps(2, 3, 1024, 512) == 12
    assert f"at least {AUTO_COMPILE_MIN_IMAGE_STEPS:,} image-steps" in " ".join(inference.build_parser().format_help().split())


@pytest.mark.parametrize("parse", [
    lambda argv: inference.build_parser().parse_args(["-i", ".", "-o", "out", *argv]),
    lambda argv: load_program("test.py").build_parser().parse_args(
        ["--degradation", "difface", "--test_data_root", ".", "--ckpt_path", "x", "--results_path", "r",
         "--num_flow_steps", "1", *argv]),
    lambda argv: app.parse_args(argv),
], ids=["inference", "test", "app"])
def test_compile_option_defaults_to_auto_and_a_bare_flag_means_on(parse):
    assert parse([]).compile == "auto"
    assert parse(["--compile"]).compile == "on"
    assert parse(["--compile", "off"]).compile == "off"
    with pytest.raises(SystemExit):
        parse(["--compile", "sometimes"])


def test_train_compiles_the_flow_network_on_gpu_by_default(monkeypatch):
    parser = train.build_parser()
    required = ["--stage", "flow", "--arch", "hdit_XL2", "--train_data_root", ".", "--degradation", "difface"]
    parse = lambda *extra: parser.parse_args(required + list(extra))  # noqa: E731
    assert (parse().compile, parse("--compile").compile, parse("--no_compile").compile) == ("auto", "on", "off")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train.compiles("auto", "auto", "flow") and train.compiles("auto", "gpu", "naive_flow")
    assert not train.compiles("auto", "auto", "mmse")  # the posterior-mean stage (SwinIR) stays eager
    assert not train.compiles("off", "gpu", "flow") and not train.compiles("auto", "cpu", "flow")
    assert train.compiles("on", "cpu", "flow")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not train.compiles("auto", "auto", "flow")


def test_inference_decides_from_the_jobs_size(tmp_path, capsys):
    model = types.SimpleNamespace(hparams={"arch": "hdit_ImageNet256Sp4"})
    args = argparse.Namespace(compile="auto", input_size=None, num_flow_steps=25)
    many, few = [tmp_path / f"{i}.png" for i in range(400)], [tmp_path / "0.png"]
    assert inference.compile_decision(args, model, CUDA, many, tmp_path)
    assert "compiling the flow network (--compile auto: 10,000 image-steps)" in capsys.readouterr().out
    assert not inference.compile_decision(args, model, CUDA, few, tmp_path)
    assert not inference.compile_decision(args, model, CPU, many, tmp_path)
    assert capsys.readouterr().out == ""
    args.input_size = 1024  # four times the pixels: a quarter of the images is enough
    assert inference.compile_decision(args, model, CUDA, many[:100], tmp_path)


def test_the_app_compiles_and_warms_up_only_on_cuda(tmp_path):
    settings = app.DemoSettings.from_args(app.parse_args(["--ckpt_path", str(tmp_path / "none.ckpt")]))
    assert app.ModelStore(settings, "cuda").compiles and not app.ModelStore(settings, "cpu").compiles
    assert not app.ModelStore(app.DemoSettings.from_args(app.parse_args(["--compile", "off"])), "cuda").compiles


def test_warm_up_restores_one_and_two_faces_once_loaded(monkeypatch, capsys):
    store = app.ModelStore(app.DemoSettings.from_args(app.parse_args(["--compile"])), "cpu")
    calls = []
    loaded = types.SimpleNamespace(FaceRestorer=lambda model, **kw: (lambda faces: calls.append(tuple(faces.shape))))
    monkeypatch.setattr(store, "_load_model", lambda: (loaded, "model"))
    store.warm_up(size=32)
    assert calls == [(1, 3, 32, 32), (2, 3, 32, 32)] and store._model == "model"
    assert "ready" in capsys.readouterr().out

    def broken():
        raise RuntimeError("no checkpoint")

    failing = app.ModelStore(app.DemoSettings.from_args(app.parse_args(["--compile"])), "cpu")
    monkeypatch.setattr(failing, "_load_model", broken)
    failing.warm_up()  # reported, never raised: the first click reports it on the page
    assert "warm-up failed (no checkpoint)" in capsys.readouterr().out and failing._model is None


@pytest.mark.slow
def test_compiling_with_inductor_on_cpu_reproduces_the_eager_output():
    """A tiny flow network compiled for real (inductor, C++ on CPU) through prepare_for_inference: the
    same restoration as the eager network, at the default precision."""
    torch.manual_seed(0)
    eager = build_method("naive_flow", None).eval().requires_grad_(False)
    randomize_(eager.model)
    compiled = copy.deepcopy(eager)
    prepare_for_inference(compiled, "torch", compile="auto")  # auto on CPU: not compiled
    assert compiled.model._compiled_call_impl is None
    prepare_for_inference(compiled, "torch", compile=True)
    assert compiled.model._compiled_call_impl is not None
    y = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = eager.pmrf.sample(y, 3, torch.Generator().manual_seed(1)).xhat
        got = compiled.pmrf.sample(y, 3, torch.Generator().manual_seed(1)).xhat
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert auto_compile.describe("auto", True, math.inf).startswith("compiling the flow network (--compile auto: an open-ended job)")
