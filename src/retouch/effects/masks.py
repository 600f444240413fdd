"""Free-form inpainting masks (Yu et al. 2019, "Free-Form Image Inpainting with Gated Convolution").

Algorithm 1 of the paper (supplementary): each stroke starts at a random point and walks through a
random number of vertices; each segment turns by a random angle around 2π/5 (alternating direction)
and has a random length; the polyline is drawn with a random brush width and round joints. The
defaults are the paper's, for 256² images, scaled linearly with the image side.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

MEAN_ANGLE = 2 * math.pi / 5
ANGLE_RANGE = 2 * math.pi / 15
REFERENCE_SIDE = 256


def _strokes(height: int, width: int, rng: np.random.Generator, max_strokes: int,
             min_vertices: int, max_vertices: int, min_width: float, max_width: float) -> np.ndarray:
    scale = math.sqrt(height * width) / REFERENCE_SIDE
    average_radius = math.sqrt(height * height + width * width) / 8
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, max_strokes + 1))):
        vertices = int(rng.integers(min_vertices, max_vertices + 1))
        low, high = MEAN_ANGLE - rng.uniform(0, ANGLE_RANGE), MEAN_ANGLE + rng.uniform(0, ANGLE_RANGE)
        angles = [(2 * math.pi - rng.uniform(low, high)) if i % 2 == 0 else rng.uniform(low, high)
                  for i in range(vertices)]
        points = [(float(rng.integers(0, width)), float(rng.integers(0, height)))]
        for angle in angles:
            length = float(np.clip(rng.normal(average_radius, average_radius / 2), 0, 2 * average_radius))
            x = float(np.clip(points[-1][0] + length * math.cos(angle), 0, width - 1))
            y = float(np.clip(points[-1][1] + length * math.sin(angle), 0, height - 1))
            points.append((x, y))
        brush = max(1, int(round(rng.uniform(min_width, max_width) * scale)))
        draw.line(points, fill=255, width=brush)
        for x, y in points:  # round joints
            draw.ellipse((x - brush / 2, y - brush / 2, x + brush / 2, y + brush / 2), fill=255)
    mask = np.asarray(canvas) > 0
    if rng.random() > 0.5:
        mask = mask[:, ::-1]
    if rng.random() > 0.5:
        mask = mask[::-1, :]
    return np.ascontiguousarray(mask)


def free_form_mask(height: int, width: int, seed: int = 0, *, max_strokes: int = 4, min_vertices: int = 4,
                   max_vertices: int = 12, min_width: float = 12, max_width: float = 40,
                   min_coverage: float | None = None, max_coverage: float | None = None,
                   max_tries: int = 100) -> np.ndarray:
    """A bool (H, W) hole mask (True = missing), deterministic in ``seed``.

    With coverage bounds, strokes are redrawn until the hole fraction lies within them (up to
    ``max_tries`` draws; then the closest draw is returned).
    """
    rng = np.random.default_rng(seed)
    best, best_gap = None, math.inf
    for _ in range(max_tries):
        mask = _strokes(height, width, rng, max_strokes, min_vertices, max_vertices, min_width, max_width)
        coverage = float(mask.mean())
        gap = max((min_coverage or 0.0) - coverage, coverage - (max_coverage if max_coverage is not None else 1.0), 0.0)
        if gap == 0.0 and mask.any():
            return mask
        if gap < best_gap:
            best, best_gap = mask, gap
    return best


def apply_inpainting_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Zero the holes: I_A ⊙ (1 − M), the multitask paper's inpainting input (§4, Training)."""
    keep = ~np.asarray(mask, bool)
    return (np.asarray(image, np.float32) * (keep[..., None] if np.ndim(image) == 3 else keep)).astype(np.float32)
