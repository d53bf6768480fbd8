"""Neighbourhood attention: every backend against a brute-force masked-attention reference, and the
rule `auto` follows."""

import pytest
import torch

from arch import attention
from arch.attention import neighborhood_attention, shifted_window_attention, window_starts


def brute_force_neighborhood(q, k, v, kernel_size):
    """Dense attention over all H·W keys with a mask built straight from NATTEN's window definition."""
    n, h, w, heads, d = q.shape
    mask = torch.zeros(h, w, h, w, dtype=torch.bool)
    r = kernel_size // 2
    for i in range(h):
        top = min(max(i - r, 0), h - kernel_size)
        for j in range(w):
            left = min(max(j - r, 0), w - kernel_size)
            mask[i, j, top : top + kernel_size, left : left + kernel_size] = True
    mask = mask.reshape(h * w, h * w).to(q.device)
    qf, kf, vf = (t.permute(0, 3, 1, 2, 4).reshape(n, heads, h * w, d) for t in (q, k, v))
    logits = qf @ kf.transpose(-1, -2)
    logits = logits.masked_fill(~mask, float("-inf"))
    out = logits.softmax(-1) @ vf
    return out.reshape(n, heads, h, w, d).permute(0, 2, 3, 1, 4)


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


def test_flex_block_masks_are_cached_per_grid_kernel_and_device():
    attention._BLOCK_MASKS.clear()
    first = attention.flex_block_mask(9, 11, 5, torch.device("cpu"))
    assert attention.flex_block_mask(9, 11, 5, torch.device("cpu")) is first
    assert attention.flex_block_mask(9, 11, 3, torch.device("cpu")) is not first
    assert len(attention._BLOCK_MASKS) == 2


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


def test_backend_can_be_forced_by_environment(monkeypatch):
    q, k, v = random_qkv(7, 7)
    monkeypatch.setenv(attention.BACKEND_ENV_VAR, "torch")
    neighborhood_attention(q, k, v, 3)
    assert attention.last_backend() == "torch"
    monkeypatch.setenv(attention.BACKEND_ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        neighborhood_attention(q, k, v, 3)


def test_auto_uses_torch_on_cpu(monkeypatch):
    monkeypatch.delenv(attention.BACKEND_ENV_VAR, raising=False)
    assert attention.resolve_backend(torch.device("cpu")) == "torch"


@pytest.mark.parametrize("has_fused_kernels,expected", [(True, "natten"), (False, "flex")])
def test_auto_on_cuda_picks_natten_only_with_its_fused_kernels(monkeypatch, has_fused_kernels, expected):
    """natten without libnatten would run uncompiled flex attention with (H·W)² scores: never chosen."""
    import types

    monkeypatch.delenv(attention.BACKEND_ENV_VAR, raising=False)
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
