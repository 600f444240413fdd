"""PIXELS' overhead over plain img2img on the same backbone, strength, steps and size.

    .venv/bin/python benchmarks/bench_pixels_overhead.py [--model tiny-sd] [--size 64] [--steps 20]
        [--strength 0.8] [--repeats 7] [--exemplars 1] [--threads 1] [--device auto] [--dtype float32]

PIXELS only changes the sampling loop (a re-noise and a masked copy per step, appendix §6 reports
< 7 MB and ~3.86 % on SDXL); the goal here is ≤ +1 % time and ≤ 1 MB extra peak memory. Runs, in
one process and interleaved so drift hits all alike:

* ``img2img``: diffusers' StableDiffusion(XL)Img2ImgPipeline built from the backbone's own modules;
* ``sdedit``: retouch's own img2img (same sampler code as PIXELS, no exemplar), to separate the
  PIXELS loop from differences between retouch and diffusers;
* ``pixels``: PIXELS with ``--exemplars`` exemplars and soft edit maps.

All use the same prompt with classifier-free guidance (a non-empty prompt, so every runner does the
two-branch U-Net pass). Time: median (and interquartile range) of ``--repeats`` runs after a
warm-up. Peak memory above what was allocated before the call: ``torch.cuda.max_memory_allocated``
on CUDA; on CPU the CPU allocator's running total from the profiler's allocation events (peak
bytes of live tensors, the CPU counterpart of the CUDA number; RSS would mostly show malloc caching).
"""

from __future__ import annotations

import statistics

import numpy as np
import torch

from _options import script_parser
from _measure import peak_bytes, time_interleaved

from retouch.backbone import load_backbone
from retouch.distributed import exit_unless_main_process
from retouch.imageio import resize_image, to_tensor
from retouch.methods import get_method
from retouch.methods.pixels import PixelsConfig, pixels_edit

PROMPT = "a photo of a landscape"


def img2img_pipeline(backbone):
    """diffusers' img2img pipeline sharing the backbone's modules (and its DDIM scheduler)."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    base = backbone.as_pipeline()
    cls = StableDiffusionXLImg2ImgPipeline if backbone.family == "sdxl" else StableDiffusionImg2ImgPipeline
    pipe = cls.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inputs(size: int, count: int, device, dtype):
    """Source, exemplars and soft edit maps (a horizontal ramp per exemplar band) at ``size``."""
    from skimage import data

    def photo(array):
        return to_tensor(resize_image(array.astype(np.float32) / 255.0, (size, size)), device=device, dtype=dtype)

    source = photo(data.astronaut())
    pool = [data.coffee(), data.chelsea(), data.rocket()]
    exemplars = [photo(pool[k % len(pool)]) for k in range(count)]
    ramp = torch.linspace(0, 1, size).expand(size, size)
    maps = []
    for k in range(count):  # exemplar k owns the k-th vertical band, ramping up across it
        band = torch.zeros(size, size)
        lo, hi = k * size // count, (k + 1) * size // count
        band[:, lo:hi] = ramp[:, lo:hi] / max(ramp[0, hi - 1].item(), 1e-6)
        maps.append(band.clamp(0, 1))
    return source, exemplars, maps


def runners(backbone, args, source, exemplars, maps):
    pipe = img2img_pipeline(backbone)
    sdedit = get_method("sdedit")
    common = dict(prompt=PROMPT, strength=args.strength, num_steps=args.steps, guidance_scale=7.5, seed=0)
    pixels_config = PixelsConfig(**common)
    sdedit_config = sdedit.config_class(**common)

    pipe_image = (source + 1) / 2  # diffusers takes tensors in [0, 1]; retouch's are in [−1, 1]

    def img2img():
        return pipe(prompt=PROMPT, image=pipe_image, strength=args.strength, num_inference_steps=args.steps,
                    guidance_scale=7.5, generator=torch.Generator().manual_seed(0), output_type="pt").images

    return {
        "img2img (diffusers)": img2img,
        "sdedit (retouch)": lambda: sdedit.edit(backbone, source, sdedit_config),
        "pixels": lambda: pixels_edit(backbone, source, exemplars, maps, pixels_config),
    }


def main():
    parser = script_parser(
        __doc__, model=("tiny-sd", "tiny-sd, tiny-sd2-v, tiny-sdxl, mini, a folder, a file"),
        size=(64, "side of the square input in pixels"), steps=(20, "DDIM steps of the full schedule"),
        strength=(0.8, "t_ds^max / T (img2img strength)"), repeats=7,
        exemplars=(1, "exemplars PIXELS edits with in one pass"),
        threads=(1, "CPU threads; 1 by default because oversubscribed cores make CPU timings useless"), device="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype = getattr(torch, args.dtype)
    backbone = load_backbone(args.model, device=device, dtype=dtype)
    if args.size % backbone.size_multiple:
        parser.error(f"--size must be a multiple of {backbone.size_multiple} for this model")
    source, exemplars, maps = inputs(args.size, args.exemplars, device, dtype)
    jobs = runners(backbone, args, source, exemplars, maps)

    with torch.no_grad():
        times = time_interleaved(jobs, args.repeats, device)
        peaks = {name: peak_bytes(run, device) for name, run in jobs.items()}

    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {threads} threads"
    steps_run = min(int(args.steps * args.strength), args.steps)
    print(f"PIXELS overhead: {args.model} ({backbone.family}), {args.size}x{args.size}, {args.dtype}, {where}")
    print(f"strength {args.strength}, {args.steps} steps ({steps_run} run), CFG 7.5, "
          f"{args.exemplars} exemplar(s), {args.repeats} repeats after a warm-up")
    print(f"{'runner':<22}{'median s':>10}{'IQR s':>10}{'min s':>10}{'peak MB':>10}")
    for name in jobs:
        q1, _, q3 = statistics.quantiles(times[name], n=4) if len(times[name]) > 1 else (0, 0, 0)
        print(f"{name:<22}{statistics.median(times[name]):>10.4f}{q3 - q1:>10.4f}{min(times[name]):>10.4f}"
              f"{peaks[name] / 2**20:>10.3f}")
    for base in ("img2img (diffusers)", "sdedit (retouch)"):
        ratio = statistics.median(times["pixels"]) / statistics.median(times[base])
        # Runs of one repeat are back to back, so their ratio cancels slow drifts of a busy machine.
        paired = statistics.median(p / b for p, b in zip(times["pixels"], times[base]))
        extra = (peaks["pixels"] - peaks[base]) / 2**20
        verdict = "meets" if ratio <= 1.01 and extra <= 1.0 else "misses"
        print(f"pixels vs {base:<20} time ×{ratio:.4f} ({(ratio - 1) * 100:+.2f} %; paired ×{paired:.4f}), "
              f"peak {extra:+.3f} MB: {verdict} the ≤ +1 % / ≤ 1 MB goal")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
