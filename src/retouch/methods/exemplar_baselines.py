"""The two baselines PIXELS argues against (Das Biswas et al. 2025, §A Naive Solution, §Spatially Adjusting Noise).

Both take the same exemplars, maps and options as ``pixels`` and share its inputs, noise and
denoiser; after building their start latent they are plain SDEdit (Meng et al. 2022, §3): DDIM over
the img2img tail of the schedule from ``strength``.

* ``latent-surgery``: binarise each map at ½ (the paper tests non-PIXELS methods "with the binarized
  version of the map"), paste the exemplar latents there (later exemplars on top), noise the
  composite to t_ds^max and denoise it. Fig. 2: seams at the edit boundary. The paper does not say
  where it binarises; ``--paste full`` pastes only the fully edited cells (latent map = 1), the region
  PIXELS' Algorithm 1 line 9-10 pastes, so both start from the same surgical latent.
* ``scaled-noise``: the same composite, but the noise added to each cell is scaled by its map value,
  x_t = √ᾱ z_surgical + √(1−ᾱ) (m ⊙ ε), so unedited cells start (almost) clean. The paper finds the
  model, never trained on such inputs, drifts towards flat single-colour images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from retouch.methods import register
from retouch.methods.exemplar_inputs import (
    ExemplarConfig,
    check_exemplar_inputs,
    draw_noise,
    encode_exemplar_inputs,
    load_exemplar_inputs,
    text_denoiser,
)
from retouch.methods.pixels import surgical_latent
from retouch.options import option
from retouch.sampling import add_noise, ddim_sample, img2img_timesteps

#: where the baselines binarise each latent-size map: "half" (m > ½) or "full" (m = 1, PIXELS' paste region)
PASTE_REGIONS = ("half", "full")


@dataclass
class BaselineConfig(ExemplarConfig):
    paste: str = option("half", "paste the exemplar where the latent-size map is > 1/2 ('half') or only where it "
                                "is 1 ('full', the cells PIXELS pastes)", choices=PASTE_REGIONS)


def paste_region(latent_map: torch.Tensor, paste: str = "half") -> torch.Tensor:
    """The binarised map of a baseline: m > ½, or m = 1 (area averaging gives exactly 1 only for a cell whose
    whole pixel block is 1)."""
    return latent_map > 0.5 if paste == "half" else latent_map >= 1.0


@torch.no_grad()
def exemplar_sdedit_latents(backbone, source, exemplars, maps, config: BaselineConfig, *, scale_noise: bool,
                            progress=None) -> torch.Tensor:
    """Final latents of ``latent-surgery`` (``scale_noise=False``) or ``scaled-noise`` (``True``)."""
    config.validate()
    exemplars, maps = check_exemplar_inputs(source, exemplars, maps)
    schedule = backbone.schedule
    timesteps = img2img_timesteps(schedule, config.num_steps, config.strength)
    generator = torch.Generator().manual_seed(config.seed)
    denoise = text_denoiser(backbone, config, source.shape[0])
    source_latents, exemplar_latents, latent_maps = encode_exemplar_inputs(backbone, source, exemplars, maps)
    noise = draw_noise(source_latents, generator)
    composite = surgical_latent(source_latents, exemplar_latents, [paste_region(m, config.paste) for m in latent_maps])
    if scale_noise:
        noise = noise * torch.stack(latent_maps).amax(dim=0)
    latents = add_noise(composite, noise, schedule.alpha(timesteps[0]))
    return ddim_sample(denoise, schedule, latents, timesteps, None, num_steps=config.num_steps, callback=progress)


def _register_baseline(name: str, summary: str, *, scale_noise: bool):
    @register(name, BaselineConfig, f"{summary} (PIXELS' baseline)", prepare=load_exemplar_inputs)
    def edit(backbone, images, config: BaselineConfig, progress=None, *, exemplars=None, maps=None):
        latents = exemplar_sdedit_latents(backbone, images, exemplars, maps, config, scale_noise=scale_noise,
                                          progress=progress)
        with torch.no_grad():
            return backbone.decode_latents(latents)

    return edit


latent_surgery = _register_baseline("latent-surgery", "naive exemplar editing: paste exemplar latents, then SDEdit",
                                    scale_noise=False)
scaled_noise = _register_baseline("scaled-noise", "exemplar editing with noise scaled by the edit map",
                                  scale_noise=True)
