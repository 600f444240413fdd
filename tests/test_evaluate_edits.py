"""The edit scorer shared by `retouch eval edits` and the demo: it must pass the renderer's own edits, fail
unedited inputs, and measure a moved object by how far it moved."""

import dataclasses

import numpy as np
import pytest
import torch

from retouch.train.evaluate_edits import object_centres, bare_backgrounds, score_edits
from retouch.world import World, with_changes
from retouch.world.edits import edit_scenes, scenes_for_edit, true_edits
from retouch.world.probe import load_probes
from retouch.world.render import render_scene


@pytest.fixture(scope="module")
def probes():
    return load_probes()


@pytest.mark.parametrize("edit", [("red", "blue"), ("circle", "star"), ("plain", "checkered"), ("none", "hat")])
def test_the_renderers_own_edit_scores_perfectly_and_the_unedited_input_fails(probes, edit):
    source, target = edit
    scenes = edit_scenes(World(0, 64), source, target, 6)
    truth, _ = true_edits(scenes, target)
    good = score_edits(scenes, truth, target, probes)
    assert good.probe_success.all()
    assert all(kept.all() for kept in good.kept.values()), good.kept
    assert good.background_l1.max() < 1e-6
    assert np.nanmax(good.centre_moved) < 1e-6
    unedited = score_edits(scenes, scenes.images, target, probes)
    assert not unedited.probe_success.any()
    assert unedited.background_l1.max() < 1e-6


def test_centre_moved_measures_how_far_the_object_went(probes):
    world = World(0, 64)
    scenes = edit_scenes(world, "red", "blue", 4)
    moved = []
    for spec in scenes.specs:
        obj = with_changes(spec, colour="blue").objects[0]
        shifted = dataclasses.replace(spec, objects=(dataclasses.replace(obj, x=obj.x + 3 / 64),))
        moved.append(torch.from_numpy(render_scene(shifted, 64).image).permute(2, 0, 1))
    scores = score_edits(scenes, torch.stack(moved), "blue", probes)
    assert scores.probe_success.all()
    assert scores.centre_moved == pytest.approx(np.full(4, 3.0), abs=0.5)
    assert scores.background_l1.min() > 0  # the moved object leaves the edit region


def test_an_image_without_the_object_has_no_centre():
    world = World(0, 64)
    scenes = scenes_for_edit([world.scene(i)[0] for i in range(3)], "blue", 64)
    backgrounds = bare_backgrounds(scenes.specs, 64)
    assert np.isnan(object_centres(backgrounds, backgrounds)).all()
    assert np.isfinite(object_centres(scenes.images, backgrounds)).all()


def test_local_blending_keeps_the_background_of_the_shipped_models_colour_edits(probes):
    """red→blue on the first 4 held-out red scenes with the mini backbone's λ_xa and CFG: local blending on the
    reconstruction pass (k = 0.3, Prompt-to-Prompt's) brings the background L1 outside the object to within
    0.01 of the autoencoder's round trip, well under the unblended edit's, and every edit still succeeds."""
    from retouch.backbone import MINI_DIR, load_backbone
    from retouch.train.evaluate_edits import evaluate_edits

    backbone = load_backbone(str(MINI_DIR / "backbone"))
    settings = dict(xa_guidance=0.5, guidance_scale=2.5, num_steps=20)
    found = {}
    for k in (0.0, 0.3):
        report, _ = evaluate_edits(backbone, World(seed=0, size=64), ["red->blue"], 4, probes,
                                   settings={**settings, "local_blend": k})
        found[k] = report["edits"]["red->blue"]
    floor = found[0.3]["background_l1_round_trip"]
    assert found[0.0]["probe_success"] == found[0.3]["probe_success"] == 1.0
    assert found[0.3]["background_l1"] < floor + 0.01, found
    assert found[0.3]["background_l1"] < 0.75 * found[0.0]["background_l1"], found
