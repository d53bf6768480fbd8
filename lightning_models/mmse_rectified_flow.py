"""`MMSERectifiedFlow`: the Lightning module that trains, validates and tests PMRF and its baselines.

The method itself is `lightning_models.pmrf.PMRF` (one screen: posterior mean, source, velocity, loss,
sampler). This module is the trainer around it: the training/validation/test steps, AdamW, the EMA of
the trained network's weights, logging, and the checkpoint formats (`lightning_models.checkpoints`).
Its constructor arguments, state-dict keys (`model.*`, `mmse_model.*`) and checkpoint layout are the
reference's, so official checkpoints load unchanged.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch.nn import functional as F

from arch import create_arch
from arch.configs import load_arch_config

from . import checkpoints
from .flow import T_SCHEDULES, sample_times
from .pmrf import METHODS, PMRF, STAGES, check_networks, method_for
from .validation import ValidationImages, ValidationMetrics

log = logging.getLogger(__name__)
__all__ = ["MMSERectifiedFlow", "METHODS", "STAGES"]


def self_contained(arch: str | dict) -> str | dict:
    """Keep named architectures by name; inline JSON-file configs so checkpoints do not need the file."""
    if isinstance(arch, str) and arch.endswith(".json"):
        return load_arch_config(arch)
    return arch


class MMSERectifiedFlow(L.LightningModule, PyTorchModelHubMixin, pipeline_tag="image-to-image", license="mit"):
    """PMRF (stage 'flow'), its baselines (conditional flows, 'naive_flow') and the posterior-mean
    predictor ('mmse') under one set of constructor arguments, as in the reference.

    `source_noise_std` is accepted as an alias of `mmse_noise_std` (σ_s); checkpoints keep the
    reference's name. `eps` is t_min: the flow is trained and sampled on [eps, 1].
    """

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
        if "source_noise_std" in kwargs:
            mmse_noise_std = kwargs.pop("source_noise_std")
        if t_schedule not in T_SCHEDULES:
            raise ValueError(f"t_schedule must be one of {T_SCHEDULES}, got {t_schedule!r}")
        has_posterior_mean = stage == "flow" and (mmse_model_ckpt_path is not None or mmse_model_arch is not None)
        self.method = method_for(stage, bool(conditional), has_posterior_mean)
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
        self.fidelity_weight = 0.0  # test outputs (1 − w)·PMRF + w·posterior mean (test.py --fidelity_weight)

        self.model = create_arch(arch, self._condition_channels())
        self.hparams["arch"] = self_contained(arch)
        self.mmse_model = None
        if self.method.uses_posterior_mean:
            self.mmse_model, mmse_arch = checkpoints.load_mmse_network(mmse_model_ckpt_path, mmse_model_arch)
            self.hparams["mmse_model_arch"] = self_contained(mmse_arch)  # checkpoints rebuild f without its file
        check_networks(self.method, self.model, self.mmse_model)  # e.g. a SwinIR (no t) as a flow's velocity
        self.ema = self._build_ema(ema_decay)
        self.test_num_flow_steps: list[int] = [self.num_flow_steps]
        self._validation_metrics: ValidationMetrics | None = None
        self._validation_images = ValidationImages()
        self._ema_stack = ExitStack()

    def _condition_channels(self) -> int:
        if self.method.condition == "posterior_mean":
            return 3
        if self.method.condition == "measurement":
            return 1 if self.colorization else 3
        return 0

    def _build_ema(self, decay: float | None):
        if decay is None or decay < 0:
            return None
        from torch_ema import ExponentialMovingAverage

        return ExponentialMovingAverage(self.model.parameters(), decay=decay)

    @property
    def pmrf(self) -> PMRF:
        """The method (lightning_models.pmrf.PMRF) over this module's networks."""
        core = self.__dict__.get("_pmrf")
        if core is None or core.model is not self.model or core.mmse_model is not self.mmse_model:
            core = PMRF(self.method, self.model, self.mmse_model, self.mmse_noise_std, self.eps)
            self.__dict__["_pmrf"] = core  # not a registered submodule: state-dict keys stay model.*
        return core

    @property
    def method_name(self) -> str:
        return self.method.name

    def train(self, mode: bool = True):
        super().train(mode)
        if self.mmse_model is not None:
            self.mmse_model.eval()  # frozen: never in training mode (no stochastic depth)
        return self

    def check_input_size(self, h: int, w: int) -> None:
        """Raise ValueError when an h×w image is a size the networks cannot take."""
        for net in (self.model, self.mmse_model):
            if net is not None and hasattr(net, "check_input_size"):
                net.check_input_size(h, w)

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

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.model.parameters(), lr=self.lr, betas=self.betas, eps=1e-8, weight_decay=self.weight_decay
        )

    # ------------------------------------------------------------------------------------- training

    def training_loss(self, batch: dict) -> torch.Tensor:
        x, y = batch["x"], batch["y"]
        world_size = self.trainer.world_size if self._trainer is not None else 1
        t = sample_times(x.shape[0], self.t_schedule, self.eps, self.global_rank, world_size, device=x.device)
        return self.pmrf.loss(x, y, t, batch.get("non_noisy_z0"))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["x"].shape[0])
        return loss

    # ---------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def restore(
        self, y: torch.Tensor, num_flow_steps: int | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Inference on a batch: {'xhat', and 'mmse' when the model has a posterior-mean network}.

        The posterior-mean network runs once: it is both the flow's source and the saved MMSE output.
        """
        sample = self.pmrf.sample(y, num_flow_steps or self.num_flow_steps, generator)
        out = {"xhat": sample.xhat}
        if sample.posterior_mean is not None:
            out["mmse"] = sample.posterior_mean
        return out

    @torch.no_grad()
    def generate_reconstructions(
        self,
        x: torch.Tensor | None,
        y: torch.Tensor,
        non_noisy_z0: torch.Tensor | None,
        num_flow_steps: int,
        result_device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None, torch.Tensor | None]:
        """(estimate in [0, 1], trajectory from z0 on, source samples): the reference's interface."""
        states: list[torch.Tensor] = []
        sample = self.pmrf.sample(
            y, num_flow_steps, generator, callback=lambda s: states.append(s["x"].to(result_device)),
            non_noisy_z0=non_noisy_z0,
        )
        if sample.source is None:
            return sample.xhat.float().to(result_device), None, None
        trajectory = [sample.source.to(result_device), *states]
        return sample.xhat.float().to(result_device), trajectory, sample.source.to(result_device)

    # The reference's method names, for scripts written against it.

    def forward_mmse(self, y: torch.Tensor) -> torch.Tensor:
        return self.model(y).clamp(0, 1)

    def forward_flow(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        condition = None
        if self.method.condition is not None:
            condition = self.pmrf.posterior_mean(y) if self.method.condition == "posterior_mean" else y
        return self.pmrf.velocity(x_t, t.reshape(-1), condition)

    def forward(self, x_t: torch.Tensor | None, t: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        """The velocity v(x_t, t) for the flow stages, clip(model(y)) for the mmse stage (reference)."""
        if self.stage == "mmse":
            return self.forward_mmse(y)
        return self.forward_flow(x_t, t, y)

    @torch.no_grad()
    def create_source_distribution_samples(self, x, y: torch.Tensor, non_noisy_z0=None) -> torch.Tensor:
        return self.pmrf.source(y, non_noisy_z0=non_noisy_z0).z0

    def generate_random_t(self, bs: int, dtype=None) -> torch.Tensor:
        world_size = self.trainer.world_size if self._trainer is not None else 1
        t = sample_times(bs, self.t_schedule, self.eps, self.global_rank, world_size, device=self.device)
        return t.to(dtype or t.dtype).view(bs, 1, 1, 1)

    # ------------------------------------------------------------------------------ validation

    def _enter_ema_for_epoch(self) -> None:
        self._ema_stack.close()
        self._ema_stack.enter_context(self.ema_scope())

    def on_validation_epoch_start(self) -> None:
        self._enter_ema_for_epoch()
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
        self.log("val_metrics/mse", F.mse_loss(xhat, x.float()), sync_dist=True, batch_size=x.shape[0])
        if self._validation_metrics is not None:
            self._validation_metrics.update(xhat, x)
        if batch_idx == 0:
            mmse = self.pmrf.posterior_mean(y) if self.mmse_model is not None else None
            self._validation_images.keep(x=x, y=y, xhat=xhat, trajectory=trajectory, z0=z0, mmse=mmse)

    def on_validation_epoch_end(self) -> None:
        if self._validation_metrics is not None:
            for name, value in self._validation_metrics.compute().items():
                self.log(f"val_metrics/{name}", value, sync_dist=True)
        log_dir = self.trainer.log_dir if self._trainer is not None else None  # a collective: every rank asks
        if self.global_rank == 0 and log_dir:
            self._validation_images.save(Path(log_dir) / "val_images", self.current_epoch, self.logger)
        self._ema_stack.close()

    # ------------------------------------------------------------------------------------------ test

    def on_test_epoch_start(self) -> None:
        self._enter_ema_for_epoch()

    def on_test_epoch_end(self) -> None:
        self._ema_stack.close()

    @torch.no_grad()
    def test_step(self, batch: dict, batch_idx: int) -> dict:
        """Restorations of one test batch for every K of `test_num_flow_steps` (test.py writes them).

        Returns {'y', 'xhat': {K: images}, 'source': z0 of the first K, 'posterior_mean'} for flows and
        {'y', 'xhat'} for the mmse stage; every K draws its own source noise, as in the reference.
        """
        y, non_noisy_z0 = batch["y"], batch.get("non_noisy_z0")
        if self.stage == "mmse":
            return {"y": y, "xhat": self.pmrf.sample(y, 1).xhat}
        posterior_mean = self.pmrf.posterior_mean(y) if self.mmse_model is not None else None
        out: dict[str, Any] = {"y": y, "xhat": {}, "source": None, "posterior_mean": posterior_mean}
        for steps in self.test_num_flow_steps:
            sample = self.pmrf.sample(y, steps, non_noisy_z0=non_noisy_z0, posterior_mean=posterior_mean,
                                      fidelity_weight=self.fidelity_weight)
            out["xhat"][steps] = sample.xhat
            if out["source"] is None:
                out["source"] = sample.source
        return out

    # ------------------------------------------------------------------------------ checkpoint I/O

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("hyper_parameters") or {}
        for key in ("stage", "conditional"):
            if key in saved and saved[key] != self.hparams.get(key):
                raise ValueError(
                    f"the checkpoint was trained with {key}={saved[key]!r}, this run has {key}="
                    f"{self.hparams.get(key)!r}: a run resumes only from a checkpoint of the same stage"
                )
        if self.ema is not None and checkpoint.get("ema") is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        checkpoint["state_dict"] = checkpoints.network_state(checkpoint["state_dict"])

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

        The MMSE network is rebuilt from the checkpoint itself (`mmse_model_ckpt_path` is ignored unless
        overridden); metric modules stored in old checkpoints (`fid.*`, `inception_score.*`) are ignored.
        """
        return checkpoints.load_lightning_checkpoint(cls, checkpoint_path, map_location or "cpu", strict is not False, **overrides)

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
        **overrides: Any,
    ) -> MMSERectifiedFlow:
        """Load the Hugging Face layout (config.json + model.safetensors) from the Hub or a local folder.

        `overrides` replace constructor arguments of the saved config (e.g. `num_flow_steps=25`). The
        weights there already are the EMA weights, so the loaded model keeps no separate EMA.
        """
        hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only or None,
                   token=token, force_download=force_download or None)
        return checkpoints.load_pretrained(cls, pretrained_model_name_or_path, map_location, hub, **overrides)

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
        """Write config.json and model.safetensors (EMA weights copied in, like the official repo), and
        a model card; with `push_to_hub`, upload the folder (PyTorchModelHubMixin.push_to_hub)."""
        import json

        from safetensors.torch import save_file

        from utils.images import write_atomic

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = config or checkpoints.pretrained_config(self.hparams)
        with self.ema_scope(enabled=use_ema):
            state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.state_dict().items()}
        write_atomic(directory / checkpoints.HF_CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))
        write_atomic(directory / checkpoints.HF_WEIGHTS_NAME, lambda tmp: save_file(state, tmp))
        if not (directory / "README.md").exists():
            self.generate_model_card(**(model_card_kwargs or {})).save(directory / "README.md")
        if push_to_hub:
            return self.push_to_hub(repo_id=repo_id or directory.name, config=config,
                                    model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs)
        return directory

    def _save_pretrained(self, save_directory: Path) -> None:  # PyTorchModelHubMixin's hook
        self.save_pretrained(save_directory)
