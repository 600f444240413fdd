"""Does the starting noise's per-channel mean decide a sample's background? (docs/world_v2.md)

DDPM's scaled-linear schedule keeps √ᾱ_T ≈ 0.085 of the signal at the first DDIM step (t = 961 of 25
steps). A U-Net trained on plain ε can learn to read low-frequency content — on the mini world, the
background — from that leak; from pure noise it then draws a random one. This script samples the same
held-out captions from four starting latents and reads them with the pixel probes:

* ``pure``: x_T ~ N(0, I) (what sampling does);
* ``with_signal``: √ᾱ_T z_0 + √(1 − ᾱ_T) ε, the forward process of the caption's own scene;
* ``mean_only``: pure noise whose per-channel means are replaced by √ᾱ_T · mean(z_0);
* ``zero_mean``: pure noise with its per-channel means removed.

If ``mean_only`` fixes the background and ``zero_mean`` does not, the model reads the background from
the noise's per-channel mean.

    python benchmarks/terminal_snr_leak.py --model src/retouch/assets/mini/backbone [--unet FOLDER] [--count 64]
"""

import json

import torch

from _options import script_parser

from retouch.backbone import load_backbone
from retouch.sampling import ddim_sample, ddim_timesteps, guided_denoiser
from retouch.train.evaluate_mini import probe_accuracy
from retouch.world import World
from retouch.world.heldout import held_out_scenes
from retouch.world.probe import load_probes


def main():
    args = script_parser(__doc__, model="mini", unet=(None, "a U-Net folder replacing the backbone's"), count=64,
                         steps=25, guidance=5.0).parse_args()
    backbone = load_backbone(args.model)
    if args.unet:
        from diffusers import UNet2DConditionModel

        backbone.unet = UNet2DConditionModel.from_pretrained(args.unet).eval()
    world, probes = World(0, 64), load_probes()
    scenes = held_out_scenes(world, args.count)
    shape = (args.count, backbone.latent_channels, *scenes.images.shape[-2:])
    shape = (*shape[:2], shape[2] // backbone.vae_scale_factor, shape[3] // backbone.vae_scale_factor)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = backbone.encode_images(scenes.images * 2 - 1)
    timesteps = ddim_timesteps(backbone.schedule, args.steps)
    alpha = backbone.schedule.alpha(timesteps[0])
    mean = noise.mean((2, 3), keepdim=True)
    starts = {"pure": noise, "with_signal": alpha.sqrt() * clean + (1 - alpha).sqrt() * noise,
              "mean_only": noise - mean + alpha.sqrt() * clean.mean((2, 3), keepdim=True),
              "zero_mean": noise - mean}
    report = {"first_timestep": timesteps[0], "sqrt_alpha_bar": float(alpha.sqrt()),
              "std_of_noise_channel_mean": float(mean.std()),
              "std_of_signal_channel_mean": float((alpha.sqrt() * clean.mean((2, 3))).std())}
    denoise = guided_denoiser(backbone.denoise, backbone.encode_text(scenes.captions),
                              backbone.encode_text([""] * args.count), args.guidance)
    for name, start in starts.items():
        with torch.no_grad():
            latents = ddim_sample(denoise, backbone.schedule, start, timesteps, None, num_steps=args.steps)
            images = ((backbone.decode_latents(latents) + 1) / 2).clamp(0, 1)
        report[name] = probe_accuracy(probes, images, scenes.specs)
        print(name, json.dumps(report[name]), flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
