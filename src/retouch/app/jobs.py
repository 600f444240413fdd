"""What the web app runs, without any UI: limits, the model cache, the output folder, one function per tab.

The Gradio layer (:mod:`retouch.app.server`) only turns widget values into these functions' arguments
and :class:`~retouch.errors.RetouchError` into a message on the page. Everything here goes through the
same method registry (:func:`retouch.methods.edit_image`), image I/O and effects as the CLI, so the two
cannot drift apart; ``tests/test_app.py`` calls these functions directly. Images stay in memory: a
method's extra inputs (PIXELS' exemplars and maps, multitask's reference and hole) reach it through a
``prepare`` hook that reads them as the CLI's hook reads the same images saved as 8-bit files.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from retouch.errors import RetouchError, check_range
from retouch.imageio import as_8bit, check_image_size, load_image, load_map, map_from_array, save_image, side_by_side

MINI = "mini"
MB = 1024 * 1024
# Rec. 601 luma, as imageio.load_map reads an uploaded map, so painted and uploaded maps agree.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

#: ``report(done, total, description)``: how a job tells the page how far it is.
Report = Callable[[int, int | None, str], None]


def _silent(done: int, total: int | None, description: str) -> None:
    pass


@dataclass(frozen=True)
class Limits:
    """Upload limits: the file size and the longest side of any image (pixels = side², imageio's check)."""

    max_upload_mb: float = 10.0
    max_side: int = 1024

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def max_pixels(self) -> int:
        return self.max_side * self.max_side


class ModelCache:
    """Loaded models keyed by loader, model and dtype; at most ``capacity`` stay in memory (least recent goes).

    One lock around look-up and load: two requests for a model not yet loaded load it once, and a
    second model never loads while another is loading (two loads at once could exceed memory).
    """

    def __init__(self, capacity: int = 2, *, dtype: str = "float32", device: str = "auto"):
        self.capacity, self.dtype, self.device = capacity, dtype, device
        self._models: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._in_use: dict = {}

    def get(self, method, model: str):
        import torch

        from retouch.methods import load_method_model

        key = (method.load_model, model, self.dtype)
        with self._lock:
            if key not in self._models:
                # The app never downloads: repo ids resolve from the local cache only.
                self._models[key] = load_method_model(method, model, device=self.device,
                                                      dtype=getattr(torch, self.dtype), offline=True)
                self._in_use.setdefault(key, threading.Lock())
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
            self._models.move_to_end(key)
            return self._models[key]

    @contextmanager
    def using(self, method, model: str):
        """The model, held for one job: methods hook the shared U-Net's attention, so two jobs on one model
        must not overlap (``--concurrency`` above 1 overlaps jobs on different models and the effects)."""
        loaded = self.get(method, model)
        with self._in_use[(method.load_model, model, self.dtype)]:
            yield loaded

    def loaded(self) -> list[str]:
        with self._lock:
            return [model for _, model, _ in self._models]


class OutputFolder:
    """The only folder the app writes to: results, comparison strips and built directions (Gradio's upload
    cache lives under it too, see :func:`retouch.app.server.serve`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.directions_dir = self.root / "directions"
        try:
            self.directions_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RetouchError(f"cannot use output folder '{root}': {error.strerror or error}") from None

    def save_result(self, stem: str, before: np.ndarray, after: np.ndarray) -> tuple[Path, Path]:
        """Write ``after`` and a before | after strip atomically under a fresh name; returns both paths."""
        name = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        result = save_image(after, self.root / f"{name}.png")
        strip = save_image(side_by_side([before, after], labels=["before", "after"]),
                           self.root / f"{name}-comparison.png")
        return result, strip

    def directions(self) -> list[str]:
        return sorted(p.name for p in self.directions_dir.glob("*.safetensors"))

    def direction_path(self, name: str) -> Path:
        """A saved direction by its file name; nothing outside the directions folder can be named."""
        if name not in self.directions():
            raise RetouchError(f"no saved direction named {name!r}; build one first (choices: "
                               f"{', '.join(self.directions()) or 'none yet'})")
        return self.directions_dir / name


@dataclass
class Result:
    result: Path
    comparison: Path
    summary: str


@dataclass
class App:
    """Everything a request needs: where to write, the limits, which models may be used, the cache."""

    output: OutputFolder
    limits: Limits = field(default_factory=Limits)
    #: Models the operator offered with ``retouch serve --model`` besides the shipped ones.
    extra_models: tuple[str, ...] = ()
    cache: ModelCache = field(default_factory=ModelCache)

    def backbone_models(self) -> list[str]:
        return [MINI, *(m for m in self.extra_models if not (_is_multitask_folder(m) or _is_portrait_folder(m)))]

    def portrait_models(self) -> list[str]:
        from retouch.methods.portrait import SHIPPED_MODEL

        shipped = [str(SHIPPED_MODEL)] if _is_portrait_folder(SHIPPED_MODEL) else []
        return [*shipped, *(m for m in self.extra_models if _is_portrait_folder(m))]

    def multitask_models(self) -> list[str]:
        from retouch.methods.multitask import SHIPPED_MODEL

        shipped = [str(SHIPPED_MODEL)] if _is_multitask_folder(SHIPPED_MODEL) else []
        return [*shipped, *(m for m in self.extra_models if _is_multitask_folder(m))]

    def model(self, method, name: str):
        """``name`` for ``method``, held for one job, if the operator offered it (a client cannot name files)."""
        offered = {"multitask": self.multitask_models, "portrait": self.portrait_models}.get(
            method.name, self.backbone_models)()
        if name not in offered:
            if not offered:
                raise RetouchError(f"no {method.name} model is available; train one with `retouch train "
                                   f"{method.name}` and start the app with `retouch serve --model FOLDER`")
            raise RetouchError(f"model {name!r} is not offered here; choose one of {', '.join(offered)}")
        return self.cache.using(method, name)

    # ---- inputs -------------------------------------------------------------------------------------
    def read_image(self, path: str | Path, label: str) -> np.ndarray:
        """An uploaded file as float RGB, refused over the limits or when it is no image, naming the upload."""
        return self._read(load_image, path, label)

    def read_map(self, path: str | Path, label: str) -> np.ndarray:
        """An uploaded edit map or mask as float (H, W), its luminance (imageio's reading of maps)."""
        return self._read(load_map, path, label)

    def _read(self, loader, path: str | Path, label: str) -> np.ndarray:
        path = Path(path)
        size = path.stat().st_size if path.is_file() else 0
        if size > self.limits.max_upload_bytes:
            raise RetouchError(f"the {label} '{path.name}' is {size / MB:.1f} MB, more than the upload limit of "
                               f"{self.limits.max_upload_mb:g} MB")
        try:
            return loader(path, max_pixels=self.limits.max_pixels, max_side=self.limits.max_side)
        except RetouchError as error:
            # The upload's own name, not the server's cache path, is what the user recognises.
            raise RetouchError(str(error).replace(f"'{path}'", f"'{path.name}' (the {label})")) from None

    def canvas_image(self, pixels, label: str) -> np.ndarray:
        """An image drawn by the browser (an editor's background), 8-bit RGB(A), checked like an upload."""
        pixels = np.asarray(pixels)
        if pixels.ndim != 3 or pixels.shape[-1] not in (3, 4):
            raise RetouchError(f"the {label} must be an RGB image; got an array of shape {pixels.shape}")
        check_image_size(pixels.shape[1], pixels.shape[0], name=f"'{label}'", max_pixels=self.limits.max_pixels,
                         max_side=self.limits.max_side)
        return np.ascontiguousarray(pixels[..., :3], dtype=np.float32) / 255.0


def map_from_layers(layers) -> np.ndarray | None:
    """The edit map painted on an editor's layers, float32 (H, W) in [0, 1]; None when nothing is painted.

    Each stroke counts with its grey value times its opacity, layers stacked in order over black (0 =
    keep the input), so a grey or half-transparent brush paints a partial edit.
    """
    painted = None
    for layer in layers or ():
        rgba = np.asarray(layer, dtype=np.float32) / 255.0
        if rgba.ndim != 3 or rgba.shape[-1] != 4:
            raise RetouchError(f"a painted layer must be RGBA; got an array of shape {rgba.shape}")
        alpha = rgba[..., 3]
        painted = np.zeros(alpha.shape, np.float32) if painted is None else painted
        painted = painted * (1.0 - alpha) + (rgba[..., :3] @ _LUMA) * alpha
    if painted is None or not painted.any():
        return None
    return np.clip(painted, 0.0, 1.0).astype(np.float32)


def _is_multitask_folder(model: str | Path) -> bool:
    return (Path(model) / "multitask.json").is_file()


def _is_portrait_folder(model: str | Path) -> bool:
    return (Path(model) / "portrait.json").is_file()


def portrait_directions(model: str) -> list[str]:
    """The edit directions a portrait (MCDM) folder was trained on, read from its ``portrait.json``."""
    import json

    try:
        return sorted(json.loads((Path(model) / "portrait.json").read_text())["spec"]["directions"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


class _Steps:
    """The methods' per-step callback, counted and passed on as ``report(done, total, ...)``."""

    def __init__(self, report: Report, total: int | None, description: str):
        self.report, self.total, self.description, self.done = report, total, description, 0

    def __call__(self, *_):
        self.done += 1
        self.report(min(self.done, self.total or self.done), self.total, self.description)


# ---------------------------------------------------------------------------------------------------
# One function per tab
# ---------------------------------------------------------------------------------------------------
def run_edit(app: App, method_name: str, model: str, image: np.ndarray, values: dict, *,
             prepare: Callable | None = None, report: Report = _silent) -> Result:
    """Any registered method on a float image with config field ``values`` (over the model's own defaults for the
    method), through the CLI's own path.

    ``prepare`` replaces the method's ``prepare`` hook: the extra inputs come from memory, not from the
    files the config names.
    """
    from retouch.methods import edit_image, get_method, make_config, with_model_defaults

    method = get_method(method_name)
    config = make_config(method, **with_model_defaults(method, model, values))
    if prepare is not None:
        method = dataclasses.replace(method, prepare=prepare)
    report(0, None, f"loading {Path(model).name}")
    with app.model(method, model) as loaded:
        started = time.perf_counter()
        steps = _Steps(report, getattr(config, "num_steps", None), f"{method.name}: denoising")
        report(0, steps.total, f"{method.name}: preparing (inversion, directions)")
        result = edit_image(method, loaded, image, config, progress=steps)
    paths = app.output.save_result(method.name, image, result)
    return Result(*paths, f"{method.name} on {Path(model).name}: {image.shape[1]}×{image.shape[0]}, "
                          f"{time.perf_counter() - started:.1f} s")


def read_map(edit_map: np.ndarray, size: tuple[int, int], label: str) -> np.ndarray:
    """A painted or uploaded map (H, W) at ``size`` = (width, height), as the CLI reads it saved as an 8-bit file."""
    return map_from_array(as_8bit(edit_map, label), size=size, name=label)


@dataclass
class Exemplar:
    """One PIXELS exemplar with its edit map (1 = take the exemplar), both float arrays in [0, 1]."""

    image: np.ndarray
    edit_map: np.ndarray


def exemplar_inputs(exemplars: list[Exemplar]) -> Callable:
    """PIXELS' ``prepare`` hook on in-memory exemplars: what ``load_exemplar_inputs`` makes of them as 8-bit files."""
    def prepare(config, size: tuple[int, int], device, dtype) -> dict:
        from retouch.methods.exemplar_inputs import exemplar_tensors

        images = [as_8bit(exemplar.image, f"exemplar {k}") for k, exemplar in enumerate(exemplars, start=1)]
        maps = [read_map(exemplar.edit_map, size, f"exemplar {k}'s edit map")
                for k, exemplar in enumerate(exemplars, start=1)]
        return exemplar_tensors(config, images, maps, size, device, dtype)

    return prepare


def run_pixels(app: App, model: str, image: np.ndarray, exemplars: list[Exemplar], values: dict, *,
               report: Report = _silent) -> Result:
    """PIXELS with in-memory exemplars and maps; the result is the CLI's on the same images as 8-bit files."""
    if not exemplars:
        raise RetouchError("PIXELS needs at least one exemplar with an edit map: upload an exemplar and paint "
                           "(or upload) where it should go")
    return run_edit(app, "pixels", model, image, values, prepare=exemplar_inputs(exemplars), report=report)


def multitask_inputs(reference: np.ndarray | None, hole: np.ndarray | None) -> Callable:
    """Multitask's ``prepare`` hook on an in-memory colour reference and hole map (1 = hole): what
    ``load_multitask_inputs`` makes of them as 8-bit files."""
    def prepare(config, size: tuple[int, int], device, dtype) -> dict:
        from retouch.methods.multitask import multitask_tensors

        return multitask_tensors(size, device, dtype, reference=None if reference is None else as_8bit(reference),
                                 hole=None if hole is None else read_map(hole, size, "hole mask"))

    return prepare


def run_multitask(app: App, model: str, image: np.ndarray, values: dict, *, reference: np.ndarray | None = None,
                  hole: np.ndarray | None = None, report: Report = _silent) -> Result:
    """The multitask model; a colour reference image and a hole map (1 = hole), in memory, turn their tasks on.

    The config's ``reference`` and ``mask`` fields then only name the inputs (a named one is on).
    """
    named = {"reference": "the colour reference" if reference is not None else "",
             "mask": "the painted hole" if hole is not None else ""}
    return run_edit(app, "multitask", model, image, {**values, **named}, prepare=multitask_inputs(reference, hole),
                    report=report)


def run_effects(app: App, image: np.ndarray, *, blur: float | None = None, blur_angle: float | None = None,
                grain: float | None = None, grain_samples: int = 800, reference: np.ndarray | None = None,
                hole: np.ndarray | None = None, random_hole: bool = False,
                sharpen: tuple[float, float] | None = None, seed: int = 0, report: Report = _silent) -> Result:
    """The compositing operators of ``retouch effects`` (same order, ranges, hole resizing and threshold).

    ``random_hole`` adds a free-form hole drawn from ``seed`` (Yu et al. 2019's strokes, the multitask
    paper's inpainting masks) to any painted one.
    """
    from retouch.effects import EffectsRecipe, apply_effects, check_effects, free_form_mask

    check_effects(blur, grain, sharpen, names=("blur β", "grain σ", "sharpen"))
    check_range("grain samples", grain_samples, 1, 800)
    height, width = image.shape[:2]
    hole = None if hole is None else read_map(hole, (width, height), "hole mask") > 0.5
    if random_hole:
        drawn = free_form_mask(height, width, seed=seed)
        hole = drawn if hole is None else hole | drawn
    if not any(v is not None for v in (blur, grain, reference, hole, sharpen)):
        raise RetouchError("no effect chosen: set motion blur, film grain, sharpening, a colour reference or "
                           "paint an inpainting mask")
    recipe = EffectsRecipe(blur=blur, blur_angle=blur_angle, grain=grain, seed=seed, reference=reference, mask=hole,
                           sharpen=sharpen)
    report(0, None, "effects: applying")
    started = time.perf_counter()
    result = apply_effects(image, recipe, grain_samples=int(grain_samples))
    paths = app.output.save_result("effects", image, result)
    return Result(*paths, f"effects: {image.shape[1]}×{image.shape[0]}, {time.perf_counter() - started:.1f} s")


def run_build_direction(app: App, model: str, source: str, target: str, bank: str = "auto") -> str:
    """``retouch directions build`` into the output folder's directions/; returns the saved file's name."""
    import re

    from retouch.directions import build_direction as build, save_direction, sentence_banks
    from retouch.methods import get_method
    from retouch.edit_text import parse_edit

    spec = parse_edit(f"{(source or '').strip()}->{(target or '').strip()}")
    with app.model(get_method("pix2pix-zero"), model) as backbone:
        source_bank, target_bank, label = sentence_banks(spec.source, spec.target, bank=bank, model=backbone.source)
        direction = build(backbone, source_bank, target_bank, source=spec.source, target=spec.target, bank=label)
    # Only letters, digits and dashes in the name: it is shown in a picker and must stay a plain file name.
    stem = re.sub(r"[^A-Za-z0-9]+", "-", f"{spec.source}-{spec.target}-{Path(model).name}").strip("-")
    save_direction(direction, app.output.directions_dir / f"{stem}.safetensors", model=str(model))
    return f"{stem}.safetensors"
