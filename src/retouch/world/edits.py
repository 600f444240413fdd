"""Scenes for attribute edits: the inputs every mini-world edit benchmark and distillation run uses.

``edit_scenes(world, "circle", "square", 100)`` gives single-object scenes whose object is a circle,
from one split, with the object's mask and the captions before and after the edit ("a photo of a
plain red circle on grass" → "... square ..."). The scene for index ``i`` is drawn from its own
stream ``(seed, i, 7)``, so it belongs to index ``i``'s split like ``World.scene(i)`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from retouch.world.captions import describe_object
from retouch.world.render import render_scene
from retouch.world.scene import sample_scene, with_changes
from retouch.world.vocabulary import attribute_of

#: Pixels the object mask is grown by: the outline an edit may legitimately move.
MASK_GROWTH = 2


@dataclass
class EditScenes:
    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    masks: torch.Tensor  # (N, 1, H, W) float: the main object (body ∪ hat) grown by MASK_GROWTH pixels
    sources: list[str]  # captions of the inputs
    targets: list[str]  # the same captions after the edit
    specs: list = field(default_factory=list)  # the SceneSpec of each input, to render its true edit


def describe_scene(spec) -> str:
    """"a photo of a plain red circle on grass": names the pattern even when plain, so plain->striped swaps."""
    phrase = describe_object(spec.objects[0], plain=True)
    return f"a photo of {'an' if phrase[0] in 'aeiou' else 'a'} {phrase} on {spec.background}"


def edit_scenes(world, source: str, target: str, count: int, split: str = "test") -> EditScenes:
    """``count`` single-object scenes of ``split`` whose object has attribute value ``source``."""
    attribute = attribute_of(source)
    if attribute_of(target) != attribute:
        raise ValueError(f"'{source}' and '{target}' are values of different attributes")
    specs = []
    index = 0
    while len(specs) < count:
        if world.split(index) == split:
            specs.append(sample_scene(np.random.default_rng([world.seed, index, 7]), n_objects=1,
                                      profile=world.profile, **{attribute: source}))
        index += 1
    return scenes_for_edit(specs, target, world.size)


def scenes_for_edit(specs, target: str, size: int) -> EditScenes:
    """The :class:`EditScenes` of given scenes (their first object is the one edited) for an edit to ``target``."""
    attribute = attribute_of(target)
    rendered = [render_scene(spec, size) for spec in specs]
    tensor = torch.from_numpy(np.stack([r.image for r in rendered])).permute(0, 3, 1, 2).float()
    mask = torch.from_numpy(np.stack([r.masks[0] for r in rendered])).float()[:, None]
    side = 2 * MASK_GROWTH + 1
    return EditScenes(tensor, torch.nn.functional.max_pool2d(mask, side, stride=1, padding=MASK_GROWTH),
                      [describe_scene(spec) for spec in specs],
                      [describe_scene(with_changes(spec, **{attribute: target})) for spec in specs], list(specs))


def true_edits(scenes: EditScenes, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The renderer's own edit of every input, and the region that edit changes.

    Returns (images (N, 3, H, W) in [0, 1]: each input's spec re-rendered with ``target``; masks
    (N, 1, H, W) float: the main object before ∪ after the edit, grown by ``MASK_GROWTH``). For a
    pattern edit the region is the input's mask; for "hat" it adds the hat, which sits above the body
    and so outside the input's mask.
    """
    attribute = attribute_of(target)
    size = scenes.images.shape[-1]
    rendered = [render_scene(with_changes(spec, **{attribute: target}), size) for spec in scenes.specs]
    images = torch.from_numpy(np.stack([r.image for r in rendered])).permute(0, 3, 1, 2).float()
    after = torch.from_numpy(np.stack([r.masks[0] for r in rendered])).float()[:, None]
    side = 2 * MASK_GROWTH + 1
    grown = torch.nn.functional.max_pool2d(after, side, stride=1, padding=MASK_GROWTH)
    return images, torch.maximum(scenes.masks, grown)
