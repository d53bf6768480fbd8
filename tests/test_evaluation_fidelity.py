"""FID / KID / IS / PRC through torch-fidelity, with a substituted feature extractor.

Each test image encodes a row index (red channel) and a transformation id (green channel). The
stub extractor returns row `index` of a fixed Gaussian table, shifted (id 1) or scaled by 2 (id 2),
so the expected FID has a closed form in the table's sample statistics.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from evaluation.fidelity import calculate_fidelity_metrics
from evaluation.weights import MissingWeightsError

STUB = "pmrf-test-table-features"
NUM_ROWS, DIM = 40, 6
TABLE = torch.from_numpy(np.random.default_rng(0).normal(1.0, 1.0, (NUM_ROWS, DIM)))
SHIFT = torch.tensor([0.5, -1.0, 2.0, 0.0, 0.25, 1.5], dtype=torch.float64)


class TableFeatures(FeatureExtractorBase):
    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)

    @staticmethod
    def get_provided_features_list():
        return "feat", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits" if metric == "isc" else "feat"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return None

    def forward(self, images):
        rows = TABLE[images[:, 0, 0, 0].long()]
        kind = images[:, 1, 0, 0].long()[:, None]
        feat = torch.where(kind == 1, rows + SHIFT, torch.where(kind == 2, rows * 2.0, rows))
        features = {"feat": feat, "logits": feat.float()}
        return tuple(features[name] for name in self.features_list)


if STUB not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(STUB, TableFeatures)


def write_coded_images(folder, kind):
    folder.mkdir(parents=True)
    for index in range(NUM_ROWS):
        image = np.zeros((8, 8, 3), np.uint8)
        image[..., 0], image[..., 1] = index, kind
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    return folder


def fidelity(rec_dir, reference_dir, cache, **options):
    return calculate_fidelity_metrics(
        rec_dir,
        reference_dir,
        feature_extractor=STUB,
        cache_root=cache,
        batch_size=16,
        verbose=False,
        **options,
    )


def test_fid_of_a_set_against_itself_is_zero_and_prc_is_one(tmp_path):
    rec = write_coded_images(tmp_path / "rec", 0)
    reference = write_coded_images(tmp_path / "ffhq", 0)
    result = fidelity(rec, reference, tmp_path / "cache")
    assert abs(result["frechet_inception_distance"]) < 1e-6
    assert result["precision"] == 1.0 and result["recall"] == 1.0
    assert {"kernel_inception_distance_mean", "inception_score_mean", "f_score"} <= set(result)


@pytest.mark.parametrize("kind", [1, 2])
def test_fid_matches_the_closed_form_for_gaussian_features(tmp_path, kind):
    rec = write_coded_images(tmp_path / "rec", kind)
    reference = write_coded_images(tmp_path / "ffhq", 0)
    result = fidelity(rec, reference, tmp_path / "cache", metrics=["fid"])
    table = TABLE.numpy()
    if kind == 1:  # same covariance: only the means differ
        expected = float(SHIFT @ SHIFT)
    else:  # N(m, S) vs N(2m, 4S): |m|^2 + tr(S) + tr(4S) - 2 tr(2S)
        expected = float(table.mean(0) @ table.mean(0) + np.trace(np.cov(table, rowvar=False)))
    assert set(result) == {"frechet_inception_distance"}
    assert result["frechet_inception_distance"] == pytest.approx(expected, rel=1e-6)


def test_reference_features_are_cached_per_folder(tmp_path):
    rec = write_coded_images(tmp_path / "rec", 1)
    reference = write_coded_images(tmp_path / "ffhq512", 0)
    cache = tmp_path / "cache"
    first = fidelity(rec, reference, cache, metrics=["fid", "kid"])
    cached = sorted(path.name for path in cache.iterdir())
    assert cached and all(name.startswith("ffhq512-") for name in cached)
    assert fidelity(rec, reference, cache, metrics=["fid", "kid"]) == first


def test_reference_first_swaps_precision_and_recall(tmp_path):
    rec = write_coded_images(tmp_path / "rec", 2)
    reference = write_coded_images(tmp_path / "ffhq", 0)
    normal = fidelity(rec, reference, tmp_path / "cache", metrics=["prc"])
    swapped = fidelity(rec, reference, tmp_path / "cache", metrics=["prc"], reference_first=True)
    assert (normal["precision"], normal["recall"]) == (swapped["recall"], swapped["precision"])


def test_missing_inception_weights_offline_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    rec = write_coded_images(tmp_path / "rec", 0)
    with pytest.raises(MissingWeightsError, match=r"weights-inception-2015-12-05-6726825d\.pth.*torch_home"):
        calculate_fidelity_metrics(
            rec, rec, ckpt_dir=tmp_path / "ckpt", offline=True, cache_root=tmp_path / "c"
        )
