"""The pair-aware prior (portrait paper §3.2's side-by-side canvas, for the mini model): its data, its
captions, and `retouch train pair-prior` writing a backbone that `retouch data pairs --model` takes."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import run_cli

from retouch.backbone import load_backbone
from retouch.data.pairs import DIRECTIONS
from retouch.errors import RetouchError
from retouch.train.pair_prior import (
    CAPTION_KINDS,
    IDENTICAL,
    PairPriorConfig,
    draw_pairs,
    pair_sample,
)
from retouch.world import World, caption, pair_caption

CONFIG = PairPriorConfig()
SHARED_FIELDS = ("shape", "colour", "size", "x", "y")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _draw_of_each_kind(world):
    """One draw per (kind, caption kind) combination, from the training stream's own rng."""
    found = {}
    draws = draw_pairs(world, CONFIG, np.random.default_rng(0), 400)
    for draw in draws:
        found.setdefault((draw.kind, draw.caption_kind), draw)
    return found


def test_draws_mix_the_directions_identical_pairs_and_every_prompt_kind():
    draws = draw_pairs(World(0), CONFIG, np.random.default_rng(1), 4000)
    kinds = Counter(d.kind for d in draws)
    captions = Counter(d.caption_kind for d in draws)
    assert set(kinds) == {"hat", "striped", IDENTICAL}
    assert abs(kinds[IDENTICAL] / 4000 - CONFIG.identical_rate) < 0.03
    assert abs(kinds["hat"] - kinds["striped"]) < 0.1 * kinds["hat"]
    assert abs(captions[""] / 4000 - CONFIG.caption_dropout) < 0.02
    assert min(captions[k] for k in CAPTION_KINDS) > 0.28 * 4000
    assert all(World.split(d.index) == "train" for d in draws)
    # a pure function of the rng: a resumed run sees the same data
    assert draws[:50] == draw_pairs(World(0), CONFIG, np.random.default_rng(1), 50)


def test_samples_are_side_by_side_with_the_source_left_and_the_target_right():
    world = World(0, 64)
    for (kind, _), draw in _draw_of_each_kind(world).items():
        sample = pair_sample(world, draw)
        assert sample.image.shape == (3, 64, 128) and sample.objects.shape == (1, 64, 128)
        assert -1 <= sample.image.min() and sample.image.max() <= 1
        left, right = (spec.objects[0] for spec in sample.specs)
        assert all(getattr(left, f) == getattr(right, f) for f in SHARED_FIELDS)
        if kind == IDENTICAL:
            assert left == right
            continue
        change, fixed = DIRECTIONS[kind]
        (attribute, target), = change.items()
        assert getattr(left, attribute) == fixed[attribute] != target == getattr(right, attribute)
        # the pixels agree: the object of each half is inside that half, the edit's pixels on the right
        objects = sample.objects[0].bool()
        assert objects[:, :64].any() and objects[:, 64:].any()
        rendered = world.pair(draw.index, change, **fixed)[2]
        assert torch.equal(sample.image, torch.from_numpy(rendered.image).permute(2, 0, 1) * 2 - 1)
        if kind == "hat":
            hats = rendered.hat_masks.any(axis=0)
            assert not hats[:, :64].any() and hats[:, 64:].any()


def test_captions_are_exactly_the_prompts_eq2_uses():
    world = World(0, 64)
    found = _draw_of_each_kind(world)
    assert {c for _, c in found} == {"", *CAPTION_KINDS}
    for (kind, caption_kind), draw in found.items():
        sample = pair_sample(world, draw)
        left, right = sample.specs
        prompts = pair_caption(left, right)  # what `retouch data pairs` builds p, p_a, p_b from
        expected = {"": "", "shared": prompts.shared, "source": caption(left), "target": caption(right)}
        assert sample.caption == expected[caption_kind]
        if caption_kind == "shared":
            assert sample.caption.startswith("the same ")
            assert sample.caption.endswith(f" on the left and right on {left.background}")
            if kind == "hat":  # the attribute that differs is not named by the shared prompt
                assert "hat" not in sample.caption
        if kind == "hat" and caption_kind == "target":
            assert "wearing a hat" in sample.caption
        if kind == "striped" and caption_kind == "source":
            assert "striped" not in sample.caption


def test_train_writes_a_backbone_that_data_pairs_accepts(tiny_backbones, tmp_path, capsys):
    out = tmp_path / "prior"
    code, stdout, err = run_cli(["train", "pair-prior", "--init", "tiny-sd", "--output-dir", out, "--steps", "3",
                                 "--batch", "2", "--learning-rate", "1e-3"], capsys)
    assert code == 0, err
    assert "trained 3 steps" in stdout
    prior, base = load_backbone(out / "final"), tiny_backbones["tiny-sd"]
    assert prior.unet.config.in_channels == 4 and prior.schedule.prediction_type == "epsilon"
    assert prior.tokenizer("a red circle").input_ids == base.tokenizer("a red circle").input_ids

    def same(a, b):
        sa, sb = a.state_dict(), b.state_dict()
        return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    assert same(prior.vae, base.vae) and same(prior.text_encoder, base.text_encoder)
    assert not same(prior.unet, base.unet)
    changed = [k for k, v in prior.unet.state_dict().items() if not torch.equal(v, base.unet.state_dict()[k])]
    assert len(changed) > 0.9 * len(prior.unet.state_dict())
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 3 and report["image_size"] == [64, 128] and np.isfinite(report["final_loss"])

    pairs = tmp_path / "pairs"
    code, stdout, err = run_cli(["data", "pairs", "--model", out / "final", "--direction", "hat", "--count", "1",
                                 "--steps", "1", "--source", "generate", "--out", pairs], capsys)
    assert code == 0, err
    summary = json.loads((pairs / "dataset.json").read_text())
    assert summary["pairs"] == 1 and summary["config"]["model"] == str(out / "final")


def test_bad_config_is_refused():
    for bad in (dict(directions=("sunglasses",)), dict(directions=()), dict(identical_rate=1.0),
                dict(caption_dropout=-0.1), dict(steps=0), dict(learning_rate=0.0), dict(object_weight=-1.0)):
        with pytest.raises(RetouchError):
            PairPriorConfig(**bad).validate()
