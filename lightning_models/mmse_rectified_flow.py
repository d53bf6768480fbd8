"""PMRF and its baselines in one Lightning module (spec §1 and §3).

Stages and methods (the method name is also the test-results folder):

===============================  ===========  ===========  ==========================  ==========================
method                           stage        conditional  source sample z0            network input
===============================  ===========  ===========  ==========================  ==========================
pmrf                             flow         no           clip(f(y)) + σ_s·n          x_t
posterior_conditioned_on_mmse    flow         yes          n                           [x_t, clip(f(y))]
posterior_conditioned_on_y       flow         yes          n                           [x_t, y]
naive_flow                       naive_flow   no           y (+ σ_s·n)                 x_t
mmse                             mmse         no           —                           y
===============================  ===========  ===========  ==========================  ==========================

f is the frozen posterior-mean (MMSE) network `mmse_model`; the trained network is `model`.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from arch import HDiT, create_arch
from arch.configs import load_arch_config

from . import loading
from .flow import T_SCHEDULES, euler_sample, interpolate, sample_times
from .validation import ValidationImages, ValidationMetrics

log = logging.getLogger(__name__)

STAGES = ("mmse", "flow", "naive_flow")
NETWORK_PREFIXES = ("model.", "mmse_model.")


def unwrap(net: nn.Module | None) -> nn.Module | None:
    """The network behind a torch.compile wrapper."""
    return getattr(net, "_orig_mod", net)


def run_network(net: nn.Module, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """Call HDiT with its time input, and any other network (SwinIR) on the image alone."""
    if isinstance(unwrap(net), HDiT):
        if x.shape[1] == 1 and unwrap(net).in_channels == 3:
            x = x.expand(-1, 3, -1, -1)  # gray measurement into an RGB network
        return net(x, t)
    return net(x)


def self_contained(arch: str | dict) -> str | dict:
    """Keep named architectures by name; inline JSON-file configs so checkpoints do not need the file."""
    if isinstance(arch, str) and arch.endswith(".json"):
        return load_arch_config(arch)
    return arch


class MMSERectifiedFlow(L.LightningModule):
    def __init__(
        self,
        stage: str,
        arch: str | dict,
        conditional: bool = False,
        mmse_model_ckpt_path: str | None = None,
        mmse_model_arch: str | dict | None = None,
        lr: float = 5e-4,
        weight_decay: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        mmse_noise_std: float | None = 0.1,
        num_flow_steps: int = 50,
        ema_decay: float = 0.9999,
        eps: float = 0.0,
        t_schedule: str = "stratified_uniform",
        **kwargs: Any,
    ):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if t_schedule not in T_SCHEDULES:
            raise ValueError(f"t_schedule must be one of {T_SCHEDULES}, got {t_schedule!r}")
        self.save_hyperparameters()
        self.colorization = bool(kwargs.get("colorization", False))
        unknown = sorted(set(kwargs) - {"colorization"})
        if unknown:
            log.debug("ignoring unknown hyper-parameters %s", unknown)

        self.stage, self.conditional = stage, bool(conditional)
        self.eps, self.t_schedule = float(eps), t_schedule
        self.mmse_noise_std = float(mmse_noise_std or 0.0)
        self.num_flow_steps = int(num_flow_steps)
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(float(b) for b in betas)
        self.use_ema = True  # switch off to validate / test / infer with the raw weights

        self.model = create_arch(arch, self._condition_channels(mmse_model_ckpt_path, mmse_model_arch))
        self.hparams["arch"] = self_contained(arch)
        self.mmse_model = self._build_mmse_model(mmse_model_ckpt_path, mmse_model_arch)
        self.ema = self._build_ema(ema_decay)
        # Attributes set by the programs, not hyper-parameters.
        self.test_results_dir: str | None = None
        self.test_num_flow_steps: list[int] = [self.num_flow_steps]
        self._validation_metrics: ValidationMetrics | None = None
        self._validation_images = ValidationImages()

    # ----------------------------------------------------------------------------------------- set-up

    def _has_mmse_source(self, ckpt_path, arch) -> bool:
        return self.stage == "flow" and (ckpt_path is not None or arch is not None)

    def _condition_channels(self, mmse_ckpt_path, mmse_arch) -> int:
        if not (self.stage == "flow" and self.conditional):
            return 0
        if self._has_mmse_source(mmse_ckpt_path, mmse_arch):
            return 3  # conditioned on the posterior mean
        return 1 if self.colorization else 3  # conditioned on y

    def _build_mmse_model(self, ckpt_path: str | None, arch: str | dict | None) -> nn.Module | None:
        if self.stage != "flow":
            return None
        if not self._has_mmse_source(ckpt_path, arch):
            if not self.conditional:
                raise ValueError(
                    "PMRF (stage 'flow', not conditional) needs a posterior-mean model: "
                    "give mmse_model_ckpt_path (and mmse_model_arch unless the checkpoint records it)"
                )
            return None
        state, shadows = None, None
        if ckpt_path is not None:
            checkpoint = loading.read_checkpoint(ckpt_path)
            state, shadows = loading.mmse_network_state(checkpoint)
            if arch is None:
                arch = (checkpoint.get("hyper_parameters") or {}).get("arch") or loading.infer_arch_name(state)
            if arch is None:
                raise ValueError(f"{ckpt_path}: cannot tell the MMSE network's architecture; pass mmse_model_arch")
        net = create_arch(arch)
        self.hparams["mmse_model_arch"] = self_contained(arch)  # checkpoints rebuild f without its file
        if state is not None:
            try:
                loading.load_exactly(net, state)
            except ValueError as error:
                raise ValueError(f"{ckpt_path}: does not match MMSE architecture {arch!r}: {error}") from None
            if shadows is not None:
                loading.copy_shadows_(net, shadows, "MMSE network")
        net.requires_grad_(False)
        return net.eval()

    def _build_ema(self, decay: float):
        if decay is None or decay < 0:
            return None
        from torch_ema import ExponentialMovingAverage

        return ExponentialMovingAverage(self.model.parameters(), decay=decay)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.mmse_model is not None:
            self.mmse_model.eval()  # frozen: never in training mode (no stochastic depth)
        return self

    def check_input_size(self, h: int, w: int) -> None:
        """Raise ValueError when an h×w image is a size the networks cannot take."""
        for net in (self.model, self.mmse_model):
            net = unwrap(net)
            if net is not None and hasattr(net, "check_input_size"):
                net.check_input_size(h, w)

    @property
    def method_name(self) -> str:
        if self.stage != "flow":
            return self.stage
        if not self.conditional:
            return "pmrf"
        return "posterior_conditioned_on_mmse" if self.mmse_model is not None else "posterior_conditioned_on_y"

    # ------------------------------------------------------------------------------------------ EMA

    def _ema_on_device(self):
        if self.ema is not None and self.ema.shadow_params and self.ema.shadow_params[0].device != self.device:
            self.ema.to(self.device)
        return self.ema

    @contextmanager
    def ema_scope(self, enabled: bool | None = None):
        """Temporarily swap in the EMA weights (no-op without EMA or with `use_ema` off)."""
        enabled = self.use_ema if enabled is None else enabled
        ema = self._ema_on_device()
        if not enabled or ema is None:
            yield
            return
        params = list(self.model.parameters())
        ema.store(params)
        ema.copy_to(params)
        try:
            yield
        finally:
            ema.restore(params)

    def copy_ema_to_model(self) -> None:
        """Make the EMA weights the model's weights for good (inference)."""
        ema = self._ema_on_device()
        if ema is not None:
            ema.copy_to(self.model.parameters())

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self._ema_on_device() is not None:
            self.ema.update(self.model.parameters())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None and checkpoint.get("ema") is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k.startswith(NETWORK_PREFIXES)
        }

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.model.parameters(), lr=self.lr, betas=self.betas, eps=1e-8, weight_decay=self.weight_decay
        )

    # --------------------------------------------------------------------------------------- method

    @torch.no_grad()
    def posterior_mean(self, y: torch.Tensor) -> torch.Tensor:
        """clip(f(y), 0, 1) from the frozen MMSE network."""
        return run_network(self.mmse_model, y).clamp(0, 1)

    def _noise_like(self, reference: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        shape = (reference.shape[0], 3, *reference.shape[2:])
        if generator is None:
            return torch.randn(shape, device=reference.device, dtype=reference.dtype)
        return torch.randn(shape, generator=generator, device=generator.device).to(reference)

    def source_and_condition(
        self,
        y: torch.Tensor,
        non_noisy_z0: torch.Tensor | None = None,
        mmse: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(z0, condition, posterior mean) for a flow stage; the posterior mean is None without f."""
        if self.mmse_model is not None and mmse is None and (self.conditional or non_noisy_z0 is None):
            mmse = self.posterior_mean(y)
        if self.stage == "naive_flow":
            z0 = non_noisy_z0 if non_noisy_z0 is not None else y
            z0 = z0.expand(-1, 3, -1, -1) if z0.shape[1] == 1 else z0
            if self.mmse_noise_std > 0:
                z0 = z0 + self.mmse_noise_std * self._noise_like(y, generator)
            return z0, None, mmse
        if self.conditional:
            condition = mmse if self.mmse_model is not None else y
            return self._noise_like(y, generator), condition, mmse
        z0 = non_noisy_z0 if non_noisy_z0 is not None else mmse
        return z0 + self.mmse_noise_std * self._noise_like(y, generator), None, mmse

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            x_t = torch.cat([x_t, condition.to(x_t.dtype)], dim=1)
        return run_network(self.model, x_t, t)

    def training_loss(self, batch: dict) -> torch.Tensor:
        x, y = batch["x"], batch["y"]
        if self.stage == "mmse":
            return F.mse_loss(run_network(self.model, y), x)
        z0, condition, _ = self.source_and_condition(y, batch.get("non_noisy_z0"))
        world_size = self.trainer.world_size if self._trainer is not None else 1
        t = sample_times(x.shape[0], self.t_schedule, self.eps, self.global_rank, world_size, device=x.device)
        v = self.velocity(interpolate(x, z0, t), t, condition)
        return F.mse_loss(v, x - z0)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["x"].shape[0])
        return loss

    # ------------------------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate_reconstructions(
        self,
        x: torch.Tensor | None,
        y: torch.Tensor,
        non_noisy_z0: torch.Tensor | None,
        num_flow_steps: int,
        result_device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """(final estimate in [0, 1], trajectory from z0 on, source samples) — the reference's interface."""
        if self.stage == "mmse":
            xhat = run_network(self.model, y).clamp(0, 1).to(result_device)
            return xhat, [xhat], None
        z0, condition, _ = self.source_and_condition(y, non_noisy_z0, generator=generator)
        final, trajectory = euler_sample(
            lambda xt, t: self.velocity(xt, t, condition), z0, num_flow_steps, self.eps, keep_trajectory=True
        )
        trajectory = [state.to(result_device) for state in trajectory]
        return final.clamp(0, 1).to(result_device), trajectory, z0.to(result_device)

    @torch.no_grad()
    def restore(
        self, y: torch.Tensor, num_flow_steps: int | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Inference on a batch: {'xhat', and 'mmse' when the model has a posterior-mean network}.

        The MMSE network runs once and serves both as the flow's source and as the saved MMSE output.
        """
        steps = num_flow_steps or self.num_flow_steps
        if self.stage == "mmse":
            return {"xhat": run_network(self.model, y).clamp(0, 1)}
        mmse = self.posterior_mean(y) if self.mmse_model is not None else None
        z0, condition, mmse = self.source_and_condition(y, mmse=mmse, generator=generator)
        final, _ = euler_sample(lambda xt, t: self.velocity(xt, t, condition), z0, steps, self.eps)
        result = {"xhat": final.clamp(0, 1)}
        if mmse is not None:
            result["mmse"] = mmse
        return result

    def forward(self, y: torch.Tensor, num_flow_steps: int | None = None) -> torch.Tensor:
        return self.restore(y, num_flow_steps)["xhat"]

    # ------------------------------------------------------------------------------------ validation

    def on_validation_epoch_start(self) -> None:
        self._ema_swap_in()
        if self.stage != "mmse" and self._validation_metrics is None:
            self._validation_metrics = ValidationMetrics.create()
        if self._validation_metrics is not None:
            self._validation_metrics.to(self.device).reset()
        self._validation_images.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x, y = batch["x"], batch["y"]
        xhat, trajectory, z0 = self.generate_reconstructions(
            x, y, batch.get("non_noisy_z0"), self.num_flow_steps, self.device
        )
        self.log("val_metrics/mse", F.mse_loss(xhat, x), sync_dist=True, batch_size=x.shape[0])
        if self._validation_metrics is not None:
            self._validation_metrics.update(xhat, x)
        if batch_idx == 0:
            mmse = self.posterior_mean(y) if self.mmse_model is not None else None
            self._validation_images.keep(x=x, y=y, xhat=xhat, trajectory=trajectory, z0=z0, mmse=mmse)

    def on_validation_epoch_end(self) -> None:
        if self._validation_metrics is not None:
            for name, value in self._validation_metrics.compute().items():
                self.log(f"val_metrics/{name}", value, sync_dist=True)
        log_dir = self.trainer.log_dir if self._trainer is not None else None  # a collective: every rank asks
        if self.global_rank == 0 and log_dir:
            self._validation_images.save(Path(log_dir) / "val_images", self.current_epoch, self.logger)
        self._ema_swap_out()

    def _ema_swap_in(self) -> None:
        """Enter ema_scope for a whole validation / test epoch (left in _ema_swap_out)."""
        self._ema_context = self.ema_scope()
        self._ema_context.__enter__()

    def _ema_swap_out(self) -> None:
        context, self._ema_context = getattr(self, "_ema_context", None), None
        if context is not None:
            context.__exit__(None, None, None)

    # ------------------------------------------------------------------------------------------ test

    def on_test_epoch_start(self) -> None:
        self._ema_swap_in()

    def on_test_epoch_end(self) -> None:
        self._ema_swap_out()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        from utils.images import save_rgb, tensor_to_uint8

        if self.test_results_dir is None:
            raise RuntimeError("set model.test_results_dir before testing")
        root = Path(self.test_results_dir) / self.method_name
        names, y = batch["img_file_name"], batch["y"]

        def save(folder: Path, images: torch.Tensor) -> None:
            for name, image in zip(names, images):
                save_rgb(tensor_to_uint8(image), folder / name)

        save(root / "y", y)
        if self.stage == "mmse":
            save(root / "xhat", self.restore(y)["xhat"])
            return
        mmse = self.posterior_mean(y) if self.mmse_model is not None else None
        if mmse is not None:
            save(root / "mmse_samples", mmse)
        for steps in self.test_num_flow_steps:
            z0, condition, _ = self.source_and_condition(y, batch.get("non_noisy_z0"), mmse=mmse)
            final, _ = euler_sample(partial(self.velocity, condition=condition), z0, steps, self.eps)
            save(root / f"num_flow_steps={steps}" / "xhat", final.clamp(0, 1))
            save(root / f"num_flow_steps={steps}" / "source_distribution_samples", z0.clamp(0, 1))

    # ------------------------------------------------------------------------------ checkpoint I/O

    def _load_network_state(self, state: dict[str, torch.Tensor], source: str, strict: bool = True) -> None:
        state = {k: v for k, v in state.items() if k.startswith(NETWORK_PREFIXES)}  # drop fid.*, etc.
        try:
            loading.load_exactly(self, state, strict)
        except ValueError as error:
            raise ValueError(f"{source}: network weights do not match the model: {error}") from None

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike,
        map_location: str | torch.device | None = None,
        hparams_file: str | None = None,
        strict: bool | None = True,
        **overrides: Any,
    ) -> MMSERectifiedFlow:
        """Rebuild a model from a Lightning checkpoint (ours or the official one), safely.

        The MMSE network is rebuilt from the checkpoint itself: `mmse_model_ckpt_path` defaults to None
        and `mmse_model_arch` is taken from the hyper-parameters or recognised from the weights.
        Metric modules stored in old checkpoints (`fid.*`, `inception_score.*`) are ignored.
        """
        checkpoint = loading.read_checkpoint(checkpoint_path, map_location or "cpu")
        if "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
            raise ValueError(f"{checkpoint_path}: not a Lightning checkpoint (needs 'state_dict' and 'hyper_parameters')")
        hparams = dict(checkpoint["hyper_parameters"])
        hparams.update(overrides)
        hparams.setdefault("mmse_model_ckpt_path", None)
        if "mmse_model_ckpt_path" not in overrides:
            hparams["mmse_model_ckpt_path"] = None
        state = checkpoint["state_dict"]
        mmse_state = loading.select_prefix(state, "mmse_model.")
        if mmse_state and hparams.get("mmse_model_arch") is None:
            hparams["mmse_model_arch"] = loading.infer_arch_name(mmse_state)
            if hparams["mmse_model_arch"] is None:
                raise ValueError(f"{checkpoint_path}: cannot tell the MMSE network's architecture; pass mmse_model_arch=")
        model = cls(**hparams)
        model._load_network_state(state, str(checkpoint_path), strict=strict is not False)
        if model.ema is not None and checkpoint.get("ema") is not None:
            model.ema.load_state_dict(checkpoint["ema"])
        return model.to(map_location) if map_location is not None else model

    @classmethod
    def from_pretrained(cls, repo_id_or_dir: str | os.PathLike, map_location: str = "cpu", **hub_kwargs) -> MMSERectifiedFlow:
        """Load the Hugging Face layout (config.json + model.safetensors) from the Hub or a local folder.

        The weights there already are the EMA weights, so the loaded model has no separate EMA.
        """
        config_path, weights_path = loading.resolve_pretrained_files(repo_id_or_dir, **hub_kwargs)
        config = json.loads(Path(config_path).read_text())
        config["mmse_model_ckpt_path"] = None
        config["ema_decay"] = -1
        state = loading.read_checkpoint(weights_path, map_location)
        mmse_state = loading.select_prefix(state, "mmse_model.")
        if mmse_state and config.get("mmse_model_arch") is None:
            config["mmse_model_arch"] = loading.infer_arch_name(mmse_state)
        model = cls(**config)
        model._load_network_state(state, str(weights_path))
        return model.to(map_location)

    def save_pretrained(self, save_directory: str | os.PathLike, use_ema: bool = True) -> Path:
        """Write config.json and model.safetensors (EMA weights copied in, like the official repo)."""
        from safetensors.torch import save_file

        from utils.images import write_atomic

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in dict(self.hparams).items() if k != "mmse_model_ckpt_path"}
        config["mmse_model_ckpt_path"] = None
        config["betas"] = list(config.get("betas", self.betas))
        with self.ema_scope(enabled=use_ema):
            state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.state_dict().items()}
        write_atomic(directory / loading.HF_CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))
        write_atomic(directory / loading.HF_WEIGHTS_NAME, lambda tmp: save_file(state, tmp))
        return directory
