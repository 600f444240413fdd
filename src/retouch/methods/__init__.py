"""The method registry: every editing method is a config dataclass plus an ``edit`` function.

``edit(backbone, images, config, progress=None) -> images`` takes and returns image tensors
(B, 3, H, W) in [−1, 1] at a size the backbone accepts; I/O and validation live in the callers
(CLI, app). Config fields carry ``metadata={"help": ...}`` with the paper's default and citation;
the CLI turns them into options one-to-one. A method that needs more images than the input
(exemplars, edit maps) registers a ``prepare(config, size, device, dtype) -> dict`` that loads them
at the fitted input ``size`` (width, height); the CLI passes the dict to ``edit`` as keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

from retouch.errors import RetouchError


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    config_class: type
    edit: Callable
    needs_backbone: bool = True
    prepare: Callable | None = None

    def option_names(self) -> list[str]:
        return [f.name for f in fields(self.config_class)]


_REGISTRY: dict[str, Method] = {}


def register(name: str, config_class: type, summary: str, prepare: Callable | None = None):
    """Decorator adding an ``edit`` function (and its optional input-loading ``prepare``) under ``name``."""

    def add(edit: Callable) -> Callable:
        _REGISTRY[name] = Method(name, summary, config_class, edit, prepare=prepare)
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


def _load_builtin_methods() -> None:
    from retouch.methods import sdedit  # noqa: F401  (registers itself)
    from retouch.methods import pixels, exemplar_baselines  # noqa: F401  (PIXELS and its latent-surgery baselines)
    from retouch.methods import pix2pix_zero  # noqa: F401  (registers itself)
    from retouch.methods import zerocon  # noqa: F401  (registers itself)
    from retouch.methods import ddim_swap, ddpm_inversion, prompt_to_prompt  # noqa: F401  (word-swap baselines)
