"""The web app's jobs in-process: limits, refusals, the model cache, the output folder, parity with the CLI."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

from retouch.app.jobs import (
    App, Exemplar, Limits, ModelCache, OutputFolder, map_from_layers, run_build_direction, run_edit, run_effects,
    run_multitask, run_pixels,
)
from retouch.errors import RetouchError
from retouch.imageio import load_image, load_map, save_image
from retouch.world import World

CAPTION = "a photo of a green striped circle on grass"  # held-out scene 98 of World(seed=0)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two held-out scenes as the app gets them: through 8-bit PNG files, like every upload."""
    world, folder = World(seed=0, size=64), tmp_path_factory.mktemp("scenes")
    return tuple(load_image(save_image(world.scene(i)[1].image, folder / f"{i}.png")) for i in (98, 99))


@pytest.fixture
def app(tmp_path):
    return App(OutputFolder(tmp_path / "out"), Limits(max_upload_mb=1, max_side=256))


def _written(app):
    return sorted(p.name for p in app.output.root.glob("*.png"))


def test_painted_layers_become_a_soft_map():
    layer = np.zeros((4, 6, 4), np.uint8)
    layer[0, 0] = (255, 255, 255, 255)  # white, opaque: full edit
    layer[1, 1] = (255, 255, 255, 128)  # white at half opacity: half
    layer[2, 2] = (128, 128, 128, 255)  # mid grey: half
    top = np.zeros_like(layer)
    top[0, 0] = (0, 0, 0, 255)  # black painted over the white: keep the input again
    edit_map = map_from_layers([layer])
    assert edit_map.shape == (4, 6) and edit_map.dtype == np.float32
    assert edit_map[0, 0] == 1 and abs(edit_map[1, 1] - 0.5) < 0.01 and abs(edit_map[2, 2] - 0.5) < 0.01
    assert edit_map[3].max() == 0
    assert map_from_layers([layer, top])[0, 0] == 0
    assert map_from_layers([np.zeros_like(layer)]) is None and map_from_layers([]) is None
    with pytest.raises(RetouchError, match="RGBA"):
        map_from_layers([layer[..., :3]])


def test_uploads_over_the_limits_or_not_images_are_refused_by_name(app, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "big.png")  # > 1 MB
    with pytest.raises(RetouchError, match=r"'big.png' is 1\.\d MB, more than the upload limit of 1 MB"):
        app.read_image(tmp_path / "big.png", "source image")
    save_image(np.zeros((10, 300, 3), np.float32), tmp_path / "wide.png")
    with pytest.raises(RetouchError, match="'wide.png' \\(the source image\\): 300x10 has a side longer than"):
        app.read_image(tmp_path / "wide.png", "source image")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(RetouchError, match="'notes.png' \\(the edit map\\): not a recognised image format"):
        app.read_map(tmp_path / "notes.png", "edit map")
    with pytest.raises(RetouchError, match="side longer than the limit of 256"):
        app.canvas_image(np.zeros((20, 257, 4), np.uint8), "exemplar 1")
    assert app.canvas_image(np.full((20, 30, 4), 255, np.uint8), "exemplar 1").shape == (20, 30, 3)


def test_effects_write_only_fresh_files_in_the_output_folder(app, scenes):
    image = scenes[0]
    hole = np.zeros(image.shape[:2], np.float32)
    hole[:8] = 1
    result = run_effects(app, image, blur=0.4, blur_angle=30, grain=0.05, grain_samples=20, hole=hole,
                         sharpen=(1.5, 0.02))
    assert result.result.parent == app.output.root and result.comparison.parent == app.output.root
    edited = load_image(result.result)
    assert edited.shape == image.shape and np.abs(edited - image).mean() > 0.01
    assert np.all(edited[:8] == edited[0, 0])  # the painted hole is filled with one colour, the mask's
    second = run_effects(app, image, random_hole=True, seed=5)
    assert second.result != result.result and len(_written(app)) == 4
    from retouch.effects import free_form_mask

    drawn = free_form_mask(64, 64, seed=5)
    assert np.all(load_image(second.result)[drawn] == 0) and drawn.any()  # the seed's strokes are the hole
    for bad, message in ((dict(blur=1.5), "blur β must lie in"), (dict(), "no effect chosen"),
                         (dict(sharpen=(4.0, 0.0)), "sharpen amount λ")):
        with pytest.raises(RetouchError, match=message):
            run_effects(app, image, **bad)
    assert len(_written(app)) == 4  # refused runs leave nothing behind


def test_pixels_in_the_app_is_the_cli_run(app, scenes, tmp_path, capsys):
    source, exemplar = scenes
    edit_map = np.zeros(source.shape[:2], np.float32)
    edit_map[16:48, 16:48] = 1.0
    edit_map[16:48, 40:48] = 0.5
    values = dict(num_steps=4, strength=0.8, threshold="quadratic", seed=3)
    result = run_pixels(app, "mini", source, [Exemplar(exemplar, edit_map)], values)
    assert _written(app) == sorted(p.name for p in (result.result, result.comparison))  # no scratch files either
    for name, image in (("in", source), ("exemplar", exemplar), ("map", edit_map)):
        save_image(image, tmp_path / f"{name}.png")
    code, _, err = run_cli(["edit", tmp_path / "in.png", "-o", tmp_path / "cli.png", "--method", "pixels", "--model",
                            "mini", "--exemplar", tmp_path / "exemplar.png", "--map", tmp_path / "map.png",
                            "--num-steps", "4", "--strength", "0.8", "--threshold", "quadratic", "--seed", "3"],
                           capsys)
    assert code == 0, err
    assert np.array_equal(load_image(result.result), load_image(tmp_path / "cli.png"))
    assert np.abs(load_image(result.result) - source).mean() > 0.01
    with pytest.raises(RetouchError, match="at least one exemplar"):
        run_pixels(app, "mini", source, [], values)
    with pytest.raises(RetouchError, match="--strength"):
        run_pixels(app, "mini", source, [Exemplar(exemplar, edit_map)], {**values, "strength": 0.0})
    assert sorted(p.name for p in app.output.root.iterdir()) == ["directions", *_written(app)]


def test_pix2pix_zero_with_a_built_direction_matches_the_cli(app, scenes, tmp_path, capsys):
    image = scenes[0]
    name = run_build_direction(app, "mini", "green", "purple")
    assert app.output.directions() == [name] and (app.output.directions_dir / name).is_file()
    values = dict(source_text=CAPTION, directions=str(app.output.direction_path(name)), num_steps=3)
    reports = []
    result = run_edit(app, "pix2pix-zero", "mini", image, values, report=lambda *a: reports.append(a))
    assert reports[-1][:2] == (3, 3)  # one report per denoising step, out of the config's steps
    save_image(image, tmp_path / "in.png")
    code, _, err = run_cli(["edit", tmp_path / "in.png", "-o", tmp_path / "cli.png", "--method", "pix2pix-zero",
                            "--model", "mini", "--source-text", CAPTION, "--directions",
                            app.output.directions_dir / name, "--num-steps", "3"], capsys)
    assert code == 0, err
    assert np.array_equal(load_image(result.result), load_image(tmp_path / "cli.png"))
    for bad in ("../../etc/passwd", "missing.safetensors"):
        with pytest.raises(RetouchError, match="no saved direction"):
            app.output.direction_path(bad)


def test_only_offered_models_load_and_multitask_explains_its_absence(app, scenes, tiny_backbones, tmp_path, capsys):
    from retouch.methods import get_method
    from retouch.networks.multitask import MultitaskModel

    for name in ("tiny-sd", str(tmp_path)):
        with pytest.raises(RetouchError, match="is not offered here"):
            with app.model(get_method("sdedit"), name):
                pass
    from retouch.methods.multitask import SHIPPED_MODEL

    assert app.multitask_models()[0] == str(SHIPPED_MODEL)  # the shipped model is offered first, the tab's default
    folder = tmp_path / "multitask"
    MultitaskModel.from_backbone(tiny_backbones["tiny-sd"]).save(folder)
    offered = App(app.output, app.limits, extra_models=(str(folder),))
    assert str(folder) in offered.multitask_models() and str(folder) not in offered.backbone_models()
    hole = np.zeros((64, 64), np.float32)
    hole[20:40, 20:40] = 1
    result = run_multitask(offered, str(folder), scenes[0], dict(blur=0.3, num_steps=2), reference=scenes[1],
                           hole=hole)
    assert load_image(result.result).shape == (64, 64, 3)
    # the in-memory reference and hole are the CLI's files
    for name, image in (("in", scenes[0]), ("reference", scenes[1]), ("hole", hole)):
        save_image(image, tmp_path / f"{name}.png")
    code, _, err = run_cli(["edit", tmp_path / "in.png", "-o", tmp_path / "cli.png", "--method", "multitask",
                            "--model", folder, "--blur", "0.3", "--num-steps", "2", "--reference",
                            tmp_path / "reference.png", "--mask", tmp_path / "hole.png"], capsys)
    assert code == 0, err
    assert np.array_equal(load_image(result.result), load_image(tmp_path / "cli.png"))
    assert sorted(p.name for p in app.output.root.iterdir()) == ["directions", *_written(app)]


def test_the_model_cache_loads_once_under_concurrency_and_evicts_the_oldest():
    from retouch.methods import Method

    loads = []

    def load(name, **_):
        loads.append(name)
        return object()

    method = Method("fake", "", object, lambda *a, **k: None, load_model=load)
    cache = ModelCache(capacity=2)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(method, "a"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == ["a"] and all(model is got[0] for model in got)
    cache.get(method, "b")
    cache.get(method, "a")  # "a" is now the most recent: "b" goes when "c" arrives
    cache.get(method, "c")
    assert cache.loaded() == ["a", "c"] and loads == ["a", "b", "c"]
    # Jobs on one model take turns (they hook its attention); jobs on another model need not wait.
    with cache.using(method, "a"):
        def take_a_turn():
            with cache.using(method, "a"):
                pass

        waiting = threading.Thread(target=take_a_turn)
        waiting.start()
        waiting.join(timeout=0.5)
        assert waiting.is_alive()
        with cache.using(method, "c"):
            pass
    waiting.join(timeout=5)
    assert not waiting.is_alive()


def test_portrait_in_the_app_is_the_cli_run_on_the_shipped_mcdm(app, scenes, tiny_backbones, tmp_path, capsys):
    from retouch.app.jobs import portrait_directions
    from retouch.methods.portrait import SHIPPED_MODEL
    from retouch.networks.portrait import PortraitModel, PortraitSpec

    shipped = str(SHIPPED_MODEL)
    assert app.portrait_models() == [shipped] and portrait_directions(shipped) == ["hat", "striped"]
    values = dict(edit="hat", num_steps=3, mask_draws=2, seed=1)
    result = run_edit(app, "portrait", shipped, scenes[0], values)
    save_image(scenes[0], tmp_path / "in.png")
    code, _, err = run_cli(["edit", tmp_path / "in.png", "-o", tmp_path / "cli.png", "--method", "portrait",
                            "--edit", "hat", "--num-steps", "3", "--mask-draws", "2", "--seed", "1"], capsys)
    assert code == 0, err  # no --model: the shipped MCDM is --method portrait's default
    assert np.array_equal(load_image(result.result), load_image(tmp_path / "cli.png"))
    with pytest.raises(RetouchError, match="unknown edit 'smile'"):
        run_edit(app, "portrait", shipped, scenes[0], {**values, "edit": "smile"})
    # an operator's own MCDM is offered on the portrait tab only, and a backbone is not an MCDM
    folder = tmp_path / "mcdm"
    PortraitModel.from_backbone(tiny_backbones["tiny-sd"], PortraitSpec(image_embedding=False), None).save(folder)
    offered = App(app.output, app.limits, extra_models=(str(folder),))
    assert str(folder) in offered.portrait_models() and str(folder) not in offered.backbone_models()
    with pytest.raises(RetouchError, match="is not offered here"):
        run_edit(offered, "portrait", "mini", scenes[0], values)


def test_serve_refuses_a_missing_model_before_starting(tmp_path, capsys):
    code, _, err = run_cli(["serve", "--output-dir", tmp_path / "out", "--model", tmp_path / "nothing"], capsys)
    assert code != 0 and "does not exist" in err


def test_the_page_has_a_tab_per_method_and_api_names(app):
    pytest.importorskip("gradio")
    from retouch.app.server import build_blocks

    blocks = build_blocks(app)
    config = blocks.get_config_file()
    tabs = {c["props"].get("label") for c in config["components"] if c["type"] == "tabitem"}
    assert tabs == {"pix2pix-zero / zeroCon", "PIXELS", "portrait (MCDM)", "multitask", "effects"}
    names = {d.get("api_name") for d in config["dependencies"]}
    assert {"pix2pix", "pixels", "portrait", "multitask", "effects", "build_direction", "status"} <= names
    # The pix2pix tab opens on the mini model, with that model's own guidance settings.
    from retouch.methods import get_method, model_method_defaults

    mini = model_method_defaults(get_method("pix2pix-zero"), "mini")
    values = {c["props"].get("elem_id"): c["props"].get("value") for c in config["components"]}
    assert (values["pix2pix-xa-guidance"], values["pix2pix-guidance-scale"], values["pix2pix-local-blend"]) == (
        mini["xa_guidance"], mini["guidance_scale"], mini["local_blend"])


def test_controls_come_from_the_config_fields_and_read_back_typed():
    gr = pytest.importorskip("gradio")
    from retouch.app.forms import ConfigForm, Shown
    from retouch.methods.multitask import MultitaskConfig

    form = ConfigForm(MultitaskConfig, "t", blur=Shown("blur", range=(0, 1, 0.01), value=0),
                      num_steps=Shown("steps", range=(1, 100, 1)), start=Shown("start", choices=["noise", "x"]),
                      seed=Shown("seed"))
    with gr.Blocks():
        blur, steps, start, seed = form.show("blur", "num_steps", "start", "seed")
    assert isinstance(steps, gr.Slider) and steps.value == 50 and steps.info == "DDIM steps"
    assert isinstance(start, gr.Radio) and isinstance(seed, gr.Number) and blur.elem_id == "t-blur"
    assert form.values([0, 3.0, "noise", None]) == dict(blur=None, num_steps=3, start="noise", seed=0)
    assert form.values([0.25, 3, "x", 2.0]) == dict(blur=0.25, num_steps=3, start="x", seed=2)
    with pytest.raises(ValueError, match="no field nothing"):
        ConfigForm(MultitaskConfig, "t", nothing=Shown("nothing"))


def test_uploaded_maps_read_like_the_cli_reads_them(app, tmp_path):
    grey = np.linspace(0, 1, 64, dtype=np.float32)[None].repeat(8, axis=0)
    save_image(grey, tmp_path / "map.png")
    assert np.array_equal(app.read_map(tmp_path / "map.png", "edit map"), load_map(tmp_path / "map.png"))
