"""Shared harness for the benchmark scripts: timing, peak memory, child processes, tables and JSON.

Peak memory is the memory a case adds on top of what was live before its timed calls:

* CUDA: ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` around the timed calls
  (tensors only; the caching allocator's reserve is not counted).
* CPU: every case runs in a fresh child process (spawn). After the warm-up calls the child frees what
  it can (``gc.collect``, glibc ``malloc_trim``), resets the kernel's peak-RSS mark (``5`` into
  ``/proc/self/clear_refs``) and reads ``VmRSS``; after the timed calls it reads ``VmHWM``. The
  difference is the peak resident memory the timed calls added.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Self

import torch

from utils import cli

MIB = 2**20


def parse_ints(text: str) -> list[int]:
    """An argparse type: '1,2,4' -> [1, 2, 4]."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_names(text: str, allowed: Sequence[str]) -> list[str]:
    """'a,b' -> ['a', 'b'], each one of `allowed` (argparse.ArgumentTypeError otherwise)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown choice(s) {unknown}; choose from {list(allowed)}")
    return names


def names_in(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names from `allowed`."""

    def parse(text: str) -> list[str]:
        return parse_names(text, allowed)

    parse.__name__ = "names"
    return parse


def device_argument(requested: str) -> torch.device:
    """An argparse type: a device name, or auto (CUDA when there is one, else the CPU; never MPS)."""
    try:
        return cli.resolve_device(requested, prefer_mps=False)
    except ValueError as error:  # its message starts with "--device NAME: ", which argparse says already
        raise argparse.ArgumentTypeError(str(error).removeprefix(f"--device {requested}: ")) from None


# ------------------------------------------------------------------------------------------ memory


def _proc_status_mib(field: str, pid: int | str = "self") -> float | None:
    """A memory field of /proc/PID/status (VmRSS, VmHWM) in MiB; None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _release_free_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: freed memory may stay resident and the peak reads low


def _reset_peak_rss(pid: int | str = "self") -> bool:
    """Start a new peak-RSS mark (VmHWM) for the process (Linux: 5 into /proc/PID/clear_refs)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager measuring the peak memory (MiB) added inside it; `.mib` is None if unknown."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mib: float | None = None
        self._baseline = 0.0
        self._rss_reset = False

    def __enter__(self) -> Self:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            _release_free_heap()
            self._rss_reset = _reset_peak_rss()
            self._baseline = _proc_status_mib("VmRSS") or 0.0
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._baseline) / MIB
        elif self._rss_reset:
            peak = _proc_status_mib("VmHWM")
            self.mib = None if peak is None else max(peak - self._baseline, 0.0)


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "peak torch.cuda.max_memory_allocated above the memory allocated before the timed calls"
    return (
        "peak RSS (VmHWM, reset through /proc/self/clear_refs) above the RSS before the timed calls, "
        "each case in a fresh spawned child process"
    )


# ----------------------------------------------------------------------------------------- compile

COMPILE_BACKEND_ENV_VAR = "PMRF_BENCH_COMPILE_BACKEND"


def compile_options(mode: str | None = None) -> dict[str, Any]:
    """torch.compile's keyword arguments for a compiled case: `mode` (None: the default), or with
    PMRF_BENCH_COMPILE_BACKEND set (gpu_session.sh's dry run on CPU) that dynamo backend instead, such
    as ``eager``, which checks the plumbing in seconds where inductor would compile for minutes."""
    backend = os.environ.get(COMPILE_BACKEND_ENV_VAR)
    if backend:
        return {"backend": backend}
    return {"mode": mode} if mode else {}


# ------------------------------------------------------------------------------------------ timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Warm up, then time `repeats` calls under a peak-memory probe: median / min seconds and peak MiB."""
    for _ in range(warmup):
        time_call(fn, device)
    with PeakMemory(device) as peak:
        times = [time_call(fn, device) for _ in range(max(repeats, 1))]
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_mib": peak.mib, "times_s": times}


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return "out of memory" in str(error).lower()


def describe_error(error: BaseException) -> str:
    if is_out_of_memory(error):
        return "OOM"
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"error: {type(error).__name__}: {first_line[:160]}"


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -------------------------------------------------------------------------------- child processes


def _guarded(case: Callable[[dict], dict], spec: dict) -> dict:
    try:
        return case(spec)
    except Exception as error:  # noqa: BLE001 (one failing case must not stop the benchmark)
        if os.environ.get("PMRF_BENCH_DEBUG"):
            traceback.print_exc()
        return {"status": describe_error(error)}


def run_case(case: Callable[[dict], dict], spec: dict, isolate: bool) -> dict:
    """Run `case(spec)`, in a fresh spawned child when `isolate` (CPU memory needs a clean process)."""
    if not isolate:
        result = _guarded(case, spec)
        release(torch.device(spec["device"]))
        return result
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            return pool.submit(_guarded, case, spec).result()
    except BrokenProcessPool:
        return {"status": "failed (child process died; probably out of memory)"}


# ---------------------------------------------------------------------------------- presentation


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def describe_machine(info: dict) -> str:
    if "gpu" in info:
        return info["gpu"]
    load = info.get("load_average_1m")
    return f"{info['cpu_threads']} CPU threads" + ("" if load is None else f", load average {load}")


def environment(device: torch.device) -> dict[str, Any]:
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "memory_method": memory_method(device),
    }
    if hasattr(os, "getloadavg"):  # other work on the machine skews CPU figures; record it
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """Fixed-width text table; `columns` are (key, header) pairs."""
    cells = [[header for _, header in columns]]
    cells += [[format_value(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def save_json(path: str | os.PathLike, payload: dict, quiet: bool = False) -> None:
    from utils.images import write_atomic

    text = json.dumps(payload, indent=2, default=str)
    target = write_atomic(path, lambda temporary: Path(temporary).write_text(text))
    if not quiet:
        print(f"saved {target}")
