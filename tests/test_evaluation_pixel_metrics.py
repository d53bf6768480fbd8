"""PSNR / SSIM / MSE of the evaluation suite against values computed another way."""

import math

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from evaluation.distortion import calculate_psnr_ssim_mse
from evaluation.ind_rmse import calculate_ind_rmse
from evaluation.piq_metrics import calculate_piq_distortion

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_folder(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    return folder


def noisy_pairs(seed=0, count=3, shape=(48, 40, 3), spread=30):
    rng = np.random.default_rng(seed)
    gts = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]
    recs = [
        np.clip(gt.astype(int) + rng.integers(-spread, spread + 1, shape), 0, 255).astype(np.uint8)
        for gt in gts
    ]
    return recs, gts


def numpy_mse(a, b):
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def numpy_psnr(a, b):
    return 10 * math.log10(255.0**2 / numpy_mse(a, b))


def skimage_ssim(a, b):
    return structural_similarity(
        a, b, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )


@pytest.fixture
def folders(tmp_path):
    recs, gts = noisy_pairs()
    return recs, gts, write_folder(tmp_path / "rec", recs), write_folder(tmp_path / "gt", gts)


@pytest.mark.parametrize("calculate,batch_size,ssim_tolerance", [
    (calculate_psnr_ssim_mse, 2, 1e-6),  # the blind-face program's
    (calculate_piq_distortion, 3, 1e-5),  # the controlled experiments' (piq)
], ids=["blind", "controlled_piq"])
def test_psnr_ssim_mse_match_independent_formulas(folders, calculate, batch_size, ssim_tolerance):
    recs, gts, rec_dir, gt_dir = folders
    result = calculate(rec_dir, gt_dir, batch_size=batch_size)
    assert result["mse"] == pytest.approx(np.mean([numpy_mse(r, g) for r, g in zip(recs, gts)]), rel=1e-9)
    assert result["psnr"] == pytest.approx(np.mean([numpy_psnr(r, g) for r, g in zip(recs, gts)]), abs=1e-3)
    assert result["ssim"] == pytest.approx(np.mean([skimage_ssim(g, r) for r, g in zip(recs, gts)]),
                                           abs=ssim_tolerance)


def test_mse_is_on_the_0_255_scale(tmp_path):
    gt = np.full((32, 32, 3), 100, np.uint8)
    rec = gt + np.uint8(10)  # every value off by 10 levels
    rec_dir, gt_dir = write_folder(tmp_path / "rec", [rec]), write_folder(tmp_path / "gt", [gt])
    result = calculate_psnr_ssim_mse(rec_dir, gt_dir)
    assert result["mse"] == pytest.approx(100.0)
    assert result["psnr"] == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-4)
    assert calculate_piq_distortion(rec_dir, gt_dir)["mse"] == pytest.approx(100.0)


def test_identical_images_give_ssim_one(tmp_path):
    recs, _ = noisy_pairs(count=2)
    rec_dir, gt_dir = write_folder(tmp_path / "rec", recs), write_folder(tmp_path / "gt", recs)
    result = calculate_psnr_ssim_mse(rec_dir, gt_dir)
    assert result["mse"] == 0.0 and result["ssim"] == pytest.approx(1.0)


def test_ind_rmse_compares_with_the_mmse_restoration(tmp_path):
    recs, mmses = noisy_pairs(seed=3, spread=12)
    rec_dir, mmse_dir = write_folder(tmp_path / "rec", recs), write_folder(tmp_path / "mmse", mmses)
    result = calculate_ind_rmse(rec_dir, mmse_dir, batch_size=2)
    assert result["ind_mse"] == pytest.approx(
        np.mean([numpy_mse(r, m) for r, m in zip(recs, mmses)]), rel=1e-9
    )
    assert result["ind_psnr"] == pytest.approx(
        np.mean([numpy_psnr(r, m) for r, m in zip(recs, mmses)]), abs=1e-3
    )
