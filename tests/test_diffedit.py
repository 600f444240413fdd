"""DiffEdit: the mask on toy predictors, the mask-guided invariant, parity with diffusers' pipeline, the CLI."""

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline
from PIL import Image

from helpers import run_cli
from retouch.errors import RetouchError
from retouch.methods import get_method, make_config
from retouch.methods.diffedit import (
    DiffEditConfig,
    difference_mask,
    diffedit_edit,
    encode_trajectory,
    mask_guided_decode,
    mask_timestep,
    mask_to_pixels,
    text_noise_predictor,
)
from retouch.sampling import guided_denoiser, img2img_timesteps

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"


def _images(seed=0, batch=1):
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _box(shape, top, left, height, width):
    box = torch.zeros(shape, dtype=torch.bool)
    box[..., top:top + height, left:left + width] = True
    return box


def _iou(a, b):
    return ((a & b).sum() / (a | b).sum()).item()


# ---------------------------------------------------------------------------------------------
# The mask, model-agnostic
# ---------------------------------------------------------------------------------------------
def _box_predictor(boxes, gains, calls=None):
    """Source and target predictions that differ only inside ``boxes`` (B, 1, h, w), by a noise-dependent amount."""
    def predict_noise(noisy, t, which):
        if calls is not None:
            calls.append((t, which, noisy.clone()))
        source = 0.3 * noisy
        if which == "source":
            return source
        return source + boxes * gains[:, None, None, None] * (1 + 0.2 * noisy.abs())
    return predict_noise


def test_difference_mask_finds_the_box_where_predictions_differ(tiny_backbones):
    schedule = tiny_backbones["tiny-sd"].schedule
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    boxes = torch.cat([_box((1, 1, 16, 16), 3, 5, 6, 7), _box((1, 1, 16, 16), 9, 1, 5, 4)])
    calls = []
    edit_map, mask = difference_mask(_box_predictor(boxes.float(), torch.tensor([1.0, 100.0]), calls), latents,
                                     schedule, draws=4, seed=3)
    assert mask.shape == (2, 1, 16, 16) and mask.dtype == torch.bool
    assert _iou(mask[0], boxes[0]) == 1.0 and _iou(mask[1], boxes[1]) == 1.0
    assert edit_map.min() >= 0 and edit_map.max() <= 1
    assert len(calls) == 8 and {t for t, _, _ in calls} == {mask_timestep(schedule, 0.5)}
    assert not torch.equal(calls[0][2], calls[2][2])  # each draw noises afresh

    # Rescaled per image: the second image's 100× larger difference does not change the first's map.
    alone, _ = difference_mask(_box_predictor(boxes[:1].float(), torch.tensor([1.0])), latents[:1], schedule,
                               draws=4, seed=3)
    torch.testing.assert_close(alone, edit_map[:1])


def test_identical_predictions_give_an_empty_mask():
    from retouch.sampling import NoiseSchedule

    schedule = NoiseSchedule(torch.linspace(0.999, 0.01, 1000, dtype=torch.float64))
    edit_map, mask = difference_mask(lambda x, t, which: 0.5 * x, torch.randn(1, 4, 8, 8), schedule, draws=3)
    assert torch.equal(edit_map, torch.zeros_like(edit_map)) and not mask.any()


def test_mask_to_pixels_keeps_latent_cells():
    mask = _box((1, 1, 4, 4), 1, 2, 2, 1)
    pixels = mask_to_pixels(mask, (16, 16))
    assert pixels.dtype == torch.bool and pixels.sum() == 2 * 16
    assert pixels[0, 0, 4:12, 8:12].all()
    soft = mask_to_pixels(mask.float(), (16, 16))
    assert soft.shape == (1, 1, 16, 16) and 0 <= soft.min() and soft.max() <= 1


def test_same_source_and_target_text_gives_an_empty_mask_and_the_vae_round_trip(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    images = _images(1)
    config = DiffEditConfig(prompt=SOURCE, source_text=SOURCE, num_steps=4, mask_draws=2)
    result = diffedit_edit(backbone, images, config)
    assert not result.mask.any() and result.edit_map.abs().max() == 0
    with torch.no_grad():
        round_trip = backbone.decode_latents(backbone.encode_images(images))
    assert torch.equal(result.images, round_trip)


# ---------------------------------------------------------------------------------------------
# Mask-guided decoding
# ---------------------------------------------------------------------------------------------
def test_outside_the_mask_the_result_is_the_input_latent(tiny_backbones, monkeypatch):
    backbone = tiny_backbones["tiny-sd"]
    images = _images(2, batch=2)
    mask = _box((2, 1, 16, 16), 4, 2, 6, 8)
    decoded = []
    decode = backbone.decode_latents
    monkeypatch.setattr(backbone, "decode_latents", lambda latents: decoded.append(latents) or decode(latents))
    config = DiffEditConfig(edit="cat->dog", source_text=SOURCE, strength=0.6, num_steps=5)
    result = diffedit_edit(backbone, images, config, mask=mask)
    with torch.no_grad():
        x0 = backbone.encode_images(images)
    final = decoded[0]
    assert torch.equal(torch.where(mask, 0, final), torch.where(mask, 0, x0))  # exactly x₀ outside
    assert (final - x0).abs().amax(dim=1, keepdim=True)[mask].min() > 1e-4  # edited everywhere inside
    assert torch.equal(result.mask, mask)


def test_mask_guided_decode_keeps_each_step_on_the_encoded_trajectory(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    schedule, steps = backbone.schedule, 8
    with torch.no_grad():
        x0 = backbone.encode_images(_images(3))
        uncond, target = backbone.encode_text([""]), backbone.encode_text([TARGET])
        trajectory = encode_trajectory(backbone.denoise, schedule, x0, uncond, num_steps=steps, strength=0.5)
        timesteps = img2img_timesteps(schedule, steps, 0.5)
        assert len(trajectory) == len(timesteps) + 1
        mask = _box((1, 1, 16, 16), 0, 0, 16, 5)
        seen = []
        mask_guided_decode(guided_denoiser(backbone.denoise, target, uncond, 7.5), schedule, trajectory, mask,
                           timesteps, num_steps=steps, callback=lambda i, t, x: seen.append(x))
    for i, latents in enumerate(seen):
        assert torch.equal(latents[..., 5:], trajectory[-2 - i][..., 5:])


def test_seed_makes_it_deterministic(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    config = DiffEditConfig(edit="cat->dog", source_text=SOURCE, num_steps=2, mask_draws=2, seed=5)
    a = diffedit_edit(backbone, _images(4), config)
    b = diffedit_edit(backbone, _images(4), config)
    assert torch.equal(a.images, b.images) and torch.equal(a.edit_map, b.edit_map)
    c = diffedit_edit(backbone, _images(4), DiffEditConfig(edit="cat->dog", source_text=SOURCE, num_steps=2,
                                                           mask_draws=2, seed=6))
    assert not torch.equal(a.edit_map, c.edit_map)


@pytest.mark.parametrize("name", ["tiny-sd2-v", "tiny-sdxl"])
def test_runs_on_v_prediction_and_sdxl(tiny_backbones, name):
    images = _images(5)
    out = get_method("diffedit").edit(tiny_backbones[name], images, DiffEditConfig(prompt=TARGET, num_steps=2,
                                                                                   mask_draws=1))
    assert out.shape == images.shape and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# Parity with diffusers' deprecated StableDiffusionDiffEditPipeline
# ---------------------------------------------------------------------------------------------
def _pipeline(backbone):
    pipe = StableDiffusionDiffEditPipeline(
        vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, unet=backbone.unet,
        scheduler=DDIMScheduler.from_config(backbone.scheduler_config),
        inverse_scheduler=DDIMInverseScheduler.from_config(backbone.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_mask_encoding_and_unmasked_decoding_match_diffusers(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    pipe = _pipeline(backbone)
    steps, strength, seed = 4, 0.5, 7
    with torch.no_grad():
        x0 = backbone.encode_images(_images(6))
        uncond, target = backbone.encode_text([""]), backbone.encode_text([TARGET])
        # Step 1: theirs predicts with CFG 7.5, ours without; the rescaling divides the scale out.
        predict_noise = text_noise_predictor(backbone, backbone.encode_text([SOURCE]), target)
        ours = difference_mask(predict_noise, x0, backbone.schedule, num_steps=steps, draws=3, seed=seed).mask
        theirs = pipe.generate_mask(image=x0, source_prompt=SOURCE, target_prompt=TARGET, num_maps_per_mask=3,
                                    mask_encode_strength=0.5, num_inference_steps=steps, guidance_scale=7.5,
                                    generator=torch.Generator().manual_seed(seed), output_type="np")
        assert 0 < ours.sum() < ours.numel()
        assert np.array_equal(ours[0, 0].numpy(), theirs[0].astype(bool))

        # Step 2: unconditional DDIM encoding (theirs with the empty prompt and no guidance).
        trajectory = encode_trajectory(backbone.denoise, backbone.schedule, x0, uncond, num_steps=steps,
                                       strength=strength)
        inverted = pipe.invert(prompt="", image=x0, num_inference_steps=steps, inpaint_strength=strength,
                               guidance_scale=1.0).latents  # (1, k, C, h, w), noisiest first
        torch.testing.assert_close(torch.stack(trajectory[:0:-1], 1), inverted, atol=1e-5, rtol=1e-5)

        # Step 3 with a full mask is their decoding (the masks' timing differs, below).
        timesteps = img2img_timesteps(backbone.schedule, steps, strength)
        denoise = guided_denoiser(backbone.denoise, target, uncond, 7.5)
        full = torch.ones(1, 1, 16, 16, dtype=torch.bool)
        decoded = mask_guided_decode(denoise, backbone.schedule, trajectory, full, timesteps, num_steps=steps)
        kwargs = dict(prompt=TARGET, image_latents=inverted, inpaint_strength=strength, num_inference_steps=steps,
                      guidance_scale=7.5, output_type="latent")
        torch.testing.assert_close(decoded, pipe(mask_image=full.float(), **kwargs).images, atol=1e-5, rtol=1e-5)

        # Outside a mask diffusers ends one step short of x₀ (it puts back the step's start latent); we end on x₀.
        half = _box((1, 1, 16, 16), 0, 0, 16, 8)
        theirs = pipe(mask_image=half.float(), **kwargs).images
        ours = mask_guided_decode(denoise, backbone.schedule, trajectory, half, timesteps, num_steps=steps)
        torch.testing.assert_close(theirs[..., 8:], inverted[:, -1, ..., 8:], atol=1e-6, rtol=0)
        assert torch.equal(ours[..., 8:], x0[..., 8:])


# ---------------------------------------------------------------------------------------------
# Config and CLI
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values, message", [
    ({}, "diffedit needs the edit"),
    ({"source_text": SOURCE}, "diffedit needs the edit"),
    ({"edit": "cat->dog"}, "--source-text"),
    ({"edit": "cat->dog", "source_text": "a photo of a bird"}, "does not contain"),
    ({"edit": "cat->dog", "source_text": SOURCE, "prompt": TARGET}, "not both"),
    ({"prompt": TARGET, "mask_strength": 0.01}, "--mask-strength"),
    ({"prompt": TARGET, "mask_draws": 0}, "--mask-draws"),
    ({"prompt": TARGET, "mask_threshold": 1.5}, "--mask-threshold"),
    ({"prompt": TARGET, "strength": -0.1}, "--strength"),
])
def test_bad_configs_are_one_line_errors(values, message):
    with pytest.raises(RetouchError, match=message) as error:
        make_config(get_method("diffedit"), **values)
    assert "\n" not in str(error.value)


def test_prompts_are_the_word_swap_or_the_given_texts():
    assert DiffEditConfig(edit="cat->dog", source_text=SOURCE).prompts() == (SOURCE, TARGET)
    assert DiffEditConfig(prompt=TARGET).prompts() == ("", TARGET)  # mask against the unconditional prediction
    assert DiffEditConfig(prompt=TARGET, source_text=SOURCE).prompts() == (SOURCE, TARGET)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(path)
    return path


def test_cli_runs_diffedit_on_the_tiny_model(photo, tmp_path, capsys):
    out = tmp_path / "out.png"
    code, stdout, err = run_cli(["edit", photo, "-o", out, "--method", "diffedit", "--edit", "cat->dog",
                                 "--source-text", SOURCE, "--num-steps", "2", "--mask-draws", "1",
                                 "--model", "tiny-sd"], capsys)
    assert code == 0, err
    assert "diffedit" in stdout and np.asarray(Image.open(out)).shape == (48, 40, 3)


def test_cli_without_an_edit_is_one_line_and_writes_nothing(photo, tmp_path, capsys):
    out = tmp_path / "out.png"
    code, _, err = run_cli(["edit", photo, "-o", out, "--method", "diffedit", "--source-text", SOURCE], capsys)
    assert code == 1 and err.strip().count("\n") == 0 and "--edit" in err
    assert not out.exists()


def test_help_lists_the_mask_options(capsys):
    code, out, _ = run_cli(["edit", "--help"], capsys)
    assert code == 0 and "--mask-draws" in out and "[diffedit]" in out
