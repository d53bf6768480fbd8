"""Attention kernels used by HDiT, all on tensors laid out (batch, height, width, heads, d_head).

Neighbourhood attention (each query attends to the k×k window of keys around it, the window shifted
inward at the borders: NATTEN's definition, dilation 1) has three backends behind
`neighborhood_attention`:

* ``flex``: PyTorch's FlexAttention with a block-sparse mask built from that definition. On CUDA the
  kernel is compiled once per process (forward and backward); on CPU it runs uncompiled, which
  materialises the scores, so it is for checking, not speed.
* ``natten``: ``natten.na2d``. Fast only where natten was built with its fused kernels
  (``natten.HAS_LIBNATTEN``); otherwise it falls back to uncompiled flex attention with (H·W)² scores.
* ``torch``: pure PyTorch. It gathers each query's k×k window of keys and values, a chunk of query
  rows at a time, so memory grows with H·W·k² (capped per chunk) rather than (H·W)²; it has a backward
  pass and runs anywhere. Small grids (at most ``DENSE_TOKENS_PER_WINDOW`` tokens per window area) run
  instead as one ``scaled_dot_product_attention`` call over all token pairs with the window mask,
  which PyTorch's fused kernels compute without storing the scores: 4–5× faster there on CPU.

``auto`` (the default) picks, on CUDA, natten when it has fused kernels for the device and flex
otherwise; on every other device, torch. Force a backend with the ``backend`` argument, the
``PMRF_NA_BACKEND`` environment variable or ``HDiT.set_neighborhood_backend``; ``last_backend()`` tells
which one ran last.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings

import torch
from einops import rearrange
from torch.nn import functional as F

BACKENDS = ("auto", "flex", "natten", "torch")
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


def natten_has_fused_kernels(device: torch.device) -> bool:
    """True when natten was built with its fused (libnatten) kernels and `device` can run them."""
    if device.type != "cuda" or not natten_available():
        return False
    import natten

    if not getattr(natten, "HAS_LIBNATTEN", False):
        return False
    return torch.cuda.get_device_capability(device) >= (6, 0)


def flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(device: torch.device, requested: str | None = None) -> str:
    """The backend that `neighborhood_attention` will use on `device`."""
    requested = (requested or os.environ.get(BACKEND_ENV_VAR) or "auto").lower()
    if requested not in BACKENDS:
        raise ValueError(f"unknown neighbourhood-attention backend {requested!r}; choose one of {BACKENDS}")
    if requested == "auto":
        if device.type != "cuda":
            return "torch"
        if natten_has_fused_kernels(device):
            return "natten"
        return "flex" if flex_available() else "torch"
    if requested == "natten" and not natten_available():
        raise RuntimeError("neighbourhood-attention backend 'natten' was requested but natten is not installed")
    if requested == "flex" and not flex_available():
        raise RuntimeError(f"neighbourhood-attention backend 'flex' needs torch >= 2.5, found {torch.__version__}")
    return requested


def last_backend() -> str | None:
    """Name of the neighbourhood-attention backend used by the most recent call, or None."""
    return _last_backend


def _record(name: str, device: torch.device) -> None:
    global _last_backend
    _last_backend = name
    key = f"{name}@{device.type}"
    if not torch.compiler.is_compiling() and key not in _announced:
        _announced.add(key)
        log.info("neighbourhood attention on %s: using the %s backend", device.type, name)


def window_starts(n: int, kernel_size: int, device=None) -> torch.Tensor:
    """First key index of each query's window: centred, shifted inward at the borders (NATTEN's rule)."""
    return (torch.arange(n, device=device) - kernel_size // 2).clamp(0, n - kernel_size)


def check_kernel(h: int, w: int, kernel_size: int) -> None:
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"neighbourhood kernel size must be odd and positive, got {kernel_size}")
    if kernel_size > h or kernel_size > w:
        raise ValueError(f"a {kernel_size}×{kernel_size} neighbourhood does not fit a {h}×{w} token grid")


# ------------------------------------------------------------------------------------ torch backend

# Gathered keys/values of one chunk of query rows hold at most this many elements, which bounds the
# backend's working memory whatever the image size (it grows with rows · W · k² · heads · d_head).
CHUNK_ELEMENTS = 1 << 25


# Up to this many tokens per k×k window area, attending to every token under the window mask beats
# gathering the windows (2-core CPU, forward + backward: 4.7× at a 12×12 grid with k = 5, 4.4× at 32×32
# with k = 7, 1.3× at 64×64 with k = 7; the official HDiT's 512² forward 15.4 → 14.6 s). At 96×96 with
# k = 7 (188 tokens per window area) the gather is faster.
DENSE_TOKENS_PER_WINDOW = 100


def neighborhood_mask(h: int, w: int, kernel_size: int, device=None) -> torch.Tensor:
    """(H·W, H·W) boolean mask, True where the key lies in the query's window (NATTEN's rule)."""
    def in_window(n: int) -> torch.Tensor:  # (query position, key position) along one axis
        starts = window_starts(n, kernel_size, device)[:, None]
        keys = torch.arange(n, device=device)[None, :]
        return (keys >= starts) & (keys < starts + kernel_size)

    rows, cols = in_window(h), in_window(w)
    return (rows[:, None, :, None] & cols[None, :, None, :]).reshape(h * w, h * w)


def _na2d_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int) -> torch.Tensor:
    n, h, w, heads, d = q.shape
    q, k, v = (rearrange(t, "n h w nh e -> n nh (h w) e") for t in (q, k, v))
    mask = neighborhood_mask(h, w, kernel_size, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    return rearrange(out, "n nh (h w) e -> n h w nh e", h=h)


def _na2d_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int) -> torch.Tensor:
    n, h, w, heads, d = q.shape
    if h * w <= DENSE_TOKENS_PER_WINDOW * kernel_size**2:
        return _na2d_dense(q, k, v, kernel_size)
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


# ------------------------------------------------------------------------------------- flex backend

_BLOCK_MASKS: dict[tuple, object] = {}
FLEX_MIN_HEAD_DIM = 16


def neighborhood_mask_mod(h: int, w: int, kernel_size: int):
    """FlexAttention mask_mod of NATTEN's window rule on a row-major h×w token grid."""
    half = kernel_size // 2

    def mask_mod(b, head, q_idx, kv_idx):
        q_row, q_col = q_idx // w, q_idx % w
        kv_row, kv_col = kv_idx // w, kv_idx % w
        top = (q_row - half).clamp(0, h - kernel_size)
        left = (q_col - half).clamp(0, w - kernel_size)
        return (kv_row >= top) & (kv_row < top + kernel_size) & (kv_col >= left) & (kv_col < left + kernel_size)

    return mask_mod


def _mask_key(h: int, w: int, kernel_size: int, device: torch.device) -> tuple:
    index = device.index
    if device.type == "cuda" and index is None:
        index = torch.cuda.current_device()
    return h, w, kernel_size, device.type, index


def build_flex_block_masks(sizes: list[tuple[int, int, int]], device: torch.device) -> None:
    """Build and cache the BlockMasks of these (h, w, k) neighbourhoods on `device`.

    HDiT does this at the top of its forward pass, outside any compiled graph (through
    `prepare_neighborhood_attention`), so that the lookups in `flex_block_mask` trace into a compiled
    HDiT without graph breaks.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    for h, w, kernel_size in sizes:
        key = _mask_key(h, w, kernel_size, device)
        if key not in _BLOCK_MASKS:
            _BLOCK_MASKS[key] = create_block_mask(
                neighborhood_mask_mod(h, w, kernel_size), None, None, h * w, h * w, device=device
            )


@torch.compiler.disable
def prepare_neighborhood_attention(
    grids: list[tuple[int, int, int]], device: torch.device, backend: str | None = None
) -> None:
    """Get a forward pass's neighbourhood attention ready outside any compiled graph: with the flex
    backend, build the block masks of these (rows, cols, kernel) grids."""
    if grids and resolve_backend(device, backend) == "flex":
        build_flex_block_masks(grids, device)


def flex_block_mask(h: int, w: int, kernel_size: int, device: torch.device):
    """The BlockMask of a k×k neighbourhood on an h×w grid, built once per (h, w, k, device)."""
    key = _mask_key(h, w, kernel_size, device)
    if key not in _BLOCK_MASKS:
        build_flex_block_masks([(h, w, kernel_size)], device)
    return _BLOCK_MASKS[key]


@functools.cache
def _compiled_flex_attention():
    """flex_attention compiled once per process (CUDA); without compiling it materialises all scores."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _na2d_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int) -> torch.Tensor:
    _, h, w, _, _ = q.shape
    if q.device.type != "cuda" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise RuntimeError(
            "the 'flex' neighbourhood-attention backend is forward-only off CUDA; "
            "train on CPU with the 'torch' backend"
        )
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = flex_block_mask(h, w, kernel_size, q.device)
    q, k, v = (rearrange(t, "n h w nh e -> n nh (h w) e") for t in (q, k, v))
    if torch.compiler.is_compiling():
        out = flex_attention(q, k, v, block_mask=block_mask, scale=1.0)  # the enclosing compile lowers it
    elif q.device.type == "cuda":
        out = _compiled_flex_attention()(q, k, v, block_mask=block_mask, scale=1.0)
    else:
        with warnings.catch_warnings():  # uncompiled off CUDA on purpose: exact, for small problems
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            out = flex_attention(q, k, v, block_mask=block_mask, scale=1.0)
    return rearrange(out, "n nh (h w) e -> n h w nh e", h=h)


# ------------------------------------------------------------------------------------ the dispatcher


def neighborhood_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, backend: str | None = None
) -> torch.Tensor:
    """Each query attends to the k×k keys around it (softmax scale 1: q and k come pre-scaled)."""
    _, h, w, _, _ = q.shape
    check_kernel(h, w, kernel_size)
    name = resolve_backend(q.device, backend)
    if name == "flex" and q.shape[-1] < FLEX_MIN_HEAD_DIM:
        name = "torch"  # compiled FlexAttention needs d_head >= 16; the torch backend computes the same
    _record(name, q.device)
    if name == "flex":
        return _na2d_flex(q, k, v, kernel_size)
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
