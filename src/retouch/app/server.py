"""The Gradio page of ``retouch serve``: a tab per method, a shared queue, results only in the output folder.

:func:`build_blocks` is one small function per tab. A tab's settings are its method's config fields,
made into controls by :class:`~retouch.app.forms.ConfigForm` from the same dataclass metadata as the
CLI's options; its handler reads the uploads into arrays, calls :mod:`retouch.app.jobs` and turns a
RetouchError into ``gr.Error``, the one line shown on the page.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from retouch.app.forms import ConfigForm, Shown
from retouch.app.jobs import (
    MINI, App, Exemplar, Result, map_from_layers, portrait_directions, run_build_direction, run_edit, run_effects,
    run_multitask, run_pixels,
)
from retouch.errors import RetouchError

#: Exemplar slots on the PIXELS tab; a result can be sent back as the source for more (PIXELS iterative).
MAX_EXEMPLARS = 4
#: Requests waiting beyond the running ones; more are refused with "queue full" instead of piling up memory.
QUEUE_SIZE = 32
#: Grey values (with opacity) of the brush: white = full edit, half-transparent white = half, black = keep.
BRUSH_COLOURS = [("#ffffff", 1.0), ("#ffffff", 0.5), ("#808080", 1.0), ("#000000", 1.0)]
CSS = """
/* the mini models work at 64²: show small images enlarged, with crisp pixels */
.pixelated img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
.pixelated canvas { image-rendering: pixelated; }
"""
WORDS, SENTENCE, SAVED = "sentence banks of two words", "one target sentence", "a saved direction"
#: How the tabs show the fields most methods share.
STEPS, SEED = Shown("DDIM steps", range=(1, 100, 1)), Shown("seed")
GUIDANCE = Shown("classifier-free guidance", range=(0, 15, 0.5))


def _upload_class():
    import gradio as gr

    class _Upload(gr.Image):
        """``gr.Image`` that hands the handler the uploaded file unopened, so imageio alone judges it.

        Gradio's own preprocessing opens uploads with Pillow and fails on a non-image with a bare
        traceback; this way the user gets imageio's one-line reason instead.
        """

        is_template = True  # rendered by the frontend's Image component

        def preprocess(self, payload):
            return None if payload is None else payload.path

    return _Upload


@contextmanager
def _user_errors():
    import gradio as gr

    try:
        yield
    except RetouchError as error:
        raise gr.Error(str(error), print_exception=False) from None
    except (MemoryError, RuntimeError) as error:  # torch's out-of-memory errors are RuntimeErrors
        if isinstance(error, RuntimeError) and "out of memory" not in str(error):
            raise
        raise gr.Error("out of memory: try a smaller image, fewer exemplars or fewer steps",
                       print_exception=False) from None


def _report(progress):
    return lambda done, total, description: progress((done, total), desc=description)


def _outputs(before: np.ndarray, result: Result):
    before8 = np.round(np.clip(before, 0, 1) * 255).astype(np.uint8)
    return before8, str(result.result), [str(result.result), str(result.comparison)], result.summary


class _Page:
    """What the tabs share: the app, one job queue across all tabs, the upload, editor and result widgets."""

    def __init__(self, app: App, concurrency: int):
        self.app, self.upload_class = app, _upload_class()
        self.heavy = dict(concurrency_limit=concurrency, concurrency_id="jobs")
        self.jobs = []

    # ---- widgets ----------------------------------------------------------------------------------------
    def upload(self, label: str, elem_id: str, *, height: int = 280, **props):
        return self.upload_class(label=label, type="filepath", sources=["upload"], height=height, elem_id=elem_id,
                                 **props)

    def editor(self, label: str, elem_id: str):
        import gradio as gr

        return gr.ImageEditor(label=label, elem_id=elem_id, type="numpy", image_mode="RGBA", sources=["upload"],
                              layers=False, transforms=(), format="png", height=360, elem_classes="pixelated",
                              brush=gr.Brush(colors=BRUSH_COLOURS, default_color="#ffffff", default_size=6,
                                             color_mode="defaults"),
                              eraser=gr.Eraser(default_size=6))

    def model_picker(self, offered: list[str], label: str, what: str):
        """A model dropdown; with nothing to offer, a line that says how to train ``what`` and offer it."""
        import gradio as gr

        picker = gr.Dropdown(offered, value=offered[0] if offered else None, label=label)
        if not offered:
            gr.Markdown(f"**No {what} model is available.** Train one with `retouch train {what}` and start the "
                        "app with `retouch serve --model FOLDER`.", elem_id=f"{what}-missing")
        return picker

    def results(self, prefix: str) -> list:
        import gradio as gr

        with gr.Row():
            before = gr.Image(label="before", interactive=False, height=280, elem_classes="pixelated",
                              elem_id=f"{prefix}-before")
            after = gr.Image(label="after", type="filepath", interactive=False, height=280,
                             elem_classes="pixelated", elem_id=f"{prefix}-after")
        files = gr.File(label="download the result and the before | after strip", file_count="multiple",
                        interactive=False, height=140, elem_id=f"{prefix}-files")
        summary = gr.Markdown(elem_id=f"{prefix}-summary")
        return [before, after, files, summary]

    # ---- reading what the user gave ------------------------------------------------------------------
    def picture(self, path: str | None, label: str) -> np.ndarray:
        if not path:
            raise RetouchError(f"upload {'an' if label[0] in 'aeiou' else 'a'} {label} first")
        return self.app.read_image(path, label)

    def canvas(self, value, label: str) -> np.ndarray:
        """An editor's uploaded image."""
        background = (value or {}).get("background")
        if background is None:
            raise RetouchError(f"upload an {label} first")
        return self.app.canvas_image(background, label)

    def painted(self, value, upload_path: str | None, label: str) -> np.ndarray | None:
        """An uploaded map, else the one painted on the editor ``value``; None when neither is given."""
        if upload_path:
            return self.app.read_map(upload_path, f"{label} upload")
        return map_from_layers((value or {}).get("layers"))

    # ---- layout and wiring ------------------------------------------------------------------------------
    @contextmanager
    def tab(self, label: str, prefix: str):
        """A tab: its settings (the body) on the left above a Run button, the results on the right."""
        import gradio as gr

        tab = SimpleNamespace(prefix=prefix)
        with gr.Tab(label, id=prefix), gr.Row():
            with gr.Column():
                yield tab
                tab.run = gr.Button("Run", variant="primary", elem_id=f"{prefix}-run")
            with gr.Column() as tab.column:
                tab.outputs = self.results(prefix)

    def job(self, tab, handler, inputs: list) -> None:
        """The tab's Run button calls ``handler(*values, report=...) -> (input picture, Result)`` on the shared
        queue; the API name is the tab's prefix."""
        import gradio as gr

        def run(*values, progress=gr.Progress()):
            with _user_errors():
                return _outputs(*handler(*values, report=_report(progress)))

        self.jobs.append(tab.run.click(run, inputs, tab.outputs, api_name=tab.prefix, **self.heavy))

    def status(self, blocks, status, concurrency: int) -> None:
        """The status line, on load and after every job (so "models in memory" stays true)."""
        app = self.app

        def describe():
            loaded = ", ".join(Path(m).name for m in app.cache.loaded()) or "none yet"
            return (f"Output folder `{app.output.root}` · models in memory: {loaded} · uploads up to "
                    f"{app.limits.max_upload_mb:g} MB and {app.limits.max_side} px a side · {concurrency} job(s) "
                    f"at a time, {QUEUE_SIZE} waiting at most")

        blocks.load(describe, None, status, queue=False, api_name="status")
        for job in self.jobs:
            job.then(describe, None, status, queue=False, api_name=False)


def build_blocks(app: App, *, concurrency: int = 1):
    """The page for ``app``, a tab per method; call ``.queue()`` and ``.launch()`` on it (:func:`serve` does)."""
    import gradio as gr

    page = _Page(app, concurrency)
    with gr.Blocks(title="retouch", analytics_enabled=False) as blocks:
        gr.Markdown("## retouch — diffusion image editing\nUpload an image, choose settings, press **Run**. "
                    "Results are written to the server's output folder and offered for download.")
        status = gr.Markdown(elem_id="status")
        for tab in (_pix2pix_tab, _pixels_tab, _portrait_tab, _multitask_tab, _effects_tab):
            tab(page)
        page.status(blocks, status, concurrency)
    return blocks


def _pix2pix_tab(page: _Page) -> None:
    """pix2pix-zero and zeroCon: a direction from two words' sentence banks, one target sentence or a saved file."""
    import gradio as gr

    from retouch.directions import BANKS
    from retouch.methods import get_method, model_method_defaults
    from retouch.methods.pix2pix_zero import INVERSIONS
    from retouch.methods.zerocon import ZeroConConfig

    app = page.app
    # The tab opens on the mini model, so its controls start at that model's own settings (method_defaults.json).
    mini = model_method_defaults(get_method("pix2pix-zero"), MINI)
    form = ConfigForm(
        ZeroConConfig, "pix2pix",
        bank=Shown("sentence bank", choices=("auto", *BANKS), dropdown=True),
        target_text=Shown("target sentence"),
        directions=Shown("saved direction", choices=app.output.directions(), dropdown=True, scale=3),
        num_steps=STEPS, seed=SEED,
        guidance_scale=Shown(GUIDANCE.label, range=GUIDANCE.range, value=mini.get("guidance_scale")),
        xa_guidance=Shown("cross-attention guidance λ_xa", range=(0, 0.5, 0.01), value=mini.get("xa_guidance")),
        local_blend=Shown("local blend k (not in the paper; 0: off)", range=(0, 0.9, 0.05),
                          value=mini.get("local_blend", 0.0)),
        inversion=Shown("inversion", choices=INVERSIONS),
        lambda_auto_corr=Shown("λ autocorrelation", range=(0, 50, 1)),
        lambda_kl=Shown("λ KL", range=(0, 50, 1)),
        lambda_xa=Shown("zeroCon λ_c (cross-attention)", range=(0, 5, 0.1)),
        lambda_cut=Shown("zeroCon λ_e (PatchNCE)", range=(0, 5, 0.1)))
    with page.tab("pix2pix-zero / zeroCon", "pix2pix") as tab:
        image = page.upload("input image", "pix2pix-input", elem_classes="pixelated")
        with gr.Row():
            method = gr.Radio(["pix2pix-zero", "zerocon"], value="pix2pix-zero", label="method")
            model = gr.Dropdown(app.backbone_models(), value=MINI, label="model")
        caption = gr.Textbox(label="caption of the input", elem_id="pix2pix-caption",
                             info="empty: the mini model's judge captions its own world's scenes")
        mode = gr.Radio([WORDS, SENTENCE, SAVED], value=WORDS, label="edit direction from")
        with gr.Row():
            source = gr.Textbox(label="source word", placeholder="red", elem_id="pix2pix-source")
            target = gr.Textbox(label="target word", placeholder="blue", elem_id="pix2pix-target")
            bank, = form.show("bank")
        form.show("target_text")
        with gr.Row():
            saved, = form.show("directions")
            build = gr.Button("build and save the two words' direction", scale=2)
        with gr.Accordion("guidance and inversion", open=False):
            form.show("num_steps", "guidance_scale", "xa_guidance", "local_blend", "inversion", "lambda_auto_corr",
                      "lambda_kl", "lambda_xa", "lambda_cut", "seed")

    def edit(path, method_name, model_name, caption, mode, source, target, *settings, report):
        picture = page.picture(path, "input image")
        values = form.values(settings)
        values = {name: value for name, value in values.items() if name in get_method(method_name).option_names()}
        direction = {WORDS: "bank", SENTENCE: "target_text", SAVED: "directions"}
        for other in set(direction.values()) - {direction[mode]}:
            values.pop(other)
        if mode == WORDS:
            values["edit"] = f"{(source or '').strip()}->{(target or '').strip()}"
        elif mode == SENTENCE:
            values["target_text"] = values["target_text"].strip()
        else:
            values["directions"] = str(app.output.direction_path(values["directions"]))
        if (caption or "").strip():
            values["source_text"] = caption.strip()
        elif model_name == MINI:
            values["captioner"] = MINI
        else:
            raise RetouchError("give the caption of the input: only the mini model captions images itself")
        return picture, run_edit(app, method_name, model_name, picture, values, report=report)

    page.job(tab, edit, [image, method, model, caption, mode, source, target, *form.inputs])

    def build_direction(model_name, source, target, bank_name):
        with _user_errors():
            name = run_build_direction(app, model_name, source, target, bank_name)
            return gr.update(choices=app.output.directions(), value=name), SAVED

    build.click(build_direction, [model, source, target, bank], [saved, mode], api_name="build_direction",
                **page.heavy)


def _pixels_tab(page: _Page) -> None:
    """PIXELS: exemplars with painted (or uploaded) edit maps; a result can come back as the source."""
    import gradio as gr

    from retouch.methods.pixels import THRESHOLDS, PixelsConfig

    app = page.app
    form = ConfigForm(
        PixelsConfig, "pixels",
        threshold=Shown("threshold function τ", choices=list(THRESHOLDS), dropdown=True),
        strength=Shown("strength", range=(0.05, 1, 0.05)), num_steps=STEPS, guidance_scale=GUIDANCE, seed=SEED,
        prompt=Shown("prompt"), iterative=Shown("iterative"),
        map_blur=Shown("soften the maps (blur σ, pixels)", range=(0, 16, 0.5)))
    with page.tab("PIXELS", "pixels") as tab:
        image = page.upload("source image", "pixels-source", elem_classes="pixelated")
        model = gr.Dropdown(app.backbone_models(), value=MINI, label="model")
        gr.Markdown("Each exemplar: upload it, then paint its **edit map** on it — white = take the exemplar, "
                    "grey or half-transparent = partly, unpainted or black = keep the source. Or upload a grey "
                    "map instead.")
        slots, groups = [], []
        for k in range(1, MAX_EXEMPLARS + 1):
            with gr.Group(visible=k == 1) as group:
                slots += [page.editor(f"exemplar {k}: upload, then paint its edit map", f"pixels-exemplar{k}"),
                          page.upload(f"or upload exemplar {k}'s edit map", f"pixels-map{k}", height=140)]
            groups.append(group)
        count = gr.State(1)
        add = gr.Button(f"add an exemplar (up to {MAX_EXEMPLARS})")
        with gr.Row():
            form.show("threshold", "strength")
        with gr.Accordion("more settings", open=False):
            form.show("num_steps", "guidance_scale", "prompt", "map_blur", "iterative", "seed")
    with tab.column:
        again = gr.Button("use the result as the source (add more exemplars)")

    def add_exemplar(shown):
        shown = min(shown + 1, MAX_EXEMPLARS)
        return [shown, *(gr.update(visible=k < shown) for k in range(MAX_EXEMPLARS))]

    add.click(add_exemplar, count, [count, *groups], queue=False, api_name=False)
    again.click(lambda path: path, tab.outputs[1], image, queue=False, api_name=False)

    def edit(path, model_name, *settings, report):
        picture = page.picture(path, "source image")
        settings, slot_values = settings[:len(form.inputs)], settings[len(form.inputs):]
        exemplars = []
        for k, (value, map_path) in enumerate(zip(slot_values[::2], slot_values[1::2]), start=1):
            background = (value or {}).get("background")
            if background is None and not map_path:
                continue
            if background is None:
                raise RetouchError(f"exemplar {k} has a map but no image: upload the exemplar too")
            edit_map = page.painted(value, map_path, f"exemplar {k}'s edit map")
            if edit_map is None:
                raise RetouchError(f"exemplar {k} has no edit map: paint where it should go, or upload a map")
            exemplars.append(Exemplar(app.canvas_image(background, f"exemplar {k}"), edit_map))
        return picture, run_pixels(app, model_name, picture, exemplars, form.values(settings), report=report)

    page.job(tab, edit, [image, model, *form.inputs, *slots])


def _portrait_tab(page: _Page) -> None:
    """The MCDM: an edit direction its model was trained on, with the three guidance scales and DiffEdit's mask."""
    import gradio as gr

    from retouch.methods.portrait import PortraitConfig

    app = page.app
    offered = app.portrait_models()
    form = ConfigForm(
        PortraitConfig, "portrait",
        edit=Shown("edit", choices=portrait_directions(offered[0]) if offered else [], dropdown=True),
        spatial_scale=Shown("guidance of the input (c_s)", range=(0, 15, 0.5)),
        image_scale=Shown("guidance of the image embedding (c_im)", range=(0, 10, 0.5)),
        text_scale=Shown("guidance of the edit prompt (c_p)", range=(0, 20, 0.5)),
        mask_guidance=Shown("mask guidance (Eq. 3)"), num_steps=STEPS, seed=SEED,
        mask_strength=Shown("mask noise level", range=(0.05, 0.95, 0.05)),
        mask_draws=Shown("mask noise draws", range=(1, 20, 1)),
        mask_threshold=Shown("mask threshold", range=(0, 1, 0.05)))
    with page.tab("portrait (MCDM)", "portrait") as tab:
        image = page.upload("input image", "portrait-input", elem_classes="pixelated")
        model = page.model_picker(offered, "MCDM model", "portrait")
        edit_choice, *_ = form.show("edit", "spatial_scale", "image_scale", "text_scale", "mask_guidance")
        with gr.Accordion("more settings", open=False):
            form.show("num_steps", "mask_strength", "mask_draws", "mask_threshold", "seed")

    def directions(model_name):
        edits = portrait_directions(model_name or "")
        return gr.update(choices=edits, value=edits[0] if edits else None)

    model.change(directions, model, edit_choice, queue=False, api_name=False)

    def edit(path, model_name, *settings, report):
        picture = page.picture(path, "input image")
        return picture, run_edit(app, "portrait", model_name or "", picture, form.values(settings), report=report)

    page.job(tab, edit, [image, model, *form.inputs])


def _compositing(page: _Page, form: ConfigForm) -> list:
    """The controls multitask and effects share: the input with its painted hole, a hole upload, a colour
    reference, blur and grain (fields of ``form``) and sharpening; returns the non-form ones."""
    import gradio as gr

    prefix = form.prefix
    image = page.editor("input image: upload, then paint the inpainting hole (white = fill in)", f"{prefix}-input")
    with gr.Row():
        mask = page.upload("or upload a hole mask (white = hole)", f"{prefix}-mask", height=140)
        reference = page.upload("colour reference (turns colour transfer on)", f"{prefix}-reference", height=140)
    form.show("blur", "grain")
    with gr.Row():
        amount = gr.Slider(0, 3, value=0, step=0.1, label="sharpen amount λ (0 = off)",
                           info="unsharp masking, multitask paper Table 1: λ in [1, 3]")
        threshold = gr.Slider(0, 0.1, value=0.02, step=0.005, label="sharpen threshold μ",
                              info="only where the detail exceeds μ; Table 1: [0, 0.1]")
    return [image, mask, reference, amount, threshold]


def _compositing_inputs(page: _Page, image, mask_path, reference_path) -> tuple:
    """(input picture, hole map or None, colour reference or None) from the compositing controls."""
    picture = page.canvas(image, "input image")
    reference = page.app.read_image(reference_path, "colour reference") if reference_path else None
    return picture, page.painted(image, mask_path, "hole mask"), reference


_BLUR_GRAIN = dict(blur=Shown("motion blur β (0 = off)", range=(0, 1, 0.01), value=0),
                   grain=Shown("film grain σ (0 = off)", range=(0, 0.1, 0.005), value=0))


def _multitask_tab(page: _Page) -> None:
    """The multitask compositing model: the effects' sliders as its editing vector."""
    import gradio as gr

    from retouch.methods import get_method, model_method_defaults
    from retouch.methods.multitask import SHIPPED_MODEL, MultitaskConfig

    app = page.app
    # The η slider starts at the shipped model's own (method_defaults.json), as the CLI does.
    shipped = model_method_defaults(get_method("multitask"), str(SHIPPED_MODEL))
    form = ConfigForm(MultitaskConfig, "multitask", **_BLUR_GRAIN, num_steps=STEPS,
                      start=Shown("start from", choices=["noise", "ddim-inversion"]),
                      eta=Shown("sampler η (0 = DDIM)", range=(0, 1, 0.1), value=shipped.get("eta")), seed=SEED)
    with page.tab("multitask", "multitask") as tab:
        model = page.model_picker(app.multitask_models(), "multitask model", "multitask")
        controls = _compositing(page, form)
        with gr.Row():
            form.show("num_steps", "start", "eta", "seed")

    def edit(model_name, image, mask_path, reference_path, amount, threshold, *settings, report):
        picture, hole, reference = _compositing_inputs(page, image, mask_path, reference_path)
        values = {**form.values(settings), "sharpen": f"{amount},{threshold}" if amount else ""}
        return picture, run_multitask(app, model_name or "", picture, values, reference=reference, hole=hole,
                                      report=report)

    page.job(tab, edit, [model, *controls, *form.inputs])


def _effects_tab(page: _Page) -> None:
    """``retouch effects``: the compositing operators without a model."""
    import gradio as gr

    from retouch.effects import EffectsRecipe

    form = ConfigForm(EffectsRecipe, "effects", **_BLUR_GRAIN, seed=SEED)
    with page.tab("effects", "effects") as tab:
        controls = _compositing(page, form)
        with gr.Row():
            angle = gr.Slider(-180, 180, value=0, step=1, label="blur direction (degrees)")
            random = gr.Checkbox(True, label="random direction from the seed")
        with gr.Row():
            samples = gr.Slider(1, 800, value=800, step=1, label="grain Monte-Carlo samples",
                                info="Newson et al.: 800; fewer is faster and noisier")
            form.show("seed")
        free = gr.Checkbox(False, label="add a random free-form hole from the seed",
                           info="Yu et al. 2019's brush strokes, the multitask paper's inpainting masks")

    def edit(image, mask_path, reference_path, amount, threshold, angle, random, samples, free, *settings, report):
        picture, hole, reference = _compositing_inputs(page, image, mask_path, reference_path)
        return picture, run_effects(page.app, picture, **form.values(settings), blur_angle=None if random else angle,
                                    grain_samples=int(samples), reference=reference, hole=hole, random_hole=free,
                                    sharpen=(amount, threshold) if amount else None, report=report)

    page.job(tab, edit, [*controls, angle, random, samples, free, *form.inputs])


def serve(output_dir: str | Path, *, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float = 10.0,
          max_side: int = 1024, concurrency: int = 1, models: tuple[str, ...] = ()) -> None:
    """Start the app and block until interrupted. Nothing reaches the network: analytics are off, fonts
    are Gradio's bundled ones, no share link, no server-side rendering process, models load offline."""
    from retouch.app.jobs import Limits, OutputFolder

    output = OutputFolder(output_dir)
    for model in models:
        if not Path(model).exists():
            raise RetouchError(f"--model '{model}' does not exist; give a diffusers folder, a .safetensors file, "
                               "a multitask or a portrait model folder")
    # Before gradio is imported: its analytics and its upload cache are read from the environment, and
    # uploads then live under the output folder like everything else the app writes.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_TEMP_DIR"] = str(output.root / ".gradio")
    app = App(output, Limits(max_upload_mb=max_upload_mb, max_side=max_side), tuple(models))
    blocks = build_blocks(app, concurrency=concurrency)
    blocks.queue(max_size=QUEUE_SIZE, default_concurrency_limit=concurrency, api_open=False)
    blocks.launch(server_name=host, server_port=port, max_file_size=int(max_upload_mb * 1024 * 1024),
                  allowed_paths=[str(output.root)], share=False, inbrowser=False, ssr_mode=False, mcp_server=False,
                  pwa=False, show_error=True, css=CSS, quiet=False)
