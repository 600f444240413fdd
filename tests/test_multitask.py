"""The multitask model: editing vector layout, widened U-Net, mapping network, loss, sampling, save/load."""

import math

import pytest
import torch

from retouch.errors import RetouchError
from retouch.backbone import widen_conv_in
from retouch.methods.multitask import multitask_edit
from retouch.networks.multitask import EditingVector, MappingNetwork, MultitaskModel, MultitaskSpec, conditioning_inputs
from retouch.train.multitask import multitask_loss
from retouch.sampling import NoiseSchedule


def test_editing_vector_is_the_papers_layout_with_inactive_tasks_zeroed():
    vector = EditingVector(blur=0.6, sharpen=(2.0, 0.05), colour=True)
    assert vector.as_tensor().tolist() == pytest.approx([0.6, 0.0, 2.0, 0.05, 1, 0, 1, 0, 1])
    assert vector.as_tensor(labels=False).tolist() == pytest.approx([0.6, 0.0, 2.0, 0.05])
    assert EditingVector().as_tensor().abs().sum() == 0  # "none": everything off
    for bad in (EditingVector(blur=1.5), EditingVector(grain=0.2), EditingVector(sharpen=(0.5, 0.0)),
                EditingVector(sharpen=(2.0, float("nan")))):
        with pytest.raises(RetouchError, match="Table 1"):
            bad.validate()


@pytest.mark.parametrize("depth", [0, 1, 2, 4])
def test_mapping_network_depths(depth):
    mapping = MappingNetwork(9, 32, depth)
    linear = [m for m in mapping.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == depth and sum(isinstance(m, torch.nn.SiLU) for m in mapping.modules()) == max(0, depth - 1)
    out = mapping(torch.rand(3, 9))
    assert out.shape == (3, 1, 32)
    if depth == 0:
        assert torch.equal(out[:, 0, 9:], torch.zeros(3, 23))


def test_widened_unet_computes_the_pretrained_one_until_trained(tiny_backbones):
    unet = tiny_backbones["tiny-sd"].unet
    wide = widen_conv_in(unet, 11)
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 1, unet.config.cross_attention_dim)
    extra = torch.randn(2, 7, 32, 32)  # anything: its weights start at zero
    with torch.no_grad():
        expected = unet(x, 10, encoder_hidden_states=context).sample
        got = wide(torch.cat([x, extra], 1), 10, encoder_hidden_states=context).sample
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("conditioning", ["cross-attention", "concat", "cross-attention+concat"])
def test_conditions_reach_the_output_and_training_lowers_the_loss(tiny_backbones, conditioning):
    torch.manual_seed(0)
    model = MultitaskModel.from_backbone(tiny_backbones["tiny-sd"], MultitaskSpec(conditioning=conditioning))
    denoiser = model.denoiser
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    reference = torch.rand(1, 3, 64, 64) * 2 - 1
    source, small, c = conditioning_inputs(model, images, EditingVector(blur=0.5, colour=True), reference)
    assert source.shape == (2, 4, 32, 32) and small.shape == (2, 3, 32, 32) and c.shape == (2, 9)
    weight = denoiser.unet.conv_in.weight.data  # give the new input channels weight so the test sees them
    weight[:, 4:] = torch.randn_like(weight[:, 4:]) * 0.1
    noisy = torch.randn_like(source)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        base = denoiser(noisy, t, source, small, c)
        other_vector = denoiser(noisy, t, source, small, EditingVector(grain=0.05).as_tensor()[None].expand(2, -1))
        other_reference = denoiser(noisy, t, source, torch.zeros_like(small), c)
    assert (base - other_vector).abs().max() > 1e-4 and (base - other_reference).abs().max() > 1e-4

    schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)
    target = source.flip(0)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-3)
    losses = []
    for step in range(30):
        loss = multitask_loss(denoiser, schedule.alphas_cumprod, target, source, small, c,
                              torch.Generator().manual_seed(step % 3))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])


def test_inpainting_masks_the_source_and_missing_inputs_fail(tiny_backbones):
    model = MultitaskModel.from_backbone(tiny_backbones["tiny-sd"])
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    mask = torch.ones(1, 1, 64, 64)
    mask[..., :32] = 0
    masked, _, c = conditioning_inputs(model, images, EditingVector(inpaint=True), mask=mask)
    plain, _, _ = conditioning_inputs(model, images * mask, EditingVector())
    assert torch.allclose(masked, plain) and c[0, 7] == 1
    with pytest.raises(RetouchError, match="mask"):
        conditioning_inputs(model, images, EditingVector(inpaint=True))
    with pytest.raises(RetouchError, match="reference"):
        conditioning_inputs(model, images, EditingVector(colour=True))


def test_edit_is_seeded_and_survives_save_and_load(tiny_backbones, tmp_path):
    torch.manual_seed(0)
    model = MultitaskModel.from_backbone(tiny_backbones["tiny-sd"])
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    vector = EditingVector(blur=0.3, grain=0.05)
    first = multitask_edit(model, images, vector, num_steps=4, seed=1)
    assert first.shape == images.shape and torch.isfinite(first).all()
    assert torch.equal(first, multitask_edit(model, images, vector, num_steps=4, seed=1))
    assert not torch.equal(first, multitask_edit(model, images, vector, num_steps=4, seed=2))
    inverted = multitask_edit(model, images, vector, num_steps=4, start="ddim-inversion")
    assert not torch.equal(first, inverted)
    # η > 0: stochastic steps, seeded like the start (the same seed repeats, another differs, η = 0 is DDIM).
    stochastic = multitask_edit(model, images, vector, num_steps=4, seed=1, eta=1.0)
    assert torch.equal(stochastic, multitask_edit(model, images, vector, num_steps=4, seed=1, eta=1.0))
    assert not torch.allclose(stochastic, first, atol=1e-4)
    assert torch.equal(first, multitask_edit(model, images, vector, num_steps=4, seed=1, eta=0.0))
    model.save(tmp_path / "model")
    loaded = MultitaskModel.load(tmp_path / "model")
    assert torch.allclose(multitask_edit(loaded, images, vector, num_steps=4, seed=1), first, atol=1e-5)
    with pytest.raises(RetouchError, match="multitask.json"):
        MultitaskModel.load(tmp_path)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from retouch.data.compositing import CompositingConfig, build_compositing_dataset

    folder = tmp_path_factory.mktemp("multitask") / "data"
    build_compositing_dataset(CompositingConfig(world_scenes=10, dead_leaves=4, photos=False, crop=32,
                                                grain_samples=4, split=(0.8, 0.1, 0.1)), folder)
    return folder


def test_training_examples_follow_the_papers_labelling(tiny_dataset):
    import numpy as np

    from retouch.data.compositing import GRAIN_NAMES
    from retouch.train.multitask import LABELS, TrainingSet, draw_examples, training_example

    data = TrainingSet(tiny_dataset)
    source, target, reference, keep, vector = training_example(data, (0, None, None))
    assert torch.equal(source, target) and reference is None and keep is None and not any(vector.active)
    _, target, _, _, vector = training_example(data, (0, "grain", 0.05))
    assert torch.equal(target, data.image(GRAIN_NAMES[0.05], 0)) and vector.active == (0, 1, 0, 0, 0)
    source, target, _, keep, vector = training_example(data, (0, "inpaint", None))
    assert torch.equal(source, target) and torch.equal(keep, 1 - data.image("mask", 0)) and vector.inpaint
    _, target, reference, _, vector = training_example(data, (0, "colour", None))
    assert torch.equal(reference, data.image("reference", 0)) and torch.equal(target, data.image("colour", 0))
    _, _, _, _, vector = training_example(data, (0, "sharpen", None))
    assert vector.sharpen == tuple(data.params[0]["sharpen"])
    draws = draw_examples(data, LABELS, 600, np.random.default_rng(0))
    counts = {label: sum(d[1] == label for d in draws) for label in LABELS}
    assert min(counts.values()) > 60  # all six label vectors of §4.1 are drawn, about equally often
    assert {d[2] for d in draws if d[1] == "grain"} == set(GRAIN_NAMES)
    assert all(d[2] is None for d in draws if d[1] != "grain")


def test_latent_cache_gives_what_encoding_each_batch_gives(tiny_backbones, tiny_dataset):
    """The trainer encodes every latent once; a batch from the cache must equal the per-example path
    (masking, encoding, reference resize and C built one example at a time)."""
    from retouch.train.multitask import TrainingSet

    data = TrainingSet(tiny_dataset)
    torch.manual_seed(0)
    model = MultitaskModel.from_backbone(tiny_backbones["tiny-sd"])
    draws = [(0, None, None), (1, "blur", None), (2, "grain", 0.025), (0, "colour", None), (3, "inpaint", None),
             (1, "sharpen", None)]
    assert_cache_gives_the_per_example_path(model, data, draws)


def assert_cache_gives_the_per_example_path(model, data, draws):
    """The cached batch of ``draws`` equals masking, encoding, reference resize and C one example at a time."""
    from retouch.networks.multitask import encode
    from retouch.train.multitask import LatentCache, target_name, training_example

    cache = LatentCache(model, data, {target_name(label, radius) for _, label, radius in draws}, batch=2)
    targets, sources, references, vectors = cache.batch(draws, labels=True)
    for k, draw in enumerate(draws):
        source, target, reference, keep, vector = training_example(data, draw)
        latents, small, c = conditioning_inputs(model, source[None], vector,
                                                None if reference is None else reference[None],
                                                None if keep is None else keep[None])
        torch.testing.assert_close(sources[k], latents[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(targets[k], encode(model, target[None])[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(references[k], small[0])
        assert torch.equal(vectors[k], c[0])


def test_train_multitask_runs_resumes_and_saves(tiny_backbones, tiny_dataset, tmp_path):
    from retouch.train.multitask import MultitaskTrainConfig, train_multitask

    config = MultitaskTrainConfig(data=str(tiny_dataset), output_dir=str(tmp_path / "run"), steps=4, batch=3,
                                  ema_decay=None)
    model, report = train_multitask(config, backbone=tiny_backbones["tiny-sd"], progress=False)
    assert report["steps"] == 4 and report["final_loss"] is not None
    loaded = MultitaskModel.load(tmp_path / "run" / "final")
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    out = multitask_edit(loaded, images, EditingVector(blur=0.5), num_steps=3)
    assert out.shape == images.shape and torch.isfinite(out).all()
    from retouch.train.multitask import export_checkpoint

    # Without EMA the last checkpoint holds the final weights: exporting it gives the same model.
    exported = MultitaskModel.load(export_checkpoint(tmp_path / "run", 4, tmp_path / "step-4",
                                                        backbone=tiny_backbones["tiny-sd"]))
    torch.testing.assert_close(multitask_edit(exported, images, EditingVector(blur=0.5), num_steps=3), out)
    with pytest.raises(RetouchError, match="no checkpoint at step 3"):
        export_checkpoint(tmp_path / "run", 3, tmp_path / "step-3")
    with pytest.raises(RetouchError, match="--tasks"):
        train_multitask(MultitaskTrainConfig(data=str(tiny_dataset), tasks=("fog",)),
                        backbone=tiny_backbones["tiny-sd"])


def test_cli_edits_with_a_trained_folder_and_explains_missing_models(tiny_backbones, tiny_dataset, tmp_path, capsys):
    import numpy as np
    from helpers import run_cli

    from retouch.imageio import load_image, save_image
    from retouch.train.multitask import MultitaskTrainConfig, train_multitask

    folder = tmp_path / "run"
    train_multitask(MultitaskTrainConfig(data=str(tiny_dataset), output_dir=str(folder), steps=2, batch=2,
                                         ema_decay=None), backbone=tiny_backbones["tiny-sd"], progress=False)
    rng = np.random.default_rng(0)
    image, reference = tmp_path / "in.png", tmp_path / "ref.png"
    save_image(rng.random((40, 40, 3)).astype(np.float32), image)
    save_image(rng.random((20, 30, 3)).astype(np.float32), reference)
    mask = np.zeros((40, 40), np.float32)
    mask[10:20, 10:30] = 1
    save_image(mask, tmp_path / "mask.png")
    before = image.read_bytes()
    code, out, err = run_cli(["edit", image, "-o", tmp_path / "out.png", "--method", "multitask", "--model",
                              folder / "final", "--blur", "0.6", "--grain", "0.05", "--reference", reference,
                              "--sharpen", "2.0,0.05", "--mask", tmp_path / "mask.png", "--num-steps", "2"], capsys)
    assert code == 0, err
    assert load_image(tmp_path / "out.png").shape == (40, 40, 3) and image.read_bytes() == before
    for args, message in ((["--blur", "1.5"], "Table 1"), (["--sharpen", "0.5"], "Table 1"), ([], "no task"),
                          (["--blur", "0.5", "--start", "x"], "--start"), (["--blur", "0.5", "--eta", "1.5"], "--eta")):
        code, _, err = run_cli(["edit", image, "-o", tmp_path / "bad.png", "--method", "multitask", "--model",
                                folder / "final", *args], capsys)
        assert code != 0 and message in err and not (tmp_path / "bad.png").exists()


def test_a_model_folder_carries_its_sampler_eta_to_the_cli_and_the_evaluation(tiny_backbones, tmp_path, capsys):
    """``method_defaults.json`` {"multitask": {"eta": 1}} beside a model: loading sets ``model.eta``, ``retouch
    edit`` samples at it unless --eta is given, and the evaluation's batched edits use it too."""
    import json

    import numpy as np
    from helpers import run_cli

    from retouch.imageio import load_image, save_image
    from retouch.methods.multitask import load_multitask_model
    from retouch.train.evaluate_multitask import edit_cases

    torch.manual_seed(0)
    folder = tmp_path / "model"
    MultitaskModel.from_backbone(tiny_backbones["tiny-sd"]).save(folder)
    assert load_multitask_model(str(folder)).eta == 0.0
    (folder / "method_defaults.json").write_text(json.dumps({"multitask": {"eta": 1.0}}))
    model = load_multitask_model(str(folder))
    assert model.eta == 1.0
    image = tmp_path / "in.png"
    save_image(np.random.default_rng(0).random((32, 32, 3)).astype(np.float32), image)
    outputs = {}
    for name, extra in (("own", []), ("ddim", ["--eta", "0"])):
        code, _, err = run_cli(["edit", image, "-o", tmp_path / f"{name}.png", "--method", "multitask", "--model",
                                folder, "--blur", "0.5", "--num-steps", "3", "--seed", "2", *extra], capsys)
        assert code == 0, err
        outputs[name] = torch.from_numpy(load_image(tmp_path / f"{name}.png"))
    images = torch.from_numpy(load_image(image)).permute(2, 0, 1)[None] * 2 - 1
    expected = {eta: multitask_edit(model, images, EditingVector(blur=0.5), num_steps=3, seed=2, eta=eta)
                for eta in (1.0, 0.0)}
    for name, eta in (("own", 1.0), ("ddim", 0.0)):
        assert torch.allclose(outputs[name].permute(2, 0, 1), ((expected[eta][0] + 1) / 2).clamp(0, 1), atol=1 / 255)
    assert not torch.allclose(outputs["own"], outputs["ddim"], atol=1 / 255)

    class Case:
        reference = keep = None

    batch, vectors = [Case(), Case()], [EditingVector(blur=0.5)] * 2
    sampled = edit_cases(model, images.repeat(2, 1, 1, 1), batch, vectors, num_steps=3, seed=4)
    assert torch.equal(sampled, edit_cases(model, images.repeat(2, 1, 1, 1), batch, vectors, num_steps=3, seed=4))
    model.eta = 0.0
    assert not torch.allclose(sampled, edit_cases(model, images.repeat(2, 1, 1, 1), batch, vectors, num_steps=3,
                                                  seed=4), atol=1e-4)


def test_the_cli_reads_reference_and_hole_at_the_inputs_width_and_height(tmp_path):
    """``prepare``'s size is (width, height): a wide input gets a wide reference and keep-mask (the reference was
    once resized to (height, width), which the model's area resize then silently stretched back)."""
    import numpy as np

    from retouch.imageio import load_image, resize_image, save_image, to_tensor
    from retouch.methods.multitask import MultitaskConfig, load_multitask_inputs

    rng = np.random.default_rng(0)
    save_image(rng.random((20, 30, 3)).astype(np.float32), tmp_path / "ref.png")
    hole = np.zeros((24, 32), np.float32)
    hole[4:12, 20:28] = 1
    save_image(hole, tmp_path / "hole.png")
    config = MultitaskConfig(reference=str(tmp_path / "ref.png"), mask=str(tmp_path / "hole.png"))
    inputs = load_multitask_inputs(config, (64, 48), "cpu", torch.float32)
    expected = to_tensor(resize_image(load_image(tmp_path / "ref.png"), (64, 48)))
    assert inputs["reference"].shape == (1, 3, 48, 64) and torch.equal(inputs["reference"], expected)
    keep = inputs["mask"][0, 0]
    assert keep.shape == (48, 64) and keep[8:24, 40:56].eq(0).all() and keep[:, :32].eq(1).all()


def test_train_command_refuses_bad_input_with_one_line(tmp_path, capsys):
    from helpers import run_cli

    code, _, err = run_cli(["train", "multitask", "--data", tmp_path, "--steps", "1"], capsys)
    assert code != 0 and "not a compositing dataset" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["train", "multitask", "--data", tmp_path, "--steps", "0"], capsys)
    assert code != 0 and "--steps" in err
    code, _, err = run_cli(["train", "multitask", "--data", tmp_path, "--space", "pixel", "--pixel-channels", "32,x"],
                           capsys)
    assert code != 0 and "--pixel-channels takes comma-separated integers" in err and len(err.strip().splitlines()) == 1


def test_evaluation_tables_score_edits_against_targets(tiny_backbones, tmp_path, capsys):
    from helpers import run_cli

    from retouch.data.compositing import CompositingConfig, build_compositing_dataset
    from retouch.train.evaluate_multitask import cases, evaluate, multitask_table, score_edits

    data = tmp_path / "data"
    build_compositing_dataset(CompositingConfig(world_scenes=0, dead_leaves=0, photos=True, crop=32,
                                                crops_per_image=1, grain_samples=4), data)
    blur_cases = cases(data, "photos", "blur", limit=3)
    assert len(blur_cases) == 3 and blur_cases[0].vector.active == (True, False, False, False, False)
    combo = cases(data, "photos", "blur+grain+colour", limit=2)[0]
    assert combo.vector.active == (True, True, True, False, False) and combo.reference is not None
    inpaint = cases(data, "photos", "inpaint", limit=1)[0]
    assert torch.equal(inpaint.target, inpaint.source) and inpaint.keep is not None

    targets = torch.stack([c.target for c in blur_cases])
    perfect = score_edits(targets, targets, extractor=lambda x: x.mean(dim=(2, 3)))
    assert perfect["l1"] == 0 and perfect["ssim"] == pytest.approx(1.0) and perfect["lpips"] is None
    worse = score_edits(-targets, targets)
    assert worse["l1"] > 0.1 and worse["ssim"] < perfect["ssim"]

    torch.manual_seed(0)
    model = MultitaskModel.from_backbone(tiny_backbones["tiny-sd"])
    rows = evaluate({"ours": model, "ours-single": {"blur": model, "grain": model}}, data, "photos",
                    ["blur", "blur+grain"], num_steps=2, limit=2, extractor=lambda x: x.mean(dim=(2, 3)))
    assert [(r["task"], r["model"]) for r in rows] == [("blur", "ours"), ("blur", "ours-single"),
                                                       ("blur+grain", "ours"), ("blur+grain", "ours-single")]
    assert all(r["n"] == 2 and 0 <= r["l1"] <= 2 for r in rows)
    assert all(len(r["l1_per_crop"]) == 2 and r["l1"] == pytest.approx(sum(r["l1_per_crop"]) / 2) for r in rows)
    assert "| blur+grain | ours-single | 2 |" in multitask_table(rows, "mean colour")

    model.save(tmp_path / "m")
    code, out, err = run_cli(["eval", "multitask", "--data", data, "--model", f"ours={tmp_path / 'm'}",
                              "--split", "photos", "--tasks", "blur,grain+colour", "--steps", "2", "--limit", "2",
                              "-o", tmp_path / "table.md"], capsys)
    assert code == 0, err
    table = (tmp_path / "table.md").read_text()
    assert "| grain+colour | ours | 2 |" in table and "2 steps from noise, DDIM." in table
    (tmp_path / "m" / "method_defaults.json").write_text('{"multitask": {"eta": 1.0}}')  # the header says so
    code, _, err = run_cli(["eval", "multitask", "--data", data, "--model", f"ours={tmp_path / 'm'}",
                            "--split", "photos", "--tasks", "blur", "--steps", "2", "--limit", "1",
                            "-o", tmp_path / "table.md"], capsys)
    assert code == 0 and "η = 1 for the models whose folders ask for it" in (tmp_path / "table.md").read_text(), err
    code, _, err = run_cli(["eval", "multitask", "--data", data, "--model", "nameless", "-o", tmp_path / "t.md"],
                           capsys)
    assert code != 0 and "NAME=FOLDER" in err


def test_n_pair_loss_pulls_same_labels_together_and_pushes_others_apart():
    import math

    from retouch.train.multitask import n_pair_loss

    labels = torch.tensor([[1, 0], [1, 0], [0, 1]])
    features = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])  # same pair at distance 0, others at 5
    expected = (0.0 + 2 * math.log1p(math.exp(-5.0) / 2)) / 3
    assert n_pair_loss(features, labels).item() == pytest.approx(expected, abs=1e-6)
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.2, 0.0]], requires_grad=True)
    (grad,) = torch.autograd.grad(n_pair_loss(x, labels), x)
    assert torch.isfinite(grad).all()
    assert grad[1, 0] > 0  # descending moves point 1 towards point 0 (same label)…
    assert grad[2, 0] < 0  # …and point 2 away from both (other label)
    coincident = torch.zeros(2, 3, requires_grad=True)  # same-label points on top of each other
    (grad,) = torch.autograd.grad(n_pair_loss(coincident, labels[:2]), coincident)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("n_pair", ["bottleneck", "labels"])
def test_n_pair_term_joins_the_training_loss(tiny_backbones, n_pair):
    torch.manual_seed(0)
    model = MultitaskModel.from_backbone(tiny_backbones["tiny-sd"])
    schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)
    latents = torch.randn(4, 4, 16, 16)
    small = torch.zeros(4, 3, 16, 16)
    vectors = torch.stack([EditingVector(blur=0.5).as_tensor(), EditingVector(blur=0.2).as_tensor(),
                           EditingVector(grain=0.05).as_tensor(), EditingVector().as_tensor()])
    plain = multitask_loss(model.denoiser, schedule.alphas_cumprod, latents, latents, small, vectors,
                           torch.Generator().manual_seed(0))
    joined = multitask_loss(model.denoiser, schedule.alphas_cumprod, latents, latents, small, vectors,
                            torch.Generator().manual_seed(0), n_pair=n_pair, n_pair_weight=1.0)
    assert joined.item() > plain.item()
    joined.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.denoiser.parameters() if p.grad is not None)


def test_pix2pix_baseline_trains_on_the_same_examples_and_is_evaluated_alike(tiny_dataset, tmp_path):
    from retouch.methods.pix2pix_gan import PatchDiscriminator, Pix2PixGAN, gan_condition, pix2pix_edit
    from retouch.train.evaluate_multitask import load_compositing_model
    from retouch.train.multitask import MultitaskTrainConfig, train_multitask

    condition = gan_condition(torch.zeros(2, 3, 32, 32), EditingVector(blur=0.5))
    assert condition.shape == (2, 15, 32, 32) and torch.all(condition[:, 6] == 0.5) and torch.all(condition[:, 10] == 1)
    patches = PatchDiscriminator(18)(condition, torch.zeros(2, 3, 32, 32))
    assert patches.shape[:2] == (2, 1) and patches.shape[-1] > 1  # a map of patch logits, not one score

    config = MultitaskTrainConfig(data=str(tiny_dataset), output_dir=str(tmp_path / "gan"), steps=3, batch=2,
                                  architecture="pix2pix", ema_decay=None, learning_rate=2e-4)
    model, report = train_multitask(config, progress=False)
    assert isinstance(model, Pix2PixGAN) and report["final_loss"] is not None
    loaded = load_compositing_model(tmp_path / "gan" / "final")
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    out = pix2pix_edit(loaded, images, EditingVector(grain=0.05))
    assert out.shape == images.shape and out.abs().max() <= 1
    assert torch.allclose(out, pix2pix_edit(model.eval(), images, EditingVector(grain=0.05)), atol=1e-5)


def test_pix2pix_losses_reach_only_their_own_network():
    from retouch.methods.pix2pix_gan import Pix2PixGAN, Pix2PixSpec

    torch.manual_seed(0)
    gan = Pix2PixGAN(Pix2PixSpec(size=32, generator_channels=(32, 32)))
    condition, target = torch.randn(2, 15, 32, 32), torch.rand(2, 3, 32, 32) * 2 - 1
    _, logs = gan.loss(condition, target)
    # The discriminator's parameters get gradient only from L_D: compare with L_D alone.
    fake = gan.generate(condition).detach()
    real_logits, fake_logits = gan.discriminator(condition, target), gan.discriminator(condition, fake)
    loss_d = 0.5 * (torch.nn.functional.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                    + torch.nn.functional.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    expected = torch.autograd.grad(loss_d, list(gan.discriminator.parameters()))
    total, _ = gan.loss(condition, target)
    got = torch.autograd.grad(total, list(gan.discriminator.parameters()))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, expected))
    assert logs["d"] > 0 and logs["l1"] > 0


def test_batched_evaluation_edits_equal_one_case_at_a_time(tiny_backbones, tiny_dataset):
    """Cases with different tasks on, references and masks edited in one batch give each case's own edit."""
    from retouch.methods.pix2pix_gan import Pix2PixGAN, Pix2PixSpec, pix2pix_edit
    from retouch.train.evaluate_multitask import cases, run_model

    torch.manual_seed(0)
    model = MultitaskModel.from_backbone(tiny_backbones["tiny-sd"])
    torch.nn.init.normal_(model.denoiser.unet.conv_in.weight, std=0.05)  # so the conditions matter
    batch = cases(tiny_dataset, "train", "colour", limit=2) + cases(tiny_dataset, "train", "inpaint", limit=2)
    batch[1].vector = EditingVector(colour=True, blur=0.3)
    together = run_model(model, batch, num_steps=3, seed=5, chunk=3)
    for k, case in enumerate(batch):
        alone = multitask_edit(model, case.source[None], case.vector, num_steps=3, seed=5 + k,
                               reference=None if case.reference is None else case.reference[None],
                               mask=None if case.keep is None else case.keep[None]).clamp(-1, 1)
        torch.testing.assert_close(together[k], alone[0], atol=2e-5, rtol=1e-4)
    assert not torch.allclose(together[0], together[2], atol=1e-3)
    from retouch.train.evaluate_multitask import InvertedStart, Unedited

    # ours-single: a case whose tasks a stage does not touch passes that stage unchanged.
    chained = run_model({"colour": model, "blur": model, "inpaint": model}, batch[:3], num_steps=3, seed=5)
    torch.testing.assert_close(chained[2], run_model(model, batch[2:3], num_steps=3, seed=5)[0], atol=2e-5, rtol=1e-4)
    copied = run_model(Unedited(), batch, num_steps=1, seed=0)
    assert torch.equal(copied[0], batch[0].source) and torch.equal(copied[2], batch[2].source * batch[2].keep)

    inverted = run_model(InvertedStart(model), batch[:1], num_steps=3, seed=5)
    alone = multitask_edit(model, batch[0].source[None], batch[0].vector, num_steps=3, start="ddim-inversion",
                           reference=batch[0].reference[None]).clamp(-1, 1)
    torch.testing.assert_close(inverted, alone, atol=2e-5, rtol=1e-4)

    gan = Pix2PixGAN(Pix2PixSpec(size=32)).eval()
    together = run_model(gan, batch, num_steps=1, seed=0)
    for k, case in enumerate(batch):
        alone = pix2pix_edit(gan, case.source[None], case.vector,
                             reference=None if case.reference is None else case.reference[None],
                             mask=None if case.keep is None else case.keep[None])
        torch.testing.assert_close(together[k], alone[0].clamp(-1, 1), atol=1e-5, rtol=1e-4)


def test_shipping_halves_the_unet_and_keeps_the_edits(tiny_backbones, tmp_path):
    from retouch.methods.multitask import load_multitask_model
    from retouch.train.multitask import ship_multitask_model

    torch.manual_seed(0)
    model = MultitaskModel.from_backbone(tiny_backbones["tiny-sd"])
    torch.nn.init.normal_(model.denoiser.unet.conv_in.weight, std=0.05)
    model.save(tmp_path / "run" / "final")
    shipped = ship_multitask_model(tmp_path / "run" / "final", tmp_path / "assets" / "multitask")
    full = (tmp_path / "run" / "final" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    half = (shipped / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert half < 0.6 * full and not (tmp_path / "assets" / "multitask.tmp").exists()
    loaded = load_multitask_model(str(shipped))
    assert loaded.dtype == torch.float32
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    vector = EditingVector(blur=0.4, sharpen=(2.0, 0.05))
    expected = multitask_edit(model, images, vector, num_steps=3)
    torch.testing.assert_close(multitask_edit(loaded, images, vector, num_steps=3), expected, atol=5e-3, rtol=0)


def test_input_gain_is_a_reparametrisation_of_the_new_input_weights(tiny_backbones):
    """Gain g with new-channel weights w/g computes exactly what gain 1 with w does (only learning speed differs)."""
    torch.manual_seed(0)
    plain = MultitaskModel.from_backbone(tiny_backbones["tiny-sd"], MultitaskSpec()).denoiser
    gained = MultitaskModel.from_backbone(tiny_backbones["tiny-sd"], MultitaskSpec(input_gain=10.0)).denoiser
    gained.mapping.load_state_dict(plain.mapping.state_dict())  # f_θ starts random: make the two equal
    new = torch.randn_like(plain.unet.conv_in.weight.data[:, 4:]) * 0.1
    plain.unet.conv_in.weight.data[:, 4:] = new
    gained.unet.conv_in.weight.data[:, 4:] = new / 10.0
    noisy, source = torch.randn(2, 4, 32, 32), torch.randn(2, 4, 32, 32)
    small, c = torch.randn(2, 3, 32, 32), EditingVector(blur=0.5).as_tensor()[None].expand(2, -1)
    t = torch.tensor([300, 700])
    with torch.no_grad():
        a, b = plain(noisy, t, source, small, c), gained(noisy, t, source, small, c)
    assert torch.allclose(a, b, atol=1e-5)


def test_v_space_loss_weights_the_epsilon_error_by_one_over_sqrt_alpha_bar(tiny_backbones):
    torch.manual_seed(0)
    model = MultitaskModel.from_backbone(tiny_backbones["tiny-sd"], MultitaskSpec())
    schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)
    latents, small = torch.randn(3, 4, 32, 32), torch.zeros(3, 3, 32, 32)
    vectors = EditingVector(blur=0.3).as_tensor()[None].expand(3, -1)
    # the same draws of t and ε as multitask_loss makes from this generator
    draw = torch.Generator().manual_seed(5)
    t = torch.randint(0, len(schedule.alphas_cumprod), (3,), generator=draw)
    noise = torch.randn(latents.shape, generator=draw)
    from retouch.sampling import add_noise
    with torch.no_grad():
        prediction = model.denoiser(add_noise(latents, noise, schedule.alphas_cumprod[t]), t, latents, small, vectors)
        weights = schedule.alphas_cumprod[t].rsqrt()[:, None, None, None]
        expected = ((prediction - noise).abs() * weights).mean()
        got = multitask_loss(model.denoiser, schedule.alphas_cumprod, latents, latents, small, vectors,
                             torch.Generator().manual_seed(5), loss_space="v")
        plain = multitask_loss(model.denoiser, schedule.alphas_cumprod, latents, latents, small, vectors,
                               torch.Generator().manual_seed(5))
    assert torch.allclose(got, expected, rtol=1e-5) and got > plain
    with pytest.raises(RetouchError, match="loss space"):
        multitask_loss(model.denoiser, schedule.alphas_cumprod, latents, latents, small, vectors, loss_space="x")


def test_min_timestep_draws_only_high_noise_levels():
    """--min-timestep: the loss sees t ∈ [min_timestep, T) only (999 = regression from z_A at pure noise)."""
    seen = []

    class Recorder(torch.nn.Module):
        spec = MultitaskSpec()

        def forward(self, noisy, t, source, small, vectors):
            seen.append(t.clone())
            return torch.zeros_like(noisy)

    alphas = torch.linspace(0.999, 0.001, 1000)
    latents, small = torch.zeros(64, 4, 8, 8), torch.zeros(64, 3, 8, 8)
    vectors = EditingVector(blur=0.3).as_tensor()[None].expand(64, -1)
    for low in (0, 500, 999):
        multitask_loss(Recorder(), alphas, latents, latents, small, vectors, torch.Generator().manual_seed(1),
                       min_timestep=low)
    every, upper, last = seen
    assert every.min() < 500 and upper.min() >= 500 and upper.max() <= 999 and (last == 999).all()


def test_a_v_prediction_init_still_samples_as_epsilon(tiny_backbones):
    """Eq. 2 trains an ε-predictor even from SD 2.1 (a v-predictor), so sampling must read ε."""
    from dataclasses import replace

    base = tiny_backbones["tiny-sd"]
    v_init = replace(base, scheduler_config={**dict(base.scheduler_config), "prediction_type": "v_prediction"})
    model = MultitaskModel.from_backbone(v_init, MultitaskSpec())
    assert NoiseSchedule.from_scheduler_config(model.scheduler_config).prediction_type == "epsilon"


# ---------------------------------------------------------------------------------------------
# The CPU-scale switches: pixel space, residual prediction, crop windows (not the paper's settings)
# ---------------------------------------------------------------------------------------------
def _pixel_model(**spec) -> MultitaskModel:
    return MultitaskModel.for_pixels(MultitaskSpec(latent_channels=3, space="pixel", prediction="residual", **spec),
                                     channels=(8, 16), cross_attention_dim=16)


def test_a_residual_pixel_model_starts_from_its_input_and_survives_save_and_load(tmp_path):
    model = _pixel_model()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    vector = EditingVector(blur=0.4)
    source, small, c = conditioning_inputs(model, images, vector)
    assert torch.equal(source, images) and model.size_multiple == 2  # no autoencoder: the pixels are z_A
    with torch.no_grad():
        model.denoiser.unet.conv_out.weight.zero_()
        model.denoiser.unet.conv_out.bias.zero_()
        noisy = torch.randn_like(images)
        # x̂₀ = z_A + D(·): with D = 0 the prediction is the input whatever the noise and the step
        assert torch.equal(model.denoiser(noisy, torch.tensor([999, 10]), source, small, c), source)
    edited = multitask_edit(model, images, vector, num_steps=10, seed=0)
    torch.testing.assert_close(edited, images, atol=1e-4, rtol=0)  # DDIM on x̂₀ = z_A lands on z_A
    torch.manual_seed(1)
    model = _pixel_model()
    first = multitask_edit(model, images, vector, num_steps=4, seed=3)
    model.save(tmp_path / "pixel")
    assert not (tmp_path / "pixel" / "vae").exists()
    loaded = MultitaskModel.load(tmp_path / "pixel")
    assert loaded.vae is None and loaded.spec.prediction == "residual"
    torch.testing.assert_close(multitask_edit(loaded, images, vector, num_steps=4, seed=3), first)


def test_residual_loss_is_the_x0_error_and_the_sliders_reach_a_pixel_model():
    torch.manual_seed(0)
    model = _pixel_model()
    schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)
    assert schedule.prediction_type == "sample"
    source, target, small = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16), torch.zeros(3, 3, 16, 16)
    vectors = EditingVector(blur=0.3).as_tensor()[None].expand(3, -1)
    draw = torch.Generator().manual_seed(5)
    t = torch.randint(0, len(schedule.alphas_cumprod), (3,), generator=draw)
    noise = torch.randn(target.shape, generator=draw)
    from retouch.sampling import add_noise
    with torch.no_grad():
        noisy = add_noise(target, noise, schedule.alphas_cumprod[t])
        x0 = model.denoiser(noisy, t, source, small, vectors)
        got = multitask_loss(model.denoiser, schedule.alphas_cumprod, target, source, small, vectors,
                             torch.Generator().manual_seed(5))
        assert torch.allclose(got, (x0 - target).abs().mean(), rtol=1e-5)
        # C reaches the network through the timestep embedding too: another β changes the output
        other = EditingVector(blur=0.9).as_tensor()[None].expand(3, -1)
        assert not torch.allclose(model.denoiser(noisy, t, source, small, other), x0)
        with pytest.raises(RetouchError, match="residual"):
            multitask_loss(model.denoiser, schedule.alphas_cumprod, target, source, small, vectors, loss_space="v")


def _residual_loss_case(count: int, side: int, seed: int):
    """A small residual pixel model, random (target, source, side, C), and its x̂₀ at the t and noise that
    multitask_loss draws from a generator seeded with ``seed``."""
    from retouch.sampling import add_noise

    torch.manual_seed(0)
    model = _pixel_model()
    alphas = NoiseSchedule.from_scheduler_config(model.scheduler_config).alphas_cumprod
    source, target = torch.rand(count, 3, side, side), torch.rand(count, 3, side, side)
    small = torch.zeros(count, 3, side, side)
    vectors = EditingVector(grain=0.05).as_tensor()[None].expand(count, -1)
    draw = torch.Generator().manual_seed(seed)
    t = torch.randint(0, len(alphas), (count,), generator=draw)
    noise = torch.randn(target.shape, generator=draw)
    with torch.no_grad():
        prediction = model.denoiser(add_noise(target, noise, alphas[t]), t, source, small, vectors)
    return model, alphas, (target, source, small, vectors), t, prediction


def test_snr_weight_cap_weights_the_x0_error_by_clamped_root_snr():
    """--snr-weight-cap: each example's x̂₀ error × clamp(√SNR_t, 1, cap); cap 1 is the uniform loss, and
    high noise levels (√SNR < 1) keep weight 1."""
    model, alphas, (target, source, small, vectors), t, prediction = _residual_loss_case(64, 8, seed=7)
    with torch.no_grad():
        error = (prediction - target).abs()
        root_snr = (alphas[t] / (1 - alphas[t])).sqrt()
        assert root_snr.min() < 1 < 5 < root_snr.max()  # the draw spans both clamps
        expected = (error * root_snr.clamp(1, 5)[:, None, None, None]).mean()
        loss = {cap: multitask_loss(model.denoiser, alphas, target, source, small, vectors,
                                    torch.Generator().manual_seed(7), snr_weight_cap=cap) for cap in (1.0, 5.0)}
    torch.testing.assert_close(loss[5.0], expected)
    torch.testing.assert_close(loss[1.0], error.mean())
    with pytest.raises(RetouchError, match="snr-weight-cap"):
        from retouch.train.multitask import MultitaskTrainConfig

        MultitaskTrainConfig(data="unused", output_dir="unused", snr_weight_cap=5.0).validate()


def test_texture_weight_adds_the_local_texture_amplitude_gap_and_not_where_the_grains_fall():
    """--texture-weight w: loss = L1 + w · mean |r(x̂₀) − r(x_B)| with r the local high-pass RMS (8² patches).
    r is the same for two realisations of one noise texture and lower for a smooth image, so the term
    separates "no texture" from "another realisation", which the L1 ranks the other way round."""
    from retouch.metrics.control import local_high_frequency_rms

    model, alphas, (target, source, small, vectors), _, prediction = _residual_loss_case(8, 16, seed=3)
    with torch.no_grad():
        gap = (local_high_frequency_rms(prediction, 8) - local_high_frequency_rms(target, 8)).abs().mean()
        loss = {w: multitask_loss(model.denoiser, alphas, target, source, small, vectors,
                                  torch.Generator().manual_seed(3), texture_weight=w) for w in (0.0, 2.0)}
    torch.testing.assert_close(loss[0.0], (prediction - target).abs().mean())
    torch.testing.assert_close(loss[2.0], loss[0.0] + 2 * gap)

    flat = torch.full((4, 3, 32, 32), 0.5)
    grain, other = flat + 0.1 * torch.randn(4, 3, 32, 32), flat + 0.1 * torch.randn(4, 3, 32, 32)
    amplitude = lambda a: (local_high_frequency_rms(a) - local_high_frequency_rms(grain)).abs().mean()
    assert (other - grain).abs().mean() > (flat - grain).abs().mean()  # L1 prefers no texture …
    assert amplitude(other) < 0.25 * amplitude(flat)  # … the texture term another realisation
    from retouch.train.multitask import MultitaskTrainConfig

    with pytest.raises(RetouchError, match="texture-weight"):
        MultitaskTrainConfig(data="unused", texture_weight=1.0).validate()


def test_texture_tasks_keep_the_texture_term_to_examples_with_those_tasks_on():
    """--texture-tasks grain,sharpen: the term of an example is its gap when σ or λ is on in its C, else 0;
    the batch mean is still over every example, so the weight means the same with and without the filter."""
    from retouch.metrics.control import local_high_frequency_rms
    from retouch.train.multitask import MultitaskTrainConfig, texture_examples

    model, alphas, (target, source, small, _), _, _ = _residual_loss_case(4, 16, seed=5)
    vectors = torch.stack([EditingVector(grain=0.05).as_tensor(), EditingVector(colour=True).as_tensor(),
                           EditingVector(sharpen=(2.0, 0.05), blur=0.5).as_tensor(),
                           EditingVector(blur=0.5).as_tensor()])
    assert texture_examples(vectors, ("grain", "sharpen")).tolist() == [True, False, True, False]
    assert texture_examples(vectors, ("blur",)).tolist() == [False, False, True, True]
    from retouch.sampling import add_noise

    draw = torch.Generator().manual_seed(5)
    t = torch.randint(0, len(alphas), (4,), generator=draw)
    noise = torch.randn(target.shape, generator=draw)
    with torch.no_grad():
        prediction = model.denoiser(add_noise(target, noise, alphas[t]), t, source, small, vectors)
        gap = (local_high_frequency_rms(prediction, 8) - local_high_frequency_rms(target, 8)).abs().flatten(1).mean(1)
        loss = {tasks: multitask_loss(model.denoiser, alphas, target, source, small, vectors,
                                      torch.Generator().manual_seed(5), texture_weight=3.0, texture_tasks=tasks)
                for tasks in (None, ("grain", "sharpen"))}
    l1 = (prediction - target).abs().mean()
    torch.testing.assert_close(loss[None], l1 + 3 * gap.mean())
    torch.testing.assert_close(loss[("grain", "sharpen")], l1 + 3 * (gap[0] + gap[2]) / 4)
    for bad in ({"texture_tasks": ("grain",)}, {"texture_tasks": ("colour",), "texture_weight": 1.0},
                {"texture_tasks": (), "texture_weight": 1.0}):
        with pytest.raises(RetouchError, match="texture-tasks"):
            MultitaskTrainConfig(data="unused", space="pixel", prediction="residual", **bad).validate()


def test_pixel_channels_set_the_pixel_unet_widths(tiny_dataset):
    from retouch.train.multitask import MultitaskTrainConfig, build_model

    config = MultitaskTrainConfig(data=str(tiny_dataset), space="pixel", prediction="residual",
                                  pixel_channels=(32, 32, 64))
    config.validate()
    assert tuple(build_model(config).denoiser.unet.config.block_out_channels) == (32, 32, 64)
    for bad in ({"pixel_channels": (32, 12)}, {"pixel_channels": (32,)}, {"pixel_channels": (32, 64), "space": "latent"}):
        with pytest.raises(RetouchError, match="pixel-channels"):
            MultitaskTrainConfig(**{"data": str(tiny_dataset), "space": "pixel", **bad}).validate()


def test_crop_windows_cut_target_and_source_and_keep_the_whole_reference(tiny_dataset):
    import torch.nn.functional as F

    from retouch.train.multitask import LatentCache, TrainingSet, target_name

    data = TrainingSet(tiny_dataset)
    model = _pixel_model()
    draws = [(0, "colour", None, (3, 5)), (1, "inpaint", None, (0, 0)), (2, "grain", 0.05, (16, 16))]
    names = {target_name(label, radius) for _, label, radius, _ in draws}
    whole = LatentCache(model, data, names).batch([d[:3] for d in draws], labels=True)
    cut = LatentCache(model, data, names, crop=16).batch(draws, labels=True)
    for k, (_, _, _, (top, left)) in enumerate(draws):
        for full, window in zip(whole[:2], cut[:2]):
            assert torch.equal(window[k], full[k][:, top:top + 16, left:left + 16])
    torch.testing.assert_close(cut[2][0], F.interpolate(data.image("reference", 0)[None], size=(16, 16),
                                                        mode="area")[0])
    assert torch.equal(cut[3], whole[3])


def test_a_pixel_residual_run_trains_on_windows_and_edits_any_multiple_of_its_size(tiny_dataset, tmp_path,
                                                                                  monkeypatch):
    from retouch.networks import multitask as networks
    from retouch.train.multitask import MultitaskTrainConfig, train_multitask

    monkeypatch.setattr(networks, "PIXEL_CHANNELS", (8, 16))
    config = MultitaskTrainConfig(data=str(tiny_dataset), output_dir=str(tmp_path / "run"), steps=3, batch=4,
                                  ema_decay=None, space="pixel", prediction="residual", crop=16)
    model, report = train_multitask(config, progress=False)
    assert report["steps"] == 3 and report["final_loss"] is not None
    loaded = MultitaskModel.load(tmp_path / "run" / "final")
    assert loaded.vae is None and loaded.denoiser.unet.config.block_out_channels == [8, 16]
    for side in (32, 48):
        out = multitask_edit(loaded, torch.rand(1, 3, side, side) * 2 - 1, EditingVector(grain=0.05), num_steps=3)
        assert out.shape == (1, 3, side, side) and torch.isfinite(out).all()
    for bad, message in (({"crop": 16}, "pixel-space"), ({"space": "pixel", "prediction": "residual",
                                                          "loss_space": "v"}, "loss-space"),
                         ({"space": "pixel", "crop": 64}, "larger than")):
        with pytest.raises(RetouchError, match=message):
            train_multitask(MultitaskTrainConfig(data=str(tiny_dataset), output_dir=str(tmp_path / "bad"), steps=1,
                                                 **bad), progress=False)


def test_identity_examples_can_be_left_out_of_the_draws():
    """The paper's draws include the identity example (label None); --no-identity-examples leaves it out, for
    the residual model whose zero residual it rewards (docs/multitask.md)."""
    from retouch.train.multitask import MultitaskTrainConfig, training_labels

    assert training_labels(MultitaskTrainConfig(data="x", tasks=("blur", "sharpen"))) == (None, "blur", "sharpen")
    assert training_labels(MultitaskTrainConfig(data="x", tasks=("sharpen",), identity_examples=False)) == ("sharpen",)


def test_task_weights_set_each_tasks_share_of_the_draws(tiny_dataset):
    """--task-weights inpaint=3: inpainting is drawn three times as often as each other task; without weights
    the draws are the uniform ones of §4.1, identical to before the option existed (same rng calls)."""
    import numpy as np

    from retouch.errors import RetouchError
    from retouch.train.multitask import (MultitaskTrainConfig, TrainingSet, draw_examples, parse_task_weights,
                                         training_label_weights, training_labels)

    tasks = ("blur", "grain", "colour", "inpaint", "sharpen")
    assert parse_task_weights("inpaint=3, sharpen=0.5", tasks) == (1.0, 1.0, 1.0, 3.0, 0.5)
    assert parse_task_weights("", tasks) is None
    for bad in ("inpaint", "inpaint=0", "inpaint=-1", "inpaint=x", "relight=2", "inpaint=nan"):
        with pytest.raises(RetouchError, match="--task-weights"):
            parse_task_weights(bad, tasks)
    with pytest.raises(RetouchError, match="--task-weights"):
        MultitaskTrainConfig(data=str(tiny_dataset), task_weights=(1.0, 2.0)).validate()

    config = MultitaskTrainConfig(data="x", identity_examples=True, task_weights=(1.0, 1.0, 1.0, 3.0, 1.0))
    labels, weights = training_labels(config), training_label_weights(config)
    assert labels == (None, *tasks) and weights == (1.0, 1.0, 1.0, 1.0, 3.0, 1.0)
    data = TrainingSet(tiny_dataset)
    draws = draw_examples(data, labels, 4000, np.random.default_rng(0), weights=weights)
    share = {label: sum(d[1] == label for d in draws) / len(draws) for label in labels}
    assert abs(share["inpaint"] - 3 / 8) < 0.03 and all(abs(share[x] - 1 / 8) < 0.02 for x in labels if x != "inpaint")
    uniform = MultitaskTrainConfig(data="x")
    assert training_label_weights(uniform) is None
    assert draw_examples(data, labels, 50, np.random.default_rng(1)) == \
        draw_examples(data, labels, 50, np.random.default_rng(1), weights=None)


@pytest.fixture(scope="module")
def combined_dataset(tmp_path_factory):
    from retouch.data.compositing import CompositingConfig, build_compositing_dataset

    folder = tmp_path_factory.mktemp("multitask-combined") / "data"
    build_compositing_dataset(CompositingConfig(world_scenes=10, dead_leaves=4, photos=False, crop=32, grain_samples=4,
                                                split=(0.8, 0.1, 0.1), train_combinations=3), folder)
    return folder


def test_combination_draws_turn_on_every_stored_task_at_once(tiny_backbones, combined_dataset, tiny_dataset):
    """--combination-share s: that share of draws is one of the crop's stored multi-task examples; the example's
    vector turns on exactly its tasks (its grain radius, the crop's sliders), the input is masked and the hole
    given iff inpainting is among them, the reference iff colour; the cache gives what the per-example path
    gives; s = 0 draws what the trainer drew before the option; a dataset without them is refused."""
    import numpy as np

    from retouch.train.multitask import MultitaskTrainConfig, TrainingSet, draw_examples, training_example, training_labels

    data = TrainingSet(combined_dataset)
    labels = training_labels(MultitaskTrainConfig(data="x"))
    draws = draw_examples(data, labels, 2000, np.random.default_rng(0), combination_share=0.4)
    combos = [d for d in draws if str(d[1]).startswith("combo")]
    assert abs(len(combos) / len(draws) - 0.4) < 0.04 and {d[1] for d in combos} == {"combo0", "combo1", "combo2"}
    assert draw_examples(data, labels, 50, np.random.default_rng(1)) == \
        draw_examples(data, labels, 50, np.random.default_rng(1), combination_share=0.0)

    order = ("blur", "grain", "colour", "inpaint", "sharpen")
    picked = []
    for index in range(len(data)):
        for k, combination in enumerate(data.params[index]["combinations"]):
            source, target, reference, keep, vector = training_example(data, (index, f"combo{k}", None))
            tasks = combination["tasks"]
            assert vector.active == tuple(int(task in tasks) for task in order)
            assert torch.equal(target, data.image(f"combo{k}", index))
            assert (reference is not None) == ("colour" in tasks) and (keep is not None) == ("inpaint" in tasks)
            assert vector.grain == (combination["grain"] if "grain" in tasks else None)
            if "blur" in tasks:
                assert vector.blur == data.params[index]["blur"]
            if len(picked) < 6 and ("inpaint" in tasks or "colour" in tasks or not picked):
                picked.append((index, f"combo{k}", None))
    assert any("inpaint" in data.params[i]["combinations"][int(l[5:])]["tasks"] for i, l, _ in picked)

    torch.manual_seed(0)
    model = MultitaskModel.from_backbone(tiny_backbones["tiny-sd"])
    assert_cache_gives_the_per_example_path(model, data, picked)

    with pytest.raises(RetouchError, match="--train-combinations"):
        MultitaskTrainConfig(data=str(tiny_dataset), combination_share=0.3).validate()
    with pytest.raises(RetouchError, match="drop --tasks"):
        MultitaskTrainConfig(data=str(combined_dataset), combination_share=0.3, tasks=("blur", "grain")).validate()


def test_a_pixel_run_trains_on_combinations(combined_dataset, tmp_path, monkeypatch):
    from retouch.networks import multitask as networks
    from retouch.train.multitask import MultitaskTrainConfig, train_multitask

    monkeypatch.setattr(networks, "PIXEL_CHANNELS", (8, 16))
    config = MultitaskTrainConfig(data=str(combined_dataset), output_dir=str(tmp_path / "run"), steps=3, batch=6,
                                  ema_decay=None, space="pixel", prediction="residual", crop=16, hole_channel=True,
                                  identity_examples=False, combination_share=0.5)
    _, report = train_multitask(config, progress=False)
    assert report["steps"] == 3 and math.isfinite(report["final_loss"])


def test_film_block_conditioning_scales_and_shifts_every_block_and_is_saved(tmp_path):
    """--block-conditioning film: the t + C embedding gives each ResNet block a scale and a shift (twice the
    channels of the additive default), the choice travels in the saved U-Net config, and C moves the output."""
    from retouch.train.multitask import MultitaskTrainConfig

    torch.manual_seed(0)
    spec = MultitaskSpec(latent_channels=3, space="pixel", prediction="residual")
    add = MultitaskModel.for_pixels(spec, channels=(8, 16), cross_attention_dim=16)
    film = MultitaskModel.for_pixels(spec, channels=(8, 16), cross_attention_dim=16, block_conditioning="film")
    block = film.denoiser.unet.down_blocks[0].resnets[0]
    assert block.time_emb_proj.out_features == 2 * block.conv1.out_channels
    assert add.denoiser.unet.down_blocks[0].resnets[0].time_emb_proj.out_features == block.conv1.out_channels
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    source, small, c = conditioning_inputs(film, images, EditingVector(blur=0.2))
    other = EditingVector(sharpen=(2.5, 0.05)).as_tensor()[None].expand(2, -1)
    noisy, t = torch.randn_like(images), torch.tensor([500, 20])
    with torch.no_grad():
        first = film.denoiser(noisy, t, source, small, c)
        assert not torch.allclose(film.denoiser(noisy, t, source, small, other), first)
        film.save(tmp_path / "film")
        loaded = MultitaskModel.load(tmp_path / "film")
        assert loaded.denoiser.unet.config.resnet_time_scale_shift == "scale_shift"
        torch.testing.assert_close(loaded.denoiser(noisy, t, source, small, c), first)
    with pytest.raises(RetouchError, match="block conditioning"):
        MultitaskModel.for_pixels(spec, channels=(8, 16), block_conditioning="gate")
    with pytest.raises(RetouchError, match="pixel U-Nets"):
        MultitaskTrainConfig(data="x", block_conditioning="film").validate()


def test_the_hybrid_conditioning_sends_c_both_through_f_theta_and_onto_the_input(tiny_backbones):
    """cross-attention+concat (not the paper): C maps on the input as Palette++ has them, and f_θ's context in
    cross-attention as ours has it; Palette++ alone gives cross-attention a constant zero context."""
    spec = MultitaskSpec(conditioning="cross-attention+concat")
    model = MultitaskModel.from_backbone(tiny_backbones["tiny-sd"], spec)
    assert spec.input_channels == MultitaskSpec(conditioning="concat").input_channels == 2 * 4 + 3 + 9
    vector = EditingVector(sharpen=(2.0, 0.02)).as_tensor()[None]
    assert torch.equal(model.denoiser.context(vector), model.denoiser.mapping(vector))
    palette = MultitaskModel.from_backbone(tiny_backbones["tiny-sd"], MultitaskSpec(conditioning="concat"))
    assert not palette.denoiser.context(vector).any()


def test_the_shipped_model_is_the_default_and_its_blur_slider_blurs_an_unseen_photograph(tmp_path, capsys):
    """``--method multitask`` without ``--model`` edits with the shipped model (assets/mini/multitask), and on a
    crop of a photograph no model trained on (scikit-image's chelsea: the compositing data's held-out 'photos'
    split) β = 0.9 leaves less gradient energy than β = 0.2, which leaves less than the input, as motion blur does."""
    import numpy as np
    from helpers import run_cli
    from skimage import data

    from retouch.imageio import load_image, save_image
    from retouch.metrics.control import gradient_energy
    from retouch.methods.multitask import SHIPPED_MODEL

    assert (SHIPPED_MODEL / "multitask.json").is_file()
    image = tmp_path / "chelsea.png"
    save_image(data.chelsea()[100:164, 150:214].astype(np.float32) / 255, image)
    energies = {}
    for beta in ("0.2", "0.9"):
        code, _, err = run_cli(["edit", image, "-o", tmp_path / f"blur{beta}.png", "--method", "multitask",
                                "--blur", beta, "--num-steps", "10"], capsys)
        assert code == 0, err
        energies[beta] = float(gradient_energy(torch.from_numpy(load_image(tmp_path / f"blur{beta}.png")).permute(2, 0, 1)[None]))
    source = float(gradient_energy(torch.from_numpy(load_image(image)).permute(2, 0, 1)[None]))
    assert energies["0.9"] < 0.8 * energies["0.2"] and energies["0.2"] < source


def test_the_shipped_model_sharpens_and_fills_holes_in_a_held_out_world_scene(tmp_path, capsys):
    """Session 9's shipped model learnt the two local tasks: on a mini-world test scene (the split it never
    trained on) --sharpen 3,0.02 raises the gradient energy well above the input's, and --mask fills the hole
    closer to the original pixels than the grey the network is given there (docs/multitask.md)."""
    import numpy as np
    from helpers import run_cli

    from retouch.imageio import load_image, save_image
    from retouch.metrics.control import gradient_energy
    from retouch.world import World

    world = World(seed=0, size=64)
    index = next(i for i in range(100, 400) if world.split(i) == "test")
    original = world.scene(index)[1].image.astype(np.float32)
    image, mask = tmp_path / "scene.png", tmp_path / "hole.png"
    save_image(original, image)
    hole = np.zeros((64, 64), np.float32)
    hole[20:36, 24:44] = 1.0
    save_image(np.repeat(hole[..., None], 3, axis=2), mask)
    energy = lambda array: float(gradient_energy(torch.from_numpy(array).permute(2, 0, 1)[None]))  # noqa: E731
    code, _, err = run_cli(["edit", image, "-o", tmp_path / "sharp.png", "--method", "multitask", "--sharpen", "3,0.02",
                            "--num-steps", "10"], capsys)
    assert code == 0, err
    assert energy(load_image(tmp_path / "sharp.png")) > 1.5 * energy(original)
    code, _, err = run_cli(["edit", image, "-o", tmp_path / "filled.png", "--method", "multitask", "--mask", mask,
                            "--num-steps", "10"], capsys)
    assert code == 0, err
    inside = hole.astype(bool)
    filled_error = np.abs(load_image(tmp_path / "filled.png")[inside] - original[inside]).mean()
    grey_error = np.abs(0.5 - original[inside]).mean()  # the zeroed hole in [-1, 1] is mid-grey
    assert filled_error < 0.9 * grey_error  # session 7's model, which copied the hole: 0.998 of it


def test_the_hole_channel_is_the_mask_in_training_and_editing_alike(tiny_dataset):
    """--hole-channel (not the paper): the trainer's cached hole map, windowed, equals what an edit builds from
    the mask, is zero unless inpainting is on, and reaches the output."""
    from retouch.networks.multitask import side_inputs
    from retouch.train.multitask import LatentCache, TrainingSet, target_name, training_example

    data = TrainingSet(tiny_dataset)
    model = _pixel_model(hole_channel=True)
    assert model.denoiser.unet.config.in_channels == _pixel_model().denoiser.unet.config.in_channels + 1
    draws = [(1, "inpaint", None, (0, 8)), (2, "blur", None, (16, 16)), (3, "inpaint", None, (8, 0))]
    cut = LatentCache(model, data, {target_name(label, r) for _, label, r, _ in draws}, crop=16,
                      hole_channel=True).batch(draws, labels=True)
    assert cut[2].shape == (3, 4, 16, 16)
    for k, draw in enumerate(draws):
        source, _, reference, keep, vector = training_example(data, draw)
        top, left = draw[3]
        _, side, _ = conditioning_inputs(model, source[None], vector, None, None if keep is None else keep[None])
        torch.testing.assert_close(cut[2][k], side[0][:, top:top + 16, left:left + 16])
        hole = cut[2][k, 3]
        if draw[1] == "inpaint":
            assert torch.equal(hole, data.image("mask", draw[0])[0, top:top + 16, left:left + 16])
        else:
            assert hole.abs().sum() == 0
    assert torch.equal(side_inputs(_pixel_model().spec, cut[2][:, :3], EditingVector(inpaint=True), None), cut[2][:, :3])
    with pytest.raises(RetouchError, match="side-condition"):
        model.denoiser(cut[1], torch.tensor([10, 10, 10]), cut[1], cut[2][:, :3], cut[3])
    weight = model.denoiser.unet.conv_in.weight.data
    weight[:, 3 + 3 + 3] = 0.5  # the hole channel (after x_t, z_A, the reference)
    with torch.no_grad():
        with_hole = model.denoiser(cut[1], torch.tensor([10, 10, 10]), cut[1], cut[2], cut[3])
        without = model.denoiser(cut[1], torch.tensor([10, 10, 10]), cut[1],
                                 torch.cat([cut[2][:, :3], torch.zeros_like(cut[2][:, 3:])], 1), cut[3])
    assert (with_hole[0] - without[0]).abs().max() > 1e-4 and torch.equal(with_hole[1], without[1])


def test_model_comparisons_are_paired_tests_on_the_same_crops():
    """compare_models reads "a beats b" per task from per-crop L1 (Wilcoxon, paired): a clear win holds, a clear
    loss does not hold, equal crops cannot be told apart, and a task missing a row is left out."""
    from retouch.train.evaluate_multitask import compare_models, multitask_table

    base = [0.05 + 0.001 * k for k in range(20)]
    rows = [{"task": "blur", "model": "ours", "l1": 0, "l1_per_crop": [v - 0.01 for v in base]},
            {"task": "blur", "model": "copy", "l1": 0, "l1_per_crop": base},
            {"task": "grain", "model": "ours", "l1": 0, "l1_per_crop": [v + 0.01 for v in base]},
            {"task": "grain", "model": "copy", "l1": 0, "l1_per_crop": base},
            {"task": "colour", "model": "ours", "l1": 0, "l1_per_crop": base},
            {"task": "colour", "model": "copy", "l1": 0, "l1_per_crop": base},
            {"task": "sharpen", "model": "ours", "l1": 0, "l1_per_crop": base}]
    found = {c["task"]: c for c in compare_models(rows, "ours", "copy", ["blur", "grain", "colour", "sharpen"])}
    assert set(found) == {"blur", "grain", "colour"}
    assert found["blur"]["verdict"] == "holds" and found["blur"]["p"] < 1e-3
    assert found["grain"]["verdict"] == "does not hold"
    assert found["colour"]["verdict"] == "cannot be told apart"
    assert found["blur"]["difference"].estimate == pytest.approx(-0.01)
    table = multitask_table([{**rows[1], "n": 20, "ssim": 0.5, "lpips": None, "kid_x1e3": None}], "x")
    assert "0.0595 [" in table  # the mean L1 with its bootstrap interval
