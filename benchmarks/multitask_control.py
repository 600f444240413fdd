"""Fine-grained control, the multitask paper's Fig. 4: one crop edited with increasing sliders.

    .venv/bin/python benchmarks/multitask_control.py --model out/train-multitask/final --data DATA \
        [--split photos] [--index 0] [--steps 25] [--out docs/multitask_control.png]

Rows: blur β = 0.2 … 1.0 (and below it the exact operator at the crop's stored angle, for scale);
grain σ over the five radii; sharpening λ = 1 … 3 at μ = 0.02; inpainting with four free-form masks
(shown as holes); colour transfer towards four different references of the same split (shown below
it); and the multi-task row of the paper's figure: β rising with grain σ = 0.05 and the first
reference switched on. Each row starts with the input. The same seed everywhere, so a row differs
only by its slider.
"""

from __future__ import annotations

from pathlib import Path

import torch
from _grid import save_labelled_rows
from _options import script_parser

from retouch.data.compositing import GRAIN_NAMES, iter_compositing
from retouch.distributed import exit_unless_main_process
from retouch.effects import free_form_mask, motion_blur
from retouch.methods.multitask import multitask_edit
from retouch.networks.multitask import EditingVector
from retouch.train.evaluate_multitask import load_compositing_model


def as_tensor(image):
    return torch.from_numpy(image).permute(2, 0, 1).float() * 2 - 1


def main():
    args = script_parser(__doc__, model=Path, data=Path, split="photos", index=0, steps=25, seed=0,
                         out=Path("docs/multitask_control.png")).parse_args()

    model = load_compositing_model(args.model)
    samples = list(iter_compositing(args.data, args.split))
    sample = samples[args.index % len(samples)]
    source = as_tensor(sample.images["source"])[None]
    references = [as_tensor(s.images["source"])[None] for s in samples[args.index + 1:args.index + 5]]

    def edit(vector, reference=None, mask=None):
        return (multitask_edit(model, source, vector, reference=reference, mask=mask, num_steps=args.steps,
                               seed=args.seed)[0].clamp(-1, 1) + 1) / 2

    plain = (source[0] + 1) / 2
    rows, labels = [], []
    blurs = (0.2, 0.4, 0.6, 0.8, 1.0)
    rows.append([plain, *(edit(EditingVector(blur=b)) for b in blurs)])
    labels.append(["input", *(f"beta {b:g}" for b in blurs)])
    angle = sample.params["blur_angle"]
    rows.append([plain, *(torch.from_numpy(motion_blur(sample.images["source"], b, angle=angle)).permute(2, 0, 1)
                          for b in blurs)])
    labels.append(["", *(f"operator {b:g}" for b in blurs)])
    rows.append([plain, *(edit(EditingVector(grain=r)) for r in GRAIN_NAMES)])
    labels.append(["input", *(f"sigma {r:g}" for r in GRAIN_NAMES)])
    amounts = (1.0, 1.5, 2.0, 2.5, 3.0)
    rows.append([plain, *(edit(EditingVector(sharpen=(a, 0.02))) for a in amounts)])
    labels.append(["input", *(f"lambda {a:g}" for a in amounts)])
    side = source.shape[-1]
    keeps = [torch.from_numpy(~free_form_mask(side, side, seed=k)).float()[None, None] for k in range(4)]
    rows.append([plain, *(edit(EditingVector(inpaint=True), mask=keep) for keep in keeps)])
    labels.append(["input", *(f"mask {k + 1}" for k in range(len(keeps)))])
    rows.append([plain, *(plain * keep[0] for keep in keeps)])
    labels.append(["", *(f"input x mask {k + 1}" for k in range(len(keeps)))])
    rows.append([plain, *(edit(EditingVector(colour=True), r) for r in references)])
    labels.append(["input", *(f"reference {k + 1}" for k in range(len(references)))])
    rows.append([plain, *((r[0] + 1) / 2 for r in references)])
    labels.append(["", *(f"reference {k + 1}" for k in range(len(references)))])
    rows.append([plain, *(edit(EditingVector(blur=b, grain=0.05, colour=True), references[0]) for b in blurs)])
    labels.append(["input", *(f"b {b:g}+grain+ref 1" for b in blurs)])
    save_labelled_rows(rows, args.out, labels)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
