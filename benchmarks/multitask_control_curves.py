"""Fine-grained control as curves: each slider of the multitask model against the exact operator's curve.

    .venv/bin/python benchmarks/multitask_control_curves.py --model FOLDER --data DATA [--split test] \
        [--limit 24] [--steps 25] [--json docs/multitask_control_curves.json] [--plot docs/multitask_control_curves.png]

On the first --limit crops of a split, every slider is swept with the other tasks off, and each output is
measured beside the operator's output on the same crop: the sliders, operators and measures of
retouch.train.multitask_control (blur β → gradient energy, grain σ → high-frequency energy in the flat half,
sharpening λ and μ → gradient energy, colour transfer → distance of the Lab statistics to the reference), which
`retouch bench paper` reads as claims too.

A curve is "monotone" when its mean over crops moves the operator's way at every step. Prints a markdown
table, writes the numbers (--json) and the curves (--plot, needs matplotlib).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from _options import script_parser

from retouch.bench.multitask import plot_control_curves
from retouch.data.compositing import iter_compositing
from retouch.distributed import exit_unless_main_process
from retouch.metrics.control import monotone
from retouch.train.evaluate_multitask import load_compositing_model
from retouch.train.multitask_control import SLIDERS, colour_distances, sweep


def summarise(slider, rows):
    unedited, rows = float(np.mean(rows[0]["input"])), rows[1:]
    model = [float(np.mean(r["model"])) for r in rows]
    operator = [float(np.mean(r["operator"])) for r in rows]
    return {"name": slider.name, "slider": slider.label, "measure": slider.measure_label,
            "values": [r["value"] for r in rows], "direction": slider.direction, "input": unedited, "model": model,
            "operator": operator, "model_monotone": monotone(model, slider.direction),
            "operator_monotone": monotone(operator, slider.direction), "per_crop": rows}


def main() -> None:
    args = script_parser(__doc__, model=Path, data=Path, split="test", limit=24, steps=25, seed=0,
                         json=None, plot=None).parse_args()
    model = load_compositing_model(args.model)
    samples = list(iter_compositing(args.data, args.split))[:args.limit]
    curves = [summarise(slider, sweep(model, samples, slider, steps=args.steps, seed=args.seed)) for slider in SLIDERS]
    # Colour: each crop towards the next crop's reference image.
    colour = colour_distances(model, samples, steps=args.steps, seed=args.seed)
    colour_summary = {name: float(np.mean(values)) for name, values in colour.items()}
    colour_summary["model_closer_than_input"] = float(np.mean(np.array(colour["model"]) < np.array(colour["input"])))

    print(f"{args.model}, {args.split} split, {len(samples)} crops, {args.steps} DDIM steps\n")
    print("| slider | values | unedited input | model | operator | model monotone | operator monotone |")
    print("|---|---|---|---|---|---|---|")
    for c in curves:
        fmt = lambda xs: ", ".join(f"{x:.4g}" for x in xs)  # noqa: E731
        print(f"| {c['name']}: {c['slider']} | {fmt(c['values'])} | {c['input']:.4g} | {fmt(c['model'])} | {fmt(c['operator'])} | "
              f"{'yes' if c['model_monotone'] else 'no'} | {'yes' if c['operator_monotone'] else 'no'} |")
    print(f"\ncolour statistics distance to the reference (Lab mean and std): input {colour_summary['input']:.3f}, "
          f"model {colour_summary['model']:.3f}, Reinhard {colour_summary['operator']:.3f}; the model is closer than "
          f"its input on {colour_summary['model_closer_than_input']:.0%} of crops")
    result = {"model": str(args.model), "split": args.split, "crops": len(samples), "steps": args.steps,
              "curves": curves, "colour": {**colour_summary, "per_crop": colour}}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        plot_control_curves(curves, colour_summary, Path(args.plot), f"{args.split} split, {len(samples)} crops")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
