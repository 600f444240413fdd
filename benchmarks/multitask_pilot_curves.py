"""Learning curves of multitask pilot runs: val L1 per single task against samples seen, beside the
unedited input's L1 (the bar every task must beat).

    python benchmarks/multitask_pilot_curves.py --data out/compositing --run residual=out/mt-pilot/residual \
        --run epsilon=out/mt-pilot/epsilon --steps 250,500,1000 --limit 24 --output docs/multitask_pilots.json

Each checkpoint's raw (not EMA) weights are exported with ``export_checkpoint`` and edited with 25 steps
from noise, as ``retouch eval multitask`` does: DDIM, or with ``--eta 1`` stochastic steps (an ε model draws
grain texture only so; ``--eta 0,1`` measures both).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from _options import script_parser

from retouch.train.evaluate_multitask import Unedited, evaluate, load_compositing_model
from retouch.train.multitask import export_checkpoint

TASKS = ("blur", "grain", "colour", "inpaint", "sharpen")


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=FOLDER")
    parser.add_argument("--steps", default="250,500,1000")
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--split", default="val")
    parser.add_argument("--eta", default="0", help="comma-separated sampler η values (0 = DDIM)")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    curves = {"split": args.split, "limit": args.limit, "runs": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for entry in args.run:
            name, folder = entry.split("=", 1)
            batch = json.loads((Path(folder) / "run_config.json").read_text())["batch"]
            points = []
            for step in (int(s) for s in args.steps.split(",")):
                model = load_compositing_model(export_checkpoint(Path(folder), step, Path(scratch) / f"{name}-{step}"))
                systems = {"unedited input": Unedited()}
                for eta in (float(e) for e in args.eta.split(",")):
                    label = name if eta == 0 else f"{name} η={eta:g}"
                    systems[label] = dataclasses.replace(model, eta=eta)
                rows = evaluate(systems, args.data, args.split, TASKS, num_steps=25, limit=args.limit)
                points.append({"step": step, "samples": step * batch, "rows": rows})
                for label in systems:
                    if label != "unedited input":
                        print(label, step, {r["task"]: round(r["l1"], 4) for r in rows if r["model"] == label},
                              flush=True)
            curves["runs"][name] = points
    args.output.write_text(json.dumps(curves, indent=2))


if __name__ == "__main__":
    main()
