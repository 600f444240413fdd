"""A pair-aware prior: the mini U-Net fine-tuned on side-by-side renders of mini-world pairs.

The portrait paper's data generation (MCDM, Chen et al. 2024, §3.2, Eq. 2; :mod:`retouch.data.pairs`)
denoises *one* latent of width 2w under a shared prompt p ("the same … on the left and right") and the
source / target prompts p_a / p_b masked to the left / right half. It relies on Stable Diffusion
already knowing side-by-side canvases of one subject twice. The shipped mini U-Net never saw one (it
was trained on single 64² scenes only): on a 64×128 canvas it paints one object, often across the
seam, and 3 of 32 generated hat pairs pass the pair filter. This module gives the mini model that
prior by fine-tuning its U-Net on what Eq. 2 asks for:

* images: the 64×128 render (:func:`retouch.world.render_pair`) of a mini-world pair whose halves are
  the same object over one background, the left the source and the right the target of an edit
  direction of :data:`retouch.data.pairs.DIRECTIONS` (hat: none → hat, striped: plain → striped), or
  an identical pair (no change) — never mirrored, since Eq. 2 always puts p_a left and p_b right;
* captions: exactly the strings ``retouch data pairs`` feeds Eq. 2 (:func:`retouch.world.pair_caption`):
  the shared prompt p, or the source prompt p_a, or the target prompt p_b, each a third of the time,
  and the empty prompt at :attr:`PairPriorConfig.caption_dropout` for classifier-free guidance. The
  halves always agree with where Eq. 2 uses each prompt (p_a's prediction is kept on the left only,
  where the image is the source; p_b's on the right, where it is the target);
* loss: the mini U-Net's own ε-MSE, weighted towards object pixels and by Min-SNR-γ
  (:func:`retouch.train.mini.weighted_diffusion_loss`), on the frozen VAE's latents and the frozen text
  encoder's states.

The result is a complete diffusers backbone folder (``output_dir/final``: the initial VAE, text
encoder, tokenizer and scheduler, the fine-tuned EMA U-Net) that ``load_backbone`` and
``retouch data pairs --model`` accept.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from retouch.data.pairs import DIRECTIONS
from retouch.distributed import is_main_process, wait_for_everyone
from retouch.errors import RetouchError
from retouch.options import check_options, option
from retouch.train.loop import LoopConfig, train

#: Which of a pair's prompts captions a training image (the p, p_a, p_b of Eq. 2), or "" (dropped).
CAPTION_KINDS = ("shared", "source", "target")
#: The kind of an identical pair (both halves the source object), next to the edit directions.
IDENTICAL = "identical"
#: Pair indices are drawn from here on (train split only): far from the first indices that
#: ``retouch data pairs`` generates from, so the prior never saw the ground truth of those prompts.
FIRST_INDEX = 1_000_000


@dataclass
class PairPriorConfig:
    output_dir: str = "out/pair-prior"
    init: str = "mini"  #: the backbone whose U-Net is fine-tuned (load_backbone: name, folder or file)
    directions: tuple[str, ...] = ("hat", "striped")  #: edit directions of DIRECTIONS, drawn uniformly
    #: share of identical pairs (no change; Eq. 2 with p_a = p_b)
    identical_rate: float = option(0.2, at_least=0, below=1)
    #: empty captions, for classifier-free guidance (as the mini U-Net)
    caption_dropout: float = option(0.1, at_least=0, below=1)
    #: ε-loss weight added on object pixels (:func:`retouch.train.mini.unet_loss_weights`); 0 = plain MSE
    object_weight: float = option(4.0, at_least=0)
    #: Min-SNR-γ (Hang et al. 2023) as the mini U-Net was trained; 0 = off
    min_snr_gamma: float = option(5.0, at_least=0)
    steps: int = option(1200, at_least=1)
    batch: int = option(16, at_least=1)
    #: near the mini U-Net's 5e-4 from scratch: at 1e-4 the side-by-side layout was not learnt in
    #: 1,050 steps (8 % of hat pairs kept, the base 9 %); 4e-4 for 1,200 steps gave twins, 33 % kept
    learning_rate: float = option(4e-4, above=0)
    ema_decay: float | None = 0.999  #: the exported U-Net is the EMA of the weights
    mixed_precision: str = "no"
    seed: int = 0  #: world seed of the pairs and seed of the loop's noise

    def validate(self) -> None:
        check_options(self)
        unknown = sorted(set(self.directions) - set(DIRECTIONS))
        if unknown or not self.directions:
            raise RetouchError(f"unknown or no edit direction(s) {', '.join(unknown)}; "
                               f"choose from {', '.join(DIRECTIONS)}")


class PairDraw(NamedTuple):
    """Which pair a training example shows and which of its prompts captions it."""

    index: int  # a train-split pair index of the world (``World.pair``)
    kind: str  # an edit direction of DIRECTIONS or IDENTICAL
    caption_kind: str  # one of CAPTION_KINDS, or "" when the caption is dropped


class PairSample(NamedTuple):
    """One training example: the side-by-side render, its object mask and caption, and what it is."""

    image: torch.Tensor  # (3, H, 2W) in [−1, 1]: left = source, right = target
    objects: torch.Tensor  # (1, H, 2W) 1 on object (body ∪ hat) pixels of either half
    caption: str
    draw: PairDraw
    specs: tuple  # (left SceneSpec, right SceneSpec)


def draw_pairs(world, config: PairPriorConfig, rng: np.random.Generator, count: int) -> list[PairDraw]:
    """``count`` draws with ``rng``: a train-split pair, its kind and its caption kind."""
    draws = []
    while len(draws) < count:
        index = int(rng.integers(FIRST_INDEX, 2**31 - 1))
        if world.split(index) != "train":
            continue
        identical = rng.random() < config.identical_rate
        kind = IDENTICAL if identical else config.directions[int(rng.integers(len(config.directions)))]
        dropped = rng.random() < config.caption_dropout
        draws.append(PairDraw(index, kind, "" if dropped else CAPTION_KINDS[int(rng.integers(len(CAPTION_KINDS)))]))
    return draws


def pair_sample(world, draw: PairDraw) -> PairSample:
    """The render of ``draw``'s pair with the caption ``retouch data pairs`` would use for that prompt."""
    change, fixed = (None, {}) if draw.kind == IDENTICAL else DIRECTIONS[draw.kind]
    left, right, rendered, prompts = world.pair(draw.index, change, **fixed)
    text = {"": "", "shared": prompts.shared, "source": prompts.left, "target": prompts.right}[draw.caption_kind]
    image = torch.from_numpy(rendered.image).permute(2, 0, 1).float() * 2 - 1
    objects = torch.from_numpy(rendered.masks.any(axis=0)).float()[None]
    return PairSample(image, objects, text, draw, (left, right))


@torch.no_grad()
def _encode(backbone, images: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and text states from the frozen VAE and text encoder, on their own device.

    Not ``Backbone.encode_*``: those follow the U-Net's device, which ``accelerate`` may move to a GPU
    while the frozen parts stay where they are.
    """
    vae, encoder = backbone.vae, backbone.text_encoder
    latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = (latents - shift) * vae.config.scaling_factor
    tokenizer = backbone.tokenizer
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return latents.float().cpu(), encoder(ids.to(encoder.device))[0].float().cpu()


def train_pair_prior(config: PairPriorConfig, *, backbone=None, progress: bool = True):
    """Fine-tune the U-Net of ``config.init`` (or of ``backbone``, left unchanged) on side-by-side pairs.

    Returns (the fine-tuned backbone, the report) and saves the backbone to ``output_dir/final``.
    """
    from retouch.backbone import load_backbone
    from retouch.train.mini import weighted_diffusion_loss
    from retouch.world import World

    config.validate()
    output = Path(config.output_dir)
    if is_main_process():
        output.mkdir(parents=True, exist_ok=True)
        (output / "run_config.json").write_text(json.dumps(asdict(config), indent=2))
    base = (backbone or load_backbone(config.init)).eval()
    if base.family != "sd" or base.schedule.prediction_type != "epsilon":
        raise RetouchError(f"the pair prior fine-tunes an ε-prediction Stable Diffusion 1.x-style U-Net; "
                           f"'{config.init}' is {base.family} / {base.schedule.prediction_type}")
    prior = dataclasses.replace(base, unet=copy.deepcopy(base.unet).requires_grad_(True))
    side = base.unet.config.sample_size * base.vae_scale_factor
    world = World(seed=config.seed, size=side)
    schedule = base.schedule

    def make_batch(step, rank, world_size):
        rng = np.random.default_rng([config.seed, step, rank])
        samples = [pair_sample(world, draw) for draw in draw_pairs(world, config, rng, config.batch)]
        latents, states = _encode(prior, torch.stack([s.image for s in samples]), [s.caption for s in samples])
        return latents, states, torch.stack([s.objects for s in samples])

    def loss_fn(model, batch, generator):
        return weighted_diffusion_loss(model, batch, generator, schedule, config.object_weight,
                                       config.min_snr_gamma), {}

    loop = LoopConfig(output_dir=config.output_dir, max_steps=config.steps, learning_rate=config.learning_rate,
                      warmup_steps=min(100, config.steps // 10), ema_decay=config.ema_decay,
                      mixed_precision=config.mixed_precision, checkpoint_every=250, seed=config.seed)
    result = train(prior.unet, loss_fn, make_batch, loop, batch_size=config.batch, progress=progress)
    prior.unet.eval().requires_grad_(False)
    prior = dataclasses.replace(prior, source=str(output / "final"))
    report = {"config": asdict(config), "init": base.source, "image_size": [side, 2 * side], "steps": result.steps,
              "seconds": result.seconds, "samples_per_second": result.samples_per_second,
              "final_loss": result.losses[-1][1] if result.losses else None, "losses": result.losses,
              "threads": torch.get_num_threads()}
    if is_main_process():  # every process holds the same synchronised weights
        prior.save(output / "final")
        (output / "report.json").write_text(json.dumps(report, indent=2))
    wait_for_everyone()
    return prior, report
