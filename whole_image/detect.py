"""Face detection: RetinaFace (facexlib, weights file needed) or MTCNN (facenet-pytorch, weights in its
wheel), the detection frame (small photos enlarged, huge ones reduced), the tiny-face filter, and the
choice of which faces to restore.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch

from utils.registry import WEIGHTS, candidates
from utils.weights import MissingWeightsError
from whole_image.weights import MTCNN_FILES, find_tool_weights, load_weights_into, mtcnn_weights_dir

DETECTORS = ("auto", "retinaface", "mtcnn")
# Faces whose eyes are closer than this, in the detection frame, are profiles or too small to restore
# (GFPGAN's and CodeFormer's eye_dist_threshold).
MIN_EYE_DISTANCE = 5.0
# Photos whose short side is below this are enlarged for detection only (the landmarks are mapped back);
# both detectors miss small faces in small photos otherwise.
MIN_DETECTION_SIDE = 512
# Longer sides above this are reduced for detection (the short side is kept at MIN_DETECTION_SIDE or
# more); enlargement stops at it.
MAX_DETECTION_SIDE = 2048
# A detection frame thinner than this holds no face a detector can find (MTCNN's smallest face is 20 px,
# and it fails outright on thinner images): such a photo has no face.
MIN_FRAME_SIDE = 20


@dataclass(frozen=True)
class DetectedFace:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in photo pixels
    landmarks: np.ndarray  # (5, 2) x, y: left eye, right eye, nose, left mouth corner, right mouth corner
    score: float

    def area(self, height: int, width: int) -> float:
        """Area of the box clipped to the image."""
        x0, x1 = np.clip(self.box[[0, 2]], 0, width)
        y0, y1 = np.clip(self.box[[1, 3]], 0, height)
        return float(max(x1 - x0, 0.0) * max(y1 - y0, 0.0))

    def center(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])

    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))


class FaceDetector(Protocol):
    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an (H, W, 3) uint8 RGB image, in its own pixel coordinates."""


# ------------------------------------------------------------------------------------------ RetinaFace


class RetinaFaceDetector:
    """facexlib's RetinaFace-ResNet50 behind the `FaceDetector` interface."""

    name = "RetinaFace"

    def __init__(self, network: torch.nn.Module, threshold: float = 0.97):
        self.network = network
        self.threshold = threshold

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # RetinaFace was trained on BGR
        rows = self.network.detect_faces(bgr, conf_threshold=self.threshold)
        return [
            DetectedFace(box=row[:4].copy(), landmarks=row[5:15].reshape(5, 2).copy(), score=float(row[4]))
            for row in np.asarray(rows, dtype=np.float64).reshape(-1, 15)
        ]


def build_retinaface(device: str | torch.device = "cpu") -> torch.nn.Module:
    """An untrained RetinaFace-ResNet50 as facexlib builds it (no ImageNet weights are fetched: the full
    checkpoint is loaded next)."""
    from facexlib.detection.retinaface import RetinaFace

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's notice about `pretrained=False`
        network = RetinaFace(network_name="resnet50", half=False, device=torch.device(device))
    return network.eval()


def load_retinaface(
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    threshold: float = 0.97,
) -> RetinaFaceDetector:
    """RetinaFace with `detection_Resnet50_Final.pth` from the face weights folder (utils.registry's
    "retinaface"); MissingWeightsError (naming the file, the folder and the download address) when it is
    not there."""
    path = find_tool_weights("retinaface", weights_dir)
    network = load_weights_into(build_retinaface(device), path)
    return RetinaFaceDetector(network.to(device).eval(), threshold=threshold)


# ----------------------------------------------------------------------------------------------- MTCNN


class MTCNNDetector:
    """facenet-pytorch's MTCNN (P-, R- and O-nets run by its `detect_face`) behind `FaceDetector`.

    MTCNN's five points come in the FFHQ template's order already: left eye, right eye, nose, left and
    right mouth corners, left and right as seen in the image (the tests check this on a real photo).
    facenet-pytorch hands its results back as arrays of dtype=object; they are cast to float here.
    """

    name = "MTCNN"
    # The order of MTCNN's points in the template's order (identity: documented, and kept as a table so
    # that a change of convention is one line).
    LANDMARK_ORDER = (0, 1, 2, 3, 4)

    def __init__(
        self,
        pnet: torch.nn.Module,
        rnet: torch.nn.Module,
        onet: torch.nn.Module,
        device: str | torch.device = "cpu",
        threshold: float = 0.97,
        min_face_size: int = 20,
        stage_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
    ):
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = (net.to(self.device).eval() for net in (pnet, rnet, onet))
        self.threshold = threshold
        self.min_face_size = min_face_size
        self.stage_thresholds = list(stage_thresholds)
        self.factor = factor

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        from facenet_pytorch.models.utils.detect_face import detect_face

        if min(image.shape[:2]) < self.min_face_size:  # no image pyramid level: detect_face would fail
            return []
        batch_boxes, batch_points = detect_face(
            np.ascontiguousarray(image),
            self.min_face_size,
            self.pnet,
            self.rnet,
            self.onet,
            self.stage_thresholds,
            self.factor,
            self.device,
        )
        rows = np.asarray(list(batch_boxes[0]), dtype=np.float64).reshape(-1, 5)
        points = np.asarray(list(batch_points[0]), dtype=np.float64).reshape(-1, 5, 2)
        faces = []
        for row, landmarks in zip(rows, points, strict=True):
            if row[4] >= self.threshold and np.all(np.isfinite(row)) and np.all(np.isfinite(landmarks)):
                faces.append(
                    DetectedFace(
                        box=row[:4].copy(), landmarks=landmarks[list(self.LANDMARK_ORDER)], score=float(row[4])
                    )
                )
        return faces


def load_mtcnn(device: str | torch.device = "cpu", threshold: float = 0.97) -> MTCNNDetector:
    """MTCNN with the weights that ship inside the facenet-pytorch wheel, read through utils.weights."""
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    folder = mtcnn_weights_dir()
    nets = [
        load_weights_into(network(pretrained=False), folder / file)
        for network, file in zip((PNet, RNet, ONet), MTCNN_FILES, strict=True)
    ]
    return MTCNNDetector(*nets, device=device, threshold=threshold)


# ------------------------------------------------------------------------------------------- choosing


def resolve_detector_choice(choice: str, weights_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """(retinaface | mtcnn, why): `auto` takes RetinaFace when its weights file is on disk, else MTCNN."""
    if choice not in DETECTORS:
        raise ValueError(f"unknown face detector {choice!r}; choose one of {DETECTORS}")
    if choice != "auto":
        return choice, "asked for"
    try:
        path = find_tool_weights("retinaface", weights_dir)
    except MissingWeightsError:
        folders = ", ".join(str(place.parent) for place in candidates("retinaface", [weights_dir]))
        return "mtcnn", f"auto: no {WEIGHTS['retinaface'].file} in {folders}"
    return "retinaface", f"auto: {path} is on disk"


def load_detector(
    choice: str = "auto",
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    threshold: float = 0.97,
) -> tuple[FaceDetector, str]:
    """The detector `choice` names, and one line that says which one it is and why (for printing).

    MissingWeightsError / WeightsReadError (utils.weights) when its weights cannot be read.
    """
    kind, why = resolve_detector_choice(choice, weights_dir)
    if kind == "retinaface":
        return load_retinaface(weights_dir, device, threshold), f"face detector: RetinaFace-ResNet50 ({why})"
    return load_mtcnn(device, threshold), f"face detector: MTCNN from facenet-pytorch ({why})"


# -------------------------------------------------------------------------------- detection frame


def detection_scale(
    height: int, width: int, min_side: int = MIN_DETECTION_SIDE, max_side: int = MAX_DETECTION_SIDE
) -> float:
    """Factor by which a photo is resized before detection: small photos are enlarged so that their
    short side is `min_side` (the long side stops at `max_side`); huge ones are reduced so that their
    long side is `max_side`, but never below a `min_side` short side."""
    short, long = min(height, width), max(height, width)
    if short < min_side:
        return max(1.0, min(min_side / short, max_side / long))
    if long > max_side:
        return max(max_side / long, min_side / short)
    return 1.0


def to_frame(points: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
    """(..., 2) photo pixel coordinates -> those of the photo resized by `scale` (one factor, or one for x
    and one for y), with cv2.resize's pixel centres."""
    return np.asarray(points, dtype=np.float64) * scale + (scale - 1.0) / 2.0


def from_frame(points: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
    """Inverse of `to_frame`."""
    return (np.asarray(points, dtype=np.float64) - (scale - 1.0) / 2.0) / scale


def find_faces(
    image: np.ndarray,
    detector: FaceDetector,
    min_eye_distance: float = MIN_EYE_DISTANCE,
    min_side: int = MIN_DETECTION_SIDE,
    max_side: int = MAX_DETECTION_SIDE,
) -> list[DetectedFace]:
    """Faces of an (H, W, 3) uint8 RGB photo, in its pixel coordinates.

    The detector sees the photo resized by `detection_scale`; faces whose eyes are less than
    `min_eye_distance` pixels apart in that detection frame are dropped, and the rest are mapped back.
    """
    height, width = image.shape[:2]
    factor = detection_scale(height, width, min_side, max_side)
    frame, scale = image, np.ones(2)
    if factor != 1.0:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
        frame = cv2.resize(image, size, interpolation=interpolation)
        scale = np.array([size[0] / width, size[1] / height])  # x and y, exact after rounding
    if min(frame.shape[:2]) < MIN_FRAME_SIDE:
        return []
    faces = []
    for face in detector.detect(frame):
        if face.eye_distance() < min_eye_distance:
            continue
        faces.append(
            DetectedFace(
                box=from_frame(face.box.reshape(2, 2), scale).reshape(4),
                landmarks=from_frame(face.landmarks, scale),
                score=face.score,
            )
        )
    return faces


def select_faces(
    faces: list[DetectedFace],
    height: int,
    width: int,
    only_center_face: bool = False,
    max_faces: int | None = None,
) -> list[DetectedFace]:
    """The faces to restore: the one nearest the centre, or the largest first, at most `max_faces`."""
    if not faces:
        return []
    if only_center_face:
        middle = np.array([width / 2, height / 2])
        return [min(faces, key=lambda face: float(np.linalg.norm(face.center() - middle)))]
    ordered = sorted(faces, key=lambda face: face.area(height, width), reverse=True)
    return ordered if max_faces is None else ordered[:max_faces]
