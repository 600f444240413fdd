"""The caption-conditioned start of text-to-image sampling (retouch/terminal_prior.py)."""

import pytest
import torch
from helpers import run_cli

from retouch.errors import RetouchError
from retouch.terminal_prior import (
    TERMINAL_PRIOR_FILE,
    TerminalPrior,
    fit_terminal_prior,
    load_terminal_prior,
    text_features,
)


def _synthetic(count=600, tokens=5, width=6, channels=3, spread=0.05, seed=0):
    """Text states and latents whose channel means are a known linear map of φ(c) plus Gaussian spread."""
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn((count, tokens, width), generator=generator)
    weight = torch.randn((width + 1, channels), generator=generator)
    means = text_features(states) @ weight + spread * torch.randn((count, channels), generator=generator)
    detail = torch.randn((count, channels, 4, 4), generator=generator)
    latents = means[:, :, None, None] + detail - detail.mean(dim=(2, 3), keepdim=True)
    return states, latents, weight


def test_fit_recovers_a_known_linear_map_and_its_spread():
    states, latents, weight = _synthetic()
    prior = fit_terminal_prior(states, latents, ridge=1e-6)
    assert torch.allclose(prior.weight, weight, atol=0.02)
    assert torch.allclose(prior.residual_std, torch.full((3,), 0.05), atol=0.008)


def test_the_start_carries_exactly_the_prior_means_and_the_centred_noise():
    states, _, weight = _synthetic(count=4)
    prior = TerminalPrior(weight, torch.zeros(3))
    noise = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    alpha = torch.tensor(0.0072)
    start = prior.start(noise, states, alpha)
    expected_means = alpha.sqrt() * (text_features(states) @ weight)
    assert torch.allclose(start.mean(dim=(2, 3)), expected_means, atol=1e-6)
    detail = start - start.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(detail, (1 - alpha).sqrt() * (noise - noise.mean(dim=(2, 3), keepdim=True)), atol=1e-6)
    # Without centring, ε's own channel means stay on top of the prior's.
    raw = prior.start(noise, states, alpha, centre_noise=False)
    assert torch.allclose(raw.mean(dim=(2, 3)), expected_means + (1 - alpha).sqrt() * noise.mean(dim=(2, 3)), atol=1e-6)


def test_the_spread_draws_vary_with_the_generator_and_repeat_with_its_seed():
    states, _, weight = _synthetic(count=2)
    prior = TerminalPrior(weight, torch.full((3,), 0.2))
    draw = lambda seed: prior.channel_means(states, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(3), draw(3))
    assert not torch.allclose(draw(3), draw(4))


def test_save_load_and_bad_files(tmp_path):
    states, latents, _ = _synthetic()
    prior = fit_terminal_prior(states, latents)
    prior.save(tmp_path)
    loaded = load_terminal_prior(tmp_path)
    assert torch.equal(loaded.weight, prior.weight) and torch.equal(loaded.residual_std, prior.residual_std)
    assert load_terminal_prior(tmp_path / "elsewhere") is None and load_terminal_prior(None) is None
    with pytest.raises(RetouchError, match="width"):
        loaded.channel_means(torch.zeros((1, 2, 9)))
    with pytest.raises(RetouchError, match="latent channels"):
        loaded.start(torch.zeros((1, 4, 2, 2)), states[:1], 0.01)
    (tmp_path / TERMINAL_PRIOR_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(RetouchError, match="cannot read the terminal prior"):
        load_terminal_prior(tmp_path)


def test_cli_fits_a_prior_into_a_saved_model_folder(tiny_backbones, tmp_path, capsys):
    folder = tiny_backbones["tiny-sd"].save(tmp_path / "model")
    code, out, err = run_cli(["train", "terminal-prior", "--model", folder, "--scenes", "32"], capsys)
    assert code == 0, err
    assert f"wrote {folder / TERMINAL_PRIOR_FILE}" in out
    prior = load_terminal_prior(folder)
    assert prior.weight.shape == (tiny_backbones["tiny-sd"].text_encoder.config.hidden_size + 1,
                                  tiny_backbones["tiny-sd"].latent_channels)
    code, _, err = run_cli(["train", "terminal-prior", "--model", tmp_path / "nothing-here"], capsys)
    assert code != 0 and "local diffusers backbone folder" in err


def test_the_shipped_prior_makes_mini_samples_take_their_background_from_the_caption():
    """The measured effect (docs/world_v2.md): from pure noise the mini U-Net draws the background from the
    noise's channel means and misses the caption's in about two of three samples; from the prior it follows it."""
    from retouch.backbone import MINI_DIR, load_backbone
    from retouch.train.evaluate_mini import generate, probe_accuracy
    from retouch.world import World
    from retouch.world.heldout import held_out_scenes
    from retouch.world.probe import load_probes

    backbone = load_backbone(str(MINI_DIR / "backbone")).eval()
    prior = load_terminal_prior(MINI_DIR / "backbone")
    assert prior is not None, "the shipped mini backbone carries its terminal prior"
    probes = load_probes(MINI_DIR / "probes")
    scenes = held_out_scenes(World(seed=0, size=64), 24)
    accuracy = {name: probe_accuracy(probes, generate(backbone, scenes.captions, prior=p), scenes.specs)
                for name, p in (("prior", prior), ("noise", None))}
    assert accuracy["prior"]["background"] >= 0.9
    assert accuracy["prior"]["background"] >= accuracy["noise"]["background"] + 0.3
    for attribute in ("shape", "colour", "pattern", "accessory"):
        assert accuracy["prior"][attribute] >= 0.85, (attribute, accuracy)
