"""PIXELS on the mini world: CLIP-I and KID per threshold and for both baselines, the strength sweep, Fig. 1.

    .venv/bin/python benchmarks/pixels_mini.py [--triples 100] [--steps 25] [--strength 0.8]
        [--sweep 0.3,0.5,0.7,0.9,1.0] [--out docs/pixels_mini.md]

Triples come from held-out (test-split) scenes only: the source is one scene, the exemplar another
scene of the same size, and the edit map is the exemplar's object mask grown by 2 px and faded out
over 6 px (:func:`retouch.edit_maps.linear_ramp_map`), so the edit asks "put that object, with a soft
border, into this picture". Measured as PIXELS §4 does:

* **CLIP-I** (adherence): the judge's cosine between the edited region (cropped to the binarised map)
  and the same region of the exemplar;
* **KID** (realism): the judge's image features of the edited images against 500 other held-out
  scenes, unbiased MMD² with the cubic kernel (×10³ in the table).

Rows: PIXELS with each threshold function, the two baselines it argues against (latent surgery,
spatially scaled noise), and two references without diffusion — the unedited source and a pixel
paste of the exemplar through the map. The sweep re-runs PIXELS (linear) and both baselines over
``--sweep`` strengths and plots CLIP-I against KID (the paper's Fig. 6). ``docs/pixels_fig1.png``
(``--figure-only`` redraws just it; :func:`retouch.bench.pixels.save_figure_one`, which ``retouch bench paper``
draws too) shows a horizontal-ramp edit map (a gradual transition across the image) and a two-exemplar
single-pass edit, like the paper's Fig. 1. Shipped mini models and judge; nothing is downloaded.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from _grid import save_labelled_rows
from _options import script_parser

from retouch.backbone import MINI_DIR, load_backbone
from retouch.bench.pixels import build_triples, held_out, plot_tradeoff, run_method, save_figure_one
from retouch.distributed import exit_unless_main_process
from retouch.methods.pixels import THRESHOLDS
from retouch.metrics import TransformersCLIPJudge, clip_image_similarity, kid
from retouch.metrics.semantic import crop_to_mask
from retouch.world import World


def measure(judge, edited, exemplars, regions, real_features) -> dict:
    reference = crop_to_mask(exemplars, regions, judge.image_size)
    adherence = clip_image_similarity(judge, edited, reference, mask=regions).mean().item()
    with torch.no_grad():
        fake = torch.cat([judge.encode_images(edited[i:i + 100]) for i in range(0, len(edited), 100)])
    realism, spread = kid(real_features.numpy(), fake.numpy(), subset_size=len(edited), n_subsets=100)
    return {"clip_i": adherence, "kid": realism, "kid_std": spread}


def main():
    args = script_parser(__doc__, triples=100, steps=25, strength=0.8, sweep="0.3,0.5,0.7,0.9,1.0", batch=50, seed=0,
                         out=Path("docs/pixels_mini.md"), plot=Path("docs/pixels_tradeoff.png"),
                         figure=Path("docs/pixels_fig1.png"),
                         figure_only=(False, "only redraw the Fig. 1-like grid")).parse_args()

    world = World(seed=args.seed, size=64)
    backbone = load_backbone("mini")
    if args.figure_only:
        save_figure_one(backbone, world, args.figure, steps=args.steps, strength=args.strength)
        return
    judge = TransformersCLIPJudge(MINI_DIR / "judge")
    sources, exemplars, maps, regions = build_triples(world, args.triples)
    real = held_out(world, 500, skip=2 * args.triples)
    real_images = torch.from_numpy(np.stack([world.scene(i)[1].image for i in real])).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        real_features = torch.cat([judge.encode_images(real_images[i:i + 100]) for i in range(0, 500, 100)])

    command = (f"python benchmarks/pixels_mini.py --triples {args.triples} --steps {args.steps} "
               f"--strength {args.strength:g} --sweep {args.sweep}")
    lines = [f"Mini world, {args.triples} held-out source/exemplar/map triples, strength {args.strength:g}, "
             f"{args.steps} DDIM steps, empty prompt (`{command}`)", "",
             "| method | CLIP-I ↑ | KID ×10³ ↓ (± std) | s/image |", "|---|---|---|---|"]

    def row(name, edited, seconds):
        result = measure(judge, edited, exemplars, regions, real_features)
        lines.append(f"| {name} | {result['clip_i']:.3f} | {result['kid'] * 1e3:.2f} ± {result['kid_std'] * 1e3:.2f} "
                     f"| {seconds:.3f} |")
        print(lines[-1], flush=True)
        return result

    row("reference: unedited source", sources, 0.0)
    row("reference: pixel paste through the map", sources * (1 - maps) + exemplars * maps, 0.0)
    methods = [f"pixels-{name}" for name in THRESHOLDS] + ["latent-surgery", "scaled-noise"]
    grid = [sources[:6], exemplars[:6], maps[:6]]
    for name in methods:
        started = time.perf_counter()
        edited = run_method(name, backbone, sources, exemplars, maps, strength=args.strength, steps=args.steps,
                            batch=args.batch)
        row(name, edited, (time.perf_counter() - started) / len(sources))
        grid.append(edited[:6])

    sweep: dict = {}
    strengths = [float(s) for s in args.sweep.split(",") if s.strip()]
    lines += ["", "Strength sweep (the plot's points):", "", "| method | strength | CLIP-I ↑ | KID ×10³ ↓ |",
              "|---|---|---|---|"]
    for name in ("pixels-linear", "latent-surgery", "scaled-noise"):
        for strength in strengths:
            edited = run_method(name, backbone, sources, exemplars, maps, strength=strength, steps=args.steps,
                                batch=args.batch)
            result = measure(judge, edited, exemplars, regions, real_features)
            sweep.setdefault(name, {})[strength] = result
            lines.append(f"| {name} | {strength:g} | {result['clip_i']:.3f} | {result['kid'] * 1e3:.2f} |")
            print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    plot_tradeoff({name: [(s, r['kid'], r['clip_i']) for s, r in sorted(points.items())]
                   for name, points in sweep.items()}, args.plot)
    save_labelled_rows(grid, args.out.with_suffix(".png"), ["source", "exemplar", "map", *methods])
    save_figure_one(backbone, world, args.figure, steps=args.steps, strength=args.strength)
    print(f"wrote {args.out}, {args.out.with_suffix('.png')}, {args.plot} and {args.figure}")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
