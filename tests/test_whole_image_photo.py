"""Whole-photo restoration on a real photograph, offline: scikit-image's astronaut (Eileen Collins) with
the real MTCNN detector (its weights ship in the facenet-pytorch wheel).

The model is a stub (it paints faces a flat colour, or returns them unchanged): what is judged is the
geometry (detection, alignment, paste-back, orientation) and the colour handling, not restoration.
The blend seam is compared with facexlib's own paste-back, called on the same face and mask.
"""

from __future__ import annotations

import types

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from utils.images import read_rgb
from whole_image.align import (
    FFHQ_TEMPLATE_512,
    alignment_matrix,
    inverse_matrix,
    warp_from_template,
    warp_to_template,
)
from whole_image.cli import WholeImageOptions, run_whole_image
from whole_image.detect import find_faces, load_mtcnn
from whole_image.paste import FACEXLIB_SIGMA_512, FaceParser, ellipse_mask, feather_sigma, paste_faces
from whole_image.pipeline import restore_photo
from whole_image.upsample import resize_background

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("facenet_pytorch")

EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def mtcnn():
    return load_mtcnn("cpu")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()  # 512 x 512 RGB portrait


@pytest.fixture(scope="module")
def face(astronaut, mtcnn):
    faces = find_faces(astronaut, mtcnn)
    assert len(faces) == 1
    return faces[0]


def paint(rgb):
    colour = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)
    return lambda faces: colour.expand_as(faces).clone()


def unchanged(faces: torch.Tensor) -> torch.Tensor:
    return faces.clone()


def test_exactly_one_face_and_its_crop_puts_the_eyes_on_the_template(astronaut, mtcnn, face):
    assert face.score > 0.97
    left_eye, right_eye = face.landmarks[0], face.landmarks[1]
    assert left_eye[0] < right_eye[0]  # the template's order: the eye on the image's left first
    assert face.landmarks[2][1] > left_eye[1] and face.landmarks[3][1] > face.landmarks[2][1]  # nose, mouth below
    crop = warp_to_template(astronaut, alignment_matrix(face.landmarks))
    again = mtcnn.detect(crop)  # detected afresh in the aligned crop, not read off the matrix
    assert len(again) == 1
    eyes_error = np.linalg.norm(again[0].landmarks[:2] - FFHQ_TEMPLATE_512[:2], axis=1)
    assert eyes_error.max() < 8.0, eyes_error


def test_paste_back_leaves_pixels_far_from_the_face_unchanged(astronaut, mtcnn, face):
    result = restore_photo(astronaut, paint([0.0, 1.0, 0.0]), mtcnn, upscale=2.0, name="astronaut")
    out = result.restored_image
    background = resize_background(astronaut, 2.0)
    assert out.shape == (1024, 1024, 3)
    # The crop's footprint in the output (a 2 px margin for interpolation): nothing outside it changes.
    matrix = alignment_matrix(result.faces[0].landmarks)
    footprint = warp_from_template(np.ones((512, 512), np.float32), inverse_matrix(matrix, 2.0), 1024, 1024)
    footprint = cv2.dilate((footprint > 0).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert 0.02 < footprint.mean() < 0.5
    np.testing.assert_array_equal(out[~footprint], background[~footprint])
    # Inside: the face is the model's; the change is face-sized, around the detected face.
    x, y = (face.landmarks[2] * 2 + 0.5).round().astype(int)
    assert out[y, x][1] > 240 and out[y, x][0] < 15
    changed = np.any(np.abs(out.astype(int) - background) > 2, axis=2)
    ys, xs = np.nonzero(changed)
    x0, y0, x1, y1 = face.box * 2
    size = max(x1 - x0, y1 - y0)
    assert xs.min() > x0 - size and xs.max() < x1 + size and ys.min() > y0 - size and ys.max() < y1 + size


def test_an_exif_rotated_jpeg_gives_the_same_face_and_an_upright_output(tmp_path, astronaut, mtcnn, face):
    portrait = np.ascontiguousarray(astronaut[:, 40:440])  # 512 x 400: a rotation changes the shape
    stored = np.ascontiguousarray(np.rot90(portrait, k=1))  # what the camera wrote: turned a quarter left
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90° clockwise to display"
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(stored).save(inputs / "phone.jpg", quality=95, exif=exif)
    with Image.open(inputs / "phone.jpg") as raw:
        assert raw.size == (512, 400)  # the pixels on disk lie on their side

    upright = read_rgb(inputs / "phone.jpg")
    assert upright.shape == (512, 400, 3)
    found = find_faces(upright, mtcnn)
    assert len(found) == 1
    expected = face.landmarks - np.array([40.0, 0.0])
    assert np.abs(found[0].landmarks - expected).max() < 3.0

    options = WholeImageOptions(inputs, tmp_path / "out", upscale=2.0, face_mask="ellipse")
    (written,) = run_whole_image(options, unchanged, "cpu", detector=mtcnn)
    with Image.open(written) as raw:  # upright in its pixels, whatever a viewer does with tags
        assert raw.size == (800, 1024)
        assert raw.getexif().get(EXIF_ORIENTATION, 1) == 1
        pixels = np.asarray(raw.convert("RGB")).astype(float)
    reference = resize_background(portrait, 2.0).astype(float)
    sideways = resize_background(np.ascontiguousarray(np.rot90(portrait, k=-1)), 2.0)
    assert np.abs(pixels - reference).mean() < 6.0
    assert sideways.shape != pixels.shape


def test_a_gray_copy_gives_a_gray_output(tmp_path, astronaut, mtcnn):
    inputs = tmp_path / "in"
    inputs.mkdir()
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    Image.fromarray(gray).save(inputs / "gray.png")  # a one-channel file
    Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2)).save(inputs / "gray_rgb.jpg", quality=90)  # RGB, gray
    out = tmp_path / "out"
    options = WholeImageOptions(inputs, out, upscale=1.5, face_mask="ellipse", save_mmse=False)
    written = run_whole_image(options, paint([1.0, 0.2, 0.0]), "cpu", detector=mtcnn)  # a colourful model
    assert len(written) == 2
    for path in written + sorted((out / "restored_faces").iterdir()):
        image = read_rgb(path).astype(int)
        spread = np.abs(image[:, :, 0] - image[:, :, 1]).max() + np.abs(image[:, :, 1] - image[:, :, 2]).max()
        assert spread <= 2 * (3 if path.suffix == ".jpg" else 0), path  # JPEG chroma rounding at most
    faces = sorted(p.name for p in (out / "restored_faces").iterdir())
    assert faces == ["gray_00.png", "gray_rgb_00.png"]  # the face is found in gray photos too
    restored = read_rgb(out / "restored_imgs" / "gray.png")
    assert restored.shape == (768, 768, 3)


def test_a_small_copy_is_enlarged_for_detection(astronaut, mtcnn, face):
    small = cv2.resize(astronaut, (200, 200), interpolation=cv2.INTER_AREA)
    seen = []

    class Recorder:
        def detect(self, image):
            seen.append(image.shape)
            return mtcnn.detect(image)

    found = find_faces(small, Recorder())
    assert seen == [(512, 512, 3)]
    assert len(found) == 1
    expected = (face.landmarks + 0.5) * (200 / 512) - 0.5  # the full-size landmarks, in the small photo
    assert np.abs(found[0].landmarks - expected).max() < 2.0


# ------------------------------------------------------------------------ seam against facexlib


class RegionParser(torch.nn.Module):
    """A stand-in ParseNet that labels a fixed region of every face as skin (1), the rest background (0)."""

    def __init__(self, region: np.ndarray):
        super().__init__()
        self.region = torch.from_numpy(region)

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 19, 512, 512)
        logits[:, 1] = self.region * 2 - 1
        return [logits]


def facexlib_paste(photo_rgb: np.ndarray, face_rgb: np.ndarray, matrix: np.ndarray, scale: int, parse_region):
    """facexlib's FaceRestoreHelper.paste_faces_to_input_image, run on a stand-in helper (its __init__
    would load, or download, the detector) whose face parser labels `parse_region` as skin."""
    from facexlib.utils.face_restoration_helper import FaceRestoreHelper

    helper = types.SimpleNamespace(
        input_img=np.ascontiguousarray(photo_rgb[:, :, ::-1]),
        upscale_factor=scale,
        restored_faces=[np.ascontiguousarray(face_rgb[:, :, ::-1])],
        inverse_affine_matrices=[cv2.invertAffineTransform(matrix) * scale],
        use_parse=True,
        face_parse=RegionParser(parse_region),
        device=torch.device("cpu"),
        face_size=(512, 512),
    )
    out = FaceRestoreHelper.paste_faces_to_input_image(helper)
    return np.ascontiguousarray(out[:, :, ::-1]).astype(np.float32)


def transition_width(profile: np.ndarray) -> int:
    """Pixels from 10 % to 90 % along a profile that rises from 0 to 1."""
    return int(np.argmax(profile >= 0.9) - np.argmax(profile >= 0.1))


def gradient(image: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(image.mean(axis=2))
    return np.hypot(gx, gy)


def test_the_blend_seam_is_as_soft_as_facexlibs(astronaut, face):
    pytest.importorskip("facexlib")
    scale = 2
    matrix = alignment_matrix(face.landmarks)
    region = np.zeros((512, 512), np.float32)
    cv2.ellipse(region, (256, 270), (170, 200), 0, 0, 360, 1.0, thickness=-1)  # a parsing map's face
    white = np.full((512, 512, 3), 255, np.uint8)
    parsed_mask = FaceParser(RegionParser(region)).masks(white[None])[0]  # the same parsing, our feather
    # The masks as each paste uses them: a white face pasted on black.
    black = np.zeros_like(astronaut)
    theirs = facexlib_paste(black, white, matrix, scale, region)[:, :, 0] / 255
    ours = {
        "parsing": paste_faces(resize_background(black, scale), white[None], parsed_mask[None], [matrix], scale),
        "ellipse": paste_faces(resize_background(black, scale), white[None], ellipse_mask()[None], [matrix], scale),
    }
    ours = {name: mask[:, :, 0].astype(np.float32) / 255 for name, mask in ours.items()}
    eyes_y, eyes_x = (face.landmarks[:2].mean(axis=0) * scale).round().astype(int)[::-1]
    their_width = transition_width(theirs[eyes_y, :eyes_x])
    assert their_width > 10  # facexlib's σ = 11·√2 at 512, about 2/3 of that here
    for mask in ours.values():
        assert transition_width(mask[eyes_y, :eyes_x]) >= their_width
        assert transition_width(mask[eyes_y, eyes_x:][::-1]) >= transition_width(theirs[eyes_y, eyes_x:][::-1])

    # The seam on the real photo: the restored face is the crop, 40 levels brighter (a typical colour
    # shift of a restored face). The gradient of what the paste changed, across the mask's edge.
    crop = warp_to_template(astronaut, matrix)
    brighter = np.clip(crop.astype(int) + 40, 0, 255).astype(np.uint8)
    background = resize_background(astronaut, scale).astype(np.float32)
    their_change = facexlib_paste(astronaut, brighter, matrix, scale, region) - background
    for name, mask in (("parsing", parsed_mask), ("ellipse", ellipse_mask())):
        our_change = paste_faces(background.astype(np.uint8), brighter[None], mask[None], [matrix], scale) - background
        edge = ((theirs > 0.02) & (theirs < 0.98)) | ((ours[name] > 0.02) & (ours[name] < 0.98))
        assert edge.sum() > 1000
        our_seam, their_seam = np.percentile(gradient(our_change)[edge], 99), np.percentile(gradient(their_change)[edge], 99)
        assert our_seam <= their_seam * 1.05, (name, our_seam, their_seam)


def test_the_feather_scales_with_the_face(astronaut, face):
    assert feather_sigma(512) >= FACEXLIB_SIGMA_512 and feather_sigma(1024) == 2 * feather_sigma(512)
    matrix = alignment_matrix(face.landmarks)
    white = np.full((1, 512, 512, 3), 255, np.uint8)
    widths = []
    for scale in (1, 3):
        black = np.zeros((512 * scale, 512 * scale, 3), np.uint8)
        mask = paste_faces(black, white, ellipse_mask()[None], [matrix], scale)[:, :, 0] / 255
        eyes_y, eyes_x = (face.landmarks[:2].mean(axis=0) * scale + (scale - 1) / 2).round().astype(int)[::-1]
        widths.append(transition_width(mask[eyes_y, :eyes_x]))
    assert widths[1] == pytest.approx(3 * widths[0], rel=0.2)
