"""What whole-photo and video restoration are asked to do, as plain frozen dataclasses.

`ToolOptions` says which networks surround PMRF (detector, paste mask, background) and where their
weights are; `WholeImageOptions` adds the batch's own settings (inputs, output folder, scale, naming).
Programs build them once from their parsed arguments (`from_args`); library code takes them as they
are and never sees a Namespace.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Self

from utils.images import check_name_part
from whole_image.detect import DETECTORS
from whole_image.upsample import MAX_OUTPUT_SIDE

MAX_UPSCALE = 16.0
FACE_MASKS = ("parsing", "ellipse")
BG_UPSAMPLERS = ("none", "realesrgan")


def _as_path(options: object, *names: str) -> None:
    for name in names:
        value = getattr(options, name)
        if value is not None and not isinstance(value, Path):
            object.__setattr__(options, name, Path(value))


@dataclass(frozen=True, kw_only=True)
class ToolOptions:
    """The networks around PMRF in whole-photo mode and their weights folders (whole_image.tools)."""

    detector: str = "auto"
    detection_threshold: float = 0.97
    face_mask: str = "parsing"
    bg_upsampler: str = "none"
    bg_tile: int = 400
    face_weights_dir: Path | None = None  # None: checkpoints/facexlib (registry)
    realesrgan_weights_dir: Path | None = None  # None: checkpoints/realesrgan (registry)

    def __post_init__(self):
        _as_path(self, "face_weights_dir", "realesrgan_weights_dir")
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.face_mask not in FACE_MASKS or self.bg_upsampler not in BG_UPSAMPLERS:
            raise ValueError(f"unknown face_mask {self.face_mask!r} or bg_upsampler {self.bg_upsampler!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        """The options from parsed arguments (the fields the namespace has; the defaults otherwise)."""
        given = vars(args)
        return cls(**{f.name: given[f.name] for f in fields(cls) if f.name in given})


@dataclass(frozen=True)
class WholeImageOptions(ToolOptions):
    """Everything a whole-photo or video batch needs (whole_image.photo_batch, whole_image.video_batch),
    built once from the command line (`from_args`) or directly; the tool options are keywords."""

    lq_data_path: Path
    output_dir: Path
    upscale: float = 2.0
    only_center_face: bool = False
    max_faces: int | None = None
    save_mmse: bool = False
    suffix: str | None = None
    ext: str = "auto"
    jpeg_quality: int = 75
    batch_size: int | None = None  # faces per model call; None: all faces of a photo at once
    max_output_side: int = MAX_OUTPUT_SIDE
    skip_existing: bool = False  # inputs whose restored file exists are not restored again

    def __post_init__(self):
        super().__post_init__()
        _as_path(self, "lq_data_path", "output_dir")
        if not 0 < self.upscale <= MAX_UPSCALE:
            raise ValueError(f"upscale must be in (0, {MAX_UPSCALE:g}], got {self.upscale}")
        if self.ext not in ("auto", "png", "jpg"):
            raise ValueError(f"ext must be auto, png or jpg, got {self.ext!r}")
        if self.suffix:
            check_name_part(self.suffix)
