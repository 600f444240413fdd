"""SDEdit (Meng et al., ICLR 2022): noise the input to an intermediate time, then denoise with a prompt.

Section 3 of the paper: perturb x₀ to t₀ = strength·T with the forward process and run the reverse
process from there; the smaller the strength, the closer to the input. We run the reverse process
with DDIM (η configurable; η = 1 is the paper's stochastic sampler) and classifier-free guidance,
as Stable Diffusion's img2img does.

With ``edit`` and ``source_text`` instead of ``prompt`` it is pix2pix-zero's "SDEdit + word swap"
baseline (§4.3): the prompt is the input's caption with the source word swapped for the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from retouch.errors import RetouchError
from retouch.methods import guidance_option, register, steps_option
from retouch.methods.word_swap import edit_field, source_text_field, swap_prompts
from retouch.options import check_options, option
from retouch.sampling import add_noise, ddim_sample, guided_denoiser, img2img_timesteps


@dataclass
class SDEditConfig:
    prompt: str = option("", "text describing the edited image")
    negative_prompt: str = option("", "text the result should move away from")
    strength: float = option(0.5, "t₀/T, how much noise is added (SDEdit §3)", at_least=0, at_most=1)
    num_steps: int = steps_option()
    guidance_scale: float = guidance_option()
    eta: float = option(0.0, "DDIM η: 0 deterministic, 1 the stochastic DDPM-like sampler", at_least=0, at_most=1)
    seed: int = option(0, "seed of the added noise")
    edit: str = edit_field()
    source_text: str = source_text_field()

    def validate(self) -> None:
        if self.edit and self.prompt:
            raise RetouchError("give either --prompt or --edit with --source-text, not both")
        if self.source_text and not self.edit:
            raise RetouchError("--source-text is the caption the --edit word swap applies to; give --edit too")
        if self.edit:
            self.target_prompt()  # a bad edit or a caption without the source word fails before any work
        check_options(self)

    def target_prompt(self) -> str:
        """``prompt``, or the caption with the edit's words swapped (SDEdit + word swap)."""
        if not self.edit:
            return self.prompt
        return swap_prompts(self.edit, self.source_text, "", target_flag="--prompt")[1]


@register("sdedit", SDEditConfig, "SDEdit: add noise to the input, denoise towards the prompt (Meng et al. 2022)")
@torch.no_grad()
def sdedit(backbone, images: torch.Tensor, config: SDEditConfig, progress=None) -> torch.Tensor:
    schedule = backbone.schedule
    timesteps = img2img_timesteps(schedule, config.num_steps, config.strength)
    latents = backbone.encode_images(images)
    if not timesteps:
        return backbone.decode_latents(latents)
    generator = torch.Generator().manual_seed(config.seed)
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
    latents = add_noise(latents, noise, schedule.alpha(timesteps[0]))
    batch = images.shape[0]
    cond = backbone.encode_text([config.target_prompt()] * batch)
    uncond = backbone.encode_text([config.negative_prompt] * batch)
    denoise = guided_denoiser(backbone.denoise, cond, uncond, config.guidance_scale)
    latents = ddim_sample(
        denoise, schedule, latents, timesteps, None, num_steps=config.num_steps, eta=config.eta,
        generator=generator, callback=progress,
    )
    return backbone.decode_latents(latents)
