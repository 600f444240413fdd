"""The one exception type users see.

Core functions assume valid inputs; the edges (image I/O, backbone loading, CLI, app) check them and
raise :class:`RetouchError` with a message that fits on one line and says what to do. The CLI prints
that line and exits non-zero; it never shows a traceback for a ``RetouchError``.
"""


class RetouchError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
