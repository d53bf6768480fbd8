"""Faces followed through a video: one track per person, and landmarks smoothed over time.

`FaceTracker.update(faces, time)` takes one frame's detections and returns the faces to restore in that
frame, each with its track id and the landmarks to align it with:

* detections are matched to tracks by box overlap (IoU) and landmark distance (in eye distances), with
  the optimal assignment (Hungarian); a detection no track claims starts a new track;
* with smoothing, each track's five landmarks go through a One-Euro filter (Casiez, Roussel and Vogel,
  CHI 2012): a low-pass filter whose cut-off rises with the face's speed, so a still face stops
  jittering and a moving one does not lag. It is causal (each frame uses the past only) and runs on the
  frames' own timestamps, so variable frame rates are handled;
* a face the detector misses for a frame or two is still restored at its last smoothed place
  (`max_coast`), so it does not flash between restored and unrestored; a track unmatched for more than
  `max_missed` frames ends.

Without smoothing the detections come back as they are (landmarks untouched, no coasting): per-frame
behaviour, for comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from whole_image.detect import DetectedFace


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def landmark_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance between two (5, 2) landmark sets, in eye distances of `a`."""
    eyes = max(float(np.linalg.norm(a[1] - a[0])), 1e-6)
    return float(np.linalg.norm(a - b, axis=1).mean() / eyes)


def smoothing_factor(cutoff: float, dt: float) -> float:
    """The exponential-smoothing weight of a first-order low-pass filter of `cutoff` Hz sampled every
    `dt` seconds: alpha = r / (r + 1) with r = 2π·cutoff·dt."""
    r = 2.0 * math.pi * cutoff * dt
    return r / (r + 1.0)


class OneEuroFilter:
    """One-Euro filter of a (5, 2) landmark set.

    The speed that raises the cut-off is the landmarks' mean speed (of their low-passed velocities) in
    eye distances per second, so the parameters mean the same for a small face and a big one; all points
    share one smoothing weight, so the filtered set stays a blend of real face shapes.

    `min_cutoff` (Hz): how much a still face is smoothed (lower: steadier, more lag when it starts to
    move); `beta`: how fast the cut-off rises with speed (higher: less lag on fast motion);
    `derivative_cutoff` (Hz): the low-pass on the speed itself.
    """

    def __init__(self, min_cutoff: float = 0.5, beta: float = 4.0, derivative_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.derivative_cutoff = min_cutoff, beta, derivative_cutoff
        self.value: np.ndarray | None = None
        self.velocity = np.zeros((5, 2))  # of each landmark, low-passed, in pixels per second
        self.time: float | None = None

    def __call__(self, landmarks: np.ndarray, time: float) -> np.ndarray:
        landmarks = np.asarray(landmarks, dtype=np.float64)
        if self.value is None:
            self.value, self.time = landmarks.copy(), time
            return self.value.copy()
        dt = max(time - self.time, 1e-3)  # repeated or decreasing timestamps: a millisecond step
        self.time = time
        # the velocity is low-passed with its sign, so detector jitter averages out instead of reading as speed
        self.velocity += smoothing_factor(self.derivative_cutoff, dt) * ((landmarks - self.value) / dt - self.velocity)
        eyes = max(float(np.linalg.norm(self.value[1] - self.value[0])), 1e-6)
        speed = float(np.linalg.norm(self.velocity, axis=1).mean()) / eyes
        alpha = smoothing_factor(self.min_cutoff + self.beta * speed, dt)
        self.value = self.value + alpha * (landmarks - self.value)
        return self.value.copy()


@dataclass
class TrackedFace:
    """A face to restore in one frame."""

    track_id: int
    landmarks: np.ndarray  # (5, 2): smoothed (or the detection's, without smoothing)
    box: np.ndarray  # (4,) the detection's box (the last one, for a coasting face)
    detected: bool  # False: coasting over a missed detection


@dataclass
class Track:
    track_id: int
    box: np.ndarray
    landmarks: np.ndarray  # last detected
    smoothed: np.ndarray
    filter: OneEuroFilter | None
    missed: int = 0  # frames since it was last detected


class FaceTracker:
    """Tracks of the faces of one video (see the module's docstring)."""

    def __init__(
        self,
        smoothing: bool = True,
        filter_landmarks: bool = True,
        min_iou: float = 0.1,
        max_distance: float = 1.0,
        max_missed: int = 10,
        max_coast: int = 2,
        min_cutoff: float = 0.5,
        beta: float = 4.0,
    ):
        self.smoothing = smoothing
        self.filter_landmarks = smoothing and filter_landmarks  # False with smoothing: an ablation (raw landmarks)
        self.min_iou, self.max_distance = min_iou, max_distance
        self.max_missed, self.max_coast = max_missed, max_coast
        self.min_cutoff, self.beta = min_cutoff, beta
        self.tracks: list[Track] = []
        self.next_id = 0
        self.ended: list[int] = []  # ids of tracks ended by the last update

    def cost(self, track: Track, face: DetectedFace) -> float:
        """(1 − IoU) + landmark distance in eye distances; inf when the pair is too far apart to match."""
        iou = box_iou(track.box, face.box)
        distance = landmark_distance(track.landmarks, face.landmarks)
        if iou < self.min_iou or distance > self.max_distance:
            return math.inf
        return (1.0 - iou) + distance

    def match(self, faces: list[DetectedFace]) -> list[tuple[int, int]]:
        """(track index, face index) pairs of the cheapest assignment among allowed pairs."""
        if not self.tracks or not faces:
            return []
        costs = np.array([[self.cost(track, face) for face in faces] for track in self.tracks])
        allowed = np.isfinite(costs)
        rows, cols = linear_sum_assignment(np.where(allowed, costs, 1e6))
        return [(r, c) for r, c in zip(rows, cols, strict=True) if allowed[r, c]]

    def new_track(self, face: DetectedFace, time: float) -> Track:
        one_euro = OneEuroFilter(self.min_cutoff, self.beta) if self.filter_landmarks else None
        smoothed = one_euro(face.landmarks, time) if one_euro else face.landmarks.copy()
        track = Track(self.next_id, face.box.copy(), face.landmarks.copy(), smoothed, one_euro)
        self.next_id += 1
        return track

    def update(self, faces: list[DetectedFace], time: float) -> list[TrackedFace]:
        """One frame's detections (at `time` seconds) -> the faces to restore, detected ones first in the
        order given, then coasting ones."""
        pairs = self.match(faces)
        track_of_face = {c: self.tracks[r] for r, c in pairs}
        out, seen = [], set()
        for index, face in enumerate(faces):
            track = track_of_face.get(index)
            if track is None:
                track = self.new_track(face, time)
                self.tracks.append(track)
            else:
                track.box, track.landmarks, track.missed = face.box.copy(), face.landmarks.copy(), 0
                track.smoothed = track.filter(face.landmarks, time) if track.filter else face.landmarks.copy()
            seen.add(track.track_id)
            out.append(TrackedFace(track.track_id, track.smoothed.copy(), track.box.copy(), detected=True))
        kept, self.ended = [], []
        for track in self.tracks:
            if track.track_id not in seen:
                track.missed += 1
                if track.missed > self.max_missed:
                    self.ended.append(track.track_id)
                    continue
                if self.smoothing and track.missed <= self.max_coast:
                    out.append(TrackedFace(track.track_id, track.smoothed.copy(), track.box.copy(), detected=False))
            kept.append(track)
        self.tracks = kept
        return out
