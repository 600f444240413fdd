"""Why PIXELS loses the adherence claim on the mini world: how much of the exemplar each method pastes.

    .venv/bin/python benchmarks/pixels_paste_regions.py [--triples 100] [--steps 20] [--strengths 0.3,0.8]
        [--grid docs/pixels_paste_regions.png]

The paper table (`retouch bench paper --tables pixels`) gives the baselines the map binarised at ½, as
`retouch.methods.exemplar_baselines` does by default; PIXELS (Algorithm 1 line 9-10) pastes the exemplar only
where the latent-size map is exactly 1. On the table's triples (object mask grown 2 px, ramped over 6 px) those
are different regions. This script counts the latent cells each pastes, then scores CLIP-I on two regions:
the table's (map > ½ in pixels) and the map's core (map = 1), for PIXELS (linear), latent surgery binarised at
½ (the table's baseline) and latent surgery pasting only the cells PIXELS pastes (`--paste full`). Same
triples, noise and steps for all; the grid shows the first six triples at the last strength.
"""

from __future__ import annotations

from pathlib import Path

import torch
from _grid import save_labelled_rows
from _options import script_parser

from retouch.backbone import MINI_DIR, load_backbone
from retouch.bench.pixels import FULL_PASTE, build_triples, run_method
from retouch.distributed import exit_unless_main_process
from retouch.methods.exemplar_inputs import downsample_map
from retouch.metrics import TransformersCLIPJudge, clip_image_similarity
from retouch.metrics.semantic import crop_to_mask
from retouch.world import World

SYSTEMS = ("pixels-linear", "latent-surgery", "latent-surgery" + FULL_PASTE)


def main():
    parser = script_parser(__doc__, triples=100, steps=20, strengths="0.3,0.8", batch=25,
                           grid=Path("docs/pixels_paste_regions.png"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    backbone = load_backbone(str(MINI_DIR / "backbone"))
    judge = TransformersCLIPJudge(MINI_DIR / "judge")
    sources, exemplars, maps, table_regions = build_triples(World(seed=0, size=64), args.triples)
    cores = (maps >= 1.0).float()
    latent_hw = backbone.encode_images(sources[:1] * 2 - 1).shape[-2:]
    latent_maps = downsample_map(maps, latent_hw)
    print(f"{args.triples} triples, {tuple(maps.shape[-2:])} px, latent {tuple(latent_hw)}: pixels per triple with "
          f"map > 1/2 {float(table_regions.sum()) / args.triples:.0f}, map = 1 {float(cores.sum()) / args.triples:.0f};"
          f" latent cells pasted by the baselines (m > 1/2) {float((latent_maps > 0.5).sum()) / args.triples:.1f}, "
          f"by PIXELS (m = 1) {float((latent_maps >= 1).sum()) / args.triples:.1f}")

    def clip_i(edited, region):
        reference = crop_to_mask(exemplars, region, judge.image_size)
        return float(clip_image_similarity(judge, edited, reference, mask=region).mean())

    print("| strength | system | CLIP-I on map > 1/2 (the table's) | CLIP-I on map = 1 |\n|---|---|---|---|")
    edited = {}
    for strength in (float(s) for s in args.strengths.split(",")):
        for name in SYSTEMS:
            edited[name] = run_method(name, backbone, sources, exemplars, maps, strength=strength, steps=args.steps,
                                      batch=args.batch)
            print(f"| {strength:g} | {name} | {clip_i(edited[name], table_regions):.3f} | "
                  f"{clip_i(edited[name], cores):.3f} |", flush=True)
    if args.grid:
        rows = [[sources[k], exemplars[k], maps[k], *(edited[name][k] for name in SYSTEMS)] for k in range(6)]
        labels = [["source", "exemplar", "map", "PIXELS", "surgery m>1/2", "surgery m=1"]] + [""] * 5
        save_labelled_rows(rows, args.grid, labels, upscale=3)
        print(f"wrote {args.grid} (strength {strength:g})")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
