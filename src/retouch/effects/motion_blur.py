"""Linear motion blur with a continuous degree β ∈ [0, 1] (multitask paper, Table 1)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def motion_blur_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised, anti-aliased line kernel ``length`` pixels long at ``angle`` degrees.

    The line is sampled at 8 points per pixel and splatted bilinearly, so non-integer lengths and
    any angle give a smooth kernel whose mass grows continuously with ``length``.
    """
    if length <= 1.0:
        return np.ones((1, 1), np.float32)
    half = int(np.ceil(length / 2)) + 1
    size = 2 * half + 1
    kernel = np.zeros((size, size), np.float64)
    theta = np.deg2rad(angle)
    steps = np.linspace(-(length - 1) / 2, (length - 1) / 2, int(np.ceil(length * 8)) + 1)
    xs, ys = half + steps * np.cos(theta), half - steps * np.sin(theta)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + dy, x0 + dx), w)
    return (kernel / kernel.sum()).astype(np.float32)


def motion_blur(image: np.ndarray, degree: float, angle: float | None = None, seed: int = 0,
                max_length_fraction: float = 0.1) -> np.ndarray:
    """Blur ``image`` (H, W[, C]) along a line: length = 1 + β · max_length_fraction · min(H, W).

    β = 0 is the identity (a copy). ``angle`` in degrees; drawn uniformly from [0, 180) with ``seed``
    when omitted. Borders are reflected so the image mean is kept near the edges.
    """
    image = np.asarray(image, np.float32)
    if degree <= 0:
        return image.copy()
    if angle is None:
        angle = float(np.random.default_rng(seed).uniform(0.0, 180.0))
    length = 1.0 + degree * max_length_fraction * min(image.shape[:2])
    kernel = motion_blur_kernel(length, angle)
    if image.ndim == 2:
        return ndimage.convolve(image, kernel, mode="reflect")
    return np.stack([ndimage.convolve(image[..., c], kernel, mode="reflect") for c in range(image.shape[2])], -1)
