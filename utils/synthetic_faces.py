"""Procedural cartoon faces: a small, download-free data set for the demo and the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SKIN_TONES = [(241, 194, 167), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172)]


def draw_face(size: int, rng: np.random.Generator) -> Image.Image:
    """One face on a random background: head, hair, eyes, brows, nose and mouth, slightly blurred."""
    scale = 4  # draw large, then downsample for smooth edges
    s = size * scale
    background = tuple(int(v) for v in rng.integers(40, 220, 3))
    image = Image.new("RGB", (s, s), background)
    draw = ImageDraw.Draw(image)
    cx, cy = s / 2 + rng.normal(0, s * 0.02), s / 2 + rng.normal(0, s * 0.02)
    rx, ry = s * rng.uniform(0.26, 0.32), s * rng.uniform(0.33, 0.40)
    skin = np.array(SKIN_TONES[rng.integers(len(SKIN_TONES))]) + rng.integers(-15, 15, 3)
    skin = tuple(int(v) for v in np.clip(skin, 0, 255))
    hair = tuple(int(v) for v in rng.integers(10, 120, 3))
    draw.ellipse([cx - rx * 1.08, cy - ry * 1.1, cx + rx * 1.08, cy + ry * 0.4], fill=hair)
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin)
    draw.ellipse([cx - rx * 1.02, cy - ry * 1.05, cx + rx * 1.02, cy - ry * 0.45], fill=hair)
    eye_y, eye_dx = cy - ry * 0.12, rx * rng.uniform(0.36, 0.46)
    eye_r = s * rng.uniform(0.035, 0.05)
    iris = tuple(int(v) for v in rng.integers(20, 160, 3))
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse([ex - eye_r * 1.6, eye_y - eye_r, ex + eye_r * 1.6, eye_y + eye_r], fill=(250, 250, 250))
        draw.ellipse([ex - eye_r * 0.8, eye_y - eye_r * 0.8, ex + eye_r * 0.8, eye_y + eye_r * 0.8], fill=iris)
        draw.line([ex - eye_r * 1.8, eye_y - eye_r * 2.2, ex + eye_r * 1.8, eye_y - eye_r * 2.4], fill=hair,
                  width=max(1, int(s * 0.012)))
    nose = tuple(int(v * 0.85) for v in skin)
    draw.polygon([(cx, cy - ry * 0.02), (cx - rx * 0.1, cy + ry * 0.22), (cx + rx * 0.1, cy + ry * 0.22)], fill=nose)
    mouth_y, mouth_w = cy + ry * 0.45, rx * rng.uniform(0.3, 0.5)
    lips = tuple(int(v) for v in (rng.integers(150, 220), rng.integers(40, 90), rng.integers(50, 100)))
    smile = rng.uniform(0.05, 0.15) * ry
    draw.chord([cx - mouth_w, mouth_y - smile, cx + mouth_w, mouth_y + smile], 0, 180, fill=lips)
    image = image.filter(ImageFilter.GaussianBlur(scale * 0.6))
    return image.resize((size, size), Image.LANCZOS)


def make_face_folder(folder: str | Path, count: int, size: int = 64, seed: int = 0, start: int = 0) -> Path:
    """Write `count` faces as PNG files named 00000.png, 00001.png, ... (from `start`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(start, start + count):
        draw_face(size, rng).save(folder / f"{index:05d}.png")
    return folder
