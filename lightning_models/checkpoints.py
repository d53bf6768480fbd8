"""Checkpoint formats of PMRF models, and the one function that rebuilds a model from any of them.

* Lightning ``.ckpt`` (ours and the official ones): ``state_dict`` (``model.*``, ``mmse_model.*``, and
  in old files metric modules such as ``fid.*``, which are ignored), ``hyper_parameters`` and ``ema``
  (torch-ema's state: the shadow weights as a list in ``parameters()`` order);
* Hugging Face layout (``save_pretrained``, the Hub repo): ``config.json`` with the constructor
  arguments and ``model.safetensors`` with the state dict, EMA weights already copied in;
* posterior-mean networks given as ``mmse_model_ckpt_path``: a torch-ema checkpoint (``ema``), a
  BasicSR / DifFace file (``params_ema`` or ``params``), or a ``state_dict`` whose keys may carry
  ``model.`` and ``module.`` prefixes.

`CheckpointIO` gives the trainer its loaders and savers (`load_from_checkpoint`, `from_pretrained`,
`save_pretrained`, the Hub mixin) and Lightning's checkpoint hooks. Every file is read through
`utils.weights` (tensors only, never arbitrary pickles).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from arch import NAMED_CONFIGS, create_arch
from arch.configs import read_json_object
from arch.validate import ArchConfigError
from utils.weights import (
    WeightsReadError,
    clean_state_dict,
    read_checkpoint,
    select_prefix,
    state_dict_mismatch,
)

from .ema import copy_shadows_

# A hyper-parameter a flow checkpoint carries when it was written without the Inception weights.
INCEPTION_FLAG = "inception_weights_saved"
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


def named_weights(state: Mapping[str, torch.Tensor], shadows: Sequence[torch.Tensor] | None = None
                  ) -> list[tuple[str, torch.Tensor]]:
    """The state dict's entries, then the EMA shadows named `ema.shadow_params[i]`."""
    return list(state.items()) + [(f"ema.shadow_params[{i}]", t) for i, t in enumerate(shadows or [])]


def check_finite(state: Mapping[str, torch.Tensor], source: str, shadows: Sequence[torch.Tensor] | None = None) -> None:
    """Refuse weights (and EMA shadows) with a NaN or an infinity: NonFiniteWeightsError, one line."""
    named = named_weights(state, shadows)
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
        except ValueError as error:
            raise ValueError(f"{source}: its EMA state does not fit the model ({error})") from None
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
    """config.json of a saved model; WeightsReadError (one line) when it is not a readable JSON object."""
    try:
        return read_json_object(path)
    except ValueError as error:
        raise WeightsReadError(str(error)) from None


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


# ------------------------------------------------------------------------------------- resuming


def same_stage_problem(saved: Mapping[str, Any], stage: str, conditional: bool) -> str | None:
    """Why a run of `stage` / `conditional` cannot resume from a checkpoint with hyper-parameters `saved`
    (None: it can). The one place this rule is written (train.py, on_load_checkpoint)."""
    for key, value in (("stage", stage), ("conditional", bool(conditional))):
        if key in saved and saved[key] != value:
            return (f"trained with {key}={saved[key]!r}, this run has {key}={value!r}; a run resumes only from a "
                    "checkpoint of the same stage")
    return None


def read_training_checkpoint(path: str | os.PathLike, stage: str, conditional: bool) -> dict:
    """A Lightning checkpoint to resume training from, checked: readable, written by training (state_dict
    and hyper_parameters), finite weights and EMA, the same stage. Errors name the file (WeightsReadError,
    NonFiniteWeightsError, ValueError)."""
    checkpoint = read_checkpoint(path)
    saved = checkpoint.get("hyper_parameters") or {}
    if "state_dict" not in checkpoint or not saved:
        raise WeightsReadError(f"{path}: not a training checkpoint of train.py (no state_dict / hyper_parameters)")
    check_finite(checkpoint["state_dict"], str(path), ema_shadows(checkpoint))
    problem = same_stage_problem(saved, stage, conditional)
    if problem:
        raise ValueError(f"{path}: {problem}")
    return checkpoint


# ----------------------------------------------------------------------- the trainer's side of it


class CheckpointIO(PyTorchModelHubMixin, pipeline_tag="image-to-image", license="mit"):
    """Loading and saving `MMSERectifiedFlow` in every format, and Lightning's checkpoint hooks.

    Uses the model's `hparams`, `state_dict`, `model` (the trained network), `ema` and `fid`.
    """

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()
        hparams = checkpoint.get("hyper_parameters")
        if self.hparams.get("stage") != "mmse" and isinstance(hparams, dict):
            if self.fid is None:  # no Inception weights here: the reference loads this with strict=False
                hparams[INCEPTION_FLAG] = False
            else:
                hparams.pop(INCEPTION_FLAG, None)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        problem = same_stage_problem(checkpoint.get("hyper_parameters") or {}, self.hparams.get("stage"),
                                     self.hparams.get("conditional", False))
        if problem:
            raise ValueError(f"the checkpoint was {problem}")
        if self.ema is not None and checkpoint.get("ema") is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        # The networks come from the checkpoint; the metric networks (if this module has them) stay the
        # ones read from the Inception weights file, whatever the checkpoint holds or lacks.
        state = network_state(checkpoint["state_dict"])
        state.update(metric_state(self.state_dict()))
        checkpoint["state_dict"] = state

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike,
        map_location: Any = None,
        hparams_file: str | os.PathLike | None = None,
        strict: bool | None = True,
        **overrides: Any,
    ):
        """Rebuild a model from a Lightning checkpoint (ours or the official one), safely.

        As Lightning's: `map_location` None keeps the tensors on the device they were saved from when it
        exists here (else the CPU) and puts the model there; `hparams_file` (.yaml or .csv) replaces the
        checkpoint's hyper-parameters; keyword arguments override them. The MMSE network is rebuilt from
        the checkpoint itself (`mmse_model_ckpt_path` is ignored unless overridden); the metric networks
        (`fid.*`, `inception_score.*`) are not loaded.
        """
        return load_lightning_checkpoint(
            cls, checkpoint_path, map_location, strict is not False, hparams_file=hparams_file, **overrides
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        map_location: str | torch.device = "cpu",
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        force_download: bool = False,
        strict: bool = True,
        **overrides: Any,
    ):
        """Load the Hugging Face layout (config.json + model.safetensors) from the Hub or a local folder.

        `overrides` replace constructor arguments of the saved config (e.g. `num_flow_steps=25`); any
        other keyword is a TypeError. `strict=False` lets weights be missing from (or extra in) the file.
        The weights there already are the EMA weights, so the loaded model keeps no separate EMA.
        """
        unknown = sorted(set(overrides) - cls.constructor_arguments())
        if unknown:
            raise TypeError(f"from_pretrained() got an unexpected keyword argument {unknown[0]!r}; it takes the "
                            "Hugging Face Hub arguments, map_location, strict and constructor arguments")
        hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only or None,
                   token=token, force_download=force_download or None)
        return load_pretrained(cls, pretrained_model_name_or_path, map_location, hub, strict, **overrides)

    @classmethod
    def constructor_arguments(cls) -> set[str]:
        """The keywords the constructor takes (its own, `colorization` and the alias `source_noise_std`)."""
        import inspect

        names = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        return names | {"colorization", "source_noise_std"}

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        use_ema: bool = True,
        *,
        config: dict | None = None,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        model_card_kwargs: dict | None = None,
        **push_to_hub_kwargs: Any,
    ) -> Path | str:
        """Write config.json and model.safetensors (the EMA weights in place of the raw ones, like the
        official repo), and a model card; with `push_to_hub`, upload the folder (PyTorchModelHubMixin)."""
        from safetensors.torch import save_file

        from utils.images import write_atomic

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = config or pretrained_config(self.hparams)
        state = dict(self.state_dict())
        if use_ema and self.ema is not None:
            for (name, _), average in zip(self.model.named_parameters(), self.ema.shadow_params, strict=True):
                state[f"model.{name}"] = average
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
        write_atomic(directory / HF_CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))
        write_atomic(directory / HF_WEIGHTS_NAME, lambda tmp: save_file(state, tmp))
        if not (directory / "README.md").exists():
            self.generate_model_card(**(model_card_kwargs or {})).save(directory / "README.md")
        if push_to_hub:
            return self.push_to_hub(repo_id=repo_id or directory.name, config=config,
                                    model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs)
        return directory

    def _save_pretrained(self, save_directory: Path) -> None:  # PyTorchModelHubMixin's hook
        self.save_pretrained(save_directory)
