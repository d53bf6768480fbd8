"""Small video clips made on the spot, for the tests and benchmarks/video.py (nothing is downloaded).

* `write_clip` writes frames as a video file with the properties a test needs: a frame rate or explicit
  (variable) timestamps, a rotation tag, an audio tone, another container;
* `panning_clip` films a still photo with a slow pan and zoom and degrades every frame (downscaling,
  then JPEG at a low quality), as a restoration input; `astronaut_clip` does it to scikit-image's
  astronaut portrait.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import cv2
import numpy as np


def write_clip(
    path: str | os.PathLike,
    frames: list[np.ndarray],
    fps: int = 12,
    timestamps_ms: list[int] | None = None,
    rotation: int = 0,
    audio_seconds: float | None = None,
    audio_codec: str = "aac",
    sample_rate: int = 16000,
    codec: str = "libx264",
    crf: int = 10,
    format: str | None = None,
) -> None:
    """Frames ((H, W, 3) uint8 RGB, even sides) as a video file.

    `timestamps_ms` gives each frame's time (variable frame rate) instead of 1/fps steps; `rotation` is
    stored as the container's display rotation (degrees counter-clockwise); `audio_seconds` adds a mono
    440 Hz tone of that length in `audio_codec`.
    """
    time_base = Fraction(1, 1000) if timestamps_ms is not None else Fraction(1, fps)
    with av.open(str(path), "w", format=format) as container:
        video = container.add_stream(codec, rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        video.time_base = video.codec_context.time_base = time_base
        if codec == "libx264":
            video.options = {"crf": str(crf), "preset": "ultrafast"}
        if rotation:
            video.set_display_rotation(rotation)
        audio = None
        if audio_seconds:
            audio = container.add_stream(audio_codec, rate=sample_rate)
            audio.layout = "mono"
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = timestamps_ms[index] if timestamps_ms is not None else index
            frame.time_base = time_base
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            write_tone(container, audio, audio_seconds, sample_rate)


def write_tone(container, stream, seconds: float, sample_rate: int) -> None:
    """A 440 Hz tone through `stream`'s encoder, in the sample format it takes."""
    context = stream.codec_context
    samples = int(seconds * sample_rate)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / sample_rate)
    step = context.frame_size or 1024
    for start in range(0, samples, step):
        chunk = tone[start : start + step].astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, start
        resampled = av.AudioResampler(format=context.format.name, layout="mono", rate=sample_rate).resample(frame)
        for piece in resampled:
            container.mux(stream.encode(piece))
    container.mux(stream.encode(None))


def panning_clip(
    photo: np.ndarray,
    frames: int = 48,
    size: int = 256,
    zoom: float = 1.15,
    pan: float = 0.08,
    degrade_scale: float = 0.5,
    jpeg_quality: int = 30,
) -> list[np.ndarray]:
    """`frames` size×size views of `photo`: the window slides right by `pan` of the photo's width and
    narrows by `zoom` over the clip (smoothly); each view is downscaled by `degrade_scale`, upscaled
    back and JPEG-compressed at `jpeg_quality`."""
    height, width = photo.shape[:2]
    out = []
    for index in range(frames):
        t = index / max(frames - 1, 1)
        side = min(height, width) * 0.9 / (1 + (zoom - 1) * t)
        cx = width / 2 + (t - 0.5) * pan * width
        cy = height / 2
        matrix = np.array([[size / side, 0, size / 2 - cx * size / side], [0, size / side, size / 2 - cy * size / side]])
        view = cv2.warpAffine(photo, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
        small = max(8, round(size * degrade_scale))
        view = cv2.resize(cv2.resize(view, (small, small), interpolation=cv2.INTER_AREA), (size, size),
                          interpolation=cv2.INTER_CUBIC)
        ok, encoded = cv2.imencode(".jpg", view[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        out.append(np.ascontiguousarray(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1]))
    return out


def astronaut_clip(frames: int = 48, size: int = 256, **kwargs) -> list[np.ndarray]:
    """`panning_clip` of scikit-image's astronaut portrait (one face, 512×512)."""
    from skimage import data

    return panning_clip(data.astronaut(), frames, size, **kwargs)
