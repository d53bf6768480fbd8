"""SwinIR (Liang et al., 2021), the DifFace variant PMRF uses as its posterior-mean (MMSE) predictor.

Layout: PixelUnshuffle(sf) + 3x3 conv -> residual Swin transformer groups (RSTB) at 1/sf resolution ->
nearest+conv upsampling back by sf, so the output has the input's size. The state dict (names, shapes,
order, buffers `relative_position_index` and `attn_mask`) matches the reference implementation so that
official checkpoints and their torch-ema shadow lists load strictly.

Inputs of any size that is a multiple of `sf` are accepted: they are padded (reflect, or replicate when
the pad is too large for reflection) to a multiple of `sf * window_size` and the output is cropped back.
Token features are kept channels-last, (B, H, W, C), inside the transformer body.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from .attention import shifted_window_same_region

RGB_MEAN = (0.4488, 0.4371, 0.4040)
# The reference fills masked logits with -100 rather than -inf; keep it so outputs match.
MASK_FILL = -100.0
NUM_UPSAMPLE_FEATURES = 64


# ---------------------------------------------------------------------------------------------------
# Windows, relative positions and shifted-window masks


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, num_windows, window_size**2, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, -1, window_size * window_size, c)


def window_merge(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B, num_windows, window_size**2, C) -> (B, H, W, C)."""
    b, c = windows.shape[0], windows.shape[-1]
    x = windows.view(b, h // window_size, w // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def relative_position_index(window_size: int) -> torch.Tensor:
    """(N, N) index into the (2w-1)^2 bias table for every query/key pair of a window, N = w*w."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # (2, N)
    offsets = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # (2, N, N), each in [0, 2w-2]
    return offsets[0] * (2 * window_size - 1) + offsets[1]


def shifted_window_mask(
    h: int, w: int, window_size: int, shift_size: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Additive mask (num_windows, N, N) for attention over windows of a grid rolled by -shift_size:
    0 within a region, MASK_FILL across regions (the rule: `arch.attention.shifted_window_same_region`).

    `device` defaults to torch's default device, so a network built under ``torch.device("meta")``
    gets a meta buffer.
    """
    device = torch.device(device) if device is not None else torch.get_default_device()
    same = shifted_window_same_region(h, w, window_size, shift_size, device)
    return torch.zeros(same.shape, device=device).masked_fill(~same, MASK_FILL)


# ---------------------------------------------------------------------------------------------------
# Transformer layers


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """(num_heads, N, N)."""
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """windows: (B, nW, N, C); mask: additive (nW, N, N) or None. Returns (B, nW, N, C)."""
        b, num_windows, n, c = windows.shape
        qkv = self.qkv(windows).view(b, num_windows, n, 3, self.num_heads, c // self.num_heads)
        bias = self.relative_position_bias()
        if mask is None:
            # windows are interchangeable: fold them into the batch, broadcast the bias over it
            q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, b * num_windows, self.num_heads, n, -1)
        else:
            # the mask differs per window: fold windows into the head axis so that the combined
            # (nW * heads, N, N) bias broadcasts over the batch and attention stays 4-D
            q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, b, num_windows * self.num_heads, n, -1)
            bias = (bias[None] + mask[:, None].to(bias.dtype)).reshape(-1, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = out.view(b, num_windows, self.num_heads, n, -1).transpose(2, 3).reshape(b, num_windows, n, c)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP on channels-last tokens (B, H, W, C).

    `input_resolution` is the token grid the `attn_mask` buffer is built for (it is saved in
    checkpoints); other grids get their mask from the shared, cached region rule.
    """

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 8,
        shift_size: int = 0,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        self.window_size = window_size
        self.shift_size = shift_size
        # registered first: the reference state dict lists attn_mask before norm1
        if shift_size > 0:
            mask = shifted_window_mask(*self.input_resolution, window_size, shift_size)
            self.register_buffer("attn_mask", mask)
        else:
            self.attn_mask = None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def shift_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        if (h, w) == self.input_resolution:
            return self.attn_mask
        return shifted_window_mask(h, w, self.window_size, self.shift_size, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        shift = self.shift_size
        y = self.norm1(x)
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        mask = self.shift_mask(h, w, x.device) if shift else None
        y = self.attn(window_partition(y, self.window_size), mask)
        y = window_merge(y, self.window_size, h, w)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """A stack of Swin blocks alternating regular and shifted windows."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: Sequence[float],
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                input_resolution,
                num_heads,
                window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=drop_path[i],
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def residual_conv(dim: int, kind: str) -> nn.Module:
    """The convolution closing each residual group (and the body): '1conv' or the lighter '3conv'."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(
        nn.Conv2d(dim, dim // 4, 3, 1, 1),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(dim // 4, dim // 4, 1, 1, 0),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(dim // 4, dim, 3, 1, 1),
    )


def conv_channels_last(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin blocks, a conv, and a skip around both."""

    def __init__(self, dim: int, resi_connection: str, **layer_kwargs):
        super().__init__()
        self.residual_group = BasicLayer(dim=dim, **layer_kwargs)
        self.conv = residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_channels_last(self.conv, self.residual_group(x)) + x


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> channels-last tokens (B, H, W, C), optionally normalised (patch size 1)."""

    def __init__(self, dim: int, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1))


# ---------------------------------------------------------------------------------------------------
# The network


def _is_power_of_two(n: int) -> bool:
    return isinstance(n, int) and n >= 1 and n & (n - 1) == 0


def _check_config(
    in_channels: int,
    out_channels: int,
    embed_dim: int,
    depths: Sequence[int],
    num_heads: Sequence[int],
    window_size: int,
    mlp_ratio: float,
    sf: int,
    resi_connection: str,
    drop_path_rate: float,
    img_size: int,
    upsampler: str,
) -> None:
    problems = []
    if in_channels < 1 or out_channels < 1:
        problems.append(f"in_channels and out_channels must be >= 1 (got {in_channels}, {out_channels})")
    if len(depths) == 0 or len(depths) != len(num_heads):
        problems.append(
            f"depths {list(depths)} and num_heads {list(num_heads)} must be non-empty and equally long"
        )
    if any(d < 1 for d in depths):
        problems.append(f"every depth must be >= 1 (got {list(depths)})")
    if any(h < 1 or embed_dim % h for h in num_heads):
        problems.append(f"embed_dim {embed_dim} must be divisible by every num_heads entry {list(num_heads)}")
    if resi_connection == "3conv" and embed_dim % 4:
        problems.append(f"resi_connection '3conv' needs embed_dim divisible by 4 (got {embed_dim})")
    if resi_connection not in ("1conv", "3conv"):
        problems.append(f"resi_connection must be '1conv' or '3conv' (got {resi_connection!r})")
    if upsampler != "nearest+conv":
        problems.append(f"only upsampler 'nearest+conv' is supported (got {upsampler!r})")
    if not _is_power_of_two(sf):
        problems.append(f"sf must be a power of 2 (got {sf!r})")
    if window_size < 2:
        problems.append(f"window_size must be >= 2 (got {window_size})")
    elif img_size < 2 * window_size or img_size % window_size:
        problems.append(
            f"img_size (construction token grid side) must be a multiple of window_size {window_size} "
            f"and at least {2 * window_size} (got {img_size})"
        )
    if mlp_ratio <= 0:
        problems.append(f"mlp_ratio must be > 0 (got {mlp_ratio})")
    if not 0.0 <= drop_path_rate < 1.0:
        problems.append(f"drop_path_rate must be in [0, 1) (got {drop_path_rate})")
    if problems:
        raise ValueError("invalid SwinIR configuration: " + "; ".join(problems))


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right to a multiple of `multiple`.

    Reflect (as the reference), or replicate when the pad is not smaller than the side (reflection
    cannot reach that far, e.g. a 16-pixel input padded to 64).
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class SwinIR(nn.Module):
    """SwinIR with pixel-unshuffle input and nearest+conv output: same size in and out.

    Args:
        in_channels / out_channels: image channels. A 3-channel model also takes 1-channel (gray) input,
            treated as gray replicated on 3 channels.
        embed_dim, depths, num_heads: width, number of Swin blocks per residual group, heads per group.
        window_size, mlp_ratio, qkv_bias: Swin block settings.
        sf: pixel-unshuffle factor (power of 2); the transformer runs at 1/sf resolution.
        resi_connection: '1conv' or '3conv'.
        drop_path_rate: stochastic depth, rising linearly from 0 to this over all blocks (training only).
        img_size: side of the token grid (input pixels / sf) the `attn_mask` buffers are built for; 64
            for the PMRF checkpoints (512x512 inputs). Other sizes compute (and cache) masks at run time.
        patch_norm: LayerNorm after the token embedding.
        upsampler: only 'nearest+conv'.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        embed_dim: int = 180,
        depths: Sequence[int] = (6, 6, 6, 6, 6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6, 6, 6),
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        sf: int = 8,
        resi_connection: str = "1conv",
        drop_path_rate: float = 0.1,
        img_size: int = 64,
        qkv_bias: bool = True,
        patch_norm: bool = True,
        upsampler: str = "nearest+conv",
    ):
        super().__init__()
        depths, num_heads = list(depths), list(num_heads)
        _check_config(
            in_channels, out_channels, embed_dim, depths, num_heads, window_size, mlp_ratio, sf,
            resi_connection, drop_path_rate, img_size, upsampler,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.sf = sf
        self.window_size = window_size
        # RGB mean removed on input and restored on output; zero (a no-op) unless in_channels == 3,
        # as in the reference. A 3-channel-input model with another output count restores nothing.
        mean = torch.tensor(RGB_MEAN if in_channels == 3 else (0.0,)).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.restore_mean = in_channels == 3 and out_channels == 3

        # shallow features
        self.conv_first = nn.Sequential(
            nn.PixelUnshuffle(sf), nn.Conv2d(in_channels * sf * sf, embed_dim, 3, 1, 1)
        )

        # deep features
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        n_blocks = sum(depths)  # stochastic depth rising linearly over all blocks (plain floats: meta-safe)
        drop_path = [drop_path_rate * i / (n_blocks - 1) if n_blocks > 1 else 0.0 for i in range(n_blocks)]
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            RSTB(
                embed_dim,
                resi_connection,
                input_resolution=(img_size, img_size),
                depth=depth,
                num_heads=heads,
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=drop_path[start:start + depth],
            )
            for depth, heads, start in zip(depths, num_heads, starts)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)

        # reconstruction: nearest x2 + conv, log2(sf) times
        feats = NUM_UPSAMPLE_FEATURES
        self.conv_before_upsample = nn.Sequential(
            nn.Conv2d(embed_dim, feats, 3, 1, 1), nn.LeakyReLU(inplace=True)
        )
        self.num_upsamples = int(math.log2(sf))
        for i in range(1, self.num_upsamples + 1):
            self.add_module(f"conv_up{i}", nn.Conv2d(feats, feats, 3, 1, 1))
        self.conv_hr = nn.Conv2d(feats, feats, 3, 1, 1)
        self.conv_last = nn.Conv2d(feats, out_channels, 3, 1, 1)

        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        for layer in self.layers:
            tokens = layer(tokens)
        return self.norm(tokens).permute(0, 3, 1, 2)

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_before_upsample(x)
        for i in range(1, self.num_upsamples + 1):
            conv = getattr(self, f"conv_up{i}")
            x = F.leaky_relu(conv(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(x), 0.2))

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"SwinIR expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        channels, (h, w) = x.shape[1], x.shape[-2:]
        if channels == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)  # gray replicated, as the reference gets by broadcasting
        elif channels != self.in_channels:
            raise ValueError(f"SwinIR expects {self.in_channels} input channels, got {channels}")
        self.check_input_size(h, w)
        return x

    def check_input_size(self, h: int, w: int) -> None:
        if h % self.sf or w % self.sf:
            raise ValueError(f"SwinIR input height and width must be multiples of sf={self.sf}, got {h}x{w}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.sf * self.window_size)
        mean = self.mean.to(x.dtype)
        features = self.conv_first(x - mean)
        features = self.conv_after_body(self.forward_features(features)) + features
        out = self.upsample(features)
        if self.restore_mean:
            out = out + mean
        return out[..., :h, :w]
