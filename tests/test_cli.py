"""The command line as a user meets it: one-line errors, non-zero exits, no partial files."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import run_cli




@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(path)
    return path


def _corrupt(tmp_path):
    path = tmp_path / "corrupt.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return path


def _truncated(tmp_path):
    path = tmp_path / "truncated.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _empty(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    return path


def _text(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image")
    return path


def _huge(tmp_path):
    import struct
    import zlib

    path = tmp_path / "huge.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = struct.pack(">II", 100_000, 100_000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path


BAD_INPUTS = {
    "corrupt": (_corrupt, "corrupt.png"),
    "truncated": (_truncated, "truncated.png"),
    "zero-byte": (_empty, "empty.png"),
    "non-image": (_text, "notes.jpg"),
    "missing": (lambda tmp: tmp / "missing.png", "missing.png"),
    "huge": (_huge, "huge.png"),
}


@pytest.mark.parametrize("command", ["effects", "edit"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_images_give_one_line_and_exit_1(tmp_path, capsys, case, command):
    make, name = BAD_INPUTS[case]
    bad = make(tmp_path)
    out = tmp_path / "out.png"
    extra = ["--grain", "0.05"] if command == "effects" else ["--method", "sdedit", "--num-steps", "2"]
    code, _, err = run_cli([command, bad, "-o", out, *extra], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("retouch: error:") and name in lines[0]
    assert "Traceback" not in err
    assert not out.exists()


def test_output_equal_to_input_is_refused_and_input_untouched(photo, capsys):
    before = photo.read_bytes()
    for target in (photo, photo.parent / "." / photo.name):
        code, _, err = run_cli(["effects", photo, "-o", target, "--grain", "0.05"], capsys)
        assert code == 1 and "refusing to overwrite input" in err
    assert photo.read_bytes() == before


def test_unwritable_output_is_refused_before_work(photo, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run_cli(["effects", photo, "-o", blocker / "out.png", "--grain", "0.05"], capsys)
    assert code == 1 and err.count("\n") == 1 and "not a folder" in err


def test_bad_extension_and_bad_values(photo, tmp_path, capsys):
    cases = [
        (["-o", tmp_path / "out.gif", "--grain", "0.05"], "unknown extension"),
        (["-o", tmp_path / "o.png", "--blur", "1.5"], "--blur"),
        (["-o", tmp_path / "o.png", "--blur", "nan"], "--blur"),
        (["-o", tmp_path / "o.png", "--sharpen", "two"], "--sharpen"),
        (["-o", tmp_path / "o.png", "--sharpen", "2,0.05,1"], "--sharpen"),
        (["-o", tmp_path / "o.png"], "no effect chosen"),
    ]
    for args, expected in cases:
        code, _, err = run_cli(["effects", photo, *args], capsys)
        assert code == 1 and expected in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("o.*"))


def test_nan_edit_map_is_refused(photo, tmp_path, capsys):
    mask = tmp_path / "mask.tiff"
    values = np.full((48, 40), np.nan, dtype=np.float32)
    Image.fromarray(values, mode="F").save(mask)
    code, _, err = run_cli(["effects", photo, "-o", tmp_path / "o.png", "--mask", mask], capsys)
    assert code == 1 and "mask.tiff" in err and err.count("\n") == 1
    assert not (tmp_path / "o.png").exists()


def test_effects_writes_result_and_comparison(photo, tmp_path, capsys):
    out, strip = tmp_path / "res" / "out.png", tmp_path / "cmp.png"
    code, stdout, err = run_cli(["effects", photo, "-o", out, "--blur", "0.5", "--blur-angle", "0", "--sharpen", "2,0.01",
                             "--compare", strip], capsys)
    assert code == 0, err
    result = np.asarray(Image.open(out))
    assert result.shape == (48, 40, 3)
    assert not np.array_equal(result, np.asarray(Image.open(photo)))
    assert Image.open(strip).width > 2 * 40
    assert "wrote" in stdout


def test_edit_option_of_another_method_is_refused(photo, tmp_path, capsys):
    code, _, err = run_cli(["edit", photo, "-o", tmp_path / "o.png", "--method", "nope"], capsys)
    assert code == 1 and "unknown method 'nope'" in err and "sdedit" in err


def test_edit_with_sdedit_on_tiny_model_is_deterministic(photo, tmp_path, capsys):
    outputs = []
    for name in ("a.png", "b.png"):
        code, _, err = run_cli(["edit", photo, "-o", tmp_path / name, "--method", "sdedit", "--prompt", "a cat",
                            "--model", "tiny-sd", "--num-steps", "4", "--strength", "0.5", "--seed", "3"], capsys)
        assert code == 0, err
        outputs.append(np.asarray(Image.open(tmp_path / name)))
    assert outputs[0].shape == (48, 40, 3)  # back at the input size after fitting to the model's multiple
    assert np.array_equal(*outputs)


def test_installed_entry_point_reports_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "retouch.cli", "effects", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o.png"),
         "--grain", "0.05"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "nope.png" in result.stderr


def test_help_and_info(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "edit" in out and "effects" in out
    code, out, _ = run_cli(["info"], capsys)
    assert code == 0 and "torch" in out and "sdedit" in out


def test_the_default_model_of_every_edit_is_the_shipped_mini_model():
    """Without --model, `retouch edit` (single image and batch), `directions build` and the app run the shipped
    mini models; the random tiny-* test models are never a silent default."""
    import dataclasses

    from retouch.app.jobs import MINI
    from retouch.backbone import MINI_NAME, TINY_NAMES
    from retouch.batch import BatchSettings
    from retouch.cli import cli
    from retouch.methods import available_methods, model_name

    assert MINI_NAME == MINI == "mini"
    for method in available_methods().values():
        assert model_name(method, None) == (method.default_model or "mini")
        assert model_name(method, None) not in TINY_NAMES
    assert BatchSettings().model is None  # so each item's model is model_name(method, None)
    for path in (["edit"], ["directions", "build"], ["data", "pairs"]):
        command = cli
        for name in path:
            command = command.get_command(None, name)
        model = next(p for p in command.params if p.name == "model")
        assert model.default in (None, "mini"), path
        assert "tiny-sd" not in (model.help or "").split("(default")[-1]
    assert [f.default for f in dataclasses.fields(BatchSettings) if f.name == "model"] == [None]


def test_edit_without_model_runs_on_mini(photo, tmp_path, capsys, monkeypatch):
    import retouch.methods

    loaded = []
    real = retouch.methods.load_method_model

    def load(method, model=None, **options):
        loaded.append(retouch.methods.model_name(method, model))
        return real(method, "tiny-sd", **options)  # the edit itself on the tiny model, for speed

    monkeypatch.setattr(retouch.methods, "load_method_model", load)
    code, out, err = run_cli(["edit", photo, "-o", tmp_path / "o.png", "--method", "sdedit", "--prompt", "a cat",
                              "--num-steps", "2"], capsys)
    assert code == 0, err
    assert loaded == ["mini"] and "sdedit on mini" in out


def test_a_shared_option_s_help_names_every_method_that_reads_it():
    import dataclasses

    from retouch.cli import edit
    from retouch.methods import available_methods

    readers: dict[str, list[str]] = {}
    for method in available_methods().values():
        for field in dataclasses.fields(method.config_class):
            readers.setdefault(field.name, []).append(method.name)
    options = {p.name: p for p in edit.params}
    assert len(readers["num_steps"]) > 2  # the case the help used to get wrong: "[ddim] DDIM steps"
    for name, methods in readers.items():
        if name == "seed":
            continue
        help_text = options[name].help
        groups = re.findall(r"(?:^|; )\[([^\]]*)\]", help_text)  # "[a, b] help (default x); [c] …"
        named = {m.strip() for group in groups for m in group.split(",")}
        assert named == set(methods), (name, help_text)
