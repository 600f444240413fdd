"""Compositing effects of the multi-task paper's benchmark, as exact, documented image operators.

All operators take float32 images (H, W, 3) (or (H, W)) in [0, 1] of any size and are deterministic
under their seed. :func:`apply_effects` composes any subset in one fixed order:

    motion blur → colour transfer → sharpening → film grain → inpainting mask

Blur happens in the scene (camera or object motion), colour grading and sharpening are applied to
the developed picture, grain belongs to the capture medium and is laid over the finished tones (so
sharpening must not amplify it and grading must not recolour it), and the inpainting hole removes
content last, exactly as the paper builds its inpainting input I_A ⊙ (1 − M).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from retouch.effects.color_transfer import lab_to_rgb, reinhard_color_transfer, rgb_to_lab
from retouch.effects.film_grain import film_grain
from retouch.effects.masks import apply_inpainting_mask, free_form_mask
from retouch.effects.motion_blur import motion_blur, motion_blur_kernel
from retouch.effects.sharpen import unsharp_mask

GRAIN_RADII = (0.010, 0.025, 0.050, 0.075, 0.100)  # the radii the multitask paper renders (§4, Datasets)
#: What the edges (CLI, web app) accept for each slider: wider than the paper's Table 1 ranges where the
#: operator is still well defined (grain up to half a pixel, λ from 0, μ up to 1).
EFFECT_RANGES = {"blur": (0.0, 1.0), "grain": (1e-6, 0.5), "sharpen_amount": (0.0, 3.0),
                 "sharpen_threshold": (0.0, 1.0)}


@dataclass
class EffectsRecipe:
    blur: float | None = field(default=None, metadata={"help": "β, motion-blur degree, multitask paper Table 1, [0, 1]"})
    blur_angle: float | None = field(default=None, metadata={"help": "blur direction in degrees; random from seed if None"})
    grain: float | None = field(default=None, metadata={"help": "σ, grain radius in input pixels, Table 1, [0, 0.1]"})
    reference: np.ndarray | None = field(default=None, metadata={"help": "I_ref, colour reference image (Reinhard 2001)"})
    mask: np.ndarray | None = field(default=None, metadata={"help": "M, bool hole mask (True = missing), Yu et al. 2019"})
    sharpen: tuple[float, float] | None = field(default=None, metadata={"help": "(λ, μ): amount [1, 3], threshold [0, 0.1]"})
    seed: int = field(default=0, metadata={"help": "seed for the grain realisation and a random blur angle"})


def apply_effects(image: np.ndarray, recipe: EffectsRecipe, *, grain_samples: int = 800,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Apply the recipe's effects in the fixed order of this module's docstring.

    ``grain_samples`` is film grain's Monte-Carlo sample count (Newson et al.'s default 800);
    ``progress(done, total)`` follows film grain, the one slow effect (see :func:`film_grain`).
    """
    out = np.asarray(image, np.float32)
    if recipe.blur:
        out = motion_blur(out, recipe.blur, angle=recipe.blur_angle, seed=recipe.seed)
    if recipe.reference is not None:
        out = reinhard_color_transfer(out, recipe.reference)
    if recipe.sharpen is not None:
        out = unsharp_mask(out, *recipe.sharpen)
    if recipe.grain:
        out = film_grain(out, recipe.grain, seed=recipe.seed, n_samples=grain_samples, progress=progress)
    if recipe.mask is not None:
        out = apply_inpainting_mask(out, recipe.mask)
    return out


def check_effects(blur: float | None = None, grain: float | None = None, sharpen: tuple[float, float] | None = None,
                  *, names: tuple[str, str, str] = ("--blur", "--grain", "--sharpen")) -> None:
    """Refuse values outside :data:`EFFECT_RANGES` with one line; ``names`` are how the caller calls the three
    settings (flags on the command line, slider labels in the app)."""
    from retouch.errors import check_range

    check_range(names[0], blur, *EFFECT_RANGES["blur"])
    check_range(names[1], grain, *EFFECT_RANGES["grain"])
    if sharpen is not None:
        check_range(f"{names[2]} amount λ", sharpen[0], *EFFECT_RANGES["sharpen_amount"])
        check_range(f"{names[2]} threshold μ", sharpen[1], *EFFECT_RANGES["sharpen_threshold"])


def apply_effects_file(image, output, *, blur: float | None = None, blur_angle: float | None = None,
                       grain: float | None = None, reference=None, mask=None,
                       sharpen: tuple[float, float] | None = None, seed: int = 0, compare=None,
                       progress: Callable[[int, int], None] | None = None) -> str:
    """``retouch effects``: the effects on an image file, written to ``output`` (and an input | output strip
    to ``compare``); ``reference`` and ``mask`` are image files. Everything is checked before any work.
    ``progress`` goes to :func:`apply_effects`. Returns the line the command prints."""
    import time
    from pathlib import Path

    from retouch.errors import RetouchError
    from retouch.imageio import check_outputs, load_image, load_map, save_with_comparison

    check_effects(blur, grain, sharpen)
    inputs = [Path(p) for p in (image, reference, mask) if p is not None]
    check_outputs([p for p in (output, compare) if p is not None], inputs)
    if not any(v is not None for v in (blur, grain, reference, mask, sharpen)):
        raise RetouchError("no effect chosen: give at least one of --blur, --grain, --reference, --mask, --sharpen")
    source = load_image(image)
    height, width = source.shape[:2]
    recipe = EffectsRecipe(
        blur=blur, blur_angle=blur_angle, grain=grain,
        reference=load_image(reference) if reference else None,
        mask=(load_map(mask, size=(width, height)) > 0.5) if mask else None,
        sharpen=sharpen, seed=seed,
    )
    started = time.perf_counter()
    result = apply_effects(source, recipe, progress=progress)
    save_with_comparison(output, result, compare, source, inputs)
    return f"wrote {output} ({width}x{height}, {time.perf_counter() - started:.1f} s)"


__all__ = [
    "EFFECT_RANGES", "GRAIN_RADII", "EffectsRecipe", "apply_effects", "apply_effects_file", "check_effects", "apply_inpainting_mask", "film_grain", "free_form_mask",
    "lab_to_rgb", "motion_blur", "motion_blur_kernel", "reinhard_color_transfer", "rgb_to_lab", "unsharp_mask",
]
