"""Distribution metrics on features from any extractor: KID and FID.

Both compare two sets of feature vectors ``(N, D)`` (torch or numpy). The classic numbers use
Inception-v3 pool features; here the extractor is pluggable (:class:`FeatureExtractor`), e.g. the
mini world's CLIP image tower, so values are comparable only between runs with the same extractor.
Results are Python floats computed in float64.
"""

from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

import numpy as np
import torch

from retouch.errors import RetouchError


@runtime_checkable
class FeatureExtractor(Protocol):
    """Any callable mapping images ``(B, 3, H, W)`` in [0, 1] to features ``(B, D)``."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def extract_features(extractor: FeatureExtractor, images: torch.Tensor | Iterable[torch.Tensor],
                     batch_size: int = 64) -> torch.Tensor:
    """Features ``(N, D)`` (float32, CPU) of a stack ``(N, 3, H, W)`` or an iterable of image batches.

    A stack is cut into batches of ``batch_size``; an iterable's batches are used as they come.
    Runs under ``torch.no_grad()``.
    """
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    features = []
    with torch.no_grad():
        for batch in batches:
            batch = batch.unsqueeze(0) if batch.dim() == 3 else batch
            features.append(extractor(batch).reshape(batch.shape[0], -1).float().cpu())
    return torch.cat(features)


def _as_float64(features) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    return np.asarray(features, dtype=np.float64)


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> np.ndarray:
    """k(x, y) = (γ·x·y + coef0)^degree with γ = 1/D by default (Bińkowski et al. 2018, §4)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * x @ y.T + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                  coef0: float = 1.0) -> float:
    """Unbiased MMD² between equal-size samples (Gretton et al. 2012, Eq. 3 as used by KID).

    (1/(m(m−1))) Σ_{i≠j} [k(x_i,x_j) + k(y_i,y_j)] − (2/m²) Σ_{i,j} k(x_i,y_j) — the estimator of
    Bińkowski et al.'s reference code, torch-fidelity and clean-fid (cross term over all pairs).
    """
    m = x.shape[0]
    k_xx = polynomial_kernel(x, x, degree, gamma, coef0)
    k_yy = polynomial_kernel(y, y, degree, gamma, coef0)
    k_xy = polynomial_kernel(x, y, degree, gamma, coef0)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(features_real, features_fake, subset_size: int = 1000, n_subsets: int = 100, degree: int = 3,
        gamma: float | None = None, coef0: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): (mean, std) of unbiased MMD² over subsets.

    Each of ``n_subsets`` rounds draws ``subset_size`` rows without replacement from each set
    (``subset_size`` is capped at the smaller set) and computes :func:`mmd2_unbiased` with the cubic
    polynomial kernel. The draws come from a ``torch.Generator`` seeded with ``seed``; ``std`` is the
    population standard deviation over rounds (0 for one round). Defaults follow torch-fidelity.
    """
    real, fake = _as_float64(features_real), _as_float64(features_fake)
    m = min(subset_size, real.shape[0], fake.shape[0])
    if m < 2:
        raise RetouchError(
            f"KID needs at least 2 feature vectors per set, got {real.shape[0]} and {fake.shape[0]}"
        )
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(n_subsets):
        i = torch.randperm(real.shape[0], generator=generator)[:m].numpy()
        j = torch.randperm(fake.shape[0], generator=generator)[:m].numpy()
        values.append(mmd2_unbiased(real[i], fake[j], degree, gamma, coef0))
    return float(np.mean(values)), float(np.std(values))


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((Σ1 Σ2)^½) for symmetric PSD Σ1, Σ2, exactly and in real arithmetic.

    Σ1 Σ2 is similar to A = Σ1^½ Σ2 Σ1^½ (symmetric PSD), so its eigenvalues are A's, real and ≥ 0, and
    the trace of the principal square root is Σ √λ_i. This avoids scipy.linalg.sqrtm's complex
    round-off on near-singular products (the ``eps``/imaginary-part patches of pytorch-fid).
    Eigenvalues below the numerical-rank tolerance (max·n·ε, as ``numpy.linalg.matrix_rank``) are
    round-off and count as 0 — their square roots (√1e-15 ≈ 3e-8 each) would otherwise add up.
    """
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(_drop_round_off(w))) @ v.T
    eig = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    return float(np.sqrt(_drop_round_off(eig)).sum())


def _drop_round_off(eigenvalues: np.ndarray) -> np.ndarray:
    tol = max(float(eigenvalues.max()), 0.0) * eigenvalues.size * np.finfo(np.float64).eps
    return np.where(eigenvalues > tol, eigenvalues, 0.0)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1 Σ2)^½), the Fréchet distance of two Gaussians (Dowson & Landau 1982)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * _trace_sqrt_product(sigma1, sigma2))


def fid(features_real, features_fake) -> float:
    """Fréchet Inception Distance (Heusel et al. 2017) between Gaussians fit to two feature sets.

    Means and sample covariances (ddof = 1, as pytorch-fid) of each ``(N, D)`` set, then
    :func:`frechet_distance`. With N ≤ D the covariances are singular; the value is still defined but
    biased (FID's known small-sample bias), so compare only at equal N.
    """
    real, fake = _as_float64(features_real), _as_float64(features_fake)
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise RetouchError(
            f"FID needs at least 2 feature vectors per set, got {real.shape[0]} and {fake.shape[0]}"
        )
    return frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))
