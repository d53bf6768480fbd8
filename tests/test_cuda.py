"""CUDA-only checks, skipped without a GPU: the compiled flex backend forward and backward against brute
force, the backends' agreement on a full-size HDiT, a compiled HDiT, and bf16 restoration."""

import pytest
import torch
from conftest import TINY_HDIT
from test_attention import brute_force_neighborhood

from arch import attention, create_arch
from arch.attention import neighborhood_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def strict_fp32():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


def randomize_(net, scale=0.05):
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * scale)
    return net


@pytest.mark.parametrize("h,w,kernel_size", [(16, 16, 7), (13, 20, 5)])
def test_compiled_flex_forward_and_backward_match_brute_force(h, w, kernel_size):
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, h, w, 4, 64, device="cuda", generator=gen).requires_grad_() for _ in range(3))
    upstream = torch.randn(2, h, w, 4, 64, device="cuda", generator=gen)
    out = neighborhood_attention(q, k, v, kernel_size, backend="flex")
    assert attention.last_backend() == "flex"
    grads = torch.autograd.grad((out * upstream).sum(), (q, k, v))
    ref = brute_force_neighborhood(q, k, v, kernel_size)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), (q, k, v))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_auto_never_picks_natten_without_fused_kernels():
    expected = "natten" if attention.natten_has_fused_kernels(torch.device("cuda")) else "flex"
    assert attention.resolve_backend(torch.device("cuda"), "auto") == expected


def test_backends_agree_on_the_full_size_hdit():
    torch.manual_seed(0)
    net = randomize_(create_arch("hdit_ImageNet256Sp4").cuda()).eval()
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
    eager = randomize_(create_arch(config).cuda())
    eager.set_neighborhood_backend("flex")
    compiled = create_arch(config).cuda()
    compiled.load_state_dict(eager.state_dict())
    compiled.set_neighborhood_backend("flex")
    compiled.compile(fullgraph=False)
    x, t = torch.randn(2, 3, 32, 48, device="cuda"), torch.rand(2, device="cuda")
    a, b = eager(x, t), compiled(x, t)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    a.square().mean().backward()
    b.square().mean().backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_bf16_restore_of_a_pmrf_batch():
    from helpers import build_method

    model = build_method("naive_flow", None).cuda().eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        sample = model.pmrf.sample(torch.rand(2, 3, 32, 32, device="cuda"), 4)
    assert sample.xhat.dtype == torch.float32 and torch.isfinite(sample.xhat).all()
    assert 0 <= sample.xhat.min() and sample.xhat.max() <= 1


def test_load_from_checkpoint_keeps_a_cuda_checkpoint_on_cuda_as_lightning_does(tmp_path):
    """map_location=None is Lightning's default: the tensors stay on the device they were saved from."""
    from lightning_models.mmse_rectified_flow import MMSERectifiedFlow

    model = MMSERectifiedFlow(stage="naive_flow", arch=TINY_HDIT, ema_decay=0.9).cuda()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "ema": model.ema.state_dict()}, tmp_path / "cuda.ckpt")
    assert MMSERectifiedFlow.load_from_checkpoint(tmp_path / "cuda.ckpt").device.type == "cuda"
    assert MMSERectifiedFlow.load_from_checkpoint(tmp_path / "cuda.ckpt", map_location="cpu").device.type == "cpu"
