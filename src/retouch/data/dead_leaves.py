"""Dead-leaves images: synthetic pictures with the scale invariance of natural images.

The dead-leaves model (Matheron 1968; Lee, Mumford & Huang 2001 for its natural-image statistics)
drops opaque disks one on top of another. With radii drawn from a density ∝ r⁻³ on [r_min, r_max]
the picture is scale invariant between those bounds, as natural images are, and it has sharp
occlusion edges, smooth regions and texture at every scale: good raw material for effects that act
on edges (sharpening, blur) and flat areas (grain, colour transfer).

We render the equivalent *front-to-back* form: the first disk drawn lies on top, every later disk
only fills pixels still uncovered, and drawing stops when the canvas is covered. This has the same
law as dropping disks until the top layer is fixed, and stops after finitely many disks.
"""

from __future__ import annotations

import numpy as np


def power_law_radii(count: int, r_min: float, r_max: float, rng: np.random.Generator) -> np.ndarray:
    """Radii with density ∝ r⁻³ on [r_min, r_max], by inverting F(r) = (r_min⁻² − r⁻²) / (r_min⁻² − r_max⁻²)."""
    u = rng.random(count)
    return (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5


def dead_leaves(size: int, seed: int = 0, *, r_min: float = 1.0, r_max: float | None = None,
                max_disks: int = 200_000) -> np.ndarray:
    """A (size, size, 3) float32 dead-leaves image in [0, 1] with uniformly random disk colours.

    ``r_max`` defaults to the image side. Disks are drawn in batches (centres uniform over the canvas
    grown by r_max so the borders are not under-covered); the last few uncovered pixels, if
    ``max_disks`` runs out, take the colour of the last disk.
    """
    if size < 1:
        raise ValueError(f"dead_leaves: size must be positive, got {size}")
    r_max = float(size) if r_max is None else float(r_max)
    rng = np.random.default_rng([seed, 0xDEAD1EAF])
    image = np.zeros((size, size, 3), np.float32)
    uncovered = np.ones((size, size), bool)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    drawn, colour = 0, np.zeros(3, np.float32)
    while uncovered.any() and drawn < max_disks:
        batch = 256
        radii = power_law_radii(batch, r_min, r_max, rng)
        centres = rng.uniform(-r_max, size + r_max, (batch, 2))
        colours = rng.random((batch, 3)).astype(np.float32)
        for (cy, cx), radius, colour in zip(centres, radii, colours):
            lo_y, hi_y = max(0, int(cy - radius)), min(size, int(cy + radius) + 1)
            lo_x, hi_x = max(0, int(cx - radius)), min(size, int(cx + radius) + 1)
            if lo_y >= hi_y or lo_x >= hi_x:
                continue
            window = uncovered[lo_y:hi_y, lo_x:hi_x]
            inside = (rows[lo_y:hi_y, lo_x:hi_x] - cy) ** 2 + (cols[lo_y:hi_y, lo_x:hi_x] - cx) ** 2 <= radius**2
            fill = window & inside
            if fill.any():
                image[lo_y:hi_y, lo_x:hi_x][fill] = colour
                window[fill] = False
        drawn += batch
    image[uncovered] = colour
    return image
