"""Join several `retouch eval portrait` runs into one Table 1 (docs/portrait.md).

The MCDMs, their ablations and the training-free baselines were run as separate commands (each takes
minutes to an hour on two cores); this reads their ``.json`` files, refuses runs whose inputs differ
(count, seed, steps, backbone: the same held-out scenes and noise), keeps the first copy of the
reference rows every run repeats, and prints or writes the joined table.

    python benchmarks/portrait_table.py out/portrait-eval/baselines_n100.json \
        out/portrait-eval/mcdm_n100.json out/portrait-eval/scratch_n100.json -o out/portrait-eval/table.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from retouch.train.evaluate_portrait import report_markdown

SAME_INPUTS = ("count", "num_steps", "backbone", "seed")


def join_runs(paths: list[Path]) -> tuple[dict, list[dict]]:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    first = runs[0]["settings"]
    for path, run in zip(paths, runs):
        differing = [k for k in SAME_INPUTS if run["settings"].get(k) != first.get(k)]
        if differing:
            sys.exit(f"portrait_table: {path} differs from {paths[0]} in {', '.join(differing)}; "
                     "its rows are not on the same inputs")
    rows, seen = [], set()
    for run in runs:
        for row in run["rows"]:
            key = (row["system"], row["direction"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
    order = {"reference": 0, "ours": 1, "baseline": 2}  # inputs first, then ours, baselines, ground truth
    truth = [r for r in rows if r["system"] == "ground truth"]
    rest = sorted((r for r in rows if r["system"] != "ground truth"), key=lambda r: order.get(r["group"], 3))
    return first, rest + truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="the .json files `retouch eval portrait` wrote")
    parser.add_argument("-o", "--output", type=Path, help="Markdown file (default: print)")
    arguments = parser.parse_args()
    settings, rows = join_runs(arguments.runs)
    header = (f"Mini world, {settings['count']} held-out inputs per direction, {settings['num_steps']} DDIM steps, "
              f"seed {settings['seed']}; joined from {', '.join(p.name for p in arguments.runs)}.")
    text = report_markdown(rows, header)
    if arguments.output:
        arguments.output.write_text(text)
        print(f"wrote {arguments.output}")
    else:
        print(text)


if __name__ == "__main__":
    main()
