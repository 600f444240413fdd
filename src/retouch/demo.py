"""``retouch demo``, the README's main job: the shipped mini models edit held-out mini-world scenes, or the
compositing effects run on a photograph. Everything is offline: scenes are rendered on the fly and the
models ship with retouch."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from retouch.errors import RetouchError

#: The documented effects recipe: scikit-image's "astronaut" photograph with a light motion blur,
#: the colour grading of its "coffee" photograph, unsharp masking and film grain at σ = 0.05.
DEMO_RECIPE = dict(blur=0.25, blur_angle=30.0, grain=0.05, sharpen=(1.5, 0.02), seed=0)
#: The documented diffusion demo: the first held-out (test-split) single-object mini-world scenes,
#: each edited by swapping one attribute word of its caption.
DEMO_EDITS = ("colour", "shape", "colour", "pattern")
DEMO_METHOD = "sdedit"
#: The demo edit's settings besides its prompt (the method's config fields).
DEMO_SETTINGS = dict(strength=0.6, num_steps=50, guidance_scale=5.0, seed=0)


def diffusion_demo(folder: Path) -> str:
    """Edit the held-out scenes through the CLI's own path (``make_config``, ``edit_image``); writes
    input.png, result.png and comparison.png (input | output strips). Returns the line to print."""
    import torch

    from retouch.backbone import load_backbone
    from retouch.imageio import check_outputs, save_image, side_by_side
    from retouch.methods import edit_image, get_method, make_config
    from retouch.world.heldout import held_out_scenes
    from retouch.world import World

    check_outputs([folder / "comparison.png"])
    started = time.perf_counter()
    method = get_method(DEMO_METHOD)
    backbone = load_backbone("mini")
    scenes = held_out_scenes(World(seed=0, size=64), len(DEMO_EDITS))
    inputs, results, rows = [], [], []
    for image, spec, attribute in zip(scenes.images, scenes.specs, DEMO_EDITS):
        source_text, target_text = demo_texts(spec, attribute)
        image = image.permute(1, 2, 0).numpy()
        config = make_config(method, prompt=target_text, **DEMO_SETTINGS)
        result = edit_image(method, backbone, image, config)
        inputs.append(image)
        results.append(result)
        rows.append(side_by_side([_upscale(image, 4), _upscale(result, 4)],
                                 labels=[source_text, "edited: " + target_text]))
    elapsed = time.perf_counter() - started
    width = max(row.shape[1] for row in rows)
    strip = np.concatenate([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=1.0)
                            for row in rows])
    save_image(inputs[0], folder / "input.png", make_parents=True)
    save_image(results[0], folder / "result.png")
    save_image(strip, folder / "comparison.png")
    return (f"wrote {folder}/input.png, result.png, comparison.png ({DEMO_METHOD} on the mini models, "
            f"{len(inputs)} edits in {elapsed:.1f} s on {torch.get_num_threads()} threads)")


def _upscale(image: np.ndarray, factor: int) -> np.ndarray:
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def demo_texts(spec, attribute: str) -> tuple[str, str]:
    """Canonical caption of a scene and of the same scene with one attribute of its object changed."""
    from retouch.world import VOCABULARIES, caption, with_changes

    values = VOCABULARIES[attribute]
    new_value = values[(values.index(getattr(spec.objects[0], attribute)) + 3) % len(values)]
    template = "a photo of {things} on {background}"
    return caption(spec, template=template), caption(with_changes(spec, **{attribute: new_value}), template=template)


def effects_demo(folder: Path, size: int) -> str:
    """The effects recipe on scikit-image's astronaut, coloured like its coffee photograph. Returns the line
    to print."""
    from skimage import data

    from retouch.effects import EffectsRecipe, apply_effects
    from retouch.imageio import resize_image, save_image, side_by_side

    if not 16 <= size <= 2048:
        raise RetouchError(f"--size must lie in [16, 2048]; got {size}")
    photo = resize_image(data.astronaut().astype("float32") / 255.0, (size, size))
    reference = data.coffee().astype("float32") / 255.0
    started = time.perf_counter()
    result = apply_effects(photo, EffectsRecipe(reference=reference, **DEMO_RECIPE))
    elapsed = time.perf_counter() - started
    strip = side_by_side([photo, resize_image(reference, (size * reference.shape[1] // reference.shape[0], size)),
                          result], labels=["input (astronaut)", "colour reference (coffee)", "result"])
    for name, image in (("input.png", photo), ("result.png", result), ("comparison.png", strip)):
        save_image(image, folder / name, make_parents=True)
    return f"wrote {folder}/input.png, result.png, comparison.png (effects took {elapsed:.1f} s)"
