"""Restore a folder of degraded images with a trained PMRF model (spec §6).

Aligned 512×512 faces (the official model):
    python inference.py --ckpt_path ohayonguy/PMRF_blind_face_image_restoration --ckpt_path_is_huggingface \
        --lq_data_path LQ --output_dir OUT
Ordinary photos (face detection, alignment and paste-back): add --whole_image.

Writes OUT/restored_images/ and, for models with a posterior-mean network, OUT/restored_images_posterior_mean/,
each file under its input's name.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from lightning_models.restoration import load_model, make_face_restorer, precision_context
from utils.cli import DEFAULT_CKPT, fail, resolve_device

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", default=DEFAULT_CKPT, help="Lightning .ckpt, saved folder, or Hub id (with the flag)")
    p.add_argument("--ckpt_path_is_huggingface", action="store_true")
    p.add_argument("--lq_data_path", required=True, help="folder of degraded images")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--num_flow_steps", type=int, default=25, help="K, the number of Euler steps")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--device", default=None, help="default: cuda if present, else mps, else cpu")
    p.add_argument("--seed", type=int, default=None, help="makes the source noise reproducible")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile the flow network (GPU; slow first batch)")
    p.add_argument("--use_raw_weights", action="store_true", help="ignore the EMA weights of a .ckpt")
    p.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1))
    try:
        from whole_image.cli import add_whole_image_arguments
    except ImportError:
        pass
    else:
        add_whole_image_arguments(p)
    return p


def size_groups(dataset, check_size: Callable[[int, int], None]) -> tuple[list[list[int]], list[tuple[str, str]]]:
    """Indices grouped by image size, and the (file, reason) of images whose size the model cannot take."""
    from PIL import Image

    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    rejected = []
    for index, path in enumerate(dataset.image_paths):
        with Image.open(path) as image:
            w, h = image.size
        try:
            check_size(h, w)
        except ValueError as error:
            rejected.append((path.name, f"{w}×{h}: {error}"))
            continue
        groups[(h, w)].append(index)
    return list(groups.values()), rejected


def batches(groups: list[list[int]], batch_size: int) -> list[list[int]]:
    return [group[i : i + batch_size] for group in groups for i in range(0, len(group), batch_size)]


def check_outputs_are_not_inputs(lq_dir: Path, out_dirs: list[Path]) -> None:
    for out in out_dirs:
        if out.resolve() == lq_dir.resolve():
            fail(f"output folder {out} is the input folder; choose another --output_dir")


def restore_folder(args, model) -> None:
    from data import ImageFolderDataset
    from utils.images import save_rgb, tensor_to_uint8

    lq_dir, out_dir = Path(args.lq_data_path), Path(args.output_dir)
    restored_dir = out_dir / "restored_images"
    mmse_dir = out_dir / "restored_images_posterior_mean"
    check_outputs_are_not_inputs(lq_dir, [restored_dir, mmse_dir])
    try:
        dataset = ImageFolderDataset(lq_dir, on_error="skip")
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    groups, rejected = size_groups(dataset, model.check_input_size)
    if len(groups) > 1:
        print(f"{len(groups)} different image sizes: each batch holds images of one size")
    loader = DataLoader(dataset, batch_sampler=batches(groups, args.batch_size), num_workers=args.num_workers)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
    written = 0
    for batch in tqdm(loader, desc="restoring", unit="batch"):
        with torch.no_grad(), precision_context(device, args.bf16):
            result = model.restore(batch["y"].to(device), args.num_flow_steps, generator=generator)
        for key, folder in (("xhat", restored_dir), ("mmse", mmse_dir)):
            if key in result:
                for name, image in zip(batch["img_file_name"], result[key]):
                    save_rgb(tensor_to_uint8(image), folder / name)
        written += len(batch["img_file_name"])
    print(f"restored {written} image(s) into {restored_dir}")
    report_skipped([(p.name, reason) for p, reason in dataset.skipped] + rejected)


def report_skipped(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        print(f"skipped {len(skipped)} file(s):", file=sys.stderr)
        for name, reason in skipped:
            print(f"  {name}: {reason}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not Path(args.lq_data_path).is_dir():
        fail(f"--lq_data_path {args.lq_data_path}: folder does not exist")
    try:
        device = resolve_device(args.device)
        model = load_model(args.ckpt_path, args.ckpt_path_is_huggingface, device, use_ema=not args.use_raw_weights)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        fail(str(error))
    if args.compile:
        model.model.compile()  # in place: keeps state-dict keys and the HDiT type
    if getattr(args, "whole_image", False):
        from whole_image.cli import run_whole_image

        run_whole_image(args, make_face_restorer(model, args.num_flow_steps, args.seed, args.bf16))
        return
    restore_folder(args, model)


if __name__ == "__main__":
    main()
