"""Held-out scenes, unseen photographs and the zero-shot prompts every evaluation shares.

They live with the world (not with a trainer or a benchmark) so that data builders, methods,
trainers and the CLI all read them from below: imports run world → data → methods → train → cli/app.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: Attributes the judge classifies zero-shot, with the prompt for each value.
JUDGED_ATTRIBUTES = ("shape", "colour", "pattern", "accessory", "background")
#: scikit-image photographs used as unseen real images (never trained on).
PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "cat")
_PHRASES = {
    "shape": "a photo of a {}",
    "colour": "a photo of a {} object",
    "pattern": "a photo of a {} object",
    "background": "a photo of a object on {}",
    "accessory": "a photo of a object wearing a {}",
}


def zero_shot_prompts(attribute: str, vocabularies: dict | None = None) -> dict[str, str]:
    """value → prompt, in the phrasing of the judge's training captions
    (:func:`retouch.train.mini.partial_caption`); ``vocabularies`` (a world's, e.g. ``World.vocabularies``)
    restricts the values to those the world draws."""
    from retouch.world.vocabulary import VOCABULARIES

    values = (vocabularies or VOCABULARIES)[attribute]
    if attribute == "accessory":  # the judge's captions never say "wearing a none"
        return {value: "a photo of a object" if value == "none" else _PHRASES[attribute].format(value)
                for value in values}
    return {value: _PHRASES[attribute].format(value) for value in values}


@dataclass
class HeldOutScenes:
    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    specs: list
    captions: list[str]
    object_masks: torch.Tensor  # (N, 1, H, W) float, 1 where any object is visible


def held_out_scenes(world, count: int, *, single_object: bool = True, split: str = "test") -> HeldOutScenes:
    """The first ``count`` scenes of ``split`` (optionally only those with one object): a fixed list,
    the same for every system measured on it."""
    images, specs, captions, masks = [], [], [], []
    index = 0
    while len(specs) < count:
        if world.split(index) == split:
            spec, rendered, text = world.scene(index)
            if not single_object or len(spec.objects) == 1:
                images.append(rendered.image)
                specs.append(spec)
                captions.append(text)
                masks.append(rendered.masks.any(axis=0))
        index += 1
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return HeldOutScenes(tensor, specs, captions, torch.from_numpy(np.stack(masks)).float()[:, None])


def photographs(size: int = 128) -> dict[str, torch.Tensor]:
    """scikit-image's bundled photographs, centre-cropped square and resized to ``size`` (3, size, size)."""
    from skimage import data

    from retouch.imageio import resize_image

    out = {}
    for name in PHOTOGRAPHS:
        image = getattr(data, name)()
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        image = image[..., :3].astype(np.float32) / 255.0
        h, w = image.shape[:2]
        side = min(h, w)
        crop = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        out[name] = torch.from_numpy(resize_image(crop, (size, size))).permute(2, 0, 1)
    return out


def photo_crops(size: int = 128, crop: int = 64) -> torch.Tensor:
    """The photographs at ``size``² cut into non-overlapping ``crop``² tiles (N, 3, crop, crop)."""
    photos = torch.stack(list(photographs(size).values()))
    tiles = [photos[..., y:y + crop, x:x + crop] for y in range(0, size, crop) for x in range(0, size, crop)]
    return torch.cat(tiles)
