"""Pilot trainings of candidate mini U-Nets on pre-encoded v2 shards, with per-attribute learning curves.

Every ``--eval-every`` training samples the pilot draws one sample per held-out (test-split) v2 caption
(25 DDIM steps, classifier-free guidance), decodes it and reads the main object's attributes with the
v2 pixel probes (shape, colour, pattern, hat, background), with the mini U-Net's own ε-loss
(``train/mini.py: weighted_diffusion_loss``: SD's scaled-linear schedule, or with ``--zero-terminal-snr`` Lin et
al.'s rescaled one with v-prediction; object weight, Min-SNR-γ); accuracy is the fraction that match the
caption. Training time is wall time of the gradient steps only (evaluation excluded).

    python benchmarks/pilot_unet.py --name small --channels 32,64,128 --attention 0,0,1 --shards out/shards/pilot-v2 \\
        --vae out/pilots/vae_c32 --text-encoder out/train-mini-v2/clip/final --probes out/probes-v2 --minutes 12
    python benchmarks/pilot_unet.py --name ztsnr --init src/retouch/assets/mini/backbone/unet --zero-terminal-snr \\
        --vae src/retouch/assets/mini/backbone/vae --text-encoder src/retouch/assets/mini/backbone \\
        --shards out/shards/v2-shipped --probes src/retouch/assets/mini/probes --learning-rate 2e-4 --warmup 200
    python benchmarks/pilot_unet.py --plot out/pilots/unet_*.json -o docs/world_v2_unet_curves.png
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from _options import run_pilot

CURVE_ATTRIBUTES = ("shape", "colour", "pattern", "accessory", "background")


def load_parts(args):
    """The frozen autoencoder, and the text tower and tokenizer of a CLIP stage's folder (``clip/final``)
    or of a backbone folder (``text_encoder/`` and ``tokenizer/``)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    from retouch.train.mini import text_encoder_from_clip

    vae = AutoencoderKL.from_pretrained(args.vae).eval().requires_grad_(False)
    folder = Path(args.text_encoder)
    if (folder / "text_encoder").is_dir():
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval()
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    else:
        text_encoder = text_encoder_from_clip(CLIPModel.from_pretrained(folder))
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    return vae, text_encoder.requires_grad_(False), tokenizer


@torch.no_grad()
def evaluate(backbone, probes, scenes, *, guidance_scale: float, steps: int = 25) -> tuple[dict, torch.Tensor]:
    from retouch.train.evaluate_mini import generate, probe_accuracy

    samples = generate(backbone, scenes.captions, num_steps=steps, guidance_scale=guidance_scale, batch=64)
    return probe_accuracy(probes, samples, scenes.specs), samples


def run(args) -> None:
    from retouch.backbone import Backbone
    from retouch.data.latent_shards import LatentShards
    from retouch.sampling import NoiseSchedule
    from retouch.train.mini import CAPTION_DROPOUT, mini_scheduler_config, mini_unet, weighted_diffusion_loss
    from retouch.world import World
    from retouch.world.heldout import held_out_scenes
    from retouch.world.probe import load_probes

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae, text_encoder, tokenizer = load_parts(args)
    shards = LatentShards.load(args.shards)
    config = mini_scheduler_config(zero_terminal_snr=args.zero_terminal_snr)
    schedule = NoiseSchedule.from_scheduler_config(config)
    if args.init:  # a fine-tune: the latents keep the scale the U-Net was trained on
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(args.init).train()
        scale = float(vae.config.scaling_factor)
    else:
        channels = tuple(int(c) for c in args.channels.split(","))
        attention = tuple(flag == "1" for flag in args.attention.split(","))
        unet = mini_unet(channels=channels, attention=attention, latent_channels=shards.latents.shape[1])
        scale = float(1.0 / shards.latents[:4096].float().std())
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, weight_decay=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(args.warmup, 1)))
    probes = load_probes(args.probes)
    scenes = held_out_scenes(World(seed=0, size=64, profile="v2"), args.eval_count)
    empty = tokenizer([""], padding="max_length", max_length=shards.input_ids.shape[1], return_tensors="pt").input_ids
    vae.register_to_config(scaling_factor=scale)
    backbone = Backbone(vae=vae, unet=ema, text_encoders=(text_encoder,), tokenizers=(tokenizer,), schedule=schedule,
                        scheduler_config=config)
    curve, seen, step, train_seconds, next_eval = [], 0, 0, 0.0, 0
    while True:
        if seen >= next_eval or train_seconds >= args.minutes * 60:
            accuracy, samples = evaluate(backbone, probes, scenes, guidance_scale=args.guidance_scale)
            curve.append({"step": step, "samples": seen, "train_seconds": round(train_seconds, 1), **accuracy})
            print(json.dumps(curve[-1]), flush=True)
            next_eval += args.eval_every
            if train_seconds >= args.minutes * 60:
                break
        tick = time.perf_counter()
        latents, ids, cells = shards.batch(step, args.batch)
        latents = latents * scale
        drop = torch.from_numpy(np.random.default_rng([5, step]).random(len(ids)) < CAPTION_DROPOUT)
        ids = torch.where(drop[:, None], empty.expand_as(ids), ids)
        with torch.no_grad():
            states = text_encoder(ids)[0]
        loss = weighted_diffusion_loss(unet, (latents, states, cells), torch.Generator().manual_seed(step),
                                       schedule, args.object_weight, args.min_snr_gamma)
        loss.backward()
        optimizer.step()
        warmup.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        train_seconds += time.perf_counter() - tick
        step += 1
        seen += len(latents)
    out = Path(args.output or f"out/pilots/unet_{args.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"name": args.name, "args": vars(args),
                               "parameters": sum(p.numel() for p in unet.parameters()), "curve": curve}, indent=1))
    if args.save:
        ema.save_pretrained(args.save, safe_serialization=True)
        from retouch.sampling import scheduler_config_json

        (Path(args.save) / "scheduler_config.json").write_text(scheduler_config_json(config))
    from retouch.train.evaluate_mini import save_sample_grid

    save_sample_grid(World(seed=0, size=64, profile="v2"), samples, out.with_suffix(".png"))


def plot(paths: list[str], output: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_ATTRIBUTES), figsize=(3.6 * len(CURVE_ATTRIBUTES), 3.2), sharey=True)
    for path in paths:
        run_ = json.loads(Path(path).read_text())
        seen = [point["samples"] / 1000 for point in run_["curve"]]
        for axis, name in zip(axes, CURVE_ATTRIBUTES):
            axis.plot(seen, [point[name] for point in run_["curve"]], marker=".", label=run_["name"])
    for axis, name in zip(axes, CURVE_ATTRIBUTES):
        axis.axhline(0.85, color="grey", linestyle="--", linewidth=1)
        axis.set_title(f"{name} (probe)")
        axis.set_xlabel("training samples (thousands)")
        axis.set_ylim(0, 1)
    axes[0].set_ylabel("samples read as captioned")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output, dpi=110)


if __name__ == "__main__":
    run_pilot(__doc__, run, plot, curves="docs/world_v2_unet_curves.png", shards="out/shards/pilot-v2",
              vae="out/pilots/vae_c32", text_encoder="out/train-mini-v2/clip/final", probes="out/probes-v2",
              channels="64,128,256", attention="0,1,1", batch=64, learning_rate=5e-4, ema=0.999, object_weight=4.0,
              min_snr_gamma=5.0, guidance_scale=5.0, minutes=15.0, eval_every=20000, eval_count=128,
              init=(None, "a U-Net folder to fine-tune (its width and attention then come from it)"),
              zero_terminal_snr=(False, "Lin et al. 2024: ᾱ_T = 0, v-prediction, trailing steps"),
              warmup=(0, "linear learning-rate warm-up steps"))
