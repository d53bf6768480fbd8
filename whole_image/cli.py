"""Command-line side of whole-photo restoration (inference.py --whole_image): the options, and the run
that prints the batch's report.

    parser = argparse.ArgumentParser(...)
    add_whole_image_arguments(parser)                 # also --suffix/--ext/--jpeg_quality unless told not to
    args = parser.parse_args()
    options = WholeImageOptions.from_args(args)       # once, in main
    run_whole_image(options, restorer, device)        # device resolved by the caller

The work itself is the library's: whole_image.photo_batch.restore_photos (outputs and naming are
described there). Nothing here ends the program either: a bad input, output folder or weights file, a
failed write or Ctrl-C raise the library's errors (InputError, MissingWeightsError, WeightsReadError,
WriteError, RunInterrupted), which the program (inference.py) turns into one line and an exit status.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from utils.cli import add_output_arguments, float_range, int_range, positive_int, probability
from utils.images import InputError
from whole_image.detect import DETECTORS, FaceDetector
from whole_image.options import BG_UPSAMPLERS, FACE_MASKS, MAX_UPSCALE, WholeImageOptions
from whole_image.photo_batch import PhotoReport, restore_photos
from whole_image.pipeline import RestoreFaces
from whole_image.tools import WholeImageTools
from whole_image.upsample import MAX_OUTPUT_SIDE


def add_photo_model_arguments(group: argparse._ArgumentGroup) -> None:
    """The models around PMRF in whole-photo mode (detector, paste mask, background), their weights
    folders, and the output size limit; shared by inference.py and app.py."""
    group.add_argument(
        "--detector",
        choices=DETECTORS,
        default="auto",
        help="face detector: RetinaFace (facexlib; needs detection_Resnet50_Final.pth), MTCNN "
        "(facenet-pytorch; its weights come with the package), or auto: RetinaFace when its weights "
        "file is on disk, else MTCNN (default auto; the choice is printed)",
    )
    group.add_argument(
        "--face_mask",
        choices=FACE_MASKS,
        default="parsing",
        help="paste mask: facexlib face parsing (falls back to the ellipse, with a warning, when "
        "parsing_parsenet.pth is not on disk) or a soft ellipse (default parsing)",
    )
    group.add_argument(
        "--bg_upsampler",
        choices=BG_UPSAMPLERS,
        default="none",
        help="background: plain Lanczos resize, or Real-ESRGAN x2plus (default none)",
    )
    group.add_argument(
        "--face_weights_dir",
        default=None,
        help="folder of facexlib weights (detection_Resnet50_Final.pth, parsing_parsenet.pth); "
        "default checkpoints/facexlib/",
    )
    group.add_argument(
        "--realesrgan_weights_dir",
        default=None,
        help="folder of RealESRGAN_x2plus.pth (default checkpoints/realesrgan/)",
    )
    group.add_argument(
        "--max_output_side",
        type=int_range(64, 65536),
        default=MAX_OUTPUT_SIDE,
        help=f"enlarge photos only until their longer side reaches this many pixels (default {MAX_OUTPUT_SIDE}; "
        "a larger photo keeps its size); the scale is lowered, with a note",
    )


def add_whole_image_arguments(
    parser: argparse.ArgumentParser, output_arguments: bool = True
) -> argparse.ArgumentParser:
    """The whole-photo options; with `output_arguments`, also utils.cli's --suffix, --ext and
    --jpeg_quality (pass False when the program adds those itself)."""
    group = parser.add_argument_group("whole photos (detect, align, restore and paste back every face)")
    group.add_argument(
        "--whole_image", action="store_true", help="inputs are ordinary photos, not aligned 512x512 faces"
    )
    group.add_argument(
        "-s",
        "--upscale",
        type=float_range(0.0, MAX_UPSCALE, low_open=True),
        default=2.0,
        help=f"scale of the output photo relative to the input, in (0, {MAX_UPSCALE:g}] (default 2)",
    )
    group.add_argument(
        "--only_center_face", action="store_true", help="restore only the face nearest the photo's centre"
    )
    group.add_argument(
        "--max_faces",
        type=positive_int,
        default=None,
        help="restore at most this many faces per photo, largest first (default: all)",
    )
    add_photo_model_arguments(group)
    group.add_argument(
        "--detection_threshold",
        type=probability,
        default=0.97,
        help="detector confidence needed to count as a face, in [0, 1] (default 0.97)",
    )
    group.add_argument(
        "--bg_tile",
        type=int_range(0),
        default=400,
        help="Real-ESRGAN tile size in input pixels, 0 for no tiling (default 400)",
    )
    group.add_argument(
        "--save_mmse",
        action="store_true",
        help="also write the posterior-mean restoration of every face and photo "
        "(restored_faces_posterior_mean/, restored_imgs_posterior_mean/)",
    )
    if output_arguments:
        add_output_arguments(parser)
    return parser


def print_photo_report(report: PhotoReport, output_dir: Path) -> None:
    print(
        f"{len(report.written)} photo(s), {report.faces} face(s) written to {output_dir}/restored_imgs "
        f"({len(report.faceless)} photo(s) without a face)"
    )
    print_skipped(report.skipped, "photo(s) (unreadable, too large for the free memory, or failed)")
    print_skipped(report.not_finite, "photo(s) whose restored faces were not finite")


def print_skipped(messages: list[str], what: str) -> None:
    """`skipped N <what>:` and one indented line per input (nothing when none was skipped)."""
    if messages:
        print(f"skipped {len(messages)} {what}:")
        for message in messages:
            print(f"  {message}")


def run_whole_image(
    options: WholeImageOptions,
    restore_faces: RestoreFaces,
    device: str | torch.device = "cpu",
    detector: FaceDetector | None = None,
    tools: WholeImageTools | None = None,
) -> list[Path]:
    """restore_photos with its report printed; returns the restored photos' paths. Raises what
    restore_photos raises, and InputError when every photo failed (none was restored)."""
    report = restore_photos(options, restore_faces, device, detector, tools)
    print_photo_report(report, options.output_dir)
    if report.nothing_restored:
        raise InputError("no photo was restored (see the skipped photos above)")
    return report.written


__all__ = [
    "WholeImageOptions",
    "add_photo_model_arguments",
    "add_whole_image_arguments",
    "run_whole_image",
]
