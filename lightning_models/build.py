"""Building a method from the trainer's constructor arguments: which row of the methods table it is, its
trained network (from `arch`), its frozen posterior-mean network f (read from its checkpoint by
`checkpoints.load_mmse_network`), and the architectures a checkpoint records so that it rebuilds
without their files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import nn

from arch import create_arch
from arch.configs import load_arch_config

from .checkpoints import load_mmse_network
from .pmrf import Method, check_networks, condition_channels, method_for


def self_contained(arch: str | dict) -> str | dict:
    """Keep named architectures by name; inline JSON-file configs so checkpoints do not need the file."""
    if isinstance(arch, str) and arch.endswith(".json"):
        return load_arch_config(arch)
    return arch


def method_of(stage: str, conditional: bool, mmse_model_ckpt_path=None, mmse_model_arch=None) -> Method:
    """The method these arguments train (ValueError, one line, for a combination that is none): a flow
    given a posterior-mean network (its checkpoint or its architecture) is PMRF or conditioned on f."""
    has_posterior_mean = stage == "flow" and (mmse_model_ckpt_path is not None or mmse_model_arch is not None)
    return method_for(stage, bool(conditional), has_posterior_mean)


@dataclass
class Networks:
    """A method's row and networks, and the architectures to record in its hyper-parameters."""

    method: Method
    model: nn.Module
    mmse_model: nn.Module | None
    arch: str | dict
    mmse_model_arch: str | dict | None  # None: the method has no f


def build_networks(
    stage: str,
    arch: str | dict,
    conditional: bool = False,
    mmse_model_ckpt_path: str | os.PathLike | None = None,
    mmse_model_arch: str | dict | None = None,
    colorization: bool = False,
) -> Networks:
    """The networks of the method these arguments name; refuses, in one line, a network the method cannot
    call (e.g. a SwinIR, which takes no t, as a flow's velocity)."""
    method = method_of(stage, conditional, mmse_model_ckpt_path, mmse_model_arch)
    model = create_arch(arch, condition_channels(method, 1 if colorization else 3))
    mmse_model = None
    if method.uses_posterior_mean:
        mmse_model, mmse_model_arch = load_mmse_network(mmse_model_ckpt_path, mmse_model_arch)
    check_networks(method, model, mmse_model)
    recorded = self_contained(mmse_model_arch) if mmse_model is not None else None
    return Networks(method, model, mmse_model, self_contained(arch), recorded)
