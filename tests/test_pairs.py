"""Paired-data generation (portrait paper §3.2, Eq. 2): the noise mix, the generator and its plug-ins,
the halves-agreement filter and `retouch data pairs`."""

import json

import numpy as np
import pytest
import torch
from helpers import run_cli

from retouch.backbone import MINI_DIR, Conditioning, build_tiny
from retouch.data import pairs
from retouch.data.pairs import (
    DIRECTIONS,
    JudgeIdentityTokens,
    PairControl,
    PairGuidance,
    PairIdentity,
    describe_halves,
    generate_pairs,
    halves_agree,
    pair_noise,
    split_indices,
)
from retouch.sampling import NoiseSchedule
from retouch.world import World

SIZE = 16  # generated halves are 16² on the tiny backbone: 8×16 latents, fast at nice 19


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: on 2 shared cores a second intra-op thread only waits for its turn
    (each op took ~10 ms instead of ~0.1 ms under a parallel training job)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("tiny-sd")


@pytest.fixture(scope="module")
def judge():
    from retouch.metrics import TransformersCLIPJudge

    return TransformersCLIPJudge(MINI_DIR / "judge")


def _prompts(count, direction="striped", size=SIZE):
    change, fixed = DIRECTIONS[direction]
    return [World(0, size).pair(i, change, **fixed)[3] for i in range(count)]


# ---------------------------------------------------------------------------------------------
# Eq. 2
# ---------------------------------------------------------------------------------------------
def _toy(latents, t, cond):
    """ε(x, c) = x·mean(c) + sum(c): row-wise, so each row sees only its own condition."""
    h = cond.hidden_states
    return latents * h.mean((1, 2))[:, None, None, None] + h.sum((1, 2))[:, None, None, None] * 1e-2


def test_eq2_is_the_weighted_mix_of_three_guided_predictions():
    schedule = NoiseSchedule(alphas_cumprod=torch.linspace(0.99, 0.01, 1000))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 6, generator=gen)
    null, shared, source, target = (Conditioning(torch.randn(2, 5, 8, generator=gen)) for _ in range(4))
    calls = []

    def counting(latents, t, cond):
        calls.append(latents.shape[0])
        return _toy(latents, t, cond)

    guidance = PairGuidance(guidance_scale=3.0, shared_strength=0.7, source_strength=0.2, target_strength=0.4)
    mixed = pair_noise(counting, schedule, x, 500, (null, shared, source, target), guidance)
    assert calls == [8]  # the four predictions of 2 pairs in one call

    def guided(cond):  # ε̃ by hand, one condition at a time
        return _toy(x, 0, null) + 3.0 * (_toy(x, 0, cond) - _toy(x, 0, null))

    expected = 0.7 * guided(shared)
    expected[..., :3] += 0.2 * guided(source)[..., :3]
    expected[..., 3:] += 0.4 * guided(target)[..., 3:]
    torch.testing.assert_close(mixed, expected)

    only_shared = PairGuidance(guidance_scale=3.0, shared_strength=0.5, source_strength=0.0, target_strength=0.0)
    torch.testing.assert_close(pair_noise(_toy, schedule, x, 500, (null, shared, source, target), only_shared),
                               0.5 * guided(shared))
    # M_a = [1, 0], M_b = [0, 1]: the left half never sees c_pb, the right half never sees c_pa
    other = Conditioning(torch.randn(2, 5, 8, generator=gen))
    new_target = pair_noise(_toy, schedule, x, 500, (null, shared, source, other), guidance)
    assert torch.equal(new_target[..., :3], mixed[..., :3]) and not torch.allclose(new_target[..., 3:], mixed[..., 3:])
    new_source = pair_noise(_toy, schedule, x, 500, (null, shared, other, target), guidance)
    assert torch.equal(new_source[..., 3:], mixed[..., 3:]) and not torch.allclose(new_source[..., :3], mixed[..., :3])


# ---------------------------------------------------------------------------------------------
# The generator and its plug-ins
# ---------------------------------------------------------------------------------------------
def test_generator_is_seeded_per_pair_and_returns_halves(tiny):
    prompts = _prompts(2)
    left, right = generate_pairs(tiny, prompts, steps=2, seed=5, size=SIZE)
    assert left.shape == right.shape == (2, 3, SIZE, SIZE) and 0 <= left.min() and right.max() <= 1
    again = generate_pairs(tiny, prompts, steps=2, seed=5, size=SIZE)
    assert torch.equal(left, again[0]) and torch.equal(right, again[1])
    # pair k's noise comes from seed + k, not from its batch: the second pair alone is the same pair
    alone = generate_pairs(tiny, prompts[1:], steps=2, seed=[6], size=SIZE)
    torch.testing.assert_close(alone[0][0], left[1], atol=1e-4, rtol=0)
    other = generate_pairs(tiny, prompts, steps=2, seed=9, size=SIZE)
    assert not torch.allclose(other[0], left)


def test_a_terminal_prior_sets_each_pairs_start_from_its_shared_prompt(tiny):
    """With a prior, z_T carries √ᾱ_T·m(p) (here a large known mean): the pairs change, stay seeded per pair."""
    from retouch.terminal_prior import TerminalPrior

    prompts = _prompts(2)
    width, channels = tiny.text_encoder.config.hidden_size, tiny.latent_channels
    weight = torch.zeros((width + 1, channels))
    weight[-1] = torch.tensor([40.0, -40.0, 40.0, -40.0])[:channels]  # the intercept: m(p) whatever p says
    prior = TerminalPrior(weight, torch.full((channels,), 0.5))
    plain = generate_pairs(tiny, prompts, steps=2, seed=5, size=SIZE)
    primed = generate_pairs(tiny, prompts, steps=2, seed=5, size=SIZE, prior=prior)
    assert not torch.allclose(primed[0], plain[0], atol=1e-3)
    assert torch.equal(primed[0], generate_pairs(tiny, prompts, steps=2, seed=5, size=SIZE, prior=prior)[0])
    alone = generate_pairs(tiny, prompts[1:], steps=2, seed=[6], size=SIZE, prior=prior)
    torch.testing.assert_close(alone[0][0], primed[0][1], atol=1e-4, rtol=0)


def test_a_zero_initialised_controlnet_changes_nothing_and_a_trained_one_does(tiny):
    from diffusers import ControlNetModel

    prompts = _prompts(1)
    torch.manual_seed(0)
    # the tiny VAE downsamples by 2, so the condition embedding has one stride-2 stage
    controlnet = ControlNetModel.from_unet(tiny.unet, conditioning_embedding_out_channels=(16, 32)).eval()
    pose = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    plain = generate_pairs(tiny, prompts, steps=2, seed=0, size=SIZE)
    zero = generate_pairs(tiny, prompts, steps=2, seed=0, size=SIZE, control=PairControl(controlnet, pose))
    assert torch.equal(plain[0], zero[0]) and torch.equal(plain[1], zero[1])  # from_unet zero-inits its outputs
    with torch.no_grad():
        generator = torch.Generator().manual_seed(2)
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.05)
    controlled = generate_pairs(tiny, prompts, steps=2, seed=0, size=SIZE, control=PairControl(controlnet, pose))
    assert (controlled[0] - plain[0]).abs().max() > 1e-2 and (controlled[1] - plain[1]).abs().max() > 1e-2


def test_identity_tokens_are_appended_and_reach_the_output(tiny, judge):
    world = World(0, 64)
    red, blue = (torch.from_numpy(world.pair(i)[2].image[:, :64]).permute(2, 0, 1) for i in (0, 1))
    encoder = JudgeIdentityTokens(judge, width=tiny.unet.config.cross_attention_dim, tokens=2)
    tokens = encoder(torch.stack([red, blue]))
    assert tokens.shape == (2, 2, 32) and 0.5 < tokens.std() < 2  # ≈ N(0, 1) like layer-normed text states
    seen = []
    real_denoise = tiny.denoise

    def recording(latents, t, cond, residuals=None):
        seen.append(cond.hidden_states.shape[1])
        return real_denoise(latents, t, cond, residuals)

    prompts = _prompts(1)
    plain = generate_pairs(tiny, prompts, steps=2, seed=0, size=SIZE)
    tiny.denoise = recording
    try:
        with_red = generate_pairs(tiny, prompts, steps=2, seed=0, size=SIZE, identity=PairIdentity(encoder, red))
    finally:
        del tiny.denoise
    text_tokens = tiny.encode_text(["x"]).hidden_states.shape[1]
    assert set(seen) == {text_tokens + 2}
    with_blue = generate_pairs(tiny, prompts, steps=2, seed=0, size=SIZE, identity=PairIdentity(encoder, blue))
    assert not torch.allclose(with_red[0], plain[0]) and not torch.allclose(with_red[0], with_blue[0])


# ---------------------------------------------------------------------------------------------
# The filter
# ---------------------------------------------------------------------------------------------
def test_rendered_pairs_pass_the_filter_and_shuffled_ones_fail(judge):
    world = World(0, 64)  # the shipped judge's world
    for direction, (change, fixed) in DIRECTIONS.items():
        images = [world.pair(i, change, **fixed)[2].image for i in split_indices("train", 24)]
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
        left, right = batch[..., :64], batch[..., 64:]
        lefts, rights = (describe_halves(judge, half, vocabularies=world.vocabularies) for half in (left, right))
        kept = [halves_agree(a, b)["kept"] for a, b in zip(lefts, rights)]
        shuffled = [halves_agree(a, b)["kept"] for a, b in zip(lefts, rights[1:] + rights[:1])]
        assert np.mean(kept) >= 0.85, direction
        assert np.mean(shuffled) <= 0.2, direction


# ---------------------------------------------------------------------------------------------
# retouch data pairs
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def loaded_judge(judge, monkeypatch):
    """The CLI's judge is the one this module loaded (the real loader runs in the `judge` fixture)."""
    monkeypatch.setattr("retouch.metrics.TransformersCLIPJudge", lambda *args, **kwargs: judge)


def test_cli_writes_a_dataset_with_a_manifest(tmp_path, capsys, loaded_judge):
    out = tmp_path / "hat"
    code, stdout, _ = run_cli(["data", "pairs", "--direction", "hat", "--count", "3", "--source", "renderer",
                               "--out", out, "--batch", "2"], capsys)
    assert code == 0 and "kept" in stdout
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == split_indices("train", 3)
    for row in rows:
        assert row["split"] == "train" and World.split(row["index"]) == "train" and row["direction"] == "hat"
        assert "hat" in row["prompts"]["target"] and "hat" not in row["prompts"]["source"]
        assert row["scene"]["left"]["objects"][0]["accessory"] == "none"
        assert (out / row["left"]).is_file() and (out / row["right"]).is_file()
        assert row["left"].startswith("left/") == row["kept"]
        assert set(row["scores"]) >= {"colour_left", "colour_right", "centre_shift", "size_change", "clip_cosine"}
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["pairs"] == 3 and summary["kept_fraction"] == round(sum(r["kept"] for r in rows) / 3, 4)

    generated = tmp_path / "striped"
    code, _, err = run_cli(["data", "pairs", "--direction", "striped", "--count", "1", "--model", "tiny-sd",
                            "--steps", "1", "--split", "val", "--seed", "3", "--guidance-scale", "3",
                            "--strengths", "0.4,0.6,0.7", "--out", generated], capsys)
    assert code == 0, err
    (row,) = [json.loads(line) for line in (generated / "manifest.jsonl").read_text().splitlines()]
    assert row["split"] == "val" == World.split(row["index"]) and row["seeds"] == {"world": 3, "noise": 3_000_009 + 90}
    assert row["strengths"] == {"guidance_scale": 3.0, "s_d": 0.4, "s_a": 0.6, "s_b": 0.7, "steps": 1}
    assert "striped" in row["prompts"]["target"] and row["scene"]["left"]["objects"][0]["pattern"] == "plain"

    code, _, _ = run_cli(["data", "pairs", "--direction", "hat", "--count", "2", "--source", "renderer",
                          "--out", out, "--overwrite"], capsys)
    assert code == 0 and len((out / "manifest.jsonl").read_text().splitlines()) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_refilter_rejects_halves_without_an_object_and_moves_their_files(tmp_path, capsys, loaded_judge):
    """A pair whose halves show no object (drawn across the seam, or not at all) is not kept, and `retouch data
    refilter` applies that to a stored dataset from its scores: flags, file places and counts."""
    from retouch.data.pairs import scores_agree

    found = {"colour_left": "red", "colour_right": "red", "footprint_left": [0.5, 0.5, 0.3],
             "footprint_right": [0.52, 0.48, 0.33], "centre_shift": 0.02, "size_change": 0.09}
    assert scores_agree(found)
    assert not scores_agree({**found, "footprint_left": None, "footprint_right": None,
                             "centre_shift": None, "size_change": None})
    assert not scores_agree({**found, "colour_right": "blue"}) and not scores_agree({**found, "centre_shift": 0.2})

    out = tmp_path / "hat"
    assert run_cli(["data", "pairs", "--direction", "hat", "--count", "3", "--source", "renderer", "--out", out],
                   capsys)[0] == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(r["kept"] for r in rows)  # rendered pairs: one object each side
    # as the first filter stored a seam-straddling pair: no footprint on either half, yet kept
    rows[1]["scores"].update(footprint_left=None, footprint_right=None, centre_shift=None, size_change=None)
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, stdout, _ = run_cli(["data", "refilter", str(out)], capsys)
    assert code == 0 and "kept 2 of 3" in stdout
    again = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["kept"] for r in again] == [True, False, True]
    assert again[1]["left"] == f"rejected/left/{rows[1]['index']:06d}.png" and (out / again[1]["right"]).is_file()
    assert not (out / rows[1]["left"]).exists() and all((out / r["left"]).is_file() for r in again)
    assert json.loads((out / "dataset.json").read_text())["kept"] == 2
    code, _, err = run_cli(["data", "refilter", str(tmp_path)], capsys)
    assert code == 1 and "not a pairs dataset" in err


def test_cli_refuses_bad_input_with_one_line(tmp_path, capsys, loaded_judge):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "photo.png").write_bytes(b"not mine to delete")
    for args, message in (
        (["--direction", "sunglasses"], "unknown direction"),
        (["--direction", "hat", "--source", "camera"], "unknown source"),
        (["--direction", "hat", "--split", "holdout"], "unknown split"),
        (["--direction", "hat", "--source", "generate", "--strengths", "0.5,0.5"], "--strengths"),
        (["--direction", "hat", "--source", "renderer", "--steps", "3"], "--steps"),
        (["--direction", "hat", "--source", "renderer", "--terminal-prior"], "--terminal-prior"),
        (["--direction", "hat", "--source", "generate", "--model", "tiny-sd", "--terminal-prior"], "no terminal prior"),
        (["--direction", "hat", "--count", "0"], "--count"),
        (["--direction", "hat", "--source", "generate", "--model", tmp_path / "no-model"], "not found"),
        (["--direction", "hat", "--out", existing], "already exists"),
        (["--direction", "hat", "--out", existing, "--overwrite"], "not a pairs dataset"),
    ):
        target = ["--out", tmp_path / "new"] if "--out" not in args else []
        code, _, err = run_cli(["data", "pairs", "--source", "renderer", *target, *args], capsys)
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "new").exists() and (existing / "photo.png").read_bytes() == b"not mine to delete"


def test_an_interrupted_build_leaves_nothing_behind(tmp_path, monkeypatch, judge):
    calls = []
    real = pairs.pair_agreement

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pairs, "pair_agreement", interrupted)
    config = pairs.PairsConfig(direction="striped", count=2, source="renderer", batch=1)
    with pytest.raises(KeyboardInterrupt):
        pairs.build_pairs_dataset(config, tmp_path / "out", judge=judge)
    assert list(tmp_path.iterdir()) == []
