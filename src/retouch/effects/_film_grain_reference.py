"""A straightforward port of Newson et al.'s pixel-wise algorithm, for comparison only.

Loops as in their Algorithm 1: for every output pixel, for every Monte-Carlo sample, for every cell
within reach, regenerate that cell's grains from its seeded RNG (here: per bucket, with the same
counter-based RNG and grain law as :mod:`retouch.effects.film_grain`) and test coverage, stopping at
the first grain that covers the point. Scalar code, as a CPU port of their GPU kernel would be.
"""

from __future__ import annotations

import math

import numpy as np

from retouch.effects.film_grain import EPSILON, GrainModel, _sample_offsets, bucket_uniform, poisson_from_uniform


def film_grain_reference(image: np.ndarray, grain_radius: float, *, radius_std: float = 0.0, n_samples: int = 800,
                         filter_sigma: float = 0.8, zoom: float = 1.0, seed: int = 0) -> np.ndarray:
    image = np.asarray(image, np.float64)
    grey = image.ndim == 2
    channels = image[..., None] if grey else image
    height, width, n_channels = channels.shape
    out_h, out_w = int(round(height * zoom)), int(round(width * zoom))
    model = GrainModel(grain_radius, radius_std)
    scale = channels.max() + EPSILON
    offsets = _sample_offsets(n_samples, seed) * filter_sigma
    b, r_max, per_side = model.bucket, model.max_radius, model.buckets_per_side
    output = np.zeros((out_h, out_w, n_channels))
    for channel in range(n_channels):
        lam = model.intensity(np.clip(channels[..., channel] / scale, 0.0, 1.0 - 1e-9))
        for row in range(out_h):
            for col in range(out_w):
                hits = 0
                for dy, dx in offsets:
                    y, x = (row + 0.5 + dy) / zoom, (col + 0.5 + dx) / zoom
                    hits += _point_covered(y, x, lam, model, channel, seed, b, r_max, per_side, height, width)
                output[row, col, channel] = hits / n_samples * scale
    output = np.clip(output, 0.0, 1.0).astype(np.float32)
    return output[..., 0] if grey else output


def _point_covered(y, x, lam, model, channel, seed, b, r_max, per_side, height, width) -> bool:
    for cell_y in range(math.floor(y - r_max), math.floor(y + r_max) + 1):
        for cell_x in range(math.floor(x - r_max), math.floor(x + r_max) + 1):
            density = lam[min(max(cell_y, 0), height - 1), min(max(cell_x, 0), width - 1)]
            for gy in range(cell_y * per_side, (cell_y + 1) * per_side):
                if not (gy * b - r_max <= y < (gy + 1) * b + r_max):
                    continue
                for gx in range(cell_x * per_side, (cell_x + 1) * per_side):
                    if not (gx * b - r_max <= x < (gx + 1) * b + r_max):
                        continue
                    ddy = max(gy * b - y, y - (gy + 1) * b, 0.0)
                    ddx = max(gx * b - x, x - (gx + 1) * b, 0.0)
                    if ddy * ddy + ddx * ddx >= r_max * r_max:
                        continue
                    count = int(poisson_from_uniform(np.array([density * b * b]),
                                                     bucket_uniform([gy], [gx], channel, seed, 0))[0])
                    for j in range(count):
                        cy = (gy + bucket_uniform(gy, gx, channel, seed, 3 * j + 1)) * b
                        cx = (gx + bucket_uniform(gy, gx, channel, seed, 3 * j + 2)) * b
                        radius = model.radius(bucket_uniform(gy, gx, channel, seed, 3 * j + 3))
                        if (y - cy) ** 2 + (x - cx) ** 2 < radius * radius:
                            return True
    return False
