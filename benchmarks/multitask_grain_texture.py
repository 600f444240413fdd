"""Why the multitask model's grain slider (σ) moves nothing: what the grain targets carry, and what a model makes.

    .venv/bin/python benchmarks/multitask_grain_texture.py --data out/compositing [--crops 12] \
        [--samples 100,800,3200] [--model FOLDER ...] [--steps 25]

On the first --crops test crops, the high-frequency energy in the input's flat half
(:func:`retouch.metrics.control.flat_high_frequency_energy`, Fig. 4's grain measure) for each of the paper's five
grain radii σ:

* of the dataset's stored grain targets, and of the same crops rendered again (same seeds) with each Monte-Carlo
  sample count in --samples. Newson et al.'s renderer estimates each pixel from N random points, so its output
  carries sampling noise of variance ~u(1 − u)/N on top of the grain; where that noise is larger than the grain's
  own texture, the targets say almost nothing about σ;
* of each --model's edits with the grain task on, sampled by DDIM (η = 0, the default) and by DDPM-like steps
  (η = 1, fresh noise every step). A model that makes texture from its sampler's noise gives different energies
  under the two; one that returns the same image for both ignores x_t and can only return a mean.

Energy alone can mislead: an edit clipped to black or white is flat, whatever σ. So each model row also gives
its mean L1 to the stored targets over the five radii (the "unedited input" row gives the scale), and
``--grid PNG`` saves the first six crops at σ = 0.05: input, target, then each model's edits at η = 0 and 1.
"""

from __future__ import annotations

import numpy as np
import torch
from _options import script_parser

from retouch.data.compositing import GRAIN_NAMES, iter_compositing
from retouch.distributed import exit_unless_main_process
from retouch.effects import film_grain
from retouch.metrics.control import flat_high_frequency_energy
from retouch.networks.multitask import EditingVector
from retouch.train.evaluate_multitask import Case, load_compositing_model


def as_batch(arrays) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()


@torch.no_grad()
def model_edits(model, sources: torch.Tensor, radius: float, *, steps: int, eta: float) -> torch.Tensor:
    """The model's grain edits of ``sources`` (N, 3, H, W) in [0, 1], DDIM with the given η, in [0, 1]."""
    from retouch.methods.multitask import sample_conditioned
    from retouch.networks.multitask import conditioning_inputs

    source, side, vectors = conditioning_inputs(model, sources * 2 - 1, EditingVector(grain=radius))
    noise = torch.randn(source.shape, generator=torch.Generator().manual_seed(0))
    images = sample_conditioned(model, source, side, vectors, noise, num_steps=steps, eta=eta,
                                generator=torch.Generator().manual_seed(1))
    return ((images.float() + 1) / 2).clamp(0, 1)


def main() -> None:
    parser = script_parser(__doc__, data=str, crops=12, samples="100,800,3200", steps=25)
    parser.add_argument("--model", action="append", default=[], help="a multitask model folder (repeat)")
    parser.add_argument("--grid", default=None, help="PNG of the first six crops at σ = 0.05 (needs --model)")
    args = parser.parse_args()
    samples = list(iter_compositing(args.data, "test"))[:args.crops]
    sources = as_batch([s.images["source"] for s in samples])
    radii = list(GRAIN_NAMES)
    energy = lambda images: float(flat_high_frequency_energy(images, sources).mean())  # noqa: E731
    print(f"{args.data}, test split, {len(samples)} crops; flat-region high-frequency energy (×10⁴) per σ\n")
    targets = {r: as_batch([s.images[GRAIN_NAMES[r]] for s in samples]) for r in radii}
    l1 = lambda made: float(np.mean([(made[r] - targets[r]).abs().mean() for r in radii]))  # noqa: E731
    print("| images | " + " | ".join(f"σ = {r:g}" for r in radii) + " | L1 to targets |")
    print("|---|" + "---|" * (len(radii) + 1))
    print(f"| input | {energy(sources) * 1e4:.2f} |" + " |" * (len(radii) - 1) + f" {l1({r: sources for r in radii}):.4f} |")
    stored = [energy(targets[r]) for r in radii]
    print("| stored targets | " + " | ".join(f"{e * 1e4:.2f}" for e in stored) + " | 0 |")
    for count in (int(n) for n in args.samples.split(",")):
        rendered = [energy(as_batch([film_grain(s.images["source"], r, n_samples=count, seed=s.params["grain_seed"])
                                     for s in samples])) for r in radii]
        print(f"| operator, N = {count} | " + " | ".join(f"{e * 1e4:.2f}" for e in rendered) + " | |")
    columns = [sources[:6], targets[0.05][:6]]
    for folder in args.model:
        model = load_compositing_model(folder)
        for eta in (0.0, 1.0):
            made = {r: model_edits(model, sources, r, steps=args.steps, eta=eta) for r in radii}
            print(f"| {folder}, {args.steps} steps, η = {eta:g} | " + " | ".join(f"{energy(made[r]) * 1e4:.2f}"
                                                                         for r in radii) + f" | {l1(made):.4f} |")
            columns.append(made[0.05][:6])
    if args.grid and args.model:
        from PIL import Image

        grid = torch.cat([torch.cat(list(column), dim=1) for column in columns], dim=2)  # crops down, images across
        Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(args.grid)


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
