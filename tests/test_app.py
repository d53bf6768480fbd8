"""The Gradio demo: the Restore handler with stub networks, lazy model loading, and the served page.

The model is a stub installed as a fake `lightning_models.restoration` module (the real one needs the checkpoint); the
face detector is stubbed; every download fails as it would offline.
"""

from __future__ import annotations

import inspect
import os
import socket
import sys
import types
import warnings

import numpy as np
import pytest
import torch

import app
from utils.images import read_rgb
from whole_image import weights as weights_module
from whole_image.align import FFHQ_TEMPLATE_512
from whole_image.detect import DetectedFace

gr = pytest.importorskip("gradio")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    def fail(url, folder, file_name):
        raise OSError("network is unreachable")

    monkeypatch.setitem(weights_module.DOWNLOADERS, "facexlib", fail)
    monkeypatch.setitem(weights_module.DOWNLOADERS, "basicsr", fail)
    monkeypatch.setattr(app, "STORE", None)


def invert(faces: torch.Tensor) -> torch.Tensor:
    return 1.0 - faces


class FakeInference(types.ModuleType):
    """Stands in for lightning_models.restoration: records how the demo loads and uses the model."""

    def __init__(self, fail: bool = False):
        super().__init__("lightning_models.restoration")
        self.fail = fail
        self.loads = []
        self.restorers = []

    def load_model(self, ckpt_path, huggingface, device, use_ema=True):
        self.loads.append((ckpt_path, huggingface, str(device)))
        if self.fail:
            raise FileNotFoundError(f"{ckpt_path}: no such file")
        return "model"

    def make_face_restorer(self, model, num_flow_steps, seed=None, bf16=False):
        assert model == "model"
        self.restorers.append((num_flow_steps, seed, bf16))
        return invert


class OneFace:
    def __init__(self, height: int, width: int):
        center = np.array([width / 2, height / 2.2])
        eyes = FFHQ_TEMPLATE_512[:2].mean(axis=0)
        landmarks = (FFHQ_TEMPLATE_512 - eyes) * (width / 4 / 126.0) + center
        self.face = DetectedFace(box=np.array([0, 0, width, height], float), landmarks=landmarks, score=0.99)

    def detect(self, image):
        return [self.face]


class NoFace:
    def detect(self, image):
        return []


def photo(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def store_for(tmp_path, *extra: str) -> app.ModelStore:
    return app.ModelStore(app.parse_args(["--device", "cpu", "--face_weights_dir", str(tmp_path), *extra]))


def test_aligned_mode_returns_side_by_side_and_a_png(tmp_path):
    image = photo(100, 80)
    comparison, path, status = app.restore_image(
        image, app.ALIGNED, 25, 2, 42, restore_faces=invert, store=store_for(tmp_path)
    )
    assert comparison.shape == (512, 1024, 3) and comparison.dtype == np.uint8
    restored = read_rgb(path)
    assert restored.shape == (512, 512, 3)
    np.testing.assert_array_equal(restored, 255 - comparison[:, :512])  # the stub inverts the resized input
    assert "seed 42" in status


def test_whole_photo_mode_pastes_the_face(tmp_path):
    image = photo(48, 64)
    with pytest.warns(UserWarning, match="parsing_parsenet.pth"):  # no parser weights: ellipse mask
        comparison, path, status = app.restore_image(
            image,
            app.WHOLE_PHOTO,
            3,
            2,
            7,
            restore_faces=invert,
            detector=OneFace(48, 64),
            store=store_for(tmp_path),
        )
    restored = read_rgb(path)
    assert restored.shape == (96, 128, 3)
    assert comparison.shape == (96, 256, 3)
    np.testing.assert_array_equal(comparison[:, 128:], restored)
    assert np.any(restored != comparison[:, :128]) and "1 face(s)" in status


def test_whole_photo_without_faces_warns_and_resizes(tmp_path):
    store = store_for(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comparison, path, status = app.restore_image(
            photo(30, 40), app.WHOLE_PHOTO, 5, 3, 1, restore_faces=invert, detector=NoFace(), store=store
        )
    assert any("No face detected" in str(w.message) for w in caught)
    assert read_rgb(path).shape == (90, 120, 3) and "0 face(s)" in status


def test_model_loads_lazily_once_with_the_settings(tmp_path, monkeypatch):
    fake = FakeInference()
    monkeypatch.setitem(sys.modules, "lightning_models.restoration", fake)
    store = store_for(tmp_path)
    assert fake.loads == []  # nothing is loaded before the first click
    app.restore_image(photo(64, 64), app.ALIGNED, 10, 1, 5, store=store)
    app.restore_image(photo(64, 64), app.ALIGNED, 300, 1, -1, store=store)
    assert fake.loads == [(app.DEFAULT_CHECKPOINT, True, "cpu")]
    (steps1, seed1, _), (steps2, seed2, _) = fake.restorers
    assert (steps1, seed1) == (10, 5) and steps2 == 200 and 0 <= seed2 <= app.MAX_SEED


def test_a_local_checkpoint_is_not_treated_as_a_hub_id(tmp_path, monkeypatch):
    fake = FakeInference()
    monkeypatch.setitem(sys.modules, "lightning_models.restoration", fake)
    store = store_for(tmp_path, "--ckpt_path", str(tmp_path / "model.ckpt"))
    app.restore_image(photo(32, 32), app.ALIGNED, 1, 1, 0, store=store)
    assert fake.loads[0][:2] == (str(tmp_path / "model.ckpt"), False)


def test_missing_checkpoint_is_a_clear_page_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning_models.restoration", FakeInference(fail=True))
    with pytest.raises(gr.Error) as caught:
        app.restore_image(
            photo(32, 32), app.ALIGNED, 1, 1, 0, store=store_for(tmp_path, "--ckpt_path", "nowhere.ckpt")
        )
    assert "nowhere.ckpt" in str(caught.value) and "--ckpt_path" in str(caught.value)


def test_missing_detector_weights_is_a_clear_page_error(tmp_path):
    with pytest.raises(gr.Error, match="detection_Resnet50_Final.pth"):
        app.restore_image(
            photo(32, 32), app.WHOLE_PHOTO, 1, 1, 0, restore_faces=invert, store=store_for(tmp_path)
        )


def test_no_upload_is_a_page_error(tmp_path):
    with pytest.raises(gr.Error, match="Upload"):
        app.restore_image(None, app.ALIGNED, 1, 1, 0, restore_faces=invert, store=store_for(tmp_path))


def test_command_line_defaults():
    args = app.parse_args([])
    assert (args.server_name, args.server_port, args.share) == ("127.0.0.1", 7860, False)
    assert args.ckpt_path == app.DEFAULT_CHECKPOINT and args.device == "auto"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_the_served_page_restores_through_the_gradio_api(tmp_path, monkeypatch):
    """Launch the real Blocks app locally and press Restore through Gradio's own client."""
    from gradio_client import Client, handle_file
    from PIL import Image

    monkeypatch.setitem(sys.modules, "lightning_models.restoration", FakeInference())
    monkeypatch.setattr(app, "STORE", store_for(tmp_path))
    demo = app.build_demo()
    port = free_port()
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        upload = tmp_path / "face.png"
        Image.fromarray(photo(40, 40)).save(upload)
        client = Client(
            f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "downloads")
        )
        comparison, restored, status = client.predict(
            handle_file(str(upload)), app.ALIGNED, 4, 2, 3, api_name="/restore"
        )
        assert read_rgb(comparison).shape == (512, 1024, 3)
        assert read_rgb(restored).shape == (512, 512, 3)
        assert "4 flow steps" in status
    finally:
        demo.close()


@pytest.mark.slow
def test_running_app_py_prints_the_local_address(tmp_path):
    """`python app.py` serves the page and says where, without touching the checkpoint."""
    import queue
    import subprocess
    import threading
    import urllib.request
    from pathlib import Path

    port = free_port()
    command = [
        sys.executable,
        "app.py",
        "--server_port",
        str(port),
        "--device",
        "cpu",
        "--ckpt_path",
        str(tmp_path / "absent.ckpt"),
    ]
    process = subprocess.Popen(
        command,
        cwd=Path(app.__file__).parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen = []
    try:
        while not any(f"http://127.0.0.1:{port}" in line for line in seen):
            seen.append(lines.get(timeout=90))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200 and b"<html" in response.read(2000).lower()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert any("Running on local URL" in line for line in seen), seen


class HeadlessChromium:
    """Just enough of the Chrome DevTools Protocol, over --remote-debugging-pipe (no extra packages)."""

    def __init__(self, executable: str, profile_dir):
        import subprocess

        self._os = os
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()

        def map_pipes_to_fds_3_and_4():  # the pipe protocol's fixed descriptors, in the child only
            read_copy, write_copy = os.dup(commands_read), os.dup(replies_write)
            os.dup2(read_copy, 3)
            os.dup2(write_copy, 4)

        self.process = subprocess.Popen(
            [
                executable,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile_dir}",
                "--window-size=1280,1600",
                "about:blank",
            ],
            preexec_fn=map_pipes_to_fds_3_and_4,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._next_id = 0
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        import json

        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = self._os.read(self._replies, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium exited")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def page(self, method: str, params: dict | None = None) -> dict:
        return self.send(method, params, self.session)

    def evaluate(self, expression: str):
        return self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get(
            "value"
        )

    def wait_for(self, expression: str, timeout: float = 60.0):
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for: {expression}")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self._os.close(self._commands)
        self._os.close(self._replies)


@pytest.mark.slow
def test_browser_upload_and_click_shows_the_restored_image(tmp_path, monkeypatch):
    """The real page in headless Chromium: upload, pick "Aligned face", click Restore, see the output.
    Needs Debian's chromium (apt-get install chromium); skipped without it."""
    import shutil

    from PIL import Image

    executable = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if executable is None:
        pytest.skip("no chromium (apt-get install chromium)")
    fake = FakeInference()
    monkeypatch.setitem(sys.modules, "lightning_models.restoration", fake)
    monkeypatch.setattr(app, "STORE", store_for(tmp_path))
    demo = app.build_demo()
    demo.queue(default_concurrency_limit=1)
    port = free_port()
    no_ssr = (
        {"ssr_mode": False} if "ssr_mode" in inspect.signature(demo.launch).parameters else {}
    )  # Gradio 5+
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **no_ssr)
    upload = tmp_path / "face.png"
    Image.fromarray(photo(48, 48)).save(upload)
    browser = HeadlessChromium(executable, tmp_path / "profile")
    try:
        browser.page("Page.navigate", {"url": f"http://127.0.0.1:{port}/"})
        browser.wait_for("document.querySelector('input[type=file]') !== null")
        root = browser.page("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        file_input = browser.page("DOM.querySelector", {"nodeId": root, "selector": "input[type=file]"})[
            "nodeId"
        ]
        browser.page("DOM.setFileInputFiles", {"nodeId": file_input, "files": [str(upload)]})
        browser.wait_for("document.querySelectorAll('img').length > 0")
        browser.evaluate(f"document.querySelector('input[type=radio][value=\"{app.ALIGNED}\"]').click()")
        browser.evaluate(
            "[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Restore').click()"
        )
        widths = browser.wait_for(
            "(() => { const w = [...document.querySelectorAll('img')].map(i => i.naturalWidth);"
            " return w.includes(1024) ? w : null; })()"
        )
        assert 1024 in widths  # the 512 | 512 comparison is on the page
        browser.wait_for("document.body.innerText.includes('pmrf_restored_')")  # the download link
        assert fake.restorers and fake.restorers[0][:2] == (25, 42)  # the page's default steps and seed
    finally:
        browser.close()
        demo.close()


def test_missing_realesrgan_weights_fall_back_to_resizing(tmp_path):
    store = store_for(tmp_path, "--bg_upsampler", "realesrgan", "--realesrgan_weights_dir", str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, path, _ = app.restore_image(
            photo(20, 30), app.WHOLE_PHOTO, 1, 2, 0, restore_faces=invert, detector=NoFace(), store=store
        )
    assert any("RealESRGAN_x2plus.pth" in str(w.message) for w in caught)
    assert read_rgb(path).shape == (40, 60, 3)
