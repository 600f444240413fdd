"""Look at multitask models' edits: one task (or combination) on the first crops of a split, not picked.

    .venv/bin/python benchmarks/multitask_task_grid.py --data out/compositing --task sharpen \
        --model shipped=src/retouch/assets/mini/multitask --model wide=out/train/wide/final [--split test] \
        [--limit 6] [--steps 25] [--out docs/multitask_sharpen.png]

A ``--model`` folder of ``single-<task>`` folders (``name=chain:WORK``, WORK holding ``single-blur`` …) is the
chain of single-task models. Per crop: the input, the target, then each model's edit, and each edit's L1 to the
target in its caption; the same seeds and 25 DDIM steps as ``benchmarks/multitask_tables.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _grid import save_labelled_rows

from retouch.distributed import exit_unless_main_process
from retouch.train.evaluate_multitask import cases, load_system, run_model, trained_folders


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--task", required=True, help="a single task or a combination such as blur+grain+colour")
    parser.add_argument("--model", action="append", required=True, help="NAME=FOLDER, or NAME=chain:WORK (repeat)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    batch = cases(args.data, args.split, args.task, args.limit)
    edits = {}
    for spec in args.model:
        name, _, folder = spec.partition("=")
        if folder.startswith("chain:"):
            system = load_system(trained_folders(Path(folder[len("chain:"):]))["ours-single"])
        else:
            system = load_system(Path(folder))
        edits[name] = (run_model(system, batch, num_steps=args.steps, seed=0) + 1) / 2
    rows, labels = [], []
    for k, case in enumerate(batch):
        target = (case.target + 1) / 2
        row = [(case.source + 1) / 2, target, *(edited[k].clamp(0, 1) for edited in edits.values())]
        rows.append(row)
        labels.append(["input", args.task, *(f"{name} {(edited[k].clamp(0, 1) - target).abs().mean():.3f}"
                                             for name, edited in edits.items())])
    save_labelled_rows(rows, args.out, labels, upscale=3)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
