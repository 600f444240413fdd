"""Which process of an ``accelerate launch`` this is, for the code that writes files.

Under a launch of several processes every process runs the same command; the data-parallel parts
(the training loop, a batch's items) split the work, and the files that describe the whole run (a
run's config, its final model, its report, a batch's log) are written by the first process alone —
two processes writing the same file at once can leave it corrupt. A benchmark measures one process:
the first runs it and the others exit at once. A plain run (no ``WORLD_SIZE`` above 1) is one process
and never touches accelerate: its state is process-wide, and a plain run must not fix it for later
users in the same process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from retouch.errors import RetouchError


@dataclass(frozen=True)
class _OneProcess:
    process_index: int = 0
    num_processes: int = 1
    is_main_process: bool = True


def process_state():
    """accelerate's ``PartialState`` when launched as several processes, else a one-process stand-in."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched <= 1:
        return _OneProcess()
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # As Accelerator() does: without cpu=True, processes on a machine without GPUs do not join.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    check_launch(state.num_processes)
    return state


def check_launch(num_processes: int) -> None:
    """Refuse a launch of several processes that accelerate runs as one each: every process would do
    the whole job alone, all writing the same files (on a CPU-only machine accelerate joins processes
    only when told to use the CPU)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and num_processes == 1:
        raise RetouchError(f"launched as {launched} processes (WORLD_SIZE) but accelerate runs "
                           f"{num_processes}; on CPUs set ACCELERATE_USE_CPU=1 (or Accelerator(cpu=True))")


def is_main_process() -> bool:
    """Whether this process writes the run's files: the first process of a launch, or a plain run."""
    return process_state().is_main_process


def wait_for_everyone() -> None:
    """Block until every process of the launch is here, e.g. before reading what the first one wrote."""
    state = process_state()
    if state.num_processes > 1:
        state.wait_for_everyone()


def exit_unless_main_process(reason: str) -> None:
    """End every process of a launch but the first, at once and with status 0, for a job that must run once.

    A benchmark measures one process: under ``accelerate launch`` each rank would repeat the whole
    measurement and write the same files at once. A plain run returns without touching accelerate.
    """
    state = process_state()
    if not state.is_main_process:
        print(f"rank {state.process_index} of {state.num_processes} skips ({reason})", flush=True)
        raise SystemExit(0)
