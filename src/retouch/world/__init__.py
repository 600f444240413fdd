"""The mini world: procedural, captioned scenes with exact per-object masks.

A scene is a textured background (grass, sand, water, sky, snow, brick, wood) with one to three
objects, each with a shape, colour, pattern, accessory (a top hat or none), size and position. A
world profile (``vocabulary.PROFILES``) says which words are drawn and how large objects are: ``v1``
uses every word, ``v2`` one large object from a smaller vocabulary (``docs/world_v2.md``). ``v2`` is the
default, the world the shipped mini models are trained on; ``v1`` stays for multi-object scenes.
Everything is a pure function of the seed and the profile::

    world = World(seed=0, size=64, profile="v2")
    spec, rendered, text = world.scene(12)      # SceneSpec, RenderedScene, "a photo of a red circle on sand"
    left, right, pair, prompts = world.pair(3, {"pattern": "striped"})   # side by side, one background

Lower level: :func:`sample_scene` / :func:`sample_pair` make specs, :func:`render_scene` /
:func:`render_pair` draw them, :func:`caption` / :func:`pair_caption` / :func:`sentence_bank` describe
them, :func:`attributes` gives judge labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retouch.world.captions import (
    PairCaptions,
    caption,
    caption_templates,
    describe_object,
    pair_caption,
    sentence_bank,
)
from retouch.world.render import RenderedScene, build_texture_banks, render_background, render_pair, render_scene
from retouch.world.scene import MAX_OBJECTS, ObjectSpec, SceneSpec, attributes, sample_pair, sample_scene, with_changes
from retouch.world.vocabulary import (
    ACCESSORIES,
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    PATTERNS,
    POSITIONS,
    PROFILES,
    SHAPES,
    SIZES,
    VOCABULARIES,
    WorldProfile,
    world_profile,
)

#: Split rule: ``index % 100`` below 90 is train, below 95 val, the rest test (stable for any seed).
SPLIT_BOUNDS = (90, 95)
#: Attribute changes the pairs of ``sample_grid`` cycle through.
PAIR_CHANGES = ({"pattern": "striped"}, {"accessory": "hat"}, {"shape": "square"}, {"colour": "blue"},
                {"pattern": "dotted"}, {"size": "large"})


@dataclass(frozen=True)
class SceneBatch:
    """Scenes stacked for training: images (B, H, W, 3), masks (B, MAX_OBJECTS, H, W) zero-padded."""

    images: np.ndarray
    masks: np.ndarray
    specs: tuple[SceneSpec, ...]
    captions: tuple[str, ...]
    labels: dict[str, np.ndarray]  # attribute name → (B,) int64 vocabulary indices of the main object


class World:
    """All scenes of one seed and profile: ``scene(index)`` is a pure function of (seed, profile, index)."""

    def __init__(self, seed: int = 0, size: int = 64, profile: str | WorldProfile | None = None):
        self.seed = int(seed)
        self.size = int(size)
        self.profile = world_profile(profile)

    def __repr__(self) -> str:
        return f"World(seed={self.seed}, size={self.size}, profile={self.profile.name!r})"

    @property
    def vocabularies(self) -> dict[str, tuple[str, ...]]:
        """The words this world's scenes use, per attribute (a subset of ``VOCABULARIES``)."""
        return self.profile.vocabularies

    def spec(self, index: int) -> tuple[SceneSpec, np.random.Generator]:
        rng = np.random.default_rng([self.seed, int(index)])
        return sample_scene(rng, profile=self.profile), rng

    def scene(self, index: int, render: bool = True) -> tuple[SceneSpec, RenderedScene | None, str]:
        """(spec, rendering, caption) of scene ``index``; ``render=False`` skips drawing (rendering None)."""
        spec, rng = self.spec(index)
        text = caption(spec, rng)
        return spec, (render_scene(spec, self.size) if render else None), text

    def batch(self, start: int, count: int) -> SceneBatch:
        """Scenes ``start .. start+count−1`` stacked (all splits; filter with :meth:`split`)."""
        images = np.empty((count, self.size, self.size, 3), dtype=np.float32)
        masks = np.zeros((count, MAX_OBJECTS, self.size, self.size), dtype=bool)
        specs, texts = [], []
        for k in range(count):
            spec, rendered, text = self.scene(start + k)
            images[k] = rendered.image
            masks[k, : len(spec.objects)] = rendered.masks
            specs.append(spec)
            texts.append(text)
        labels = [attributes(spec) for spec in specs]
        stacked = {name: np.array([label[name] for label in labels], dtype=np.int64) for name in VOCABULARIES}
        return SceneBatch(images=images, masks=masks, specs=tuple(specs), captions=tuple(texts), labels=stacked)

    @staticmethod
    def split(index: int) -> str:
        """"train", "val" or "test" by ``index % 100`` (see ``SPLIT_BOUNDS``): the same for every seed."""
        rest = int(index) % 100
        return "train" if rest < SPLIT_BOUNDS[0] else "val" if rest < SPLIT_BOUNDS[1] else "test"

    def pair(self, index: int, change: dict | None = None,
             **fixed_attributes) -> tuple[SceneSpec, SceneSpec, RenderedScene, PairCaptions]:
        """Side-by-side pair ``index``: (left spec, right spec, rendering (H, 2W), prompts).

        The same single object on both halves over one background; ``change`` alters the right side and
        ``fixed_attributes`` (e.g. ``pattern="plain"``) fix the left object (see :func:`sample_pair`).
        Pairs come from their own seed stream, so pair ``i`` is unrelated to scene ``i``.
        """
        rng = np.random.default_rng([self.seed, int(index), 1])
        left, right = sample_pair(rng, change, profile=self.profile, **fixed_attributes)
        return left, right, render_pair(left, right, self.size), pair_caption(left, right)


def sample_grid(world: World, rows: int, cols: int, *, start: int = 0, pair_rows: int = 1, upscale: int = 2,
                gap: int = 2) -> np.ndarray:
    """A contact sheet (float32 RGB): ``rows``×``cols`` scenes from ``start``, then rows of pairs.

    Pairs cycle through ``PAIR_CHANGES``; each takes two cells. Cells are upscaled with nearest
    neighbour and separated by ``gap`` dark pixels.
    """
    cell = world.size * upscale
    pairs_per_row = max(1, cols // 2)
    height = (rows + pair_rows) * (cell + gap) + gap
    width = cols * (cell + gap) + gap
    sheet = np.full((height, width, 3), 0.15, dtype=np.float32)

    def paste(image, r, c):
        big = image.repeat(upscale, axis=0).repeat(upscale, axis=1)
        y, x = gap + r * (cell + gap), gap + c * (cell + gap)
        sheet[y:y + big.shape[0], x:x + big.shape[1]] = big

    for k in range(rows * cols):
        paste(world.scene(start + k)[1].image, k // cols, k % cols)
    for k in range(pair_rows * pairs_per_row):
        rendered = world.pair(start + k, PAIR_CHANGES[k % len(PAIR_CHANGES)])[2]
        # a pair spans two cells; the gap between them is covered by the continuous background
        paste(rendered.image, rows + k // pairs_per_row, 2 * (k % pairs_per_row))
    return sheet


__all__ = [
    "ACCESSORIES", "BACKGROUNDS", "COLOURS", "COLOUR_RGB", "MAX_OBJECTS", "PATTERNS", "POSITIONS", "SHAPES",
    "PROFILES", "SIZES", "VOCABULARIES", "WorldProfile", "world_profile", "ObjectSpec", "PairCaptions", "RenderedScene", "SceneBatch", "SceneSpec", "World",
    "attributes", "build_texture_banks", "caption", "caption_templates", "describe_object", "pair_caption",
    "render_background", "render_pair", "render_scene", "sample_grid", "sample_pair", "sample_scene",
    "sentence_bank", "with_changes",
]
