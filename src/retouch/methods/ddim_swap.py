"""DDIM inversion + word swap, the "DDIM + word swap" baseline of pix2pix-zero (§4.3; Table 2 config B).

Invert the input latents x₀ to x_T with the deterministic DDIM process conditioned on the input's
caption c (pix2pix-zero Eq. 1–2, no classifier-free guidance, as pix2pix-zero inverts), then run DDIM
sampling from x_T with the word-swapped caption and classifier-free guidance. Nothing ties the edited
trajectory to the input's structure except the shared x_T, which is why the paper finds its
structure distance high. ``inversion="regularized"`` adds pix2pix-zero's noise regularization to the
inversion: Table 2 config C.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from retouch.methods import guidance_option, register, steps_option
from retouch.methods.word_swap import EDIT_GUIDANCE, INVERSIONS, WordSwapText, invert_latents
from retouch.options import option
from retouch.sampling import ddim_sample, ddim_timesteps, guided_denoiser


@dataclass
class DDIMSwapConfig(WordSwapText):
    num_steps: int = steps_option(100, "DDIM steps of inversion and of sampling (pix2pix-zero App. D: 100)")
    guidance_scale: float = guidance_option(help=EDIT_GUIDANCE)
    inversion: str = option("ddim", "ddim (Table 2 config B) or regularized: with pix2pix-zero's L_auto (config C)",
                            choices=INVERSIONS)


@register("ddim", DDIMSwapConfig, "DDIM inversion with the caption, DDIM sampling with the word-swapped caption")
@torch.no_grad()
def ddim_swap(backbone, images: torch.Tensor, config: DDIMSwapConfig, progress=None) -> torch.Tensor:
    source, target = config.prompts()
    batch = images.shape[0]
    latents = invert_latents(backbone, backbone.encode_images(images), backbone.encode_text([source] * batch),
                             num_steps=config.num_steps, inversion=config.inversion)
    denoise = guided_denoiser(backbone.denoise, backbone.encode_text([target] * batch),
                              backbone.encode_text([""] * batch), config.guidance_scale)
    latents = ddim_sample(denoise, backbone.schedule, latents, ddim_timesteps(backbone.schedule, config.num_steps),
                          None, num_steps=config.num_steps, callback=progress)
    return backbone.decode_latents(latents)
