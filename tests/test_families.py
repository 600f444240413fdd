"""SD 1.5 / 2.1 / SDXL readiness: recipes, parameter counts, and every method on each family's structure.

The models are random, with each released architecture's structure at tiny widths
(:mod:`retouch.families`), saved as the released folders are laid out and as retouch's single file,
and loaded through :func:`retouch.backbone.load_backbone` — the path a downloaded checkpoint takes.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retouch import recipes
from retouch.backbone import Conditioning, load_backbone
from retouch.families import FAMILIES, parameter_counts, random_backbone, save_release_layout, tiny_configs
from retouch.methods import available_methods, get_method, make_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "checkpoints.md"
SIZE = 64
PROMPT = "a photo of a cat"


# ---------------------------------------------------------------------------------------------
# Architectures and the doc
# ---------------------------------------------------------------------------------------------
def test_parameter_counts_are_the_released_checkpoints():
    # The sizes of the released weights (as diffusers / transformers report them when loading them).
    released = {
        "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
        "sd21": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
        "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                 "text_encoder_2": 694_659_840},
    }
    assert {key: parameter_counts(key) for key in FAMILIES} == released


def test_the_doc_is_generated_from_the_recipes():
    assert recipes.check_doc(DOC), "docs/checkpoints.md is stale: run retouch recipes --write"
    text = DOC.read_text()
    for name in available_methods():
        assert f"| `{name}` |" in text


def test_recipe_settings_are_the_method_defaults_with_the_family_changes():
    from retouch.methods.pix2pix_zero import Pix2PixZeroConfig

    assert recipes.settings("pix2pix-zero", "sd15")["xa_guidance"] == Pix2PixZeroConfig().xa_guidance == 0.1
    assert recipes.settings("pix2pix-zero", "sd21")["xa_guidance"] == 0.01  # ≤ 0.01 on SD 2.x
    assert recipes.settings("zerocon", "sd21")["xa_guidance"] == 0.01
    assert recipes.settings("sdedit", "sdxl") == {"num_steps": 50, "guidance_scale": 7.5, "strength": 0.5}
    assert all(recipes.supported(name, key) for name in available_methods() for key in FAMILIES)


def _parse_edit_command(args: list[str]) -> dict:
    from retouch.cli import edit

    assert args[:2] == ["retouch", "edit"]
    return edit.make_context("edit", args[2:]).params


def _write_exemplar_files(folder: Path) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)).save(folder / "exemplar.png")
    edit_map = np.zeros((SIZE, SIZE), np.uint8)
    edit_map[:, SIZE // 2:] = 255
    Image.fromarray(edit_map).save(folder / "exemplar_map.png")


def _recipe_config(method, family_key: str, **changes):
    """The method's config as the recipe's documented command line gives it, with ``changes``."""
    params = _parse_edit_command(recipes.commands(method.name, family_key)[-1])
    given = {k: v for k, v in params.items() if k in method.option_names() and v is not None and v != ()}
    config = make_config(method, **given)
    expected = recipes.settings(method.name, family_key)
    assert {k: getattr(config, k) for k in expected} == expected  # the command line is the recipe
    return make_config(method, **{**dataclasses.asdict(config), **changes})


def test_documented_command_lines_parse_into_the_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_exemplar_files(tmp_path)
    for family in FAMILIES.values():
        for name in available_methods():
            if not recipes.supported(name, family.key):
                continue
            lines = recipes.commands(name, family.key)
            params = _parse_edit_command(lines[-1])
            assert params["dtype"] == family.recommended_dtype
            trained = recipes.TRAINED.get(name)
            assert params["model"] == (f"{trained}/final" if trained else family.repo_id)
            _recipe_config(get_method(name), family.key)
            if trained:
                from retouch.cli import train

                command = train.get_command(None, name)
                assert command.make_context(name, lines[0][3:]).params["init"] == family.repo_id


# ---------------------------------------------------------------------------------------------
# Family-structured random models through the real loading path
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """Per family: (original, loaded from the released folder layout, loaded from retouch's single file)."""
    out = {}
    for key in FAMILIES:
        folder = tmp_path_factory.mktemp(key)
        original = random_backbone(key, seed=0)
        save_release_layout(original, key, folder / "release")
        single = original.save(folder / f"{key}.safetensors", single_file=True)
        out[key] = (original, load_backbone(folder / "release"), load_backbone(single))
    return out


def _outputs(backbone, latents):
    with torch.no_grad():
        cond = backbone.encode_text([PROMPT, ""])
        eps = backbone.denoise(latents.repeat(2, 1, 1, 1), 500, cond)
        image = backbone.decode_latents(latents)
    return cond, eps, image


@pytest.mark.parametrize("key", list(FAMILIES))
def test_release_layout_and_single_file_load_as_the_family(families, key):
    family = FAMILIES[key]
    original, from_folder, from_file = families[key]
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = _outputs(original, latents)
    for loaded in (from_folder, from_file):
        assert loaded.family == family.backbone_family
        assert loaded.schedule.prediction_type == family.prediction_type
        assert loaded.vae.config.scaling_factor == family.vae["scaling_factor"]
        assert [t.pad_token for t in loaded.tokenizers] == list(family.pad_tokens)
        cond, eps, image = _outputs(loaded, latents)
        for a, b in ((cond.hidden_states, expected[0].hidden_states), (eps, expected[1]), (image, expected[2])):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    unet, vae, text = tiny_configs(family)
    assert from_folder.unet.config.cross_attention_dim == sum(c["hidden_size"] for _, c in text)
    assert from_folder.vae_scale_factor == 8 and list(from_folder.unet.config.down_block_types) == \
        family.unet["down_block_types"]
    assert type(from_folder.text_encoders[-1]).__name__ == family.text_encoders[-1][0]


def test_original_layout_single_file_loads_as_the_model(tmp_path):
    # An SD 1.5 checkpoint as CompVis / Stability publish it (ldm key names, one file, no configs),
    # written by our own converter, read by diffusers' converter through load_backbone offline.
    from safetensors.torch import save_file

    from original_layout import sd15_state_dict

    original = random_backbone("sd15", seed=1)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # no two weights alike (fresh norms are all ones), so a swapped name shows
        for module in (original.unet, original.vae, original.text_encoders[0]):
            for weight in module.parameters():
                weight.add_(0.05 * torch.randn(weight.shape, generator=generator))
    folder = save_release_layout(original, "sd15", tmp_path / "release")
    state = sd15_state_dict(original)
    assert not any("down_blocks" in k or "mid_block" in k or "up_blocks" in k for k in state)
    save_file(state, str(tmp_path / "sd15.safetensors"))
    loaded = load_backbone(tmp_path / "sd15.safetensors", config=folder, offline=True)  # a Path config works too
    for name in ("unet", "vae"):
        expected = getattr(original, name).state_dict()
        assert getattr(loaded, name).state_dict().keys() == expected.keys()
        assert all(torch.equal(v, expected[k]) for k, v in getattr(loaded, name).state_dict().items())
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for a, b in zip(_outputs(loaded, latents), _outputs(original, latents)):
        a, b = (a.hidden_states, b.hidden_states) if isinstance(a, Conditioning) else (a, b)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_sd15_folder_lists_a_safety_checker_retouch_never_loads(families, tmp_path):
    import json

    original = families["sd15"][0]
    folder = save_release_layout(original, "sd15", tmp_path / "sd15")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert not (folder / "safety_checker").exists()  # absent, and the load above did not need it
    assert (folder / "feature_extractor").is_dir() and json.loads((folder / "scheduler" / "scheduler_config.json")
                                                                   .read_text())["_class_name"] == "PNDMScheduler"


def test_sd21_pads_with_openclip_token_and_predicts_v(families):
    backbone = families["sd21"][1]
    ids = backbone.tokenize([PROMPT])[0]
    assert ids[-1].item() == backbone.tokenizer.convert_tokens_to_ids("!") != backbone.tokenizer.eos_token_id
    # The v-prediction schedule is read and used: calling the same network an ε-predictor changes the edit.
    method = get_method("sdedit")
    config = make_config(method, prompt=PROMPT, num_steps=2)
    images = _images()
    as_v = method.edit(backbone, images, config)
    as_eps = method.edit(dataclasses.replace(backbone, schedule=dataclasses.replace(backbone.schedule,
                                                                                    prediction_type="epsilon")),
                         images, config)
    assert (as_v - as_eps).abs().max() > 1e-3


def test_sdxl_added_conditioning_is_used(families, monkeypatch):
    backbone = families["sdxl"][1]
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond = backbone.encode_text([PROMPT])
        assert cond.pooled.shape == (1, tiny_configs(FAMILIES["sdxl"])[2][1][1]["projection_dim"])
        base = backbone.denoise(latents, 500, cond)
        no_pool = backbone.denoise(latents, 500, Conditioning(cond.hidden_states, torch.zeros_like(cond.pooled)))
        ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
        assert torch.equal(backbone.denoise(latents, 500, Conditioning(cond.hidden_states, cond.pooled, ids)), base)
        other_ids = backbone.denoise(latents, 500, Conditioning(cond.hidden_states, cond.pooled, ids * 2))
    assert (base - no_pool).abs().max() > 1e-4 and (base - other_ids).abs().max() > 1e-4
    # ... and end to end: an edit whose pooled text embedding is zeroed comes out different.
    method = get_method("sdedit")
    config = make_config(method, prompt=PROMPT, num_steps=2)
    edited = method.edit(backbone, _images(), config)
    encode = type(backbone).encode_text
    monkeypatch.setattr(type(backbone), "encode_text",
                        lambda self, prompts: dataclasses.replace(c := encode(self, prompts),
                                                                  pooled=torch.zeros_like(c.pooled)))
    assert (method.edit(backbone, _images(), config) - edited).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------
# Every method, end to end, on each family (two steps, 64² pixels)
# ---------------------------------------------------------------------------------------------
def _images(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _run(method, model, config, images):
    extra = {} if method.prepare is None else method.prepare(config, (SIZE, SIZE), model.device, model.dtype)
    return method.edit(model, images, config, **extra)


GUIDED = {"pix2pix-zero", "zerocon"}  # steered by gradients through the U-Net
CASES = [(key, name) for key in FAMILIES for name in sorted(available_methods()) if recipes.supported(name, key)]


@pytest.mark.parametrize("key, name", CASES)
def test_each_method_runs_on_each_family(families, tmp_path, monkeypatch, key, name):
    method = get_method(name)
    monkeypatch.chdir(tmp_path)
    _write_exemplar_files(tmp_path)
    backbone = families[key][1]
    config = _recipe_config(method, key, num_steps=2)
    model = backbone
    if name == "multitask":
        from retouch.networks.multitask import MultitaskModel

        model = MultitaskModel.from_backbone(backbone)
    if name == "portrait":
        from retouch.networks.portrait import PortraitModel, PortraitSpec

        torch.manual_seed(0)
        model = PortraitModel.from_backbone(backbone, PortraitSpec(), None)
    images = _images()
    first = _run(method, model, config, images)
    assert first.shape == images.shape and torch.isfinite(first).all()
    assert first.abs().max() < 1e3
    assert (first - images).abs().max() > 1e-3  # it did something
    again = _run(method, model, config, images)
    if name in GUIDED:  # multi-threaded CPU backward kernels sum in a varying order: float rounding only
        torch.testing.assert_close(again, first, atol=1e-4, rtol=0)
    else:
        assert torch.equal(again, first)  # deterministic given the seed



def test_sdxl_multitask_conditions_on_the_image_size_without_text(families, tmp_path):
    from retouch.networks.multitask import MultitaskModel

    model = MultitaskModel.from_backbone(families["sdxl"][1])
    denoiser = model.denoiser
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    inputs = (latents, torch.tensor([500, 500]), torch.randn(2, 4, 8, 8), torch.zeros(2, 3, 8, 8),
              torch.rand(2, denoiser.spec.vector_size))
    added = denoiser.added_conditioning(latents)
    pooled = tiny_configs(FAMILIES["sdxl"])[2][1][1]["projection_dim"]
    assert torch.equal(added["text_embeds"], torch.zeros(2, pooled))
    assert torch.equal(added["time_ids"], torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2))  # 8 latent cells × 8
    with torch.no_grad():
        base = denoiser(*inputs)
        denoiser.vae_factor = 16  # the same latents said to come from a 128² image
        other_size = denoiser(*inputs)
        denoiser.vae_factor = 8
        # saved and loaded, the factor comes back from the VAE (multitask.json does not store it)
        model.save(tmp_path / "mt")
        reloaded = MultitaskModel.load(tmp_path / "mt").denoiser(*inputs)
    assert (base - other_size).abs().max() > 1e-4
    torch.testing.assert_close(reloaded, base, atol=1e-5, rtol=0)


def test_multitask_refuses_a_unet_it_cannot_condition(families):
    from retouch.errors import RetouchError
    from retouch.networks.multitask import MultitaskDenoiser, MultitaskModel

    denoiser = MultitaskModel.from_backbone(families["sdxl"][1]).denoiser
    denoiser.unet.register_to_config(addition_embed_type="image")
    with pytest.raises(RetouchError, match="'image'"):
        MultitaskDenoiser(denoiser.unet, denoiser.mapping, denoiser.spec)
