"""The compositing dataset builder and its dead-leaves source: splits, targets, streaming, atomicity."""

import json
from dataclasses import replace

import numpy as np
import pytest
from helpers import run_cli

from retouch.data import compositing
from retouch.data.compositing import (
    GRAIN_NAMES,
    MULTI_TASKS,
    CompositingConfig,
    build_compositing_dataset,
    iter_compositing,
)
from retouch.data.dead_leaves import dead_leaves, power_law_radii
from retouch.effects import apply_effects, motion_blur, reinhard_color_transfer, unsharp_mask
from retouch.errors import RetouchError
from retouch.world import World

QUANTUM = 0.5 / 255 + 1e-6  # targets are rounded to 8-bit PNGs from exactly the stored source


def test_power_law_radii_follow_the_r_cubed_density():
    radii = power_law_radii(200_000, 1.0, 32.0, np.random.default_rng(0))
    assert radii.min() >= 1.0 and radii.max() <= 32.0
    for r in (1.5, 2.0, 4.0, 10.0):  # F(r) = (1 − r⁻²) / (1 − 32⁻²)
        assert abs((radii <= r).mean() - (1 - r**-2) / (1 - 32.0**-2)) < 0.005


def test_dead_leaves_cover_the_canvas_with_flat_disks_and_are_seeded():
    image = dead_leaves(48, seed=3)
    assert image.shape == (48, 48, 3) and image.dtype == np.float32
    assert np.array_equal(image, dead_leaves(48, seed=3)) and not np.array_equal(image, dead_leaves(48, seed=4))
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert 10 < len(colours) < 48 * 48 / 4  # many leaves, each covering several pixels with one colour
    # Scale invariance shows as a broad spread of region sizes: some leaves are large.
    counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)[1]
    assert counts.max() > 100 and (counts < 10).any()


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "compositing"
    config = CompositingConfig(world_scenes=12, dead_leaves=8, crop=32, crops_per_image=1, grain_samples=8,
                               shard_size=3, split=(0.5, 0.25, 0.25))
    summary = build_compositing_dataset(config, folder)
    return folder, config, summary


def test_a_small_image_is_scaled_up_to_the_crop_keeping_its_shape():
    """A 20×40 image (H×W) becomes 32×64 before 32² crops, so each crop spans its whole height (it was once
    resized to 64×32, transposed, and a crop saw half of it)."""
    image = np.repeat(np.linspace(0, 1, 20, dtype=np.float32)[:, None, None], 40, axis=1).repeat(3, axis=2)
    crops = compositing.random_crops(image, 32, 4, np.random.default_rng(0))
    assert all(crop.shape == (32, 32, 3) and crop[-1, 0, 0] - crop[0, 0, 0] > 0.9 for crop in crops)


def test_splits_sources_and_manifest(small_dataset):
    folder, config, summary = small_dataset
    manifest = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert sum(summary["counts"].values()) == len(manifest) == 12 + 8 + len(compositing.PHOTOS)
    world = World(seed=0, size=32)
    for record in manifest:
        origin = record["origin"]
        if origin.startswith("world:"):
            assert record["split"] == world.split(int(origin.split(":")[1]))  # the world's own held-out split
        assert (record["split"] == "photos") == origin.startswith("skimage:")  # photographs never train
        keys_in_split = {r["key"] for r in manifest if r["split"] == record["split"]}
        assert record["params"]["reference"] in keys_in_split  # colour reference from the same split
        multi = set(MULTI_TASKS) <= set(record["images"])
        assert multi == (record["split"] in ("test", "photos"))
        assert set(GRAIN_NAMES.values()) <= set(record["images"])
        assert 0.1 <= record["params"]["blur"] <= 1 and 1 <= record["params"]["sharpen"][0] <= 3
    assert {r["split"] for r in manifest} >= {"train", "photos"}


def test_streamed_targets_are_the_effects_of_the_stored_parameters(small_dataset):
    folder, _, _ = small_dataset
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    manifest = {json.loads(line)["key"]: json.loads(line) for line in lines}
    seen = 0
    for split in ("train", "val", "test", "photos"):
        for sample in iter_compositing(folder, split):
            seen += 1
            record = manifest[sample.key]
            assert record["split"] == split and sample.params == record["params"]
            source, params = sample.images["source"], sample.params
            assert source.shape == (32, 32, 3) and sample.images["mask"].shape == (32, 32)
            assert set(np.unique(sample.images["mask"])) <= {0.0, 1.0}
            blurred = motion_blur(source, params["blur"], angle=params["blur_angle"])
            assert np.abs(sample.images["blur"] - blurred).max() <= QUANTUM
            coloured = reinhard_color_transfer(source, sample.images["reference"])
            assert np.abs(sample.images["colour"] - np.clip(coloured, 0, 1)).max() <= QUANTUM
            sharpened = unsharp_mask(source, *params["sharpen"])
            assert np.abs(sample.images["sharpen"] - np.clip(sharpened, 0, 1)).max() <= QUANTUM
            fine, coarse = sample.images["grain_010"], sample.images["grain_100"]
            assert not np.array_equal(fine, coarse)  # the five radii are five different renderings
    assert seen == len(manifest)


def test_rebuilding_is_deterministic_and_never_overwrites(small_dataset, tmp_path):
    folder, config, _ = small_dataset
    again = tmp_path / "again"
    build_compositing_dataset(config, again)
    assert (again / "manifest.jsonl").read_text() == (folder / "manifest.jsonl").read_text()
    assert (again / "train-00000.tar").read_bytes() == (folder / "train-00000.tar").read_bytes()
    with pytest.raises(RetouchError, match="already exists"):
        build_compositing_dataset(config, folder)


def test_worker_processes_write_the_same_dataset(small_dataset, tmp_path):
    folder, config, _ = small_dataset
    parallel = tmp_path / "parallel"
    build_compositing_dataset(replace(config, workers=2), parallel)
    assert (parallel / "manifest.jsonl").read_text() == (folder / "manifest.jsonl").read_text()
    for shard in sorted(folder.glob("*.tar")):
        assert (parallel / shard.name).read_bytes() == shard.read_bytes()


def test_training_combinations_are_the_effects_of_their_stored_tasks_and_leave_the_rest_alone(small_dataset,
                                                                                              tmp_path):
    """--train-combinations K: each train crop gets K targets of 2–3 tasks made by apply_effects from its stored
    parameters (the hole never in the target); no other split changes, and the train crops' single-task targets
    and parameters are those of a build without them."""
    folder, config, _ = small_dataset
    combined = tmp_path / "combined"
    build_compositing_dataset(replace(config, train_combinations=3), combined)
    for shard in sorted(folder.glob("*.tar")):
        if not shard.name.startswith("train"):
            assert (combined / shard.name).read_bytes() == shard.read_bytes()
    plain = {s.key: s for s in iter_compositing(folder, "train")}
    seen_tasks = set()
    for sample in iter_compositing(combined, "train"):
        combinations = sample.params.pop("combinations")
        assert sample.params == plain[sample.key].params and len(combinations) == 3
        for name, image in plain[sample.key].images.items():
            assert np.array_equal(sample.images[name], image)
        for k, combination in enumerate(combinations):
            tasks = combination["tasks"]
            assert tuple(tasks) in compositing.COMBINATIONS and combination["grain"] in GRAIN_NAMES
            seen_tasks.add(tuple(tasks))
            recipe = compositing.combination_recipe(sample.params, tasks, combination["grain"],
                                                    sample.images["reference"])
            assert recipe.mask is None and (recipe.reference is not None) == ("colour" in tasks)
            expected = np.clip(apply_effects(sample.images["source"], recipe, grain_samples=config.grain_samples), 0, 1)
            assert np.abs(sample.images[f"combo{k}"] - expected).max() <= QUANTUM
    assert len(seen_tasks) > 3
    for split in ("val", "test"):
        assert all("combinations" not in s.params and not any(n.startswith("combo") for n in s.images)
                   for s in iter_compositing(combined, split))


def test_an_interrupted_build_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = compositing.render_targets
    monkeypatch.setattr(compositing, "render_targets", failing)
    config = CompositingConfig(world_scenes=6, dead_leaves=0, photos=False, crop=32, grain_samples=4)
    with pytest.raises(KeyboardInterrupt):
        build_compositing_dataset(config, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_cli_builds_and_rejects_bad_options(tmp_path, capsys):
    out = tmp_path / "set"
    code, stdout, _ = run_cli(["data", "compositing", "-o", out, "--world-scenes", "3", "--dead-leaves", "2",
                               "--no-photos", "--crop", "32", "--grain-samples", "4"], capsys)
    assert code == 0 and "wrote" in stdout and (out / "dataset.json").is_file()
    for bad, message in ((["--split", "0.5,0.5"], "--split"), (["--crop", "8"], "--crop"),
                         (["--images", tmp_path / "missing"], "--images")):
        code, _, err = run_cli(["data", "compositing", "-o", tmp_path / "other", "--no-photos", *bad], capsys)
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "other").exists()
