"""pix2pix-zero and pix2pix-zeroCon on the tiny models: parity with diffusers' deprecated pipeline,
the losses on hand-computed cases, edit directions, captioning, batching and the CLI."""

import dataclasses
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from retouch.captioning import BlipCaptioner, caption_images
from retouch.directions import (
    TEMPLATES,
    build_direction,
    file_bank,
    generated_bank,
    load_direction,
    save_direction,
    template_bank,
    world_bank,
)
from retouch.errors import RetouchError
from retouch.guidance import (
    autocorrelation_gradient,
    autocorrelation_loss,
    cross_attention_loss,
    kl_gradient,
    kl_loss,
    noise_regularization_loss,
    patch_nce_loss,
)
from retouch.inversion import NoiseRegularization, invert_with_noise_regularization, regularize_noise
from retouch.methods import get_method
from retouch.guided_pass import CrossAttentionTerm, DepartureBlend, guidance_step, guided_edit_latents, record_features
from retouch.methods.pix2pix_zero import Pix2PixZeroConfig, diffusers_reference_pipeline
from retouch.methods.zerocon import ContrastiveTerm, ZeroConConfig
from retouch.sampling import ddim_invert
from helpers import run_cli

CAPTION = "a photo of a cat"


def _images(size=32, batch=1, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _config(cls=Pix2PixZeroConfig, **overrides):
    return cls(**{"edit": "cat->dog", "source_text": CAPTION, "num_steps": 3, "bank": "templates", **overrides})


# ---------------------------------------------------------------------------------------------
# Parity with diffusers' deprecated StableDiffusionPix2PixZeroPipeline
# ---------------------------------------------------------------------------------------------
def test_matches_diffusers_pix2pix_zero_pipeline(tiny_backbones):
    """Regularized inversion, edit direction and guided edit against diffusers on the same tiny model.

    diffusers' two deviations from the paper are matched: offsets δ may be 0 (``auto_corr_min_shift=0``)
    and both CFG branches are guided (``xa_branches="both"``, the official code's behaviour). λ_xa = 100
    because the random tiny U-Net's maps barely depend on x_t: at 0.1 the guidance would move the result
    less than the float32 parity error, and the test would not see it.
    """
    backbone = tiny_backbones["tiny-sd"]
    images = _images(64)
    config = _config(num_steps=6, xa_guidance=100.0, xa_branches="both", auto_corr_min_shift=0, seed=5)
    pipe = diffusers_reference_pipeline(backbone)
    with torch.no_grad():
        latents = backbone.encode_images(images)  # the posterior mode, as retouch encodes
    theirs_inverted = pipe.invert(CAPTION, image=latents, num_inference_steps=config.num_steps,
                                  generator=torch.Generator().manual_seed(config.seed), output_type="latent").latents
    ours_inverted = invert_with_noise_regularization(
        backbone, latents, backbone.encode_text([CAPTION]), num_steps=config.num_steps,
        regularization=config.noise_regularization(), generator=torch.Generator().manual_seed(config.seed))
    assert (ours_inverted - theirs_inverted).abs().max().item() <= 2e-4
    plain = invert_with_noise_regularization(backbone, latents, backbone.encode_text([CAPTION]),
                                             num_steps=config.num_steps, regularization=None)
    assert (plain - ours_inverted).abs().max() > 0.1  # the regularizer really acted

    source, target = pipe.get_embeds(template_bank("cat")), pipe.get_embeds(template_bank("dog"))
    direction = build_direction(backbone, template_bank("cat"), template_bank("dog"), source="cat", target="dog")
    assert (direction.hidden_states - (target - source)[0]).abs().max().item() <= 1e-6

    theirs = pipe(CAPTION, source_embeds=source, target_embeds=target, num_inference_steps=config.num_steps,
                  guidance_scale=config.guidance_scale, negative_prompt=CAPTION,
                  cross_attention_guidance_amount=config.xa_guidance, latents=theirs_inverted,
                  output_type="latent").images
    with torch.no_grad():
        theirs = backbone.decode_latents(theirs)
    edit = get_method("pix2pix-zero").edit
    ours = edit(backbone, images, config)
    unguided = edit(backbone, images, dataclasses.replace(config, xa_guidance=0.0))
    error = (ours - theirs).abs().max().item()
    assert error <= 2e-3
    assert (ours - unguided).abs().max().item() > 20 * error  # the comparison covers the guidance


def test_unregularized_inversion_is_plain_ddim_inversion(tiny_backbones):
    backbone = tiny_backbones["tiny-sd2-v"]
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    cond = backbone.encode_text([CAPTION])
    ours = invert_with_noise_regularization(backbone, latents, cond, num_steps=5, regularization=None)
    with torch.no_grad():
        reference = ddim_invert(backbone.denoise, backbone.schedule, latents, cond, num_steps=5)
    assert (ours - reference).abs().max().item() <= 1e-5


# ---------------------------------------------------------------------------------------------
# Losses on hand-computed cases
# ---------------------------------------------------------------------------------------------
def test_autocorrelation_hand_cases():
    ones = torch.ones(1, 3, 16, 16)
    # Constant maps: every coefficient is 1, two axes per level, levels 16² and 8².
    assert torch.allclose(autocorrelation_loss(ones), torch.tensor([3 * (2 + 2.0)]))
    # With the paper's ×2 rescaling the 8² level holds 2s: coefficient 4, squared 16, per axis.
    assert torch.allclose(autocorrelation_loss(ones, rescale=True), torch.tensor([3 * (2 + 32.0)]))
    # A ±1 checkerboard at 8² (a single level): coefficient (−1)^δ whatever the offset, squared 1.
    board = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1
    assert torch.allclose(autocorrelation_loss(board.expand(2, 4, 8, 8)), torch.full((2,), 4 * 2.0))


def test_autocorrelation_of_white_noise_is_small_and_of_smooth_noise_large():
    white = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    smooth = F.avg_pool2d(F.pad(white, (4, 4, 4, 4), mode="circular"), 9, stride=1) * 9  # correlated over 9 px
    seed = torch.Generator().manual_seed
    white_loss, smooth_loss = autocorrelation_loss(white, seed(1)), autocorrelation_loss(smooth, seed(1))
    assert white_loss.shape == (2,) and (white_loss < 0.05).all()
    assert (smooth_loss > 100 * white_loss).all()
    assert torch.equal(autocorrelation_loss(smooth, seed(1)), smooth_loss)  # deterministic with its generator


def _autocorrelation_by_channel_loop(noise, generator, min_shift, rescale):
    """Independent L_pair: one channel at a time with torch.roll (the order diffusers draws offsets)."""
    total = noise.new_zeros(noise.shape[0])
    for channel in range(noise.shape[1]):
        level = noise[:, channel]
        while True:
            side = min(level.shape[-2:])
            shift = int(torch.randint(min_shift, max(side // 2, min_shift + 1), (1,), generator=generator).item())
            for dim in (-2, -1):
                total = total + ((level * torch.roll(level, shift, dim)).mean(dim=(-2, -1))) ** 2
            if side <= 8:
                break
            level = F.avg_pool2d(level[:, None], 2)[:, 0] * (2.0 if rescale else 1.0)
    return total


@pytest.mark.parametrize("shape, min_shift, rescale", [
    ((2, 4, 16, 16), 1, False), ((1, 4, 64, 64), 0, False), ((2, 3, 20, 34), 1, True), ((1, 2, 8, 8), 1, False),
])
def test_autocorrelation_loss_and_closed_form_gradient_match_a_loop_and_autograd(shape, min_shift, rescale):
    noise = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seed = torch.Generator().manual_seed
    loss = autocorrelation_loss(noise, seed(5), min_shift=min_shift, rescale=rescale)
    assert torch.allclose(loss, _autocorrelation_by_channel_loop(noise, seed(5), min_shift, rescale))
    x = noise.clone().requires_grad_()
    (expected,) = torch.autograd.grad(autocorrelation_loss(x, seed(5), min_shift=min_shift, rescale=rescale).sum(), x)
    got = autocorrelation_gradient(noise, seed(5), min_shift=min_shift, rescale=rescale)
    assert expected.abs().max() > 0 and torch.allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("per_channel", [False, True])
def test_kl_closed_form_gradient_matches_autograd(per_channel):
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.7 + 0.3
    x = noise.clone().requires_grad_()
    (expected,) = torch.autograd.grad(kl_loss(x, per_channel=per_channel).sum(), x)
    assert torch.allclose(kl_gradient(noise, per_channel=per_channel), expected, atol=1e-12)


def test_kl_loss_hand_cases():
    noise = torch.tensor([[[[0.0, 2.0], [0.0, 2.0]], [[-2.0, 0.0], [-2.0, 0.0]]]])  # (1, 2, 2, 2)
    # Whole map: mean 0, unbiased variance 16/7. Per channel: means ±1, variances 4/3.
    assert torch.allclose(kl_loss(noise), torch.tensor([16 / 7 - 1 - math.log(16 / 7)]), atol=1e-6)
    assert torch.allclose(kl_loss(noise, per_channel=True), torch.tensor([4 / 3 - math.log(4 / 3)]), atol=1e-6)
    gaussian = torch.randn(3, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    assert (kl_loss(gaussian) < 1e-3).all() and (kl_loss(gaussian * 2 + 1) > 1).all()


def test_noise_regularization_loss_is_pair_plus_lambda_kl():
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 1.5
    combined = noise_regularization_loss(noise, torch.Generator().manual_seed(3), lambda_kl=20.0)
    parts = autocorrelation_loss(noise, torch.Generator().manual_seed(3)) + 20.0 * kl_loss(noise)
    assert torch.allclose(combined, parts)


def test_regularizing_noise_whitens_it():
    white = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    smooth = F.avg_pool2d(F.pad(white, (2, 2, 2, 2), mode="circular"), 5, stride=1) * 3.5 + 0.5

    def expected_pair(x):  # averaged over offsets, since each call draws its own
        return sum(autocorrelation_loss(x, torch.Generator().manual_seed(s)).item() for s in range(20))

    regularized = regularize_noise(smooth, NoiseRegularization(), torch.Generator().manual_seed(0))
    assert expected_pair(regularized) < 0.2 * expected_pair(smooth)
    assert kl_loss(regularized) < 0.8 * kl_loss(smooth)
    assert torch.equal(regularize_noise(smooth, NoiseRegularization(), torch.Generator().manual_seed(0)), regularized)


def test_cross_attention_loss_hand_case():
    maps = {"a": torch.full((2, 2, 3, 4), 0.5), "b": torch.zeros(2, 1, 2, 2), "only_here": torch.ones(2, 1, 1, 1)}
    reference = {"a": torch.zeros(2, 2, 3, 4), "b": torch.ones(2, 1, 2, 2)}
    reference["a"][1] = 0.5  # the second row matches on layer "a"
    # Row 0: layer a 12 cells × 0.25 (mean over 2 heads) = 3, layer b 4 cells × 1 = 4. Row 1: 0 + 4.
    assert torch.allclose(cross_attention_loss(maps, reference), torch.tensor([7.0, 4.0]))
    with pytest.raises(ValueError):
        cross_attention_loss({"x": maps["a"]}, reference)


def test_patch_nce_prefers_matching_positions():
    features = torch.randn(2, 300, 16, generator=torch.Generator().manual_seed(0))
    shuffled = features[:, torch.randperm(300, generator=torch.Generator().manual_seed(1))]
    seed = torch.Generator().manual_seed
    same = patch_nce_loss(features, features * 3.0, 64, 0.07, seed(2))  # scale-free: features are normalised
    other = patch_nce_loss(features, shuffled, 64, 0.07, seed(2))
    assert same.shape == (2,) and (same < 0.1).all() and (other > 20 * same).all()
    query, key = features.clone().requires_grad_(), shuffled.clone().requires_grad_()
    patch_nce_loss(query, key, 64, 0.07, seed(2)).sum().backward()
    assert query.grad is None and key.grad.abs().sum() > 0  # only the edited trajectory is pulled


# ---------------------------------------------------------------------------------------------
# Edit directions
# ---------------------------------------------------------------------------------------------
def test_direction_cache_round_trip_and_identity_check(tiny_backbones, tmp_path):
    backbone = tiny_backbones["tiny-sdxl"]
    direction = build_direction(backbone, template_bank("cat", 5), template_bank("dog", 7), source="cat",
                                target="dog", bank="templates")
    assert direction.hidden_states.shape == (77, 64) and direction.pooled.shape == (32,)
    path = save_direction(direction, tmp_path / "cat_dog.safetensors", model="tiny-sdxl")
    loaded = load_direction(path, backbone)
    assert torch.equal(loaded.hidden_states, direction.hidden_states) and torch.equal(loaded.pooled, direction.pooled)
    assert (loaded.source, loaded.target, loaded.source_count, loaded.target_count) == ("cat", "dog", 5, 7)
    with pytest.raises(RetouchError, match="another text encoder") as error:
        load_direction(path, tiny_backbones["tiny-sd"])
    assert "\n" not in str(error.value)
    with pytest.raises(RetouchError, match=".safetensors"):
        save_direction(direction, tmp_path / "cat_dog.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RetouchError, match="not a valid safetensors"):
        load_direction(tmp_path / "junk.safetensors")


def test_the_direction_is_added_to_tokens_and_pooled(tiny_backbones):
    backbone = tiny_backbones["tiny-sdxl"]
    direction = build_direction(backbone, ["a photo of a cat"], ["a photo of a dog"], source="cat", target="dog")
    cat, dog = backbone.encode_text(["a photo of a cat"]), backbone.encode_text(["a photo of a dog"])
    edited = direction.apply(cat)
    assert torch.allclose(edited.hidden_states, dog.hidden_states, atol=1e-5)
    assert torch.allclose(edited.pooled, dog.pooled, atol=1e-5)


def test_sentence_banks(tmp_path):
    assert len(TEMPLATES) >= 20 and template_bank("owl")[0] == "a photo of an owl"
    assert all("owl" in sentence for sentence in template_bank("owl"))
    with pytest.raises(RetouchError, match="template bank"):
        template_bank("cat", len(TEMPLATES) + 1)
    bank = world_bank("circle", 10, seed=3)
    assert len(bank) == 10 and all("circle" in s for s in bank) and bank == world_bank("circle", 10, seed=3)
    with pytest.raises(RetouchError, match="not a mini-world word"):
        world_bank("dog", 4)
    (tmp_path / "cats.txt").write_text("a cat on a mat\n\n  a cat in a hat  \n")
    assert file_bank(tmp_path / "cats.txt") == ["a cat on a mat", "a cat in a hat"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(RetouchError, match="no sentences"):
        file_bank(tmp_path / "empty.txt")


def test_generated_bank_from_a_local_language_model(tiny_backbones, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_backbones["tiny-sd"].tokenizer
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
                    ).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    sentences = generated_bank(tmp_path, "cat", 6, seed=1)
    assert len(sentences) == 6 and all("cat" in s and "\n" not in s for s in sentences)
    assert sentences == generated_bank(tmp_path, "cat", 6, seed=1)
    with pytest.raises(RetouchError, match="not found"):
        generated_bank(tmp_path / "missing", "cat", 2)


# ---------------------------------------------------------------------------------------------
# Captioning
# ---------------------------------------------------------------------------------------------
def test_captions_from_text_blip_or_a_clear_error(tmp_path, tiny_backbones, monkeypatch):
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    images = _images(32, batch=2)
    assert caption_images(images, source_text=CAPTION) == [CAPTION, CAPTION]
    with pytest.raises(RetouchError, match="--source-text"):
        caption_images(images, backbone=tiny_backbones["tiny-sd"])
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "picture", "of", "cat", "dog", "grass"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    BlipForConditionalGeneration(BlipConfig(
        text_config=dict(vocab_size=len(words), encoder_hidden_size=32, pad_token_id=0, bos_token_id=5,
                         sep_token_id=3, **small),
        vision_config=dict(image_size=32, patch_size=8, **small),
    )).save_pretrained(tmp_path)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=BertTokenizer(str(tmp_path / "vocab.txt"), bos_token="[DEC]")).save_pretrained(tmp_path)
    captions = caption_images(images, captioner=str(tmp_path))
    assert len(captions) == 2 and all(c.startswith("a picture of") for c in captions)
    with pytest.raises(RetouchError, match="not found"):
        BlipCaptioner(tmp_path / "missing")
    import retouch.backbone

    monkeypatch.setattr(retouch.backbone, "MINI_DIR", tmp_path / "no-mini")
    with pytest.raises(RetouchError, match="judge is not in this installation"):
        caption_images(images, captioner="mini")


def test_mini_world_captioner_speaks_the_world_vocabulary():
    from retouch.backbone import MINI_DIR
    from retouch.world import VOCABULARIES, World

    if not (MINI_DIR / "judge" / "config.json").is_file():
        pytest.skip("the mini judge is not trained in this checkout")
    _, rendered, _ = World(seed=0, size=64).scene(0)
    image = torch.from_numpy(rendered.image).permute(2, 0, 1)[None].float() * 2 - 1
    (caption,) = caption_images(image, captioner="mini")
    words = caption.split()
    assert words[-2] == "on" and words[-1] in VOCABULARIES["background"]
    assert any(w in VOCABULARIES["shape"] for w in words) and any(w in VOCABULARIES["colour"] for w in words)


# ---------------------------------------------------------------------------------------------
# The methods
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("term_name, step_size", [("xa", 3000.0), ("cut", 100.0)])
def test_guidance_steps_pull_the_edited_features_back_to_the_reference(tiny_backbones, term_name, step_size):
    """Algorithm 1's step x_t ← x_t − λ∇L on a latent that drifted from the reconstruction's.

    The text is the same on both sides, so the reference latent is where the loss is lowest and the
    whole distance is the drift's; guidance must remove most of it. (Step sizes are large because the
    random tiny U-Net's attention hardly depends on x_t; trained models need λ_xa ≈ 0.1.)
    """
    backbone = tiny_backbones["tiny-sd"]
    cond, t = backbone.encode_text([CAPTION]), 501
    reference_latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    drifted = reference_latent + 0.5 * torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator()
    term = (CrossAttentionTerm(backbone.unet) if term_name == "xa" else
            ContrastiveTerm(backbone.unet, (16, 16), num_patches=32, generator=generator))
    _, (reference,) = record_features(backbone, reference_latent, t, cond, [term])

    def distance(latent):  # the same contrasted positions every time
        generator.manual_seed(0)
        return term.loss(record_features(backbone, latent, t, cond, [term])[1][0], reference).item()

    floor, start = distance(reference_latent), distance(drifted)
    guided = drifted
    for _ in range(5):
        generator.manual_seed(0)
        guided = guidance_step(backbone, guided, t, cond, [term], [reference], step_size)
    assert start - floor > 1e-4
    assert distance(guided) - floor < 0.5 * (start - floor)


@pytest.fixture(scope="module")
def tiny_sd_float64():
    """In float64 a batch must equal its images one by one to rounding; float32 rounding differences
    between batched and single kernels get amplified by the random tiny U-Net to ~1e-4."""
    from retouch.backbone import build_tiny

    return build_tiny("tiny-sd").to(dtype=torch.float64)


@pytest.mark.parametrize("method", ["pix2pix-zero", "zerocon"])
def test_a_batch_equals_its_images_edited_one_by_one(tiny_sd_float64, method):
    images = _images(32, batch=2, seed=3).double()
    config = _config(ZeroConConfig if method == "zerocon" else Pix2PixZeroConfig, xa_guidance=50.0)
    edit = get_method(method).edit
    together = edit(tiny_sd_float64, images, config)
    apart = torch.cat([edit(tiny_sd_float64, images[i : i + 1], config) for i in range(2)])
    assert (together - apart).abs().max().item() <= 1e-9
    assert not torch.allclose(together[0], together[1])


@pytest.mark.parametrize("method, branches", [("pix2pix-zero", "conditional"), ("pix2pix-zero", "both"),
                                              ("zerocon", "conditional")])
def test_one_reconstruction_branch_when_the_negative_prompt_is_the_caption(tiny_sd_float64, monkeypatch, method,
                                                                            branches):
    """Caption as negative prompt: the reconstruction runs one CFG branch; the edit equals the two-branch run."""
    from retouch import guided_pass

    images = _images(32)
    config = _config(ZeroConConfig if method == "zerocon" else Pix2PixZeroConfig, xa_guidance=50.0,
                     xa_branches=branches)
    calls = []
    real_denoise = tiny_sd_float64.denoise
    monkeypatch.setattr(tiny_sd_float64, "denoise", lambda x, t, c: calls.append(x.shape[0]) or real_denoise(x, t, c))
    single = get_method(method).edit(tiny_sd_float64, images, config)
    single_calls = list(calls)
    calls.clear()
    monkeypatch.setattr(guided_pass, "_same_conditioning", lambda a, b: False)
    double = get_method(method).edit(tiny_sd_float64, images, config)
    assert sum(single_calls) < sum(calls)  # fewer U-Net rows...
    assert (single - double).abs().max().item() <= 1e-9  # ...for the same edit
    other = get_method(method).edit(tiny_sd_float64, images, replace(config, caption_as_negative=False))
    assert (other - double).abs().max().item() > 1e-4  # an empty negative prompt is a different edit


@pytest.mark.parametrize("name", ["tiny-sd2-v", "tiny-sdxl"])
def test_v_prediction_and_sdxl_run_end_to_end(tiny_backbones, name):
    backbone, images = tiny_backbones[name], _images(32)
    zero = get_method("pix2pix-zero").edit(backbone, images, _config(xa_guidance=20.0))
    con = get_method("zerocon").edit(backbone, images, _config(ZeroConConfig, xa_guidance=20.0))
    for result in (zero, con):
        assert result.shape == images.shape and torch.isfinite(result).all()
    assert (zero - con).abs().max() > 1e-4  # the contrastive term changed the trajectory


@pytest.mark.parametrize("overrides, message", [
    ({"edit": "cat"}, "SOURCE->TARGET"),
    ({"edit": "cat->"}, "both sides"),
    ({"edit": "cat->cat"}, "the same"),
    ({"edit": "a->b->c"}, "SOURCE->TARGET"),
    ({"edit": "cat->d%g"}, "plain words"),
    ({"edit": ""}, "needs an edit"),
    ({"target_text": "a photo of a dog"}, "either --edit or --target-text"),
    ({"edit": "", "source_text": "", "target_text": "a dog"}, "needs --source-text"),
    ({"xa_branches": "uncond"}, "--xa-branches"),
    ({"xa_places": "down,left"}, "--xa-places"),
    ({"inversion": "ddpm"}, "--inversion"),
    ({"num_steps": 0}, "--num-steps"),
    ({"xa_guidance": float("nan")}, "--xa-guidance"),
])
def test_bad_options_are_one_line_errors(tiny_backbones, overrides, message):
    with pytest.raises(RetouchError, match=message) as error:
        get_method("pix2pix-zero").edit(tiny_backbones["tiny-sd"], _images(32), _config(**overrides))
    assert "\n" not in str(error.value)
    for bad in ({"cut_features": "mlp"}, {"cut_patch_sizes": "1,x"}, {"cut_num_patches": 1}):
        with pytest.raises(RetouchError):
            _config(ZeroConConfig, **bad).validate()


# ---------------------------------------------------------------------------------------------
# Local blending on the reconstruction pass (Prompt-to-Prompt §3.2; an option, not in the paper)
# ---------------------------------------------------------------------------------------------
def test_departure_blend_hand_case():
    reconstruction = torch.zeros(1, 4, 8, 8)
    edited = reconstruction.clone()
    edited[..., 2:4, 2:4] = 1.0  # the edit
    edited[..., 6, 6] = 0.2  # a drift far below k × the edit's departure
    blend = DepartureBlend(0.3)
    out = blend(edited, reconstruction)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[1:5, 1:5] = True  # the edited cells grown by P2P's 3×3 max-pool
    assert torch.equal(blend.mask[0, 0], inside)
    assert torch.equal(out, torch.where(inside, edited, reconstruction))
    # departures add up over steps: a cell that departs a little at every step joins the mask
    for _ in range(4):
        drifted = reconstruction.clone()
        drifted[..., 6, 6] = 0.5
        blend(drifted, reconstruction)
    assert blend.mask[0, 0, 6, 6] and blend.mask[0, 0, 2, 2]
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(RetouchError, match="threshold"):
            DepartureBlend(bad)


@pytest.mark.parametrize("branches, step_size", [("conditional", 50.0), ("both", 50.0), ("conditional", 0.0)])
def test_local_blend_keeps_the_reconstruction_outside_its_mask(tiny_sd_float64, branches, step_size):
    """Outside the last mask the edit's x₀ is the reconstruction pass's x₀ exactly; inside, the edit's own."""
    backbone = tiny_sd_float64
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cond = backbone.encode_text([CAPTION, "a photo of a dog"])
    shift = torch.randn(cond.hidden_states.shape[1:], generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    edit_cond = cond.with_hidden_states(cond.hidden_states + shift)
    common = dict(num_steps=4, guidance_scale=5.0, branches=branches)
    terms = [CrossAttentionTerm(backbone.unet)] if step_size else []
    blend = DepartureBlend(0.6)  # a random Δc on a random U-Net departs everywhere; k = 0.6 parts it
    blended = guided_edit_latents(backbone, latents, cond, edit_cond, cond, terms=terms, step_size=step_size,
                                  blend=blend, **common)
    # the negative prompt is the caption, so the reconstruction is the plain DDIM pass with c
    reconstruction = guided_edit_latents(backbone, latents, cond, cond, cond, step_size=0.0, **common)
    unblended = guided_edit_latents(backbone, latents, cond, edit_cond, cond, terms=terms, step_size=step_size,
                                    **common)
    outside = ~blend.mask.expand_as(blended)
    assert 0 < outside.sum() < outside.numel()  # the mask parts the image
    assert (blended - reconstruction)[outside].abs().max().item() <= 1e-12
    assert (blended - reconstruction)[~outside].abs().max().item() > 1e-3  # the edit stays inside
    assert (unblended - reconstruction)[outside].abs().max().item() > 1e-3  # which the plain edit changed


def test_local_blend_option_reaches_the_edit(tiny_backbones, monkeypatch):
    from retouch import guided_pass

    made = []
    real = guided_pass.DepartureBlend
    monkeypatch.setattr("retouch.methods.pix2pix_zero.DepartureBlend", lambda k: made.append(real(k)) or made[-1])
    images = _images(32)
    backbone = tiny_backbones["tiny-sd"]
    for method in ("pix2pix-zero", "zerocon"):
        config = _config(ZeroConConfig if method == "zerocon" else Pix2PixZeroConfig, local_blend=0.3)
        get_method(method).edit(backbone, images, config)
    assert [blend.threshold for blend in made] == [0.3, 0.3] and all(b.mask is not None for b in made)
    with pytest.raises(RetouchError, match="--local-blend"):
        get_method("pix2pix-zero").edit(backbone, images, _config(local_blend=1.0))


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def test_cli_edit_and_directions(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(photo)
    code, out, err = run_cli(["edit", photo, "-o", tmp_path / "dog.png", "--method", "pix2pix-zero", "--edit", "cat->dog",
                           "--source-text", CAPTION, "--num-steps", "3", "--model", "tiny-sd"], capsys)
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "dog.png")).shape == (36, 40, 3) and "wrote" in out

    direction = tmp_path / "cat_dog.safetensors"
    code, out, err = run_cli(["directions", "build", "cat", "dog", "-o", direction, "--count", "8",
                             "--model", "tiny-sd"], capsys)
    assert code == 0, err
    assert "8+8 sentences" in out
    code, _, err = run_cli(["edit", photo, "-o", tmp_path / "con.png", "--method", "zerocon", "--directions", direction,
                         "--source-text", CAPTION, "--num-steps", "2", "--model", "tiny-sd"], capsys)
    assert code == 0, err
    assert (tmp_path / "con.png").is_file()
    code, _, err = run_cli(["edit", photo, "-o", tmp_path / "v.png", "--method", "pix2pix-zero", "--directions",
                         direction, "--source-text", CAPTION, "--model", "tiny-sd2-v", "--num-steps", "2"], capsys)
    assert code == 1 and "another text encoder" in err and err.count("\n") == 1
    assert not (tmp_path / "v.png").exists()
    code, _, err = run_cli(["directions", "build", "cat", "cat", "-o", tmp_path / "same.safetensors"], capsys)
    assert code == 1 and "the same" in err
