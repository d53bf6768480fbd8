"""The rectified-flow pieces of PMRF as plain functions: time sampling, interpolation, Euler sampling."""

from __future__ import annotations

from collections.abc import Callable

import torch

T_SCHEDULES = ("stratified_uniform", "uniform", "logit-normal")


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
    """x_t = t·x + (1 − t)·z0 with one t per sample."""
    t = t.view(-1, *([1] * (x.dim() - 1)))
    return t * x + (1 - t) * z0


def euler_sample(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    num_steps: int,
    eps: float = 0.0,
    keep_trajectory: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Integrate dx/dt = v(x, t) from z0 at t = eps to t = 1 with `num_steps` Euler steps.

    Returns the final state (not clipped) and, if asked, every state from z0 on.
    """
    if num_steps < 1:
        raise ValueError(f"num_flow_steps must be at least 1, got {num_steps}")
    x = z0
    trajectory = [x] if keep_trajectory else []
    dt = (1 - eps) / num_steps
    for i in range(num_steps):
        t = torch.full((x.shape[0],), eps + (1 - eps) * i / num_steps, device=x.device, dtype=torch.float32)
        x = x + dt * velocity(x, t)
        if keep_trajectory:
            trajectory.append(x)
    return x, trajectory
