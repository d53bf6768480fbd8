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
from torch import nn
from torch.nn import functional as F

from arch import create_arch
from arch.configs import load_arch_config

from . import checkpoints
from .flow import T_SCHEDULES, sample_times
from .pmrf import METHODS, PMRF, STAGES, method_for, run_network
from .validation import ValidationImages, ValidationMetrics

log = logging.getLogger(__name__)
__all__ = ["MMSERectifiedFlow", "METHODS", "STAGES"]

# Hyper-parameters a checkpoint may carry besides the constructor's arguments (see on_save_checkpoint).
INCEPTION_FLAG = "inception_weights_saved"


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
        kwargs.pop(INCEPTION_FLAG, None)  # describes a file, not this model (on_save_checkpoint)
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
        # Validation and testing run the raw weights, as the reference's do (see maybe_ema); True: the EMA.
        self.use_ema = False

        self.model = create_arch(arch, self._condition_channels())
        self.hparams["arch"] = self_contained(arch)
        self.mmse_model = None
        if self.method.uses_posterior_mean:
            self.mmse_model, mmse_arch = checkpoints.load_mmse_network(mmse_model_ckpt_path, mmse_model_arch)
            self.hparams["mmse_model_arch"] = self_contained(mmse_arch)  # checkpoints rebuild f without its file
        self.ema = self._build_ema(ema_decay)
        # The reference's test attributes: where test_step writes, and the K values it restores with.
        self.test_results_path: str | os.PathLike | None = None
        self.num_test_flow_steps: list[int] | None = None
        self.test_jpeg_quality = 75  # for .jpg test outputs (torchvision's save_image quality)
        self._test_writer = None
        # FID and IS of validation (flow stages), the reference's submodules; see attach_validation_metrics.
        self.fid: nn.Module | None = None
        self.inception_score: nn.Module | None = None
        self._metrics_tried = False
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
            net = getattr(net, "_orig_mod", net)
            if net is not None and hasattr(net, "check_input_size"):
                net.check_input_size(h, w)

    # ------------------------------------------------------------------------------------------ EMA
    # Everything about the EMA of the trained network's weights (torch-ema) is in this section.

    @property
    def ema_wanted(self) -> bool:
        """The reference's name: an EMA is kept (ema_decay is not -1)."""
        return self.ema is not None

    def _ema_on_device(self):
        if self.ema is not None and self.ema.shadow_params and self.ema.shadow_params[0].device != self.device:
            self.ema.to(self.device)
        return self.ema

    def on_before_zero_grad(self, optimizer) -> None:
        """The EMA update, where the reference makes it: Lightning runs this hook before the step's
        backward and optimizer step, so after N steps the EMA has averaged θ0 … θ_{N−1}."""
        if self._ema_on_device() is not None:
            self.ema.update(self.model.parameters())

    @contextmanager
    def ema_scope(self, enabled: bool | None = None):
        """Temporarily swap in the EMA weights (no-op without an EMA, or with `use_ema` off).

        The raw weights are kept aside here rather than in torch-ema's `collected_params`, so scopes nest
        and a checkpoint written meanwhile holds no second copy of the weights.
        """
        enabled = self.use_ema if enabled is None else enabled
        ema = self._ema_on_device()
        if not enabled or ema is None:
            yield
            return
        params = list(self.model.parameters())
        raw = [p.detach().clone() for p in params]
        ema.copy_to(params)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(params, raw):
                    param.copy_(value)

    @contextmanager
    def maybe_ema(self):
        """The reference's context manager; validation and testing run inside it, here as there.

        The reference yields torch-ema's `average_parameters` without entering it, so its
        `with self.maybe_ema():` runs the raw weights, and its validation and test numbers are the raw
        weights'. Here the body runs the raw weights too unless `use_ema` is set, and what is yielded is a
        context manager that swaps the EMA weights in when entered (what the reference meant).
        """
        with self.ema_scope():
            yield self.ema_scope(enabled=True)

    def copy_ema_to_model(self) -> None:
        """Make the EMA weights the model's weights for good (inference)."""
        ema = self._ema_on_device()
        if ema is not None:
            ema.copy_to(self.model.parameters())

    def ema_state(self) -> dict | None:
        """torch-ema's state as the reference saves it: `collected_params` empty (None)."""
        return None if self.ema is None else {**self.ema.state_dict(), "collected_params": None}

    def on_train_start(self) -> None:
        """The hyper-parameters this module was built with apply from here on, also when a resumed
        checkpoint restored others into the optimizer and the EMA (train.py lists such changes)."""
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group.update(lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        if self.ema is not None:
            self.ema.decay = float(self.hparams["ema_decay"])

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
        return run_network(self.model, y).clamp(0, 1)

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

    @staticmethod
    def stratified_uniform(bs: int, group: int = 0, groups: int = 1, dtype=None, device=None) -> torch.Tensor:
        """The reference's sampler, shape (bs, 1, 1, 1): sample j of group g is (g + j·groups + u_j)/(bs·groups)."""
        t = sample_times(bs, "stratified_uniform", 0.0, group, groups, device=device or "cpu")
        return t.to(dtype or t.dtype).view(bs, 1, 1, 1)

    def generate_random_t(self, bs: int, dtype=None) -> torch.Tensor:
        world_size = self.trainer.world_size if self._trainer is not None else 1
        t = sample_times(bs, self.t_schedule, self.eps, self.global_rank, world_size, device=self.device)
        return t.to(dtype or t.dtype).view(bs, 1, 1, 1)

    # ------------------------------------------------------------------------------ validation

    def _enter_ema_for_epoch(self) -> None:
        self._ema_stack.close()
        self._ema_stack.enter_context(self.maybe_ema())

    def attach_validation_metrics(self) -> bool:
        """Create FID and Inception Score as the submodules `fid` and `inception_score` (flow stages), as
        the reference does, so that checkpoints hold `fid.inception.*` and `inception_score.inception.*`.

        Tried once; False (after one warning) when the Inception weights are not available. train.py
        calls it before training; otherwise the first validation does.
        """
        if self.stage != "mmse" and self.fid is None and not self._metrics_tried:
            self._metrics_tried = True
            metrics = ValidationMetrics.create()
            if metrics is not None:
                self.fid, self.inception_score = metrics.fid.to(self.device), metrics.inception_score.to(self.device)
        return self.fid is not None

    def _validation_metrics(self) -> ValidationMetrics | None:
        return ValidationMetrics(self.fid, self.inception_score) if self.fid is not None else None

    def on_validation_epoch_start(self) -> None:
        self._enter_ema_for_epoch()
        if self.attach_validation_metrics():
            self._validation_metrics().reset()
        self._validation_images.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x, y = batch["x"], batch["y"]
        states: list[torch.Tensor] = []
        first_image_states = (lambda s: states.append(s["x"][:1])) if batch_idx == 0 else None
        sample = self.pmrf.sample(y, self.num_flow_steps, callback=first_image_states,
                                  non_noisy_z0=batch.get("non_noisy_z0"))
        xhat = sample.xhat.float()
        self.log("val_metrics/mse", F.mse_loss(xhat, x.float()), sync_dist=True, batch_size=x.shape[0])
        metrics = self._validation_metrics()
        if metrics is not None:
            metrics.update(xhat, x)
        if batch_idx == 0:
            trajectory = [sample.source[:1], *states] if sample.source is not None else None
            mmse = sample.posterior_mean
            if mmse is None and self.mmse_model is not None:  # reflow: the source did not need f(y)
                mmse = self.pmrf.posterior_mean(y)
            self._validation_images.keep(x=x, y=y, xhat=xhat, trajectory=trajectory, z0=sample.source, mmse=mmse)

    def on_validation_epoch_end(self) -> None:
        metrics = self._validation_metrics()
        if metrics is not None:
            for name, value in metrics.compute().items():
                self.log(f"val_metrics/{name}", value, sync_dist=True)
        log_dir = self.trainer.log_dir if self._trainer is not None else None  # a collective: every rank asks
        if self.global_rank == 0 and log_dir:
            self._validation_images.save(Path(log_dir) / "val_images", self.current_epoch, self.logger)
        self._ema_stack.close()

    # ------------------------------------------------------------------------------------------ test

    def on_test_epoch_start(self) -> None:
        from utils.images import ImageWriter

        if self.test_results_path is None:
            raise ValueError("set model.test_results_path (the folder test outputs go to) before testing")
        self._enter_ema_for_epoch()
        self._test_writer = ImageWriter(self.test_jpeg_quality)

    def on_test_epoch_end(self) -> None:
        try:
            if self._test_writer is not None:
                self._test_writer.close()  # waits for the last writes; raises WriteError if one failed
        finally:
            self._test_writer = None
            self._ema_stack.close()

    @torch.no_grad()
    def test_step(self, batch: dict, batch_idx: int) -> dict:
        """Restore one test batch for every K of `num_test_flow_steps` and write the results under
        `test_results_path`, in the reference's layout (file names are the inputs'):

        `y/`; for flows `num_flow_steps=<K>/xhat/` for every K, `source_distribution_samples/` (the source
        of the first K) and `mmse_samples/` (clip(f(y)), when the model has f); for mmse, `xhat/`.
        Every K draws its own source noise, as in the reference. Returns what was written, as tensors.
        """
        y, non_noisy_z0 = batch["y"], batch.get("non_noisy_z0")
        if self.stage == "mmse":
            out = {"y": y, "xhat": self.pmrf.sample(y, 1).xhat}
        else:
            posterior_mean = self.pmrf.posterior_mean(y) if self.mmse_model is not None else None
            out = {"y": y, "xhat": {}, "source": None, "posterior_mean": posterior_mean}
            for steps in self.num_test_flow_steps or [self.num_flow_steps]:
                sample = self.pmrf.sample(y, steps, non_noisy_z0=non_noisy_z0, posterior_mean=posterior_mean)
                out["xhat"][steps] = sample.xhat
                if out["source"] is None:
                    out["source"] = sample.source
        self._write_test_outputs(out, batch["img_file_name"])
        return out

    def _write_test_outputs(self, out: dict, names: list[str]) -> None:
        from utils.images import ImageWriter

        if self.test_results_path is None:
            raise ValueError("set model.test_results_path (the folder test outputs go to) before testing")
        writer = self._test_writer or ImageWriter(self.test_jpeg_quality)  # test_step called on its own
        root = Path(self.test_results_path)
        folders = {root / "y": out["y"]}
        if self.stage == "mmse":
            folders[root / "xhat"] = out["xhat"]
        else:
            for steps, images in out["xhat"].items():
                folders[root / f"num_flow_steps={steps}" / "xhat"] = images
            folders[root / "source_distribution_samples"] = out["source"].clamp(0, 1)
            if out["posterior_mean"] is not None:
                folders[root / "mmse_samples"] = out["posterior_mean"]
        for folder, images in folders.items():
            for name, image in zip(names, images.detach().float().cpu()):
                writer.submit(image, folder / name)
        if writer is not self._test_writer:
            writer.close()

    # ------------------------------------------------------------------------------ checkpoint I/O

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None:
            checkpoint["ema"] = self.ema_state()
        hparams = checkpoint.get("hyper_parameters")
        if self.stage != "mmse" and isinstance(hparams, dict):
            if self.fid is None:  # no Inception weights here: the reference loads this with strict=False
                hparams[INCEPTION_FLAG] = False
            else:
                hparams.pop(INCEPTION_FLAG, None)

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
            self.ema.collected_params = None
        # The networks come from the checkpoint; the metric networks (if this module has them) stay the
        # ones read from the Inception weights file, whatever the checkpoint holds or lacks.
        state = checkpoints.network_state(checkpoint["state_dict"])
        state.update(checkpoints.metric_state(self.state_dict()))
        checkpoint["state_dict"] = state

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike,
        map_location: Any = None,
        hparams_file: str | os.PathLike | None = None,
        strict: bool | None = True,
        **overrides: Any,
    ) -> MMSERectifiedFlow:
        """Rebuild a model from a Lightning checkpoint (ours or the official one), safely.

        As Lightning's: `map_location` None keeps the tensors on the device they were saved from when it
        exists here (else the CPU) and puts the model there; `hparams_file` (.yaml or .csv) replaces the
        checkpoint's hyper-parameters; keyword arguments override them. The MMSE network is rebuilt from
        the checkpoint itself (`mmse_model_ckpt_path` is ignored unless overridden); the metric networks
        (`fid.*`, `inception_score.*`) are not loaded.
        """
        return checkpoints.load_lightning_checkpoint(
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
    ) -> MMSERectifiedFlow:
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
        return checkpoints.load_pretrained(cls, pretrained_model_name_or_path, map_location, hub, strict, **overrides)

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
