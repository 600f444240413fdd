"""What the word-swap baselines of pix2pix-zero (§4.3, Table 2) share: their text options and inversion.

SDEdit, DDIM and DDPM inversion and prompt-to-prompt all edit by swapping the source word for the
target word inside a caption of the input ("a photo of a cat" → "a photo of a dog", via
:func:`retouch.edit_text.swap_words`), or take an explicit target text. The three config
fields below carry the same name and help in every method, so the CLI shows one option for each;
:class:`WordSwapText` holds all three for the methods that take them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from retouch.edit_text import parse_edit, prompt_texts
from retouch.errors import RetouchError
from retouch.options import check_options, option
from retouch.sampling import ddim_invert

INVERSIONS = ("ddim", "regularized")
#: The help of the word-swap baselines' ``guidance_scale``: the scale of the sampling with the target text.
EDIT_GUIDANCE = "classifier-free guidance scale of the edit"


def edit_field():
    return option("", "word swap SOURCE->TARGET inside --source-text, e.g. cat->dog")


def source_text_field():
    return option("", "caption of the input image, mentioning the edit's source word")


def target_text_field():
    return option("", "full text of the edited image (instead of --edit)")


@dataclass
class WordSwapText:
    """The word-swap text options, first in the configs of DDIM and DDPM inversion and prompt-to-prompt."""

    edit: str = edit_field()
    source_text: str = source_text_field()
    target_text: str = target_text_field()

    def prompts(self) -> tuple[str, str]:
        """(source prompt, target prompt), by :func:`swap_prompts`."""
        return swap_prompts(self.edit, self.source_text, self.target_text)

    def validate(self) -> None:
        """The prompts first (a missing, conflicting or bad edit fails before any work), then every field's
        declared values; the subclasses' own fields are options with their bounds."""
        self.prompts()
        check_options(self)


def swap_prompts(edit: str, source_text: str, target_text: str, *, target_flag: str = "--target-text") -> tuple[str, str]:
    """(source prompt, target prompt): the caption and either its word swap or ``target_text``.

    Raises a one-line RetouchError for conflicting or missing options and for an edit whose source
    word the caption lacks.
    """
    if edit and target_text:
        raise RetouchError(f"give either --edit or {target_flag}, not both")
    if not source_text:
        raise RetouchError("a word-swap edit needs --source-text, a caption of the input image "
                           "(e.g. 'a photo of a cat' for --edit cat->dog)")
    return prompt_texts(source_text, parse_edit(edit) if edit else None, target_text or None)


def invert_latents(backbone, latents: torch.Tensor, cond, *, num_steps: int, inversion: str = "ddim") -> torch.Tensor:
    """x_T of the input latents x₀ with the source caption, without classifier-free guidance.

    ``ddim``: deterministic DDIM inversion, pix2pix-zero Eq. 1–2 (Table 2 config B).
    ``regularized``: the same with pix2pix-zero's autocorrelation + KL noise regularization (§3.1,
    Eq. 3, config C) at its defaults, from :mod:`retouch.inversion`.
    """
    if inversion == "regularized":
        return _regularized_inversion()(backbone, latents, cond, num_steps=num_steps)
    return ddim_invert(backbone.denoise, backbone.schedule, latents, cond, num_steps=num_steps)


def _regularized_inversion():
    try:  # pix2pix-zero owns the regularizer; the baselines only borrow it for Table 2's config C
        from retouch.inversion import invert_with_noise_regularization
    except ImportError as err:
        raise RetouchError("--inversion regularized needs pix2pix-zero's invert_with_noise_regularization, "
                           "which this installation lacks; use --inversion ddim") from err
    return invert_with_noise_regularization
