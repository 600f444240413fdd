"""The paper-table harness: the row cache, claims over rows, and `retouch bench paper --quick` end to end."""

import json
import re
from importlib.util import find_spec

import numpy as np
import pytest

from retouch.bench.harness import Claim, Metric, Row, RowCache, Table, evaluate_claims, render_claims, render_table
from retouch.metrics.claims import FAILS, HOLDS, UNCLEAR


def test_rows_are_reused_until_settings_or_model_files_change(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"one")
    calls = []

    def compute():
        calls.append(1)
        return {"score": np.arange(5.0)}, {"note": "x"}

    cache = RowCache(tmp_path / "cache")
    first = cache.row("t", 1, "sys", "g", {"steps": 4}, {"m": model}, compute)
    again = cache.row("t", 1, "sys", "g", {"steps": 4}, {"m": model}, compute)
    assert len(calls) == 1 and not first.cached and again.cached
    assert again.values == {"score": [0.0, 1.0, 2.0, 3.0, 4.0]} and again.extra == {"note": "x"} and again.scenes == 5
    cache.row("t", 1, "sys", "g", {"steps": 5}, {"m": model}, compute)  # a setting changed
    assert len(calls) == 2
    cache.row("t", 2, "sys", "g", {"steps": 4}, {"m": model}, compute)  # the table's measuring code changed
    assert len(calls) == 3
    (model / "weights.bin").write_bytes(b"two")  # the model changed
    cache.row("t", 1, "sys", "g", {"steps": 4}, {"m": model}, compute)
    assert len(calls) == 4
    RowCache(tmp_path / "cache", fresh=True).row("t", 1, "sys", "g", {"steps": 4}, {"m": model}, compute)
    assert len(calls) == 5
    assert not list((tmp_path / "cache").rglob("*.partial"))


def synthetic_table(shift):
    """Two systems on two groups of 60 scenes; B's error is A's plus ``shift`` and some noise."""
    rng = np.random.default_rng(0)
    rows = []
    for group in ("g1", "g2"):
        base = rng.normal(1.0, 0.3, 60)
        rows.append(Row("t", "A", group, {"err": base.tolist(), "ok": (base > 1).astype(float).tolist()}, 1.0, 60))
        other = base + shift + rng.normal(0, 0.01, 60)
        rows.append(Row("t", "B", group, {"err": other.tolist(), "ok": (base > 1).astype(float).tolist()}, 1.0, 60))
    metrics = [Metric("err", "error", "lower"), Metric("ok", "success", "higher", "binary")]
    claims = [Claim("paper", "A has lower error than B", "err", "A", "B"),
              Claim("paper", "A succeeds more often than B", "ok", "A", "B")]
    return Table("t", "title", "paper", "description", metrics, rows, claims, 1.0, "cmd")


@pytest.mark.parametrize("shift, expected", [(0.05, HOLDS), (-0.05, FAILS), (0.0, UNCLEAR)])
def test_claims_are_tested_on_the_pooled_paired_scenes(shift, expected):
    error, success = evaluate_claims(synthetic_table(shift))
    assert error.pooled.verdict == expected and error.pooled.test.n == 120
    assert set(error.per_group) == {"g1", "g2"}
    assert success.pooled.verdict == UNCLEAR and success.pooled.p_value == 1.0  # identical outcomes
    text = render_claims([error, success])
    assert f"**{expected}**" in text and "exact McNemar (n=120)" in text


def test_a_table_renders_every_row_with_intervals_and_its_claims():
    text = render_table(synthetic_table(0.05))
    rows = [line for line in text.splitlines() if re.match(r"\| g\d \|", line)]
    assert len(rows) == 4 and all(re.search(r"\d\.\d+ \[\d\.\d+, \d\.\d+\]", row) for row in rows)
    assert "Wall time of this table: 1.0 s" in text and "## Claims" in text


def test_a_table_without_claims_renders_its_rows_and_links_every_figure_with_its_caption():
    table = synthetic_table(0.05)
    table.claims, table.figure = [], "/somewhere/t.png"
    table.extra_figures = [("/somewhere/t_fig1.png", "The second figure.")]
    assert evaluate_claims(table) == []
    text = render_table(table)
    rows = [line for line in text.splitlines() if re.match(r"\| g\d \|", line)]
    assert len(rows) == 4 and "## Claims" not in text
    assert "![title](t.png)" in text and "![t_fig1](t_fig1.png)" in text and "*The second figure.*" in text


def test_an_unknown_table_is_one_line_and_exit_status_1(capsys):
    from retouch.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "paper", "--quick", "--tables", "nonsense"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "retouch: error: unknown table nonsense; choose from pix2pix-zero, distill, pixels, portrait, decoder-splices, "
        "multitask"]


def test_kid_of_a_subset_is_the_unbiased_mmd_and_skips_a_triple_paired_with_itself():
    from retouch.bench.pixels import kid_of_subset
    from retouch.metrics.distribution import mmd2_unbiased

    rng = np.random.default_rng(0)
    real, fake = rng.normal(0, 1, (30, 8)), rng.normal(0.5, 1, (30, 8))
    assert kid_of_subset(fake, real, np.arange(30)) == pytest.approx(mmd2_unbiased(real, fake))
    assert np.isnan(kid_of_subset(fake, real, np.array([3, 3, 3])))
    assert kid_of_subset(real[:15], real[15:], np.arange(15)) < kid_of_subset(fake, real, np.arange(30))


def test_quick_run_writes_tables_and_claims_then_reuses_every_row(tmp_path, capsys):
    from retouch.bench import decoder_splices, distill, multitask, pix2pix_zero, pixels, portrait
    from retouch.cli import main

    docs, cache = tmp_path / "docs", tmp_path / "cache"
    # no trained variants in this folder, so the shipped models' rows only
    main(["bench", "paper", "--quick", "--docs", str(docs), "--cache", str(cache), "--trained", str(tmp_path)])
    out = capsys.readouterr().out
    # 18 pix2pix-zero, 1 distillation (pix2pix-zero alone: no translator), 18 PIXELS (the held-out set's
    # features too), 20 portrait (10 systems × 2 directions), 3 decoder splices (reconstruction, cut, paste)
    assert "60 rows computed, 0 reused" in out

    table = (docs / "paper_tables" / f"{pix2pix_zero.KEY}.md").read_text()
    rows = [line for line in table.splitlines()
            if re.match(r"\| (red->blue|circle->square|plain->striped) \| ", line)]
    assert len(rows) == len(pix2pix_zero.SYSTEMS) * len(pix2pix_zero.EDITS)
    assert all(line.count(" [") == len(pix2pix_zero.METRICS) and "| 4 |" in line for line in rows)
    assert re.search(r"Wall time of this table: \d+\.\d s", table)
    assert (docs / "paper_tables" / f"{pix2pix_zero.KEY}.png").stat().st_size > 10_000

    claims = (docs / "paper_claims.md").read_text()
    assert re.search(r"Total wall time of the command: \d+\.\d s", claims)
    claim_rows = [line for line in claims.splitlines() if line.split(" | ")[0] in ("| pix2pix-zero", "| zeroCon",
                                                                                   "| PIXELS", "| portrait MCDM")]
    expected = [(claim, pix2pix_zero.KEY) for claim in pix2pix_zero.CLAIMS] + \
        [(claim, distill.KEY) for claim in distill.claims()] + \
        [(claim, pixels.KEY) for claim in pixels.CLAIMS + pixels.sweep_claims(pixels.QUICK_SWEEP)] + \
        [(claim, portrait.KEY) for claim in portrait.claims()]
    assert len(claim_rows) == len(expected)
    for line, (claim, key) in zip(claim_rows, expected):
        assert claim.statement in line
        verdict = re.search(r"\*\*(holds|does not hold|cannot be told apart)\*\*", line)
        assert verdict, line
        p_value = float(line.split(" | ")[7])
        assert 0 <= p_value <= 1
        if p_value != 0.05:  # printed to two digits: 0.05 may be either side
            assert (verdict.group(1) == UNCLEAR) == (p_value > 0.05)
        assert f"](paper_tables/{key}.md)" in line
    pixels_table = (docs / "paper_tables" / f"{pixels.KEY}.md").read_text()
    pixel_rows = [line for line in pixels_table.splitlines() if re.match(r"\| (references|strength|sweep)", line)]
    main_systems = pixels.THRESHOLD_SYSTEMS + pixels.BASELINES + pixels.FULL_PASTE_BASELINES
    assert len(pixel_rows) == len(pixels.REFERENCES) + len(main_systems) + len(pixels.SWEPT) * len(pixels.QUICK_SWEEP)
    assert all(line.count(" [") == 2 for line in pixel_rows)
    portrait_table = (docs / "paper_tables" / f"{portrait.KEY}.md").read_text()
    portrait_rows = [line for line in portrait_table.splitlines() if re.match(r"\| (plain->striped|none->hat) \| ", line)]
    assert len(portrait_rows) == 2 * len(portrait.system_names())
    with_mask = [line for line in portrait_rows if "| MCDM |" in line or "| DiffEdit |" in line]
    assert len(with_mask) == 4 and all(line.count(" [") == len(portrait.METRICS) for line in with_mask)
    # systems that make no mask have no mask IoU, and say so
    assert all(line.count(" [") == len(portrait.METRICS) - 1 and "| — |" in line
               for line in portrait_rows if line not in with_mask)
    # PIXELS Fig. 1: a second figure, written and linked with its caption
    figure_one = docs / "paper_tables" / f"{pixels.KEY}_fig1.png"
    assert figure_one.stat().st_size > 10_000 and str(figure_one) in out
    assert f"]({figure_one.name})" in pixels_table and "*PIXELS Fig. 1 on the mini world (4 DDIM steps)" in pixels_table
    # the decoder splices: one row per group, one PSNR per held-out pair with its interval, a figure, no claims
    splices_table = (docs / "paper_tables" / f"{decoder_splices.KEY}.md").read_text()
    splice_rows = [line for line in splices_table.splitlines()
                   if re.match(r"\| (reconstruction|cut|paste) \| shipped autoencoder \| ", line)]
    assert [line.split(" | ")[0] for line in splice_rows] == ["| reconstruction", "| cut", "| paste"]
    assert all(re.search(r"\| \d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\] \| 4 \|", line) for line in splice_rows)
    splices_figure = docs / "paper_tables" / f"{decoder_splices.KEY}.png"
    assert splices_figure.stat().st_size > 10_000 and f"]({splices_figure.name})" in splices_table
    assert "No paper claim" in splices_table and "## Claims" not in splices_table
    assert all(f"{group} ≥ {target:g} dB: **" in splices_table for group, target in decoder_splices.TARGETS.items())
    distill_table = (docs / "paper_tables" / f"{distill.KEY}.md").read_text()
    distill_rows = [line for line in distill_table.splitlines() if line.startswith("| red->blue | ")]
    assert len(distill_rows) == 1 and f"| {distill.DIFFUSION} |" in distill_rows[0]
    assert distill_rows[0].count(" [") == len(distill.METRICS) and "| 4 |" in distill_rows[0]
    assert (docs / "paper_tables" / f"{distill.KEY}.png").stat().st_size > 5_000
    # its pix2pix-zero row is the translator's teacher: config E with the shipped backbone's own settings
    # (method_defaults.json), on the same scenes, edited one at a time to be timed; Table 2 runs the paper's
    from retouch.backbone import MINI_DIR, load_backbone
    from retouch.bench.paper import QUICK
    from retouch.train.distill import pix2pix_zero_edits, teacher_settings
    from retouch.world import World
    from retouch.world.edits import edit_scenes

    teacher = teacher_settings(str(MINI_DIR / "backbone"))
    assert {"xa_guidance", "guidance_scale"} <= set(teacher), "the shipped backbone carries its own settings"
    config_e, = (cache / pix2pix_zero.KEY).glob("E_red__blue-*.json")
    diffusion, = (cache / distill.KEY).glob("pix2pix_zero_red__blue-*.json")
    config_e, diffusion = (json.loads(path.read_text()) for path in (config_e, diffusion))
    assert diffusion["settings"]["teacher"] == teacher and teacher["bank"] == "world"
    assert diffusion["values"]["bg_l1"] != pytest.approx(config_e["values"]["bg_l1"], abs=1e-6)
    scenes = edit_scenes(World(seed=0, size=64), "red", "blue", QUICK["scenes"])
    expected = pix2pix_zero_edits(load_backbone(str(MINI_DIR / "backbone")), scenes.images, scenes.sources, "red->blue",
                                  steps=QUICK["steps"], batch=1, seed=0, settings=teacher)
    thumbs = pix2pix_zero.decode_thumbs(diffusion["extra"]["thumbs"])
    assert np.abs(thumbs - expected[:len(thumbs)].permute(0, 2, 3, 1).numpy()).max() <= 2 / 255
    not_covered = claims.split("## Not covered yet")[1]
    assert all(name in not_covered for name in portrait.VARIANTS) and "multitask" in not_covered
    assert "Fig. 1" not in not_covered and "decoder splices" not in not_covered
    assert "the red->blue translator" in not_covered and "make distill-model" in not_covered
    assert "the distillation table" not in not_covered
    # no compositing benchmark under --trained: the multitask table is skipped and says what builds its data
    assert not (docs / "paper_tables" / f"{multitask.KEY}.md").exists()
    assert f"no compositing benchmark with test or photos crops at {tmp_path / multitask.DATA}" in not_covered

    main(["bench", "paper", "--quick", "--docs", str(docs), "--cache", str(cache), "--trained", str(tmp_path)])
    assert "0 rows computed, 60 reused" in capsys.readouterr().out
    assert (docs / "paper_claims.md").read_text().split("| paper |")[1] == claims.split("| paper |")[1]


def test_trained_portrait_variants_become_rows_with_their_claims_where_their_folders_exist(tmp_path, capsys):
    """Table 1's ablations and the data claim's models are not shipped: a variant found under --trained is a
    row of its own (cached on its own weights) with its claims; the others stay listed as not covered."""
    import shutil

    from retouch.backbone import MINI_DIR
    from retouch.bench import portrait
    from retouch.cli import main

    for name in (portrait.NO_SPATIAL, portrait.GENERATED):  # stand-ins: copies of the shipped MCDM
        shutil.copytree(MINI_DIR / "portrait", tmp_path / "trained" / portrait.VARIANTS[name])
    docs, cache = tmp_path / "docs", tmp_path / "cache"
    args = ["bench", "paper", "--quick", "--tables", "portrait", "--docs", str(docs), "--cache", str(cache),
            "--trained", str(tmp_path / "trained")]
    main(args)
    rows = 2 * (len(portrait.system_names()) + 2)
    assert f"{rows} rows computed, 0 reused" in capsys.readouterr().out
    table = (docs / "paper_tables" / f"{portrait.KEY}.md").read_text()
    for name in (portrait.NO_SPATIAL, portrait.GENERATED):
        lines = [line for line in table.splitlines() if f"| {name} |" in line and line.startswith("| ")]
        assert len(lines) == 2 and all(line.count(" [") == len(portrait.METRICS) for line in lines[:2])
    claims = (docs / "paper_claims.md").read_text()
    expected = portrait.claims({portrait.NO_SPATIAL: None, portrait.GENERATED: None})
    assert len(expected) == len(portrait.claims()) + 3 + 3 * 5 + 3  # ablation, vs baselines, vs the shipped MCDM
    assert all(claim.statement in claims for claim in expected)
    # the same weights as the shipped MCDM: the same edits, so parity with it cannot be told apart
    parity = [line for line in claims.splitlines() if "as well as true pairs" in line]
    assert len(parity) == 3 and all("**cannot be told apart**" in line for line in parity)
    not_covered = claims.split("## Not covered yet")[1]
    assert portrait.NO_PRETRAINING in not_covered and portrait.GENERATED not in not_covered

    shutil.rmtree(tmp_path / "trained" / portrait.VARIANTS[portrait.NO_SPATIAL])
    main(args)
    assert f"0 rows computed, {rows - 2} reused" in capsys.readouterr().out


def test_a_trained_translator_becomes_a_row_with_its_claims_where_its_folder_exists(tmp_path, capsys):
    """pix2pix-zero's distilled translator (§4.5) is not shipped: trained under --trained, it is a row beside
    pix2pix-zero's on the same scenes (cached on its own weights), with §4.5's claims; without it, not covered."""
    import shutil

    from retouch.backbone import MINI_DIR, build_tiny
    from retouch.bench import distill
    from retouch.cli import main
    from retouch.metrics import TransformersCLIPJudge
    from retouch.train.distill import DistillConfig, final_translator, trained_folder
    from retouch.train.distill import distill as train_translator
    from retouch.world import World

    work = tmp_path / "trained" / trained_folder("red->blue")
    tiny = dict(edit="red->blue", model="tiny-sd", output_dir=str(work), pairs=2, edit_steps=2, edit_batch=2,
                batch=2, clip_increase=-2.0, inside_fraction=0.0)
    judge = TransformersCLIPJudge(MINI_DIR / "judge")
    train_translator(build_tiny("tiny-sd"), judge, World(seed=0, size=64), DistillConfig(train_steps=2, **tiny))
    docs, cache = tmp_path / "docs", tmp_path / "cache"
    # six scenes: the fewest at which a paired test of six differences of one sign is significant
    args = ["bench", "paper", "--quick", "--scenes", "6", "--tables", "distill", "--docs", str(docs), "--cache",
            str(cache), "--trained", str(tmp_path / "trained")]
    main(args)
    assert "2 rows computed, 0 reused" in capsys.readouterr().out
    table = (docs / "paper_tables" / f"{distill.KEY}.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| red->blue | ")]
    assert [line.split(" | ")[1] for line in rows] == [distill.DIFFUSION, distill.TRANSLATOR]
    assert all(line.count(" [") == len(distill.METRICS) and "| 6 |" in line for line in rows)
    assert f"red->blue (`{final_translator(work)}`: 2 of 2 pix2pix-zero pairs of 2 steps kept, 2 training steps" \
        in table and "Speed-up on red->blue" in table and "Missing" not in table

    claims = (docs / "paper_claims.md").read_text()
    expected = distill.claims({"red->blue": None})
    claim_rows = [line for line in claims.splitlines() if f"](paper_tables/{distill.KEY}.md)" in line]
    assert len(expected) == 5 and len(claim_rows) == len(expected)
    for line, claim in zip(claim_rows, expected):
        assert claim.statement in line and re.search(r"\*\*(holds|does not hold|cannot be told apart)\*\*", line)
    # one forward pass of a small U-Net against a whole diffusion edit: faster on every one of the six scenes
    assert f"**{HOLDS}**" in claim_rows[0] and "s/image" in claim_rows[0]
    assert all(distill.PARITY in line for line in claim_rows[1:])
    assert "translator" not in claims.split("## Not covered yet")[1]

    # more training changes the translator's weights: its row alone is recomputed
    train_translator(build_tiny("tiny-sd"), judge, World(seed=0, size=64), DistillConfig(train_steps=3, **tiny))
    main(args)
    assert "1 rows computed, 1 reused" in capsys.readouterr().out
    shutil.rmtree(work)
    main(args)
    assert "0 rows computed, 1 reused" in capsys.readouterr().out
    claims = (docs / "paper_claims.md").read_text()
    assert not any(f"](paper_tables/{distill.KEY}.md)" in line for line in claims.splitlines())
    assert "the red->blue translator" in claims.split("## Not covered yet")[1]


def test_make_distill_model_trains_the_translator_where_the_bench_looks_for_it():
    from pathlib import Path

    from retouch.bench import distill
    from retouch.train.distill import trained_folder

    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    recipe = makefile.split("\ndistill-model:")[1].split("\n\n")[0]
    assert distill.EDITS == ("red->blue",)
    assert "--edit 'red->blue'" in recipe and f"--output-dir out/{trained_folder('red->blue').as_posix()}" in recipe


def test_the_multitask_table_reads_the_compositing_benchmark_and_the_trained_baselines_found(tmp_path, capsys):
    """Tables 2–4 and Fig. 4 on a tiny compositing benchmark under --trained: a row per (system, split, task) with
    per-crop intervals for the shipped model, the input and the one baseline found (a stand-in: a copy of the
    shipped model as Palette++), the slider rows of both ends, every claim with a verdict, and the curves."""
    import shutil

    from retouch.backbone import MINI_DIR
    from retouch.bench import multitask
    from retouch.cli import main
    from retouch.data.compositing import CompositingConfig, build_compositing_dataset

    trained = tmp_path / "trained"
    trained.mkdir()
    # four dead-leaves crops all in the test split, and one crop of each of the eight photographs
    build_compositing_dataset(CompositingConfig(world_scenes=0, dead_leaves=4, photos=True, crop=32, crops_per_image=1,
                                                grain_samples=4, split=(0.0, 0.0, 1.0)), trained / multitask.DATA)
    shutil.copytree(MINI_DIR / "multitask", trained / multitask.BASELINES / "palette" / "final")
    docs, cache = tmp_path / "docs", tmp_path / "cache"
    args = ["bench", "paper", "--quick", "--tables", "multitask", "--docs", str(docs), "--cache", str(cache),
            "--trained", str(trained)]
    main(args)
    tasks = len(multitask.SINGLE_TASKS) + len(multitask.COMBINATIONS)
    table_rows, slider_rows = 3 * 2 * tasks, 4 * 2 * 2 + 3  # 3 systems × 2 splits; 4 sliders × 2 ends × 2, colour
    assert f"{table_rows + slider_rows} rows computed, 0 reused" in capsys.readouterr().out

    table = (docs / "paper_tables" / f"{multitask.KEY}.md").read_text()
    rows = [line for line in table.splitlines() if re.match(r"\| (test|photos): ", line)]
    assert len(rows) == table_rows
    assert {line.split(" | ")[1] for line in rows} == {multitask.OURS, multitask.UNEDITED, multitask.PALETTE}
    assert all(line.count(" [") == 2 and "| 4 |" in line for line in rows)  # L1 and SSIM over the first 4 crops
    sweep = [line for line in table.splitlines() if re.match(r"\| (blur|grain|sharpen|colour)", line)]
    assert len(sweep) == slider_rows and all(line.count(" [") == 1 for line in sweep)
    figure = docs / "paper_tables" / f"{multitask.KEY}.png"
    if find_spec("matplotlib") is not None:  # the curves need the optional `bench` extra; `make test` has none
        assert figure.stat().st_size > 10_000 and f"]({figure.name})" in table
    else:
        assert not figure.exists() and "No figure: matplotlib is not installed" in table

    claims = (docs / "paper_claims.md").read_text()
    expected = multitask.claims({multitask.PALETTE: None}, multitask.swept_values(True))
    # ours vs the input and vs Palette++, on single tasks and on combinations, × L1, SSIM; then 4 sliders × (model,
    # operator) and the colour transfer × (model, operator)
    assert len(expected) == 2 * 2 * 2 + 4 * 2 + 2
    lines = [line for line in claims.splitlines() if line.startswith(f"| {multitask.P} |")]
    assert len(lines) == len(expected)
    for line, claim in zip(lines, expected):
        assert claim.statement in line and f"](paper_tables/{multitask.KEY}.md)" in line
        verdict = re.search(r"\*\*(holds|does not hold|cannot be told apart)\*\*", line)
        assert verdict, line
        p_value = float(line.split(" | ")[7])
        if p_value != 0.05:
            assert (verdict.group(1) == UNCLEAR) == (p_value > 0.05)
    # the stand-in has the shipped model's weights: the same edits, so it cannot be told apart from ours
    parity = [line for line in lines if "than Palette++" in line or "outperforms Palette++" in line]
    assert len(parity) == 4 and all("**cannot be told apart**" in line for line in parity)
    not_covered = claims.split("## Not covered yet")[1]
    assert all(name in not_covered for name in (multitask.PIX2PIX, multitask.NO_LABELS, multitask.OURS_SINGLE))
    assert multitask.PALETTE not in not_covered

    main(args)
    assert f"0 rows computed, {table_rows + slider_rows} reused" in capsys.readouterr().out
