"""HDiT (arch/hdit.py): full-size networks, official weights, gradients, time input, backends, configs."""

import json

import pytest
import torch
from helpers import TINY_HDIT, randomize_

from arch import NAMED_CONFIGS, attention, create_arch
from arch.hdit import HDiT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HDIT_NAMES = [name for name, config in NAMED_CONFIGS.items() if config["type"] == "hdit"]


# (state-dict keys, shapes and order against the official manifest: test_create_arch.py)


@pytest.mark.slow
@pytest.mark.parametrize("name", HDIT_NAMES)
def test_full_size_forward_at_64px_is_zero_at_init(name):
    net = create_arch(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x, torch.rand(2))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised output projection


@pytest.mark.slow
def test_strict_load_of_synthetic_official_state_dict(arch_manifest):
    entry = arch_manifest["hdit_ImageNet256Sp4+cond3"]
    gen = torch.Generator().manual_seed(1)
    # positive values where the network takes a square root (attention scales)
    state = {k: torch.rand(shape, generator=gen) * 0.02 + 0.01 for k, shape in entry.items()}
    net = create_arch("hdit_ImageNet256Sp4", condition_channels=3)
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = net(torch.rand(1, 6, 64, 64), torch.tensor([0.3]))
    assert out.shape == (1, 3, 64, 64)
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_gradients_reach_every_parameter():
    net = randomize_(create_arch(TINY_HDIT))
    out = net(torch.randn(2, 3, 16, 16), torch.rand(2))
    out.square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_time_changes_the_output_and_none_time_works():
    net = randomize_(create_arch(TINY_HDIT)).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        a, b, c = net(x, torch.tensor([0.1])), net(x, torch.tensor([0.9])), net(x, None)
    assert not torch.allclose(a, b)
    assert c.shape == x.shape


def test_state_dict_round_trip_is_exact(tmp_path):
    net = randomize_(create_arch(TINY_HDIT)).eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    other = create_arch(TINY_HDIT).eval()
    other.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True), strict=True)
    x, t = torch.randn(1, 3, 16, 16), torch.rand(1)
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), other(x, t), rtol=0, atol=0)


def test_non_square_input_and_condition_channels():
    net = randomize_(create_arch(TINY_HDIT, condition_channels=1))
    with torch.no_grad():
        out = net(torch.randn(1, 4, 16, 24), torch.rand(1))
    assert out.shape == (1, 3, 16, 24)


@pytest.mark.parametrize("backend", ["flex", "natten"])
def test_every_backend_gives_the_torch_backends_network_output(backend):
    if backend == "natten" and not attention.natten_available():
        pytest.skip("natten not installed")
    # d_head 16: below that the flex backend hands the work to the torch backend (FLEX_MIN_HEAD_DIM)
    config = dict(TINY_HDIT, self_attns=[{"type": "neighborhood", "d_head": 16, "kernel_size": 3},
                                         {"type": "global", "d_head": 8}])
    net = randomize_(create_arch(config)).eval()
    x, t = torch.randn(1, 3, 16, 24), torch.rand(1)
    with torch.no_grad():
        net.set_neighborhood_backend("torch")
        a = net(x, t)
        net.set_neighborhood_backend(backend)
        b = net(x, t)
        assert attention.last_backend() == backend
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(32, 48), (48, 32), (32, 32), (40, 24)])
def test_flex_levels_in_tile_order_give_the_torch_backends_output(size, monkeypatch):
    """Both neighbourhood levels (16×24 and 8×12 grids at 32×48 px) run in the tile order where the grid
    is whole tiles and row-major where it is not (40×24 px: 20×12); the output is the torch backend's."""
    monkeypatch.delenv(attention.TILING_ENV_VAR, raising=False)
    config = dict(TINY_HDIT, self_attns=[{"type": "neighborhood", "d_head": 16, "kernel_size": 5},
                                         {"type": "neighborhood", "d_head": 16, "kernel_size": 3}])
    net = randomize_(create_arch(config)).eval()
    tiled = []
    to_tiles = attention.TiledGrid.to_tiles
    monkeypatch.setattr(attention.TiledGrid, "to_tiles", lambda grid, x: tiled.append((grid.h, grid.w)) or to_tiles(grid, x))
    x, t = torch.randn(2, 3, *size), torch.rand(2)
    with torch.no_grad():
        net.set_neighborhood_backend("torch")
        a = net(x, t)
        assert tiled == []
        net.set_neighborhood_backend("flex")
        b = net(x, t)
    h, w = size[0] // 2, size[1] // 2
    # x and pos at each level's entry: level 0 down and up (4), the middle level once (2)
    expected = [(h, w)] * 4 * (h % 8 == 0 and w % 8 == 0) + [(h // 2, w // 2)] * 2 * (h % 16 == 0 and w % 16 == 0)
    assert sorted(tiled) == sorted(expected)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_masks_built_before_a_forward_pass_are_the_ones_it_uses(monkeypatch):
    """prepare_neighborhood_attention builds each level's BlockMask in the order that level itself picks
    from its own d_head, so a compiled forward pass finds every mask ready: here the 16×24 level (d_head
    32) runs flex in the tile order and the 8×12 level (d_head 8) hands its work to the torch backend."""
    monkeypatch.delenv(attention.TILING_ENV_VAR, raising=False)
    attns = [{"type": "neighborhood", "d_head": 32, "kernel_size": 5},
             {"type": "neighborhood", "d_head": 8, "kernel_size": 3}]
    config = dict(TINY_HDIT, widths=[32, 32], self_attns=attns)
    net = randomize_(create_arch(config)).eval()
    net.set_neighborhood_backend("flex")
    cpu = torch.device("cpu")
    monkeypatch.setattr(attention, "_BLOCK_MASKS", {})
    attention.prepare_neighborhood_attention(net.neighborhood_grids(32, 48), cpu, "flex")
    prepared = set(attention._BLOCK_MASKS)
    assert prepared and all(key[3] != attention.ROW_MAJOR for key in prepared)
    with torch.no_grad():
        net(torch.randn(1, 3, 32, 48), torch.rand(1))
    assert set(attention._BLOCK_MASKS) == prepared


def test_shifted_window_and_ff_only_levels():
    config = dict(TINY_HDIT, self_attns=[{"type": "shifted-window", "d_head": 8, "window_size": 4}, {"type": "none"}],
                  depths=[2, 1])
    net = randomize_(create_arch(config))
    assert not hasattr(net.mid_level[0], "self_attn")
    assert net.down_levels[0][1].self_attn.shift and not net.down_levels[0][0].self_attn.shift
    assert net.up_levels[0][1].self_attn.shift  # the layer index counts on through the up path (2, 3)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 16, 16), torch.rand(1)).shape == (1, 3, 16, 16)


def test_json_config_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_HDIT))
    assert isinstance(create_arch(str(path)), HDiT)


@pytest.mark.parametrize(
    "config,match",
    [
        ("hdit_XXL", "unknown architecture"),
        (dict(TINY_HDIT, widths=[16]), "same non-zero length"),
        (dict(TINY_HDIT, colour="red"), "unknown field"),
        (dict(TINY_HDIT, type="unet"), "type"),
        (dict(TINY_HDIT, self_attns=[{"type": "axial"}, {"type": "global"}]), "axial"),
    ],
)
def test_bad_configurations_are_value_errors(config, match):
    with pytest.raises(ValueError, match=match):
        create_arch(config)


@pytest.mark.parametrize("shape,match", [((1, 3, 18, 16), "multiple of 4"), ((1, 3, 4, 4), "neighbourhood")])
def test_bad_input_sizes_are_value_errors(shape, match):
    net = create_arch(TINY_HDIT)
    with pytest.raises(ValueError, match=match):
        net(torch.randn(shape), torch.rand(1))
