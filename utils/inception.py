"""The Inception-v3 feature extractor of FID / KID / IS / precision-recall, built from safely read weights.

torch-fidelity and torchmetrics would read ``weights-inception-2015-12-05-6726825d.pth`` themselves with
``torch.load(..., weights_only=False)`` (or download it). Here the file is read by `utils.weights`
(tensors only; a missing, corrupt or unsafe file is `MissingWeightsError` / `WeightsReadError`) and the
library network is built around those tensors, so no pickled code can run. Where the file is (and
where to get it) is `utils.registry`'s entry ``inception``: ``find_weights("inception", dirs, offline)``.


* `torch_fidelity_inception(weights, features_list)`: torch-fidelity's own extractor (its TF-1.x
  compatible resize; what the evaluation programs and the authors' scripts use);
* `torchmetrics_inception(weights, features_list)`: torchmetrics' ``NoTrainInceptionV3`` for
  training-time validation, e.g. ``FrechetInceptionDistance(feature=torchmetrics_inception(path, ["2048"]),
  normalize=True)`` and ``InceptionScore(feature=torchmetrics_inception(path, ["logits_unbiased"]),
  normalize=True)``; it takes uint8 images or floats in [0, 1] and returns an (N, d) matrix.

Importing this module is cheap: torch-fidelity and torchmetrics are imported on first use.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from utils.weights import WeightsReadError, load_state_dict

LOGITS_FEATURES = ("logits_unbiased", "logits")
_BUILD_LOCK = threading.Lock()

Weights = str | os.PathLike | Mapping[str, torch.Tensor]


def read_inception_weights(weights: Weights) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, where it came from): read through utils.weights unless tensors are given."""
    if isinstance(weights, Mapping):
        return dict(weights), "the given Inception state dict"
    return load_state_dict(Path(weights)), str(weights)


def _build(cls: type, state: dict[str, torch.Tensor], source: str, *args, **kwargs) -> nn.Module:
    """`cls(*args, **kwargs)` (an InceptionV3 of torch-fidelity) holding `state`, with no file read.

    torch-fidelity's constructor builds the layers and then asks `load_state_dict_from_url` for the
    weights when it is given no path. That one name is pointed at `state` while the network is built,
    so the constructor neither downloads nor unpickles anything.
    """
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception

    if not callable(getattr(fidelity_inception, "load_state_dict_from_url", None)):
        raise RuntimeError("this torch-fidelity builds InceptionV3 differently; cannot hand it tensors")
    handed = []

    def hand_over(*_args, **_kwargs):
        handed.append(True)
        return state

    with _BUILD_LOCK:
        original = fidelity_inception.load_state_dict_from_url
        fidelity_inception.load_state_dict_from_url = hand_over
        try:
            network = cls(*args, feature_extractor_weights_path=None, **kwargs)
        except RuntimeError as error:  # strict load_state_dict: keys or shapes differ
            detail = " ".join(str(error).split())
            raise WeightsReadError(
                f"{source}: does not fit torch-fidelity's InceptionV3 ({detail[:300]})"
            ) from None
        finally:
            fidelity_inception.load_state_dict_from_url = original
    if not handed:
        raise RuntimeError("torch-fidelity's InceptionV3 did not take the weights it was handed")
    return network.eval().requires_grad_(False)


def torch_fidelity_inception(
    weights: Weights, features_list: Sequence[str] = ("2048", "logits_unbiased")
) -> nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` ('inception-v3-compat') from safely read weights.

    Its forward takes uint8 (N, 3, H, W) images and returns a tuple, one tensor per `features_list` entry.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    state, source = read_inception_weights(weights)
    return _build(FeatureExtractorInceptionV3, state, source, "inception-v3-compat", list(features_list))


@functools.cache
def _torchmetrics_class() -> type:
    from torchmetrics.image.fid import NoTrainInceptionV3

    class SafeNoTrainInceptionV3(NoTrainInceptionV3):
        """torchmetrics' NoTrainInceptionV3 that also takes float images in [0, 1].

        With a custom feature module, ``FrechetInceptionDistance(normalize=True)`` passes the float
        images through unchanged while ``InceptionScore(normalize=True)`` converts them to uint8; both
        end up with torchmetrics' own conversion ``(images * 255).byte()`` here.
        """

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            if images.is_floating_point():
                images = (images * 255).byte()
            return super().forward(images)

    return SafeNoTrainInceptionV3


def torchmetrics_inception(
    weights: Weights, features_list: Sequence[str] = ("2048",), antialias: bool = True
) -> nn.Module:
    """torchmetrics' Inception feature module (one feature, e.g. ['2048'] or ['logits_unbiased']).

    `antialias=True` is torchmetrics' default for FrechetInceptionDistance and InceptionScore. The
    module has `num_features`, so FrechetInceptionDistance does not run a dummy image through it.
    """
    features_list = list(features_list)
    if len(features_list) != 1:
        raise ValueError(f"torchmetrics takes one feature per metric, got {features_list}")
    state, source = read_inception_weights(weights)
    network = _build(
        _torchmetrics_class(), state, source, "inception-v3-compat", features_list, antialias=antialias
    )
    name = features_list[0]
    network.num_features = network.fc.out_features if name in LOGITS_FEATURES else int(name)
    return network
