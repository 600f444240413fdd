"""Options and helpers the command modules share. Command bodies parse their options here and call one
library function each; nothing here computes what the library or the web app would need again."""

from __future__ import annotations

from pathlib import Path

import click

from retouch.errors import RetouchError

#: ``--model`` of every command that edits: the shipped mini models (``tiny-*`` are random test models).
DEFAULT_MODEL = "mini"
PRECISIONS = click.Choice(["no", "fp16", "bf16"])


def device_option(command):
    return click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, … or auto")(command)


def loading_options(command):
    """``--allow-pickle`` and ``--offline/--online``, for commands that load a model by name."""
    command = click.option("--offline/--online", default=None,
                           help="forbid/allow hub downloads (default: HF_HUB_OFFLINE)")(command)
    return click.option("--allow-pickle", is_flag=True,
                        help="allow loading pickle checkpoints (can run arbitrary code)")(command)


def seed_option(help: str | None = None):
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def mixed_precision_option(command):
    return click.option("--mixed-precision", type=PRECISIONS, default="no", show_default=True)(command)


def comma_list(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` → ("a", "b", "c")."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def named_folders(pairs, flag: str) -> dict[str, str]:
    """Repeated ``NAME=FOLDER`` (or ``NAME=VALUE``) options → {name: folder}."""
    named = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise RetouchError(f"{flag} takes NAME=FOLDER; got {pair!r}")
        named[name] = folder
    return named


def say_trained(report: dict, output_dir: str, *, data: str = "", rate_note: str = "", what: str = "model") -> None:
    """The training commands' last line, once: under ``accelerate launch`` every process returns here."""
    from retouch.distributed import is_main_process

    if is_main_process():
        click.echo(f"trained {report['steps']} steps{data} in {report['seconds'] / 60:.1f} min "
                   f"({report['samples_per_second']:.1f} samples/s{rate_note}); {what} in {Path(output_dir) / 'final'}")
