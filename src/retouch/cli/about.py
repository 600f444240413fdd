"""``retouch info`` and ``retouch recipes``: what this installation has and the per-family recipes."""

from __future__ import annotations

from pathlib import Path

import click

from retouch.errors import RetouchError


@click.command()
def info() -> None:
    """Versions, compute device, available models and methods, cache location."""
    from retouch.about import environment_report

    click.echo(environment_report())


@click.command()
@click.argument("doc", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/checkpoints.md"))
@click.option("--write", "mode", flag_value="write", help="regenerate the block between the markers in DOC")
@click.option("--check", "mode", flag_value="check", help="exit 1 when DOC's block is stale")
def recipes(doc: Path, mode: str | None) -> None:
    """The per-family method recipes (docs/checkpoints.md's generated block): print, --write or --check it."""
    from retouch import recipes as recipe_book

    if mode == "write":
        recipe_book.write_doc(doc)
    elif mode == "check":
        if not recipe_book.check_doc(doc):
            raise RetouchError(f"{doc} is stale: run retouch recipes --write {doc}")
    else:
        click.echo(recipe_book.render())
