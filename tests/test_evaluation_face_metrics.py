"""Face networks of the evaluation (ArcFace, AWing FAN) and the Deg / LMD arithmetic."""

import math

import numpy as np
import pytest
import torch
from conftest import load_manifest

from evaluation.arcface_arch import resnet_face18
from evaluation.identity import angles_in_degrees, arcface_input, load_arcface, summarize_angles
from evaluation.landmarks import (
    build_fan,
    fan_input,
    heatmaps_to_points,
    landmark_distance,
    load_fan,
    predict_landmarks,
)
from test_evaluation_inputs import one_torch_thread  # noqa: F401  (autouse fixture)
from utils.weights import WeightsReadError


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
    points = heatmaps_to_points(heatmaps)[0]
    assert points.tolist() == [[10.75, 20.25], [30.5, 40.5], [0.5, 5.75]]


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
