"""Token positions on [-1, 1] and the axial rotary embedding used by HDiT's attention."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn


def _centres(start: float, stop: float, num: int, device=None) -> torch.Tensor:
    edges = torch.linspace(start, stop, num + 1, device=device)
    return (edges[:-1] + edges[1:]) / 2


def make_axial_pos(h: int, w: int, device=None) -> torch.Tensor:
    """(h, w, 2) grid of (y, x) patch centres; the longer side spans [-1, 1], the shorter keeps aspect."""
    aspect = w / h
    y_max = 1 / aspect if aspect > 1 else 1.0
    x_max = aspect if aspect < 1 else 1.0
    y = _centres(-y_max, y_max, h, device)
    x = _centres(-x_max, x_max, w, device)
    return torch.stack(torch.meshgrid(y, x, indexing="ij"), dim=-1)


def downscale_pos(pos: torch.Tensor) -> torch.Tensor:
    """Positions of 2×2-merged tokens: the mean of the four."""
    pos = rearrange(pos, "... (h nh) (w nw) e -> ... h w (nh nw) e", nh=2, nw=2)
    return pos.mean(dim=-2)


class AxialRoPE(nn.Module):
    """Rotary embedding with d_head/8 frequencies per axis and head (buffer `freqs`: (n_heads, d_head/8))."""

    def __init__(self, d_head: int, n_heads: int):
        super().__init__()
        if d_head % 8:
            raise ValueError(f"d_head must be a multiple of 8 for the axial rotary embedding, got {d_head}")
        n_freqs = d_head // 8
        freqs = torch.linspace(math.log(math.pi), math.log(10 * math.pi), n_heads * n_freqs + 1)[:-1].exp()
        self.register_buffer("freqs", freqs.view(n_freqs, n_heads).T.contiguous())

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        """pos (..., 2) -> angles (..., n_heads, d_head/4): y-axis angles then x-axis angles."""
        freqs = self.freqs.to(pos.dtype)
        theta_y = pos[..., None, 0:1] * freqs
        theta_x = pos[..., None, 1:2] * freqs
        return torch.cat([theta_y, theta_x], dim=-1)


def apply_rotary(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rotate channel i with channel i + d for i < d (d = theta's last size); later channels pass through."""
    d = theta.shape[-1]
    x1, x2, rest = x[..., :d], x[..., d : 2 * d], x[..., 2 * d :]
    dtype = torch.promote_types(x.dtype, torch.float32)
    cos, sin = theta.to(dtype).cos(), theta.to(dtype).sin()
    x1, x2 = x1.to(dtype), x2.to(dtype)
    y1 = x1 * cos - x2 * sin
    y2 = x2 * cos + x1 * sin
    return torch.cat([y1.to(x.dtype), y2.to(x.dtype), rest], dim=-1)
