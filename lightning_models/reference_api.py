"""The reference's method names on `MMSERectifiedFlow`, for scripts written against it: thin aliases of the
method (`self.pmrf`), the restorer (`lightning_models.restorer.Restorer`) and the EMA copy (`self.ema`).
This project's own code calls none of them."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .flow import sample_times
from .restorer import Restorer


class ReferenceAPI:
    """`forward`, `forward_mmse`, `forward_flow`, `generate_reconstructions`, `create_source_distribution_samples`,
    `stratified_uniform`, `generate_random_t`, `ema_wanted` and `maybe_ema`; and `restore`, this project's
    earlier entry point."""

    def forward(self, x_t: torch.Tensor | None, t: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        """The velocity v(x_t, t) for the flow stages, clip(model(y)) for the mmse stage (reference)."""
        if self.stage == "mmse":
            return self.forward_mmse(y)
        return self.forward_flow(x_t, t, y)

    def forward_mmse(self, y: torch.Tensor) -> torch.Tensor:
        return self.model(y).clamp(0, 1)

    def forward_flow(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        method = self.pmrf
        condition = None
        if self.method.condition is not None:
            condition = method.posterior_mean(y) if self.method.condition == "posterior_mean" else y
        return method.velocity(x_t, t.reshape(-1), condition)

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
        """(estimate in [0, 1], trajectory from z0 on, source samples), with the weights `maybe_ema` runs."""
        states: list[torch.Tensor] = []
        restorer = Restorer(self, num_flow_steps, generator=generator)
        sample = restorer.sample(y, callback=lambda s: states.append(s["x"].to(result_device)), non_noisy_z0=non_noisy_z0)
        xhat = sample.xhat.float().to(result_device)
        if sample.source is None:
            return xhat, None, None
        source = sample.source.to(result_device)
        return xhat, [source, *states], source

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

    @property
    def ema_wanted(self) -> bool:
        """An EMA is kept (ema_decay is not -1)."""
        return self.ema is not None

    @contextmanager
    def maybe_ema(self):
        """The reference's context manager. Its body runs the raw weights (the EMA weights with `use_ema`),
        as the reference's does: it yields torch-ema's `average_parameters` without entering it. What it
        yields here swaps the EMA weights into `model` while entered (what the reference meant)."""
        with self._ema_weights_in_model(self.use_ema):
            yield self._ema_weights_in_model(True)

    @contextmanager
    def _ema_weights_in_model(self, enabled: bool):
        if not enabled or self.ema is None:
            yield
            return
        params = list(self.model.parameters())
        raw = [p.detach().clone() for p in params]
        self.ema.copy_to(params)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(params, raw):
                    param.copy_(value)

    @torch.no_grad()
    def restore(
        self, y: torch.Tensor, num_flow_steps: int | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """{'xhat', and 'mmse' when the model has a posterior-mean network}; f runs once."""
        sample = Restorer(self, num_flow_steps or self.num_flow_steps, generator=generator).sample(y)
        out = {"xhat": sample.xhat}
        if sample.posterior_mean is not None:
            out["mmse"] = sample.posterior_mean
        return out
