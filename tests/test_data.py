import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data import ImageFolderDataset, make_transform
from data.image_folder import ImageFolderDataset as ImageFolderDatasetFromModule
from degradations import create_degradation
from utils.images import ImageReadError

SIZE = 16


def random_rgb(seed, height=SIZE, width=SIZE):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def as_tensor(rgb):
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255


@pytest.fixture
def messy_folder(tmp_path):
    """Every kind of file a real folder holds; returns (folder, {name: expected RGB array or None})."""
    folder = tmp_path / "messy"
    folder.mkdir()
    rgb = random_rgb(0)
    gray = rgb[:, :, 0]
    expected = {}

    Image.fromarray(rgb).save(folder / "01_photo.jpg", quality=95)
    expected["01_photo.jpg"] = None  # lossy: only shape and levels are checked
    Image.fromarray(gray).save(folder / "02_gray.png")
    expected["02_gray.png"] = np.repeat(gray[:, :, None], 3, axis=2)
    alpha = np.full((SIZE, SIZE, 1), 128, np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(folder / "03_rgba.png")
    expected["03_rgba.png"] = rgb
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(folder / "04_palette.png")
    expected["04_palette.png"] = np.asarray(palette.convert("RGB"))
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "05_16bit.png")
    expected["05_16bit.png"] = np.repeat(gray[:, :, None], 3, axis=2)
    Image.fromarray(rgb).save(folder / "06_lossless.webp", lossless=True)
    expected["06_lossless.webp"] = rgb
    Image.fromarray(rgb).save(folder / "07.bmp")
    expected["07.bmp"] = rgb
    Image.fromarray(rgb).save(folder / "08.tif")
    expected["08.tif"] = rgb
    Image.fromarray(rgb).save(folder / "09_upper.PNG", format="PNG")
    expected["09_upper.PNG"] = rgb

    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    (folder / "Thumbs.db").write_bytes(bytes(64))
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    Image.fromarray(rgb).save(folder / "sub" / "nested.png")
    (folder / "dir_named_like.png").mkdir()
    return folder, expected


def write_named_images(folder, names, seed=0, height=SIZE, width=SIZE):
    """Images named `names`, each `random_rgb(seed + i)` (helpers.write_images writes smooth numbered ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(random_rgb(seed + i, height, width)).save(folder / name)
    return folder


def truncated_png_bytes():
    buffer = io.BytesIO()
    Image.fromarray(random_rgb(7, 64, 64)).save(buffer, format="PNG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


def test_both_import_paths():
    assert ImageFolderDataset is ImageFolderDatasetFromModule


def test_messy_folder_gives_sorted_8bit_rgb(messy_folder):
    folder, expected = messy_folder
    dataset = ImageFolderDataset(folder, degradation=None)
    assert dataset.img_file_names == sorted(expected)
    assert len(dataset) == len(expected)
    for index, name in enumerate(sorted(expected)):
        item = dataset[index]
        assert item["img_file_name"] == name
        x = item["x"]
        assert x.dtype == torch.float32 and x.shape == (3, SIZE, SIZE)
        assert 0 <= x.min() and x.max() <= 1
        torch.testing.assert_close(x * 255, (x * 255).round(), atol=1e-4, rtol=0)
        if expected[name] is not None:
            torch.testing.assert_close(x, as_tensor(expected[name]), msg=name)
        assert torch.equal(item["y"], x)  # identity degradation


def test_transform_resizes_shorter_side_like_pil(tmp_path):
    folder = write_named_images(tmp_path / "wide", ["a.png"], height=16, width=32)
    item = ImageFolderDataset(folder, transform=make_transform(8))[0]
    assert item["x"].shape == (3, 8, 16)
    pil = Image.fromarray(random_rgb(0, 16, 32)).resize((16, 8), Image.BILINEAR)
    torch.testing.assert_close(item["x"], as_tensor(np.asarray(pil)))
    assert ImageFolderDataset(folder, transform=make_transform(None))[0]["x"].shape == (3, 16, 32)
    with pytest.raises(ValueError, match="img_size"):
        make_transform(0)


def test_degradation_and_x_override(tmp_path):
    folder = write_named_images(tmp_path / "imgs", ["a.png"])
    x = as_tensor(random_rgb(0))

    def half_and_flip(image):
        return image * 0.5, image.flip(-1)

    item = ImageFolderDataset(folder, degradation=half_and_flip)[0]
    torch.testing.assert_close(item["y"], x * 0.5)
    torch.testing.assert_close(item["x"], x.flip(-1))

    item = ImageFolderDataset(folder, degradation=create_degradation("colorization_gaussian_noise_025"))[0]
    assert item["y"].shape == (1, SIZE, SIZE)
    torch.testing.assert_close(item["x"], x)


def test_unreadable_image_raises_naming_the_file(tmp_path):
    folder = write_named_images(tmp_path / "imgs", ["a.png", "c.png"])
    (folder / "b.png").write_bytes(truncated_png_bytes())
    dataset = ImageFolderDataset(folder)
    assert len(dataset) == 3
    dataset[0]
    with pytest.raises(ImageReadError, match="b.png"):
        dataset[1]


def test_unreadable_images_are_skipped_and_listed(tmp_path):
    folder = write_named_images(tmp_path / "imgs", ["a.png", "d.png"])
    (folder / "b.png").write_bytes(truncated_png_bytes())
    (folder / "c.jpg").write_bytes(b"definitely not a jpeg" * 10)
    with pytest.warns(UserWarning, match="skipped 2"):
        dataset = ImageFolderDataset(folder, on_error="skip")
    assert dataset.img_file_names == ["a.png", "d.png"]
    assert [path.name for path, _ in dataset.skipped] == ["b.png", "c.jpg"]
    assert all(path.name in reason for path, reason in dataset.skipped)
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch["img_file_name"] == ["a.png", "d.png"]


def test_all_unreadable_is_a_clear_error(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "b.png").write_bytes(truncated_png_bytes())
    with pytest.raises(ValueError, match="none of the 1 image files"), pytest.warns(UserWarning):
        ImageFolderDataset(folder, on_error="skip")


def test_empty_folder_is_a_clear_error(tmp_path):
    folder = tmp_path / "empty"
    (folder / "sub").mkdir(parents=True)
    (folder / ".DS_Store").write_bytes(bytes(8))
    (folder / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"empty: no images found"):
        ImageFolderDataset(folder)
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="on_error"):
        ImageFolderDataset(folder, on_error="ignore")


def test_source_samples(tmp_path):
    names = ["00001.png", "00002.png", "00003.png"]
    images = write_named_images(tmp_path / "images", names, seed=0)
    sources = write_named_images(tmp_path / "sources", names, seed=10)
    (sources / "Thumbs.db").write_bytes(bytes(8))
    dataset = ImageFolderDataset(images, source_samples_root=sources, transform=make_transform(8))
    item = dataset[1]
    assert item["img_file_name"] == "00002.png"
    assert item["non_noisy_z0"].shape == (3, 8, 8)  # the transform applies to sources too
    assert torch.equal(item["non_noisy_z0"], make_transform(8)(Image.fromarray(random_rgb(11))))
    assert "non_noisy_z0" not in ImageFolderDataset(images)[0]


def test_source_samples_name_mismatch(tmp_path):
    images = write_named_images(tmp_path / "images", ["a.png", "b.png", "c.png"])
    sources = write_named_images(tmp_path / "sources", ["a.png", "c.png", "x.png"])
    with pytest.raises(ValueError, match=r"missing \['b.png'\], unexpected \['x.png'\]"):
        ImageFolderDataset(images, source_samples_root=sources)


def test_skip_keeps_sources_aligned(tmp_path):
    names = ["a.png", "b.png", "c.png"]
    images = write_named_images(tmp_path / "images", names)
    sources = write_named_images(tmp_path / "sources", names, seed=10)
    (images / "b.png").write_bytes(truncated_png_bytes())
    with pytest.warns(UserWarning):
        dataset = ImageFolderDataset(images, source_samples_root=sources, on_error="skip")
    assert dataset.img_file_names == ["a.png", "c.png"]
    torch.testing.assert_close(dataset[1]["non_noisy_z0"], as_tensor(random_rgb(12)))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_batches(tmp_path, num_workers):
    names = [f"{i:05d}.png" for i in range(6)]
    images = write_named_images(tmp_path / "images", names)
    sources = write_named_images(tmp_path / "sources", names, seed=10)
    dataset = ImageFolderDataset(
        images,
        degradation=create_degradation("gaussian_noise_035"),
        transform=make_transform(SIZE),
        source_samples_root=sources,
    )
    loader = DataLoader(dataset, batch_size=4, num_workers=num_workers)
    batches = list(loader)
    assert [len(batch["img_file_name"]) for batch in batches] == [4, 2]
    first = batches[0]
    assert first["x"].shape == first["y"].shape == first["non_noisy_z0"].shape == (4, 3, SIZE, SIZE)
    assert first["img_file_name"] == names[:4]
    assert not torch.equal(first["x"], first["y"])
