"""Whole-photo restoration: alignment round trip, paste-back, face selection, CLI outputs, weights loading.

Detections are stubbed (random detector weights find no real faces) and the model is a stub that paints
faces a known colour; the weight loaders are exercised with random state dicts saved in tmp_path.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from utils.images import read_rgb
from whole_image import weights as weights_module
from whole_image.align import (
    FFHQ_TEMPLATE_512,
    alignment_matrix,
    inverse_matrix,
    warp_from_template,
    warp_to_template,
)
from whole_image.cli import add_whole_image_arguments, load_tools, run_whole_image
from whole_image.detect import (
    DetectedFace,
    RetinaFaceDetector,
    build_retinaface,
    load_retinaface,
    select_faces,
)
from whole_image.paste import FaceParser, build_parsenet, ellipse_mask, load_face_parser
from whole_image.pipeline import NoFaceWarning, restore_photo
from whole_image.upsample import RealESRGANUpsampler, build_rrdbnet_x2, load_realesrgan, resize_background
from whole_image.weights import DETECTOR_FILE, PARSER_FILE, REALESRGAN_FILE, MissingWeightsError

GREEN = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may reach the network: every library download fails as it would offline."""

    def fail(url, folder, file_name):
        raise OSError("network is unreachable")

    monkeypatch.setitem(weights_module.DOWNLOADERS, "facexlib", fail)
    monkeypatch.setitem(weights_module.DOWNLOADERS, "basicsr", fail)


def landmarks_at(center_xy, eye_distance: float, angle_deg: float = 0.0) -> np.ndarray:
    """Five landmarks of a face: the FFHQ template rotated, scaled and moved so that its eyes' midpoint
    sits at `center_xy` with `eye_distance` pixels between the eyes."""
    template = FFHQ_TEMPLATE_512 - FFHQ_TEMPLATE_512[:2].mean(axis=0)
    scale = eye_distance / np.linalg.norm(FFHQ_TEMPLATE_512[1] - FFHQ_TEMPLATE_512[0])
    angle = math.radians(angle_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return template @ rotation.T * scale + np.asarray(center_xy, dtype=np.float64)


def face_at(center_xy, eye_distance: float, angle_deg: float = 0.0, score: float = 0.99) -> DetectedFace:
    landmarks = landmarks_at(center_xy, eye_distance, angle_deg)
    half = eye_distance * 1.2
    box = np.array([center_xy[0] - half, center_xy[1] - half, center_xy[0] + half, center_xy[1] + 1.6 * half])
    return DetectedFace(box=box, landmarks=landmarks, score=score)


def textured_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth, varied content (so warps can be compared) with no green anywhere near pure green."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (max(2, height // 8), max(2, width // 8), 3)).astype(np.float32)
    smooth = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    smooth[:, :, 1] *= 0.4
    return np.clip(smooth, 0, 255).astype(np.uint8)


class StubDetector:
    """Returns fixed detections, chosen by the photo's size; records the images it saw."""

    def __init__(self, faces_by_size: dict[tuple[int, int], list[DetectedFace]] | list[DetectedFace]):
        self.faces_by_size = faces_by_size
        self.seen = []

    def detect(self, image):
        self.seen.append(image)
        if isinstance(self.faces_by_size, list):
            return list(self.faces_by_size)
        return list(self.faces_by_size.get(image.shape[:2], []))


class PaintGreen:
    """Stub model: every face becomes pure green; remembers the batches it got."""

    def __init__(self):
        self.batches = []

    def __call__(self, faces: torch.Tensor) -> torch.Tensor:
        self.batches.append(faces.clone())
        return GREEN.expand_as(faces).clone()


def is_green(pixel) -> bool:
    return pixel[1] > 200 and pixel[0] < 60 and pixel[2] < 60


# ---------------------------------------------------------------- alignment


def test_alignment_matrix_recovers_the_similarity_that_made_the_landmarks():
    landmarks = landmarks_at((70.0, 50.0), eye_distance=30.0, angle_deg=20.0)
    matrix = alignment_matrix(landmarks)
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, FFHQ_TEMPLATE_512, atol=1e-3)
    # A similarity: equal column norms and orthogonal columns; eyes 30 px apart become ~126 px apart.
    a, b = matrix[:, 0], matrix[:, 1]
    assert abs(np.dot(a, b)) < 1e-6 and abs(np.linalg.norm(a) - np.linalg.norm(b)) < 1e-6
    assert np.linalg.norm(a) == pytest.approx(
        np.linalg.norm(FFHQ_TEMPLATE_512[1] - FFHQ_TEMPLATE_512[0]) / 30.0, rel=1e-4
    )


def test_degenerate_landmarks_are_refused():
    with pytest.raises(ValueError, match="degenerate"):
        alignment_matrix(np.full((5, 2), 10.0))


@pytest.mark.parametrize("scale", [1.0, 2.0, 3.0])
def test_inverse_warp_puts_the_crop_back_where_it_came_from(scale):
    photo = textured_photo(120, 160)
    nose = (100, 64)
    landmarks = landmarks_at((97.0, 52.0), eye_distance=36.0, angle_deg=-12.0)
    landmarks[2] = nose  # a marker at a known spot must come back to the same spot
    photo = photo.copy()
    cv2.circle(photo, nose, 3, (255, 255, 255), thickness=-1)
    matrix = alignment_matrix(landmarks)
    crop = warp_to_template(photo, matrix)
    height, width = round(120 * scale), round(160 * scale)
    back = warp_from_template(crop, inverse_matrix(matrix, scale), height, width)
    covered = warp_from_template(ellipse_mask(), inverse_matrix(matrix, scale), height, width) > 0.99
    reference = resize_background(photo, scale)
    assert covered.sum() > 0.05 * height * width
    error = np.abs(back.astype(np.float32) - reference.astype(np.float32))[covered]
    assert error.mean() < 1.5, error.mean()  # half a pixel off would give ~3
    # The marker's centre, in output pixels, is white in both.
    x, y = (np.array(nose) * scale + (scale - 1) / 2).round().astype(int)
    assert back[y, x].min() > 200 and reference[y, x].min() > 200


def test_crop_follows_the_template():
    photo = np.zeros((100, 100, 3), np.uint8)
    landmarks = landmarks_at((50.0, 45.0), eye_distance=25.0, angle_deg=30.0)
    for x, y in landmarks.round().astype(int):
        cv2.circle(photo, (int(x), int(y)), 1, (255, 255, 255), thickness=-1)
    crop = warp_to_template(photo, alignment_matrix(landmarks))
    for x, y in FFHQ_TEMPLATE_512.round().astype(int):
        assert crop[y, x].min() > 128


# ---------------------------------------------------------------- selection


def test_select_faces_largest_first_and_center():
    small = face_at((20, 20), 10)
    large = face_at((90, 70), 30)
    middle = face_at((64, 48), 16)
    assert select_faces([small, large, middle], 96, 128) == [large, middle, small]
    assert select_faces([small, large, middle], 96, 128, max_faces=2) == [large, middle]
    assert select_faces([small, large, middle], 96, 128, only_center_face=True) == [middle]
    assert select_faces([], 96, 128, only_center_face=True) == []


# ---------------------------------------------------------------- pipeline


def test_several_faces_are_restored_in_one_batch_and_pasted():
    photo = textured_photo(96, 160)
    faces = [face_at((30, 36), 14), face_at((80, 40), 18, angle_deg=10), face_at((130, 44), 12, angle_deg=-8)]
    model = PaintGreen()
    result = restore_photo(photo, model, StubDetector(faces), upscale=2.0)
    assert len(model.batches) == 1 and model.batches[0].shape == (3, 3, 512, 512)
    assert 0.0 <= model.batches[0].min() and model.batches[0].max() <= 1.0
    assert result.restored_image.shape == (192, 320, 3) and result.restored_image.dtype == np.uint8
    assert len(result.cropped_faces) == len(result.restored_faces) == 3
    for face in faces:
        x, y = (face.landmarks[2] * 2 + 0.5).round().astype(int)  # nose, in output pixels
        assert is_green(result.restored_image[y, x]), face.landmarks[2]
    background = resize_background(photo, 2.0)
    # Corners are far from every face: untouched.
    for y, x in [(2, 2), (2, 317), (189, 2), (189, 317)]:
        np.testing.assert_array_equal(result.restored_image[y, x], background[y, x])
    changed = np.any(result.restored_image != background, axis=2)
    assert 0.03 < changed.mean() < 0.6


def test_one_face_photo_at_scale_one():
    photo = textured_photo(96, 128, seed=3)
    face = face_at((64, 40), 20)
    result = restore_photo(photo, PaintGreen(), StubDetector([face]), upscale=1.0)
    assert result.restored_image.shape == photo.shape
    x, y = face.landmarks[2].round().astype(int)
    assert is_green(result.restored_image[y, x])
    np.testing.assert_array_equal(result.restored_image[:5, :5], photo[:5, :5])
    assert result.faces == [face]


def test_no_face_photo_is_copied_through_resized_with_a_warning():
    photo = textured_photo(40, 60)
    model = PaintGreen()
    with pytest.warns(NoFaceWarning, match="beach.png: no face detected"):
        result = restore_photo(photo, model, StubDetector([]), upscale=2.0, name="beach.png")
    assert model.batches == []
    np.testing.assert_array_equal(result.restored_image, resize_background(photo, 2.0))
    assert result.restored_image.shape == (80, 120, 3)
    assert result.cropped_faces == [] and result.restored_faces == []


def test_gray_and_rgba_photos():
    photo = textured_photo(64, 80)
    face = face_at((40, 28), 16)
    rgb = restore_photo(photo, PaintGreen(), StubDetector([face]), upscale=1.5).restored_image
    rgba = np.concatenate([photo, np.full((64, 80, 1), 90, np.uint8)], axis=2)
    from_rgba = restore_photo(rgba, PaintGreen(), StubDetector([face]), upscale=1.5).restored_image
    np.testing.assert_array_equal(from_rgba, rgb)
    gray = photo[:, :, 0]
    detector = StubDetector([face])
    from_gray = restore_photo(gray, PaintGreen(), detector, upscale=1.5).restored_image
    assert from_gray.shape == (96, 120, 3)
    assert detector.seen[0].shape == (64, 80, 3)  # the detector always gets RGB
    x, y = (face.landmarks[2] * 1.5 + 0.25).round().astype(int)
    assert is_green(from_gray[y, x])
    corner = from_gray[0, 0]  # background far from the face: still gray
    assert corner[0] == corner[1] == corner[2]


def test_only_center_face_and_max_faces_limit_the_batch():
    photo = textured_photo(96, 160)
    faces = [face_at((24, 30), 12), face_at((80, 48), 14), face_at((136, 40), 22)]
    model = PaintGreen()
    centre = restore_photo(photo, model, StubDetector(faces), upscale=1.0, only_center_face=True)
    assert model.batches[-1].shape[0] == 1 and centre.faces == [faces[1]]
    two = restore_photo(photo, model, StubDetector(faces), upscale=1.0, max_faces=2)
    assert model.batches[-1].shape[0] == 2 and two.faces == [faces[2], faces[1]]
    x, y = faces[0].landmarks[2].round().astype(int)
    assert not is_green(two.restored_image[y, x])  # the smallest face was left alone


def test_restorer_must_keep_the_shape():
    with pytest.raises(ValueError, match="restore_faces returned shape"):
        restore_photo(
            textured_photo(64, 64), lambda x: x[:, :, ::2, ::2], StubDetector([face_at((32, 28), 16)])
        )


# ---------------------------------------------------------------- command line


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """The lead's inference.py arguments that run_whole_image reads, plus ours."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--lq_data_path")
    parser.add_argument("--output_dir")
    parser.add_argument("--device", default="cpu")
    add_whole_image_arguments(parser)
    return parser.parse_args(argv)


def test_cli_arguments_and_defaults():
    args = parse_cli(["--whole_image"])
    assert args.whole_image and args.upscale == 2.0 and args.max_faces is None and not args.only_center_face
    assert args.bg_upsampler == "none" and args.face_mask == "parsing" and args.bg_tile == 400
    for bad in (["--upscale", "0"], ["--max_faces", "0"], ["--bg_upsampler", "esrgan"], ["--bg_tile", "-1"]):
        with pytest.raises(SystemExit):
            parse_cli(bad)


def test_cli_writes_the_four_folders(tmp_path, capsys):
    inputs = tmp_path / "photos"
    inputs.mkdir()
    Image.fromarray(textured_photo(96, 128)).save(inputs / "family.png")
    Image.fromarray(textured_photo(48, 64, seed=1)[:, :, 0]).save(inputs / "landscape.jpg")  # gray, no face
    (inputs / "broken.png").write_bytes(b"not a png")
    (inputs / "notes.txt").write_text("ignored")
    detector = StubDetector({(96, 128): [face_at((40, 40), 16), face_at((92, 44), 20)]})
    model = PaintGreen()
    out = tmp_path / "out"
    args = parse_cli(
        ["--whole_image", "--lq_data_path", str(inputs), "--output_dir", str(out), "--face_mask", "ellipse"]
    )
    written = run_whole_image(args, model, detector=detector)

    assert [path.name for path in written] == ["family.png", "landscape.jpg"]
    assert len(model.batches) == 1 and model.batches[0].shape[0] == 2  # one batch per photo with faces
    names = {
        folder: sorted(p.name for p in (out / folder).iterdir())
        for folder in ("cropped_faces", "restored_faces", "cmp", "restored_imgs")
    }
    assert names["cropped_faces"] == names["restored_faces"] == ["family_00.png", "family_01.png"]
    assert names["cmp"] == names["restored_imgs"] == ["family.png", "landscape.jpg"]
    assert read_rgb(out / "restored_imgs" / "family.png").shape == (192, 256, 3)
    assert read_rgb(out / "cmp" / "family.png").shape == (192, 512, 3)
    assert read_rgb(out / "restored_imgs" / "landscape.jpg").shape == (96, 128, 3)
    assert read_rgb(out / "cropped_faces" / "family_00.png").shape == (512, 512, 3)
    assert is_green(read_rgb(out / "restored_faces" / "family_01.png")[256, 256])
    # family_00 is the largest face (the one at x=92).
    np.testing.assert_array_equal(
        read_rgb(out / "cropped_faces" / "family_00.png"),
        detector_crop(inputs / "family.png", detector.faces_by_size[(96, 128)][1]),
    )
    printed = capsys.readouterr()
    assert "landscape.jpg: no face detected" in printed.out + printed.err
    assert "broken.png" in printed.out and "unreadable" in printed.out
    assert sorted(p.name for p in inputs.iterdir()) == [
        "broken.png",
        "family.png",
        "landscape.jpg",
        "notes.txt",
    ]


def detector_crop(path: Path, face: DetectedFace) -> np.ndarray:
    return warp_to_template(read_rgb(path), alignment_matrix(face.landmarks))


def test_cli_never_writes_into_the_input_folder(tmp_path):
    inputs = tmp_path / "restored_imgs"
    inputs.mkdir()
    Image.fromarray(textured_photo(32, 32)).save(inputs / "a.png")
    before = (inputs / "a.png").read_bytes()
    args = parse_cli(["--lq_data_path", str(inputs), "--output_dir", str(tmp_path), "--face_mask", "ellipse"])
    with pytest.raises(SystemExit, match="holds the inputs"):
        run_whole_image(args, PaintGreen(), detector=StubDetector([]))
    assert (inputs / "a.png").read_bytes() == before


def test_cli_single_file_and_same_stems(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("x.png", "x.bmp"):
        Image.fromarray(textured_photo(64, 64)).save(inputs / name)
    args = parse_cli(
        [
            "--lq_data_path",
            str(inputs),
            "--output_dir",
            str(tmp_path / "o"),
            "--face_mask",
            "ellipse",
            "--upscale",
            "1",
        ]
    )
    run_whole_image(args, PaintGreen(), detector=StubDetector([face_at((32, 28), 16)]))
    assert sorted(p.name for p in (tmp_path / "o" / "restored_faces").iterdir()) == [
        "x_bmp_00.png",
        "x_png_00.png",
    ]
    args = parse_cli(
        [
            "--lq_data_path",
            str(inputs / "x.png"),
            "--output_dir",
            str(tmp_path / "one"),
            "--face_mask",
            "ellipse",
        ]
    )
    assert [p.name for p in run_whole_image(args, PaintGreen(), detector=StubDetector([]))] == ["x.png"]


# ---------------------------------------------------------------- weights


def save_random_state(
    network: torch.nn.Module, path: Path, prefix: str = "", wrapper: str | None = None
) -> dict:
    state = {prefix + key: value.clone() for key, value in network.state_dict().items()}
    torch.save({wrapper: state} if wrapper else state, path)
    return network.state_dict()


@pytest.mark.slow
def test_retinaface_loads_from_a_local_file(tmp_path):
    source = build_retinaface("cpu")
    torch.nn.init.normal_(source.fpn.output1[0].weight)  # differs from a fresh network's init
    expected = save_random_state(
        source, tmp_path / DETECTOR_FILE, prefix="module."
    )  # saved through DataParallel
    detector = load_retinaface(tmp_path, device="cpu", threshold=0.5)
    assert isinstance(detector, RetinaFaceDetector)
    for key, value in detector.network.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    found = detector.detect(textured_photo(64, 80))
    assert all(isinstance(face, DetectedFace) and face.landmarks.shape == (5, 2) for face in found)
    assert all(face.score > 0.5 for face in found)


def test_face_weights_folder_from_the_environment(tmp_path, monkeypatch):
    save_random_state(build_retinaface("cpu"), tmp_path / DETECTOR_FILE)
    monkeypatch.setenv("PMRF_FACE_WEIGHTS", str(tmp_path))
    assert isinstance(load_retinaface(None, device="cpu"), RetinaFaceDetector)


@pytest.mark.slow
def test_parser_loads_and_gives_soft_masks(tmp_path):
    expected = save_random_state(build_parsenet(), tmp_path / PARSER_FILE)
    parser = load_face_parser(tmp_path, device="cpu")
    assert isinstance(parser, FaceParser)
    for key, value in parser.network.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    masks = parser.masks(np.stack([textured_photo(512, 512)]))
    assert masks.shape == (1, 512, 512) and masks.dtype == np.float32
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    assert masks[0, :5].max() == 0.0 and masks[0, :, -5:].max() == 0.0  # never reaches the crop's border


@pytest.mark.slow
def test_realesrgan_loads_params_ema_and_upscales(tmp_path):
    save_random_state(build_rrdbnet_x2(), tmp_path / REALESRGAN_FILE, wrapper="params_ema")
    upsampler = load_realesrgan(tmp_path, device="cpu", tile=8)
    out = upsampler(textured_photo(11, 14), 3.0)  # odd size and two tiles a side
    assert out.shape == (33, 42, 3) and out.dtype == np.uint8


def test_realesrgan_tiles_join_without_seams():
    upsampler = RealESRGANUpsampler(torch.nn.Upsample(scale_factor=2, mode="nearest"), tile=7, tile_pad=2)
    photo = textured_photo(23, 31)
    expected = photo.repeat(2, axis=0).repeat(2, axis=1)
    np.testing.assert_array_equal(upsampler.upscale_x2(photo), expected)
    upsampler.tile = 0
    np.testing.assert_array_equal(upsampler.upscale_x2(photo), expected)


def test_missing_detector_weights_name_the_file_and_folder(tmp_path):
    with pytest.raises(MissingWeightsError) as caught:
        load_retinaface(tmp_path / "empty", device="cpu")
    message = str(caught.value)
    assert DETECTOR_FILE in message and str((tmp_path / "empty").resolve()) in message
    assert "network is unreachable" in message and "\n" not in message
    args = parse_cli(["--face_weights_dir", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match=DETECTOR_FILE):
        load_tools(args, "cpu")


def test_missing_parser_weights_fall_back_to_the_ellipse(tmp_path):
    with pytest.warns(UserWarning, match=PARSER_FILE):
        assert load_face_parser(tmp_path, device="cpu") is None


def test_missing_realesrgan_weights_end_the_program(tmp_path):
    args = parse_cli(
        ["--bg_upsampler", "realesrgan", "--realesrgan_weights_dir", str(tmp_path), "--face_mask", "ellipse"]
    )
    with pytest.raises(SystemExit, match=REALESRGAN_FILE):
        load_tools(args, "cpu", detector=StubDetector([]))


def test_a_successful_download_is_used(tmp_path, monkeypatch):
    def fake_download(url, folder, file_name):
        assert url.endswith("/" + DETECTOR_FILE)
        folder.mkdir(parents=True, exist_ok=True)
        save_random_state(build_retinaface("cpu"), folder / file_name)

    monkeypatch.setitem(weights_module.DOWNLOADERS, "facexlib", fake_download)
    assert isinstance(load_retinaface(tmp_path / "fresh", device="cpu"), RetinaFaceDetector)
    assert (tmp_path / "fresh" / DETECTOR_FILE).is_file()


def test_a_checkpoint_of_the_wrong_network_is_a_clear_error(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / DETECTOR_FILE)
    with pytest.raises(ValueError, match=f"{DETECTOR_FILE}: does not fit RetinaFace"):
        load_retinaface(tmp_path, device="cpu")


def test_weight_files_are_read_without_unpickling_code(tmp_path):
    torch.save({"x": argparse.Namespace(anything=1)}, tmp_path / DETECTOR_FILE)  # arbitrary pickled object
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="cannot read checkpoint"):
            load_retinaface(tmp_path, device="cpu")
