"""A folder of photos (or one photo) restored into an output folder: the library side of
`inference.py --whole_image` (whole_image.cli prints the report; inference.py turns the errors into one
line and an exit status).

    report = restore_photos(WholeImageOptions(lq_data_path, output_dir), restore_faces, device)

Outputs, for a photo `<stem>.<ext>` with faces k = 00, 01, ... (largest first):

    cropped_faces/<stem>_<k>.png                  aligned 512x512 inputs
    restored_faces/<stem>_<k>[_<suffix>].png      PMRF's faces
    cmp/<stem>_<k>.png                            cropped | restored, one per face (as GFPGAN)
    cmp/<stem>_photo.<ext>                        the whole photo: input | restored
    restored_imgs/<stem>[_<suffix>].<ext>         the restored photo
    restored_faces_posterior_mean/...             with save_mmse: the posterior-mean faces,
    restored_imgs_posterior_mean/...              and the photo with those faces pasted instead

<ext> is the input's unless `ext` says png or jpg; .jpg outputs use `jpeg_quality`. Two inputs with the
same stem, ignoring case (x.png, x.jpg), get the stems x_png and x_jpg, and a number when that is taken
too (utils.images.output_stems, the naming rule of every mode). The restored photo is written last: with
`skip_existing`, a photo whose restored_imgs/ file exists is done.

The output's longer side stays within `max_output_side` (4096 px) unless the photo is larger already;
a photo whose output would not fit in the free memory, or that cannot be read or restored, is skipped
and listed in the report: one bad photo never stops a folder. Bad inputs or output folders raise
utils.images.InputError, unreadable weights MissingWeightsError / WeightsReadError, a failed write
WriteError, and Ctrl-C RunInterrupted after whole files; nothing here ends the program.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from utils.images import (
    ImageReadError,
    RunInterrupted,
    WriteError,
    collect_inputs,
    output_name,
    output_stems,
    print_renamed,
    read_image,
    refuse_writing_into_inputs,
    renamed_outputs,
    save_rgb,
    writable_folder,
)
from whole_image.detect import FaceDetector
from whole_image.options import WholeImageOptions
from whole_image.pipeline import (
    NoFaceWarning,
    NonFiniteFacesError,
    PhotoRestoration,
    RestoreFaces,
    restore_photo,
    side_by_side,
)
from whole_image.tools import WholeImageTools, load_tools
from whole_image.upsample import OutputTooLarge, output_scale

OUTPUT_FOLDERS = (
    "cropped_faces",
    "restored_faces",
    "cmp",
    "restored_imgs",
    "restored_faces_posterior_mean",
    "restored_imgs_posterior_mean",
)


def photo_stems(inputs: list[Path]) -> dict[Path, str]:
    """Base name of each photo's outputs (utils.images.output_stems; faces are always PNG files, so
    photos whose stems match clash whatever `ext` says)."""
    stems = output_stems([path.name for path in inputs], "png")
    return {path: stems[path.name] for path in inputs}


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
    if options.save_mmse and result.posterior_mean_image is not None:
        for face, path in zip(result.posterior_mean_faces or [], paths.posterior_mean_faces, strict=True):
            save_rgb(face, path)
        save_rgb(result.posterior_mean_image, paths.posterior_mean_image, jpeg_quality=quality)
    save_rgb(result.restored_image, paths.restored_image, jpeg_quality=quality)  # last: the photo is done


def gives_posterior_mean(restore_faces: RestoreFaces) -> bool:
    """Whether the restorer can hand back the posterior mean (FaceRestorer with an MMSE network)."""
    if not callable(getattr(restore_faces, "restore", None)):
        return False
    return bool(getattr(restore_faces, "has_posterior_mean", True))


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def photo_inputs(options: WholeImageOptions) -> list[Path]:
    """The photos of `options.lq_data_path`, once `options.output_dir` is known to be writable and to
    hold none of them (InputError otherwise): the checks restore_photos makes before any model or
    detector work."""
    inputs = collect_inputs(options.lq_data_path)
    refuse_writing_into_inputs(inputs, options.output_dir, OUTPUT_FOLDERS)
    writable_folder(options.output_dir)
    return inputs


@dataclass
class PhotoReport:
    """What restore_photos did."""

    written: list[Path] = field(default_factory=list)  # the restored photos (restored_imgs/...)
    faces: int = 0  # faces restored in them
    faceless: list[str] = field(default_factory=list)  # names of photos without a face (resized only)
    skipped: list[str] = field(default_factory=list)  # "photo: why", unreadable, too large or failed
    not_finite: list[str] = field(default_factory=list)  # "photo: why", the model's faces were NaN/inf
    existing: int = 0  # photos left alone by skip_existing
    renamed: dict[str, str] = field(default_factory=dict)  # input name -> output stem, where they differ

    @property
    def nothing_restored(self) -> bool:
        """Every photo failed: none was written now or before (skip_existing)."""
        return bool(self.skipped or self.not_finite) and not self.written and not self.existing


def restore_photos(
    options: WholeImageOptions,
    restore_faces: RestoreFaces,
    device: str | torch.device = "cpu",
    detector: FaceDetector | None = None,
    tools: WholeImageTools | None = None,
) -> PhotoReport:
    """Restore every photo of `options.lq_data_path` (a folder or one image file) into
    `options.output_dir` (see the module's docstring for the files and errors). `restore_faces` gets the
    faces of one photo in batches of `options.batch_size` (default: all at once); `device` runs the
    detector, parser and background upsampler (`tools`, loaded as `options` ask unless given; `detector`
    replaces only the detector). Notes and progress are printed as the photos go.
    """
    inputs = photo_inputs(options)
    tools = tools or load_tools(options, device, detector)
    save_mmse = options.save_mmse and gives_posterior_mean(restore_faces)
    if options.save_mmse and not save_mmse:
        print("warning: --save_mmse: this model has no posterior-mean network; only PMRF's results are written")
    stems = photo_stems(inputs)
    report = PhotoReport(renamed=renamed_outputs({path.name: stem for path, stem in stems.items()}))
    print_renamed(report.renamed, "photo(s) share a name with another")
    if options.skip_existing:
        done = {photo for photo in inputs if output_paths(options, photo, stems[photo], 0).restored_image.is_file()}
        report.existing = len(done)
        if done:
            print(f"left {len(done)} photo(s) whose restored_imgs/ file exists already (--skip_existing)")
        inputs = [photo for photo in inputs if photo not in done]
    try:
        for photo in tqdm(inputs, desc="whole photos", unit="photo"):
            restore_one(photo, stems[photo], restore_faces, tools, options, save_mmse, report)
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"interrupted: {len(report.written)} photo(s) were written into {options.output_dir}/restored_imgs; "
            "run again with --skip_existing to restore the rest"
        ) from None
    return report


def restore_one(
    photo: Path,
    stem: str,
    restore_faces: RestoreFaces,
    tools: WholeImageTools,
    options: WholeImageOptions,
    save_mmse: bool,
    report: PhotoReport,
) -> None:
    """One photo of restore_photos: restored and written, or listed in `report` with the reason."""
    try:
        image = read_image(photo)  # upright (EXIF), alpha kept
        scale, note = output_scale(image.shape[0], image.shape[1], options.upscale, options.max_output_side)
    except (ImageReadError, OutputTooLarge) as error:
        report.skipped.append(str(error) if isinstance(error, ImageReadError) else f"{photo}: {error}")
        return
    if note:
        tqdm.write(f"note: {photo.name}: {note} (--max_output_side)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoFaceWarning)  # said below, one line per photo
            result = restore_photo(
                image, restore_faces, upscale=scale, name=photo.name, posterior_mean=save_mmse,
                batch_size=options.batch_size, **tools.pipeline_arguments(options),
            )
    except NonFiniteFacesError as error:
        report.not_finite.append(f"{photo}: {error}")
        return
    except (ValueError, RuntimeError, MemoryError, cv2.error) as error:  # one photo, never the folder
        report.skipped.append(f"{photo}: cannot restore it ({error.__class__.__name__}: {first_line(error)})")
        return
    if not result.faces:
        report.faceless.append(photo.name)
        tqdm.write(f"warning: {photo.name}: no face detected; copied through, resized x{scale:g}")
        if save_mmse:
            result.posterior_mean_image, result.posterior_mean_faces = result.restored_image, []
    paths = output_paths(options, photo, stem, len(result.faces))
    try:
        save_restoration(result, image, paths, options)
    except OSError as error:
        raise WriteError(
            f"cannot write the results of {photo.name} in {options.output_dir}: {error.strerror or error} "
            f"(check the disk space and permissions); {len(report.written)} photo(s) were written before it"
        ) from None
    report.faces += len(result.faces)
    report.written.append(paths.restored_image)
