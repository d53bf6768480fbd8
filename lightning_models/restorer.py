"""`Restorer`: the one object every restoration goes through.

inference.py (aligned faces, `restoration.restore_aligned`), whole photos, videos and the app
(`restoration.FaceRestorer`), test.py and validation (`MMSERectifiedFlow.test_step`, `validation_step`) and
the benchmarks all restore with a `Restorer`. It holds the method (`lightning_models.pmrf.PMRF`: f(y),
v(x_t, t) and `sample`) and owns how it runs: the device (the networks'), the precision
(`utils.precision`: '32', 'bf16-mixed', '16-mixed'), the raw or the EMA weights (`use_ema`), the source
noise's generator (`seed`), K and the fidelity weight. `set_up_networks` chooses the attention kernel and
compiles, for train.py as for the restoring programs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from utils.auto_compile import should_compile
from utils.precision import autocast, precision_name

from .pmrf import PMRF, Sample


def seeded_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A generator on the device the noise is drawn on (no host round trip), or None for fresh noise."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


@dataclass
class Restoration:
    """A batch restored: PMRF's estimate and, when the model has one, the posterior mean (float, CPU)."""

    xhat: torch.Tensor
    posterior_mean: torch.Tensor | None = None


class Restorer:
    """Restores measurements y (N, C, H, W) in [0, 1] with a method, on its networks' device.

    `model`: a `PMRF`, or a module that carries one (`MMSERectifiedFlow`: `pmrf_with(use_ema)` gives
    the method over its raw weights or over its EMA copy). `seed` makes the source noise reproducible
    (one generator, advanced call after call; `generator` hands one in instead). `precision` '32' adds
    no autocast of its own (an enclosing one, such as Lightning's, still applies). `fidelity_weight` w
    gives (1 − w)·PMRF + w·posterior mean (0: PMRF, 1: the posterior mean).
    """

    def __init__(
        self,
        model,
        num_flow_steps: int = 25,
        seed: int | None = None,
        precision: str = "32",
        fidelity_weight: float = 0.0,
        *,
        use_ema: bool = False,
        generator: torch.Generator | None = None,
    ):
        self.model = model
        if hasattr(model, "pmrf_with"):
            self.method: PMRF = model.pmrf_with(use_ema)
        elif use_ema:
            raise ValueError("use_ema needs a model that keeps an EMA of its weights (MMSERectifiedFlow)")
        else:
            self.method = model
        self.num_flow_steps = int(num_flow_steps)
        self.precision = precision_name(precision)
        self.fidelity_weight = float(fidelity_weight)
        self.method.check_fidelity_weight(self.fidelity_weight)
        self.generator = generator if generator is not None else seeded_generator(seed, self.device)

    @property
    def device(self) -> torch.device:
        return next(self.method.parameters(), torch.empty(0)).device

    @property
    def has_posterior_mean(self) -> bool:
        return self.method.has_posterior_mean

    def draw_noise(self, count: int, size: int) -> torch.Tensor:
        """Source noise n for `count` faces of size×size, from this restorer's generator, to hand back to
        `restore(..., noise=...)` (a video restores each face with one n in every frame)."""
        like = torch.empty(count, 1, size, size, device=self.device)  # only its shape and device are read
        return self.method.noise(like, self.generator)

    @torch.no_grad()
    def sample(
        self,
        y: torch.Tensor,
        num_flow_steps: int | None = None,
        *,
        noise: torch.Tensor | None = None,
        callback: Callable[[dict], None] | None = None,
        non_noisy_z0: torch.Tensor | None = None,
        posterior_mean: torch.Tensor | None = None,
        fidelity_weight: float | None = None,
    ) -> Sample:
        """The method's sample of a batch, on the device (see `PMRF.sample`), at this restorer's precision,
        K (unless given) and fidelity weight (unless given)."""
        device = self.device
        with autocast(self.precision, device):
            return self.method.sample(
                y.to(device), num_flow_steps or self.num_flow_steps, self.generator, callback=callback,
                non_noisy_z0=non_noisy_z0, posterior_mean=posterior_mean, noise=noise,
                fidelity_weight=self.fidelity_weight if fidelity_weight is None else fidelity_weight,
            )

    @torch.no_grad()
    def posterior_mean(self, y: torch.Tensor) -> torch.Tensor:
        """clip(f(y), 0, 1) at this restorer's precision."""
        device = self.device
        with autocast(self.precision, device):
            return self.method.posterior_mean(y.to(device))

    def restore(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> Restoration:
        """A batch restored, as float tensors on the CPU."""
        sample = self.sample(images, noise=noise)
        mean = sample.posterior_mean
        return Restoration(sample.xhat.float().cpu(), None if mean is None else mean.float().cpu())

    def __call__(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.restore(images, noise).xhat


def set_up_networks(
    model,
    attention_backend: str | None = None,
    compile: bool | str = False,
    compile_mmse: bool = False,
    device: torch.device | str | None = None,
    compile_options: Mapping[str, Any] | None = None,
):
    """Choose the neighbourhood-attention kernel and compile the networks in place: state-dict keys, types,
    the EMA's order and checkpoints are unchanged. The trained network and its EMA copy get the same kernel
    and compile (lazily: a copy that never runs is never compiled). Compiling the HDiT compiles its
    attention too. `compile` is a decision or a --compile value ('auto': an open-ended job on `device`, by
    default the model's; see utils.auto_compile); `compile_options` are torch.compile's keywords."""
    ema = getattr(model, "ema", None)
    trained = [network for network in (model.model, getattr(ema, "network", None)) if network is not None]
    compiles = should_compile(compile, device if device is not None else next(model.parameters()).device)
    for network in trained:
        if attention_backend is not None and hasattr(network, "set_neighborhood_backend"):
            network.set_neighborhood_backend(attention_backend)
        if compiles:
            network.compile(**(compile_options or {}))
    if compile_mmse and model.mmse_model is not None:
        model.mmse_model.compile(**(compile_options or {}))
    return model
