"""`MMSERectifiedFlow`: the Lightning module that trains, validates and tests PMRF and its baselines.

The method itself is `lightning_models.pmrf.PMRF` (one screen: posterior mean, source, velocity, loss,
sampler), built from the constructor's arguments by `lightning_models.build`. This module is the trainer
around it: the training/validation/test steps, AdamW, the EMA copy of the trained network
(`lightning_models.ema`) and logging. Validation and testing restore through
`lightning_models.restorer.Restorer`. Loading and saving are `checkpoints.CheckpointIO`'s, the
reference's method names `reference_api.ReferenceAPI`'s. Its constructor arguments, state-dict keys
(`model.*`, `mmse_model.*`) and checkpoint layout are the reference's, so official checkpoints load unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from .build import build_networks
from .checkpoints import INCEPTION_FLAG, CheckpointIO
from .ema import EMA
from .flow import T_SCHEDULES, sample_times
from .pmrf import METHODS, PMRF, STAGES
from .reference_api import ReferenceAPI
from .restorer import Restorer
from .validation import ValidationImages, ValidationMetrics

log = logging.getLogger(__name__)
__all__ = ["MMSERectifiedFlow", "METHODS", "STAGES"]


class MMSERectifiedFlow(CheckpointIO, ReferenceAPI, L.LightningModule):
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
        self.colorization = bool(kwargs.get("colorization", False))
        networks = build_networks(stage, arch, conditional, mmse_model_ckpt_path, mmse_model_arch, self.colorization)
        self.method = networks.method
        self.save_hyperparameters()
        unknown = sorted(set(kwargs) - {"colorization"})
        if unknown:
            log.debug("ignoring unknown hyper-parameters %s", unknown)

        self.stage, self.conditional = stage, bool(conditional)
        self.eps, self.t_schedule = float(eps), t_schedule
        self.mmse_noise_std = float(mmse_noise_std or 0.0)
        self.num_flow_steps = int(num_flow_steps)
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(float(b) for b in betas)
        # Validation and testing run the raw weights, as the reference's do; True: the EMA copy.
        self.use_ema = False
        self.fidelity_weight = 0.0  # test outputs (1 − w)·PMRF + w·posterior mean (test.py --fidelity_weight)

        self.model, self.mmse_model = networks.model, networks.mmse_model
        self.hparams["arch"] = networks.arch  # checkpoints rebuild the networks without their files
        if networks.mmse_model_arch is not None:
            self.hparams["mmse_model_arch"] = networks.mmse_model_arch
        self.ema = EMA(self.model, ema_decay) if ema_decay is not None and ema_decay >= 0 else None
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

    @property
    def pmrf(self) -> PMRF:
        """The method over the trained network's (raw) weights and f."""
        return self.pmrf_with(use_ema=False)

    def pmrf_with(self, use_ema: bool) -> PMRF:
        """The method over the raw weights, or (`use_ema`, when an EMA is kept) over the EMA copy: a view
        built from this module's networks and hyper-parameters at each call, holding nothing of its own."""
        model = self.ema.follow(self.model) if use_ema and self.ema is not None else self.model
        return PMRF(self.method, model, self.mmse_model, self.mmse_noise_std, self.eps)

    def restorer(self, num_flow_steps: int | None = None, fidelity_weight: float = 0.0) -> Restorer:
        """What validation and testing restore with: this module's networks (the EMA copy with `use_ema`),
        K (`num_flow_steps` by default), the global RNG, the Trainer's precision."""
        return Restorer(self, num_flow_steps or self.num_flow_steps, fidelity_weight=fidelity_weight,
                        use_ema=self.use_ema)

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

    def copy_ema_to_model(self) -> None:
        """Make the EMA weights the model's weights for good (inference)."""
        if self.ema is not None:
            self.ema.copy_to(self.model.parameters())

    # ------------------------------------------------------------------------------------- training

    def on_before_zero_grad(self, optimizer) -> None:
        """The EMA update, where the reference makes it: Lightning runs this hook before the step's
        backward and optimizer step, so after N steps the EMA has averaged θ0 … θ_{N−1}."""
        if self.ema is not None:
            self.ema.update(self.model)

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

    def training_loss(self, batch: dict) -> torch.Tensor:
        x, y = batch["x"], batch["y"]
        world_size = self.trainer.world_size if self._trainer is not None else 1
        t = sample_times(x.shape[0], self.t_schedule, self.eps, self.global_rank, world_size, device=x.device)
        return self.pmrf.loss(x, y, t, batch.get("non_noisy_z0"))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["x"].shape[0])
        return loss

    # ------------------------------------------------------------------------------ validation

    def attach_validation_metrics(self, offline: bool = True, metrics_ckpt_dir: str | os.PathLike | None = None) -> bool:
        """Create FID and Inception Score as the submodules `fid` and `inception_score` (flow stages), as
        the reference does, so that checkpoints hold `fid.inception.*` and `inception_score.inception.*`.

        Tried once; False (after one warning) when the Inception weights are not available (looked for in
        `metrics_ckpt_dir` first, then where utils.registry looks; downloaded unless `offline`). train.py
        calls it before training; otherwise the first validation does, offline, in the default folders.
        """
        if self.stage != "mmse" and self.fid is None and not self._metrics_tried:
            self._metrics_tried = True
            metrics = ValidationMetrics.create(offline, metrics_ckpt_dir)
            if metrics is not None:
                self.fid, self.inception_score = metrics.fid.to(self.device), metrics.inception_score.to(self.device)
        return self.fid is not None

    def _validation_metrics(self) -> ValidationMetrics | None:
        return ValidationMetrics(self.fid, self.inception_score) if self.fid is not None else None

    def on_validation_epoch_start(self) -> None:
        if self.attach_validation_metrics():
            self._validation_metrics().reset()
        self._validation_images.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x, y = batch["x"], batch["y"]
        restorer = self.restorer()
        states: list[torch.Tensor] = []
        first_image_states = (lambda s: states.append(s["x"][:1])) if batch_idx == 0 else None
        sample = restorer.sample(y, callback=first_image_states, non_noisy_z0=batch.get("non_noisy_z0"))
        xhat = sample.xhat.float()
        self.log("val_metrics/mse", F.mse_loss(xhat, x.float()), sync_dist=True, batch_size=x.shape[0])
        metrics = self._validation_metrics()
        if metrics is not None:
            metrics.update(xhat, x)
        if batch_idx == 0:
            trajectory = [sample.source[:1], *states] if sample.source is not None else None
            mmse = sample.posterior_mean
            if mmse is None and self.mmse_model is not None:  # reflow: the source did not need f(y)
                mmse = restorer.posterior_mean(y)
            self._validation_images.keep(x=x, y=y, xhat=xhat, trajectory=trajectory, z0=sample.source, mmse=mmse)

    def on_validation_epoch_end(self) -> None:
        metrics = self._validation_metrics()
        if metrics is not None:
            for name, value in metrics.compute().items():
                self.log(f"val_metrics/{name}", value, sync_dist=True)
        log_dir = self.trainer.log_dir if self._trainer is not None else None  # a collective: every rank asks
        if self.global_rank == 0 and log_dir:
            self._validation_images.save(Path(log_dir) / "val_images", self.current_epoch, self.logger)

    # ------------------------------------------------------------------------------------------ test

    def on_test_epoch_start(self) -> None:
        from utils.images import ImageWriter

        if self.test_results_path is None:
            raise ValueError("set model.test_results_path (the folder test outputs go to) before testing")
        self._test_writer = ImageWriter(self.test_jpeg_quality)

    def on_test_epoch_end(self) -> None:
        try:
            if self._test_writer is not None:
                self._test_writer.close()  # waits for the last writes; raises WriteError if one failed
        finally:
            self._test_writer = None

    @torch.no_grad()
    def test_step(self, batch: dict, batch_idx: int) -> dict:
        """Restore one test batch for every K of `num_test_flow_steps` and write the results under
        `test_results_path`, in the reference's layout (file names are the inputs'):

        `y/`; for flows `num_flow_steps=<K>/xhat/` for every K, `source_distribution_samples/` (the source
        of the first K) and `mmse_samples/` (clip(f(y)), when the model has f); for mmse, `xhat/`.
        Every K draws its own source noise, as in the reference. Returns what was written, as tensors.
        """
        y, non_noisy_z0 = batch["y"], batch.get("non_noisy_z0")
        restorer = self.restorer(fidelity_weight=self.fidelity_weight)
        if self.stage == "mmse":
            out = {"y": y, "xhat": restorer.sample(y, 1).xhat}
        else:
            posterior_mean = restorer.posterior_mean(y) if self.mmse_model is not None else None
            out = {"y": y, "xhat": {}, "source": None, "posterior_mean": posterior_mean}
            for steps in self.num_test_flow_steps or [self.num_flow_steps]:
                sample = restorer.sample(y, steps, non_noisy_z0=non_noisy_z0, posterior_mean=posterior_mean)
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
