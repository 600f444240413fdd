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


def check_range(name: str, value: float | None, low: float, high: float) -> None:
    """Refuse ``value`` outside [low, high] (and NaN) with one line naming it; ``None`` means "not given"."""
    if value is None:
        return
    if not (low <= value <= high):  # also rejects NaN
        raise RetouchError(f"{name} must lie in [{low:g}, {high:g}]; got {value:g}")
