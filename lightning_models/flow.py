"""The rectified-flow pieces of PMRF as plain functions: training times, interpolation, Euler sampling."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

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


def time_grid(num_steps: int, eps: float = 0.0) -> torch.Tensor:
    """The reference's grid as K + 1 times eps = t_0 < … < t_K = 1 (float64), to hand to `sample_euler`."""
    return torch.tensor([*euler_times(num_steps, eps), 1.0], dtype=torch.float64)


def _steps(grid: int | Sequence[float] | torch.Tensor, eps: float) -> list[tuple[float, float]]:
    """(t_i, dt_i) of every Euler step: K equal steps of (1 − eps)/K from an int, else a grid's own steps."""
    if isinstance(grid, numbers.Integral):
        times = euler_times(int(grid), eps)
        return [(t, (1 - eps) / grid) for t in times]
    times = [float(t) for t in (grid.tolist() if isinstance(grid, torch.Tensor) else grid)]
    if len(times) < 2 or any(b <= a for a, b in zip(times, times[1:])):
        raise ValueError(f"a time grid needs at least 2 increasing times, got {times}")
    return [(a, b - a) for a, b in zip(times, times[1:])]


def sample_euler(
    velocity: Velocity,
    x: torch.Tensor,
    num_steps: int | Sequence[float] | torch.Tensor,
    eps: float = 0.0,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) with Euler steps, as k-diffusion's `sample_euler(model, x, sigmas)`.

    `num_steps` K: from x at t = eps to t = 1 in K steps of (1 − eps)/K (the reference's grid; `eps`
    applies only here). A grid t_0 < … < t_K (a sequence or 1-D tensor): from t_0 to t_K, step i of
    t_{i+1} − t_i. The update is computed in float32 whatever precision the velocity came in (bf16
    autocast). After each step `callback({"i", "t", "x", "velocity"})` receives the new state. Not clipped.
    """
    for i, (t, dt) in enumerate(_steps(num_steps, eps)):
        v = velocity(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32))
        x = x + dt * v.float()
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "velocity": v})
    return x
