"""Prompt-to-prompt (Hertz et al. 2022): edit by injecting the source prompt's attention maps.

The input is DDIM-inverted with its caption (pix2pix-zero Eq. 1; no null-text optimization), then the
source and target prompts are sampled *in one batch* from the same x_T. In the conditional rows of
every hooked U-Net call the target branch takes the source branch's attention probabilities M_t
(Eq. 4 of pix2pix-zero: M = softmax(QKᵀ/√d)):

* cross-attention, for the first ``cross_replace_steps`` of the steps (p2p §3.2, τ of "word swap"):
  word swap ("replace") copies M_t whole, which needs the two prompts to have the same token count;
  adding words ("refine") gives aligned target token j the source map of its partner A(j) and keeps
  the target's own maps for new tokens: (M̂_t)_{i,j} = (M_t)_{i,A(j)} if A(j) exists, else (M*_t)_{i,j};
* self-attention, for the first ``self_replace_steps`` of the steps and only on feature maps of at
  most 16² (the official code's rule; it keeps the layout without freezing fine detail).

Defaults are those of the official notebooks, which pix2pix-zero ran for its p2p baseline (App. D:
"official code ... recommended hyperparameters"): 50 steps, guidance 7.5, 0.8 and 0.4. Only
conditional rows are edited; the null-text rows of classifier-free guidance run untouched, as there.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch

from retouch.attention import AttentionHook, HookGroup, hooked_attention, select_layers
from retouch.errors import RetouchError
from retouch.methods import guidance_option, register, steps_option
from retouch.methods.word_swap import EDIT_GUIDANCE, WordSwapText, invert_latents
from retouch.options import option
from retouch.sampling import ddim_sample, ddim_timesteps, guided_denoiser

ATTENTION_EDITS = ("replace", "refine")
#: Self-attention maps are injected only at feature maps of at most this side (official code: 16²).
SELF_REPLACE_MAX_SIDE = 16


@dataclass
class PromptToPromptConfig(WordSwapText):
    attention_edit: str = option("replace", "replace: word swap, same token count (p2p §3.2); refine: the target "
                                            "adds words, aligned tokens take the source maps", choices=ATTENTION_EDITS)
    cross_replace_steps: float = option(0.8, "fraction of the steps, from the start, whose cross-attention maps are "
                                             "injected (p2p code: 0.8)", at_least=0, at_most=1)
    self_replace_steps: float = option(0.4, "fraction of the steps, from the start, whose ≤16² self-attention maps "
                                            "are injected (p2p code: 0.4)", at_least=0, at_most=1)
    num_steps: int = steps_option(50, "DDIM steps of inversion and of sampling (p2p code: 50)")
    guidance_scale: float = guidance_option(help=EDIT_GUIDANCE)


@dataclass(frozen=True)
class TokenAlignment:
    """Target token j takes the source map of token ``mapper[j]``, weighted by ``alphas[j]`` (1 or 0)."""

    mapper: torch.Tensor  # (tokens,) int64
    alphas: torch.Tensor  # (tokens,)

    def to(self, device, dtype) -> "TokenAlignment":
        return TokenAlignment(self.mapper.to(device), self.alphas.to(device, dtype))


def align_tokens(source_ids: list[int], target_ids: list[int], length: int, attention_edit: str) -> TokenAlignment:
    """The map A(j) from target to source tokens over ``length`` key positions (p2p §3.2).

    ``replace`` is the identity and requires equal token counts. ``refine`` aligns the id sequences
    by their longest matching blocks (the official code uses Needleman–Wunsch alignment; both agree
    when the target only inserts words); unmatched target tokens get alpha 0. Positions past the
    target's end token map to themselves, as in the official code.
    """
    mapper, alphas = torch.arange(length), torch.ones(length)
    if attention_edit == "replace":
        if len(source_ids) != len(target_ids):
            raise RetouchError(f"a prompt-to-prompt word swap needs prompts of equal token count; the source has "
                               f"{len(source_ids) - 2} tokens and the target {len(target_ids) - 2}: use "
                               "--attention-edit refine when the target adds words")
        return TokenAlignment(mapper, alphas)
    alphas[: len(target_ids)] = 0
    for block in difflib.SequenceMatcher(a=source_ids, b=target_ids, autojunk=False).get_matching_blocks():
        mapper[block.b : block.b + block.size] = torch.arange(block.a, block.a + block.size)
        alphas[block.b : block.b + block.size] = 1
    return TokenAlignment(mapper, alphas)


class AttentionInjection(AttentionHook):
    """Prompt-to-prompt's attention control for a batch laid out [null rows, source rows, target rows].

    ``step`` (set by the sampling loop) decides whether a layer is edited at all; outside the
    injection window the layer keeps fused attention. Without guidance there are no null rows.
    """

    def __init__(self, alignment: TokenAlignment, cross_steps: int, self_steps: int, guided: bool):
        self.alignment, self.cross_steps, self.self_steps, self.guided = alignment, cross_steps, self_steps, guided
        self.step = 0

    def wants_probabilities(self, layer):
        return self.step < (self.cross_steps if layer.is_cross else self.self_steps)

    def on_probabilities(self, layer, probabilities):
        null, cond = probabilities.chunk(2) if self.guided else (probabilities[:0], probabilities)
        source, target = cond.chunk(2)  # (B, heads, queries, keys) each
        if layer.is_cross:
            alphas = self.alignment.alphas
            target = source.index_select(-1, self.alignment.mapper) * alphas + target * (1 - alphas)
        else:
            target = source
        return torch.cat([null, source, target])


def token_alignment(backbone, source: str, target: str, length: int, attention_edit: str) -> TokenAlignment:
    def ids(text):
        return backbone.tokenizer(text, truncation=True, max_length=length).input_ids

    return align_tokens(ids(source), ids(target), length, attention_edit)


@torch.no_grad()
def prompt_to_prompt(backbone, images: torch.Tensor, config: PromptToPromptConfig, *,
                     observer: AttentionHook | None = None, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(source-branch latents, target-branch latents) after sampling; the source branch is the
    plain DDIM reconstruction. ``observer`` sees the attention maps after injection (for tests)."""
    schedule, batch = backbone.schedule, images.shape[0]
    source, target = config.prompts()
    source_cond, target_cond = backbone.encode_text([source] * batch), backbone.encode_text([target] * batch)
    latents = invert_latents(backbone, backbone.encode_images(images), source_cond, num_steps=config.num_steps)

    alignment = token_alignment(backbone, source, target, source_cond.hidden_states.shape[1], config.attention_edit)
    injection = AttentionInjection(
        alignment.to(latents.device, latents.dtype), cross_steps=int(config.cross_replace_steps * config.num_steps),
        self_steps=int(config.self_replace_steps * config.num_steps), guided=config.guidance_scale != 1.0,
    )
    guided = guided_denoiser(backbone.denoise, type(source_cond).cat([source_cond, target_cond]),
                             backbone.encode_text([""] * 2 * batch), config.guidance_scale)
    timesteps = ddim_timesteps(schedule, config.num_steps)
    step_of = {t: i for i, t in enumerate(timesteps)}

    def denoise(x, t, _=None):
        injection.step = step_of[t]
        return guided(x, t)

    unet = backbone.unet
    layers = select_layers(unet, cross=True) + select_layers(
        unet, cross=False, max_resolution=SELF_REPLACE_MAX_SIDE, latent_size=tuple(latents.shape[-2:]))
    with hooked_attention(unet, injection if observer is None else HookGroup(injection, observer), layers):
        pair = ddim_sample(denoise, schedule, torch.cat([latents, latents]), timesteps, None,
                           num_steps=config.num_steps, callback=progress)
    return pair[:batch], pair[batch:]


@register("p2p", PromptToPromptConfig,
          "prompt-to-prompt: sample caption and edited caption together, injecting attention maps (Hertz et al. 2022)")
def p2p(backbone, images: torch.Tensor, config: PromptToPromptConfig, progress=None) -> torch.Tensor:
    with torch.no_grad():
        return backbone.decode_latents(prompt_to_prompt(backbone, images, config, progress=progress)[1])
