"""How torch computes here: the global switches, and one precision vocabulary.

* `configure_torch()` sets the process-wide switches every program sets at start-up: TF32 matmuls (the
  reference's `set_float32_matmul_precision('high')`) and no OpenCV thread pools (inside DataLoader
  workers they would oversubscribe the CPU).
* A precision is named as Lightning names it (`--precision` of train.py and test.py): '32' (float32,
  TF32 matmuls where enabled), 'bf16-mixed' or '16-mixed'. `autocast(precision, device)` is the context
  a restoration runs in, as nanoGPT's single `dtype` → `ctx`: autocast on CUDA for the mixed precisions,
  nothing otherwise. inference.py's and app.py's `--bf16` is 'bf16-mixed'.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
_AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
_ALIASES = {"32-true": "32", "bf16": "bf16-mixed", "16": "16-mixed"}


def configure_torch() -> None:
    """TF32 matmuls (the reference's setting) and no OpenCV thread pools inside DataLoader workers."""
    torch.set_float32_matmul_precision("high")
    try:
        import cv2

        cv2.setNumThreads(0)
    except ImportError:
        pass


def bf16_flag(bf16: bool) -> str:
    """The programs' --bf16 (inference.py, app.py) in this vocabulary: 'bf16-mixed', else '32'."""
    return "bf16-mixed" if bf16 else "32"


def precision_name(precision: str | int | None) -> str:
    """The vocabulary's name for `precision` (None: '32'; Lightning's aliases such as '32-true' accepted)."""
    if precision is None:
        return "32"
    name = _ALIASES.get(str(precision), str(precision))
    if name not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {PRECISIONS}")
    return name


def autocast(precision: str | None, device: torch.device | str) -> AbstractContextManager:
    """The context a restoration runs in: autocast to bf16 / fp16 on CUDA for the mixed precisions;
    nothing for '32' or off CUDA (float32 there, as without the option)."""
    dtype = _AUTOCAST_DTYPES.get(precision_name(precision))
    if dtype is None or torch.device(device).type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=dtype)
