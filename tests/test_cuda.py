"""CUDA-only checks, skipped without a GPU: the compiled flex backend forward and backward against brute
force (row-major and in the tile order), the backends' agreement on a full-size HDiT, a compiled HDiT
(tile order, TF32, any batch size, a bf16 training step), and bf16 restoration."""

import pytest
import torch
from helpers import (
    TILED_CASES,
    TINY_HDIT,
    brute_force_neighborhood,
    build_method,
    from_tiles,
    randomize_,
    to_tiles,
)

from arch import attention, create_arch
from arch.attention import neighborhood_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def strict_fp32():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


def cuda_qkv(h: int, w: int):
    """q, k, v (with gradients) and an upstream gradient on an h×w grid: 4 heads of 64 channels."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, h, w, 4, 64, device="cuda", generator=gen).requires_grad_() for _ in range(3))
    return q, k, v, torch.randn(2, h, w, 4, 64, device="cuda", generator=gen)


def assert_flex_matches_brute_force(out, q, k, v, upstream, kernel_size):
    """`out` came from the flex backend, and it and its gradients equal brute force's."""
    assert attention.last_backend() == "flex"
    grads = torch.autograd.grad((out * upstream).sum(), (q, k, v))
    ref = brute_force_neighborhood(q, k, v, kernel_size)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), (q, k, v))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("h,w,kernel_size", [(16, 16, 7), (13, 20, 5)])
def test_compiled_flex_forward_and_backward_match_brute_force(h, w, kernel_size):
    q, k, v, upstream = cuda_qkv(h, w)
    out = neighborhood_attention(q, k, v, kernel_size, backend="flex")
    assert_flex_matches_brute_force(out, q, k, v, upstream, kernel_size)


# square and non-square grids, k = 3, 5, 7, borders included (each case compiles FlexAttention once)
CUDA_TILED_CASES = [(16, 16, 7, "8x8/4x8"), (16, 24, 5, "8x8/4x8"), (24, 8, 3, "8x8/4x8"), (16, 32, 7, "8x16/4x8"),
                    (64, 64, 7, "8x8/4x8")]
assert all(case in TILED_CASES for case in CUDA_TILED_CASES[:-1])


@pytest.mark.parametrize("h,w,kernel_size,tiling", CUDA_TILED_CASES)
def test_compiled_flex_in_tile_order_forward_and_backward_match_brute_force(h, w, kernel_size, tiling):
    """Square and non-square grids, k = 3, 5, 7, borders included: the tile-ordered block mask's small
    blocks run forward and backward in float32 (the kernel tiles follow the mask's blocks)."""
    grid = attention.TiledGrid(h, w, attention.TILINGS[tiling])
    q, k, v, upstream = cuda_qkv(h, w)
    out = from_tiles(grid, neighborhood_attention(*(to_tiles(grid, t) for t in (q, k, v)), kernel_size,
                                                  backend="flex", grid=grid))
    assert_flex_matches_brute_force(out, q, k, v, upstream, kernel_size)


def test_block_masks_on_cuda_equal_the_cpu_ones():
    tiling = attention.TILINGS[attention.DEFAULT_TILING]
    on_gpu = attention.build_neighborhood_block_mask(128, 128, 7, tiling, torch.device("cuda"))
    on_cpu = attention.build_neighborhood_block_mask(128, 128, 7, tiling, torch.device("cpu"))
    assert torch.equal(on_gpu.kv_indices.cpu(), on_cpu.kv_indices)
    assert attention.keys_per_query(on_gpu) == attention.keys_per_query(on_cpu) <= 450


def test_auto_never_picks_natten_without_fused_kernels():
    expected = "natten" if attention.natten_has_fused_kernels(torch.device("cuda")) else "flex"
    assert attention.resolve_backend(torch.device("cuda"), "auto") == expected


def test_backends_agree_on_the_full_size_hdit():
    torch.manual_seed(0)
    net = randomize_(create_arch("hdit_ImageNet256Sp4").cuda(), 0.05).eval()
    x, t = torch.randn(2, 3, 128, 128, device="cuda"), torch.rand(2, device="cuda")
    outputs = {}
    with torch.no_grad():
        for backend in ["torch", "flex"] + (["natten"] if attention.natten_has_fused_kernels(x.device) else []):
            net.set_neighborhood_backend(backend)
            outputs[backend] = net(x, t)
    scale = outputs["torch"].abs().max()
    for backend, out in outputs.items():
        assert ((out - outputs["torch"]).abs().max() / scale).item() <= 1e-4, backend


def test_whole_compiled_hdit_with_flex_matches_eager_forward_and_backward():
    torch.manual_seed(0)
    config = dict(TINY_HDIT, widths=[64, 128], self_attns=[{"type": "neighborhood", "d_head": 32, "kernel_size": 7},
                                                            {"type": "global", "d_head": 32}])
    eager = randomize_(create_arch(config).cuda(), 0.05)
    eager.set_neighborhood_backend("flex")
    compiled = create_arch(config).cuda()
    compiled.load_state_dict(eager.state_dict())
    compiled.set_neighborhood_backend("flex")
    compiled.compile(fullgraph=False)
    x, t = torch.randn(2, 3, 32, 48, device="cuda"), torch.rand(2, device="cuda")
    assert attention.level_tiling(16, 24, 7, x.device, "flex", 32) is not None  # level 0 in the tile order
    a, b = eager(x, t), compiled(x, t)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    a.square().mean().backward()
    b.square().mean().backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_bf16_restore_of_a_pmrf_batch():
    model = build_method("naive_flow", None).cuda().eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        sample = model.pmrf.sample(torch.rand(2, 3, 32, 32, device="cuda"), 4)
    assert sample.xhat.dtype == torch.float32 and torch.isfinite(sample.xhat).all()
    assert 0 <= sample.xhat.min() and sample.xhat.max() <= 1


@pytest.fixture(scope="module")
def full_size_pair():
    """The full-size HDiT, eager and compiled, under TF32 matmuls as the programs run it (compiled once)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    torch.manual_seed(0)
    eager = randomize_(create_arch("hdit_ImageNet256Sp4").cuda(), 0.02).eval().requires_grad_(False)
    compiled = create_arch("hdit_ImageNet256Sp4").cuda().eval().requires_grad_(False)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    yield eager, compiled
    torch.set_float32_matmul_precision(previous)


def test_compiling_keeps_the_default_precision_at_any_batch_size(full_size_pair):
    """TF32 matmuls as the reference (the programs' default): the compiled HDiT stays within TF32's error
    of the eager one (both levels in the tile order at 256 px); the app and whole-photo mode restore 1, 2,
    3, ... faces at a time, and after the first sizes one compiled graph serves every size."""
    torch.set_float32_matmul_precision("high")  # the autouse fixture made it strict
    eager, compiled = full_size_pair
    with torch.no_grad():
        for batch in (1, 2, 3):
            x, t = torch.randn(batch, 3, 256, 256, device="cuda"), torch.rand(batch, device="cuda")
            a, b = eager(x, t), compiled(x, t)
            assert ((b - a).abs().max() / a.abs().max()).item() <= 5e-3, batch


def test_a_compiled_bf16_training_step_runs_with_the_automatic_token_order(monkeypatch):
    """bf16 autocast backward through the compiled HDiT: the tile order where this torch's FlexAttention
    has a backward kernel for its blocks, row-major otherwise (attention.SMALL_BLOCK_BACKWARD)."""
    torch.manual_seed(0)  # heads of 64 as the full-size network (the kernels' tiles depend on them)
    config = dict(TINY_HDIT, patch_size=[4, 4], widths=[128, 256], d_ffs=[256, 512],
                  self_attns=[{"type": "neighborhood", "d_head": 64, "kernel_size": 7}, {"type": "global", "d_head": 64}])
    net = randomize_(create_arch(config).cuda(), 0.02)
    net.set_neighborhood_backend("flex")  # the backend whose masks carry a token order
    monkeypatch.delenv(attention.TILING_ENV_VAR, raising=False)
    net.compile()
    x, t = torch.randn(2, 3, 128, 128, device="cuda"), torch.rand(2, device="cuda")
    monkeypatch.setattr(attention, "_BLOCK_MASKS", {})  # holds the block masks this step builds, by token order
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = net(x, t).float().square().mean()
    loss.backward()
    tiling = attention.TILINGS[attention.DEFAULT_TILING] if attention.SMALL_BLOCK_BACKWARD else None
    assert list(attention._BLOCK_MASKS) == [attention._mask_key(32, 32, 7, tiling, x.device)]  # the 32² level
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_load_from_checkpoint_keeps_a_cuda_checkpoint_on_cuda_as_lightning_does(tmp_path):
    """map_location=None is Lightning's default: the tensors stay on the device they were saved from."""
    from lightning_models.mmse_rectified_flow import MMSERectifiedFlow

    model = MMSERectifiedFlow(stage="naive_flow", arch=TINY_HDIT, ema_decay=0.9).cuda()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "ema": model.ema.state_dict()}, tmp_path / "cuda.ckpt")
    assert MMSERectifiedFlow.load_from_checkpoint(tmp_path / "cuda.ckpt").device.type == "cuda"
    assert MMSERectifiedFlow.load_from_checkpoint(tmp_path / "cuda.ckpt", map_location="cpu").device.type == "cpu"
