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

Two backends count the covered samples and give the same image: ``"numpy"``, vectorised over points
(the reference), and ``"numba"``, their Algorithm 1's loops compiled, which draws each bucket once per
strip of the image instead of once per sample that reaches it and, at zoom 1, counts one offset's
samples of a whole output row grain by grain (:func:`_count_dense`; ``benchmarks/bench_film_grain.py``
has the speed-ups). Both draw through one hash (:func:`_bucket_bits`) and one bucket geometry
(:class:`GrainModel`), so the grains are the same.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from importlib.util import find_spec
from typing import Callable

import numpy as np
from scipy.special import ndtri

EPSILON = 0.1
BACKENDS = ("numpy", "numba")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_POISSON_CAP = 200
_LOGNORMAL_QUANTILE = 3.090232  # r_max = the 0.999 quantile of the log-normal radius
_RADIUS_CLIP = 1e-12  # keeps ndtri finite at uniforms of exactly 0
# The grain RNG's constants: odd multipliers that spread (bucket row, bucket column, slot) over 64
# bits before the splitmix64 finaliser, and 2⁻⁵³ to turn its top 53 bits into a double in [0, 1).
_ROW_KEY = np.uint64(0x9E3779B97F4A7C15)
_COL_KEY = np.uint64(0xC2B2AE3D27D4EB4F)
_SLOT_KEY = np.uint64(0x165667B19E3779F9)
_SEED_KEY = np.uint64(0xD6E8FEB86659FD93)
_UNIT = 1.0 / 2**53


def _mix(x):
    """splitmix64 finaliser (Steele et al. 2014): a bijective 64-bit hash of uint64 arrays or scalars."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _bucket_bits(gy, gx, slot, salt):
    """53 random bits for (bucket row, bucket column, slot) under a channel's ``salt``, all uint64.

    The one definition of the grain RNG: numpy calls it on arrays, the compiled renderer on scalars.
    """
    return _mix(_mix(gy * _ROW_KEY ^ gx * _COL_KEY ^ slot * _SLOT_KEY) ^ salt) >> np.uint64(11)


def _channel_salt(channel: int, seed: int) -> np.uint64:
    with np.errstate(over="ignore"):
        return _mix(np.uint64(seed * 8 + channel + 1) * _SEED_KEY & _MASK64)


def bucket_uniform(gy, gx, channel: int, seed: int, slot) -> np.ndarray:
    """Uniform in [0, 1) for (bucket row, bucket column, channel, seed, slot): the grain RNG."""
    def as_bits(value):
        return np.asarray(value, np.int64).astype(np.uint64)

    with np.errstate(over="ignore"):
        bits = _bucket_bits(as_bits(gy), as_bits(gx), as_bits(slot), _channel_salt(channel, seed))
    return bits.astype(np.float64) * _UNIT


class GrainModel:
    """Radius law, intensity and bucket geometry shared by the fast and the reference renderers."""

    def __init__(self, grain_radius: float, radius_std: float = 0.0):
        self.mean_radius = grain_radius
        self.radius_std = radius_std
        self.log_mu = self.log_sigma = 0.0
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
        # floor((y+r)/b) − floor((y−r)/b) ≤ ⌈2r/b⌉, so that many + 1 buckets per axis.
        self.span = math.ceil(2 * self.max_radius / self.bucket - 1e-9) + 1

    def intensity(self, u: np.ndarray) -> np.ndarray:
        """λ(u) = log(1/(1−u)) / (π E[r²]) (Newson et al., Eq. 4), u already normalised to < 1."""
        return -np.log1p(-u) / (math.pi * self.mean_sq_radius)

    def radius(self, uniform: np.ndarray) -> np.ndarray:
        if self.radius_std <= 0:
            return np.full(np.shape(uniform), self.mean_radius)
        r = np.exp(self.log_mu + self.log_sigma * ndtri(np.clip(uniform, _RADIUS_CLIP, 1 - _RADIUS_CLIP)))
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


def default_backend() -> str:
    """``"numba"`` where numba is installed, else ``"numpy"``; both give the same image."""
    return "numba" if find_spec("numba") is not None else "numpy"


def film_grain(image: np.ndarray, grain_radius: float, *, radius_std: float = 0.0, n_samples: int = 800,
               filter_sigma: float = 0.8, zoom: float = 1.0, seed: int = 0, backend: str | None = None,
               progress: Callable[[int, int], None] | None = None,
               max_points_per_chunk: int = 1 << 19) -> np.ndarray:
    """Render film grain for ``image`` (H, W[, C]) in [0, 1]; returns float32 of size round(zoom·H, W).

    ``grain_radius`` (the multitask paper's σ, 0.01–0.1) and ``radius_std`` are in input pixels;
    ``filter_sigma`` is the Gaussian filter's std in output pixels; ``n_samples`` the Monte-Carlo count.
    ``backend`` is ``"numba"`` (compiled, the default where numba is installed) or ``"numpy"`` (the
    reference); they give the same image. ``progress(done, total)`` is called from the calling thread
    as work finishes, counted in output pixels of each channel (total = C·H'·W').
    ``max_points_per_chunk`` bounds the numpy backend's working arrays.
    """
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"film grain backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    image = np.asarray(image, np.float64)
    grey = image.ndim == 2
    channels = image[..., None] if grey else image
    height, width, n_channels = channels.shape
    out_h, out_w = int(round(height * zoom)), int(round(width * zoom))
    model = GrainModel(grain_radius, radius_std)
    scale = channels.max() + EPSILON
    # Poisson mean of a bucket of each cell, λ·b² (bucket draws of the module docstring)
    mean = model.intensity(np.clip(channels / scale, 0.0, 1.0 - 1e-9)) * model.bucket * model.bucket
    offsets = _sample_offsets(n_samples, seed) * filter_sigma
    count = _count_numba if backend == "numba" else _count_numpy
    hits = count(mean, offsets, (out_h, out_w), zoom, model, seed, progress, max_points_per_chunk)
    output = (hits / n_samples * scale).transpose(1, 2, 0)  # (C, H', W') covered samples → (H', W', C)
    output = np.clip(output, 0.0, 1.0).astype(np.float32)
    return output[..., 0] if grey else output


# ---------------------------------------------------------------------------------------------
# numpy backend: vectorised over points
# ---------------------------------------------------------------------------------------------
def _count_numpy(mean, offsets, out_shape, zoom, model, seed, progress, max_points_per_chunk) -> np.ndarray:
    """Covered samples per output pixel, (C, H', W'), over threads of (channel, chunk of samples)."""
    out_h, out_w = out_shape
    n_samples, n_channels = len(offsets), mean.shape[2]
    rows, cols = np.meshgrid(np.arange(out_h, dtype=np.float64), np.arange(out_w, dtype=np.float64), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    chunk = max(1, max_points_per_chunk // max(1, rows.size))
    jobs = [(c, start) for c in range(n_channels) for start in range(0, n_samples, chunk)]

    def count_hits(job):
        channel, start = job
        part = offsets[start:start + chunk]
        py = ((rows[None, :] + 0.5 + part[:, :1]) / zoom).ravel()
        px = ((cols[None, :] + 0.5 + part[:, 1:]) / zoom).ravel()
        covered = _covered(py, px, mean[..., channel], model, channel, seed)
        return channel, len(part), covered.reshape(len(part), -1).sum(0)

    # numpy releases the GIL in its array loops, so threads over (channel, sample chunk) use every core.
    result = np.zeros((n_channels, out_h * out_w))
    samples_done = 0
    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        for channel, n_part, hits in pool.map(count_hits, jobs):
            result[channel] += hits
            samples_done += n_part
            if progress is not None:  # in pixels, as the numba backend counts: a chunk is part of every pixel
                progress(samples_done * out_h * out_w // n_samples, result.size)
    return result.reshape(n_channels, out_h, out_w)


def _covered(py: np.ndarray, px: np.ndarray, mean: np.ndarray, model: GrainModel, channel: int,
             seed: int) -> np.ndarray:
    """Is each point (py, px), in input-pixel units, inside a grain? Vectorised over points."""
    b, r_max, per_side = model.bucket, model.max_radius, model.buckets_per_side
    height, width = mean.shape
    covered = np.zeros(py.shape, bool)
    y_lo, y_hi = np.floor((py - r_max) / b).astype(np.int64), np.floor((py + r_max) / b).astype(np.int64)
    x_lo, x_hi = np.floor((px - r_max) / b).astype(np.int64), np.floor((px + r_max) / b).astype(np.int64)
    for oy in range(model.span):
        for ox in range(model.span):
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
            counts = poisson_from_uniform(mean[cell_y, cell_x], bucket_uniform(gy_i, gx_i, channel, seed, 0))
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


# ---------------------------------------------------------------------------------------------
# numba backend: Algorithm 1's loops, compiled
# ---------------------------------------------------------------------------------------------
_CDF_TERMS = 8  # Poisson CDF terms a dense row tabulates; means are ≲ 3, so the tail past 7 is rare
_STRIP = 64  # output columns per job: enough jobs for every thread and a progress bar that moves
_TABLE_BUCKETS = 1 << 21  # most buckets a dense job holds at once (~1 grain each, 32 bytes a grain with its owner)


def _count_numba(mean, offsets, out_shape, zoom, model, seed, progress, _max_points_per_chunk) -> np.ndarray:
    """Covered samples per output pixel, (C, H', W'), over threads of (channel, strip of columns).

    Two loops, one answer. Where buckets are few next to samples (G² ≤ N·zoom²: σ ≥ 0.018 at N = 800)
    each serves many samples, so :func:`_count_dense` draws every bucket once into a table; where they
    are many, most are never reached and :func:`_count_sparse` draws what each sample needs. The
    compiled loops release the GIL, so plain threads use every core.
    """
    kernels = _numba_kernels()
    out_h, out_w = out_shape
    n_channels = mean.shape[2]
    # The dense table spans the buckets a strip's samples reach: rows over one output row's reach
    # (the filter's spread 2·max|σ·g_k|, r_max each side), columns over the strip's.
    reach = (2 * np.abs(offsets).max(initial=0.0) + 1) / zoom + 2 * model.max_radius + 4 * model.bucket
    per_side = model.buckets_per_side
    strip = _STRIP
    while strip > 8 and (reach * per_side) * ((strip / zoom + reach) * per_side) > _TABLE_BUCKETS:
        strip //= 2
    dense = (per_side**2 <= len(offsets) * zoom**2
             and (reach * per_side) * ((strip / zoom + reach) * per_side) <= _TABLE_BUCKETS)
    kernel = kernels.dense if dense else kernels.sparse
    geometry = (float(model.bucket), float(model.max_radius), int(per_side), int(model.span))
    law = (model.radius_std > 0, float(model.mean_radius), float(model.log_mu), float(model.log_sigma),
           float(model.max_radius))
    p_zero = np.exp(-mean)  # P(no grain in a bucket), the Poisson draw's first term, as numpy computes it
    # A pixel's count is a sum over k, so the order of the offsets is free: by dy, consecutive samples
    # read the same bucket rows while they are in cache (~10 % faster).
    offsets = np.ascontiguousarray(offsets[np.lexsort((offsets[:, 1], offsets[:, 0]))])
    per_channel = [(np.ascontiguousarray(mean[..., c]), np.ascontiguousarray(p_zero[..., c]),
                    _channel_salt(c, seed)) for c in range(n_channels)]

    def count_strip(channel, col):
        channel_mean, channel_p_zero, salt = per_channel[channel]
        return channel, col, kernel(out_h, col, min(strip, out_w - col), channel_mean, channel_p_zero, offsets,
                                    float(zoom), geometry, salt, law, kernels.ndtri)

    hits = np.zeros((n_channels, out_h, out_w), np.int32)
    jobs = [(c, col) for c in range(n_channels) for col in range(0, out_w, strip)]
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), kernels.threads))) as pool:
        for future in as_completed([pool.submit(count_strip, *job) for job in jobs]):
            channel, col, part = future.result()
            hits[channel, :, col:col + part.shape[1]] = part
            done += part.size
            if progress is not None:
                progress(done, hits.size)
    return hits


def _uniform(gy, gx, slot, salt):
    """:func:`bucket_uniform` for one bucket, inside compiled code."""
    return np.float64(_bucket_bits(np.uint64(gy), np.uint64(gx), np.uint64(slot), salt)) * _UNIT


def _poisson(mean, p_zero, uniform):
    """:func:`poisson_from_uniform` for one draw: the smallest n with uniform ≤ P(N ≤ n)."""
    count, term, cdf = 0, p_zero, p_zero
    while uniform > cdf and count < _POISSON_CAP - 1:
        count += 1
        term *= mean / count
        cdf += term
    return count


def _pixel_of(g, per_side, size):
    """The input pixel (along one axis) bucket g lies in; outside the image, the nearest one."""
    return min(max(g // per_side, 0), size - 1)


def _grain(gy, gx, n, b, salt, law, ndtri):
    """Grain n of bucket (gy, gx): centre (cy, cx) and radius, drawn as :func:`_covered` draws them."""
    lognormal, mean_radius, log_mu, log_sigma, r_max = law
    radius = mean_radius
    if lognormal:  # GrainModel.radius, one draw
        u = min(max(_uniform(gy, gx, 3 * n + 3, salt), _RADIUS_CLIP), 1 - _RADIUS_CLIP)
        radius = min(math.exp(log_mu + log_sigma * ndtri(u, 0)), r_max)
    return (gy + _uniform(gy, gx, 3 * n + 1, salt)) * b, (gx + _uniform(gy, gx, 3 * n + 2, salt)) * b, radius


def _covers(py, px, cy, cx, r2):
    """Is (py, px) inside the grain at (cy, cx) of squared radius r2? :func:`_covered`'s test, term for term."""
    return (py - cy) * (py - cy) + (px - cx) * (px - cx) < r2


def _bucket_range(p, r_max, b, span):
    """The buckets along one axis whose band a point's r_max-disk meets, as :func:`_covered` bounds them."""
    lo = math.floor((p - r_max) / b)
    return lo, min(math.floor((p + r_max) / b), lo + span - 1)


def _point_covered(py, px, mean, p_zero, geometry, salt, law, ndtri):
    """Is (py, px) inside a grain? The buckets, culling and draws of :func:`_covered`, for one point,
    stopping at the first grain that covers it."""
    b, r_max, per_side, span = geometry
    y_lo, y_hi = _bucket_range(py, r_max, b, span)
    x_lo, x_hi = _bucket_range(px, r_max, b, span)
    for gy in range(y_lo, y_hi + 1):
        dy = max(max(gy * b - py, py - (gy + 1) * b), 0.0)
        for gx in range(x_lo, x_hi + 1):
            dx = max(max(gx * b - px, px - (gx + 1) * b), 0.0)
            if not dy * dy + dx * dx < r_max * r_max:  # the bucket is out of reach
                continue
            y, x = _pixel_of(gy, per_side, mean.shape[0]), _pixel_of(gx, per_side, mean.shape[1])
            for n in range(_poisson(mean[y, x], p_zero[y, x], _uniform(gy, gx, 0, salt))):
                cy, cx, radius = _grain(gy, gx, n, b, salt, law, ndtri)
                if _covers(py, px, cy, cx, radius * radius):
                    return True
    return False


def _draw_row(gy, gx0, n_bx, p0, row, starts, owners, grains, mean, p_zero, b, per_side, salt, law, ndtri):
    """Draw bucket row gy's buckets gx0 … gx0 + n_bx − 1 into ring slot ``row``; returns ``grains`` and
    ``owners``, regrown if they were too small.

    The grains (cy, cx, r²) are stored by column class m = gx mod per_side (the bucket's place inside its
    input pixel) and, within a class, by pixel: class m's grains of pixel p0 + q start at ``starts[row, m, q]``
    and ``owners[row, g]`` is grain g's q. Samples one pixel apart meet the same class one pixel apart, so the
    grains a whole output row's samples of one offset need are one contiguous run per class.
    """
    y = _pixel_of(gy, per_side, mean.shape[0])
    n_px = starts.shape[2] - 1
    # Each pixel's P(N ≤ n), n < _CDF_TERMS, by _poisson's own recurrence (the same doubles), shared by its
    # per_side buckets of this row: a count is then how many of them its uniform exceeds, without a branch.
    cdf = np.empty((n_px, _CDF_TERMS))
    for q in range(n_px):
        x = min(max(p0 + q, 0), mean.shape[1] - 1)
        term = total = p_zero[y, x]
        cdf[q, 0] = total
        for n in range(1, _CDF_TERMS):
            term *= mean[y, x] / n
            total += term
            cdf[q, n] = total
    # The buckets' counts first, in a loop without branches that the compiler can vectorise (the hash is most
    # of a row's cost); buckets outside every sample's reach are left empty.
    counts = np.empty((per_side, n_px), np.int64)
    for m in range(per_side):
        for q in range(n_px):
            gx = (p0 + q) * per_side + m
            uniform = _uniform(gy, gx, 0, salt)
            count = 0
            for n in range(_CDF_TERMS):
                count += uniform > cdf[q, n]
            counts[m, q] = count * ((gx >= gx0) & (gx < gx0 + n_bx))
    for m in range(per_side):
        for q in range(n_px):
            if counts[m, q] == _CDF_TERMS:  # the Poisson tail: the whole draw, as _poisson makes it
                x = min(max(p0 + q, 0), mean.shape[1] - 1)
                counts[m, q] = _poisson(mean[y, x], p_zero[y, x], _uniform(gy, (p0 + q) * per_side + m, 0, salt))
    total = counts.sum()
    if total > grains.shape[2]:
        grown = np.empty((grains.shape[0], 3, 2 * total))
        grown[:, :, :grains.shape[2]] = grains
        grains = grown
        grown_owners = np.empty((owners.shape[0], 2 * total), np.int64)
        grown_owners[:, :owners.shape[1]] = owners
        owners = grown_owners
    # Which bucket and slot each grain is, in class-then-pixel order; then the grains themselves, in a loop
    # without branches.
    bucket_of, index_in_bucket = np.empty(total, np.int64), np.empty(total, np.int64)
    n_grains = 0
    for m in range(per_side):
        for q in range(n_px):
            starts[row, m, q] = n_grains
            for n in range(counts[m, q]):
                bucket_of[n_grains], index_in_bucket[n_grains], owners[row, n_grains] = (p0 + q) * per_side + m, n, q
                n_grains += 1
        starts[row, m, n_px] = n_grains
    for g in range(total):
        cy, cx, radius = _grain(gy, bucket_of[g], index_in_bucket[g], b, salt, law, ndtri)
        grains[row, 0, g], grains[row, 1, g], grains[row, 2, g] = cy, cx, radius * radius
    return grains, owners


def _count_sparse(out_h, col0, n_cols, mean, p_zero, offsets, zoom, geometry, salt, law, ndtri):
    """hits[i, j] = how many of the N points (i, col0 + j) + 0.5 + σ·g_k lie in a grain (Algorithm 1).

    Samples go k by k along a row, so the bucket pattern repeats and branches predict.
    """
    hits = np.zeros((out_h, n_cols), np.int32)
    for i in range(out_h):
        for k in range(offsets.shape[0]):
            py = (i + 0.5 + offsets[k, 0]) / zoom
            for j in range(n_cols):
                px = (col0 + j + 0.5 + offsets[k, 1]) / zoom
                hits[i, j] += _point_covered(py, px, mean, p_zero, geometry, salt, law, ndtri)
    return hits


def _count_dense(out_h, col0, n_cols, mean, p_zero, offsets, zoom, geometry, salt, law, ndtri):
    """:func:`_count_sparse`'s counts, with every bucket drawn once.

    Output rows go top to bottom over a ring of bucket rows, each drawn when the samples first reach it
    (:func:`_draw_row`). A sample tests every grain of the buckets :func:`_covered` would visit, unculled
    and without stopping at the first hit: a superset with the same answer.

    Where one offset's samples along the row step exactly one pixel of buckets each (zoom 1: bucket range
    x_lo + per_side·j, the same width for every j; checked per offset, not assumed), the offset's samples of
    a whole row are counted grain by grain: each grain of the row's classes belongs to one sample, found from
    its pixel, so the loop runs over one contiguous run of grains per class, with no per-sample loop whose
    trip count (a Poisson count) the branch predictor cannot guess. Other offsets go sample by sample.
    """
    b, r_max, per_side, span = geometry
    dy_lo, dy_hi = offsets[:, 0].min(), offsets[:, 0].max()
    dx_lo, dx_hi = offsets[:, 1].min(), offsets[:, 1].max()
    # Bucket columns any sample can touch, one spare each side for rounding, and the input pixels they lie in.
    gx0 = math.floor(((col0 + 0.5 + dx_lo) / zoom - r_max) / b) - 1
    n_bx = math.floor(((col0 + n_cols - 0.5 + dx_hi) / zoom + r_max) / b) + 1 - gx0 + 1
    p0 = gx0 // per_side
    n_px = (gx0 + n_bx - 1) // per_side - p0 + 1
    ring = 1
    for i in range(out_h):
        ring = max(ring, _reached_rows(i, dy_hi, zoom, r_max, b)[1] - _reached_rows(i, dy_lo, zoom, r_max, b)[0] + 1)
    starts = np.empty((ring, per_side, n_px + 1), np.int64)
    grains = np.empty((ring, 3, 2 * n_bx))  # per ring slot: cy, cx and r² of its row's grains
    owners = np.empty((ring, 2 * n_bx), np.int64)
    drawn = np.full(ring, np.iinfo(np.int64).min)  # the bucket row in each ring slot
    slots = np.empty(span, np.int64)
    # Per offset: its first sample's bucket columns, and whether every sample of the strip steps one pixel.
    first = np.empty(offsets.shape[0], np.int64)
    width = np.empty(offsets.shape[0], np.int64)
    steady = np.empty(offsets.shape[0], np.bool_)
    columns = np.empty((offsets.shape[0], n_cols))  # px of sample (·, j) of each offset, as _count_sparse has it
    for k in range(offsets.shape[0]):
        for j in range(n_cols):
            columns[k, j] = (col0 + j + 0.5 + offsets[k, 1]) / zoom
        x_lo, x_hi = _bucket_range(columns[k, 0], r_max, b, span)
        first[k], width[k], steady[k] = x_lo, x_hi - x_lo, True
        for j in range(1, n_cols):
            lo, hi = _bucket_range(columns[k, j], r_max, b, span)
            steady[k] &= (lo == x_lo + per_side * j) & (hi - lo == x_hi - x_lo)
    covered = np.zeros(n_cols, np.int32)
    hits = np.zeros((out_h, n_cols), np.int32)
    for i in range(out_h):
        for gy in range(_reached_rows(i, dy_lo, zoom, r_max, b)[0], _reached_rows(i, dy_hi, zoom, r_max, b)[1] + 1):
            if drawn[gy % ring] != gy:
                drawn[gy % ring] = gy
                grains, owners = _draw_row(gy, gx0, n_bx, p0, gy % ring, starts, owners, grains, mean, p_zero, b,
                                           per_side, salt, law, ndtri)
        for k in range(offsets.shape[0]):
            py = (i + 0.5 + offsets[k, 0]) / zoom
            y_lo, y_hi = _bucket_range(py, r_max, b, span)
            for t in range(y_hi - y_lo + 1):
                slots[t] = (y_lo + t) % ring
            if steady[k]:
                for t in range(y_hi - y_lo + 1):
                    row = slots[t]
                    for u in range(width[k] + 1):
                        m, q = (first[k] + u) % per_side, (first[k] + u) // per_side - p0
                        for g in range(starts[row, m, q], starts[row, m, q + n_cols]):
                            j = owners[row, g] - q
                            covered[j] |= _covers(py, columns[k, j], grains[row, 0, g], grains[row, 1, g],
                                                  grains[row, 2, g])
                for j in range(n_cols):
                    hits[i, j] += covered[j]
                    covered[j] = 0
                continue
            for j in range(n_cols):
                px = columns[k, j]
                x_lo, x_hi = _bucket_range(px, r_max, b, span)
                hit = False
                for t in range(y_hi - y_lo + 1):
                    row = slots[t]
                    for gx in range(x_lo, x_hi + 1):
                        m, q = gx % per_side, gx // per_side - p0
                        for g in range(starts[row, m, q], starts[row, m, q + 1]):
                            hit |= _covers(py, px, grains[row, 0, g], grains[row, 1, g], grains[row, 2, g])
                hits[i, j] += hit
    return hits


def _reached_rows(i, dy, zoom, r_max, b):
    """Bucket rows the r_max-disk of point (i + 0.5 + dy) / zoom can touch, one spare each side."""
    return math.floor(((i + 0.5 + dy) / zoom - r_max) / b) - 1, math.floor(((i + 0.5 + dy) / zoom + r_max) / b) + 1


class _Kernels:
    def __init__(self, dense, sparse, ndtri, threads: int):
        self.dense, self.sparse, self.ndtri, self.threads = dense, sparse, ndtri, threads


_KERNELS_LOCK = threading.Lock()


def _numba_kernels() -> _Kernels:
    """The numba backend, set up on first use from any thread (the app renders in worker threads)."""
    with _KERNELS_LOCK:
        return _setup_numba()


@functools.cache
def _setup_numba() -> _Kernels:
    """Importing numba costs a second, so it happens here, not at import. The loops compile on their
    first call (~6 s) and are cached on disk next to this file, or in numba's user cache when that
    is read-only; numba invalidates the cache when this file changes."""
    import ctypes

    from numba import config, njit
    from numba.extending import get_cython_function_address, register_jitable

    for helper in (_mix, _bucket_bits, _uniform, _poisson, _pixel_of, _grain, _covers, _bucket_range,
                   _point_covered, _draw_row, _reached_rows):
        register_jitable(helper)  # callable from compiled code as themselves: one definition each
    # scipy's ndtri through its C entry point (double ndtri(double, int skip_dispatch)), passed to the
    # kernels as an argument rather than a global so they stay cacheable.
    ndtri_c = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_double, ctypes.c_int)(
        get_cython_function_address("scipy.special.cython_special", "ndtri"))
    return _Kernels(njit(_count_dense, nogil=True, cache=True), njit(_count_sparse, nogil=True, cache=True),
                    ndtri_c, config.NUMBA_NUM_THREADS)
