"""utils.inception: the Inception-v3 of FID / IS built from safely read tensors, never by unpickling."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception
from helpers import random_inception
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchmetrics.image.inception import InceptionScore

from utils.inception import torch_fidelity_inception, torchmetrics_inception
from utils.weights import MissingWeightsError, WeightsReadError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    network = random_inception(["2048", "logits_unbiased"])
    for module in network.modules():  # non-trivial batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(network.state_dict(), path)
    return path, network


def test_torch_fidelity_extractor_from_file_matches_the_library_network(weights):
    path, network = weights
    images = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8)
    ours = torch_fidelity_inception(path, ["2048", "logits_unbiased"])
    assert isinstance(ours, fidelity_inception.FeatureExtractorInceptionV3) and not ours.training
    with torch.no_grad():
        for mine, theirs in zip(ours(images), network(images)):
            assert torch.equal(mine, theirs)


def test_torchmetrics_module_works_in_fid_and_inception_score(weights):
    path, network = weights
    pool = torchmetrics_inception(path, ["2048"])
    logits = torchmetrics_inception(path, ["logits_unbiased"])
    assert isinstance(pool, NoTrainInceptionV3) and pool.num_features == 2048 and logits.num_features == 1008
    image = torch.rand(1, 3, 32, 32)
    # torchmetrics' own extractor with these weights, given what FID(normalize=True) would give it
    theirs = random_inception(["2048"], NoTrainInceptionV3)
    theirs.load_state_dict(network.state_dict())
    with torch.no_grad():
        expected = theirs((image * 255).byte())
    fid = FrechetInceptionDistance(feature=pool, normalize=True)
    fid.update(image, real=True)  # a custom module gets the float image itself
    assert torch.equal(fid.real_features_sum, expected.double().sum(dim=0))
    score = InceptionScore(feature=logits, normalize=True, splits=1)
    score.update(image)  # here torchmetrics converts to uint8 first
    assert score.features[0].shape == (1, 1008)


@pytest.mark.parametrize("build", [torch_fidelity_inception, torchmetrics_inception])
def test_a_planted_pickle_never_runs(tmp_path, build, planted_code):
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": planted_code}, path)
    with pytest.raises(WeightsReadError, match="refused"):
        build(path, ["2048"])
    assert not planted_code.ran


def test_missing_corrupt_and_mismatched_files_are_one_line_errors(tmp_path, weights):
    with pytest.raises(MissingWeightsError):
        torchmetrics_inception(tmp_path / "absent.pth", ["2048"])
    (tmp_path / "cut.pth").write_bytes(weights[0].read_bytes()[:1000])
    with pytest.raises(WeightsReadError, match="cut.pth"):
        torch_fidelity_inception(tmp_path / "cut.pth")
    state = torch.load(weights[0], weights_only=True)
    state.pop("fc.bias")
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(WeightsReadError, match=r"partial\.pth: does not fit .*fc\.bias") as error:
        torch_fidelity_inception(tmp_path / "partial.pth")
    assert "\n" not in str(error.value)
    assert fidelity_inception.load_state_dict_from_url is torch.hub.load_state_dict_from_url  # restored


def test_importing_the_module_is_light():
    libraries = ("torchmetrics", "torch_fidelity")
    code = f"import sys, utils.inception; print([m for m in {libraries} if m in sys.modules])"
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"
