"""PIXELS: progressive exemplar-based editing with non-binary edit maps (Das Biswas et al., AAAI 2025).

The source x₁ and the exemplar(s) are encoded; each edit map is area-averaged to latent size; the
*surgical latent* (exemplar latents pasted into the source latent) is noised to the start step
t_ds^max; then, at every step, the source latent re-noised to that step (with the same fixed ε)
is copied back wherever the map says "not yet", and the denoiser's output is kept elsewhere
(Algorithm 1). Which cells are "not yet" shrinks step by step according to a threshold function
(appendix §5), so a cell with a larger map value joins the denoising earlier, keeps less memory of
the source and blends more freely with the exemplar next to it.

Map convention. retouch maps say how much may change: **m = 1 edit fully, m = 0 keep the source**.
The paper's μ is the other way round (Fig. 1, "the darker, the more flexibility"): μ = 1 − m.
Written with m, Algorithm 1 reads

* line 9-10  (step 0): the exemplar where 1 − m ≤ τ₀ (for the linear τ, where m = 1), the source elsewhere;
* line 14-15 (step i): the re-noised source where 1 − m > τᵢ, the previous step's output elsewhere,

with τ = ``threshold(n)`` over the n steps actually run, so a cell with value m is copied from the
source for its first ⌈n(1 − m)⌉ steps (linear τ) and denoised freely afterwards: a local strength of
about m·t_ds^max. Where every map is 0 the result is the source latent re-noised to the last step
and denoised once: the same path an unedited pixel takes.

Several exemplars (Algorithm 2, generalised from its two-level nesting to N): at step 0 exemplar k
replaces whatever the earlier nesting levels left wherever its own map lets it, so **a later
exemplar wins where maps overlap**; during the loop a cell is copied from the source only while
*every* map still says "not yet", i.e. the maps act through their per-cell maximum. ``iterative``
instead runs Algorithm 1 once per exemplar, each pass editing the previous pass's decoded output
(appendix §2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from retouch.errors import RetouchError
from retouch.methods import register
from retouch.methods.exemplar_inputs import (ExemplarConfig, check_exemplar_inputs, draw_noise, encode_exemplar_inputs,
                                             load_exemplar_inputs, text_denoiser)
from retouch.options import option
from retouch.sampling import Callback, add_noise, ddim_sample, img2img_timesteps

ThresholdFn = Callable[[int], torch.Tensor]
"""``threshold(n) -> (n,)`` values τ₀ ≤ … ≤ τ_{n−1} in [0, 1], one per denoising step actually run."""


# ---------------------------------------------------------------------------------------------
# Threshold functions (appendix §5, verbatim; Fig. 11 plots their areas under the curve)
# ---------------------------------------------------------------------------------------------
def linear_threshold(n: int) -> torch.Tensor:
    """τᵢ = i/n, the paper's default for every experiment; area ½."""
    return torch.arange(n) / n


def quadratic_threshold(n: int) -> torch.Tensor:
    """τᵢ = (i/n)²; area ⅓: regions stay copied from the source longer (more adherence)."""
    return (torch.arange(n) / n) ** 2


def cubic_threshold(n: int) -> torch.Tensor:
    """τᵢ = (i/n)³; area ¼, the most adherence ("more Area Above Curve", §Mask Thresholding)."""
    return (torch.arange(n) / n) ** 3


def log_threshold(n: int) -> torch.Tensor:
    """τᵢ = log(1 + i)/log(1 + n); area (1 + n)/n − 1/log(1 + n) > ½: the most hallucination."""
    return torch.log1p(torch.arange(n)) / torch.log1p(torch.tensor(n))


def sigmoid_threshold(n: int) -> torch.Tensor:
    """τᵢ = σ(6i/n − 3); point-symmetric about i/n = ½, so area ½ like linear (appendix §5)."""
    return torch.sigmoid(torch.arange(n) / n * 6 - 3)


THRESHOLDS: dict[str, ThresholdFn] = {
    "linear": linear_threshold,
    "quadratic": quadratic_threshold,
    "cubic": cubic_threshold,
    "log": log_threshold,
    "sigmoid": sigmoid_threshold,
}


def threshold_values(threshold: str | ThresholdFn, n: int) -> torch.Tensor:
    """τ for ``n`` steps from a name in :data:`THRESHOLDS` or a user function, checked.

    Non-decreasing is required: a cell handed to the denoiser is never taken back, which is what
    makes the editing progressive (and each cell's start step well defined).
    """
    if callable(threshold):
        fn, name = threshold, getattr(threshold, "__name__", "threshold function")
    elif threshold in THRESHOLDS:
        fn, name = THRESHOLDS[threshold], threshold
    else:
        raise RetouchError(f"unknown threshold {threshold!r}; choose one of {', '.join(THRESHOLDS)} "
                           "or pass a function")
    values = torch.as_tensor(fn(n), dtype=torch.float32).flatten().cpu()
    if values.numel() != n:
        raise RetouchError(f"{name}({n}) returned {values.numel()} values; it must return one per step ({n})")
    if not torch.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise RetouchError(f"{name} must return finite values in [0, 1]")
    if (values[1:] < values[:-1]).any():
        raise RetouchError(f"{name} must be non-decreasing over the steps (PIXELS never un-edits a region)")
    return values


# ---------------------------------------------------------------------------------------------
# The core: plain functions over latents
# ---------------------------------------------------------------------------------------------
def surgical_latent(source_latents: torch.Tensor, exemplar_latents: Sequence[torch.Tensor],
                    exemplar_masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """The latent-surgery composite: Algorithm 2 line 14 nested over any number of exemplars.

    ``exemplar_masks[k]`` (B, 1, h, w) bool is where exemplar k goes (1 − mask_k of the paper);
    later exemplars are pasted over earlier ones.
    """
    composite = source_latents
    for latents, mask in zip(exemplar_latents, exemplar_masks):
        composite = torch.where(mask, latents, composite)
    return composite


def progressive_sample(
    denoise,
    schedule,
    source_latents: torch.Tensor,
    start_latents: torch.Tensor,
    preserve: torch.Tensor,
    timesteps: Sequence[int],
    thresholds: Sequence[float],
    noise: torch.Tensor,
    *,
    num_steps: int,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Algorithm 1 lines 10-17 with DDIM: copy the re-noised source where ``preserve > τᵢ``, then step.

    ``start_latents`` is the noised surgical latent z_mix^T at ``timesteps[0]``; ``preserve`` (B, 1, h, w)
    is the paper's μ_d = 1 − m (the minimum over the maps for several exemplars); ``noise`` is the
    fixed ε every re-noising uses (lines 7 and 13: one draw, re-scaled to each step's ᾱ_t).
    After step 0 the copy for the next step is :func:`~retouch.sampling.ddim_loop`'s ``blend``.
    """
    def copy_source(k, latents):  # line 14 for step k
        renoised = add_noise(source_latents, noise, schedule.alpha(timesteps[k]))
        return torch.where(preserve > thresholds[k], renoised, latents)

    return ddim_sample(denoise, schedule, copy_source(0, start_latents), timesteps, None, num_steps=num_steps,
                       blend=lambda i, t, x: copy_source(i + 1, x) if i + 1 < len(timesteps) else x,
                       callback=callback)


# ---------------------------------------------------------------------------------------------
# PIXELS
# ---------------------------------------------------------------------------------------------
@dataclass
class PixelsConfig(ExemplarConfig):
    threshold: str = option("linear", "threshold function τ: linear (paper default), quadratic, cubic, log or sigmoid (appendix §5)")
    iterative: bool = option(False, "one pass per exemplar, each editing the previous result (appendix §2), instead of one pass")

    def validate(self) -> None:
        super().validate()
        threshold_values(self.threshold, 2)


def _pixels_pass(backbone, denoise, source, exemplars, maps, timesteps, thresholds, config, callback):
    """Algorithm 1 (one exemplar) or Algorithm 2 generalised (several) from pixels to final latents."""
    schedule = backbone.schedule
    source_latents, exemplar_latents, latent_maps = encode_exemplar_inputs(backbone, source, exemplars, maps)
    noise = draw_noise(source_latents, torch.Generator().manual_seed(config.seed))
    preserves = [1.0 - m for m in latent_maps]  # the paper's μ_d
    tau0 = thresholds[0]
    composite = surgical_latent(source_latents, exemplar_latents, [p <= tau0 for p in preserves])
    start = add_noise(composite, noise, schedule.alpha(timesteps[0]))  # lines 7-10: one ε for the whole composite
    preserve = torch.stack(preserves).amin(dim=0)
    return progressive_sample(denoise, schedule, source_latents, start, preserve, timesteps, thresholds, noise,
                              num_steps=config.num_steps, callback=callback)


@torch.no_grad()
def pixels_latents(backbone, source: torch.Tensor, exemplars, maps, config: PixelsConfig, *,
                   threshold: ThresholdFn | None = None, progress=None) -> torch.Tensor:
    """The final latents z_mix^0 of a PIXELS edit (before Algorithm 1 line 18's decode).

    ``threshold`` overrides ``config.threshold`` with any function of :data:`ThresholdFn` form.
    """
    config.validate()
    exemplars, maps = check_exemplar_inputs(source, exemplars, maps)
    timesteps = img2img_timesteps(backbone.schedule, config.num_steps, config.strength)  # non-empty: validated
    thresholds = [float(v) for v in threshold_values(threshold or config.threshold, len(timesteps))]
    denoise = text_denoiser(backbone, config, source.shape[0])
    # Each iterative pass is exactly a fresh one-exemplar edit of the previous result with the same
    # config and seed: what a user running the passes by hand gets (appendix §2).
    passes = [(exemplars, maps)] if not config.iterative else [([e], [m]) for e, m in zip(exemplars, maps)]
    latents = None
    for pass_exemplars, pass_maps in passes:
        if latents is not None:
            # The previous edit, as the image a user would feed back in (decoders overshoot [−1, 1]).
            source = backbone.decode_latents(latents).clamp(-1.0, 1.0).to(source.dtype)
        latents = _pixels_pass(backbone, denoise, source, pass_exemplars, pass_maps, timesteps, thresholds,
                               config, progress)
    return latents


def pixels_edit(backbone, source: torch.Tensor, exemplars, maps, config: PixelsConfig | None = None, *,
                threshold: ThresholdFn | None = None, progress=None) -> torch.Tensor:
    """Edit ``source`` (B, 3, H, W) in [−1, 1] with exemplars and edit maps; returns images like it.

    ``exemplars``: tensors (3, H, W) or (B, 3, H, W) in [−1, 1] at the source's size; ``maps``: one
    per exemplar, (H, W) / (1, H, W) / (B, 1, H, W) in [0, 1], 1 = take the exemplar, 0 = keep the
    source; ``threshold``: a custom :data:`ThresholdFn` instead of ``config.threshold``.
    """
    config = config or PixelsConfig()
    latents = pixels_latents(backbone, source, exemplars, maps, config, threshold=threshold, progress=progress)
    with torch.no_grad():
        return backbone.decode_latents(latents)


@register("pixels", PixelsConfig, "PIXELS: exemplar editing with non-binary edit maps (Das Biswas et al. 2025)",
          prepare=load_exemplar_inputs)
def pixels(backbone, images: torch.Tensor, config: PixelsConfig, progress=None, *, exemplars=None, maps=None):
    return pixels_edit(backbone, images, exemplars, maps, config, progress=progress)
