"""Training the multitask model (§4.1 "Training") on a compositing dataset, with ``accelerate``.

Every training example is one crop with one label drawn uniformly from {none, blur, grain, colour,
inpaint, sharpen} (the paper's six label vectors): the input is the crop (times 1 − M for
inpainting), the target the crop's single-task result (the crop itself for "none" and inpainting),
the sliders the crop's stored parameters (grain: one of the five radii at random) and every inactive
task's condition zero. The autoencoder is frozen; the denoiser (widened U-Net + f_θ) trains with the
Eq. 2 loss. The training split is read once into memory as 8-bit arrays (a 64² set of a few thousand
crops is a few hundred MB) and, for the diffusion models, encoded once into a latent cache (every
input and target latent: a twelfth of the pixels' values at the VAE's factor 4); batches are a pure
function of the step, so runs resume exactly. The losses (Eq. 2, Eq. 3's N-pair term) live here; the
network is :mod:`retouch.networks.multitask`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from retouch.data.compositing import GRAIN_NAMES, iter_compositing, read_summary
from retouch.distributed import is_main_process, wait_for_everyone
from retouch.errors import RetouchError, check_choice
from retouch.networks.multitask import (
    BLOCK_CONDITIONINGS,
    PREDICTIONS,
    SCALARS,
    SPACES,
    TASKS,
    EditingVector,
    MultitaskDenoiser,
    MultitaskModel,
    MultitaskSpec,
    encode,
    masked_input,
    reference_input,
)
from retouch.options import check_options, option
from retouch.train.loop import LoopConfig, train

LABELS = (None, *TASKS)  # "none" plus each single task, drawn uniformly (§4.1)
#: Where Eq. 2's error is measured: ε (the paper) or v (see :func:`multitask_loss`).
LOSS_SPACES = ("epsilon", "v")
#: The features Eq. 3's N-pair loss compares: the U-Net bottleneck (config A) or f_θ(C) (config B).
N_PAIR_FEATURES = ("bottleneck", "labels")


#: The tasks ``--texture-tasks`` can name, and the index of each one's strength in C = [β, σ, λ, μ, …].
TEXTURE_TASKS = {"blur": 0, "grain": 1, "sharpen": 2}


def texture_examples(vectors: torch.Tensor, tasks: tuple[str, ...]) -> torch.Tensor:
    """Which examples of a batch have one of ``tasks`` on, from their editing vectors' strengths (bool, (B,))."""
    return (vectors[:, [TEXTURE_TASKS[task] for task in tasks]] > 0).any(dim=1)


def multitask_loss(denoiser: MultitaskDenoiser, alphas_cumprod: torch.Tensor, target_latents, source_latents,
                   side, vectors, generator: torch.Generator | None = None, p: float = 1.0,
                   n_pair: str | None = None, n_pair_weight: float = 0.0, loss_space: str = "epsilon",
                   min_timestep: int = 0, snr_weight_cap: float = 1.0, texture_weight: float = 0.0,
                   texture_tasks: tuple[str, ...] | None = None):
    """Eq. 2: E ‖ε_θ(z_0^A, I_ref, C, z_t^B, t) − ε‖_p^p with t uniform, p = 1 by default (mean over elements).

    ``n_pair`` adds ``n_pair_weight`` × the N-pair loss of Eq. 3 (§5, Table 5) on the U-Net's bottleneck
    features (``"bottleneck"``, the paper's config A) or on the label features f_θ(C) (``"labels"``,
    config B), with the binary task labels of C as the classes.

    A ``prediction="residual"`` denoiser (not the paper's) returns x̂₀ = z_A + D(·); its loss is then
    ‖x̂₀ − z_0^B‖_p^p, every noise level weighted alike.

    ``snr_weight_cap`` > 1 (residual models; not the paper's) weights each example's x̂₀ error by
    clamp(√SNR_t, 1, cap), SNR_t = ᾱ_t / (1 − ᾱ_t). The paper's ε-loss is this error weighted by √SNR_t exactly
    (|ε̂ − ε| = √SNR_t · |x̂₀ − x₀|), so low noise levels, where x_t still shows the target's fine texture,
    dominate it; the uniform x̂₀ loss gives them no more weight than any other level, and a model trained
    with it learns to ignore x_t and return the texture's mean (film grain: docs/multitask.md). Clamped
    at 1 from below so the high noise levels, where the layout is decided, keep their uniform weight.

    ``texture_weight`` > 0 (residual models; not the paper's) adds that weight × the mean |r(x̂₀) − r(x_B)| of the
    local texture amplitude r (:func:`retouch.metrics.control.local_high_frequency_rms`, 8² patches). Film grain is
    a random texture: the L1 to one realisation is least for its smooth median, so an x̂₀ model learns to return
    none (a flat σ curve). The amplitude is the same for every realisation, so this term asks for as much texture as
    the target has without asking where each grain falls. Measured (docs/multitask.md, session 14): σ's curve moves,
    and the model draws the texture from its input rather than from x_t's noise. ``texture_tasks`` (a subset of
    :data:`TEXTURE_TASKS`; None = every example) keeps the term to the examples with one of those tasks on, read off
    C's scalars (β, σ, λ > 0), so tasks whose target texture is the input's own are left to the L1 alone.

    ``min_timestep`` > 0 (not the paper's) draws t from [min_timestep, T) only: at high noise x_t carries
    almost nothing of the target, so the loss cannot be met by copying x_t and must be met from z_A.

    ``loss_space="v"`` (not the paper's) measures the same ε prediction's error in v = √ᾱ ε − √(1−ᾱ) z_0
    (Salimans & Ho 2022), i.e. weights |ε̂ − ε| by 1/√ᾱ_t: at ᾱ ≈ 0.007 (t ≈ 960) an ε error is a z_0
    error ~12× larger, and plain ε loss barely rewards reading z_A there, so sampling from noise commits
    to a wrong scene in its first steps (docs/multitask.md).
    """
    from retouch.sampling import add_noise

    check_choice("loss space", loss_space, LOSS_SPACES)
    t = torch.randint(min_timestep, len(alphas_cumprod), (target_latents.shape[0],), generator=generator)
    noise = torch.randn(target_latents.shape, generator=generator).to(target_latents)
    noisy = add_noise(target_latents, noise, alphas_cumprod[t].to(target_latents))
    captured = {}
    handle = None
    if n_pair == "bottleneck":
        handle = denoiser.unet.mid_block.register_forward_hook(lambda _m, _i, out: captured.update(mid=out))
    try:
        prediction = denoiser(noisy, t.to(target_latents.device), source_latents, side, vectors)
    finally:
        if handle is not None:
            handle.remove()
    if denoiser.spec.prediction == "residual":
        if loss_space != "epsilon":
            raise RetouchError("--loss-space v reweights an ε prediction; a residual model's loss is on x̂₀ already")
        error = (prediction.float() - target_latents.float()).abs()
        if snr_weight_cap > 1:
            alpha = alphas_cumprod[t].to(error)
            error = error * (alpha / (1 - alpha)).sqrt().clamp(1.0, snr_weight_cap)[:, None, None, None]
        if texture_weight > 0:
            from retouch.metrics.control import local_high_frequency_rms

            window = min(8, target_latents.shape[-1])
            gap = (local_high_frequency_rms(prediction.float(), window)
                   - local_high_frequency_rms(target_latents.float(), window)).abs().flatten(1).mean(1)
            if texture_tasks is not None:
                gap = gap * texture_examples(vectors, texture_tasks).to(gap)
            texture = gap.mean()
    elif texture_weight > 0:
        raise RetouchError("--texture-weight matches a residual model's x̂₀ texture; an ε model samples its own")
    else:
        error = (prediction.float() - noise.float()).abs()
    if loss_space == "v":
        error = error / alphas_cumprod[t].to(error).sqrt()[:, None, None, None]
    loss = error.pow(p).mean()
    if texture_weight > 0:
        loss = loss + texture_weight * texture
    if n_pair is None or n_pair_weight == 0:
        return loss
    if not denoiser.spec.labels:
        raise RetouchError("the N-pair loss needs the binary task labels in C (train without --no-labels)")
    if n_pair == "bottleneck":
        features = captured["mid"].float().mean(dim=(2, 3))
    elif n_pair == "labels":
        features = denoiser.mapping(vectors).flatten(1).float()
    else:
        raise RetouchError(f"--n-pair must be bottleneck or labels; got {n_pair!r}")
    return loss + n_pair_weight * n_pair_loss(features, vectors[:, len(SCALARS):])


def n_pair_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The N-pair loss of the multitask paper's Eq. 3 (after Aksoy et al. 2018), over one batch P.

        L = 1/|P| Σ_{p<q} 𝟙[l_p = l_q] log((1 + exp(‖f_p − f_q‖)) / 2) + 𝟙[l_p ≠ l_q] log(1 + exp(−‖f_p − f_q‖) / 2)

    Same-label pairs are pulled together (the first term is 0 at distance 0 and grows), different-label
    pairs pushed apart (the second falls towards 0 with distance). The second term is read as printed,
    log(1 + e^{−d}/2), which keeps the loss non-negative. ``labels`` (B, L): rows equal ⇔ same class.
    """
    count = features.shape[0]
    diff = features[:, None, :] - features[None, :, :]
    distance = (diff.pow(2).sum(-1) + 1e-12).sqrt()  # the epsilon keeps the gradient finite at 0
    same = (labels[:, None, :] == labels[None, :, :]).all(dim=-1)
    pull = F.softplus(distance) - math.log(2.0)
    push = torch.log1p(torch.exp(-distance) / 2)
    pairs = torch.triu(torch.ones(count, count, dtype=torch.bool, device=features.device), diagonal=1)
    return torch.where(same, pull, push)[pairs].sum() / count


@dataclass
class MultitaskTrainConfig:
    data: str
    output_dir: str = "out/train-multitask"
    init: str = "mini"  # a backbone name, folder or file (load_backbone)
    steps: int = option(3000, at_least=1)
    batch: int = option(16, at_least=1)
    learning_rate: float = option(1e-4, above=0)
    loss_p: float = option(1.0, above=0)  # Eq. 2's p (the paper: 1)
    conditioning: str = "cross-attention"  # or "concat" (Palette++)
    labels: bool = True  # binary task labels in C (ablation: False)
    mapping_depth: int = 2  # f_θ depth (ablation: 0, 1, 2, 4)
    #: "v": the ε error weighted by 1/√ᾱ_t (multitask_loss; not in the paper)
    loss_space: str = option("epsilon", choices=LOSS_SPACES)
    #: MultitaskSpec.input_gain: >1 speeds up learning to read z_A (not in the paper)
    input_gain: float = option(1.0, above=0)
    #: "pixel": no autoencoder, a small U-Net from scratch (MultitaskSpec.space; not in the paper)
    space: str = option("latent", choices=SPACES)
    #: "residual": predict x̂₀ − z_A (MultitaskSpec.prediction; not in the paper)
    prediction: str = option("epsilon", choices=PREDICTIONS)
    #: pixel U-Net only: C + t embedding "add"ed in each ResNet block, or "film" (scale and shift)
    block_conditioning: str = option("add", choices=tuple(BLOCK_CONDITIONINGS))
    #: pixel U-Net only: channels per level (None: networks.multitask.PIXEL_CHANNELS, the shipped width)
    pixel_channels: tuple[int, ...] | None = None
    tasks: tuple[str, ...] = TASKS  # train a single-task model ("ours-single") with one task
    #: relative share of draws per task, aligned with ``tasks`` (None: uniform, the paper §4.1; not in the
    #: paper otherwise). Identity examples, when on, keep weight 1.
    task_weights: tuple[float, ...] | None = None
    #: or "pix2pix" (the GAN baseline, methods/pix2pix_gan.py)
    architecture: str = option("diffusion", choices=("diffusion", "pix2pix"))
    #: Eq. 3 on "bottleneck" (config A) or "labels" (config B) features
    n_pair: str | None = option(None, choices=N_PAIR_FEATURES)
    n_pair_weight: float = 0.1  # not given by the paper
    #: Train on random crop² windows of the dataset's crops (pixel space; not in the paper): a 32² window
    #: costs a quarter of a 64² crop, and every effect but colour transfer is local (colour transfer's
    #: reference stays whole; its statistics are the same for any window of the crop).
    crop: int | None = option(None, at_least=8)
    #: train on t ∈ [this, T) only (multitask_loss; not in the paper): 0 = every noise level
    min_timestep: int = option(0, at_least=0, at_most=999)
    #: residual models: x̂₀ error weighted by clamp(√SNR_t, 1, cap) (multitask_loss; not in the paper); 1 = uniform
    snr_weight_cap: float = option(1.0, at_least=1.0)
    #: residual models: weight of the local texture-amplitude term (multitask_loss; not in the paper); 0 = off
    texture_weight: float = option(0.0, at_least=0.0)
    #: the tasks whose examples get the texture term (a subset of TEXTURE_TASKS; None: every example)
    texture_tasks: tuple[str, ...] | None = None
    #: also draw identity examples (label None: target = input, every task off), one label among the tasks.
    #: With prediction="residual" their zero residual pins D at zero under L1 and no local effect is learnt
    #: (docs/multitask.md, benchmarks/multitask_identity_check.py): turn them off there.
    identity_examples: bool = True
    #: MultitaskSpec.hole_channel: the inpainting hole as one more input channel (not in the paper)
    hole_channel: bool = False
    #: share of draws that are one of the crop's stored multi-task examples, a set of two or three tasks on at
    #: once (a dataset built with ``--train-combinations``; not in the paper, which trains on single tasks)
    combination_share: float = option(0.0, at_least=0.0, at_most=1.0)
    ema_decay: float | None = 0.999
    mixed_precision: str = "no"
    seed: int = 0

    def validate(self) -> None:
        check_options(self)
        if self.n_pair is not None and not self.labels:
            raise RetouchError("the N-pair loss needs the binary task labels: drop --no-labels")
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise RetouchError(f"--tasks takes a non-empty subset of {', '.join(TASKS)}; got {', '.join(self.tasks)}")
        if self.task_weights is not None and (len(self.task_weights) != len(self.tasks)
                                              or not all(math.isfinite(w) and w > 0 for w in self.task_weights)):
            raise RetouchError(f"--task-weights needs one positive weight per task ({', '.join(self.tasks)}); "
                               f"got {self.task_weights}")
        if self.crop is not None and (self.space != "pixel" or self.architecture != "diffusion"):
            raise RetouchError("--crop trains pixel-space diffusion models only (a latent window is not a crop)")
        if self.pixel_channels is not None and (self.space != "pixel" or len(self.pixel_channels) < 2
                                                or any(c < 8 or c % 8 for c in self.pixel_channels)):
            raise RetouchError("--pixel-channels sets a pixel U-Net's widths: two or more levels, each a multiple of "
                               f"8 (its group norm has 8 groups), with --space pixel; got {self.pixel_channels}")
        if self.block_conditioning != "add" and self.space != "pixel":
            raise RetouchError("--block-conditioning builds pixel U-Nets; a latent model keeps its backbone's blocks")
        if self.snr_weight_cap > 1 and self.prediction != "residual":
            raise RetouchError("--snr-weight-cap weights a residual model's x̂₀ error; an ε loss is √SNR-weighted already")
        if self.texture_weight > 0 and self.prediction != "residual":
            raise RetouchError("--texture-weight matches a residual model's x̂₀ texture; an ε model samples its own")
        if self.texture_tasks is not None and (not self.texture_tasks or not self.texture_weight
                                               or set(self.texture_tasks) - set(TEXTURE_TASKS)):
            raise RetouchError(f"--texture-tasks takes a non-empty subset of {', '.join(TEXTURE_TASKS)} with "
                               f"--texture-weight > 0; got {', '.join(self.texture_tasks) or 'none'}")
        if self.prediction == "residual" and self.loss_space != "epsilon":
            raise RetouchError("--loss-space v reweights an ε prediction; drop it with --prediction residual")
        summary = read_summary(Path(self.data))
        if self.combination_share > 0:
            if not summary["config"].get("train_combinations"):
                raise RetouchError(f"--combination-share needs multi-task training examples: '{self.data}' was built "
                                   "without them (`retouch data compositing --train-combinations K`)")
            if set(self.tasks) != set(TASKS):
                raise RetouchError("--combination-share trains on sets of all five tasks; drop --tasks")

    def spec(self, latent_channels: int) -> MultitaskSpec:
        return MultitaskSpec(conditioning=self.conditioning, labels=self.labels, mapping_depth=self.mapping_depth,
                             latent_channels=3 if self.space == "pixel" else latent_channels,
                             input_gain=self.input_gain, space=self.space, prediction=self.prediction,
                             hole_channel=self.hole_channel)


def build_model(config: "MultitaskTrainConfig", backbone=None) -> MultitaskModel:
    """The untrained model of a run: the widened backbone (latent space, the paper) or a pixel U-Net."""
    from retouch.backbone import load_backbone

    if config.space == "pixel":
        return MultitaskModel.for_pixels(config.spec(3), channels=config.pixel_channels,
                                         block_conditioning=config.block_conditioning, seed=config.seed)
    backbone = backbone or load_backbone(config.init)
    return MultitaskModel.from_backbone(backbone, config.spec(backbone.unet.config.in_channels))


class TrainingSet:
    """The training split in memory: uint8 images per name, and each crop's parameters."""

    def __init__(self, folder: Path, split: str = "train"):
        self.params, self.images = [], {}
        for sample in iter_compositing(folder, split):
            self.params.append(sample.params)
            for name, image in sample.images.items():
                self.images.setdefault(name, []).append(np.round(image * 255).astype(np.uint8))
        if not self.params:
            raise RetouchError(f"the dataset in '{folder}' has no '{split}' samples")
        self.images = {name: np.stack(arrays) for name, arrays in self.images.items()}

    def __len__(self) -> int:
        return len(self.params)

    def image(self, name: str, index: int) -> torch.Tensor:
        """(3, H, W) in [−1, 1], or (1, H, W) in [0, 1] for the mask."""
        array = torch.from_numpy(self.images[name][index]).float() / 255.0
        if array.ndim == 2:
            return array[None]
        return array.permute(2, 0, 1) * 2 - 1


def draw_examples(data: TrainingSet, labels, count: int, rng: np.random.Generator,
                  crop: int | None = None, weights=None, combination_share: float = 0.0) -> list[tuple]:
    """``count`` draws (crop index, label, grain radius, window): a uniform crop, a uniform label (§4.1) or
    one drawn in proportion to ``weights``, for grain one of the five radii at random, and with ``crop`` a
    uniform ``crop``² window (top, left) of it (None: the whole crop). With ``combination_share`` > 0 that
    share of draws is instead one of the crop's stored multi-task examples, label ``combo{k}``."""
    draws = []
    side = data.images["source"].shape[1]
    if crop is not None and crop > side:
        raise RetouchError(f"--crop {crop} is larger than the dataset's {side}-pixel crops")
    shares = None if weights is None else np.asarray(weights, dtype=float) / float(np.sum(weights))
    for _ in range(count):
        index = int(rng.integers(0, len(data)))
        if combination_share > 0 and rng.random() < combination_share:  # its grain radius is stored with it
            label, radius = f"combo{int(rng.integers(0, len(data.params[index]['combinations'])))}", None
        else:
            # the uniform draw stays rng.integers so runs without weights replay earlier runs' draws exactly
            label = labels[int(rng.integers(0, len(labels)) if shares is None else rng.choice(len(labels), p=shares))]
            radius = list(GRAIN_NAMES)[int(rng.integers(0, len(GRAIN_NAMES)))] if label == "grain" else None
        window = None if crop is None else (int(rng.integers(0, side - crop + 1)), int(rng.integers(0, side - crop + 1)))
        draws.append((index, label, radius, window))
    return draws


def training_labels(config: MultitaskTrainConfig) -> tuple:
    """The labels a training example is drawn from, uniformly: the tasks, and None (the identity example)
    unless ``config.identity_examples`` is off."""
    return ((None,) if config.identity_examples else ()) + tuple(config.tasks)


def parse_task_weights(text: str | None, tasks) -> tuple[float, ...] | None:
    """``"inpaint=2,sharpen=2"`` → one weight per task of ``tasks`` (1 where not named); None for no text."""
    if not text:
        return None
    named = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or name.strip() not in tasks or not (math.isfinite(weight) and weight > 0):
            raise RetouchError(f"--task-weights takes TASK=WEIGHT pairs with a positive weight and a task of "
                               f"{', '.join(tasks)}; got '{part}'")
        named[name.strip()] = weight
    return tuple(named.get(task, 1.0) for task in tasks)


def training_label_weights(config: MultitaskTrainConfig) -> tuple[float, ...] | None:
    """The draw weights aligned with :func:`training_labels` (None: uniform)."""
    if config.task_weights is None:
        return None
    return ((1.0,) if config.identity_examples else ()) + tuple(float(w) for w in config.task_weights)


def example_tasks(params: dict, label: str | None, radius: float | None) -> tuple[tuple[str, ...], float | None]:
    """(the tasks a training example turns on, its grain radius): none, one task, or a stored combination."""
    if label is not None and label.startswith("combo"):
        combination = params["combinations"][int(label.removeprefix("combo"))]
        return tuple(combination["tasks"]), combination["grain"]
    return (() if label is None else (label,)), radius


def example_vector(params: dict, label: str | None, radius: float | None) -> EditingVector:
    """The editing vector of one training example: only its tasks are on, with the crop's sliders."""
    tasks, radius = example_tasks(params, label, radius)
    return EditingVector(blur=params["blur"] if "blur" in tasks else None, grain=radius if "grain" in tasks else None,
                         colour="colour" in tasks, inpaint="inpaint" in tasks,
                         sharpen=tuple(params["sharpen"]) if "sharpen" in tasks else None)


def target_name(label: str | None, radius: float | None) -> str:
    """Which stored image is the target (the crop itself for "none" and for inpainting; ``combo{k}`` is
    stored under its label)."""
    return {None: "source", "inpaint": "source", "grain": GRAIN_NAMES.get(radius)}.get(label, label)


def training_example(data: TrainingSet, draw: tuple):
    """(input image, target image, reference image or None, keep-mask or None, editing vector)."""
    index, label, radius = draw[:3]  # a window (draw[3]) cuts pixel-space batches only
    vector = example_vector(data.params[index], label, radius)
    tasks, _ = example_tasks(data.params[index], label, radius)
    reference = data.image("reference", index) if "colour" in tasks else None
    keep = 1.0 - data.image("mask", index) if "inpaint" in tasks else None  # stored masks are 1 in the hole
    return data.image("source", index), data.image(target_name(label, radius), index), reference, keep, vector


def train_multitask(config: MultitaskTrainConfig, *, backbone=None,
                    progress: bool = True) -> tuple[MultitaskModel, dict]:
    """Initialise from ``config.init`` (or ``backbone``), train, save to ``output_dir/final``; returns the model."""
    config.validate()
    if is_main_process():  # under `accelerate launch` the first process writes the run's files
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(config.output_dir) / "run_config.json").write_text(json.dumps(asdict(config), indent=2))
    data = TrainingSet(Path(config.data))
    labels, weights = training_labels(config), training_label_weights(config)
    if config.architecture == "pix2pix":
        model, network, make_example_batch, loss_fn = _pix2pix_parts(config, data)
    else:
        model, network, make_example_batch, loss_fn = _diffusion_parts(config, data, backbone)

    def make_batch(step, rank, world_size):
        return make_example_batch(draw_examples(data, labels, config.batch,
                                                np.random.default_rng([config.seed, step, rank]), config.crop,
                                                weights, config.combination_share))

    loop = LoopConfig(output_dir=config.output_dir, max_steps=config.steps, learning_rate=config.learning_rate,
                      warmup_steps=min(200, config.steps // 10), ema_decay=config.ema_decay,
                      mixed_precision=config.mixed_precision, checkpoint_every=250, seed=config.seed)
    result = train(network, loss_fn, make_batch, loop, batch_size=config.batch, progress=progress)
    network.eval()
    report = {"config": asdict(config), "steps": result.steps, "seconds": result.seconds,
              "samples_per_second": result.samples_per_second,
              "final_loss": result.losses[-1][1] if result.losses else None, "losses": result.losses,
              "threads": torch.get_num_threads()}
    if is_main_process():  # every process holds the same synchronised weights
        model.save(Path(config.output_dir) / "final")
        (Path(config.output_dir) / "report.json").write_text(json.dumps(report, indent=2))
    wait_for_everyone()  # returning means the model folder is complete, on every process
    return model, report


def _diffusion_parts(config: MultitaskTrainConfig, data: TrainingSet, backbone):
    """The multitask diffusion model (or Palette++): latents in, Eq. 2 (+ Eq. 3) out."""
    from retouch.sampling import NoiseSchedule

    model = build_model(config, backbone)
    if model.vae is not None:
        model.vae.requires_grad_(False).eval()
    schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)

    targets = {target_name(label, radius) for label in (None, *config.tasks)
               for radius in (GRAIN_NAMES if label == "grain" else (None,))}
    if config.combination_share > 0:
        targets |= {name for name in data.images if name.startswith("combo")}
    cache = LatentCache(model, data, targets,
                        crop=config.crop, hole_channel=config.hole_channel)

    def make_example_batch(draws):
        return cache.batch(draws, model.spec.labels)

    def loss_fn(denoiser, batch, generator):
        target_latents, source_latents, side, vectors = batch
        loss = multitask_loss(denoiser, schedule.alphas_cumprod, target_latents, source_latents, side,
                              vectors, generator, p=config.loss_p, n_pair=config.n_pair,
                              n_pair_weight=config.n_pair_weight, loss_space=config.loss_space,
                              min_timestep=config.min_timestep, snr_weight_cap=config.snr_weight_cap,
                              texture_weight=config.texture_weight, texture_tasks=config.texture_tasks)
        return loss, {}

    return model, model.denoiser, make_example_batch, loss_fn


class LatentCache:
    """Every latent a training batch can need, encoded once: the autoencoder is frozen and encodes with
    the posterior mode, so this is exactly what encoding each batch would give, without a VAE pass per
    step. Holds z_0 of the source, of the masked source (inpainting input) and of each target, plus
    the colour references and (``hole_channel``) the hole maps area-resized to the latent grid."""

    def __init__(self, model: MultitaskModel, data: TrainingSet, targets: set[str], batch: int = 64,
                 crop: int | None = None, hole_channel: bool = False):
        self.crop, self.hole_channel = crop, hole_channel
        self.latents: dict[str, torch.Tensor] = {}
        keep_all = torch.stack([1.0 - data.image("mask", k) for k in range(len(data))])
        with torch.no_grad():
            for name in sorted(targets | {"source", "masked"}):
                images = torch.stack([data.image("source" if name == "masked" else name, k)
                                      for k in range(len(data))])
                if name == "masked":  # the inpainting input, masked as at inference
                    images = masked_input(images, EditingVector(inpaint=True), keep_all)
                self.latents[name] = torch.cat([encode(model, images[k:k + batch]).float()
                                                for k in range(0, len(images), batch)])
            references = torch.stack([data.image("reference", k) for k in range(len(data))])
            self.references = reference_input(references, EditingVector(colour=True), self.latents["source"])
            self.holes = F.interpolate(1 - keep_all, size=self.references.shape[-2:], mode="area")
        self.params = data.params

    def batch(self, draws, labels: bool):
        """(target latents, source latents, side conditions at latent size, C) for the draws.

        The side conditions are the reference, then with ``hole_channel`` the hole map (zero unless the
        label is inpainting), as :func:`~retouch.networks.multitask.side_inputs` builds them at inference.
        A draw's window cuts target, source and hole; the colour reference is the whole reference at the
        window's size, as editing an image of that size would give it."""
        targets, sources, references, vectors = [], [], [], []
        for index, label, radius, window in (tuple(draw) + (None,) * (4 - len(draw)) for draw in draws):
            tasks, _ = example_tasks(self.params[index], label, radius)
            target = self.latents[target_name(label, radius)][index]
            source = self.latents["masked" if "inpaint" in tasks else "source"][index]
            reference = self.references[index] if "colour" in tasks else torch.zeros_like(self.references[0])
            hole = self.holes[index] if "inpaint" in tasks else torch.zeros_like(self.holes[0])
            if window is not None:
                (top, left), side = window, self.crop
                target, source, hole = (x[:, top:top + side, left:left + side] for x in (target, source, hole))
                reference = F.interpolate(reference[None], size=(side, side), mode="area")[0]
            if self.hole_channel:
                reference = torch.cat([reference, hole])
            targets.append(target)
            sources.append(source)
            references.append(reference)
            vectors.append(example_vector(self.params[index], label, radius).as_tensor(labels))
        return torch.stack(targets), torch.stack(sources), torch.stack(references), torch.stack(vectors)


def _pix2pix_parts(config: MultitaskTrainConfig, data: TrainingSet):
    """The pix2pix GAN baseline on the same examples: pixels in, L1 + adversarial out."""
    from retouch.methods.pix2pix_gan import Pix2PixGAN, Pix2PixSpec, gan_condition

    size = data.images["source"].shape[1]
    model = Pix2PixGAN(Pix2PixSpec(size=size, vector_size=EditingVector().as_tensor(config.labels).numel()))

    def make_example_batch(draws):
        examples = [training_example(data, draw) for draw in draws]
        conditions = [gan_condition(source[None], vector, None if reference is None else reference[None],
                                    None if keep is None else keep[None], labels=config.labels)
                      for source, _, reference, keep, vector in examples]
        return torch.cat(conditions), torch.stack([target for _, target, *_ in examples])

    def loss_fn(network, batch, generator):
        return network.loss(*batch)

    return model, model, make_example_batch, loss_fn


def export_checkpoint(run_dir: Path, step: int, output: Path, *, backbone=None) -> Path:
    """Write the model of a diffusion run's ``checkpoints/step-N`` (its raw, not EMA, weights) as a model
    folder, e.g. to compare two runs at the same step of the same schedule. ``backbone`` is the one the
    run started from, if it was not given by name (``--init``)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    config_path = run_dir / "run_config.json"
    if not config_path.is_file():
        config_path = run_dir / "report.json"
    saved = json.loads(config_path.read_text())
    saved = saved.get("config", saved)
    if saved.get("architecture", "diffusion") != "diffusion":
        raise RetouchError("only diffusion runs can be exported from a checkpoint")
    weights = run_dir / "checkpoints" / f"step-{step}" / "model.safetensors"
    if not weights.is_file():
        raise RetouchError(f"no checkpoint at step {step} in '{run_dir}'")
    fields = {f.name for f in dataclasses.fields(MultitaskTrainConfig)}
    config = MultitaskTrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields})
    model = build_model(config, backbone)
    model.denoiser.load_state_dict(load_file(str(weights)))
    model.save(Path(output))
    return Path(output)


def ship_multitask_model(folder: Path, destination: Path | None = None) -> Path:
    """Copy a trained model to the package's assets (``--method multitask``'s default): the U-Net in
    float16 (half the bytes; loading casts it back to the edit's dtype), f_θ and the VAE as trained, and
    the training report beside it for the model card."""
    from retouch.methods.multitask import SHIPPED_MODEL
    from retouch.train.shipping import ship_folder

    model = MultitaskModel.load(Path(folder))
    model.denoiser.unet.to(torch.float16)  # half the bytes; loading casts it to the edit's dtype
    return ship_folder(model.save, folder, Path(destination or SHIPPED_MODEL))
