"""The rectified-flow pieces of PMRF as plain functions: training times, interpolation, Euler sampling."""

from __future__ import annotations

from collections.abc import Callable

import torch

T_SCHEDULES = ("stratified_uniform", "uniform", "logit-normal")

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_times(
    batch_size: int,
    schedule: str,
    eps: float = 0.0,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Training times t of shape (batch_size,), mapped to [eps, 1].

    `stratified_uniform`: sample j on rank r of W takes (r + j·W + u_j) / (b·W), u_j ~ U[0, 1], so the
    global batch covers [0, 1] evenly.
    """
    if schedule == "stratified_uniform":
        u = torch.rand(batch_size, device=device, generator=generator)
        j = torch.arange(batch_size, device=device)
        t = (rank + j * world_size + u) / (batch_size * world_size)
    elif schedule == "uniform":
        t = torch.rand(batch_size, device=device, generator=generator)
    elif schedule == "logit-normal":
        t = torch.randn(batch_size, device=device, generator=generator).sigmoid()
    else:
        raise ValueError(f"unknown t_schedule {schedule!r}; choose one of {T_SCHEDULES}")
    return eps + (1 - eps) * t


def interpolate(x: torch.Tensor, z0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t·x + (1 − t)·z0, one t per sample: z0 at t = 0, x at t = 1."""
    t = t.view(-1, *([1] * (x.dim() - 1)))
    return t * x + (1 - t) * z0


def euler_times(num_steps: int, eps: float = 0.0) -> list[float]:
    """t_i = eps + (1 − eps)·i/K for i = 0..K−1: where the K Euler steps evaluate the velocity."""
    if num_steps < 1:
        raise ValueError(f"num_flow_steps must be at least 1, got {num_steps}")
    return [eps + (1 - eps) * i / num_steps for i in range(num_steps)]


def sample_euler(
    velocity: Velocity,
    x: torch.Tensor,
    num_steps: int,
    eps: float = 0.0,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from x at t = eps to t = 1 with `num_steps` Euler steps of (1 − eps)/K.

    The update is computed in float32 whatever precision the velocity came in (bf16 autocast).
    After each step `callback({"i", "t", "x", "velocity"})` receives the new state. Not clipped.
    """
    dt = (1 - eps) / num_steps
    for i, t in enumerate(euler_times(num_steps, eps)):
        v = velocity(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32))
        x = x + dt * v.float()
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "velocity": v})
    return x
