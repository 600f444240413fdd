"""retouch's pix2pix-zero against diffusers' deprecated StableDiffusionPix2PixZeroPipeline, side by side.

    .venv/bin/python benchmarks/bench_pix2pix_zero.py [--model mini] [--size 64] [--steps 50]
        [--repeats 3] [--threads 2] [--device auto] [--dtype float32] [--random-unet-512]

Every runner does regularized DDIM inversion of one image with its caption (5 regularization
iterations per step, λ = 20), then the cross-attention-guided edit with classifier-free guidance from
the same precomputed edit direction, with the same step count and λ_xa. retouch runs twice: with
its default, Algorithm 1 of the paper (the guidance gradient is taken through the edited pass's
conditional branch only), and with ``xa_branches="both"``, which guides both CFG branches as
diffusers does, so the U-Net work per step is the same as theirs. Time is the median of ``--repeats`` interleaved runs after a warm-up; peak memory is the
peak of live tensors during one call above the level before it (CUDA allocator on GPU, the CPU
allocator's running total from the profiler on CPU).

``--random-unet-512`` swaps in a randomly initialised SD-1.5-sized U-Net (and VAE) at 512×512: the
GPU comparison the issue asks for; nothing is downloaded.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from _options import script_parser
from _measure import HEADER, peak_bytes, summary_row, time_interleaved

from retouch.backbone import load_backbone
from retouch.directions import build_direction, save_direction, template_bank
from retouch.distributed import exit_unless_main_process
from retouch.methods import get_method
from retouch.methods.pix2pix_zero import Pix2PixZeroConfig, diffusers_reference_pipeline

CAPTION = "a photo of a red circle on grass"


def sd15_sized_random(device, dtype):
    """SD 1.5's U-Net and VAE architecture with random weights (and the tiny text encoder)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    backbone = load_backbone("tiny-sd")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=backbone.text_encoder.config.hidden_size)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4)
    return replace(backbone, unet=unet, vae=vae).to(device, dtype)


def main():
    parser = script_parser(__doc__, model="mini", size=64, steps=50, repeats=3, threads=2, device="auto",
                           random_unet_512=False)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype = getattr(torch, args.dtype)
    if args.random_unet_512:
        backbone, args.size, label = sd15_sized_random(device, dtype), 512, "random SD-1.5-sized U-Net"
    else:
        backbone, label = load_backbone(args.model, device=device, dtype=dtype), args.model
    image = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device, dtype) * 2 - 1
    source_bank, target_bank = template_bank("circle"), template_bank("square")
    direction = build_direction(backbone, source_bank, target_bank, source="circle", target="square")
    # Both runners get the direction precomputed: ours from a cached file, theirs as get_embeds tensors.
    cached = Path(tempfile.mkdtemp()) / "circle-square.safetensors"
    save_direction(direction, cached, model=label)
    config = Pix2PixZeroConfig(source_text=CAPTION, directions=str(cached), num_steps=args.steps,
                               auto_corr_min_shift=0)
    work_matched = replace(config, xa_branches="both")
    edit = get_method("pix2pix-zero").edit
    pipe = diffusers_reference_pipeline(backbone)
    source_embeds, target_embeds = pipe.get_embeds(source_bank), pipe.get_embeds(target_bank)

    def ours():
        return edit(backbone, image, config)

    def ours_work_matched():
        return edit(backbone, image, work_matched)

    def theirs():
        with torch.no_grad():
            latents = backbone.encode_images(image)
        inverted = pipe.invert(CAPTION, image=latents, num_inference_steps=args.steps,
                               generator=torch.Generator().manual_seed(0), output_type="latent").latents
        return pipe(CAPTION, source_embeds=source_embeds, target_embeds=target_embeds,
                    num_inference_steps=args.steps, guidance_scale=config.guidance_scale, negative_prompt=CAPTION,
                    cross_attention_guidance_amount=config.xa_guidance, latents=inverted, output_type="pt").images

    jobs = {"diffusers pix2pix-zero": theirs, "retouch (Algorithm 1)": ours, "retouch (both branches)": ours_work_matched}
    times = time_interleaved(jobs, args.repeats, device)
    peaks = {name: peak_bytes(run, device) for name, run in jobs.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"pix2pix-zero invert + guided edit: {label}, {args.size}x{args.size}, {args.dtype}, {where}, "
          f"{args.steps} steps, {args.repeats} repeats after a warm-up")
    print(HEADER)
    for name in jobs:
        print(summary_row(name, times[name], peaks[name]))
    baseline = statistics.median(times["diffusers pix2pix-zero"])
    for name in list(jobs)[1:]:
        ratio = statistics.median(times[name]) / baseline
        memory = peaks[name] / max(1, peaks["diffusers pix2pix-zero"])
        verdict = "meets" if ratio <= 0.5 and memory <= 0.5 else "misses"
        print(f"{name} / diffusers: time ×{ratio:.3f}, peak memory ×{memory:.3f} ({verdict} the ≤ 0.5× / ≤ 0.5× goal)")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
