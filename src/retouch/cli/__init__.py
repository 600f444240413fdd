"""The ``retouch`` command line: one module per command group, each command a thin layer over one library
function.

Validation lives in the library and ``imageio``: every problem with the user's input becomes one line on
stderr (``retouch: error: ...``) and exit status 1; outputs are checked before any work starts and
written atomically, so a failed run leaves no partial file and never touches an input.
"""

from __future__ import annotations

import sys

import click

from retouch.cli.bench import bench
from retouch.cli.datasets import data, world
from retouch.cli.editing import demo, directions, edit, effects
from retouch.cli.evaluation import evaluate
from retouch.cli.about import info, recipes
from retouch.cli.serving import serve
from retouch.cli.training import train
from retouch.errors import RetouchError

EXIT_ERROR = 1


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the click group and turn RetouchError into one line + non-zero exit."""
    try:
        cli.main(args=argv, prog_name="retouch", standalone_mode=False)
    except RetouchError as err:
        click.echo(f"retouch: error: {err}", err=True)
        sys.exit(EXIT_ERROR)
    except click.exceptions.Abort:
        click.echo("retouch: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="retouch")
def cli() -> None:
    """Diffusion-based image editing with fine-grained control.

    Methods: pix2pix-zero, pix2pix-zeroCon, PIXELS, the multi-task compositing model and
    feature-preserving portrait editing, on real Stable Diffusion checkpoints or retouch's own
    small offline models. Run `retouch COMMAND --help` for each command's options.
    """
    from retouch._quiet import quiet_third_party

    quiet_third_party()


for _command in (bench, data, demo, directions, edit, effects, evaluate, info, recipes, serve, train, world):
    cli.add_command(_command)

__all__ = ["EXIT_ERROR", "cli", "edit", "main", "train"]
