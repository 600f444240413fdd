"""Fit a model's terminal prior (:mod:`retouch.terminal_prior`) on the mini world's training scenes.

``retouch train terminal-prior`` runs :func:`fit_world_terminal_prior` and saves the prior beside the
weights, where text-to-image sampling finds it. Seconds of compute: no network is trained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from retouch.terminal_prior import TerminalPrior, fit_terminal_prior, text_features


@torch.no_grad()
def fit_world_terminal_prior(backbone, world, count: int = 4096, *, empty_share: float = 0.1, ridge: float = 1e-3,
                             batch: int = 128, progress=None) -> tuple[TerminalPrior, dict]:
    """The prior from the first ``count`` train-split scenes of ``world`` (every scene kind, as the U-Net
    was trained), each with its caption and, for a share ``empty_share`` of them, also with the empty
    caption (classifier-free training's unconditional case, whose channel means are the world's average).

    Returns the prior and a report: the fit's share of the channel means' variance it explains (R²) on
    the fitted scenes and on as many validation-split scenes.
    """
    from retouch.world.heldout import held_out_scenes

    val_count = min(count, 1024)
    done = 0

    def encode(split: str, total: int):
        """Text states and latents of the first ``total`` scenes of ``split`` (every scene kind)."""
        nonlocal done
        scenes = held_out_scenes(world, total, single_object=False, split=split)
        states, latents = [], []
        for first in range(0, total, batch):
            captions = list(scenes.captions[first:first + batch])
            states.append(backbone.encode_text(captions).hidden_states.float().cpu())
            latents.append(backbone.encode_images(scenes.images[first:first + batch] * 2 - 1).float().cpu())
            done += len(captions)
            if progress is not None:
                progress(done, count + val_count)
        return torch.cat(states), torch.cat(latents)

    states, latents = encode("train", count)
    empty = int(round(empty_share * count))
    if empty:
        states = torch.cat([states, backbone.encode_text([""]).hidden_states.float().cpu().expand(empty, -1, -1)])
        latents = torch.cat([latents, latents[:empty]])
    prior = fit_terminal_prior(states, latents, ridge=ridge)
    val_states, val_latents = encode("val", val_count)
    report = {"train_scenes": count, "empty_caption_rows": empty, "ridge": ridge,
              "r2_train": _r2(prior, states[:count], latents[:count]), "r2_val": _r2(prior, val_states, val_latents),
              "channel_mean_std": latents[:count].mean(dim=(2, 3)).std(dim=0).tolist(),
              "residual_std": prior.residual_std.tolist()}
    return prior, report


def _r2(prior: TerminalPrior, states: torch.Tensor, latents: torch.Tensor) -> list[float]:
    """Per channel: 1 − (variance left by the fit) / (variance of the channel means)."""
    targets = latents.mean(dim=(2, 3))
    left = targets - text_features(states) @ prior.weight
    return (1 - left.var(dim=0) / targets.var(dim=0)).tolist()


def train_terminal_prior(model_dir: str | Path, *, count: int = 4096, seed: int = 0, profile: str | None = None,
                         progress=None) -> dict:
    """Fit the prior for the backbone in ``model_dir`` on world ``seed``/``profile`` and save it there."""
    from retouch.backbone import load_backbone
    from retouch.world import World

    model_dir = Path(model_dir)
    backbone = load_backbone(str(model_dir)).eval()
    world = World(seed=seed, size=backbone.unet.config.sample_size * backbone.vae_scale_factor, profile=profile)
    prior, report = fit_world_terminal_prior(backbone, world, count, progress=progress)
    report["path"] = str(prior.save(model_dir))
    return report
