"""The registry of named networks and weights files (utils/registry.py): every entry and one finder."""

from __future__ import annotations

import pytest

from arch import NAMED_CONFIGS
from utils import registry
from utils.weights import MissingWeightsError


def test_every_named_architecture_has_a_native_size():
    assert set(registry.NETWORKS) == set(NAMED_CONFIGS)
    assert registry.native_size("hdit_ImageNet256Sp4") == 512 and registry.native_size("hdit_XL2") == 256
    assert registry.native_size({"type": "hdit"}) is None and registry.native_size("nope") is None


@pytest.mark.parametrize("name", sorted(registry.WEIGHTS))
def test_a_missing_file_is_one_line_naming_the_file_and_where_it_goes(name, tmp_path, monkeypatch):
    entry = registry.WEIGHTS[name]
    monkeypatch.setattr(registry, "CHECKPOINTS", tmp_path)  # nothing is found in the repository's folders
    with pytest.raises(MissingWeightsError) as caught:
        registry.find_weights(name, [tmp_path / "given"], offline=True)
    message = str(caught.value)
    assert "\n" not in message and entry.file in message and str(tmp_path / "given") in message
    assert entry.url is None or entry.url in message


@pytest.mark.parametrize("name", sorted(registry.WEIGHTS))
def test_files_are_found_in_the_given_folder_then_the_defaults_and_never_through_the_environment(
    name, tmp_path, monkeypatch
):
    entry = registry.WEIGHTS[name]
    given, from_env = tmp_path / "given", tmp_path / "env"
    for folder in (given, from_env):
        folder.mkdir()
        (folder / entry.file).write_bytes(b"x")
    assert registry.find_weights(name, [None, given]) == given / entry.file
    assert registry.find_weights(name, [given / entry.file]) == given / entry.file  # a file is taken as it is
    for variable in ("PMRF_FACE_WEIGHTS", "PMRF_INCEPTION_WEIGHTS"):  # read no more: the options are the switch
        monkeypatch.setenv(variable, str(from_env))
    assert registry.candidates(name) == [registry._folder(folder) / entry.file for folder in entry.folders]


def test_offline_never_downloads_and_online_downloads_to_the_cache(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        with open(dst, "wb") as handle:
            handle.write(b"weights")

    monkeypatch.setattr("torch.hub.download_url_to_file", fake_download)
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(registry, "METRICS_CKPT", tmp_path / "none")
    with pytest.raises(MissingWeightsError):
        registry.find_weights("vgg16", offline=True)
    assert calls == []
    path = registry.find_weights("vgg16", offline=False)
    assert path == tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth" and path.read_bytes() == b"weights"
    assert calls == [(registry.WEIGHTS["vgg16"].url, "397923af")]


def test_a_failed_download_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    def failing(url, dst, hash_prefix=None, progress=True):
        open(dst, "wb").close()
        raise RuntimeError("invalid hash value (expected \"397923af\", got \"00000000\")")

    monkeypatch.setattr("torch.hub.download_url_to_file", failing)
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError) as caught:
        registry.find_weights("vgg16", [tmp_path / "given"], offline=False)
    assert "\n" not in str(caught.value) and "download failed" in str(caught.value)
    assert not (tmp_path / "given" / "vgg16-397923af.pth").exists()


def test_verify_checks_the_known_checksum_prefix(tmp_path):
    import hashlib

    from utils.weights import WeightsReadError

    path = tmp_path / "file.pth"
    path.write_bytes(b"not the inception weights")
    assert not hashlib.sha256(path.read_bytes()).hexdigest().startswith("6726825d")
    with pytest.raises(WeightsReadError):
        registry.verify("inception", path)
    registry.verify("arcface", path)  # no checksum known: nothing to check


def test_a_folder_left_unset_is_no_folder(tmp_path, monkeypatch):
    """`[args.some_dir]` with the option not given: the file goes where it would without it."""
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError) as unset:
        registry.find_weights("vgg16", [None], offline=True)
    with pytest.raises(MissingWeightsError) as absent:
        registry.find_weights("vgg16", [], offline=True)
    assert str(unset.value) == str(absent.value)
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in str(unset.value)
