"""``retouch bench``: the harness that regenerates the papers' tables and checks their claims."""

from __future__ import annotations

from pathlib import Path

import click

from retouch.cli.common import comma_list, seed_option


@click.group("bench")
def bench() -> None:
    """Regenerate the papers' tables on the shipped models, with intervals and verdicts."""


@bench.command("paper")
@click.option("--tables", default=None,
              help="comma-separated tables (default: all covered ones: pix2pix-zero,distill,pixels,portrait,"
                   "decoder-splices,multitask)")
@click.option("--quick", is_flag=True,
              help="every table tiny (4 scenes, 4 steps), written under out/paper-quick/: a smoke test")
@click.option("--scenes", type=click.IntRange(min=2), default=None,
              help="held-out scenes per cell (default 100; --quick: 4)")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="sampler steps of every system (default 50; --quick: 4)")
@click.option("--docs", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where paper_claims.md and paper_tables/ go (default docs/; --quick: out/paper-quick/docs)")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="row cache (default out/paper-tables; --quick: out/paper-quick/cache)")
@click.option("--models", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="the mini models' folder (default: the shipped one)")
@click.option("--trained", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where trained, unshipped models and data are found (default out/; `make portrait-variants`, "
                   "`make distill-model`, compositing/ and mt-tables/ of `make multitask-models`)")
@click.option("--fresh", is_flag=True, help="recompute every row instead of reusing the cache")
@click.option("--batch", type=click.IntRange(min=1), default=25, show_default=True, help="scenes edited at once")
@seed_option("world seed and seed of every system")
def bench_paper(tables, quick, scenes, steps, docs, cache, models, trained, fresh, batch, seed) -> None:
    """Every covered paper table (cached rows reused), then docs/paper_claims.md with a verdict per claim."""
    from retouch.bench.paper import run_paper_tables

    summary = run_paper_tables(tables=list(comma_list(tables)) if tables else None, quick=quick, scenes=scenes,
                               steps=steps, docs=docs, cache=cache, models=models, trained=trained, fresh=fresh, seed=seed,
                               batch=batch, log=lambda text: click.echo(text, err=True))
    click.echo(f"wrote {', '.join(summary['written'])}")
    click.echo(f"{summary['rows_computed']} rows computed, {summary['rows_reused']} reused; "
               f"total {summary['total_seconds']} s")
