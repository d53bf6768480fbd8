"""Checkpoint formats of PMRF models, and the one function that rebuilds a model from any of them.

* Lightning ``.ckpt`` (ours and the official ones): ``state_dict`` (``model.*``, ``mmse_model.*``, and
  in old files metric modules such as ``fid.*``, which are ignored), ``hyper_parameters`` and ``ema``
  (torch-ema's state: the shadow weights as a list in ``parameters()`` order);
* Hugging Face layout (``save_pretrained``, the Hub repo): ``config.json`` with the constructor
  arguments and ``model.safetensors`` with the state dict, EMA weights already copied in;
* posterior-mean networks given as ``mmse_model_ckpt_path``: a torch-ema checkpoint (``ema``), a
  BasicSR / DifFace file (``params_ema`` or ``params``), or a ``state_dict`` whose keys may carry
  ``model.`` and ``module.`` prefixes.

Every file is read through `utils.weights` (tensors only, never arbitrary pickles).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arch import NAMED_CONFIGS, create_arch
from arch.validate import ArchConfigError
from utils.weights import (
    WeightsReadError,
    clean_state_dict,
    read_checkpoint,
    select_prefix,
    state_dict_mismatch,
)

HF_CONFIG_NAME = "config.json"
HF_WEIGHTS_NAME = "model.safetensors"
NETWORK_PREFIXES = ("model.", "mmse_model.")
METRIC_PREFIXES = ("fid.", "inception_score.")  # the reference's FID / IS Inception networks


# ------------------------------------------------------------------------------- finite weights


class NonFiniteWeightsError(ValueError):
    """A checkpoint holds NaN or infinite weights (its training run diverged); the message names it."""


def non_finite_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity. A sum per tensor (a NaN or an
    infinity makes it non-finite; one pass, nothing allocated) and one host sync per device; the names
    are looked for only when something is wrong."""
    floats = [(name, t.detach()) for name, t in named if isinstance(t, torch.Tensor) and t.is_floating_point()]
    sums: dict[torch.device, list[torch.Tensor]] = {}
    for _, tensor in floats:
        wide = torch.float64 if tensor.dtype == torch.float64 else torch.float32  # no float16 overflow
        sums.setdefault(tensor.device, []).append(tensor.sum(dtype=wide).reshape(1))
    if all(bool(torch.isfinite(torch.cat(device_sums)).all()) for device_sums in sums.values()):
        return []
    return [name for name, t in floats if not bool(torch.isfinite(t).all())]


def check_finite(state: Mapping[str, torch.Tensor], source: str, shadows: Sequence[torch.Tensor] | None = None) -> None:
    """Refuse weights (and EMA shadows) with a NaN or an infinity: NonFiniteWeightsError, one line."""
    named = list(state.items()) + [(f"ema.shadow_params[{i}]", t) for i, t in enumerate(shadows or [])]
    bad = non_finite_tensors(named)
    if bad:
        values = sum(int((~torch.isfinite(t)).sum()) for name, t in named if name in set(bad))
        raise NonFiniteWeightsError(
            f"{source}: {values:,} weight value(s) in {len(bad)} tensor(s) are NaN or infinite (first: {bad[0]}); "
            "the training run that wrote it diverged: use an earlier checkpoint"
        )


# ------------------------------------------------------------------------- posterior-mean networks


def ema_shadows(checkpoint: Mapping) -> list[torch.Tensor] | None:
    """The EMA weights torch-ema stores (a list in parameters() order), if the checkpoint has them."""
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
    """State dict (and EMA list) of a posterior-mean network from any of the supported layouts."""
    for key in ("params_ema", "params"):
        if key in checkpoint:
            return clean_state_dict(checkpoint[key], ("module.",)), None
    if "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
        if any(k.startswith("model.") for k in state):
            state = select_prefix(state, "model.")
        return clean_state_dict(state, ("module.",)), ema_shadows(checkpoint)
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return clean_state_dict(checkpoint, ("module.", "model.")), None
    raise ValueError(
        "unrecognised MMSE checkpoint layout: expected one of the keys 'params_ema', 'params', "
        f"'state_dict'; found {sorted(checkpoint)[:10]}"
    )


def infer_arch_name(state: Mapping[str, torch.Tensor], condition_channels: int = 0) -> str | None:
    """The named configuration whose state dict has exactly these keys and shapes, if any."""
    wanted = {k: tuple(v.shape) for k, v in state.items()}
    for name in NAMED_CONFIGS:
        with torch.device("meta"):
            candidate = create_arch(name, condition_channels)
        if {k: tuple(v.shape) for k, v in candidate.state_dict().items()} == wanted:
            return name
    return None


def load_mmse_network(ckpt_path: str | os.PathLike | None, arch: str | dict | None) -> tuple[nn.Module, str | dict]:
    """The frozen posterior-mean network (eval mode, no gradients) and its architecture."""
    state, shadows = None, None
    if ckpt_path is not None:
        checkpoint = read_checkpoint(ckpt_path)
        state, shadows = mmse_network_state(checkpoint)
        check_finite(state, str(ckpt_path), shadows)
        if arch is None:
            arch = (checkpoint.get("hyper_parameters") or {}).get("arch") or infer_arch_name(state)
        if arch is None:
            raise ValueError(f"{ckpt_path}: cannot tell the MMSE network's architecture; pass mmse_model_arch")
    net = create_arch(arch)
    if state is not None:
        problem = state_dict_mismatch(net, state)
        if problem:
            raise ValueError(f"{ckpt_path}: does not match MMSE architecture {arch!r}: {problem}")
        net.load_state_dict(state)
        if shadows is not None:
            copy_shadows_(net, shadows, "MMSE network")
    return net.requires_grad_(False).eval(), arch


# ----------------------------------------------------------------------------------- whole models


def network_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The networks' entries of a module state dict (drops `fid.*`, `inception_score.*`, ...)."""
    return {k: v for k, v in state.items() if k.startswith(NETWORK_PREFIXES)}


def metric_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The metric networks' entries of a module state dict (`fid.*`, `inception_score.*`)."""
    return {k: v for k, v in state.items() if k.startswith(METRIC_PREFIXES)}


def rebuild(
    cls,
    hparams: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    source: str,
    ema_state: Mapping | None = None,
    strict: bool = True,
    **overrides: Any,
):
    """A model of class `cls` from its constructor arguments and weights, whatever file they came from.

    The posterior-mean network is rebuilt from `state` (its original checkpoint path is dropped unless
    overridden), its architecture read from the hyper-parameters or recognised from the weights.
    """
    check_finite(network_state(state), source, (ema_state or {}).get("shadow_params"))
    hparams = {**dict(hparams), **overrides}
    if "mmse_model_ckpt_path" not in overrides:
        hparams["mmse_model_ckpt_path"] = None
    mmse_state = select_prefix(state, "mmse_model.")
    if mmse_state and hparams.get("mmse_model_arch") is None:
        hparams["mmse_model_arch"] = infer_arch_name(mmse_state)
        if hparams["mmse_model_arch"] is None:
            raise ValueError(f"{source}: cannot tell the MMSE network's architecture; pass mmse_model_arch=")
    model = cls(**hparams)
    state = network_state(state)
    problem = state_dict_mismatch(model, state, strict)
    if problem:
        raise ValueError(f"{source}: network weights do not match the model: {problem}")
    model.load_state_dict(state, strict=False)
    if model.ema is not None and ema_state is not None:
        try:
            model.ema.load_state_dict(ema_state)
        except (ValueError, KeyError, RuntimeError, AssertionError) as error:
            raise ValueError(f"{source}: its EMA state does not fit the model ({error})") from None
        model.ema.collected_params = None  # older checkpoints of this project kept a copy of the weights
    return model


def read_hparams_file(path: str | os.PathLike) -> dict:
    """Hyper-parameters from a .yaml/.yml or .csv file, read as Lightning's load_from_checkpoint reads them."""
    from lightning.pytorch.core.saving import load_hparams_from_tags_csv, load_hparams_from_yaml

    extension = Path(path).suffix.lower()
    if not Path(path).is_file():
        raise FileNotFoundError(f"hparams_file {path}: no such file")
    if extension == ".csv":
        return dict(load_hparams_from_tags_csv(str(path)))
    if extension in (".yml", ".yaml"):
        return dict(load_hparams_from_yaml(str(path), use_omegaconf=False))
    raise ValueError(f"hparams_file {path}: a .csv, .yml or .yaml file is required")


def load_lightning_checkpoint(cls, path: str | os.PathLike, map_location=None, strict: bool = True,
                              hparams_file: str | os.PathLike | None = None, **overrides):
    """A model from a Lightning checkpoint. `map_location` None is Lightning's default: tensors stay on
    the device they were saved from when that device exists here, else the CPU, and the model follows them."""
    from lightning.pytorch.core.saving import _default_map_location

    checkpoint = read_checkpoint(path, _default_map_location if map_location is None else map_location)
    if "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise WeightsReadError(f"{path}: not a Lightning checkpoint (needs 'state_dict' and 'hyper_parameters')")
    hparams = read_hparams_file(hparams_file) if hparams_file is not None else checkpoint["hyper_parameters"]
    state = checkpoint["state_dict"]
    try:
        model = rebuild(cls, hparams, state, str(path), checkpoint.get("ema"), strict, **overrides)
    except ArchConfigError as error:
        raise ArchConfigError(f"{path}: {error}") from None
    if map_location is None:
        device = next((v.device for v in network_state(state).values() if isinstance(v, torch.Tensor)), None)
        return model.to(device) if device is not None else model
    return model.to(map_location) if isinstance(map_location, (str, torch.device)) else model


def resolve_pretrained_files(repo_or_dir: str | os.PathLike, **hub_kwargs) -> tuple[Path, Path]:
    """Paths of config.json and model.safetensors in a local folder or a Hugging Face Hub repo."""
    local = Path(repo_or_dir)
    if local.is_dir():
        files = local / HF_CONFIG_NAME, local / HF_WEIGHTS_NAME
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{local} is not a saved PMRF model: missing {', '.join(missing)}")
        return files
    from huggingface_hub import hf_hub_download

    hub_kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
    try:
        return tuple(Path(hf_hub_download(str(repo_or_dir), name, **hub_kwargs)) for name in (HF_CONFIG_NAME, HF_WEIGHTS_NAME))
    except Exception as error:  # offline, unknown repo, no permission: one clear message
        raise RuntimeError(
            f"could not get {repo_or_dir!r} from the Hugging Face Hub ({error.__class__.__name__}). "
            f"If you are offline, download the repository elsewhere (e.g. `hf download "
            f"{repo_or_dir} --local-dir checkpoints/{Path(str(repo_or_dir)).name}`) and pass that folder."
        ) from None


def read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsReadError(f"{path}: not a readable JSON config ({error})") from None
    if not isinstance(config, dict):
        raise WeightsReadError(f"{path}: the config must be a JSON object")
    return config


def load_pretrained(cls, repo_or_dir: str | os.PathLike, map_location="cpu", hub_kwargs=None, strict: bool = True,
                    **overrides):
    """A model from the Hugging Face layout; its weights already are the EMA weights, so no EMA is kept."""
    config_path, weights_path = resolve_pretrained_files(repo_or_dir, **(hub_kwargs or {}))
    config = read_config(config_path)
    config["ema_decay"] = -1
    state = read_checkpoint(weights_path, map_location or "cpu")
    try:
        model = rebuild(cls, config, state, str(weights_path), strict=strict, **overrides)
    except ArchConfigError as error:
        raise ArchConfigError(f"{config_path}: {error}") from None
    return model.to(map_location) if map_location is not None else model


def pretrained_config(hparams: Mapping[str, Any]) -> dict:
    """config.json of the Hugging Face layout: the constructor arguments, JSON-ready."""
    config = {k: v for k, v in dict(hparams).items() if not k.startswith("_")}
    config["mmse_model_ckpt_path"] = None
    if "betas" in config:
        config["betas"] = list(config["betas"])
    return config
