"""``retouch bench paper``: every covered paper table on the shipped models, and ``docs/paper_claims.md``.

Each table module (:mod:`retouch.bench.pix2pix_zero`, …) builds its rows through the shared
:class:`~retouch.bench.harness.RowCache`, so a rerun recomputes only the rows whose settings or model
files changed. The tables go to ``DOCS/paper_tables/KEY.md`` (with their figures), the claims of all of
them to ``DOCS/paper_claims.md``: one row per claim with the paper's statement, our measurement and
its interval, the paired test's p-value and the verdict (:mod:`retouch.metrics.claims`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from retouch.errors import RetouchError

#: Tables the command can build, in the order they run.
TABLES = ("pix2pix-zero", "distill", "pixels", "portrait", "decoder-splices", "multitask")
#: What the issue asks for that this command does not measure yet.
NOT_COVERED = (
    "multitask: Table 5 (N-pair) and the f_θ-depth rows of Table 4 are not trained yet; KID and LPIPS of Tables 2–4 "
    "are `benchmarks/multitask_tables.py`'s",
)
QUICK = {"scenes": 4, "steps": 4}
FULL = {"scenes": 100, "steps": 50}


def builders() -> dict:
    from retouch.bench import decoder_splices, distill, multitask, pix2pix_zero, pixels, portrait

    return {"pix2pix-zero": pix2pix_zero.build, "distill": distill.build, "pixels": pixels.build,
            "portrait": portrait.build, "decoder-splices": decoder_splices.build, "multitask": multitask.build}


def write_text(path: Path, text: str) -> None:
    """Write atomically: a failed run leaves the old file, never half a new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def run_paper_tables(*, tables: list[str] | None = None, quick: bool = False, scenes: int | None = None,
                     steps: int | None = None, docs: Path | None = None, cache: Path | None = None,
                     models: Path | None = None, trained: Path | None = None, fresh: bool = False, seed: int = 0,
                     batch: int = 25, log=print) -> dict:
    """Build the chosen tables (all by default) and write their markdown and the claims page.

    ``trained`` is where unshipped trained models and data are looked for (default ``out/``; see
    :data:`retouch.bench.portrait.VARIANTS`, :func:`retouch.train.distill.trained_folder`,
    :mod:`retouch.bench.multitask`; a table without its data is skipped and listed as not covered). ``quick``
    makes every table tiny (:data:`QUICK`) and, unless ``docs``/``cache`` are given, writes under
    ``out/paper-quick/`` so a smoke run never replaces the real tables. Returns a summary: the files written, the
    wall time of each table and of the whole run, rows computed and reused.
    """
    from retouch.backbone import MINI_DIR
    from retouch.bench.context import Run
    from retouch.bench.harness import RowCache, evaluate_claims, render_table

    chosen = list(tables or TABLES)
    unknown = [t for t in chosen if t not in TABLES]
    if unknown:
        raise RetouchError(f"unknown table {', '.join(unknown)}; choose from {', '.join(TABLES)}")
    size = QUICK if quick else FULL
    scenes = size["scenes"] if scenes is None else scenes
    steps = size["steps"] if steps is None else steps
    if scenes < 2 or steps < 1:
        raise RetouchError(f"--scenes must be at least 2 and --steps at least 1; got {scenes} and {steps}")
    base = Path("out/paper-quick") if quick else Path(".")
    docs = Path(docs) if docs else base / "docs" if quick else Path("docs")
    cache = Path(cache) if cache else (base / "cache" if quick else Path("out/paper-tables"))
    models = Path(models) if models else MINI_DIR
    if not (models / "backbone").is_dir():
        raise RetouchError(f"{models} has no backbone/ folder; pass the mini models' folder with --models")
    command = (f"retouch bench paper{' --quick' if quick else ''} --scenes {scenes} --steps {steps}"
               f"{' --tables ' + ','.join(chosen) if tables else ''}")
    row_cache = RowCache(cache, fresh=fresh)
    run = Run(models=models, cache=row_cache, docs=docs / "paper_tables", scenes=scenes, steps=steps, seed=seed,
              quick=quick, batch=batch, log=log, command=command, trained=Path(trained) if trained else Path("out"))
    started = time.perf_counter()
    built, results, written = [], [], []
    for key in chosen:
        table = builders()[key](run)
        if table is None:  # its data is not here; missing_variants lists it as not covered
            continue
        path = docs / "paper_tables" / f"{table.key}.md"
        write_text(path, render_table(table))
        written.append(path)
        if table.figure:
            written.append(Path(table.figure))
        written += [Path(path) for path, _ in table.extra_figures]
        built.append(table)
        results += evaluate_claims(table)
        log(f"{key}: {len(table.rows)} rows in {table.wall_seconds:.1f} s -> {path}")
    total = time.perf_counter() - started
    claims_path = docs / "paper_claims.md"
    skipped = [t for t in TABLES if t not in chosen]
    not_covered = list(NOT_COVERED) + missing_variants(run, chosen)
    write_text(claims_path, render_claims_page(built, results, total, command, scenes, steps, skipped, not_covered))
    written.append(claims_path)
    return {"written": [str(p) for p in written], "tables": {t.key: round(t.wall_seconds, 1) for t in built},
            "total_seconds": round(total, 1), "rows_computed": row_cache.computed, "rows_reused": row_cache.reused,
            "claims": [(r.claim.statement, r.metric.name, None if r.pooled is None else r.pooled.verdict)
                       for r in results]}


def missing_variants(run, chosen) -> list[str]:
    """A "not covered" line for the trained models and data (portrait variants, distilled translators, the
    multitask benchmark and baselines) not found here."""
    from retouch.bench import distill, multitask
    from retouch.bench.portrait import VARIANTS, present_variants

    missing = [name for name in VARIANTS if name not in present_variants(run)] if "portrait" in chosen else []
    lines = ([f"portrait: {', '.join(missing)} (trained variants, not shipped; `make portrait-variants` trains them "
              f"under {run.trained}/portrait/)"] if missing else [])
    return (lines + (distill.missing(run) if "distill" in chosen else [])
            + (multitask.missing(run) if "multitask" in chosen else []))


def render_claims_page(tables, results, total: float, command: str, scenes: int, steps: int,
                       skipped: list[str] = (), not_covered=NOT_COVERED) -> str:
    from retouch.bench.harness import render_claims
    from retouch.metrics.claims import FAILS, HOLDS, UNCLEAR

    counts = {v: sum(r.pooled is not None and r.pooled.verdict == v for r in results) for v in (HOLDS, FAILS, UNCLEAR)}
    lines = [
        "# The papers' claims, re-measured on the mini world",
        "",
        f"Written by `{command}` ({scenes} scenes per cell, {steps} steps). Total wall time of the command: "
        f"{total:.1f} s on this machine (" + ", ".join(f"{t.key}: {t.wall_seconds:.1f} s" for t in tables) + "). "
        "Rows are cached, so that is this run's time; the rows' own compute times, each timed when it was "
        f"computed, sum to {sum(r.seconds for t in tables for r in t.rows):.0f} s ("
        + ", ".join(f"{t.key}: {sum(r.seconds for r in t.rows):.0f} s" for t in tables) + ").",
        "",
        "Each claim is read as \"A is better than B on one metric\" and tested on the same scenes, paired: "
        "success rates by the exact McNemar test, continuous metrics by the Wilcoxon signed-rank test, set "
        "statistics (KID) by a paired bootstrap. Verdicts at α = 0.05 per claim, uncorrected: **holds** "
        "(significant, the claimed way), **does not hold** (significant, the other way), **cannot be told "
        "apart** (p ≥ 0.05). A and B are means over the pooled scenes of all groups with 95 % percentile "
        "bootstrap intervals; A − B is the mean paired difference with its interval; the per-group column "
        "gives each edit's own test (`retouch.metrics.claims`).",
        "",
        f"Verdicts: {counts[HOLDS]} hold, {counts[FAILS]} do not hold, {counts[UNCLEAR]} cannot be told apart."
        + (f" Tables left out of this run (`--tables`): {', '.join(skipped)}." if skipped else ""),
        "",
        render_claims(results, link=True, docs_prefix="paper_tables/"),
        "",
        "A look at each claim that fails or cannot be told apart, and what would change it: "
        "[paper_claims_notes.md](paper_claims_notes.md) (written by hand from the run above).",
        "",
        "## Not covered yet",
        "",
        *(f"- {item}" for item in not_covered),
    ]
    return "\n".join(lines) + "\n"
