"""Distil a pix2pix-zero edit into a feed-forward image-to-image network (pix2pix-zero §4.5, App. A).

1. **Pairs.** pix2pix-zero edits mini-world training scenes whose object has the edit's source
   attribute (``retouch.world.edits``), with the full method (regularised inversion, sentence
   directions, cross-attention guidance) as retouch runs it on the model: its folder's own λ_xa and CFG
   where it has them (:func:`teacher_settings`; the mini backbone's keep the background far better than the
   paper's SD values, so App. A's filter keeps more pairs).
2. **Filter** (App. A: "filter out pairs with low segmentation overlap or [that] do not
   sufficiently increase the CLIP similarity with the target description"): keep a pair when the
   judge's cosine to the target caption rises by at least ``clip_increase`` (paper: 0.10) and at least
   ``inside_fraction`` of the pixel change lies inside the object's mask (our stand-in for the
   paper's segmentation overlap ≥ 0.70: the world gives exact masks of the input, and an edit that
   changes the object should leave the rest alone).
3. **Translator.** The paper trains Co-Mod-GAN with L1 + VGG-LPIPS at learning rate 0.001 and batch
   64, with colour, noise and crop augmentation. We train a small diffusers ``UNet2DModel`` that
   predicts the residual (output = input + U-Net(input)), with L1, plus LPIPS when local LPIPS
   weights are given (``lpips=PATH``; none ship with retouch), on the shared ``accelerate`` loop;
   augmentation: the same horizontal flip and brightness/contrast jitter on both images of a pair,
   Gaussian noise on the input only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from retouch.distributed import is_main_process, wait_for_everyone
from retouch.errors import RetouchError
from retouch.options import check_options, option
from retouch.train.loop import LoopConfig, train


@dataclass
class DistillConfig:
    edit: str = "red->blue"
    model: str = "mini"  # the backbone's name or path, as given to load_backbone (part of the pair cache's key)
    output_dir: str = "out/distill"
    pairs: int = option(200, at_least=1)  # App. A collects 15,000
    edit_steps: int = option(25, at_least=1)
    edit_batch: int = 25
    clip_increase: float = 0.10  # App. A
    #: App. A's segmentation-overlap threshold, as the share of change inside the mask
    inside_fraction: float = option(0.70, at_least=0, at_most=1)
    train_steps: int = option(600, at_least=1)
    batch: int = option(32, at_least=1)
    learning_rate: float = 1e-3  # App. A
    lpips: str | None = None
    lpips_weight: float = 1.0
    seed: int = 0


def trained_folder(edit: str) -> Path:
    """The work folder of ``edit``'s translator under the trained-models root (``out/``): ``make distill-model``
    and ``benchmarks/distill_mini.py`` train there, ``retouch bench paper`` looks there (``--trained``)."""
    return Path("distill") / edit.replace("->", "-to-")


def final_translator(output_dir: str | Path) -> Path:
    """Where :func:`distill` saves the trained translator of a work folder."""
    return Path(output_dir) / "translator" / "final"


@dataclass
class DistillPairs:
    inputs: torch.Tensor  # (N, 3, H, W) in [0, 1]
    edited: torch.Tensor  # (N, 3, H, W) in [0, 1]
    masks: torch.Tensor  # (N, 1, H, W) object masks of the inputs
    sources: list[str]
    targets: list[str]


#: The teacher's sentence banks: the mini world's captions around each word (its edits are world edits). Named,
#: not left to ``bank="auto"``, which picks them only for the model called "mini", not for the same model loaded
#: from its folder (as the paper tables load it).
TEACHER_BANK = "world"


def teacher_settings(model: str) -> dict:
    """The teacher's settings besides edit, caption, steps and seed: pix2pix-zero as retouch runs it on ``model``
    (the model folder's own defaults for the method, e.g. the mini backbone's λ_xa and CFG; else the paper's),
    with the world's sentence banks."""
    from retouch.methods import get_method, with_model_defaults

    return with_model_defaults(get_method("pix2pix-zero"), model, {"bank": TEACHER_BANK})


def pix2pix_zero_edits(backbone, images01: torch.Tensor, sources: list[str], edit: str, *, steps: int,
                       batch: int, seed: int, settings: dict | None = None, progress=None) -> torch.Tensor:
    """The full pix2pix-zero edit (config E of Table 2, with ``settings`` over the paper's defaults; the teacher's
    are :func:`teacher_settings`) of each image with its own caption."""
    from retouch.methods import edit_by_caption, get_method

    method = get_method("pix2pix-zero")
    return edit_by_caption(backbone, images01, sources, lambda caption: (
        method, method.config_class(**{**(settings or {}), "edit": edit, "source_text": caption, "num_steps": steps,
                                       "seed": seed})), batch, progress)


def collect_pairs(backbone, world, config: DistillConfig, split: str = "train") -> DistillPairs:
    from retouch.edit_text import parse_edit
    from retouch.world.edits import edit_scenes

    edit = parse_edit(config.edit)
    try:
        scenes = edit_scenes(world, edit.source, edit.target, config.pairs, split=split)
    except ValueError as err:
        raise RetouchError(f"--edit {config.edit!r}: {err}") from err
    from retouch.progress import count_bar

    with count_bar(f"pix2pix-zero {config.edit} pairs", "pair") as progress:  # ~2-5 s a pair on CPU
        edited = pix2pix_zero_edits(backbone, scenes.images, scenes.sources, config.edit, steps=config.edit_steps,
                                    batch=config.edit_batch, seed=config.seed, settings=teacher_settings(config.model),
                                    progress=progress)
    return DistillPairs(scenes.images, edited, scenes.masks, scenes.sources, scenes.targets)


@torch.no_grad()
def pair_scores(judge, pairs: DistillPairs) -> dict[str, torch.Tensor]:
    """Per pair: the rise of the judge's cosine to the target caption, and the share of the absolute
    pixel change that lies inside the object mask."""
    text = F.normalize(judge.encode_texts(pairs.targets).float(), dim=-1)
    before = (F.normalize(judge.encode_images(pairs.inputs).float(), dim=-1) * text).sum(-1)
    after = (F.normalize(judge.encode_images(pairs.edited).float(), dim=-1) * text).sum(-1)
    change = (pairs.edited - pairs.inputs).abs().sum(dim=1, keepdim=True)
    inside = (change * pairs.masks).sum(dim=(1, 2, 3)) / change.sum(dim=(1, 2, 3)).clamp_min(1e-8)
    return {"clip_increase": after - before, "inside_fraction": inside}


def keep_pairs(scores: dict[str, torch.Tensor], clip_increase: float, inside_fraction: float) -> torch.Tensor:
    return (scores["clip_increase"] >= clip_increase) & (scores["inside_fraction"] >= inside_fraction)


def translator_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=64, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(32, 64, 128), norm_num_groups=16,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def translate(model, images01: torch.Tensor) -> torch.Tensor:
    """The distilled edit: (B, 3, H, W) in [0, 1] → same. One forward pass; the U-Net's timestep is 0."""
    x = images01 * 2 - 1
    t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return ((x + model(x, t).sample + 1) / 2).clamp(0, 1)


def time_per_image(edit_images, count: int) -> tuple[torch.Tensor, np.ndarray]:
    """Edit ``count`` images one at a time, timing each: §4.5's seconds per image, the wait for one edit.

    ``edit_images(rows) -> (len(rows), 3, H, W)`` edits the images at indices ``rows``. Image 0 is edited
    once more first, untimed, so one-off costs (models loaded lazily, first-call allocations) are billed to
    no image. Returns the edits, in order, and the seconds each took.
    """
    import time

    edit_images([0])
    edited, seconds = [], []
    for row in range(count):
        started = time.perf_counter()
        edited.append(edit_images([row]))
        seconds.append(time.perf_counter() - started)
    return torch.cat(edited), np.array(seconds)


def augment(inputs: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator):
    """App. A's augmentation at our scale: shared flip and brightness/contrast jitter, input noise."""
    flip = torch.from_numpy(rng.random(inputs.shape[0]) < 0.5)
    inputs = torch.where(flip[:, None, None, None], inputs.flip(-1), inputs)
    targets = torch.where(flip[:, None, None, None], targets.flip(-1), targets)
    gain = torch.from_numpy(rng.uniform(0.9, 1.1, (inputs.shape[0], 1, 1, 1))).float()
    shift = torch.from_numpy(rng.uniform(-0.05, 0.05, (inputs.shape[0], 1, 1, 1))).float()
    jitter = lambda x: ((x - 0.5) * gain + 0.5 + shift).clamp(0, 1)  # noqa: E731
    noise = torch.from_numpy(rng.normal(0.0, 0.02, inputs.shape)).float()
    return (jitter(inputs) + noise).clamp(0, 1), jitter(targets)


def train_translator(pairs: DistillPairs, config: DistillConfig):
    model = translator_unet()
    lpips_fn = None
    if config.lpips:
        from retouch.metrics import load_lpips

        lpips_fn = load_lpips(config.lpips)

    def make_batch(step, rank, world_size):
        rng = np.random.default_rng([config.seed, step, rank, 11])
        rows = torch.from_numpy(rng.integers(0, len(pairs.inputs), config.batch))
        return augment(pairs.inputs[rows], pairs.edited[rows], rng)

    def loss_fn(model, batch, generator):
        inputs, targets = batch
        output = translate(model, inputs)
        l1 = (output - targets).abs().mean()
        if lpips_fn is None:
            return l1, {}
        perceptual = lpips_fn(output, targets).mean()
        return l1 + config.lpips_weight * perceptual, {"lpips": perceptual.detach()}

    loop = LoopConfig(output_dir=str(Path(config.output_dir) / "translator"), max_steps=config.train_steps,
                      learning_rate=config.learning_rate, warmup_steps=min(50, config.train_steps // 10),
                      checkpoint_every=max(1, config.train_steps // 4), ema_decay=0.995, seed=config.seed)
    result = train(model, loss_fn, make_batch, loop, batch_size=config.batch)
    return model.eval(), result


def _pairs_key(config: DistillConfig) -> dict:
    """What the collected pairs depend on: a cache written under another key is not reused."""
    return {**{k: getattr(config, k) for k in ("model", "edit", "pairs", "edit_steps", "seed")},
            "teacher": teacher_settings(config.model)}


def cached_pairs(backbone, world, config: DistillConfig) -> tuple[DistillPairs, float]:
    """The pairs for ``config``, collected once and kept in ``output_dir/pairs.safetensors`` (+ .json).

    Collection is the slow part (one full pix2pix-zero edit per pair); caching lets the filter
    thresholds and the translator's training change without redoing it. Returns (pairs, seconds per
    pair when they were collected). Under ``accelerate launch`` the first process collects and writes
    them and the others read them back, so every process trains on the same pairs.
    """
    cached = None
    if is_main_process():
        cached = _read_pairs(config) or _collect_and_write_pairs(backbone, world, config)
    wait_for_everyone()
    return cached or _read_pairs(config)


def _read_pairs(config: DistillConfig) -> tuple[DistillPairs, float] | None:
    """The cached pairs, or None when there are none for this config's key."""
    from safetensors.torch import load_file

    out = Path(config.output_dir)
    tensors, meta = out / "pairs.safetensors", out / "pairs.json"
    if tensors.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        if info.get("key") == _pairs_key(config):
            data = load_file(str(tensors))
            return DistillPairs(data["inputs"], data["edited"], data["masks"], info["sources"], info["targets"]), \
                info["seconds_per_pair"]
    return None


def _collect_and_write_pairs(backbone, world, config: DistillConfig) -> tuple[DistillPairs, float]:
    import time

    from safetensors.torch import save_file

    out = Path(config.output_dir)
    started = time.perf_counter()
    pairs = collect_pairs(backbone, world, config)
    seconds = (time.perf_counter() - started) / len(pairs.sources)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"inputs": pairs.inputs.contiguous(), "edited": pairs.edited.contiguous(),
               "masks": pairs.masks.contiguous()}, str(out / "pairs.safetensors"))
    (out / "pairs.json").write_text(json.dumps({"key": _pairs_key(config), "sources": pairs.sources,
                                                "targets": pairs.targets, "seconds_per_pair": seconds}))
    return pairs, seconds


def distill(backbone, judge, world, config: DistillConfig) -> dict:
    """Collect (or reuse), filter, train, save: ``output_dir/translator/final`` and ``output_dir/distill.json``."""
    pairs, collect_seconds = cached_pairs(backbone, world, config)
    scores = pair_scores(judge, pairs)
    keep = keep_pairs(scores, config.clip_increase, config.inside_fraction)
    summary = {name: [round(float(q), 4) for q in torch.quantile(values.float(), torch.tensor([0.1, 0.5, 0.9]))]
               for name, values in scores.items()}
    report = {"config": asdict(config), "teacher_settings": teacher_settings(config.model),
              "pairs_collected": len(keep), "pairs_kept": int(keep.sum()),
              "collect_seconds_per_pair": collect_seconds, "score_quantiles_10_50_90": summary}
    out = Path(config.output_dir)
    if is_main_process():  # under `accelerate launch` the first process writes the run's files
        out.mkdir(parents=True, exist_ok=True)
        (out / "distill.json").write_text(json.dumps(report, indent=2))
    if int(keep.sum()) < 2:
        raise RetouchError(f"only {int(keep.sum())} of {len(keep)} pairs pass the filter (judge-score rise ≥ "
                           f"{config.clip_increase:g}, change inside the object ≥ {config.inside_fraction:g}; "
                           f"10/50/90 % quantiles {summary}); collect more pairs or lower the thresholds")
    kept = DistillPairs(pairs.inputs[keep], pairs.edited[keep], pairs.masks[keep],
                   [s for s, k in zip(pairs.sources, keep) if k], [t for t, k in zip(pairs.targets, keep) if k])
    # Training resumes from translator/checkpoints; checkpoints made on another set of pairs are stale.
    kept_record = out / "translator" / "kept.json"
    kept_rows = keep.nonzero().flatten().tolist()
    if is_main_process():
        if kept_record.is_file() and json.loads(kept_record.read_text()) != kept_rows:
            import shutil

            shutil.rmtree(out / "translator", ignore_errors=True)
        kept_record.parent.mkdir(parents=True, exist_ok=True)
        kept_record.write_text(json.dumps(kept_rows))
    wait_for_everyone()  # no process may resume from a stale checkpoint the first one is removing
    model, result = train_translator(kept, config)
    report.update(train_seconds=result.seconds, train_samples_per_second=result.samples_per_second)
    if is_main_process():  # every process holds the same synchronised weights
        model.save_pretrained(final_translator(out))
        (out / "distill.json").write_text(json.dumps(report, indent=2))
    wait_for_everyone()  # returning means the translator folder is complete, on every process
    return report


def distill_on_mini_world(config: DistillConfig, judge_dir: str | Path | None = None) -> str:
    """``retouch train distill``: :func:`distill` with ``config.model`` making the pairs on the mini world and
    the judge in ``judge_dir`` (default: the mini judge) scoring them; the counts are checked before any
    model loads. Returns the line to print."""
    from retouch.backbone import MINI_DIR, load_backbone
    from retouch.metrics import TransformersCLIPJudge
    from retouch.world import World

    check_options(config)
    judge = TransformersCLIPJudge(judge_dir or MINI_DIR / "judge")
    report = distill(load_backbone(config.model), judge, World(seed=0), config)
    return (f"kept {report['pairs_kept']} of {report['pairs_collected']} pairs; translator in "
            f"{final_translator(config.output_dir)} (trained {report['train_seconds'] / 60:.1f} min)")


def load_translator(folder: str | Path):
    from diffusers import UNet2DModel

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise RetouchError(f"no distilled translator in '{path}': run `retouch train distill` first")
    return UNet2DModel.from_pretrained(path, use_safetensors=True).eval()
