"""Unsharp masking with amount λ ∈ [1, 3] and threshold μ ∈ [0, 0.1] (multitask paper, Table 1).

The classical operator (Polesel, Ramponi & Mathews 2000, Eq. 1): y = x + λ·(x − G_s ∗ x), where the
detail x − G_s ∗ x is added only where its magnitude exceeds μ, so flat noise is not amplified.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def unsharp_mask(image: np.ndarray, amount: float, threshold: float = 0.0, blur_sigma: float = 1.0) -> np.ndarray:
    """Sharpen ``image`` (H, W[, C]) in [0, 1]; the threshold test is per pixel and per channel."""
    image = np.asarray(image, np.float32)
    sigma = (blur_sigma, blur_sigma, 0) if image.ndim == 3 else blur_sigma
    detail = image - ndimage.gaussian_filter(image, sigma=sigma, mode="reflect")
    detail = np.where(np.abs(detail) > threshold, detail, 0.0)
    return np.clip(image + amount * detail, 0.0, 1.0).astype(np.float32)


def parse_sharpen(text: str) -> tuple[float, float]:
    """``"AMOUNT[,THRESHOLD]"`` (e.g. ``"2.0,0.05"``) → (λ, μ), μ = 0 when omitted; ranges are the caller's."""
    from retouch.errors import RetouchError

    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise RetouchError(f"--sharpen takes AMOUNT[,THRESHOLD] (e.g. 2.0,0.05); got '{text}'")
    return values[0], values[1] if len(values) == 2 else 0.0
