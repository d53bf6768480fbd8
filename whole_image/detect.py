"""Face detection with facexlib's RetinaFace (ResNet-50) and the choice of which faces to restore."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch

from whole_image.weights import DETECTOR_FILE, DETECTOR_URL, face_weights_dir, find_or_download, load_into


@dataclass(frozen=True)
class DetectedFace:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in input pixels
    landmarks: np.ndarray  # (5, 2) x, y: left eye, right eye, nose, left mouth corner, right mouth corner
    score: float

    def area(self, height: int, width: int) -> float:
        """Area of the box clipped to the image."""
        x0, x1 = np.clip(self.box[[0, 2]], 0, width)
        y0, y1 = np.clip(self.box[[1, 3]], 0, height)
        return float(max(x1 - x0, 0.0) * max(y1 - y0, 0.0))

    def center(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])


class FaceDetector(Protocol):
    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an (H, W, 3) uint8 RGB image."""


class RetinaFaceDetector:
    """facexlib's RetinaFace behind the `FaceDetector` interface.

    Photos whose longer side exceeds `max_side` are searched at a reduced size (RetinaFace's smallest
    anchors are 16 px, so faces that matter survive) and the detections are scaled back.
    """

    def __init__(self, network: torch.nn.Module, threshold: float = 0.97, max_side: int = 1600):
        self.network = network
        self.threshold = threshold
        self.max_side = max_side

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # RetinaFace was trained on BGR
        rows = self.network.detect_faces(bgr, conf_threshold=self.threshold)
        faces = []
        for row in np.asarray(rows, dtype=np.float64).reshape(-1, 15):
            faces.append(
                DetectedFace(
                    box=row[:4] / scale, landmarks=row[5:15].reshape(5, 2) / scale, score=float(row[4])
                )
            )
        return faces


def build_retinaface(device: str | torch.device = "cpu") -> torch.nn.Module:
    """An untrained RetinaFace-ResNet50 as facexlib builds it (no ImageNet download: the full
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
    allow_download: bool = True,
) -> RetinaFaceDetector:
    """RetinaFace with `detection_Resnet50_Final.pth` from the face weights folder (downloaded on
    first use)."""
    folder = face_weights_dir(weights_dir)
    path = find_or_download(
        folder, DETECTOR_FILE, DETECTOR_URL, "face detector", allow_download=allow_download
    )
    network = load_into(build_retinaface(device), path)
    return RetinaFaceDetector(network.eval(), threshold=threshold)


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
