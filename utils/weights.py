"""The one reader of weights files: every checkpoint and state dict of the project goes through here.

Nothing is ever unpickled beyond tensors and plain containers (``torch.load(weights_only=True)``), and
``.safetensors`` files are read with safetensors. Libraries that would unpickle a file themselves
(facexlib, BasicSR, torchmetrics, torch-fidelity) get tensors read here instead.

* `read_checkpoint(path)`: the whole file as a dict, or a one-line error naming the file;
* `load_state_dict(path)`: a network's state dict, unwrapped from ``state_dict`` / ``params_ema`` /
  ``params`` and cleaned of wrapper prefixes (`clean_state_dict`);
* `load_into(network, state, source)`: a strict load whose error lists what differs;
* `require_file(path, what, url)`: the path, or `MissingWeightsError` saying where to put the file.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

WRAPPER_KEYS = ("state_dict", "params_ema", "params", "model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


class MissingWeightsError(FileNotFoundError):
    """A weights file is not on disk; the message names it and says where it goes."""


class WeightsReadError(ValueError):
    """A weights file exists but is not a readable, safe checkpoint; the message names it."""


def require_file(path: str | os.PathLike, what: str, url: str | None = None, hint: str = "") -> Path:
    """`path` when it is a file, else MissingWeightsError naming `what`, the file and its source."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    source = f" (download it from {url})" if url else ""
    raise MissingWeightsError(f"{what} weights not found: put {path.name} at {path.resolve()}{source}{hint}")


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The contents of a .pt/.pth/.ckpt (tensors and plain containers only) or .safetensors file,
    which must be a dict."""
    checkpoint = read_weights_file(path, map_location)
    if not isinstance(checkpoint, Mapping):
        raise WeightsReadError(f"{path}: expected a dict of tensors, found a {type(checkpoint).__name__}")
    return dict(checkpoint)


def read_weights_file(path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False):
    """Whatever a weights file holds (a dict, or a list of tensors as piq's LPIPS file), read safely.
    With `mmap` a torch file's tensors are memory-mapped, not read (torch.load's `mmap`)."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, map_location)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if "global" in str(error).lower():  # a class or function reference: code could run
            raise WeightsReadError(
                f"{path}: refused: it holds pickled objects other than tensors and plain containers, which "
                "could run code when loaded; only load checkpoints from sources you trust, re-saved as tensors"
            ) from None
        raise _not_a_checkpoint(path) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, KeyError, IndexError):
        raise _not_a_checkpoint(path) from None
    return checkpoint


def _not_a_checkpoint(path: Path) -> WeightsReadError:
    size = path.stat().st_size if path.exists() else 0
    return WeightsReadError(
        f"{path}: not a readable checkpoint ({size} bytes; expected a PyTorch .pt/.pth/.ckpt or a "
        ".safetensors file): it may be truncated, corrupt or of another kind"
    )


def _read_safetensors(path: Path, map_location: str | torch.device) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise WeightsReadError(f"{path}: not a readable safetensors file ({error}); it may be truncated") from None


def clean_state_dict(state: Mapping[str, torch.Tensor], prefixes: Iterable[str] = WRAPPER_PREFIXES) -> dict:
    """Keys without the prefixes that DataParallel (`module.`), torch.compile (`_orig_mod.`) and
    Lightning (`model.`) put in front of a network's own names."""
    prefixes = tuple(prefixes)
    cleaned = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def unwrap_state_dict(checkpoint: Mapping, keys: Iterable[str] = WRAPPER_KEYS) -> dict:
    """The state dict inside a checkpoint: under the first of `keys` that holds a dict, else the
    checkpoint itself."""
    for key in keys:
        value = checkpoint.get(key)
        if isinstance(value, Mapping) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            return dict(value)
    return dict(checkpoint)


def load_state_dict(
    path: str | os.PathLike,
    keys: Iterable[str] = WRAPPER_KEYS,
    prefixes: Iterable[str] = WRAPPER_PREFIXES,
) -> dict[str, torch.Tensor]:
    """A network's state dict from any of the usual layouts, read safely, prefixes removed."""
    state = unwrap_state_dict(read_checkpoint(path), keys)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsReadError(f"{path}: holds no tensors (found keys {sorted(state)[:8]})")
    return clean_state_dict(tensors, prefixes)


def select_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix`, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def state_dict_mismatch(
    network: nn.Module | Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], strict: bool = True
) -> str:
    """What keeps `state` from loading into `network` (a module or its state dict; '' when it loads)."""
    own = network if isinstance(network, Mapping) else network.state_dict()
    wrong_shape = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state] if strict else []
    unexpected = [k for k in state if k not in own] if strict else []
    problems = []
    for label, names in (("wrong shapes (file vs network)", wrong_shape), ("missing", missing), ("unexpected", unexpected)):
        if names:
            problems.append(f"{label}: {', '.join(names[:5])}{' …' if len(names) > 5 else ''}")
    return "; ".join(problems)


def load_into(network: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load `state` into `network`; a mismatch is one WeightsReadError naming `source` and what differs."""
    problem = state_dict_mismatch(network, state, strict)
    if problem:
        raise WeightsReadError(f"{source}: does not fit {type(network).__name__} ({problem})")
    network.load_state_dict(dict(state), strict=False)
    return network
