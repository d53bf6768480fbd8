"""Whole-video face restoration: every frame's faces restored and pasted back, steadily, with the sound.

    decode ──► detect + track ──► restore (faces of several frames in one batch) ──► paste ──► encode
      (a thread each, bounded queues between them: memory does not grow with the video's length)

* Faces are tracked across frames (`whole_image.tracking`): one track per person. With
  `temporal_smoothing` each track's landmarks are smoothed over time (One-Euro filter), so the aligned
  crop and the pasted face do not jitter, and each track keeps one source noise n in every frame
  (drawn once from the restorer's seeded generator), so PMRF's randomness does not change from frame
  to frame. Without it, every frame is restored as a photo would be: detected landmarks, fresh noise.
* The output is `<name>.mp4`: H.264 at `crf`, every input frame at its own timestamp (same frame count,
  frame rate, variable timing), the audio copied (`whole_image.video_io`), written under a temporary
  name and renamed at the end: an error or Ctrl-C leaves nothing under the final name.
* The flicker figure of a video is the mean absolute frame-to-frame change inside the face boxes of the
  output, divided by the same for the input (the output is brought back to the input's size first):
  about 1 when the restored faces change as much as the input's, above 1 when restoration adds flicker.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from utils.images import is_gray, write_atomic
from whole_image.align import BORDER_FILL, FACE_SIZE, GRAY_BORDER_FILL, alignment_matrix, warp_to_template
from whole_image.detect import FaceDetector, find_faces, select_faces
from whole_image.paste import FaceParser, face_masks, paste_faces
from whole_image.pipeline import RestoreFaces, restore_crops, to_gray, upscaled_background
from whole_image.streaming import stream
from whole_image.tracking import FaceTracker, TrackedFace
from whole_image.upsample import BackgroundUpsampler, output_size
from whole_image.video_io import (
    MAX_OUTPUT_SIDE,
    DecodedFrame,
    VideoInfo,
    VideoReadError,
    VideoWriter,
    probe,
    read_frames,
)

DEFAULT_CRF = 18


@dataclass(frozen=True)
class VideoOptions:
    """How videos are restored and encoded, besides the whole-photo options."""

    crf: int = DEFAULT_CRF  # H.264 quality: 0 lossless, 18 visually lossless, 23 libx264's default, 51 worst
    temporal_smoothing: bool = True
    smooth_landmarks: bool = True  # with temporal_smoothing; False: raw landmarks, one noise per track (ablation)
    batch_size: int = 8  # faces per model call
    max_batch_frames: int = 16  # frames whose faces may share a model call (bounds the frames held)
    queue_size: int = 4  # frames waiting between two stages

    def __post_init__(self):
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf}")
        if min(self.batch_size, self.max_batch_frames, self.queue_size) < 1:
            raise ValueError("batch_size, max_batch_frames and queue_size must be positive")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> VideoOptions:
        given = vars(args)
        return cls(
            crf=given.get("crf", DEFAULT_CRF),
            temporal_smoothing=given.get("temporal_smoothing", "on") == "on",
            batch_size=min(given.get("batch_size") or 8, 64),
        )


# ------------------------------------------------------------------------------------ one frame


@dataclass
class FrameJob:
    """A frame on its way through the stages."""

    index: int
    pts: int | None
    time: float
    image: np.ndarray  # upright input RGB (made gray when the frame is gray)
    gray: bool
    faces: list[TrackedFace] = field(default_factory=list)
    matrices: list[np.ndarray] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    ended_tracks: list[int] = field(default_factory=list)
    restored: np.ndarray | None = None  # (N, S, S, 3) uint8
    output: np.ndarray | None = None


def frame_is_gray(image: np.ndarray) -> bool:
    """Gray frames (black-and-white film) give gray faces; judged on at most ~256 rows and columns."""
    step = max(1, max(image.shape[:2]) // 256)
    return is_gray(image[::step, ::step])


def detect_stage(
    frames: Iterator[DecodedFrame],
    detector: FaceDetector,
    tracker: FaceTracker,
    only_center_face: bool = False,
    max_faces: int | None = None,
) -> Iterator[FrameJob]:
    """Faces of each frame, matched to tracks, aligned (from the smoothed landmarks) and cropped."""
    for frame in frames:
        gray = frame_is_gray(frame.image)
        image = to_gray(frame.image) if gray else frame.image
        height, width = image.shape[:2]
        detections = select_faces(find_faces(image, detector), height, width, only_center_face, max_faces)
        job = FrameJob(frame.index, frame.pts, frame.time, image, gray)
        tracked = tracker.update(detections, frame.time)  # detected faces first, then coasting ones
        if only_center_face or max_faces:
            tracked = tracked[: 1 if only_center_face else max_faces]
        for face in tracked:
            try:
                matrix = alignment_matrix(face.landmarks, FACE_SIZE)
            except ValueError:  # degenerate landmarks: not restored in this frame
                continue
            job.faces.append(face)
            job.matrices.append(matrix)
            job.crops.append(warp_to_template(image, matrix, FACE_SIZE, GRAY_BORDER_FILL if gray else BORDER_FILL))
        job.ended_tracks = list(tracker.ended)
        yield job


def supports_noise(restore_faces: RestoreFaces) -> bool:
    """Whether the restorer takes a given source noise (FaceRestorer does: `draw_noise`, `noise=`)."""
    return callable(getattr(restore_faces, "draw_noise", None))


def restore_stage(
    jobs: Iterator[FrameJob], restore_faces: RestoreFaces, options: VideoOptions
) -> Iterator[FrameJob]:
    """The faces of up to `max_batch_frames` frames restored together, `batch_size` per model call.

    With temporal smoothing and a restorer that takes a noise, each track gets one noise, drawn when it
    first appears, and is restored with it in every frame.
    """
    keep_noise = options.temporal_smoothing and supports_noise(restore_faces)
    noises: dict[int, torch.Tensor] = {}
    pending: list[FrameJob] = []
    face_count = 0

    def flush() -> Iterator[FrameJob]:
        crops = [crop for job in pending for crop in job.crops]
        if crops:
            noise = None
            if keep_noise:
                ids = [face.track_id for job in pending for face in job.faces]
                for track_id in ids:
                    if track_id not in noises:
                        noises[track_id] = restore_faces.draw_noise(1, FACE_SIZE)
                noise = torch.cat([noises[track_id] for track_id in ids])
            restored = restore_crops(crops, restore_faces, options.batch_size, noise)
            start = 0
            for job in pending:
                job.restored = restored[start : start + len(job.crops)]
                if job.gray:
                    job.restored = np.stack([to_gray(face) for face in job.restored])
                start += len(job.crops)
        for job in pending:
            for track_id in job.ended_tracks:
                noises.pop(track_id, None)
        yield from pending
        pending.clear()

    for job in jobs:
        pending.append(job)
        face_count += len(job.crops)
        if face_count >= options.batch_size or len(pending) >= options.max_batch_frames:
            yield from flush()
            face_count = 0
    yield from flush()


def paste_stage(
    jobs: Iterator[FrameJob],
    scale: float,
    parser: FaceParser | None = None,
    bg_upsampler: BackgroundUpsampler | None = None,
) -> Iterator[FrameJob]:
    """Each frame's background resized by `scale` with its restored faces pasted in."""
    for job in jobs:
        background = upscaled_background(job.image, scale, bg_upsampler, job.gray)
        if job.crops:
            masks = face_masks(job.restored, parser)
            job.output = paste_faces(background, job.restored, masks, job.matrices, scale)
        else:
            job.output = background
        job.crops, job.restored = [], None  # not needed any more: free them early
        yield job


# ------------------------------------------------------------------------------------ flicker


class FlickerMeter:
    """Mean absolute frame-to-frame change inside the face boxes, of the input and of the output.

    The output is resized to the input's size, so both are judged on the same pixels; a frame counts
    (with the previous one) when it has faces. Values are in 8-bit levels.
    """

    def __init__(self):
        self.previous: tuple[np.ndarray, np.ndarray] | None = None
        self.input_change = self.output_change = 0.0
        self.samples = 0

    def add(self, image: np.ndarray, output: np.ndarray, boxes: list[np.ndarray]) -> None:
        height, width = image.shape[:2]
        if output.shape[:2] != (height, width):
            output = cv2.resize(output, (width, height), interpolation=cv2.INTER_AREA)
        if self.previous is not None and boxes:
            mask = np.zeros((height, width), bool)
            for box in boxes:
                x0, y0 = (max(0, math.floor(v)) for v in box[:2])
                x1, y1 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
                mask[y0:y1, x0:x1] = True
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if len(rows):  # only the boxes' bounding region is compared (4K frames stay cheap)
                region = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
                inside = mask[region]

                def change(now: np.ndarray, before: np.ndarray) -> float:
                    return float(np.abs(now[region].astype(np.int16) - before[region].astype(np.int16))[inside].sum())

                self.input_change += change(image, self.previous[0])
                self.output_change += change(output, self.previous[1])
                self.samples += int(inside.sum()) * image.shape[2]
        self.previous = (image, output)

    @property
    def ratio(self) -> float | None:
        """Output change / input change; None without two frames with faces or a still input."""
        return self.output_change / self.input_change if self.input_change > 0 else None

    def mean(self, which: str) -> float | None:
        total = self.input_change if which == "input" else self.output_change
        return total / self.samples if self.samples else None


# ------------------------------------------------------------------------------------ one video


@dataclass
class VideoResult:
    """What restoring one video gave."""

    input: str
    output: str
    frames: int
    width: int
    height: int
    frame_rate: float | None
    frames_with_faces: int
    tracks: int  # distinct faces (tracks) restored
    seconds: float
    flicker_ratio: float | None
    input_change: float | None  # mean |frame-to-frame change| in the face boxes, 8-bit levels
    output_change: float | None
    temporal_smoothing: bool
    notes: list[str] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def video_scale(info: VideoInfo, upscale: float, max_side: int = MAX_OUTPUT_SIDE) -> tuple[float, str | None]:
    """The output scale: `upscale`, lowered so that the output's longer side is at most `max_side`
    (with a note saying so)."""
    longest = max(info.width, info.height)
    if longest * upscale <= max_side:
        return upscale, None
    scale = max_side / longest
    height, width = output_size(info.height, info.width, scale)
    return scale, (
        f"output scale lowered from {upscale:g} to {scale:.3g} to keep frames within {max_side} px "
        f"({info.width}×{info.height} in, {width}×{height} out)"
    )


def check_frame_size(info: VideoInfo) -> None:
    """The photos' decompression-bomb rule (PIL's MAX_IMAGE_PIXELS, PMRF_MAX_IMAGE_PIXELS) for one frame."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and info.width * info.height > limit:
        raise VideoReadError(
            f"{info.path}: frames of {info.width}×{info.height} exceed the {limit}-pixel limit for one image; "
            "set PMRF_MAX_IMAGE_PIXELS to a larger number of pixels for a trusted file"
        )


def is_variable_rate(times: list[float]) -> bool:
    """True when the gaps between frames differ by more than 10 % of their median (and 1 ms)."""
    gaps = np.diff(np.asarray(times, dtype=np.float64))
    if len(gaps) < 2:
        return False
    median = float(np.median(gaps))
    return bool(np.abs(gaps - median).max() > max(0.1 * median, 1e-3))


def restore_video(
    source: str | Path,
    destination: str | Path,
    restore_faces: RestoreFaces,
    detector: FaceDetector,
    upscale: float = 2.0,
    only_center_face: bool = False,
    max_faces: int | None = None,
    parser: FaceParser | None = None,
    bg_upsampler: BackgroundUpsampler | None = None,
    options: VideoOptions | None = None,
    progress: bool = True,
) -> VideoResult:
    """Restore the faces of the video `source` into the MP4 file `destination` (see the module's
    docstring). VideoReadError (naming the file) when it cannot be read; nothing is left under
    `destination` unless the whole video was written."""
    options = options or VideoOptions()
    source, destination = Path(source), Path(destination)
    info = probe(source)
    check_frame_size(info)
    scale, scale_note = video_scale(info, upscale)
    height, width = output_size(info.height, info.width, scale)
    tracker = FaceTracker(smoothing=options.temporal_smoothing, filter_landmarks=options.smooth_landmarks)
    meter, times, tracks, frames_with_faces = FlickerMeter(), [], set(), 0
    started = time.perf_counter()
    reencoded: list[str] = []

    def encode(path: str) -> None:
        nonlocal frames_with_faces
        writer = VideoWriter(path, source, width, height, info.time_base, info.frame_rate, options.crf)
        try:
            if writer.audio is not None:
                reencoded.extend(writer.audio.reencoded)
            stages = stream(
                read_frames(info),
                lambda frames: detect_stage(frames, detector, tracker, only_center_face, max_faces),
                lambda jobs: restore_stage(jobs, restore_faces, options),
                lambda jobs: paste_stage(jobs, scale, parser, bg_upsampler),
                maxsize=options.queue_size,
            )
            with stages as jobs, tqdm(
                total=info.expected_frames, desc=source.name, unit="frame", disable=not progress, leave=False
            ) as bar:
                for job in jobs:
                    writer.write(job.output, job.pts)
                    meter.add(job.image, job.output, [face.box for face in job.faces])
                    times.append(job.time)
                    tracks.update(face.track_id for face in job.faces)
                    frames_with_faces += bool(job.faces)
                    bar.update(1)
            writer.close()
        except BaseException:
            writer.abort()
            raise

    write_atomic(destination, encode)
    notes = [note for note in (scale_note,) if note]
    if info.rotation:
        notes.append(f"rotation metadata ({info.rotation}° counter-clockwise) applied: the output is upright")
    if is_variable_rate(times):
        notes.append("variable frame rate: every frame keeps its input timestamp")
    if not info.audio:
        notes.append("no audio stream")
    elif len(info.audio) > len(reencoded):
        notes.append(f"audio: {len(info.audio) - len(reencoded)} stream(s) copied")
    if reencoded:
        notes.append(f"audio ({', '.join(reencoded)}) re-encoded to AAC: MP4 cannot hold it")
    if not frames_with_faces:
        notes.append(f"no face in any frame: copied through, resized ×{scale:g}")
    return VideoResult(
        input=str(source),
        output=str(destination),
        frames=len(times),
        width=width,
        height=height,
        frame_rate=float(info.frame_rate) if info.frame_rate else None,
        frames_with_faces=frames_with_faces,
        tracks=len(tracks),
        seconds=time.perf_counter() - started,
        flicker_ratio=meter.ratio,
        input_change=meter.mean("input"),
        output_change=meter.mean("output"),
        temporal_smoothing=options.temporal_smoothing,
        notes=notes,
    )
