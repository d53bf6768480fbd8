"""Command-line side of whole-photo restoration, shared by inference.py (`--whole_image`) and app.py."""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from utils.cli import resolve_device
from utils.images import ImageReadError, is_image_file, list_images, read_rgb, save_rgb
from whole_image.detect import FaceDetector, load_retinaface
from whole_image.paste import FaceParser, load_face_parser
from whole_image.pipeline import NoFaceWarning, RestoreFaces, restore_photo, side_by_side
from whole_image.upsample import BackgroundUpsampler, load_realesrgan
from whole_image.weights import MissingWeightsError

OUTPUT_FOLDERS = ("cropped_faces", "restored_faces", "cmp", "restored_imgs")


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value <= 16:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 16], got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text}")
    return value


def add_whole_image_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("whole photos (detect, align, restore and paste back every face)")
    group.add_argument(
        "--whole_image", action="store_true", help="inputs are ordinary photos, not aligned 512x512 faces"
    )
    group.add_argument(
        "--upscale",
        type=positive_float,
        default=2.0,
        help="scale of the output photo relative to the input (default 2)",
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
    group.add_argument(
        "--bg_upsampler",
        choices=("none", "realesrgan"),
        default="none",
        help="background: plain Lanczos resize, or Real-ESRGAN x2plus (default none)",
    )
    group.add_argument(
        "--bg_tile",
        type=non_negative_int,
        default=400,
        help="Real-ESRGAN tile size in input pixels, 0 for no tiling (default 400)",
    )
    group.add_argument(
        "--face_mask",
        choices=("parsing", "ellipse"),
        default="parsing",
        help="paste mask: facexlib face parsing (falls back to the ellipse when its weights "
        "cannot be had) or a feathered ellipse (default parsing)",
    )
    group.add_argument(
        "--detection_threshold",
        type=float,
        default=0.97,
        help="RetinaFace confidence needed to count as a face (default 0.97)",
    )
    group.add_argument(
        "--face_weights_dir",
        default=None,
        help="folder of facexlib weights (detection_Resnet50_Final.pth, parsing_parsenet.pth); "
        "default $PMRF_FACE_WEIGHTS, else checkpoints/facexlib/",
    )
    group.add_argument(
        "--realesrgan_weights_dir",
        default=None,
        help="folder of RealESRGAN_x2plus.pth (default checkpoints/realesrgan/)",
    )
    return parser


@dataclass
class WholeImageTools:
    detector: FaceDetector
    parser: FaceParser | None
    bg_upsampler: BackgroundUpsampler | None


def load_tools(
    args: argparse.Namespace, device: str | torch.device, detector: FaceDetector | None = None
) -> WholeImageTools:
    """Detector, parser and background upsampler as `args` asks; a missing weights file ends the program
    with one line naming it (the parser alone falls back to the ellipse mask)."""
    try:
        if detector is None:
            detector = load_retinaface(args.face_weights_dir, device, threshold=args.detection_threshold)
        parser = load_face_parser(args.face_weights_dir, device) if args.face_mask == "parsing" else None
        bg_upsampler = None
        if args.bg_upsampler == "realesrgan":
            bg_upsampler = load_realesrgan(args.realesrgan_weights_dir, device, tile=args.bg_tile)
    except (MissingWeightsError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    return WholeImageTools(detector, parser, bg_upsampler)


def collect_inputs(lq_data_path: str | Path) -> list[Path]:
    """The photos to restore: one image file, or the images directly inside a folder."""
    path = Path(lq_data_path)
    if path.is_file():
        if not is_image_file(path):
            raise SystemExit(f"error: {path}: not an image file")
        return [path]
    if not path.is_dir():
        raise SystemExit(f"error: {path}: no such file or folder")
    images = list_images(path)
    if not images:
        raise SystemExit(f"error: {path}: no images in this folder")
    return images


def face_stems(inputs: list[Path]) -> dict[Path, str]:
    """Base name of each photo's face files: its stem, or stem_ext when two photos share a stem."""
    stems = [path.stem for path in inputs]
    return {
        path: path.stem if stems.count(path.stem) == 1 else f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        for path in inputs
    }


def output_paths(output_dir: Path, photo: Path, stem: str, num_faces: int) -> dict[str, list[Path]]:
    return {
        "cropped_faces": [output_dir / "cropped_faces" / f"{stem}_{k:02d}.png" for k in range(num_faces)],
        "restored_faces": [output_dir / "restored_faces" / f"{stem}_{k:02d}.png" for k in range(num_faces)],
        "cmp": [output_dir / "cmp" / photo.name],
        "restored_imgs": [output_dir / "restored_imgs" / photo.name],
    }


def refuse_overwriting_inputs(inputs: list[Path], output_dir: Path) -> None:
    """Exit before any work when an output folder is the input folder (outputs reuse the inputs' names)."""
    input_folders = {path.parent.resolve() for path in inputs}
    for folder in OUTPUT_FOLDERS:
        if (output_dir / folder).resolve() in input_folders:
            raise SystemExit(f"error: {output_dir / folder} holds the inputs; choose another --output_dir")


def save_restoration(result, photo: Path, image, paths: dict[str, list[Path]]) -> None:
    for face, path in zip(result.cropped_faces, paths["cropped_faces"], strict=True):
        save_rgb(face, path)
    for face, path in zip(result.restored_faces, paths["restored_faces"], strict=True):
        save_rgb(face, path)
    save_rgb(side_by_side(image, result.restored_image), paths["cmp"][0])
    save_rgb(result.restored_image, paths["restored_imgs"][0])


def run_whole_image(
    args: argparse.Namespace, restore_faces: RestoreFaces, detector: FaceDetector | None = None
) -> list[Path]:
    """Restore every photo of `args.lq_data_path` into the four folders of `args.output_dir`.

    Writes cropped_faces/<stem>_<k>.png, restored_faces/<stem>_<k>.png (k = 00, 01, ... largest face
    first), cmp/<name> (input | restored) and restored_imgs/<name>, where <name> is the input's file name.
    `restore_faces` gets all faces of one photo as one batch. Returns the restored photos' paths.
    """
    inputs = collect_inputs(args.lq_data_path)
    output_dir = Path(args.output_dir)
    refuse_overwriting_inputs(inputs, output_dir)
    tools = load_tools(args, resolve_device(getattr(args, "device", None)), detector)
    stems = face_stems(inputs)
    written, unreadable, faceless = [], [], []
    for photo in tqdm(inputs, desc="whole photos", unit="photo"):
        try:
            image = read_rgb(photo)
        except ImageReadError as error:
            unreadable.append(str(error))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoFaceWarning)  # reported below, one line per photo
            result = restore_photo(
                image,
                restore_faces,
                tools.detector,
                upscale=args.upscale,
                only_center_face=args.only_center_face,
                max_faces=args.max_faces,
                parser=tools.parser,
                bg_upsampler=tools.bg_upsampler,
                name=photo.name,
            )
        if not result.faces:
            faceless.append(photo.name)
            tqdm.write(f"warning: {photo.name}: no face detected; copied through, resized x{args.upscale:g}")
        paths = output_paths(output_dir, photo, stems[photo], len(result.faces))
        save_restoration(result, photo, image, paths)
        written.append(paths["restored_imgs"][0])
    print(f"{len(written)} photo(s) written to {output_dir}/restored_imgs ({len(faceless)} without a face)")
    if unreadable:
        print(f"skipped {len(unreadable)} unreadable file(s):")
        for message in unreadable:
            print(f"  {message}")
    return written
