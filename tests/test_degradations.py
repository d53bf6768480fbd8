import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from degradations import DEGRADATION_NAMES, create_degradation, degradation_channels
from degradations.noise import BicubicSuperResolutionNoise, RandomInpaintingNoise


def clipped_normal_std(sigma: float, bound: float) -> float:
    """Standard deviation of clip(sigma * Z, -bound, bound) for Z ~ N(0, 1)."""
    c = bound / sigma
    cdf = 0.5 * (1 + math.erf(c / math.sqrt(2)))
    pdf = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    inside = (2 * cdf - 1) - 2 * c * pdf
    return math.sqrt(sigma**2 * inside + bound**2 * 2 * (1 - cdf))


def test_names_and_channels():
    """The registry against the paper's experiments (spec section 4), in the reference's order; the other
    tests of this module run on every registered name."""
    assert DEGRADATION_NAMES == (
        "sr_bicubic_x8_gaussian_noise_005",
        "gaussian_noise_035",
        "colorization_gaussian_noise_025",
        "random_inpainting_gaussian_noise_01",
        "difface",
    )
    assert [degradation_channels(name) for name in DEGRADATION_NAMES] == [3, 3, 1, 3, 3]
    for name in DEGRADATION_NAMES:
        assert create_degradation(name).y_channels == degradation_channels(name)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="gaussian_noise_035.*difface"):
        create_degradation("jpeg_artifacts")
    with pytest.raises(ValueError, match="unknown degradation"):
        degradation_channels("nope")


@pytest.mark.parametrize("name", DEGRADATION_NAMES)
def test_shapes_and_range(name):
    x = torch.rand(3, 64, 48)
    y, x_override = create_degradation(name)(x)
    assert y.shape == (degradation_channels(name), 64, 48)
    assert y.dtype == torch.float32
    assert 0.0 <= y.min() and y.max() <= 1.0
    if name == "difface":
        assert x_override.shape == x.shape and 0.0 <= x_override.min() and x_override.max() <= 1.0
    else:
        assert x_override is None


@pytest.mark.parametrize("name", DEGRADATION_NAMES)
def test_reproducible_under_a_seed(name):
    x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    degradation = create_degradation(name)

    def run(seed):
        torch.manual_seed(seed)
        return degradation(x)[0]

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))

    def run_with_generator(seed):
        return create_degradation(name, torch.Generator().manual_seed(seed))(x)[0]

    torch.manual_seed(5)
    first = run_with_generator(3)
    torch.manual_seed(6)  # the global RNG must not matter when a generator is given
    assert torch.equal(first, run_with_generator(3))
    assert not torch.equal(first, run_with_generator(4))


def test_rejects_non_rgb_input():
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        create_degradation("gaussian_noise_035")(torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="float"):
        create_degradation("gaussian_noise_035")(torch.zeros(3, 8, 8, dtype=torch.uint8))


def test_gaussian_noise_std():
    x = torch.full((3, 128, 128), 0.5)
    torch.manual_seed(0)
    residual = create_degradation("gaussian_noise_035")(x)[0] - x
    assert residual.std().item() == pytest.approx(clipped_normal_std(0.35, 0.5), rel=0.03)
    assert abs(residual.mean().item()) < 0.01


def test_colorization_is_noisy_mean_of_rgb():
    x = torch.stack([torch.full((128, 128), v) for v in (0.2, 0.5, 0.8)])  # RGB mean 0.5
    torch.manual_seed(0)
    y, _ = create_degradation("colorization_gaussian_noise_025")(x)
    assert y.shape == (1, 128, 128)
    residual = y - 0.5
    assert residual.std().item() == pytest.approx(clipped_normal_std(0.25, 0.5), rel=0.03)
    assert abs(residual.mean().item()) < 0.01


def test_super_resolution_operator_and_noise():
    x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    noiseless = BicubicSuperResolutionNoise(8, 0.0)(x)[0]
    low = F.interpolate(x[None], size=(8, 8), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    expected = low[0].repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)
    torch.testing.assert_close(noiseless, expected)

    flat = torch.full((3, 256, 256), 0.5)
    torch.manual_seed(0)
    y = create_degradation("sr_bicubic_x8_gaussian_noise_005")(flat)[0]
    blocks = y.view(3, 32, 8, 32, 8)
    assert torch.equal(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))  # constant on each 8x8 block
    assert (blocks[:, :, 0, :, 0] - 0.5).std().item() == pytest.approx(0.05, rel=0.05)


def test_super_resolution_keeps_size_not_multiple_of_scale():
    y, _ = create_degradation("sr_bicubic_x8_gaussian_noise_005")(torch.rand(3, 36, 44))
    assert y.shape == (3, 36, 44)


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_inpainting_drops_int_ninety_percent(size):
    height, width = size
    degradation = RandomInpaintingNoise(0.9, 0.0)
    y, _ = degradation(torch.ones(3, height, width))
    dropped = y == 0
    assert torch.equal(dropped[0], dropped[1]) and torch.equal(dropped[0], dropped[2])  # same on all channels
    assert int(dropped[0].sum()) == int(0.9 * height * width)
    assert torch.equal(degradation.last_mask[0] == 0, dropped[0])


def test_inpainting_masks_differ_and_noise_std():
    x = torch.full((3, 64, 64), 0.5)
    degradation = create_degradation("random_inpainting_gaussian_noise_01")
    torch.manual_seed(0)
    y = degradation(x)[0]
    mask = degradation.last_mask
    assert int((mask == 0).sum()) == int(0.9 * 64 * 64)
    kept = (y - x)[mask.expand_as(x) == 1]
    assert kept.std().item() == pytest.approx(0.1, rel=0.1)  # 1230 samples, clipping is 5 sigma away
    assert y[mask.expand_as(x) == 0].mean().item() == pytest.approx(0.1 / math.sqrt(2 * math.pi), rel=0.1)
    degradation(x)
    assert not torch.equal(mask, degradation.last_mask)


# ------------------------------------------------------------------ difface


@pytest.fixture(scope="module")
def difface_draws():
    degradation = create_degradation("difface")
    rng = np.random.default_rng(0)
    return [degradation.sample_params(rng) for _ in range(3000)]


def test_difface_parameter_ranges(difface_draws):
    scales = np.array([p.scale for p in difface_draws])
    noise = np.array([p.noise_sigma for p in difface_draws])
    quality = np.array([p.jpeg_quality for p in difface_draws])
    sigmas = np.array([(p.sigma_x, p.sigma_y) for p in difface_draws])
    assert 0.8 <= scales.min() < 0.9 and 31.9 < scales.max() <= 32
    assert scales.mean() == pytest.approx(16.4, abs=0.6)  # uniform, not log-uniform
    assert 0 <= noise.min() < 0.1 and 19.9 < noise.max() <= 20
    assert quality.min() == 30 and quality.max() == 99 and quality.dtype.kind == "i"
    assert 0.1 <= sigmas.min() < 0.2 and 14.9 < sigmas.max() <= 15
    assert np.mean([p.flip for p in difface_draws]) == pytest.approx(0.5, abs=0.04)
    assert np.mean([p.kernel_kind == "iso" for p in difface_draws]) == pytest.approx(0.5, abs=0.04)
    assert 0.002 < np.mean([p.gray for p in difface_draws]) < 0.025
    assert len({p.noise_seed for p in difface_draws}) == len(difface_draws)


def test_difface_kernels(difface_draws):
    rotations = []
    for params in difface_draws[:300]:
        assert params.kernel.shape == (41, 41)
        assert params.kernel.sum() == pytest.approx(1.0)
        if params.kernel_kind == "iso":
            assert params.sigma_y == params.sigma_x and params.rotation == 0.0
            np.testing.assert_allclose(params.kernel, params.kernel.T, atol=1e-12)
        else:
            rotations.append(params.rotation)
    assert -math.pi <= min(rotations) < -2.5 and 2.5 < max(rotations) <= math.pi
    wide = next(p for p in difface_draws if p.kernel_kind == "iso" and p.sigma_x > 10)
    narrow = next(p for p in difface_draws if p.kernel_kind == "iso" and p.sigma_x < 1)
    assert narrow.kernel[20, 20] > 10 * wide.kernel[20, 20]


def face_like(height=64, width=64):
    generator = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.rand(1, 3, 8, 8, generator=generator), size=(height, width), mode="bilinear")
    return smooth[0].clamp(0, 1)


def replace(params, **changes):
    import dataclasses

    return dataclasses.replace(params, **changes)


@pytest.mark.parametrize("scale", [0.8, 3.7, 32.0])
def test_difface_output_size_and_8bit_levels(difface_draws, scale):
    degradation = create_degradation("difface")
    x = face_like(48, 80)
    lq, gt = degradation.apply(x, replace(difface_draws[0], scale=scale))
    assert lq.shape == gt.shape == x.shape
    assert 0 <= lq.min() and lq.max() <= 1
    torch.testing.assert_close(lq * 255, (lq * 255).round(), atol=1e-4, rtol=0)


def test_difface_tiny_image_guard(difface_draws):
    lq, _ = create_degradation("difface").apply(face_like(16, 16), replace(difface_draws[0], scale=32.0))
    assert lq.shape == (3, 16, 16)


def test_difface_flip_and_gray(difface_draws):
    degradation = create_degradation("difface")
    x = face_like()
    base = replace(difface_draws[0], gray=False)
    assert torch.equal(degradation.apply(x, replace(base, flip=False))[1], x)
    assert torch.equal(degradation.apply(x, replace(base, flip=True))[1], x.flip(-1))
    lq, gt = degradation.apply(x, replace(base, gray=True, flip=False))
    for image in (lq, gt):
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    gray = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    torch.testing.assert_close(gt[0], gray, atol=1e-3, rtol=0)


def test_difface_replays_last_params():
    degradation = create_degradation("difface")
    x = face_like()
    torch.manual_seed(0)
    lq, gt = degradation(x)
    replay_lq, replay_gt = degradation.apply(x, degradation.last_params)
    assert torch.equal(lq, replay_lq) and torch.equal(gt, replay_gt)


def test_difface_matches_basicsr_pipeline(difface_draws):
    """With the noise off, our pipeline equals BasicSR's own blur / resize / JPEG functions."""
    import cv2  # noqa: I001  (compat must be imported before basicsr)

    import compat.basicsr_torchvision  # noqa: F401
    from basicsr.data.degradations import add_jpg_compression

    params = replace(difface_draws[1], flip=True, gray=False, noise_sigma=0.0, scale=2.5, jpeg_quality=60)
    x = face_like()
    lq, gt = create_degradation("difface").apply(x, params)

    bgr = np.ascontiguousarray(x.permute(1, 2, 0).numpy()[:, :, ::-1][:, ::-1])
    blurred = cv2.filter2D(bgr, -1, params.kernel)
    small = cv2.resize(blurred, (int(64 // 2.5), int(64 // 2.5)), interpolation=cv2.INTER_LINEAR)
    compressed = add_jpg_compression(small, 60)
    expected = cv2.resize(compressed, (64, 64), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    expected = torch.from_numpy(np.round(expected * 255).clip(0, 255) / 255).permute(2, 0, 1).float()
    torch.testing.assert_close(lq, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(gt, x.flip(-1))
