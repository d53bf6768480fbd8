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

import inspect
from collections.abc import Callable, Sequence
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


def condition_channels(method: Method, measurement_channels: int = 3, channels: int = 3) -> int:
    """Channels the velocity network takes besides x_t: those of f(y) (x's `channels`), of y
    (`measurement_channels`: 1 for colorization's gray y) or none."""
    return {"posterior_mean": channels, "measurement": measurement_channels, None: 0}[method.condition]


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


def takes_inputs(net: Callable, count: int) -> bool:
    """Whether `net` can be called with `count` positional tensors, judged from its forward's signature.

    A signature that cannot be read, or takes *args (torch.compile's wrapper), counts as yes.
    """
    try:
        signature = inspect.signature(getattr(net, "forward", net))
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


def check_networks(method: Method, model: nn.Module, mmse_model: nn.Module | None) -> None:
    """Refuse, in one line, a network that cannot be called the way the method calls it: the velocity as
    velocity(x_t, t) (so that t is never silently dropped), a posterior-mean network as f(y)."""
    if method.stage == "mmse":
        if not takes_inputs(model, 1):
            raise ValueError(f"the mmse stage calls its network as f(y); {type(model).__name__}.forward does not take one input")
    elif not takes_inputs(model, 2):
        raise ValueError(
            f"method {method.name!r} calls its network as velocity(x_t, t), but {type(model).__name__}.forward "
            "takes no time input; use a velocity network (an HDiT architecture, or any module whose forward "
            "takes (x, t))"
        )
    if mmse_model is not None and not takes_inputs(mmse_model, 1):
        raise ValueError(f"the posterior-mean network is called as f(y); {type(mmse_model).__name__}.forward does not take one input")


# ------------------------------------------------------------------------------------ the module


@dataclass
class Source:
    z0: torch.Tensor | None  # where the flow starts (None for the mmse stage)
    condition: torch.Tensor | None  # what the network sees besides x_t
    posterior_mean: torch.Tensor | None  # clip(f(y)) when the method has f


def fidelity_blend(xhat: torch.Tensor, posterior_mean: torch.Tensor, fidelity_weight: float) -> torch.Tensor:
    """(1 − w)·xhat + w·posterior_mean: w = 0 is xhat itself, w = 1 the posterior mean itself.

    Between X̂0 and X* this moves along the optimal distortion–perception curve (Freirich et al., 2021).
    """
    if fidelity_weight == 0:
        return xhat
    if fidelity_weight == 1:
        return posterior_mean.to(xhat.dtype)
    return torch.lerp(xhat, posterior_mean.to(xhat.dtype), float(fidelity_weight))


@dataclass
class Sample:
    xhat: torch.Tensor  # the estimate (in [0, 1] when the method clips)
    posterior_mean: torch.Tensor | None  # clip(f(y)), when the method has f
    source: torch.Tensor | None  # z0

    def with_fidelity_weight(self, fidelity_weight: float) -> Sample:
        """This sample with xhat moved a fraction w toward the posterior mean (no network call)."""
        if fidelity_weight == 0:
            return self
        if self.posterior_mean is None:
            raise ValueError(f"fidelity_weight {fidelity_weight:g} needs a posterior mean, and this method has none")
        return Sample(fidelity_blend(self.xhat, self.posterior_mean, fidelity_weight), self.posterior_mean, self.source)


class PMRF(nn.Module):
    """The method: `posterior_mean`, `source`, `velocity`, `loss` and one sampler, `sample`.

    `model` is the trained network: the velocity, called as `model(x_t, t)` (the condition concatenated to
    x_t on dim 1), or f itself for the mmse stage, called as `model(y)`; `mmse_model` is the frozen
    posterior-mean network, called as `mmse_model(y)`. Tensors are (N, C, …): images (N, 3, H, W) or
    vectors (N, d); `channels` is C of x (3 for RGB, d for vectors). `clip` clamps the posterior mean and
    the estimate to [0, 1] (images; off for unbounded data). State-dict keys are `model.*` and
    `mmse_model.*`, as in checkpoints.
    """

    def __init__(
        self,
        method: Method,
        model: nn.Module,
        mmse_model: nn.Module | None = None,
        source_noise_std: float = 0.0,
        eps: float = 0.0,
        channels: int = 3,
        clip: bool = True,
    ):
        super().__init__()
        if method.uses_posterior_mean and mmse_model is None:
            raise ValueError(f"method {method.name!r} needs a posterior-mean network (mmse_model)")
        check_networks(method, model, mmse_model)
        self.method, self.model, self.mmse_model = method, model, mmse_model
        self.source_noise_std = float(source_noise_std)
        self.eps = float(eps)  # t_min: the flow runs on [eps, 1]
        self.channels = int(channels)
        self.clip = bool(clip)

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0, 1) if self.clip else x

    @property
    def has_posterior_mean(self) -> bool:
        """Whether samples carry a posterior mean (and so accept a fidelity weight above 0)."""
        return self.method.uses_posterior_mean

    def check_fidelity_weight(self, fidelity_weight: float) -> None:
        """Raise ValueError (one line) unless w is in [0, 1] and, for w > 0, the method has f."""
        if not 0 <= fidelity_weight <= 1:
            raise ValueError(f"fidelity_weight must be in [0, 1], got {fidelity_weight}")
        if fidelity_weight > 0 and not self.has_posterior_mean:
            raise ValueError(
                f"fidelity_weight {fidelity_weight:g}: method {self.method.name!r} has no posterior mean to move "
                "toward; only 0 is possible"
            )

    @torch.no_grad()
    def posterior_mean(self, y: torch.Tensor) -> torch.Tensor:
        """clip(f(y), 0, 1), without a graph: f is frozen."""
        return self._clip(self.mmse_model(y))

    def noise(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """n ~ N(0, I) of x's shape (N, channels, *like's other dims), float32, on `like`'s device."""
        shape = (like.shape[0], self.channels, *like.shape[2:])
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
            if tuple(noise.shape) != (y.shape[0], self.channels, *y.shape[2:]):
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
            if base.shape[1] != self.channels:
                if base.shape[1] != 1:
                    raise ValueError(
                        f"method {method.name!r} starts from a tensor of {base.shape[1]} channels, but x has "
                        f"{self.channels}"
                    )
                base = base.expand(-1, self.channels, *base.shape[2:])  # a gray y (colorization)
            n = self.noise(y, generator) if noise is None else noise
            z0 = base + self.source_noise_std * n if self.source_noise_std else base
        condition = {"posterior_mean": posterior_mean, "measurement": y, None: None}[method.condition]
        return Source(z0, condition, posterior_mean)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            x_t = torch.cat([x_t, condition.to(x_t.dtype)], dim=1)
        return self.model(x_t, t)

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
            return F.mse_loss(self._clip(self.model(y)), x)
        source = self.source(y, generator, non_noisy_z0)
        v = self.velocity(interpolate(x, source.z0, t), t, source.condition)
        return F.mse_loss(v, x - source.z0)

    @torch.no_grad()
    def sample(
        self,
        y: torch.Tensor,
        num_flow_steps: int | Sequence[float] | torch.Tensor,
        generator: torch.Generator | None = None,
        callback: Callable[[dict], None] | None = None,
        non_noisy_z0: torch.Tensor | None = None,
        posterior_mean: torch.Tensor | None = None,
        fidelity_weight: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> Sample:
        """Restore a batch: Euler steps from z0, clipped to [0, 1]. States go to `callback`.

        `num_flow_steps` is K (the reference's grid on [eps, 1]) or a time grid t_0 < … < t_K.
        A `posterior_mean` already computed for `y` is reused instead of running f again; a given
        `noise` is the source's n (see `source`). With `fidelity_weight` w > 0, xhat is
        (1 − w)·xhat + w·posterior mean (`Sample.with_fidelity_weight`).
        """
        self.check_fidelity_weight(fidelity_weight)
        if self.method.stage == "mmse":
            return Sample(self._clip(self.model(y)), None, None)
        source = self.source(y, generator, non_noisy_z0, posterior_mean, noise)
        x = sample_euler(
            lambda x_t, t: self.velocity(x_t, t, source.condition), source.z0, num_flow_steps, self.eps, callback
        )
        return Sample(self._clip(x), source.posterior_mean, source.z0).with_fidelity_weight(fidelity_weight)
