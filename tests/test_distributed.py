"""Data-parallel training: the loop under ``accelerate launch`` with two CPU processes (gloo).

The same job (``loop_job.py``) runs once as two processes, each taking one shard of the global batch,
and once as one process taking both shards (the doubled batch). The loss is a per-process mean and DDP
averages the gradients, so with equal shards both compute the gradient of the global mean: the runs
agree mathematically. They agree to float tolerance, not bitwise: the all-reduce sums two half-batch
means where the single process reduces over the whole batch, so the rounding differs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from retouch.errors import RetouchError
from retouch.train.loop import LoopConfig, train

JOB = Path(__file__).with_name("loop_job.py")
ARGS = ("--max-steps", "30", "--checkpoint-every", "20", "--log-every", "5", "--shards", "2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
              str(JOB), "--output-dir", str(root / "two"), *ARGS]
    single = [sys.executable, str(JOB), "--output-dir", str(root / "one"), *ARGS]
    # An empty HF_HOME: a user's `accelerate config` default file must not change what is launched.
    env = _env(ACCELERATE_USE_CPU="1", HF_HOME=str(root / "hf-home"))
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for command in (launch, single)]
    for process in processes:
        log, _ = process.communicate(timeout=300)
        assert process.returncode == 0, log
    return {"two": [_outcome(root / "two", 0), _outcome(root / "two", 1)], "one": [_outcome(root / "one", 0)],
            "root": root}


def _outcome(folder: Path, rank: int) -> dict:
    result = json.loads((folder / f"result-rank{rank}.json").read_text())
    result["weights"] = torch.load(folder / f"weights-rank{rank}.pt")
    return result


def test_two_processes_run_as_one_job(runs):
    first, second = runs["two"]
    assert first["world"] == second["world"] == 2 and runs["one"][0]["world"] == 1
    assert first["pid"] != second["pid"]
    checkpoint = runs["root"] / "two" / "checkpoints" / "step-30"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()


def test_ranks_see_different_data_that_together_is_the_doubled_batch(runs):
    first, second = runs["two"]
    (single,) = runs["one"]
    steps = list(range(30))
    assert [s for s, _ in first["seen"]] == [s for s, _ in second["seen"]] == [s for s, _ in single["seen"]] == steps
    for (_, a), (_, b), (_, both) in zip(first["seen"], second["seen"], single["seen"]):
        assert a != b
        assert both == pytest.approx(a + b, rel=1e-5, abs=1e-4)


def test_gradients_are_synchronised(runs):
    first, second = runs["two"]
    assert first["losses"] == second["losses"]  # the logged loss is gathered over both ranks
    for name, tensor in first["weights"].items():
        assert torch.equal(tensor, second["weights"][name]), name  # all-reduce gives both ranks the same bits


def test_two_processes_equal_one_process_with_the_doubled_batch(runs):
    two, (one,) = runs["two"][0], runs["one"]
    assert [s for s, _ in two["losses"]] == [s for s, _ in one["losses"]] == [5, 10, 15, 20, 25, 30]
    for (_, a), (_, b) in zip(two["losses"], one["losses"]):
        assert a == pytest.approx(b, rel=1e-5)  # measured: 5e-7
    for name, tensor in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], tensor, rtol=1e-5, atol=1e-6)  # measured: 6e-8
    # The LR schedule counts global steps: 30 of them, whatever the number of processes.
    schedules = [torch.load(runs["root"] / name / "checkpoints" / "step-30" / "scheduler.bin", weights_only=False)
                 for name in ("two", "one")]
    assert [s["last_epoch"] for s in schedules] == [30, 30]


def test_a_launch_accelerate_does_not_join_is_refused(tmp_path, monkeypatch):
    """WORLD_SIZE=2 with an accelerator of one process: two independent runs would share one folder."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    model = torch.nn.Linear(2, 1)
    with pytest.raises(RetouchError, match="ACCELERATE_USE_CPU"):
        train(model, lambda m, b, g: (m(b).sum(), {}), lambda step, rank, world: torch.ones(1, 2),
              LoopConfig(output_dir=str(tmp_path / "run"), max_steps=2), batch_size=1, progress=False)
    assert not (tmp_path / "run").exists()
