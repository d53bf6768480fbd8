"""Local web demo of PMRF blind face restoration (Gradio).

    python app.py [--ckpt_path CKPT] [--ckpt_path_is_huggingface] [--device auto|cpu|cuda] [--bf16]
                  [--compile [auto|on|off]] [--detector auto|retinaface|mtcnn] [--server_name 127.0.0.1] [--server_port 7860]

Upload a photo (or pick the example), choose "Whole photo" (every face is detected, aligned, restored and
pasted back) or "Aligned face" (a 512x512 FFHQ-aligned face; other sizes are centre-cropped to a square
and resized), set the number of flow steps, the output scale and the seed, and press Restore. The page
shows a before/after slider, a gallery of the restored faces and the restored photo to download. The
Video tab takes a video (up to MAX_VIDEO_SECONDS long) and gives back the restored MP4, with its sound.

The page opens at once; the model and the face networks load on the first click, and a missing
checkpoint is reported there. The model comes from `lightning_models.restoration` and the face networks
from `whole_image.tools` (the same loaders and restorer as inference.py), with the settings taken once
from the command line (`DemoSettings`); --bf16 and --compile give the same fast path. On CUDA, --compile auto (the
default) compiles the flow network once per process: the model loads and compiles in the background at
start-up, and a click made meanwhile waits for it.

Memory stays bounded: one request runs at a time, at most --queue_size wait (their uploads are files on
disk, not arrays), faces go through the model --batch_size at a time, at most --max_faces per photo, and
the output size follows inference.py's rule (--max_output_side). The app's files (results, Gradio's upload
cache) live in private temporary folders removed when it stops, by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import importlib
import math
import os
import random
import shutil
import signal
import tempfile
import threading
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from utils.auto_compile import should_compile
from utils.cli import (
    add_checkpoint_arguments,
    add_runtime_arguments,
    fail,
    int_range,
    positive_int,
    resolve_device,
)
from utils.images import ImageReadError, ImageTooLargeError, is_gray, raise_interrupt, read_image, save_rgb
from utils.precision import configure_torch
from utils.weights import MissingWeightsError, WeightsReadError
from whole_image.cli import add_photo_model_arguments
from whole_image.detect import FaceDetector
from whole_image.options import ToolOptions
from whole_image.paste import FaceParser
from whole_image.pipeline import (
    NoFaceWarning,
    NonFiniteFacesError,
    RestoreFaces,
    as_rgb,
    restore_crops,
    restore_photo,
    to_gray,
)
from whole_image.tools import load_background_for, load_detector_for, load_parser_for
from whole_image.upsample import MAX_OUTPUT_SIDE, BackgroundUpsampler, OutputTooLarge, output_scale, resize
from whole_image.video import VideoOptions, restore_video
from whole_image.video_io import VideoReadError, probe

ALIGNED = "Aligned face (512×512)"
WHOLE_PHOTO = "Whole photo (detect faces)"
MAX_SEED = 2**31 - 1
MAX_STEPS = 200
MIN_UPSCALE, MAX_UPSCALE = 1.0, 4.0
READABLE = "PNG, JPEG, WebP, BMP, TIFF or GIF"
MAX_VIDEO_SECONDS = 60  # longer videos: inference.py --whole_image


@dataclass(frozen=True)
class DemoSettings:
    """What the demo's models are loaded with, taken once from the command line (`from_args`)."""

    ckpt_path: str
    huggingface: bool = False  # ckpt_path is a Hugging Face Hub id
    use_ema: bool = True
    bf16: bool = False
    compile: str = "auto"  # utils.auto_compile's auto | on | off
    attention_backend: str | None = None
    tools: ToolOptions = field(default_factory=ToolOptions)  # detector, paste mask, background, weights
    max_output_side: int = MAX_OUTPUT_SIDE
    max_faces: int = 20
    batch_size: int = 4  # faces per model call

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoSettings:
        """The settings from `parse_args`' namespace (its options of the same name, and the three below)."""
        given = vars(args)
        same = {f.name: given[f.name] for f in fields(cls) if f.name in given}
        return cls(
            **same, huggingface=args.ckpt_path_is_huggingface, use_ema=not args.use_raw_weights,
            tools=ToolOptions.from_args(args),
        )


class ModelStore:
    """The PMRF model and the face networks, loaded once, on first use, with `settings`; the networks
    come from the loaders inference.py uses (lightning_models.restoration, whole_image.tools)."""

    def __init__(self, settings: DemoSettings, device: torch.device | str = "cpu"):
        self.settings = settings
        self.device = torch.device(device)
        self._lock = threading.Lock()
        self._restoration = None  # lightning_models.restoration, imported with the model
        self._model = None
        self._detector: FaceDetector | None = None
        self.detector_name = ""
        self._parser: FaceParser | None = None
        self._parser_tried = False
        self._bg_upsampler: BackgroundUpsampler | None = None
        self._bg_upsampler_tried = False

    def restorer(self, num_flow_steps: int, seed: int, fidelity_weight: float = 0.0) -> RestoreFaces:
        with self._lock:
            if self._model is None:
                self._restoration, self._model = self._load_model()
        try:
            return self._restoration.FaceRestorer(
                self._model, num_flow_steps=num_flow_steps, seed=seed, bf16=self.settings.bf16,
                fidelity_weight=fidelity_weight,
            )
        except ValueError as error:  # w > 0 for a model without a posterior mean
            raise user_error(f"Fidelity weight: {error}.") from None

    def _load_model(self):
        ckpt = self.settings.ckpt_path
        try:
            restoration = importlib.import_module("lightning_models.restoration")
            model = restoration.load_model(
                ckpt, huggingface=self.settings.huggingface, device=self.device, use_ema=self.settings.use_ema
            )
        except Exception as error:  # offline hub, missing file, wrong format: one message for the page
            where = (
                f"the Hugging Face repo '{ckpt}' (needs internet once; it is cached afterwards)"
                if self.settings.huggingface
                else f"the file '{ckpt}'"
            )
            raise user_error(
                f"Cannot load the PMRF model from {where}: {error.__class__.__name__}: {error}. "
                "Download the checkpoint (see README) and start the demo with --ckpt_path pointing at it."
            ) from None
        restoration.prepare_for_inference(model, self.settings.attention_backend, self.compiles)
        return restoration, model

    @property
    def compiles(self) -> bool:
        """--compile for a server: auto compiles on CUDA (an open-ended job), never on CPU."""
        return should_compile(self.settings.compile, self.device)

    def warm_up(self, size: int = 512) -> None:
        """Load the model and compile it now, at start-up, with one restoration of a face and one of two
        (the second compiles for any number of faces), so that no click waits on the compiler."""
        try:
            with self._lock:
                if self._model is None:
                    self._restoration, self._model = self._load_model()
                restorer = self._restoration.FaceRestorer(self._model, num_flow_steps=1, seed=0, bf16=self.settings.bf16)
                for faces in (1, 2):
                    restorer(torch.rand(faces, 3, size, size))
            print("model loaded and compiled; ready", flush=True)
        except Exception as error:  # reported again, on the page, by the first Restore
            print(f"warning: start-up warm-up failed ({error}); the model loads on the first Restore", flush=True)

    def detector(self) -> FaceDetector:
        with self._lock:
            if self._detector is None:
                try:
                    self._detector, self.detector_name = load_detector_for(self.settings.tools, self.device)
                except (MissingWeightsError, WeightsReadError) as error:
                    raise user_error(str(error)) from None
        return self._detector

    def parser(self) -> FaceParser | None:
        """The paste mask's parser (None: the ellipse; a missing weights file is said once in the terminal)."""
        with self._lock:
            if not self._parser_tried:
                self._parser_tried = True
                self._parser = load_parser_for(self.settings.tools, self.device)
        return self._parser

    def bg_upsampler(self) -> BackgroundUpsampler | None:
        """Real-ESRGAN when asked for; without its weights the demo keeps going with plain resizing."""
        with self._lock:
            if not self._bg_upsampler_tried:
                self._bg_upsampler_tried = True
                try:
                    self._bg_upsampler = load_background_for(self.settings.tools, self.device)
                except (MissingWeightsError, WeightsReadError) as error:
                    user_warning(f"{error}; the background is resized without Real-ESRGAN")
        return self._bg_upsampler


STORE: ModelStore | None = None  # the running demo's (main), holding DemoSettings


def demo_store() -> ModelStore:
    """The store of the running demo; the command line's defaults when none was started."""
    global STORE
    if STORE is None:
        args = parse_args([])
        STORE = ModelStore(DemoSettings.from_args(args), resolve_device(args.device))
    return STORE


def user_error(message: str) -> Exception:
    """gr.Error (one line on the page, no traceback in the terminal) when Gradio is importable, else a
    plain ValueError."""
    try:
        import gradio as gr
    except ImportError:
        return ValueError(message)
    return gr.Error(message, print_exception=False)


def user_warning(message: str) -> None:
    try:
        import gradio as gr
    except ImportError:
        warnings.warn(message, stacklevel=2)
        return
    gr.Warning(message)


# ------------------------------------------------------------------------------------ the handlers


def load_upload(upload) -> np.ndarray:
    """The uploaded photo, upright (EXIF), alpha kept; an array is taken as it is."""
    if upload is None:
        raise user_error("Upload a photo first.")
    if isinstance(upload, np.ndarray):
        return upload
    path = Path(getattr(upload, "name", upload))
    try:
        return read_image(path)
    except ImageTooLargeError as error:
        size = f"{error.pixels / 1e6:.0f} megapixels, " if error.pixels else ""
        limit = f"the limit is {error.limit / 1e6:.0f} megapixels" if error.limit else "over the limit"
        raise user_error(f"“{path.name}” is too large ({size}{limit}). Please upload a smaller photo.") from None
    except (ImageReadError, OSError):
        raise user_error(
            f"“{path.name}” is not an image this demo can read. Please upload a photo ({READABLE})."
        ) from None


def checked_whole_number(value, low: int, high: int, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise user_error(f"{what} must be a whole number from {low} to {high}; got {value}.")
    return int(number)


def checked_seed(seed) -> int:
    """-1 (or nothing) for a random seed; else a whole number in [0, MAX_SEED]."""
    if seed is None or seed == "":
        return random.randint(0, MAX_SEED)
    try:
        number = float(seed)
    except (TypeError, ValueError):
        number = math.nan
    if number == -1:
        return random.randint(0, MAX_SEED)
    if not math.isfinite(number) or number != int(number) or not 0 <= number <= MAX_SEED:
        raise user_error(f"Seed must be a whole number from 0 to {MAX_SEED}, or -1 for a random one; got {seed}.")
    return int(number)


def checked_number(value, low: float, high: float, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not low <= number <= high:  # NaN fails too
        raise user_error(f"{what} must be from {low:g} to {high:g}; got {value}.")
    return number


def square_face(image: np.ndarray, size: int = 512) -> np.ndarray:
    """An aligned-face input as size x size: centre-cropped to a square, then resized if needed."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return resize(image[top : top + side, left : left + side], size, size)


def capped_scale(image: np.ndarray, upscale: float, max_side: int = MAX_OUTPUT_SIDE) -> float:
    """inference.py's rule (whole_image.upsample.output_scale): enlargement stops at `max_side` px, said
    on the page; a photo whose result would not fit in the free memory is refused."""
    try:
        scale, note = output_scale(image.shape[0], image.shape[1], upscale, max_side)
    except OutputTooLarge as error:
        raise user_error(f"The photo is too large to restore here: {error}.") from None
    if note:
        user_warning(f"Output {note}.")
    return scale


def preview(upload):
    """Shown as soon as a file is chosen: the photo upright, or the refusal."""
    if upload is None:
        return None
    return as_rgb(load_upload(upload))


def restore_image(
    upload,
    mode: str,
    steps: float,
    upscale: float,
    seed: float | None,
    restore_faces: RestoreFaces | None = None,
    detector: FaceDetector | None = None,
    store: ModelStore | None = None,
    fidelity_weight: float = 0.0,
) -> tuple[tuple[np.ndarray, np.ndarray], list[tuple[np.ndarray, str]], str, str]:
    """The Restore button: ((before, after) for the slider, [(restored face, caption)] for the gallery,
    path of the restored PNG, a status line).

    `upload` is the uploaded file's path (an array is taken as the photo). `restore_faces` and `detector`
    default to the networks of `store` (the demo's own), which also gives the paste mask's face parser
    and the background upsampler. `fidelity_weight` w moves the result toward the posterior mean.
    """
    image = load_upload(upload)
    steps = checked_whole_number(steps, 1, MAX_STEPS, "The number of flow steps")
    upscale = checked_number(upscale, MIN_UPSCALE, MAX_UPSCALE, "Output scale")
    seed = checked_seed(seed)
    fidelity_weight = checked_number(fidelity_weight, 0, 1, "Fidelity weight")
    store = store or demo_store()
    if mode != ALIGNED and detector is None:
        detector = store.detector()  # before the model: a missing detector file is said at once
    if restore_faces is None:
        restore_faces = store.restorer(steps, seed, fidelity_weight)
    try:
        before, after, download, gallery, status = _restore_for_page(
            image, mode, steps, upscale, seed, restore_faces, detector, store
        )
    except NonFiniteFacesError:
        raise user_error(
            "The model returned NaN or infinite values for this photo, so nothing was written: its checkpoint "
            "is probably damaged (a diverged training run). Load another checkpoint."
        ) from None
    handle, path = tempfile.mkstemp(prefix="pmrf_restored_", suffix=".png", dir=results_dir())
    os.close(handle)
    save_rgb(download, path)  # atomic replace of the empty placeholder
    return (before, after), gallery, path, status


def _restore_for_page(image, mode, steps, upscale, seed, restore_faces, detector, store):
    """restore_image's work: (before, after, the image to download, the gallery, the status line)."""
    if mode == ALIGNED:
        face = square_face(as_rgb(image))
        restored = restore_crops([face], restore_faces)[0]
        if is_gray(face):
            restored = to_gray(restored)
        before, after, download = face, restored, restored
        gallery = [(restored, "restored face")]
        status = f"Restored the aligned face with {steps} flow steps, seed {seed}."
    else:
        settings = store.settings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoFaceWarning)  # said on the page below
            result = restore_photo(
                image,
                restore_faces,
                detector,
                upscale=capped_scale(image, upscale, settings.max_output_side),
                max_faces=settings.max_faces,
                parser=store.parser(),
                bg_upsampler=store.bg_upsampler(),
                name="the photo",
                batch_size=settings.batch_size,  # bounded memory, however many faces
            )
        download = result.restored_image  # alpha kept in the PNG
        after = as_rgb(download)
        before = resize(as_rgb(image), after.shape[0], after.shape[1])
        count = len(result.faces)
        gallery = [(face, f"face {k + 1} of {count}") for k, face in enumerate(result.restored_faces)]
        if not result.faces:
            user_warning("No face detected: the photo was only resized.")
        elif result.detected > count:
            user_warning(
                f"{result.detected} faces found; the {count} largest were restored (at most {settings.max_faces} "
                "per photo in this demo)."
            )
        detector_name = f" ({store.detector_name.split(' (')[0].removeprefix('face detector: ')})" if store.detector_name else ""
        status = f"Restored {count} face(s) with {steps} flow steps, seed {seed}{detector_name}."
    return before, after, download, gallery, status


def restore_from_page(upload, mode, steps, upscale, seed, fidelity_weight=0.0):
    """The Restore button's inputs, in the page's order."""
    return restore_image(upload, mode, steps, upscale, seed, fidelity_weight=fidelity_weight)


def restore_video_upload(
    upload,
    steps: float,
    upscale: float,
    seed: float | None,
    smoothing: bool = True,
    restore_faces: RestoreFaces | None = None,
    detector: FaceDetector | None = None,
    store: ModelStore | None = None,
) -> tuple[str, str]:
    """The Restore video button: (path of the restored MP4, a status line). Videos longer than
    MAX_VIDEO_SECONDS are refused (the command line has no limit)."""
    if upload is None:
        raise user_error("Upload a video first.")
    path = Path(getattr(upload, "name", upload))
    steps = checked_whole_number(steps, 1, MAX_STEPS, "The number of flow steps")
    upscale = checked_number(upscale, MIN_UPSCALE, MAX_UPSCALE, "Output scale")
    seed = checked_seed(seed)
    try:
        info = probe(path)
    except VideoReadError:
        raise user_error(
            f"“{path.name}” is not a video this demo can read. Please upload an MP4, MOV, MKV, AVI or WebM video."
        ) from None
    frames, rate = info.expected_frames, float(info.frame_rate or 25)
    if (info.duration or (frames or 0) / rate) > MAX_VIDEO_SECONDS:
        raise user_error(
            f"“{path.name}” is longer than {MAX_VIDEO_SECONDS} s; restore it with inference.py --whole_image."
        )
    store = store or demo_store()
    detector = detector or store.detector()
    restore_faces = restore_faces or store.restorer(steps, seed)
    handle, output = tempfile.mkstemp(prefix="pmrf_restored_", suffix=".mp4", dir=results_dir())
    os.close(handle)
    try:
        result = restore_video(
            path, output, restore_faces, detector, upscale=upscale, parser=store.parser(),
            bg_upsampler=store.bg_upsampler(), options=VideoOptions(temporal_smoothing=bool(smoothing)), progress=False,
        )
    except VideoReadError as error:
        os.remove(output)
        raise user_error(f"“{path.name}” could not be restored: {str(error).split(': ', 1)[-1]}") from None
    except BaseException:
        os.remove(output)
        raise
    flicker = f", flicker ratio {result.flicker_ratio:.2f}" if result.flicker_ratio is not None else ""
    status = (
        f"Restored {result.frames} frames ({result.tracks} face(s) tracked) with {steps} flow steps, seed {seed}"
        f"{flicker}. " + "; ".join(result.notes)
    )
    return output, status


@functools.cache
def results_dir() -> str:
    """A private folder for the demo's files (results, examples), removed when the program ends."""
    folder = tempfile.mkdtemp(prefix="pmrf_demo_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@functools.cache
def gradio_cache_dir() -> str:
    """Where Gradio keeps uploads and the files it serves: a private folder removed when the program
    ends (instead of Gradio's shared folder in the system's temporary directory, which nothing empties).
    A GRADIO_TEMP_DIR set by the user is theirs: used, never removed."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        return os.environ["GRADIO_TEMP_DIR"]
    folder = tempfile.mkdtemp(prefix="pmrf_gradio_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = folder  # read by gr.Blocks and by the server when they are created
    return folder


def stop_on_sigterm() -> None:
    """SIGTERM ends the app as Ctrl-C does (Gradio closes the server, the atexit clean-up runs);
    Python's default would end it at once and leave every user's files behind."""
    signal.signal(signal.SIGTERM, raise_interrupt)


@functools.cache
def example_photos() -> list[str]:
    """Example photos for the page: scikit-image's astronaut portrait (none without scikit-image)."""
    try:
        from skimage import data
    except ImportError:
        return []
    path = Path(results_dir()) / "astronaut.png"
    save_rgb(data.astronaut(), path)
    return [str(path)]


def build_demo():
    gradio_cache_dir()  # before Gradio builds anything: it reads the folder then
    import gradio as gr

    with gr.Blocks(title="PMRF face restoration", analytics_enabled=False) as demo:
        gr.Markdown(
            "# PMRF: Posterior-Mean Rectified Flow — blind face restoration\n"
            "Upload a photo. *Whole photo* finds every face, restores it and pastes it back; *Aligned face* "
            "expects a square, FFHQ-aligned face (it is resized to 512×512)."
        )
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Photo", file_count="single", type="filepath")
                shown = gr.Image(label="Your photo", type="numpy", interactive=False, height=240)
                mode = gr.Radio([WHOLE_PHOTO, ALIGNED], value=WHOLE_PHOTO, label="Input kind")
                steps = gr.Slider(1, MAX_STEPS, value=25, step=1, label="Flow steps")
                fidelity = gr.Slider(
                    0, 1, value=0, step=0.05, label="Fidelity weight (0: PMRF, sharpest; 1: posterior mean, lowest MSE)"
                )
                upscale = gr.Slider(MIN_UPSCALE, MAX_UPSCALE, value=2, step=0.5, label="Output scale (whole photo)")
                seed = gr.Number(value=42, precision=0, label=f"Seed (0 to {MAX_SEED}; -1: random)")
                run = gr.Button("Restore", variant="primary")
                if example_photos():
                    gr.Examples(examples=[[path] for path in example_photos()], inputs=[upload], label="Example photos")
            with gr.Column():
                slider = gr.ImageSlider(label="Before / after", type="numpy", format="png", interactive=False)
                faces = gr.Gallery(  # whole faces in the thumbnails; a click shows one large
                    label="Restored faces", columns=4, object_fit="contain", allow_preview=True, format="png",
                    interactive=False,
                )
                download = gr.File(label="Restored photo (PNG)", interactive=False)
                status = gr.Markdown()
        upload.change(preview, inputs=[upload], outputs=[shown], api_name="preview")
        run.click(
            restore_from_page,
            inputs=[upload, mode, steps, upscale, seed, fidelity],
            outputs=[slider, faces, download, status],
            api_name="restore",
        )
        with gr.Tab("Video"):
            with gr.Row():
                with gr.Column():
                    video = gr.Video(label=f"Video (up to {MAX_VIDEO_SECONDS} s)", sources=["upload"], format=None)
                    video_steps = gr.Slider(1, MAX_STEPS, value=25, step=1, label="Flow steps")
                    video_upscale = gr.Slider(MIN_UPSCALE, MAX_UPSCALE, value=2, step=0.5, label="Output scale")
                    video_seed = gr.Number(value=42, precision=0, label=f"Seed (0 to {MAX_SEED}; -1: random)")
                    smoothing = gr.Checkbox(value=True, label="Temporal smoothing (steady faces)")
                    run_video = gr.Button("Restore video", variant="primary")
                with gr.Column():
                    restored_video = gr.Video(label="Restored video (MP4)", format=None, interactive=False)
                    video_status = gr.Markdown()
        run_video.click(
            restore_video_upload,
            inputs=[video, video_steps, video_upscale, video_seed, smoothing],
            outputs=[restored_video, video_status],
            api_name="restore_video",
        )
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="PMRF web demo (Gradio), local by default.")
    add_checkpoint_arguments(parser)
    add_runtime_arguments(parser, compile_help="torch.compile the flow network once per process (same precision as "
                          "without). auto (default): on CUDA, at start-up; on: also elsewhere, at the first click; "
                          "off: never. A bare --compile means on.")
    add_photo_model_arguments(parser.add_argument_group("whole photos"))
    demo_limits = parser.add_argument_group("memory (whole photos)")
    demo_limits.add_argument("--batch_size", type=positive_int, default=4,
                             help="faces per model call (default 4): memory stays bounded however many faces a photo has")
    demo_limits.add_argument("--max_faces", type=positive_int, default=20,
                             help="restore at most this many faces per photo, largest first (default 20; the page says so)")
    server = parser.add_argument_group("server")
    server.add_argument("--server_name", default="127.0.0.1", help="address to listen on (0.0.0.0 for the LAN)")
    server.add_argument("--server_port", type=int_range(1, 65535), default=7860)
    server.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    server.add_argument("--queue_size", type=positive_int, default=16,
                        help="requests that may wait while one runs (default 16); more are told the queue is full")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    global STORE
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        fail(str(error))
    configure_torch()  # TF32 matmuls, as inference.py and the reference
    STORE = ModelStore(DemoSettings.from_args(args), device)
    stop_on_sigterm()
    if STORE.compiles and device.type == "cuda":  # compile once per process, before the first click
        threading.Thread(target=STORE.warm_up, daemon=True, name="warm-up").start()
    demo = build_demo()
    demo.queue(default_concurrency_limit=1, max_size=args.queue_size)
    print(f"PMRF demo on {device}; model {args.ckpt_path} loads on the first Restore.", flush=True)
    try:
        demo.launch(
            server_name=args.server_name,
            server_port=args.server_port,
            share=args.share,
            show_error=True,
            allowed_paths=[results_dir()],
        )
    except KeyboardInterrupt:  # stopped before the server was up
        pass


if __name__ == "__main__":
    main()
