"""LPIPS of both programs built from local weight files, checked against the libraries' own builders.

The libraries normally download the VGG16 trunk (and piq its LPIPS weights); here their download
functions are replaced by random weights that the test also writes to disk for our loaders.
"""

import copy
from types import SimpleNamespace

import lpips
import numpy as np
import piq
import pytest
import torch
import torchvision
from PIL import Image

from evaluation.lpips_vgg import build_lpips_vgg, calculate_lpips
from evaluation.piq_metrics import build_piq_lpips, calculate_piq_lpips
from utils.weights import MissingWeightsError, WeightsReadError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHANNELS = (64, 128, 256, 512, 512)


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    """A random VGG16 trunk and the same weights saved as a torchvision checkpoint (features only)."""
    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features
    path = tmp_path_factory.mktemp("weights") / "vgg16-397923af.pth"
    torch.save({f"features.{name}": value for name, value in features.state_dict().items()}, path)
    return features, path


def fake_vgg16(features):
    return lambda *args, **kwargs: SimpleNamespace(features=copy.deepcopy(features))


def images(seed, count=3, size=32):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def write_folder(folder, arrays):
    folder.mkdir(parents=True)
    for index, array in enumerate(arrays):
        Image.fromarray(array).save(folder / f"{index}.png")
    return folder


def as_batch(arrays):
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def test_blind_lpips_loads_like_lpips_own_pretrained_path_and_averages_images(vgg, tmp_path, monkeypatch):
    features, path = vgg
    monkeypatch.setattr(lpips.pretrained_networks.tv, "vgg16", fake_vgg16(features))
    reference = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=False, verbose=False).eval()
    assert torch.allclose(
        build_lpips_vgg(path)(as_batch(images(1)), as_batch(images(2))),
        reference(as_batch(images(1)), as_batch(images(2))),
        atol=1e-6,
    )
    recs, gts = images(3), images(4)
    rec_dir, gt_dir = write_folder(tmp_path / "rec", recs), write_folder(tmp_path / "gt", gts)
    with torch.no_grad():
        per_image = reference(as_batch(recs) * 2 - 1, as_batch(gts) * 2 - 1).flatten()
        assert torch.all(reference(as_batch(recs), as_batch(recs)).abs() < 1e-6)
    measured = calculate_lpips(rec_dir, gt_dir, vgg_weights_path=path, batch_size=2)
    assert per_image.std() > 0 and measured == pytest.approx(per_image.mean().item(), rel=1e-5)


def test_piq_lpips_from_files_equals_piq_lpips(vgg, tmp_path, monkeypatch):
    features, path = vgg
    torch.manual_seed(1)
    head = [torch.rand(1, channels, 1, 1) for channels in CHANNELS]
    head_path = tmp_path / "lpips_weights.pt"
    torch.save(head, head_path)
    monkeypatch.setattr(piq.perceptual, "vgg16", fake_vgg16(features))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *args, **kwargs: head)
    reference = piq.LPIPS(reduction="none")
    ours = build_piq_lpips(path, head_path)
    x, y = as_batch(images(5)), as_batch(images(6))
    with torch.no_grad():
        assert torch.allclose(ours(x, y), reference(x, y), atol=1e-6)
    recs, gts = images(7), images(8)
    rec_dir, gt_dir = write_folder(tmp_path / "rec", recs), write_folder(tmp_path / "gt", gts)
    with torch.no_grad():
        expected = reference(as_batch(gts), as_batch(recs)).mean().item()
    measured = calculate_piq_lpips(rec_dir, gt_dir, vgg_weights_path=path, lpips_weights_path=head_path)
    assert measured == pytest.approx(expected, rel=1e-5)


def test_missing_vgg_weights_offline_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    folder = write_folder(tmp_path / "rec", images(9, count=1))
    with pytest.raises(MissingWeightsError, match=r"put vgg16-397923af\.pth at .*ckpt"):
        calculate_lpips(folder, folder, ckpt_dir=tmp_path / "ckpt", offline=True)


@pytest.mark.parametrize("planted", ["trunk", "heads", "piq_head"])
def test_planted_pickles_in_lpips_weights_never_run(vgg, tmp_path, planted, planted_code):
    _, vgg_path = vgg
    evil = tmp_path / "evil.pth"
    torch.save({"lin0.model.1.weight": planted_code}, evil)
    with pytest.raises(WeightsReadError, match="refused"):
        if planted == "trunk":
            build_lpips_vgg(evil)
        elif planted == "heads":
            build_lpips_vgg(vgg_path, heads_path=evil)
        else:
            build_piq_lpips(vgg_path, evil)
    assert not planted_code.ran
