"""Measure the shipped mini models the way the issue asks, on held-out scenes only.

* autoencoder: reconstruction PSNR on held-out (test-split) scenes and on real photographs that ship
  with scikit-image (never seen in training);
* judge: zero-shot accuracy per attribute on held-out single-object scenes, prompting with the
  one-attribute phrasings the judge was trained on (:func:`zero_shot_prompts`);
* U-Net: generate from held-out captions, then let the judge classify each sample's shape, colour,
  pattern and background; accuracy = fraction matching the caption.

``retouch eval mini`` (or ``retouch train mini --stages evaluate``) writes the
numbers to ``evaluation.json`` next to the weights and into the model card.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from retouch.world.heldout import (  # noqa: F401  (re-exported: older callers import them from here)
    JUDGED_ATTRIBUTES,
    PHOTOGRAPHS,
    HeldOutScenes,
    held_out_scenes,
    photographs,
    zero_shot_prompts,
)


def _labels(specs, attribute: str) -> list[str]:
    if attribute == "background":
        return [spec.background for spec in specs]
    return [getattr(spec.objects[0], attribute) for spec in specs]


# ---------------------------------------------------------------------------------------------
# Autoencoder
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def reconstruction_psnr(vae, images01: torch.Tensor, batch: int = 32) -> list[float]:
    """PSNR (dB, peak 1) of decode(mode(encode(x))) per image."""
    from retouch.metrics import psnr

    values = []
    for start in range(0, len(images01), batch):
        chunk = images01[start:start + batch]
        latents = vae.encode(chunk * 2 - 1).latent_dist.mode()
        decoded = ((vae.decode(latents).sample + 1) / 2).clamp(0, 1)
        values += [float(psnr(d, x)) for d, x in zip(decoded, chunk)]
    return values


@torch.no_grad()
def decode_splices(vae, scenes: HeldOutScenes, kind: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's reading of latent splices of held-out scene pairs, and the pixel splices of the same cells.

    Pair k is scene k and scene ``P + k`` (P = half the scenes). ``kind`` 1: a straight cut between the two
    scenes (a two-background image, as a ramp edit map makes); 2: the second scene's objects pasted into
    the first (latent surgery). Posterior modes, as the editing methods encode; the cuts' places are drawn
    from ``seed``. Both (P, 3, H, W) in [0, 1].
    """
    from retouch.train.mini import latent_composites

    half = len(scenes.images) // 2
    first, second = scenes.images[:half] * 2 - 1, scenes.images[half:2 * half] * 2 - 1
    latents, target = latent_composites(vae, first, second, scenes.object_masks[half:2 * half],
                                        np.random.default_rng(seed), sample=False, kinds=(kind,))
    return (vae.decode(latents).sample.clamp(-1, 1) + 1) / 2, (target + 1) / 2


def splice_psnr(vae, scenes: HeldOutScenes, kind: int, seed: int = 0) -> float:
    """Mean PSNR (dB, peak 1) of the pairs' decoded latent splices against their pixel splices
    (:func:`decode_splices`). A decoder that only knows whole scenes scores far below its plain
    reconstruction PSNR here."""
    from retouch.metrics import psnr

    return float(psnr(*decode_splices(vae, scenes, kind, seed)).mean())


def evaluate_vae(vae, world, count: int = 256) -> dict:
    scenes = held_out_scenes(world, count, single_object=False)
    scene_psnr = reconstruction_psnr(vae, scenes.images)
    photos = photographs()
    photo_psnr = dict(zip(photos, reconstruction_psnr(vae, torch.stack(list(photos.values())))))
    return {"downsampling_factor": 2 ** (len(vae.config.block_out_channels) - 1),
            "held_out_scenes": count, "scene_psnr_mean": float(np.mean(scene_psnr)),
            "splice_psnr_mean": {"straight_cut": splice_psnr(vae, scenes, 1),
                                 "object_paste": splice_psnr(vae, scenes, 2)},
            "photo_psnr_mean": float(np.mean(list(photo_psnr.values()))),
            "photo_psnr": {k: round(v, 2) for k, v in photo_psnr.items()}, "photo_size": 128}


# ---------------------------------------------------------------------------------------------
# Judge
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def classify(judge, images01: torch.Tensor, attribute: str, vocabularies: dict | None = None) -> list[str]:
    """Zero-shot: the value whose prompt embedding is most similar to each image's embedding; the
    candidates are ``vocabularies[attribute]`` (a world's words; every word by default)."""
    prompts = zero_shot_prompts(attribute, vocabularies)
    text = torch.nn.functional.normalize(judge.encode_texts(list(prompts.values())), dim=-1)
    image = torch.nn.functional.normalize(judge.encode_images(images01), dim=-1)
    values = list(prompts)
    return [values[i] for i in (image @ text.T).argmax(dim=-1).tolist()]


def judge_accuracy(judge, images01: torch.Tensor, specs, vocabularies: dict | None = None) -> dict[str, float]:
    return {attribute: float(np.mean([p == t for p, t in zip(classify(judge, images01, attribute, vocabularies),
                                                                  _labels(specs, attribute))]))
            for attribute in JUDGED_ATTRIBUTES}


def evaluate_judge(judge, world, count: int = 500) -> dict:
    scenes = held_out_scenes(world, count)
    vocabularies = world.vocabularies
    return {"held_out_single_object_scenes": count,
            "zero_shot_accuracy": judge_accuracy(judge, scenes.images, scenes.specs, vocabularies),
            "chance": {a: 1 / len(zero_shot_prompts(a, vocabularies)) for a in JUDGED_ATTRIBUTES}}


# ---------------------------------------------------------------------------------------------
# Text-to-image U-Net
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(backbone, captions: list[str], *, num_steps: int = 25, guidance_scale: float = 5.0, seed: int = 0,
             batch: int = 32, prior=None) -> torch.Tensor:
    """Text-to-image samples (N, 3, H, W) in [0, 1] with DDIM + classifier-free guidance.

    ``prior``: a :class:`retouch.terminal_prior.TerminalPrior` to start from x_T = √ᾱ_T·m(c) + √(1−ᾱ_T)·ε̄
    (ε̄: ε with its channel means removed) instead of ε; the same ε either way, so the two starts differ only
    in their channel means."""
    from retouch.sampling import ddim_sample, ddim_timesteps, guided_denoiser

    generator = torch.Generator().manual_seed(seed)
    prior_generator = torch.Generator().manual_seed(seed + 1)
    size = backbone.unet.config.sample_size
    timesteps = ddim_timesteps(backbone.schedule, num_steps)
    outputs = []
    for start in range(0, len(captions), batch):
        chunk = captions[start:start + batch]
        latents = torch.randn((len(chunk), backbone.latent_channels, size, size), generator=generator)
        cond = backbone.encode_text(chunk)
        if prior is not None:
            latents = prior.start(latents, cond.hidden_states, backbone.schedule.alpha(timesteps[0]), prior_generator)
        denoise = guided_denoiser(backbone.denoise, cond, backbone.encode_text([""] * len(chunk)), guidance_scale)
        latents = ddim_sample(denoise, backbone.schedule, latents, timesteps, None, num_steps=num_steps)
        outputs.append(((backbone.decode_latents(latents) + 1) / 2).clamp(0, 1))
    return torch.cat(outputs)


def probe_accuracy(probes, images01: torch.Tensor, specs) -> dict[str, float]:
    """Fraction of images whose main-object attributes the pixel probes read as in ``specs``."""
    from retouch.world import attributes

    predicted = probes.predict(images01)
    truth = [attributes(spec) for spec in specs]
    return {name: float(np.mean([int(p) == t[name] for p, t in zip(predicted[name].tolist(), truth)]))
            for name in JUDGED_ATTRIBUTES if name in probes.attributes}


def evaluate_generation(backbone, judge, world, count: int = 200, probes=None, prior=None,
                        **sampling) -> tuple[dict, torch.Tensor]:
    """Samples for held-out captions, read by the judge (zero-shot) and, with ``probes``, by the pixel
    probes: two independent readers, so a blind spot of one cannot hide a failure.

    With a terminal ``prior`` the samples start from it (what the model's users get), and the same
    captions and noise are also sampled from N(0, I) and reported under ``from_pure_noise``."""
    scenes = held_out_scenes(world, count)
    real = judge_accuracy(judge, scenes.images, scenes.specs, world.vocabularies)

    def read(samples):
        accuracy = {"judge_accuracy_of_samples": judge_accuracy(judge, samples, scenes.specs, world.vocabularies)}
        if probes is not None:
            accuracy["probe_accuracy_of_samples"] = probe_accuracy(probes, samples, scenes.specs)
        return accuracy

    started = time.perf_counter()
    samples = generate(backbone, scenes.captions, prior=prior, **sampling)
    seconds = time.perf_counter() - started
    report = {"held_out_captions": count, "sampling": sampling or {"num_steps": 25, "guidance_scale": 5.0},
              "start": "terminal prior (retouch.terminal_prior)" if prior is not None else "pure noise",
              **read(samples), "judge_accuracy_of_real_scenes_same_captions": real,
              "seconds_per_sample": seconds / count}
    if probes is not None:
        report["probe_accuracy_of_real_scenes_same_captions"] = probe_accuracy(probes, scenes.images, scenes.specs)
    if prior is not None:
        report["from_pure_noise"] = read(generate(backbone, scenes.captions, **sampling))
    return report, samples


def evaluate_mini(models_dir: Path, *, seed: int = 0, vae_count: int = 256, judge_count: int = 500,
                  generation_count: int = 200, grid_path: Path | None = None) -> dict:
    """All three evaluations on the exported models in ``models_dir`` (``backbone/`` + ``judge/``)."""
    from retouch.backbone import load_backbone
    from retouch.metrics import TransformersCLIPJudge
    from retouch.terminal_prior import load_terminal_prior
    from retouch.world import World

    models_dir = Path(models_dir)
    world = World(seed=seed, size=64)
    backbone = load_backbone(str(models_dir / "backbone"))
    judge = TransformersCLIPJudge(models_dir / "judge")
    report = {"vae": evaluate_vae(backbone.vae, world, vae_count), "judge": evaluate_judge(judge, world, judge_count)}
    probes = None
    if (models_dir / "probes" / "probes.json").is_file():  # the judge's independent second reader
        from retouch.world.probe import load_probes

        probes = load_probes(models_dir / "probes")
    prior = load_terminal_prior(models_dir / "backbone")
    report["unet"], samples = evaluate_generation(backbone, judge, world, generation_count, probes=probes, prior=prior)
    if grid_path is not None:
        save_sample_grid(world, samples, grid_path)
    return report


def save_sample_grid(world, samples: torch.Tensor, path: Path, columns: int = 8, rows: int = 4) -> None:
    """Pairs of rows: held-out real scenes, then the U-Net's samples for the same captions."""
    from retouch.imageio import save_image

    rows = min(rows, -(-len(samples) // columns))
    columns = min(columns, len(samples))
    scenes = held_out_scenes(world, len(samples))
    cell, gap = 64 * 2, 2
    sheet = np.full((2 * rows * (cell + gap) + gap, columns * (cell + gap) + gap, 3), 0.15, dtype=np.float32)
    for k in range(min(columns * rows, len(samples))):
        for offset, image in enumerate((scenes.images[k], samples[k])):
            big = image.permute(1, 2, 0).numpy().repeat(2, 0).repeat(2, 1)
            y = gap + (2 * (k // columns) + offset) * (cell + gap)
            x = gap + (k % columns) * (cell + gap)
            sheet[y:y + cell, x:x + cell] = big
    save_image(sheet, path, make_parents=True)


def evaluate_and_document(models: Path | None = None, *, grid: Path | None = Path("docs/mini_samples.png"),
                          generation_count: int = 200) -> str:
    """``retouch eval mini``: :func:`evaluate_mini` on ``models`` (default: the shipped folder), its numbers
    written to ``evaluation.json`` there and into the model card. Returns the numbers as JSON text."""
    from retouch.backbone import MINI_DIR
    from retouch.train.mini import write_model_card

    models = Path(models or MINI_DIR)
    report = evaluate_mini(models, grid_path=grid, generation_count=generation_count)
    (models / "evaluation.json").write_text(json.dumps(report, indent=2))
    write_model_card(models, MINI_MODELS_COMMAND)
    return json.dumps(report, indent=2)


#: How the shipped models were made (the Makefile's ``mini-models`` target runs exactly this).
MINI_MODELS_COMMAND = "make mini-models"
