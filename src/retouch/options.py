"""Config fields that carry their own checks: declared once, beside the default and the help.

The CLI and the web app make their options and controls from the config dataclasses' fields
(``metadata["help"]``). :func:`option` declares such a field together with the values it accepts,

    num_steps: int = option(50, "DDIM steps of the full schedule", at_least=1)

and :func:`check_options` refuses a config whose fields hold anything else, with the one-line messages of
:func:`retouch.errors.check_range` and :func:`~retouch.errors.check_choice`, naming the field as its
option (``num_steps`` → ``--num-steps``). A config's ``validate`` calls it and keeps only the checks that
involve more than one field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING
from typing import Any, Sequence

from retouch.errors import check_choice, check_range


@dataclasses.dataclass(frozen=True)
class Accepts:
    """The values one field accepts: an interval (either bound may be open or absent) or a list of choices."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple | None = None
    why: str = ""

    def check(self, flag: str, value: Any) -> None:
        if value is None:  # a field whose None means "not given"
            return
        if self.choices is not None:
            check_choice(flag, value, self.choices)
        else:
            check_range(flag, value, self.low, self.high, open_low=self.open_low, open_high=self.open_high,
                        why=self.why)


def option(default: Any = MISSING, help: str = "", *, at_least: float | None = None, above: float | None = None,
           at_most: float | None = None, below: float | None = None, choices: Sequence | None = None,
           why: str = "", **field_args) -> Any:
    """A dataclass field with its ``help`` and, optionally, the values it accepts.

    ``at_least``/``at_most`` are closed bounds, ``above``/``below`` open ones; ``choices`` lists the
    accepted values; ``why`` is said in the error after the bound. Other keywords (``default_factory``)
    go to :func:`dataclasses.field`.
    """
    if at_least is not None and above is not None or at_most is not None and below is not None:
        raise ValueError("give one lower bound (at_least or above) and one upper bound (at_most or below)")
    metadata = {"help": help} if help else {}
    if choices is not None or any(bound is not None for bound in (at_least, above, at_most, below)):
        metadata["accepts"] = Accepts(
            low=above if above is not None else at_least, high=below if below is not None else at_most,
            open_low=above is not None, open_high=below is not None,
            choices=None if choices is None else tuple(choices), why=why)
    return dataclasses.field(default=default, metadata=metadata, **field_args)


def flag(name: str) -> str:
    """The option a field is on the command line: ``num_steps`` → ``--num-steps``."""
    return "--" + name.replace("_", "-")


def check_options(config) -> None:
    """Refuse the first field of ``config`` (in declaration order) whose value its :func:`option` does not accept."""
    for field in dataclasses.fields(config):
        accepts = field.metadata.get("accepts")
        if accepts is not None:
            accepts.check(flag(field.name), getattr(config, field.name))
