"""Helpers shared by test files (pytest puts this folder on sys.path: `from helpers import run_cli`)."""

from retouch.cli import main


def run_cli(args, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    try:
        main(list(map(str, args)))
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    out, err = capsys.readouterr()
    return code, out, err
