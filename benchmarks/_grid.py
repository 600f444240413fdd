"""Labelled contact sheets for the benchmarks' figures: the harness's own helper (retouch.bench.figures)."""

from retouch.bench.figures import save_labelled_rows

__all__ = ["save_labelled_rows"]
