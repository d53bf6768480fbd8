"""Reading checkpoints safely and turning their many layouts into plain network state dicts."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from arch import NAMED_CONFIGS, create_arch

HF_CONFIG_NAME = "config.json"
HF_WEIGHTS_NAME = "model.safetensors"


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint without running pickled code (weights_only / safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=str(map_location))
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path}: refusing to unpickle objects other than tensors and plain containers ({error}); "
            "only load checkpoints from sources you trust"
        ) from None
    except (RuntimeError, EOFError) as error:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({error})") from None
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    return dict(checkpoint)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def select_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix`, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def ema_shadows(checkpoint: Mapping) -> list[torch.Tensor] | None:
    """The EMA weights that torch-ema stores (a list in parameters() order), if the checkpoint has them."""
    ema = checkpoint.get("ema")
    if isinstance(ema, Mapping) and ema.get("shadow_params") is not None:
        return list(ema["shadow_params"])
    return None


def copy_shadows_(net: nn.Module, shadows: Sequence[torch.Tensor], what: str = "network") -> None:
    params = list(net.parameters())
    if len(params) != len(shadows):
        raise ValueError(f"EMA state of the {what} has {len(shadows)} tensors, the network has {len(params)}")
    with torch.no_grad():
        for index, (param, shadow) in enumerate(zip(params, shadows)):
            if param.shape != shadow.shape:
                raise ValueError(
                    f"EMA tensor {index} of the {what} has shape {tuple(shadow.shape)}, "
                    f"the network expects {tuple(param.shape)}"
                )
            param.copy_(shadow)


def mmse_network_state(checkpoint: Mapping) -> tuple[dict[str, torch.Tensor], list[torch.Tensor] | None]:
    """State dict (and EMA list) of a posterior-mean network from any of the supported layouts.

    * BasicSR / DifFace: ``params_ema`` (or ``params``), a plain state dict;
    * Lightning (our MMSE stage): ``state_dict`` with ``model.`` keys, plus ``ema`` (torch-ema state);
    * ``state_dict`` whose keys may carry ``model.`` and/or ``module.`` prefixes.
    """
    for key in ("params_ema", "params"):
        if key in checkpoint:
            return strip_prefix(checkpoint[key], "module."), None
    if "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
        if any(k.startswith("model.") for k in state):
            state = select_prefix(state, "model.")
        return strip_prefix(state, "module."), ema_shadows(checkpoint)
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return strip_prefix(strip_prefix(checkpoint, "module."), "model."), None
    raise ValueError(
        "unrecognised MMSE checkpoint layout: expected one of the keys 'params_ema', 'params', "
        f"'state_dict'; found {sorted(checkpoint)[:10]}"
    )


def load_exactly(net: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """load_state_dict with one readable ValueError for missing, unexpected or mis-shaped entries."""
    own = net.state_dict()
    wrong_shape = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if wrong_shape:
        problems.append(f"wrong shapes (checkpoint vs model): {wrong_shape[:5]}")
    if strict and missing:
        problems.append(f"missing: {missing[:8]}{' …' if len(missing) > 8 else ''}")
    if strict and unexpected:
        problems.append(f"unexpected: {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
    if problems:
        raise ValueError("; ".join(problems))
    net.load_state_dict(state, strict=False)


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def infer_arch_name(state: Mapping[str, torch.Tensor], condition_channels: int = 0) -> str | None:
    """The named configuration whose state dict has exactly these keys and shapes, if any."""
    wanted = _shapes(state)
    for name in NAMED_CONFIGS:
        with torch.device("meta"):
            candidate = create_arch(name, condition_channels)
        if _shapes(candidate.state_dict()) == wanted:
            return name
    return None


def resolve_pretrained_files(repo_or_dir: str | os.PathLike, **hub_kwargs) -> tuple[Path, Path]:
    """Paths of config.json and model.safetensors in a local directory or a Hugging Face Hub repo."""
    local = Path(repo_or_dir)
    if local.is_dir():
        files = local / HF_CONFIG_NAME, local / HF_WEIGHTS_NAME
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{local} is not a saved PMRF model: missing {', '.join(missing)}")
        return files
    from huggingface_hub import hf_hub_download

    try:
        return tuple(Path(hf_hub_download(str(repo_or_dir), name, **hub_kwargs)) for name in (HF_CONFIG_NAME, HF_WEIGHTS_NAME))
    except Exception as error:  # offline, unknown repo, no permission: one clear message
        raise RuntimeError(
            f"could not get {repo_or_dir!r} from the Hugging Face Hub ({error.__class__.__name__}). "
            f"If you are offline, download the repository elsewhere (e.g. `huggingface-cli download "
            f"{repo_or_dir} --local-dir checkpoints/{Path(str(repo_or_dir)).name}`) and pass that folder."
        ) from None
