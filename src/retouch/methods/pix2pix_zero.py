"""pix2pix-zero (Parmar et al., SIGGRAPH 2023): zero-shot image-to-image translation.

1. Caption the input (c, §3: BLIP) — :mod:`retouch.captioning`.
2. Invert it with DDIM, regularizing the predicted noise towards white noise (§3.1) —
   :func:`retouch.inversion.invert_with_noise_regularization`.
3. Find the edit direction Δc_edit from sentence banks around the source and target words (§3.2) —
   :mod:`retouch.directions`.
4. Denoise twice from x_inv (§3.3, Algorithm 1): a reconstruction pass with c records the reference
   cross-attention maps M_t^ref; the edited pass with c_edit = c + Δc_edit takes, at every step, a
   gradient step x_t ← x_t − λ_xa ∇L_xa (Eq. 5) towards those maps, then the classifier-free-guided
   DDIM step with c_edit — :func:`retouch.guided_pass.guided_edit_latents`, which pix2pix-zeroCon
   (:mod:`retouch.methods.zerocon`) runs with one more guidance term.

Against the official code and diffusers' deprecated pipeline, one knob differs by default
(``xa_branches``): Algorithm 1 guides the conditional branch's maps M_t^edit only; those
implementations put both classifier-free-guidance branches through the guidance step on their own
copies of x_t (the loss averaged over the branches) and continue the DDIM step from the
unconditional copy. ``xa_branches="both"`` reproduces them exactly (tested against diffusers).

``local_blend`` (off by default; not in the paper) adds Prompt-to-Prompt's local blending on the
reconstruction pass: outside where the edit departs from it, every step keeps the reconstruction
(:class:`retouch.guided_pass.DepartureBlend`). The mini backbone's own defaults turn it on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from retouch.captioning import caption_images
from retouch.directions import BANKS, EditDirection, build_direction, load_direction, sentence_banks
from retouch.edit_text import EditSpec, parse_edit
from retouch.errors import RetouchError
from retouch.guided_pass import PLACES, CrossAttentionTerm, DepartureBlend, guided_edit_latents
from retouch.inversion import NoiseRegularization, invert_with_noise_regularization
from retouch.methods import guidance_option, register, steps_option
from retouch.options import check_options, option

__all__ = ["Pix2PixZeroConfig", "run_pix2pix_zero", "edit_direction", "places"]

XA_BRANCHES = ("conditional", "both")
INVERSIONS = ("ddim", "regularized")


@dataclass
class Pix2PixZeroConfig:
    edit: str = option("", "SOURCE->TARGET words whose sentence banks give the edit direction Δc_edit (§3.2), "
                           "e.g. cat->dog")
    source_text: str = option("", "caption c of the input (§3; else --captioner)")
    target_text: str = option("", "instead of --edit: Δc = E(this text) − E(--source-text), a one-sentence "
                                  "direction")
    directions: str = option("", "cached edit direction (.safetensors from `retouch directions build`) instead "
                                 "of building one")
    bank: str = option("auto", "sentence bank for --edit: templates, world (mini-world captions) or auto (world "
                               "for mini-world words on the mini model, else templates)", choices=("auto", *BANKS))
    bank_size: int = option(0, "sentences per word (0: all 32 templates, 64 world or generated sentences)",
                            at_least=0)
    sentence_generator: str = option("", "local transformers causal-LM folder writing the sentence banks (the "
                                         "paper used GPT-3)")
    captioner: str = option("", "local BLIP folder captioning the input when --source-text is not given; 'mini' "
                                "for the mini world's judge")
    num_steps: int = steps_option(50, "DDIM steps of inversion and editing (official code 50; the paper's "
                                      "experiments 100)")
    guidance_scale: float = guidance_option(5.0, "classifier-free guidance scale of the edit (official code 5.0; "
                                                 "diffusers 7.5)")
    caption_as_negative: bool = option(True, "negative prompt = the caption, as the official real-image script "
                                             "(else the empty prompt)")
    xa_guidance: float = option(0.1, "λ_xa, step size of x_t ← x_t − λ_xa ∇L_xa (Algorithm 1; official 0.1 "
                                     "real, 0.15 synthetic images; keep ≤ 0.01 for SD 2.x); 0 disables the "
                                     "guidance", at_least=0)
    xa_branches: str = option("conditional", "guided CFG branches: conditional (Algorithm 1) or both (official "
                                             "code, diffusers)", choices=XA_BRANCHES)
    xa_places: str = option("down,mid,up", "U-Net parts whose cross-attention maps are guided (the paper: all)")
    inversion: str = option("regularized", "ddim, or regularized: DDIM inversion with the autocorrelation + KL "
                                           "noise regularizer (§3.1)", choices=INVERSIONS)
    lambda_auto_corr: float = option(20.0, "step size on the autocorrelation term L_pair (Eq. 3; official code "
                                           "20)", at_least=0)
    lambda_kl: float = option(20.0, "λ, step size on the KL term L_KL (§3.1 and supplement: 20)", at_least=0)
    num_reg_steps: int = option(5, "regularization iterations per inversion step (supplement: 5)", at_least=0)
    num_auto_corr_rolls: int = option(5, "random offsets δ per iteration (official code: 5)", at_least=1)
    auto_corr_min_shift: int = option(1, "smallest offset δ of L_pair (official code 1; diffusers 0)", at_least=0)
    auto_corr_rescale: bool = option(False, "multiply each 2×2-pooled pyramid level by 2 as §3.1's text says "
                                            "(official code: no)")
    local_blend: float = option(0.0, "not in the paper: threshold k of Prompt-to-Prompt's local blending (§3.2) "
                                     "on the reconstruction pass; outside where the edit departs from it by ≥ k × "
                                     "its largest departure, every step keeps the reconstruction (0: off)",
                                at_least=0)
    seed: int = option(0, "seed of the regularizer's random offsets")

    def validate(self) -> None:
        """One-line RetouchError for a bad value or a missing or conflicting edit."""
        edit_spec(self)
        check_options(self)
        places(self.xa_places, "--xa-places")
        if self.local_blend >= 1:
            raise RetouchError(f"--local-blend takes a threshold k in [0, 1) (0: off); got {self.local_blend}")

    def noise_regularization(self) -> NoiseRegularization | None:
        if self.inversion == "ddim":
            return None
        return NoiseRegularization(
            lambda_auto_corr=self.lambda_auto_corr, lambda_kl=self.lambda_kl, num_reg_steps=self.num_reg_steps,
            num_auto_corr_rolls=self.num_auto_corr_rolls, min_shift=self.auto_corr_min_shift,
            rescale=self.auto_corr_rescale,
        )


def places(text: str, flag: str) -> tuple[str, ...]:
    """``"down,mid"`` → ("down", "mid"), checked against the U-Net's parts."""
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    if not chosen or any(part not in PLACES for part in chosen):
        raise RetouchError(f"{flag} takes a comma-separated subset of {', '.join(PLACES)}; got {text!r}")
    return chosen


def edit_spec(config: Pix2PixZeroConfig) -> EditSpec | None:
    """The parsed ``--edit`` (None when the direction comes from a file or two texts); checks conflicts."""
    if config.edit and config.target_text:
        raise RetouchError("give either --edit or --target-text, not both")
    if config.directions and config.target_text:
        raise RetouchError("give either --directions or --target-text, not both")
    if config.target_text and not config.source_text:
        raise RetouchError("--target-text needs --source-text: the direction is the difference of the two texts")
    if not (config.edit or config.target_text or config.directions):
        raise RetouchError("pix2pix-zero needs an edit: --edit SOURCE->TARGET (e.g. cat->dog), --directions FILE, "
                           "or --source-text with --target-text")
    return parse_edit(config.edit) if config.edit else None


def edit_direction(backbone, config: Pix2PixZeroConfig) -> EditDirection:
    """Δc_edit from the cached file, the sentence banks of ``--edit``, or the two texts."""
    spec = edit_spec(config)
    if config.directions:
        direction = load_direction(config.directions, backbone)
        if spec is not None and (direction.source, direction.target) != (spec.source, spec.target):
            raise RetouchError(f"--directions holds {direction.source}->{direction.target} but --edit asks for "
                               f"{spec}; drop one of them")
        return direction
    if spec is None:
        return build_direction(backbone, [config.source_text], [config.target_text], source=config.source_text,
                               target=config.target_text, bank="texts")
    source, target, bank = sentence_banks(
        spec.source, spec.target, bank=config.bank, count=config.bank_size or None,
        generator=config.sentence_generator, seed=config.seed, model=backbone.source,
    )
    return build_direction(backbone, source, target, source=spec.source, target=spec.target, bank=bank)


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------
def run_pix2pix_zero(
    backbone,
    images: torch.Tensor,
    config: Pix2PixZeroConfig,
    *,
    terms: Callable[[object, tuple[int, int]], list] | None = None,
    progress=None,
    trace: list | None = None,
) -> torch.Tensor:
    """Caption → regularized inversion → guided edit → decode, for a batch of images in [−1, 1].

    ``terms(backbone, latent_size)`` builds the guidance terms (default: L_xa alone, pix2pix-zero);
    pix2pix-zeroCon adds its contrastive term. Every image is edited independently of the others.
    """
    config.validate()
    direction = edit_direction(backbone, config)
    with torch.no_grad():
        captions = caption_images(images, source_text=config.source_text, captioner=config.captioner,
                                  backbone=backbone)
        latents = backbone.encode_images(images)
        cond = backbone.encode_text(captions)
        if tuple(direction.hidden_states.shape) != tuple(cond.hidden_states.shape[1:]):
            raise RetouchError(f"the edit direction has shape {tuple(direction.hidden_states.shape)} but this model's "
                               f"text states are {tuple(cond.hidden_states.shape[1:])}; rebuild it for this model")
        uncond = backbone.encode_text(captions if config.caption_as_negative else [""] * len(captions))
        inverted = invert_with_noise_regularization(
            backbone, latents, cond, num_steps=config.num_steps, regularization=config.noise_regularization(),
            generator=torch.Generator().manual_seed(config.seed),
        )
        build = terms or (lambda bb, _size: [CrossAttentionTerm(bb.unet, places(config.xa_places, "--xa-places"))])
        edited = guided_edit_latents(
            backbone, inverted, cond, direction.apply(cond), uncond, num_steps=config.num_steps,
            guidance_scale=config.guidance_scale, step_size=config.xa_guidance,
            terms=build(backbone, tuple(latents.shape[-2:])), branches=config.xa_branches, callback=progress,
            trace=trace, blend=DepartureBlend(config.local_blend) if config.local_blend > 0 else None,
        )
        return backbone.decode_latents(edited)


@register("pix2pix-zero", Pix2PixZeroConfig,
          "pix2pix-zero: regularized DDIM inversion, sentence-bank edit directions, cross-attention guidance "
          "(Parmar et al. 2023)")
def pix2pix_zero(backbone, images: torch.Tensor, config: Pix2PixZeroConfig, progress=None) -> torch.Tensor:
    return run_pix2pix_zero(backbone, images, config, progress=progress)


def diffusers_reference_pipeline(backbone):
    """diffusers' deprecated ``StableDiffusionPix2PixZeroPipeline`` on this backbone's modules.

    The independent implementation our parity test and benchmark compare against. It gets a copy of
    the U-Net because it installs its own attention processors on it for good.
    """
    import copy

    from diffusers import DDIMInverseScheduler, DDIMScheduler
    from diffusers.pipelines.deprecated.stable_diffusion_variants.pipeline_stable_diffusion_pix2pix_zero import (
        StableDiffusionPix2PixZeroPipeline,
    )

    pipe = StableDiffusionPix2PixZeroPipeline(
        vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer,
        unet=copy.deepcopy(backbone.unet), scheduler=DDIMScheduler.from_config(backbone.scheduler_config),
        inverse_scheduler=DDIMInverseScheduler.from_config(backbone.scheduler_config), feature_extractor=None,
        safety_checker=None, caption_generator=None, caption_processor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
