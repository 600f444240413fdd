"""The method registry: every editing method is a config dataclass plus an ``edit`` function.

``edit(backbone, images, config, progress=None) -> images`` takes and returns image tensors
(B, 3, H, W) in [−1, 1] at a size the backbone accepts; I/O and validation live in the callers
(CLI, app). Each config field is an :func:`retouch.options.option`: the paper's default, a help with
its citation and the values the field accepts; the CLI turns them into options one-to-one, and a
config's ``validate`` checks them with :func:`~retouch.options.check_options`. A method that needs
more images than the input (exemplars, edit maps) registers a ``prepare(config, size, device, dtype)
-> dict`` that loads them at the fitted input ``size`` (width, height); the CLI passes the dict to
``edit`` as keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from retouch.errors import RetouchError
from retouch.options import option


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    config_class: type
    edit: Callable
    needs_backbone: bool = True
    prepare: Callable | None = None
    #: ``load_model(name, device=, dtype=, allow_pickle=, offline=)`` for methods whose model is not a
    #: text-to-image backbone (default: :func:`retouch.backbone.load_backbone`), and their default ``--model``.
    load_model: Callable | None = None
    default_model: str | None = None

    def option_names(self) -> list[str]:
        return [f.name for f in fields(self.config_class)]


_REGISTRY: dict[str, Method] = {}


def steps_option(default: int = 50, help: str = "DDIM steps of the full schedule"):
    """``num_steps`` of a method's config: at least one step."""
    return option(default, help, at_least=1)


def guidance_option(default: float = 7.5, help: str = "classifier-free guidance scale"):
    """A classifier-free guidance scale of a method's config: zero or more (1 is no guidance)."""
    return option(default, help, at_least=0)


def register(name: str, config_class: type, summary: str, prepare: Callable | None = None, *,
             load_model: Callable | None = None, default_model: str | None = None):
    """Decorator adding an ``edit`` function (and its optional input-loading ``prepare``) under ``name``."""

    def add(edit: Callable) -> Callable:
        _REGISTRY[name] = Method(name, summary, config_class, edit, prepare=prepare, load_model=load_model,
                                 default_model=default_model)
        return edit

    return add


def available_methods() -> dict[str, Method]:
    _load_builtin_methods()
    return dict(_REGISTRY)


def get_method(name: str) -> Method:
    methods = available_methods()
    if name not in methods:
        raise RetouchError(f"unknown method '{name}'; available: {', '.join(sorted(methods))}")
    return methods[name]


def make_config(method: Method, **values):
    """``method``'s config from field values, checked by its ``validate`` (a one-line RetouchError)."""
    config = method.config_class(**values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def model_name(method: Method, model: str | None) -> str:
    """The model a run uses: the given one, else the method's default, else the shipped ``mini`` models (the
    ``tiny-*`` models are random test models and never a default)."""
    from retouch.backbone import MINI_NAME

    return model or method.default_model or MINI_NAME


#: A model folder's own settings for methods run on it, for the options a user leaves out (see
#: :func:`model_method_defaults`).
METHOD_DEFAULTS_FILE = "method_defaults.json"


def model_method_defaults(method: Method, model: str | None) -> dict:
    """The settings ``model``'s folder recommends for ``method``, from its ``method_defaults.json``.

    A method's paper defaults were tuned on the paper's model; some are step sizes and guidance scales
    whose right value depends on the model's scale (pix2pix-zero's λ_xa: 0.1 on SD 1.4, ≤ 0.01 on SD 2.x).
    A model folder may say what suits it, as ``{"method": {"field": value, ...}, ...}``; the CLI, the
    demo and the app use those values where the user gives none. Benchmarks of a paper's claims do not:
    they pass the paper's settings. No file, or no entry for the method: ``{}``.
    """
    import json

    from retouch.backbone import model_folder

    folder = model_folder(model_name(method, model))
    path = None if folder is None else folder / METHOD_DEFAULTS_FILE
    if path is None or not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RetouchError(f"cannot read the model's method defaults '{path}': {err}") from err
    values = entries.get(method.name, {}) if isinstance(entries, dict) else None
    known = set(method.option_names())
    if not isinstance(values, dict) or set(values) - known:
        unknown = sorted(set(values) - known) if isinstance(values, dict) else []
        raise RetouchError(f"'{path}' has bad defaults for method '{method.name}'"
                           + (f": no option {', '.join(unknown)}" if unknown else ": expected an object of options"))
    return values


def with_model_defaults(method: Method, model: str | None, values: dict) -> dict:
    """``values`` (config fields the user or caller gave) over ``model``'s own defaults for ``method``: the one
    rule every entry point (CLI, batch, app, demo, ``retouch eval edits``) builds its config values by."""
    return {**model_method_defaults(method, model), **values}


def trained_model_folder(model: str, marker: str, shipped: Path, kind: str, *, not_shipped: str) -> Path:
    """``--model`` of a method that runs its own trained model: a folder with ``marker`` (``portrait.json``, …).

    ``kind`` names the model in the error; ``not_shipped`` says what is wrong when ``model`` is the
    shipped default ``shipped`` and the installation lacks it.
    """
    folder, command = Path(model), f"`retouch train {kind.split()[0]}`"
    if not (folder / marker).is_file():
        if folder == shipped:
            raise RetouchError(f"{not_shipped}; train one with {command} and pass its folder with --model")
        raise RetouchError(f"--model '{model}' is not a {kind} model folder (no {marker}); train one with {command}")
    return folder


def load_method_model(method: Method, model: str | None = None, *, device: str = "auto", dtype=None,
                      allow_pickle: bool = False, offline: bool | None = None,
                      attention_slicing: str | int | None = None, cpu_offload: bool = False):
    """Load what ``method.edit`` runs on: a backbone, or the method's own model (``load_model``).

    ``attention_slicing`` (``"auto"``, ``"max"`` or rows per slice) and ``cpu_offload`` are the memory
    options of :mod:`retouch.memory`; offloading on a CPU-only run does nothing.
    """
    import torch

    from retouch import memory
    from retouch.backbone import load_backbone, resolve_device

    loader = method.load_model or load_backbone
    device = resolve_device(device)
    offload = cpu_offload and torch.device(device).type != "cpu"
    loaded = loader(model_name(method, model), device="cpu" if offload else device, dtype=dtype or torch.float32,
                    allow_pickle=allow_pickle, offline=offline)
    if attention_slicing is not None:
        memory.enable_attention_slicing(loaded, attention_slicing)
    if offload:
        memory.enable_cpu_offload(loaded, device)
    return loaded


def edit_image(method: Method, model, image, config, *, size_policy: str = "resize", progress=None):
    """Run ``method`` on one float image (H, W, 3) in [0, 1]; returns the edited image at the input's size.

    The one path from image to result that the CLI and the web app share: fit the image to the model's
    size multiple, load the config's extra inputs with the method's ``prepare`` hook at that size, edit,
    and undo the fitting.
    """
    from retouch.imageio import fit_to_multiple, from_tensor, restore_size, to_tensor

    fitted = fit_to_multiple(image, model.size_multiple, size_policy)
    extra = {} if method.prepare is None else method.prepare(
        config, (fitted.shape[1], fitted.shape[0]), model.device, model.dtype)
    edited = method.edit(model, to_tensor(fitted, device=model.device, dtype=model.dtype), config,
                         progress=progress, **extra)
    return restore_size(from_tensor(edited), image.shape[:2], size_policy, original=image)


def edit_by_caption(backbone, images01, captions: list[str], make_run: Callable, batch: int = 25,
                    progress: Callable[[int, int], None] | None = None):
    """Edit images that each have their own source caption: (N, 3, H, W) in [0, 1] → same.

    Methods take one ``source_text`` per call, so each chunk of ``batch`` images is split into groups
    sharing a caption; ``make_run(caption) -> (method, config)`` builds the run for one group.
    Outputs come back in input order; ``progress(done, total)`` counts edited images after each group.
    """
    import torch

    outputs = []
    for start in range(0, len(images01), batch):
        stop = min(start + batch, len(images01))
        chunk = images01[start:stop] * 2 - 1
        for caption in sorted(set(captions[start:stop])):
            rows = [i for i in range(start, stop) if captions[i] == caption]
            method, config = make_run(caption)
            result = method.edit(backbone, chunk[[r - start for r in rows]], config)
            outputs += list(zip(rows, ((result.clamp(-1, 1) + 1) / 2).cpu()))
            if progress is not None:
                progress(len(outputs), len(images01))
    outputs.sort(key=lambda pair: pair[0])
    return torch.stack([image for _, image in outputs])


def _load_builtin_methods() -> None:
    # Each module registers its methods on import: SDEdit, PIXELS and its latent-surgery baselines,
    # pix2pix-zero, zeroCon, the word-swap baselines, DiffEdit, the multitask compositing model and the MCDM.
    from retouch.methods import (  # noqa: F401
        ddim_swap,
        ddpm_inversion,
        diffedit,
        exemplar_baselines,
        multitask,
        pix2pix_zero,
        pixels,
        portrait,
        prompt_to_prompt,
        sdedit,
        zerocon,
    )
