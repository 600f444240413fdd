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
(``--figure-only`` redraws just it) shows a horizontal-ramp edit map (a gradual transition across
the image) and a two-exemplar single-pass edit, like the paper's Fig. 1. Shipped mini models and judge; nothing is downloaded.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from _grid import save_labelled_rows
from _options import script_parser

from retouch.backbone import MINI_DIR, load_backbone
from retouch.bench.pixels import MAP_RAMP, build_triples, held_out, plot_tradeoff, run_method
from retouch.distributed import exit_unless_main_process
from retouch.edit_maps import linear_ramp_map
from retouch.methods.exemplar_baselines import BaselineConfig, exemplar_sdedit_latents
from retouch.methods.pixels import THRESHOLDS, PixelsConfig, pixels_latents
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


def figure_one(backbone, world: World, path: Path, steps: int, strength: float) -> None:
    """Fig. 1-like rows: a left→right ramp map between two backgrounds, and a two-exemplar single pass."""
    indices = held_out(world, 12, skip=400)
    scenes = [world.scene(i)[1] for i in indices]
    image = lambda k: torch.from_numpy(scenes[k].image).permute(2, 0, 1).float()  # noqa: E731
    # 0 on the left fifth, rising linearly, 1 on the right 30 %: Algorithm 1 pastes the exemplar only
    # where μ_d = 0 (m = 1) and grows the edit from there, so a ramp without a fully edited part
    # would never bring the exemplar in.
    side = world.size
    ramp = ((torch.linspace(0, 1, side) - 0.2) / 0.5).clamp(0, 1).expand(side, side)[None]
    rows, labels = [], []
    # Several strengths per row: the mini U-Net only knows one-background scenes and pulls a long
    # edit back to one of them, so the transition shows best at moderate t_ds^max.
    strengths = sorted({0.4, 0.6, strength})
    for k in range(0, 8, 2):  # four ramp examples: source k, exemplar k + 1
        source, exemplar = image(k), image(k + 1)
        edits = [pixels_latents(backbone, source[None] * 2 - 1, [exemplar[None] * 2 - 1], [ramp[None]],
                                PixelsConfig(strength=s, num_steps=steps)) for s in strengths]
        surgery = exemplar_sdedit_latents(backbone, source[None] * 2 - 1, [exemplar[None] * 2 - 1], [ramp[None]],
                                          BaselineConfig(strength=strength, num_steps=steps), scale_noise=False)
        with torch.no_grad():
            edited = ((backbone.decode_latents(torch.cat([*edits, surgery])) + 1) / 2).clamp(0, 1)
        rows.append([source, exemplar, ramp, *edited])
        labels.append(["source", "exemplar", "ramp map", *(f"PIXELS {s:g}" for s in strengths),
                       f"surgery {strength:g}"])
    source, first, second = image(8), image(9), image(10)
    left = torch.from_numpy(linear_ramp_map(scenes[9].masks.any(axis=0), MAP_RAMP)).float()[None]
    right = torch.from_numpy(linear_ramp_map(scenes[10].masks.any(axis=0), MAP_RAMP)).float()[None]
    config = PixelsConfig(strength=strength, num_steps=steps)
    latents = pixels_latents(backbone, source[None] * 2 - 1, [first[None] * 2 - 1, second[None] * 2 - 1],
                             [left[None], right[None]], config)
    with torch.no_grad():
        edited = ((backbone.decode_latents(latents) + 1) / 2).clamp(0, 1)[0]
    rows.append([source, first, left, second, right, edited])
    labels.append(["source", "exemplar 1", "map 1", "exemplar 2", "map 2", "PIXELS, one pass"])
    save_labelled_rows(rows, path, labels)


def main():
    args = script_parser(__doc__, triples=100, steps=25, strength=0.8, sweep="0.3,0.5,0.7,0.9,1.0", batch=50, seed=0,
                         out=Path("docs/pixels_mini.md"), plot=Path("docs/pixels_tradeoff.png"),
                         figure=Path("docs/pixels_fig1.png"),
                         figure_only=(False, "only redraw the Fig. 1-like grid")).parse_args()

    world = World(seed=args.seed, size=64)
    backbone = load_backbone("mini")
    if args.figure_only:
        figure_one(backbone, world, args.figure, args.steps, args.strength)
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
    figure_one(backbone, world, args.figure, args.steps, args.strength)
    print(f"wrote {args.out}, {args.out.with_suffix('.png')}, {args.plot} and {args.figure}")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
