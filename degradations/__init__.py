"""Measurement operators y = A(x) + noise used to build training and test pairs."""

from .base import Degradation
from .noise import BicubicSuperResolutionNoise, ColorizationNoise, GaussianNoise, RandomInpaintingNoise
from .registry import DEGRADATION_NAMES, create_degradation, degradation_channels

__all__ = [
    "DEGRADATION_NAMES",
    "BicubicSuperResolutionNoise",
    "ColorizationNoise",
    "Degradation",
    "GaussianNoise",
    "RandomInpaintingNoise",
    "create_degradation",
    "degradation_channels",
]
