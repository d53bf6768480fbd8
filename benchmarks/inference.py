"""Images per second and peak memory of blind-face PMRF inference (HDiT flow + SwinIR-L posterior mean).

One call is ``MMSERectifiedFlow.restore(y, num_flow_steps=K)``: the MMSE network once, then K Euler
steps of the HDiT. Random weights (speed does not depend on them). Modes:

* ``eager``   – fp32, the reference's way;
* ``bf16``    – fp32 weights under ``torch.autocast(bfloat16)`` (CPU only when listed in --modes);
* ``compile`` – the HDiT (and with --compile_mmse the SwinIR) compiled in place with ``Module.compile()``;
  the first call, which compiles, is timed on its own.

"+MMSE s" is one extra SwinIR forward: the reference runs the MMSE network twice per batch (once inside
the flow, once to save it), so "ref img/s" = batch / (restore + one extra MMSE forward).

    python benchmarks/inference.py                       # CPU here: 128 px, K=2, batch 1,2,4, eager
    python benchmarks/inference.py --device cuda --output_json inference.json   # 512 px, K=25, batch 1..64
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (
    describe_error,
    describe_machine,
    environment,
    format_table,
    measure,
    parse_ints,
    parse_names,
    resolve_device,
    run_case,
    save_json,
    set_threads,
    time_call,
)

FLOW_ARCH = "hdit_ImageNet256Sp4"
MMSE_ARCH = "swinir_L"
MODES = ("eager", "bf16", "compile")
FULL = {
    "image_size": 512,
    "num_flow_steps": 25,
    "batch_sizes": "1,2,4,8,16,32,64",
    "modes": "eager,bf16,compile",
}
CPU = {"image_size": 128, "num_flow_steps": 2, "batch_sizes": "1,2,4", "modes": "eager"}


def build_model(device: torch.device):
    from lightning_models.mmse_rectified_flow import MMSERectifiedFlow

    torch.manual_seed(0)
    with device:  # initialise the weights where they will run (much faster than on CPU for a GPU)
        model = MMSERectifiedFlow(
            stage="flow", arch=FLOW_ARCH, mmse_model_arch=MMSE_ARCH, mmse_noise_std=0.1, ema_decay=-1
        ).eval()
    with torch.no_grad():  # HDiT's output projections start at zero; make its work non-trivial
        for parameter in model.model.parameters():
            parameter.add_(torch.randn_like(parameter), alpha=1e-3)
    return model.requires_grad_(False).to(device)


def precision(device: torch.device, mode: str):
    if mode == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inference_case(spec: dict) -> dict:
    """Time restore() and one extra MMSE forward for one (mode, batch size)."""
    warnings.filterwarnings("ignore")
    set_threads(spec.get("threads"))
    device, mode, batch = torch.device(spec["device"]), spec["mode"], spec["batch"]
    model = build_model(device)
    y = torch.rand(batch, 3, spec["image_size"], spec["image_size"], device=device)
    steps = spec["num_flow_steps"]

    def restore():
        with torch.no_grad(), precision(device, mode):
            model.restore(y, num_flow_steps=steps)

    def extra_mmse():
        with torch.no_grad(), precision(device, mode):
            model.posterior_mean(y)

    result: dict = {}
    warmup = spec["warmup"]
    if mode == "compile":
        torch._dynamo.reset()
        # In place: the modules keep their class and state-dict keys.
        model.model.compile()
        if spec["compile_mmse"]:
            model.mmse_model.compile()
        try:
            result["compile_s"] = time_call(restore, device)
        except Exception as error:  # noqa: BLE001 (report the compiler's failure and go on)
            return {"status": f"compile: failed ({describe_error(error).removeprefix('error: ')})"}
        warmup = max(warmup - 1, 0)
    timed = measure(restore, device, warmup, spec["repeats"])
    result.update(timed)
    result["img_per_s"] = batch / timed["median_s"]
    mmse = measure(extra_mmse, device, 1, spec["repeats"])
    result["mmse_s"] = mmse["median_s"]
    result["ref_img_per_s"] = batch / (timed["median_s"] + mmse["median_s"])
    return result


def run_all(args, device: torch.device, isolate: bool) -> list[dict]:
    rows = []
    for mode in args.modes:
        failed_batch = None  # once a batch size fails (OOM, compiler), larger ones of that mode would too
        for batch in args.batch_sizes:
            row = {"mode": mode, "batch": batch, "image": f"{args.image_size}²", "steps": args.num_flow_steps}
            if failed_batch is not None:
                row["note"] = f"skipped (batch {failed_batch} failed)"
            else:
                spec = {
                    "device": str(device),
                    "mode": mode,
                    "batch": batch,
                    "image_size": args.image_size,
                    "num_flow_steps": args.num_flow_steps,
                    "warmup": args.warmup,
                    "repeats": args.repeats,
                    "compile_mmse": args.compile_mmse,
                    "threads": args.threads,
                }
                result = run_case(inference_case, spec, isolate)
                row.update(result)
                row["note"] = result.get("status", "ok")
                failed_batch = None if row["note"] == "ok" else batch
            progress(row)
            rows.append(row)
    return rows


def progress(row: dict) -> None:
    label = f"{row['mode']} batch {row['batch']}"
    if row["note"] != "ok":
        print(f"  {label}: {row['note']}", flush=True)
        return
    peak = row.get("peak_mib")
    memory = "" if peak is None else f", peak {peak:.0f} MiB"
    compiled = f" (first call {row['compile_s']:.1f} s)" if "compile_s" in row else ""
    print(f"  {label}: {row['median_s']:.3g} s, {row['img_per_s']:.3g} img/s{memory}{compiled}", flush=True)


COLUMNS = [
    ("mode", "mode"),
    ("batch", "batch"),
    ("image", "image"),
    ("steps", "K"),
    ("median_s", "restore s"),
    ("img_per_s", "img/s"),
    ("peak_mib", "peak MiB"),
    ("mmse_s", "+MMSE s"),
    ("ref_img_per_s", "ref img/s"),
    ("compile_s", "1st call s"),
    ("note", "note"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument(
        "--batch_sizes",
        type=parse_ints,
        default=None,
        help=f"default CUDA {FULL['batch_sizes']}, CPU {CPU['batch_sizes']}",
    )
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help=f"default CUDA {FULL['image_size']}, CPU {CPU['image_size']} (multiple of 16)",
    )
    parser.add_argument(
        "--num_flow_steps",
        type=int,
        default=None,
        help=f"K; default CUDA {FULL['num_flow_steps']}, CPU {CPU['num_flow_steps']}",
    )
    parser.add_argument(
        "--modes",
        default=None,
        help=f"subset of {','.join(MODES)}; default CUDA all three, "
        f"CPU {CPU['modes']} (CPU bf16 and compile only when listed)",
    )
    parser.add_argument("--compile_mmse", action="store_true", help="in compile mode, compile SwinIR too")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default CPU 2, CUDA 3)")
    parser.add_argument(
        "--in_process",
        action="store_true",
        help="on CPU, run cases in this process (faster start; peak memory approximate)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--output_json", default=None, help="also save the table here")
    return parser.parse_args(argv)


def fill_device_defaults(args, device: torch.device) -> list[str]:
    """Fill unset options for the device; returns what was reduced from the full-size benchmark."""
    defaults = FULL if device.type == "cuda" else CPU
    if args.batch_sizes is None:
        args.batch_sizes = parse_ints(defaults["batch_sizes"])
    if args.image_size is None:
        args.image_size = defaults["image_size"]
    if args.num_flow_steps is None:
        args.num_flow_steps = defaults["num_flow_steps"]
    args.modes = parse_names(args.modes or defaults["modes"], MODES)
    if args.warmup is None:
        args.warmup = 1
    if args.repeats is None:
        args.repeats = 3 if device.type == "cuda" else 2
    if args.image_size % 16 or args.image_size < 64:
        raise SystemExit(f"--image_size must be a multiple of 16 and at least 64, got {args.image_size}")
    if args.num_flow_steps < 1:
        raise SystemExit(f"--num_flow_steps must be at least 1, got {args.num_flow_steps}")
    full_batches = parse_ints(FULL["batch_sizes"])
    reduced = []
    if args.image_size != FULL["image_size"]:
        reduced.append(f"image {args.image_size}² instead of {FULL['image_size']}²")
    if args.num_flow_steps != FULL["num_flow_steps"]:
        reduced.append(f"K={args.num_flow_steps} instead of {FULL['num_flow_steps']}")
    if args.batch_sizes != full_batches:
        reduced.append(f"batch sizes {args.batch_sizes} instead of {full_batches}")
    if set(args.modes) != set(MODES):
        reduced.append(f"modes {args.modes} only")
    return reduced


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    set_threads(args.threads)
    reduced = fill_device_defaults(args, device)
    isolate = device.type == "cpu" and not args.in_process
    info = environment(device)
    if not isolate and device.type == "cpu":
        info["memory_method"] = info["memory_method"].replace(
            "each case in a fresh spawned child process",
            "all cases in this process (--in_process: approximate)",
        )
    where = describe_machine(info)
    print(
        f"PMRF blind-face inference ({FLOW_ARCH} + {MMSE_ARCH}) on {device} ({where}), torch {info['torch']}"
    )
    print(f"warm-up {args.warmup}, median of {args.repeats}; random weights")
    print(f"peak memory: {info['memory_method']}")
    if reduced:
        print(
            "reduced from the full benchmark (512², K=25, batch 1..64, eager/bf16/compile): "
            + "; ".join(reduced)
        )
    rows = run_all(args, device, isolate)
    print(f"\nPMRF restore(), {args.image_size}², K={args.num_flow_steps}, {device}")
    print(format_table(rows, COLUMNS))
    settings = {key: value for key, value in vars(args).items() if key != "output_json"}
    payload = {
        "benchmark": "inference",
        "environment": info,
        "settings": settings,
        "reduced": reduced,
        "cases": rows,
    }
    if args.output_json:
        save_json(args.output_json, payload)
    return payload


if __name__ == "__main__":
    main()
