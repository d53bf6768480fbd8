"""FID / KID / IS / PRC on a substituted feature extractor, checked against torch-fidelity itself.

Each test image encodes a row index (red channel) and a transformation id (green channel). The
stub extractor returns row `index` of a fixed Gaussian table, shifted (id 1) or scaled by 2 (id 2),
so the expected FID has a closed form in the table's sample statistics, and torch-fidelity's own
`calculate_metrics` can be run the way the authors ran it for comparison.
"""

import os
import pickle

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from evaluation import fidelity as fidelity_module
from evaluation.fidelity import FeatureExtractor, calculate_fidelity_metrics, folder_cache_path
from evaluation.inputs import ImageListDataset, forget_unreadable, image_files, unreadable_images
from utils.weights import MissingWeightsError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STUB = "pmrf-test-table-features"
NUM_ROWS, DIM = 40, 6
TABLE = torch.from_numpy(np.random.default_rng(0).normal(1.0, 1.0, (NUM_ROWS, DIM)))
SHIFT = torch.tensor([0.5, -1.0, 2.0, 0.0, 0.25, 1.5], dtype=torch.float64)


class TableFeatures(FeatureExtractorBase):
    calls = 0

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)

    @staticmethod
    def get_provided_features_list():
        return "2048", "logits_unbiased"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits_unbiased" if metric == "isc" else "2048"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return None

    def forward(self, images):
        TableFeatures.calls += 1
        rows = TABLE[images[:, 0, 0, 0].long()]
        kind = images[:, 1, 0, 0].long()[:, None]
        feat = torch.where(kind == 1, rows + SHIFT, torch.where(kind == 2, rows * 2.0, rows)).float()
        features = {"2048": feat, "logits_unbiased": feat * 3.0}
        return tuple(features[name] for name in self.features_list)


if STUB not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(STUB, TableFeatures)

LAYERS = ["2048", "logits_unbiased"]


def stub_extractor():
    return FeatureExtractor(TableFeatures(STUB, LAYERS), LAYERS, STUB)


def write_coded_images(folder, kind, rows=range(NUM_ROWS), size=8):
    folder.mkdir(parents=True, exist_ok=True)
    for index in rows:
        image = np.zeros((size, size, 3), np.uint8)
        image[..., 0], image[..., 1] = index, kind
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    return folder


def fidelity(rec_dir, reference_dir, cache, **options):
    return calculate_fidelity_metrics(
        rec_dir, reference_dir, feature_extractor=stub_extractor(), cache_root=cache, batch_size=16,
        verbose=False, **options,
    )  # fmt: skip


def torch_fidelity_as_the_authors_call_it(first, second):
    """calculate_metrics(input1=first, input2=second) with every metric, cache off (a Dataset each)."""
    datasets = [ImageListDataset(image_files(folder)) for folder in (first, second)]
    return torch_fidelity.calculate_metrics(
        input1=datasets[0], input2=datasets[1], feature_extractor=STUB, cuda=False, batch_size=16,
        isc=True, fid=True, kid=True, prc=True, kid_subset_size=min(1000, len(datasets[1])),
        cache=False, verbose=False, save_cpu_ram=True,  # (no loader workers; the same numbers)
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _no_torch_fidelity_cache(monkeypatch):
    """torch-fidelity's cache unpickles; the evaluation must never reach it."""
    import torch_fidelity.utils as fidelity_utils

    def refuse(*args, **kwargs):
        raise AssertionError("torch-fidelity's pickle cache was used")

    monkeypatch.setattr(fidelity_utils, "cache_lookup_one_recompute_on_miss", refuse)
    monkeypatch.setattr(fidelity_utils, "cache_lookup_group_recompute_all_on_any_miss", refuse)
    forget_unreadable()
    yield
    forget_unreadable()


def test_reference_keys_hold_the_authors_values_and_restored_keys_the_usual_ones(tmp_path, monkeypatch):
    rec = write_coded_images(tmp_path / "rec", 2)
    ffhq = write_coded_images(tmp_path / "ffhq", 0)
    ours = fidelity(rec, ffhq, tmp_path / "cache")
    monkeypatch.undo()  # torch-fidelity may use its own machinery for the comparison (cache=False anyway)
    authors = torch_fidelity_as_the_authors_call_it(ffhq, rec)
    usual = torch_fidelity_as_the_authors_call_it(rec, ffhq)
    for key, value in authors.items():  # every key the authors' script writes, with its value
        assert ours[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert ours["inception_score_restored_mean"] == pytest.approx(usual["inception_score_mean"], rel=1e-9)
    assert ours["inception_score_restored_std"] == pytest.approx(usual["inception_score_std"], rel=1e-9)
    assert (ours["precision_restored"], ours["recall_restored"]) == (usual["precision"], usual["recall"])
    # the orientation matters on this data: FFHQ's IS is not the restored images' one, PRC is swapped
    assert ours["inception_score_mean"] != pytest.approx(ours["inception_score_restored_mean"])
    assert ours["precision"] != ours["recall"]
    assert (ours["precision"], ours["recall"]) == (ours["recall_restored"], ours["precision_restored"])


def test_fid_of_a_set_against_itself_is_zero_and_prc_is_one(tmp_path):
    rec = write_coded_images(tmp_path / "rec", 0)
    reference = write_coded_images(tmp_path / "ffhq", 0)
    result = fidelity(rec, reference, tmp_path / "cache")
    assert abs(result["frechet_inception_distance"]) < 1e-6
    assert result["precision"] == 1.0 and result["recall"] == 1.0 and result["precision_restored"] == 1.0
    assert {"kernel_inception_distance_mean", "inception_score_mean", "f_score"} <= set(result)


@pytest.mark.parametrize("kind", [1, 2])
def test_fid_matches_the_closed_form_for_gaussian_features(tmp_path, kind):
    rec = write_coded_images(tmp_path / "rec", kind)
    reference = write_coded_images(tmp_path / "ffhq", 0)
    result = fidelity(rec, reference, tmp_path / "cache", metrics=["fid"])
    table = TABLE.float().double().numpy()
    if kind == 1:  # same covariance: only the means differ
        expected = float(SHIFT @ SHIFT)
    else:  # N(m, S) vs N(2m, 4S): |m|^2 + tr(S) + tr(4S) - 2 tr(2S)
        expected = float(table.mean(0) @ table.mean(0) + np.trace(np.cov(table, rowvar=False)))
    assert set(result) == {"frechet_inception_distance"}
    assert result["frechet_inception_distance"] == pytest.approx(expected, rel=1e-5)


def test_reference_features_are_cached_safely_and_per_folder_contents(tmp_path):
    rec = write_coded_images(tmp_path / "rec", 1)
    reference = write_coded_images(tmp_path / "ffhq512", 0)
    cache = tmp_path / "cache"
    first = fidelity(rec, reference, cache, metrics=["fid", "kid"])
    cached = sorted(path.name for path in cache.iterdir())
    assert len(cached) == 1 and cached[0].startswith("ffhq512-") and cached[0].endswith(".safetensors")
    TableFeatures.calls = 0
    assert fidelity(rec, reference, cache, metrics=["fid", "kid"]) == first
    assert TableFeatures.calls == 3  # 40 restored images in batches of 16; FFHQ came from the cache
    write_coded_images(reference, 0, rows=[0])  # a rewritten file is a new folder content
    os.utime(reference / "000.png", ns=(1, 1))
    TableFeatures.calls = 0
    fidelity(rec, reference, cache, metrics=["fid"])
    assert TableFeatures.calls == 6 and len(list(cache.iterdir())) == 2


def test_a_pickle_planted_in_the_cache_never_runs(tmp_path, capsys, planted_code):
    rec = write_coded_images(tmp_path / "rec", 1)
    reference = write_coded_images(tmp_path / "ffhq", 0)
    cache = tmp_path / "cache"
    expected = fidelity(rec, reference, tmp_path / "clean_cache", metrics=["fid"])
    planted = folder_cache_path(reference, image_files(reference), STUB, cache)
    planted.parent.mkdir(parents=True)
    with open(planted, "wb") as file:
        pickle.dump(planted_code, file)
    torch.save({"features": planted_code}, cache / "ffhq-as-torch-save.pt")
    assert fidelity(rec, reference, cache, metrics=["fid"]) == expected
    assert not planted_code.ran and "not used" in capsys.readouterr().err
    assert fidelity(rec, reference, cache, metrics=["fid"]) == expected  # rewritten as safetensors


def test_mixed_sizes_and_unreadable_files_are_handled(tmp_path):
    rec = write_coded_images(tmp_path / "rec", 2)
    reference = write_coded_images(tmp_path / "ffhq", 0)
    expected = fidelity(rec, reference, tmp_path / "cache", metrics=["fid", "isc"])
    write_coded_images(rec, 2, rows=range(0, NUM_ROWS, 3), size=12)  # every third image is larger
    (rec / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (reference / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    result = fidelity(rec, reference, tmp_path / "cache2", metrics=["fid", "isc"])
    assert result == pytest.approx(expected, rel=1e-9)
    names = sorted(os.path.basename(path) for path in unreadable_images())
    assert names == ["zz_broken.jpg", "zz_broken.png"]


def test_missing_inception_weights_offline_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    rec = write_coded_images(tmp_path / "rec", 0)
    with pytest.raises(MissingWeightsError, match=r"put weights-inception-2015-12-05-6726825d\.pth at .*ckpt"):
        calculate_fidelity_metrics(
            rec, rec, ckpt_dir=tmp_path / "ckpt", offline=True, cache_root=tmp_path / "c"
        )


def test_default_cache_root_follows_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert fidelity_module.default_cache_root() == tmp_path / "th" / "fidelity_cache"
