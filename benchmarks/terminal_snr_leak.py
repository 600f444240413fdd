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
the noise's per-channel mean. When the backbone folder carries a terminal prior (retouch/terminal_prior.py),
three starts that know only the caption follow:

* ``prior``: what sampling now does, √ᾱ_T m(c) + √(1 − ᾱ_T)(ε − mean(ε)), m(c) drawn with its spread;
* ``prior_noise_mean_kept``: the same without removing ε's channel means (the forward marginal's own spread);
* ``prior_no_spread``: m(c) at its expected value.

Every start is read by the pixel probes and by the judge. ``--diversity PNG`` instead draws eight seeds of
each of the first four captions from the prior and from pure noise (the same ε), saves them as a grid (odd
rows: prior) and prints each set's mean pairwise L1: what the prior keeps of a caption's variety.

    python benchmarks/terminal_snr_leak.py --model src/retouch/assets/mini/backbone [--unet FOLDER] [--count 64]
        [--diversity PNG]
"""

import json

import torch

from _options import script_parser

from retouch.backbone import MINI_DIR, load_backbone
from retouch.metrics import TransformersCLIPJudge
from retouch.backbone import model_folder
from retouch.sampling import ddim_sample, ddim_timesteps, guided_denoiser
from retouch.terminal_prior import TerminalPrior, load_terminal_prior
from retouch.train.evaluate_mini import judge_accuracy, probe_accuracy
from retouch.world import World
from retouch.world.heldout import held_out_scenes
from retouch.world.probe import load_probes


def main():
    args = script_parser(__doc__, model="mini", unet=(None, "a U-Net folder replacing the backbone's"), count=64,
                         steps=25, guidance=5.0, diversity=(None, "PNG: the diversity grid instead")).parse_args()
    backbone = load_backbone(args.model)
    if args.unet:
        from diffusers import UNet2DConditionModel

        backbone.unet = UNet2DConditionModel.from_pretrained(args.unet).eval()
    if args.diversity:
        return diversity(backbone, args.model, args.diversity)
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
    text = backbone.encode_text(scenes.captions)
    prior = load_terminal_prior(model_folder(args.model))
    if prior is not None:
        generator = lambda: torch.Generator().manual_seed(1)  # noqa: E731  the same spread draws in every start
        starts["prior"] = prior.start(noise, text.hidden_states, alpha, generator())
        starts["prior_noise_mean_kept"] = prior.start(noise, text.hidden_states, alpha, generator(), centre_noise=False)
        starts["prior_no_spread"] = TerminalPrior(prior.weight, torch.zeros_like(prior.residual_std)).start(
            noise, text.hidden_states, alpha)
    report = {"first_timestep": timesteps[0], "sqrt_alpha_bar": float(alpha.sqrt()),
              "std_of_noise_channel_mean": float(mean.std()),
              "std_of_signal_channel_mean": float((alpha.sqrt() * clean.mean((2, 3))).std())}
    denoise = guided_denoiser(backbone.denoise, text, backbone.encode_text([""] * args.count), args.guidance)
    judge = TransformersCLIPJudge(MINI_DIR / "judge")
    for name, start in starts.items():
        with torch.no_grad():
            latents = ddim_sample(denoise, backbone.schedule, start, timesteps, None, num_steps=args.steps)
            images = ((backbone.decode_latents(latents) + 1) / 2).clamp(0, 1)
        report[name] = {"probe": probe_accuracy(probes, images, scenes.specs),
                        "judge": judge_accuracy(judge, images, scenes.specs, world.vocabularies)}
        print(name, json.dumps(report[name]), flush=True)
    print(json.dumps(report, indent=1))


def diversity(backbone, model: str, path: str, captions: int = 4, seeds: int = 8) -> None:
    from PIL import Image

    from retouch.train.evaluate_mini import generate

    prior = load_terminal_prior(model_folder(model))
    if prior is None:
        raise SystemExit(f"{model} carries no terminal prior")
    rows = []
    for caption in held_out_scenes(World(0, 64), captions).captions:
        for name, start in (("prior", prior), ("pure noise", None)):
            samples = torch.cat([generate(backbone, [caption], prior=start, seed=k) for k in range(seeds)])
            pairwise = (samples[:, None] - samples[None]).abs().mean(dim=(2, 3, 4)).sum() / (seeds * (seeds - 1))
            print(f"{caption!r}, {name}: mean pairwise L1 {pairwise:.3f}")
            rows.append(torch.cat(list(samples), dim=2))  # one row of seeds side by side
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    Image.fromarray((grid * 255).round().astype("uint8")).save(path)


if __name__ == "__main__":
    main()
