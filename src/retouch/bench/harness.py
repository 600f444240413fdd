"""The paper-table harness: cached rows of per-scene numbers, tables with intervals, claims with verdicts.

A *row* is one system on one group of scenes (an edit, a strength, …) of one table. It holds one value
per scene for every metric, in the order of the table's fixed scene list, so two rows of a table can
be compared scene by scene. Rows are cached on disk (:class:`RowCache`) under a key made of the
table's name and version, the row's settings (scene count, steps, seeds, …) and the SHA-256 of every
file of the models it reads; a row is recomputed only when one of those changes.

A *claim* is a sentence of a paper read as "system A is better than system B on metric M"; it is
tested on the rows' per-scene values with :mod:`retouch.metrics.claims`, for each group and for all
groups pooled (the pairs stay paired: the same scene under the same edit).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from retouch.metrics.claims import (
    Interval,
    Verdict,
    bootstrap_interval,
    bootstrap_statistic,
    paired_bootstrap_test,
    paired_test,
    verdict,
)

_FINGERPRINTS: dict[tuple, str] = {}


def fingerprint(folder: Path) -> str:
    """SHA-256 over the relative paths and contents of every file under ``folder`` (or of one file).

    A model folder's ``method_defaults.json`` is left out: it sets what users get for the options they leave
    out, and no benchmark row reads it (rows run the settings they name). So is its terminal prior: only
    text-to-image sampling from noise reads it, and no row samples that way."""
    from retouch.methods import METHOD_DEFAULTS_FILE
    from retouch.terminal_prior import TERMINAL_PRIOR_FILE

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (METHOD_DEFAULTS_FILE,
                                                                                 TERMINAL_PRIOR_FILE)) \
        if folder.is_dir() else [folder]
    state = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if state not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for path in files:
            digest.update(str(path.relative_to(folder) if folder.is_dir() else path.name).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        _FINGERPRINTS[state] = digest.hexdigest()
    return _FINGERPRINTS[state]


@dataclass(frozen=True)
class Metric:
    """A column: per-scene values, ``better`` "higher" or "lower"; ``kind`` binary (0/1) or continuous.

    A metric with ``set_statistic`` is not a mean over scenes (KID): its cell is the statistic of the
    row's scenes, its interval and paired test a bootstrap over scene indices. ``set_statistic(row,
    indices)`` reads what it needs from ``row.extra``.
    """

    name: str
    label: str
    better: str
    kind: str = "continuous"
    digits: int = 3
    scale: float = 1.0
    set_statistic: Callable | None = None


@dataclass
class Row:
    table: str
    system: str
    group: str
    values: dict[str, list[float]]
    seconds: float
    scenes: int
    extra: dict = field(default_factory=dict)
    cached: bool = False

    def array(self, metric: str) -> np.ndarray:
        return np.asarray(self.values[metric], dtype=float)


class RowCache:
    """Rows as JSON files under ``root/TABLE/``, keyed by everything that decides their numbers."""

    def __init__(self, root: Path, fresh: bool = False):
        self.root = Path(root)
        self.fresh = fresh
        self.computed = self.reused = 0

    def key(self, table: str, version: int, system: str, group: str, settings: dict, models: dict) -> str:
        described = {"table": table, "version": version, "system": system, "group": group, "settings": settings,
                     "models": {name: fingerprint(path) for name, path in sorted(models.items())}}
        return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def path(self, table: str, system: str, group: str, key: str) -> Path:
        slug = "".join(c if c.isalnum() else "_" for c in f"{system}-{group}")
        return self.root / table / f"{slug}-{key}.json"

    def row(self, table: str, version: int, system: str, group: str, settings: dict, models: dict,
            compute: Callable[[], tuple[dict, dict]]) -> Row:
        """The cached row, or ``compute() -> (values, extra)`` timed and stored."""
        path = self.path(table, system, group, self.key(table, version, system, group, settings, models))
        if path.is_file() and not self.fresh:
            stored = json.loads(path.read_text())
            self.reused += 1
            return Row(table, system, group, stored["values"], stored["seconds"], stored["scenes"],
                       stored.get("extra", {}), cached=True)
        started = time.perf_counter()
        values, extra = compute()
        seconds = time.perf_counter() - started
        values = {name: [float(v) for v in np.asarray(series, dtype=float).ravel()] for name, series in values.items()}
        scenes = len(next(iter(values.values()))) if values else 0
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps({"table": table, "system": system, "group": group, "settings": settings,
                                       "values": values, "seconds": seconds, "scenes": scenes, "extra": extra}))
        os.replace(partial, path)
        self.computed += 1
        return Row(table, system, group, values, seconds, scenes, extra)


@dataclass(frozen=True)
class Claim:
    """A paper's sentence read as "``a`` is better than ``b`` on ``metric``" (higher/lower from the metric)."""

    paper: str
    statement: str
    metric: str
    a: str
    b: str
    note: str = ""
    a_group: str = ""  # set both to compare one group of A with another of B (e.g. two strengths)
    b_group: str = ""
    groups: tuple[str, ...] = ()  # only these groups (default: every group both systems have)


@dataclass
class ClaimResult:
    claim: Claim
    metric: Metric
    pooled: Verdict
    a: Interval
    b: Interval
    per_group: dict[str, Verdict]
    table: str


@dataclass
class Table:
    """One paper table: its rows, metrics, claims and where its markdown (and figures) go.

    ``extra_figures``: further figures as (path, caption), linked after the first with their captions.
    """

    key: str
    title: str
    paper: str
    description: str
    metrics: list[Metric]
    rows: list[Row]
    claims: list[Claim]
    wall_seconds: float
    command: str
    figure: str | None = None
    notes: list[str] = field(default_factory=list)
    extra_figures: list[tuple[str, str]] = field(default_factory=list)

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    def groups(self) -> list[str]:
        return list(dict.fromkeys(row.group for row in self.rows))

    def find(self, system: str, group: str) -> Row:
        return next(r for r in self.rows if r.system == system and r.group == group)


def cell(metric: Metric, rows: list[Row], seed: int = 0) -> Interval:
    """The metric over the scenes of ``rows`` (several rows: their scenes pooled), with its interval."""
    if metric.set_statistic is not None:
        if len(rows) != 1:
            raise ValueError(f"{metric.name} is a set statistic; pool it over one row at a time")
        return bootstrap_statistic(lambda idx: metric.set_statistic(rows[0], idx), rows[0].scenes, seed=seed)
    return bootstrap_interval(np.concatenate([row.array(metric.name) for row in rows]), seed=seed)


def compare(metric: Metric, a_rows: list[Row], b_rows: list[Row], seed: int = 0) -> Verdict:
    """Paired test of ``a_rows`` against ``b_rows`` (same groups, same scenes), read as "A better"."""
    if metric.set_statistic is not None:
        if len(a_rows) != 1:
            raise ValueError(f"{metric.name} is a set statistic; compare one group at a time")
        test = paired_bootstrap_test(lambda idx: metric.set_statistic(a_rows[0], idx),
                                     lambda idx: metric.set_statistic(b_rows[0], idx), a_rows[0].scenes, seed=seed)
    else:
        a = np.concatenate([row.array(metric.name) for row in a_rows])
        b = np.concatenate([row.array(metric.name) for row in b_rows])
        test = paired_test(a, b, metric.kind, seed=seed)
    return verdict(test, metric.better)


def evaluate_claims(table: Table) -> list[ClaimResult]:
    results = []
    for claim in table.claims:
        metric = table.metric(claim.metric)
        if claim.a_group:
            a_rows, b_rows = [table.find(claim.a, claim.a_group)], [table.find(claim.b, claim.b_group)]
            label = f"{claim.a_group} vs {claim.b_group}"
            pooled = compare(metric, a_rows, b_rows)
            results.append(ClaimResult(claim, metric, pooled, cell(metric, a_rows), cell(metric, b_rows),
                                       {label: pooled}, table.key))
            continue
        groups = [g for g in table.groups() if (not claim.groups or g in claim.groups)
                  and any(r.system == claim.a and r.group == g for r in table.rows)
                  and any(r.system == claim.b and r.group == g for r in table.rows)]
        a_rows = [table.find(claim.a, g) for g in groups]
        b_rows = [table.find(claim.b, g) for g in groups]
        per_group = {g: compare(metric, [a], [b]) for g, a, b in zip(groups, a_rows, b_rows)}
        if metric.set_statistic is not None and len(groups) != 1:
            pooled, a_cell, b_cell = None, None, None  # a set statistic is only read per group
        else:
            pooled, a_cell, b_cell = compare(metric, a_rows, b_rows), cell(metric, a_rows), cell(metric, b_rows)
        results.append(ClaimResult(claim, metric, pooled, a_cell, b_cell, per_group, table.key))
    return results


def _fmt(interval: Interval, metric: Metric) -> str:
    scaled = Interval(interval.estimate * metric.scale, interval.low * metric.scale, interval.high * metric.scale,
                      interval.n)
    return scaled.format(metric.digits)


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.0e}"


def render_table(table: Table) -> str:
    """The table's markdown: mean [95 % interval] per metric ("—" where a system has no such value, e.g. no
    mask), seconds per scene, whether the row was cached."""
    arrows = {"higher": "↑", "lower": "↓"}
    header = ["group", "system", *(f"{m.label} {arrows[m.better]}" for m in table.metrics), "n", "s/scene", "row"]
    lines = [f"# {table.title}", "", table.description, "",
             f"Wall time of this table: {table.wall_seconds:.1f} s on this machine "
             f"(rows computed now: {sum(not r.cached for r in table.rows)}, reused from the cache: "
             f"{sum(r.cached for r in table.rows)}; summed row time {sum(r.seconds for r in table.rows):.1f} s). "
             f"Command: `{table.command}`.", "",
             "Every cell is the mean over scenes with its 95 % percentile bootstrap interval (10,000 resamples; "
             "set statistics such as KID: 1,000).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        cells = [_fmt(cell(m, [row]), m) if m.name in row.values or m.set_statistic else "—" for m in table.metrics]
        lines.append(f"| {row.group} | {row.system} | " + " | ".join(cells) +
                     f" | {row.scenes} | {row.seconds / max(1, row.scenes):.2f} | {'cached' if row.cached else 'new'} |")
    if table.figure:
        lines += ["", f"![{table.title}]({Path(table.figure).name})"]
    for path, caption in table.extra_figures:
        lines += ["", f"![{Path(path).stem}]({Path(path).name})", "", f"*{caption}*"]
    if table.notes:
        lines += ["", *table.notes]
    results = evaluate_claims(table)
    if results:
        lines += ["", "## Claims", "", render_claims(results, link=False)]
    return "\n".join(lines) + "\n"


def render_claims(results: list[ClaimResult], link: bool = True, docs_prefix: str = "") -> str:
    """One markdown row per claim: statement, A and B, A − B with its interval, test, p, verdict, per group."""
    lines = ["| paper | claim (the paper's statement) | metric | A | B | A − B [95 %] | test | p | verdict | "
             "per group | table |", "|" + "---|" * 11]
    for result in results:
        claim, metric = result.claim, result.metric
        groups = "; ".join(f"{g}: {v.verdict} (p={_p(v.p_value)})" for g, v in result.per_group.items())
        table = f"[{result.table}]({docs_prefix}{result.table}.md)" if link else result.table
        statement = claim.statement + (f" ({claim.note})" if claim.note else "")
        if result.pooled is None:
            lines.append(f"| {claim.paper} | {statement} | {metric.label} | {claim.a} | {claim.b} | — | — | — | "
                         f"see per group | {groups} | {table} |")
            continue
        difference = result.pooled.test.difference
        a_name = f"{claim.a} ({claim.a_group})" if claim.a_group else claim.a
        b_name = f"{claim.b} ({claim.b_group})" if claim.b_group else claim.b
        lines.append(f"| {claim.paper} | {statement} | {metric.label} | {a_name}: {_fmt(result.a, metric)} | "
                     f"{b_name}: {_fmt(result.b, metric)} | {_fmt(difference, metric)} | {result.pooled.test.test} "
                     f"(n={result.pooled.test.n}) | {_p(result.pooled.p_value)} | **{result.pooled.verdict}** | "
                     f"{groups} | {table} |")
    return "\n".join(lines)
