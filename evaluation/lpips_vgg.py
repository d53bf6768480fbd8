"""LPIPS (VGG) of the `lpips` package, as in the blind face restoration evaluation.

Inputs are RGB scaled to [-1, 1]; the result is the mean of the per-image values. The learned
linear heads ship with the `lpips` package; the VGG16 trunk (`vgg16-397923af.pth`, torchvision's
ImageNet weights) is read from the metrics folder or torch's hub cache, never fetched silently.
"""

from __future__ import annotations

import os
import warnings

import torch

from evaluation.inputs import mean_over_pairs, paired_files
from evaluation.weights import VGG16_WEIGHTS, find_hub_weights, load_into, read_weights


def vgg16_trunk_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The convolutional part (`features.*`) of a torchvision VGG16 checkpoint, keyed by layer index."""
    state_dict = read_weights(path)
    trunk = {
        name[len("features.") :]: value for name, value in state_dict.items() if name.startswith("features.")
    }
    if not trunk:
        raise ValueError(f"{path}: no 'features.*' weights; expected torchvision's vgg16-397923af.pth")
    return trunk


def build_lpips_vgg(vgg_weights_path: str | os.PathLike) -> torch.nn.Module:
    """`lpips.LPIPS(net='vgg')` with its VGG trunk loaded from `vgg_weights_path`."""
    import lpips

    with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
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
        vgg_weights_path = find_hub_weights(VGG16_WEIGHTS, ckpt_dir, offline)
    model = build_lpips_vgg(vgg_weights_path).to(device)
    per_batch = lambda rec, gt: {"lpips": lpips_batch(model, rec, gt)}  # noqa: E731
    loader = dict(device=device, batch_size=batch_size, num_workers=num_workers, desc="lpips")
    return mean_over_pairs(pairs, per_batch, **loader)["lpips"]
