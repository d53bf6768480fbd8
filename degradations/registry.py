"""The named degradations of the paper's experiments (spec section 4)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import Degradation
from .noise import BicubicSuperResolutionNoise, ColorizationNoise, GaussianNoise, RandomInpaintingNoise

Factory = Callable[[torch.Generator | None], Degradation]


def _difface(generator: torch.Generator | None) -> Degradation:
    from .difface import DifFaceDegradation  # imports BasicSR and OpenCV only when needed

    return DifFaceDegradation(generator)


_FACTORIES: dict[str, Factory] = {
    "sr_bicubic_x8_gaussian_noise_005": lambda g: BicubicSuperResolutionNoise(8, 0.05, g),
    "gaussian_noise_035": lambda g: GaussianNoise(0.35, g),
    "colorization_gaussian_noise_025": lambda g: ColorizationNoise(0.25, g),
    "random_inpainting_gaussian_noise_01": lambda g: RandomInpaintingNoise(0.9, 0.1, g),
    "difface": _difface,
}

DEGRADATION_NAMES: tuple[str, ...] = tuple(_FACTORIES)

_Y_CHANNELS = {"colorization_gaussian_noise_025": 1}


def _check_name(name: str) -> None:
    if name not in _FACTORIES:
        raise ValueError(f"unknown degradation {name!r}; choose one of: {', '.join(DEGRADATION_NAMES)}")


def create_degradation(name: str, generator: torch.Generator | None = None) -> Degradation:
    """The degradation called `name`: a callable mapping x (3, H, W) in [0, 1] to (y, x_override or None).

    Without `generator` it draws from torch's global RNG (seeded per DataLoader worker by PyTorch);
    with one, the sequence of outputs is reproducible from the generator's seed.
    """
    _check_name(name)
    degradation = _FACTORIES[name](generator)
    degradation.name = name
    return degradation


def degradation_channels(name: str) -> int:
    """Number of channels of y for the degradation `name` (1 for colorization, else 3)."""
    _check_name(name)
    return _Y_CHANNELS.get(name, 3)
