"""Command-line side of video restoration (inference.py --whole_image with videos).

    add_video_arguments(parser)                                   # --crf, --temporal_smoothing
    has_photos, videos = photos_and_videos(args.lq_data_path)
    run_videos(WholeImageOptions.from_args(args), VideoOptions.from_args(args), restorer, device, videos)

Each video `<stem>.<ext>` becomes `OUTPUT/<stem>[_<suffix>].mp4` (`<stem>_<ext>` when two inputs share a
stem); the table of results is printed and saved as `OUTPUT/video_results.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from utils.cli import check_writable_folder, fail, int_range
from utils.images import IMAGE_EXTENSIONS, WriteError, list_images, output_name, write_atomic
from whole_image.pipeline import RestoreFaces
from whole_image.video import DEFAULT_CRF, VideoOptions, VideoResult, restore_video, supports_noise
from whole_image.video_io import VIDEO_EXTENSIONS, VideoReadError, list_videos


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        f"videos (with --whole_image, inputs ending in {' '.join(VIDEO_EXTENSIONS)}; written as OUTPUT/<name>.mp4)"
    )
    group.add_argument(
        "--crf",
        type=int_range(0, 51),
        default=DEFAULT_CRF,
        help=f"H.264 quality of restored videos, 0 (lossless) to 51 (worst); default {DEFAULT_CRF}",
    )
    group.add_argument(
        "--temporal_smoothing",
        choices=("on", "off"),
        default="on",
        help="on: track faces, smooth their landmarks over time and keep one source noise per face "
        "(steady faces); off: restore every frame on its own, as a photo (default on)",
    )


def find_videos(path: str | Path) -> list[Path]:
    """The videos to restore: `path` itself when it is a video file, else the videos inside the folder."""
    path = Path(path)
    if path.is_file():
        return [path] if path.suffix.lower() in VIDEO_EXTENSIONS else []
    return list_videos(path) if path.is_dir() else []


def photos_and_videos(path: str | Path) -> tuple[bool, list[Path]]:
    """What `inference.py --whole_image` has to do for `path`: (photos to restore?, the videos). A folder
    with neither, or a file that is neither, ends the program with one line."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            return False, [path]
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return True, []
        fail(f"{path}: not an image or a video (expected {' '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})")
    if not path.is_dir():
        fail(f"{path}: no such file or folder")
    videos, photos = list_videos(path), list_images(path)
    if not videos and not photos:
        fail(f"{path}: no images or videos in this folder")
    return bool(photos), videos


def video_names(videos: list[Path], suffix: str | None = None) -> dict[Path, str]:
    """Output file names: `<stem>[_suffix].mp4`, or `<stem>_<ext>...` when two videos share a stem."""
    stems = [video.stem for video in videos]
    names = {}
    for video in videos:
        stem = video.stem if stems.count(video.stem) == 1 else f"{video.stem}_{video.suffix.lstrip('.').lower()}"
        names[video] = output_name(f"{stem}.mp4", suffix)
    return names


def print_results(results: list[VideoResult]) -> None:
    print("\n| video | frames | faces (tracks) | frames/s | flicker (output / input) | smoothing |")
    print("|---|---:|---:|---:|---:|---|")
    for result in results:
        flicker = f"{result.flicker_ratio:.3f}" if result.flicker_ratio is not None else "n/a"
        print(
            f"| {Path(result.output).name} | {result.frames} | {result.tracks} | {result.frames_per_second:.2f} "
            f"| {flicker} | {'on' if result.temporal_smoothing else 'off'} |"
        )
    for result in results:
        for note in result.notes:
            print(f"  {Path(result.input).name}: {note}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a job scheduler) is handled as Ctrl-C while videos are written, so the temporary
    file is removed either way (main thread only: Python delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def restore_one(
    video: Path,
    destination: Path,
    restore_faces: RestoreFaces,
    tools,
    options,
    video_options: VideoOptions,
    skipped: list[str],
    written: int,
) -> VideoResult | None:
    """One video of run_videos: its result, or None when it was skipped (its reason added to `skipped`)."""
    try:
        result = restore_video(
            video,
            destination,
            restore_faces,
            tools.detector,
            upscale=options.upscale,
            only_center_face=options.only_center_face,
            max_faces=options.max_faces,
            parser=tools.parser,
            bg_upsampler=tools.bg_upsampler,
            options=video_options,
        )
    except VideoReadError as error:
        skipped.append(str(error))
        return None
    except KeyboardInterrupt:
        fail(f"interrupted: {destination} was not written (no partial file is left)", code=130)
    except OSError as error:
        raise WriteError(
            f"cannot write {destination}: {error.strerror or error} (check the disk space and permissions); "
            f"{written} video(s) were written before it"
        ) from None
    flicker = f", flicker {result.flicker_ratio:.3f}" if result.flicker_ratio is not None else ""
    tqdm.write(f"{video.name} -> {destination} ({result.frames} frames, {result.frames_per_second:.2f} frames/s{flicker})")
    return result


def run_videos(
    options,
    video_options: VideoOptions,
    restore_faces: RestoreFaces,
    device: str | torch.device = "cpu",
    videos: list[Path] | None = None,
    tools=None,
) -> list[Path]:
    """Restore `videos` (default: those of `options.lq_data_path`) into `options.output_dir`/<name>.mp4,
    with the whole-photo `options` (upscale, detector, face mask, background). Unreadable videos are
    listed and skipped; the results are printed as a table and saved in `video_results.json`.

    Ctrl-C stops at once, leaves no partial video, and ends the program with status 130.
    """
    from whole_image.cli import load_tools

    videos = find_videos(options.lq_data_path) if videos is None else videos
    if not videos:
        fail(f"{options.lq_data_path}: no videos ({' '.join(VIDEO_EXTENSIONS)})")
    output_dir = Path(options.output_dir)
    if output_dir.resolve() in {video.parent.resolve() for video in videos}:
        fail(f"{output_dir} holds the input videos; choose another --output_dir")
    check_writable_folder(output_dir)
    tools = tools or load_tools(options, device)
    if options.save_mmse:
        print("note: --save_mmse applies to photos; videos get PMRF's faces only")
    if video_options.temporal_smoothing and not supports_noise(restore_faces):
        print("note: this restorer draws its own noise; faces keep their landmarks smoothed but not one noise")
    names = video_names(videos, options.suffix)
    results, skipped = [], []
    with terminate_as_interrupt():
        for video in videos:
            result = restore_one(video, output_dir / names[video], restore_faces, tools, options, video_options,
                                 skipped, len(results))
            if result is not None:
                results.append(result)
    if results:
        print_results(results)
        report = output_dir / "video_results.json"
        payload = json.dumps([{**asdict(r), "frames_per_second": r.frames_per_second} for r in results], indent=2)
        write_atomic(report, lambda tmp: Path(tmp).write_text(payload + "\n"))
    print(f"{len(results)} video(s) written to {output_dir}")
    if skipped:
        print(f"skipped {len(skipped)} video(s):")
        for message in skipped:
            print(f"  {message}")
    return [Path(result.output) for result in results]


__all__ = ["add_video_arguments", "find_videos", "photos_and_videos", "run_videos"]
