"""Table 1 and Fig. 8 of the portrait paper (Chen et al. 2024, §4) on the mini world.

Inputs: held-out (test-split) single-object scenes per direction — plain → striped and no hat →
wearing a hat (:func:`retouch.world.edits.edit_scenes`), with their captions before and after the
edit. Systems: trained MCDMs (each with and without mask guidance, the paper's "w/o mask" row) and
the training-free baselines through the method registry on one text-to-image backbone — SDEdit at
strength 0.5 and 0.8 (target caption as prompt), DiffEdit (caption → edited caption), prompt-to-prompt
(word swap, or "refine" when the target adds words) and pix2pix-zero (edit direction from mini-world
sentence banks). Three reference rows calibrate the metrics: the input itself, the input through the
backbone's autoencoder (what any latent model's output has been through), and the renderer's true edit.

Metrics per (system, direction), all on images in [0, 1]:

* edit success — the attribute probe (:mod:`retouch.world.probe`) reads the target value on the
  output; CLIP-Acc — the zero-shot judge finds the output closer to the target caption than to the
  source one (pix2pix-zero §4.1; blind to pattern on this world, see the probe module);
* identity — the probe's shape, colour and position on the output equal its reading of the input
  (each, and all three at once);
* background — PSNR (per image capped at ``PSNR_CAP``, so an untouched background does not make the
  mean infinite) and L1 outside the edit region, the object before ∪ after the true edit grown 2 px;
* mask IoU — for systems that make a mask (MCDM's, DiffEdit's), against that same region, the
  latent mask upsampled nearest to pixels.

``retouch eval portrait`` writes the table (Markdown), the numbers (JSON) and the figure.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from retouch.errors import RetouchError, check_range
from retouch.world.vocabulary import VOCABULARIES, attribute_of

#: The issue's two directions: MCDM edit name → (source word, target word) of ``edit_scenes``.
DIRECTIONS = {"striped": ("plain", "striped"), "hat": ("none", "hat")}
#: Per-image background PSNR cap (dB): identical backgrounds score this instead of infinity.
PSNR_CAP = 100.0
#: Attributes an edit of either direction must leave alone.
IDENTITY_ATTRIBUTES = ("shape", "colour", "position")
#: The training-free baselines: key (``--baselines``) → row name.
BASELINE_NAMES = {"sdedit-0.5": "SDEdit 0.5", "sdedit-0.8": "SDEdit 0.8", "diffedit": "DiffEdit",
                  "p2p": "prompt-to-prompt", "pix2pix-zero": "pix2pix-zero"}
BASELINES = tuple(BASELINE_NAMES)
REFERENCE_INPUT, REFERENCE_AUTOENCODER, REFERENCE_TRUTH = "input (no edit)", "autoencoder round trip", "ground truth"

#: ``edit(images (B, 3, H, W) in [−1, 1], source caption, target caption, direction) ->
#: (images in [−1, 1], latent mask (B, 1, h, w) or None)``.
EditFn = Callable[[torch.Tensor, str, str, str], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class DirectionInputs:
    direction: str  # "striped" or "hat"
    attribute: str  # the attribute the edit changes
    target_word: str
    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    sources: list[str]
    targets: list[str]
    edit_masks: torch.Tensor  # (N, 1, H, W) float: the object before ∪ after the true edit, grown
    true_images: torch.Tensor  # (N, 3, H, W): the renderer's edit


def direction_inputs(world, direction: str, count: int, split: str = "test") -> DirectionInputs:
    from retouch.world.edits import edit_scenes, true_edits

    source, target = DIRECTIONS[direction]
    scenes = edit_scenes(world, source, target, count, split=split)
    truth, region = true_edits(scenes, target)
    return DirectionInputs(direction, attribute_of(target), target, scenes.images, scenes.sources, scenes.targets,
                           region, truth)


@dataclass
class System:
    """One row of the table: ``edit`` runs on groups of images sharing a source caption (``per_caption``)
    or on whole batches (the MCDM's prompts do not depend on the caption)."""

    name: str
    edit: EditFn
    per_caption: bool = True
    directions: tuple[str, ...] = tuple(DIRECTIONS)
    group: str = "baseline"  # "reference", "ours" or "baseline"


def run_system(system: System, inputs: DirectionInputs, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All inputs through ``system.edit``: (images (N, 3, H, W) in [0, 1], pixel masks (N, 1, H, W) bool or None)."""
    n, size = len(inputs.images), tuple(inputs.images.shape[-2:])
    images: list = [None] * n
    masks: list = [None] * n
    for start in range(0, n, batch):
        groups: dict = {}
        for row in range(start, min(start + batch, n)):
            groups.setdefault(inputs.sources[row] if system.per_caption else None, []).append(row)
        for rows in groups.values():
            edited, mask = system.edit(inputs.images[rows] * 2 - 1, inputs.sources[rows[0]], inputs.targets[rows[0]],
                                       inputs.direction)
            edited = ((edited.float().clamp(-1, 1) + 1) / 2).cpu()
            if mask is not None:
                mask = F.interpolate(mask.float().cpu(), size=size, mode="nearest") > 0.5
            for k, row in enumerate(rows):
                images[row] = edited[k]
                masks[row] = None if mask is None else mask[k]
    stacked_masks = None if any(m is None for m in masks) else torch.stack(masks)
    return torch.stack(images), stacked_masks


# ---------------------------------------------------------------------------------------------
# Systems
# ---------------------------------------------------------------------------------------------
def baseline_run(name: str, backbone, source: str, target: str, direction: str, *, num_steps: int = 20,
                 seed: int = 0):
    """(method, validated config) of baseline ``name`` for one input's source and target captions.

    SDEdit prompts with the target caption; DiffEdit contrasts target (query) and source (reference);
    prompt-to-prompt samples both captions; pix2pix-zero inverts with the source caption and takes
    its edit direction from mini-world sentence banks of the direction's two words.
    """
    from retouch.methods import make_config

    method = _baseline_method(name)
    key = method.name
    if key == "sdedit":
        values = dict(prompt=target, strength=float(name.split("-", 1)[1]), seed=seed)
    elif key == "diffedit":
        values = dict(prompt=target, source_text=source, seed=seed)
    elif key == "p2p":
        values = dict(source_text=source, target_text=target, attention_edit=_attention_edit(backbone, source, target))
    else:
        words = DIRECTIONS[direction]
        values = dict(edit=f"{words[0]}->{words[1]}", source_text=source, bank="world", seed=seed)
    return method, make_config(method, num_steps=num_steps, **values)


def _baseline_method(name: str):
    from retouch.methods import available_methods

    if name not in BASELINES:
        raise RetouchError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    key = "sdedit" if name.startswith("sdedit-") else name
    methods = available_methods()
    if key not in methods:
        raise RetouchError(f"this installation has no '{key}' method; leave {name} out of the baselines")
    return methods[key]


def baseline_systems(backbone, names=BASELINES, *, num_steps: int = 20, seed: int = 0) -> list[System]:
    """The training-free baselines of Table 1 on ``backbone``; DiffEdit's rows keep its mask."""
    systems = []
    for name in names:
        _baseline_method(name)  # an unknown or missing method fails before any work

        def edit(images, source, target, direction, name=name):
            method, config = baseline_run(name, backbone, source, target, direction, num_steps=num_steps, seed=seed)
            if name == "diffedit":
                from retouch.methods.diffedit import diffedit_edit

                result = diffedit_edit(backbone, images, config)
                return result.images, result.mask
            return method.edit(backbone, images, config), None

        systems.append(System(BASELINE_NAMES[name], edit))
    return systems


def _attention_edit(backbone, source: str, target: str) -> str:
    """prompt-to-prompt's word swap needs equal token counts; a target that adds words ("wearing a hat") refines."""
    def count(text):
        return len(backbone.tokenizer(text).input_ids)

    return "replace" if count(source) == count(target) else "refine"


def mcdm_systems(name: str, model, *, num_steps: int = 20, seed: int = 0) -> list[System]:
    """Rows ``name`` (mask-guided, §3.4 Eq. 3) and ``name w/o mask`` for one trained MCDM."""
    from retouch.methods.portrait import PortraitConfig, portrait_edit

    known = tuple(d for d in DIRECTIONS if d in model.spec.directions)
    systems = []
    for guided in (True, False):
        def edit(images, source, target, direction, guided=guided):
            config = PortraitConfig(edit=direction, num_steps=num_steps, mask_guidance=guided, seed=seed)
            result = portrait_edit(model, images, config)
            return result.images, result.mask

        systems.append(System(name if guided else f"{name} w/o mask", edit, per_caption=False, directions=known,
                              group="ours"))
    return systems


def reference_systems(backbone) -> list[System]:
    """The input unchanged and its autoencoder round trip (the renderer's true edit is added by :func:`evaluate`)."""
    def unchanged(images, source, target, direction):
        return images, None

    @torch.no_grad()
    def round_trip(images, source, target, direction):
        return backbone.decode_latents(backbone.encode_images(images.to(backbone.device, backbone.dtype))), None

    return [System(REFERENCE_INPUT, unchanged, per_caption=False, group="reference"),
            System(REFERENCE_AUTOENCODER, round_trip, per_caption=False, group="reference")]


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
def mask_iou(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(B,) intersection over union of two (B, 1, H, W) masks; two empty masks score 1."""
    predicted, truth = predicted.bool().flatten(1), (truth > 0.5).flatten(1)
    union = (predicted | truth).sum(1)
    return torch.where(union > 0, (predicted & truth).sum(1) / union.clamp_min(1), torch.ones_like(union)).float()


def scene_scores(inputs: DirectionInputs, outputs: torch.Tensor, masks: torch.Tensor | None, probes, judge=None,
                 before: dict | None = None) -> dict[str, torch.Tensor]:
    """Per-input values (N,) of every metric of one (system, direction): success, identity (all and per
    attribute), background PSNR (capped) and L1, mask IoU (when the system made masks) and CLIP-Acc
    (with a judge). ``before`` is the probes' reading of the inputs (computed if None)."""
    from retouch.metrics import background_preservation, clip_accuracy

    before = probes.predict(inputs.images) if before is None else before
    after = probes.predict(outputs)
    target = VOCABULARIES[inputs.attribute].index(inputs.target_word)
    same = {name: after[name] == before[name] for name in IDENTITY_ATTRIBUTES}
    background = background_preservation(inputs.images, outputs, inputs.edit_masks)
    scores = {
        "success": (after[inputs.attribute] == target).float(),
        "identity": torch.stack(list(same.values())).all(0).float(),
        **{f"identity_{name}": value.float() for name, value in same.items()},
        "background_psnr": background["psnr"].clamp(max=PSNR_CAP).float(),
        "background_l1": background["l1"].float(),
    }
    if masks is not None:
        scores["mask_iou"] = mask_iou(masks, inputs.edit_masks)
    if judge is not None:
        scores["clip_accuracy"] = clip_accuracy(judge, outputs, inputs.sources, inputs.targets).float()
    return scores


def score_direction(inputs: DirectionInputs, outputs: torch.Tensor, masks: torch.Tensor | None, probes, judge=None,
                    before: dict | None = None) -> dict:
    """The means of :func:`scene_scores` (``mask_iou`` None for a system without masks) and the count."""
    scores = scene_scores(inputs, outputs, masks, probes, judge, before)
    return {"count": len(outputs), **{name: float(value.mean()) for name, value in scores.items()},
            "mask_iou": float(scores["mask_iou"].mean()) if "mask_iou" in scores else None}


@dataclass
class Evaluation:
    rows: list[dict] = field(default_factory=list)  # one per (system, direction): name, group, direction, metrics
    figure: dict = field(default_factory=dict)  # direction → {system name → (k, 3, H, W) first outputs}


def evaluate(systems: list[System], inputs: dict[str, DirectionInputs], probes, judge=None, *, batch: int = 25,
             figure_rows: int = 0, log: Callable[[str], None] | None = None) -> Evaluation:
    """Every system on every direction it knows, then the renderer's true edit, scored by :func:`score_direction`."""
    result = Evaluation()
    for direction, data in inputs.items():
        before = probes.predict(data.images)
        result.figure[direction] = {"input": data.images[:figure_rows]}
        truth = System(REFERENCE_TRUTH, None, group="reference")
        for system in [*systems, truth]:
            if direction not in system.directions:
                continue
            started = time.perf_counter()
            if system is truth:
                outputs, masks = data.true_images, None
            else:
                outputs, masks = run_system(system, data, batch)
            seconds = time.perf_counter() - started
            row = {"system": system.name, "group": system.group, "direction": direction,
                   **score_direction(data, outputs, masks, probes, judge, before),
                   "seconds_per_image": seconds / len(outputs)}
            result.rows.append(row)
            result.figure[direction][system.name] = outputs[:figure_rows]
            if log is not None:
                log(f"{direction}: {system.name}: {seconds:.1f} s ({row['seconds_per_image']:.2f} s/image), "
                    f"success {row['success']:.2f}, identity {row['identity']:.2f}, "
                    f"BG PSNR {row['background_psnr']:.1f}")
    return result


# ---------------------------------------------------------------------------------------------
# Table and figure
# ---------------------------------------------------------------------------------------------
_COLUMNS = (("success", "success ↑", "{:.2f}"), ("clip_accuracy", "CLIP-Acc ↑", "{:.2f}"),
            ("identity", "identity ↑", "{:.2f}"), ("background_psnr", "BG PSNR ↑", "{:.1f}"),
            ("background_l1", "BG L1 ↓", "{:.4f}"), ("mask_iou", "mask IoU ↑", "{:.2f}"),
            ("seconds_per_image", "s/image", "{:.2f}"))
_IDENTITY_COLUMNS = tuple((f"identity_{name}", name, "{:.2f}") for name in IDENTITY_ATTRIBUTES)


def _cell(row: dict | None, key: str, fmt: str) -> str:
    value = None if row is None else row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return fmt.format(value)


def portrait_table(rows: list[dict], columns=_COLUMNS) -> str:
    """Table 1's layout: one row per system, a block of ``columns`` per direction ("—": not run or no mask)."""
    directions = [d for d in DIRECTIONS if any(r["direction"] == d for r in rows)]
    names = list(dict.fromkeys(r["system"] for r in rows))
    by_key = {(r["system"], r["direction"]): r for r in rows}
    header = ["system"] + [f"{DIRECTIONS[d][0]}→{DIRECTIONS[d][1]} {label}"
                           for d in directions for _, label, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name in names:
        cells = [_cell(by_key.get((name, d)), key, fmt) for d in directions for key, _, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(rows: list[dict], header: str) -> str:
    return (f"{header}\n\n{portrait_table(rows)}\nIdentity per attribute (probe on output = probe on input):\n\n"
            f"{portrait_table(rows, _IDENTITY_COLUMNS)}")


def save_figure(figure: dict, path, upscale: int = 2) -> None:
    """Fig. 8's layout: a strip per input (rows), columns input, each system, ground truth (last)."""
    import numpy as np

    from retouch.imageio import save_image, side_by_side

    strips = []
    for direction, columns in figure.items():
        names = [n for n in columns if n not in (REFERENCE_TRUTH, REFERENCE_INPUT)]
        names += [REFERENCE_TRUTH] if REFERENCE_TRUTH in columns else []
        for k in range(len(columns["input"])):
            panels = [columns[n][k].permute(1, 2, 0).numpy().repeat(upscale, 0).repeat(upscale, 1) for n in names]
            # Pillow's default font has no arrow glyph
            labels = ["->".join(DIRECTIONS[direction]) if n == "input" else n for n in names]
            strips.append(side_by_side(panels, labels=labels if k == 0 else None))
    if not strips:
        raise RetouchError("the figure needs at least one input row")
    width = max(s.shape[1] for s in strips)
    sheet = np.concatenate([np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0)), constant_values=1.0) for s in strips])
    save_image(sheet, path)


# ---------------------------------------------------------------------------------------------
# The whole run: ``retouch eval portrait``
# ---------------------------------------------------------------------------------------------
def check_output_file(path, suffix: str, flag: str) -> None:
    """Refuse a report path with another suffix or in a folder that does not exist (before any work)."""
    if path.suffix.lower() != suffix:
        raise RetouchError(f"{flag} must be a {suffix} file; got '{path}'")
    if not path.parent.is_dir():
        raise RetouchError(f"cannot write '{path}': folder '{path.parent}' does not exist")


def run_portrait_table(output, *, models: dict[str, str] | None = None, baselines: list[str] = BASELINES,
                   backbone: str = "mini", count: int = 100, num_steps: int = 20, batch: int = 25, seed: int = 0,
                   probes=None, figure=None, figure_rows: int = 3,
                   log: Callable[[str], None] | None = None) -> str:
    """Table 1 and Fig. 8: the reference rows, each MCDM of ``models`` (name → folder) with and without mask
    guidance and the ``baselines`` on ``backbone``, on ``count`` held-out inputs per direction. Writes the
    Markdown table to ``output``, the numbers to the same name with .json and the figure to ``figure``.
    Everything is checked before any model loads. Returns the line to print."""
    import json
    from pathlib import Path

    from retouch.backbone import MINI_DIR, load_backbone
    from retouch.imageio import atomic_write_text
    from retouch.networks.portrait import PortraitModel
    from retouch.metrics import TransformersCLIPJudge
    from retouch.world import World
    from retouch.world.probe import SHIPPED_PROBES, load_probes

    output = Path(output)
    check_output_file(output, ".md", "--output")
    if figure is not None:
        figure = Path(figure)
        check_output_file(figure, ".png", "--figure")
    for flag, value in (("--count", count), ("--num-steps", num_steps), ("--batch", batch)):
        check_range(flag, value, 1)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise RetouchError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)} or none")
    models = dict(models or {})
    loaded = {name: PortraitModel.load(Path(folder)) for name, folder in models.items()}
    probe_set = load_probes(probes or SHIPPED_PROBES)
    text_to_image = load_backbone(backbone)
    systems = reference_systems(text_to_image)
    for name, model in loaded.items():
        systems += mcdm_systems(name, model, num_steps=num_steps, seed=seed)
    systems += baseline_systems(text_to_image, list(baselines), num_steps=num_steps, seed=seed)
    world = World(seed=seed, size=64)
    inputs = {d: direction_inputs(world, d, count) for d in DIRECTIONS}
    judge = TransformersCLIPJudge(MINI_DIR / "judge")
    result = evaluate(systems, inputs, probe_set, judge, batch=batch, figure_rows=figure_rows if figure else 0,
                      log=log)
    header = (f"Mini world, {count} held-out inputs per direction, {num_steps} DDIM steps, baselines on "
              f"`{backbone}`, seed {seed}. Success and identity by the attribute probes; CLIP-Acc by the "
              "zero-shot mini judge; background outside the true edit region (PSNR capped at "
              f"{PSNR_CAP:g} dB per image); mask IoU against that region.")
    atomic_write_text(output, report_markdown(result.rows, header))
    atomic_write_text(output.with_suffix(".json"), json.dumps({"settings": {
        "count": count, "num_steps": num_steps, "backbone": backbone, "seed": seed, "models": models,
        "baselines": list(baselines)}, "rows": result.rows}, indent=2) + "\n")
    if figure is not None:
        save_figure(result.figure, figure)
    return f"wrote {output} and {output.with_suffix('.json')}" + (f" and {figure}" if figure else "")
