"""Measurement helpers shared by the benchmarks: device sync, peak memory of one call, timing table."""

from __future__ import annotations

import statistics
import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(run, device) -> int:
    """Peak bytes allocated during ``run()`` above the level before it."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()

    def walk(nodes):
        for node in nodes:
            yield node
            yield from walk(node.children)

    events = sorted((n for n in walk(prof.profiler.kineto_results.experimental_event_tree())
                     if n.tag == _EventType.Allocation and str(n.extra_fields.device) == "cpu"),
                    key=lambda n: n.start_time_ns)
    if not events:
        return 0
    first = events[0].extra_fields
    before = first.total_allocated - first.alloc_size
    return max(n.extra_fields.total_allocated for n in events) - before


def time_interleaved(jobs: dict, repeats: int, device) -> dict[str, list[float]]:
    """Seconds per call of each job over ``repeats`` rounds, order rotated every round (after a warm-up)."""
    for run in jobs.values():  # warm-up: lazy inits, kernel selection, allocator growth
        run()
    times = {name: [] for name in jobs}
    names = list(jobs)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            started = time.perf_counter()
            jobs[name]()
            sync(device)
            times[name].append(time.perf_counter() - started)
    return times


def summary_row(name: str, times: list[float], peak: int) -> str:
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (0, 0, 0)
    return f"{name:<26}{statistics.median(times):>10.4f}{q3 - q1:>10.4f}{min(times):>10.4f}{peak / 2**20:>10.3f}"


HEADER = f"{'runner':<26}{'median s':>10}{'IQR s':>10}{'min s':>10}{'peak MB':>10}"
