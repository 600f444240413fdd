"""The benchmark scripts' command lines, declared as keyword defaults (as the library's configs declare theirs).

``script_parser(__doc__, scenes=100, out=Path("docs/x.md"))`` gives ``--scenes`` (an int, default 100) and
``--out`` (a Path): each keyword is an option named with dashes and typed like its default. A ``bool``
default of False is a flag; None takes text; a type instead of a default (``data=Path``) is a required
option of that type; ``(default, "help")`` adds a help line. Anything else (choices, repeats, positional
arguments) a script adds itself with ``parser.add_argument``.
"""

from __future__ import annotations

import argparse


def script_parser(doc: str, *, full_doc: bool = False, **options) -> argparse.ArgumentParser:
    """A parser with one option per keyword; its description is ``doc``'s first line (all of it with
    ``full_doc``)."""
    if full_doc:
        parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    else:
        parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, value in options.items():
        default, help = value if isinstance(value, tuple) else (value, None)
        flag = "--" + name.replace("_", "-")
        if isinstance(default, type):
            parser.add_argument(flag, type=default, required=True, help=help)
        elif isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=help)
        elif default is None:
            parser.add_argument(flag, default=None, help=help)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=help)
    return parser


def run_pilot(doc: str, run, plot, *, curves: str, **options) -> None:
    """A pilot's command line: ``--plot RUN.json … [-o PNG]`` draws the curves of earlier runs (default
    ``curves``), else ``run(args)`` trains with ``options`` plus ``--name``, ``--threads``, ``--output``
    (the run's JSON) and ``--save`` (a folder for the trained model)."""
    parser = script_parser(doc, full_doc=True, name="pilot", **options, threads=1, output=None, save=None)
    parser.add_argument("--plot", nargs="*")
    parser.add_argument("-o", dest="plot_output", default=curves)
    arguments = parser.parse_args()
    if arguments.plot:
        plot(arguments.plot, arguments.plot_output)
    else:
        run(arguments)
