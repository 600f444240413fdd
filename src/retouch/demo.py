"""``retouch demo``, the README's main job: the shipped mini models edit held-out mini-world scenes, or the
compositing effects run on a photograph. Everything is offline: scenes are rendered on the fly and the
models ship with retouch."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from retouch.errors import check_range

#: The documented effects recipe: scikit-image's "astronaut" photograph with a light motion blur,
#: the colour grading of its "coffee" photograph, unsharp masking and film grain at σ = 0.05.
DEMO_RECIPE = dict(blur=0.25, blur_angle=30.0, grain=0.05, sharpen=(1.5, 0.02), seed=0)
#: The documented diffusion demo: one edit of each kind, each on the first held-out (test-split) scene it
#: applies to (the hat is added to the first scene without one), never picked for success. Each edit
#: changes one attribute to the next word of the world's vocabulary.
DEMO_KINDS = ("colour", "shape", "pattern", "accessory")
DEMO_METHOD = "pix2pix-zero"
#: The demo edit's settings besides its texts (the method's config fields), over the mini model's own defaults
#: for the method (``method_defaults.json`` in its folder) and the paper's.
DEMO_SETTINGS = dict(num_steps=50, seed=0)


def demo_edits(world, kinds=DEMO_KINDS) -> list[tuple[object, str]]:
    """(scene spec, target word) per kind: the first held-out scenes in order, one per kind, a scene used
    once; the target is the next word of the world's vocabulary (the hat kind adds a hat)."""
    from retouch.world.heldout import held_out_scenes

    specs = held_out_scenes(world, 4 * len(kinds)).specs
    chosen, used = [], set()
    for kind in kinds:
        for k, spec in enumerate(specs):
            obj = spec.objects[0]
            if k in used or (kind == "accessory" and obj.accessory != "none"):
                continue
            words = world.vocabularies[kind]
            target = "hat" if kind == "accessory" else words[(words.index(getattr(obj, kind)) + 1) % len(words)]
            chosen.append((spec, target))
            used.add(k)
            break
    return chosen


def diffusion_demo(folder: Path) -> str:
    """pix2pix-zero edits of held-out scenes with the shipped mini models, scored by the shipped probes and
    judge (:mod:`retouch.train.evaluate_edits`); writes input.png, result.png and comparison.png (input |
    output strips). Returns the lines to print, the success count last."""
    import torch

    from retouch.backbone import MINI_DIR, load_backbone
    from retouch.imageio import check_outputs, save_image, side_by_side
    from retouch.methods import get_method, with_model_defaults
    from retouch.metrics import TransformersCLIPJudge
    from retouch.train.evaluate_edits import run_edit, score_edits
    from retouch.world import World
    from retouch.world.edits import scenes_for_edit
    from retouch.world.probe import load_probes

    check_outputs([folder / "comparison.png"])
    started = time.perf_counter()
    backbone = load_backbone("mini")
    probes, judge = load_probes(), TransformersCLIPJudge(MINI_DIR / "judge")
    world = World(seed=0, size=64)
    settings = with_model_defaults(get_method(DEMO_METHOD), "mini", DEMO_SETTINGS)
    inputs, results, rows, lines, successes = [], [], [], [], 0
    for spec, target in demo_edits(world):
        scenes = scenes_for_edit([spec], target, world.size)
        edited = run_edit(backbone, DEMO_METHOD, scenes, settings)
        scores = score_edits(scenes, edited, target, probes, judge, world.vocabularies)
        success = bool(scores.succeeded()[0])
        successes += success
        image, result = scenes.images[0].permute(1, 2, 0).numpy(), edited[0].permute(1, 2, 0).numpy()
        inputs.append(image)
        results.append(result)
        verdict = "succeeded" if success else "failed"
        rows.append(side_by_side([_upscale(image, 4), _upscale(result, 4)],
                                 labels=[scenes.sources[0], f"{verdict}: {scenes.targets[0]}"]))
        lines.append(f"  {scenes.sources[0]} -> {scenes.targets[0]}: {verdict} (probe "
                     f"{'yes' if scores.probe_success[0] else 'no'}, judge {'yes' if scores.judge_success[0] else 'no'}; "
                     f"background L1 {scores.background_l1[0]:.3f})")
    elapsed = time.perf_counter() - started
    width = max(row.shape[1] for row in rows)
    strip = np.concatenate([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=1.0)
                            for row in rows])
    save_image(inputs[0], folder / "input.png", make_parents=True)
    save_image(results[0], folder / "result.png")
    save_image(strip, folder / "comparison.png")
    shown = ", ".join(f"{name} {value}" for name, value in sorted(settings.items()) if name != "seed")
    return "\n".join([*lines, f"wrote {folder}/input.png, result.png, comparison.png ({DEMO_METHOD} on the mini "
                                f"models, {shown}; {len(inputs)} edits in {elapsed:.1f} s on {torch.get_num_threads()} "
                                "threads)",
                       f"{successes} of {len(inputs)} edits succeeded (the probes and the judge both read the target)"])


def _upscale(image: np.ndarray, factor: int) -> np.ndarray:
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def effects_demo(folder: Path, size: int) -> str:
    """The effects recipe on scikit-image's astronaut, coloured like its coffee photograph. Returns the line
    to print."""
    from skimage import data

    from retouch.effects import EffectsRecipe, apply_effects
    from retouch.imageio import resize_image, save_image, side_by_side

    check_range("--size", size, 16, 2048)
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
