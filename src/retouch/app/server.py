"""The Gradio page of ``retouch serve``: a tab per method, a shared queue, results only in the output folder.

Widgets map one-to-one onto the methods' config fields (defaults and help come from the dataclasses);
each handler turns widget values into a call of :mod:`retouch.app.jobs` and a RetouchError into
``gr.Error``, the one line shown on the page.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from retouch.app.jobs import MINI, App, Exemplar, Result, map_from_layers, portrait_directions, run_build_direction
from retouch.app.jobs import run_edit, run_effects, run_multitask, run_pixels
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


def _help(config_class, name: str) -> tuple[object, str]:
    """(default, help text) of a config field, so the page shows the paper's defaults and citations."""
    field = {f.name: f for f in dataclasses.fields(config_class)}[name]
    return field.default, field.metadata.get("help", "")


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


def build_blocks(app: App, *, concurrency: int = 1):
    """The page for ``app``; call ``.queue()`` and ``.launch()`` on it (:func:`serve` does)."""
    import gradio as gr

    from retouch.effects import EffectsRecipe
    from retouch.methods.multitask import MultitaskConfig
    from retouch.methods.pix2pix_zero import Pix2PixZeroConfig
    from retouch.methods.pixels import THRESHOLDS, PixelsConfig
    from retouch.methods.portrait import PortraitConfig
    from retouch.methods.zerocon import ZeroConConfig

    upload = _upload_class()
    heavy = dict(concurrency_limit=concurrency, concurrency_id="jobs")  # one queue across all tabs
    jobs = []

    def slider(config_class, name, low, high, step, label, value=None, elem_id=None):
        default, info = _help(config_class, name)
        return gr.Slider(low, high, value=default if value is None else value, step=step, label=label, info=info,
                         elem_id=elem_id)

    def editor(label, elem_id):
        return gr.ImageEditor(label=label, elem_id=elem_id, type="numpy", image_mode="RGBA", sources=["upload"],
                              layers=False, transforms=(), format="png", height=360, elem_classes="pixelated",
                              brush=gr.Brush(colors=BRUSH_COLOURS, default_color="#ffffff", default_size=6,
                                             color_mode="defaults"),
                              eraser=gr.Eraser(default_size=6))

    def results(prefix):
        with gr.Row():
            before = gr.Image(label="before", interactive=False, height=280, elem_classes="pixelated",
                              elem_id=f"{prefix}-before")
            after = gr.Image(label="after", type="filepath", interactive=False, height=280,
                             elem_classes="pixelated", elem_id=f"{prefix}-after")
        files = gr.File(label="download the result and the before | after strip", file_count="multiple",
                        interactive=False, height=140, elem_id=f"{prefix}-files")
        summary = gr.Markdown(elem_id=f"{prefix}-summary")
        return [before, after, files, summary]

    def read_hole(value, upload_path, label):
        if upload_path:
            return app.read_map(upload_path, f"{label} upload")
        return map_from_layers((value or {}).get("layers"))

    with gr.Blocks(title="retouch", analytics_enabled=False) as blocks:
        gr.Markdown("## retouch — diffusion image editing\nUpload an image, choose settings, press **Run**. "
                    "Results are written to the server's output folder and offered for download.")
        status = gr.Markdown(elem_id="status")

        # ---- pix2pix-zero / zeroCon ----------------------------------------------------------------
        with gr.Tab("pix2pix-zero / zeroCon", id="pix2pix"):
            with gr.Row():
                with gr.Column():
                    p_image = upload(label="input image", type="filepath", sources=["upload"], height=280,
                                     elem_classes="pixelated", elem_id="pix2pix-input")
                    with gr.Row():
                        p_method = gr.Radio(["pix2pix-zero", "zerocon"], value="pix2pix-zero", label="method")
                        p_model = gr.Dropdown(app.backbone_models(), value=MINI, label="model")
                    p_caption = gr.Textbox(label="caption of the input", elem_id="pix2pix-caption",
                                           info="empty: the mini model's judge captions its own world's scenes")
                    p_mode = gr.Radio([WORDS, SENTENCE, SAVED], value=WORDS, label="edit direction from")
                    with gr.Row():
                        p_source = gr.Textbox(label="source word", placeholder="red", elem_id="pix2pix-source")
                        p_target = gr.Textbox(label="target word", placeholder="blue", elem_id="pix2pix-target")
                        p_bank = gr.Dropdown(["auto", "templates", "world"], value="auto", label="sentence bank",
                                             info="auto: mini-world captions for mini-world words on the mini "
                                                  "model, else templates")
                    p_sentence = gr.Textbox(label="target sentence",
                                            info="the caption as it should read after the edit; the direction is "
                                                 "the difference of the two sentences' embeddings")
                    with gr.Row():
                        p_saved = gr.Dropdown(app.output.directions(), label="saved direction", scale=3)
                        p_build = gr.Button("build and save the two words' direction", scale=2)
                    with gr.Accordion("guidance and inversion", open=False):
                        p_steps = slider(Pix2PixZeroConfig, "num_steps", 1, 100, 1, "DDIM steps",
                                         elem_id="pix2pix-steps")
                        p_cfg = slider(Pix2PixZeroConfig, "guidance_scale", 0, 15, 0.5, "classifier-free guidance")
                        p_xa = slider(Pix2PixZeroConfig, "xa_guidance", 0, 0.5, 0.01, "cross-attention guidance λ_xa")
                        p_inversion = gr.Radio(["regularized", "ddim"], value="regularized", label="inversion",
                                               info=_help(Pix2PixZeroConfig, "inversion")[1])
                        p_lac = slider(Pix2PixZeroConfig, "lambda_auto_corr", 0, 50, 1, "λ autocorrelation")
                        p_lkl = slider(Pix2PixZeroConfig, "lambda_kl", 0, 50, 1, "λ KL")
                        p_lxa = slider(ZeroConConfig, "lambda_xa", 0, 5, 0.1, "zeroCon λ_c (cross-attention)")
                        p_lcut = slider(ZeroConConfig, "lambda_cut", 0, 5, 0.1, "zeroCon λ_e (PatchNCE)")
                        p_seed = gr.Number(0, label="seed", precision=0)
                    p_run = gr.Button("Run", variant="primary", elem_id="pix2pix-run")
                with gr.Column():
                    p_out = results("pix2pix")

        def pix2pix(image, method, model, caption, mode, source, target, bank, sentence, saved, steps, cfg, xa,
                    inversion, lac, lkl, lxa, lcut, seed, progress=gr.Progress()):
            with _user_errors():
                if not image:
                    raise RetouchError("upload an input image first")
                picture = app.read_image(image, "input image")
                values = dict(num_steps=int(steps), guidance_scale=cfg, xa_guidance=xa, inversion=inversion,
                              lambda_auto_corr=lac, lambda_kl=lkl, seed=int(seed or 0))
                if method == "zerocon":
                    values.update(lambda_xa=lxa, lambda_cut=lcut)
                if (caption or "").strip():
                    values["source_text"] = caption.strip()
                elif model == MINI:
                    values["captioner"] = MINI
                else:
                    raise RetouchError("give the caption of the input: only the mini model captions images itself")
                if mode == WORDS:
                    values.update(edit=f"{(source or '').strip()}->{(target or '').strip()}", bank=bank)
                elif mode == SENTENCE:
                    values["target_text"] = (sentence or "").strip()
                else:
                    values["directions"] = str(app.output.direction_path(saved or ""))
                return _outputs(picture, run_edit(app, method, model, picture, values, report=_report(progress)))

        p_inputs = [p_image, p_method, p_model, p_caption, p_mode, p_source, p_target, p_bank, p_sentence, p_saved,
                    p_steps, p_cfg, p_xa, p_inversion, p_lac, p_lkl, p_lxa, p_lcut, p_seed]
        jobs.append(p_run.click(pix2pix, p_inputs, p_out, api_name="pix2pix", **heavy))

        def build(model, source, target, bank):
            with _user_errors():
                name = run_build_direction(app, model, source, target, bank)
                return gr.update(choices=app.output.directions(), value=name), SAVED

        p_build.click(build, [p_model, p_source, p_target, p_bank], [p_saved, p_mode], api_name="build_direction",
                      **heavy)

        # ---- PIXELS ------------------------------------------------------------------------------------
        with gr.Tab("PIXELS", id="pixels"):
            with gr.Row():
                with gr.Column():
                    x_image = upload(label="source image", type="filepath", sources=["upload"], height=280,
                                     elem_classes="pixelated", elem_id="pixels-source")
                    x_model = gr.Dropdown(app.backbone_models(), value=MINI, label="model")
                    gr.Markdown("Each exemplar: upload it, then paint its **edit map** on it — white = take the "
                                "exemplar, grey or half-transparent = partly, unpainted or black = keep the "
                                "source. Or upload a grey map instead.")
                    slots, groups = [], []
                    for k in range(MAX_EXEMPLARS):
                        with gr.Group(visible=k == 0) as group:
                            slot_editor = editor(f"exemplar {k + 1}: upload, then paint its edit map",
                                                 f"pixels-exemplar{k + 1}")
                            slot_map = upload(label=f"or upload exemplar {k + 1}'s edit map", type="filepath",
                                              sources=["upload"], height=140, elem_id=f"pixels-map{k + 1}")
                        slots += [slot_editor, slot_map]
                        groups.append(group)
                    x_count = gr.State(1)
                    x_add = gr.Button(f"add an exemplar (up to {MAX_EXEMPLARS})")
                    with gr.Row():
                        x_threshold = gr.Dropdown(list(THRESHOLDS), value="linear", label="threshold function τ",
                                                  info=_help(PixelsConfig, "threshold")[1])
                        x_strength = slider(PixelsConfig, "strength", 0.05, 1, 0.05, "strength")
                    with gr.Accordion("more settings", open=False):
                        x_steps = slider(PixelsConfig, "num_steps", 1, 100, 1, "DDIM steps", elem_id="pixels-steps")
                        x_cfg = slider(PixelsConfig, "guidance_scale", 0, 15, 0.5, "classifier-free guidance")
                        x_prompt = gr.Textbox(label="prompt", info=_help(PixelsConfig, "prompt")[1])
                        x_blur = slider(PixelsConfig, "map_blur", 0, 16, 0.5, "soften the maps (blur σ, pixels)")
                        x_iterative = gr.Checkbox(False, label="iterative", info=_help(PixelsConfig, "iterative")[1])
                        x_seed = gr.Number(0, label="seed", precision=0)
                    x_run = gr.Button("Run", variant="primary", elem_id="pixels-run")
                with gr.Column():
                    x_out = results("pixels")
                    x_again = gr.Button("use the result as the source (add more exemplars)")

        def add_exemplar(count):
            count = min(count + 1, MAX_EXEMPLARS)
            return [count, *(gr.update(visible=k < count) for k in range(MAX_EXEMPLARS))]

        x_add.click(add_exemplar, x_count, [x_count, *groups], queue=False, api_name=False)
        x_again.click(lambda path: path, x_out[1], x_image, queue=False, api_name=False)

        def pixels(image, model, threshold, strength, steps, cfg, prompt, blur, iterative, seed, *slot_values,
                   progress=gr.Progress()):
            with _user_errors():
                if not image:
                    raise RetouchError("upload a source image first")
                picture = app.read_image(image, "source image")
                exemplars = []
                for k in range(MAX_EXEMPLARS):
                    value, map_path = slot_values[2 * k], slot_values[2 * k + 1]
                    background = (value or {}).get("background")
                    if background is None and not map_path:
                        continue
                    if background is None:
                        raise RetouchError(f"exemplar {k + 1} has a map but no image: upload the exemplar too")
                    edit_map = read_hole(value, map_path, f"exemplar {k + 1}'s edit map")
                    if edit_map is None:
                        raise RetouchError(f"exemplar {k + 1} has no edit map: paint where it should go, or "
                                           "upload a map")
                    exemplars.append(Exemplar(app.canvas_image(background, f"exemplar {k + 1}"), edit_map))
                values = dict(threshold=threshold, strength=strength, num_steps=int(steps), guidance_scale=cfg,
                              prompt=prompt or "", map_blur=blur, iterative=iterative, seed=int(seed or 0))
                result = run_pixels(app, model, picture, exemplars, values, report=_report(progress))
                return _outputs(picture, result)

        x_inputs = [x_image, x_model, x_threshold, x_strength, x_steps, x_cfg, x_prompt, x_blur, x_iterative, x_seed,
                    *slots]
        jobs.append(x_run.click(pixels, x_inputs, x_out, api_name="pixels", **heavy))

        # ---- portrait (MCDM) ----------------------------------------------------------------------------
        with gr.Tab("portrait (MCDM)", id="portrait"):
            with gr.Row():
                with gr.Column():
                    f_image = upload(label="input image", type="filepath", sources=["upload"], height=280,
                                     elem_classes="pixelated", elem_id="portrait-input")
                    offered = app.portrait_models()
                    f_model = gr.Dropdown(offered, value=offered[0] if offered else None, label="MCDM model")
                    if not offered:
                        gr.Markdown("**No portrait model is available.** Train one with `retouch train portrait` "
                                    "and start the app with `retouch serve --model FOLDER`.",
                                    elem_id="portrait-missing")
                    edits = portrait_directions(offered[0]) if offered else []
                    f_edit = gr.Dropdown(edits, value=edits[0] if edits else None, label="edit",
                                         info=_help(PortraitConfig, "edit")[1], elem_id="portrait-edit")
                    f_spatial = slider(PortraitConfig, "spatial_scale", 0, 15, 0.5, "guidance of the input (c_s)")
                    f_image_scale = slider(PortraitConfig, "image_scale", 0, 10, 0.5,
                                           "guidance of the image embedding (c_im)")
                    f_text = slider(PortraitConfig, "text_scale", 0, 20, 0.5, "guidance of the edit prompt (c_p)")
                    f_mask = gr.Checkbox(True, label="mask guidance (Eq. 3)", info=_help(PortraitConfig,
                                                                                         "mask_guidance")[1])
                    with gr.Accordion("more settings", open=False):
                        f_steps = slider(PortraitConfig, "num_steps", 1, 100, 1, "DDIM steps", elem_id="portrait-steps")
                        f_strength = slider(PortraitConfig, "mask_strength", 0.05, 0.95, 0.05, "mask noise level")
                        f_draws = slider(PortraitConfig, "mask_draws", 1, 20, 1, "mask noise draws")
                        f_threshold = slider(PortraitConfig, "mask_threshold", 0, 1, 0.05, "mask threshold")
                        f_seed = gr.Number(0, label="seed", precision=0)
                    f_run = gr.Button("Run", variant="primary", elem_id="portrait-run")
                with gr.Column():
                    f_out = results("portrait")

        f_model.change(lambda model: gr.update(choices=portrait_directions(model or ""),
                                               value=(portrait_directions(model or "") or [None])[0]),
                       f_model, f_edit, queue=False, api_name=False)

        def portrait(image, model, edit, spatial, image_scale, text, mask, steps, strength, draws, threshold, seed,
                     progress=gr.Progress()):
            with _user_errors():
                if not image:
                    raise RetouchError("upload an input image first")
                picture = app.read_image(image, "input image")
                values = dict(edit=edit or "", spatial_scale=spatial, image_scale=image_scale, text_scale=text,
                              mask_guidance=bool(mask), num_steps=int(steps), mask_strength=strength,
                              mask_draws=int(draws), mask_threshold=threshold, seed=int(seed or 0))
                return _outputs(picture, run_edit(app, "portrait", model or "", picture, values,
                                                  report=_report(progress)))

        jobs.append(f_run.click(portrait, [f_image, f_model, f_edit, f_spatial, f_image_scale, f_text, f_mask, f_steps,
                                           f_strength, f_draws, f_threshold, f_seed], f_out, api_name="portrait",
                                **heavy))

        # ---- multitask and effects share the compositing controls --------------------------------------
        def compositing_controls(prefix, config_class):
            image = editor("input image: upload, then paint the inpainting hole (white = fill in)", f"{prefix}-input")
            elem = dict(type="filepath", sources=["upload"], height=140)
            with gr.Row():
                mask = upload(label="or upload a hole mask (white = hole)", elem_id=f"{prefix}-mask", **elem)
                reference = upload(label="colour reference (turns colour transfer on)",
                                   elem_id=f"{prefix}-reference", **elem)
            blur = slider(config_class, "blur", 0, 1, 0.01, "motion blur β (0 = off)", value=0,
                          elem_id=f"{prefix}-blur")
            grain = slider(config_class, "grain", 0, 0.1, 0.005, "film grain σ (0 = off)", value=0,
                           elem_id=f"{prefix}-grain")
            with gr.Row():
                amount = gr.Slider(0, 3, value=0, step=0.1, label="sharpen amount λ (0 = off)",
                                   info="unsharp masking, multitask paper Table 1: λ in [1, 3]")
                threshold = gr.Slider(0, 0.1, value=0.02, step=0.005, label="sharpen threshold μ",
                                      info="only where the detail exceeds μ; Table 1: [0, 0.1]")
            return image, mask, reference, blur, grain, amount, threshold

        # ---- multitask ---------------------------------------------------------------------------------
        with gr.Tab("multitask", id="multitask"):
            with gr.Row():
                with gr.Column():
                    offered = app.multitask_models()
                    m_model = gr.Dropdown(offered, value=offered[0] if offered else None, label="multitask model")
                    if not offered:
                        gr.Markdown("**No multitask model is available yet.** Train one with `retouch train "
                                    "multitask` and start the app with `retouch serve --model FOLDER`.",
                                    elem_id="multitask-missing")
                    m_controls = compositing_controls("multitask", MultitaskConfig)
                    with gr.Row():
                        m_steps = slider(MultitaskConfig, "num_steps", 1, 100, 1, "DDIM steps")
                        m_start = gr.Radio(["noise", "ddim-inversion"], value="noise", label="start from",
                                           info=_help(MultitaskConfig, "start")[1])
                        m_seed = gr.Number(0, label="seed", precision=0)
                    m_run = gr.Button("Run", variant="primary", elem_id="multitask-run")
                with gr.Column():
                    m_out = results("multitask")

        def multitask(model, value, mask_path, reference, blur, grain, amount, threshold, steps, start, seed,
                      progress=gr.Progress()):
            with _user_errors():
                picture = _editor_image(app, value, "input image")
                values = dict(blur=blur or None, grain=grain or None, sharpen=f"{amount},{threshold}" if amount else "",
                              num_steps=int(steps), start=start, seed=int(seed or 0))
                hole = read_hole(value, mask_path, "hole mask")
                result = run_multitask(app, model or "", picture, values, reference=reference, hole=hole,
                                       report=_report(progress))
                return _outputs(picture, result)

        jobs.append(m_run.click(multitask, [m_model, *m_controls, m_steps, m_start, m_seed], m_out,
                                api_name="multitask", **heavy))

        # ---- effects -----------------------------------------------------------------------------------
        with gr.Tab("effects", id="effects"):
            with gr.Row():
                with gr.Column():
                    e_controls = compositing_controls("effects", EffectsRecipe)
                    with gr.Row():
                        e_angle = gr.Slider(-180, 180, value=0, step=1, label="blur direction (degrees)")
                        e_random = gr.Checkbox(True, label="random direction from the seed")
                    with gr.Row():
                        e_samples = gr.Slider(1, 800, value=800, step=1, label="grain Monte-Carlo samples",
                                              info="Newson et al.: 800; fewer is faster and noisier")
                        e_seed = gr.Number(0, label="seed", precision=0)
                    e_free = gr.Checkbox(False, label="add a random free-form hole from the seed",
                                         info="Yu et al. 2019's brush strokes, the multitask paper's inpainting masks")
                    e_run = gr.Button("Run", variant="primary", elem_id="effects-run")
                with gr.Column():
                    e_out = results("effects")

        def effects(value, mask_path, reference, blur, grain, amount, threshold, angle, random, samples, seed,
                    free, progress=gr.Progress()):
            with _user_errors():
                picture = _editor_image(app, value, "input image")
                result = run_effects(app, picture, blur=blur or None, blur_angle=None if random else angle,
                                     grain=grain or None, grain_samples=int(samples), reference=reference,
                                     hole=read_hole(value, mask_path, "hole mask"), random_hole=free,
                                     sharpen=(amount, threshold) if amount else None, seed=int(seed or 0),
                                     report=_report(progress))
                return _outputs(picture, result)

        jobs.append(e_run.click(effects, [*e_controls, e_angle, e_random, e_samples, e_seed, e_free], e_out,
                                api_name="effects", **heavy))

        def describe():
            loaded = ", ".join(Path(m).name for m in app.cache.loaded()) or "none yet"
            return (f"Output folder `{app.output.root}` · models in memory: {loaded} · uploads up to "
                    f"{app.limits.max_upload_mb:g} MB and {app.limits.max_side} px a side · {concurrency} job(s) "
                    f"at a time, {QUEUE_SIZE} waiting at most")

        blocks.load(describe, None, status, queue=False, api_name="status")
        for job in jobs:  # after each job, so "models in memory" stays true
            job.then(describe, None, status, queue=False, api_name=False)
    return blocks


def _editor_image(app: App, value, label: str) -> np.ndarray:
    background = (value or {}).get("background")
    if background is None:
        raise RetouchError(f"upload an {label} first")
    return app.canvas_image(background, label)


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
