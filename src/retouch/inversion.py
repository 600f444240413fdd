"""DDIM inversion with pix2pix-zero's noise regularization (Parmar et al. 2023, §3.1).

Plain DDIM inversion (Eq. 1–2) walks x₀ up to x_T with the noise ε_θ(x_t, t, c) the U-Net predicts.
Those predictions drift away from white Gaussian noise, which makes the inverted x_T hard to edit;
pix2pix-zero therefore nudges every predicted ε towards white noise before using it: a few gradient
steps on the autocorrelation term L_pair (Eq. 3) and the KL term L_KL (see :mod:`retouch.guidance`).

The regularization acts on ε, whatever the network predicts: v- and x₀-predictions are converted to ε
first (at the noise level the DDIM inversion step reads them at), regularized, and the step is taken
with that ε. For ε-prediction models this is exactly the official code and diffusers' deprecated
``StableDiffusionPix2PixZeroPipeline.invert`` (tested); for v-prediction diffusers differentiates
through the v→ε conversion instead, which rescales the gradient steps by √ᾱ.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from retouch.guidance import autocorrelation_gradient, kl_gradient
from retouch.sampling import Callback, ddim_invert


@dataclass(frozen=True)
class NoiseRegularization:
    """How ε is regularized at every inversion step (defaults: pix2pix-zero supplement and official code)."""

    lambda_auto_corr: float = 20.0  # step size on L_pair, split over the rolls
    lambda_kl: float = 20.0  # step size on L_KL (the paper's λ = 20)
    num_reg_steps: int = 5  # "we apply the noise regularization for 5 iterations at each timestep"
    num_auto_corr_rolls: int = 5  # random offsets δ drawn per iteration
    min_shift: int = 1  # smallest offset δ (diffusers' pipeline: 0)
    rescale: bool = False  # ×2 per pyramid level as the paper's text says (official code: no)


def regularize_noise(
    noise: torch.Tensor, regularization: NoiseRegularization, generator: torch.Generator | None = None
) -> torch.Tensor:
    """ε after ``num_reg_steps`` rounds of gradient descent on L_pair and L_KL (pix2pix-zero §3.1).

    Each round takes ``num_auto_corr_rolls`` steps of size λ_ac/rolls on L_pair, each with fresh random
    offsets, then one step of size λ_KL on L_KL — the official code's schedule, which spreads the
    autocorrelation weight over several offsets per round. Losses are per image and summed, so every
    image of a batch is regularized on its own. The gradients are the closed forms of
    :mod:`retouch.guidance` (no autograd: 30 of them per inversion step). The steps run in float32
    even for half-precision models: the coefficients are means over thousands of products.
    """
    eps = noise.detach().float()
    for _ in range(regularization.num_reg_steps):
        if regularization.lambda_auto_corr > 0:
            step = regularization.lambda_auto_corr / regularization.num_auto_corr_rolls
            for _ in range(regularization.num_auto_corr_rolls):
                eps = eps - step * autocorrelation_gradient(eps, generator, min_shift=regularization.min_shift,
                                                            rescale=regularization.rescale)
        if regularization.lambda_kl > 0:
            eps = eps - regularization.lambda_kl * kl_gradient(eps)
    return eps.to(noise.dtype)


def invert_with_noise_regularization(
    backbone,
    latents: torch.Tensor,
    conditioning,
    *,
    num_steps: int,
    regularization: NoiseRegularization | None = NoiseRegularization(),
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """x_T of clean latents x₀ by DDIM inversion (pix2pix-zero Eq. 1–2) with regularized noise.

    :func:`retouch.sampling.ddim_invert` (so it matches diffusers' ``DDIMInverseScheduler``) without
    classifier-free guidance, conditioned on ``conditioning`` (the caption), with
    :func:`regularize_noise` as its ``regularize`` hook. ``regularization=None`` gives plain DDIM
    inversion (up to float rounding). The random offsets of L_pair come from ``generator`` (a fresh
    ``manual_seed(0)`` one if omitted), so inversion is deterministic.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    # Without regularization ε still goes through the ε reading (identity hook), as it always has:
    # for v-prediction that differs from plain ddim_invert by float rounding only.
    regularize = (lambda eps: eps) if regularization is None else (
        lambda eps: regularize_noise(eps, regularization, generator))
    return ddim_invert(torch.no_grad()(backbone.denoise), backbone.schedule, latents, conditioning,
                       num_steps=num_steps, regularize=regularize, callback=callback)
