"""Labelled contact sheets for the benchmark figures (docs/*.png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def save_labelled_rows(rows, path: Path, labels, upscale: int = 2) -> None:
    """One strip per row of images ((3, H, W) or (1, H, W) tensors in [0, 1], or (H, W, 3) arrays).

    A row's label is a string (written over its first panel) or a list of one caption per panel.
    """
    from retouch.imageio import save_image, side_by_side

    strips = []
    for row, label in zip(rows, labels):
        panels = [as_array(image).repeat(upscale, 0).repeat(upscale, 1) for image in row]
        captions = [label] + [""] * (len(panels) - 1) if isinstance(label, str) else list(label)
        strips.append(side_by_side(panels, labels=captions))
    width = max(s.shape[1] for s in strips)
    sheet = np.concatenate([np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=1.0) for s in strips])
    save_image(sheet, path, make_parents=True)


def as_array(image) -> np.ndarray:
    """(H, W, 3) float array of an image tensor (C, H, W) or array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        image = image.expand(3, -1, -1) if image.shape[0] == 1 else image
        return image.permute(1, 2, 0).numpy()
    return np.asarray(image, dtype=np.float32)
