"""HDiT, the hourglass diffusion transformer (k-diffusion's "image_transformer_v2"), as PMRF uses it.

The network takes images (N, C, H, W) and a time vector t of shape (N,) and predicts a velocity of
shape (N, out_channels, H, W). State-dict names and parameter order follow the reference so that
official checkpoints and their EMA lists load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import nn

from .attention import (
    TiledGrid,
    global_attention,
    level_tiling,
    neighborhood_attention,
    prepare_neighborhood_attention,
    shifted_window_attention,
)
from .layers import (
    AdaRMSNorm,
    FourierFeatures,
    LinearGEGLU,
    RMSNorm,
    TokenMerge,
    TokenSplit,
    TokenSplitWithoutSkip,
    zero_init,
)
from .rope import AxialRoPE, apply_rotary, downscale_pos, make_axial_pos

ATTENTION_KINDS = ("global", "neighborhood", "shifted-window", "none")
AUG_FEATURES = 9


@dataclass(frozen=True)
class AttentionSpec:
    kind: str
    d_head: int = 64
    kernel_size: int = 7
    window_size: int = 8


@dataclass(frozen=True)
class LevelSpec:
    width: int
    depth: int
    d_ff: int
    attention: AttentionSpec
    dropout: float = 0.0


@dataclass(frozen=True)
class MappingSpec:
    depth: int
    width: int
    d_ff: int
    dropout: float = 0.0


def scale_for_cosine_sim(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6):
    """Normalise q and k over d_head and multiply each by sqrt(scale) (one scale per head)."""
    dtype = torch.promote_types(torch.promote_types(q.dtype, scale.dtype), torch.float32)
    sqrt_scale = scale.to(dtype)[:, None].sqrt()
    q_factor = sqrt_scale * torch.rsqrt(q.to(dtype).pow(2).sum(-1, keepdim=True) + eps)
    k_factor = sqrt_scale * torch.rsqrt(k.to(dtype).pow(2).sum(-1, keepdim=True) + eps)
    return q * q_factor.to(q.dtype), k * k_factor.to(k.dtype)


class SelfAttentionBlock(nn.Module):
    """AdaRMSNorm → qkv → cosine-sim scaling → axial RoPE → attention → zero-init projection → residual."""

    def __init__(self, d_model: int, spec: AttentionSpec, cond_features: int, dropout: float, shift: bool = False):
        super().__init__()
        if d_model % spec.d_head:
            raise ValueError(f"width {d_model} is not a multiple of d_head {spec.d_head}")
        self.spec, self.shift = spec, shift
        self.d_head = spec.d_head
        self.n_heads = d_model // spec.d_head
        self.backend: str | None = None  # neighbourhood-attention backend; None = auto
        self.scale = nn.Parameter(torch.full([self.n_heads], 10.0))
        self.norm = AdaRMSNorm(d_model, cond_features)
        self.qkv_proj = nn.Linear(d_model, d_model * 3, bias=False)
        self.pos_emb = AxialRoPE(spec.d_head, self.n_heads)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = zero_init(nn.Linear(d_model, d_model, bias=False))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: TiledGrid | None = None) -> torch.Tensor:
        if self.spec.kind == "neighborhood":
            return neighborhood_attention(q, k, v, self.spec.kernel_size, backend=self.backend, grid=grid)
        if self.spec.kind == "shifted-window":
            return shifted_window_attention(q, k, v, self.spec.window_size, self.shift)
        return global_attention(q, k, v)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, cond: torch.Tensor, grid: TiledGrid | None = None
    ) -> torch.Tensor:
        """x (n, h, w, width) and pos (h, w, 2); with `grid`, (n, 1, h·w, width) and (1, h·w, 2) in its tile order."""
        skip = x
        x = self.norm(x, cond)
        q, k, v = rearrange(self.qkv_proj(x), "n h w (t nh e) -> t n h w nh e", t=3, e=self.d_head)
        q, k = scale_for_cosine_sim(q, k, self.scale)
        theta = self.pos_emb(pos)
        q, k = apply_rotary(q, theta), apply_rotary(k, theta)
        x = rearrange(self.attend(q, k, v, grid), "n h w nh e -> n h w (nh e)")
        return self.out_proj(self.dropout(x)) + skip


class FeedForwardBlock(nn.Module):
    def __init__(self, d_model: int, d_ff: int, cond_features: int, dropout: float):
        super().__init__()
        self.norm = AdaRMSNorm(d_model, cond_features)
        self.up_proj = LinearGEGLU(d_model, d_ff)
        self.dropout = nn.Dropout(dropout)
        self.down_proj = zero_init(nn.Linear(d_ff, d_model, bias=False))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.dropout(self.up_proj(self.norm(x, cond)))) + x


class TransformerLayer(nn.Module):
    def __init__(self, spec: LevelSpec, cond_features: int, index: int):
        super().__init__()
        if spec.attention.kind != "none":
            shift = spec.attention.kind == "shifted-window" and index % 2 == 1
            self.self_attn = SelfAttentionBlock(spec.width, spec.attention, cond_features, spec.dropout, shift)
        self.ff = FeedForwardBlock(spec.width, spec.d_ff, cond_features, spec.dropout)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, cond: torch.Tensor, grid: TiledGrid | None = None
    ) -> torch.Tensor:
        if hasattr(self, "self_attn"):
            x = self.self_attn(x, pos, cond, grid)
        return self.ff(x, cond)


class Level(nn.ModuleList):
    """The layers of one level. A neighbourhood level that the flex backend runs keeps its tokens in a
    tile order from its entry to its exit (`arch.attention.level_tiling`): one permutation in, one out."""

    def __init__(self, layers, attention: AttentionSpec | None = None):
        super().__init__(layers)
        self.attention = attention
        self.backend: str | None = None  # neighbourhood-attention backend; None = auto

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        grid = None
        if self.attention is not None and self.attention.kind == "neighborhood":
            grid = level_tiling(x.shape[1], x.shape[2], self.attention.kernel_size, x.device, self.backend,
                                self.attention.d_head, x.dtype)
        if grid is not None:
            x, pos = grid.to_tiles(x), grid.to_tiles(pos)
        for layer in self:
            x = layer(x, pos, cond, grid)
        return x if grid is None else grid.from_tiles(x)


class MappingFeedForwardBlock(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.up_proj = LinearGEGLU(d_model, d_ff)
        self.dropout = nn.Dropout(dropout)
        self.down_proj = zero_init(nn.Linear(d_ff, d_model, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.dropout(self.up_proj(self.norm(x)))) + x


class MappingNetwork(nn.Module):
    def __init__(self, spec: MappingSpec):
        super().__init__()
        self.in_norm = RMSNorm(spec.width)
        self.blocks = nn.ModuleList(
            [MappingFeedForwardBlock(spec.width, spec.d_ff, spec.dropout) for _ in range(spec.depth)]
        )
        self.out_norm = RMSNorm(spec.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_norm(x)
        for block in self.blocks:
            x = block(x)
        return self.out_norm(x)


class HDiT(nn.Module):
    def __init__(
        self,
        levels: Sequence[LevelSpec],
        mapping: MappingSpec,
        in_channels: int = 3,
        out_channels: int = 3,
        patch_size: tuple[int, int] = (4, 4),
    ):
        super().__init__()
        if not levels:
            raise ValueError("HDiT needs at least one level")
        self.levels = tuple(levels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.patch_size = tuple(patch_size)
        width0 = levels[0].width

        self.patch_in = TokenMerge(in_channels, width0, self.patch_size)
        self.time_emb = FourierFeatures(1, mapping.width)
        self.time_in_proj = nn.Linear(mapping.width, mapping.width, bias=False)
        self.aug_emb = FourierFeatures(AUG_FEATURES, mapping.width)
        self.aug_in_proj = nn.Linear(mapping.width, mapping.width, bias=False)
        self.mapping = MappingNetwork(mapping)

        self.down_levels, self.up_levels = nn.ModuleList(), nn.ModuleList()
        for spec in levels[:-1]:
            self.down_levels.append(
                Level([TransformerLayer(spec, mapping.width, i) for i in range(spec.depth)], spec.attention)
            )
            self.up_levels.append(
                Level([TransformerLayer(spec, mapping.width, spec.depth + i) for i in range(spec.depth)], spec.attention)
            )
        last = levels[-1]
        self.mid_level = Level([TransformerLayer(last, mapping.width, i) for i in range(last.depth)], last.attention)

        pairs = list(zip(levels[:-1], levels[1:]))
        self.merges = nn.ModuleList([TokenMerge(a.width, b.width) for a, b in pairs])
        self.splits = nn.ModuleList([TokenSplit(b.width, a.width) for a, b in pairs])
        self.out_norm = RMSNorm(width0)
        self.patch_out = TokenSplitWithoutSkip(width0, out_channels, self.patch_size)
        zero_init(self.patch_out.proj)
        self.neighborhood_backend: str | None = None  # None: automatic (see arch.attention)

    def set_neighborhood_backend(self, backend: str | None) -> None:
        """Force 'flex', 'natten' or 'torch' for every neighbourhood-attention block (None: automatic)."""
        self.neighborhood_backend = backend
        for module in self.modules():
            if isinstance(module, (SelfAttentionBlock, Level)):
                module.backend = backend

    def neighborhood_grids(self, h: int, w: int) -> list[tuple[int, int, int, int]]:
        """(rows, cols, kernel, d_head) of the token grid of every level with neighbourhood attention."""
        gh, gw = h // self.patch_size[0], w // self.patch_size[1]
        return [
            (gh // 2**index, gw // 2**index, spec.attention.kernel_size, spec.attention.d_head)
            for index, spec in enumerate(self.levels)
            if spec.attention.kind == "neighborhood"
        ]

    def check_input_size(self, h: int, w: int) -> None:
        ph, pw = self.patch_size
        factor = 2 ** (len(self.levels) - 1)
        if h % (ph * factor) or w % (pw * factor):
            raise ValueError(
                f"HDiT input {h}×{w}: height must be a multiple of {ph * factor} and width of {pw * factor} "
                f"(patch {ph}×{pw}, {len(self.levels)} levels)"
            )
        gh, gw = h // ph, w // pw
        for index, spec in enumerate(self.levels):
            lh, lw = gh // 2**index, gw // 2**index
            att = spec.attention
            if att.kind == "neighborhood" and (lh < att.kernel_size or lw < att.kernel_size):
                raise ValueError(
                    f"HDiT input {h}×{w}: level {index} has a {lh}×{lw} token grid, smaller than its "
                    f"{att.kernel_size}×{att.kernel_size} neighbourhood; use at least "
                    f"{att.kernel_size * ph * 2**index}×{att.kernel_size * pw * 2**index} pixels"
                )
            if att.kind == "shifted-window" and (lh % att.window_size or lw % att.window_size):
                raise ValueError(
                    f"HDiT input {h}×{w}: level {index} has a {lh}×{lw} token grid, not a multiple of its "
                    f"attention window {att.window_size}"
                )

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        if c == 1 and self.in_channels == 3:
            x, c = x.expand(-1, 3, -1, -1), 3  # a gray measurement into an RGB network, as SwinIR takes it
        if c != self.in_channels:
            raise ValueError(f"HDiT expects {self.in_channels} input channels, got {c}")
        self.check_input_size(h, w)
        prepare_neighborhood_attention(self.neighborhood_grids(h, w), x.device, self.neighborhood_backend, x.dtype)
        x = self.patch_in(x.movedim(1, -1))
        pos = make_axial_pos(x.shape[1], x.shape[2], device=x.device)

        if t is None:
            time_features = x.new_ones(n, self.time_in_proj.in_features, dtype=torch.float32)
        else:
            t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1, 1).expand(n, 1)
            time_features = self.time_emb(t)
        aug_features = self.aug_emb(torch.zeros(n, AUG_FEATURES, device=x.device))
        cond = self.mapping(self.time_in_proj(time_features) + self.aug_in_proj(aug_features))

        skips, poses = [], []
        for level, merge in zip(self.down_levels, self.merges):
            x = level(x, pos, cond)
            skips.append(x)
            poses.append(pos)
            x = merge(x)
            pos = downscale_pos(pos)
        x = self.mid_level(x, pos, cond)
        for level, split, skip, pos in reversed(list(zip(self.up_levels, self.splits, skips, poses))):
            x = level(split(x, skip), pos, cond)

        x = self.patch_out(self.out_norm(x))
        return x.movedim(-1, 1)


@dataclass
class HDiTConfig:
    """The fields a HDiT configuration may hold (named configs and user JSON files alike)."""

    widths: list[int]
    depths: list[int]
    self_attns: list[dict]
    patch_size: list[int] = field(default_factory=lambda: [4, 4])
    d_ffs: list[int] | None = None  # default: 3 × width
    dropout_rate: list[float] | float = 0.0
    mapping_width: int = 768
    mapping_depth: int = 2
    mapping_d_ff: int | None = None  # default: 3 × mapping_width
    mapping_dropout_rate: float = 0.0
    in_channels: int = 3
    out_channels: int = 3


def _attention_spec(entry: dict) -> AttentionSpec:
    entry = dict(entry)
    kind = entry.pop("type", None)
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"self_attns type {kind!r} is not one of {ATTENTION_KINDS}")
    allowed = {"d_head", "kernel_size", "window_size"}
    unknown = set(entry) - allowed
    if unknown:
        raise ValueError(f"unknown self_attns field(s) {sorted(unknown)}; allowed: type, {sorted(allowed)}")
    return AttentionSpec(kind=kind, **entry)


def hdit_from_config(config: HDiTConfig) -> HDiT:
    n = len(config.widths)
    if not (len(config.depths) == len(config.self_attns) == n) or n == 0:
        raise ValueError(
            f"HDiT config: widths, depths and self_attns must have the same non-zero length, got "
            f"{len(config.widths)}, {len(config.depths)}, {len(config.self_attns)}"
        )
    d_ffs = config.d_ffs or [3 * width for width in config.widths]
    dropouts = config.dropout_rate
    if isinstance(dropouts, (int, float)):
        dropouts = [float(dropouts)] * n
    if len(d_ffs) != n or len(dropouts) != n:
        raise ValueError("HDiT config: d_ffs and dropout_rate need one entry per level")
    levels = [
        LevelSpec(width, depth, d_ff, _attention_spec(att), dropout)
        for width, depth, d_ff, att, dropout in zip(config.widths, config.depths, d_ffs, config.self_attns, dropouts)
    ]
    mapping = MappingSpec(
        config.mapping_depth,
        config.mapping_width,
        config.mapping_d_ff or 3 * config.mapping_width,
        config.mapping_dropout_rate,
    )
    if len(config.patch_size) != 2:
        raise ValueError(f"HDiT config: patch_size must be [height, width], got {config.patch_size}")
    return HDiT(levels, mapping, config.in_channels, config.out_channels, tuple(config.patch_size))
