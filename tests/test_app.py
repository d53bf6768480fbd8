"""The Gradio demo: the Restore handler with stub networks, lazy model loading, refusals, and the served
page (through Gradio's client, and in the system's headless Chromium driven by Playwright).

The model is a stub installed as a fake `lightning_models.restoration` module (the real one needs the
checkpoint); the face detector is a stub, or the real MTCNN whose weights ship with facenet-pytorch.
Nothing is downloaded.
"""

from __future__ import annotations

import ast
import os
import shutil
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import bomb_png
from PIL import Image

import app
from utils.images import read_image, read_rgb
from utils.registry import default_path
from whole_image.align import FFHQ_TEMPLATE_512
from whole_image.detect import DetectedFace, MTCNNDetector

DEFAULT_CKPT = str(default_path("pmrf_blind_face"))  # --ckpt_path's default: the official checkpoint

gr = pytest.importorskip("gradio")


@pytest.fixture(autouse=True)
def no_running_demo(offline, monkeypatch):
    """Offline (conftest.py), and no model store left from another test."""
    monkeypatch.setattr(app, "STORE", None)


def invert(faces: torch.Tensor) -> torch.Tensor:
    return 1.0 - faces


class FakeNetwork:
    def __init__(self):
        self.compiled = 0
        self.backends = []

    def compile(self):
        self.compiled += 1

    def set_neighborhood_backend(self, backend):
        self.backends.append(backend)


class FakeRestoration(types.ModuleType):
    """Stands in for lightning_models.restoration: records how the demo loads and uses the model."""

    def __init__(self, fail: bool = False, no_posterior_mean: bool = False):
        super().__init__("lightning_models.restoration")
        self.fail, self.no_posterior_mean = fail, no_posterior_mean
        self.loads = []
        self.restorers = []
        self.fidelity_weights = []
        self.model = types.SimpleNamespace(model=FakeNetwork())

    def load_model(self, ckpt_path, huggingface=False, device="cpu", use_ema=True):
        self.loads.append((ckpt_path, huggingface, str(device), use_ema))
        if self.fail:
            raise FileNotFoundError(f"checkpoint {ckpt_path} not found")
        assert self.model.model.compiled == 0  # compiled after loading, never before
        return self.model

    def prepare_for_inference(self, model, attention_backend=None, compile=False, compile_mmse=False):
        if attention_backend:
            model.model.set_neighborhood_backend(attention_backend)
        if compile:
            model.model.compile()
        return model

    def FaceRestorer(self, model, num_flow_steps=25, seed=None, bf16=False, fidelity_weight=0.0):  # noqa: N802
        assert model is self.model
        if fidelity_weight > 0 and self.no_posterior_mean:
            raise ValueError(f"fidelity_weight {fidelity_weight:g}: method 'naive_flow' has no posterior mean")
        self.restorers.append((num_flow_steps, seed, bf16))
        self.fidelity_weights.append(fidelity_weight)
        return invert


class OneFace:
    """A detector that finds one face in the middle of whatever frame it is shown."""

    def detect(self, image):
        height, width = image.shape[:2]
        center = np.array([width / 2, height / 2.2])
        eyes = FFHQ_TEMPLATE_512[:2].mean(axis=0)
        landmarks = (FFHQ_TEMPLATE_512 - eyes) * (width / 4 / 126.0) + center
        return [DetectedFace(box=np.array([0, 0, width, height], float), landmarks=landmarks, score=0.99)]


class NoFace:
    def detect(self, image):
        return []


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def saved(tmp_path: Path, array: np.ndarray, name: str = "upload.png", **save_options) -> str:
    path = tmp_path / name
    Image.fromarray(array).save(path, **save_options)
    return str(path)


def store_for(tmp_path, *extra: str) -> app.ModelStore:
    args = app.parse_args(["--device", "cpu", "--face_weights_dir", str(tmp_path / "facexlib"), *extra])
    return app.ModelStore(app.DemoSettings.from_args(args), "cpu")


def test_aligned_mode_gives_slider_gallery_and_png(tmp_path):
    upload = saved(tmp_path, photo(100, 80))
    (before, after), gallery, path, status = app.restore_image(
        upload, app.ALIGNED, 25, 2, 42, restore_faces=invert, store=store_for(tmp_path)
    )
    assert before.shape == after.shape == (512, 512, 3) and after.dtype == np.uint8
    np.testing.assert_array_equal(after, 255 - before)  # the stub inverts the square-cropped, resized input
    np.testing.assert_array_equal(read_rgb(path), after)
    assert len(gallery) == 1 and gallery[0][0] is after
    assert "seed 42" in status


def test_whole_photo_mode_pastes_the_face(tmp_path):
    upload = saved(tmp_path, photo(48, 64))
    (before, after), gallery, path, status = app.restore_image(
        upload, app.WHOLE_PHOTO, 3, 2, 7, restore_faces=invert, detector=OneFace(), store=store_for(tmp_path)
    )
    assert after.shape == before.shape == (96, 128, 3)
    np.testing.assert_array_equal(read_rgb(path), after)
    assert np.any(after != before) and "1 face(s)" in status
    assert [caption for _, caption in gallery] == ["face 1 of 1"] and gallery[0][0].shape == (512, 512, 3)


def test_uploads_are_read_upright_with_their_alpha_and_gray_stays_gray(tmp_path):
    store = store_for(tmp_path)
    tall = photo(60, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side, "rotate 90° clockwise to display"
    rotated = saved(tmp_path, np.ascontiguousarray(np.rot90(tall, k=1)), "phone.jpg", quality=95, exif=exif)
    assert app.preview(rotated).shape == (60, 40, 3)
    with pytest.warns(UserWarning, match="No face detected"):
        (_, after), _, _, _ = app.restore_image(rotated, app.WHOLE_PHOTO, 1, 2, 0, invert, NoFace(), store)
    assert after.shape == (120, 80, 3)

    rgba = np.concatenate([photo(40, 40), np.full((40, 40, 1), 77, np.uint8)], axis=2)
    upload = saved(tmp_path, rgba, "logo.png")
    _, _, path, _ = app.restore_image(upload, app.WHOLE_PHOTO, 1, 2, 0, invert, OneFace(), store)
    kept = read_image(path)
    assert kept.shape == (80, 80, 4) and np.all(kept[:, :, 3] == 77)

    gray = saved(tmp_path, photo(64, 64)[:, :, 0], "gray.png")
    for mode, detector in ((app.WHOLE_PHOTO, OneFace()), (app.ALIGNED, None)):
        tint = lambda faces: torch.cat([faces[:, :1] * 0 + 1, faces[:, 1:]], dim=1)  # noqa: E731 (a red model)
        (_, after), gallery, path, _ = app.restore_image(gray, mode, 1, 1, 0, tint, detector, store)
        for image in (after, read_rgb(path), gallery[0][0]):
            assert np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 1], image[:, :, 2])


def test_whole_photo_without_faces_warns_and_resizes(tmp_path):
    store = store_for(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (_, after), gallery, path, status = app.restore_image(
            saved(tmp_path, photo(30, 40)), app.WHOLE_PHOTO, 5, 3, 1, restore_faces=invert, detector=NoFace(), store=store
        )
    assert any("No face detected" in str(w.message) for w in caught)
    assert read_rgb(path).shape == (90, 120, 3) and gallery == [] and "0 face(s)" in status


def test_model_loads_lazily_once_with_the_settings(tmp_path, monkeypatch):
    fake = FakeRestoration()
    monkeypatch.setitem(sys.modules, "lightning_models.restoration", fake)
    store = store_for(tmp_path)
    assert fake.loads == []  # nothing is loaded before the first click
    upload = saved(tmp_path, photo(64, 64))
    app.restore_image(upload, app.ALIGNED, 10, 1, 5, store=store)
    app.restore_image(upload, app.ALIGNED, 200, 1, -1, store=store)
    assert fake.loads == [(DEFAULT_CKPT, False, "cpu", True)]
    (steps1, seed1, bf16), (steps2, seed2, _) = fake.restorers
    assert (steps1, seed1, bf16) == (10, 5, False) and steps2 == 200 and 0 <= seed2 <= app.MAX_SEED
    assert fake.model.model.compiled == 0


def test_the_fidelity_slider_reaches_the_restorer_and_is_checked(tmp_path, monkeypatch):
    fake = FakeRestoration()
    monkeypatch.setitem(sys.modules, "lightning_models.restoration", fake)
    store = store_for(tmp_path)
    upload = saved(tmp_path, photo(32, 32))
    app.restore_image(upload, app.ALIGNED, 2, 1, 0, store=store)
    app.restore_from_page(upload, app.ALIGNED, 2, 1, 0, 0.75)
    assert fake.fidelity_weights == [0.0, 0.75]
    for weight in (-0.1, 1.5, "abc", float("nan")):
        with pytest.raises(gr.Error, match="Fidelity weight must be from 0 to 1"):
            app.restore_image(upload, app.ALIGNED, 2, 1, 0, store=store, fidelity_weight=weight)
    monkeypatch.setitem(sys.modules, "lightning_models.restoration", FakeRestoration(no_posterior_mean=True))
    with pytest.raises(gr.Error, match="Fidelity weight: .*no posterior mean"):
        app.restore_image(upload, app.ALIGNED, 2, 1, 0, store=store_for(tmp_path), fidelity_weight=0.5)


def test_compile_bf16_and_attention_backend_take_the_clis_fast_path(tmp_path, monkeypatch):
    fake = FakeRestoration()
    monkeypatch.setitem(sys.modules, "lightning_models.restoration", fake)
    store = store_for(tmp_path, "--compile", "--bf16", "--attention_backend", "torch", "--use_raw_weights")
    upload = saved(tmp_path, photo(32, 32))
    for _ in range(2):
        app.restore_image(upload, app.ALIGNED, 2, 1, 0, store=store)
    assert fake.model.model.compiled == 1  # once, in place, after loading
    assert fake.model.model.backends == ["torch"]
    assert [bf16 for _, _, bf16 in fake.restorers] == [True, True]
    assert fake.loads[0][3] is False  # --use_raw_weights


def test_hub_ids_and_local_checkpoints(tmp_path, monkeypatch):
    fake = FakeRestoration()
    monkeypatch.setitem(sys.modules, "lightning_models.restoration", fake)
    upload = saved(tmp_path, photo(32, 32))
    app.restore_image(upload, app.ALIGNED, 1, 1, 0, store=store_for(tmp_path, "--ckpt_path", "x.ckpt"))
    app.restore_image(
        upload, app.ALIGNED, 1, 1, 0, store=store_for(tmp_path, "--ckpt_path", "me/pmrf", "--ckpt_path_is_huggingface")
    )
    assert [load[:2] for load in fake.loads] == [("x.ckpt", False), ("me/pmrf", True)]


def test_missing_checkpoint_is_a_clear_page_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning_models.restoration", FakeRestoration(fail=True))
    with pytest.raises(gr.Error) as caught:
        app.restore_image(
            saved(tmp_path, photo(32, 32)), app.ALIGNED, 1, 1, 0, store=store_for(tmp_path, "--ckpt_path", "nowhere.ckpt")
        )
    assert "nowhere.ckpt" in str(caught.value) and "--ckpt_path" in str(caught.value)


def test_detector_choice_is_the_clis(tmp_path, capsys):
    upload = saved(tmp_path, photo(32, 32))
    with pytest.raises(gr.Error, match="detection_Resnet50_Final.pth"):  # asked for, not on disk
        app.restore_image(upload, app.WHOLE_PHOTO, 1, 1, 0, invert, store=store_for(tmp_path, "--detector", "retinaface"))
    store = store_for(tmp_path)  # auto, no RetinaFace weights: MTCNN, offline
    assert isinstance(store.detector(), MTCNNDetector)
    assert "face detector: MTCNN" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="No face detected"):  # random pixels
        _, _, _, status = app.restore_image(upload, app.WHOLE_PHOTO, 1, 1, 0, invert, store=store)
    assert "(MTCNN from facenet-pytorch)" in status
    with pytest.raises(SystemExit):
        app.parse_args(["--detector", "dlib"])


def test_bad_uploads_and_values_are_refused_in_the_apps_own_words(tmp_path):
    store = store_for(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    fake_png = tmp_path / "broken.png"
    fake_png.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    for upload in (notes, fake_png):
        for call in (
            lambda: app.preview(str(upload)),
            lambda: app.restore_image(str(upload), app.WHOLE_PHOTO, 1, 1, 0, invert, OneFace(), store),
        ):
            with pytest.raises(gr.Error) as caught:
                call()
            message = str(caught.value)
            assert upload.name in message and "is not an image this demo can read" in message and "\n" not in message
    with pytest.raises(gr.Error, match="Upload a photo first"):
        app.restore_image(None, app.ALIGNED, 1, 1, 0, invert, store=store)
    upload = saved(tmp_path, photo(32, 32))
    for seed in (app.MAX_SEED + 1, -2, 1.5, "abc", float("nan")):
        with pytest.raises(gr.Error, match="Seed must be a whole number"):
            app.restore_image(upload, app.ALIGNED, 1, 1, seed, invert, store=store)
    for steps in (0, app.MAX_STEPS + 1, 2.5):
        with pytest.raises(gr.Error, match="flow steps"):
            app.restore_image(upload, app.ALIGNED, steps, 1, 0, invert, store=store)
    for upscale in (0.5, 5, float("nan")):
        with pytest.raises(gr.Error, match="Output scale"):
            app.restore_image(upload, app.WHOLE_PHOTO, 1, upscale, 0, invert, NoFace(), store)
    for seed in (-1, None, 0, app.MAX_SEED):  # -1 and nothing: a random seed
        app.restore_image(upload, app.ALIGNED, 1, 1, seed, invert, store=store)


def test_command_line_uses_the_shared_options():
    args = app.parse_args([])
    assert (args.server_name, args.server_port, args.share) == ("127.0.0.1", 7860, False)
    assert args.ckpt_path == DEFAULT_CKPT and not args.ckpt_path_is_huggingface and args.device is None
    assert not args.bf16 and args.compile == "auto" and args.attention_backend is None and args.detector == "auto"
    for bad in (["--server_port", "0"], ["--server_port", "http"], ["--attention_backend", "cudnn"]):
        with pytest.raises(SystemExit):
            app.parse_args(bad)


def test_the_app_does_not_import_the_inference_program():
    tree = ast.parse(Path(app.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "inference" not in imported
    assert "lightning_models.restoration" in Path(app.__file__).read_text()


def test_the_example_photo_is_the_astronaut():
    pytest.importorskip("skimage")
    (path,) = app.example_photos()
    assert read_rgb(path).shape == (512, 512, 3)


def test_missing_realesrgan_weights_fall_back_to_resizing(tmp_path):
    store = store_for(tmp_path, "--bg_upsampler", "realesrgan", "--realesrgan_weights_dir", str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, path, _ = app.restore_image(
            saved(tmp_path, photo(20, 30)), app.WHOLE_PHOTO, 1, 2, 0, restore_faces=invert, detector=NoFace(), store=store
        )
    assert any("RealESRGAN_x2plus.pth" in str(w.message) for w in caught)
    assert read_rgb(path).shape == (40, 60, 3)


# ------------------------------------------------------------------ bounded memory, hostile uploads


class ManyFaces:
    """A detector that finds `count` faces on a grid (in a photo of 512 px or more, which is its own
    detection frame), the first ones largest."""

    def __init__(self, count: int):
        self.count = count

    def detect(self, image):
        faces = []
        eyes = FFHQ_TEMPLATE_512[:2].mean(axis=0)
        for k in range(self.count):
            center = np.array([60.0 + 120 * (k % 5), 60.0 + 120 * (k // 5)])
            eye_distance = 34.0 - 0.2 * k
            landmarks = (FFHQ_TEMPLATE_512 - eyes) * (eye_distance / 126.0) + center
            half = 1.5 * eye_distance
            box = np.array([center[0] - half, center[1] - half, center[0] + half, center[1] + half])
            faces.append(DetectedFace(box=box, landmarks=landmarks, score=0.99))
        return faces


class RecordingInvert:
    def __init__(self):
        self.batches = []

    def __call__(self, faces):
        self.batches.append(faces.shape[0])
        return 1.0 - faces


def test_faces_go_through_the_model_in_bounded_batches_and_are_capped_with_a_message(tmp_path):
    upload = saved(tmp_path, photo(600, 600))
    model = RecordingInvert()
    with pytest.warns(UserWarning, match="25 faces found; the 20 largest were restored"):
        _, gallery, _, status = app.restore_image(upload, app.WHOLE_PHOTO, 1, 1, 0, model, ManyFaces(25),
                                                  store_for(tmp_path))
    assert model.batches == [4, 4, 4, 4, 4] and len(gallery) == 20 and "20 face(s)" in status
    model = RecordingInvert()
    app.restore_image(upload, app.WHOLE_PHOTO, 1, 1, 0, model, ManyFaces(25),
                      store_for(tmp_path, "--batch_size", "8", "--max_faces", "30"))
    assert model.batches == [8, 8, 8, 1]


def test_a_thin_strip_is_a_photo_without_faces_not_an_error(tmp_path):
    """The real MTCNN used to fail inside on an 8×3000 strip (torch.cat of an empty list)."""
    store = store_for(tmp_path, "--detector", "mtcnn")
    for height, width in ((8, 3000), (3000, 2)):
        with pytest.warns(UserWarning, match="No face detected"):
            (_, after), gallery, _, _ = app.restore_image(saved(tmp_path, photo(height, width)), app.WHOLE_PHOTO,
                                                          1, 1, 0, invert, store=store)
        assert after.shape == (height, width, 3) and gallery == []


def test_a_400_megapixel_upload_is_said_to_be_too_large(tmp_path):
    huge = bomb_png(tmp_path / "huge.png")  # 20000×20000
    for call in (lambda: app.preview(str(huge)),
                 lambda: app.restore_image(str(huge), app.WHOLE_PHOTO, 1, 1, 0, invert, OneFace(), store_for(tmp_path))):
        with pytest.raises(gr.Error) as caught:
            call()
        message = str(caught.value)
        assert "“huge.png” is too large (400 megapixels" in message and "not an image" not in message
        assert "\n" not in message


def test_the_output_size_follows_inference_pys_rule(tmp_path):
    upload = saved(tmp_path, photo(40, 60))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (_, after), _, path, _ = app.restore_image(upload, app.WHOLE_PHOTO, 1, 4, 0, invert, NoFace(),
                                                   store_for(tmp_path, "--max_output_side", "100"))
    assert [str(w.message) for w in caught if "within 100 px" in str(w.message)]
    assert after.shape == (67, 100, 3) and read_rgb(path).shape == (67, 100, 3)
    big = saved(tmp_path, photo(60, 5000), "panorama.png")  # larger than the limit already: kept, not shrunk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        (_, after), _, _, _ = app.restore_image(big, app.WHOLE_PHOTO, 1, 2, 0, invert, NoFace(), store_for(tmp_path))
    assert after.shape == (60, 5000, 3)


def test_the_queue_is_bounded_and_sigterm_is_handled(tmp_path, monkeypatch):
    calls = {}

    class FakeDemo:
        def queue(self, **kwargs):
            calls["queue"] = kwargs

        def launch(self, **kwargs):
            calls["launch"] = kwargs

    monkeypatch.setattr(app, "build_demo", FakeDemo)
    monkeypatch.setattr(app, "stop_on_sigterm", lambda: calls.setdefault("sigterm", True))
    app.main(["--device", "cpu", "--queue_size", "3"])
    assert calls["queue"] == {"default_concurrency_limit": 1, "max_size": 3} and calls["sigterm"]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(("pmrf_", "gradio")))


def start_app(port: int, ckpt_path: Path, env: dict, timeout: float):
    """`python app.py` as a user starts it, once it has printed its local address (it is killed if it does
    not within `timeout` seconds), and the lines it printed until then."""
    import queue
    import subprocess
    import threading

    command = [sys.executable, "app.py", "--server_port", str(port), "--device", "cpu", "--ckpt_path", str(ckpt_path)]
    process = subprocess.Popen(command, cwd=Path(app.__file__).parent, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen = []
    try:
        while not any(f"http://127.0.0.1:{port}" in line for line in seen):
            seen.append(lines.get(timeout=timeout))
    except BaseException:
        process.kill()
        raise
    return process, seen


@pytest.mark.slow
def test_sigterm_removes_every_file_the_app_made(tmp_path, free_port):
    """app.py stopped by SIGTERM (as a service manager stops it) leaves no results and no Gradio upload
    cache behind; its temporary folder is the test's own (TMPDIR)."""
    import signal

    from gradio_client import Client, handle_file

    temp = tmp_path / "tmp"
    temp.mkdir()
    port = free_port
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    env.update(TMPDIR=str(temp), GRADIO_ANALYTICS_ENABLED="False")
    process, _ = start_app(port, tmp_path / "no.ckpt", env, timeout=120)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "downloads"))
        shown = client.predict(handle_file(saved(tmp_path, photo(64, 64))), api_name="/preview")
        assert read_rgb(shown).shape == (64, 64, 3)
        made = _leftovers(temp)
        assert any(name.startswith("pmrf_demo_") for name in made) and any("gradio" in name for name in made), made
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert _leftovers(temp) == [], _leftovers(temp)


# ------------------------------------------------------------------------------ the served page


@pytest.fixture
def served(tmp_path, monkeypatch, free_port):
    """The real Blocks app on a local port, with the stub model; yields (url, fake restoration module)."""
    fake = FakeRestoration()
    monkeypatch.setitem(sys.modules, "lightning_models.restoration", fake)
    monkeypatch.setattr(app, "STORE", store_for(tmp_path))
    demo = app.build_demo()
    demo.queue(default_concurrency_limit=1)
    port = free_port
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
        allowed_paths=[app.results_dir()],
    )
    try:
        yield f"http://127.0.0.1:{port}/", fake
    finally:
        demo.close()


@pytest.mark.slow
def test_the_served_page_restores_through_the_gradio_api(tmp_path, served):
    from gradio_client import Client, handle_file

    url, fake = served
    upload = saved(tmp_path, photo(40, 40))
    client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
    (before, after), gallery, restored, status = client.predict(
        handle_file(upload), app.ALIGNED, 4, 2, 3, api_name="/restore"
    )
    assert read_rgb(before).shape == read_rgb(after).shape == (512, 512, 3)
    assert read_rgb(restored).shape == (512, 512, 3) and len(gallery) == 1
    assert "4 flow steps" in status and fake.restorers == [(4, 3, False)]
    client.predict(handle_file(upload), app.ALIGNED, 4, 2, 3, 0.5, api_name="/restore")
    assert fake.fidelity_weights == [0.0, 0.5]  # the slider's value (left out: its default, 0)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(Exception, match="is not an image this demo can read"):
        client.predict(handle_file(str(notes)), app.ALIGNED, 4, 2, 3, api_name="/restore")


@pytest.mark.slow
def test_running_app_py_prints_the_local_address(tmp_path, free_port):
    """`python app.py` serves the page and says where, without touching the checkpoint."""
    import urllib.request

    port = free_port
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    process, seen = start_app(port, tmp_path / "absent.ckpt", env, timeout=90)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200 and b"<html" in response.read(2000).lower()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert any("Running on local URL" in line for line in seen), seen


def system_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def browser_or_skip():
    """(Playwright's sync API, the system Chromium), or a skip when either is missing; a failure instead
    when PMRF_REQUIRE_BROWSER=1 (set by .ci/run once Chromium is installed), so that CI never passes
    without running the browser test."""
    required = os.environ.get("PMRF_REQUIRE_BROWSER") == "1"
    try:
        import playwright.sync_api as playwright_api
    except ImportError:
        playwright_api = None
    executable = system_chromium()
    missing = "the playwright package" if playwright_api is None else None if executable else "a system Chromium"
    if missing:
        message = f"no {missing} (apt-get install chromium; pip install playwright)"
        if required:
            pytest.fail(f"PMRF_REQUIRE_BROWSER=1 but {message}")
        pytest.skip(message)
    return playwright_api, executable


SHOWN_WHOLE = """img => {
    // The part of the picture that is visible: the image drawn in its box by object-fit (centred), clipped
    // by the box (cover, none) and by every ancestor that hides its overflow (a gallery of fixed height).
    const box = img.getBoundingClientRect(), fit = getComputedStyle(img).objectFit;
    const nw = img.naturalWidth, nh = img.naturalHeight;
    let scaleX = box.width / nw, scaleY = box.height / nh;  // fill
    if (fit === "contain" || fit === "scale-down") {
        scaleX = scaleY = Math.min(scaleX, scaleY, fit === "scale-down" ? 1 : Infinity);
    } else if (fit === "cover") {
        scaleX = scaleY = Math.max(scaleX, scaleY);
    } else if (fit === "none") {
        scaleX = scaleY = 1;
    }
    const width = nw * scaleX, height = nh * scaleY;
    const left = box.left + (box.width - width) / 2, top = box.top + (box.height - height) / 2;
    let clip = {left: box.left, top: box.top, right: box.right, bottom: box.bottom};
    for (let el = img.parentElement; el; el = el.parentElement) {
        const style = getComputedStyle(el);
        if ([style.overflow, style.overflowX, style.overflowY].some(v => v !== "visible")) {
            const r = el.getBoundingClientRect();
            clip = {left: Math.max(clip.left, r.left), top: Math.max(clip.top, r.top),
                    right: Math.min(clip.right, r.right), bottom: Math.min(clip.bottom, r.bottom)};
        }
    }
    const shownWidth = Math.max(0, Math.min(left + width, clip.right) - Math.max(left, clip.left));
    const shownHeight = Math.max(0, Math.min(top + height, clip.bottom) - Math.max(top, clip.top));
    const fraction = (shownWidth * shownHeight) / (width * height);
    const undistorted = Math.abs(scaleX / scaleY - 1) < 0.02;
    return {fit, fraction, undistorted, whole: fraction > 0.97 && undistorted, shownWidth, shownHeight};
}"""


@pytest.mark.slow
def test_in_a_browser_upload_click_and_see_the_slider_and_the_faces(tmp_path, served):
    """The real page in the system's headless Chromium, driven by Playwright (no browser download):
    upload a photo, click Restore, see the before/after slider, the face gallery (whole faces; a click
    shows one large) and the download."""
    playwright_api, executable = browser_or_skip()
    url, fake = served
    upload = saved(tmp_path, photo(64, 64))
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})  # where the faces were cropped
            page.set_default_timeout(120_000)  # a loaded 2-core machine renders slowly
            page.goto(url)
            page.locator("input[type=file]").first.set_input_files(upload)
            page.wait_for_function(  # the preview of the upload
                "() => [...document.querySelectorAll('img')].some(i => i.naturalWidth === 64)"
            )
            page.get_by_label(app.ALIGNED).check()
            page.get_by_role("button", name="Restore", exact=True).click()
            page.get_by_text("Restored the aligned face with 25 flow steps, seed 42.").wait_for()
            page.wait_for_function(  # before and after in the slider, the face in the gallery
                "() => [...document.querySelectorAll('img')].filter(i => i.naturalWidth === 512).length >= 3"
            )
            thumbnail = page.locator("img[alt='restored face']")
            assert thumbnail.count() == 1  # the gallery's caption
            shown = thumbnail.first.evaluate(SHOWN_WHOLE)
            assert shown["whole"], f"the face is cropped in its thumbnail: {shown}"
            assert min(shown["shownWidth"], shown["shownHeight"]) >= 100, shown
            page.get_by_text("pmrf_restored_").first.wait_for()  # the download
            assert fake.restorers == [(25, 42, False)]  # the page's default steps and seed
            thumbnail.first.click()  # the preview: the face alone, whole and large, above a strip of thumbnails
            page.wait_for_function("() => document.querySelectorAll(\"img[alt='restored face']\").length >= 2")
            previews = page.locator("img[alt='restored face']")
            sizes = [previews.nth(k).evaluate(SHOWN_WHOLE) for k in range(previews.count())]
            assert any(size["whole"] and min(size["shownWidth"], size["shownHeight"]) >= 400 for size in sizes), sizes
            page.keyboard.press("Escape")

            page.get_by_label("Clear").first.click()
            page.locator("input[type=file]").first.set_input_files(str(notes))  # refused on upload
            page.get_by_text("“notes.txt” is not an image this demo can read").first.wait_for()
            assert fake.restorers == [(25, 42, False)]
        finally:
            browser.close()


@pytest.mark.parametrize("mode", [app.ALIGNED, app.WHOLE_PHOTO])
def test_a_model_giving_nan_is_a_readable_page_error_and_nothing_is_written(tmp_path, mode):
    import gradio as gr

    upload = saved(tmp_path, photo(120, 100))
    before = set(Path(app.results_dir()).iterdir())
    with pytest.raises(gr.Error, match="NaN or infinite values") as caught:
        app.restore_image(upload, mode, 2, 1, 0, restore_faces=lambda faces: faces * float("nan"),
                          detector=OneFace(), store=store_for(tmp_path))
    assert "\n" not in str(caught.value)
    assert set(Path(app.results_dir()).iterdir()) == before
