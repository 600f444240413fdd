"""SDEdit against diffusers' StableDiffusionImg2ImgPipeline on the same tiny model and noise."""

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

from retouch.methods import get_method
from retouch.methods.sdedit import SDEditConfig


def _images(seed=0, batch=1):
    return torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sd2-v"])
def test_sdedit_matches_diffusers_img2img(tiny_backbones, name):
    backbone = tiny_backbones[name]
    config = SDEditConfig(prompt="a photo of a dog", strength=0.6, num_steps=10, guidance_scale=7.5, seed=3)
    ours = get_method("sdedit").edit(backbone, _images(), config)

    pipe = StableDiffusionImg2ImgPipeline(
        vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, unet=backbone.unet,
        scheduler=DDIMScheduler.from_config(backbone.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    latents = backbone.encode_images(_images())  # the posterior mode, as retouch encodes
    theirs = pipe(
        prompt=config.prompt, image=latents, strength=config.strength, num_inference_steps=config.num_steps,
        guidance_scale=config.guidance_scale, generator=torch.Generator().manual_seed(config.seed),
        output_type="latent",
    ).images
    with torch.no_grad():
        theirs = backbone.decode_latents(theirs)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_zero_strength_is_a_vae_round_trip(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    images = _images(1)
    edit = get_method("sdedit").edit
    with torch.no_grad():
        round_trip = backbone.decode_latents(backbone.encode_images(images))
    assert torch.equal(edit(backbone, images, SDEditConfig(strength=0.0, num_steps=10)), round_trip)


def test_seed_makes_it_deterministic_and_batches_are_independent(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    edit = get_method("sdedit").edit
    config = SDEditConfig(prompt="a cat", strength=0.7, num_steps=5, seed=11)
    a = edit(backbone, _images(2, batch=2), config)
    assert torch.equal(a, edit(backbone, _images(2, batch=2), config))
    assert not torch.equal(a, edit(backbone, _images(2, batch=2), SDEditConfig(prompt="a cat", strength=0.7,
                                                                              num_steps=5, seed=12)))
