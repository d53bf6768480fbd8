"""`FiniteGuard`: training never goes on, and never saves, with NaN or infinite numbers.

* Before every optimizer step, the loss and the gradients are checked (one reduction and one host sync
  per step; all processes decide together under DDP). A non-finite value stops training with one line
  that names the step (policy 'stop'), or skips that step (policy 'skip'): the optimizer does not step
  (AdamW leaves parameters without a gradient alone: weights, moments and step count unchanged) and
  the EMA update that would follow it is left out. Under 16-mixed precision only the loss is checked:
  there the GradScaler already skips steps whose gradients overflowed.
* Every checkpoint is checked before it is written: one with non-finite weights (or EMA weights) is
  refused, so it never replaces the last good one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

from .checkpoints import named_weights, non_finite_tensors

NAN_POLICIES = ("stop", "skip")
MAX_SKIPS_IN_A_ROW = 20  # then the run has diverged for good: skipping further would only hide it


class NonFiniteTrainingError(RuntimeError):
    """Training met a NaN or an infinity; the message names the step and the checkpoint kept."""


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every value of `tensors` is finite (`non_finite_tensors`: a sum per tensor and one host sync)."""
    return not non_finite_tensors((str(index), tensor) for index, tensor in enumerate(tensors))


def describe_problem(loss: torch.Tensor | None, checked: list[torch.Tensor]) -> str:
    """What was not finite, in words (only called once something was)."""
    if loss is not None and not bool(torch.isfinite(loss)):
        return f"the loss is {loss.item()}"
    if not all_finite(checked):
        return "the gradients are not finite" + (f" (loss {loss.item():.4g})" if loss is not None else "")
    return "a loss or gradient of another process is not finite"


def kept_checkpoint(trainer: L.Trainer) -> str:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    if path and Path(path).is_file():
        return f"the last checkpoint written before it is kept: {path}"
    return "no checkpoint had been written yet"


class FiniteGuard(L.Callback):
    def __init__(self, policy: str = "stop"):
        if policy not in NAN_POLICIES:
            raise ValueError(f"nan policy must be one of {NAN_POLICIES}, got {policy!r}")
        self.policy = policy
        self.skipped = 0
        self._skips_in_a_row = 0
        self._loss: torch.Tensor | None = None

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        loss, self._loss = self._loss, None
        checked = [loss.float().reshape(1)] if loss is not None else []
        check_gradients = not str(trainer.precision).startswith("16")
        if check_gradients:
            checked += [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = all_finite(checked)
        if trainer.world_size > 1:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            self._skips_in_a_row = 0
            return
        step = trainer.global_step + 1
        what = describe_problem(loss, checked)
        if self.policy == "stop" or self._skips_in_a_row >= MAX_SKIPS_IN_A_ROW:
            more = f" after {self._skips_in_a_row} skipped steps in a row" if self.policy == "skip" else ""
            hint = "" if self.policy == "skip" else ", or pass --nan_policy skip to skip such steps"
            raise NonFiniteTrainingError(
                f"training stopped at step {step} (epoch {trainer.current_epoch}){more}: {what}; "
                f"{kept_checkpoint(trainer)}. Lower --lr or check the data{hint}"
            )
        optimizer.zero_grad(set_to_none=True)  # the step that follows changes nothing
        skip_next_ema_update(pl_module)
        self.skipped += 1
        self._skips_in_a_row += 1
        if trainer.is_global_zero:
            print(f"warning: step {step} skipped: {what}", file=sys.stderr, flush=True)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Lightning calls the callbacks' hook before the module's, which adds the `ema` entry: read the copy
        ema = getattr(pl_module, "ema", None)
        shadows = (checkpoint.get("ema") or {}).get("shadow_params") or (ema.shadow_params if ema is not None else [])
        bad = non_finite_tensors(named_weights(checkpoint.get("state_dict", {}), shadows))
        if bad:
            raise NonFiniteTrainingError(
                f"training stopped at step {trainer.global_step} (epoch {trainer.current_epoch}): {len(bad)} weight "
                f"tensor(s) are NaN or infinite (first: {bad[0]}), so no checkpoint was written; "
                f"{kept_checkpoint(trainer)}. Lower --lr"
            )


def skip_next_ema_update(pl_module) -> None:
    """Leave out the next update of the module's EMA (`pl_module.ema.update`), wherever the module makes it:
    after the optimizer step, or before the next zero_grad. Later updates run as usual."""
    ema = getattr(pl_module, "ema", None)
    if ema is None or "update" in vars(ema):  # none, or already left out
        return

    def skip_once(*args, **kwargs) -> None:
        del ema.update  # the class's update again

    ema.update = skip_once
