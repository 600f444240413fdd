"""Data-parallel training: the loop under ``accelerate launch`` with two CPU processes (gloo).

The same job (``loop_job.py``) runs once as two processes, each taking one shard of the global batch,
and once as one process taking both shards (the doubled batch). The loss is a per-process mean and DDP
averages the gradients, so with equal shards both compute the gradient of the global mean: the runs
agree mathematically. They agree to float tolerance, not bitwise: the all-reduce sums two half-batch
means where the single process reduces over the whole batch, so the rounding differs.

A real training command (``retouch train portrait`` on tiny-sd) runs under the same launch: every
process trains, the first alone writes the run's files (config, final model, report).
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


# Loaded by every Python process of a launch (as sitecustomize): an audit hook (PEP 578) that logs each
# write-like call under $RETOUCH_WRITES_ROOT with the process's id, so the test sees who wrote what without
# patching retouch. Safetensors writes in Rust, unseen, but every folder it writes into also gets JSON.
WRITE_AUDIT = '''
import os
import sys

_ROOT, _LOG = os.environ["RETOUCH_WRITES_ROOT"], os.environ["RETOUCH_WRITES_LOG"]
_EVENTS = ("open", "os.rename", "os.remove", "shutil.rmtree", "os.mkdir")


def _log_writes(event, args):
    if event not in _EVENTS:
        return
    if event == "open" and not (args[1] and set(args[1]) & set("wax+")
                                or args[1] is None and args[2] & (os.O_WRONLY | os.O_RDWR)):
        return
    if not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.path.abspath(os.fsdecode(args[0]))
    if path.startswith(_ROOT + os.sep):
        log = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(log, f"{os.getpid()} {event} {path}\\n".encode())
        os.close(log)


sys.addaudithook(_log_writes)
'''


def test_a_training_command_under_two_processes_writes_the_run_files_once(tmp_path):
    """`retouch train portrait` under two processes: each writes its own checkpoint shard, the first alone
    writes run_config.json, the final model and report.json, and the model loads."""
    import numpy as np
    from PIL import Image

    from retouch.methods.portrait import PortraitModel

    data, out, audit = tmp_path / "pairs", tmp_path / "run", tmp_path / "audit"
    rng = np.random.default_rng(0)
    rows = []
    for k in range(4):
        for side in ("left", "right"):
            (data / side).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(data / side / f"{k}.png")
        rows.append({"index": k, "split": "train", "direction": "striped", "left": f"left/{k}.png",
                     "right": f"right/{k}.png"})
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(WRITE_AUDIT)
    log = tmp_path / "writes.log"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
              "-m", "retouch.cli", "train", "portrait", "--data", str(data), "--init", "tiny-sd",
              "--image-encoder", "", "--steps", "3", "--batch", "2", "--output-dir", str(out)]
    env = _env(ACCELERATE_USE_CPU="1", HF_HOME=str(tmp_path / "hf-home"), RETOUCH_WRITES_ROOT=str(out),
               RETOUCH_WRITES_LOG=str(log),
               PYTHONPATH=os.pathsep.join(filter(None, (str(audit), os.environ.get("PYTHONPATH")))))
    run = subprocess.run(launch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert run.returncode == 0, run.stdout

    writers: dict[str, set[str]] = {}  # path under the run → ids of the processes that wrote it
    for line in log.read_text().splitlines():
        pid, _event, path = line.split(" ", 2)
        writers.setdefault(Path(path).relative_to(out).as_posix(), set()).add(pid)
    in_checkpoints = set().union(*(w for p, w in writers.items() if p.split("/")[0] == "checkpoints"))
    run_files = {p: w for p, w in writers.items() if p.split("/")[0] != "checkpoints"}
    assert len(in_checkpoints) == 2  # the hook sees both processes write (each its own random states)
    assert {"run_config.json", "report.json", "final/portrait.json", "final/backbone/unet/config.json"} \
        <= set(run_files)
    assert len(set().union(*run_files.values())) == 1, run_files  # but only one write the run's files

    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 3 and report["pairs"] == 4 and [s for s, _ in report["losses"]] == [3]
    assert json.loads((out / "run_config.json").read_text())["batch"] == 2
    # The final model is the trained one, whole: the EMA weights of the last checkpoint.
    loaded = PortraitModel.load(out / "final")
    ema = torch.load(out / "checkpoints" / "step-3" / "custom_checkpoint_0.pkl", weights_only=False)
    weights = list(loaded.denoiser.parameters())
    assert len(weights) == len(ema["shadow_params"])
    for final, shadow in zip(weights, ema["shadow_params"]):
        torch.testing.assert_close(final, shadow)
