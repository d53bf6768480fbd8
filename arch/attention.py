"""Attention kernels used by HDiT, all on tensors laid out (batch, height, width, heads, d_head).

Neighbourhood attention has two backends behind `neighborhood_attention`:

* ``natten``: ``natten.na2d`` (fused kernels on CUDA; on CPU it runs through flex attention, slowly and
  without a backward pass).
* ``torch``: pure PyTorch. It gathers each query's k×k window of keys and values, a chunk of query
  rows at a time, so memory grows with H·W·k² (and is capped per chunk) rather than (H·W)²; it
  supports autograd and runs anywhere.

``auto`` (the default) picks natten on CUDA when it is importable and the torch backend otherwise. Force
a backend with the ``backend`` argument or the ``PMRF_NA_BACKEND`` environment variable;
``last_backend()`` tells which one ran last.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from einops import rearrange
from torch.nn import functional as F

BACKENDS = ("auto", "natten", "torch")
BACKEND_ENV_VAR = "PMRF_NA_BACKEND"

log = logging.getLogger(__name__)
_last_backend: str | None = None
_announced: set[str] = set()


@functools.cache
def natten_available() -> bool:
    try:
        import natten  # noqa: F401
    except Exception:  # natten can fail at import for reasons other than ImportError (CUDA libs)
        return False
    return True


def resolve_backend(device: torch.device, requested: str | None = None) -> str:
    """The backend that `neighborhood_attention` will use on `device`."""
    requested = (requested or os.environ.get(BACKEND_ENV_VAR) or "auto").lower()
    if requested not in BACKENDS:
        raise ValueError(f"unknown neighbourhood-attention backend {requested!r}; choose one of {BACKENDS}")
    if requested == "auto":
        return "natten" if device.type == "cuda" and natten_available() else "torch"
    if requested == "natten" and not natten_available():
        raise RuntimeError("neighbourhood-attention backend 'natten' was requested but natten is not installed")
    return requested


def last_backend() -> str | None:
    """Name of the neighbourhood-attention backend used by the most recent call, or None."""
    return _last_backend


def _record(name: str) -> None:
    global _last_backend
    _last_backend = name
    if name not in _announced:
        _announced.add(name)
        log.info("neighbourhood attention: using the %s backend", name)


def window_starts(n: int, kernel_size: int, device=None) -> torch.Tensor:
    """First key index of each query's window: centred, shifted inward at the borders (NATTEN's rule)."""
    return (torch.arange(n, device=device) - kernel_size // 2).clamp(0, n - kernel_size)


def check_kernel(h: int, w: int, kernel_size: int) -> None:
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"neighbourhood kernel size must be odd and positive, got {kernel_size}")
    if kernel_size > h or kernel_size > w:
        raise ValueError(f"a {kernel_size}×{kernel_size} neighbourhood does not fit a {h}×{w} token grid")


# Gathered keys/values of one chunk of query rows hold at most this many elements, which bounds the
# backend's working memory whatever the image size (it grows with rows · W · k² · heads · d_head).
CHUNK_ELEMENTS = 1 << 25


def _na2d_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int) -> torch.Tensor:
    n, h, w, heads, d = q.shape
    offsets = torch.arange(kernel_size, device=q.device)
    key_rows = window_starts(h, kernel_size, q.device)[:, None] + offsets  # (H, k)
    key_cols = window_starts(w, kernel_size, q.device)[:, None] + offsets  # (W, k)
    # flat key index of every (query row, query col, window row, window col)
    window_index = key_rows[:, None, :, None] * w + key_cols[None, :, None, :]  # (H, W, k, k)
    # heads into the batch, tokens flat: each gathered entry is one contiguous d-vector
    q, k, v = (rearrange(t, "n h w nh e -> (n nh) (h w) e") for t in (q, k, v))
    rows_per_chunk = max(1, CHUNK_ELEMENTS // (n * heads * w * kernel_size**2 * d))
    chunks = []
    for r0 in range(0, h, rows_per_chunk):
        r1 = min(h, r0 + rows_per_chunk)
        index = window_index[r0:r1].reshape(-1)
        k_win = k.index_select(1, index).view(n * heads, -1, kernel_size**2, d)
        v_win = v.index_select(1, index).view(n * heads, -1, kernel_size**2, d)
        q_chunk = q[:, r0 * w : r1 * w, None, :]  # (n·heads, tokens, 1, d)
        weights = (q_chunk @ k_win.transpose(-1, -2)).float().softmax(dim=-1).to(v.dtype)
        chunks.append((weights @ v_win).squeeze(-2))
    out = torch.cat(chunks, dim=1) if len(chunks) > 1 else chunks[0]
    return rearrange(out, "(n nh) (h w) e -> n h w nh e", n=n, h=h)


def neighborhood_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, backend: str | None = None
) -> torch.Tensor:
    """Each query attends to the k×k keys around it (softmax scale 1: q and k come pre-scaled)."""
    _, h, w, _, _ = q.shape
    check_kernel(h, w, kernel_size)
    name = resolve_backend(q.device, backend)
    _record(name)
    if name == "natten":
        if q.device.type != "cuda" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
            raise RuntimeError(
                "natten has no backward pass on CPU; train on CPU with the 'torch' neighbourhood-attention backend"
            )
        import natten

        return natten.na2d(q, k, v, kernel_size, scale=1.0)
    return _na2d_torch(q, k, v, kernel_size)


def global_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full attention over all tokens through PyTorch's fused scaled_dot_product_attention."""
    _, h, w, _, _ = q.shape
    q, k, v = (rearrange(t, "n h w nh e -> n nh (h w) e") for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    return rearrange(out, "n nh (h w) e -> n h w nh e", h=h, w=w)


@functools.lru_cache(maxsize=32)
def _shifted_window_mask(h: int, w: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """(windows, window², window²) boolean mask: True where query and key came from the same region."""
    labels = torch.zeros(h, w, dtype=torch.long, device=device)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(bounds):
        for j, cols in enumerate(bounds):
            labels[rows, cols] = i * 3 + j
    labels = rearrange(labels, "(nh wh) (nw ww) -> (nh nw) (wh ww)", wh=window, ww=window)
    return labels[:, :, None] == labels[:, None, :]


def shifted_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: int, shift: bool
) -> torch.Tensor:
    """Swin attention inside window_size² windows; with `shift`, windows move by half a window."""
    _, h, w, _, _ = q.shape
    if h % window_size or w % window_size:
        raise ValueError(f"a {h}×{w} token grid is not a multiple of the attention window {window_size}")
    offset = window_size // 2 if shift else 0
    if offset:
        q, k, v = (torch.roll(t, shifts=(-offset, -offset), dims=(1, 2)) for t in (q, k, v))
    q, k, v = (
        rearrange(t, "n (nh wh) (nw ww) hd e -> n (nh nw) hd (wh ww) e", wh=window_size, ww=window_size)
        for t in (q, k, v)
    )
    mask = None
    if offset:
        mask = _shifted_window_mask(h, w, window_size, offset, q.device)[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    out = rearrange(
        out, "n (nh nw) hd (wh ww) e -> n (nh wh) (nw ww) hd e", nh=h // window_size, wh=window_size
    )
    if offset:
        out = torch.roll(out, shifts=(offset, offset), dims=(1, 2))
    return out
