"""The word-swap baselines of pix2pix-zero (SDEdit, DDIM, DDPM inversion, prompt-to-prompt) on tiny models.

Tiny models are random, so these tests check behaviour that holds for any denoiser: exact or
convergent reconstruction, which prompts reach the model, attention injection, determinism,
batch independence and errors.
"""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from retouch.attention import AttentionHook
from retouch.errors import RetouchError
from retouch.methods import available_methods, get_method
from retouch.methods.ablation import PIX2PIX_ZERO_ABLATION, ablation_run
from retouch.methods.ddim_swap import DDIMSwapConfig
from retouch.methods.ddpm_inversion import DDPMInversionConfig
from retouch.methods.prompt_to_prompt import PromptToPromptConfig, align_tokens, prompt_to_prompt, token_alignment
from retouch.methods.sdedit import SDEditConfig

CAT, DOG = "a photo of a cat", "a photo of a dog"
# 32×32 images → 16×16 latents on the tiny models; 4 steps keep every run well under a second.
STEPS = 4
# Batched and single U-Net calls round differently (~1e-7); DDIM inversion on a *random* U-Net
# amplifies that by ~10³ (its ε does not undo errors the way a trained one does), hence this tolerance.
BATCH_ATOL = 2e-3

CONFIGS = {
    "ddim": lambda **kw: DDIMSwapConfig(num_steps=STEPS, **kw),
    "ddpm": lambda **kw: DDPMInversionConfig(num_steps=STEPS, **kw),
    "ddpm-edit-friendly": lambda **kw: DDPMInversionConfig(num_steps=STEPS, mode="edit-friendly", **kw),
    "p2p": lambda **kw: PromptToPromptConfig(num_steps=STEPS, **kw),
}


def _method(key):
    return get_method(key.split("-")[0])


def _images(batch=1, seed=0, size=32):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _latent_space(backbone):
    """The same backbone returning latents instead of images, to compare with encode_images."""
    latent = dataclasses.replace(backbone)
    latent.decode_latents = lambda latents: latents
    return latent


# ---- reconstruction ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sd2-v"])
def test_edit_friendly_inversion_reconstructs_the_input_latents(tiny_backbones, name):
    """Huberman-Spiegelglas et al. Alg. 1: resampling with the source prompt and stored z_t is exact.

    Forward noising (config A) with the same prompt lands far away: its inversion keeps nothing.
    """
    backbone = _latent_space(tiny_backbones[name])
    images = _images()
    with torch.no_grad():
        x0 = backbone.encode_images(images)
    same = dict(source_text=CAT, target_text=CAT, guidance_scale=3.5, source_guidance_scale=3.5)
    edit = get_method("ddpm").edit
    exact = edit(backbone, images, DDPMInversionConfig(num_steps=10, mode="edit-friendly", **same))
    assert (exact - x0).abs().max().item() <= 1e-4
    partial = edit(backbone, images, DDPMInversionConfig(num_steps=10, mode="edit-friendly", strength=0.64, **same))
    assert (partial - x0).abs().max().item() <= 1e-4
    noised = edit(backbone, images, DDPMInversionConfig(num_steps=10, mode="noising", **same))
    assert (noised - x0).abs().max().item() > 1.0


def test_ddim_inversion_reconstruction_error_vanishes_with_the_step(tiny_backbones):
    """DDIM inversion (pix2pix-zero Eq. 1) errs only through ε(x_t) ≈ ε(x_{t+1}), first order in the step.

    A random U-Net is no denoiser (its reconstructions are O(1) off), so the denoiser here is the
    exact ε of a Gaussian prior x₀ ~ N(μ(c), I) whose mean is read from the caption's embedding:
    smooth, like a trained model. Reconstruction with the source prompt then converges, roughly
    halving with each doubling of the steps.
    """
    tiny = tiny_backbones["tiny-sd"]
    schedule = tiny.schedule

    def gaussian_prior_eps(x, t, cond):
        alpha = schedule.alpha(int(t)).to(x.dtype)
        mean = cond.hidden_states[:, :16, :4].transpose(1, 2).reshape(-1, 4, 4, 4).repeat(1, 1, 4, 4)
        return (1 - alpha).sqrt() * (x - alpha.sqrt() * mean)  # E[ε | x_t] for x₀ ~ N(mean, I)

    backbone = _latent_space(tiny)
    backbone.denoise = gaussian_prior_eps
    backbone.encode_images = lambda images: images  # "images" are the latents themselves
    x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    errors = {}
    for steps in (25, 50, 100):
        config = DDIMSwapConfig(source_text=CAT, target_text=CAT, num_steps=steps, guidance_scale=1.0)
        errors[steps] = (get_method("ddim").edit(backbone, x0, config) - x0).abs().max().item()
    assert errors[50] < 0.6 * errors[25] and errors[100] < 0.6 * errors[50]
    assert errors[100] < 0.05 * x0.abs().max().item()


def test_p2p_with_the_source_prompt_as_target_is_the_ddim_reconstruction(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    images = _images(2)
    same = dict(source_text=CAT, target_text=CAT)
    source, target = prompt_to_prompt(backbone, images, PromptToPromptConfig(num_steps=STEPS, **same))
    assert torch.equal(source, target)
    ours = get_method("p2p").edit(backbone, images, PromptToPromptConfig(num_steps=STEPS, **same))
    ddim = get_method("ddim").edit(backbone, images, DDIMSwapConfig(num_steps=STEPS, **same))
    assert (ours - ddim).abs().max().item() <= 1e-4


# ---- prompt-to-prompt attention injection --------------------------------------------------------
class _InjectionChecker(AttentionHook):
    """Sees the conditional rows after injection and compares target maps with the source's."""

    def __init__(self, alignment, guided=True):
        self.alignment, self.guided = alignment, guided
        self.aligned_gap, self.new_token_gap, self.calls = 0.0, 0.0, 0

    def wants_probabilities(self, layer):
        return layer.is_cross

    def on_probabilities(self, layer, probabilities):
        cond = probabilities.chunk(2)[1] if self.guided else probabilities
        source, target = cond.chunk(2)
        mapped = source.index_select(-1, self.alignment.mapper)
        aligned = self.alignment.alphas.bool()
        self.aligned_gap = max(self.aligned_gap, (target - mapped)[..., aligned].abs().max().item())
        if (~aligned).any():
            self.new_token_gap = max(self.new_token_gap, (target - mapped)[..., ~aligned].abs().max().item())
        self.calls += 1
        return probabilities


def _cross_layers(backbone):
    return sum(1 for name in backbone.unet.attn_processors if name.endswith("attn2.processor"))


def test_p2p_word_swap_injects_the_source_cross_attention_maps(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    config = PromptToPromptConfig(edit="cat->dog", source_text=CAT, num_steps=STEPS, cross_replace_steps=1.0)
    checker = _InjectionChecker(token_alignment(backbone, CAT, DOG, 77, "replace"))
    prompt_to_prompt(backbone, _images(), config, observer=checker)
    assert checker.calls == STEPS * _cross_layers(backbone)
    assert checker.aligned_gap == 0.0

    # Past the injection window the target attends on its own: "dog" maps differ from "cat" maps.
    late = dataclasses.replace(config, cross_replace_steps=0.5)
    checker = _InjectionChecker(token_alignment(backbone, CAT, DOG, 77, "replace"))
    prompt_to_prompt(backbone, _images(), late, observer=checker)
    assert checker.aligned_gap > 1e-4


def test_p2p_refine_keeps_source_maps_for_shared_tokens_only(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    target = "a photo of a cat on the grass"
    alignment = token_alignment(backbone, CAT, target, 77, "refine")
    config = PromptToPromptConfig(source_text=CAT, target_text=target, attention_edit="refine", num_steps=STEPS,
                                  cross_replace_steps=1.0, guidance_scale=1.0)
    checker = _InjectionChecker(alignment, guided=False)
    prompt_to_prompt(backbone, _images(), config, observer=checker)
    assert checker.aligned_gap == 0.0 and checker.new_token_gap > 0.0


def test_token_alignment():
    # <bos> a photo of a cat <eos>  →  <bos> a photo of a cat on the grass <eos>
    source, target = [0, 1, 2, 3, 1, 4, 9], [0, 1, 2, 3, 1, 4, 5, 6, 7, 9]
    alignment = align_tokens(source, target, 12, "refine")
    assert alignment.mapper.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 6, 10, 11]
    assert alignment.alphas.tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1]
    swap = align_tokens(source, [0, 1, 2, 3, 1, 8, 9], 12, "replace")
    assert swap.mapper.tolist() == list(range(12)) and swap.alphas.min() == 1
    with pytest.raises(RetouchError, match="equal token count"):
        align_tokens(source, target, 12, "replace")


# ---- prompts, determinism, batches ---------------------------------------------------------------
@pytest.mark.parametrize("key, expected", [
    ("ddim", {CAT, DOG, ""}), ("ddpm", {DOG, ""}), ("ddpm-edit-friendly", {CAT, DOG, ""}), ("p2p", {CAT, DOG, ""}),
])
def test_word_swap_prompts_reach_the_text_encoder(tiny_backbones, key, expected):
    backbone = dataclasses.replace(tiny_backbones["tiny-sd"])
    seen = []
    original = backbone.encode_text

    def recording(prompts):
        seen.extend(prompts)
        return original(prompts)

    backbone.encode_text = recording
    _method(key).edit(backbone, _images(), CONFIGS[key](edit="cat->dog", source_text=CAT))
    assert set(seen) == expected  # noising never needs the caption: it only swaps its word


def test_sdedit_word_swap_is_sdedit_with_the_swapped_caption(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    edit = get_method("sdedit").edit
    common = dict(strength=0.6, num_steps=STEPS, seed=2)
    swapped = SDEditConfig(edit="cat->dog", source_text=CAT, **common)
    swapped.validate()
    assert swapped.target_prompt() == DOG
    assert torch.equal(edit(backbone, _images(), swapped), edit(backbone, _images(), SDEditConfig(prompt=DOG, **common)))
    for bad, message in [(dict(prompt=DOG, edit="cat->dog", source_text=CAT), "either --prompt or --edit"),
                         (dict(source_text=CAT), "give --edit too"),
                         (dict(edit="cat->dog"), "needs --source-text"),
                         (dict(edit="horse->zebra", source_text=CAT), "does not contain")]:
        with pytest.raises(RetouchError, match=message):
            SDEditConfig(**bad).validate()


def test_ddpm_is_deterministic_given_the_seed(tiny_backbones):
    backbone, images = tiny_backbones["tiny-sd"], _images()
    edit = get_method("ddpm").edit
    for mode in ("noising", "edit-friendly"):
        config = DDPMInversionConfig(edit="cat->dog", source_text=CAT, num_steps=STEPS, mode=mode, seed=5)
        first = edit(backbone, images, config)
        assert torch.equal(first, edit(backbone, images, config))
        assert not torch.allclose(first, edit(backbone, images, dataclasses.replace(config, seed=6)))
    ddim = CONFIGS["ddim"](edit="cat->dog", source_text=CAT)
    assert torch.equal(get_method("ddim").edit(backbone, images, ddim), get_method("ddim").edit(backbone, images, ddim))


@pytest.mark.parametrize("key", ["ddim", "ddpm", "ddpm-edit-friendly", "p2p"])
def test_a_batch_of_two_equals_two_single_runs(tiny_backbones, key):
    backbone, images = tiny_backbones["tiny-sd"], _images(2)
    method, config = _method(key), CONFIGS[key](edit="cat->dog", source_text=CAT)
    together = method.edit(backbone, images, config)
    apart = torch.cat([method.edit(backbone, images[i : i + 1], config) for i in range(2)])
    assert (together - apart).abs().max().item() <= BATCH_ATOL


@pytest.mark.parametrize("name", ["tiny-sd2-v", "tiny-sdxl"])
@pytest.mark.parametrize("key", ["ddim", "p2p"])
def test_v_prediction_and_sdxl_run_end_to_end(tiny_backbones, name, key):
    backbone = tiny_backbones[name]
    images = _images(size=32)
    edited = _method(key).edit(backbone, images, CONFIGS[key](edit="cat->dog", source_text=CAT))
    kept = _method(key).edit(backbone, images, CONFIGS[key](source_text=CAT, target_text=CAT))
    assert edited.shape == images.shape and torch.isfinite(edited).all()
    assert (edited - kept).abs().max().item() > 1e-3  # the swapped word changes the result


# ---- errors, CLI, Table 2 ------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(CONFIGS))
def test_bad_edits_are_one_line_errors(tiny_backbones, key):
    config = CONFIGS[key](edit="horse->zebra", source_text=CAT)
    with pytest.raises(RetouchError, match="does not contain the edit's source word 'horse'"):
        config.validate()
    with pytest.raises(RetouchError, match="does not contain"):
        _method(key).edit(tiny_backbones["tiny-sd"], _images(), config)
    for bad, message in [(dict(edit="cat->dog", target_text=DOG, source_text=CAT), "not both"),
                         (dict(edit="cat->dog"), "needs --source-text"),
                         (dict(edit="cat=>dog", source_text=CAT), "bad edit"),
                         (dict(source_text=CAT), "needs either --edit")]:
        with pytest.raises(RetouchError, match=message):
            CONFIGS[key](**bad).validate()


def test_option_values_are_checked():
    with pytest.raises(RetouchError, match="--mode must be one of"):
        DDPMInversionConfig(edit="cat->dog", source_text=CAT, mode="ddim").validate()
    with pytest.raises(RetouchError, match="--cross-replace-steps must lie in"):
        PromptToPromptConfig(edit="cat->dog", source_text=CAT, cross_replace_steps=1.5).validate()
    with pytest.raises(RetouchError, match="--inversion must be one of"):
        DDIMSwapConfig(edit="cat->dog", source_text=CAT, inversion="null-text").validate()
    with pytest.raises(RetouchError, match="--num-steps"):
        DDIMSwapConfig(edit="cat->dog", source_text=CAT, num_steps=0).validate()


def test_p2p_word_swap_needs_equal_token_counts(tiny_backbones):
    config = PromptToPromptConfig(source_text=CAT, target_text="a photo of a cat on the grass", num_steps=STEPS)
    with pytest.raises(RetouchError, match="--attention-edit refine"):
        get_method("p2p").edit(tiny_backbones["tiny-sd"], _images(), config)


def test_cli_edits_with_ddim_word_swap(tmp_path, capsys):
    from retouch.cli import main

    source = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(source)
    out = tmp_path / "out.png"
    main(["edit", str(source), "-o", str(out), "--method", "ddim", "--edit", "cat->dog",
          "--source-text", "a photo of a cat", "--num-steps", "4", "--device", "cpu", "--model", "tiny-sd"])
    assert np.asarray(Image.open(out)).shape == (32, 32, 3)
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["edit", str(source), "-o", str(tmp_path / "bad.png"), "--method", "ddim", "--edit", "horse->zebra",
              "--source-text", "a photo of a cat", "--num-steps", "4", "--model", "tiny-sd"])
    assert exit_info.value.code == 1 and not (tmp_path / "bad.png").exists()
    assert capsys.readouterr().err.count("\n") == 1


def test_table_2_rows_build_their_methods(tiny_backbones):
    shared = dict(edit="cat->dog", source_text=CAT, num_steps=STEPS, guidance_scale=7.5, seed=0)
    method, config = ablation_run("A", **shared)
    assert method.name == "ddpm" and config.mode == "noising" and config.strength == 1.0 and config.seed == 0
    method_b, config_b = ablation_run("B", **shared)
    assert method_b.name == "ddim" and config_b.inversion == "ddim" and config_b.num_steps == STEPS
    method_c, config_c = ablation_run("C", **shared)
    assert method_c.name == "ddim" and config_c.inversion == "regularized"
    # C differs from B only by pix2pix-zero's noise regularization during inversion.
    backbone, images = tiny_backbones["tiny-sd"], _images()
    assert not torch.allclose(method_b.edit(backbone, images, config_b), method_c.edit(backbone, images, config_c))
    assert set(PIX2PIX_ZERO_ABLATION) == set("ABCDE")
    for row in PIX2PIX_ZERO_ABLATION.values():  # D and E once pix2pix-zero is registered
        if row.method in available_methods():
            assert set(row.overrides) <= set(available_methods()[row.method].option_names())
    with pytest.raises(RetouchError, match="unknown Table 2 config"):
        ablation_run("F", **shared)
