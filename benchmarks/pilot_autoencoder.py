"""Pilot trainings of candidate autoencoders for the v2 mini world, with learning curves.

Issue 19 asks for ≥ 30 dB on world scenes, ≥ 24 dB on 64² photo crops and ≥ 27 dB on latent
splices. Each pilot trains one architecture for a fixed wall time on the autoencoder mixture of
:func:`retouch.train.mini.autoencoder_batch` (v2 scenes, v1 multi-object scenes, dead leaves; random
crops) and measures, every ``--eval-every`` steps, PSNR on held-out v2 test scenes, on scikit-image's
photographs (unseen; 128² and their four 64² quadrants) and on latent cuts/pastes of held-out scenes.

    python benchmarks/pilot_autoencoder.py --name small8 --channels 32,64,64 --latent-channels 8 --minutes 15
    python benchmarks/pilot_autoencoder.py --plot out/pilots/ae_*.json -o docs/world_v2_ae_curves.png
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from _options import run_pilot


def evaluate(vae, scenes, photos) -> dict:
    from retouch.train.evaluate_mini import reconstruction_psnr, splice_psnr

    from retouch.world.heldout import photo_crops

    vae.eval()
    result = {
        "world_psnr": float(np.mean(reconstruction_psnr(vae, scenes.images))),
        "photo_psnr_128": float(np.mean(reconstruction_psnr(vae, photos))),
        "photo_crop_psnr_64": float(np.mean(reconstruction_psnr(vae, photo_crops(128, 64)))),
        "cut_psnr": splice_psnr(vae, scenes, 1),
        "paste_psnr": splice_psnr(vae, scenes, 2),
    }
    vae.train()
    return result


def run(args) -> None:
    from retouch.world.heldout import held_out_scenes, photographs
    from retouch.train.mini import autoencoder_batch, autoencoder_sources, mini_vae
    from retouch.world import World

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    channels = tuple(int(c) for c in args.channels.split(","))
    vae = mini_vae(channels=channels, latent_channels=args.latent_channels, layers_per_block=args.layers,
                   mid_attention=args.mid_attention)
    sources = autoencoder_sources(seed=0, dead_leaves_pool=args.dead_leaves_pool, work_dir=Path("out/pilots"))
    scenes = held_out_scenes(World(seed=0, size=64, profile="v2"), 128)
    photos = torch.stack(list(photographs(128).values()))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, weight_decay=0.0)
    curve, seen, start, step = [], 0, time.perf_counter(), 0
    train_seconds = 0.0
    while train_seconds < args.minutes * 60:
        if step % args.eval_every == 0:
            curve.append({"step": step, "samples": seen, "train_seconds": round(train_seconds, 1),
                          **evaluate(vae, scenes, photos)})
            print(json.dumps(curve[-1]), flush=True)
        tick = time.perf_counter()
        images = autoencoder_batch(sources, step, args.batch, crop=args.crop)
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = (reconstruction - images).abs().mean() + 1e-6 * posterior.kl().mean() / images[0].numel()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_seconds += time.perf_counter() - tick
        step += 1
        seen += len(images)
    curve.append({"step": step, "samples": seen, "train_seconds": round(train_seconds, 1),
                  **evaluate(vae, scenes, photos)})
    print(json.dumps(curve[-1]), flush=True)
    out = Path(args.output or f"out/pilots/ae_{args.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    params = sum(p.numel() for p in vae.parameters())
    out.write_text(json.dumps({"name": args.name, "args": vars(args), "parameters": params,
                               "wall_seconds": time.perf_counter() - start, "curve": curve}, indent=1))
    if args.save:
        vae.save_pretrained(args.save, safe_serialization=True)


def plot(paths: list[str], output: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("world_psnr", 30), ("photo_crop_psnr_64", 24), ("cut_psnr", 27), ("paste_psnr", 27)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for path in paths:
        run_ = json.loads(Path(path).read_text())
        minutes = [point["train_seconds"] / 60 for point in run_["curve"]]
        for axis, (key, _) in zip(axes, keys):
            axis.plot(minutes, [point[key] for point in run_["curve"]], label=run_["name"])
    for axis, (key, target) in zip(axes, keys):
        axis.axhline(target, color="grey", linestyle="--", linewidth=1)
        axis.set_title(f"{key} (target {target} dB)")
        axis.set_xlabel("training minutes (1 core)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output, dpi=110)


if __name__ == "__main__":
    run_pilot(__doc__, run, plot, curves="docs/world_v2_ae_curves.png", channels="32,64,64", latent_channels=8,
              layers=1, mid_attention=(False, "keep the mid-block self-attention"), crop=32, batch=16,
              learning_rate=1e-3, minutes=15.0, eval_every=250, dead_leaves_pool=1024)
