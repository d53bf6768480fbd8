"""Training-step time, images per second and peak memory of the blind-face PMRF configuration.

One step is what `train.py` does per batch: stratified times, the frozen SwinIR-L posterior mean (no
graph; bf16 under autocast), the HDiT velocity loss, backward, and an AdamW step over the HDiT's
weights (lr 5e-4, betas (0.9, 0.95), weight decay 1e-2), under bf16 autocast as `--precision
bf16-mixed`. Random weights and images. Per neighbourhood-attention backend, token order of the flex
levels (``--tilings``: auto, rows or a tiling of ``arch.attention.TILINGS``) and batch size, with the
HDiT compiled (what `train.py` does on GPU) and eager (`train.py --no_compile`). Peak memory is the
whole process's CUDA peak (weights, AdamW state, activations). Every figure is printed with the card
and the torch version.

    python benchmarks/train.py                        # CPU: 64 px, batch 2, torch backend, eager
    python benchmarks/train.py --device cuda --output_json train.json   # 512 px, batch 16, compiled
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arch.attention import TILINGS
from benchmarks import (
    compile_options,
    describe_machine,
    device_argument,
    environment,
    format_table,
    measure,
    names_in,
    parse_ints,
    parse_names,
    release,
    run_case,
    save_json,
    set_threads,
    time_call,
)
from benchmarks.inference import BACKENDS, FLOW_ARCH, MMSE_ARCH, available_backends, card

COMPILE_MODES = ("eager", "compile")
FULL = {"image_size": 512, "batches": "16", "compile": "compile"}
CPU = {"image_size": 64, "batches": "2", "compile": "eager"}


def train_case(spec: dict) -> dict:
    from arch.attention import TILING_ENV_VAR, last_backend, low_precision_backward, resolve_tiling
    from lightning_models.flow import sample_times
    from lightning_models.mmse_rectified_flow import MMSERectifiedFlow
    from lightning_models.restorer import set_up_networks
    from utils.precision import autocast, configure_torch

    warnings.filterwarnings("ignore")
    set_threads(spec.get("threads"))
    device = torch.device(spec["device"])
    os.environ[TILING_ENV_VAR] = spec["tiling"]  # each case runs alone (a child process, or reset below)
    configure_torch()  # what train.py sets: TF32 matmuls
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    with device:
        model = MMSERectifiedFlow(stage="flow", arch=FLOW_ARCH, mmse_model_arch=MMSE_ARCH, mmse_noise_std=0.1,
                                  ema_decay=-1, weight_decay=1e-2)
    model = model.to(device).train()
    set_up_networks(model, spec["backend"], spec["compile"], compile_options=compile_options())
    optimizer = model.configure_optimizers()
    batch, size = spec["batch"], spec["image_size"]
    x = torch.rand(batch, 3, size, size, device=device)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    bf16 = autocast("bf16-mixed", device)  # train.py --precision bf16-mixed (on CUDA; float32 on CPU)

    def step():
        t = sample_times(batch, "stratified_uniform", device=device)
        with bf16:
            loss = model.pmrf.loss(x, y, t)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with bf16:  # the order a flex level takes in this training step
        tiling = resolve_tiling(None, low_precision_backward(device))
    result = {"first_step_s": time_call(step, device)}
    result["order"] = tiling.name if tiling and last_backend() == "flex" else "rows"
    timed = measure(step, device, spec["warmup"], spec["repeats"])
    result.update(median_s=timed["median_s"], img_per_s=batch / timed["median_s"], ran=last_backend())
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    release(device)
    return result


def run_all(args, device: torch.device, isolate: bool) -> list[dict]:
    rows, start = [], time.perf_counter()
    for compiled in args.compile:
        for backend, tiling in ((b, t) for b in args.backends for t in (args.tilings if b == "flex" else ["auto"])):
            for batch in args.batches:
                row = {"backend": backend, "tiling": tiling, "compile": compiled, "batch": batch,
                       "image": f"{args.image_size}²", "card": card(device), "torch": torch.__version__}
                if args.time_budget_s and time.perf_counter() - start > args.time_budget_s:
                    row["note"] = "skipped (time budget)"
                else:
                    spec = {"device": str(device), "backend": backend, "compile": compiled == "compile",
                            "batch": batch, "image_size": args.image_size, "warmup": args.warmup,
                            "repeats": args.repeats, "threads": args.threads, "tiling": tiling}
                    result = run_case(train_case, spec, isolate)
                    row.update(result)
                    row["note"] = result.get("status", "ok")
                print(f"  {backend} ({tiling}) {compiled} batch {batch} ({row['card']}, torch {row['torch']}): " + (
                    f"{row['median_s'] * 1e3:.0f} ms/step, {row['img_per_s']:.1f} img/s, peak "
                    f"{row.get('peak_gib', float('nan')):.1f} GiB (first step {row['first_step_s']:.1f} s, "
                    f"tokens in {row['order']})"
                    if row["note"] == "ok" else row["note"]), flush=True)
                rows.append(row)
                if args.output_json:
                    save_json(args.output_json, {"benchmark": "train", "partial": True, "cases": rows}, quiet=True)
    return rows


COLUMNS = [
    ("backend", "backend"),
    ("ran", "ran"),
    ("tiling", "asked"),
    ("order", "tokens in"),
    ("compile", "compile"),
    ("batch", "batch/GPU"),
    ("image", "image"),
    ("median_s", "s/step"),
    ("img_per_s", "img/s"),
    ("peak_gib", "peak GiB"),
    ("first_step_s", "1st step s"),
    ("note", "note"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=device_argument, default="auto")
    parser.add_argument("--image_size", type=int, default=None)
    parser.add_argument("--batches", type=parse_ints, default=None,
                        help=f"per-GPU batch sizes (default CUDA {FULL['batches']})")
    parser.add_argument("--backends", type=names_in(BACKENDS), default=None,
                        help="default: every backend that can run here")
    parser.add_argument("--compile", type=names_in(COMPILE_MODES), default=None,
                        help="eager,compile (default CUDA compile, CPU eager)")
    parser.add_argument("--tilings", type=names_in(["auto", "rows", *TILINGS]), default="auto",
                        help="token orders of the flex levels: auto (what train.py does), rows, or tilings of "
                        "arch.attention.TILINGS, comma-separated (default auto)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default CUDA 5, CPU 1)")
    parser.add_argument("--time_budget_s", type=float, default=0, help="skip the remaining cases after this long")
    parser.add_argument("--in_process", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output_json", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = args.device
    defaults = FULL if device.type == "cuda" else CPU
    args.image_size = args.image_size or defaults["image_size"]
    args.batches = args.batches or parse_ints(defaults["batches"])
    args.backends = args.backends or available_backends(device)
    args.compile = args.compile or parse_names(defaults["compile"], COMPILE_MODES)
    args.repeats = args.repeats or (5 if device.type == "cuda" else 1)
    info = environment(device)
    print(f"PMRF blind-face training step ({FLOW_ARCH}, frozen {MMSE_ARCH}, bf16 autocast on CUDA, AdamW) on "
          f"{device} ({describe_machine(info)}), torch {info['torch']}")
    rows = run_all(args, device, device.type == "cpu" and not args.in_process)
    print(f"\nPMRF training step, {args.image_size}², bf16 autocast on CUDA, {describe_machine(info)}, torch {info['torch']}")
    print(format_table(rows, COLUMNS))
    settings = {key: value for key, value in vars(args).items() if key != "output_json"}  # no local paths
    payload = {"benchmark": "train", "environment": info, "settings": settings, "cases": rows}
    if args.output_json:
        save_json(args.output_json, payload)
    return payload


if __name__ == "__main__":
    main()
