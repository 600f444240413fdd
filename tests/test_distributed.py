"""Data-parallel training: the loop under ``accelerate launch`` with two CPU processes (gloo).

The same job (``loop_job.py``) runs once as two processes, each taking one shard of the global batch,
and once as one process taking both shards (the doubled batch). The loss is a per-process mean and DDP
averages the gradients, so with equal shards both compute the gradient of the global mean: the runs
agree mathematically. They agree to float tolerance, not bitwise: the all-reduce sums two half-batch
means where the single process reduces over the whole batch, so the rounding differs.

A loss may call methods of the model other than ``forward`` (``encode``, ``decode``): under several
processes the loop makes the whole loss the forward DDP wraps, so the same equivalence holds, and the
checkpoints hold the model's own keys, so a run resumes from a checkpoint another world size wrote.

Real training commands (``retouch train portrait`` on tiny-sd, the autoencoder stages of ``retouch
train mini``) run under the same launch: every process trains, the first alone writes the run's files
(config, final model, report). A benchmark runs on the first process alone; the others say they skip
and exit 0.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retouch.distributed import exit_unless_main_process
from retouch.errors import RetouchError
from retouch.train.loop import LoopConfig, train

JOB = Path(__file__).with_name("loop_job.py")
BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
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


def _launch(*command: str) -> list[str]:
    """``accelerate launch`` of two CPU processes on this machine, whatever a user's accelerate config says."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()), *command]


def _run_together(commands: list[list[str]], env: dict) -> None:
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for command in commands]
    for process in processes:
        log, _ = process.communicate(timeout=300)
        assert process.returncode == 0, log


def _two_and_one(root: Path, *extra: str) -> dict:
    """The job as two processes (``two``) and as one with the doubled batch (``one``), side by side."""
    # An empty HF_HOME: a user's `accelerate config` default file must not change what is launched.
    env = _env(ACCELERATE_USE_CPU="1", HF_HOME=str(root / "hf-home"))
    _run_together([_launch(str(JOB), "--output-dir", str(root / "two"), *ARGS, *extra),
                   [sys.executable, str(JOB), "--output-dir", str(root / "one"), *ARGS, *extra]], env)
    return {"two": [_outcome(root / "two", 0), _outcome(root / "two", 1)], "one": [_outcome(root / "one", 0)],
            "root": root}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return _two_and_one(tmp_path_factory.mktemp("distributed"))


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


@pytest.fixture(scope="module")
def encode_runs(tmp_path_factory):
    """The job on a model its loss calls through ``encode`` and ``decode``, never ``forward``; then one
    process resumes the two processes' step-20 checkpoint."""
    root = tmp_path_factory.mktemp("distributed-encode")
    runs = _two_and_one(root, "--encode-loss")
    shutil.copytree(root / "two" / "checkpoints" / "step-20", root / "resumed" / "checkpoints" / "step-20")
    _run_together([[sys.executable, str(JOB), "--output-dir", str(root / "resumed"), *ARGS, "--encode-loss"]],
                  _env(HF_HOME=str(root / "hf-home")))
    runs["resumed"] = _outcome(root / "resumed", 0)
    return runs


def test_a_loss_through_other_methods_than_forward_synchronises_gradients(encode_runs):
    first, second = encode_runs["two"]
    assert first["world"] == second["world"] == 2
    assert first["losses"] == second["losses"]
    assert set(first["weights"]) == {"frozen.weight", "frozen.bias", "encoder.weight", "encoder.bias",
                                     "decoder.weight", "decoder.bias"}
    for name, tensor in first["weights"].items():
        assert torch.equal(tensor, second["weights"][name]), name


def test_a_loss_through_other_methods_equals_one_process_with_the_doubled_batch(encode_runs):
    two, (one,) = encode_runs["two"][0], encode_runs["one"]
    assert [s for s, _ in two["losses"]] == [s for s, _ in one["losses"]] == [5, 10, 15, 20, 25, 30]
    for (_, a), (_, b) in zip(two["losses"], one["losses"]):
        assert a == pytest.approx(b, rel=1e-5)
    for name, tensor in one["weights"].items():  # the final weights are the EMA's: it tracked the model
        torch.testing.assert_close(two["weights"][name], tensor, rtol=1e-5, atol=1e-6)
    assert torch.equal(two["weights"]["frozen.weight"], one["weights"]["frozen.weight"])  # frozen: never trained


def test_checkpoints_do_not_depend_on_the_number_of_processes(encode_runs):
    root = encode_runs["root"]
    written = {name: load_file(root / name / "checkpoints" / "step-30" / "model.safetensors")
               for name in ("two", "one")}
    assert list(written["two"]) == list(written["one"])  # the model's own keys, no wrapper's prefix
    assert set(written["two"]) == set(encode_runs["one"][0]["weights"])
    emas = [torch.load(root / name / "checkpoints" / "step-30" / "custom_checkpoint_0.pkl", weights_only=False)
            for name in ("two", "one")]
    assert len(emas[0]["shadow_params"]) == len(emas[1]["shadow_params"]) == 6
    for a, b in zip(*(e["shadow_params"] for e in emas)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # One process resumes what two wrote, and ends where the two processes did.
    resumed, two = encode_runs["resumed"], encode_runs["two"][0]
    assert resumed["world"] == 1 and resumed["seen"][0][0] == 20
    assert [s for s, _ in resumed["losses"]] == [s for s, _ in two["losses"]]
    for name, tensor in two["weights"].items():
        torch.testing.assert_close(resumed["weights"][name], tensor, rtol=1e-5, atol=1e-6)


def test_the_loss_module_has_the_models_parameters_state_dict_and_float32_outputs():
    """What DDP wraps under several processes: the model's parameters, state dict and (under mixed
    precision) float32 outputs, as accelerate gives a model it prepares itself."""
    from retouch.train.loop import _LossModule

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    seen = []

    def loss_fn(model, batch, generator):
        prediction = model(batch)
        seen.append(prediction.dtype)
        return prediction.float().square().mean(), {}

    module = _LossModule(model, loss_fn, float32_outputs=True)
    assert list(module.parameters()) == list(model.parameters())
    assert list(module.state_dict()) == list(model.state_dict())  # buffers too, no "model." prefix
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = module(torch.randn(5, 4), torch.Generator())
    assert seen == [torch.float32] and loss.requires_grad
    saved = {k: v.clone() for k, v in module.state_dict().items()}
    torch.nn.init.zeros_(model[0].weight)
    module.load_state_dict(saved)
    assert torch.equal(model[0].weight, saved["0.weight"])


def test_mini_autoencoder_stages_train_under_two_processes(tmp_path):
    """`retouch train mini`'s autoencoder stages call vae.encode / vae.decode in their losses (the
    decoder stage with the encoder frozen); under DDP they once failed at step 0."""
    from diffusers import AutoencoderKL

    work = tmp_path / "work"
    _run_together([_launch("-m", "retouch.cli", "train", "mini", "--stages", "vae,decoder", "--vae-steps", "2",
                           "--vae-batch", "2", "--decoder-steps", "2", "--work-dir", str(work),
                           "--export-dir", str(tmp_path / "export"))],
                  _env(ACCELERATE_USE_CPU="1", HF_HOME=str(tmp_path / "hf-home")))
    report = json.loads((work / "report.json").read_text())
    assert {name: stage["steps"] for name, stage in report["stages"].items()} == {"vae": 2, "decoder": 2}
    for stage in ("vae", "decoder"):
        final = AutoencoderKL.from_pretrained(work / stage / "final")
        written = load_file(work / stage / "checkpoints" / "step-2" / "model.safetensors")
        assert set(written) == set(final.state_dict())


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

    from retouch.networks.portrait import PortraitModel

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
    launch = _launch("-m", "retouch.cli", "train", "portrait", "--data", str(data), "--init", "tiny-sd",
                     "--image-encoder", "", "--steps", "3", "--batch", "2", "--output-dir", str(out))
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


def test_a_benchmark_under_two_processes_runs_once_on_the_first(tmp_path):
    """A benchmark measures one process: under a launch of two, rank 1 says it skips and exits 0 at once,
    rank 0 alone measures and writes the sheet."""
    from PIL import Image

    out, audit = tmp_path / "out", tmp_path / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(WRITE_AUDIT)
    log = tmp_path / "writes.log"
    launch = _launch(str(BENCHMARKS / "bench_world.py"), "--scenes", "5", "--sizes", "16",
                     "--grid", str(out / "world.png"))
    env = _env(ACCELERATE_USE_CPU="1", HF_HOME=str(tmp_path / "hf-home"), RETOUCH_WRITES_ROOT=str(out),
               RETOUCH_WRITES_LOG=str(log),
               PYTHONPATH=os.pathsep.join(filter(None, (str(audit), os.environ.get("PYTHONPATH")))))
    run = subprocess.run(launch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert run.returncode == 0, run.stdout

    assert "rank 1 of 2 skips (benchmarks measure one process)" in run.stdout
    assert "rank 0 of 2 skips" not in run.stdout
    assert run.stdout.count("mini world, 5 scenes per row") == 1, run.stdout
    assert run.stdout.count(f"wrote {out / 'world.png'}") == 1
    # save_image writes a temporary file beside the sheet and renames it: every write under out/ counts.
    writers = {line.split(" ", 2)[0] for line in log.read_text().splitlines()}
    assert len(writers) == 1  # one process wrote the sheet
    with Image.open(out / "world.png") as sheet:
        sheet.load()  # the whole PNG decodes: nobody truncated it
        assert sheet.size == (1042, 1172)  # 8×8 scenes at 64 px, upscaled 2×, plus a row of pairs


def test_exit_unless_main_process_is_a_no_op_in_a_plain_run(monkeypatch, capsys):
    import accelerate

    def refuse(*args, **kwargs):
        raise AssertionError("a plain run must not set accelerate's process-wide state")

    monkeypatch.setattr(accelerate, "PartialState", refuse)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    exit_unless_main_process("benchmarks measure one process")
    monkeypatch.setenv("WORLD_SIZE", "1")
    exit_unless_main_process("benchmarks measure one process")
    assert capsys.readouterr() == ("", "")
