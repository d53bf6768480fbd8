"""Neighbourhood attention: every backend against a brute-force masked-attention reference, and the
rule `auto` follows."""

import pytest
import torch
from helpers import TILED_CASES, brute_force_neighborhood, from_tiles, to_tiles

from arch import attention
from arch.attention import neighborhood_attention, shifted_window_attention, window_starts


def random_qkv(h, w, heads=2, d=8, n=2, requires_grad=False):
    gen = torch.Generator().manual_seed(h * 100 + w)
    return [torch.randn(n, h, w, heads, d, generator=gen).requires_grad_(requires_grad) for _ in range(3)]


GRIDS = [(7, 7), (9, 9), (8, 13), (13, 8), (11, 5)]
# every grid with every kernel that fits it (square and non-square grids, borders included)
CASES = [(h, w, k) for h, w in GRIDS for k in (3, 5, 7) if k <= min(h, w)]


@pytest.fixture(params=["gather", "dense"])
def torch_path(request, monkeypatch):
    """The torch backend's two ways: gathered windows, or masked attention over all tokens (small grids)."""
    monkeypatch.setattr(attention, "DENSE_TOKENS_PER_WINDOW", 0 if request.param == "gather" else 1 << 30)
    calls = []
    dense = attention._na2d_dense
    monkeypatch.setattr(attention, "_na2d_dense", lambda *args: calls.append(1) or dense(*args))
    return request.param, calls


@pytest.mark.parametrize("h,w,kernel_size", CASES)
def test_torch_backend_matches_brute_force(h, w, kernel_size, torch_path):
    q, k, v = random_qkv(h, w)
    out = neighborhood_attention(q, k, v, kernel_size, backend="torch")
    assert attention.last_backend() == "torch" and bool(torch_path[1]) == (torch_path[0] == "dense")
    torch.testing.assert_close(out, brute_force_neighborhood(q, k, v, kernel_size), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("h,w,kernel_size", CASES)
def test_flex_backend_matches_brute_force(h, w, kernel_size):
    """FlexAttention with the block mask of NATTEN's window rule (uncompiled on CPU, forward only)."""
    q, k, v = random_qkv(h, w, d=attention.FLEX_MIN_HEAD_DIM)
    with torch.no_grad():
        out = neighborhood_attention(q, k, v, kernel_size, backend="flex")
    assert attention.last_backend() == "flex"
    torch.testing.assert_close(out, brute_force_neighborhood(q, k, v, kernel_size), atol=1e-5, rtol=1e-5)


def test_flex_block_masks_are_cached_per_grid_kernel_order_and_device():
    attention._BLOCK_MASKS.clear()
    first = attention.flex_block_mask(9, 11, 5, torch.device("cpu"))
    assert attention.flex_block_mask(9, 11, 5, torch.device("cpu")) is first
    assert attention.flex_block_mask(9, 11, 3, torch.device("cpu")) is not first
    tiled = attention.flex_block_mask(16, 16, 5, torch.device("cpu"), attention.TILINGS["8x8/4x8"])
    assert tiled is not attention.flex_block_mask(16, 16, 5, torch.device("cpu"))
    assert tiled.BLOCK_SIZE == (64, 32)
    assert len(attention._BLOCK_MASKS) == 4


def test_flex_hands_small_heads_to_the_torch_backend():
    """Compiled FlexAttention needs d_head >= 16: smaller heads run the torch backend (same result)."""
    q, k, v = random_qkv(7, 7, d=8)
    out = neighborhood_attention(q, k, v, 3, backend="flex")
    assert attention.last_backend() == "torch"
    torch.testing.assert_close(out, brute_force_neighborhood(q, k, v, 3), atol=1e-5, rtol=1e-5)


def test_flex_off_cuda_refuses_backward():
    q, k, v = random_qkv(7, 7, d=attention.FLEX_MIN_HEAD_DIM, requires_grad=True)
    with pytest.raises(RuntimeError, match="torch"):
        neighborhood_attention(q, k, v, 3, backend="flex")


@pytest.mark.skipif(not attention.natten_available(), reason="natten not installed")
@pytest.mark.parametrize("kernel_size", [3, 5, 7])
@pytest.mark.parametrize("h,w", [(7, 7), (9, 9), (8, 13), (13, 8)])
def test_natten_backend_matches_brute_force(h, w, kernel_size):
    q, k, v = random_qkv(h, w)
    with torch.no_grad():
        out = neighborhood_attention(q, k, v, kernel_size, backend="natten")
    assert attention.last_backend() == "natten"
    torch.testing.assert_close(out, brute_force_neighborhood(q, k, v, kernel_size), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("h,w,kernel_size", [(9, 9, 3), (8, 13, 5), (7, 7, 7)])
def test_torch_backend_gradients_match_brute_force(h, w, kernel_size, torch_path):
    q, k, v = random_qkv(h, w, requires_grad=True)
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad((neighborhood_attention(q, k, v, kernel_size, backend="torch") * upstream).sum(), (q, k, v))
    expected = torch.autograd.grad((brute_force_neighborhood(q, k, v, kernel_size) * upstream).sum(), (q, k, v))
    assert bool(torch_path[1]) == (torch_path[0] == "dense")
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_torch_backend_runs_small_grids_dense_and_large_ones_gathered(monkeypatch):
    used = []
    monkeypatch.setattr(attention, "_na2d_dense", lambda q, *rest: used.append(q.shape[1:3]) or q)
    for h, w in [(8, 8), (50, 50), (51, 50)]:  # 100 tokens per 5×5 window area: up to 2500 tokens
        neighborhood_attention(*random_qkv(h, w, n=1), 5, backend="torch")
    assert used == [(8, 8), (50, 50)]


def test_window_starts_follow_natten_border_rule():
    # 7 positions, kernel 3: centred inside, pushed inward at both borders.
    assert window_starts(7, 3).tolist() == [0, 0, 1, 2, 3, 4, 4]
    assert window_starts(7, 7).tolist() == [0] * 7


def test_backend_can_be_forced(monkeypatch):
    q, k, v = random_qkv(7, 7)
    neighborhood_attention(q, k, v, 3, "torch")
    assert attention.last_backend() == "torch"
    with pytest.raises(ValueError, match="bogus"):
        neighborhood_attention(q, k, v, 3, "bogus")


def test_auto_uses_torch_on_cpu(monkeypatch):
    monkeypatch.setenv("PMRF_NA_BACKEND", "bogus")  # read no more: --attention_backend is the one switch
    assert attention.resolve_backend(torch.device("cpu")) == "torch"


@pytest.mark.parametrize("has_fused_kernels,expected", [(True, "natten"), (False, "flex")])
def test_auto_on_cuda_picks_natten_only_with_its_fused_kernels(monkeypatch, has_fused_kernels, expected):
    """natten without libnatten would run uncompiled flex attention with (H·W)² scores: never chosen."""
    import types

    fake_natten = types.ModuleType("natten")
    fake_natten.HAS_LIBNATTEN = has_fused_kernels
    monkeypatch.setitem(__import__("sys").modules, "natten", fake_natten)
    monkeypatch.setattr(attention, "natten_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert attention.resolve_backend(torch.device("cuda")) == expected


def test_the_choice_is_logged_once_per_backend_and_device(caplog):
    attention._announced.clear()
    q, k, v = random_qkv(7, 7)
    with caplog.at_level("INFO", logger="arch.attention"):
        for _ in range(3):
            neighborhood_attention(q, k, v, 3, backend="torch")
    assert [r.getMessage() for r in caplog.records].count("neighbourhood attention on cpu: using the torch backend") == 1


def test_bad_kernels_are_clear_errors():
    q, k, v = random_qkv(5, 5)
    with pytest.raises(ValueError, match="odd"):
        neighborhood_attention(q, k, v, 4)
    with pytest.raises(ValueError, match="does not fit"):
        neighborhood_attention(q, k, v, 7)


@pytest.mark.skipif(not attention.natten_available(), reason="natten not installed")
def test_natten_on_cpu_refuses_backward():
    q, k, v = random_qkv(7, 7, requires_grad=True)
    with pytest.raises(RuntimeError, match="torch"):
        neighborhood_attention(q, k, v, 3, backend="natten")


def test_shifted_window_attention_without_shift_is_blockwise_global():
    q, k, v = random_qkv(8, 8)
    out = shifted_window_attention(q, k, v, window_size=4, shift=False)
    # the top-left window only sees itself
    block = [t[:, :4, :4] for t in (q, k, v)]
    n, h, w, heads, d = block[0].shape
    flat = [t.permute(0, 3, 1, 2, 4).reshape(n, heads, h * w, d) for t in block]
    ref = (flat[0] @ flat[1].transpose(-1, -2)).softmax(-1) @ flat[2]
    ref = ref.reshape(n, heads, h, w, d).permute(0, 2, 3, 1, 4)
    torch.testing.assert_close(out[:, :4, :4], ref, atol=1e-5, rtol=1e-5)


def test_shifted_window_attention_masks_wrapped_regions():
    q, k, v = random_qkv(8, 8)
    out = shifted_window_attention(q, k, v, window_size=4, shift=True)
    # the centre window (rows/cols 2..5) lies inside the image: after the shift it is a plain window.
    block = [t[:, 2:6, 2:6] for t in (q, k, v)]
    n, h, w, heads, d = block[0].shape
    flat = [t.permute(0, 3, 1, 2, 4).reshape(n, heads, h * w, d) for t in block]
    ref = ((flat[0] @ flat[1].transpose(-1, -2)).softmax(-1) @ flat[2]).reshape(n, heads, h, w, d)
    torch.testing.assert_close(out[:, 2:6, 2:6], ref.permute(0, 2, 3, 1, 4), atol=1e-5, rtol=1e-5)
    # a corner token must not see the far side of the image that the roll brought next to it
    v_far = v.clone()
    v_far[:, 4:, 4:] += 100.0  # keys far from the (0, 0) corner
    out_far = shifted_window_attention(q, k, v_far, window_size=4, shift=True)
    torch.testing.assert_close(out_far[:, 0, 0], out[:, 0, 0])


# ------------------------------------------------------------------ the tile order and its block masks

@pytest.mark.parametrize("tiling", list(attention.TILINGS))
def test_tile_order_round_trips_and_positions_name_each_token(tiling):
    grid = attention.TiledGrid(16, 32, attention.TILINGS[tiling])
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(32), indexing="ij")
    coords = torch.stack([rows, cols], -1)  # (h, w, 2)
    tiled = grid.to_tiles(coords)  # (1, h·w, 2)
    assert torch.equal(grid.from_tiles(tiled), coords)
    assert len({tuple(c) for c in tiled[0].tolist()}) == 16 * 32  # a permutation
    row, col = grid.positions(torch.arange(16 * 32))
    assert torch.equal(torch.stack([row, col], -1), tiled[0])
    t = grid.tiling  # each query block is one tile, each key block one sub-tile
    first = tiled[0, : t.q_block]
    assert first[:, 0].max() < t.tile_h and first[:, 1].max() < t.tile_w
    sub = tiled[0, : t.kv_block]
    assert sub[:, 0].max() < t.sub_h and sub[:, 1].max() < t.sub_w


@pytest.mark.parametrize("h,w,kernel_size,tiling", [(16, 16, 7, "8x8/4x8"), (16, 32, 5, "8x16/4x8"),
                                                     (24, 8, 3, "8x8/4x8"), (9, 11, 3, None), (13, 20, 5, None)])
def test_block_masks_equal_create_block_mask(h, w, kernel_size, tiling):
    """The chunked block-table builder gives exactly what FlexAttention's create_block_mask gives."""
    from torch.nn.attention.flex_attention import create_block_mask

    order = attention.TILINGS[tiling] if tiling else None
    mine = attention.build_neighborhood_block_mask(h, w, kernel_size, order, torch.device("cpu"))
    size = (order.q_block, order.kv_block) if order else attention.ROW_MAJOR_BLOCK
    mask_mod = attention.neighborhood_mask_mod(h, w, kernel_size, order)
    reference = create_block_mask(mask_mod, None, None, h * w, h * w, device="cpu", BLOCK_SIZE=size)
    assert mine.BLOCK_SIZE == reference.BLOCK_SIZE
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks", "q_indices"):
        assert torch.equal(getattr(mine, name), getattr(reference, name)), name


def test_block_masks_cover_every_window_and_no_more_than_listed():
    """Expanded to tokens, the listed blocks hold every (query, key) pair of the window rule, and the
    blocks marked full hold only such pairs."""
    h, w, k = 16, 24, 5
    tiling = attention.TILINGS["8x8/4x8"]
    grid = attention.TiledGrid(h, w, tiling)
    block_mask = attention.build_neighborhood_block_mask(h, w, k, tiling, torch.device("cpu"))
    q_rows, q_cols = grid.positions(torch.arange(h * w))
    wanted = attention.neighborhood_mask(h, w, k)  # row-major (query, key)
    flat = q_rows * w + q_cols
    wanted = wanted[flat][:, flat]  # in the tile order
    def expand(num, indices):
        dense = torch.zeros(h * w // tiling.q_block, h * w // tiling.kv_block, dtype=torch.bool)
        for qb in range(dense.shape[0]):
            dense[qb, indices[0, 0, qb, : num[0, 0, qb]].long()] = True
        return dense.repeat_interleave(tiling.q_block, 0).repeat_interleave(tiling.kv_block, 1)
    partial = expand(block_mask.kv_num_blocks, block_mask.kv_indices)
    full = expand(block_mask.full_kv_num_blocks, block_mask.full_kv_indices)
    assert bool((wanted & ~(partial | full)).sum() == 0)
    assert bool((full & ~wanted).sum() == 0)


@pytest.mark.parametrize("h,w,kernel_size,tiling", TILED_CASES)
def test_flex_in_tile_order_matches_brute_force(h, w, kernel_size, tiling):
    """Tokens in tile order through the flex backend, back in row-major order: the exact neighbourhood."""
    grid = attention.TiledGrid(h, w, attention.TILINGS[tiling])
    q, k, v = random_qkv(h, w, d=attention.FLEX_MIN_HEAD_DIM)
    with torch.no_grad():
        out = neighborhood_attention(*(to_tiles(grid, t) for t in (q, k, v)), kernel_size, backend="flex", grid=grid)
    assert attention.last_backend() == "flex" and out.shape == (2, 1, h * w, 2, attention.FLEX_MIN_HEAD_DIM)
    torch.testing.assert_close(from_tiles(grid, out), brute_force_neighborhood(q, k, v, kernel_size), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "natten"])
def test_other_backends_take_tile_ordered_tokens_too(backend):
    if backend == "natten" and not attention.natten_available():
        pytest.skip("natten not installed")
    grid = attention.TiledGrid(16, 24, attention.TILINGS["8x8/4x8"])
    q, k, v = random_qkv(16, 24)
    with torch.no_grad():
        out = neighborhood_attention(*(to_tiles(grid, t) for t in (q, k, v)), 5, backend=backend, grid=grid)
    assert attention.last_backend() == backend
    torch.testing.assert_close(from_tiles(grid, out), brute_force_neighborhood(q, k, v, 5), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_compiled_flex_reads_the_block_tables_exactly():
    """Compiled FlexAttention (inductor's CPU kernel) computes only the listed blocks, unlike the
    uncompiled path, which applies mask_mod to all pairs: there the tile-ordered mask gives the exact
    neighbourhood, and a block left out of the tables changes the result."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    h, w, kernel_size = 16, 24, 7
    grid = attention.TiledGrid(h, w, attention.TILINGS["8x8/4x8"])
    block_mask = attention.build_neighborhood_block_mask(h, w, kernel_size, grid.tiling, torch.device("cpu"))
    q, k, v = random_qkv(h, w, heads=2, d=16, n=1)
    flat = [to_tiles(grid, t)[:, 0].transpose(1, 2).contiguous() for t in (q, k, v)]  # (n, heads, h·w, d)
    flex = torch.compile(flex_attention, dynamic=False)

    def attend(mask):
        return from_tiles(grid, flex(*flat, block_mask=mask, scale=1.0).transpose(1, 2)[:, None])

    expected = brute_force_neighborhood(q, k, v, kernel_size)
    torch.testing.assert_close(attend(block_mask), expected, atol=1e-5, rtol=1e-5)
    num = block_mask.kv_num_blocks.clone()
    num[..., 0] -= 1  # forget the last partial block of the first query tile
    planted = BlockMask.from_kv_blocks(num, block_mask.kv_indices, block_mask.full_kv_num_blocks,
                                       block_mask.full_kv_indices, BLOCK_SIZE=block_mask.BLOCK_SIZE,
                                       mask_mod=block_mask.mask_mod, seq_lengths=block_mask.seq_lengths)
    assert (attend(planted) - expected).abs().max() > 1e-3


def test_keys_per_query_are_read_from_the_block_mask():
    """Row-major 128-token blocks at a 128² grid compute 7 rows of 128 keys per query; the tile order
    stays under 450 at the HDiT's 128² and 64² levels (the 7×7 window needs 49)."""
    cpu = torch.device("cpu")
    # 128 tokens wide, every query's window spans 7 rows: 896 at any height (the 128² level 0 measured 896)
    assert attention.keys_per_query(attention.build_neighborhood_block_mask(16, 128, 7, None, cpu)) == 896
    tiling = attention.TILINGS[attention.DEFAULT_TILING]
    for side in (128, 64):
        keys = attention.keys_per_query(attention.build_neighborhood_block_mask(side, side, 7, tiling, cpu))
        assert 49 < keys <= 450
    # one query block of a 8×8 grid whose window covers it all: its 2 sub-tiles, 64 keys per query
    assert attention.keys_per_query(attention.build_neighborhood_block_mask(8, 8, 7, tiling, cpu)) == 64


def test_tiling_rule(monkeypatch):
    monkeypatch.delenv(attention.TILING_ENV_VAR, raising=False)
    assert attention.resolve_tiling().name == attention.DEFAULT_TILING
    assert attention.resolve_tiling("rows") is None
    assert attention.resolve_tiling("8x16/4x8").name == "8x16/4x8"
    monkeypatch.setattr(attention, "SMALL_BLOCK_BACKWARD", False)  # torch < 2.14: no bf16 backward kernel
    assert attention.resolve_tiling(None, low_precision_backward=True) is None
    assert attention.resolve_tiling(None, low_precision_backward=False).name == attention.DEFAULT_TILING
    monkeypatch.setattr(attention, "SMALL_BLOCK_BACKWARD", True)
    assert attention.resolve_tiling(None, low_precision_backward=True).name == attention.DEFAULT_TILING
    monkeypatch.setenv(attention.TILING_ENV_VAR, "rows")
    assert attention.resolve_tiling() is None
    with pytest.raises(ValueError, match="3x3"):
        attention.resolve_tiling("3x3")


def test_low_precision_backward_reads_grad_mode_autocast_and_dtype():
    cpu = torch.device("cpu")
    assert not attention.low_precision_backward(cpu)
    assert attention.low_precision_backward(cpu, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention.low_precision_backward(cpu)
        with torch.no_grad():
            assert not attention.low_precision_backward(cpu)


def test_levels_use_the_tile_order_only_with_flex_and_whole_tiles(monkeypatch):
    monkeypatch.delenv(attention.TILING_ENV_VAR, raising=False)
    cpu = torch.device("cpu")
    grid = attention.level_tiling(16, 24, 7, cpu, "flex", 64)
    assert grid == attention.TiledGrid(16, 24, attention.TILINGS[attention.DEFAULT_TILING])
    assert attention.level_tiling(16, 24, 7, cpu, "torch", 64) is None
    assert attention.level_tiling(16, 24, 7, cpu, "flex", 8) is None  # small heads run the torch backend
    assert attention.level_tiling(12, 24, 7, cpu, "flex", 64) is None  # not whole tiles: row-major
    monkeypatch.setenv(attention.TILING_ENV_VAR, "rows")
    assert attention.level_tiling(16, 24, 7, cpu, "flex", 64) is None
