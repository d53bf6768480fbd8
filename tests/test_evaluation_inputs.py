"""Folder handling of the evaluation suite: name matching, sizes, odd image formats."""

import numpy as np
import pytest
import torch
from helpers import bomb_png
from PIL import Image

from evaluation.distortion import calculate_psnr_ssim_mse
from evaluation.inputs import ImageListDataset, check_sizes, image_files, paired_files

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


def rgb(seed, shape=(24, 24, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_file_names_must_match_and_the_error_lists_differences(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        save(tmp_path / "rec" / name, rgb(0))
    for name in ("a.png", "b.png", "x.png"):
        save(tmp_path / "gt" / name, rgb(0))
    with pytest.raises(ValueError) as error:
        paired_files(tmp_path / "rec", tmp_path / "gt", "--gt_path")
    assert "c.png" in str(error.value) and "x.png" in str(error.value) and "--gt_path" in str(error.value)


def test_pairs_of_different_sizes_are_an_error_naming_them(tmp_path):
    save(tmp_path / "rec" / "a.png", rgb(0, (24, 24, 3)))
    save(tmp_path / "gt" / "a.png", rgb(0, (24, 32, 3)))
    with pytest.raises(ValueError, match=r"a\.png is 24x24.*a\.png is 32x24"):
        paired_files(tmp_path / "rec", tmp_path / "gt")


def test_mixed_sizes_within_a_folder_are_processed_one_by_one(tmp_path):
    for name, shape in (("a.png", (24, 24, 3)), ("b.png", (16, 20, 3))):
        save(tmp_path / "rec" / name, rgb(1, shape))
        save(tmp_path / "gt" / name, rgb(2, shape))
    assert not check_sizes(image_files(tmp_path / "rec"))
    result = calculate_psnr_ssim_mse(tmp_path / "rec", tmp_path / "gt", batch_size=8)
    assert np.isfinite(result["psnr"])


def test_gray_rgba_and_16_bit_images_become_rgb_and_other_files_are_ignored(tmp_path):
    gray = rgb(3, (8, 8, 3))[:, :, 0]
    save(tmp_path / "a_gray.png", gray)
    rgba = np.dstack([rgb(4, (8, 8, 3)), np.full((8, 8), 7, np.uint8)])
    save(tmp_path / "b_rgba.png", rgba)
    Image.fromarray((gray.astype(np.uint16) * 257), "I;16").save(tmp_path / "c_16bit.png")
    (tmp_path / "notes.txt").write_text("not an image")
    files = image_files(tmp_path)
    assert [path.name for path in files] == ["a_gray.png", "b_rgba.png", "c_16bit.png"]
    dataset = ImageListDataset(files)
    gray_tensor, rgba_tensor, deep_tensor = (dataset[i] for i in range(3))
    assert gray_tensor.dtype == torch.uint8 and gray_tensor.shape == (3, 8, 8)
    assert torch.equal(gray_tensor[0], torch.from_numpy(gray)) and torch.equal(gray_tensor[0], gray_tensor[2])
    assert torch.equal(rgba_tensor, torch.from_numpy(rgba[:, :, :3]).permute(2, 0, 1))
    assert torch.equal(deep_tensor, gray_tensor)  # 16-bit v*257 maps back to v


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "rec").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        image_files(tmp_path / "rec", "--rec_path")


def test_unreadable_files_are_left_out_of_the_pairs_and_listed(tmp_path, capsys):
    from evaluation.inputs import forget_unreadable, unreadable_images

    forget_unreadable()
    a_rec, a_gt = rgb(5), rgb(6)
    save(tmp_path / "rec" / "a.png", a_rec)
    save(tmp_path / "gt" / "a.png", a_gt)
    bomb_png(tmp_path / "rec" / "b.png")  # header too large: left out before any size check
    save(tmp_path / "gt" / "b.png", rgb(7))
    save(tmp_path / "rec" / "c.png", rgb(8))
    save(tmp_path / "gt" / "c.png", rgb(9))
    whole = (tmp_path / "gt" / "c.png").read_bytes()
    (tmp_path / "gt" / "c.png").write_bytes(whole[: len(whole) // 2])  # header fine, pixels cut off
    pairs = paired_files(tmp_path / "rec", tmp_path / "gt")
    assert [path.name for path in pairs.rec] == ["a.png", "c.png"] and pairs.same_size
    result = calculate_psnr_ssim_mse(tmp_path / "rec", tmp_path / "gt", batch_size=8)
    expected = np.mean((a_rec.astype(float) - a_gt) ** 2)
    assert result["mse"] == pytest.approx(expected)  # the mean over the one readable pair
    assert sorted(unreadable_images()) == [str(tmp_path / "gt" / "c.png"), str(tmp_path / "rec" / "b.png")]
    err = capsys.readouterr().err
    assert err.count("image skipped:") == 2 and "decompression bomb" in err
    # names are still checked first, unreadable files included
    (tmp_path / "gt" / "b.png").rename(tmp_path / "gt" / "x.png")
    with pytest.raises(ValueError, match=r"b\.png.*x\.png"):
        paired_files(tmp_path / "rec", tmp_path / "gt")
    forget_unreadable()
