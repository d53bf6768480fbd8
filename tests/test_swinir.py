"""SwinIR (arch/swinir.py): checkpoint layout, run-time behaviour, and agreement with BasicSR's SwinIR."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import manifest_network
from torch import nn

from arch.attention import shifted_window_same_region
from arch.swinir import RGB_MEAN, SwinIR, pad_to_multiple, shifted_window_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUFFER_SUFFIXES = ("relative_position_index", "attn_mask")

# token grid 8x8 at construction, windows of 4: two windows per side, shifted blocks have masks
TINY = dict(
    embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, sf=2, img_size=8, drop_path_rate=0.0
)


def tiny(**overrides) -> SwinIR:
    torch.manual_seed(0)
    return SwinIR(**{**TINY, **overrides}).eval()


@pytest.fixture(scope="module")
def manifest(arch_manifest) -> dict:
    return arch_manifest


def synthetic_state_dict(entries: dict, generator: torch.Generator) -> dict:
    state = {}
    for key, shape in entries.items():
        if key.endswith("relative_position_index"):
            table_rows = entries[key.replace("relative_position_index", "relative_position_bias_table")][0]
            state[key] = torch.randint(0, table_rows, shape, generator=generator)
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.02
    return state


# --------------------------------------------------------------------------------------------------
# checkpoint layout (keys, shapes and order against the official manifest: test_create_arch.py)


@pytest.mark.parametrize("name, channels", [("swinir_M+cond0", 3), ("swinir_L+in1", 1)])
def test_strict_load_of_synthetic_checkpoint_then_forward(manifest, name, channels):
    state = synthetic_state_dict(manifest[name], torch.Generator().manual_seed(1))
    model = manifest_network(name).eval()
    assert isinstance(model, SwinIR)
    model.load_state_dict(state, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    with torch.no_grad():
        out = model(torch.rand(1, channels, 64, 64))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------------
# agreement with BasicSR's SwinIR (same body; its nearest+conv supports x4 only, so sf=4 here)


@pytest.mark.filterwarnings("ignore:torch.meshgrid")  # raised inside BasicSR
@pytest.mark.parametrize("resi_connection", ["1conv", "3conv"])
@pytest.mark.parametrize("size", [(32, 32), (32, 48)])
def test_matches_basicsr_swinir(resi_connection, size):
    import compat.basicsr_torchvision  # noqa: F401
    # isort: split
    from basicsr.archs.swinir_arch import SwinIR as BasicSRSwinIR

    ours = tiny(sf=4, resi_connection=resi_connection)
    generator = torch.Generator().manual_seed(6)
    with torch.no_grad():  # larger than init weights, so position biases and masks matter
        for param in ours.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    reference = BasicSRSwinIR(
        img_size=8, patch_size=1, in_chans=3 * 16, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
        window_size=4, mlp_ratio=2.0, drop_path_rate=0.0, upscale=4, upsampler="nearest+conv",
        resi_connection=resi_connection,
    ).eval()
    reference.conv_last = nn.Conv2d(64, 3, 3, 1, 1)  # BasicSR ties output channels to input channels

    ours_state = ours.state_dict()
    ref_state = reference.state_dict()
    renamed = {key.replace("conv_first.1.", "conv_first."): value for key, value in ours_state.items()}
    assert list(renamed) == list(ref_state)
    for key in ref_state:  # position indices and shifted-window masks are built the same way
        if key.endswith(BUFFER_SUFFIXES):
            assert torch.equal(renamed[key], ref_state[key]), key
    reference.load_state_dict(renamed, strict=True)

    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(2))
    mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference(F.pixel_unshuffle(x - mean, 4)) + mean
        got = ours(x)
    assert got.abs().mean() > 1.0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# sizes, padding, masks


@pytest.mark.parametrize("size", [(16, 16), (24, 40), (18, 30), (2, 6)])
def test_forward_shape_any_multiple_of_sf(size):
    model = tiny()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, *size) and torch.isfinite(out).all()


def test_padded_path_equals_running_on_padded_input():
    model = tiny()
    x = torch.rand(1, 3, 18, 30)  # pads to 24x32 (multiple of sf * window = 8)
    padded = F.pad(x, (0, 2, 0, 6), mode="reflect")
    assert torch.equal(pad_to_multiple(x, 8), padded)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[..., :18, :30], rtol=0, atol=1e-6)


def test_pad_falls_back_to_replicate_when_reflection_is_too_short():
    x = torch.rand(1, 3, 2, 6)
    assert torch.equal(pad_to_multiple(x, 8), F.pad(x, (0, 2, 0, 6), mode="replicate"))


def test_input_size_not_multiple_of_sf_is_rejected():
    with pytest.raises(ValueError, match="multiples of sf=2"):
        tiny()(torch.rand(1, 3, 16, 15))


def test_runtime_mask_is_fresh_and_cached():
    model = tiny()
    shifted = model.layers[0].residual_group.blocks[1]
    assert shifted.shift_mask(8, 8, torch.device("cpu")) is shifted.attn_mask  # construction grid: buffer
    shifted_window_same_region.cache_clear()
    first = shifted.shift_mask(12, 8, torch.device("cpu"))
    assert torch.equal(first, shifted_window_mask(12, 8, window_size=4, shift_size=2))
    assert first.shape == (6, 16, 16)
    # one cache, shared by every block of the model (and by HDiT's shifted windows)
    other = model.layers[1].residual_group.blocks[1]
    assert torch.equal(other.shift_mask(12, 8, torch.device("cpu")), first)
    with torch.no_grad():
        model(torch.rand(1, 3, 24, 16))  # token grid 12x8 again: nothing new computed
    cache = shifted_window_same_region.cache_info()
    assert cache.misses == 1 and cache.currsize == 1 and cache.hits >= 3


def test_shifted_window_mask_values():
    mask = shifted_window_mask(8, 8, window_size=4, shift_size=2)
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # top-left window: one region
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    # bottom-right window holds four regions of 2x2 tokens; a token sees only its own region
    assert (mask[3] == 0).sum(dim=-1).tolist() == [4] * 16


# --------------------------------------------------------------------------------------------------
# channels


def test_gray_input_to_rgb_model_equals_replicated_gray():
    model = tiny()
    gray = torch.rand(2, 1, 16, 24)
    with torch.no_grad():
        assert torch.equal(model(gray), model(gray.expand(-1, 3, -1, -1).contiguous()))


def test_one_channel_model():
    model = tiny(in_channels=1)
    assert torch.equal(model.mean, torch.zeros(1, 1, 1, 1))
    with torch.no_grad():
        assert model(torch.rand(1, 1, 16, 16)).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="expects 1 input channels, got 3"):
        model(torch.rand(1, 3, 16, 16))


# --------------------------------------------------------------------------------------------------
# training behaviour and persistence


def test_gradients_reach_every_parameter():
    model = tiny().train()
    model(torch.rand(2, 3, 16, 24)).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_drop_path_only_in_training():
    model = tiny(drop_path_rate=0.5)
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(3)
        first = model(x)
        torch.manual_seed(4)
        assert not torch.equal(first, model(x))
    blocks = [block for layer in model.layers for block in layer.residual_group.blocks]
    rates = [getattr(block.drop_path, "drop_prob", 0.0) for block in blocks]  # first block: Identity
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.5, 4))


def test_save_load_round_trip(tmp_path):
    model = tiny(resi_connection="3conv")
    path = tmp_path / "swinir.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(5)
    restored = SwinIR(**{**TINY, "resi_connection": "3conv"}).eval()
    restored.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))
    assert torch.equal(copy.deepcopy(model)(x), model(x))


# --------------------------------------------------------------------------------------------------
# configuration errors


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(depths=[2, 2], num_heads=[2]), "equally long"),
        (dict(embed_dim=18, num_heads=[2, 4]), "divisible by every num_heads"),
        (dict(sf=3), "power of 2"),
        (dict(resi_connection="2conv"), "'1conv' or '3conv'"),
        (dict(upsampler="pixelshuffle"), "nearest\\+conv"),
        (dict(img_size=10), "multiple of window_size"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
    ],
)
def test_bad_configuration_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        SwinIR(**{**TINY, **overrides})
