"""Progress bars for the command line, fed by the library's callbacks (the app reports its own way)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def step_bar(total: int | None, label: str) -> Iterator[Callable]:
    """A bar over sampling steps, fed by the methods' per-step ``callback(i, t, latents)``."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit="step", leave=False, disable=None)
    try:
        yield lambda *_: bar.update(1)
    finally:
        bar.close()


@contextmanager
def count_bar(label: str, unit: str, *, delay: float = 0.0, unit_scale: bool = False
              ) -> Iterator[Callable[[int, int], None]]:
    """A bar fed by ``progress(done, total)``, opened on the first report: a run refused before any work
    prints only its error line. With ``delay`` it shows only once the work has taken that many seconds,
    so quick runs print nothing; ``unit_scale`` writes large counts as 1.2M."""
    from tqdm.auto import tqdm

    bars = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc=label, unit=unit, unit_scale=unit_scale, delay=delay,
                             file=sys.stderr))
        bars[0].update(done - bars[0].n)

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()
