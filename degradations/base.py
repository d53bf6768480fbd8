"""What every degradation shares: the call signature and where its randomness comes from.

Randomness: by default a degradation draws from torch's global RNG. PyTorch seeds that RNG differently in
every DataLoader worker (base seed + worker id), so workers never repeat each other's noise, and
`torch.manual_seed` / Lightning's `seed_everything` make a run reproducible. Pass a `torch.Generator` to
get a private, reproducible stream instead (meant for a single process: forked workers would copy it).
Degradations that work in NumPy (difface) draw one seed from that torch source per call and build a
`numpy.random.Generator` from it, so the same rule holds for them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class Degradation:
    """A random measurement operator: `y, x_override = degradation(x)` for one image (3, H, W) in [0, 1].

    `x_override` is None, or the ground truth to use instead of `x` (difface flips or grays it).
    """

    name: str = ""
    y_channels: int = 3

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        check_image(x)
        with torch.no_grad():
            return self.degrade(x)

    def degrade(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def randn_like(self, x: Tensor) -> Tensor:
        """Standard normal noise shaped like `x`, drawn on the CPU from this degradation's source."""
        noise = torch.randn(x.shape, generator=self.generator, dtype=torch.float32)
        return noise.to(device=x.device, dtype=x.dtype)

    def randperm(self, n: int) -> Tensor:
        return torch.randperm(n, generator=self.generator)

    def numpy_rng(self) -> np.random.Generator:
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return np.random.default_rng(seed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_image(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[0] != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"a degradation expects one RGB image tensor of shape (3, H, W), got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"a degradation expects a float image in [0, 1], got dtype {x.dtype}")
