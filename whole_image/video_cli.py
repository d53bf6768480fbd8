"""Command-line side of video restoration (inference.py --whole_image with videos): the options, what a
path holds, and the run that prints the results table.

    add_video_arguments(parser)                                   # --crf, --temporal_smoothing
    has_photos, videos = photos_and_videos(args.lq_data_path)
    run_videos(WholeImageOptions.from_args(args), VideoOptions.from_args(args), restorer, device, videos)

The work itself is the library's: whole_image.video_batch.restore_videos (outputs and naming are
described there). Nothing here ends the program either: a bad input, output folder or weights file, a
failed write, Ctrl-C or SIGTERM raise the library's errors (InputError, MissingWeightsError,
WeightsReadError, WriteError, RunInterrupted), which the program (inference.py) turns into one line and
an exit status (2, or 130 for an interruption).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from utils.cli import int_range
from utils.images import VIDEO_EXTENSIONS, collect_inputs, is_video_file
from whole_image.cli import print_skipped
from whole_image.options import WholeImageOptions
from whole_image.pipeline import RestoreFaces
from whole_image.tools import WholeImageTools
from whole_image.video import DEFAULT_CRF, VideoOptions, VideoResult
from whole_image.video_batch import VideoReport, restore_videos


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


def photos_and_videos(path: str | Path) -> tuple[bool, list[Path]]:
    """What `inference.py --whole_image` has to do for `path`: (photos to restore?, the videos). A folder
    with neither, or a file that is neither, raises utils.images.InputError (collect_inputs)."""
    inputs = collect_inputs(path, videos=True)
    videos = [item for item in inputs if is_video_file(item)]
    return len(videos) < len(inputs), videos


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


def print_video_report(report: VideoReport, output_dir: Path) -> None:
    if report.results:
        print_results(report.results)
    print(f"{len(report.results)} video(s) written to {output_dir}")
    print_skipped(report.skipped, "video(s)")


def run_videos(
    options: WholeImageOptions,
    video_options: VideoOptions,
    restore_faces: RestoreFaces,
    device: str | torch.device = "cpu",
    videos: list[Path] | None = None,
    tools: WholeImageTools | None = None,
) -> list[Path]:
    """restore_videos with its results printed as a table (and saved in video_results.json); returns the
    restored videos' paths. Raises what restore_videos raises (RunInterrupted for Ctrl-C or SIGTERM, with
    no partial video left)."""
    report = restore_videos(options, video_options, restore_faces, device, videos, tools)
    print_video_report(report, Path(options.output_dir))
    return [Path(result.output) for result in report.results]


__all__ = ["add_video_arguments", "photos_and_videos", "run_videos"]
