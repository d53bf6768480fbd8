"""Reading and writing videos with PyAV (FFmpeg's libraries, shipped inside the `av` wheel).

* `probe` opens a file and says what it holds, or raises `VideoReadError` naming the file;
* `read_frames` decodes the video stream into upright RGB frames with their timestamps: the rotation
  stored in the container (phones' portrait videos) is applied to the pixels, as EXIF orientation is
  for photos, so the output needs no rotation tag;
* `VideoWriter` encodes H.264 (libx264, yuv420p, BT.709, `crf`) with every frame at its input timestamp
  (so the frame count, the frame rate and a variable frame rate's timing are all kept) and copies the
  input's audio streams packet by packet, interleaved as it goes. An audio codec the MP4 container cannot
  hold (ADPCM or 8-bit PCM from old AVI cameras) is re-encoded to AAC instead, and that is said.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

# Longest side of an output frame: H.264 level 5.1's largest frame is 4096x2304. Bigger outputs have
# their scale lowered (and the program says so).
MAX_OUTPUT_SIDE = 4096


class VideoReadError(ValueError):
    """A video file cannot be read (not a video, damaged, truncated); the message names the file."""


@dataclass
class VideoInfo:
    path: Path
    width: int  # as displayed: after the rotation
    height: int
    rotation: int  # degrees counter-clockwise applied to the stored pixels: 0, 90, 180 or 270
    time_base: Fraction
    frame_rate: Fraction | None  # the stream's average rate
    frames: int  # declared by the container; 0 when unknown
    duration: float | None  # of the video stream, in seconds, when declared
    audio: list[str] = field(default_factory=list)  # codec of each audio stream

    @property
    def expected_frames(self) -> int | None:
        """The declared frame count, else duration × rate; None when neither is known."""
        if self.frames:
            return self.frames
        if self.duration and self.frame_rate:
            return max(1, round(self.duration * float(self.frame_rate)))
        return None


def _error(path: Path, what: str, error: BaseException | None = None) -> VideoReadError:
    message = getattr(error, "strerror", None) or str(error)  # FFmpeg's errors repeat the file name otherwise
    detail = f" ({error.__class__.__name__}: {message})" if error is not None else ""
    return VideoReadError(f"{path}: {what}{detail}")


def _quarter_turns(rotation: float | None) -> int:
    """FFmpeg's display rotation (degrees, counter-clockwise) in quarter turns, 0 to 3."""
    return round((rotation or 0) / 90.0) % 4


def upright(frame: av.VideoFrame, quarter_turns: int) -> np.ndarray:
    """The frame as (H, W, 3) uint8 RGB, turned as the container says it is displayed; the frame's own
    colour matrix and range are used."""
    converted = frame.reformat(format="rgb24", src_color_range=frame.color_range or None)
    rgb = converted.to_ndarray()
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb


def probe(path: str | os.PathLike) -> VideoInfo:
    """What `path` holds; VideoReadError when it is not a video or its first frame cannot be decoded."""
    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as error:
        raise _error(path, "cannot be opened as a video (not a video, or damaged or truncated)", error) from None
    with container:
        if not container.streams.video:
            raise _error(path, "holds no video stream")
        stream = container.streams.video[0]
        try:
            first = next(container.decode(stream), None)
        except (av.FFmpegError, ValueError) as error:
            raise _error(path, "cannot decode its first frame; the file is damaged or not a video", error) from None
        if first is None:
            raise _error(path, "holds no decodable frame (empty or truncated)")
        turns = _quarter_turns(first.rotation)
        width, height = (first.height, first.width) if turns % 2 else (first.width, first.height)
        duration = float(stream.duration * stream.time_base) if stream.duration else None
        return VideoInfo(
            path=path,
            width=width,
            height=height,
            rotation=turns * 90,
            time_base=stream.time_base or Fraction(1, 90000),
            frame_rate=stream.average_rate or stream.guessed_rate,
            frames=stream.frames or 0,
            duration=duration,
            audio=[audio.codec_context.name for audio in container.streams.audio],
        )


@dataclass
class DecodedFrame:
    index: int
    pts: int | None  # in the stream's time base
    time: float  # seconds
    image: np.ndarray  # (H, W, 3) uint8 RGB, upright


def read_frames(info: VideoInfo) -> Iterator[DecodedFrame]:
    """Every frame of the video stream, in presentation order, upright. A decoding error, or clearly
    fewer frames than the container declares, raises VideoReadError (a damaged or truncated file)."""
    path, turns = info.path, _quarter_turns(info.rotation)
    index = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(info.frame_rate) if info.frame_rate else 25.0
            for frame in container.decode(stream):
                time = float(frame.time) if frame.time is not None else index / rate
                yield DecodedFrame(index, frame.pts, time, upright(frame, turns))
                index += 1
    except (av.FFmpegError, EOFError) as error:
        raise _error(path, f"damaged or truncated: decoding stopped at frame {index}", error) from None
    # A few frames fewer than declared is normal (edit lists that hide encoder priming frames); more is a
    # file cut short.
    if info.frames and info.frames - index > max(2, info.frames // 100):
        raise _error(path, f"truncated: {index} of the {info.frames} frames it declares could be decoded")


def even_size(image: np.ndarray) -> np.ndarray:
    """H.264 in 4:2:0 needs even sides: an odd one gets its last row or column repeated."""
    height, width = image.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return image
    return np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def mp4_can_hold(stream: av.audio.AudioStream) -> bool:
    """Whether the MP4 muxer takes this audio stream's packets as they are (tried on a scratch file)."""
    try:
        with av.open(io.BytesIO(), "w", format="mp4") as scratch:
            scratch.add_stream_from_template(stream)
            scratch.start_encoding()
        return True
    except (av.FFmpegError, ValueError):
        return False


class AudioCopy:
    """The audio streams of `source` into `output`: packets copied unchanged where MP4 can hold them,
    else decoded and re-encoded to AAC. `until(t)` writes what comes before t seconds, so audio and
    video stay interleaved and nothing piles up in memory."""

    def __init__(self, source: Path, output: av.container.OutputContainer):
        self.source = source
        self.input = av.open(str(source))
        self.streams = list(self.input.streams.audio)
        self.targets, self.resamplers, self.reencoded = {}, {}, []
        for stream in self.streams:
            if mp4_can_hold(stream):
                self.targets[stream.index] = output.add_stream_from_template(stream)
            else:
                rate = stream.codec_context.sample_rate or 48000
                target = output.add_stream("aac", rate=rate)
                channels = len(stream.codec_context.layout.channels)  # AAC wants a named layout
                target.layout = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}.get(channels, "stereo")
                self.targets[stream.index] = target
                self.resamplers[stream.index] = av.AudioResampler(format="fltp", layout=target.layout, rate=rate)
                self.reencoded.append(stream.codec_context.name)
        self.output = output
        self.packets = self.input.demux(*self.streams) if self.streams else iter(())
        self.waiting: av.Packet | None = None

    def _write(self, packet: av.Packet) -> None:
        index = packet.stream.index
        target = self.targets[index]
        if index not in self.resamplers:
            packet.stream = target
            self.output.mux(packet)
            return
        for frame in packet.decode():
            for resampled in self.resamplers[index].resample(frame):
                resampled.pts = None  # the encoder counts samples
                self.output.mux(target.encode(resampled))

    def until(self, seconds: float) -> None:
        while True:
            try:
                packet = self.waiting or next(self.packets, None)
            except av.FFmpegError as error:
                raise _error(self.source, "its audio is damaged or truncated", error) from None
            self.waiting = None
            if packet is None:
                return
            if packet.dts is None and packet.pts is None:  # demuxer's end-of-stream marker
                continue
            stamp = packet.dts if packet.dts is not None else packet.pts
            if stamp * packet.time_base > seconds:
                self.waiting = packet
                return
            try:
                self._write(packet)
            except av.FFmpegError as error:
                raise _error(self.source, "its audio could not be copied (damaged timestamps or data)", error) from None

    def finish(self) -> None:
        self.until(math.inf)
        for index in self.resamplers:
            self.output.mux(self.targets[index].encode(None))
        self.close()

    def close(self) -> None:
        self.input.close()


class VideoWriter:
    """H.264 MP4 of the restored frames, with the audio of `source` (see the module's docstring).

    `write(image, pts)` takes (height, width, 3) uint8 RGB frames and their timestamps in `time_base`
    (odd sides get a repeated last row or column); `close()` finishes the file. The caller writes to a
    temporary name and renames it.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        source: Path,
        width: int,
        height: int,
        time_base: Fraction,
        frame_rate: Fraction | None,
        crf: int = 18,
        copy_audio: bool = True,
    ):
        self.time_base, self.frame_rate = time_base, frame_rate
        self.last_pts: int | None = None
        self.frames = 0
        self.audio: AudioCopy | None = None
        self.container = av.open(str(path), "w", format="mp4")
        try:
            self.stream = self._add_video(width + width % 2, height + height % 2, crf)
            if copy_audio:
                self.audio = AudioCopy(source, self.container)
        except BaseException:
            self.abort()
            raise

    def _add_video(self, width: int, height: int, crf: int) -> av.video.stream.VideoStream:
        stream = self.container.add_stream("libx264", rate=self.frame_rate or 25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = self.time_base
        context = stream.codec_context
        context.time_base = self.time_base  # frames keep their own timestamps (variable frame rates too)
        context.colorspace, context.color_range = Colorspace.ITU709, ColorRange.MPEG
        context.color_primaries = context.color_trc = 1  # BT.709
        stream.options = {"crf": str(crf), "preset": "medium"}
        return stream

    def write(self, image: np.ndarray, pts: int | None) -> None:
        image = even_size(image)
        if pts is None:  # no timestamp (some AVI files): the frame's place at the nominal rate
            rate = self.frame_rate or Fraction(25)
            pts = round(self.frames / (rate * self.time_base))
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1  # the encoder needs increasing timestamps
        self.last_pts = pts
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
            format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
        )
        frame.pts, frame.time_base = pts, self.time_base
        if self.audio is not None:
            self.audio.until(float(pts * self.time_base))
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder, copy the remaining audio and finish the file."""
        try:
            self.container.mux(self.stream.encode(None))
            if self.audio is not None:
                self.audio.finish()
        finally:
            self.abort()

    def abort(self) -> None:
        """Release the files (the caller removes the temporary output)."""
        if self.audio is not None:
            self.audio.close()
        self.container.close()
