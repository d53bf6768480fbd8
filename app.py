"""Local web demo of PMRF blind face restoration (Gradio).

    python app.py [--ckpt_path ID_OR_PATH] [--ckpt_path_is_huggingface] [--device auto|cpu|cuda]
                  [--server_name 127.0.0.1] [--server_port 7860] [--share]

Upload a photo, choose "Aligned face" (a 512x512 FFHQ-aligned face; other sizes are centre-cropped to a
square and resized) or "Whole photo" (every face is detected, aligned, restored and pasted back), set the
number of flow steps, the output scale and the seed, and press Restore. The page opens at once; the model
and the face networks load on the first click, and a missing checkpoint is reported there.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import importlib
import os
import random
import shutil
import tempfile
import threading
import warnings

import numpy as np

from utils.cli import resolve_device
from utils.images import save_rgb
from whole_image.detect import FaceDetector, load_retinaface
from whole_image.paste import FaceParser, load_face_parser
from whole_image.pipeline import RestoreFaces, as_rgb, restore_aligned, restore_photo, side_by_side
from whole_image.upsample import BackgroundUpsampler, load_realesrgan, resize
from whole_image.weights import MissingWeightsError

DEFAULT_CHECKPOINT = "ohayonguy/PMRF_blind_face_image_restoration"
ALIGNED = "Aligned face (512×512)"
WHOLE_PHOTO = "Whole photo (detect faces)"
MAX_OUTPUT_SIDE = 4096  # keeps a big upload times a big scale within a desktop's memory
MAX_SEED = 2**31 - 1


class ModelStore:
    """The PMRF model and the face networks, loaded once, on first use, from the command-line settings."""

    def __init__(self, settings: argparse.Namespace):
        self.settings = settings
        self.device = resolve_device(settings.device)
        self._lock = threading.Lock()
        self._inference = None  # lightning_models.restoration, imported with the model
        self._model = None
        self._detector: FaceDetector | None = None
        self._parser: FaceParser | None = None
        self._parser_tried = False
        self._bg_upsampler: BackgroundUpsampler | None = None
        self._bg_upsampler_tried = False

    def restorer(self, num_flow_steps: int, seed: int) -> RestoreFaces:
        with self._lock:
            if self._model is None:
                self._inference, self._model = self._load_model()
        return self._inference.make_face_restorer(
            self._model, num_flow_steps=num_flow_steps, seed=seed, bf16=self.settings.bf16
        )

    def _load_model(self):
        ckpt = self.settings.ckpt_path
        huggingface = self.settings.ckpt_path_is_huggingface or ckpt == DEFAULT_CHECKPOINT
        try:
            restoration = importlib.import_module("lightning_models.restoration")
            return restoration, restoration.load_model(ckpt, huggingface=huggingface, device=self.device)
        except Exception as error:  # offline hub, missing file, wrong format: one message for the page
            where = (
                f"the Hugging Face repo '{ckpt}' (needs internet once; it is cached afterwards)"
                if huggingface
                else f"the file '{ckpt}'"
            )
            raise user_error(
                f"Cannot load the PMRF model from {where}: {error.__class__.__name__}: {error}. "
                "Download the checkpoint (see README) and start the demo with --ckpt_path pointing at it."
            ) from None

    def detector(self) -> FaceDetector:
        with self._lock:
            if self._detector is None:
                try:
                    self._detector = load_retinaface(self.settings.face_weights_dir, self.device)
                except (MissingWeightsError, ValueError) as error:
                    raise user_error(str(error)) from None
        return self._detector

    def parser(self) -> FaceParser | None:
        with self._lock:
            if not self._parser_tried:
                self._parser_tried = True
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    self._parser = load_face_parser(self.settings.face_weights_dir, self.device)
                for warning in caught:  # the ellipse fallback, shown on the page too
                    user_warning(str(warning.message))
        return self._parser

    def bg_upsampler(self) -> BackgroundUpsampler | None:
        """Real-ESRGAN when asked for; without its weights the demo keeps going with plain resizing."""
        if self.settings.bg_upsampler != "realesrgan":
            return None
        with self._lock:
            if not self._bg_upsampler_tried:
                self._bg_upsampler_tried = True
                try:
                    self._bg_upsampler = load_realesrgan(self.settings.realesrgan_weights_dir, self.device)
                except (MissingWeightsError, ValueError) as error:
                    user_warning(f"{error}; the background is resized without Real-ESRGAN")
        return self._bg_upsampler


STORE: ModelStore | None = None


def demo_store() -> ModelStore:
    """The store of the running demo; the defaults of the command line when none was started."""
    global STORE
    if STORE is None:
        STORE = ModelStore(parse_args([]))
    return STORE


def user_error(message: str) -> Exception:
    """gr.Error (shown on the page) when Gradio is importable, else a plain RuntimeError."""
    try:
        import gradio as gr
    except ImportError:
        return RuntimeError(message)
    return gr.Error(message)


def user_warning(message: str) -> None:
    import gradio as gr

    gr.Warning(message)


def square_face(image: np.ndarray, size: int = 512) -> np.ndarray:
    """An aligned-face input as size x size: centre-cropped to a square, then resized if needed."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return resize(image[top : top + side, left : left + side], size, size)


def capped_scale(image: np.ndarray, upscale: float) -> float:
    longest = max(image.shape[:2])
    if longest * upscale <= MAX_OUTPUT_SIDE:
        return upscale
    capped = max(MAX_OUTPUT_SIDE / longest, 0.1)
    user_warning(
        f"Output scale lowered from {upscale:g} to {capped:.2f} to keep the result "
        f"within {MAX_OUTPUT_SIDE} px."
    )
    return capped


def restore_image(
    image: np.ndarray | None,
    mode: str,
    steps: float,
    upscale: float,
    seed: float,
    restore_faces: RestoreFaces | None = None,
    detector: FaceDetector | None = None,
    store: ModelStore | None = None,
) -> tuple[np.ndarray, str, str]:
    """The Restore button: returns (input | restored side by side, path of the restored PNG, a status line).

    `restore_faces` and `detector` default to the networks of `store` (the demo's own), which also gives
    the paste mask's face parser and the background upsampler.
    """
    if image is None:
        raise user_error("Upload a photo first.")
    store = store or demo_store()
    image = as_rgb(np.asarray(image))
    steps = int(min(max(int(steps), 1), 200))
    seed = int(seed) if seed is not None and int(seed) >= 0 else random.randint(0, MAX_SEED)
    if mode != ALIGNED and detector is None:
        detector = store.detector()  # before the model: a missing detector file is found at once
    if restore_faces is None:
        restore_faces = store.restorer(steps, seed)
    if mode == ALIGNED:
        face = square_face(image)
        restored = restore_aligned([face], restore_faces)[0]
        comparison = side_by_side(face, restored)
        status = f"Restored the aligned face with {steps} flow steps, seed {seed}."
    else:
        result = restore_photo(
            image,
            restore_faces,
            detector,
            upscale=capped_scale(image, float(upscale)),
            parser=store.parser(),
            bg_upsampler=store.bg_upsampler(),
            name="the photo",
        )
        restored = result.restored_image
        comparison = side_by_side(image, restored)
        if not result.faces:
            user_warning("No face detected: the photo was only resized.")
        status = f"Restored {len(result.faces)} face(s) with {steps} flow steps, seed {seed}."
    handle, path = tempfile.mkstemp(prefix="pmrf_restored_", suffix=".png", dir=results_dir())
    os.close(handle)
    save_rgb(restored, path)  # atomic replace of the empty placeholder
    return comparison, path, status


@functools.cache
def results_dir() -> str:
    """A private folder for the demo's downloadable results, removed when the program ends."""
    folder = tempfile.mkdtemp(prefix="pmrf_demo_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def build_demo():
    import gradio as gr

    with gr.Blocks(title="PMRF face restoration", analytics_enabled=False) as demo:
        gr.Markdown(
            "# PMRF: Posterior-Mean Rectified Flow — blind face restoration\n"
            "Upload a photo. *Aligned face* expects a square, FFHQ-aligned face (it is resized to 512×512); "
            "*Whole photo* finds every face, restores it and pastes it back."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="numpy", image_mode="RGB", label="Input photo")
                mode = gr.Radio([ALIGNED, WHOLE_PHOTO], value=WHOLE_PHOTO, label="Input kind")
                steps = gr.Slider(1, 200, value=25, step=1, label="Flow steps")
                upscale = gr.Slider(1, 4, value=2, step=1, label="Output scale (whole photo only)")
                seed = gr.Number(value=42, precision=0, label="Seed (-1: random)")
                run = gr.Button("Restore", variant="primary")
            with gr.Column():
                comparison = gr.Image(type="numpy", format="png", label="Input | restored", interactive=False)
                download = gr.File(label="Restored image (PNG)", interactive=False)
                status = gr.Markdown()
        run.click(
            restore_image,
            inputs=[image, mode, steps, upscale, seed],
            outputs=[comparison, download, status],
            api_name="restore",
        )
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="PMRF web demo (Gradio), local by default.")
    parser.add_argument(
        "--ckpt_path",
        default=DEFAULT_CHECKPOINT,
        help=f"Hugging Face repo id or local checkpoint (default {DEFAULT_CHECKPOINT})",
    )
    parser.add_argument(
        "--ckpt_path_is_huggingface",
        action="store_true",
        help="--ckpt_path is a Hugging Face repo id or a save_pretrained folder (implied for the default id)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, ..."
    )
    parser.add_argument("--bf16", action="store_true", help="run the model in bfloat16 autocast")
    parser.add_argument(
        "--bg_upsampler",
        choices=("none", "realesrgan"),
        default="none",
        help="whole-photo background: Lanczos resize or Real-ESRGAN x2plus",
    )
    parser.add_argument(
        "--face_weights_dir",
        default=None,
        help="facexlib weights folder (default $PMRF_FACE_WEIGHTS, else checkpoints/facexlib/)",
    )
    parser.add_argument(
        "--realesrgan_weights_dir",
        default=None,
        help="folder of RealESRGAN_x2plus.pth (default checkpoints/realesrgan/)",
    )
    parser.add_argument(
        "--server_name", default="127.0.0.1", help="address to listen on (0.0.0.0 for the LAN)"
    )
    parser.add_argument("--server_port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    global STORE
    args = parse_args(argv)
    STORE = ModelStore(args)
    demo = build_demo()
    demo.queue(default_concurrency_limit=1)
    print(f"PMRF demo on {STORE.device}; model {args.ckpt_path} loads on the first Restore.", flush=True)
    demo.launch(server_name=args.server_name, server_port=args.server_port, share=args.share, show_error=True)


if __name__ == "__main__":
    main()
