"""Attribute edits on held-out mini-world scenes, read by two independent readers.

``retouch eval edits`` and ``retouch demo`` both score an edit the same way (issue 19's targets):

* **success**: the pixel probes (:mod:`retouch.world.probe`) and, separately, the zero-shot judge read
  the edited attribute as the target value;
* **kept**: the probes still read every other attribute of the object as before;
* **background L1**: mean |edited − input| outside the region the renderer's own edit changes
  (the object before ∪ after, grown by ``MASK_GROWTH`` pixels: :func:`retouch.world.edits.true_edits`);
  the autoencoder's round trip of the input is reported beside it as the floor;
* **centre moved**: the distance in pixels between the object's centroid in the edited image and in
  the renderer's own edit. An object's pixels are those that differ from the scene's background,
  which the renderer gives without the object, so the same rule reads both images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from retouch.world.edits import EditScenes, edit_scenes, true_edits

#: A pixel belongs to the object when one of its channels differs from the bare background by more than
#: this (in [0, 1]); far above the autoencoder's round-trip error on backgrounds (≈ 0.02 mean).
OBJECT_THRESHOLD = 0.25


def object_centres(images01: torch.Tensor, backgrounds01: torch.Tensor, threshold: float = OBJECT_THRESHOLD
                   ) -> np.ndarray:
    """(N, 2) centroids (y, x) of the pixels that differ from the bare background; NaN where none do."""
    differs = ((images01 - backgrounds01).abs().amax(dim=1) > threshold).numpy()
    centres = np.full((len(differs), 2), np.nan)
    for k, mask in enumerate(differs):
        ys, xs = np.nonzero(mask)
        if len(ys):
            centres[k] = ys.mean(), xs.mean()
    return centres


def bare_backgrounds(specs, size: int) -> torch.Tensor:
    """The backgrounds of ``specs`` without their objects, (N, 3, size, size) in [0, 1]."""
    from retouch.world.render import render_background

    return torch.from_numpy(np.stack([render_background(spec.background, spec.texture_seed, size)
                                      for spec in specs])).permute(0, 3, 1, 2).float()


@dataclass
class EditScores:
    """Per-scene scores of one edit (arrays of length N)."""

    probe_success: np.ndarray
    judge_success: np.ndarray | None
    kept: dict[str, np.ndarray]  # other attributes still read as before, by the probes
    background_l1: np.ndarray
    centre_moved: np.ndarray  # pixels; NaN when no object is found in the edited image

    def summary(self) -> dict:
        summary = {"probe_success": float(self.probe_success.mean()),
                   "judge_success": None if self.judge_success is None else float(self.judge_success.mean()),
                   "kept": {name: float(values.mean()) for name, values in self.kept.items()},
                   "background_l1": float(self.background_l1.mean()),
                   "centre_moved_px": float(np.nanmean(self.centre_moved)) if np.isfinite(self.centre_moved).any()
                   else None,
                   "object_lost": int(np.isnan(self.centre_moved).sum())}
        return summary

    def succeeded(self) -> np.ndarray:
        """Both readers agree the edit happened (the probes alone when there is no judge)."""
        return self.probe_success if self.judge_success is None else self.probe_success & self.judge_success


def score_edits(scenes: EditScenes, edited01: torch.Tensor, target: str, probes, judge=None,
                vocabularies: dict | None = None) -> EditScores:
    """Score ``edited01`` (N, 3, H, W) in [0, 1], the edits of ``scenes`` towards ``target``."""
    from retouch.metrics.pixel import background_preservation
    from retouch.train.evaluate_mini import classify
    from retouch.world import attributes, with_changes
    from retouch.world.vocabulary import attribute_of

    attribute = attribute_of(target)
    wanted = [with_changes(spec, **{attribute: target}) for spec in scenes.specs]
    wanted_labels = [attributes(spec) for spec in wanted]
    read = {name: values.tolist() for name, values in probes.predict(edited01).items()}
    probe_success = np.array([read[attribute][k] == labels[attribute] for k, labels in enumerate(wanted_labels)])
    kept = {name: np.array([read[name][k] == labels[name] for k, labels in enumerate(wanted_labels)])
            for name in read if name != attribute and name in wanted_labels[0] and name not in ("size", "position")}
    judge_success = None
    if judge is not None:
        judge_success = np.array([value == target for value in classify(judge, edited01, attribute, vocabularies)])
    truth, region = true_edits(scenes, target)
    background_l1 = background_preservation(scenes.images, edited01, region)["l1"].numpy()
    backgrounds = bare_backgrounds(scenes.specs, scenes.images.shape[-1])
    moved = np.linalg.norm(object_centres(edited01, backgrounds) - object_centres(truth, backgrounds), axis=1)
    return EditScores(probe_success, judge_success, kept, background_l1, moved)


def run_edit(backbone, method_name: str, scenes: EditScenes, settings: dict, *, batch: int = 25,
             texts: bool = True, progress=None) -> torch.Tensor:
    """Edit every scene with ``method_name`` (its config fields in ``settings``); returns (N, 3, H, W) in [0, 1].

    With ``texts`` the method gets each scene's caption and edited caption (``source_text``/``target_text``,
    or ``prompt`` for methods that only take the target); otherwise ``settings`` must say the edit.
    Scenes are edited in batches of scenes that share the same texts.
    """
    from retouch.methods import get_method, make_config

    method = get_method(method_name)
    names = set(method.option_names())
    outputs: list[torch.Tensor | None] = [None] * len(scenes.sources)
    groups: dict[tuple[str, str], list[int]] = {}
    for k, key in enumerate(zip(scenes.sources, scenes.targets)):
        groups.setdefault(key if texts else ("", ""), []).append(k)
    done = 0
    for (source, target), members in groups.items():
        for start in range(0, len(members), batch):
            chunk = members[start:start + batch]
            fields = dict(settings)
            if texts and "source_text" in names:
                fields.update(source_text=source, target_text=target)
            elif texts and "prompt" in names:
                fields.update(prompt=target)
            config = make_config(method, **fields)
            with torch.no_grad():
                edited = method.edit(backbone, scenes.images[chunk] * 2 - 1, config)
            for k, image in zip(chunk, ((edited.float() + 1) / 2).clamp(0, 1)):
                outputs[k] = image
            done += len(chunk)
            if progress is not None:
                progress(done, len(outputs))
    return torch.stack(outputs)


def evaluate_edits(backbone, world, edits: list[str], count: int, probes, judge=None, *,
                   method: str = "pix2pix-zero", settings: dict | None = None, batch: int = 25,
                   progress=None) -> tuple[dict, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Each ``SOURCE->TARGET`` edit on the first ``count`` held-out scenes whose object is SOURCE.

    ``progress(done, total)`` counts edited scenes over all edits. Returns the report (per edit: the summary of :class:`EditScores`, the round-trip floor of the
    background L1, seconds per edit) and, per edit, the input and edited images.
    """
    from retouch.metrics.pixel import background_preservation
    from retouch.edit_text import parse_edit

    report, images = {"method": method, "settings": settings or {}, "scenes_per_edit": count, "edits": {}}, {}
    for number, text in enumerate(edits):
        edit = parse_edit(text)
        scenes = edit_scenes(world, edit.source, edit.target, count)
        started = time.perf_counter()
        edited = run_edit(backbone, method, scenes, settings or {}, batch=batch,
                          progress=None if progress is None else
                          lambda done, _, offset=number * count: progress(offset + done, count * len(edits)))
        seconds = time.perf_counter() - started
        scores = score_edits(scenes, edited, edit.target, probes, judge, world.vocabularies)
        with torch.no_grad():
            round_trip = ((backbone.decode_latents(backbone.encode_images(scenes.images * 2 - 1)).float() + 1) / 2)
        _, region = true_edits(scenes, edit.target)
        floor = background_preservation(scenes.images, round_trip.clamp(0, 1), region)["l1"].mean()
        report["edits"][text] = {**scores.summary(), "background_l1_round_trip": float(floor),
                                 "seconds_per_edit": seconds / count}
        images[text] = (scenes.images, edited)
    return report, images


def save_edit_grid(images: dict[str, tuple[torch.Tensor, torch.Tensor]], path, columns: int = 8,
                   upscale: int = 2) -> None:
    """Per edit, a row of inputs above a row of their edits (the first ``columns`` scenes, never picked)."""
    from retouch.imageio import save_image

    rows = []
    for inputs, outputs in images.values():
        for batch in (inputs[:columns], outputs[:columns]):
            row = torch.cat(list(batch), dim=-1)  # (3, H, columns·W)
            rows.append(torch.nn.functional.pad(row, (0, 0, 0, 2), value=1.0))
    sheet = torch.cat(rows, dim=-2).permute(1, 2, 0).numpy()
    save_image(sheet.repeat(upscale, 0).repeat(upscale, 1), path, make_parents=True)


def run_edit_evaluation(edits: list[str], output, *, method: str = "pix2pix-zero", settings: dict | None = None,
                        count: int = 100, batch: int = 25, grid=None, models=None) -> str:
    """``retouch eval edits``: :func:`evaluate_edits` on the shipped mini models (or the ``models`` folder), with
    ``settings`` over the backbone's own defaults for the method, the report (which records the settings used)
    written to ``output`` (JSON) and the first scenes to ``grid``. Returns the report as text."""
    import json
    from pathlib import Path

    from retouch.backbone import MINI_DIR, load_backbone
    from retouch.imageio import check_outputs
    from retouch.methods import get_method, with_model_defaults
    from retouch.metrics import TransformersCLIPJudge
    from retouch.progress import count_bar
    from retouch.train.evaluate_portrait import check_output_file
    from retouch.world import World
    from retouch.world.probe import load_probes

    output = Path(output)
    check_output_file(output, ".json", "--output")
    if grid:
        check_outputs([Path(grid)])
    models = Path(models) if models else MINI_DIR
    # The backbone folder's own defaults for the method (method_defaults.json) under the given settings, as
    # `retouch edit` runs it; an unknown method fails here, before any work.
    settings = with_model_defaults(get_method(method), str(models / "backbone"), settings or {})
    backbone = load_backbone(str(models / "backbone"))
    world = World(seed=0, size=64)
    with count_bar(f"{method} edits", "scene") as progress:
        report, edited = evaluate_edits(backbone, world, list(edits), count, load_probes(models / "probes"),
                                        TransformersCLIPJudge(models / "judge"), method=method, settings=settings,
                                        batch=batch, progress=progress)
    output.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1)
    output.write_text(text + "\n")
    if grid:
        save_edit_grid(edited, grid)
    return text
