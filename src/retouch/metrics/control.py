"""What a slider of the multitask paper controls, measured on images (its Fig. 4 read as curves).

Each measure is one number per image, so a control curve is its mean over crops against the slider,
for the model and for the exact operator on the same crops:

* blur β → :func:`gradient_energy` falls (a longer motion-blur kernel removes more gradient);
* grain σ → :func:`flat_high_frequency_energy` rises (bigger grains leave more texture where the
  input was flat);
* sharpening λ → :func:`gradient_energy` rises; its threshold μ → it falls (less detail passes);
* colour transfer → :func:`colour_statistics_distance` to the reference falls below the input's.

Images are (N, 3, H, W) tensors in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from retouch.metrics.pixel import _blur_valid, gaussian_window

#: Rec. 601 luma weights: the measures read brightness structure, not hue.
_LUMA = (0.299, 0.587, 0.114)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of (N, 3, H, W) RGB."""
    weights = images.new_tensor(_LUMA)[None, :, None, None]
    return (images * weights).sum(dim=1, keepdim=True)


def gradient_magnitude2(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H−1, W−1) squared forward-difference gradient of the luma."""
    y = luminance(images.float())
    dx, dy = y[..., :-1, 1:] - y[..., :-1, :-1], y[..., 1:, :-1] - y[..., :-1, :-1]
    return dx.square() + dy.square()


def gradient_energy(images: torch.Tensor) -> torch.Tensor:
    """(N,) mean squared luma gradient: lower is blurrier."""
    return gradient_magnitude2(images).mean(dim=(1, 2, 3))


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Same-size Gaussian blur (3σ taps each side, reflected borders): SSIM's separable filter on a padded image."""
    radius = max(1, int(round(3 * sigma)))
    kernel = gaussian_window(2 * radius + 1, sigma, dtype=images.dtype).to(images.device)
    return _blur_valid(F.pad(images, (radius, radius, radius, radius), mode="reflect"), kernel)


def flat_regions(sources: torch.Tensor, quantile: float = 0.5) -> torch.Tensor:
    """(N, 1, H−1, W−1) bool: where the source's smoothed luma gradient is below its ``quantile`` (per image)."""
    smooth = _gaussian_blur(gradient_magnitude2(sources), 1.5)
    limit = torch.quantile(smooth.flatten(1), quantile, dim=1)[:, None, None, None]
    return smooth <= limit


def flat_high_frequency_energy(images: torch.Tensor, sources: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """(N,) mean squared high-pass luma (image minus its Gaussian blur) inside the source's flat regions:
    the grain the image carries where the input had none to give."""
    y = luminance(images.float())
    high = (y - _gaussian_blur(y, sigma)).square()[..., :-1, :-1]
    flat = flat_regions(sources.float()).float()
    return (high * flat).sum(dim=(1, 2, 3)) / flat.sum(dim=(1, 2, 3)).clamp_min(1)


def local_high_frequency_rms(images: torch.Tensor, window: int = 8, sigma: float = 1.0) -> torch.Tensor:
    """(N, C, H // window, W // window): the root mean square of each channel's high-pass (image minus its Gaussian
    blur) over window² patches: how much texture a patch carries, blind to where each grain of it falls."""
    high = images - _gaussian_blur(images, sigma)
    return F.avg_pool2d(high.square(), window).add(1e-6).sqrt()


def colour_statistics(images: torch.Tensor) -> torch.Tensor:
    """(N, 6): mean and standard deviation of each CIE-Lab channel (Reinhard et al.'s statistics)."""
    from retouch.effects.color_transfer import rgb_to_lab

    lab = torch.from_numpy(rgb_to_lab(images.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy())).float()
    flat = lab.flatten(1, 2)
    return torch.cat([flat.mean(dim=1), flat.std(dim=1)], dim=1)


def colour_statistics_distance(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """(N,) Euclidean distance between the Lab means and standard deviations of each image and its reference."""
    return (colour_statistics(images) - colour_statistics(references)).norm(dim=1)


def monotone(values, direction: str, relative_step: float = 0.01) -> bool:
    """Whether a curve's consecutive values all move the ``direction`` ("up" or "down") way, each step by
    more than ``relative_step`` × the curve's largest magnitude: a curve flat to within float noise (a
    model that ignores its slider moves its measure by ~1e-5 of 1e-2) is not monotone."""
    values = [float(v) for v in values]
    if direction not in ("up", "down"):
        raise ValueError(f"direction must be 'up' or 'down'; got {direction!r}")
    least = relative_step * max(abs(v) for v in values)
    steps = [b - a for a, b in zip(values[:-1], values[1:])]
    return all((s if direction == "up" else -s) > least for s in steps)
