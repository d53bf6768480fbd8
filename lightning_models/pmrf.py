"""PMRF and its four baselines, on one screen.

PMRF restores x from a measurement y in two stages: a posterior-mean predictor f(y) ≈ E[x | y]
(`mmse_model`, frozen), then a rectified flow (`model`, the velocity v(x_t, t)) from the noisy posterior
mean z0 = clip(f(y), 0, 1) + σ_s·n to the clean images. Training minimises ‖v(x_t, t) − (x − z0)‖² on
x_t = t·x + (1 − t)·z0; sampling integrates dx/dt = v(x, t) from z0 with K Euler steps.

The paper's baselines differ only in what z0 is built from and what the network sees besides x_t
(`METHODS`, the methods table as data):

================================  ==========  ============  ======================  ===================
method                            stage       conditional   source z0               network input
================================  ==========  ============  ======================  ===================
pmrf                              flow        no            clip(f(y)) + σ_s·n      x_t
posterior_conditioned_on_mmse     flow        yes           n                       [x_t, clip(f(y))]
posterior_conditioned_on_y        flow        yes           n                       [x_t, y]
naive_flow                        naive_flow  no            y (+ σ_s·n)             x_t
mmse                              mmse        no            —                       y → clip(model(y))
================================  ==========  ============  ======================  ===================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .flow import interpolate, sample_euler

# ----------------------------------------------------------------------------------- the methods


@dataclass(frozen=True)
class Method:
    """One row of the methods table: what z0 is built from and what is concatenated to x_t."""

    name: str
    stage: str  # 'flow', 'naive_flow' or 'mmse'
    conditional: bool
    uses_posterior_mean: bool
    source: str | None  # 'posterior_mean', 'noise' or 'measurement' (None: no flow)
    condition: str | None = None  # 'posterior_mean', 'measurement' or None


METHODS = {
    m.name: m
    for m in (
        Method("pmrf", "flow", False, True, source="posterior_mean"),
        Method("posterior_conditioned_on_mmse", "flow", True, True, source="noise", condition="posterior_mean"),
        Method("posterior_conditioned_on_y", "flow", True, False, source="noise", condition="measurement"),
        Method("naive_flow", "naive_flow", False, False, source="measurement"),
        Method("mmse", "mmse", False, False, source=None),
    )
}
STAGES = ("mmse", "flow", "naive_flow")


def method_for(stage: str, conditional: bool, has_posterior_mean: bool) -> Method:
    """The method a (stage, conditional, posterior-mean network given) combination trains."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if stage != "flow" and conditional:
        raise ValueError(f"--conditional applies to the 'flow' stage only, not to {stage!r}")
    for method in METHODS.values():
        if (method.stage, method.conditional) == (stage, conditional) and (
            stage != "flow" or method.uses_posterior_mean == has_posterior_mean
        ):
            return method
    raise ValueError(
        "PMRF (stage 'flow', not conditional) needs a posterior-mean model: give mmse_model_ckpt_path "
        "(and mmse_model_arch unless the checkpoint records it)"
    )


def run_network(net: nn.Module, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """A velocity network (HDiT) takes (x, t); a posterior-mean network (SwinIR) takes x alone."""
    from arch import HDiT

    inner = getattr(net, "_orig_mod", net)  # behind torch.compile
    if isinstance(inner, HDiT):
        if x.shape[1] == 1 and inner.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)  # a gray measurement into an RGB network
        return net(x, t)
    return net(x)


# ------------------------------------------------------------------------------------ the module


@dataclass
class Source:
    z0: torch.Tensor | None  # where the flow starts (None for the mmse stage)
    condition: torch.Tensor | None  # what the network sees besides x_t
    posterior_mean: torch.Tensor | None  # clip(f(y)) when the method has f


@dataclass
class Sample:
    xhat: torch.Tensor  # the estimate, in [0, 1]
    posterior_mean: torch.Tensor | None  # clip(f(y)), when the method has f
    source: torch.Tensor | None  # z0


class PMRF(nn.Module):
    """The method: `posterior_mean`, `source`, `velocity`, `loss` and one sampler, `sample`.

    `model` is the trained network (the velocity, or f itself for the mmse stage); `mmse_model` the
    frozen posterior-mean network. State-dict keys are `model.*` and `mmse_model.*`, as in checkpoints.
    """

    def __init__(
        self,
        method: Method,
        model: nn.Module,
        mmse_model: nn.Module | None = None,
        source_noise_std: float = 0.0,
        eps: float = 0.0,
        image_channels: int = 3,
    ):
        super().__init__()
        if method.uses_posterior_mean and mmse_model is None:
            raise ValueError(f"method {method.name!r} needs a posterior-mean network (mmse_model)")
        self.method, self.model, self.mmse_model = method, model, mmse_model
        self.source_noise_std = float(source_noise_std)
        self.eps = float(eps)  # t_min: the flow runs on [eps, 1]
        self.image_channels = image_channels

    @torch.no_grad()
    def posterior_mean(self, y: torch.Tensor) -> torch.Tensor:
        """clip(f(y), 0, 1), without a graph: f is frozen."""
        return run_network(self.mmse_model, y).clamp(0, 1)

    def noise(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """n ~ N(0, I) of the image's shape (image_channels channels), float32, on `like`'s device."""
        shape = (like.shape[0], self.image_channels, *like.shape[2:])
        if generator is None or generator.device == like.device:
            return torch.randn(shape, generator=generator, device=like.device)
        return torch.randn(shape, generator=generator, device=generator.device).to(like.device)

    def source(
        self,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        non_noisy_z0: torch.Tensor | None = None,
        posterior_mean: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> Source:
        """z0, the condition and the posterior mean of the method, built as its row of the table says.

        `non_noisy_z0` (reflow) replaces clip(f(y)) for pmrf and y for naive_flow; noise is still added.
        `noise` is n itself, drawn beforehand (a video keeps one n per face); else n is drawn here.
        """
        if noise is not None:
            if tuple(noise.shape) != (y.shape[0], self.image_channels, *y.shape[2:]):
                raise ValueError(f"noise of shape {tuple(noise.shape)} given for a measurement of {tuple(y.shape)}")
            noise = noise.to(y.device, torch.float32)
        method = self.method
        if method.uses_posterior_mean and posterior_mean is None and (method.condition or non_noisy_z0 is None):
            posterior_mean = self.posterior_mean(y)
        if method.source is None:
            return Source(None, None, posterior_mean)
        if method.source == "noise":
            z0 = self.noise(y, generator) if noise is None else noise
        else:
            base = posterior_mean if method.source == "posterior_mean" else y
            base = (non_noisy_z0 if non_noisy_z0 is not None else base).float()
            if base.shape[1] != self.image_channels:
                base = base.expand(-1, self.image_channels, -1, -1)  # a gray y (colorization)
            n = self.noise(y, generator) if noise is None else noise
            z0 = base + self.source_noise_std * n if self.source_noise_std else base
        condition = {"posterior_mean": posterior_mean, "measurement": y, None: None}[method.condition]
        return Source(z0, condition, posterior_mean)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            x_t = torch.cat([x_t, condition.to(x_t.dtype)], dim=1)
        return run_network(self.model, x_t, t)

    def loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor | None = None,
        non_noisy_z0: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Flow matching ‖v(x_t, t) − (x − z0)‖² for the flows; ‖clip(model(y)) − x‖² for mmse."""
        if self.method.stage == "mmse":
            return F.mse_loss(run_network(self.model, y).clamp(0, 1), x)
        source = self.source(y, generator, non_noisy_z0)
        v = self.velocity(interpolate(x, source.z0, t), t, source.condition)
        return F.mse_loss(v, x - source.z0)

    @torch.no_grad()
    def sample(
        self,
        y: torch.Tensor,
        num_flow_steps: int,
        generator: torch.Generator | None = None,
        callback: Callable[[dict], None] | None = None,
        non_noisy_z0: torch.Tensor | None = None,
        posterior_mean: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> Sample:
        """Restore a batch: K Euler steps from z0, clipped to [0, 1]. States go to `callback`.

        A `posterior_mean` already computed for `y` is reused instead of running f again; a given
        `noise` is the source's n (see `source`).
        """
        if self.method.stage == "mmse":
            return Sample(run_network(self.model, y).clamp(0, 1), None, None)
        source = self.source(y, generator, non_noisy_z0, posterior_mean, noise)
        x = sample_euler(
            lambda x_t, t: self.velocity(x_t, t, source.condition), source.z0, num_flow_steps, self.eps, callback
        )
        return Sample(x.clamp(0, 1), source.posterior_mean, source.z0)
