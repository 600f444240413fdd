"""The mini world on the command line, the mini training/export/evaluation pipeline, and the shipped models."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retouch.backbone import MINI_DIR, load_backbone
from retouch.world import World
from helpers import run_cli




# ---------------------------------------------------------------------------------------------
# retouch world
# ---------------------------------------------------------------------------------------------
def test_world_command_writes_scenes_masks_and_records(tmp_path, capsys):
    code, out, err = run_cli(["world", "-o", tmp_path / "w", "--count", 3, "--start", 95, "--grid", tmp_path / "g.png"],
                         capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "w" / "scenes.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [95, 96, 97]
    world = World(seed=0, size=64)
    for record in records:
        spec, rendered, text = world.scene(record["index"])
        assert record["caption"] == text and record["split"] == "test"
        assert [o["shape"] for o in record["scene"]["objects"]] == [o.shape for o in spec.objects]
        image = np.asarray(Image.open(tmp_path / "w" / record["image"]), dtype=np.float32) / 255
        assert np.abs(image - rendered.image).max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only
        labels = np.rint(np.asarray(Image.open(tmp_path / "w" / record["mask"]).convert("L")) / 255 * 3)
        for k, mask in enumerate(rendered.masks, start=1):
            assert np.array_equal(labels == k, mask)
    assert Image.open(tmp_path / "g.png").size[0] > 64 * 8


def test_world_pairs_change_the_right_object(tmp_path, capsys):
    code, _, err = run_cli(["world", "-o", tmp_path, "--count", 2, "--pairs", "pattern=striped,colour=blue"], capsys)
    assert code == 0, err
    for line in (tmp_path / "scenes.jsonl").read_text().splitlines():
        record = json.loads(line)
        right = record["right"]["objects"][0]
        assert right["pattern"] == "striped" and right["colour"] == "blue"
        assert record["left"]["objects"][0]["shape"] == right["shape"]
        assert Image.open(tmp_path / record["image"]).size == (128, 64)


@pytest.mark.parametrize("args, message", [
    (["--pairs", "shape=blob"], "shape must be one of"),
    (["--pairs", "mood=happy"], "attribute must be one of"),
    (["--count", 0], "--count"),
    (["--size", 4], "--size"),
])
def test_world_bad_options_give_one_line(tmp_path, capsys, args, message):
    code, _, err = run_cli(["world", "-o", tmp_path / "w", *args], capsys)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------------------------
# training → export → evaluation, end to end on a few steps
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_export(tmp_path_factory):
    from retouch.train.mini import MiniConfig, run_mini_training

    work = tmp_path_factory.mktemp("work")
    export = tmp_path_factory.mktemp("export")
    config = MiniConfig(work_dir=str(work), vae_steps=2, vae_batch=2, decoder_steps=2, decoder_batch=2, clip_steps=2,
                        clip_batch=4, unet_steps=2, unet_batch=2, judge_steps=2, judge_batch=8, vocab_size=600)
    run_mini_training(config, ("tokenizer", "vae", "decoder", "clip", "judge", "unet", "export"), export)
    return export


def test_export_is_a_diffusers_folder_and_a_local_clip_judge(smoke_export):
    from retouch.metrics import TransformersCLIPJudge

    backbone = load_backbone(str(smoke_export / "backbone"))
    assert backbone.vae_scale_factor == 4 and backbone.unet.config.sample_size == 16
    latents = backbone.encode_images(torch.zeros(1, 3, 64, 64))
    assert latents.shape == (1, 4, 16, 16)
    judge = TransformersCLIPJudge(smoke_export / "judge")
    assert judge.encode_images(torch.rand(2, 3, 64, 64)).shape == (2, 128)
    report = json.loads((smoke_export / "training_report.json").read_text())
    assert set(report["stages"]) == {"vae", "decoder", "clip", "judge", "unet"} and report["config"]["seed"] == 0
    # The shipped autoencoder is the decoder stage's: the vae stage's encoder, a fine-tuned decoder.
    from diffusers import AutoencoderKL

    first = AutoencoderKL.from_pretrained(Path(report["config"]["work_dir"]) / "vae" / "final")
    shipped = backbone.vae.state_dict()
    unchanged = {k: torch.equal(v, shipped[k]) for k, v in first.state_dict().items()}
    assert all(same for k, same in unchanged.items() if k.startswith(("encoder.", "quant_conv.")))
    assert not all(same for k, same in unchanged.items() if k.startswith("decoder."))


def test_latent_composites_splice_the_same_cells_in_latents_and_pixels():
    from diffusers import AutoencoderKL

    from retouch.train.mini import latent_composites, mini_vae

    torch.manual_seed(0)
    vae: AutoencoderKL = mini_vae().eval()
    first, second = torch.rand(6, 3, 64, 64) * 2 - 1, torch.rand(6, 3, 64, 64) * 2 - 1
    objects = torch.zeros(6, 1, 64, 64)
    objects[:, :, 10:20, 30:41] = 1  # grown to latent cells 2..4 × 7..10
    latents, target = latent_composites(vae, first, second, objects, np.random.default_rng(0),
                                        torch.Generator().manual_seed(0))
    assert latents.shape == (6, 4, 16, 16) and target.shape == first.shape
    generator = torch.Generator().manual_seed(0)  # replay the posterior samples
    samples = []
    for images in (first, second):
        posterior = vae.encode(images).latent_dist
        samples.append(posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator))
    for row in range(6):
        from_second = (target[row] == second[row]).all(dim=0)
        assert ((target[row] == first[row]).all(dim=0) | from_second).all()  # every pixel from one image
        cells = from_second[::4, ::4]
        assert torch.equal(from_second, cells.repeat_interleave(4, 0).repeat_interleave(4, 1))  # whole 4×4 cells
        assert torch.allclose(latents[row], torch.where(cells, samples[1][row], samples[0][row]), atol=1e-6)
    kinds = [(target[r] == second[r]).all(dim=0).sum().item() for r in range(6)]
    assert 0 in kinds and any(k > 0 for k in kinds)  # plain rows and spliced rows both occur


def test_evaluation_and_model_card(smoke_export, tmp_path):
    from retouch.train.evaluate_mini import evaluate_mini, zero_shot_prompts
    from retouch.train.mini import write_model_card

    report = evaluate_mini(smoke_export, vae_count=4, judge_count=8, generation_count=2, grid_path=tmp_path / "g.png")
    for attribute in ("shape", "colour", "pattern", "background"):
        assert 0.0 <= report["judge"]["zero_shot_accuracy"][attribute] <= 1.0
        assert 0.0 <= report["unet"]["judge_accuracy_of_samples"][attribute] <= 1.0
    assert report["unet"]["start"] == "pure noise" and "from_pure_noise" not in report["unet"]
    # With a terminal prior in the backbone folder, samples start from it and the pure-noise start is reported too.
    import shutil

    from retouch.train.terminal_prior import train_terminal_prior

    export = shutil.copytree(smoke_export, tmp_path / "export")  # the module's export stays as trained
    train_terminal_prior(export / "backbone", count=16)
    with_prior = evaluate_mini(export, vae_count=2, judge_count=2, generation_count=2)
    assert with_prior["unet"]["start"].startswith("terminal prior")
    assert set(with_prior["unet"]["from_pure_noise"]["judge_accuracy_of_samples"]) >= {"shape", "background"}
    assert report["vae"]["downsampling_factor"] == 4 and np.isfinite(report["vae"]["photo_psnr_mean"])
    assert zero_shot_prompts("shape")["star"] == "a photo of a star"
    (smoke_export / "evaluation.json").write_text(json.dumps(report))
    card = write_model_card(smoke_export, "retouch train mini").read_text()
    assert "downsampling factor 4" in card and "zero_shot_accuracy" in card and "MiB" in card
    # a hand-written provenance section survives regeneration, once
    from retouch.train.mini import PROVENANCE_HEADING

    (smoke_export / "MODEL_CARD.md").write_text(card + f"\n{PROVENANCE_HEADING}\n\nresumed twice.\n")
    again = write_model_card(smoke_export, "retouch train mini").read_text()
    assert again.count(PROVENANCE_HEADING) == 1 and again.rstrip().endswith("resumed twice.")
    assert again.startswith(card.rstrip())


def test_reconstruction_psnr_is_infinite_for_an_identity_autoencoder():
    from retouch.train.evaluate_mini import reconstruction_psnr

    class Identity:
        def encode(self, x):
            return type("E", (), {"latent_dist": type("D", (), {"mode": lambda self: x})()})()

        def decode(self, z):
            return type("S", (), {"sample": z})()

    images = torch.rand(3, 3, 8, 8)
    assert all(np.isinf(v) for v in reconstruction_psnr(Identity(), images))
    noisy = reconstruction_psnr(type("Noisy", (Identity,), {"decode": lambda self, z: type("S", (), {
        "sample": z + 0.2})()})(), images)
    # a constant offset of 0.2 in [-1, 1] is 0.1 in [0, 1] (before clamping): PSNR ≤ 20 dB
    assert all(v >= 20 - 1e-4 for v in noisy)


def test_decode_splices_pair_scene_k_with_scene_half_plus_k_and_an_identity_decoder_gives_the_pixel_splice():
    from retouch.train.evaluate_mini import decode_splices, splice_psnr
    from retouch.world.heldout import HeldOutScenes

    class Identity:  # latents are the pixels: every splice decodes to exactly its pixel splice
        def encode(self, x):
            return type("E", (), {"latent_dist": type("D", (), {"mode": lambda self: x})()})()

        def decode(self, z):
            return type("S", (), {"sample": z})()

    images = torch.rand(4, 3, 8, 8)
    objects = torch.zeros(4, 1, 8, 8)
    objects[:, :, 2:5, 3:7] = 1
    scenes = HeldOutScenes(images, [None] * 4, [""] * 4, objects)
    decoded, pixel_splices = decode_splices(Identity(), scenes, kind=2)
    assert torch.allclose(decoded, pixel_splices, atol=1e-6)
    for k in range(2):  # pair k is scene k with scene 2 + k's objects pasted over it
        expected = torch.where(objects[2 + k].bool(), images[2 + k], images[k])
        assert torch.allclose(pixel_splices[k], expected, atol=1e-6)
    cut, cut_pixels = decode_splices(Identity(), scenes, kind=1, seed=3)
    for k in range(2):  # a straight cut: every pixel from one of the pair's scenes, and both appear
        from_second = torch.isclose(cut_pixels[k], images[2 + k], atol=1e-6).all(dim=0)
        assert (from_second | torch.isclose(cut_pixels[k], images[k], atol=1e-6).all(dim=0)).all()
        assert from_second.any() and not from_second.all()
    assert np.isinf(splice_psnr(Identity(), scenes, kind=1))


# ---------------------------------------------------------------------------------------------
# the shipped models
# ---------------------------------------------------------------------------------------------
shipped = pytest.mark.skipif(not (MINI_DIR / "backbone" / "model_index.json").is_file(),
                             reason="mini models not exported into this checkout")


@shipped
def test_shipped_mini_loads_by_name_and_by_folder_identically():
    by_name = load_backbone("mini")
    by_folder = load_backbone(str(MINI_DIR / "backbone"))
    channels = by_name.unet.config.in_channels  # 8 latent channels since the v2 autoencoder
    latents = torch.randn(1, channels, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = by_name.encode_text(["a photo of a red circle on grass"])
    assert torch.equal(by_name.denoise(latents, 500, cond), by_folder.denoise(latents, 500, by_folder.encode_text(
        ["a photo of a red circle on grass"])))


@shipped
def test_shipped_weights_fit_the_budget_and_have_a_model_card():
    total = sum(p.stat().st_size for p in MINI_DIR.rglob("*.safetensors"))
    assert total <= 60 * 2**20
    card = (MINI_DIR / "MODEL_CARD.md").read_text()
    assert "Command" in card and "zero_shot_accuracy" in card


@shipped
def test_demo_writes_strips_and_its_four_edits_succeed(tmp_path, capsys):
    """The README's main job on the shipped models: every edit of the four kinds succeeds by both readers."""
    code, out, err = run_cli(["demo", "-o", tmp_path / "demo"], capsys)
    assert code == 0, err
    for name in ("input.png", "result.png", "comparison.png"):
        assert (tmp_path / "demo" / name).is_file()
    assert "4 of 4 edits succeeded" in out, out


def test_demo_edits_take_the_first_held_out_scenes_one_kind_each():
    from retouch.demo import DEMO_KINDS, demo_edits
    from retouch.world import World
    from retouch.world.heldout import held_out_scenes

    world = World(0, 64)
    edits = demo_edits(world)
    specs = held_out_scenes(world, 16).specs
    assert len(edits) == len(DEMO_KINDS) == 4
    assert [spec for spec, _ in edits[:3]] == specs[:3]  # never picked: the first scenes, in order
    hatless = [spec for spec in specs[3:] if spec.objects[0].accessory == "none"]
    assert edits[3] == (hatless[0], "hat")
    for (spec, target), kind in zip(edits[:3], DEMO_KINDS):
        assert target in world.vocabularies[kind] and target != getattr(spec.objects[0], kind)


def test_unet_loss_weights_favour_objects_and_noisy_timesteps():
    from retouch.train.mini import unet_loss_weights

    masks = torch.zeros(2, 1, 64, 64)
    masks[0, 0, 10:13, 20:22] = 1  # a few pixels: every latent pixel they touch gets the weight
    alpha_bar = torch.tensor([0.99, 0.2])
    spatial, per_sample = unet_loss_weights(masks, 16, alpha_bar, object_weight=4.0, min_snr_gamma=5.0)
    assert spatial.shape == (2, 1, 16, 16)
    touched = spatial[0, 0] == 5.0
    assert touched.nonzero().tolist() == [[2, 5], [3, 5]]  # rows 10–12 → latent rows 2–3, cols 20–21 → col 5
    assert (spatial[0, 0][~touched] == 1.0).all() and (spatial[1] == 1.0).all()
    snr = 0.99 / 0.01  # above γ: weight γ/SNR; below γ (0.2/0.8 = 0.25): weight 1
    assert per_sample.tolist() == pytest.approx([5.0 / snr, 1.0])
    plain_spatial, plain_sample = unet_loss_weights(masks, 16, alpha_bar, object_weight=0.0, min_snr_gamma=0.0)
    assert (plain_spatial == 1).all() and (plain_sample == 1).all()


def test_zero_terminal_snr_schedule_and_its_v_loss_weights():
    """Lin et al. 2024: ᾱ_T is (numerically) 0, the network predicts v and sampling starts at t = T; the
    v-loss keeps a weight at SNR 0 (Min-SNR's v form min(SNR, γ)/(SNR + 1) would give it none)."""
    from retouch.sampling import NoiseSchedule, ddim_timesteps
    from retouch.train.mini import mini_scheduler_config, unet_loss_weights

    plain = NoiseSchedule.from_scheduler_config(mini_scheduler_config())
    zero = NoiseSchedule.from_scheduler_config(mini_scheduler_config(zero_terminal_snr=True))
    assert plain.alphas_cumprod[-1].sqrt() > 0.05  # the leak: SD's schedule keeps √ᾱ_T ≈ 0.07 of the signal
    assert zero.alphas_cumprod[-1] < 1e-6 and zero.prediction_type == "v_prediction"
    assert ddim_timesteps(zero, 25)[0] == 999 and ddim_timesteps(plain, 25)[0] == 961
    masks = torch.zeros(3, 1, 64, 64)
    alpha_bar = torch.tensor([zero.alphas_cumprod[-1].item(), 0.5, 0.99])
    _, per_sample = unet_loss_weights(masks, 16, alpha_bar, 0.0, 5.0, "v_prediction")
    assert per_sample.tolist() == pytest.approx([1.0, 1.0, 5.0 * 0.01], rel=1e-4)  # SNR + 1 = 1, 2, 100


def test_offset_noise_gives_each_channel_a_shared_offset():
    """Offset noise: per image and channel, the noise's spatial mean has variance offset² + 1/(H·W), not
    1/(H·W); within a channel the offset is shared, so differences between pixels keep variance 2."""
    from retouch.train.mini import training_noise

    shape = (512, 8, 16, 16)
    plain = training_noise(shape, torch.Generator().manual_seed(0))
    offset = training_noise(shape, torch.Generator().manual_seed(0), offset=0.5)
    assert torch.equal(plain, training_noise(shape, torch.Generator().manual_seed(0), offset=0.0))
    assert plain.mean(dim=(2, 3)).var().item() == pytest.approx(1 / 256, rel=0.1)
    assert offset.mean(dim=(2, 3)).var().item() == pytest.approx(0.25 + 1 / 256, rel=0.1)
    assert torch.allclose(offset - plain, (offset - plain)[..., :1, :1].expand(shape), atol=1e-6)
    assert (offset[..., 0, 0] - offset[..., 5, 7]).var().item() == pytest.approx(2.0, rel=0.1)


def test_v2_recipe_trains_every_stage_from_shards_and_keeps_the_encoder(tmp_path):
    """The v2 recipe end to end at toy sizes: mixture autoencoder without attention, CLIP with hard
    negatives, a noise-robust decoder that leaves the encoder (the U-Net's latent space) untouched, and a
    U-Net trained from pre-encoded shards."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from retouch.data.latent_shards import LatentShards
    from retouch.errors import RetouchError
    from retouch.train.mini import mini_recipe, run_mini_training, train_unet

    config = mini_recipe("v2", work_dir=str(tmp_path / "work"), vae_steps=2, vae_batch=2, vae_dead_leaves=4,
                         decoder_steps=2, decoder_batch=2, splice_steps=2, splice_mixture_rows=2, clip_steps=2,
                         clip_batch=4, unet_steps=2, unet_batch=2, unet_shards=12, vocab_size=600)
    with pytest.raises(ValueError, match="unknown mini recipe"):
        mini_recipe("v7")
    with pytest.raises(RetouchError, match="train stage decoder first"):
        run_mini_training(config, ("tokenizer", "splice_decoder"), tmp_path / "export")
    with pytest.raises(RetouchError, match="no splice stage"):
        run_mini_training(replace(config, splice_steps=0), ("tokenizer", "vae", "decoder", "splice_decoder"),
                          tmp_path / "export")
    run_mini_training(config, ("tokenizer", "vae", "decoder", "splice_decoder", "clip", "unet"), tmp_path / "export")
    work = tmp_path / "work"
    vae = AutoencoderKL.from_pretrained(work / "vae" / "final")
    decoder = AutoencoderKL.from_pretrained(work / "decoder" / "final")
    splice_decoder = AutoencoderKL.from_pretrained(work / "splice_decoder" / "final")
    assert vae.config.latent_channels == 8 and not vae.config.mid_block_add_attention
    for tuned in (decoder, splice_decoder):  # both decoder stages leave the U-Net's latent space alone
        for name, tensor in vae.encoder.state_dict().items():
            assert torch.equal(tensor, tuned.encoder.state_dict()[name]), name
    # each decoder stage changes the decoder it starts from (the splice stage starts from the decoder stage's)
    assert any(not torch.equal(a, b) for a, b in zip(vae.decoder.parameters(), decoder.decoder.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(decoder.decoder.parameters(),
                                                     splice_decoder.decoder.parameters()))
    shards = LatentShards.load(work / "shards")
    assert len(shards) == 12 and shards.manifest["profile"] == "v2" and shards.latents.shape[1] == 8
    unet = UNet2DConditionModel.from_pretrained(work / "unet" / "final")
    assert unet.config.in_channels == 8 and unet.config.block_out_channels == [32, 64, 128]
    assert unet.config.down_block_types[0] == "DownBlock2D"  # no attention at full latent resolution

    # The zero-terminal-SNR fine-tune (Makefile: mini-models): from a saved U-Net, its own checkpoints,
    # and the export ships the schedule the weights were trained with.
    (work / "unet" / "final").rename(work / "unet" / "final-init")
    tuned = replace(config, unet_init=str(work / "unet" / "final-init"), unet_zero_terminal_snr=True,
                    judge_steps=2, judge_batch=4)
    run_mini_training(tuned, ("unet", "judge", "export"), tmp_path / "export")
    assert (work / "unet" / "from-init").is_dir()
    init = UNet2DConditionModel.from_pretrained(work / "unet" / "final-init")
    exported = load_backbone(str(tmp_path / "export" / "backbone"))
    assert any(not torch.equal(a, b) for a, b in zip(init.parameters(), exported.unet.parameters()))
    assert exported.schedule.prediction_type == "v_prediction" and exported.schedule.timestep_spacing == "trailing"
    assert exported.schedule.alphas_cumprod[-1] < 1e-6
    # the export ships the last decoder stage's decoder, the splice stage's
    for name, tensor in splice_decoder.decoder.state_dict().items():
        assert torch.equal(tensor, exported.vae.decoder.state_dict()[name]), name
    with pytest.raises(RetouchError, match="--unet-init"):
        train_unet(None, replace(tuned, unet_init=str(tmp_path / "nowhere")), None, None, None)
