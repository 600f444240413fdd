"""Film grain by the stochastic model of Newson, Delon & Galerne (2017), rendered pixel-wise.

The model (their §3): each colour channel is an inhomogeneous Boolean model — disks ("grains") of
radius r dropped at the points of a Poisson process whose intensity in the unit cell of input pixel
y is λ(y) = log(1 / (1 − u(y))) / (π E[r²]), so a cell is covered with probability u(y). The rendered
value at output point x is the Gaussian-filtered indicator of the union of grains, estimated by Monte
Carlo (their Algorithm 1): the fraction of N points x + σ·g_k (g_k ~ N(0, I), the same offsets for
every pixel) that fall inside some grain. Values are normalised by u_max + ε (ε = 0.1) so λ stays
finite, and the result is multiplied back.

Randomness is counter-based: the grains of any region are a pure function of (position, channel,
seed), so any output point can be rendered on its own, in any tiling, with identical results. We
draw each unit cell's grains per *bucket* — a G×G subdivision of the cell with side b = 1/G ≥ r_max —
from a Poisson law of mean λ·b² (restriction of a Poisson process to disjoint sets gives independent
Poisson processes, so this is the same Boolean model), with b ≥ 2·r_max. A sample point then only has
to look at the ≤ 4 buckets its r_max-disk touches instead of every grain of up to nine cells; this is
what keeps small radii (σ = 0.01 gives ~10⁴ grains per pixel) tractable.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.special import ndtri

EPSILON = 0.1
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_POISSON_CAP = 200
_LOGNORMAL_QUANTILE = 3.090232  # r_max = the 0.999 quantile of the log-normal radius


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (Steele et al. 2014): a bijective 64-bit hash."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def bucket_uniform(gy, gx, channel: int, seed: int, slot) -> np.ndarray:
    """Uniform in [0, 1) for (bucket row, bucket column, channel, seed, slot): the grain RNG."""
    with np.errstate(over="ignore"):
        key = (np.asarray(gy, np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
               ^ np.asarray(gx, np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
               ^ np.asarray(slot, np.int64).astype(np.uint64) * np.uint64(0x165667B19E3779F9))
        salt = _mix(np.uint64(seed * 8 + channel + 1) * np.uint64(0xD6E8FEB86659FD93) & _MASK64)
        return (_mix(_mix(key) ^ salt) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


class GrainModel:
    """Radius law, intensity and bucket geometry shared by the fast and the reference renderers."""

    def __init__(self, grain_radius: float, radius_std: float = 0.0):
        self.mean_radius = grain_radius
        self.radius_std = radius_std
        if radius_std > 0:
            self.log_sigma = math.sqrt(math.log1p((radius_std / grain_radius) ** 2))
            self.log_mu = math.log(grain_radius) - self.log_sigma**2 / 2
            self.mean_sq_radius = math.exp(2 * self.log_mu + 2 * self.log_sigma**2)
            self.max_radius = math.exp(self.log_mu + _LOGNORMAL_QUANTILE * self.log_sigma)
        else:
            self.mean_sq_radius = grain_radius**2
            self.max_radius = grain_radius
        # b ≥ 2·r_max: a sample's r_max-disk then meets at most 2 buckets per axis.
        self.buckets_per_side = max(1, int(1.0 / (2 * self.max_radius)))
        self.bucket = 1.0 / self.buckets_per_side

    def intensity(self, u: np.ndarray) -> np.ndarray:
        """λ(u) = log(1/(1−u)) / (π E[r²]) (Newson et al., Eq. 4), u already normalised to < 1."""
        return -np.log1p(-u) / (math.pi * self.mean_sq_radius)

    def radius(self, uniform: np.ndarray) -> np.ndarray:
        if self.radius_std <= 0:
            return np.full(np.shape(uniform), self.mean_radius)
        r = np.exp(self.log_mu + self.log_sigma * ndtri(np.clip(uniform, 1e-12, 1 - 1e-12)))
        return np.minimum(r, self.max_radius)


def poisson_from_uniform(mean: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Inverse-CDF Poisson draw, vectorised (means here are small: λ·b² ≲ 3)."""
    count = np.zeros(mean.shape, np.int64)
    term = np.exp(-mean)
    cdf = term.copy()
    active = uniform > cdf
    for n in range(1, _POISSON_CAP):
        if not active.any():
            break
        idx = np.nonzero(active)[0]
        count[idx] = n
        term[idx] *= mean[idx] / n
        cdf[idx] += term[idx]
        active[idx] = uniform[idx] > cdf[idx]
    return count


def _sample_offsets(n_samples: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0x6A1]).standard_normal((n_samples, 2))  # (N, [dy, dx])


def film_grain(image: np.ndarray, grain_radius: float, *, radius_std: float = 0.0, n_samples: int = 800,
               filter_sigma: float = 0.8, zoom: float = 1.0, seed: int = 0,
               max_points_per_chunk: int = 1 << 19) -> np.ndarray:
    """Render film grain for ``image`` (H, W[, C]) in [0, 1]; returns float32 of size round(zoom·H, W).

    ``grain_radius`` (the multitask paper's σ, 0.01–0.1) and ``radius_std`` are in input pixels;
    ``filter_sigma`` is the Gaussian filter's std in output pixels; ``n_samples`` the Monte-Carlo count.
    """
    image = np.asarray(image, np.float64)
    grey = image.ndim == 2
    channels = image[..., None] if grey else image
    height, width, n_channels = channels.shape
    out_h, out_w = int(round(height * zoom)), int(round(width * zoom))
    model = GrainModel(grain_radius, radius_std)
    scale = channels.max() + EPSILON
    lam = model.intensity(np.clip(channels / scale, 0.0, 1.0 - 1e-9))  # (H, W, C) grains per unit area
    offsets = _sample_offsets(n_samples, seed) * filter_sigma
    rows, cols = np.meshgrid(np.arange(out_h, dtype=np.float64), np.arange(out_w, dtype=np.float64), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    chunk = max(1, max_points_per_chunk // max(1, rows.size))
    jobs = [(c, start) for c in range(n_channels) for start in range(0, n_samples, chunk)]

    def count_hits(job):
        channel, start = job
        part = offsets[start:start + chunk]
        py = ((rows[None, :] + 0.5 + part[:, :1]) / zoom).ravel()
        px = ((cols[None, :] + 0.5 + part[:, 1:]) / zoom).ravel()
        return channel, _covered(py, px, lam[..., channel], model, channel, seed).reshape(len(part), -1).sum(0)

    # numpy releases the GIL in its array loops, so threads over (channel, sample chunk) use every core.
    result = np.zeros((n_channels, out_h * out_w))
    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        for channel, hits in pool.map(count_hits, jobs):
            result[channel] += hits
    output = (result / n_samples * scale).reshape(n_channels, out_h, out_w).transpose(1, 2, 0)
    output = np.clip(output, 0.0, 1.0).astype(np.float32)
    return output[..., 0] if grey else output


def _covered(py: np.ndarray, px: np.ndarray, lam: np.ndarray, model: GrainModel, channel: int,
             seed: int) -> np.ndarray:
    """Is each point (py, px), in input-pixel units, inside a grain? Vectorised over points."""
    b, r_max, per_side = model.bucket, model.max_radius, model.buckets_per_side
    height, width = lam.shape
    covered = np.zeros(py.shape, bool)
    y_lo, y_hi = np.floor((py - r_max) / b).astype(np.int64), np.floor((py + r_max) / b).astype(np.int64)
    x_lo, x_hi = np.floor((px - r_max) / b).astype(np.int64), np.floor((px + r_max) / b).astype(np.int64)
    # floor((y+r)/b) − floor((y−r)/b) ≤ ⌈2r/b⌉, so that many + 1 buckets per axis.
    span = math.ceil(2 * r_max / b - 1e-9) + 1
    for oy in range(span):
        for ox in range(span):
            gy, gx = y_lo + oy, x_lo + ox
            near = (gy <= y_hi) & (gx <= x_hi) & ~covered
            # Skip buckets whose rectangle is farther than r_max from the point.
            dy = np.maximum(np.maximum(gy * b - py, py - (gy + 1) * b), 0.0)
            dx = np.maximum(np.maximum(gx * b - px, px - (gx + 1) * b), 0.0)
            near &= dy * dy + dx * dx < r_max * r_max
            idx = np.nonzero(near)[0]
            if idx.size == 0:
                continue
            gy_i, gx_i = gy[idx], gx[idx]
            cell_y = np.clip(np.floor_divide(gy_i, per_side), 0, height - 1)
            cell_x = np.clip(np.floor_divide(gx_i, per_side), 0, width - 1)
            counts = poisson_from_uniform(lam[cell_y, cell_x] * b * b, bucket_uniform(gy_i, gx_i, channel, seed, 0))
            for j in range(int(counts.max(initial=0))):
                sel = np.nonzero(counts > j)[0]
                g_y, g_x = gy_i[sel], gx_i[sel]
                cy = (g_y + bucket_uniform(g_y, g_x, channel, seed, 3 * j + 1)) * b
                cx = (g_x + bucket_uniform(g_y, g_x, channel, seed, 3 * j + 2)) * b
                radius = model.radius(bucket_uniform(g_y, g_x, channel, seed, 3 * j + 3))
                points = idx[sel]
                hit = (py[points] - cy) ** 2 + (px[points] - cx) ** 2 < radius * radius
                covered[points[hit]] = True
    return covered
