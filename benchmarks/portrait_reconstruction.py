"""Can the MCDM keep its input when no edit is asked? The background it loses in Table 1, read without the edit.

    .venv/bin/python benchmarks/portrait_reconstruction.py [--model FOLDER] [--inputs 20] [--steps 50] \
        [--spatial-scales 1.5,3,6]

Eq. 3 (§3.4) keeps what lies outside the edit mask by denoising it with the source prompt p_a: it can only
preserve the background if the MCDM reconstructs its input under p_a. With an empty mask every cell takes
that path, so the output is the model's reconstruction. On the first --inputs held-out inputs per direction
(Table 1's), this prints background PSNR and L1 (outside the true edit's region) and the probes' identity for:
the edit as shipped; the reconstruction from the noised input (the shipped start) and from pure noise (§3.4's);
and the reconstruction at stronger guidance on c_s = E(x_A).
"""

from __future__ import annotations

import torch
from _options import script_parser

from retouch.backbone import MINI_DIR
from retouch.distributed import exit_unless_main_process
from retouch.methods.portrait import PortraitConfig, portrait_edit
from retouch.networks.portrait import PortraitModel
from retouch.train.evaluate_portrait import DIRECTIONS, direction_inputs, scene_scores
from retouch.world import World
from retouch.world.probe import load_probes


def main() -> None:
    args = script_parser(__doc__, model=str(MINI_DIR / "portrait"), inputs=20, steps=50,
                         spatial_scales="1.5,3,6").parse_args()
    model = PortraitModel.load(args.model)
    probes = load_probes(MINI_DIR / "probes")
    world = World(seed=0, size=64)
    nowhere = torch.zeros(1, 1, 16, 16)  # Eq. 3 with M = 0: p_a's prediction in every cell
    shipped = PortraitConfig(edit="", num_steps=args.steps)
    runs = [("edit, as shipped", {}, None), ("reconstruction, from the noised input", {}, nowhere),
            ("reconstruction, from pure noise (§3.4)", {"start_from_input": False}, nowhere)]
    runs += [(f"reconstruction, c_s scale {scale:g}", {"spatial_scale": scale}, nowhere)
             for scale in map(float, args.spatial_scales.split(",")) if scale != shipped.spatial_scale]
    print(f"{args.model}: {args.inputs} held-out inputs per direction, {args.steps} DDIM steps\n")
    print("| direction | output | BG PSNR (dB) | BG L1 | identity |\n|---|---|---|---|---|")
    for direction in DIRECTIONS:
        data = direction_inputs(world, direction, args.inputs)
        for label, changes, mask in runs:
            config = PortraitConfig(**{**vars(shipped), "edit": direction, **changes})
            images = portrait_edit(model, data.images * 2 - 1, config, mask=mask).images
            scores = scene_scores(data, ((images + 1) / 2).clamp(0, 1), None, probes)
            print(f"| {direction} | {label} | {float(scores['background_psnr'].mean()):.1f} | "
                  f"{float(scores['background_l1'].mean()):.4f} | {float(scores['identity'].float().mean()):.2f} |",
                  flush=True)


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
