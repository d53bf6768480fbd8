"""Whole-photo restoration: alignment round trip, paste-back, face selection, detection frame, CLI
outputs, weights loading.

Detections are stubbed (random detector weights find no real faces) and the model is a stub that paints
faces a known colour; the weight loaders are exercised with random state dicts saved in tmp_path.
Tests on a real photograph with the real MTCNN are in test_whole_image_photo.py.
"""

from __future__ import annotations

import argparse
import types
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import StubDetector, face_at, landmarks_at, textured_photo
from helpers import parse_whole_photo_options as parse_cli
from helpers import whole_photo_parser as cli_parser
from PIL import Image

from utils.images import InputError, read_image, read_rgb
from utils.registry import WEIGHTS
from utils.weights import MissingWeightsError, WeightsReadError
from whole_image.align import (
    FFHQ_TEMPLATE_512,
    alignment_matrix,
    inverse_matrix,
    warp_from_template,
    warp_to_template,
)
from whole_image.cli import WholeImageOptions, add_whole_image_arguments, run_whole_image
from whole_image.detect import (
    DetectedFace,
    RetinaFaceDetector,
    build_retinaface,
    detection_scale,
    find_faces,
    load_retinaface,
    select_faces,
)
from whole_image.paste import FaceParser, build_parsenet, ellipse_mask, load_face_parser
from whole_image.pipeline import NoFaceWarning, restore_photo
from whole_image.tools import load_tools
from whole_image.upsample import RealESRGANUpsampler, build_rrdbnet_x2, load_realesrgan, resize_background

DETECTOR_FILE, PARSER_FILE, REALESRGAN_FILE = (WEIGHTS[name].file for name in ("retinaface", "parsenet", "realesrgan_x2plus"))
GREEN = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)


pytestmark = pytest.mark.usefixtures("offline")


def stub_for(photo: np.ndarray, faces: list[DetectedFace]) -> StubDetector:
    return StubDetector({photo.shape[:2]: faces})


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
    result = restore_photo(photo, model, stub_for(photo, faces), upscale=2.0)
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
    result = restore_photo(photo, PaintGreen(), stub_for(photo, [face]), upscale=1.0)
    assert result.restored_image.shape == photo.shape
    x, y = face.landmarks[2].round().astype(int)
    assert is_green(result.restored_image[y, x])
    np.testing.assert_array_equal(result.restored_image[:5, :5], photo[:5, :5])
    assert len(result.faces) == 1
    np.testing.assert_allclose(result.faces[0].landmarks, face.landmarks, atol=1e-6)


def test_no_face_photo_is_copied_through_resized_with_a_warning():
    photo = textured_photo(40, 60)
    model = PaintGreen()
    with pytest.warns(NoFaceWarning, match="beach.png: no face detected"):
        result = restore_photo(photo, model, StubDetector([]), upscale=2.0, name="beach.png")
    assert model.batches == []
    np.testing.assert_array_equal(result.restored_image, resize_background(photo, 2.0))
    assert result.restored_image.shape == (80, 120, 3)
    assert result.cropped_faces == [] and result.restored_faces == []


def same_faces(found: list[DetectedFace], expected: list[DetectedFace]) -> bool:
    """The same faces in the same order (landmarks mapped back from the detection frame to 1e-6 px)."""
    return len(found) == len(expected) and all(
        np.allclose(a.landmarks, b.landmarks, atol=1e-6) for a, b in zip(found, expected)
    )


def test_rgba_photo_keeps_its_alpha_channel():
    photo = textured_photo(64, 80)
    face = face_at((40, 28), 16)
    rgb = restore_photo(photo, PaintGreen(), stub_for(photo, [face]), upscale=1.5).restored_image
    alpha = np.tile(np.linspace(0, 255, 80).astype(np.uint8), (64, 1))  # a left-to-right fade
    rgba = np.concatenate([photo, alpha[:, :, None]], axis=2)
    from_rgba = restore_photo(rgba, PaintGreen(), stub_for(photo, [face]), upscale=1.5).restored_image
    assert from_rgba.shape == (96, 120, 4)
    np.testing.assert_array_equal(from_rgba[:, :, :3], rgb)  # faces pasted on the RGB photo
    np.testing.assert_array_equal(from_rgba[:, :, 3], cv2.resize(alpha, (120, 96), interpolation=cv2.INTER_LINEAR))
    assert from_rgba[:, 0, 3].max() < 10 and from_rgba[:, -1, 3].min() > 245


def test_gray_photo_gives_a_gray_result_faces_included():
    photo = textured_photo(64, 80)
    face = face_at((40, 28), 16)
    gray = photo[:, :, 0]
    detector = stub_for(photo, [face])
    model = PaintGreen()  # the model colours the face: the result must still be gray
    result = restore_photo(gray, model, detector, upscale=1.5)
    assert result.gray and result.restored_image.shape == (96, 120, 3)
    assert detector.seen[0].shape == (512, 640, 3)  # the detector always gets RGB (enlarged: see below)
    assert len(model.batches) == 1
    image = result.restored_image.astype(int)
    assert np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 1], image[:, :, 2])
    x, y = (face.landmarks[2] * 1.5 + 0.25).round().astype(int)
    assert abs(image[y, x, 0] - 0.587 * 255) < 1.5  # the green face, as gray (BT.601 luma)
    for crop in result.cropped_faces + result.restored_faces:
        assert np.array_equal(crop[:, :, 0], crop[:, :, 2]) and np.array_equal(crop[:, :, 0], crop[:, :, 1])
    background = resize_background(np.repeat(gray[:, :, None], 3, axis=2), 1.5)
    np.testing.assert_array_equal(image[:4, :4], background[:4, :4])  # far from the face: the photo itself


# ---------------------------------------------------------------- detection frame


def test_small_photos_are_enlarged_for_detection_and_landmarks_mapped_back():
    photo = textured_photo(200, 300)
    face = face_at((150.0, 90.0), 30.0, angle_deg=7)
    detector = stub_for(photo, [face])
    found = find_faces(photo, detector)
    assert detector.seen[0].shape == (512, 768, 3)  # short side 200 -> 512
    assert len(found) == 1
    np.testing.assert_allclose(found[0].landmarks, face.landmarks, atol=1e-6)
    np.testing.assert_allclose(found[0].box, face.box, atol=1e-6)
    # A photo already big enough is shown as it is; a huge one is reduced, short side kept >= 512.
    assert detection_scale(512, 900) == 1.0
    assert detection_scale(600, 8000) == pytest.approx(512 / 600)
    assert detection_scale(3000, 4000) == pytest.approx(2048 / 4000)


def test_faces_with_eyes_under_5_px_in_the_detection_frame_are_ignored():
    photo = textured_photo(600, 800)  # no enlargement: the frame is the photo
    tiny, small, fine = face_at((100, 100), 4.9), face_at((300, 100), 5.1), face_at((500, 300), 40)
    detector = StubDetector({(600, 800): [tiny, small, fine]})
    found = find_faces(photo, detector)
    assert same_faces(found, [small, fine])
    # In a small photo the frame is enlarged 4x: 2 px eyes become 8 px and count; 1 px eyes do not.
    little = textured_photo(128, 160)
    two, one = face_at((40, 40), 2.0), face_at((120, 40), 1.0)
    found = find_faces(little, stub_for(little, [two, one]))
    assert same_faces(found, [two])
    result = restore_photo(photo, PaintGreen(), detector, upscale=1.0)
    assert len(result.faces) == 2 and len(result.restored_faces) == 2


def test_only_center_face_and_max_faces_limit_the_batch():
    photo = textured_photo(96, 160)
    faces = [face_at((24, 30), 12), face_at((80, 48), 14), face_at((136, 40), 22)]
    model = PaintGreen()
    centre = restore_photo(photo, model, stub_for(photo, faces), upscale=1.0, only_center_face=True)
    assert model.batches[-1].shape[0] == 1 and same_faces(centre.faces, [faces[1]])
    two = restore_photo(photo, model, stub_for(photo, faces), upscale=1.0, max_faces=2)
    assert model.batches[-1].shape[0] == 2 and same_faces(two.faces, [faces[2], faces[1]])
    x, y = faces[0].landmarks[2].round().astype(int)
    assert not is_green(two.restored_image[y, x])  # the smallest face was left alone


def test_restorer_must_keep_the_shape():
    with pytest.raises(ValueError, match="restore_faces returned shape"):
        restore_photo(
            textured_photo(64, 64), lambda x: x[:, :, ::2, ::2], stub_for(textured_photo(64, 64), [face_at((32, 28), 16)])
        )


# ---------------------------------------------------------------- command line


def test_cli_arguments_and_defaults():
    args = cli_parser().parse_args(["--whole_image", "--lq_data_path", "a", "--output_dir", "b"])
    options = WholeImageOptions.from_args(args)
    assert args.whole_image and options.upscale == 2.0 and options.max_faces is None
    assert options.detector == "auto" and options.detection_threshold == 0.97 and not options.save_mmse
    assert options.bg_upsampler == "none" and options.face_mask == "parsing" and options.bg_tile == 400
    assert (options.suffix, options.ext, options.jpeg_quality) == (None, "auto", 75)
    assert options.lq_data_path == Path("a") and options.output_dir == Path("b")
    assert parse_cli(["-s", "3.5"]).upscale == 3.5 and parse_cli(["--upscale", "1"]).upscale == 1.0
    assert parse_cli(["--detector", "mtcnn"]).detector == "mtcnn"
    for bad in (
        ["--upscale", "0"],
        ["-s", "17"],
        ["-s", "nan"],
        ["--max_faces", "0"],
        ["--max_faces", "1.5"],
        ["--detection_threshold", "1.5"],
        ["--jpeg_quality", "0"],
        ["--bg_upsampler", "esrgan"],
        ["--bg_tile", "-1"],
        ["--detector", "dlib"],
        ["--ext", "gif"],
    ):
        with pytest.raises(SystemExit):
            cli_parser().parse_args(bad)


def test_options_check_their_values_when_built_directly():
    with pytest.raises(ValueError, match="upscale"):
        WholeImageOptions("in", "out", upscale=0.0)
    with pytest.raises(ValueError, match="detector"):
        WholeImageOptions("in", "out", detector="dlib")


def test_output_options_can_be_left_to_the_program():
    parser = argparse.ArgumentParser()
    parser.add_argument("--suffix")  # the program's own --suffix/--ext/--jpeg_quality
    add_whole_image_arguments(parser, output_arguments=False)
    assert not any(action.dest == "jpeg_quality" for action in parser._actions)


def test_cli_writes_the_folders(tmp_path, capsys):
    inputs = tmp_path / "photos"
    inputs.mkdir()
    Image.fromarray(textured_photo(96, 128)).save(inputs / "family.png")
    Image.fromarray(textured_photo(48, 80, seed=1)[:, :, 0]).save(inputs / "landscape.jpg")  # gray, no face
    (inputs / "broken.png").write_bytes(b"not a png")
    (inputs / "notes.txt").write_text("ignored")
    detector = StubDetector({(96, 128): [face_at((40, 40), 16), face_at((92, 44), 20)]})
    model = PaintGreen()
    out = tmp_path / "out"
    options = parse_cli(["--lq_data_path", str(inputs), "--output_dir", str(out), "--face_mask", "ellipse"])
    written = run_whole_image(options, model, "cpu", detector=detector)

    assert [path.name for path in written] == ["family.png", "landscape.jpg"]
    assert len(model.batches) == 1 and model.batches[0].shape[0] == 2  # one batch per photo with faces
    names = {folder.name: sorted(p.name for p in folder.iterdir()) for folder in out.iterdir()}
    assert names == {
        "cropped_faces": ["family_00.png", "family_01.png"],
        "restored_faces": ["family_00.png", "family_01.png"],
        "cmp": ["family_00.png", "family_01.png", "family_photo.png", "landscape_photo.jpg"],
        "restored_imgs": ["family.png", "landscape.jpg"],
    }
    assert read_rgb(out / "restored_imgs" / "family.png").shape == (192, 256, 3)
    assert read_rgb(out / "cmp" / "family_photo.png").shape == (192, 512, 3)  # input | restored
    assert read_rgb(out / "restored_imgs" / "landscape.jpg").shape == (96, 160, 3)
    assert read_rgb(out / "cropped_faces" / "family_00.png").shape == (512, 512, 3)
    assert is_green(read_rgb(out / "restored_faces" / "family_01.png")[256, 256])
    # One comparison per face, as GFPGAN writes them: cropped | restored.
    face_cmp = read_rgb(out / "cmp" / "family_00.png")
    assert face_cmp.shape == (512, 1024, 3)
    np.testing.assert_array_equal(face_cmp[:, :512], read_rgb(out / "cropped_faces" / "family_00.png"))
    np.testing.assert_array_equal(face_cmp[:, 512:], read_rgb(out / "restored_faces" / "family_00.png"))
    # family_00 is the largest face (the one at x=92).
    crop = read_rgb(out / "cropped_faces" / "family_00.png")
    expected = detector_crop(inputs / "family.png", detector.faces_by_size[(96, 128)][1])
    assert np.abs(crop.astype(int) - expected).max() <= 1
    printed = capsys.readouterr()
    assert "landscape.jpg: no face detected" in printed.out + printed.err
    assert "broken.png" in printed.out and "unreadable" in printed.out
    assert sorted(p.name for p in inputs.iterdir()) == ["broken.png", "family.png", "landscape.jpg", "notes.txt"]


def detector_crop(path: Path, face: DetectedFace) -> np.ndarray:
    return warp_to_template(read_rgb(path), alignment_matrix(face.landmarks))


def test_suffix_ext_and_jpeg_quality_name_and_encode_the_photos(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    photo = textured_photo(96, 128)
    Image.fromarray(photo).save(inputs / "family.png")
    detector = StubDetector({(96, 128): [face_at((60, 40), 20)]})
    sizes = {}
    for quality in (20, 95):
        out = tmp_path / f"q{quality}"
        argv = ["--lq_data_path", str(inputs), "--output_dir", str(out), "--face_mask", "ellipse"]
        argv += ["--suffix", "pmrf", "--ext", "jpg", "--jpeg_quality", str(quality), "-s", "1"]
        written = run_whole_image(parse_cli(argv), PaintGreen(), "cpu", detector=detector)
        assert [p.name for p in written] == ["family_pmrf.jpg"]
        assert sorted(p.name for p in (out / "restored_faces").iterdir()) == ["family_00_pmrf.png"]
        assert sorted(p.name for p in (out / "cropped_faces").iterdir()) == ["family_00.png"]
        assert sorted(p.name for p in (out / "cmp").iterdir()) == ["family_00.png", "family_photo.jpg"]
        with Image.open(written[0]) as image:
            assert image.format == "JPEG" and image.size == (128, 96)
        sizes[quality] = written[0].stat().st_size
    assert sizes[20] < sizes[95]


class GreenWithPosteriorMean(PaintGreen):
    """Stub FaceRestorer: PMRF paints faces green, the posterior mean paints them red."""

    has_posterior_mean = True

    def restore(self, faces):  # what FaceRestorer.restore gives: .xhat and .posterior_mean
        red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand_as(faces).clone()
        return types.SimpleNamespace(xhat=self(faces), posterior_mean=red)


def test_save_mmse_writes_the_posterior_mean_faces_and_photos(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(textured_photo(96, 128)).save(inputs / "family.png")
    Image.fromarray(textured_photo(40, 40, seed=2)).save(inputs / "wall.png")
    detector = StubDetector({(96, 128): [face_at((40, 40), 16), face_at((92, 44), 20)]})
    out = tmp_path / "out"
    argv = ["--lq_data_path", str(inputs), "--output_dir", str(out), "--face_mask", "ellipse", "--save_mmse"]
    run_whole_image(parse_cli(argv), GreenWithPosteriorMean(), "cpu", detector=detector)
    assert sorted(p.name for p in (out / "restored_faces_posterior_mean").iterdir()) == [
        "family_00.png",
        "family_01.png",
    ]
    assert sorted(p.name for p in (out / "restored_imgs_posterior_mean").iterdir()) == ["family.png", "wall.png"]
    face = read_rgb(out / "restored_faces_posterior_mean" / "family_01.png")[256, 256]
    assert face[0] > 200 and face[1] < 60  # red: the posterior mean
    pmrf = read_rgb(out / "restored_imgs" / "family.png")
    mean = read_rgb(out / "restored_imgs_posterior_mean" / "family.png")
    x, y = (detector.faces_by_size[(96, 128)][1].landmarks[2] * 2 + 0.5).round().astype(int)
    assert is_green(pmrf[y, x]) and mean[y, x][0] > 200 and mean[y, x][1] < 60
    np.testing.assert_array_equal(pmrf[:3, :3], mean[:3, :3])  # same background
    np.testing.assert_array_equal(
        read_rgb(out / "restored_imgs" / "wall.png"), read_rgb(out / "restored_imgs_posterior_mean" / "wall.png")
    )


def test_save_mmse_with_a_model_without_posterior_mean_says_so(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(textured_photo(96, 128)).save(inputs / "family.png")
    argv = ["--lq_data_path", str(inputs), "--output_dir", str(tmp_path / "o"), "--face_mask", "ellipse", "--save_mmse"]
    run_whole_image(parse_cli(argv), PaintGreen(), "cpu", detector=StubDetector([]))
    assert "no posterior-mean network" in capsys.readouterr().out
    assert not (tmp_path / "o" / "restored_imgs_posterior_mean").exists()


def test_cli_never_writes_into_the_input_folder(tmp_path):
    inputs = tmp_path / "restored_imgs"
    inputs.mkdir()
    Image.fromarray(textured_photo(32, 32)).save(inputs / "a.png")
    before = (inputs / "a.png").read_bytes()
    options = parse_cli(["--lq_data_path", str(inputs), "--output_dir", str(tmp_path), "--face_mask", "ellipse"])
    with pytest.raises(InputError, match="holds the inputs"):  # inference.py: one line, status 2
        run_whole_image(options, PaintGreen(), "cpu", detector=StubDetector([]))
    assert (inputs / "a.png").read_bytes() == before


def test_a_folder_where_no_photo_could_be_restored_is_an_error(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "broken.png").write_bytes(b"not a png")
    options = parse_cli(["--lq_data_path", str(inputs), "--output_dir", str(tmp_path / "o"), "--face_mask", "ellipse"])
    with pytest.raises(InputError, match="no photo was restored"):  # inference.py: one line, status 2
        run_whole_image(options, PaintGreen(), "cpu", detector=StubDetector([]))
    assert "broken.png" in capsys.readouterr().out  # the report, with the reason, came first


def test_cli_single_file_and_same_stems(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("x.png", "x.bmp"):
        Image.fromarray(textured_photo(64, 64)).save(inputs / name)
    argv = ["--lq_data_path", str(inputs), "--output_dir", str(tmp_path / "o"), "--face_mask", "ellipse", "-s", "1"]
    run_whole_image(parse_cli(argv), PaintGreen(), "cpu", detector=stub_for(textured_photo(64, 64), [face_at((32, 28), 16)]))
    assert sorted(p.name for p in (tmp_path / "o" / "restored_faces").iterdir()) == ["x_bmp_00.png", "x_png_00.png"]
    assert sorted(p.name for p in (tmp_path / "o" / "restored_imgs").iterdir()) == ["x_bmp.bmp", "x_png.png"]
    # --lq_data_path may be one image file.
    argv = ["--lq_data_path", str(inputs / "x.png"), "--output_dir", str(tmp_path / "one"), "--face_mask", "ellipse"]
    assert [p.name for p in run_whole_image(parse_cli(argv), PaintGreen(), "cpu", detector=StubDetector([]))] == [
        "x.png"
    ]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["cmp", "restored_imgs"]
    # A file that is not an image, nothing at all, or an output folder that is a file: one line naming it
    # (inference.py prints it after "error: " and ends with status 2).
    (tmp_path / "notes.txt").write_text("hello")
    for path, output, named in (
        (tmp_path / "notes.txt", tmp_path / "never", tmp_path / "notes.txt"),
        (tmp_path / "absent", tmp_path / "never", tmp_path / "absent"),
        (inputs / "x.png", tmp_path / "notes.txt", tmp_path / "notes.txt"),
    ):
        argv = ["--lq_data_path", str(path), "--output_dir", str(output)]
        with pytest.raises(InputError) as refused:
            run_whole_image(parse_cli(argv), PaintGreen(), "cpu", detector=StubDetector([]))
        assert "\n" not in str(refused.value) and str(named) in str(refused.value)


def test_rgba_photo_keeps_its_alpha_in_restored_imgs(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    photo = textured_photo(96, 128)
    alpha = np.full((96, 128), 255, np.uint8)
    alpha[:, :20] = 0  # a transparent strip on the left
    Image.fromarray(np.concatenate([photo, alpha[:, :, None]], axis=2), mode="RGBA").save(inputs / "logo.png")
    detector = StubDetector({(96, 128): [face_at((70, 40), 20)]})
    argv = ["--lq_data_path", str(inputs), "--output_dir", str(tmp_path / "o"), "--face_mask", "ellipse"]
    run_whole_image(parse_cli(argv), PaintGreen(), "cpu", detector=detector)
    restored = read_image(tmp_path / "o" / "restored_imgs" / "logo.png")
    assert restored.shape == (192, 256, 4)
    assert restored[:, :38, 3].max() == 0 and restored[:, 42:, 3].min() == 255
    x, y = (detector.faces_by_size[(96, 128)][0].landmarks[2] * 2 + 0.5).round().astype(int)
    assert is_green(restored[y, x])


# ---------------------------------------------------------------- detector choice


def test_auto_detector_is_mtcnn_without_retinaface_weights_and_says_so(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(textured_photo(64, 64)).save(inputs / "a.png")
    argv = ["--lq_data_path", str(inputs), "--output_dir", str(tmp_path / "o"), "--face_mask", "ellipse"]
    argv += ["--face_weights_dir", str(tmp_path / "empty")]
    run_whole_image(parse_cli(argv), PaintGreen(), "cpu")
    printed = capsys.readouterr().out
    assert "face detector: MTCNN" in printed and DETECTOR_FILE in printed


def test_auto_detector_is_retinaface_when_its_weights_are_on_disk(tmp_path, capsys, monkeypatch):
    import whole_image.detect as detect

    weights = tmp_path / "facexlib"
    weights.mkdir()
    (weights / DETECTOR_FILE).write_bytes(b"stand-in")  # only its presence matters to `auto`
    loaded = []
    monkeypatch.setattr(
        detect, "load_retinaface", lambda folder, device, threshold: loaded.append(folder) or StubDetector([])
    )
    options = parse_cli(["--face_weights_dir", str(weights), "--face_mask", "ellipse"])
    tools = load_tools(options, "cpu")
    assert isinstance(tools.detector, StubDetector) and loaded == [weights]
    assert "face detector: RetinaFace" in capsys.readouterr().out
    assert detect.resolve_detector_choice("auto", weights)[0] == "retinaface"
    assert detect.resolve_detector_choice("mtcnn", weights)[0] == "mtcnn"


def test_retinaface_asked_for_without_its_weights_is_one_clear_line(tmp_path):
    options = parse_cli(["--detector", "retinaface", "--face_weights_dir", str(tmp_path / "empty")])
    with pytest.raises(MissingWeightsError) as caught:  # the library raises; programs print it (one line)
        load_tools(options, "cpu")
    error = str(caught.value)
    assert "\n" not in error and DETECTOR_FILE in error and "--detector mtcnn" in error
    assert str((tmp_path / "empty").resolve()) in error and "https://" in error


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
    expected = save_random_state(source, tmp_path / DETECTOR_FILE, prefix="module.")  # saved through DataParallel
    detector = load_retinaface(tmp_path, device="cpu", threshold=0.5)
    assert isinstance(detector, RetinaFaceDetector)
    for key, value in detector.network.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    found = detector.detect(textured_photo(64, 80))
    assert all(isinstance(face, DetectedFace) and face.landmarks.shape == (5, 2) for face in found)
    assert all(face.score > 0.5 for face in found)


def test_mtcnn_weights_come_from_the_package_through_utils_weights(monkeypatch):
    import whole_image.detect as detect
    from utils.weights import load_state_dict
    from whole_image.weights import mtcnn_weights_dir

    read = []
    original = detect.load_weights_into
    monkeypatch.setattr(detect, "load_weights_into", lambda net, path: read.append(path) or original(net, path))
    detector = detect.load_mtcnn("cpu")
    assert [Path(p).name for p in read] == ["pnet.pt", "rnet.pt", "onet.pt"]
    for net, name in ((detector.pnet, "pnet.pt"), (detector.rnet, "rnet.pt"), (detector.onet, "onet.pt")):
        for key, value in load_state_dict(mtcnn_weights_dir() / name).items():
            torch.testing.assert_close(net.state_dict()[key], value)


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
    # ~0 near the crop's border (so its edge never shows), exactly 0 on it.
    assert masks[0, :5].max() < 0.005 and masks[0, :, -5:].max() < 0.005
    assert masks[0, 0].max() == masks[0, -1].max() == masks[0, :, 0].max() == masks[0, :, -1].max() == 0.0


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


def test_missing_detector_weights_name_the_file_folder_and_source(tmp_path):
    with pytest.raises(MissingWeightsError) as caught:
        load_retinaface(tmp_path / "empty", device="cpu")
    message = str(caught.value)
    assert DETECTOR_FILE in message and str((tmp_path / "empty").resolve()) in message
    assert "https://github.com/xinntao/facexlib" in message and "\n" not in message


def test_missing_parser_weights_fall_back_to_the_ellipse(tmp_path, capsys):
    with pytest.warns(UserWarning, match=PARSER_FILE):
        assert load_face_parser(tmp_path, device="cpu") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the program says it in one printed line instead
        tools = load_tools(parse_cli(["--face_weights_dir", str(tmp_path)]), "cpu", detector=StubDetector([]))
    assert tools.parser is None
    printed = capsys.readouterr().out
    assert printed.startswith("warning: ") and printed.count("\n") == 1 and PARSER_FILE in printed


def test_missing_realesrgan_weights_are_one_line_before_any_photo(tmp_path):
    options = parse_cli(
        ["--bg_upsampler", "realesrgan", "--realesrgan_weights_dir", str(tmp_path), "--face_mask", "ellipse"]
    )
    with pytest.raises(MissingWeightsError, match=REALESRGAN_FILE):  # the library raises
        load_tools(options, "cpu", detector=StubDetector([]))
    options = parse_cli(["--lq_data_path", str(inputs_with_one_photo(tmp_path)), "--output_dir", str(tmp_path / "o"),
                         "--bg_upsampler", "realesrgan", "--realesrgan_weights_dir", str(tmp_path), "--face_mask", "ellipse"])
    with pytest.raises(MissingWeightsError, match=REALESRGAN_FILE) as missing:  # inference.py: one line, status 2
        run_whole_image(options, PaintGreen(), "cpu", detector=StubDetector([]))
    assert "\n" not in str(missing.value) and not (tmp_path / "o" / "restored_imgs").exists()


def inputs_with_one_photo(tmp_path: Path) -> Path:
    folder = tmp_path / "one_photo"
    folder.mkdir()
    Image.fromarray(textured_photo(32, 32)).save(folder / "a.png")
    return folder


def test_a_checkpoint_of_the_wrong_network_is_a_clear_error(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / DETECTOR_FILE)
    with pytest.raises(WeightsReadError, match=f"{DETECTOR_FILE}: does not fit RetinaFace"):
        load_retinaface(tmp_path, device="cpu")


def test_weight_files_are_read_without_unpickling_code(tmp_path):
    torch.save({"x": argparse.Namespace(anything=1)}, tmp_path / DETECTOR_FILE)  # arbitrary pickled object
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(WeightsReadError, match="refused"):
            load_retinaface(tmp_path, device="cpu")
