"""When the programs torch.compile the flow network: ``--compile {auto,on,off}``.

Compiling costs a fixed time at the first batch and saves time on every network evaluation after it, so
``auto`` compiles on CUDA when the job has enough of them. A job's size is counted in image-steps: one
512×512 image through one flow step (one HDiT forward); a larger image counts in proportion to its pixels.

The threshold comes from the H200 run in ``benchmarks/results/h200_*.json`` (512², K = 25, batch 16):
the compiled mode's first call took 30.2 s; the default (TF32, eager) takes 2.49 s per batch of 16 at
K = 25, 6.2 ms per image-step; compiling made bf16 2.27× faster (8.51 → 19.3 img/s). At that speed-up
compiling saves 3.5 ms per image-step and repays its 30 s after about 8,600 image-steps: 350 faces at
K = 25. ``benchmarks/inference.py`` prints this break-even again from every run it makes on a GPU.
"""

from __future__ import annotations

import argparse
import math

import torch

COMPILE_CHOICES = ("auto", "on", "off")
AUTO_COMPILE_MIN_IMAGE_STEPS = 8600
REFERENCE_PIXELS = 512 * 512

COMPILE_HELP = (
    "torch.compile the flow network, attention included, at the job's first batch (same precision as "
    "without). auto (default): on CUDA when the job has at least {steps:,} image-steps (images x flow "
    "steps, a 512x512 image counting 1), where the ~30 s compile repays itself on an H200 (about 350 "
    "faces at K=25); never on CPU. A bare --compile means on."
)


def add_compile_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help: str | None = None) -> None:
    """--compile [auto|on|off] (default auto; a bare --compile is on, as before)."""
    parser.add_argument(
        "--compile",
        nargs="?",
        const="on",
        default="auto",
        choices=COMPILE_CHOICES,
        help=help or COMPILE_HELP.format(steps=AUTO_COMPILE_MIN_IMAGE_STEPS),
    )


def image_steps(images: int, flow_steps: int, height: int = 512, width: int = 512) -> float:
    """A job's size: images × network evaluations per image, in 512×512 equivalents."""
    return images * flow_steps * height * width / REFERENCE_PIXELS


def should_compile(requested: str | bool | None, device: torch.device | str, job_image_steps: float = math.inf) -> bool:
    """Whether to compile: `requested` on/off decide; auto compiles on CUDA for a job of at least
    AUTO_COMPILE_MIN_IMAGE_STEPS image-steps (math.inf: an open-ended job, such as a server)."""
    if requested in (True, "on"):
        return True
    if requested in (False, None, "off"):
        return False
    if requested != "auto":
        raise ValueError(f"--compile {requested!r}: choose one of {COMPILE_CHOICES}")
    return torch.device(device).type == "cuda" and job_image_steps >= AUTO_COMPILE_MIN_IMAGE_STEPS


def describe(requested: str | bool | None, compiled: bool, job_image_steps: float) -> str | None:
    """The line a program prints when `auto` chose to compile (the first batch then takes longer)."""
    if requested != "auto" or not compiled:
        return None
    size = "an open-ended job" if math.isinf(job_image_steps) else f"{job_image_steps:,.0f} image-steps"
    return f"compiling the flow network (--compile auto: {size}); the first batch compiles (about 30 s on an H200)"
