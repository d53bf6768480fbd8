"""Steadiness, speed and memory of whole-video restoration (`whole_image.video`).

The clip: scikit-image's astronaut filmed with a slow pan and zoom, 256×256, each frame downscaled ×0.5,
upscaled back and JPEG-compressed at quality 30 (`utils.synthetic_video.astronaut_clip`), 48 frames at
24 fps with a one-second tone as its audio. MTCNN (weights in the facenet-pytorch wheel) finds the face.

1. Flicker: the clip restored with `--temporal_smoothing on` and `off` (same model, seed, steps), and
   two ablations: smoothed landmarks with fresh noise in every frame, and one noise per face with the
   detector's raw landmarks. The flicker ratio is the mean absolute frame-to-frame change inside the
   face boxes of the output, divided by the same for the input. Target: smoothing gives a ratio at least
   2× lower than per-frame restoration.
2. Memory (`--memory`): peak resident memory added while restoring a 60-frame and a 600-frame clip, each
   in a fresh process (baseline taken after the model and the detector are loaded; see benchmarks/__init__).
   Target: the 600-frame peak at most 10× the 60-frame one (streaming: it should be about the same).

The model: by default a tiny PMRF trained here on the repository's synthetic cartoon faces (48×48,
train.py, about 5 minutes on 2 CPU cores, kept in --work_dir for the next run). The 512×512 aligned crops
are reduced to `--face_sizes` for it (default 48, its training size, and 128) and its output enlarged
back. It is far too small to restore a real face well: what it shows is the steadiness mechanism
(PMRF's fresh source noise per frame against one noise per tracked face, raw against smoothed
landmarks). `--ckpt_path` measures another model instead (the official checkpoint on a GPU, at 512).

    python benchmarks/video.py                                   # flicker, tiny model, CPU
    python benchmarks/video.py --memory --output_json video.json # and the 60 / 600-frame memory figures
    python benchmarks/video.py --strip docs/video_strip.jpg      # the README's before/after frames
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import PeakMemory, environment, format_table, save_json  # noqa: E402
from utils.images import save_rgb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_SIZE = 48
DEGRADATION = "gaussian_noise_035"


# ------------------------------------------------------------------------------------ the model


def train_tiny_model(work_dir: Path, mmse_steps: int, flow_steps: int) -> Path:
    """A tiny PMRF (configs/demo_*.json) trained with train.py on synthetic faces; reused when present."""
    from utils.synthetic_faces import make_face_folder

    checkpoint = work_dir / "pmrf" / "checkpoints" / "last.ckpt"
    if checkpoint.is_file():
        print(f"tiny model: reusing {checkpoint}", flush=True)
        return checkpoint
    data = work_dir / "faces"
    if not data.is_dir():
        make_face_folder(data, 512, TINY_SIZE, seed=0)
    common = ["--degradation", DEGRADATION, "--train_data_root", str(data), "--img_size", str(TINY_SIZE),
              "--train_batch_size", "16", "--num_workers", "1", "--precision", "32", "--accelerator", "cpu",
              "--ema_decay", "0.99", "--lr", "1e-3", "--logger", "csv", "--seed", "0", "--log_every_n_steps", "50"]
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}
    for stage, arch, steps, extra in (
        ("mmse", "configs/demo_swinir.json", mmse_steps, []),
        ("flow", "configs/demo_hdit.json", flow_steps,
         ["--mmse_model_ckpt_path", str(work_dir / "mmse" / "checkpoints" / "last.ckpt"), "--source_noise_std", "0.1"]),
    ):
        name = "mmse" if stage == "mmse" else "pmrf"
        print(f"training the tiny model: {name}, {steps} steps", flush=True)
        command = [sys.executable, "train.py", "--stage", stage, "--arch", arch, "--max_steps", str(steps),
                   "--output_dir", str(work_dir / name), *common, *extra]
        subprocess.run(command, cwd=ROOT, check=True, env=env, stdout=subprocess.DEVNULL)
    return checkpoint


class AtSize:
    """A restorer run at the face size its model was trained at: the 512×512 crops are area-reduced to
    `size`, restored (with their noise, drawn at `size`), and enlarged back (bicubic)."""

    def __init__(self, restorer, size: int):
        self.restorer, self.size = restorer, size

    def draw_noise(self, count: int, size: int) -> torch.Tensor:
        return self.restorer.draw_noise(count, self.size)

    def __call__(self, faces: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if faces.shape[-1] == self.size:
            return self.restorer(faces, noise=noise)
        small = F.interpolate(faces, size=(self.size, self.size), mode="area")
        restored = self.restorer(small, noise=noise)
        return F.interpolate(restored, size=faces.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)


class FreshNoise:
    """The restorer without `draw_noise`: the video pipeline then lets it draw fresh noise in every frame
    (an ablation: smoothed landmarks without one noise per face)."""

    def __init__(self, restorer):
        self.restorer = restorer

    def __call__(self, faces: torch.Tensor) -> torch.Tensor:
        return self.restorer(faces)


def load_restorer(args, device: torch.device, face_size: int, model=None):
    """A fresh FaceRestorer (its generator seeded with --seed) at `face_size`; the model is loaded unless given."""
    from lightning_models.restoration import FaceRestorer, load_model

    model = model if model is not None else load_model(args.ckpt_path, device=device)
    restorer = FaceRestorer(model, args.num_flow_steps, seed=args.seed)
    return AtSize(restorer, face_size) if face_size != 512 else restorer


# ------------------------------------------------------------------------------------ the clip


def make_clip(path: Path, frames: int, size: int, fps: int = 24) -> list[np.ndarray]:
    from utils.synthetic_video import astronaut_clip, write_clip

    images = astronaut_clip(frames, size)
    write_clip(path, images, fps=fps, audio_seconds=min(frames / fps, 1.0), crf=4)
    return images


def restore(args, restorer, detector, source: Path, destination: Path, smoothing: bool, smooth_landmarks: bool = True):
    from whole_image.video import VideoOptions, restore_video

    options = VideoOptions(temporal_smoothing=smoothing, smooth_landmarks=smooth_landmarks, batch_size=args.batch_size)
    return restore_video(source, destination, restorer, detector, upscale=args.upscale, options=options,
                         progress=False)


def read_frames_of(path: Path) -> list[np.ndarray]:
    from whole_image.video_io import probe, read_frames

    return [frame.image for frame in read_frames(probe(path))]


def write_strip(path: Path, videos: list[Path], picks: int = 4, tile: int = 160) -> None:
    """`picks` frames spread over the clip, cropped around the face: one row per video (the input first)."""
    import cv2

    rows = []
    for video in videos:
        frames = read_frames_of(video)
        tiles = []
        for k in range(picks):
            frame = frames[round(k * (len(frames) - 1) / (picks - 1))]
            height, width = frame.shape[:2]
            face = frame[: round(0.6 * height), round(0.2 * width) : round(0.8 * width)]  # the astronaut's head
            tile_image = cv2.resize(face, (tile, tile), interpolation=cv2.INTER_AREA)
            tiles.append(np.pad(tile_image, ((2, 2), (2, 2), (0, 0)), constant_values=255))
        rows.append(np.concatenate(tiles, axis=1))
    save_rgb(np.concatenate(rows, axis=0), path, jpeg_quality=90)
    print(f"saved {path}")


# ------------------------------------------------------------------------------------ memory


def memory_child(args) -> None:
    """In a fresh process: load everything, then the peak memory added by restoring one clip."""
    from whole_image.detect import load_mtcnn

    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = torch.device(args.device)
    restorer, detector = load_restorer(args, device, args.face_sizes[0]), load_mtcnn(device)
    with tempfile.TemporaryDirectory() as scratch, PeakMemory(torch.device("cpu")) as peak:
        result = restore(args, restorer, detector, Path(args.memory_child), Path(scratch) / "out.mp4", True)
    print(json.dumps({"frames": result.frames, "added_peak_mib": peak.mib, "seconds": result.seconds}))


def measure_memory(args, work_dir: Path, lengths=(60, 600)) -> list[dict]:
    rows = []
    for frames in lengths:
        clip = work_dir / f"astronaut_{frames}.mp4"
        if not clip.is_file():
            make_clip(clip, frames, args.size)
        command = [sys.executable, str(Path(__file__).resolve()), "--memory_child", str(clip),
                   "--ckpt_path", str(args.ckpt_path), "--face_sizes", str(args.face_sizes[0]), "--device", args.device,
                   "--num_flow_steps", str(args.num_flow_steps), "--upscale", str(args.upscale)]
        print(f"memory: restoring a {frames}-frame clip in a fresh process", flush=True)
        output = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    return rows


# ------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", default=None, help="model to measure (default: train the tiny one)")
    parser.add_argument("--face_sizes", default=None,
                        help=f"sizes the model restores the crops at, comma-separated (default {TINY_SIZE},128 for the "
                             "tiny model: its training size and more; else 512)")
    parser.add_argument("--work_dir", type=Path, default=Path(tempfile.gettempdir()) / "pmrf_video_benchmark",
                        help="the tiny model, the clips and the outputs (kept for the next run)")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=256, help="side of the clip's frames")
    parser.add_argument("--num_flow_steps", type=int, default=25)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--upscale", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mmse_steps", type=int, default=150, help="training steps of the tiny MMSE model")
    parser.add_argument("--flow_steps", type=int, default=200, help="training steps of the tiny PMRF flow")
    parser.add_argument("--memory", action="store_true", help="also measure memory on 60- and 600-frame clips")
    parser.add_argument("--strip", type=Path, default=None, help="write a before/after strip of frames here")
    parser.add_argument("--output_json", default=None)
    parser.add_argument("--memory_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.face_sizes is None:
        args.face_sizes = f"{TINY_SIZE},128" if args.ckpt_path is None else "512"
    args.face_sizes = [int(size) for size in str(args.face_sizes).split(",") if size.strip()]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return {}
    from whole_image.detect import load_mtcnn

    work_dir = args.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    if args.ckpt_path is not None:
        model_description = f"checkpoint {Path(args.ckpt_path).name}"
    else:
        args.ckpt_path = train_tiny_model(work_dir, args.mmse_steps, args.flow_steps)
        model_description = (f"tiny PMRF (configs/demo_swinir.json + configs/demo_hdit.json, σ_s = 0.1) trained "
                             f"{args.mmse_steps} + {args.flow_steps} steps on synthetic {TINY_SIZE}×{TINY_SIZE} faces")
    from lightning_models.restoration import load_model

    device = torch.device(args.device)
    clip = work_dir / f"astronaut_{args.frames}.mp4"
    make_clip(clip, args.frames, args.size)
    model, detector = load_model(args.ckpt_path, device=device), load_mtcnn(device)
    rows, improvements, strip = [], {}, [clip]
    for face_size in args.face_sizes:
        cases = (  # name, temporal smoothing, fresh noise in every frame, smoothed landmarks
            ("off", False, False, False),
            ("smoothed landmarks, fresh noise", True, True, True),
            ("raw landmarks, one noise per face", True, False, False),
            ("on", True, False, True),
        )
        for name, smoothing, fresh_noise, smooth_landmarks in cases:
            restorer = load_restorer(args, device, face_size, model)  # same seed for every case
            output = work_dir / f"restored_{face_size}_{name.split(',')[0].replace(' ', '_')}.mp4"
            result = restore(args, FreshNoise(restorer) if fresh_noise else restorer, detector, clip, output,
                             smoothing, smooth_landmarks)
            rows.append({"face_size": face_size, "temporal_smoothing": name, "flicker_ratio": result.flicker_ratio,
                         "input_change": result.input_change, "output_change": result.output_change,
                         "frames": result.frames, "tracks": result.tracks,
                         "frames_per_second": result.frames_per_second})
        improvements[face_size] = rows[-4]["flicker_ratio"] / rows[-1]["flicker_ratio"]
        strip.append(work_dir / f"restored_{face_size}_on.mp4")
    print(f"\nmodel: {model_description}; K = {args.num_flow_steps}, seed {args.seed}, upscale {args.upscale:g}")
    print(f"clip: astronaut, {args.frames} frames of {args.size}×{args.size}, pan + zoom, JPEG q30\n")
    print(format_table(rows, [("face_size", "model at"), ("temporal_smoothing", "smoothing"),
                              ("flicker_ratio", "flicker (out/in)"), ("input_change", "input Δ/frame"),
                              ("output_change", "output Δ/frame"), ("tracks", "tracks"),
                              ("frames_per_second", "frames/s")]))
    for face_size, improvement in improvements.items():
        print(f"model at {face_size} px: per-frame flicker / smoothed flicker = {improvement:.2f}× (target ≥ 2×)")
    payload = {"benchmark": "video", "model": model_description, "environment": environment(device),
               "settings": {k: str(v) for k, v in vars(args).items() if k not in ("output_json", "work_dir", "ckpt_path",
                                                                                    "strip", "memory_child")},
               "flicker": rows, "flicker_improvement": improvements}
    if args.strip:
        write_strip(args.strip, strip)
    if args.memory:
        started = time.perf_counter()
        memory = measure_memory(args, work_dir)
        growth = memory[1]["added_peak_mib"] / max(memory[0]["added_peak_mib"], 1e-6)
        print()
        print(format_table(memory, [("frames", "frames"), ("added_peak_mib", "peak RSS added (MiB)"),
                                    ("seconds", "seconds")]))
        print(f"600-frame peak / 60-frame peak = {growth:.2f} (target ≤ 10); {time.perf_counter() - started:.0f} s")
        payload["memory"] = memory
        payload["memory_ratio_600_to_60"] = growth
    if args.output_json:
        save_json(args.output_json, payload)
    return payload


if __name__ == "__main__":
    main()
