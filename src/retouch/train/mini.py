"""Train the shipped mini models on the mini world: autoencoder, CLIP-style judge, text-to-image U-Net.

Three stages, each resumable (``retouch train mini --stage vae|clip|unet|export``):

1. ``vae`` — diffusers ``AutoencoderKL``, downsampling factor 4 (64² images → 4×16² latents),
   L1 reconstruction + a small KL term (Rombach et al. 2022 train with KL weight 1e-6 plus
   perceptual/adversarial terms we leave out at this scale). The latent scaling factor is set after
   training to 1/std of the latents, as SD's 0.18215 was.
2. ``clip`` — transformers ``CLIPModel`` (ViT image tower on 8×8 patches, text transformer) trained
   with CLIP's symmetric contrastive loss (Radford et al. 2021) on captions that mention a random
   subset of the scene's attributes, so one-attribute prompts ("a photo of a circle") classify
   zero-shot. Its text tower conditions the U-Net; the whole model is the world's judge.
3. ``unet`` — diffusers ``UNet2DConditionModel`` on the frozen VAE latents and frozen per-token text
   states, ε-prediction with SD's scaled-linear schedule, captions dropped 10 % of the time for
   classifier-free guidance (Ho & Salimans 2022); the ε-MSE is weighted towards object pixels and by
   Min-SNR-γ (:func:`unet_loss_weights`).

``export`` writes a diffusers Stable Diffusion folder (loadable by ``load_backbone`` like any real
checkpoint) plus the judge and a model card.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from retouch.distributed import is_main_process, wait_for_everyone
from retouch.errors import RetouchError
from retouch.options import check_options, option
from retouch.train.loop import LoopConfig, train

from retouch.backbone import MINI_DIR  # noqa: E402  (one place names the shipped folder)
TEXT_LENGTH = 32  # mini-world captions are short; CLIP's 77 would only add padding tokens
CAPTION_DROPOUT = 0.1


@dataclass
class MiniConfig:
    work_dir: str = "out/train-mini"
    seed: int = 0
    image_size: int = 64
    vae_steps: int = option(3000, at_least=1)
    vae_batch: int = option(32, at_least=1)
    vae_channels: tuple[int, ...] = (32, 64, 64)
    vae_latent_channels: int = 4
    #: mid-block self-attention in the autoencoder (the first world's); without it the autoencoder is
    #: fully convolutional, trains on ``vae_crop``² crops and decodes latent splices locally
    vae_mid_attention: bool = True
    #: "world": whole scenes of the training world; "mixture": :func:`autoencoder_batch` (v2 and v1
    #: scenes and dead leaves) in ``vae_crop``² crops
    vae_data: str = "world"
    vae_crop: int = 32
    #: dead-leaves images rendered once for the mixture (≈ 44 per second on one core)
    vae_dead_leaves: int = 1024
    vae_learning_rate: float = 1e-3
    decoder_steps: int = option(600, at_least=1)
    decoder_batch: int = option(16, at_least=1)
    #: the decoder stage adds Gaussian noise of σ ~ U(0, this) latent standard deviations to the latents it
    #: decodes, so a diffusion sample's small residual error decodes to a clean image, not to colourful
    #: speckle (docs/world_v2.md, "decoder fragility"); 0 = no noise (the first world's decoder)
    decoder_latent_noise: float = 0.0
    #: the splice stage fine-tunes the decoder stage's decoder once more, for pasted objects (issue 19's paste
    #: splice target; docs/world_v2.md, "A decoder for pastes"): MSE (the PSNR's own error) instead of L1,
    #: half of the splices pastes, less latent noise, and rows of the autoencoder's own crop mixture so photo
    #: tiles keep what the autoencoder stage learnt. 0 steps = no such stage (the first world's recipe).
    splice_steps: int = option(0, at_least=0)
    splice_latent_noise: float = option(0.25, at_least=0)
    splice_learning_rate: float = 6e-4
    #: rows per step from :func:`autoencoder_batch` (plain reconstructions of 32² crops) besides the splices
    splice_mixture_rows: int = option(4, at_least=0)
    clip_steps: int = option(3000, at_least=1)
    clip_batch: int = option(128, at_least=1)
    judge_steps: int = option(1000, at_least=1)
    judge_batch: int = option(64, at_least=1)
    unet_steps: int = option(6000, at_least=1)
    unet_batch: int = option(32, at_least=1)
    unet_channels: tuple[int, ...] = (64, 128, 128)
    #: cross-attention per U-Net level, top (full latent resolution) first
    unet_attention: tuple[bool, ...] = (True, True, False)
    unet_learning_rate: float = 5e-4
    #: training scenes pre-rendered and pre-encoded once (``data/latent_shards``); 0 renders and encodes
    #: every batch anew, as the first world's U-Net was trained
    unet_shards: int = 0
    #: ε-loss weight added inside object masks (0 = plain MSE); see :func:`unet_loss_weights`.
    unet_object_weight: float = option(4.0, at_least=0)
    #: Min-SNR-γ timestep weighting (Hang et al. 2023); 0 = uniform weights.
    unet_min_snr_gamma: float = option(5.0, at_least=0)
    #: offset noise (Guttenberg 2023): ε gets ``this · ξ`` with one ξ ~ N(0, 1) per image and channel, so the
    #: noise's per-channel mean no longer carries the image's mean at t = T. The DDPM schedule keeps
    #: √ᾱ_T ≈ 0.07 of the signal, and on v2 the plain-ε U-Net learnt to read each scene's background
    #: from that leak, so pure-noise samples drew a random background (docs/world_v2.md, "terminal-SNR
    #: leak"). 0 = plain Gaussian ε.
    unet_offset_noise: float = option(0.0, at_least=0)
    #: Lin et al. 2024's schedule (:func:`mini_scheduler_config`): ᾱ_T = 0, v-prediction, trailing steps. The
    #: plain schedule leaks each scene's channel means into x_T, and a U-Net trained on it draws the
    #: background from the noise instead of the caption (docs/world_v2.md, "terminal-SNR leak").
    unet_zero_terminal_snr: bool = False
    #: a U-Net folder the stage starts from (a fine-tune with a fresh optimiser and learning-rate schedule,
    #: checkpointed in ``unet/from-init``); empty = a new U-Net
    unet_init: str = ""
    vocab_size: int = 1000
    #: The world profile every stage trains on (``retouch.world.PROFILES``).
    profile: str = "v1"
    #: Weight of the attribute hard-negative term (:func:`attribute_contrastive_loss`) in the clip stage;
    #: the judge stage always uses it. 0 = plain CLIP.
    clip_hard_negatives: float = 0.0


SPLICE_STEPS = 3000  # the v2 splice stage's length, chosen from benchmarks/pilot_paste_decoder.py's curves

#: How each world's shipped models are trained: MiniConfig overrides (``retouch train mini --recipe``).
#: v2 (issue 19, ``docs/world_v2.md``): a fully convolutional factor-4 autoencoder with 8 latent
#: channels on the crop mixture; CLIP with the attribute hard negatives from the start (the judge's
#: zero-shot accuracy on v2 renders reaches 0.99–1.0 in 1,200 steps); a small U-Net with attention at
#: 8² and 4² only, trained from pre-encoded shards.
MINI_RECIPES: dict[str, dict] = {
    "v1": {},
    "v2": dict(profile="v2", vae_channels=(32, 64, 64), vae_latent_channels=8, vae_mid_attention=False,
               vae_data="mixture", vae_crop=32, vae_batch=16, vae_steps=5000, decoder_steps=800, decoder_latent_noise=0.5,
               splice_steps=SPLICE_STEPS,
               clip_hard_negatives=1.0, clip_steps=1200, clip_batch=64, judge_steps=300, judge_batch=64,
               unet_channels=(32, 64, 128), unet_attention=(False, True, True), unet_learning_rate=1e-3,
               unet_batch=64, unet_steps=10000, unet_shards=65536, unet_object_weight=1.0),
}


def mini_recipe(name: str, **overrides) -> MiniConfig:
    """The MiniConfig of a world's recipe, with ``overrides`` (unknown names are an error, and so is a value
    outside what its field accepts)."""
    if name not in MINI_RECIPES:
        raise ValueError(f"unknown mini recipe '{name}'; choose one of {', '.join(MINI_RECIPES)}")
    config = MiniConfig(**{**MINI_RECIPES[name], **overrides})
    check_options(config)
    return config


# ---------------------------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------------------------
def mini_vae(channels: tuple[int, ...] = (32, 64, 64), latent_channels: int = 4, layers_per_block: int = 1,
             mid_attention: bool = True):
    """The mini autoencoder: downsampling factor 2^(len(channels)−1).

    ``mid_attention=False`` drops the mid-block self-attention, so the autoencoder is fully
    convolutional: it trains on crops and decodes latent splices locally (a cell's content does not
    depend on far-away cells).
    """
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, sample_size=64,
        layers_per_block=layers_per_block, block_out_channels=tuple(channels), norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * len(channels), up_block_types=("UpDecoderBlock2D",) * len(channels),
        mid_block_add_attention=mid_attention,
    )


def mini_clip(tokenizer):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=TEXT_LENGTH, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=128,
    )
    vision = CLIPVisionConfig(image_size=64, patch_size=8, hidden_size=128, intermediate_size=512,
                              num_hidden_layers=4, num_attention_heads=4, projection_dim=128)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=128)
    return CLIPModel(config)


def mini_unet(channels: tuple[int, ...] = (64, 128, 128), attention: tuple[bool, ...] = (True, True, False),
              latent_channels: int = 4, cross_attention_dim: int = 128, layers_per_block: int = 1):
    """The mini text-to-image U-Net; ``attention[k]`` puts cross-attention (and self-attention) at level
    ``k`` (top = full latent resolution). Attention at high resolution is most of a CPU step's cost
    (``benchmarks/unet_throughput.py``)."""
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DConditionModel(
        sample_size=16, in_channels=latent_channels, out_channels=latent_channels, layers_per_block=layers_per_block,
        block_out_channels=tuple(channels), down_block_types=down, up_block_types=up,
        cross_attention_dim=cross_attention_dim, attention_head_dim=8,
    )


def mini_scheduler_config(zero_terminal_snr: bool = False) -> dict:
    """SD's scaled-linear DDIM schedule (ε-prediction, leading spacing). With ``zero_terminal_snr`` the
    schedule of Lin et al. (2024, "Common diffusion noise schedules and sample steps are flawed"):
    betas rescaled so ᾱ_T = 0 (§3.1, Algorithm 1), v-prediction (§3.2, ε cannot be learnt at SNR 0) and
    trailing timesteps (§3.3), so sampling starts where training's noise carries no signal."""
    from diffusers import DDIMScheduler

    extra = dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing") \
        if zero_terminal_snr else {}
    return dict(DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, **extra).config)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
class WorldBatch(NamedTuple):
    images: torch.Tensor  # (B, 3, H, W) in [−1, 1]
    specs: list
    captions: list[str]
    object_masks: torch.Tensor  # (B, 1, H, W) float, 1 where any object is visible
    rng: np.random.Generator  # the step's stream, for further per-step choices (caption subsets, dropout)


def world_batch(world, step: int, rank: int, world_size: int, batch: int, seed_offset: int = 0) -> WorldBatch:
    """Training scenes for one step on one process.

    Scene indices come from a per-step stream over the training split only, so batches are a pure
    function of (step, rank) and never show held-out scenes.
    """
    rng = np.random.default_rng([seed_offset, step, rank])
    specs, images, captions, masks = [], [], [], []
    while len(specs) < batch:
        index = int(rng.integers(0, 2**31 - 1))
        if world.split(index) != "train":
            continue
        spec, rendered, caption = world.scene(index)
        specs.append(spec)
        captions.append(caption)
        images.append(rendered.image)
        masks.append(rendered.masks.any(axis=0))
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() * 2 - 1
    object_masks = torch.from_numpy(np.stack(masks)).float().unsqueeze(1)
    return WorldBatch(tensor, specs, captions, object_masks, rng)


@dataclass
class AutoencoderSources:
    """What the autoencoder learns to reconstruct: the v2 world (most rows), the v1 world (several
    objects, every colour and pattern: PIXELS composites and portrait pairs need them) and dead
    leaves (natural-image statistics at every scale, for photographs, which stay unseen)."""

    v2: object
    v1: object
    dead_leaves: np.ndarray  # (N, 64, 64, 3) float32, a pool rendered once (≈ 44 images/s)
    weights: tuple[float, float, float] = (0.55, 0.2, 0.25)


def autoencoder_sources(seed: int = 0, dead_leaves_pool: int = 1024, work_dir: Path | None = None,
                        size: int = 64) -> AutoencoderSources:
    """The autoencoder's image sources; the dead-leaves pool is cached as ``dead_leaves_{n}.npy``."""
    from retouch.data.dead_leaves import dead_leaves
    from retouch.world import World

    cache = None if work_dir is None else Path(work_dir) / f"dead_leaves_{seed}_{dead_leaves_pool}_{size}.npy"
    if cache is not None and cache.exists():
        pool = np.load(cache)
    else:
        pool = np.stack([dead_leaves(size, seed=1_000_000 * (seed + 1) + k) for k in range(dead_leaves_pool)])
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, pool)
    return AutoencoderSources(World(seed, size, profile="v2"), World(seed, size, profile="v1"), pool)


def autoencoder_batch(sources: AutoencoderSources, step: int, batch: int, *, crop: int | None = None,
                      rank: int = 0) -> torch.Tensor:
    """Training images (B, 3, crop, crop) in [−1, 1] for one step: a pure function of (step, rank).

    Each row draws its source by ``sources.weights`` (train-split scenes only), then a random crop and
    horizontal flip. A fully convolutional autoencoder learns the same from 32² crops as from whole
    64² images at a quarter of the cost.
    """
    rng = np.random.default_rng([3, step, rank])
    size = sources.dead_leaves.shape[1]
    crop = size if crop is None else crop
    kinds = rng.choice(3, size=batch, p=np.asarray(sources.weights) / sum(sources.weights))
    out = np.empty((batch, crop, crop, 3), dtype=np.float32)
    for row, kind in enumerate(kinds):
        if kind == 2:
            image = sources.dead_leaves[rng.integers(len(sources.dead_leaves))]
        else:
            world = sources.v2 if kind == 0 else sources.v1
            index = int(rng.integers(0, 2**31 - 1))
            while world.split(index) != "train":
                index = int(rng.integers(0, 2**31 - 1))
            image = world.scene(index)[1].image
        y, x = rng.integers(0, size - crop + 1, size=2)
        image = image[y:y + crop, x:x + crop]
        out[row] = image[:, ::-1] if rng.random() < 0.5 else image
    return torch.from_numpy(out).permute(0, 3, 1, 2) * 2 - 1


def partial_caption(spec, rng: np.random.Generator) -> str:
    """A caption naming a random, non-empty subset of the main object's attributes (judge training).

    "a photo of a striped object", "a photo of a red circle on grass", "a photo of a object wearing a
    hat": each attribute appears alone often enough that single-attribute prompts (the ones
    :func:`retouch.world.heldout.zero_shot_prompts` uses) classify zero-shot.
    """
    obj = spec.objects[0]
    keep = rng.random(5) < 0.5
    if not keep.any():
        keep[rng.integers(0, 5)] = True
    words = []
    if keep[0]:
        words.append(obj.colour)
    if keep[1]:
        words.append(obj.pattern)  # "plain" too, so zero-shot pattern classification has a prompt for it
    noun = obj.shape if keep[2] else "object"
    text = " ".join(["a photo of a", *words, noun])
    if keep[3] and obj.accessory != "none":
        text += f" wearing a {obj.accessory}"
    if keep[4]:
        text += f" on {spec.background}"
    return text


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------
def build_tokenizer(world, config: MiniConfig, directory: Path):
    """A BPE tokenizer on captions of the first world (every word of the vocabulary) and of ``world``, so
    that one tokenizer reads every profile's captions and sentence banks."""
    from retouch.tokenizer import build_clip_tokenizer
    from retouch.world import World

    rng = np.random.default_rng(config.seed)
    corpus = []
    worlds = [world] if world.profile.name == "v1" else [World(world.seed, world.size, profile="v1"), world]
    for source in worlds:
        for index in range(4000):
            spec, _, caption = source.scene(index, render=False)
            corpus += [caption, partial_caption(spec, rng)]
    return build_clip_tokenizer(corpus, config.vocab_size, directory, max_length=TEXT_LENGTH)


def train_vae(world, config: MiniConfig):
    vae = mini_vae(tuple(config.vae_channels), config.vae_latent_channels, mid_attention=config.vae_mid_attention)
    out = Path(config.work_dir) / "vae"
    if config.vae_data == "mixture":
        sources = autoencoder_sources(config.seed, config.vae_dead_leaves, work_dir=Path(config.work_dir),
                                      size=config.image_size)

        def make_batch(step, rank, world_size):
            if step >= 10_000_000:  # the latent-scale estimate below: whole training-world scenes
                return world_batch(world, step, rank, world_size, config.vae_batch, seed_offset=1).images
            return autoencoder_batch(sources, step, config.vae_batch, crop=config.vae_crop, rank=rank)
    else:
        def make_batch(step, rank, world_size):
            return world_batch(world, step, rank, world_size, config.vae_batch, seed_offset=1).images

    def loss_fn(model, images, generator):
        posterior = model.encode(images).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(
            posterior.mean)
        reconstruction = model.decode(latents).sample
        l1 = (reconstruction - images).abs().mean()
        kl = posterior.kl().mean() / images[0].numel()
        return l1 + 1e-6 * kl, {"l1": l1.detach()}

    loop = LoopConfig(output_dir=str(out), max_steps=config.vae_steps, learning_rate=config.vae_learning_rate,
                      warmup_steps=100, checkpoint_every=500, seed=config.seed)
    result = train(vae, loss_fn, make_batch, loop, batch_size=config.vae_batch)
    vae.eval()
    with torch.no_grad():
        images = torch.cat([make_batch(10_000_000 + i, 0, 1) for i in range(4)])
        latents = vae.encode(images).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    _save_final(out, vae)
    return vae, result


def latent_composites(vae, first: torch.Tensor, second: torch.Tensor, second_objects: torch.Tensor,
                      rng: np.random.Generator, generator: torch.Generator | None = None, *, sample: bool = True,
                      kinds: tuple[int, ...] = (0, 1, 2)) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents spliced from two images' encodings, and the pixel composite they should decode to.

    Latent surgery and PIXELS paste one image's latent cells into another's; a decoder trained only
    on whole scenes decodes such a composite as *one* scene (a water/snow splice comes out as sand).
    Each row gets one of: no splice (plain reconstruction), a straight cut at a random place and
    orientation, or ``second``'s objects (their mask, grown to whole latent cells) pasted over
    ``first``. The pixel target uses the same cells, upsampled, so the decoder learns to keep each
    cell's own content. ``kinds`` restricts the draw (0 plain, 1 cut, 2 objects). Latents are
    posterior samples as in the autoencoder stage, or the posterior mode (what editing methods
    use) when ``sample`` is false.
    """
    def encode(images):
        posterior = vae.encode(images).latent_dist
        if not sample:
            return posterior.mode()
        return posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(
            posterior.mean)

    with torch.no_grad():
        latent_first, latent_second = encode(first), encode(second)
    rows, _, side, _ = latent_first.shape
    factor = first.shape[-1] // side
    objects = torch.nn.functional.max_pool2d(second_objects, factor) > 0  # (B, 1, side, side)
    cells = torch.zeros(rows, 1, side, side, dtype=torch.bool)
    for row in range(rows):
        kind = kinds[int(rng.integers(0, len(kinds)))]
        if kind == 1:
            cut = int(rng.integers(1, side))
            grid = torch.arange(side)[:, None].expand(side, side) if rng.random() < 0.5 else \
                torch.arange(side)[None, :].expand(side, side)
            cells[row, 0] = grid >= cut if rng.random() < 0.5 else grid < cut
        elif kind == 2:
            cells[row] = objects[row]
    latents = torch.where(cells, latent_second, latent_first)
    pixels = cells.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    return latents, torch.where(pixels, second, first)


@dataclass(frozen=True)
class DecoderRecipe:
    """How one decoder fine-tune (the ``decoder`` or the ``splice_decoder`` stage) trains."""

    stage: str
    steps: int
    batch: int
    latent_noise: float  # σ ~ U(0, this) latent standard deviations of Gaussian noise on every decoded latent
    learning_rate: float
    loss: str = "l1"  # "l1" or "mse"
    kinds: tuple[int, ...] = (0, 1, 2)  # :func:`latent_composites`' draw: plain, cut, paste
    mixture_rows: int = 0  # plain reconstructions of :func:`autoencoder_batch` crops per step

    def __post_init__(self) -> None:
        if self.loss not in ("l1", "mse"):
            raise ValueError(f"decoder loss must be l1 or mse; got {self.loss!r}")


def decoder_recipes(config: MiniConfig) -> dict[str, DecoderRecipe]:
    """The two decoder stages of ``config``: the local (noise-robust) decoder, then the splice decoder."""
    return {
        "decoder": DecoderRecipe("decoder", config.decoder_steps, config.decoder_batch, config.decoder_latent_noise,
                                 3e-4),
        # Pastes get half of the rows: they are the hardest splice (86 % of the shipped decoder's squared
        # error sat within 4 px of a pasted cell's edge) and latent surgery's and PIXELS' own.
        "splice_decoder": DecoderRecipe("splice_decoder", config.splice_steps, config.decoder_batch,
                                        config.splice_latent_noise, config.splice_learning_rate, loss="mse",
                                        kinds=(0, 1, 2, 2), mixture_rows=config.splice_mixture_rows),
    }


def decoder_batch(world, sources: AutoencoderSources | None, recipe: DecoderRecipe, step: int, rank: int = 0,
                  world_size: int = 1, crop: int = 32) -> tuple:
    """One step's rows for a decoder fine-tune: two world batches to splice, and ``recipe.mixture_rows``
    crops of ``sources`` (None without mixture rows); a pure function of (step, rank)."""
    first = world_batch(world, step, rank, world_size, recipe.batch, seed_offset=5)
    second = world_batch(world, step, rank, world_size, recipe.batch, seed_offset=6)
    crops = autoencoder_batch(sources, step, recipe.mixture_rows, crop=crop, rank=rank) \
        if sources is not None and recipe.mixture_rows else None
    return first.images, second.images, second.object_masks, first.rng, crops


def decoder_loss(model, batch: tuple, generator: torch.Generator, recipe: DecoderRecipe):
    """A decoder fine-tune's loss on :func:`decoder_batch`'s rows: the decoding of :func:`latent_composites`
    against their pixel splices, and of the crops' posterior samples against the crops, each latent plus
    σ ~ U(0, ``recipe.latent_noise``) latent standard deviations of Gaussian noise; weighted per row."""
    first, second, second_objects, rng, crops = batch
    latent_std = 1.0 / float(model.config.scaling_factor)  # the scaling factor is 1/std of the latents

    def with_noise(latents):
        if recipe.latent_noise <= 0:
            return latents
        sigma = torch.rand(len(latents), 1, 1, 1, generator=generator) * recipe.latent_noise
        return latents + sigma * latent_std * torch.randn(latents.shape, generator=generator)

    def error(decoded, target):
        difference = decoded - target
        return difference.square().mean() if recipe.loss == "mse" else difference.abs().mean()

    latents, target = latent_composites(model, first, second, second_objects, rng, generator, kinds=recipe.kinds)
    loss = error(model.decode(with_noise(latents)).sample, target)
    logs = {"splices": loss.detach()}
    if crops is not None:
        with torch.no_grad():
            posterior = model.encode(crops).latent_dist
            crop_latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        crop_loss = error(model.decode(with_noise(crop_latents)).sample, crops)
        share = len(crops) / (len(crops) + len(first))  # per row, as if they were one batch
        loss = (1 - share) * loss + share * crop_loss
        logs["crops"] = crop_loss.detach()
    return loss, logs


def train_local_decoder(world, config: MiniConfig, vae, recipe: DecoderRecipe | None = None):
    """Fine-tune the autoencoder's decoder (encoder frozen) on :func:`decoder_batch` with :func:`decoder_loss`.

    The latent space, and so every model trained on it, is unchanged; only decoding of spliced
    latents becomes local. ``recipe`` defaults to the ``decoder`` stage's (a third of the rows each plain
    reconstructions, cuts and pastes; L1).
    """
    import copy

    recipe = recipe or decoder_recipes(config)["decoder"]
    model = copy.deepcopy(vae)
    model.requires_grad_(False)
    for part in (model.decoder, model.post_quant_conv):
        part.requires_grad_(True)
    out = Path(config.work_dir) / recipe.stage
    sources = autoencoder_sources(config.seed, config.vae_dead_leaves, Path(config.work_dir), config.image_size) \
        if recipe.mixture_rows else None

    def make_batch(step, rank, world_size):
        return decoder_batch(world, sources, recipe, step, rank, world_size, crop=config.vae_crop)

    def loss_fn(model, batch, generator):
        return decoder_loss(model, batch, generator, recipe)

    loop = LoopConfig(output_dir=str(out), max_steps=recipe.steps, learning_rate=recipe.learning_rate,
                      warmup_steps=50, checkpoint_every=200, seed=config.seed)
    result = train(model, loss_fn, make_batch, loop, batch_size=recipe.batch)
    model.eval()
    _save_final(out, model)
    return model, result


class AttributePrompts(NamedTuple):
    """The judge's zero-shot prompts for a world: per attribute, the values and their token ids."""

    values: dict[str, list[str]]
    ids: dict[str, torch.Tensor]  # attribute → (values, TEXT_LENGTH)

    @classmethod
    def for_world(cls, world, tokenizer) -> "AttributePrompts":
        from retouch.world.heldout import JUDGED_ATTRIBUTES, zero_shot_prompts

        prompts = {a: zero_shot_prompts(a, world.vocabularies) for a in JUDGED_ATTRIBUTES}
        ids = {a: tokenizer(list(p.values()), padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                            return_tensors="pt").input_ids for a, p in prompts.items()}
        return cls({a: list(p) for a, p in prompts.items()}, ids)

    def labels(self, specs) -> dict[str, torch.Tensor]:
        return {a: torch.tensor([values.index(s.background if a == "background" else getattr(s.objects[0], a))
                                 for s in specs]) for a, values in self.values.items()}


def attribute_contrastive_loss(model, image_embeds: torch.Tensor, prompts: AttributePrompts,
                               labels: dict[str, torch.Tensor], single: torch.Tensor) -> torch.Tensor:
    """CLIP's objective with the attribute prompts as the only candidate texts (hard negatives).

    Plain contrastive training learns colour and background fast but shape and pattern barely: in a
    random batch almost every negative already differs in colour, so the loss never needs shape. For
    each scene and attribute: softmax over "a photo of a {value}" for all values of the world, at
    CLIP's learned temperature, cross-entropy to the true one. Object attributes count on
    single-object scenes only (the caption of a multi-object scene names several).
    """
    image_embeds = torch.nn.functional.normalize(image_embeds, dim=-1)
    scale = model.logit_scale.exp()
    total = image_embeds.new_zeros(())
    for attribute, ids in prompts.ids.items():
        text = model.get_text_features(input_ids=ids)
        text = text if isinstance(text, torch.Tensor) else text.pooler_output
        logits = scale * image_embeds @ torch.nn.functional.normalize(text, dim=-1).T
        keep = single if attribute != "background" else torch.ones_like(single)
        if keep.any():
            total = total + torch.nn.functional.cross_entropy(logits[keep], labels[attribute][keep])
    return total


def _clip_batches(world, tokenizer, prompts: AttributePrompts, batch: int, seed_offset: int):
    def make_batch(step, rank, world_size):
        images, specs, _, _, rng = world_batch(world, step, rank, world_size, batch, seed_offset=seed_offset)
        ids = tokenizer([partial_caption(s, rng) for s in specs], padding="max_length", max_length=TEXT_LENGTH,
                        truncation=True, return_tensors="pt").input_ids
        single = torch.tensor([len(s.objects) == 1 for s in specs])
        return (images + 1) / 2, ids, single, prompts.labels(specs)

    return make_batch


def _clip_loss(prompts: AttributePrompts, hard_weight: float):
    def loss_fn(model, batch, generator):
        images, ids, single, labels = batch
        out_ = model(input_ids=ids, pixel_values=_clip_normalize(images), return_loss=True)
        if hard_weight == 0:
            return out_.loss, {}
        hard = attribute_contrastive_loss(model, out_.image_embeds, prompts, labels, single)
        return out_.loss + hard_weight * hard, {"hard": hard.detach()}

    return loss_fn


def train_clip(world, config: MiniConfig, tokenizer):
    model = mini_clip(tokenizer)
    out = Path(config.work_dir) / "clip"
    prompts = AttributePrompts.for_world(world, tokenizer)
    loop = LoopConfig(output_dir=str(out), max_steps=config.clip_steps, learning_rate=5e-4, warmup_steps=200,
                      weight_decay=0.1, checkpoint_every=500, seed=config.seed)
    result = train(model, _clip_loss(prompts, config.clip_hard_negatives),
                   _clip_batches(world, tokenizer, prompts, config.clip_batch, seed_offset=2), loop,
                   batch_size=config.clip_batch)
    model.eval()
    _save_final(out, model, tokenizer)
    return model, result


def train_judge(world, config: MiniConfig, tokenizer, clip):
    """Sharpen a copy of the CLIP model into the world's judge with attribute hard negatives
    (:func:`attribute_contrastive_loss`).

    Training scenes only; the judge is measured on the held-out test split. The U-Net keeps the text
    tower it was trained with (``clip`` stage); this copy is only the judge, so the judge is not the
    generator's own text model.
    """
    import copy

    model = copy.deepcopy(clip).train()
    out = Path(config.work_dir) / "judge"
    prompts = AttributePrompts.for_world(world, tokenizer)
    loop = LoopConfig(output_dir=str(out), max_steps=config.judge_steps, learning_rate=3e-4, warmup_steps=100,
                      weight_decay=0.1, checkpoint_every=250, seed=config.seed)
    result = train(model, _clip_loss(prompts, 1.0),
                   _clip_batches(world, tokenizer, prompts, config.judge_batch, seed_offset=4), loop,
                   batch_size=config.judge_batch)
    model.eval()
    _save_final(out, model)
    return model, result


def _save_final(out: Path, *parts) -> None:
    """``out/final`` from the first process of a launch (every process holds the same weights)."""
    if is_main_process():
        for part in parts:
            part.save_pretrained(out / "final")
    wait_for_everyone()


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _clip_normalize(images01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, device=images01.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images01.device).view(1, 3, 1, 1)
    return (images01 - mean) / std


def unet_loss_weights(object_masks: torch.Tensor, latent_side: int, alpha_bar: torch.Tensor, object_weight: float,
                      min_snr_gamma: float, prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial and per-sample weights of the U-Net's MSE (on ε, or on v for ``"v_prediction"``).

    * spatial: ``1 + object_weight`` on latent pixels that touch an object (the mask max-pooled to
      latent size), 1 elsewhere. Objects cover a few percent of a scene, so with plain MSE the loss
      is mostly background texture and the small model learns the backgrounds long before the
      shapes and colours the captions name; the weight rebalances that. Each image's loss is a
      weighted mean, so its scale does not depend on how much of it is object.
    * per sample: Min-SNR-γ (Hang et al. 2023, Eq. 8 for ε-prediction): ``min(SNR(t), γ) / SNR(t)``
      with ``SNR = ᾱ/(1−ᾱ)``, which stops the nearly-clean timesteps (fine texture) from dominating
      the gradient and converges several times faster. The v-MSE is the x₀-MSE times SNR + 1, and
      Min-SNR's v form ``min(SNR, γ)/(SNR + 1)`` would give the zero-SNR step (where the whole image
      comes from the caption) no weight at all; for v the weight is ``min(SNR + 1, γ)/(SNR + 1)``
      instead: plain v-MSE up to SNR = γ − 1, clipped like Min-SNR above it.
    """
    factor = object_masks.shape[-1] // latent_side
    touched = torch.nn.functional.max_pool2d(object_masks, factor) if factor > 1 else object_masks
    spatial = 1.0 + object_weight * touched
    if min_snr_gamma > 0 and prediction_type == "v_prediction":
        snr_plus_one = 1 / (1 - alpha_bar)
        per_sample = snr_plus_one.clamp(max=min_snr_gamma) / snr_plus_one
    elif min_snr_gamma > 0:
        snr = alpha_bar / (1 - alpha_bar)
        per_sample = snr.clamp(max=min_snr_gamma) / snr
    else:
        per_sample = torch.ones_like(alpha_bar)
    return spatial, per_sample.float()


def training_noise(shape, generator: torch.Generator, offset: float = 0.0) -> torch.Tensor:
    """ε for the U-Net's loss: N(0, 1) per element plus, with ``offset`` > 0, ``offset · ξ`` with one
    ξ ~ N(0, 1) per image and channel (offset noise, ``MiniConfig.unet_offset_noise``). Drawn on the CPU,
    so a run draws the same noise on any device."""
    noise = torch.randn(shape, generator=generator)
    if offset > 0:
        noise = noise + offset * torch.randn((*shape[:2], 1, 1), generator=generator)
    return noise


def weighted_diffusion_loss(model, batch, generator, schedule, object_weight: float, min_snr_gamma: float,
                            offset_noise: float = 0.0):
    """The mini U-Net's loss on a (latents, text states, object masks) batch: squared error of its ε (or v,
    as ``schedule.prediction_type`` says) per latent pixel, weighted towards object pixels and by
    Min-SNR-γ (:func:`unet_loss_weights`); with ``offset_noise`` > 0, ε has a random per-image,
    per-channel offset (``MiniConfig.unet_offset_noise``)."""
    from retouch.sampling import add_noise, velocity

    latents, states, masks = batch
    t = torch.randint(0, schedule.num_train_timesteps, (latents.shape[0],), generator=generator)
    noise = training_noise(latents.shape, generator, offset_noise).to(latents)
    alpha_bar = schedule.alphas_cumprod[t].to(latents)
    noisy = add_noise(latents, noise, alpha_bar)
    prediction = model(noisy, t.to(latents.device), encoder_hidden_states=states).sample
    target = velocity(latents, noise, alpha_bar) if schedule.prediction_type == "v_prediction" else noise
    spatial, per_sample = unet_loss_weights(masks, latents.shape[-1], alpha_bar, object_weight, min_snr_gamma,
                                            schedule.prediction_type)
    squared = ((prediction.float() - target.float()) ** 2).mean(dim=1, keepdim=True)
    per_image = (spatial * squared).sum(dim=(1, 2, 3)) / spatial.sum(dim=(1, 2, 3))
    return (per_sample * per_image).mean()


def train_unet(world, config: MiniConfig, vae, text_encoder, tokenizer):
    from diffusers import UNet2DConditionModel

    from retouch.sampling import NoiseSchedule, scheduler_config_json

    if config.unet_init:
        if not (Path(config.unet_init) / "config.json").is_file():
            raise RetouchError(f"--unet-init '{config.unet_init}' is not a saved U-Net folder (no config.json)")
        unet = UNet2DConditionModel.from_pretrained(config.unet_init).train()
    else:
        unet = mini_unet(tuple(config.unet_channels), tuple(config.unet_attention), vae.config.latent_channels)
    scheduler_config = mini_scheduler_config(config.unet_zero_terminal_snr)
    schedule = NoiseSchedule.from_scheduler_config(scheduler_config)
    out = Path(config.work_dir) / "unet"
    vae.requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()
    scale = vae.config.scaling_factor

    if config.unet_shards > 0:
        from retouch.data.latent_shards import LatentShards, build_latent_shards

        folder = Path(config.work_dir) / "shards"
        if is_main_process():
            build_latent_shards(world, vae, tokenizer, folder, config.unet_shards, text_length=TEXT_LENGTH)
        wait_for_everyone()
        shards = LatentShards.load(folder)
        empty = tokenizer([""], padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt").input_ids

        def make_batch(step, rank, world_size):
            latents, ids, cells = shards.batch(step, config.unet_batch, rank, seed=config.seed)
            drop = torch.from_numpy(np.random.default_rng([config.seed, step, rank, 3]).random(len(ids)) < CAPTION_DROPOUT)
            with torch.no_grad():
                states = text_encoder(torch.where(drop[:, None], empty, ids))[0]
            return latents * scale, states, cells
    else:
        def make_batch(step, rank, world_size):
            images, _, captions, masks, rng = world_batch(world, step, rank, world_size, config.unet_batch,
                                                          seed_offset=3)
            captions = ["" if rng.random() < CAPTION_DROPOUT else c for c in captions]
            with torch.no_grad():
                latents = vae.encode(images).latent_dist.mode() * scale
                ids = tokenizer(captions, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                                return_tensors="pt").input_ids
                states = text_encoder(ids)[0]
            return latents, states, masks

    def loss_fn(model, batch, generator):
        return weighted_diffusion_loss(model, batch, generator, schedule, config.unet_object_weight,
                                       config.unet_min_snr_gamma, config.unet_offset_noise), {}

    # A fine-tune keeps its checkpoints apart: ``unet/`` holds the run it starts from.
    loop = LoopConfig(output_dir=str(out / "from-init" if config.unet_init else out), max_steps=config.unet_steps,
                      learning_rate=config.unet_learning_rate, warmup_steps=200, checkpoint_every=250,
                      ema_decay=0.999, seed=config.seed)
    result = train(unet, loss_fn, make_batch, loop, batch_size=config.unet_batch)
    unet.eval()
    _save_final(out, unet)
    if is_main_process():  # the schedule travels with the weights: the export ships the one they were trained on
        (out / "final" / "scheduler_config.json").write_text(scheduler_config_json(scheduler_config))
    wait_for_everyone()
    return unet, result


def trained_scheduler_config(unet_folder: Path) -> dict:
    """The schedule a U-Net stage trained with (saved beside its weights); SD's plain one for folders that
    predate the file."""
    saved = Path(unet_folder) / "scheduler_config.json"
    return json.loads(saved.read_text()) if saved.is_file() else mini_scheduler_config()


# ---------------------------------------------------------------------------------------------
# Orchestration and export
# ---------------------------------------------------------------------------------------------
# The tokenizer is built by every run that lacks it.
STAGES = ("tokenizer", "vae", "decoder", "splice_decoder", "clip", "judge", "unet", "export")


def run_mini_training(config: MiniConfig, stages=STAGES, export_dir: Path = MINI_DIR) -> dict:
    """Run the chosen stages in order; finished stages are loaded back from ``work_dir``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTokenizer

    from retouch.world import World

    torch.manual_seed(config.seed)
    world = World(seed=config.seed, size=config.image_size, profile=config.profile)
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"config": asdict(config), "hardware": _hardware(), "stages": {}}
    report_path = work / "report.json"
    if report_path.is_file():  # stages may run in separate (even concurrent) invocations: keep theirs
        report["stages"] = json.loads(report_path.read_text()).get("stages", {})

    tokenizer_dir = work / "tokenizer"
    tokenizer = None
    if is_main_process():
        if any((tokenizer_dir / name).is_file() for name in ("vocab.json", "tokenizer.json")):
            tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
        else:
            tokenizer = build_tokenizer(world, config, tokenizer_dir)
    wait_for_everyone()
    if tokenizer is None:  # the other processes of a launch read what the first one wrote
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)

    def stage(name, trainer, loader):
        final = work / name / "final"
        if name in stages and not (final / "config.json").is_file():
            started = time.perf_counter()
            model, result = trainer()
            report["stages"][name] = {"seconds": time.perf_counter() - started, "steps": result.steps,
                                      "threads": torch.get_num_threads(),
                                      "samples_per_second": result.samples_per_second,
                                      "final_loss": result.losses[-1][1] if result.losses else None}
            return model
        return loader(final) if final.is_dir() else None

    vae = stage("vae", lambda: train_vae(world, config), AutoencoderKL.from_pretrained)
    # The U-Net only needs the encoder (unchanged by this stage); the export ships the local decoder.
    recipes = decoder_recipes(config)
    decoder = stage("decoder", lambda: train_local_decoder(world, config, vae, recipes["decoder"]),
                    AutoencoderKL.from_pretrained) if vae is not None else None
    if "splice_decoder" in stages and (decoder is None or not config.splice_steps):
        raise RetouchError("the splice_decoder stage fine-tunes the decoder stage's decoder: "
                           + (f"train stage decoder first (none in {work})" if decoder is None
                              else "this recipe has no splice stage (--splice-steps is 0)"))
    if decoder is not None and config.splice_steps:  # its fine-tune for pastes, where the recipe has one
        decoder = stage("splice_decoder", lambda: train_local_decoder(world, config, decoder, recipes["splice_decoder"]),
                        AutoencoderKL.from_pretrained) or decoder
    clip = stage("clip", lambda: train_clip(world, config, tokenizer), CLIPModel.from_pretrained)
    judge = stage("judge", lambda: train_judge(world, config, tokenizer, clip), CLIPModel.from_pretrained) \
        if clip is not None else None
    unet = None
    if vae is not None and clip is not None:
        text_encoder = text_encoder_from_clip(clip)
        unet = stage("unet", lambda: train_unet(world, config, vae, text_encoder, tokenizer),
                     UNet2DConditionModel.from_pretrained)
    if is_main_process():  # the other processes of a launch must not read it while it is written
        if report_path.is_file():  # re-read: a concurrent invocation may have finished a stage meanwhile
            finished = json.loads(report_path.read_text()).get("stages", {})
            report["stages"] = {**finished, **report["stages"]}
        report_path.write_text(json.dumps(report, indent=2, default=str))
    if "export" in stages:
        missing = [n for n, m in (("vae", vae), ("clip", clip), ("judge", judge), ("unet", unet)) if m is None]
        if missing:
            raise RetouchError(f"cannot export the mini models: stage(s) {', '.join(missing)} not trained in {work}")
        if is_main_process():
            export_mini(decoder if decoder is not None else vae, clip, judge, tokenizer, unet, export_dir, work)
    wait_for_everyone()
    return report


def text_encoder_from_clip(clip):
    """The judge's text tower as a standalone ``CLIPTextModel`` (what SD pipelines load)."""
    from transformers import CLIPTextModel

    encoder = CLIPTextModel(clip.config.text_config)
    weights = clip.text_model.state_dict()
    # transformers ≥ 5 dropped the ``text_model.`` level inside CLIPTextModel; older versions keep it.
    if any(key.startswith("text_model.") for key in encoder.state_dict()):
        weights = {f"text_model.{key}": value for key, value in weights.items()}
    encoder.load_state_dict(weights, strict=True)
    return encoder.eval()


def export_mini(vae, clip, judge, tokenizer, unet, export_dir: Path, work_dir: Path) -> None:
    """Write ``backbone/`` (a diffusers SD folder with the U-Net's own schedule), ``judge/`` (CLIP model +
    tokenizer)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    export_dir = Path(export_dir)
    scheduler = DDIMScheduler.from_config(trained_scheduler_config(Path(work_dir) / "unet" / "final"))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder_from_clip(clip), tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(export_dir / "backbone", safe_serialization=True)
    judge.save_pretrained(export_dir / "judge", safe_serialization=True)
    judge_processor(tokenizer, judge.config.vision_config.image_size).save_pretrained(export_dir / "judge")
    for name in ("report.json",):
        source = Path(work_dir) / name
        if source.is_file():
            (export_dir / "training_report.json").write_text(source.read_text())


def judge_processor(tokenizer, image_size: int):
    """The judge's ``CLIPProcessor``: our tokenizer plus CLIP's normalisation at the world's image size,
    so :class:`retouch.metrics.TransformersCLIPJudge` loads the judge like any local CLIP folder."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    images = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                                image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer)


#: The model card's hand-written provenance section starts with this heading; regenerating the card keeps it.
PROVENANCE_HEADING = "## How these weights were actually made"


def write_model_card(export_dir: Path, command: str) -> Path:
    """MODEL_CARD.md beside the weights: architecture, training config/command/hardware/time, results.

    A hand-written section headed :data:`PROVENANCE_HEADING` in the existing card (what the JSON
    cannot say: resumed phases, which numbers miss their targets) is carried over unchanged.
    """
    export_dir = Path(export_dir)
    training = _read_json(export_dir / "training_report.json")
    evaluation = _read_json(export_dir / "evaluation.json")
    sizes = {str(p.relative_to(export_dir)): p.stat().st_size for p in sorted(export_dir.rglob("*.safetensors"))}
    lines = [
        "# retouch mini models",
        "",
        "Trained from scratch on the procedural mini world (`retouch.world`, profile "
        f"{training.get('config', {}).get('profile', 'v1')}, seed {training.get('config', {}).get('seed', '?')}); "
        "no external data or weights.",
        "",
        "| part | class | notes |",
        "|---|---|---|",
        *_architecture_rows(export_dir),
        "",
        "## Training",
        "",
        f"Command: `{command}`",
        "",
        "```json",
        json.dumps({k: training.get(k) for k in ("config", "hardware", "stages")}, indent=2),
        "```",
        "",
        "## Weight files",
        "",
        *[f"- `{name}`: {size / 2**20:.1f} MiB" for name, size in sizes.items()],
        f"- total: {sum(sizes.values()) / 2**20:.1f} MiB",
        "",
        "## Evaluation (held-out test-split scenes; `retouch eval mini`)",
        "",
        "```json",
        json.dumps(evaluation, indent=2),
        "```",
        "",
    ]
    path = export_dir / "MODEL_CARD.md"
    previous = path.read_text() if path.is_file() else ""
    if PROVENANCE_HEADING in previous:
        lines.append(previous[previous.index(PROVENANCE_HEADING):].rstrip("\n") + "\n")
    path.write_text("\n".join(lines))
    return path


def _architecture_rows(export_dir: Path) -> list[str]:
    """The model card's table rows, read from the exported configs (so the card cannot drift from the weights)."""
    vae = _read_json(export_dir / "backbone" / "vae" / "config.json")
    text = _read_json(export_dir / "backbone" / "text_encoder" / "config.json")
    unet = _read_json(export_dir / "backbone" / "unet" / "config.json")
    judge = _read_json(export_dir / "judge" / "config.json").get("vision_config", {})
    factor = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    side = unet.get("sample_size", "?")
    attention = ["attention" if "CrossAttn" in block else "no attention" for block in unet.get("down_block_types", [])]
    return [
        f"| `backbone/vae` | diffusers `AutoencoderKL` | downsampling factor {factor} (RGB → "
        f"{vae.get('latent_channels')}×{side}² latents), channels {tuple(vae.get('block_out_channels', ()))}, "
        f"{'with' if vae.get('mid_block_add_attention', True) else 'no'} mid-block attention; the shipped decoder "
        "is the last decoder stage's (`splice_decoder` where the recipe has it) |",
        f"| `backbone/text_encoder` | transformers `CLIPTextModel` | the CLIP stage's text tower (hidden "
        f"{text.get('hidden_size')}, {text.get('num_hidden_layers')} layers, {text.get('max_position_embeddings')} "
        "tokens) |",
        f"| `backbone/unet` | diffusers `UNet2DConditionModel` | channels {tuple(unet.get('block_out_channels', ()))} "
        f"({', '.join(attention)}, top level first), cross-attention {unet.get('cross_attention_dim')}, ε-prediction, "
        "EMA weights |",
        f"| `judge` | transformers `CLIPModel` + `CLIPProcessor` | ViT on {judge.get('patch_size', '?')}² patches; the "
        "world's zero-shot judge (CLIP-Acc, CLIP-I, KID) |",
        "| `probes` | `retouch.world.probe.PixelProbes` | supervised per-attribute pixel classifiers, the judge's "
        "independent second reader |",
    ]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _hardware() -> dict:
    info = {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    else:
        info["cpu"] = platform.processor() or "cpu"
    return info
