"""The networks around PMRF in whole-photo mode, loaded as `ToolOptions` ask: the face detector, the
face parser (paste mask) and the background upsampler. inference.py (photos and videos) and app.py load
them here, one piece at a time or all at once (`load_tools`).

Each loader prints its one line for the terminal (which detector and why; the parser's fallback to the
ellipse mask) and raises MissingWeightsError / WeightsReadError (utils.weights) naming the file when
weights cannot be read; only the parser falls back instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from whole_image.detect import FaceDetector, load_detector
from whole_image.options import ToolOptions, WholeImageOptions
from whole_image.paste import FaceParser, load_face_parser
from whole_image.upsample import BackgroundUpsampler, load_realesrgan


@dataclass
class WholeImageTools:
    detector: FaceDetector
    parser: FaceParser | None
    bg_upsampler: BackgroundUpsampler | None

    def pipeline_arguments(self, options: WholeImageOptions) -> dict:
        """What restore_photo and restore_video take from a batch's tools and options, besides the
        restorer and the scale: which faces, the detector, the paste mask and the background."""
        return {
            "detector": self.detector,
            "only_center_face": options.only_center_face,
            "max_faces": options.max_faces,
            "parser": self.parser,
            "bg_upsampler": self.bg_upsampler,
        }


def load_detector_for(options: ToolOptions, device: str | torch.device = "cpu") -> tuple[FaceDetector, str]:
    """The detector `options.detector` names and the line that says which one it is and why (printed)."""
    detector, description = load_detector(
        options.detector, options.face_weights_dir, device, options.detection_threshold
    )
    print(description, flush=True)
    return detector, description


def load_parser_for(options: ToolOptions, device: str | torch.device = "cpu") -> FaceParser | None:
    """ParseNet for the parsing mask; None for the ellipse, or when its weights are not on disk (said in
    one printed line, not as a Python warning with its source)."""
    if options.face_mask != "parsing":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser = load_face_parser(options.face_weights_dir, device)
    for warning in caught:
        print(f"warning: {warning.message}", flush=True)
    return parser


def load_background_for(options: ToolOptions, device: str | torch.device = "cpu") -> BackgroundUpsampler | None:
    """Real-ESRGAN when `options.bg_upsampler` asks for it, else None (plain resizing)."""
    if options.bg_upsampler != "realesrgan":
        return None
    return load_realesrgan(options.realesrgan_weights_dir, device, tile=options.bg_tile)


def load_tools(
    options: ToolOptions, device: str | torch.device = "cpu", detector: FaceDetector | None = None
) -> WholeImageTools:
    """Detector (unless one is given), parser and background upsampler as `options` ask."""
    if detector is None:
        detector, _ = load_detector_for(options, device)
    return WholeImageTools(detector, load_parser_for(options, device), load_background_for(options, device))
