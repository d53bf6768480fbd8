"""LPIPS (VGG) of the `lpips` package, as in the blind face restoration evaluation.

Inputs are RGB scaled to [-1, 1]; the result is the mean of the per-image values. The learned
linear heads ship with the `lpips` package (`lpips/weights/v0.1/vgg.pth`); the VGG16 trunk
(`vgg16-397923af.pth`, torchvision's ImageNet weights) is found by `utils.registry` (registry name
``vgg16``: the metrics folder or torch's hub cache, downloaded there unless offline). Both are read
by `utils.weights` and handed to an `lpips.LPIPS` built without weights, so neither the package nor
torchvision loads (or downloads) anything itself.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from evaluation.inputs import mean_over_pairs, paired_files
from utils.registry import find_weights
from utils.weights import WeightsReadError, load_into, load_state_dict, require_file, select_prefix


def vgg16_trunk_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The convolutional part (`features.*`) of a torchvision VGG16 checkpoint, keyed by layer index."""
    trunk = select_prefix(load_state_dict(path), "features.")
    if not trunk:
        raise WeightsReadError(f"{path}: no 'features.*' weights; expected torchvision's vgg16-397923af.pth")
    return trunk


def lpips_heads_path() -> Path:
    """The learned linear heads of LPIPS-VGG v0.1, as shipped inside the `lpips` package."""
    import lpips

    return require_file(Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth", "LPIPS-VGG head")


def build_lpips_vgg(
    vgg_weights_path: str | os.PathLike, heads_path: str | os.PathLike | None = None
) -> nn.Module:
    """`lpips.LPIPS(net='vgg')` with its VGG trunk from `vgg_weights_path` and the package's heads."""
    import lpips

    with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
    heads_path = heads_path or lpips_heads_path()
    heads = nn.ModuleDict({f"lin{index}": layer for index, layer in enumerate(model.lins)})
    load_into(heads, load_state_dict(heads_path), heads_path)
    trunk = vgg16_trunk_weights(vgg_weights_path)
    # lpips splits torchvision's `features` into slice1..slice5 but keeps each layer's index as its name.
    slices_state = {}
    for slice_name, block in model.net.named_children():
        for index in dict(block.named_children()):
            for param in ("weight", "bias"):
                if f"{index}.{param}" in trunk:
                    slices_state[f"{slice_name}.{index}.{param}"] = trunk[f"{index}.{param}"]
    load_into(model.net, slices_state, vgg_weights_path)
    return model.eval().requires_grad_(False)


def lpips_batch(model: torch.nn.Module, rec: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS of two uint8 batches (B, 3, H, W) -> (B,)."""
    to_signed = lambda images: images.float() / 127.5 - 1.0  # noqa: E731
    return model(to_signed(rec), to_signed(gt)).flatten()


@torch.inference_mode()
def calculate_lpips(
    rec_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    vgg_weights_path: str | os.PathLike | None = None,
    ckpt_dir: str | os.PathLike | None = None,
    offline: bool = False,
) -> float:
    """Mean LPIPS-VGG between same-named images of two folders."""
    pairs = paired_files(rec_dir, gt_dir, "--gt_path")
    if vgg_weights_path is None:
        vgg_weights_path = find_weights("vgg16", [ckpt_dir], offline)
    model = build_lpips_vgg(vgg_weights_path).to(device)
    per_batch = lambda rec, gt: {"lpips": lpips_batch(model, rec, gt)}  # noqa: E731
    loader = dict(device=device, batch_size=batch_size, num_workers=num_workers, desc="lpips")
    return mean_over_pairs(pairs, per_batch, **loader)["lpips"]
