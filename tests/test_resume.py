"""Fault tolerance of the training loop: a run killed with SIGKILL, in training or inside a checkpoint
save, resumes in a new process to exactly the losses and weights of a run that was never interrupted.

Exact means bitwise: every run is the same code on CPU with one thread (deterministic kernels), the
batches and the loss's noise are pure functions of the step, and a checkpoint restores the weights,
AdamW moments, LR schedule and EMA bit for bit, so nothing may differ, not even by rounding.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from retouch.train.loop import latest_checkpoint

JOB = Path(__file__).with_name("loop_job.py")
ARGS = ("--max-steps", "30", "--checkpoint-every", "10", "--log-every", "4", "--loss-noise")


def _start(output: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_USE_CPU"):
        env.pop(name, None)
    return subprocess.Popen([sys.executable, str(JOB), "--output-dir", str(output), *ARGS, *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> None:
    log, _ = process.communicate(timeout=240)
    assert process.returncode == 0, log


def _kill_when_hanging(process: subprocess.Popen, output: Path) -> None:
    """SIGKILL the job once it has reached its hang point (it writes ``hanging`` there)."""
    deadline = time.monotonic() + 240
    while not (output / "hanging").exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the job never reached its hang point"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    (output / "hanging").unlink()


def _outcome(output: Path) -> dict:
    result = json.loads((output / "result-rank0.json").read_text())
    result["weights"] = torch.load(output / "weights-rank0.pt")
    return result


def _assert_same_run(resumed: dict, straight: dict) -> None:
    assert resumed["losses"] == straight["losses"]  # bitwise: float == float, after a JSON round trip
    assert resumed["weights"].keys() == straight["weights"].keys()
    for name, tensor in straight["weights"].items():
        assert torch.equal(resumed["weights"][name], tensor), name


def _listing(folder: Path) -> dict[str, list[str]]:
    return {p.name: sorted(f.name for f in p.iterdir()) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted run, both killed runs and their resumptions, as concurrent as they can be (they
    spend most of their time importing). Returns the root and each killed run's checkpoints at the kill."""
    root = tmp_path_factory.mktemp("resume")
    straight = _start(root / "straight")
    killed = {"in-training": _start(root / "in-training", "--hang-at-step", "15"),
              "in-save": _start(root / "in-save", "--hang-in-save", "20")}
    at_kill, resumed = {}, []
    for name, process in killed.items():
        _kill_when_hanging(process, root / name)
        at_kill[name] = {"checkpoints": _listing(root / name / "checkpoints"),
                         "latest": latest_checkpoint(root / name),
                         "finished": (root / name / "result-rank0.json").exists(),
                         "losses": json.loads((root / name / "checkpoints" / "step-10" / "losses.json").read_text())}
        resumed.append(_start(root / name))
    for process in (straight, *resumed):
        _finish(process)
    return root, at_kill


def test_uninterrupted_run_trains(runs):
    straight = _outcome(runs[0] / "straight")
    assert [step for step, _ in straight["losses"]] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert straight["losses"][-1][1] < 0.5 * straight["losses"][0][1]
    assert [step for step, _ in straight["seen"]] == list(range(30))


def test_run_killed_in_training_resumes_exactly(runs):
    root, at_kill = runs
    killed = at_kill["in-training"]
    assert list(killed["checkpoints"]) == ["step-10"]  # killed at step 15, before step 20's checkpoint
    assert not killed["finished"]
    # Step 12's loss was only in memory when killed: not in the checkpoint, so the resume recomputes it.
    assert [step for step, _ in killed["losses"]] == [4, 8]

    resumed = _outcome(root / "in-training")
    assert resumed["seen"][0][0] == 10  # it resumed from the checkpoint, not from scratch
    _assert_same_run(resumed, _outcome(root / "straight"))


def test_run_killed_inside_a_checkpoint_save_resumes_from_the_previous_one(runs):
    root, at_kill = runs
    killed = at_kill["in-save"]
    # Every file of step 20 had been written under its temporary name; only the rename was missing.
    assert list(killed["checkpoints"]) == ["step-10", "step-20.tmp"]
    assert "model.safetensors" in killed["checkpoints"]["step-20.tmp"]
    assert killed["latest"] == root / "in-save" / "checkpoints" / "step-10"

    resumed = _outcome(root / "in-save")
    assert resumed["seen"][0][0] == 10
    _assert_same_run(resumed, _outcome(root / "straight"))
    # The resumed run's own step-20 save replaced the stale .tmp; two checkpoints are kept.
    assert list(_listing(root / "in-save" / "checkpoints")) == ["step-20", "step-30"]


def test_latest_checkpoint_ignores_what_is_not_a_finished_checkpoint(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for name in ("step-10", "step-30.tmp", "step-7.bak", "step-", "notes", "step-x1"):
        (checkpoints / name).mkdir(parents=True)
    (checkpoints / "step-40").write_text("a file, not a checkpoint folder")
    assert latest_checkpoint(tmp_path) == checkpoints / "step-10"
    assert latest_checkpoint(tmp_path / "nowhere") is None
