"""The multitask paper's Tables 2–5 on our compositing benchmark, for every model `make multitask-models` trains.

    .venv/bin/python benchmarks/multitask_tables.py --data out/compositing --work out/train-multitask \
        [--splits test,photos] [--steps 25] [--limit N] [--out docs/multitask_tables.md]

Models are the folders under ``--work`` that hold a trained ``final/``: ``ours``, ``palette``
(Palette++), ``pix2pix``, ``no-labels``, any other ablation (``depth-0``, ``n-pair-a`` …), and the
``single-<task>`` models, chained as "ours-single". For each split: Table 2 (single tasks), Table 3
(task combinations), Table 4 (the ablations against ours, averaged over the single tasks and over
the combinations, the layout of the paper's Table 4) and, where ``n-pair-a``/``n-pair-b`` were trained, Table 5. KID uses the mini world's judge image features
(the paper: Inception; none is available offline) and is labelled so; LPIPS needs local weights
(``--lpips``), otherwise its column is empty. Every L1 and SSIM comes with a 95 % bootstrap interval over
the crops, and every comparison of ours with another row ("ours has lower L1 than X on task T") is a
paired Wilcoxon test on the same crops, read as holds / does not hold / cannot be told apart
(:func:`retouch.train.evaluate_multitask.compare_models`). Also prints each training run's samples/s.
Rows are kept in ``--out``'s .json and reused on a rerun (delete it after retraining a model); with
``--keep-cached`` the cached rows of models whose folders are gone are shown too (models trained earlier on the
same benchmark; the evaluation is seeded, so their rows are what a rerun gives). ``ours-combined`` (ours'
recipe trained with a share of multi-task examples, ``--combination-share``; not the paper) and its wider
variants (``ours-wide-combined``, ``--pixel-channels``; ``ours-wide-combined-texture``, with the texture term on
grain and sharpening examples) join Tables 2 and 3 and are compared with the input, ours and the chain of
single-task models.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from _options import script_parser

from retouch.backbone import MINI_DIR
from retouch.data.compositing import MULTI_TASKS
from retouch.distributed import exit_unless_main_process
from retouch.metrics import TransformersCLIPJudge, load_lpips
from retouch.metrics.claims import FAILS, HOLDS, UNCLEAR
from retouch.train.evaluate_multitask import (
    SINGLE_TASKS,
    InvertedStart,
    Unedited,
    compare_models,
    evaluate,
    load_system,
    multitask_table,
    trained_folders,
)

#: Models trained on task combinations too (--combination-share; not the paper), each compared like ours.
COMBINED_MODELS = ("ours-combined", "ours-wide-combined", "ours-wide-combined-texture")
#: Tables 2 and 3 ("palette" is Palette++)
MAIN_MODELS = ("unedited input", "ours", *COMBINED_MODELS, "palette", "pix2pix", "ours-single")


def load_models(work: Path) -> dict:
    models = {name: load_system(folder) for name, folder in trained_folders(work).items()}
    if "ours" in models:  # the start the paper tried and dropped, as an ablation row
        models["ours-ddim-inversion"] = InvertedStart(models["ours"])
    models["unedited input"] = Unedited()  # the scale: what copying the input scores
    return models


def averaged(rows: list[dict], tasks) -> list[dict]:
    """One row per model: the mean of each metric over ``tasks``."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model and r["task"] in tasks]
        if not mine:
            continue
        row = {"task": "mean", "model": model, "n": sum(r["n"] for r in mine)}
        for key in ("l1", "ssim", "lpips", "kid_x1e3"):
            values = [r[key] for r in mine if r[key] is not None]
            row[key] = sum(values) / len(values) if len(values) == len(mine) else None
        out.append(row)
    return out


def throughput(work: Path) -> str:
    lines = ["| run | steps | batch | samples | threads | samples/s | minutes |", "|---|---|---|---|---|---|---|"]
    for report_path in sorted(work.glob("*/report.json")):
        report = json.loads(report_path.read_text())
        batch = report["config"]["batch"]
        lines.append(f"| {report_path.parent.name} | {report['steps']} | {batch} | {report['steps'] * batch:,} | "
                     f"{report.get('threads', '?')} | {report['samples_per_second']:.1f} | {report['seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


#: (table, tasks, the row tested, the rows it is compared with): "it has lower L1 than X", paired over the same crops.
COMPARISONS = (("2", SINGLE_TASKS, "ours", ("unedited input", "palette", "pix2pix", "ours-single")),
               ("3", tuple(MULTI_TASKS), "ours", ("unedited input", "palette", "pix2pix", "ours-single")),
               ("4", SINGLE_TASKS + tuple(MULTI_TASKS), "ours", ("no-labels", "ours-ddim-inversion", "depth-0",
                                                                  "depth-1", "depth-4")),
               ("5", SINGLE_TASKS + tuple(MULTI_TASKS), "ours", ("n-pair-a", "n-pair-b")),
               *((table, tasks, subject, ("unedited input", "ours", "ours-single"))
                 for subject in COMBINED_MODELS for table, tasks in (("2", SINGLE_TASKS), ("3", tuple(MULTI_TASKS)))))
#: Table 5's rows (the N-pair loss of Eq. 3: config A on the bottleneck, B on the labels' space); every other
#: model outside MAIN_MODELS is a Table 4 ablation (no labels, the DDIM-inversion start, f_θ depth …).
N_PAIR_MODELS = ("n-pair-a", "n-pair-b")


def comparisons(rows: list[dict]) -> str:
    """Every comparison of ours (and the combined models) with another row as a paired test, then a count of verdicts
    per table and row."""
    lines = ["| table | task | model | its L1 | vs | their L1 | model − them [95 % CI] | p (Wilcoxon) | better? |",
             "|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for table, tasks, subject, others in COMPARISONS:
        for other in others:
            found = compare_models(rows, subject, other, tasks)
            for c in found:
                lines.append(f"| {table} | {c['task']} | {subject} | {c['a_mean']:.4f} | {other} | {c['b_mean']:.4f} | "
                             f"{c['difference'].format(4)} | {c['p']:.2g} | {c['verdict']} |")
            if found:
                counts = {v: sum(c["verdict"] == v for c in found) for v in (HOLDS, FAILS, UNCLEAR)}
                summary.append(f"- Table {table}, {subject} vs {other}: better on {counts[HOLDS]} of {len(found)} "
                               f"tasks, worse on {counts[FAILS]}, cannot be told apart on {counts[UNCLEAR]}.")
    return "\n".join(summary) + "\n\n" + "\n".join(lines) + "\n"


def main():
    parser = script_parser(__doc__, data=Path, work=Path, splits="test,photos", steps=25,
                           models=(None, "comma-separated names to compute rows for (default: all); cached rows of "
                                         "others are shown"), out=Path("docs/multitask_tables.md"))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--lpips", type=Path, default=None)
    parser.add_argument("--keep-cached", action="store_true",
                        help="also show the cached rows of models no longer under --work")
    args = parser.parse_args()

    models = load_models(args.work)
    compute = set(args.models.split(",")) if args.models is not None else set(models)
    extractor = TransformersCLIPJudge(MINI_DIR / "judge").encode_images
    lpips = load_lpips(args.lpips) if args.lpips else None
    label = "mini judge features"
    text = [f"# Multitask paper, Tables 2–5 on the compositing benchmark\n\n`{' '.join(sys.argv)}` — "
            f"{args.steps} DDIM steps from noise; KID ×10³ on {label}.\n\n## Training throughput\n\n",
            throughput(args.work)]
    # Rows already computed (same --out) are reused, so a model trained later adds only its own rows.
    cache_path = args.out.with_suffix(".json")
    all_rows = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    order = {name: k for k, name in enumerate(models)}
    for split in args.splits.split(","):
        started = time.perf_counter()
        rows = [r for r in all_rows.get(split, []) if r["model"] in models or args.keep_cached]
        for r in rows:
            order.setdefault(r["model"], len(order))
        for name, model in models.items():
            if name not in compute or any(r["model"] == name for r in rows):
                continue
            rows += evaluate({name: model}, args.data, split, SINGLE_TASKS + tuple(MULTI_TASKS), num_steps=args.steps,
                             limit=args.limit, extractor=extractor, lpips=lpips)
            all_rows[split] = rows
            cache_path.write_text(json.dumps(all_rows, indent=2))
        tasks = {task: k for k, task in enumerate(SINGLE_TASKS + tuple(MULTI_TASKS))}
        rows.sort(key=lambda r: (tasks[r["task"]], order[r["model"]]))
        main_rows = [r for r in rows if r["model"] in MAIN_MODELS]
        ablations = [r for r in rows if r["model"] not in MAIN_MODELS + N_PAIR_MODELS or r["model"] == "ours"
                     or r["model"] in COMBINED_MODELS]
        n_pair = [r for r in rows if r["model"] in N_PAIR_MODELS + ("ours",)]
        text += [f"\n## Split `{split}`\n\n### Table 2: single tasks\n\n",
                 multitask_table([r for r in main_rows if r["task"] in SINGLE_TASKS], label),
                 "\n### Table 3: task combinations (every model but the ours-…-combined ones trained on single tasks only)\n\n",
                 multitask_table([r for r in main_rows if r["task"] in MULTI_TASKS], label),
                 "\n### Table 4: ablations, mean over single tasks / over combinations\n\n",
                 multitask_table(averaged(ablations, SINGLE_TASKS), label).replace("| mean |", "| single (mean) |"),
                 "\n", multitask_table(averaged(ablations, MULTI_TASKS), label).replace("| mean |", "| combined (mean) |"),
                 *(["\n### Table 5: the N-pair loss (Eq. 3), config A (bottleneck) and B (labels), mean over single "
                    "tasks / over combinations\n\n",
                    multitask_table(averaged(n_pair, SINGLE_TASKS), label).replace("| mean |", "| single (mean) |"),
                    "\n", multitask_table(averaged(n_pair, MULTI_TASKS), label).replace("| mean |", "| combined (mean) |")]
                   if any(r["model"] in N_PAIR_MODELS for r in rows) else []),
                 "\n### Ours against each other row, paired over the same crops (L1, α = 0.05 per test)\n\n",
                 comparisons(rows)]
        print(f"{split}: {len(rows)} rows in {time.perf_counter() - started:.0f} s")
    args.out.write_text("".join(text))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
