"""The one exception type users see.

Core functions assume valid inputs; the edges (image I/O, backbone loading, CLI, app) check them and
raise :class:`RetouchError` with a message that fits on one line and says what to do. The CLI prints
that line and exits non-zero; it never shows a traceback for a ``RetouchError``.
"""


class RetouchError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def check_choice(flag: str, value: str, choices) -> None:
    """Refuse ``value`` outside ``choices`` with one line naming the flag and the choices."""
    if value not in choices:
        raise RetouchError(f"{flag} must be one of {', '.join(choices)}; got {value!r}")


def check_range(name: str, value: float | None, low: float | None = None, high: float | None = None, *,
                open_low: bool = False, open_high: bool = False, why: str = "") -> None:
    """Refuse ``value`` outside the interval from ``low`` to ``high`` (and NaN) with one line naming it.

    A bound left None is no bound; ``open_low``/``open_high`` exclude the bound itself. ``why`` is said in
    brackets after the interval. ``None`` as the value means "not given" and passes.
    """
    if value is None:
        return
    above_low = low is None or (value > low if open_low else value >= low)
    below_high = high is None or (value < high if open_high else value <= high)
    if not (above_low and below_high):  # NaN fails both comparisons
        reason = f" ({why})" if why else ""
        raise RetouchError(f"{name} must {_interval(low, high, open_low, open_high)}{reason}; got {_number(value)}")


def _number(value) -> str:
    """An int as written, a float in its shortest form (``1000000``, ``0.5``, ``nan``)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _interval(low, high, open_low: bool, open_high: bool) -> str:
    """How a check's message says its interval: "lie in (0, 1]", "be at least 1", "be positive", …."""
    if low is not None and high is not None:
        return f"lie in {'(' if open_low else '['}{_number(low)}, {_number(high)}{')' if open_high else ']'}"
    if low is not None:
        if open_low:
            return "be positive" if low == 0 else f"be greater than {_number(low)}"
        return f"be at least {_number(low)}"
    return f"be {'less than' if open_high else 'at most'} {_number(high)}"
