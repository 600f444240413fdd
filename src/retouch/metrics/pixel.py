"""Pixel metrics: L1, PSNR, SSIM, their masked variants, and background preservation.

Images are float tensors ``(B, 3, H, W)`` (or one ``(3, H, W)``) in [0, 1]; masks are ``(B, 1, H, W)``
or ``(B, H, W)`` with values in {0, 1} or soft weights in [0, 1]. Every function returns one value
per image, shape ``(B,)``. A mask selects the pixels that are *scored* (weight = mask value); an empty
mask gives NaN (nothing to compare), a perfect match gives PSNR = inf.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from retouch.errors import RetouchError

# An LPIPS-like callable: (a, b) images in [0, 1] → (B,) perceptual distances.
LPIPSFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SSIM_K1, SSIM_K2 = 0.01, 0.03  # Wang et al. 2004, §III-C


def _as_batch(images: torch.Tensor) -> torch.Tensor:
    return images.unsqueeze(0) if images.dim() == 3 else images


def _as_mask(mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` float weights, in the images' dtype and device."""
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    return mask.to(device=images.device, dtype=images.dtype)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean over all but the batch dimension; ``weights`` (B, 1, h, w) broadcast over channels."""
    if weights is None:
        return values.flatten(1).mean(1)
    weights = weights.expand_as(values)
    return (values * weights).flatten(1).sum(1) / weights.flatten(1).sum(1)


def l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error per image; with a mask, Σ m·|a−b| / (Σ m · channels)."""
    a, b = _as_batch(a), _as_batch(b)
    weights = None if mask is None else _as_mask(mask, a)
    return _weighted_mean((a - b).abs(), weights)


def mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per image, masked like :func:`l1`."""
    a, b = _as_batch(a), _as_batch(b)
    weights = None if mask is None else _as_mask(mask, a)
    return _weighted_mean((a - b).square(), weights)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, 10·log10(data_range² / MSE), MSE masked like :func:`l1`."""
    return 10.0 * torch.log10(data_range**2 / mse(a, b, mask))


def gaussian_window(window: int = 11, sigma: float = 1.5, dtype=torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``window`` taps (scipy's ``gaussian_filter`` with truncate 3.5 at σ=1.5)."""
    x = torch.arange(window, dtype=dtype) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _blur_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of every channel, 'valid' (no padding): (B, C, H−w+1, W−w+1)."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 11,
             sigma: float = 1.5) -> torch.Tensor:
    """Per-channel SSIM map of Wang et al. 2004 (Eq. 13), ``(B, C, H−window+1, W−window+1)``.

    Local statistics use a Gaussian window (σ = 1.5, 11 taps) and population (not sample) variances,
    K1 = 0.01, K2 = 0.03. The window is applied 'valid': only positions where it fits inside the
    image are scored. This equals ``skimage.metrics.structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``, which filters with padding and then crops the same
    (window−1)/2 border, so padding never reaches the scored values. Computed in float64.
    """
    a, b = _as_batch(a).double(), _as_batch(b).double()
    g = gaussian_window(window, sigma).to(a.device)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _blur_valid(a, g), _blur_valid(b, g)
    var_a = _blur_valid(a * a, g) - mu_a**2
    var_b = _blur_valid(b * b, g) - mu_b**2
    cov = _blur_valid(a * b, g) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, mask: torch.Tensor | None = None,
         window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image, averaged over channels and window positions (see :func:`ssim_map`).

    With a mask, the SSIM map is averaged with weight w(p) = min of the mask over the window centred
    at p (a soft erosion): a window counts only if it lies wholly in the scored region, so pixels with
    mask 0 cannot change the score at all — not even through windows that straddle the mask edge.
    A region with no whole window inside it gives NaN.
    """
    a = _as_batch(a)
    smap = ssim_map(a, b, data_range, window, sigma)
    weights = None
    if mask is not None:
        weights = -F.max_pool2d(-_as_mask(mask, a).double(), window, stride=1)
    return _weighted_mean(smap, weights).to(a.dtype)


def background_preservation(source: torch.Tensor, edited: torch.Tensor, edit_mask: torch.Tensor,
                            lpips_fn: LPIPSFn | None = None) -> dict[str, torch.Tensor]:
    """How well an edit left the background alone: L1, PSNR, SSIM (and LPIPS) outside ``edit_mask``.

    ``edit_mask`` is 1 on the edited object (where change is wanted); the background is ``1 − mask``.
    L1/PSNR/SSIM are the masked metrics above on the background. LPIPS has no masked form, so it is
    taken between ``source`` and the edited image with its edit region filled back from the source,
    ``edited·(1−m) + source·m`` — the BG-LPIPS of pix2pix-zero §4.1 (they mask with Detic boxes).
    Every value is ``(B,)``; the dict has keys ``l1``, ``psnr``, ``ssim`` and, with ``lpips_fn``, ``lpips``.
    """
    source, edited = _as_batch(source), _as_batch(edited)
    m = _as_mask(edit_mask, source)
    background = 1.0 - m
    scores = {
        "l1": l1(source, edited, background),
        "psnr": psnr(source, edited, mask=background),
        "ssim": ssim(source, edited, mask=background),
    }
    if lpips_fn is not None:
        filled = edited * background + source * m
        scores["lpips"] = lpips_fn(source, filled).reshape(-1)
    return scores


def load_lpips(path: str | Path, net: str = "alex", device: str | torch.device = "cpu") -> LPIPSFn:
    """LPIPS (Zhang et al. 2018) from a LOCAL weights file, as a callable (a, b) in [0, 1] → (B,).

    Needs the optional ``lpips`` package (not a retouch dependency). ``path`` must hold the *whole*
    ``lpips.LPIPS(net=net)`` state dict — backbone and linear heads — as ``.safetensors`` or a
    ``.pth``/``.pt`` read with ``weights_only=True``: the package's own ``weights/v0.1/*.pth`` holds only
    the linear heads and would fetch the backbone from the internet, which retouch never does. Make
    one where there is internet with ``torch.save(lpips.LPIPS(net="alex").state_dict(), "lpips_alex.pth")``.
    """
    path = Path(path)
    try:
        import lpips
    except ImportError as err:
        raise RetouchError(
            f"LPIPS needs the lpips package and local weights at '{path}': pip install lpips"
        ) from err
    if not path.is_file():
        raise RetouchError(f"LPIPS needs the lpips package and local weights at '{path}': no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # pretrained=False, pnet_rand=True: build the architecture without fetching any weights.
    model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RetouchError(
            f"'{path}' is not a full LPIPS-{net} state dict (missing {len(missing)}, unexpected "
            f"{len(unexpected)} keys); save lpips.LPIPS(net='{net}').state_dict() including the backbone"
        )
    model = model.to(device).eval().requires_grad_(False)

    def lpips_fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # normalize=True: the package maps [0, 1] inputs to the [-1, 1] its networks expect.
        return model(_as_batch(a).to(device), _as_batch(b).to(device), normalize=True).reshape(-1)

    return lpips_fn
