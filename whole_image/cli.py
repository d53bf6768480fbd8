"""Command-line side of whole-photo restoration (inference.py --whole_image).

    parser = argparse.ArgumentParser(...)
    add_whole_image_arguments(parser)                 # also --suffix/--ext/--jpeg_quality unless told not to
    args = parser.parse_args()
    options = WholeImageOptions.from_args(args)       # once, in main
    run_whole_image(options, restorer, device)        # device resolved by the caller

Outputs, for a photo `<stem>.<ext>` with faces k = 00, 01, ... (largest first):

    cropped_faces/<stem>_<k>.png                  aligned 512x512 inputs
    restored_faces/<stem>_<k>[_<suffix>].png      PMRF's faces
    cmp/<stem>_<k>.png                            cropped | restored, one per face (as GFPGAN)
    cmp/<stem>_photo.<ext>                        the whole photo: input | restored
    restored_imgs/<stem>[_<suffix>].<ext>         the restored photo
    restored_faces_posterior_mean/...             with --save_mmse: the posterior-mean faces,
    restored_imgs_posterior_mean/...              and the photo with those faces pasted instead

<ext> is the input's unless --ext says png or jpg; .jpg outputs use --jpeg_quality. Two inputs with the
same stem (x.png, x.jpg) get the stems x_png and x_jpg.
"""

from __future__ import annotations

import argparse
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.cli import (
    add_output_arguments,
    check_writable_folder,
    fail,
    float_range,
    int_range,
    positive_int,
    probability,
)
from utils.images import (
    ImageReadError,
    WriteError,
    is_image_file,
    list_images,
    output_name,
    read_image,
    save_rgb,
)
from utils.weights import MissingWeightsError, WeightsReadError
from whole_image.detect import DETECTORS, FaceDetector, load_detector
from whole_image.paste import FaceParser, load_face_parser
from whole_image.pipeline import (
    NoFaceWarning,
    NonFiniteFacesError,
    PhotoRestoration,
    RestoreFaces,
    restore_photo,
    side_by_side,
)
from whole_image.upsample import BackgroundUpsampler, load_realesrgan

OUTPUT_FOLDERS = (
    "cropped_faces",
    "restored_faces",
    "cmp",
    "restored_imgs",
    "restored_faces_posterior_mean",
    "restored_imgs_posterior_mean",
)
MAX_UPSCALE = 16.0


def add_photo_model_arguments(group: argparse._ArgumentGroup) -> None:
    """The models around PMRF in whole-photo mode (detector, paste mask, background) and their weights
    folders; shared by inference.py and app.py."""
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
        choices=("parsing", "ellipse"),
        default="parsing",
        help="paste mask: facexlib face parsing (falls back to the ellipse, with a warning, when "
        "parsing_parsenet.pth is not on disk) or a soft ellipse (default parsing)",
    )
    group.add_argument(
        "--bg_upsampler",
        choices=("none", "realesrgan"),
        default="none",
        help="background: plain Lanczos resize, or Real-ESRGAN x2plus (default none)",
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


@dataclass(frozen=True)
class WholeImageOptions:
    """Everything run_whole_image needs, built once from the command line (or directly)."""

    lq_data_path: Path
    output_dir: Path
    upscale: float = 2.0
    only_center_face: bool = False
    max_faces: int | None = None
    detector: str = "auto"
    detection_threshold: float = 0.97
    face_mask: str = "parsing"
    bg_upsampler: str = "none"
    bg_tile: int = 400
    save_mmse: bool = False
    face_weights_dir: Path | None = None
    realesrgan_weights_dir: Path | None = None
    suffix: str | None = None
    ext: str = "auto"
    jpeg_quality: int = 75
    batch_size: int | None = None  # faces per model call; None: all faces of a photo at once

    def __post_init__(self):
        for name in ("lq_data_path", "output_dir", "face_weights_dir", "realesrgan_weights_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if not 0 < self.upscale <= MAX_UPSCALE:
            raise ValueError(f"upscale must be in (0, {MAX_UPSCALE:g}], got {self.upscale}")
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.face_mask not in ("parsing", "ellipse") or self.bg_upsampler not in ("none", "realesrgan"):
            raise ValueError(f"unknown face_mask {self.face_mask!r} or bg_upsampler {self.bg_upsampler!r}")
        if self.ext not in ("auto", "png", "jpg"):
            raise ValueError(f"ext must be auto, png or jpg, got {self.ext!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WholeImageOptions:
        """The options from parsed arguments (the fields the namespace has; the defaults otherwise)."""
        given = vars(args)
        return cls(**{f.name: given[f.name] for f in fields(cls) if f.name in given})


@dataclass
class WholeImageTools:
    detector: FaceDetector
    parser: FaceParser | None
    bg_upsampler: BackgroundUpsampler | None


def load_tools(
    options: WholeImageOptions, device: str | torch.device = "cpu", detector: FaceDetector | None = None
) -> WholeImageTools:
    """Detector, parser and background upsampler as `options` ask; the detector's choice is printed.

    Weights that cannot be read end the program with one line naming the file (the parser alone falls
    back to the ellipse mask, with a warning).
    """
    try:
        if detector is None:
            detector, description = load_detector(
                options.detector, options.face_weights_dir, device, options.detection_threshold
            )
            print(description, flush=True)
        parser = None
        if options.face_mask == "parsing":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                parser = load_face_parser(options.face_weights_dir, device)
            for warning in caught:  # the ellipse fallback: one line, not a Python warning with its source
                print(f"warning: {warning.message}", flush=True)
        bg_upsampler = None
        if options.bg_upsampler == "realesrgan":
            bg_upsampler = load_realesrgan(options.realesrgan_weights_dir, device, tile=options.bg_tile)
    except (MissingWeightsError, WeightsReadError) as error:
        fail(str(error))
    return WholeImageTools(detector, parser, bg_upsampler)


def collect_inputs(lq_data_path: str | os.PathLike) -> list[Path]:
    """The photos to restore: one image file, or the images directly inside a folder."""
    path = Path(lq_data_path)
    if path.is_file():
        if not is_image_file(path):
            fail(f"{path}: not an image file (expected one of .png .jpg .jpeg .bmp .webp .tif .tiff .gif)")
        return [path]
    if not path.is_dir():
        fail(f"{path}: no such file or folder")
    images = list_images(path)
    if not images:
        fail(f"{path}: no images in this folder")
    return images


def face_stems(inputs: list[Path]) -> dict[Path, str]:
    """Base name of each photo's outputs: its stem, or stem_ext when two photos share a stem."""
    stems = [path.stem for path in inputs]
    return {
        path: path.stem if stems.count(path.stem) == 1 else f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        for path in inputs
    }


@dataclass
class PhotoOutputs:
    """The files written for one photo."""

    cropped_faces: list[Path]
    restored_faces: list[Path]
    face_comparisons: list[Path]
    photo_comparison: Path
    restored_image: Path
    posterior_mean_faces: list[Path]
    posterior_mean_image: Path


def output_paths(options: WholeImageOptions, photo: Path, stem: str, num_faces: int) -> PhotoOutputs:
    out = options.output_dir
    face = [f"{stem}_{k:02d}" for k in range(num_faces)]
    suffixed = [f"{name}_{options.suffix}" if options.suffix else name for name in face]
    photo_name = output_name(stem + photo.suffix, options.suffix, options.ext)
    return PhotoOutputs(
        cropped_faces=[out / "cropped_faces" / f"{name}.png" for name in face],
        restored_faces=[out / "restored_faces" / f"{name}.png" for name in suffixed],
        face_comparisons=[out / "cmp" / f"{name}.png" for name in face],
        photo_comparison=out / "cmp" / output_name(f"{stem}_photo{photo.suffix}", None, options.ext),
        restored_image=out / "restored_imgs" / photo_name,
        posterior_mean_faces=[out / "restored_faces_posterior_mean" / f"{name}.png" for name in suffixed],
        posterior_mean_image=out / "restored_imgs_posterior_mean" / photo_name,
    )


def refuse_overwriting_inputs(inputs: list[Path], output_dir: Path) -> None:
    """Stop before any work when an output folder is an input folder."""
    input_folders = {path.parent.resolve() for path in inputs}
    for folder in OUTPUT_FOLDERS:
        if (output_dir / folder).resolve() in input_folders:
            fail(f"{output_dir / folder} holds the inputs; choose another --output_dir")


def save_restoration(
    result: PhotoRestoration, image: np.ndarray, paths: PhotoOutputs, options: WholeImageOptions
) -> None:
    quality = options.jpeg_quality
    for cropped, restored, crop_path, face_path, cmp_path in zip(
        result.cropped_faces,
        result.restored_faces,
        paths.cropped_faces,
        paths.restored_faces,
        paths.face_comparisons,
        strict=True,
    ):
        save_rgb(cropped, crop_path)
        save_rgb(restored, face_path)
        save_rgb(np.concatenate([cropped, restored], axis=1), cmp_path)
    save_rgb(side_by_side(image, result.restored_image), paths.photo_comparison, jpeg_quality=quality)
    save_rgb(result.restored_image, paths.restored_image, jpeg_quality=quality)
    if options.save_mmse and result.posterior_mean_image is not None:
        for face, path in zip(result.posterior_mean_faces or [], paths.posterior_mean_faces, strict=True):
            save_rgb(face, path)
        save_rgb(result.posterior_mean_image, paths.posterior_mean_image, jpeg_quality=quality)


def gives_posterior_mean(restore_faces: RestoreFaces) -> bool:
    """Whether the restorer can hand back the posterior mean (FaceRestorer with an MMSE network)."""
    if not callable(getattr(restore_faces, "restore", None)):
        return False
    return bool(getattr(restore_faces, "has_posterior_mean", True))


def run_whole_image(
    options: WholeImageOptions,
    restore_faces: RestoreFaces,
    device: str | torch.device = "cpu",
    detector: FaceDetector | None = None,
) -> list[Path]:
    """Restore every photo of `options.lq_data_path` (a folder or one image file) into
    `options.output_dir` (see the module's docstring for the files). `restore_faces` gets the faces of
    one photo in batches of `options.batch_size` (default: all at once); `device` runs the detector,
    parser and background upsampler. Returns the restored photos' paths.
    """
    inputs = collect_inputs(options.lq_data_path)
    refuse_overwriting_inputs(inputs, options.output_dir)
    check_writable_folder(options.output_dir)  # before any model or detector work
    tools = load_tools(options, device, detector)
    save_mmse = options.save_mmse and gives_posterior_mean(restore_faces)
    if options.save_mmse and not save_mmse:
        print("warning: --save_mmse: this model has no posterior-mean network; only PMRF's results are written")
    stems = face_stems(inputs)
    written, unreadable, faceless, num_faces, not_finite = [], [], [], 0, []
    for photo in tqdm(inputs, desc="whole photos", unit="photo"):
        try:
            image = read_image(photo)  # upright (EXIF), alpha kept
        except ImageReadError as error:
            unreadable.append(str(error))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NoFaceWarning)  # reported below, one line per photo
                result = restore_photo(
                    image,
                    restore_faces,
                    tools.detector,
                    upscale=options.upscale,
                    only_center_face=options.only_center_face,
                    max_faces=options.max_faces,
                    parser=tools.parser,
                    bg_upsampler=tools.bg_upsampler,
                    name=photo.name,
                    posterior_mean=save_mmse,
                    batch_size=options.batch_size,
                )
        except NonFiniteFacesError as error:  # listed below
            not_finite.append(f"{photo}: {error}")
            continue
        if not result.faces:
            faceless.append(photo.name)
            tqdm.write(f"warning: {photo.name}: no face detected; copied through, resized x{options.upscale:g}")
            if save_mmse:
                result.posterior_mean_image, result.posterior_mean_faces = result.restored_image, []
        num_faces += len(result.faces)
        paths = output_paths(options, photo, stems[photo], len(result.faces))
        try:
            save_restoration(result, image, paths, options)
        except OSError as error:
            raise WriteError(
                f"cannot write the results of {photo.name} in {options.output_dir}: {error.strerror or error} "
                f"(check the disk space and permissions); {len(written)} photo(s) were written before it"
            ) from None
        written.append(paths.restored_image)
    print(
        f"{len(written)} photo(s), {num_faces} face(s) written to {options.output_dir}/restored_imgs "
        f"({len(faceless)} photo(s) without a face)"
    )
    if unreadable:
        print(f"skipped {len(unreadable)} unreadable file(s):")
        for message in unreadable:
            print(f"  {message}")
    if not_finite:
        print(f"skipped {len(not_finite)} photo(s) whose restored faces were not finite:")
        for message in not_finite:
            print(f"  {message}")
    return written


__all__ = [
    "NoFaceWarning",
    "WholeImageOptions",
    "add_whole_image_arguments",
    "load_tools",
    "run_whole_image",
]
