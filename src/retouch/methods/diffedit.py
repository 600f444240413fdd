"""DiffEdit (Couairon et al., ICLR 2023): a mask from contrasting noise predictions, then mask-guided DDIM.

The three steps of §3.2 (Fig. 2):

1. **Mask.** Noise the input latent to t = 50 % of T with n = 10 draws, predict the noise under the
   query Q and under the reference R (the input's caption, or the empty text), average
   |ε(Q) − ε(R)| over draws and channels, remove extreme values, rescale to [0, 1] and binarise
   at 0.5: :func:`difference_mask`, which takes any ``predict_noise`` so a trained model can reuse
   it (the portrait paper's MCDM, §3.4).
2. **Encoding.** DDIM-encode the input to t_r = r·T (encoding ratio r) with the *unconditional*
   model ("no text input is used for this step"): :func:`encode_trajectory` keeps every x_t.
3. **Decoding with mask guidance.** DDIM-decode x_r with Q (classifier-free guidance against the
   empty text) and after every step put back the encoded latent outside the mask,
   ỹ_t = M y_t + (1 − M) x_t: :func:`mask_guided_decode`.

Where we differ from diffusers' deprecated ``StableDiffusionDiffEditPipeline`` (the independent
implementation ``tests/test_diffedit.py`` checks parity against):

- After the step that lands on t_prev, diffusers puts back the encoded latent of the step's *start* t
  (one step noisier), so its last step leaves x at the lowest grid timestep outside the mask instead
  of x₀. We pair equal noise levels as the paper's ỹ_t does; outside the mask the result is then
  exactly the input's latent x₀.
- diffusers' ``invert`` encodes with the prompt it is given (its example: the source caption) and
  classifier-free guidance 7.5 by default; we encode unconditionally, as §3.2 step 2 says.
- diffusers predicts the mask's noises with guidance. With one null branch for both prompts,
  ε̃(Q) − ε̃(R) = s·(ε(Q) − ε(R)), and the rescaling below divides s out, so we use unguided
  predictions: the same mask for half the U-Net passes.
- diffusers takes the clamping mean over the whole batch; we take it per image, so an image's mask
  does not depend on the others in its batch (identical for one image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from retouch.errors import RetouchError
from retouch.methods import guidance_option, register, steps_option
from retouch.methods.word_swap import edit_field, source_text_field, swap_prompts
from retouch.options import check_options, option
from retouch.sampling import (
    Callback,
    NoiseSchedule,
    add_noise,
    ddim_invert,
    ddim_sample,
    guided_denoiser,
    img2img_timesteps,
    to_epsilon,
)

#: The difference map is clamped at this multiple of its mean before rescaling to [0, 1]: the
#: "remove extreme values … rescaled to the range [0, 1]" of §3.2 step 1, as diffusers'
#: ``mask_thresholding_ratio`` (default 3) does it (the paper gives no number).
CLAMP_RATIO = 3.0

#: ``predict_noise(noisy_latents (B, C, h, w), t, which) -> ε (B, C, h, w)``, ``which`` "source" or "target".
NoisePredictor = Callable[[torch.Tensor, int, str], torch.Tensor]


class DifferenceMask(NamedTuple):
    """DiffEdit's mask at latent resolution: the rescaled difference map and its binarisation."""

    edit_map: torch.Tensor  # (B, 1, h, w) float in [0, 1]
    mask: torch.Tensor  # (B, 1, h, w) bool, True where the edit happens


def mask_timestep(schedule: NoiseSchedule, strength: float, num_steps: int = 50) -> int:
    """The grid timestep the mask's inputs are noised to: the first of ``img2img_timesteps`` at ``strength``."""
    timesteps = img2img_timesteps(schedule, num_steps, strength)
    if not timesteps:
        raise ValueError(f"mask strength {strength} keeps no step of a {num_steps}-step schedule")
    return timesteps[0]


@torch.no_grad()
def difference_mask(
    predict_noise: NoisePredictor,
    latents: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    strength: float = 0.5,
    num_steps: int = 50,
    draws: int = 10,
    seed: int = 0,
    threshold: float = 0.5,
    clamp_ratio: float = CLAMP_RATIO,
) -> DifferenceMask:
    """DiffEdit §3.2 step 1 for any noise predictor: where do the source and target predictions differ?

    ``latents`` (B, C, h, w) are noised ``draws`` times to t = :func:`mask_timestep` (DDPM Eq. 4); per
    draw ``predict_noise`` is called once per condition on a (B, C, h, w) batch. The map
    D = mean over draws and channels of |ε_target − ε_source| is clamped at ``clamp_ratio`` × its
    spatial mean and divided by that value, so it lies in [0, 1]; the mask is D > ``threshold``. A
    map that is zero everywhere (identical predictions) stays zero. The draws come from a CPU
    generator seeded with ``seed``, as one (draws, B, C, h, w) tensor, so one image reproduces
    diffusers' ``generate_mask`` noise.
    """
    t = mask_timestep(schedule, strength, num_steps)
    alpha = schedule.alpha(t)
    generator = torch.Generator().manual_seed(seed)
    noises = torch.randn((draws, *latents.shape), generator=generator, dtype=latents.dtype).to(latents.device)
    difference = torch.zeros_like(latents[:, :1])
    for noise in noises:
        noisy = add_noise(latents, noise, alpha)
        target, source = predict_noise(noisy, t, "target"), predict_noise(noisy, t, "source")
        difference += (target - source).abs().mean(dim=1, keepdim=True)
    difference /= draws
    ceiling = clamp_ratio * difference.mean(dim=(2, 3), keepdim=True)
    edit_map = torch.minimum(difference, ceiling) / ceiling.clamp_min(torch.finfo(ceiling.dtype).tiny)
    return DifferenceMask(edit_map, edit_map > threshold)


def mask_to_pixels(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A latent-resolution mask or map (B, 1, h, w) at pixel ``size`` (H, W).

    Binary masks are upsampled nearest (each latent cell becomes its block of pixels), maps bilinearly.
    """
    if mask.dtype == torch.bool:
        return F.interpolate(mask.float(), size=size, mode="nearest") > 0.5
    return F.interpolate(mask, size=size, mode="bilinear", align_corners=False).clamp(0, 1)


def text_noise_predictor(backbone, source_cond, target_cond) -> NoisePredictor:
    """``predict_noise`` of a text-to-image backbone: unguided ε under the reference R or the query Q."""
    schedule = backbone.schedule

    def predict_noise(noisy, t, which):
        output = backbone.denoise(noisy, t, target_cond if which == "target" else source_cond)
        return to_epsilon(noisy, output, schedule.alpha(t), schedule.prediction_type)

    return predict_noise


def encode_trajectory(denoise, schedule: NoiseSchedule, latents: torch.Tensor, conditioning, *,
                      num_steps: int, strength: float) -> list[torch.Tensor]:
    """DiffEdit §3.2 step 2: DDIM encoding of x₀ to t_r; returns [x₀, x_{t_1}, …, x_{t_r}], lowest t first.

    Entry k is at the noise level of ``img2img_timesteps(schedule, num_steps, strength)[-k]``, so
    :func:`mask_guided_decode` finds each step's reference by counting from the end.
    """
    trajectory = [latents]
    kept = len(img2img_timesteps(schedule, num_steps, strength))
    ddim_invert(denoise, schedule, latents, conditioning, num_steps=num_steps, until_step=kept,
                callback=lambda i, t, x: trajectory.append(x))
    return trajectory


def mask_guided_decode(
    denoise,
    schedule: NoiseSchedule,
    trajectory: Sequence[torch.Tensor],
    mask: torch.Tensor,
    timesteps: Sequence[int],
    *,
    num_steps: int,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DiffEdit §3.2 step 3: DDIM from x_r = ``trajectory[-1]``, keeping the encoded latents outside ``mask``.

    After the step to t_prev the latents outside ``mask`` (B, 1, h, w) bool are replaced by the encoded
    latent at t_prev (ỹ_t = M y_t + (1 − M) x_t); after the last step that is x₀ itself, so outside
    the mask the result equals ``trajectory[0]`` exactly. ``timesteps`` are the
    ``len(trajectory) − 1`` decoding steps, noisiest first; ``denoise(latents, t, None)`` is the
    (guided) query denoiser; the put-back is :func:`~retouch.sampling.ddim_loop`'s ``blend``.
    """
    return ddim_sample(denoise, schedule, trajectory[-1], timesteps, None, num_steps=num_steps, callback=callback,
                       blend=lambda i, t, latents: torch.where(mask, latents, trajectory[-2 - i]))


@dataclass
class DiffEditConfig:
    prompt: str = option("", "text describing the edited image")
    edit: str = edit_field()
    source_text: str = source_text_field()
    strength: float = option(0.5, "encoding ratio r: DDIM-encode to t_r = r·T and decode from there (DiffEdit "
                                  "§3.2, 0.5)", at_least=0, at_most=1)
    mask_strength: float = option(0.5, "noise level t/T of the mask's noised inputs (DiffEdit §3.2 step 1: 50 %)",
                                  at_least=0, at_most=1)
    mask_draws: int = option(10, "noise draws the mask's prediction differences are averaged over (DiffEdit "
                                 "§3.2: n = 10)", at_least=1)
    mask_threshold: float = option(0.5, "binarisation threshold of the mask's rescaled difference map (DiffEdit "
                                        "§3.2: 0.5)", at_least=0, at_most=1)
    num_steps: int = steps_option()
    guidance_scale: float = guidance_option()
    seed: int = option(0, "seed of the mask's noise draws")

    def validate(self) -> None:
        if self.edit and self.prompt:
            raise RetouchError("give either --prompt or --edit with --source-text, not both")
        if not (self.edit or self.prompt):
            raise RetouchError("diffedit needs the edit: --edit SOURCE->TARGET with --source-text CAPTION, "
                               "or --prompt TEXT (--source-text is then the optional reference caption)")
        self.prompts()  # a bad edit or a caption without the source word fails before any work
        check_options(self)
        if int(self.num_steps * self.mask_strength) < 1:
            raise RetouchError(f"--mask-strength {self.mask_strength:g} noises by less than one of "
                               f"{self.num_steps} steps; raise it or --num-steps")

    def prompts(self) -> tuple[str, str]:
        """(reference R, query Q): the caption and its word swap, or ``source_text`` (maybe empty) and ``prompt``."""
        if self.edit:
            return swap_prompts(self.edit, self.source_text, "", target_flag="--prompt")
        return self.source_text, self.prompt


@dataclass
class DiffEditResult:
    images: torch.Tensor  # (B, 3, H, W) in [−1, 1]
    edit_map: torch.Tensor  # (B, 1, h, w) in [0, 1] at latent resolution (a given mask, as floats)
    mask: torch.Tensor  # (B, 1, h, w) bool, the mask the decoding used


@torch.no_grad()
def diffedit_edit(backbone, images: torch.Tensor, config: DiffEditConfig, mask: torch.Tensor | None = None,
                  progress=None) -> DiffEditResult:
    """DiffEdit on images (B, 3, H, W) in [−1, 1]; ``mask`` (B or 1, 1, h, w) bool at latent size skips step 1."""
    schedule, batch = backbone.schedule, images.shape[0]
    reference, query = config.prompts()
    latents = backbone.encode_images(images)
    uncond = backbone.encode_text([""] * batch)
    target = backbone.encode_text([query] * batch)
    if mask is None:
        predict_noise = text_noise_predictor(backbone, backbone.encode_text([reference] * batch), target)
        edit_map, mask = difference_mask(
            predict_noise, latents, schedule, strength=config.mask_strength, num_steps=config.num_steps,
            draws=config.mask_draws, seed=config.seed, threshold=config.mask_threshold)
    else:
        mask = mask.to(latents.device).expand(batch, 1, *latents.shape[-2:])
        edit_map = mask.to(latents.dtype)
    timesteps = img2img_timesteps(schedule, config.num_steps, config.strength)
    trajectory = encode_trajectory(backbone.denoise, schedule, latents, uncond, num_steps=config.num_steps,
                                   strength=config.strength)
    denoise = guided_denoiser(backbone.denoise, target, uncond, config.guidance_scale)
    latents = mask_guided_decode(denoise, schedule, trajectory, mask, timesteps, num_steps=config.num_steps,
                                 callback=progress)
    return DiffEditResult(backbone.decode_latents(latents), edit_map, mask)


@register("diffedit", DiffEditConfig,
          "DiffEdit: a mask from prompt-contrasted noise predictions, mask-guided DDIM (Couairon et al. 2023)")
def diffedit(backbone, images: torch.Tensor, config: DiffEditConfig, progress=None) -> torch.Tensor:
    return diffedit_edit(backbone, images, config, progress=progress).images
