"""Captions for mini-world scenes from varied templates, with the attribute words kept verbatim.

Every attribute word a caption uses is the vocabulary word itself ("striped", never "stripes"), so a
caption-trained tokenizer makes it one token and sentence banks for an attribute always contain it.
With ``rng=None`` a caption is canonical ("a red striped circle wearing a hat on grass"); with an rng
it picks a template and optional parts (size word, "plain", pattern as "with a striped pattern",
"with a hat", position words), deterministically for a given generator state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retouch.world.scene import ObjectSpec, SceneSpec, position_range, sample_scene, with_changes
from retouch.world.vocabulary import POSITION_BINS, VOCABULARIES, WorldProfile, attribute_of, world_profile

_TEMPLATES = (
    "{things} on {background}",
    "a photo of {things} on {background}",
    "{things} on the {background}",
    "a picture of {things} on {background}",
    "a drawing of {things} on a {background} background",
    "an image of {things} on {background}",
    "a close photo of {things} on {background}",
    "a rendering of {things} on a {background} background",
)
_POSITION_PHRASES = {"left": "on the left", "center": "in the center", "right": "on the right"}

# Probabilities of the optional caption parts when an rng is given.
P_SIZE = 0.3
P_PLAIN = 0.5
P_PATTERN_PHRASE = 0.3
P_WITH_HAT = 0.3
P_POSITION = 0.3
#: Longest caption in word tokens (words + commas); with start/end tokens it fits a 32-token text encoder.
CAPTION_TOKEN_BUDGET = 28


def caption_templates() -> tuple[str, ...]:
    """The scene caption templates (``{things}`` and ``{background}`` placeholders)."""
    return _TEMPLATES


@dataclass(frozen=True)
class PairCaptions:
    """Prompts for a side-by-side pair: the whole image, and each half on its own."""

    shared: str
    left: str
    right: str


def describe_object(obj: ObjectSpec, *, size: bool = False, plain: bool = False, pattern_phrase: bool = False,
                    hat_phrase: str = "wearing", position: bool = False) -> str:
    """The noun phrase for one object, without article: "red striped circle wearing a hat".

    ``size`` adds the size word, ``plain`` names a plain pattern, ``pattern_phrase`` says "red circle
    with a striped pattern", ``hat_phrase`` is "wearing" or "with", ``position`` appends "on the left".
    """
    words = [obj.size] if size else []
    words.append(obj.colour)
    if obj.pattern != "plain" and not pattern_phrase:
        words.append(obj.pattern)
    elif obj.pattern == "plain" and plain:
        words.insert(0, "plain")
    words.append(obj.shape)
    if obj.pattern != "plain" and pattern_phrase:
        words += ["with", "a", obj.pattern, "pattern"]
    if obj.accessory != "none":
        words += [hat_phrase, "a", obj.accessory]
    if position:
        words.append(_POSITION_PHRASES[obj.position])
    return " ".join(words)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(spec: SceneSpec, rng: np.random.Generator | None = None, template: int | str | None = None) -> str:
    """A caption of ``spec``: canonical without ``rng``, else a random template and optional parts.

    ``template`` (an index into ``caption_templates()`` or a template string) fixes the framing.
    """
    if template is None:
        template = 0 if rng is None else int(rng.integers(len(_TEMPLATES)))
    if isinstance(template, int):
        template = _TEMPLATES[template]
    profile = world_profile(spec.profile)
    options = [{} if rng is None else _random_options(rng, profile) for _ in spec.objects]
    text = _render(template, spec, options)
    # Long multi-object captions would be truncated by the text encoder: drop the optional parts of
    # the other objects, then of the main object, then the framing, until the caption fits.
    for shorter in ([options[0]] + [{}] * (len(options) - 1), [{}] * len(options)):
        if _token_count(text) <= CAPTION_TOKEN_BUDGET:
            break
        text = _render(template, spec, shorter)
    if _token_count(text) > CAPTION_TOKEN_BUDGET:
        text = _render(_TEMPLATES[0], spec, [{}] * len(options))
    return text


def _random_options(rng: np.random.Generator, profile: WorldProfile) -> dict:
    draws = rng.random(5)
    return {"size": bool(draws[0] < P_SIZE) and profile.caption_size, "plain": draws[1] < P_PLAIN,
            "pattern_phrase": draws[2] < P_PATTERN_PHRASE, "hat_phrase": "with" if draws[3] < P_WITH_HAT else "wearing",
            "position": bool(draws[4] < P_POSITION) and profile.caption_position}


def _render(template: str, spec: SceneSpec, options: list[dict]) -> str:
    things = [_article(describe_object(obj, **opts)) for obj, opts in zip(spec.objects, options)]
    return template.format(things=_join(things), background=spec.background)


def _token_count(text: str) -> int:
    """Tokens a word-level tokenizer makes of a caption: words plus commas (vocabulary words are one token)."""
    return len(text.split()) + text.count(",")


def pair_caption(left: SceneSpec, right: SceneSpec) -> PairCaptions:
    """Prompts for side-by-side generation: "the same red circle on the left and right on grass".

    The shared prompt names only what both sides' main objects have in common (an attribute that
    differs is left out; a differing shape becomes "object"); each side's prompt is its canonical caption.
    """
    a, b = left.objects[0], right.objects[0]
    words = []
    if a.size == b.size:
        words.append(a.size)
    if a.colour == b.colour:
        words.append(a.colour)
    if a.pattern == b.pattern and a.pattern != "plain":
        words.append(a.pattern)
    words.append(a.shape if a.shape == b.shape else "object")
    if a.accessory == b.accessory and a.accessory != "none":
        words += ["wearing", "a", a.accessory]
    shared = f"the same {' '.join(words)} on the left and right on {left.background}"
    return PairCaptions(shared=shared, left=caption(left), right=caption(right))


def sentence_bank(word: str, n: int, rng: np.random.Generator,
                  profile: str | WorldProfile | None = None) -> list[str]:
    """``n`` varied captions of single-object scenes of ``profile`` that all contain the attribute ``word``.

    Used for pix2pix-zero edit directions on the mini world: the mean embedding of the "circle" bank
    minus that of the "square" bank. Scenes are sampled with the word's attribute fixed; the word's
    optional caption part (size word, "plain", position phrase) is forced on. Accessory "none" is never
    said, so its bank describes hatless objects without the word.
    """
    attribute = attribute_of(word)
    profile = world_profile(profile)
    sentences = []
    for _ in range(n):
        if attribute == "position":
            spec = sample_scene(rng, n_objects=1, profile=profile)
            x0, x1 = position_range(spec.objects[0].size, profile)[0]
            lo, hi = {"left": (0.0, POSITION_BINS[0]), "center": POSITION_BINS, "right": (POSITION_BINS[1], 1.0)}[word]
            spec = with_changes(spec, x=float(rng.uniform(max(lo, x0), min(hi, x1))))
        else:
            spec = sample_scene(rng, n_objects=1, profile=profile, **{attribute: word})
        obj = spec.objects[0]
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        draws = rng.random(3)
        phrase = describe_object(obj, size=attribute == "size" or (draws[0] < P_SIZE and profile.caption_size),
                                 plain=attribute == "pattern" or draws[1] < P_PLAIN,
                                 pattern_phrase=draws[2] < P_PATTERN_PHRASE, position=attribute == "position")
        sentences.append(template.format(things=_article(phrase), background=spec.background))
    return sentences


assert all(" " not in w and w == w.lower() for words in VOCABULARIES.values() for w in words)
