"""Distilling pix2pix-zero into a one-pass translator (pix2pix-zero §4.5): filter, model, end to end."""

import json

import pytest
import torch

from retouch.backbone import MINI_DIR, build_tiny
from retouch.errors import RetouchError
from retouch.train.distill import (
    DistillConfig,
    DistillPairs,
    distill,
    keep_pairs,
    load_translator,
    pair_scores,
    time_per_image,
    translate,
    translator_unet,
)
from retouch.world import World

from helpers import run_cli


class ColourJudge:
    """Image embedding = mean colour; text embedding = the colour word's RGB."""

    WORDS = {"red": (1.0, 0.0, 0.0), "blue": (0.0, 0.0, 1.0)}

    def encode_images(self, images):
        return images.mean(dim=(2, 3))

    def encode_texts(self, texts):
        return torch.tensor([next(v for w, v in self.WORDS.items() if w in t) for t in texts])


def _pairs():
    grey = torch.full((2, 3, 8, 8), 0.5)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1
    edited = grey.clone()
    edited[0, 2, 2:6, 2:6] = 1.0  # pair 0: turns the object blue, inside the mask only
    edited[1, 2] = 0.6  # pair 1: tints everything a little blue; 16 of 64 pixels are inside the mask
    return DistillPairs(grey, edited, mask, ["a red object"] * 2, ["a blue object"] * 2)


def test_pair_scores_measure_the_judge_rise_and_where_the_change_is():
    pairs = _pairs()
    scores = pair_scores(ColourJudge(), pairs)
    assert scores["inside_fraction"].tolist() == pytest.approx([1.0, 16 / 64])
    blue = torch.nn.functional.normalize(torch.tensor([0.0, 0.0, 1.0]), dim=0)
    before = torch.nn.functional.normalize(pairs.inputs.mean(dim=(2, 3)), dim=-1) @ blue
    after = torch.nn.functional.normalize(pairs.edited.mean(dim=(2, 3)), dim=-1) @ blue
    assert scores["clip_increase"].tolist() == pytest.approx((after - before).tolist(), abs=1e-6)
    assert (scores["clip_increase"] > 0).all()
    assert keep_pairs(scores, 0.0, 0.7).tolist() == [True, False]
    assert keep_pairs(scores, 1.0, 0.0).tolist() == [False, False]


def test_a_translator_with_a_zero_residual_is_the_identity():
    model = translator_unet()
    torch.nn.init.zeros_(model.conv_out.weight)
    torch.nn.init.zeros_(model.conv_out.bias)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(translate(model, images), images, atol=1e-6)


def test_time_per_image_edits_each_image_alone_after_one_untimed_warm_up():
    calls = []

    def edit(rows):
        calls.append(list(rows))
        return torch.full((len(rows), 3, 2, 2), float(rows[0]))

    edited, seconds = time_per_image(edit, 3)
    assert calls == [[0], [0], [1], [2]]
    assert edited[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0] and seconds.shape == (3,) and (seconds >= 0).all()


@pytest.mark.skipif(not (MINI_DIR / "judge" / "config.json").is_file(), reason="shipped mini judge absent")
def test_distill_end_to_end_on_a_tiny_backbone(tmp_path, monkeypatch):
    from retouch.metrics import TransformersCLIPJudge

    config = DistillConfig(edit="red->blue", model="tiny-sd", output_dir=str(tmp_path / "d"), pairs=2, edit_steps=2,
                           edit_batch=2, train_steps=2, batch=2, clip_increase=-2.0, inside_fraction=0.0)
    report = distill(build_tiny("tiny-sd"), TransformersCLIPJudge(MINI_DIR / "judge"), World(seed=0, size=64),
                     config)
    assert report["pairs_collected"] == 2 and report["pairs_kept"] == 2
    assert json.loads((tmp_path / "d" / "distill.json").read_text())["config"]["edit"] == "red->blue"
    # the pairs are cached: a second run with the same edit/pairs/steps/seed reuses them exactly
    from retouch.train.distill import cached_pairs

    cached, _ = cached_pairs(None, None, config)  # no backbone needed: nothing is collected again
    assert (tmp_path / "d" / "pairs.safetensors").is_file() and len(cached.sources) == 2
    import retouch.train.distill as distill_module

    collected = []
    monkeypatch.setattr(distill_module, "collect_pairs", lambda *args: collected.append(args) or cached)
    cached_pairs(None, None, config)
    assert collected == []  # same key: read back
    cached_pairs(None, None, DistillConfig(**{**config.__dict__, "model": "tiny-sd2-v"}))
    assert len(collected) == 1  # another backbone's pairs are not reused
    model = load_translator(tmp_path / "d" / "translator" / "final")
    with torch.no_grad():
        out = translate(model, torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    # thresholds nothing passes: one clear error, no translator
    strict = DistillConfig(edit="red->blue", model="tiny-sd", output_dir=str(tmp_path / "e"), pairs=2, edit_steps=2,
                           edit_batch=2, train_steps=2, batch=2, clip_increase=5.0)
    with pytest.raises(RetouchError, match="pass the filter"):
        distill(build_tiny("tiny-sd"), TransformersCLIPJudge(MINI_DIR / "judge"), World(seed=0, size=64), strict)
    assert not (tmp_path / "e" / "translator" / "final").exists()


@pytest.mark.parametrize("args, message", [
    (["--edit", "red->circle"], "different attributes"),
    (["--edit", "red->purple-ish"], "is not a mini-world word"),
    (["--pairs", "0"], "--pairs must be at least 1"),
    (["--inside-fraction", "1.5"], "--inside-fraction must lie in"),
])
def test_train_distill_bad_options_give_one_line(tmp_path, capsys, args, message):
    code, _, err = run_cli(["train", "distill", "--output-dir", tmp_path / "d", "--model", "tiny-sd", *args], capsys)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "d").exists()


def test_the_teacher_is_pix2pix_zero_as_retouch_runs_it_on_the_model(tmp_path, monkeypatch):
    """The pairs come from pix2pix-zero with the model folder's own settings (method_defaults.json), which are
    part of the pair cache's key; a model without them gets the paper's."""
    import retouch.methods
    from retouch.methods import METHOD_DEFAULTS_FILE
    from retouch.train.distill import _pairs_key, pix2pix_zero_edits, teacher_settings

    model = tmp_path / "model"
    model.mkdir()
    (model / METHOD_DEFAULTS_FILE).write_text(json.dumps({"pix2pix-zero": {"xa_guidance": 0.4,
                                                                            "guidance_scale": 3.0}}))
    assert teacher_settings(str(model)) == {"xa_guidance": 0.4, "guidance_scale": 3.0, "bank": "world"}
    assert teacher_settings("tiny-sd") == {"bank": "world"}  # no folder of its own: the paper's settings
    keys = [_pairs_key(DistillConfig(model=name))["teacher"] for name in (str(model), "tiny-sd")]
    assert keys[0] != keys[1]

    configs = []
    monkeypatch.setattr(retouch.methods, "edit_by_caption", lambda backbone, images, captions, make_run, *_: [
        configs.append(make_run(caption)[1]) for caption in captions])
    pix2pix_zero_edits(None, torch.zeros(1, 3, 8, 8), ["a photo of a red circle"], "red->blue", steps=3, batch=1,
                       seed=5, settings=teacher_settings(str(model)))
    config = configs[0]
    assert (config.xa_guidance, config.guidance_scale, config.num_steps, config.seed) == (0.4, 3.0, 3, 5)
    assert config.source_text == "a photo of a red circle" and config.edit == "red->blue" and config.bank == "world"
