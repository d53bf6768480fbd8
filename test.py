"""Restore a folder of clean test images degraded on the fly, and save every output.

Writes <results_path>/<degradation>/<method>/: y/, and for flows num_flow_steps=<K>/xhat/ for every K,
source_distribution_samples/ (drawn for the first K) and mmse_samples/ (when the model has a
posterior-mean network); for the mmse stage, xhat/. File names are the inputs'. With --fidelity_weight w > 0
the xhat/ images are (1 - w)·PMRF + w·posterior mean, under <method>_fidelity_weight=<w>/.
The model writes them itself (MMSERectifiedFlow.test_step, as in the reference); this program
says where, with which K and which weights (raw by default, as the reference's; --use_ema for the EMA).
Example: scripts/test/test.sh (all five methods of one controlled experiment).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from data import ImageFolderDataset, make_transform, scan_images
from degradations import DEGRADATION_NAMES, create_degradation
from lightning_models.restoration import load_model, prepare_for_inference
from utils.auto_compile import add_compile_argument, describe, image_steps, should_compile
from utils.cli import (
    accelerator_on_gpu,
    add_checkpoint_arguments,
    add_fidelity_weight_argument,
    arch_argument,
    check_writable_folder,
    existing_folder,
    fail,
    int_range,
    non_negative_int,
    positive_int,
    resolve_devices,
    seed_int,
)
from utils.images import WriteError
from utils.precision import PRECISIONS, configure_torch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", choices=PRECISIONS, default="32")
    p.add_argument("--degradation", choices=DEGRADATION_NAMES, required=True)
    p.add_argument("--test_data_root", type=existing_folder, required=True, help="clean images")
    p.add_argument("--num_gpus", type=positive_int, default=4, help="GPUs per node (default 4, as the reference)")
    p.add_argument("--num_nodes", type=positive_int, default=1, help="machines (multi-node DDP: torchrun or SLURM)")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--batch_size", type=positive_int, default=32, help="per device, as in the reference")
    p.add_argument("--num_workers", type=non_negative_int, default=10, help="data-loading workers of all a node's devices")
    add_checkpoint_arguments(p, required=True, raw_by_default=True)
    p.add_argument("--mmse_model_arch", type=arch_argument, default=None,
                   help="only needed when the checkpoint does not record it")
    p.add_argument("--results_path", required=True)
    p.add_argument("--img_size", type=positive_int, default=256)
    p.add_argument("--num_flow_steps", type=int_range(1, 10_000), nargs="+", required=True,
                   help="K, the Euler steps; several values test several K")
    add_fidelity_weight_argument(p)
    p.add_argument("--seed", type=seed_int, default=None, help="makes degradations and source noise reproducible")
    p.add_argument("--jpeg_quality", type=int_range(1, 100), default=75, help="for .jpg outputs (default 75)")
    p.add_argument("--skip_bad_images", action="store_true",
                   help="test without the unreadable or non-square images that the start-up scan lists")
    add_compile_argument(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_torch()
    if args.seed is not None:
        L.seed_everything(args.seed, workers=True, verbose=False)
    check_writable_folder(args.results_path, "--results_path")
    overrides = {"mmse_model_arch": args.mmse_model_arch} if args.mmse_model_arch else {}
    try:
        model = load_model(args.ckpt_path, args.ckpt_path_is_huggingface, "cpu", use_ema=False, keep_ema=True,
                           **overrides)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        fail(str(error))
    # What the reference's test.py sets: test_step writes the outputs itself.
    model.use_ema = args.use_ema
    model.num_test_flow_steps = list(args.num_flow_steps)
    try:
        model.pmrf.check_fidelity_weight(args.fidelity_weight)
    except ValueError as error:
        fail(f"--{error}")
    model.fidelity_weight = args.fidelity_weight
    method_folder = model.method_name + (f"_fidelity_weight={args.fidelity_weight:g}" if args.fidelity_weight else "")
    results = Path(args.results_path) / args.degradation / method_folder
    model.test_results_path = results
    model.test_jpeg_quality = args.jpeg_quality
    accelerator, devices = resolve_devices(args.accelerator, None, args.num_gpus)
    try:
        model.check_input_size(args.img_size, args.img_size)
    except ValueError as error:
        fail(f"--img_size {args.img_size}: {error}")
    try:
        dataset = ImageFolderDataset(args.test_data_root, create_degradation(args.degradation), make_transform(args.img_size))
        scan_images(dataset, args.img_size, args.skip_bad_images, "--test_data_root", args.num_workers // devices, "test")
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    processes = devices * args.num_nodes
    evaluations = 1 if model.stage == "mmse" else sum(args.num_flow_steps)
    job = image_steps(len(dataset) // processes, evaluations, args.img_size, args.img_size)
    compiled = should_compile(args.compile, "cuda" if accelerator_on_gpu(accelerator) else "cpu", job)
    if compiled:
        print(describe(args.compile, True, job) or "compiling the network", flush=True)
    prepare_for_inference(model, compile=compiled)  # in place: the first batch compiles
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                        num_workers=args.num_workers // devices, pin_memory=accelerator != "cpu")
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=args.num_nodes,
                        strategy="ddp" if processes > 1 else "auto", precision=args.precision, logger=False)
    try:
        trainer.test(model, loader, verbose=False)
    except WriteError as error:
        fail(str(error))
    print(f"results: {results}")


if __name__ == "__main__":
    main()
