"""The sampling core against diffusers' schedulers on the same model and inputs (≤ 1e-5, float32)."""

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from retouch.sampling import (
    NoiseSchedule,
    add_noise,
    classifier_free_guidance,
    ddim_invert,
    ddim_sample,
    ddim_timesteps,
    img2img_timesteps,
    multi_condition_guidance,
    split_prediction,
    velocity,
)

TOL = 1e-5


@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_timesteps_match_diffusers(spacing, offset):
    scheduler = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    schedule = NoiseSchedule.from_scheduler_config(scheduler.config)
    for steps in (1, 7, 50, 100):
        scheduler.set_timesteps(steps)
        assert ddim_timesteps(schedule, steps) == scheduler.timesteps.tolist()


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sd2-v", "tiny-sdxl"])
def test_ddim_sampling_matches_diffusers(tiny_backbones, name):
    backbone = tiny_backbones[name]
    cond = backbone.encode_text(["a photo of a cat"])
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    steps = 10
    ours = ddim_sample(backbone.denoise, backbone.schedule, latents, ddim_timesteps(backbone.schedule, steps), cond,
                       num_steps=steps)

    scheduler = DDIMScheduler.from_config(backbone.scheduler_config)
    scheduler.set_timesteps(steps)
    theirs = latents.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            theirs = scheduler.step(backbone.denoise(theirs, t, cond), t, theirs).prev_sample
    assert (ours - theirs).abs().max().item() <= TOL


def test_stochastic_ddim_step_matches_diffusers(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    cond = backbone.encode_text(["a cat"])
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    scheduler = DDIMScheduler.from_config(backbone.scheduler_config)
    scheduler.set_timesteps(5)
    ours = ddim_sample(backbone.denoise, backbone.schedule, latents, ddim_timesteps(backbone.schedule, 5), cond,
                       num_steps=5, eta=1.0, generator=torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    theirs = latents.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            noise = torch.randn(theirs.shape, generator=generator)
            theirs = scheduler.step(backbone.denoise(theirs, t, cond), t, theirs, eta=1.0,
                                    variance_noise=noise).prev_sample
    assert (ours - theirs).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sd2-v", "tiny-sdxl"])
def test_ddim_inversion_matches_diffusers(tiny_backbones, name):
    backbone = tiny_backbones[name]
    cond = backbone.encode_text(["a photo of a cat"])
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(2)) * 0.5
    steps = 10
    ours = ddim_invert(backbone.denoise, backbone.schedule, latents, cond, num_steps=steps)

    inverse = DDIMInverseScheduler.from_config(backbone.scheduler_config)
    inverse.set_timesteps(steps)
    theirs = latents.clone()
    with torch.no_grad():
        for t in inverse.timesteps:
            theirs = inverse.step(backbone.denoise(theirs, t, cond), t, theirs).prev_sample
    assert (ours - theirs).abs().max().item() <= TOL
    assert (ours - latents).abs().max() > 0.1  # inversion actually moved the latent


def test_add_noise_matches_diffusers():
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    schedule = NoiseSchedule.from_scheduler_config(scheduler.config)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    ours = add_noise(x0, noise, schedule.alphas_cumprod[t])
    assert (ours - scheduler.add_noise(x0, noise, t)).abs().max() <= TOL
    assert (velocity(x0, noise, schedule.alphas_cumprod[t]) - scheduler.get_velocity(x0, noise, t)).abs().max() <= TOL


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_conversions_are_consistent(prediction_type):
    """Every parameterization of the same (x₀, ε) pair converts back to that pair."""
    alpha = torch.tensor(0.37)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    xt = add_noise(x0, eps, alpha)
    output = {"epsilon": eps, "v_prediction": velocity(x0, eps, alpha), "sample": x0}[prediction_type]
    x0_hat, eps_hat = split_prediction(xt, output, alpha, prediction_type)
    assert torch.allclose(x0_hat, x0, atol=1e-5) and torch.allclose(eps_hat, eps, atol=1e-5)


def test_a_sample_prediction_at_the_clean_level_has_zero_noise_not_nan():
    """DDIM inversion reads its first output at ᾱ = 1 (set_alpha_to_one); an x₀-predicting model's ε̂ there is
    0/0. It is defined as 0 (a clean sample holds no noise), per batch row, so a residual multitask model
    inverts to finite latents."""
    x = torch.randn(2, 3, 4, 4)
    x0_hat, eps_hat = split_prediction(x, x + 0.1, torch.tensor([1.0, 0.37]), "sample")
    assert torch.equal(x0_hat, x + 0.1) and torch.equal(eps_hat[0], torch.zeros_like(x[0]))
    expected = (x[1] - torch.tensor(0.37).sqrt() * (x[1] + 0.1)) / torch.tensor(0.63).sqrt()
    assert torch.allclose(eps_hat[1], expected)


def test_img2img_timesteps_match_diffusers_strength_rule():
    schedule = NoiseSchedule.from_scheduler_config(DDIMScheduler(steps_offset=1).config)
    full = ddim_timesteps(schedule, 50)
    assert img2img_timesteps(schedule, 50, 1.0) == full
    assert img2img_timesteps(schedule, 50, 0.8) == full[10:]
    assert img2img_timesteps(schedule, 50, 0.0) == []


def test_guidance_formulas():
    u, c = torch.zeros(2), torch.ones(2)
    assert torch.equal(classifier_free_guidance(u, c, 7.5), torch.full((2,), 7.5))
    e0, e1, e2 = torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([3.0])
    # Eq. 1 of the portrait paper: e0 + s1 (e1 − e0) + s2 (e2 − e1)
    assert multi_condition_guidance([e0, e1, e2], [2.0, 0.5]).item() == pytest.approx(0 + 2 * 1 + 0.5 * 2)
    # one condition reduces to plain CFG
    assert torch.equal(multi_condition_guidance([u, c], [7.5]), classifier_free_guidance(u, c, 7.5))
    with pytest.raises(ValueError):
        multi_condition_guidance([e0, e1], [1.0, 2.0])
