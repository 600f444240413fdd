"""Training the multitask model (§4.1 "Training") on a compositing dataset, with ``accelerate``.

Every training example is one crop with one label drawn uniformly from {none, blur, grain, colour,
inpaint, sharpen} (the paper's six label vectors): the input is the crop (times 1 − M for
inpainting), the target the crop's single-task result (the crop itself for "none" and inpainting),
the sliders the crop's stored parameters (grain: one of the five radii at random) and every inactive
task's condition zero. The autoencoder is frozen; the denoiser (widened U-Net + f_θ) trains with the
Eq. 2 loss. The training split is read once into memory as 8-bit arrays (a 64² set of a few thousand
crops is a few hundred MB); batches are a pure function of the step, so runs resume exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from retouch.data.compositing import GRAIN_NAMES, iter_compositing, read_summary
from retouch.errors import RetouchError
from retouch.methods.multitask import (
    TASKS,
    EditingVector,
    MultitaskModel,
    MultitaskSpec,
    conditioning_inputs,
    encode,
    multitask_loss,
)
from retouch.train.loop import LoopConfig, train

LABELS = (None, *TASKS)  # "none" plus each single task, drawn uniformly (§4.1)


@dataclass
class MultitaskTrainConfig:
    data: str
    output_dir: str = "out/train-multitask"
    init: str = "mini"  # a backbone name, folder or file (load_backbone)
    steps: int = 3000
    batch: int = 16
    learning_rate: float = 1e-4
    loss_p: float = 1.0  # Eq. 2's p (the paper: 1)
    conditioning: str = "cross-attention"  # or "concat" (Palette++)
    labels: bool = True  # binary task labels in C (ablation: False)
    mapping_depth: int = 2  # f_θ depth (ablation: 0, 1, 2, 4)
    tasks: tuple[str, ...] = TASKS  # train a single-task model ("ours-single") with one task
    architecture: str = "diffusion"  # or "pix2pix" (the GAN baseline, methods/pix2pix_gan.py)
    n_pair: str | None = None  # Eq. 3 on "bottleneck" (config A) or "labels" (config B) features
    n_pair_weight: float = 0.1  # not given by the paper
    ema_decay: float | None = 0.999
    mixed_precision: str = "no"
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 1 or self.batch < 1 or not self.learning_rate > 0 or not self.loss_p > 0:
            raise RetouchError("--steps, --batch, --learning-rate and --loss-p must be positive")
        if self.architecture not in ("diffusion", "pix2pix"):
            raise RetouchError(f"--architecture must be diffusion or pix2pix; got {self.architecture!r}")
        if self.n_pair not in (None, "bottleneck", "labels"):
            raise RetouchError(f"--n-pair must be bottleneck or labels; got {self.n_pair!r}")
        if self.n_pair is not None and not self.labels:
            raise RetouchError("the N-pair loss needs the binary task labels: drop --no-labels")
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise RetouchError(f"--tasks takes a non-empty subset of {', '.join(TASKS)}; got {', '.join(self.tasks)}")
        read_summary(Path(self.data))


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


def training_example(data: TrainingSet, index: int, label: str | None, rng: np.random.Generator):
    """(input image, target image, reference image or None, keep-mask or None, editing vector)."""
    params, source = data.params[index], data.image("source", index)
    if label is None:
        return source, source, None, None, EditingVector()
    if label == "blur":
        return source, data.image("blur", index), None, None, EditingVector(blur=params["blur"])
    if label == "grain":
        radius = list(GRAIN_NAMES)[int(rng.integers(0, len(GRAIN_NAMES)))]
        return source, data.image(GRAIN_NAMES[radius], index), None, None, EditingVector(grain=radius)
    if label == "colour":
        return source, data.image("colour", index), data.image("reference", index), None, EditingVector(colour=True)
    if label == "inpaint":
        keep = 1.0 - data.image("mask", index)  # stored masks are 1 in the hole
        return source, source, None, keep, EditingVector(inpaint=True)
    lam, mu = params["sharpen"]
    return source, data.image("sharpen", index), None, None, EditingVector(sharpen=(lam, mu))


def train_multitask(config: MultitaskTrainConfig, *, backbone=None,
                    progress: bool = True) -> tuple[MultitaskModel, dict]:
    """Initialise from ``config.init`` (or ``backbone``), train, save to ``output_dir/final``; returns the model."""
    config.validate()
    data = TrainingSet(Path(config.data))
    labels = (None, *config.tasks)
    if config.architecture == "pix2pix":
        model, network, make_example_batch, loss_fn = _pix2pix_parts(config, data)
    else:
        model, network, make_example_batch, loss_fn = _diffusion_parts(config, data, backbone)

    def make_batch(step, rank, world_size):
        rng = np.random.default_rng([config.seed, step, rank])
        examples = [training_example(data, int(rng.integers(0, len(data))), labels[int(rng.integers(0, len(labels)))],
                                     rng) for _ in range(config.batch)]
        return make_example_batch(examples)

    loop = LoopConfig(output_dir=config.output_dir, max_steps=config.steps, learning_rate=config.learning_rate,
                      warmup_steps=min(200, config.steps // 10), ema_decay=config.ema_decay,
                      mixed_precision=config.mixed_precision, checkpoint_every=250, seed=config.seed)
    result = train(network, loss_fn, make_batch, loop, batch_size=config.batch, progress=progress)
    network.eval()
    model.save(Path(config.output_dir) / "final")
    report = {"config": asdict(config), "steps": result.steps, "seconds": result.seconds,
              "samples_per_second": result.samples_per_second,
              "final_loss": result.losses[-1][1] if result.losses else None}
    return model, report


def _diffusion_parts(config: MultitaskTrainConfig, data: TrainingSet, backbone):
    """The multitask diffusion model (or Palette++): latents in, Eq. 2 (+ Eq. 3) out."""
    from retouch.backbone import load_backbone
    from retouch.sampling import NoiseSchedule

    backbone = backbone or load_backbone(config.init)
    spec = MultitaskSpec(conditioning=config.conditioning, labels=config.labels, mapping_depth=config.mapping_depth,
                         latent_channels=backbone.unet.config.in_channels)
    model = MultitaskModel.from_backbone(backbone, spec)
    model.vae.requires_grad_(False).eval()
    schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)

    def make_example_batch(examples):
        sources, references, vectors = [], [], []
        with torch.no_grad():  # one example at a time: each has its own active conditions
            for source, _, reference, keep, vector in examples:
                latents, small, c = conditioning_inputs(model, source[None], vector,
                                                        None if reference is None else reference[None],
                                                        None if keep is None else keep[None])
                sources.append(latents)
                references.append(small)
                vectors.append(c)
            target_latents = encode(model, torch.stack([target for _, target, *_ in examples]))
        return target_latents, torch.cat(sources), torch.cat(references), torch.cat(vectors)

    def loss_fn(denoiser, batch, generator):
        target_latents, source_latents, reference_small, vectors = batch
        loss = multitask_loss(denoiser, schedule.alphas_cumprod, target_latents, source_latents, reference_small,
                              vectors, generator, p=config.loss_p, n_pair=config.n_pair,
                              n_pair_weight=config.n_pair_weight)
        return loss, {}

    return model, model.denoiser, make_example_batch, loss_fn


def _pix2pix_parts(config: MultitaskTrainConfig, data: TrainingSet):
    """The pix2pix GAN baseline on the same examples: pixels in, L1 + adversarial out."""
    from retouch.methods.pix2pix_gan import Pix2PixGAN, Pix2PixSpec, gan_condition

    size = data.images["source"].shape[1]
    model = Pix2PixGAN(Pix2PixSpec(size=size, vector_size=EditingVector().as_tensor(config.labels).numel()))

    def make_example_batch(examples):
        conditions = [gan_condition(source[None], vector, None if reference is None else reference[None],
                                    None if keep is None else keep[None], labels=config.labels)
                      for source, _, reference, keep, vector in examples]
        return torch.cat(conditions), torch.stack([target for _, target, *_ in examples])

    def loss_fn(network, batch, generator):
        return network.loss(*batch)

    return model, model, make_example_batch, loss_fn
