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
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from retouch.errors import RetouchError
from retouch.methods import guidance_option, register, steps_option
from retouch.options import check_options, option
from retouch.sampling import Callback, add_noise, ddim_sample, guided_denoiser, img2img_timesteps

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
EXEMPLAR_FITS = ("resize", "center")


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
def downsample_map(edit_map: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """μ_d of Algorithm 1 line 6, as an edit map: (B, 1, H, W) → (B, 1, h, w) by area averaging.

    Each latent cell summarises one f×f pixel block (f = 8 for SD's VAE, which keeps pixels at the
    same relative positions, §Algorithm), so the cell takes the block's mean: a cell counts as
    fully edited (m = 1) only when its whole block is, and a binary mask's boundary becomes
    fractional cells that the thresholds turn into a one-cell transition.
    """
    return F.interpolate(edit_map, size=latent_hw, mode="area")


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
# Configuration and inputs (shared with the exemplar baselines)
# ---------------------------------------------------------------------------------------------
@dataclass
class ExemplarConfig:
    """Options every exemplar method shares; the exemplar and map *files* are for the CLI only."""

    prompt: str = option("", "text guidance p (PIXELS §Bringing Back Text Control); the paper keeps it empty")
    negative_prompt: str = option("", "text the result should move away from")
    strength: float = option(0.8, "t_ds^max/T, the start step of the most edited region (PIXELS Lemma 1; the paper "
                                  "tunes it per edit)", above=0, at_most=1)
    num_steps: int = steps_option()
    guidance_scale: float = guidance_option()
    seed: int = option(0, "seed of the added noise")
    exemplar: tuple[str, ...] = option((), "exemplar image; repeat for several, each followed by its --map")
    map: tuple[str, ...] = option((), "grayscale edit map of the matching --exemplar: white = take the exemplar, "
                                      "black = keep the input")
    exemplar_fit: str = option("resize", "resize: stretch each exemplar to the input's size; center: keep its "
                                         "pixels, centre it on black (crop if larger), as the paper pads placed "
                                         "exemplars (appendix §3)", choices=EXEMPLAR_FITS)
    map_grow: float = option(0.0, "dilate each map (binarised at ½) by this many pixels", at_least=0)
    map_ramp: float = option(0.0, "binarise each map at ½ and fade it out linearly over this many pixels around "
                                  "the mask", at_least=0)
    map_blur: float = option(0.0, "Gaussian blur σ in pixels applied to each map last", at_least=0)

    def validate(self) -> None:
        if len(self.exemplar) != len(self.map):
            raise RetouchError(f"got {len(self.exemplar)} --exemplar but {len(self.map)} --map; "
                               "give one --map per --exemplar, in the same order")
        for path in (*self.exemplar, *self.map):
            if not Path(path).is_file():
                raise RetouchError(f"cannot read image '{path}': no such file; check the path")
        check_options(self)
        if int(self.num_steps * self.strength) < 1:
            raise RetouchError(f"--strength {self.strength:g} × --num-steps {self.num_steps} runs no step; "
                               "raise either")

    def input_files(self) -> tuple[str, ...]:
        """Files the CLI must never overwrite."""
        return (*self.exemplar, *self.map)


def fit_exemplar(image: np.ndarray, size: tuple[int, int], policy: str = "resize") -> np.ndarray:
    """Bring an exemplar (H, W, 3) in [0, 1] to the source's ``size`` = (width, height).

    ``"resize"`` (default, as the official code resizes both images to one size) stretches it with
    Lanczos. ``"center"`` keeps its pixels: smaller exemplars are centred on black, larger ones
    centre-cropped; to put an exemplar somewhere else, compose it on a source-sized canvas first
    (the paper's placed exemplars, appendix §3) and use either policy.
    """
    from retouch.imageio import resize_image

    width, height = size
    if policy == "resize":
        return resize_image(image, (width, height))
    canvas = np.zeros((height, width, 3), dtype=np.float32)
    h, w = min(height, image.shape[0]), min(width, image.shape[1])
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    dst_top, dst_left = (height - h) // 2, (width - w) // 2
    canvas[dst_top:dst_top + h, dst_left:dst_left + w] = image[top:top + h, left:left + w]
    return canvas


def load_exemplar_inputs(config: ExemplarConfig, size: tuple[int, int], device, dtype) -> dict:
    """The CLI's ``prepare`` hook: exemplar and map files at the fitted source ``size`` (width, height).

    Maps are read as luminance and resized bilinearly by :func:`retouch.imageio.load_map`; the rest is
    :func:`exemplar_tensors`.
    """
    from retouch.imageio import load_image, load_map

    if not config.exemplar:
        raise RetouchError("exemplar editing needs at least one --exemplar IMAGE with its --map MAP")
    return exemplar_tensors(config, [load_image(path) for path in config.exemplar],
                            [load_map(path, size=size) for path in config.map], size, device, dtype)


def exemplar_tensors(config: ExemplarConfig, images: Sequence[np.ndarray], maps: Sequence[np.ndarray],
                     size: tuple[int, int], device, dtype) -> dict:
    """``prepare``'s result from exemplar images (H, W, 3) and edit maps already at ``size`` (width, height), both
    in [0, 1]: the exemplars fitted to ``size``, the maps shaped by ``map_grow`` → ``map_ramp`` → ``map_blur``
    (:mod:`retouch.edit_maps`). The CLI reads them from files, the app hands them over in memory."""
    from retouch.edit_maps import blur_map, grow_mask, linear_ramp_map
    from retouch.imageio import to_tensor

    exemplars = [to_tensor(fit_exemplar(image, size, config.exemplar_fit), device=device, dtype=dtype)
                 for image in images]
    shaped = []
    for edit_map in maps:
        for amount, shape in ((config.map_grow, grow_mask), (config.map_ramp, linear_ramp_map),
                              (config.map_blur, blur_map)):
            edit_map = shape(edit_map, amount) if amount > 0 else edit_map
        shaped.append(torch.from_numpy(edit_map))
    return {"exemplars": exemplars, "maps": shaped}


def check_exemplar_inputs(source: torch.Tensor, exemplars, maps) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Exemplars as (1|B, 3, H, W) and maps as (1|B, 1, H, W) float tensors on the source's device.

    Exemplars (3, H, W) or (B, 3, H, W) in [−1, 1] and maps (H, W), (1, H, W) or (B, 1, H, W) in
    [0, 1] must have the source's height and width (use :func:`fit_exemplar` and
    :func:`retouch.imageio.resize_image`); one map per exemplar, NaN or out-of-range maps refused.
    """
    from retouch.imageio import validate_map

    exemplars, maps = list(exemplars or ()), list(maps or ())
    if not exemplars:
        raise RetouchError("exemplar editing needs at least one exemplar with its edit map")
    if len(exemplars) != len(maps):
        raise RetouchError(f"got {len(exemplars)} exemplars but {len(maps)} edit maps; give one map per exemplar")
    batch, _, height, width = source.shape
    checked_exemplars, checked_maps = [], []
    for k, (exemplar, edit_map) in enumerate(zip(exemplars, maps), start=1):
        exemplar = torch.as_tensor(exemplar)
        exemplar = exemplar[None] if exemplar.dim() == 3 else exemplar
        if exemplar.dim() != 4 or exemplar.shape[1] != 3 or exemplar.shape[0] not in (1, batch):
            raise RetouchError(f"exemplar {k} must be (3, H, W) or ({batch}, 3, H, W); got {tuple(exemplar.shape)}")
        if exemplar.shape[-2:] != (height, width):
            raise RetouchError(f"exemplar {k} is {exemplar.shape[-1]}x{exemplar.shape[-2]} but the source is "
                               f"{width}x{height}; fit it first (fit_exemplar)")
        edit_map = torch.as_tensor(edit_map)
        shape = tuple(edit_map.shape)
        if edit_map.dim() in (2, 3):
            edit_map = edit_map.reshape(-1, 1, *edit_map.shape[-2:])  # (H, W) / (1|B, H, W) → (1|B, 1, H, W)
        if edit_map.dim() != 4 or edit_map.shape[1] != 1 or edit_map.shape[0] not in (1, batch):
            raise RetouchError(f"edit map {k} must be (H, W), (1, H, W) or ({batch}, 1, H, W); got {shape}")
        if edit_map.shape[-2:] != (height, width):
            raise RetouchError(f"edit map {k} is {edit_map.shape[-1]}x{edit_map.shape[-2]} but the source is "
                               f"{width}x{height}; resize it first")
        rows = [torch.from_numpy(validate_map(row, name=f"edit map {k}")) for row in edit_map[:, 0]]
        checked_maps.append(torch.stack(rows)[:, None].to(source.device))
        checked_exemplars.append(exemplar.to(source.device, source.dtype))
    return checked_exemplars, checked_maps


def text_denoiser(backbone, config: ExemplarConfig, batch: int):
    """The backbone's denoiser with the config's prompt and classifier-free guidance."""
    cond = backbone.encode_text([config.prompt] * batch)
    if config.prompt == config.negative_prompt:
        # Identical branches make CFG return ε(c) exactly (the default, p = ""): skip the second pass.
        return guided_denoiser(backbone.denoise, cond, cond, 1.0)
    return guided_denoiser(backbone.denoise, cond, backbone.encode_text([config.negative_prompt] * batch),
                           config.guidance_scale)


def draw_noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """ε drawn on the CPU from ``generator`` (device-independent results, as SDEdit draws it)."""
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


def encode_exemplar_inputs(backbone, source, exemplars, maps):
    """(source latents, exemplar latents, latent-size maps m_d) for one pass."""
    source_latents = backbone.encode_images(source)
    exemplar_latents = [backbone.encode_images(e) for e in exemplars]  # one at a time: lower peak memory
    latent_maps = [downsample_map(m.to(source_latents.dtype), source_latents.shape[-2:]) for m in maps]
    return source_latents, exemplar_latents, latent_maps


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
