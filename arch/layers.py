"""Small layers shared by the HDiT blocks: norms, GEGLU, Fourier features, token merge/split."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F


def zero_init(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    # Statistics in at least float32, so bf16 activations do not lose the normalisation.
    dtype = torch.promote_types(torch.promote_types(x.dtype, scale.dtype), torch.float32)
    mean_sq = x.to(dtype).pow(2).mean(dim=-1, keepdim=True)
    return x * (scale.to(dtype) * torch.rsqrt(mean_sq + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.scale, self.eps)


class AdaRMSNorm(nn.Module):
    """RMSNorm whose per-sample scale is 1 + a (zero-initialised) linear map of the conditioning."""

    def __init__(self, features: int, cond_features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.linear = zero_init(nn.Linear(cond_features, features, bias=False))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale = self.linear(cond)[:, None, None, :] + 1
        return rms_norm(x, scale, self.eps)


def linear_geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x Wᵀ (+ b) split in halves, value and gate: value · gelu(gate)."""
    value, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
    return value * F.gelu(gate)


class LinearGEGLU(nn.Linear):
    """Bias-free linear to 2·d_ff; first half is the value, second half the gate: value · gelu(gate)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features * 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_geglu(x, self.weight, self.bias)


class FourierFeatures(nn.Module):
    """[cos(2π x Wᵀ), sin(2π x Wᵀ)] with a fixed random W ~ N(0, std²) stored as buffer `weight`."""

    def __init__(self, in_features: int, out_features: int, std: float = 1.0):
        super().__init__()
        if out_features % 2:
            raise ValueError(f"FourierFeatures needs an even number of output features, got {out_features}")
        self.register_buffer("weight", torch.randn(out_features // 2, in_features) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * x @ self.weight.T
        return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TokenMerge(nn.Module):
    """Merge each (ph, pw) patch of tokens into one: features ordered (row, col, channel), then project."""

    def __init__(self, in_features: int, out_features: int, patch_size: tuple[int, int] = (2, 2)):
        super().__init__()
        self.h, self.w = patch_size
        self.proj = nn.Linear(in_features * self.h * self.w, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x, "... (h nh) (w nw) e -> ... h w (nh nw e)", nh=self.h, nw=self.w)
        return self.proj(x)


class TokenSplitWithoutSkip(nn.Module):
    """Project each token to a (ph, pw) patch of tokens (the inverse of TokenMerge)."""

    def __init__(self, in_features: int, out_features: int, patch_size: tuple[int, int] = (2, 2)):
        super().__init__()
        self.h, self.w = patch_size
        self.proj = nn.Linear(in_features, out_features * self.h * self.w, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return rearrange(x, "... h w (nh nw e) -> ... (h nh) (w nw) e", nh=self.h, nw=self.w)


class TokenSplit(nn.Module):
    """Split tokens 2×2 and blend with the skip connection: lerp(skip, x, fac), fac learned (init 0.5)."""

    def __init__(self, in_features: int, out_features: int, patch_size: tuple[int, int] = (2, 2)):
        super().__init__()
        self.h, self.w = patch_size
        self.fac = nn.Parameter(torch.ones(1) * 0.5)
        self.proj = nn.Linear(in_features, out_features * self.h * self.w, bias=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        x = rearrange(x, "... h w (nh nw e) -> ... (h nh) (w nw) e", nh=self.h, nw=self.w)
        return torch.lerp(skip, x, self.fac.to(x.dtype))
