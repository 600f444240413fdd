"""Stochastic DDPM inversion + word swap: pix2pix-zero's Table 2 config A, and edit-friendly DDPM inversion.

Two ways to get a noisy latent from the input x₀, both followed by the stochastic DDPM sampler
(DDIM with η = 1, Song et al. 2021 Eq. 12/16) under the word-swapped caption and classifier-free
guidance:

``noising`` — **Table 2 config A.** pix2pix-zero §4.4 describes A as "a stochastic noising process for
  inversion" that B replaces with DDIM inversion, and §3.1 as "the fixed forward noising process,
  followed by de-noising with the reverse process", both stochastic: x_{t₀} ~ q(x_{t₀} | x₀)
  (DDPM Eq. 4), then fresh noise z_t at every reverse step. (pix2pix-zero predates edit-friendly
  inversion, so A cannot be it.) At strength < 1 this is SDEdit with η = 1.
``edit-friendly`` — Huberman-Spiegelglas, Kulikov & Michaeli (CVPR 2024, Alg. 1): draw every x_t
  independently from q(x_t | x₀), solve the noise maps z_t that make the DDPM sampler under the
  caption reproduce that sequence exactly (:func:`retouch.sampling.edit_friendly_inversion`), and
  resample with the target caption and the *stored* z_t. Their defaults: 100 steps, source CFG 3.5,
  "skip" 36 of 100 steps (strength 0.64).

Every image's noise depends on the seed alone, so a batch gives the same results as single runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from retouch.methods import guidance_option, register, steps_option
from retouch.methods.word_swap import EDIT_GUIDANCE, WordSwapText
from retouch.options import option
from retouch.sampling import add_noise, ddim_sample, edit_friendly_inversion, guided_denoiser, img2img_timesteps

MODES = ("noising", "edit-friendly")
#: The DDPM sampler's η: σ_t² is the DDPM posterior variance β̃_t (Ho et al. 2020, Eq. 7).
DDPM_ETA = 1.0


@dataclass
class DDPMInversionConfig(WordSwapText):
    mode: str = option("noising", "noising: forward noising, pix2pix-zero Table 2 config A; edit-friendly: the "
                                  "noise-space inversion of Huberman-Spiegelglas et al. 2024", choices=MODES)
    strength: float = option(1.0, "t₀/T the inversion reaches (1: x_T as in config A; edit-friendly's skip 36/100 "
                                  "is 0.64)", at_least=0, at_most=1)
    num_steps: int = steps_option(100, "DDPM steps of the full schedule (pix2pix-zero App. D: 100)")
    guidance_scale: float = guidance_option(help=EDIT_GUIDANCE)
    source_guidance_scale: float = guidance_option(3.5, "edit-friendly only: guidance scale with the caption while "
                                                        "inverting (their default 3.5)")
    seed: int = option(0, "seed of the forward and sampler noise")


def seeded_noise(count: int, like: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """``count`` standard normal tensors shaped like ``like`` (B, C, h, w), every row drawn from ``seed``.

    Rows share their draws so that an image's result never depends on what else is in the batch.
    """
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randn((count, 1, *like.shape[1:]), generator=generator, dtype=like.dtype)
    return list(draws.to(like.device).expand(-1, like.shape[0], -1, -1, -1).unbind(0))


@register("ddpm", DDPMInversionConfig,
          "stochastic DDPM inversion (forward noising or edit-friendly) + word swap, pix2pix-zero Table 2 config A")
@torch.no_grad()
def ddpm_inversion(backbone, images: torch.Tensor, config: DDPMInversionConfig, progress=None) -> torch.Tensor:
    schedule = backbone.schedule
    source, target = config.prompts()
    timesteps = img2img_timesteps(schedule, config.num_steps, config.strength)
    latents = backbone.encode_images(images)
    if not timesteps:
        return backbone.decode_latents(latents)
    batch = images.shape[0]
    uncond = backbone.encode_text([""] * batch)
    # One forward-noise draw per step for edit-friendly, one for x_{t₀} plus one z per step for noising.
    noises = seeded_noise(len(timesteps) + (config.mode == "noising"), latents, config.seed)
    if config.mode == "edit-friendly":
        invert = guided_denoiser(backbone.denoise, backbone.encode_text([source] * batch), uncond,
                                 config.source_guidance_scale)
        latents, noises = edit_friendly_inversion(invert, schedule, latents, timesteps, None, noises,
                                                  num_steps=config.num_steps, eta=DDPM_ETA)
    else:
        latents, noises = add_noise(latents, noises[0], schedule.alpha(timesteps[0])), noises[1:]
    denoise = guided_denoiser(backbone.denoise, backbone.encode_text([target] * batch), uncond, config.guidance_scale)
    latents = ddim_sample(denoise, schedule, latents, timesteps, None, num_steps=config.num_steps, eta=DDPM_ETA,
                          noises=noises, callback=progress)
    return backbone.decode_latents(latents)
