"""Face networks of the evaluation (ArcFace, AWing FAN) and the Deg / LMD arithmetic."""

import math

import cv2
import numpy as np
import pytest
import torch
from helpers import load_manifest
from PIL import Image

from evaluation.arcface_arch import resnet_face18
from evaluation.identity import (
    angles_in_degrees,
    arcface_input,
    calculate_identity_distance,
    load_arcface,
    read_gray,
    summarize_angles,
)
from evaluation.landmarks import (
    build_fan,
    fan_input,
    heatmaps_to_points,
    landmark_distance,
    load_fan,
    predict_landmarks,
)
from utils.images import read_rgb
from utils.weights import WeightsReadError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shapes(state_dict):
    return {name: list(value.shape) for name, value in state_dict.items()}


def test_arcface_matches_the_published_checkpoint_keys():
    manifest = load_manifest("evaluation_networks.json")["arcface_resnet_face18_dataparallel"]
    assert all(name.startswith("module.") for name in manifest)
    assert shapes(resnet_face18().state_dict()) == {
        name[len("module.") :]: shape for name, shape in manifest.items()
    }


def test_fan_matches_the_published_checkpoint_keys():
    assert shapes(build_fan().state_dict()) == load_manifest("evaluation_networks.json")["fan_alignment_WFLW_4HG"]


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_arcface_loads_with_or_without_dataparallel_prefix(tmp_path, prefix):
    source = resnet_face18().eval()
    path = tmp_path / "resnet18_110.pth"
    torch.save({prefix + name: value for name, value in source.state_dict().items()}, path)
    loaded = load_arcface(path)
    images = torch.rand(2, 1, 128, 128) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(loaded(images), source(images))
    assert loaded(images).shape == (2, 512)


def test_fan_checkpoint_keys_must_match(tmp_path):
    weights = build_fan().state_dict()
    weights.pop("l3.weight")
    torch.save({"state_dict": weights}, tmp_path / "partial.pth")
    with pytest.raises(WeightsReadError, match=r"partial\.pth.*missing: l3\.weight"):
        load_fan(tmp_path / "partial.pth")


def test_angles_are_in_degrees_and_pairs_under_one_degree_count_as_identical():
    reference = torch.tensor([[1.0, 0.0]] * 3)
    degrees = torch.tensor([30.0, 0.5, 60.0])
    rotated = torch.stack([torch.cos(torch.deg2rad(degrees)), torch.sin(torch.deg2rad(degrees))], dim=1) * 7.0
    angles = angles_in_degrees(reference, rotated)
    assert torch.allclose(angles, degrees.double(), atol=1e-5)
    mean, identical = summarize_angles(angles)
    assert mean == pytest.approx(45.0, abs=1e-5) and identical == 1


def test_parallel_embeddings_give_zero_degrees_not_nan():
    vector = torch.randn(4, 512)
    angles = angles_in_degrees(vector, vector * 3.0)
    assert torch.all(angles < 1e-3)
    mean, identical = summarize_angles(angles)
    assert math.isnan(mean) and identical == 4


def test_arcface_input_is_gray_128_scaled_to_plus_minus_one():
    white = arcface_input(np.full((300, 200, 3), 255, np.uint8))
    assert white.shape == (1, 128, 128) and torch.all(white == 1.0)
    red = arcface_input(np.dstack([np.full((64, 64), 255, np.uint8), np.zeros((64, 64, 2), np.uint8)]))
    assert torch.allclose(red, torch.tensor((76 - 127.5) / 127.5))  # ITU-R 601: 0.299 * 255 -> 76


def test_heatmap_refinement_moves_a_quarter_pixel_toward_the_larger_neighbour():
    heatmaps = torch.zeros(1, 3, 64, 64)
    peak = heatmaps[0, 0]
    peak[20, 10], peak[20, 11], peak[20, 9], peak[19, 10], peak[21, 10] = 1.0, 0.6, 0.3, 0.7, 0.2
    flat = heatmaps[0, 1]
    flat[40, 30], flat[40, 31], flat[40, 29], flat[39, 30], flat[41, 30] = 1.0, 0.5, 0.5, 0.4, 0.4
    edge = heatmaps[0, 2]
    edge[5, 0], edge[5, 1], edge[4, 0], edge[6, 0] = 1.0, 0.9, 0.1, 0.8
    points = heatmaps_to_points(heatmaps, "per_landmark")[0]
    assert points.tolist() == [[10.75, 20.25], [30.5, 40.5], [0.5, 5.75]]
    # the reference's rule: left of column 0 is the last pixel of the row above (0 here), so x moves too
    assert heatmaps_to_points(heatmaps)[0].tolist() == [[10.75, 20.25], [30.5, 40.5], [0.75, 5.75]]


def reference_calculate_points(heatmap):
    """The authors' refinement of one image's (N, 64, 64) heat maps, transcribed for the test: flat
    indices, numpy's wrap-around for index -1, and the image-wide border switches for 'above'/'below'."""
    n, h, w = heatmap.shape
    flat = heatmap.reshape(n, h * w)
    index = flat.argmax(axis=1)
    rows = np.arange(n)
    right = flat[rows, np.minimum(index + 1, h * w - 1)]  # (the authors' code raises an IndexError here)
    left = flat[rows, index - 1]
    below = flat[rows, h * w - 1] if np.any(index + w >= h * w) else flat[rows, index + w]
    above = flat[rows, 0] if np.any(index - w <= 0) else flat[rows, index - w]
    points = np.stack((index % w, index // w), axis=1).astype(float)
    points += np.sign(np.stack((right - left, below - above), axis=1)) * 0.25
    return points + 0.5


def gaussian_heatmaps(centres, size=64, sigma=1.5):
    yy, xx = np.mgrid[0:size, 0:size]
    return np.stack(
        [np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)) for cx, cy in centres]
    ).astype(np.float32)


def test_reference_refinement_matches_the_authors_rule_image_by_image():
    rng = np.random.default_rng(0)
    inside = rng.uniform(3, 60, (98, 2))
    cases = [inside.copy() for _ in range(4)]
    cases[1][7] = (30.2, 63.0)  # one landmark on the bottom row
    cases[2][50] = (0.0, 0.4)  # one on the first pixel: x wraps around, "above" switches
    cases[3][3] = (40.0, 0.0)  # one on the top row
    heatmaps = np.stack([gaussian_heatmaps(case) for case in cases])
    ours = heatmaps_to_points(torch.from_numpy(heatmaps)).numpy()
    for image, heatmap in enumerate(heatmaps):  # the authors run one image at a time
        np.testing.assert_array_equal(ours[image], reference_calculate_points(heatmap))
    per_landmark = heatmaps_to_points(torch.from_numpy(heatmaps), "per_landmark").numpy()
    np.testing.assert_array_equal(ours[0], per_landmark[0])  # nothing on the border: the rules agree
    # one landmark on the bottom row sends every landmark's y a quarter pixel up: those that would
    # have gone down (about half) move by 0.5 heat-map pixels
    moved = np.abs(ours[1] - per_landmark[1])[:, 1]
    assert np.count_nonzero(moved) > 30 and set(np.unique(moved)) <= {0.0, 0.25, 0.5}
    assert np.all(ours[1][:, 1] <= per_landmark[1][:, 1])
    assert np.all(ours[1][:, 0] == per_landmark[1][:, 0])


def test_deg_reads_images_as_opencv_gray_like_the_reference(tmp_path):
    """On a JPEG, cv2.imread(IMREAD_GRAYSCALE) differs from decoding RGB and converting to gray."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    for folder, seed in (("rec", 1), ("gt", 2)):
        (tmp_path / folder).mkdir()
        for index in range(2):
            noise = np.random.default_rng(seed * 10 + index).normal(0, 25, (96, 96, 3))
            image = np.stack([np.sin(xx / 7) * 100 + 128, np.cos(yy / 9) * 100 + 128, (xx * yy) % 256], -1)
            Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8)).save(
                tmp_path / folder / f"{index}.jpg", quality=75
            )
    path = tmp_path / "gt" / "0.jpg"
    opencv = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    converted = cv2.cvtColor(read_rgb(path), cv2.COLOR_RGB2GRAY)
    assert np.array_equal(read_gray(path), opencv)
    assert np.abs(opencv.astype(int) - converted).max() > 2  # the difference the test relies on
    torch.manual_seed(rng.integers(1000))
    model = resnet_face18().eval()
    weights = tmp_path / "resnet18_110.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, weights)
    result = calculate_identity_distance(tmp_path / "rec", tmp_path / "gt", weights_path=weights)

    def embed(folder):
        gray = [cv2.imread(str(tmp_path / folder / f"{i}.jpg"), cv2.IMREAD_GRAYSCALE) for i in range(2)]
        return model(torch.stack([arcface_input(image) for image in gray]))

    with torch.no_grad():
        angles = angles_in_degrees(embed("rec"), embed("gt"))
    assert torch.all(angles >= 1.0)  # random weights: no pair counts as identical
    # decoding RGB and converting would move the mean angle by about 1 % here
    assert result["arcface_cos_dist"] == pytest.approx(angles.mean().item(), rel=1e-6)


def test_landmarks_are_scaled_by_image_size_over_64_and_distance_is_mean_euclidean():
    heatmaps = torch.zeros(2, 99, 64, 64)  # 98 landmarks + the boundary channel, which is ignored
    heatmaps[:, :, 32, 16] = 1.0
    heatmaps[:, 98] = 5.0

    class FakeFan(torch.nn.Module):
        def forward(self, images):
            return [torch.zeros_like(heatmaps), heatmaps], None

    sizes = torch.tensor([[512.0, 384.0], [64.0, 64.0]])
    points = predict_landmarks(FakeFan(), torch.zeros(2, 3, 256, 256), sizes)
    assert points.shape == (2, 98, 2)
    assert points[0, 0].tolist() == [16.5 * 8, 32.5 * 6] and points[1, 0].tolist() == [16.5, 32.5]
    moved = points + torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert torch.allclose(landmark_distance(points, moved), torch.tensor([5.0, 5.0], dtype=torch.float64))


def test_fan_input_is_256_rgb_in_unit_range_and_keeps_the_original_size():
    image = np.zeros((100, 80, 3), np.uint8)
    image[..., 0] = 255
    sample = fan_input(image)
    assert sample["image"].shape == (3, 256, 256)
    assert torch.all(sample["image"][0] == 1.0) and torch.all(sample["image"][1:] == 0.0)
    assert sample["size"].tolist() == [80, 100]


def test_blind_program_uses_the_reference_refinement_unless_asked():
    from evaluation.compute_metrics_blind import build_parser

    assert build_parser().parse_args(["--rec_path", "r"]).lmd_refinement == "reference"
    args = build_parser().parse_args(["--rec_path", "r", "--lmd_refinement", "per_landmark"])
    assert args.lmd_refinement == "per_landmark"
    with pytest.raises(ValueError, match="refinement"):
        heatmaps_to_points(torch.zeros(1, 1, 64, 64), "nearest")
