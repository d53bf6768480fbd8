"""Attention kernels used by HDiT, all on tensors laid out (batch, height, width, heads, d_head).

Neighbourhood attention (each query attends to the k×k window of keys around it, the window shifted
inward at the borders: NATTEN's definition, dilation 1) has three backends behind
`neighborhood_attention`:

* ``flex``: PyTorch's FlexAttention with a block-sparse mask built from that definition, for tokens in
  row-major order or in a tile order that HDiT keeps its flex levels in (`Tiling`, `TiledGrid`; far
  fewer keys computed per query). On CUDA the kernel is compiled once per process (forward and
  backward); on CPU it runs uncompiled, which materialises the scores, so it is for checking, not speed.
* ``natten``: ``natten.na2d``. Fast only where natten was built with its fused kernels
  (``natten.HAS_LIBNATTEN``); otherwise it falls back to uncompiled flex attention with (H·W)² scores.
* ``torch``: pure PyTorch. It gathers each query's k×k window of keys and values, a chunk of query
  rows at a time, so memory grows with H·W·k² (capped per chunk) rather than (H·W)²; it has a backward
  pass and runs anywhere. Small grids (at most ``DENSE_TOKENS_PER_WINDOW`` tokens per window area) run
  instead as one ``scaled_dot_product_attention`` call over all token pairs with the window mask,
  which PyTorch's fused kernels compute without storing the scores: 4–5× faster there on CPU.

``auto`` (the default) picks, on CUDA, natten when it has fused kernels for the device and flex
otherwise; on every other device, torch. Force a backend with the ``backend`` argument or
``HDiT.set_neighborhood_backend`` (the programs' ``--attention_backend``); ``last_backend()`` tells which
one ran last.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import warnings
from dataclasses import dataclass

import torch
from einops import rearrange
from torch.nn import functional as F

BACKENDS = ("auto", "flex", "natten", "torch")

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
    requested = (requested or "auto").lower()
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
#
# FlexAttention computes whole (query block × key block) tiles of the score matrix: a key block that
# holds one key of one query's window is computed for every query of the block. In the row-major token
# order a 128-query block is a row of the grid whose windows span 7 rows: at a 128² grid each query
# computes 896 keys for the 49 of its 7×7 window. In a *tile order* a query block is a compact tile of
# the grid and a key block a small sub-tile, so one tile's windows touch few key blocks. HDiT keeps a
# neighbourhood level's tokens in this order for the whole level (`TiledGrid`: one permutation at the
# level's entry and one at its exit); the masks below describe either order exactly.


@dataclass(frozen=True)
class Tiling:
    """A token order: tiles of tile_h × tile_w tokens, left to right and top to bottom over the grid,
    each one FlexAttention query block; inside a tile, sub-tiles of sub_h × sub_w tokens in the same
    order, each one key/value block; inside a sub-tile, row-major."""

    tile_h: int
    tile_w: int
    sub_h: int
    sub_w: int

    def __post_init__(self):
        if self.tile_h % self.sub_h or self.tile_w % self.sub_w:
            raise ValueError(f"tiling {self.name}: the sub-tile must divide the tile")

    @property
    def name(self) -> str:
        return f"{self.tile_h}x{self.tile_w}/{self.sub_h}x{self.sub_w}"

    @property
    def q_block(self) -> int:
        return self.tile_h * self.tile_w

    @property
    def kv_block(self) -> int:
        return self.sub_h * self.sub_w

    def fits(self, h: int, w: int) -> bool:
        return h % self.tile_h == 0 and w % self.tile_w == 0


# Candidates measured by benchmarks/attention.py (keys computed per query, README); "rows" is the
# row-major order with FlexAttention's default 128-token blocks.
TILINGS = {
    tiling.name: tiling
    for tiling in (
        Tiling(8, 8, 4, 8),
        Tiling(8, 16, 4, 8),
        Tiling(16, 8, 4, 8),
        Tiling(4, 16, 4, 8),
        Tiling(4, 8, 4, 8),
        Tiling(8, 8, 4, 4),
    )
}
DEFAULT_TILING = "8x8/4x8"
ROW_MAJOR = "rows"
ROW_MAJOR_BLOCK = 128
TILING_ENV_VAR = "PMRF_NA_TILING"

# FlexAttention's backward lowering before torch 2.14 keeps only its default tile configurations that
# divide the mask's blocks; under bf16/fp16 on recent GPUs those need 128-token blocks, so a training
# step with 32-token key blocks would have no kernel there. float32 (16-token tiles) is not affected.
_VERSION = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
SMALL_BLOCK_BACKWARD = _VERSION >= (2, 14)


def resolve_tiling(requested: str | None = None, low_precision_backward: bool = False) -> Tiling | None:
    """The token order of the flex backend's neighbourhood levels; None: row-major.

    `requested` (default: the ``PMRF_NA_TILING`` environment variable, else ``auto``) is ``auto``, ``rows``
    or a name in `TILINGS`. ``auto`` is `DEFAULT_TILING`, except for a bf16/fp16 backward pass on a torch
    whose FlexAttention backward needs 128-token blocks (before 2.14), which keeps the row-major order.
    """
    requested = (requested or os.environ.get(TILING_ENV_VAR) or "auto").lower()
    if requested == ROW_MAJOR:
        return None
    if requested == "auto":
        if low_precision_backward and not SMALL_BLOCK_BACKWARD:
            return None
        return TILINGS[DEFAULT_TILING]
    if requested not in TILINGS:
        raise ValueError(f"unknown neighbourhood token order {requested!r}; choose auto, {ROW_MAJOR} or one of {list(TILINGS)}")
    return TILINGS[requested]


def low_precision_backward(device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """True inside a pass that records gradients with bf16/fp16 attention (autocast or such inputs)."""
    if not torch.is_grad_enabled():
        return False
    if dtype in (torch.bfloat16, torch.float16):
        return True
    return torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) != torch.float32


@dataclass(frozen=True)
class TiledGrid:
    """An h × w token grid held in `tiling`'s order: tensors (..., h, w, C) become (..., 1, h·w, C)."""

    h: int
    w: int
    tiling: Tiling

    def _sizes(self) -> dict[str, int]:
        t = self.tiling
        return {"a": self.h // t.tile_h, "b": self.w // t.tile_w, "s": t.tile_h // t.sub_h, "u": t.sub_h,
                "r": t.tile_w // t.sub_w, "v": t.sub_w}

    def to_tiles(self, x: torch.Tensor) -> torch.Tensor:
        sizes = self._sizes()
        return rearrange(x, "... (a s u) (b r v) c -> ... 1 (a b s r u v) c", s=sizes["s"], u=sizes["u"],
                         r=sizes["r"], v=sizes["v"])

    def from_tiles(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "... 1 (a b s r u v) c -> ... (a s u) (b r v) c", **self._sizes())

    def positions(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, column) on the grid of the tokens at these places in the tile order."""
        return tile_positions(index, self.w, self.tiling)


def tile_positions(index: torch.Tensor, w: int, tiling: Tiling | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of the tokens at places `index` of a grid of width w in `tiling`'s order (None:
    row-major)."""
    if tiling is None:
        return index // w, index % w
    t = tiling
    tile, within = index // t.q_block, index % t.q_block
    sub, inner = within // t.kv_block, within % t.kv_block
    tiles_per_row, subs_per_row = w // t.tile_w, t.tile_w // t.sub_w
    row = (tile // tiles_per_row) * t.tile_h + (sub // subs_per_row) * t.sub_h + inner // t.sub_w
    col = (tile % tiles_per_row) * t.tile_w + (sub % subs_per_row) * t.sub_w + inner % t.sub_w
    return row, col


_BLOCK_MASKS: dict[tuple, object] = {}
FLEX_MIN_HEAD_DIM = 16
# One chunk of the block-table computation compares at most this many (query, key) pairs.
_MASK_CHUNK_PAIRS = 1 << 24


def neighborhood_mask_mod(h: int, w: int, kernel_size: int, tiling: Tiling | None = None):
    """FlexAttention mask_mod of NATTEN's window rule on an h×w grid in `tiling`'s order (None: row-major)."""
    half = kernel_size // 2

    def mask_mod(b, head, q_idx, kv_idx):
        q_row, q_col = tile_positions(q_idx, w, tiling)
        kv_row, kv_col = tile_positions(kv_idx, w, tiling)
        top = (q_row - half).clamp(0, h - kernel_size)
        left = (q_col - half).clamp(0, w - kernel_size)
        return (kv_row >= top) & (kv_row < top + kernel_size) & (kv_col >= left) & (kv_col < left + kernel_size)

    return mask_mod


def _block_tables(inside_blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_blocks, indices) of a (q blocks, kv blocks) boolean table, as create_block_mask lays them out."""
    num = inside_blocks.sum(-1, dtype=torch.int32)
    indices = torch.argsort(inside_blocks.to(torch.uint8), dim=-1, descending=True, stable=True).to(torch.int32)
    return num[None, None].contiguous(), indices[None, None].contiguous()


def build_neighborhood_block_mask(h: int, w: int, kernel_size: int, tiling: Tiling | None, device: torch.device):
    """The BlockMask of a k×k neighbourhood on an h×w grid in `tiling`'s order (None: row-major with
    128-token blocks), computed block by block from the window rule in chunks of query blocks (memory
    bounded whatever the grid; create_block_mask would hold the whole (H·W)² mask). Blocks where every
    pair attends are marked full (no mask_mod there), the others that touch a window partial."""
    from torch.nn.attention.flex_attention import BlockMask

    if tiling is not None and not tiling.fits(h, w):
        raise ValueError(f"a {h}×{w} grid is not a whole number of {tiling.tile_h}×{tiling.tile_w} tiles")
    q_block, kv_block = (tiling.q_block, tiling.kv_block) if tiling else (ROW_MAJOR_BLOCK, ROW_MAJOR_BLOCK)
    tokens = h * w
    nq, nkv = -(-tokens // q_block), -(-tokens // kv_block)
    index = torch.arange(nkv * kv_block, device=device)
    rows, cols = tile_positions(index, w, tiling)
    outside = index >= tokens  # padding past the last token: in no window
    rows, cols = rows.masked_fill(outside, -2 * kernel_size - h), cols.masked_fill(outside, -2 * kernel_size - w)
    tops = window_starts(h, kernel_size, device)[rows[:tokens]]
    lefts = window_starts(w, kernel_size, device)[cols[:tokens]]
    chunk = max(1, _MASK_CHUNK_PAIRS // (nkv * kv_block * q_block)) * q_block
    any_parts, all_parts = [], []
    for start in range(0, nq * q_block, chunk):
        stop = min(start + chunk, nq * q_block)
        top, left = tops[start:stop, None], lefts[start:stop, None]
        inside = (rows >= top) & (rows < top + kernel_size) & (cols >= left) & (cols < left + kernel_size)
        if inside.shape[0] < stop - start:  # the last query block runs past the last token
            inside = torch.cat([inside, inside.new_zeros(stop - start - inside.shape[0], inside.shape[1])])
        blocks = inside.view(-1, q_block, nkv, kv_block)
        any_parts.append(blocks.any(3).any(1))
        all_parts.append(blocks.all(3).all(1))
    touched, full = torch.cat(any_parts), torch.cat(all_parts)
    kv_num, kv_indices = _block_tables(touched & ~full)
    full_num, full_indices = _block_tables(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_indices, full_num, full_indices, BLOCK_SIZE=(q_block, kv_block),
        mask_mod=neighborhood_mask_mod(h, w, kernel_size, tiling), seq_lengths=(tokens, tokens),
    )


def keys_per_query(block_mask) -> float:
    """Keys FlexAttention computes per query with this BlockMask (every key of every listed block)."""
    q_block, kv_block = block_mask.BLOCK_SIZE
    tokens = block_mask.seq_lengths[0]
    blocks = block_mask.kv_num_blocks.double()
    if block_mask.full_kv_num_blocks is not None:
        blocks = blocks + block_mask.full_kv_num_blocks.double()
    blocks = blocks.reshape(-1, blocks.shape[-1]).mean(0)  # over batch and heads
    queries = torch.full_like(blocks, q_block)
    queries[-1] = tokens - q_block * (blocks.numel() - 1)
    return float((blocks * queries).sum() * kv_block / tokens)


def _mask_key(h: int, w: int, kernel_size: int, tiling: Tiling | None, device: torch.device) -> tuple:
    index = device.index
    if device.type == "cuda" and index is None:
        index = torch.cuda.current_device()
    return h, w, kernel_size, tiling.name if tiling else ROW_MAJOR, device.type, index


def flex_block_mask(h: int, w: int, kernel_size: int, device: torch.device, tiling: Tiling | None = None):
    """The BlockMask of a k×k neighbourhood on an h×w grid in `tiling`'s order, built once per
    (h, w, k, order, device)."""
    key = _mask_key(h, w, kernel_size, tiling, device)
    if key not in _BLOCK_MASKS:
        _BLOCK_MASKS[key] = build_neighborhood_block_mask(h, w, kernel_size, tiling, device)
    return _BLOCK_MASKS[key]


def level_tiling(
    h: int, w: int, kernel_size: int, device: torch.device, backend: str | None, d_head: int,
    dtype: torch.dtype = torch.float32,
) -> TiledGrid | None:
    """The tile order a neighbourhood level keeps its tokens in, or None (row-major): tiled where the
    flex backend runs it and the grid is a whole number of tiles."""
    if resolve_backend(device, backend) != "flex" or d_head < FLEX_MIN_HEAD_DIM:
        return None
    tiling = resolve_tiling(None, low_precision_backward(device, dtype))
    if tiling is None or not tiling.fits(h, w):
        return None
    return TiledGrid(h, w, tiling)


@torch.compiler.disable
def prepare_neighborhood_attention(
    grids: list[tuple[int, int, int, int]], device: torch.device, backend: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Get a forward pass's neighbourhood attention ready outside any compiled graph: with the flex
    backend, build the block masks of these (rows, cols, kernel, d_head) level grids in the order their
    levels use (`level_tiling`, as `HDiT`'s levels decide it), so that the lookups in `flex_block_mask`
    trace into a compiled HDiT without graph breaks. Levels whose heads are too small for flex (they run
    the torch backend) need no mask."""
    if not grids or resolve_backend(device, backend) != "flex":
        return
    for h, w, kernel_size, d_head in grids:
        if d_head < FLEX_MIN_HEAD_DIM:
            continue
        grid = level_tiling(h, w, kernel_size, device, backend, d_head, dtype)
        flex_block_mask(h, w, kernel_size, device, grid.tiling if grid else None)


def flex_kernel_options(tiling: Tiling | None, device: torch.device) -> dict | None:
    """Kernel tiles that fit the mask's blocks (a tiled mask's blocks are smaller than the defaults)."""
    if tiling is None or device.type != "cuda":
        return None
    return {"BLOCK_M": tiling.q_block, "BLOCK_N": tiling.kv_block}


@functools.cache
def _compiled_flex_attention():
    """flex_attention compiled once per process (CUDA); without compiling it materialises all scores."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _na2d_flex(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, grid: TiledGrid | None = None
) -> torch.Tensor:
    """Row-major (n, h, w, heads, d) tensors, or with `grid` (n, 1, h·w, heads, d) in its tile order."""
    if q.device.type != "cuda" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise RuntimeError(
            "the 'flex' neighbourhood-attention backend is forward-only off CUDA; "
            "train on CPU with the 'torch' backend"
        )
    from torch.nn.attention.flex_attention import flex_attention

    _, h, w, _, _ = q.shape
    tiling = None
    if grid is not None:
        h, w, tiling = grid.h, grid.w, grid.tiling
    block_mask = flex_block_mask(h, w, kernel_size, q.device, tiling)
    options = flex_kernel_options(tiling, q.device)
    rows = q.shape[1]
    q, k, v = (rearrange(t, "n h w nh e -> n nh (h w) e") for t in (q, k, v))
    if torch.compiler.is_compiling():  # the enclosing compile lowers it
        out = flex_attention(q, k, v, block_mask=block_mask, scale=1.0, kernel_options=options)
    elif q.device.type == "cuda":
        out = _compiled_flex_attention()(q, k, v, block_mask=block_mask, scale=1.0, kernel_options=options)
    else:
        with warnings.catch_warnings():  # uncompiled off CUDA on purpose: exact, for small problems
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            out = flex_attention(q, k, v, block_mask=block_mask, scale=1.0)
    return rearrange(out, "n nh (h w) e -> n h w nh e", h=rows)


# ------------------------------------------------------------------------------------ the dispatcher


def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    backend: str | None = None,
    grid: TiledGrid | None = None,
) -> torch.Tensor:
    """Each query attends to the k×k keys around it (softmax scale 1: q and k come pre-scaled).

    q, k and v are (n, h, w, heads, d_head) grids, or with `grid` (n, 1, h·w, heads, d_head) tokens in
    its tile order (the flex backend runs them as they are; the others in row-major order and back).
    """
    h, w = (grid.h, grid.w) if grid is not None else q.shape[1:3]
    check_kernel(h, w, kernel_size)
    name = resolve_backend(q.device, backend)
    if name == "flex" and q.shape[-1] < FLEX_MIN_HEAD_DIM:
        name = "torch"  # compiled FlexAttention needs d_head >= 16; the torch backend computes the same
    if name == "flex":
        _record(name, q.device)
        return _na2d_flex(q, k, v, kernel_size, grid)
    if grid is not None:
        q, k, v = (grid.from_tiles(t.flatten(-2)).unflatten(-1, t.shape[-2:]) for t in (q, k, v))
        return grid.to_tiles(neighborhood_attention(q, k, v, kernel_size, name).flatten(-2)).unflatten(-1, q.shape[-2:])
    _record(name, q.device)
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
def shifted_window_same_region(h: int, w: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Swin's shifted-window rule: (windows, window², window²) booleans, True where query and key came
    from the same region of the h×w grid rolled by -shift (windows and their tokens in row-major order).

    After the roll, a window at the bottom/right border holds tokens from up to four regions that were
    not neighbours in the image; tokens attend only within their own region. The one place this rule
    lives, with one cache per grid and device: HDiT's shifted windows use it as it is, SwinIR turns it
    into its additive mask (`arch.swinir.shifted_window_mask`).
    """
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
        mask = shifted_window_same_region(h, w, window_size, offset, q.device)[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    out = rearrange(
        out, "n (nh nw) hd (wh ww) e -> n (nh wh) (nw ww) hd e", nh=h // window_size, wh=window_size
    )
    if offset:
        out = torch.roll(out, shifts=(offset, offset), dims=(1, 2))
    return out
