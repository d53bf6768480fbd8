"""The EMA of the trained network: a separate copy of it, updated by one function (k-diffusion's way).

Nothing is swapped in and out: validation and testing with `use_ema` run the copy itself. Checkpoints keep
the reference's `ema` entry, torch-ema's state (`decay`, `num_updates`, `shadow_params`: the averaged
weights as a list in `parameters()` order, `collected_params`: None), which official checkpoints hold and
the reference reads; the arithmetic is torch-ema's, bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn


@torch.no_grad()
def ema_update(model: nn.Module, averaged: nn.Module, decay: float) -> None:
    """averaged ← averaged − (1 − decay)·(averaged − model) for every parameter (torch-ema's order of
    operations, so the result is its own to the bit); buffers are copied."""
    for average, param in zip(averaged.parameters(), model.parameters(), strict=True):
        average.sub_((average - param).mul_(1.0 - decay))
    for average, buffer in zip(averaged.buffers(), model.buffers(), strict=True):
        average.copy_(buffer)


def copy_shadows_(network: nn.Module, shadows: Sequence[torch.Tensor], what: str = "network") -> None:
    """Copy torch-ema's shadow weights (a list in parameters() order) into `network`. ValueError, before
    anything is copied, when their count or a shape does not fit (`what` names the network)."""
    params = list(network.parameters())
    if len(params) != len(shadows):
        raise ValueError(f"EMA state of the {what} has {len(shadows)} tensors, the network has {len(params)}")
    for index, (param, shadow) in enumerate(zip(params, shadows)):
        if param.shape != shadow.shape:
            raise ValueError(
                f"EMA tensor {index} of the {what} has shape {tuple(shadow.shape)}, "
                f"the network expects {tuple(param.shape)}"
            )
    with torch.no_grad():
        for param, shadow in zip(params, shadows):
            param.copy_(shadow)


def warmed_up_decay(decay: float, num_updates: int | None) -> float:
    """torch-ema's decay at update number n: min(decay, (1 + n) / (10 + n)) (n None: no warm-up)."""
    return decay if num_updates is None else min(decay, (1 + num_updates) / (10 + num_updates))


class EMA:
    """The EMA copy of a network (`network`, frozen, in eval mode) and torch-ema's counters.

    `shadow_params`, `collected_params`, `state_dict`, `load_state_dict` and `copy_to` keep torch-ema's
    names and meaning, for scripts and checkpoints written against it.
    """

    collected_params = None  # torch-ema's stored raw weights: never kept here

    def __init__(self, network: nn.Module, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1] (or -1 for no EMA), got {decay}")
        self.network = copy.deepcopy(network).requires_grad_(False).eval()
        self.decay = float(decay)
        self.num_updates: int | None = 0

    @property
    def shadow_params(self) -> list[nn.Parameter]:
        return list(self.network.parameters())

    def update(self, model: nn.Module) -> None:
        """One EMA step toward `model`'s current weights (the trained network)."""
        self.follow(model, buffers=False)
        if self.num_updates is not None:
            self.num_updates += 1
        ema_update(model, self.network, warmed_up_decay(self.decay, self.num_updates))

    def follow(self, model: nn.Module, buffers: bool = True) -> nn.Module:
        """The copy, on `model`'s device and (with `buffers`) with its buffers: ready to run in its place."""
        reference = next(model.parameters(), None)
        if reference is not None and next(self.network.parameters()).device != reference.device:
            self.network.to(reference.device)
        if buffers:
            with torch.no_grad():
                for average, buffer in zip(self.network.buffers(), model.buffers(), strict=True):
                    average.copy_(buffer)
        return self.network

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.Tensor]) -> None:
        """Copy the averaged weights into `parameters` (in the network's parameters() order)."""
        for param, average in zip(parameters, self.network.parameters(), strict=True):
            param.copy_(average)

    def state_dict(self) -> dict:
        """torch-ema's state, as the reference saves it (the tensors themselves, not copies)."""
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow_params": [p.detach() for p in self.network.parameters()], "collected_params": None}

    def load_state_dict(self, state: Mapping) -> None:
        """Read torch-ema's state (any `collected_params` is dropped). ValueError when it does not fit."""
        if not isinstance(state, Mapping):
            raise ValueError(f"torch-ema's state is a mapping, got {type(state).__name__}")
        decay, num_updates, shadows = state.get("decay"), state.get("num_updates"), state.get("shadow_params")
        if not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be a number in [0, 1], got {decay!r}")
        if num_updates is not None and not isinstance(num_updates, int):
            raise ValueError(f"num_updates must be a whole number, got {num_updates!r}")
        if not isinstance(shadows, (list, tuple)) or not all(isinstance(s, torch.Tensor) for s in shadows):
            raise ValueError("shadow_params must be a list of tensors")
        copy_shadows_(self.network, shadows)
        self.decay, self.num_updates = float(decay), num_updates
