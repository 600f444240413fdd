"""``retouch world``: mini-world scenes (or side-by-side pairs) written as PNGs with their per-object masks
and one ``scenes.jsonl`` of captions and attributes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from retouch.errors import RetouchError, check_range


def write_scenes(folder: Path, *, count: int = 16, start: int = 0, seed: int = 0, size: int = 64,
                 change: str | None = None, grid: Path | None = None) -> str:
    """Render scenes ``start`` … ``start + count - 1`` of the world ``seed`` into ``folder`` (or, with
    ``change`` = ``"ATTR=VALUE[,…]"``, pairs with the right object changed), and a contact sheet to
    ``grid``. The arguments and outputs are checked before any work. Returns the line to print."""
    from retouch.imageio import atomic_write_text, check_outputs, save_image
    from retouch.world import VOCABULARIES, World, sample_grid

    check_range("--count", count, 1, 100_000)
    check_range("--size", size, 16, 1024)
    check_range("--start", start, 0)
    changes = parse_change(change, VOCABULARIES) if change is not None else None
    first = f"{'pair' if changes is not None else 'scene'}_{start:06d}.png"
    check_outputs([folder / first, *([grid] if grid else [])])
    mini = World(seed=seed, size=size)
    records = []
    for index in range(start, start + count):
        if changes is not None:
            left, right, rendered, prompts = mini.pair(index, changes)
            record = {"index": index, "caption": prompts.shared, "left_caption": prompts.left,
                      "right_caption": prompts.right,
                      "left": _spec_dict(left), "right": _spec_dict(right)}
            name = f"pair_{index:06d}"
        else:
            spec, rendered, text = mini.scene(index)
            record = {"index": index, "split": mini.split(index), "caption": text, "scene": _spec_dict(spec)}
            name = f"scene_{index:06d}"
        save_image(rendered.image, folder / f"{name}.png", make_parents=True)
        # mask PNG: 0 = background, k = object k (1-based), scaled so it is visible in a viewer
        labels = np.zeros(rendered.image.shape[:2], dtype=np.float32)
        for k, mask in enumerate(rendered.masks, start=1):
            labels[mask] = k
        save_image(labels / 3.0, folder / f"{name}_mask.png")
        records.append({**record, "image": f"{name}.png", "mask": f"{name}_mask.png"})
    atomic_write_text(folder / "scenes.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    if grid is not None:
        rows = max(1, min(4, count // 8))
        save_image(sample_grid(mini, rows, 8, start=start), grid, make_parents=True)
    return (f"wrote {count} {'pairs' if changes is not None else 'scenes'} to {folder}"
            + (f" and a contact sheet to {grid}" if grid else ""))


def parse_change(text: str, vocabularies: dict) -> dict:
    """``"pattern=striped,colour=blue"`` → dict, checked against the world's vocabularies."""
    changes = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if name not in vocabularies or name in ("background", "position"):
            choices = ", ".join(n for n in vocabularies if n not in ("background", "position"))
            raise RetouchError(f"bad --pairs {text!r}: attribute must be one of {choices}")
        if value not in vocabularies[name]:
            raise RetouchError(f"bad --pairs {text!r}: {name} must be one of {', '.join(vocabularies[name])}")
        changes[name] = value
    return changes


def _spec_dict(spec) -> dict:
    return {"background": spec.background,
            "objects": [dataclasses.asdict(obj) for obj in spec.objects]}
