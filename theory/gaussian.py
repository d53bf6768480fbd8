"""Closed-form answers for a Gaussian linear inverse problem, against which PMRF is checked.

X ~ N(0, Σ_X) in R^d and Y = A X + N, N ~ N(0, σ² I) in R^m. Then (all in float64 numpy):

* the posterior mean is X* = K Y, K = Σ_X Aᵀ (A Σ_X Aᵀ + σ² I)⁻¹, and MMSE = tr(Σ_X − K A Σ_X);
* a posterior sample has MSE 2·MMSE;
* the lowest MSE of an estimator whose outputs are distributed as X is MMSE + W2²(p_X, p_X*)
  (Freirich, Michaeli and Meir, NeurIPS 2021), and between that point and X* the optimal
  distortion–perception curve is D(P) = MMSE + (W2(p_X, p_X*) − P)₊²;
* a rectified flow from a source Z0 = B Y + σ_s·n (B = K for PMRF, B = I for the flow from Y) to X is,
  for the whole population, the linear ODE dx/dt = M(t) x with M(t) = Cov(X − Z0, X_t) Cov(X_t)⁻¹,
  X_t = t X + (1 − t) Z0: its output is Φ Z0 with Φ the ODE's transition matrix, integrated here to
  1e-10, or with K Euler steps as the sampler takes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from scipy.integrate import solve_ivp


def parse_matrix(text: str) -> np.ndarray:
    """A matrix written as rows separated by ';' and entries by ',', e.g. "1,.8;.8,1"."""
    try:
        rows = [[float(entry) for entry in row.split(",")] for row in text.strip().split(";")]
    except ValueError:
        raise ValueError(f"{text!r} is not a matrix: write rows separated by ';' and entries by ',', e.g. \"1,.8;.8,1\"") from None
    if len({len(row) for row in rows}) != 1:
        raise ValueError(f"{text!r}: every row needs the same number of entries")
    matrix = np.array(rows, dtype=np.float64)
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{text!r}: entries must be finite numbers")
    return matrix


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def gaussian_w2_squared(
    cov_a: np.ndarray, cov_b: np.ndarray, mean_a: np.ndarray | None = None, mean_b: np.ndarray | None = None
) -> float:
    """W2²(N(μa, Σa), N(μb, Σb)) = ‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½)."""
    root = psd_sqrt(cov_a)
    value = np.trace(cov_a + cov_b - 2 * psd_sqrt(root @ cov_b @ root))
    if mean_a is not None or mean_b is not None:
        difference = np.zeros(len(cov_a)) if mean_a is None else np.asarray(mean_a, dtype=np.float64)
        difference = difference - (0 if mean_b is None else np.asarray(mean_b, dtype=np.float64))
        value += float(difference @ difference)
    return float(max(value, 0.0))


def fitted_gaussian(samples: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of (N, d) samples, in float64."""
    array = np.asarray(samples.detach().cpu() if isinstance(samples, torch.Tensor) else samples, dtype=np.float64)
    return array.mean(axis=0), np.cov(array, rowvar=False).reshape(array.shape[1], array.shape[1])


def distortion_perception_curve(mmse: float, w2_posterior_mean: float, perception) -> np.ndarray:
    """D(P) = MMSE + (W2(p_X, p_X*) − P)₊²: the least MSE at perceptual index P = W2(p_X, p_X̂)."""
    gap = np.clip(w2_posterior_mean - np.asarray(perception, dtype=np.float64), 0, None)
    return mmse + gap**2


@dataclass(frozen=True)
class LinearGaussianProblem:
    """X ~ N(0, prior_cov), Y = operator·X + noise_std·N(0, I)."""

    prior_cov: np.ndarray
    operator: np.ndarray
    noise_std: float

    def __post_init__(self):
        prior, operator = np.asarray(self.prior_cov, np.float64), np.asarray(self.operator, np.float64)
        object.__setattr__(self, "prior_cov", prior)
        object.__setattr__(self, "operator", operator)
        if prior.ndim != 2 or prior.shape[0] != prior.shape[1] or not np.allclose(prior, prior.T):
            raise ValueError(f"the prior covariance must be a symmetric square matrix, got {prior.tolist()}")
        if np.linalg.eigvalsh(prior).min() <= 0:
            raise ValueError(f"the prior covariance must be positive definite, got {prior.tolist()}")
        if operator.ndim != 2 or operator.shape[1] != prior.shape[0]:
            raise ValueError(f"the operator must have {prior.shape[0]} columns (the prior's size), got shape {operator.shape}")
        if not self.noise_std > 0:
            raise ValueError(f"the noise standard deviation must be > 0, got {self.noise_std}")

    @property
    def dim(self) -> int:
        return self.prior_cov.shape[0]

    @property
    def measurement_dim(self) -> int:
        return self.operator.shape[0]

    @cached_property
    def measurement_cov(self) -> np.ndarray:
        A = self.operator
        return A @ self.prior_cov @ A.T + self.noise_std**2 * np.eye(self.measurement_dim)

    @cached_property
    def posterior_mean_matrix(self) -> np.ndarray:
        """K with E[X | Y] = K Y."""
        return np.linalg.solve(self.measurement_cov, self.operator @ self.prior_cov).T

    @cached_property
    def posterior_mean_cov(self) -> np.ndarray:
        """Cov(X*) = K Σ_Y Kᵀ (also Cov(X*, X): X − X* is orthogonal to X*)."""
        K = self.posterior_mean_matrix
        return K @ self.measurement_cov @ K.T

    @cached_property
    def mmse(self) -> float:
        return float(np.trace(self.prior_cov - self.posterior_mean_matrix @ self.operator @ self.prior_cov))

    @cached_property
    def w2_squared_posterior_mean(self) -> float:
        """W2²(p_X, p_X*)."""
        return gaussian_w2_squared(self.prior_cov, self.posterior_mean_cov)

    @property
    def optimal_perfect_perception_mse(self) -> float:
        return self.mmse + self.w2_squared_posterior_mean

    def w2_squared_to_prior(self, samples: torch.Tensor | np.ndarray) -> float:
        """W2² between the Gaussian fitted to (N, d) samples and the prior."""
        mean, cov = fitted_gaussian(samples)
        return gaussian_w2_squared(cov, self.prior_cov, mean)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws of (x, y) as float32 tensors of shapes (n, d) and (n, m)."""
        root = torch.from_numpy(np.linalg.cholesky(self.prior_cov)).float()
        x = torch.randn(n, self.dim, generator=generator) @ root.T
        noise = torch.randn(n, self.measurement_dim, generator=generator)
        y = x @ torch.from_numpy(self.operator).float().T + self.noise_std * noise
        return x, y


@dataclass(frozen=True)
class ExactRectifiedFlow:
    """The population rectified flow from Z0 = source_matrix·Y + σ_s·n to X (n ~ N(0, I) independent).

    `source_matrix` K (the default) is PMRF's source, the identity the flow from Y (naive_flow).
    """

    problem: LinearGaussianProblem
    source_noise_std: float
    source_matrix: np.ndarray | None = None

    @cached_property
    def source_map(self) -> np.ndarray:
        """B with Z0 = B Y + σ_s·n."""
        if self.source_matrix is None:
            return self.problem.posterior_mean_matrix
        matrix = np.asarray(self.source_matrix, np.float64)
        if matrix.shape != (self.problem.dim, self.problem.measurement_dim):
            raise ValueError(f"the source matrix must be {self.problem.dim}×{self.problem.measurement_dim}, got {matrix.shape}")
        return matrix

    @cached_property
    def source_cov(self) -> np.ndarray:
        B, p = self.source_map, self.problem
        cov = B @ p.measurement_cov @ B.T + self.source_noise_std**2 * np.eye(p.dim)
        if np.linalg.eigvalsh(cov).min() <= 1e-12:
            raise ValueError("the flow's source is degenerate (a rank-deficient operator and no source noise); "
                             "use a source noise std above 0")
        return cov

    @cached_property
    def source_target_cov(self) -> np.ndarray:
        """E[Z0 Xᵀ] = B A Σ_X."""
        return self.source_map @ self.problem.operator @ self.problem.prior_cov

    def velocity_matrix(self, t: float) -> np.ndarray:
        """M(t) with E[X − Z0 | X_t = x] = M(t) x."""
        S, Z, C = self.problem.prior_cov, self.source_cov, self.source_target_cov  # C = E[Z0 Xᵀ]
        cov_t = t * t * S + (1 - t) ** 2 * Z + t * (1 - t) * (C + C.T)
        cross = t * S + (1 - t) * C.T - t * C - (1 - t) * Z  # E[(X − Z0) X_tᵀ]
        return np.linalg.solve(cov_t.T, cross.T).T

    def transition(self, grid: int | np.ndarray | None = None, eps: float = 0.0) -> np.ndarray:
        """Φ with X̂ = Φ Z0: the exact ODE solution from t = eps to 1 (grid None), or Euler steps on a grid
        (K: the sampler's K equal steps on [eps, 1]; or the times t_0 < … < t_K)."""
        d = self.problem.dim
        if grid is None:
            solution = solve_ivp(
                lambda t, phi: (self.velocity_matrix(t) @ phi.reshape(d, d)).ravel(),
                (eps, 1.0), np.eye(d).ravel(), method="DOP853", rtol=1e-11, atol=1e-13,
            )
            return solution.y[:, -1].reshape(d, d)
        times = np.linspace(eps, 1.0, grid + 1) if isinstance(grid, int) else np.asarray(grid, np.float64)
        phi = np.eye(d)
        for a, b in zip(times[:-1], times[1:]):
            phi = phi + (b - a) * self.velocity_matrix(a) @ phi
        return phi

    def mse(self, phi: np.ndarray) -> float:
        """E‖X − Φ Z0‖²."""
        cross = phi @ self.source_target_cov
        return float(np.trace(self.problem.prior_cov - cross - cross.T + phi @ self.source_cov @ phi.T))

    def output_cov(self, phi: np.ndarray) -> np.ndarray:
        return phi @ self.source_cov @ phi.T

    def with_fidelity_weight(self, phi: np.ndarray, fidelity_weight: float) -> tuple[float, np.ndarray]:
        """(MSE, covariance) of (1 − w)·Φ Z0 + w·X*, for PMRF's source Z0 = X* + σ_s·n.

        With G = (1 − w)Φ + wI: X̂_w = G X* + (1 − w) σ_s Φ n, and Cov(X̂_w, X) = G Σ* since Cov(X*, X) = Σ*.
        """
        if self.source_matrix is not None:
            raise ValueError("the fidelity weight moves toward the posterior mean: it needs PMRF's source")
        w, d = float(fidelity_weight), self.problem.dim
        G = (1 - w) * phi + w * np.eye(d)
        posterior = self.problem.posterior_mean_cov
        cov = G @ posterior @ G.T + ((1 - w) * self.source_noise_std) ** 2 * phi @ phi.T
        mse = float(np.trace(self.problem.prior_cov - 2 * G @ posterior + cov))
        return mse, cov
