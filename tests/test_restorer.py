"""The one restorer (lightning_models.restorer), the precision vocabulary (utils.precision) and the EMA copy
(lightning_models.ema) that validation and testing run."""

from contextlib import nullcontext

import pytest
import torch
from helpers import build_method
from torch import nn

from lightning_models.ema import EMA
from lightning_models.restorer import Restorer, set_up_networks
from utils.precision import PRECISIONS, autocast, bf16_flag, precision_name


def test_one_precision_vocabulary_lightnings_names_and_the_bf16_flag():
    assert PRECISIONS == ("32", "bf16-mixed", "16-mixed")
    assert [precision_name(p) for p in (None, "32", "32-true", 32, "bf16", "bf16-mixed", "16-mixed")] == [
        "32", "32", "32", "32", "bf16-mixed", "bf16-mixed", "16-mixed"]
    assert bf16_flag(True) == "bf16-mixed" and bf16_flag(False) == "32"
    with pytest.raises(ValueError, match="64"):
        precision_name("64")
    assert isinstance(autocast("bf16-mixed", "cpu"), nullcontext)  # float32 off CUDA, as --bf16 always was
    assert isinstance(autocast("32", "cuda"), nullcontext)
    context = autocast("16-mixed", "cuda")
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.float16


def test_the_restorer_runs_the_ema_copy_only_when_asked_and_never_touches_the_raw_weights():
    model = build_method("naive_flow", None, ema_decay=0.5)
    with torch.no_grad():
        for shadow in model.ema.shadow_params:
            shadow.add_(1.0)
    raw = [p.detach().clone() for p in model.model.parameters()]
    y = torch.rand(2, 3, 16, 16)
    plain = Restorer(model, 2, seed=3)
    averaged = Restorer(model, 2, seed=3, use_ema=True)
    assert plain.method.model is model.model and averaged.method.model is model.ema.network
    assert not torch.equal(plain.sample(y).xhat, averaged.sample(y).xhat)
    assert all(torch.equal(p, r) for p, r in zip(model.model.parameters(), raw))
    with pytest.raises(ValueError, match="use_ema"):
        Restorer(model.pmrf, use_ema=True)  # a bare method keeps no EMA


def test_a_seeded_restorer_reproduces_and_its_generator_advances():
    model = build_method("naive_flow", None)
    y = torch.rand(2, 3, 16, 16)
    first, again = Restorer(model, 2, seed=7), Restorer(model, 2, seed=7)
    a, b = first.restore(y), again.restore(y)
    assert torch.equal(a.xhat, b.xhat) and a.xhat.device.type == "cpu"
    assert not torch.equal(first.restore(y).xhat, a.xhat)  # the next batch draws new noise


def test_the_ema_state_is_torch_emas_both_ways():
    from torch_ema import ExponentialMovingAverage

    net = nn.Linear(3, 2)
    ours, theirs = EMA(net, 0.9), ExponentialMovingAverage(net.parameters(), decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ours.update(net)
        theirs.update(net.parameters())
    state = ours.state_dict()
    assert set(state) == {"decay", "num_updates", "shadow_params", "collected_params"}
    assert state["collected_params"] is None and state["num_updates"] == theirs.num_updates == 3
    assert all(torch.equal(a, b) for a, b in zip(state["shadow_params"], theirs.shadow_params, strict=True))
    other = ExponentialMovingAverage(net.parameters(), decay=0.5)
    other.load_state_dict(state)  # the reference reads what we write
    fresh = EMA(net, 0.5)
    fresh.load_state_dict(theirs.state_dict())  # and we read what it writes
    assert fresh.num_updates == 3 and all(torch.equal(a, b) for a, b in zip(fresh.shadow_params, theirs.shadow_params))
    with pytest.raises(ValueError, match="shape"):
        fresh.load_state_dict({**theirs.state_dict(), "shadow_params": [torch.zeros(5), torch.zeros(2)]})


def test_set_up_networks_gives_the_ema_copy_the_same_kernel_and_compiles_lazily():
    model = build_method("naive_flow", None, ema_decay=0.5)
    set_up_networks(model, "torch", compile=True)
    for network in (model.model, model.ema.network):
        assert network._compiled_call_impl is not None
        assert network.neighborhood_backend == "torch"
    assert model.state_dict().keys() == build_method("naive_flow", None).state_dict().keys()
