"""The portrait benchmark (Table 1 / Fig. 8 of the portrait paper) on tiny inputs and the tiny backbone."""

import json

import pytest
import torch
from helpers import run_cli

from retouch.train import evaluate_portrait as bench
from retouch.world import World


@pytest.fixture(scope="module")
def probes():
    from retouch.world.probe import load_probes

    return load_probes()


@pytest.fixture(scope="module")
def inputs():
    return {d: bench.direction_inputs(World(0), d, 8) for d in bench.DIRECTIONS}


def test_the_identity_system_scores_perfectly(inputs, probes):
    data = inputs["striped"]
    row = bench.score_direction(data, data.images, None, probes)
    assert row["identity"] == 1.0 and all(row[f"identity_{a}"] == 1.0 for a in bench.IDENTITY_ATTRIBUTES)
    assert row["background_psnr"] == bench.PSNR_CAP and row["background_l1"] == 0.0
    assert row["mask_iou"] is None and row["count"] == 8
    # the inputs are plain, so the probe should not call them striped
    assert row["success"] <= 0.25


def test_the_renderers_true_edit_succeeds_and_keeps_identity(inputs, probes):
    for direction, data in inputs.items():
        row = bench.score_direction(data, data.true_images, data.edit_masks > 0, probes)
        assert row["success"] >= 0.75, direction
        assert row["identity"] >= 0.75, direction
        assert row["background_psnr"] == bench.PSNR_CAP  # nothing outside the edit region moved
        assert row["mask_iou"] == 1.0


def test_the_hat_edit_region_covers_the_hat(inputs):
    data = inputs["hat"]
    changed = (data.true_images - data.images).abs().amax(1, keepdim=True) > 0
    assert changed.any()
    assert not (changed & (data.edit_masks == 0)).any()  # every changed pixel is inside the region
    striped = inputs["striped"]
    assert ((striped.true_images - striped.images).abs().amax(1, keepdim=True) > 0).any()


def test_mask_iou_by_hand():
    truth = torch.zeros(2, 1, 4, 4)
    truth[0, 0, :2, :2] = 1
    predicted = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    predicted[0, 0, :2, :4] = True  # covers the truth and as much again: 4 / 8
    assert bench.mask_iou(predicted, truth).tolist() == [0.5, 1.0]  # two empty masks agree


def test_systems_run_in_caption_groups_and_masks_reach_pixel_size(inputs):
    data = inputs["striped"]
    calls = []

    def edit(images, source, target, direction):
        calls.append((len(images), source, target, direction))
        return images, torch.ones(len(images), 1, 16, 16, dtype=torch.bool)

    images, masks = bench.run_system(bench.System("echo", edit), data, batch=3)
    assert torch.allclose(images, data.images, atol=1e-6)
    assert masks.shape == (8, 1, 64, 64) and masks.all()
    groups = sum(len(set(data.sources[start:start + 3])) for start in range(0, 8, 3))
    assert len(calls) == groups and sum(n for n, *_ in calls) == 8 and all(n <= 3 for n, *_ in calls)
    assert all(data.targets[data.sources.index(source)] == target and direction == "striped"
               for _, source, target, direction in calls)
    whole, _ = bench.run_system(bench.System("echo", edit, per_caption=False), data, batch=8)
    assert calls[-1][0] == 8 and torch.allclose(whole, images)


def test_table_has_a_block_per_direction_and_dashes_where_nothing_ran():
    rows = [{"system": "a", "direction": "striped", "success": 0.5, "mask_iou": None},
            {"system": "b", "direction": "hat", "success": 1.0}]
    table = bench.portrait_table(rows)
    assert "plain→striped success ↑" in table and "none→hat success ↑" in table
    assert "| a | 0.50 | — |" in table and table.splitlines()[-1].startswith("| b | — |")


def test_cli_runs_end_to_end_on_a_tiny_mcdm_and_the_tiny_backbone(tmp_path, capsys, tiny_backbones):
    from retouch.networks.portrait import PortraitModel, PortraitSpec

    PortraitModel.from_backbone(tiny_backbones["tiny-sd"], PortraitSpec()).save(tmp_path / "mcdm")
    output, figure = tmp_path / "table.md", tmp_path / "fig.png"
    code, out, err = run_cli(["eval", "portrait", "--model", f"tiny={tmp_path / 'mcdm'}", "--backbone", "tiny-sd",
                              "--baselines", "sdedit-0.5,diffedit", "--count", "1", "--num-steps", "2",
                              "--figure", figure, "--figure-rows", "1", "-o", output], capsys)
    assert code == 0, err
    table = output.read_text()
    for name in ("tiny", "tiny w/o mask", "SDEdit 0.5", "DiffEdit", bench.REFERENCE_INPUT,
                 bench.REFERENCE_AUTOENCODER, bench.REFERENCE_TRUTH):
        assert f"| {name} |" in table, name
    rows = json.loads(output.with_suffix(".json").read_text())["rows"]
    assert {r["direction"] for r in rows} == {"striped", "hat"}
    masked = {r["system"]: r["mask_iou"] for r in rows if r["direction"] == "striped"}
    assert masked["tiny"] is not None and masked["DiffEdit"] is not None and masked["tiny w/o mask"] is None
    assert figure.is_file() and "s/image" in out

    code, _, err = run_cli(["eval", "portrait", "--model", "nameless", "-o", tmp_path / "t.md"], capsys)
    assert code != 0 and "NAME=FOLDER" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["eval", "portrait", "--model", f"x={tmp_path}", "-o", tmp_path / "t.md"], capsys)
    assert code != 0 and "not a portrait (MCDM) model folder" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["eval", "portrait", "--baselines", "sdedit-0.3", "-o", tmp_path / "t.md"], capsys)
    assert code != 0 and "unknown baseline 'sdedit-0.3'" in err
    assert not (tmp_path / "t.md").exists()


def test_every_baseline_gets_a_valid_config_for_both_directions(inputs, tiny_backbones):
    """The runs the CLI test leaves out (it runs SDEdit and DiffEdit only, for time) are wired the same way."""
    backbone = tiny_backbones["tiny-sd"]
    for direction, data in inputs.items():
        source, target = data.sources[0], data.targets[0]
        for name in bench.BASELINES:
            method, config = bench.baseline_run(name, backbone, source, target, direction, num_steps=3)
            assert config.num_steps == 3, name
        _, p2p = bench.baseline_run("p2p", backbone, source, target, direction)
        if direction == "hat":
            assert p2p.attention_edit == "refine"  # "wearing a hat" adds words; a word swap would be refused
        _, zero = bench.baseline_run("pix2pix-zero", backbone, source, target, direction)
        assert zero.edit == "->".join(bench.DIRECTIONS[direction]) and zero.source_text == source
    assert [s.name for s in bench.baseline_systems(backbone)] == list(bench.BASELINE_NAMES.values())
