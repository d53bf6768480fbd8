"""Images per second and peak memory of blind-face PMRF inference (HDiT flow + SwinIR-L posterior mean).

One call restores a batch: the posterior-mean network once, then K Euler steps of the HDiT
(`Restorer.sample`, what every program restores with). Random weights: speed does not depend on them. The modes, all in one run on the
same device:

* ``reference``        – the reference's way: TF32 matmuls (it sets float32_matmul_precision('high')),
                         eager fp32 except the small functions k-diffusion's ``compile_wrap`` compiles
                         (linear_geglu, rms_norm, scale_for_cosine_sim, apply_rotary_emb) and nothing
                         else, the posterior-mean network run twice per batch (once for the flow, once
                         to save it), neighbourhood attention in the reference's row-major token order;
* ``reference-eager``  – the same fully eager (what this benchmark called the reference's way before);
* ``default``          – what `inference.py` does with no flags on a job of ``--job_images`` images: TF32,
                         ``--compile auto`` (compiled on CUDA for such a job), automatic kernel, MMSE once;
* ``default-eager``    – `inference.py --compile off`;
* ``fp32`` / ``tf32`` / ``bf16`` – strict float32 / TF32 / bfloat16 autocast (`--bf16`), eager, per backend;
* ``bf16+compile``     – bf16 and the whole HDiT compiled, attention included (`--bf16 --compile`), per backend;
* ``cudagraphs``       – ``default`` compiled with mode="reduce-overhead" (CUDA graphs);
* ``bf16+cudagraphs``  – ``bf16+compile`` with mode="reduce-overhead";
* ``bf16+max-autotune`` – ``bf16+compile`` with mode="max-autotune" (a long compile).

A mode may carry a batch size, ``default@64``. Every row prints its ratio to the reference's way, once
per restored batch after the first call (``× ref``), and once for a whole job of ``--job_images`` images
with the first call's time (compiling) included (``job img/s``, ``job × ref``). The first (untimed) call
uses K=1: it warms up the kernels and, for compiled modes, compiles ("1st call s"). With ``default`` and
``default-eager`` in one run the table is followed by the break-even job size of ``--compile auto``
(utils/auto_compile.py) measured here. ``--memory_batch 64`` adds the peak memory of the default
command's batch of 64 (measured with K=1: memory does not grow with K). Every figure is printed with
the card and the torch version.

    python benchmarks/inference.py                     # CPU: 128 px, K=2, batch 2, torch backend
    python benchmarks/inference.py --device cuda --output_json inference.json   # 512 px, K=25, batch 16
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (
    compile_options,
    describe_machine,
    device_argument,
    environment,
    format_table,
    measure,
    names_in,
    release,
    run_case,
    save_json,
    set_threads,
    time_call,
)

FLOW_ARCH = "hdit_ImageNet256Sp4"
MMSE_ARCH = "swinir_L"


@dataclass(frozen=True)
class Mode:
    matmul: str  # torch.set_float32_matmul_precision: 'highest' (strict fp32) or 'high' (TF32)
    bf16: bool = False
    compile: bool | str = False  # True, a torch.compile mode, or "auto" (inference.py's rule for the job)
    mmse_twice: bool = False
    per_backend: bool = True
    reference_kernels: bool = False  # k-diffusion's compile_wrap functions compiled, nothing else


MODES = {
    "reference": Mode("high", mmse_twice=True, per_backend=False, reference_kernels=True),
    "reference-eager": Mode("high", mmse_twice=True, per_backend=False),
    "default": Mode("high", compile="auto", per_backend=False),
    "default-eager": Mode("high", per_backend=False),
    "fp32": Mode("highest"),
    "tf32": Mode("high"),
    "bf16": Mode("high", bf16=True),
    "bf16+compile": Mode("high", bf16=True, compile=True),
    "cudagraphs": Mode("high", compile="reduce-overhead", per_backend=False),
    "bf16+cudagraphs": Mode("high", bf16=True, compile="reduce-overhead"),
    "bf16+max-autotune": Mode("high", bf16=True, compile="max-autotune"),
}
BACKENDS = ("torch", "flex", "natten")
FULL = {"image_size": 512, "num_flow_steps": 25, "batch": 16}
CUDA_MODES = "reference,reference-eager,default,default-eager,fp32,tf32,bf16,bf16+compile,cudagraphs,bf16+cudagraphs"
CPU = {"image_size": 128, "num_flow_steps": 2, "batch": 2, "modes": "reference,default,fp32", "backends": "torch"}


def parse_modes(text: str) -> list[tuple[str, int | None]]:
    """An argparse type: 'reference,default@64' -> [('reference', None), ('default', 64)]."""
    entries = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, batch = part.partition("@")
        if name not in MODES or (batch and not batch.isdigit()):
            raise argparse.ArgumentTypeError(f"unknown mode {part!r}; choose from {list(MODES)}, optionally with @BATCH")
        entries.append((name, int(batch) if batch else None))
    return entries


@contextlib.contextmanager
def reference_kernels():
    """The reference's compiled kernels: k-diffusion's ``compile_wrap`` compiles linear_geglu, rms_norm,
    scale_for_cosine_sim(_qkv) and apply_rotary_emb(_) and nothing else, with dynamo's suppress_errors
    (shared/REFERENCE_API.md). Here: the same functions of arch/, swapped for compiled ones for a while."""
    import arch.hdit as hdit
    import arch.layers as layers

    swapped = [(layers, "linear_geglu"), (layers, "rms_norm"), (hdit, "scale_for_cosine_sim"), (hdit, "apply_rotary")]
    originals = [getattr(module, name) for module, name in swapped]
    suppress = torch._dynamo.config.suppress_errors
    torch._dynamo.config.suppress_errors = True
    try:
        for (module, name), function in zip(swapped, originals):
            setattr(module, name, torch.compile(function, **compile_options()))
        yield
    finally:
        for (module, name), function in zip(swapped, originals):
            setattr(module, name, function)
        torch._dynamo.config.suppress_errors = suppress


def precision(mode: Mode) -> str:
    """The mode's precision in the programs' vocabulary (utils.precision)."""
    from utils.precision import bf16_flag

    return bf16_flag(mode.bf16)


def card(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def available_backends(device: torch.device) -> list[str]:
    """Neighbourhood-attention backends worth timing here (natten only with its fused kernels)."""
    from arch.attention import flex_available, natten_has_fused_kernels

    if device.type != "cuda":
        return ["torch"]
    backends = ["torch"] + (["flex"] if flex_available() else [])
    return backends + (["natten"] if natten_has_fused_kernels(device) else [])


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


def inference_case(spec: dict) -> dict:
    """Time one (mode, backend, batch) case: seconds per restored batch and images per second."""
    warnings.filterwarnings("ignore")
    set_threads(spec.get("threads"))
    device, mode = torch.device(spec["device"]), MODES[spec["mode"]]
    torch.set_float32_matmul_precision(mode.matmul)
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.ExitStack() as stack:
        if mode.reference_kernels:
            stack.enter_context(reference_kernels())
        if mode.mmse_twice:  # the reference's token layout: row-major neighbourhoods
            stack.enter_context(environment_variable("PMRF_NA_TILING", "rows"))
        elif spec.get("tiling"):
            stack.enter_context(environment_variable("PMRF_NA_TILING", spec["tiling"]))
        return _inference_case(spec, device, mode)


@contextlib.contextmanager
def environment_variable(name: str, value: str):
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _inference_case(spec: dict, device: torch.device, mode: Mode) -> dict:
    from arch.attention import last_backend, resolve_tiling
    from lightning_models.restorer import Restorer, set_up_networks
    from utils.auto_compile import image_steps, should_compile

    model = build_model(device)
    batch, size = spec["batch"], spec["image_size"]
    compiled = mode.compile
    if compiled == "auto":
        compiled = should_compile("auto", device, image_steps(spec["job_images"], spec["num_flow_steps"], size, size))
    set_up_networks(model, None if spec["backend"] == "auto" else spec["backend"], bool(compiled),
                    bool(compiled and spec.get("compile_mmse")),
                    compile_options=compile_options(None if compiled in (True, False) else compiled))
    y = torch.rand(batch, 3, size, size, device=device)
    restorer = Restorer(model, precision=precision(mode))

    def restore(steps: int):
        sample = restorer.sample(y, steps)
        if mode.mmse_twice:  # the reference runs f again to save the posterior mean
            restorer.posterior_mean(y)
        return sample

    result = {"first_call_s": time_call(lambda: restore(1), device), "compiled": bool(compiled)}
    tiling = resolve_tiling()  # inference records no gradients: the order of the levels flex runs
    result["order"] = tiling.name if tiling and last_backend() == "flex" else "rows"
    if spec.get("memory_only"):
        result["peak_mib"] = (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None
        result["ran"] = last_backend()
        return result
    timed = measure(lambda: restore(spec["num_flow_steps"]), device, 0, spec["repeats"])
    result.update(timed)
    result["img_per_s"] = batch / timed["median_s"]
    # a job of job_images images: the first (compiling) call, then whole batches at full speed
    result["job_img_per_s"] = spec["job_images"] / (result["first_call_s"] + math.ceil(spec["job_images"] / batch) * timed["median_s"])
    result["ran"] = last_backend()
    if spec.get("profile") and device.type == "cuda":
        result["top_kernels"] = profile_forward(model, y, mode, device)
    release(device)
    return result


def profile_forward(model, y: torch.Tensor, mode: Mode, device: torch.device, top: int = 15) -> list[dict]:
    """The kernels one HDiT forward spends its time in (torch.profiler, self CUDA time)."""
    from torch.profiler import ProfilerActivity, profile

    from utils.precision import autocast

    t = torch.full((y.shape[0],), 0.5, device=device)
    with torch.no_grad(), autocast(precision(mode), device):
        model.model(y, t)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model.model(y, t)
            torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, "self_device_time_total", 0), reverse=True)
    total = sum(getattr(e, "self_device_time_total", 0) for e in events) or 1
    return [
        {"kernel": e.key[:90], "ms": getattr(e, "self_device_time_total", 0) / 1e3, "share": getattr(e, "self_device_time_total", 0) / total}
        for e in events[:top]
    ]


def plan(args, device: torch.device) -> list[dict]:
    cases = []
    backends = args.backends
    for name, batch in args.modes:
        for backend in (["auto"] if not MODES[name].per_backend else backends):
            cases.append({"mode": name, "backend": backend, **({"batch": batch} if batch else {})})
    return cases


def run_all(args, device: torch.device, isolate: bool) -> list[dict]:
    rows, start = [], time.perf_counter()
    cases = plan(args, device)
    if args.memory_batch:
        cases.append({"mode": "default", "backend": "auto", "batch": args.memory_batch, "memory_only": True})
    for case in cases:
        row = {"mode": case["mode"], "backend": case["backend"], "batch": case.get("batch", args.batch),
               "image": f"{args.image_size}²", "steps": 1 if case.get("memory_only") else args.num_flow_steps,
               "card": card(device), "torch": torch.__version__}
        if args.time_budget_s and time.perf_counter() - start > args.time_budget_s:
            row["note"] = "skipped (time budget)"
        else:
            spec = {
                "device": str(device), "image_size": args.image_size, "num_flow_steps": args.num_flow_steps,
                "repeats": args.repeats, "compile_mmse": args.compile_mmse, "threads": args.threads,
                "batch": args.batch, "profile": args.profile and case["mode"] in ("default", "bf16+compile") and "batch" not in case,
                "job_images": args.job_images, "tiling": args.tiling,
                **case,
            }
            result = run_case(inference_case, spec, isolate)
            row.update(result)
            row["note"] = result.get("status", "ok")
        progress(row)
        rows.append(row)
        if args.output_json:  # partial results survive a run cut short
            save_json(args.output_json, {"benchmark": "inference", "partial": True, "cases": rows}, quiet=True)
    reference = next((r for r in rows if r["mode"] == "reference" and r.get("img_per_s")), None)
    for row in rows:
        if reference and row.get("img_per_s"):
            row["vs_reference"] = row["img_per_s"] / reference["img_per_s"]
            row["job_vs_reference"] = row["job_img_per_s"] / reference["job_img_per_s"]
    return rows


def compile_break_even(rows: list[dict]) -> dict | None:
    """--compile auto's break-even measured here: the compile's extra first-call time over the time
    compiling saves per image-step (default against default-eager at the same batch)."""
    from utils.auto_compile import AUTO_COMPILE_MIN_IMAGE_STEPS

    for row in rows:
        if row["mode"] != "default" or not row.get("compiled") or not row.get("img_per_s"):
            continue
        eager = next((r for r in rows if r["mode"] == "default-eager" and r.get("img_per_s") and r["batch"] == row["batch"]), None)
        if eager is None:
            continue
        per_step = row["batch"] * row["steps"]
        saving_s = (eager["median_s"] - row["median_s"]) / per_step
        overhead_s = row["first_call_s"] - eager["first_call_s"]
        return {
            "compile_overhead_s": overhead_s,
            "saving_ms_per_image_step": 1e3 * saving_s,
            "break_even_image_steps": overhead_s / saving_s if saving_s > 0 else None,
            "auto_threshold_image_steps": AUTO_COMPILE_MIN_IMAGE_STEPS,
        }
    return None


def progress(row: dict) -> None:
    label = f"{row['mode']} [{row['backend']}] batch {row['batch']} ({row['card']}, torch {row['torch']})"
    if row["note"] != "ok":
        print(f"  {label}: {row['note']}", flush=True)
        return
    peak = row.get("peak_mib")
    memory = "" if peak is None else f", peak {peak:.0f} MiB"
    if "img_per_s" not in row:
        print(f"  {label}, K=1: first call {row['first_call_s']:.1f} s{memory}", flush=True)
        return
    print(f"  {label}: {row['median_s']:.3g} s, {row['img_per_s']:.3g} img/s, {row['job_img_per_s']:.3g} img/s "
          f"over a job with the first call{memory} (first call {row['first_call_s']:.1f} s, ran {row.get('ran')}, "
          f"compiled {row.get('compiled')})", flush=True)


COLUMNS = [
    ("mode", "mode"),
    ("backend", "backend"),
    ("ran", "ran"),
    ("compiled", "compiled"),
    ("order", "tokens"),
    ("batch", "batch"),
    ("steps", "K"),
    ("median_s", "s/batch"),
    ("img_per_s", "img/s"),
    ("vs_reference", "× ref"),
    ("job_img_per_s", "job img/s"),
    ("job_vs_reference", "job × ref"),
    ("peak_mib", "peak MiB"),
    ("first_call_s", "1st call s"),
    ("note", "note"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=device_argument, default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--batch", type=int, default=None, help=f"default CUDA {FULL['batch']}, CPU {CPU['batch']}")
    parser.add_argument("--image_size", type=int, default=None, help=f"default CUDA {FULL['image_size']}, CPU {CPU['image_size']}")
    parser.add_argument("--num_flow_steps", type=int, default=None, help=f"K; default CUDA {FULL['num_flow_steps']}, CPU {CPU['num_flow_steps']}")
    parser.add_argument("--modes", type=parse_modes, default=None,
                        help=f"subset of {','.join(MODES)}, each optionally @BATCH "
                        f"(default CUDA {CUDA_MODES}, CPU {CPU['modes']})")
    parser.add_argument("--job_images", type=int, default=512,
                        help="images of the job that `default` decides --compile auto for and that 'job img/s' "
                        "counts the first call against (default 512)")
    parser.add_argument("--tiling", default=None, help="PMRF_NA_TILING for every case but the reference's "
                        "(auto, rows, or a tiling of arch.attention.TILINGS; default: the environment's)")
    parser.add_argument("--backends", type=names_in(BACKENDS), default=None,
                        help="neighbourhood-attention backends for the per-backend modes (default: every one that "
                        "can run here; natten only with fused kernels)")
    parser.add_argument("--memory_batch", type=int, default=0, help="also measure the peak memory of this batch (K=1)")
    parser.add_argument("--compile_mmse", action="store_true", help="in compiled modes, compile SwinIR too")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default CPU 1, CUDA 2)")
    parser.add_argument("--time_budget_s", type=float, default=0, help="skip the remaining cases after this long")
    parser.add_argument("--profile", action="store_true", help="top CUDA kernels of one HDiT forward in default and bf16+compile")
    parser.add_argument("--in_process", action="store_true", help="on CPU, run cases in this process")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output_json", default=None, help="also save the table here")
    return parser.parse_args(argv)


def fill_device_defaults(args, device: torch.device) -> list[str]:
    defaults = FULL if device.type == "cuda" else CPU
    args.batch = args.batch or defaults["batch"]
    args.image_size = args.image_size or defaults["image_size"]
    args.num_flow_steps = args.num_flow_steps or defaults["num_flow_steps"]
    args.modes = args.modes or parse_modes(defaults.get("modes", CUDA_MODES))
    args.backends = args.backends or available_backends(device)
    args.repeats = args.repeats or (2 if device.type == "cuda" else 1)
    if args.image_size % 16 or args.image_size < 64:
        raise SystemExit(f"--image_size must be a multiple of 16 and at least 64, got {args.image_size}")
    reduced = []
    for key in ("image_size", "num_flow_steps", "batch"):
        if getattr(args, key) != FULL[key]:
            reduced.append(f"{key} {getattr(args, key)} instead of {FULL[key]}")
    return reduced


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = args.device
    set_threads(args.threads)
    reduced = fill_device_defaults(args, device)
    isolate = device.type == "cpu" and not args.in_process
    info = environment(device)
    print(f"PMRF blind-face inference ({FLOW_ARCH} + {MMSE_ARCH}) on {device} ({describe_machine(info)}), "
          f"torch {info['torch']}; random weights; median of {args.repeats} after a K=1 call")
    if reduced:
        print("reduced from the full benchmark (512², K=25, batch 16): " + "; ".join(reduced))
    rows = run_all(args, device, isolate)
    print(f"\nPMRF inference, {args.image_size}², K={args.num_flow_steps}, {describe_machine(info)}, torch {info['torch']}; "
          f"jobs of {args.job_images} images")
    print(format_table(rows, COLUMNS))
    break_even = compile_break_even(rows)
    if break_even:
        found = break_even["break_even_image_steps"]
        print(f"--compile auto: compiling costs {break_even['compile_overhead_s']:.1f} s and saves "
              f"{break_even['saving_ms_per_image_step']:.2f} ms per image-step: break-even at "
              f"{'never' if found is None else f'{found:,.0f}'} image-steps (the rule uses "
              f"{break_even['auto_threshold_image_steps']:,}; {describe_machine(info)}, torch {info['torch']})")
    for row in rows:
        if row.get("top_kernels"):
            print(f"top CUDA kernels of one HDiT forward, {row['mode']} (self time; {row['card']}, torch {row['torch']}):")
        for kernel in row.get("top_kernels", []):
            print(f"    {kernel['ms']:8.2f} ms {kernel['share']:6.1%}  {kernel['kernel']}")
    settings = {key: value for key, value in vars(args).items() if key != "output_json"}  # no local paths
    payload = {"benchmark": "inference", "environment": info, "settings": settings, "reduced": reduced, "cases": rows,
               "compile_break_even": break_even}
    if args.output_json:
        save_json(args.output_json, payload)
    return payload


if __name__ == "__main__":
    main()
