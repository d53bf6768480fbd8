"""Time and peak memory of the neighbourhood-attention backends, and of a whole HDiT forward.

Kernels (layout (batch, H, W, heads, d_head), softmax scale 1) on H×W token grids:

* ``torch``  – the pure-PyTorch backend (gathers each query's k×k window, a chunk of query rows at a time;
  memory ∝ H·W·k², capped per chunk);
* ``flex``   – PyTorch FlexAttention with the block mask of NATTEN's window rule (compiled on CUDA; on CPU
  uncompiled, with full (HW)² scores, forward only);
* ``natten`` – ``natten.na2d`` (fused on CUDA when built with libnatten, else flex attention with full
  (HW)² scores; on CPU forward only);
* ``dense``  – the baseline without a neighbourhood kernel: SDPA over all H·W tokens with a boolean
  neighbourhood mask (memory ∝ (HW)²), skipped where its mask memory would pass ``--dense_max_gib``.

HDiT: ``hdit_ImageNet256Sp4`` (patch 4, so a 128/256/384/512 px image has a 32²/64²/96²/128² level-0
grid) with each backend forced through ``set_neighborhood_backend``.

Keys per query: for the neighbourhood levels of that HDiT at ``--mask_sizes`` (default 512 px: 128² and
64² grids), the keys FlexAttention computes per query with each token order's BlockMask (row-major
with 128-token blocks, and every tiling of ``arch.attention.TILINGS``), read from the BlockMask built on
the device, next to the k² a window needs. ``--tilings`` times the flex kernel in each of these orders
(CUDA; the tokens are put in the tile order before the timed calls, as an HDiT level keeps them).

    python benchmarks/attention.py                       # CPU here: grids 32..128², HDiT 128/256 px
    python benchmarks/attention.py --backward --output_json na.json   # on a GPU machine: CPU, then GPU
    python benchmarks/attention.py --device cuda                     # the GPU only
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

import torch
from einops import rearrange
from torch.nn import functional as F

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arch import attention, create_arch, last_backend, natten_available, neighborhood_attention
from arch.attention import window_starts
from benchmarks import (
    describe_machine,
    device_argument,
    environment,
    format_table,
    measure,
    names_in,
    parse_ints,
    parse_names,
    run_case,
    save_json,
    set_threads,
)

KERNEL_BACKENDS = ("torch", "flex", "natten", "dense")
HDIT_BACKENDS = ("torch", "flex", "natten")
HDIT_ARCH = "hdit_ImageNet256Sp4"
HDIT_PATCH = 4
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
NATTEN_CPU_NOTE = "skipped (CPU natten builds (HW)² scores; raise --natten_cpu_max_grid)"


# --------------------------------------------------------------------------------- dense baseline


def neighborhood_mask(h: int, w: int, kernel_size: int, device: torch.device) -> torch.Tensor:
    """(H·W, H·W) boolean mask, True where the key lies in the query's k×k window (NATTEN's border rule)."""

    def inside(n: int) -> torch.Tensor:
        starts = window_starts(n, kernel_size, device)[:, None]
        keys = torch.arange(n, device=device)[None, :]
        return (keys >= starts) & (keys < starts + kernel_size)

    rows, cols = inside(h), inside(w)
    return rearrange(rows[:, None, :, None] & cols[None, :, None, :], "qh qw kh kw -> (qh qw) (kh kw)")


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    _, h, w, _, _ = q.shape
    q, k, v = (rearrange(t, "n h w nh e -> n nh (h w) e") for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    return rearrange(out, "n nh (h w) e -> n h w nh e", h=h, w=w)


def dense_estimate_gib(grid: int) -> float:
    """The masked SDPA's (HW)² memory: the bool mask and the additive float32 copy the fused kernels make.

    PyTorch's math fallback would add the scores and their softmax (2·batch·heads·(HW)² more values).
    """
    return (grid * grid) ** 2 * (1 + 4) / 2**30


# ------------------------------------------------------------------------------------------ cases


def prepare(spec: dict) -> None:
    warnings.filterwarnings("ignore")  # natten's CPU path warns on every call about unfused flex attention
    set_threads(spec.get("threads"))


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def kernel_case(spec: dict) -> dict:
    """Time one attention kernel on random q, k, v; forward only or forward + backward."""
    prepare(spec)
    device, dtype = torch.device(spec["device"]), DTYPES[spec["dtype"]]
    torch.manual_seed(0)
    shape = (spec["batch"], spec["grid"], spec["grid"], spec["heads"], spec["d_head"])
    q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    kernel_size, backend = spec["kernel"], spec["backend"]
    grid = None
    if spec.get("tiling") not in (None, attention.ROW_MAJOR):
        grid = attention.TiledGrid(spec["grid"], spec["grid"], attention.TILINGS[spec["tiling"]])
        q, k, v = (grid.to_tiles(t.flatten(-2)).unflatten(-1, t.shape[-2:]) for t in (q, k, v))
    if backend == "dense":
        mask = neighborhood_mask(spec["grid"], spec["grid"], kernel_size, device)

        def attend(q, k, v):
            return dense_attention(q, k, v, mask)

    else:

        def attend(q, k, v):
            return neighborhood_attention(q, k, v, kernel_size, backend=backend, grid=grid)

    if spec["backward"]:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        grad_out = torch.randn_like(q)

        def call():
            for t in (q, k, v):
                t.grad = None
            attend(q, k, v).backward(grad_out)

    else:

        def call():
            with torch.no_grad():
                attend(q, k, v)

    result = measure(call, device, spec["warmup"], spec["repeats"])
    result["ran"] = "dense" if backend == "dense" else last_backend()
    return result


def hdit_case(spec: dict) -> dict:
    """Time one HDiT forward (or forward + backward) at one image size with one backend forced."""
    prepare(spec)
    device, dtype = torch.device(spec["device"]), DTYPES[spec["dtype"]]
    torch.manual_seed(0)
    net = create_arch(HDIT_ARCH).eval().to(device)
    net.set_neighborhood_backend(spec["backend"])
    size, batch = spec["image_size"], spec["batch"]
    x = torch.randn(batch, 3, size, size, device=device)
    t = torch.rand(batch, device=device)

    if spec["backward"]:

        def call():
            net.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                loss = net(x, t).float().square().mean()
            loss.backward()

    else:
        net.requires_grad_(False)

        def call():
            with torch.no_grad(), autocast(device, dtype):
                net(x, t)

    result = measure(call, device, spec["warmup"], spec["repeats"])
    result["ran"] = last_backend()
    return result


# ---------------------------------------------------------------------------------- sanity check


def agreement(device: torch.device, grid: int, kernel_size: int) -> dict[str, float]:
    """Max |difference| of the natten and dense outputs from the torch backend on one small grid."""
    torch.manual_seed(0)
    q, k, v = (0.3 * torch.randn(1, grid, grid, 2, 32, device=device) for _ in range(3))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = neighborhood_attention(q, k, v, kernel_size, backend="torch")
        outputs = {"dense": dense_attention(q, k, v, neighborhood_mask(grid, grid, kernel_size, device))}
        outputs["flex"] = neighborhood_attention(q, k, v, kernel_size, backend="flex")
        if natten_available():
            outputs["natten"] = neighborhood_attention(q, k, v, kernel_size, backend="natten")
    return {name: (out - reference).abs().max().item() for name, out in outputs.items()}


# ------------------------------------------------------------------------------------ keys per query


def keys_table(args, device: torch.device) -> list[dict]:
    """Keys per query of every token order's BlockMask at the HDiT's neighbourhood levels, read from the
    BlockMask itself (its block counts and block sizes)."""
    net_levels = [(index, spec) for index, spec in enumerate(create_arch(HDIT_ARCH).levels)
                  if spec.attention.kind == "neighborhood"]
    rows = []
    for size in args.mask_sizes:
        for index, spec in net_levels:
            side, kernel = size // HDIT_PATCH // 2**index, spec.attention.kernel_size
            for order in [attention.ROW_MAJOR, *attention.TILINGS]:
                tiling = attention.TILINGS.get(order)
                row = {"image": f"{size}²", "level": index, "grid": f"{side}²", "order": order,
                       "q_block": tiling.q_block if tiling else attention.ROW_MAJOR_BLOCK,
                       "kv_block": tiling.kv_block if tiling else attention.ROW_MAJOR_BLOCK,
                       "needed": kernel * kernel, "default": "yes" if order == attention.DEFAULT_TILING else ""}
                if tiling and not tiling.fits(side, side):
                    row["note"] = "not whole tiles: the level stays row-major"
                else:
                    mask = attention.build_neighborhood_block_mask(side, side, kernel, tiling, device)
                    row["keys_per_query"] = attention.keys_per_query(mask)
                    row["vs_needed"] = row["keys_per_query"] / row["needed"]
                    row["note"] = "ok"
                rows.append(row)
    return rows


KEYS_COLUMNS = [
    ("image", "image"),
    ("level", "level"),
    ("grid", "grid"),
    ("order", "token order"),
    ("q_block", "Q block"),
    ("kv_block", "KV block"),
    ("keys_per_query", "keys/query"),
    ("needed", "needed"),
    ("vs_needed", "× needed"),
    ("default", "default"),
    ("note", "note"),
]


# ------------------------------------------------------------------------------------------- plan


def skip_reason(args, device: torch.device, backend: str, grid: int, backward: bool) -> str | None:
    if grid < args.kernel:
        return f"skipped (grid smaller than kernel {args.kernel})"
    if backend in ("natten", "flex"):
        if backend == "natten" and not natten_available():
            return "skipped (natten not installed)"
        if device.type == "cpu" and backward:
            return f"n/a ({backend} has no CPU backward)"
        if device.type == "cpu" and grid > args.natten_cpu_max_grid:
            return NATTEN_CPU_NOTE.replace("CPU natten", f"CPU {backend}")
    if backend == "dense":
        estimate = dense_estimate_gib(grid)
        if estimate > args.dense_max_gib:
            return f"skipped (est. {estimate:.1f} GiB > cap {args.dense_max_gib:g} GiB)"
    return None


def passes(args) -> list[bool]:
    return [False, True] if args.backward else [False]


def progress(row: dict, time_key: str, unit: str) -> None:
    label = " ".join(str(row[key]) for key in ("image", "grid", "backend", "order", "pass") if key in row)
    if row["note"] != "ok":
        print(f"  {label}: {row['note']}", flush=True)
        return
    peak = row.get("peak_mib")
    memory = "" if peak is None else f", peak {peak:.0f} MiB"
    print(f"  {label}: {row[time_key]:.4g} {unit}{memory}", flush=True)


def kernel_variants(args, device: torch.device) -> list[tuple[str, str | None]]:
    """(backend, token order) pairs to time: flex once per --tilings entry on CUDA."""
    variants = []
    for backend in args.backends:
        orders = args.tilings if backend == "flex" and device.type == "cuda" and args.tilings else [None]
        variants += [(backend, order) for order in orders]
    return variants


def run_kernels(args, device: torch.device, isolate: bool) -> list[dict]:
    rows = []
    for grid in args.grids:
        for backend, order in kernel_variants(args, device):
            for backward in passes(args):
                row = {
                    "grid": f"{grid}²",
                    "tokens": grid * grid,
                    "backend": backend,
                    "order": order or "-",
                    "pass": "fwd+bwd" if backward else "fwd",
                }
                reason = skip_reason(args, device, backend, grid, backward)
                if reason is None and order not in (None, attention.ROW_MAJOR) and not attention.TILINGS[order].fits(grid, grid):
                    reason = f"skipped ({grid}² is not whole {order} tiles)"
                if reason is None:
                    spec = {
                        "device": str(device),
                        "dtype": args.dtype,
                        "batch": args.batch,
                        "grid": grid,
                        "heads": args.heads,
                        "d_head": args.d_head,
                        "kernel": args.kernel,
                        "backend": backend,
                        "backward": backward,
                        "warmup": args.warmup,
                        "repeats": args.repeats,
                        "threads": args.threads,
                        "tiling": order,
                    }
                    result = run_case(kernel_case, spec, isolate)
                    row.update(result)
                    row["median_ms"] = result.get("median_s") and 1000 * result["median_s"]
                    row["min_ms"] = result.get("min_s") and 1000 * result["min_s"]
                    reason = result.get("status")
                row["note"] = reason or "ok"
                progress(row, "median_ms", "ms")
                rows.append(row)
    return rows


def run_hdit(args, device: torch.device, isolate: bool) -> list[dict]:
    rows = []
    for size in args.hdit_sizes:
        grid = size // HDIT_PATCH
        for backend in HDIT_BACKENDS:
            if backend not in args.backends:
                continue
            for backward in passes(args):
                row = {
                    "image": f"{size}²",
                    "grid": f"{grid}²",
                    "backend": backend,
                    "pass": "fwd+bwd" if backward else "fwd",
                }
                reason = skip_reason(args, device, backend, grid, backward)
                if reason is None:
                    spec = {
                        "device": str(device),
                        "dtype": args.dtype,
                        "batch": args.batch,
                        "image_size": size,
                        "backend": backend,
                        "backward": backward,
                        "warmup": args.warmup,
                        "repeats": args.hdit_repeats,
                        "threads": args.threads,
                    }
                    result = run_case(hdit_case, spec, isolate)
                    row.update(result)
                    reason = result.get("status")
                row["note"] = reason or "ok"
                progress(row, "median_s", "s")
                rows.append(row)
    return rows


KERNEL_COLUMNS = [
    ("grid", "grid"),
    ("tokens", "tokens"),
    ("backend", "backend"),
    ("order", "tokens in"),
    ("pass", "pass"),
    ("median_ms", "median ms"),
    ("min_ms", "min ms"),
    ("peak_mib", "peak MiB"),
    ("ran", "ran"),
    ("note", "note"),
]
HDIT_COLUMNS = [
    ("image", "image"),
    ("grid", "level-0 grid"),
    ("backend", "backend"),
    ("pass", "pass"),
    ("median_s", "median s"),
    ("min_s", "min s"),
    ("peak_mib", "peak MiB"),
    ("ran", "ran"),
    ("note", "note"),
]


# -------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device",
        type=device_list,
        default="auto",
        help="cpu, cuda, cuda:N, a comma-separated list, or auto (default: cpu, plus cuda if present)",
    )
    parser.add_argument(
        "--grids",
        type=parse_ints,
        default=parse_ints("32,64,96,128"),
        help="token-grid sides for the kernels (default 32,64,96,128)",
    )
    parser.add_argument("--backends", type=names_in(KERNEL_BACKENDS), default="torch,flex,natten,dense",
                        help="subset of torch,flex,natten,dense")
    parser.add_argument("--kernel", type=int, default=7)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d_head", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="kernel inputs in this dtype; HDiT runs under autocast to it",
    )
    parser.add_argument("--backward", action="store_true", help="also time forward + backward")
    parser.add_argument(
        "--mask_sizes",
        type=parse_ints,
        default=parse_ints("512"),
        help="HDiT image sides whose levels' BlockMasks are read for keys per query (default 512; empty: none)",
    )
    parser.add_argument(
        "--tilings",
        type=tilings_argument,
        default=None,
        help="token orders to time the flex kernel in on CUDA: 'all', or a comma-separated list of rows and "
        f"{', '.join(attention.TILINGS)} (default: the automatic order only)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed calls first (default CPU 1, CUDA 3)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed kernel calls (default CPU 3, CUDA 20)"
    )
    parser.add_argument(
        "--hdit_repeats", type=int, default=None, help="timed HDiT calls (default CPU 2, CUDA 10)"
    )
    parser.add_argument(
        "--hdit_sizes",
        type=parse_ints,
        default=None,
        help="HDiT image sides (default CPU 128,256; CUDA 128,256,384,512)",
    )
    parser.add_argument("--quick", action="store_true", help="HDiT at 128 and 256 px only, on any device")
    parser.add_argument("--no_hdit", action="store_true", help="kernels only")
    parser.add_argument(
        "--natten_cpu_max_grid",
        type=int,
        default=64,
        help="largest grid side for natten on CPU (about 80 s per call at 128² on 2 cores)",
    )
    parser.add_argument(
        "--dense_max_gib",
        type=float,
        default=None,
        help="skip the dense baseline where its (HW)² mask memory would pass this "
        "(default CPU 3, CUDA a quarter of the GPU)",
    )
    parser.add_argument(
        "--in_process",
        action="store_true",
        help="on CPU, run cases in this process (faster start; peak memory approximate)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--output_json", default=None, help="also save the tables here")
    return parser.parse_args(argv)


def tilings_argument(text: str) -> list[str]:
    """An argparse type: 'all', or a comma-separated list of token orders."""
    orders = [attention.ROW_MAJOR, *attention.TILINGS]
    return orders if text == "all" else parse_names(text, orders)


def settings_for(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """A copy of the options with the unset ones filled in for `device`."""
    args = argparse.Namespace(**vars(args))
    on_cuda = device.type == "cuda"
    if args.warmup is None:
        args.warmup = 3 if on_cuda else 1
    if args.repeats is None:
        args.repeats = 20 if on_cuda else 3
    if args.hdit_repeats is None:
        args.hdit_repeats = 10 if on_cuda else 2
    if args.hdit_sizes is None:
        args.hdit_sizes = [128, 256, 384, 512] if on_cuda and not args.quick else [128, 256]
    elif args.quick:
        args.hdit_sizes = [size for size in args.hdit_sizes if size <= 256]
    if args.no_hdit:
        args.hdit_sizes = []
    if args.dense_max_gib is None:
        args.dense_max_gib = torch.cuda.get_device_properties(device).total_memory / 2**32 if on_cuda else 3.0
    bad = [size for size in args.hdit_sizes if size % (HDIT_PATCH * 4)]
    if bad:
        raise SystemExit(f"--hdit_sizes must be multiples of {HDIT_PATCH * 4} (patch 4, 3 levels); got {bad}")
    return args


def device_list(requested: str) -> list[torch.device]:
    """An argparse type. 'auto': the CPU, and the GPU too when there is one; otherwise a comma-separated
    list of devices."""
    if requested == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [device_argument(name.strip()) for name in requested.split(",") if name.strip()]


def run_device(args: argparse.Namespace, device: torch.device) -> dict:
    """Every case on one device; prints progress and the two tables, returns them."""
    isolate = device.type == "cpu" and not args.in_process
    info = environment(device)
    if not isolate and device.type == "cpu":
        info["memory_method"] = info["memory_method"].replace(
            "each case in a fresh spawned child process",
            "all cases in this process (--in_process: approximate)",
        )
    print(
        f"\n=== {device} ({describe_machine(info)}), torch {info['torch']}, "
        f"natten {'yes' if natten_available() else 'no'}"
    )
    print(
        f"kernel {args.kernel}, heads {args.heads}, d_head {args.d_head}, batch {args.batch}, {args.dtype}; "
        f"warm-up {args.warmup}, median of {args.repeats} (HDiT {args.hdit_repeats})"
    )
    print(f"peak memory: {info['memory_method']}")
    check = agreement(device, 16, min(args.kernel, 15))
    print(
        "agreement with the torch backend at 16², max |Δ|: "
        + ", ".join(f"{name} {value:.1e}" for name, value in check.items())
    )

    keys_rows = keys_table(args, device)
    if keys_rows:
        print(f"\nkeys computed per query by each token order's BlockMask on {device} ({describe_machine(info)}), "
              f"torch {info['torch']}; hdit_ImageNet256Sp4's neighbourhood levels")
        print(format_table(keys_rows, KEYS_COLUMNS))

    print("kernels", flush=True)
    kernel_rows = run_kernels(args, device, isolate)
    hdit_rows = []
    if args.hdit_sizes:
        print(f"HDiT ({HDIT_ARCH}), batch {args.batch}", flush=True)
        hdit_rows = run_hdit(args, device, isolate)

    print(
        f"\nneighbourhood-attention kernels on {device} (heads {args.heads}, d_head {args.d_head}, "
        f"kernel {args.kernel}, batch {args.batch}, {args.dtype})"
    )
    print(format_table(kernel_rows, KERNEL_COLUMNS))
    if hdit_rows:
        print(f"\nHDiT {HDIT_ARCH} on {device} (batch {args.batch}, {args.dtype})")
        print(format_table(hdit_rows, HDIT_COLUMNS))
    settings = {key: value for key, value in vars(args).items() if key != "output_json"}
    return {
        "environment": info,
        "settings": settings,
        "agreement": check,
        "keys_per_query": keys_rows,
        "kernels": kernel_rows,
        "hdit": hdit_rows,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    runs = [run_device(settings_for(args, device), device) for device in args.device]
    payload = {"benchmark": "attention", "runs": runs}
    if args.output_json:
        save_json(args.output_json, payload)
    return payload


if __name__ == "__main__":
    main()
