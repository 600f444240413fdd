"""Pre-rendered, pre-encoded training shards: the U-Net's data path as pure compute.

Rendering a scene, encoding it with the frozen autoencoder and tokenizing its caption cost as much
CPU per sample as a small U-Net's gradient step. None of it changes between epochs (the autoencoder
and text encoder are frozen while the U-Net trains), so it is done once, here, and every training
step only indexes tensors in memory.

A shard folder holds ``shard_00000.safetensors``, … (``shard_size`` scenes each) and ``shards.json``
(the world, the autoencoder's fingerprint, the caption length). Per scene a shard stores:

* ``latents`` (C, h, w) float16 — the posterior mode of the autoencoder, unscaled;
* ``input_ids`` (L,) int32 — the scene's caption, tokenized and padded;
* ``object_cells`` (1, h, w) uint8 — 1 where any object touches the latent cell (loss weighting);
* ``labels`` (A,) int16 — the main object's attribute indices (``retouch.world.attributes`` order);
* ``scene_index`` int64 — the world index, so any row can be re-rendered.

Building is resumable: finished shards are kept, a half-written one never exists (each shard is
written to a temporary name, then renamed), and a folder built for another world or autoencoder is
refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retouch.errors import RetouchError

_FORMAT = "retouch-latent-shards/1"


def autoencoder_fingerprint(vae) -> str:
    """A short hash of the encoder's weights: latents from another encoder must not be mixed in."""
    digest = hashlib.sha1()
    for name, tensor in sorted(vae.encoder.state_dict().items()) + sorted(vae.quant_conv.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_indices(world, count: int, split: str = "train", start: int = 0) -> np.ndarray:
    """The first ``count`` world indices from ``start`` on whose split is ``split``."""
    out, index = [], start
    while len(out) < count:
        if world.split(index) == split:
            out.append(index)
        index += 1
    return np.asarray(out, dtype=np.int64)


@torch.no_grad()
def build_latent_shards(world, vae, tokenizer, folder: Path, count: int, *, text_length: int = 32,
                        shard_size: int = 8192, batch: int = 256, split: str = "train", progress=None) -> Path:
    """Render, encode and tokenize the first ``count`` ``split`` scenes of ``world`` into ``folder``."""
    from retouch.world import attributes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    latent_side = world.size // (2 ** (len(vae.config.block_out_channels) - 1))
    manifest = {"format": _FORMAT, "world_seed": world.seed, "world_size": world.size,
                "profile": world.profile.name, "split": split, "count": int(count), "shard_size": int(shard_size),
                "text_length": int(text_length), "latent_channels": int(vae.config.latent_channels),
                "latent_side": int(latent_side), "autoencoder": autoencoder_fingerprint(vae),
                "tokenizer_size": len(tokenizer)}
    manifest_path = folder / "shards.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old != manifest:
            changed = sorted(k for k in manifest if old.get(k) != manifest[k])
            raise RetouchError(f"'{folder}' holds shards of another build ({', '.join(changed)} differ); "
                               "use a new folder")
    else:
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    indices = train_indices(world, count, split)
    vae = vae.eval()
    shards = range(0, count, shard_size)
    for number, first in enumerate(shards):
        path = folder / f"shard_{number:05d}.safetensors"
        if not path.exists():
            _write_shard(world, vae, tokenizer, indices[first:first + shard_size], path, text_length, latent_side,
                         batch, attributes)
        if progress is not None:
            progress(number + 1, len(shards))
    return folder


def _write_shard(world, vae, tokenizer, indices, path: Path, text_length: int, latent_side: int, batch: int,
                 attributes) -> None:
    from safetensors.torch import save_file

    latents, ids, cells, labels = [], [], [], []
    for start in range(0, len(indices), batch):
        images, captions, masks = [], [], []
        for index in indices[start:start + batch]:
            spec, rendered, caption = world.scene(int(index))
            images.append(rendered.image)
            captions.append(caption)
            masks.append(rendered.masks.any(axis=0))
            labels.append(list(attributes(spec).values()))
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) * 2 - 1
        latents.append(vae.encode(pixels).latent_dist.mode().to(torch.float16))
        ids.append(tokenizer(captions, padding="max_length", max_length=text_length, truncation=True,
                             return_tensors="pt").input_ids.to(torch.int32))
        mask = torch.from_numpy(np.stack(masks)).float()[:, None]
        cells.append((torch.nn.functional.adaptive_max_pool2d(mask, latent_side) > 0).to(torch.uint8))
    tensors = {"latents": torch.cat(latents).contiguous(), "input_ids": torch.cat(ids).contiguous(),
               "object_cells": torch.cat(cells).contiguous(),
               "labels": torch.tensor(labels, dtype=torch.int16).contiguous(),
               "scene_index": torch.from_numpy(np.asarray(indices, dtype=np.int64)).contiguous()}
    temporary = path.with_suffix(".partial")
    save_file(tensors, str(temporary))
    os.replace(temporary, path)


@dataclass
class LatentShards:
    """All shards of a folder in memory; :meth:`batch` draws a step's rows as a pure function of the step."""

    latents: torch.Tensor  # (N, C, h, w) float16, unscaled
    input_ids: torch.Tensor  # (N, L) int64
    object_cells: torch.Tensor  # (N, 1, h, w) float32
    labels: torch.Tensor  # (N, A) int64
    scene_index: torch.Tensor  # (N,) int64
    manifest: dict

    @classmethod
    def load(cls, folder: Path, limit: int | None = None) -> "LatentShards":
        from safetensors.torch import load_file

        folder = Path(folder)
        manifest_path = folder / "shards.json"
        if not manifest_path.is_file():
            raise RetouchError(f"no latent shards in '{folder}' (no shards.json); build them first")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != _FORMAT:
            raise RetouchError(f"'{manifest_path}' is not a {_FORMAT} manifest")
        parts = [load_file(str(path)) for path in sorted(folder.glob("shard_*.safetensors"))]
        if not parts:
            raise RetouchError(f"'{folder}' has a manifest but no finished shard")
        joined = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        if limit is not None:
            joined = {key: value[:limit] for key, value in joined.items()}
        return cls(joined["latents"], joined["input_ids"].long(), joined["object_cells"].float(),
                   joined["labels"].long(), joined["scene_index"], manifest)

    def __len__(self) -> int:
        return len(self.latents)

    def batch(self, step: int, size: int, rank: int = 0, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """(latents float32, input_ids, object_cells) of ``size`` rows drawn with replacement."""
        rows = torch.from_numpy(np.random.default_rng([seed, step, rank, 17]).integers(0, len(self), size))
        return self.latents[rows].float(), self.input_ids[rows], self.object_cells[rows]
