"""Training the MCDM (portrait paper §3.3) on a pairs dataset, with ``accelerate``.

A pairs dataset (``retouch data pairs``) holds (x_A, x_B) pairs, each with its edit direction; rows
the pair filter dropped are skipped. Several directions train one model: each direction's source and
target prompts (p_a, p_b) come from the model's spec. The autoencoder, the text encoder and the CLIP
image encoder are frozen, so every latent, CLIP embedding and prompt state is computed once (the same
values a per-batch pass would give). Per batch, 5 % of the rows become identity pairs (p_b → p_a,
x_B → x_A); the loss drops each condition with 20 % probability (:func:`mcdm_loss`).
Batches are a pure function of the step, so runs resume exactly. The network is
:mod:`retouch.networks.portrait`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from retouch.distributed import is_main_process, wait_for_everyone
from retouch.errors import RetouchError
from retouch.networks.portrait import (
    CONDITIONS,
    MINI_DIRECTIONS,
    SHIPPED_JUDGE_NAME,
    Conditions,
    MCDMDenoiser,
    PortraitModel,
    PortraitSpec,
    added_conditioning,
    load_image_encoder,
    source_conditions,
)
from retouch.options import check_options, option
from retouch.train.loop import LoopConfig, train


# ---------------------------------------------------------------------------------------------
# The loss (§3.3)
# ---------------------------------------------------------------------------------------------
def draw_dropout(batch: int, generator: torch.Generator, probability: float = 0.2) -> torch.Tensor:
    """(B, 3) booleans, True = keep, for (c_s, c_im, c_p): each dropped independently with ``probability``,
    so every combination — none, any subset, all three — is dropped at some rate (§3.3, after [22])."""
    return torch.rand(batch, len(CONDITIONS), generator=generator) >= probability


def mcdm_loss(model: PortraitModel, denoiser: MCDMDenoiser, target_latents: torch.Tensor, conditions: Conditions,
              null_text: torch.Tensor, generator: torch.Generator, *, dropout: float = 0.2) -> torch.Tensor:
    """‖ε_θ(z_t, t, {c_s, c_im, c_p}) − ε‖² with t uniform and each condition dropped independently
    with ``dropout`` (its null: zeros for c_s and c_im, the empty prompt's states for c_p). The 5 %
    identity pairs are the batch builder's job (:meth:`PairCache.batch`)."""
    from retouch.sampling import add_noise, velocity

    schedule = model.backbone.schedule
    batch = target_latents.shape[0]
    t = torch.randint(0, len(schedule.alphas_cumprod), (batch,), generator=generator)
    noise = torch.randn(target_latents.shape, generator=generator).to(target_latents)
    alpha = schedule.alphas_cumprod[t].to(target_latents)
    noisy = add_noise(target_latents, noise, alpha)
    keep = draw_dropout(batch, generator, dropout).to(target_latents.device)
    text = torch.where(keep[:, 2, None, None], conditions.text_states, null_text.expand_as(conditions.text_states))
    added = added_conditioning(model.backbone, noisy, conditions.pooled, conditions.time_ids)
    prediction = denoiser(noisy, t.to(noisy.device), conditions.source_latents, conditions.clip, text,
                          keep[:, 0], keep[:, 1], added)
    target = velocity(target_latents, noise, alpha) if schedule.prediction_type == "v_prediction" else noise
    return F.mse_loss(prediction.float(), target.float())


@dataclass
class PortraitTrainConfig:
    data: tuple[str, ...]  # pairs datasets, e.g. one per edit direction
    output_dir: str = "out/train-portrait"
    init: str = "mini"  # a backbone name, folder or file (load_backbone)
    image_encoder: str = SHIPPED_JUDGE_NAME  # CLIP_im: a local CLIP-style folder, "mini-judge", or "" for none
    directions: dict = field(default_factory=lambda: dict(MINI_DIRECTIONS))
    steps: int = option(2000, at_least=1)
    batch: int = option(16, at_least=1)
    learning_rate: float = option(1e-4, above=0)
    identity_rate: float = option(0.05, at_least=0, below=1)  # §3.3 (1)
    dropout: float = option(0.2, at_least=0, below=1)  # §3.3 (2), per condition
    spatial: bool = True  # ablation "w/o Spt": False
    image_embedding: bool = True  # ablation "w/o Iemb": False
    scratch: bool = False  # ablation "w/o Prt": random U-Net init
    image_tokens: int = 4
    input_gain: float = option(1.0, above=0)
    ema_decay: float | None = 0.999
    mixed_precision: str = "no"
    seed: int = 0

    def validate(self) -> None:
        check_options(self)


@dataclass
class PortraitPairs:
    """The kept pairs of a dataset, as tensors in [−1, 1], with each pair's direction."""

    sources: torch.Tensor  # (N, 3, H, W)
    targets: torch.Tensor
    directions: list[str]

    @staticmethod
    def join(sets: list["PortraitPairs"]) -> "PortraitPairs":
        if not sets:
            raise RetouchError("no pairs dataset given (--data)")
        return PortraitPairs(torch.cat([s.sources for s in sets]), torch.cat([s.targets for s in sets]),
                       [d for s in sets for d in s.directions])


def read_pairs(folder: Path, split: str | None = "train", only_kept: bool = True) -> PortraitPairs:
    """The pairs of ``folder/manifest.jsonl`` (rows of ``retouch data pairs``) whose split is ``split``."""
    from retouch.imageio import load_image

    folder = Path(folder)
    manifest = folder / "manifest.jsonl"
    if not manifest.is_file():
        raise RetouchError(f"'{folder}' is not a pairs dataset (no manifest.jsonl); build one with `retouch data pairs`")
    sources, targets, directions = [], [], []
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if (only_kept and not row.get("kept", True)) or (split is not None and row.get("split", split) != split):
            continue
        left, right = (load_image(folder / row[key]) for key in ("left", "right"))
        sources.append(torch.from_numpy(left).permute(2, 0, 1) * 2 - 1)
        targets.append(torch.from_numpy(right).permute(2, 0, 1) * 2 - 1)
        directions.append(row["direction"])
    if not sources:
        raise RetouchError(f"'{folder}' has no kept pairs of the {split} split")
    return PortraitPairs(torch.stack(sources).float(), torch.stack(targets).float(), directions)


class PairCache:
    """E(x_A), E(x_B), CLIP_im(x_A) of every pair and the prompts' text states, computed once."""

    def __init__(self, model: PortraitModel, pairs: PortraitPairs, batch: int = 32):
        unknown = sorted(set(pairs.directions) - set(model.spec.directions))
        if unknown:
            raise RetouchError(f"the dataset has directions the model lacks prompts for: {', '.join(unknown)}")
        sources, targets, clips = [], [], []
        with torch.no_grad():
            for start in range(0, len(pairs.sources), batch):
                latents, clip = source_conditions(model, pairs.sources[start:start + batch])
                sources.append(latents.cpu())
                targets.append(model.backbone.encode_images(pairs.targets[start:start + batch]).cpu())
                if clip is not None:
                    clips.append(clip.cpu())
            self.names = sorted(model.spec.directions)
            prompts = [p for name in self.names for p in model.spec.prompts(name)] + [""]
            encoded = model.backbone.encode_text(prompts)
        self.source_latents, self.target_latents = torch.cat(sources), torch.cat(targets)
        self.clip = torch.cat(clips) if clips else None
        self.text = encoded.hidden_states.cpu()  # rows: (p_a, p_b) per direction, then ""
        self.pooled = None if encoded.pooled is None else encoded.pooled.cpu()
        self.direction_index = torch.tensor([self.names.index(d) for d in pairs.directions])

    def __len__(self) -> int:
        return len(self.source_latents)

    @property
    def null_text(self) -> torch.Tensor:
        return self.text[-1:]

    def batch(self, rows: np.ndarray, identity: np.ndarray) -> tuple[torch.Tensor, Conditions]:
        """Target latents and conditions for ``rows``; ``identity`` rows become (x_A → x_A, p_a)."""
        rows = torch.as_tensor(rows)
        keep_identity = torch.as_tensor(identity)
        source = self.source_latents[rows]
        target = torch.where(keep_identity[:, None, None, None], source, self.target_latents[rows])
        prompt_rows = 2 * self.direction_index[rows] + (~keep_identity).long()  # p_a = 2k, p_b = 2k + 1
        clip = None if self.clip is None else self.clip[rows]
        pooled = None if self.pooled is None else self.pooled[prompt_rows]
        return target, Conditions(source, clip, self.text[prompt_rows], pooled)


def train_portrait(config: PortraitTrainConfig, *, backbone=None, pairs: PortraitPairs | None = None,
                   progress: bool = True) -> tuple[PortraitModel, dict]:
    """Initialise from ``config.init`` (or ``backbone``), train, save to ``output_dir/final``."""
    from retouch.backbone import load_backbone

    config.validate()
    output = Path(config.output_dir)
    if is_main_process():  # under `accelerate launch` the first process writes the run's files
        output.mkdir(parents=True, exist_ok=True)
        (output / "run_config.json").write_text(json.dumps(asdict(config), indent=2))
    pairs = pairs if pairs is not None else PortraitPairs.join([read_pairs(Path(folder)) for folder in config.data])
    backbone = (backbone or load_backbone(config.init)).eval()
    spec = PortraitSpec(directions=dict(config.directions), spatial=config.spatial,
                        image_embedding=config.image_embedding, image_tokens=config.image_tokens,
                        image_encoder=config.image_encoder if config.image_embedding else "",
                        input_gain=config.input_gain)
    encoder = load_image_encoder(spec.image_encoder) if spec.image_encoder else None
    model = PortraitModel.from_backbone(backbone, spec, encoder, scratch=config.scratch)
    cache = PairCache(model, pairs)
    denoiser = model.denoiser
    denoiser.unet.requires_grad_(True)

    def make_batch(step, rank, world_size):
        rng = np.random.default_rng([config.seed, step, rank])
        rows = rng.integers(0, len(cache), config.batch)
        return cache.batch(rows, rng.random(config.batch) < config.identity_rate)

    def loss_fn(network, batch, generator):
        target, conditions = batch
        loss = mcdm_loss(model, network, target, conditions, cache.null_text.to(target.device), generator,
                         dropout=config.dropout)
        return loss, {}

    loop = LoopConfig(output_dir=config.output_dir, max_steps=config.steps, learning_rate=config.learning_rate,
                      warmup_steps=min(200, config.steps // 10), ema_decay=config.ema_decay,
                      mixed_precision=config.mixed_precision, checkpoint_every=250, seed=config.seed)
    result = train(denoiser, loss_fn, make_batch, loop, batch_size=config.batch, progress=progress)
    denoiser.eval().requires_grad_(False)
    report = {"config": asdict(config), "pairs": len(cache), "steps": result.steps, "seconds": result.seconds,
              "samples_per_second": result.samples_per_second,
              "final_loss": result.losses[-1][1] if result.losses else None, "losses": result.losses,
              "threads": torch.get_num_threads()}
    if is_main_process():  # every process holds the same synchronised weights
        model.save(output / "final")
        (output / "report.json").write_text(json.dumps(report, indent=2))
    wait_for_everyone()  # returning means the model folder is complete, on every process
    return model, report


def ship_portrait_model(folder: Path, destination: Path | None = None, *, base: str = "mini") -> Path:
    """Copy a trained MCDM to the package's assets (``--method portrait``'s default): the U-Net in float16
    (half the bytes; loading casts it to the edit's dtype) and the c_im MLP, with the frozen autoencoder,
    text encoder and scheduler named as ``base`` instead of copied (refused when they differ from it),
    and the training report beside it for the model card."""
    from retouch.methods.portrait import SHIPPED_MODEL
    from retouch.train.shipping import ship_folder

    model = PortraitModel.load(Path(folder))
    model.backbone.unet.to(torch.float16)  # half the bytes; loading casts it to the edit's dtype
    return ship_folder(lambda staging: model.save(staging, base=base), folder, Path(destination or SHIPPED_MODEL))
