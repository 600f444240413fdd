"""Edit maps: per-pixel "how much may change here", float32 (H, W) in [0, 1].

retouch's convention (the CLI's, the inpainting masks', the PIXELS method's): **1 = edit fully,
0 = keep the input**. PIXELS (Das Biswas et al. 2025) draws its maps the other way round (Fig. 1:
"the darker the region, the more flexibility"); its μ is ``1 − edit_map``.

The paper takes maps from anywhere (§Implementation Details: "growing and blurring, or simple
histogram transformations on binary masks"); these helpers make the common ones from a binary mask.
They work on numpy arrays, like :func:`retouch.imageio.load_map`, and always return a fresh float32
array in [0, 1]. A typical soft map: ``blur_map(grow_mask(mask, 4), 3)`` keeps the mask's core at 1 and
fades out over the grown band, so the exemplar's region stays whole while its surroundings get a
transition zone.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from retouch.errors import RetouchError
from retouch.imageio import validate_map

# Beyond this many times the map's longest side, a reflect-bordered Gaussian blur is the map's mean to
# float32 precision; capping σ there keeps an absurd σ from allocating a kernel of 8σ + 1 taps.
_MAX_SIGMA_PER_SIDE = 16


def _binary(mask) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RetouchError(f"a mask must be 2-D (height, width); got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise RetouchError(f"a mask must hold numbers or booleans; got dtype {mask.dtype}")
    if not np.isfinite(mask).all():  # NaN > 0.5 is False: a NaN mask would silently become "keep"
        raise RetouchError("a mask contains NaN or infinite values; fix whatever produced it")
    # A soft map passed where a mask is expected is binarised at one half, the usual reading of a grey mask.
    return mask > 0.5


def _outside_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance in pixels from every pixel to the nearest mask pixel (0 inside)."""
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    return ndimage.distance_transform_edt(~mask).astype(np.float32)


def grow_mask(mask, pixels: float) -> np.ndarray:
    """Dilate a binary mask by a disc of radius ``pixels`` (Euclidean), returned as a 0/1 float map."""
    if not pixels >= 0:  # also rejects NaN, which would grow nothing
        raise RetouchError(f"grow radius must be ≥ 0 pixels; got {pixels}")
    mask = _binary(mask)
    if not mask.any():  # its distances are all inf, which an infinite radius would otherwise reach
        return np.zeros(mask.shape, np.float32)
    return (_outside_distance(mask) <= np.float64(pixels)).astype(np.float32)  # no float32 overflow of a huge radius


def blur_map(edit_map, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels; borders reflect so edges do not darken.

    The map is checked like :func:`retouch.imageio.validate_map` (2-D, finite, in [0, 1]).
    """
    if not sigma >= 0:  # also rejects NaN, which scipy would silently treat as no blur
        raise RetouchError(f"blur σ must be ≥ 0 pixels; got {sigma}")
    edit_map = validate_map(edit_map)  # a fresh float32 copy
    if sigma == 0:
        return edit_map
    sigma = min(sigma, _MAX_SIGMA_PER_SIDE * max(edit_map.shape))
    return np.clip(ndimage.gaussian_filter(edit_map, sigma, mode="reflect"), 0.0, 1.0).astype(np.float32)


def linear_ramp_map(mask, width: float) -> np.ndarray:
    """1 inside the mask, falling linearly with distance to 0 at ``width`` pixels outside it.

    Unlike a blur this never lowers the mask itself below 1, so every masked pixel stays a full
    edit (in PIXELS: takes the exemplar) and the ramp lies entirely in the surroundings.
    """
    if not width > 0:  # also rejects NaN, which would make the whole map NaN
        raise RetouchError(f"ramp width must be > 0 pixels; got {width}")
    mask = _binary(mask)
    if not mask.any():  # inf / inf is NaN for an infinite width
        return np.zeros(mask.shape, np.float32)
    # In float64: a tiny width cast to the float32 distances would underflow to 0, and 0 / 0 is NaN.
    return np.clip(1.0 - _outside_distance(mask) / np.float64(width), 0.0, 1.0).astype(np.float32)
