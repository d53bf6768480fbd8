"""Pieces shared by train.py, test.py and inference.py."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from arch import NAMED_CONFIGS


def arch_argument(value: str) -> str:
    """A named architecture or a path to a JSON config (checked at parse time)."""
    if value in NAMED_CONFIGS:
        return value
    if value.endswith(".json"):
        if not Path(value).is_file():
            raise argparse.ArgumentTypeError(f"architecture config file {value} does not exist")
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: use one of {sorted(NAMED_CONFIGS)} or a path to a .json config")


def existing_folder(value: str) -> str:
    if not Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"{value}: folder does not exist")
    return value


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(requested: str | torch.device | None, prefer_mps: bool = True) -> torch.device:
    """`requested`, or for None / "auto" CUDA, else (with `prefer_mps`) Apple MPS, else CPU.

    Asking for CUDA where there is none is a ValueError rather than a failure deep inside.
    """
    if requested is None or str(requested) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device(default_device() if prefer_mps else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: CUDA is not available here")
    return device


def fail(message: str, code: int = 2) -> None:
    """Stop a program with a one-line error instead of a traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def wandb_configured() -> bool:
    """True when Weights & Biases can log without asking anything: an API key, a login, or offline mode."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def configure_torch() -> None:
    torch.set_float32_matmul_precision("high")
    try:
        import cv2

        cv2.setNumThreads(0)  # DataLoader workers each run OpenCV; avoid oversubscribing the cores
    except ImportError:
        pass


def resolve_devices(accelerator: str, devices: int | None, num_gpus: int) -> tuple[str, int]:
    """(accelerator, device count): an explicit --devices wins; on GPU use --num_gpus (capped); else 1."""
    if devices is not None:
        return accelerator, devices
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if not on_gpu:
        return accelerator, 1
    available = torch.cuda.device_count()
    if num_gpus > available:
        print(f"warning: --num_gpus {num_gpus} but only {available} GPU(s) visible; using {available}")
    return accelerator, max(1, min(num_gpus, available))
