"""Fine-grained control as curves: each slider of the multitask model against the exact operator's curve.

    .venv/bin/python benchmarks/multitask_control_curves.py --model FOLDER --data DATA [--split test] \
        [--limit 24] [--steps 25] [--json docs/multitask_control_curves.json] [--plot docs/multitask_control_curves.png]

On the first --limit crops of a split, every slider is swept with the other tasks off, and each output is
measured (retouch.metrics.control) beside the operator's output on the same crop:

* blur β = 0.1 … 0.9 → gradient energy (lower = blurrier), operator: motion blur at the crop's stored angle;
* grain σ over the dataset's five radii → high-frequency energy in the input's flat half, operator: the
  dataset's stored film-grain targets (Newson et al., the same renderer);
* sharpening λ = 1 … 3 at μ = 0.02, then μ = 0 … 0.1 at λ = 2 → gradient energy, operator: unsharp masking;
* colour transfer towards another crop's reference → distance of the Lab means and deviations to the
  reference, for the input, the model and Reinhard's transfer.

A curve is "monotone" when its mean over crops moves the operator's way at every step. Prints a markdown
table, writes the numbers (--json) and the curves (--plot, needs matplotlib).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _options import script_parser

from retouch.data.compositing import GRAIN_NAMES, iter_compositing
from retouch.distributed import exit_unless_main_process
from retouch.effects import motion_blur, reinhard_color_transfer, unsharp_mask
from retouch.metrics.control import colour_statistics_distance, flat_high_frequency_energy, gradient_energy, monotone
from retouch.networks.multitask import EditingVector
from retouch.train.evaluate_multitask import Case, load_compositing_model, run_model

BLURS = (0.1, 0.3, 0.5, 0.7, 0.9)
AMOUNTS = (1.0, 1.5, 2.0, 2.5, 3.0)
THRESHOLDS = (0.0, 0.025, 0.05, 0.075, 0.1)


def to01(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1) / 2).clamp(0, 1)


def from_arrays(arrays) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()


def sweep(model, samples, vectors, measure, operator, *, steps, seed):
    """Per slider value: (model mean, operator mean) of ``measure`` over the crops, and the per-crop values."""
    sources = torch.stack([torch.from_numpy(s.images["source"]).permute(2, 0, 1).float() for s in samples])
    rows = [{"value": None, "input": measure(sources, sources).tolist()}]
    for value, vector in vectors:
        cases = [Case(sources[k] * 2 - 1, sources[k] * 2 - 1, None, None, vector) for k in range(len(samples))]
        edited = to01(run_model(model, cases, num_steps=steps, seed=seed))
        exact = from_arrays([operator(s, value) for s in samples])
        rows.append({"value": value, "model": measure(edited, sources).tolist(), "operator": measure(exact, sources).tolist()})
    return rows


def summarise(name, slider, rows, direction):
    unedited, rows = float(np.mean(rows[0]["input"])), rows[1:]
    model = [float(np.mean(r["model"])) for r in rows]
    operator = [float(np.mean(r["operator"])) for r in rows]
    return {"name": name, "slider": slider, "values": [r["value"] for r in rows], "direction": direction,
            "input": unedited, "model": model, "operator": operator, "model_monotone": monotone(model, direction),
            "operator_monotone": monotone(operator, direction), "per_crop": rows}


def main() -> None:
    args = script_parser(__doc__, model=Path, data=Path, split="test", limit=24, steps=25, seed=0,
                         json=None, plot=None).parse_args()
    model = load_compositing_model(args.model)
    samples = list(iter_compositing(args.data, args.split))[:args.limit]
    image = lambda sample, name: sample.images[name]  # noqa: E731
    gradient = lambda edited, sources: gradient_energy(edited)  # noqa: E731
    run = dict(steps=args.steps, seed=args.seed)
    curves = [
        summarise("blur", "β", sweep(model, samples, [(b, EditingVector(blur=b)) for b in BLURS], gradient,
                                     lambda s, b: motion_blur(image(s, "source"), b, angle=s.params["blur_angle"]),
                                     **run), "down"),
        summarise("grain", "σ", sweep(model, samples, [(r, EditingVector(grain=r)) for r in GRAIN_NAMES],
                                      flat_high_frequency_energy, lambda s, r: image(s, GRAIN_NAMES[r]), **run), "up"),
        summarise("sharpen amount", "λ (μ = 0.02)",
                  sweep(model, samples, [(a, EditingVector(sharpen=(a, 0.02))) for a in AMOUNTS], gradient,
                        lambda s, a: unsharp_mask(image(s, "source"), a, 0.02), **run), "up"),
        summarise("sharpen threshold", "μ (λ = 2)",
                  sweep(model, samples, [(m, EditingVector(sharpen=(2.0, m))) for m in THRESHOLDS], gradient,
                        lambda s, m: unsharp_mask(image(s, "source"), 2.0, m), **run), "down"),
    ]
    # Colour: each crop towards the next crop's reference image.
    sources = from_arrays([image(s, "source") for s in samples])
    references = from_arrays([image(samples[(k + 1) % len(samples)], "reference") for k in range(len(samples))])
    cases = [Case(sources[k] * 2 - 1, sources[k] * 2 - 1, references[k] * 2 - 1, None, EditingVector(colour=True))
             for k in range(len(samples))]
    edited = to01(run_model(model, cases, num_steps=args.steps, seed=args.seed))
    exact = from_arrays([reinhard_color_transfer(image(s, "source"), references[k].permute(1, 2, 0).numpy())
                         for k, s in enumerate(samples)])
    colour = {name: colour_statistics_distance(images, references).tolist()
              for name, images in (("input", sources), ("model", edited), ("operator", exact))}
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
        plot(curves, colour_summary, Path(args.plot), f"{args.split} split, {len(samples)} crops")


def plot(curves, colour, path: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves) + 1, figsize=(3.2 * (len(curves) + 1), 3.0), dpi=110)
    for axis, c in zip(axes, curves):
        axis.plot(c["values"], c["model"], marker="o", label="model")
        axis.plot(c["values"], c["operator"], marker="s", linestyle="--", label="operator")
        axis.axhline(c["input"], color="grey", linewidth=1, label="unedited input")
        axis.set_xlabel(c["slider"])
        axis.set_title(c["name"], fontsize=9)
        axis.set_ylabel("high-freq. energy, flat half" if c["name"] == "grain" else "gradient energy")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    names = ("input", "model", "operator")
    axes[-1].bar(names, [colour[n] for n in names], color=["grey", "C0", "C1"])
    axes[-1].set_title("colour: distance to reference", fontsize=9)
    figure.suptitle(f"Multitask control curves ({subtitle})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
