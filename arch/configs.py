"""Named network configurations and `create_arch`, the one way the rest of the project builds networks."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .hdit import HDiTConfig, hdit_from_config
from .validate import ArchConfigError, check_hdit_fields, check_size, check_swinir_fields

NEIGHBORHOOD_7 = {"type": "neighborhood", "d_head": 64, "kernel_size": 7}
GLOBAL = {"type": "global", "d_head": 64}

NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    "hdit_XL2": {
        "type": "hdit",
        "patch_size": [4, 4],
        "widths": [384, 768],
        "depths": [2, 11],
        "self_attns": [NEIGHBORHOOD_7, GLOBAL],
        "mapping_depth": 2,
        "mapping_width": 768,
        "dropout_rate": [0.0, 0.0],
        "mapping_dropout_rate": 0.0,
    },
    "hdit_ImageNet256Sp4": {
        "type": "hdit",
        "patch_size": [4, 4],
        "widths": [256, 512, 1024],
        "depths": [2, 2, 8],
        "self_attns": [NEIGHBORHOOD_7, NEIGHBORHOOD_7, GLOBAL],
        "mapping_depth": 2,
        "mapping_width": 768,
        "dropout_rate": [0.0, 0.0, 0.0],
        "mapping_dropout_rate": 0.0,
    },
    "swinir_M": {
        "type": "swinir",
        "embed_dim": 120,
        "depths": [6] * 5,
        "num_heads": [6] * 5,
        "resi_connection": "1conv",
        "sf": 8,
    },
    "swinir_L": {
        "type": "swinir",
        "embed_dim": 180,
        "depths": [6] * 8,
        "num_heads": [6] * 8,
        "resi_connection": "1conv",
        "sf": 8,
    },
}

ARCH_TYPES = ("hdit", "swinir")
FIELD_CHECKS = {"hdit": check_hdit_fields, "swinir": check_swinir_fields}


def read_json_object(path: str | os.PathLike, what: str = "the config") -> dict:
    """The JSON object in `path`; ValueError (one line naming the file) when it is unreadable or not an
    object. Architecture configs and the config.json of saved models are read with it."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: {what} must be a JSON object")
    return config


def load_arch_config(name_or_config: str | Mapping | Path) -> dict[str, Any]:
    """A config as a dict, from a registered name, a path to a JSON file, or a mapping."""
    if isinstance(name_or_config, Mapping):
        return copy.deepcopy(dict(name_or_config))
    key = str(name_or_config)
    if key in NAMED_CONFIGS:
        return copy.deepcopy(NAMED_CONFIGS[key])
    if key.endswith(".json"):
        path = Path(key)
        if not path.is_file():
            raise ValueError(f"architecture config file {path} does not exist")
        return read_json_object(path, "an architecture config")
    raise ValueError(
        f"unknown architecture {key!r}; use one of {sorted(NAMED_CONFIGS)}, a path to a .json config, "
        "or a mapping with 'type': 'hdit' | 'swinir'"
    )


def _build_hdit(config: dict, condition_channels: int) -> nn.Module:
    hdit_config = HDiTConfig(**config)  # fields already checked by create_arch (arch.validate)
    hdit_config.in_channels += condition_channels
    return hdit_from_config(hdit_config)


def _build_swinir(config: dict, condition_channels: int) -> nn.Module:
    from .swinir import SwinIR

    config = dict(config)
    config["in_channels"] = config.get("in_channels", 3) + condition_channels
    return SwinIR(**config)


def create_arch(name_or_config: str | Mapping | Path, condition_channels: int = 0) -> nn.Module:
    """Build a network from a named config (see NAMED_CONFIGS), a JSON file path or a config mapping.

    `condition_channels` extra channels are added to the network's input channels (conditional flows
    concatenate their condition to x_t). Every field's type and the network's size are checked first
    (arch.validate): a bad or oversized config is an `ArchConfigError` (a ValueError) naming the field.
    """
    config = load_arch_config(name_or_config)
    if not isinstance(condition_channels, int) or isinstance(condition_channels, bool) or condition_channels < 0:
        raise ValueError(f"condition_channels must be a whole number >= 0, got {condition_channels!r}")
    kind = config.pop("type", None)
    is_file = isinstance(name_or_config, (str, Path)) and str(name_or_config) not in NAMED_CONFIGS
    try:
        if kind not in ARCH_TYPES:
            raise ArchConfigError(f"architecture config needs 'type' set to one of {ARCH_TYPES}, got {kind!r}")
        FIELD_CHECKS[kind](config)
        check_size(kind, config, condition_channels)  # before a byte of the network is allocated
    except ArchConfigError as error:
        raise ArchConfigError(f"{name_or_config}: {error}" if is_file else str(error)) from None
    build = _build_hdit if kind == "hdit" else _build_swinir
    return build(config, condition_channels)
