"""Whole-video restoration (whole_image.video, tracking, video_io, streaming) on small clips made here.

Most clips show red discs on a textured background; `DiscDetector` finds each disc and reports a face
there (its eyes one radius apart), so detection is exact up to what H.264 does to the disc's edge. The
model is a stub that paints faces green and records the noise it is given; one test uses a tiny PMRF
through FaceRestorer, and one the real MTCNN on the astronaut.
"""

from __future__ import annotations

import math
import os
import signal
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from helpers import face_at, landmarks_at

from utils.images import InputError, RunInterrupted
from utils.synthetic_video import write_clip
from whole_image.detect import DetectedFace
from whole_image.streaming import stream
from whole_image.tracking import FaceTracker, OneEuroFilter
from whole_image.video import FlickerMeter, VideoOptions, is_variable_rate, restore_video, video_scale
from whole_image.video_cli import photos_and_videos, run_videos
from whole_image.video_io import VideoInfo, VideoReadError, even_size, probe

GREEN = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
# A tiny HDiT with neighbourhood attention only: helpers.TINY_HDIT has a global-attention level, which
# costs seconds per 512×512 face on CPU.
LOCAL_HDIT = {
    "type": "hdit",
    "patch_size": [4, 4],
    "widths": [16, 32],
    "depths": [1, 1],
    "self_attns": [{"type": "neighborhood", "d_head": 8, "kernel_size": 3}] * 2,
    "mapping_width": 16,
    "mapping_depth": 1,
}
RED = (230, 25, 25)


# ------------------------------------------------------------------------------------ helpers


class DiscDetector:
    """A face at every red disc, its eyes one radius apart: largest disc first."""

    def __init__(self):
        self.calls = 0

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        self.calls += 1
        red = (image[:, :, 0] > 170) & (image[:, :, 1] < 90) & (image[:, :, 2] < 90)
        count, _, stats, centroids = cv2.connectedComponentsWithStats(red.astype(np.uint8))
        faces = []
        for k in range(1, count):
            area = stats[k, cv2.CC_STAT_AREA]
            if area >= 30:
                faces.append(face_at(centroids[k], math.sqrt(area / math.pi)))
        return sorted(faces, key=lambda face: -face.eye_distance())


class Recorder:
    """Stub model: paints faces green; draws noise from its own generator and records what it gets."""

    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)
        self.calls: list[tuple[int, torch.Tensor | None]] = []

    def draw_noise(self, count: int, size: int) -> torch.Tensor:
        return torch.randn(count, 3, size, size, generator=self.generator)

    def __call__(self, faces: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((faces.shape[0], None if noise is None else noise[:, 0, 0, :4].clone()))
        return GREEN.expand_as(faces).clone()

    def fingerprints(self) -> list[tuple]:
        return [tuple(row.tolist()) for _, noise in self.calls for row in noise]


def background(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 160, (max(2, height // 16), max(2, width // 16), 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image[:, :, 0] *= 0.5  # nothing red but the discs
    return np.clip(image, 0, 255).astype(np.uint8)


def disc_frames(count: int, height: int = 128, width: int = 160, discs=((60, 64, 22),), step: float = 1.5):
    """`count` frames with red discs (x, y, radius) moving right by `step` px a frame."""
    frames = []
    for index in range(count):
        frame = background(height, width)
        for x, y, radius in discs:
            cv2.circle(frame, (round(x + step * index), y), radius, RED, -1, lineType=cv2.LINE_AA)
        frames.append(frame)
    return frames


def decoded(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return [(frame.time, frame.rotation, frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return []
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.dts is not None]


def restore(source, destination, restorer=None, detector=None, **kwargs):
    return restore_video(source, destination, restorer or Recorder(), detector or DiscDetector(), progress=False,
                         **kwargs)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------ the output


def test_frame_count_rate_timestamps_and_audio_are_kept(tmp_path):
    source = tmp_path / "clip.mp4"
    write_clip(source, disc_frames(6), fps=12, audio_seconds=0.5)
    result = restore(source, tmp_path / "out.mp4", upscale=2)
    frames_in, frames_out = decoded(source), decoded(tmp_path / "out.mp4")
    assert len(frames_out) == len(frames_in) == result.frames == 6
    assert [t for t, _, _ in frames_out] == [t for t, _, _ in frames_in]
    with av.open(str(tmp_path / "out.mp4")) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264" and video.average_rate == 12
        assert (video.width, video.height) == (320, 256)
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"]
    assert audio_packets(tmp_path / "out.mp4") == audio_packets(source)  # copied unchanged
    assert len(audio_packets(source)) > 5
    # the disc (the face) is painted by the stub model, the corner is the background, enlarged
    _, _, image = frames_out[3]
    assert image[128, 2 * (60 + 4)][1] > 200 and image[128, 2 * (60 + 4)][0] < 80
    assert abs(int(image[4, 4][0]) - int(frames_in[3][2][2, 2][0])) < 30
    assert result.frames_with_faces == 6 and result.tracks == 1 and "audio: 1 stream(s) copied" in result.notes


def test_a_video_without_audio_gives_one_without_audio(tmp_path):
    source = tmp_path / "silent.mp4"
    write_clip(source, disc_frames(3), fps=10)
    result = restore(source, tmp_path / "out.mp4", upscale=1)
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert not container.streams.audio and container.streams.video[0].frames == 3
    assert "no audio stream" in result.notes


def test_variable_frame_rate_keeps_every_timestamp(tmp_path):
    source = tmp_path / "vfr.mkv"
    stamps = [0, 40, 130, 170, 300, 330, 420]
    write_clip(source, disc_frames(len(stamps)), timestamps_ms=stamps, audio_seconds=0.4)
    result = restore(source, tmp_path / "out.mp4", upscale=1)
    times = [t for t, _, _ in decoded(tmp_path / "out.mp4")]
    assert np.allclose(times, np.array(stamps) / 1000, atol=1e-3), times
    assert any("variable frame rate" in note for note in result.notes)
    assert len(audio_packets(tmp_path / "out.mp4")) == len(audio_packets(source))


def test_rotation_metadata_is_applied_to_the_pixels(tmp_path):
    stored = disc_frames(3, 128, 160)
    for frame in stored:
        frame[:12, :12] = (255, 255, 0)  # a yellow mark in the stored top-left corner
    source = tmp_path / "phone.mov"
    write_clip(source, stored, fps=10, rotation=90, format="mov")
    info = probe(source)
    assert info.rotation == 90 and (info.width, info.height) == (128, 160)
    restore(source, tmp_path / "out.mp4", upscale=1)
    frames = decoded(tmp_path / "out.mp4")
    assert all(rotation == 0 for _, rotation, _ in frames)  # upright pixels, no tag
    image = frames[0][2]
    assert image.shape == (160, 128, 3)
    # a 90° counter-clockwise turn takes the stored top-left corner to the bottom-left
    assert image[-4, 4][0] > 200 and image[-4, 4][1] > 200 and image[4, 4][1] < 200


@pytest.mark.parametrize("container,audio_codec,reencoded", [("avi", "pcm_u8", True), ("mkv", "flac", False)])
def test_other_containers_and_audio_that_mp4_cannot_hold(tmp_path, container, audio_codec, reencoded):
    source = tmp_path / f"clip.{container}"
    write_clip(source, disc_frames(4), fps=10, audio_seconds=0.4, audio_codec=audio_codec, sample_rate=22050)
    result = restore(source, tmp_path / "out.mp4", upscale=1)
    with av.open(str(tmp_path / "out.mp4")) as out:
        codecs = [s.codec_context.name for s in out.streams.audio]
        assert out.streams.video[0].frames == 4
    assert codecs == (["aac"] if reencoded else [audio_codec])
    assert any("re-encoded to AAC" in note for note in result.notes) == reencoded


def test_odd_output_sizes_are_padded_to_even(tmp_path):
    assert even_size(np.zeros((5, 6, 3), np.uint8)).shape == (6, 6, 3)
    source = tmp_path / "clip.mp4"
    write_clip(source, disc_frames(2, 130, 130), fps=10)
    result = restore(source, tmp_path / "out.mp4", upscale=1.5)
    assert (result.width, result.height) == (195, 195)
    assert decoded(tmp_path / "out.mp4")[0][2].shape == (196, 196, 3)


# ------------------------------------------------------------------------------------ steadiness


def test_each_track_keeps_one_noise_and_frames_share_batches(tmp_path):
    source = tmp_path / "two.mp4"
    write_clip(source, disc_frames(6, 128, 192, discs=((50, 60, 24), (140, 70, 16))), fps=12)
    recorder = Recorder()
    result = restore(source, tmp_path / "out.mp4", recorder, upscale=1, options=VideoOptions(batch_size=8))
    assert result.tracks == 2
    assert [size for size, _ in recorder.calls] == [8, 4]  # the faces of four frames in one model call
    prints = recorder.fingerprints()  # in frame order, the larger face first
    assert len(prints) == 12
    assert set(prints[0::2]) == {prints[0]} and set(prints[1::2]) == {prints[1]} and prints[0] != prints[1]


def test_without_smoothing_every_frame_gets_fresh_noise_and_raw_landmarks(tmp_path):
    source = tmp_path / "one.mp4"
    write_clip(source, disc_frames(4), fps=12)
    recorder = Recorder()
    restore(source, tmp_path / "out.mp4", recorder, upscale=1, options=VideoOptions(temporal_smoothing=False))
    assert recorder.calls and all(noise is None for _, noise in recorder.calls)
    tracker = FaceTracker(smoothing=False)
    face = face_at((50, 50), 20)
    (tracked,) = tracker.update([face], 0.0)
    assert np.array_equal(tracked.landmarks, face.landmarks)
    assert tracker.update([], 0.1) == []  # no coasting without smoothing
    ablation = FaceTracker(smoothing=True, filter_landmarks=False)  # one noise per track, raw landmarks
    ablation.update([face], 0.0)
    (moved,) = ablation.update([face_at((53, 50), 20)], 0.04)
    assert np.array_equal(moved.landmarks, landmarks_at((53, 50), 20)) and moved.track_id == tracked.track_id


def test_one_euro_smoothing_reduces_jitter_and_follows_motion():
    rng = np.random.default_rng(0)
    still = landmarks_at((100, 100), 40)
    smoother = OneEuroFilter()
    raw, smoothed = [], []
    for index in range(120):  # 4 s at 30 fps, 1.5 px of detector jitter
        noisy = still + rng.normal(0, 1.5, still.shape)
        raw.append(noisy)
        smoothed.append(smoother(noisy, index / 30))
    raw_jitter = np.std(np.diff(np.array(raw[30:]), axis=0))
    smooth_jitter = np.std(np.diff(np.array(smoothed[30:]), axis=0))
    assert smooth_jitter < raw_jitter / 4, (raw_jitter, smooth_jitter)
    assert np.abs(np.mean(smoothed[30:], axis=0) - still).max() < 1.0
    # a steady pan of 3 px a frame (90 px/s): after a second the lag stays below 2 px
    smoother = OneEuroFilter()
    for index in range(60):
        out = smoother(still + [3.0 * index, 0], index / 30)
    assert abs(out[0, 0] - (still[0, 0] + 3.0 * 59)) < 2.0


def test_smoothing_steadies_the_aligned_crops_of_a_jittery_detector(tmp_path):
    """A still face whose detected landmarks jitter by 1.5 px: the crops the model gets barely move with
    smoothing, and move with the jitter without it."""

    class Jittery(DiscDetector):
        rng = np.random.default_rng(0)

        def detect(self, image):
            return [DetectedFace(f.box, f.landmarks + self.rng.normal(0, 1.5, (5, 2)), f.score)
                    for f in super().detect(image)]

    class Crops(Recorder):
        def __call__(self, faces, noise=None):
            self.crops = getattr(self, "crops", []) + [faces.clone()]
            return super().__call__(faces, noise)

    source = tmp_path / "still.mp4"
    write_clip(source, disc_frames(16, step=0.0), fps=12)
    motion = {}
    for smoothing in (False, True):
        model = Crops()
        restore(source, tmp_path / "out.mp4", model, Jittery(), upscale=1, options=VideoOptions(temporal_smoothing=smoothing))
        crops = torch.cat(model.crops)[4:]  # after the filter has settled
        motion[smoothing] = (crops[1:] - crops[:-1]).abs().mean().item()
    assert motion[True] < motion[False] / 2, motion


def test_tracks_follow_people_and_survive_a_missed_frame():
    tracker = FaceTracker()
    a, b = face_at((50, 50), 20), face_at((200, 60), 20)
    first = tracker.update([a, b], 0.0)
    ids = {round(f.box[0]): f.track_id for f in first}
    moved = [face_at((204, 61), 20), face_at((53, 50), 20)]  # the same people, listed the other way round
    second = tracker.update(moved, 0.04)
    assert [f.track_id for f in second] == [ids[round(b.box[0])], ids[round(a.box[0])]]
    coasting = tracker.update([moved[1]], 0.08)  # b missed once: restored at its last place
    assert [(f.track_id, f.detected) for f in coasting] == [(ids[round(a.box[0])], True), (ids[round(b.box[0])], False)]
    again = tracker.update(moved, 0.12)
    assert sorted(f.track_id for f in again) == sorted(ids.values())
    stranger = tracker.update([face_at((120, 200), 20)], 0.16)
    assert stranger[0].track_id not in ids.values()


def test_flicker_meter_is_one_for_a_copy_and_grows_with_noise():
    rng = np.random.default_rng(0)
    frames = [(background(64, 64) + 3 * k).astype(np.uint8) for k in range(5)]  # brightening by 3 a frame
    boxes = [np.array([8.0, 8.0, 56.0, 56.0])]
    same, noisy = FlickerMeter(), FlickerMeter()
    for frame in frames:
        big = cv2.resize(frame, (128, 128), interpolation=cv2.INTER_NEAREST)
        same.add(frame, big, boxes)
        noisy.add(frame, np.clip(big + rng.normal(0, 20, big.shape), 0, 255).astype(np.uint8), boxes)
    assert same.ratio == pytest.approx(1.0, abs=0.02) and same.mean("input") == pytest.approx(3.0, abs=0.01)
    assert noisy.ratio > 2


def test_smoothing_lowers_flicker_with_a_noisy_model(tmp_path):
    """A stub model whose output carries a pattern made from its source noise (as PMRF's output depends on
    n): fresh noise in every frame flickers, one noise per track does not."""

    class NoisyModel(Recorder):
        def __call__(self, faces, noise=None):
            super().__call__(faces, noise)
            if noise is None:
                noise = self.draw_noise(faces.shape[0], faces.shape[-1])
            pattern = torch.nn.functional.interpolate(noise[:, :, :16, :16], size=faces.shape[-2:], mode="bilinear")
            return (faces + 0.15 * pattern).clamp(0, 1)

    source = tmp_path / "clip.mp4"
    write_clip(source, disc_frames(8, step=0.5), fps=12)
    ratios = {}
    for smoothing in (False, True):
        result = restore(source, tmp_path / f"{smoothing}.mp4", NoisyModel(), upscale=1,
                         options=VideoOptions(temporal_smoothing=smoothing))
        ratios[smoothing] = result.flicker_ratio
    assert ratios[False] > 2 * ratios[True], ratios


def test_face_restorer_uses_the_noise_it_is_given(mmse_ckpt):
    from helpers import build_method

    from lightning_models.restoration import FaceRestorer

    model = build_method("pmrf", mmse_ckpt, source_noise_std=0.2).eval()
    restorer = FaceRestorer(model, num_flow_steps=2, seed=0)
    faces = torch.rand(2, 3, 32, 32)
    noise = restorer.draw_noise(2, 32)
    assert noise.shape == (2, 3, 32, 32)
    first, again = restorer(faces, noise=noise), restorer(faces, noise=noise)
    assert torch.equal(first, again)
    # the untrained flow's velocity is zero (zero-initialised output layer): x̂ = clip(posterior mean + σ_s·n)
    expected = (model.pmrf.posterior_mean(faces) + 0.2 * noise).clamp(0, 1)
    assert torch.allclose(first, expected, atol=1e-5)
    assert not torch.equal(restorer(faces, noise=restorer.draw_noise(2, 32)), first)
    assert not torch.equal(restorer(faces), restorer(faces))  # fresh noise when none is given
    with pytest.raises(ValueError, match="noise of shape"):
        restorer(faces, noise=noise[:1])


# ------------------------------------------------------------------------------------ bad input


def options_for(tmp_path: Path, source: Path):
    from whole_image.cli import WholeImageOptions

    return WholeImageOptions(source, tmp_path / "out", upscale=1, face_mask="ellipse")


def tools():
    from whole_image.tools import WholeImageTools

    return WholeImageTools(DiscDetector(), None, None)


def test_a_file_that_is_not_a_video_is_a_listed_skip(tmp_path, capsys):
    fake = tmp_path / "in" / "notes.mp4"
    fake.parent.mkdir()
    fake.write_text("not a video")
    good = tmp_path / "in" / "good.mp4"
    write_clip(good, disc_frames(2), fps=10)
    written = run_videos(options_for(tmp_path, fake.parent), VideoOptions(), Recorder(), tools=tools())
    out = capsys.readouterr().out
    assert written == [tmp_path / "out" / "good.mp4"]
    assert "skipped 1 video(s)" in out and "notes.mp4: cannot be opened as a video" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.mp4", "video_results.json"]


@pytest.mark.parametrize("faststart", [False, True])
def test_a_truncated_video_is_a_listed_skip_and_leaves_nothing(tmp_path, capsys, faststart):
    whole = tmp_path / "whole.mp4"
    frames = disc_frames(24, step=2)
    with av.open(str(whole), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream_ = container.add_stream("libx264", rate=12)
        stream_.width, stream_.height, stream_.pix_fmt = 160, 128, "yuv420p"
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream_.encode(frame))
        container.mux(stream_.encode(None))
    data = whole.read_bytes()
    cut = tmp_path / "in" / "cut.mp4"
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) // 2])
    assert run_videos(options_for(tmp_path, cut), VideoOptions(), Recorder(), tools=tools()) == []
    out = capsys.readouterr().out
    assert "skipped 1 video(s)" in out and "cut.mp4" in out
    assert "truncated" in out or "damaged" in out
    assert list((tmp_path / "out").iterdir()) == []


def test_a_video_without_faces_is_copied_through_and_reported(tmp_path, capsys):
    source = tmp_path / "in" / "empty.mp4"
    source.parent.mkdir()
    write_clip(source, [background(128, 160, seed) for seed in range(3)], fps=10)
    recorder = Recorder()
    (written,) = run_videos(options_for(tmp_path, source), VideoOptions(), recorder, tools=tools())
    assert recorder.calls == []
    assert len(decoded(written)) == 3
    assert "no face in any frame: copied through" in capsys.readouterr().out


def test_a_4k_input_is_capped_at_4096_pixels():
    info = VideoInfo(Path("4k.mp4"), 3840, 2160, 0, Fraction(1, 30), Fraction(30), 10, None)
    scale, note = video_scale(info, 2.0)
    assert scale == pytest.approx(4096 / 3840) and "4096×2304" in note
    assert video_scale(info, 1.0) == (1.0, None)


@pytest.mark.slow
def test_a_4k_clip_streams_through(tmp_path):
    frames = [np.full((2160, 3840, 3), 90 + 20 * k, np.uint8) for k in range(2)]
    source = tmp_path / "uhd.mp4"
    write_clip(source, frames, fps=30)
    result = restore(source, tmp_path / "out.mp4", upscale=2)
    assert (result.width, result.height) == (4096, 2304)
    assert any("lowered" in note for note in result.notes)
    assert len(decoded(tmp_path / "out.mp4")) == 2


def test_an_error_in_a_stage_leaves_nothing_under_the_final_name(tmp_path):
    class Broken(Recorder):
        def __call__(self, faces, noise=None):
            raise RuntimeError("model exploded")

    source = tmp_path / "clip.mp4"
    write_clip(source, disc_frames(4), fps=12)
    with pytest.raises(RuntimeError, match="model exploded"):
        restore(source, tmp_path / "out.mp4", Broken(), upscale=1)
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_kill_leaves_no_partial_output(tmp_path, signum):
    class Interrupting(Recorder):
        def __call__(self, faces, noise=None):
            if len(self.calls) == 1:
                os.kill(os.getpid(), signum)  # as Ctrl-C or `kill` does, while frames are in flight
            return super().__call__(faces, noise)

    source = tmp_path / "in" / "clip.mp4"
    source.parent.mkdir()
    write_clip(source, disc_frames(12), fps=12)
    with pytest.raises(RunInterrupted, match="interrupted") as stopped:  # inference.py: that line, status 130
        run_videos(options_for(tmp_path, source), VideoOptions(batch_size=2), Interrupting(), tools=tools())
    assert "\n" not in str(stopped.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_inputs_and_output_folder_rules(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write_clip(folder / "a.mp4", disc_frames(2), fps=10)
    cv2.imwrite(str(folder / "p.png"), background(32, 32))
    assert photos_and_videos(folder) == (True, [folder / "a.mp4"])
    assert photos_and_videos(folder / "a.mp4") == (False, [folder / "a.mp4"])
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match="not an image or a video"):  # inference.py: one line, status 2
        photos_and_videos(tmp_path / "x.txt")
    from whole_image.cli import WholeImageOptions

    with pytest.raises(InputError, match="holds the input videos"):
        run_videos(WholeImageOptions(folder, folder), VideoOptions(), Recorder(), tools=tools())


def test_videos_are_named_by_the_photo_rule_and_skip_existing_leaves_them(tmp_path, capsys):
    import dataclasses
    import json

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.mp4", "a.mov", "a_mov.mkv"):  # by stem alone, a.mov and a_mov.mkv would both give a_mov.mp4
        write_clip(folder / name, disc_frames(2), fps=10)
    options = options_for(tmp_path, folder)
    written = run_videos(options, VideoOptions(), Recorder(), tools=tools())
    assert sorted(p.name for p in written) == ["a_mov.mp4", "a_mov_2.mp4", "a_mp4.mp4"]
    assert "a.mov -> a_mov_2" in capsys.readouterr().out
    (tmp_path / "out" / "a_mp4.mp4").unlink()
    recorder = Recorder()
    again = run_videos(dataclasses.replace(options, skip_existing=True), VideoOptions(), recorder, tools=tools())
    assert [p.name for p in again] == ["a_mp4.mp4"] and sum(n for n, _ in recorder.calls) == 2  # its 2 faces
    assert "left 2 video(s) whose output exists already" in capsys.readouterr().out
    entries = json.loads((tmp_path / "out" / "video_results.json").read_text())
    assert sorted(Path(entry["output"]).name for entry in entries) == ["a_mov.mp4", "a_mov_2.mp4", "a_mp4.mp4"]


def test_stream_stops_every_stage_on_an_error_and_keeps_order():
    def double(items):
        for item in items:
            yield 2 * item

    with stream(range(50), double, double, maxsize=2) as items:
        assert list(items) == [4 * k for k in range(50)]

    def explode(items):
        for item in items:
            if item == 7:
                raise ValueError("at seven")
            yield item

    with pytest.raises(ValueError, match="at seven"), stream(iter(range(10**9)), explode, maxsize=1) as items:
        for _ in items:
            pass


def test_variable_rate_detection():
    assert not is_variable_rate([k / 30 for k in range(30)])
    assert is_variable_rate([0, 0.04, 0.13, 0.17, 0.3])


# ------------------------------------------------------------------------------------ real pieces


@pytest.mark.slow
def test_the_astronaut_clip_with_mtcnn_through_inference_py(tmp_path, capsys, mmse_ckpt):
    """inference.py --whole_image on a video, offline: MTCNN tracks the astronaut's face through a
    panning clip, a tiny PMRF restores it, and the program prints the flicker figure."""
    import inference
    from lightning_models.mmse_rectified_flow import MMSERectifiedFlow
    from utils.synthetic_video import astronaut_clip

    flow = MMSERectifiedFlow(stage="flow", arch=LOCAL_HDIT, mmse_model_ckpt_path=str(mmse_ckpt))
    flow.save_pretrained(tmp_path / "model")
    source = tmp_path / "in" / "astronaut.mov"
    source.parent.mkdir()
    write_clip(source, astronaut_clip(3, 128), fps=8, audio_seconds=0.3, format="mov")
    inference.main(["--whole_image", "--detector", "mtcnn", "--face_mask", "ellipse", "--ckpt_path",
                    str(tmp_path / "model"), "-i", str(source), "-o", str(tmp_path / "out"), "--num_flow_steps", "1",
                    "-s", "1", "--device", "cpu", "--crf", "30"])
    out = capsys.readouterr().out
    assert "MTCNN" in out and "flicker" in out and "astronaut.mp4" in out
    with av.open(str(tmp_path / "out" / "astronaut.mp4")) as container:
        assert container.streams.video[0].frames == 3 and len(container.streams.audio) == 1
    assert '"tracks": 1' in (tmp_path / "out" / "video_results.json").read_text()


def test_a_video_without_whole_image_gets_a_hint(tmp_path, capsys):
    import inference

    source = tmp_path / "clip.mp4"
    write_clip(source, disc_frames(1), fps=10)
    with pytest.raises(SystemExit):
        inference.main(["--ckpt_path", str(tmp_path / "none.ckpt"), "-i", str(source), "-o", str(tmp_path / "out")])
    assert "a video: add --whole_image" in capsys.readouterr().err


def test_not_a_video_probe_names_the_file(tmp_path):
    junk = tmp_path / "junk.webm"
    junk.write_bytes(os.urandom(2000))
    with pytest.raises(VideoReadError, match="junk.webm"):
        probe(junk)


# ------------------------------------------------------------------------------------ the web demo


def demo_store():
    import app

    return app.ModelStore(app.DemoSettings.from_args(app.parse_args(["--face_mask", "ellipse", "--device", "cpu"])), "cpu")


def test_the_demos_video_tab_restores_a_clip_with_its_sound(tmp_path):
    import app

    source = tmp_path / "clip.webm"
    write_clip(source, disc_frames(4), fps=10, codec="libvpx", audio_seconds=0.4, audio_codec="libopus",
               sample_rate=48000)
    recorder = Recorder()
    path, status = app.restore_video_upload(str(source), 3, 1, 7, True, restore_faces=recorder,
                                            detector=DiscDetector(), store=demo_store())
    assert Path(path).parent == Path(app.results_dir()) and path.endswith(".mp4")
    with av.open(path) as container:
        assert container.streams.video[0].frames == 4
        assert [s.codec_context.name for s in container.streams.audio] == ["opus"]
    assert "Restored 4 frames (1 face(s) tracked) with 3 flow steps, seed 7" in status
    assert all(noise is not None for _, noise in recorder.calls)


def test_the_demo_refuses_a_file_that_is_not_a_video_or_too_long(tmp_path, monkeypatch):
    import app

    notes = tmp_path / "notes.mp4"
    notes.write_text("hello")
    with pytest.raises(Exception, match="is not a video this demo can read"):
        app.restore_video_upload(str(notes), 3, 1, 7, True, restore_faces=Recorder(), detector=DiscDetector(),
                                 store=demo_store())
    source = tmp_path / "long.mp4"
    write_clip(source, disc_frames(5), fps=1)
    monkeypatch.setattr(app, "MAX_VIDEO_SECONDS", 3)
    with pytest.raises(Exception, match="longer than 3 s"):
        app.restore_video_upload(str(source), 3, 1, 7, True, restore_faces=Recorder(), detector=DiscDetector(),
                                 store=demo_store())
    with pytest.raises(Exception, match="Upload a video first"):
        app.restore_video_upload(None, 3, 1, 7, True)
    assert not [p for p in Path(app.results_dir()).iterdir() if p.suffix == ".mp4" and p.stat().st_size == 0]
