"""Restore a folder of clean test images degraded on the fly and save every output (spec §6).

Writes <results_path>/<degradation>/<method>/{y, xhat | num_flow_steps=K/xhat, ...}; see README.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from data import ImageFolderDataset, make_transform
from degradations import DEGRADATION_NAMES, create_degradation
from lightning_models.restoration import load_model
from utils.cli import arch_argument, configure_torch, existing_folder, fail, resolve_devices


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--precision", choices=["bf16-mixed", "32", "16-mixed"], default="32")
    p.add_argument("--degradation", choices=DEGRADATION_NAMES, required=True)
    p.add_argument("--test_data_root", type=existing_folder, required=True, help="clean images")
    p.add_argument("--num_gpus", type=int, default=1)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_workers", type=int, default=4)
    p.add_argument("--ckpt_path", required=True, help="Lightning .ckpt, saved folder, or Hub id (with the flag)")
    p.add_argument("--ckpt_path_is_huggingface", action="store_true")
    p.add_argument("--mmse_model_arch", type=arch_argument, default=None,
                   help="only needed when the checkpoint does not record it")
    p.add_argument("--results_path", required=True)
    p.add_argument("--img_size", type=int, default=256)
    p.add_argument("--num_flow_steps", type=int, nargs="+", default=[50])
    p.add_argument("--seed", type=int, default=None, help="makes degradations and source noise reproducible")
    p.add_argument("--use_raw_weights", action="store_true", help="evaluate without the EMA weights")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_torch()
    if args.seed is not None:
        L.seed_everything(args.seed, workers=True)
    overrides = {"mmse_model_arch": args.mmse_model_arch} if args.mmse_model_arch else {}
    try:
        model = load_model(args.ckpt_path, args.ckpt_path_is_huggingface, "cpu", use_ema=False, **overrides)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        fail(str(error))
    model.use_ema = not args.use_raw_weights
    model.test_results_dir = str(Path(args.results_path) / args.degradation)
    model.test_num_flow_steps = list(args.num_flow_steps)
    try:
        dataset = ImageFolderDataset(args.test_data_root, create_degradation(args.degradation), make_transform(args.img_size))
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)
    accelerator, devices = resolve_devices(args.accelerator, None, args.num_gpus)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, precision=args.precision, logger=False)
    trainer.test(model, loader)
    print(f"results: {Path(model.test_results_dir) / model.method_name}")


if __name__ == "__main__":
    main()
