"""Batch editing (``retouch edit FOLDER|MANIFEST -o OUTDIR``): resume, per-item failures, one model load,
batch-level refusals, and the same bits from two processes as from one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import run_cli

SDEDIT = ("--method", "sdedit", "--prompt", "a cat", "--num-steps", "2", "--strength", "0.5")


@pytest.fixture
def loads(monkeypatch, tiny_backbones):
    """Every model load, answered with the session's tiny-sd (built once), so each test costs only its edits."""
    import retouch.methods

    calls = []

    def load(method, model=None, **options):
        calls.append((method.name, model))
        return tiny_backbones["tiny-sd"]

    monkeypatch.setattr(retouch.methods, "load_method_model", load)
    return calls


def _photos(folder: Path, names=("a", "b", "c")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


@pytest.fixture
def photos(tmp_path):
    folder = _photos(tmp_path / "photos")
    (folder / "notes.txt").write_text("not an image, not an item")
    return folder


def _log(outdir: Path) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in (outdir / "batch_log.jsonl").read_text().splitlines()]
    return lines[:-1], lines[-1]


def _statuses(outdir: Path) -> list[str]:
    return [record["status"] for record in _log(outdir)[0]]


def test_folder_batch_edits_each_image_like_a_single_edit_with_one_model_load(photos, tmp_path, capsys, loads):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["edit", photos, "-o", out, *SDEDIT], capsys)
    assert code == 0, err
    records, summary = _log(out)
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [Path(r["image"]).name for r in records] == ["a.png", "b.png", "c.png"]
    assert _statuses(out) == ["done"] * 3
    assert {k: summary[k] for k in ("total", "done", "skipped", "failed", "processes")} == \
        {"total": 3, "done": 3, "skipped": 0, "failed": 0, "processes": 1}
    assert stdout.splitlines()[-1].startswith("batch: 3 done, 0 skipped, 0 failed of 3 in ")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "batch_log.jsonl", "c.png"]
    assert len(loads) == 1  # one (method, model): loaded once, not once per image

    # Each result is what `retouch edit IMAGE` gives with the same options and seed.
    code, _, err = run_cli(["edit", photos / "b.png", "-o", tmp_path / "single.png", *SDEDIT], capsys)
    assert code == 0, err
    assert (tmp_path / "single.png").read_bytes() == (out / "b.png").read_bytes()
    assert np.asarray(Image.open(out / "b.png")).shape == (24, 20, 3)


def test_rerun_recomputes_exactly_the_missing_outputs(photos, tmp_path, capsys, loads):
    out = tmp_path / "out"
    assert run_cli(["edit", photos, "-o", out, *SDEDIT], capsys)[0] == 0
    first = {name: (out / name).read_bytes() for name in ("a.png", "b.png", "c.png")}
    for name in ("a.png", "c.png"):
        os.utime(out / name, ns=(1_000_000_000, 1_000_000_000))  # a mark a rewrite would clear
    (out / "b.png").unlink()

    code, stdout, err = run_cli(["edit", photos, "-o", out, *SDEDIT], capsys)
    assert code == 0, err
    assert _statuses(out) == ["skipped", "done", "skipped"]
    assert [(out / name).stat().st_mtime_ns for name in ("a.png", "c.png")] == [1_000_000_000] * 2
    assert (out / "b.png").read_bytes() == first["b.png"]
    assert "1 done, 2 skipped, 0 failed" in stdout

    # A finished batch: no model load, no edit, only the summary line.
    loads.clear()
    code, stdout, err = run_cli(["edit", photos, "-o", out, *SDEDIT], capsys)
    assert code == 0 and err == "" and loads == []
    assert stdout.count("\n") == 1 and stdout.startswith("batch: 0 done, 3 skipped, 0 failed of 3")
    assert _statuses(out) == ["skipped"] * 3


def test_a_corrupt_image_fails_alone_and_the_exit_status_says_so(photos, tmp_path, capsys, loads):
    (photos / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["edit", photos, "-o", out, *SDEDIT], capsys)
    assert code == 1
    assert _statuses(out) == ["done", "failed", "done"]
    records, summary = _log(out)
    assert "b.png" in records[1]["error"] and "corrupt" in records[1]["error"]
    assert (summary["done"], summary["failed"]) == (2, 1)
    assert "2 done, 0 skipped, 1 failed of 3" in stdout
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "failed [2/3]" in lines[0] and "b.png" in lines[0]
    assert lines[1] == f"retouch: error: 1 of 3 items failed; see {out / 'batch_log.jsonl'}"
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "batch_log.jsonl", "c.png"]  # no partial file


def test_manifest_rows_carry_their_own_parameters_and_a_bad_row_fails_alone(tmp_path, capsys, loads):
    inputs = _photos(tmp_path / "in")
    manifest = inputs / "edits.csv"
    manifest.write_text(
        "image,output,strength,seed,num-steps,prompt\n"
        "a.png,,,,,\n"                          # the command's options and seed
        "a.png,a_seed7.png,,7,,\n"              # its own seed
        "b.png,sub/b.jpg,0.75,,,a dog\n"        # its own strength, prompt, folder and format
        "c.png,c.png,,,4,\n"                    # 'num-steps' is the CLI spelling; keys are field names
        "c.png,c2.png,2.5,,,\n"                 # out of range
        "missing.png,m.png,,,,\n"
    )
    out = tmp_path / "out"
    code, _, err = run_cli(["edit", manifest, "-o", out, *SDEDIT], capsys)
    assert code == 1
    records, summary = _log(out)
    assert [r["status"] for r in records] == ["done", "done", "done", "failed", "failed", "failed"]
    assert "unknown key 'num-steps' (did you mean 'num_steps'?)" in records[3]["error"]
    assert "--strength" in records[4]["error"]
    assert "missing.png" in records[5]["error"] and "no such file" in records[5]["error"]
    assert [r["seed"] for r in records[:3]] == [0, 7, 0]
    assert (summary["done"], summary["failed"]) == (3, 3)
    assert len([line for line in err.splitlines() if line.startswith("retouch: failed")]) == 3
    assert Image.open(out / "sub" / "b.jpg").format == "JPEG"
    assert (out / "a.png").read_bytes() != (out / "a_seed7.png").read_bytes()
    assert not (out / "c.png").exists() and not (out / "c2.png").exists()

    # The rows' parameters are the ones used: row 3 equals the single edit with the same options.
    code, _, err = run_cli(["edit", inputs / "b.png", "-o", tmp_path / "b.jpg", "--method", "sdedit",
                            "--prompt", "a dog", "--num-steps", "2", "--strength", "0.75"], capsys)
    assert code == 0, err
    assert (tmp_path / "b.jpg").read_bytes() == (out / "sub" / "b.jpg").read_bytes()


def test_jsonl_rows_choose_their_method_share_one_model_and_fail_alone_on_bad_lines(tmp_path, capsys, loads):
    inputs = _photos(tmp_path / "in", names=("a", "b"))
    rows = [
        {"image": "a.png", "method": "sdedit", "prompt": "a cat", "num_steps": 2, "seed": 3},
        "{not json",
        {"image": "b.png", "method": "ddim", "edit": "cat->dog", "source_text": "a photo of a cat", "num_steps": 2},
        {"image": "b.png", "output": "b2.png", "method": "sdedit", "num_steps": "two"},
        {"image": "b.png", "output": "../escape.png", "method": "sdedit"},
    ]
    manifest = inputs / "edits.jsonl"
    manifest.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n\n" for row in rows))
    out = tmp_path / "out"
    code, _, err = run_cli(["edit", manifest, "-o", out], capsys)  # no --method: each row names its own
    assert code == 1
    records, _ = _log(out)
    assert [r["status"] for r in records] == ["done", "failed", "done", "failed", "failed"]
    assert [r["method"] for r in records] == ["sdedit", None, "ddim", "sdedit", "sdedit"]
    assert "line 3 is not JSON" in records[1]["error"]  # blank lines are not rows
    assert "'num_steps' must be an integer" in records[3]["error"]
    assert "inside the output folder" in records[4]["error"]
    assert len(loads) == 1  # sdedit and ddim run on the same tiny-sd backbone
    assert not (tmp_path / "escape.png").exists()


def test_a_rows_method_files_are_relative_to_the_manifest_and_never_overwritten(tmp_path, monkeypatch, capsys):
    from retouch.batch import BatchSettings, plan_manifest

    inputs = _photos(tmp_path / "in", names=("room", "sofa", "sofa_map"))
    manifest = inputs / "edits.jsonl"
    manifest.write_text(json.dumps({"image": "room.png", "method": "pixels", "exemplar": ["sofa.png"],
                                    "map": "sofa_map.png"}) + "\n")
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    (item,) = plan_manifest(Path("in/edits.jsonl"), Path("out"), BatchSettings())
    assert item.error is None
    assert (item.config.exemplar, item.config.map) == (("in/sofa.png",), ("in/sofa_map.png",))
    # An output onto an exemplar refuses the whole batch, before any work.
    manifest.write_text(json.dumps({"image": "room.png", "output": "sofa.png", "method": "pixels",
                                    "exemplar": "sofa.png", "map": "sofa_map.png"}) + "\n")
    before = (inputs / "sofa.png").read_bytes()
    _refused(tmp_path, capsys, [manifest, "-o", inputs], "refusing to overwrite input")
    assert (inputs / "sofa.png").read_bytes() == before


def _refused(tmp_path, capsys, args, expected):
    code, stdout, err = run_cli(["edit", *args], capsys)
    assert code == 1 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("retouch: error:") and expected in err, err


def test_batch_level_problems_are_one_line_before_any_work(photos, tmp_path, capsys, loads):
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    manifest = tmp_path / "m.csv"
    _refused(tmp_path, capsys, [tmp_path / "none.csv", "-o", tmp_path / "o1", *SDEDIT], "cannot read manifest")
    manifest.write_bytes(b"image\n\xff\xfe.png\n")
    _refused(tmp_path, capsys, [manifest, "-o", tmp_path / "o2", *SDEDIT], "not UTF-8")
    manifest.write_text("path,prompt\na.png,x\n")
    _refused(tmp_path, capsys, [manifest, "-o", tmp_path / "o3", *SDEDIT], "one of them 'image'")
    _refused(tmp_path, capsys, [photos, "-o", photos, *SDEDIT], "is the input folder")
    _refused(tmp_path, capsys, [photos, "-o", photos / "a.png", *SDEDIT], "is a file")
    _refused(tmp_path, capsys, [photos, "-o", tmp_path / "o4.png", *SDEDIT], "looks like an image file")
    _refused(tmp_path, capsys, [photos, "-o", tmp_path / "o5", "--method", "sdedit", "--eta", "3"], "--eta")
    _refused(tmp_path, capsys, [photos, "-o", tmp_path / "o6", "--method", "sdedit", "--lambda-kl", "3"],
             "--lambda-kl not used by method 'sdedit'")
    _refused(tmp_path, capsys, [photos, "-o", tmp_path / "o7", *SDEDIT, "--compare", tmp_path / "c.png"],
             "--compare")
    (tmp_path / "empty").mkdir()
    _refused(tmp_path, capsys, [tmp_path / "empty", "-o", tmp_path / "o8", *SDEDIT], "no images")
    # Outputs derived from a manifest's rows: into the inputs' own folder, or twice to one file.
    (photos / "m.csv").write_text("image\na.png\n")
    _refused(tmp_path, capsys, [photos / "m.csv", "-o", photos, *SDEDIT], "refusing to overwrite input")
    (photos / "m.csv").write_text("image,seed\na.png,1\na.png,2\n")
    _refused(tmp_path, capsys, [photos / "m.csv", "-o", tmp_path / "o9", *SDEDIT], "would both write")
    (photos / "m.csv").unlink()
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    _refused(tmp_path, capsys, [photos, "-o", blocker / "out", *SDEDIT], "not a writable folder")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _refused(tmp_path, capsys, [photos, "-o", locked / "out", *SDEDIT], "not a writable folder")
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before
    assert not any(tmp_path.glob("o*/*")) and loads == []


# ---------------------------------------------------------------------------------------------------
# Several processes: `accelerate launch` with two gloo CPU processes against a plain one-process run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_the_same_files_and_log_as_one(tmp_path):
    photos = _photos(tmp_path / "photos", names=("a", "b", "c", "d"))
    (photos / "c.png").write_bytes(b"")  # a failing item on rank 0 of 2, so failures are gathered too
    args = ["edit", str(photos), *SDEDIT]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
              "-m", "retouch.cli", *args, "-o", str(tmp_path / "two")]
    single = [sys.executable, "-m", "retouch.cli", *args, "-o", str(tmp_path / "one")]  # no accelerate at all
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1",
           "HF_HOME": str(tmp_path / "hf-home")}  # a user's `accelerate config` must not change the launch
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for command in (launch, single)]
    (two_out, two_err), (one_out, one_err) = (process.communicate(timeout=300) for process in processes)
    assert [process.returncode for process in processes] == [1, 1], (two_err, one_err)

    names = ["a.png", "b.png", "d.png"]
    assert sorted(p.name for p in (tmp_path / "two").glob("*.png")) == names
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name

    (two, two_summary), (one, one_summary) = _log(tmp_path / "two"), _log(tmp_path / "one")
    assert [r["rank"] for r in two] == [0, 1, 0, 1] and [r["rank"] for r in one] == [0] * 4
    comparable = ("index", "image", "method", "model", "seed", "status", "error")
    assert [{k: r[k] for k in comparable} for r in two] == [{k: r[k] for k in comparable} for r in one]
    assert [r["status"] for r in two] == ["done", "done", "failed", "done"]
    assert (two_summary["processes"], one_summary["processes"]) == (2, 1)
    # The summary and the final error line come once, from the first process.
    assert two_out.count("batch: 3 done, 0 skipped, 1 failed of 4") == 1
    assert two_err.count("retouch: error: 1 of 4 items failed") == 1


def test_typed_settings_convert_text_to_the_fields_types_and_refuse_unknown_names():
    from retouch.batch import typed_settings
    from retouch.errors import RetouchError
    from retouch.methods import get_method

    config_class = get_method("pix2pix-zero").config_class
    typed = typed_settings(config_class, {"xa_guidance": "0.2", "num_steps": "25", "caption_as_negative": "no"})
    assert typed == {"xa_guidance": 0.2, "num_steps": 25, "caption_as_negative": False}
    with pytest.raises(RetouchError, match="unknown setting.*xa_guidence"):
        typed_settings(config_class, {"xa_guidence": "0.2"})
    with pytest.raises(RetouchError, match="num_steps"):
        typed_settings(config_class, {"num_steps": "many"})


def test_a_models_method_defaults_fill_the_options_left_out_and_never_win_over_given_ones(tmp_path):
    """``method_defaults.json`` in a model folder: used for options not given, under the command's and a row's;
    a bad entry is one line; the shipped mini backbone carries pix2pix-zero's; benchmark fingerprints skip it."""
    from retouch.batch import _config
    from retouch.bench.harness import fingerprint
    from retouch.errors import RetouchError
    from retouch.methods import METHOD_DEFAULTS_FILE, get_method, model_method_defaults
    from retouch.terminal_prior import TERMINAL_PRIOR_FILE

    method = get_method("pix2pix-zero")
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"weights")
    before = fingerprint(model)
    (model / METHOD_DEFAULTS_FILE).write_text(json.dumps({"pix2pix-zero": {"xa_guidance": 0.7, "guidance_scale": 2.0}}))
    assert fingerprint(model) == before
    (model / TERMINAL_PRIOR_FILE).write_bytes(b"prior")  # only text-to-image sampling from noise reads it
    assert fingerprint(model) == before
    (model / "weights.bin").write_bytes(b"other weights")
    assert fingerprint(model) != before

    edit = {"edit": "red->blue"}
    config = _config(method, edit, {}, 3, base=None, model=str(model))
    assert (config.xa_guidance, config.guidance_scale, config.seed) == (0.7, 2.0, 3)
    config = _config(method, {**edit, "guidance_scale": 4.0}, {"xa_guidance": 0.2}, 3, base=None, model=str(model))
    assert (config.xa_guidance, config.guidance_scale) == (0.2, 4.0)
    paper = method.config_class()
    for other in (str(tmp_path / "no-such-folder"), "org/some-repo"):  # no local folder: the paper's values
        config = _config(method, edit, {}, 0, base=None, model=other)
        assert (config.xa_guidance, config.guidance_scale) == (paper.xa_guidance, paper.guidance_scale)
    assert model_method_defaults(get_method("sdedit"), str(model)) == {}  # no entry for that method

    shipped = model_method_defaults(method, "mini")
    assert shipped and set(shipped) <= set(method.option_names())
    assert model_method_defaults(method, None) == shipped  # the default --model is the shipped one

    (model / METHOD_DEFAULTS_FILE).write_text(json.dumps({"pix2pix-zero": {"xa_guidence": 0.7}}))
    with pytest.raises(RetouchError, match="no option xa_guidence"):
        _config(method, edit, {}, 0, base=None, model=str(model))
    (model / METHOD_DEFAULTS_FILE).write_text("{not json")
    with pytest.raises(RetouchError, match="cannot read the model's method defaults"):
        model_method_defaults(method, str(model))
