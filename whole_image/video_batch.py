"""A folder of videos (or one video) restored into an output folder: the library side of
`inference.py --whole_image` with videos (whole_image.video_cli prints the table; inference.py turns
the errors into one line and an exit status).

    report = restore_videos(WholeImageOptions(lq_data_path, output_dir), VideoOptions(), restore_faces)

Each video `<name>.<ext>` becomes `OUTPUT/<stem>[_<suffix>].mp4`, its stem given by the naming rule of
every mode (utils.images.output_stems: a.mp4 and a.mov give a_mp4.mp4 and a_mov.mp4); with
`skip_existing`, a video whose output exists is left alone. The results are saved as
`OUTPUT/video_results.json` (with the entries of the videos left alone, from the previous run). An
unreadable video is skipped and listed; bad inputs or output folders raise utils.images.InputError,
unreadable weights MissingWeightsError / WeightsReadError, a failed write WriteError, and Ctrl-C or
SIGTERM RunInterrupted, leaving no partial video; nothing here ends the program.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from utils.images import (
    VIDEO_EXTENSIONS,
    InputError,
    RunInterrupted,
    WriteError,
    collect_inputs,
    is_video_file,
    output_name,
    output_stems,
    print_renamed,
    refuse_writing_into_inputs,
    renamed_outputs,
    terminate_as_interrupt,
    writable_folder,
    write_atomic,
)
from whole_image.options import WholeImageOptions
from whole_image.pipeline import RestoreFaces
from whole_image.tools import WholeImageTools, load_tools
from whole_image.video import VideoOptions, VideoResult, restore_video, supports_noise
from whole_image.video_io import VideoReadError

RESULTS_FILE = "video_results.json"


@dataclass
class VideoReport:
    """What restore_videos did."""

    results: list[VideoResult] = field(default_factory=list)  # the videos restored now
    skipped: list[str] = field(default_factory=list)  # "video: why"
    existing: int = 0  # videos left alone by skip_existing
    renamed: dict[str, str] = field(default_factory=dict)  # input name -> output stem, where they differ
    results_file: Path | None = None  # video_results.json, when written


def restore_videos(
    options: WholeImageOptions,
    video_options: VideoOptions,
    restore_faces: RestoreFaces,
    device: str | torch.device = "cpu",
    videos: list[Path] | None = None,
    tools: WholeImageTools | None = None,
) -> VideoReport:
    """Restore `videos` (default: those of `options.lq_data_path`) into `options.output_dir`, with the
    whole-photo `options` (upscale, detector, face mask, background; `tools` loaded from them unless
    given). See the module's docstring for the files and errors."""
    if videos is None:
        videos = [path for path in collect_inputs(options.lq_data_path, videos=True) if is_video_file(path)]
    if not videos:
        raise InputError(f"--lq_data_path {options.lq_data_path}: no videos ({' '.join(VIDEO_EXTENSIONS)})")
    output_dir = Path(options.output_dir)
    refuse_writing_into_inputs(videos, output_dir, what="input videos")
    writable_folder(output_dir)
    tools = tools or load_tools(options, device)
    if options.save_mmse:
        print("note: --save_mmse applies to photos; videos get PMRF's faces only")
    if video_options.temporal_smoothing and not supports_noise(restore_faces):
        print("note: this restorer draws its own noise; faces keep their landmarks smoothed but not one noise")
    stems = output_stems([video.name for video in videos], "mp4")  # every output is an MP4 file
    names = {video: output_name(f"{stems[video.name]}.mp4", options.suffix) for video in videos}
    report = VideoReport(renamed=renamed_outputs(stems))
    print_renamed(report.renamed, "video(s) share a name with another")
    left = [video for video in videos if options.skip_existing and (output_dir / names[video]).is_file()]
    if left:
        report.existing = len(left)
        print(f"left {len(left)} video(s) whose output exists already (--skip_existing)")
    with terminate_as_interrupt():  # SIGTERM as Ctrl-C while videos are written: no partial file is left
        for video in videos:
            if video not in left:
                restore_one(video, output_dir / names[video], restore_faces, tools, options, video_options, report)
    if report.results:
        report.results_file = save_results(output_dir, report.results, [output_dir / names[video] for video in left])
    return report


def restore_one(
    video: Path,
    destination: Path,
    restore_faces: RestoreFaces,
    tools: WholeImageTools,
    options: WholeImageOptions,
    video_options: VideoOptions,
    report: VideoReport,
) -> None:
    """One video of restore_videos: its result added to `report`, or the reason it was skipped."""
    try:
        result = restore_video(
            video, destination, restore_faces, upscale=options.upscale, options=video_options,
            **tools.pipeline_arguments(options),
        )
    except VideoReadError as error:
        report.skipped.append(str(error))
        return
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"interrupted: {destination} was not written (no partial file is left); {len(report.results)} "
            "video(s) were written before it; run again with --skip_existing to restore the rest"
        ) from None
    except OSError as error:
        raise WriteError(
            f"cannot write {destination}: {error.strerror or error} (check the disk space and permissions); "
            f"{len(report.results)} video(s) were written before it"
        ) from None
    flicker = f", flicker {result.flicker_ratio:.3f}" if result.flicker_ratio is not None else ""
    tqdm.write(f"{video.name} -> {destination} ({result.frames} frames, {result.frames_per_second:.2f} frames/s{flicker})")
    report.results.append(result)


def save_results(output_dir: Path, results: list[VideoResult], kept: list[Path]) -> Path:
    """`video_results.json`: this run's results, after the previous file's entries for the outputs in
    `kept` (left alone by skip_existing)."""
    path = output_dir / RESULTS_FILE
    previous = []
    if kept and path.is_file():
        try:
            previous = [entry for entry in json.loads(path.read_text()) if Path(entry["output"]) in set(kept)]
        except (OSError, ValueError, TypeError, KeyError):  # unreadable or edited by hand: start again
            previous = []
    entries = previous + [{**asdict(result), "frames_per_second": result.frames_per_second} for result in results]
    payload = json.dumps(entries, indent=2)
    return write_atomic(path, lambda tmp: Path(tmp).write_text(payload + "\n"))
