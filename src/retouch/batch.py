"""Batch editing: ``retouch edit`` over a folder of images or a manifest (CSV or JSON Lines).

A batch is a list of items in a fixed order (a folder's images sorted by name, or a manifest's rows).
Every item is planned before any work: its method config is built and validated with
:func:`~retouch.methods.make_config`, its output path derived and checked. A problem with one item
(a bad parameter, an unknown key, a missing or corrupt image) fails that item alone; a problem with the
whole batch (unreadable manifest, unusable output folder, outputs that would overwrite an input or each
other) is one :class:`~retouch.errors.RetouchError` before anything is computed.

Items run through :func:`~retouch.methods.edit_image`, the single-image path, on models loaded once per
batch. An item whose output already exists is skipped: outputs are written atomically, so an existing
file is complete, and rerunning a batch resumes it. Under ``accelerate launch`` with several processes,
process r of w takes the items i with i % w == r; every item's seed is its row's ``seed`` or the
command's ``--seed``, never a function of r or w, so the output files are the same bits for any number
of processes. The records are gathered and the first process writes ``batch_log.jsonl`` (one record per
item in input order, then a summary record) and prints the summary line.

See docs/batch.md for the manifest format.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

from retouch.distributed import process_state
from retouch.errors import RetouchError

#: Files of a folder batch: what Pillow reads. Other files (and hidden ones, such as the temporary
#: files of an interrupted atomic write) are not items.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST_SUFFIXES = (".csv", ".jsonl")
LOG_NAME = "batch_log.jsonl"
#: Manifest keys that are not method config fields.
ROW_KEYS = ("image", "output", "method", "model", "seed")
#: Separates the values of a repeatable option (PIXELS' ``exemplar`` and ``map``) in a CSV cell.
LIST_SEPARATOR = ";"


def is_batch_source(path: Path) -> bool:
    """A folder or a ``.csv`` / ``.jsonl`` manifest: ``retouch edit`` runs a batch on it."""
    return Path(path).is_dir() or Path(path).suffix.lower() in MANIFEST_SUFFIXES


@dataclass(frozen=True)
class BatchSettings:
    """What the command line gives every item; a manifest row overrides method, model, seed and options."""

    method: str | None = None
    model: str | None = None
    seed: int = 0
    #: method options given on the command line, by config field name (``num_steps``)
    options: dict = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "float32"
    allow_pickle: bool = False
    offline: bool | None = None
    size_policy: str = "resize"


@dataclass
class Item:
    """One planned edit. ``error`` set means it failed in planning and is not computed."""

    index: int
    image: Path
    output: Path | None = None
    method: object = None  # retouch.methods.Method
    config: object = None
    model: str | None = None
    seed: int | None = None
    inputs: tuple[Path, ...] = ()  # files the item reads: never overwritten
    error: str | None = None


# ---------------------------------------------------------------------------------------------------
# Planning


def plan_folder(folder: Path, outdir: Path, settings: BatchSettings) -> list[Item]:
    """The folder's images sorted by name, each to ``outdir/<stem>.png`` with the command's options.

    The options are the same for every image, so a bad one is a batch-level error.
    """
    from retouch.methods import get_method

    if settings.method is None:
        raise RetouchError("missing --method; see `retouch info` for the methods")
    if _same_path(folder, outdir):
        raise RetouchError(f"the output folder '{outdir}' is the input folder; its results would overwrite "
                           "the inputs; choose another -o")
    images = sorted(p for p in folder.iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and not p.is_dir())
    if not images:
        raise RetouchError(f"no images in folder '{folder}' (looked for {', '.join(IMAGE_SUFFIXES)})")
    method = get_method(settings.method)
    config = _config(method, settings.options, {}, settings.seed, base=None, model=settings.model)
    items = []
    for index, image in enumerate(images):
        item = Item(index, image, outdir / f"{image.stem}.png", method, config, settings.model,
                    getattr(config, "seed", None), inputs=(image, *_input_files(config)))
        _check_item_output(item)
        items.append(item)
    return items


def plan_manifest(manifest: Path, outdir: Path, settings: BatchSettings) -> list[Item]:
    """One item per manifest row; a row's problem fails that row alone (see docs/batch.md)."""
    rows = _read_manifest(manifest)
    if not rows:
        raise RetouchError(f"manifest '{manifest}' has no rows; nothing to edit")
    return [_plan_row(index, row, manifest.parent, outdir, settings) for index, row in enumerate(rows)]


def _plan_row(index: int, row: dict | str, base: Path, outdir: Path, settings: BatchSettings) -> Item:
    """The row's item, filled in as far as the row allows (so its log record names what it could)."""
    from retouch.methods import get_method

    item = Item(index, Path(f"row {index + 1}"))
    try:
        if isinstance(row, str):  # what the reader could not parse
            raise RetouchError(row)
        given = {key: value for key, value in row.items() if value is not None and value != ""}
        if not isinstance(given.get("image"), str):
            raise RetouchError("no image: every row needs an 'image' path (text)")
        item.image = base / given.pop("image")
        method_name = _typed("method", given.pop("method"), str) if "method" in given else settings.method
        if method_name is None:
            raise RetouchError("no method: give the row a 'method' or the command --method")
        item.method = get_method(method_name)
        item.model = _typed("model", given.pop("model"), str) if "model" in given else settings.model
        item.output = _row_output(given.pop("output", None), item.image, outdir)
        seed = _typed("seed", given.pop("seed"), int) if "seed" in given else settings.seed
        kinds = field_kinds(item.method.config_class)
        unknown = sorted(set(given) - set(kinds))
        if unknown:
            hints = [f"'{key}' (did you mean '{key.replace('-', '_')}'?)" if key.replace("-", "_") in kinds
                     else f"'{key}'" for key in unknown]
            raise RetouchError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints)} for method "
                               f"'{item.method.name}'; its keys: "
                               + ", ".join((*ROW_KEYS, *sorted(set(kinds) - {"seed"}))))
        values = {key: _typed(key, value, *kinds[key]) for key, value in given.items()}
        item.config = _config(item.method, settings.options, values, seed, base=base, model=item.model)
        item.seed = getattr(item.config, "seed", None)
        item.inputs = (item.image, *_input_files(item.config))
        _check_item_output(item)
    except RetouchError as error:
        item.error = str(error)
    return item


def _row_output(value, image: Path, outdir: Path) -> Path:
    if value is None:
        return outdir / f"{image.stem}.png"
    relative = Path(_typed("output", value, str))
    if relative.is_absolute() or os.path.normpath(relative).split(os.sep)[0] == "..":
        raise RetouchError(f"output '{value}' must be a path inside the output folder '{outdir}'")
    return outdir / relative


def _config(method, cli_options: dict, row_values: dict, seed: int | None, *, base: Path | None,
            list_options: bool = False, model: str | None = None):
    """``method``'s validated config: the model's own defaults for the method (its ``method_defaults.json``),
    overridden by the command-line options, those by the row's, and the seed.

    Relative paths of the files a row's config reads (its ``input_files``: exemplars, maps, reference,
    mask) are relative to the manifest's folder, like the row's image. ``list_options``: a refused option's
    message names the method's own options.
    """
    from retouch.methods import make_config, with_model_defaults

    names = method.option_names()
    foreign = sorted(set(cli_options) - set(names))
    if foreign:
        flags = ", ".join("--" + name.replace("_", "-") for name in foreign)
        own = "; its options: " + ", ".join("--" + n.replace("_", "-") for n in names) if list_options else ""
        raise RetouchError(f"{flags} not used by method '{method.name}'{own}")
    values = with_model_defaults(method, model, {**cli_options, **row_values})
    if "seed" in names and seed is not None:
        values["seed"] = seed
    if base is not None and row_values:
        files = set(getattr(method.config_class(**values), "input_files", tuple)())
        for key, value in row_values.items():
            if isinstance(value, str) and value in files:
                values[key] = str(base / value)
            elif isinstance(value, tuple):
                values[key] = tuple(str(base / v) if v in files else v for v in value)
    return make_config(method, **values)


def _input_files(config) -> tuple[Path, ...]:
    return tuple(map(Path, getattr(config, "input_files", tuple)()))


def field_kinds(config_class) -> dict[str, tuple[type, bool]]:
    """Config field name → (scalar type, repeatable) from its type hints (``float | None`` → float)."""
    kinds = {}
    hints = typing.get_type_hints(config_class)
    for config_field in dataclasses.fields(config_class):
        hint = hints[config_field.name]
        if type(None) in typing.get_args(hint):
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        repeatable = typing.get_origin(hint) is tuple
        kinds[config_field.name] = (typing.get_args(hint)[0] if repeatable else hint, repeatable)
    return kinds


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def typed_settings(config_class, settings: dict) -> dict:
    """``{field: text}`` (e.g. from ``--set FIELD=VALUE``) as the config fields' own types; unknown names are
    a one-line error."""
    kinds = field_kinds(config_class)
    unknown = sorted(set(settings) - set(kinds))
    if unknown:
        raise RetouchError(f"unknown setting(s) {', '.join(unknown)}; this method has {', '.join(kinds)}")
    return {key: _typed(key, value, *kinds[key]) for key, value in settings.items()}


def _typed(key: str, value, kind: type, repeatable: bool = False):
    """A manifest value as the field's type: CSV gives text, JSON Lines gives JSON values."""
    if repeatable:
        parts = value.split(LIST_SEPARATOR) if isinstance(value, str) else value
        if not isinstance(parts, list):
            raise RetouchError(f"'{key}' takes a list (or, in CSV, values separated by '{LIST_SEPARATOR}'); "
                               f"got {value!r}")
        return tuple(_typed(key, part.strip() if isinstance(part, str) else part, kind) for part in parts)
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        try:
            if kind is bool:
                if text not in _TRUE + _FALSE:
                    raise ValueError
                return text in _TRUE
            return kind(text)
        except ValueError:
            raise RetouchError(f"'{key}' must be {_KIND_NAMES[kind]}; got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise RetouchError(f"'{key}' must be {_KIND_NAMES[kind]}; got {value!r}")
    return value


_KIND_NAMES = {str: "text", int: "an integer", float: "a number", bool: "true or false"}


def _read_manifest(manifest: Path) -> list[dict | str]:
    """The rows of a CSV (header line of keys) or JSON Lines manifest; a row it cannot parse is a string
    saying why, so that row fails alone."""
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise RetouchError(f"cannot read manifest '{manifest}': no such file; check the path") from None
    except UnicodeDecodeError:
        raise RetouchError(f"cannot read manifest '{manifest}': not UTF-8 text") from None
    except OSError as error:
        raise RetouchError(f"cannot read manifest '{manifest}': {error.strerror or error}") from None
    if manifest.suffix.lower() == ".jsonl":
        rows: list[dict | str] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                rows.append(f"line {number} is not JSON ({error.msg})")
                continue
            rows.append(row if isinstance(row, dict) else f"line {number} is not a JSON object")
        return rows
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or "image" not in [name.strip() for name in reader.fieldnames]:
        raise RetouchError(f"cannot read manifest '{manifest}': its first line must name the columns, "
                           "one of them 'image'")
    rows = []
    for row in reader:
        if None in row:
            rows.append(f"line {reader.line_num} has more cells than the header has columns")
        else:
            rows.append({key.strip(): value for key, value in row.items()})
    return rows


def _check_item_output(item: Item) -> None:
    """The output's format and folder; outputs that are inputs are :func:`check_plan`'s, for the whole batch."""
    from retouch.imageio import check_output_path

    check_output_path(item.output, make_parents=True)


def check_output_folder(outdir: Path) -> None:
    """Refuse an ``-o`` a batch cannot write into: a file, an image name, a folder that is not writable."""
    from retouch.imageio import SAVE_FORMATS

    if outdir.exists() and not outdir.is_dir():
        raise RetouchError(f"-o '{outdir}' is a file; a batch writes into a folder, name one")
    if not outdir.exists() and outdir.suffix.lower() in SAVE_FORMATS:
        raise RetouchError(f"-o '{outdir}' looks like an image file; a batch writes into a folder, name one")
    existing = outdir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RetouchError(f"cannot write to output folder '{outdir}': '{existing}' is not a writable folder; "
                           "choose another -o")


def check_plan(items: list[Item], outdir: Path, sources: tuple[Path, ...] = ()) -> None:
    """Batch-level refusals before any work: two items writing one file, an output (or the log) that is an
    input of any item or the manifest."""
    planned = [item for item in items if item.output is not None and item.error is None]
    writers: dict[str, Item] = {}
    for item in planned:
        key = os.path.realpath(item.output)
        if key in writers:
            raise RetouchError(f"items {writers[key].index + 1} ('{writers[key].image}') and {item.index + 1} "
                               f"('{item.image}') would both write '{item.output}'; give them distinct outputs "
                               "(a manifest's 'output' key)")
        writers[key] = item
    log = os.path.realpath(outdir / LOG_NAME)
    writers.setdefault(log, None)
    for path in (*sources, *(path for item in items for path in item.inputs)):
        if os.path.realpath(path) in writers:
            raise RetouchError(f"refusing to overwrite input '{path}' with a result; choose another -o")


def _same_path(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


# ---------------------------------------------------------------------------------------------------
# Running


def edit_path(source: Path, output: Path, settings: BatchSettings, *, compare: Path | None = None,
              attention_slicing: bool = False, cpu_offload: bool = False) -> str | None:
    """``retouch edit``: one image (returns the line to print), or a batch over a folder or manifest
    (:func:`edit_batch`, which prints its own summary; returns None)."""
    if not is_batch_source(source):
        return edit_file(source, output, settings, compare=compare, attention_slicing=attention_slicing,
                         cpu_offload=cpu_offload)
    if compare is not None:
        raise RetouchError("--compare takes one image; a batch writes only the results")
    if attention_slicing or cpu_offload:
        raise RetouchError("--attention-slicing and --cpu-offload take one image for now; a batch does not use them")
    edit_batch(source, output, settings)
    return None


def edit_file(image: Path, output: Path, settings: BatchSettings, *, compare: Path | None = None,
              attention_slicing: bool = False, cpu_offload: bool = False) -> str:
    """One image through :func:`~retouch.methods.edit_image` with a step bar; outputs checked before any
    work. Returns the line the command prints."""
    import click
    import torch

    from retouch.imageio import check_outputs, load_image, save_with_comparison
    from retouch.backbone import resolve_device
    from retouch.methods import edit_image, get_method, load_method_model, model_name
    from retouch.progress import step_bar

    if settings.method is None:
        raise RetouchError("missing --method; see `retouch info` for the methods")
    method = get_method(settings.method)
    config = _config(method, settings.options, {}, settings.seed, base=None, list_options=True, model=settings.model)
    inputs = [image, *_input_files(config)]
    check_outputs([p for p in (output, compare) if p is not None], inputs)
    source = load_image(image)
    if cpu_offload and resolve_device(settings.device) == "cpu":
        click.echo("retouch: --cpu-offload does nothing on cpu: the model is in host memory already", err=True)
    backbone = load_method_model(method, settings.model, device=settings.device, dtype=getattr(torch, settings.dtype),
                                 allow_pickle=settings.allow_pickle, offline=settings.offline,
                                 attention_slicing="auto" if attention_slicing else None, cpu_offload=cpu_offload)
    started = time.perf_counter()
    with step_bar(getattr(config, "num_steps", None), method.name) as progress:
        result = edit_image(method, backbone, source, config, size_policy=settings.size_policy, progress=progress)
    save_with_comparison(output, result, compare, source, inputs)
    seconds = time.perf_counter() - started
    return f"wrote {output} ({method.name} on {model_name(method, settings.model)}, {seconds:.1f} s)"


def edit_batch(source: Path, outdir: Path, settings: BatchSettings) -> dict:
    """Plan, check, run this process's share, gather and report; returns the summary record.

    Raises :class:`RetouchError` (one line) for a batch-level problem, or after the summary when any item
    failed. On processes other than the first these end in ``SystemExit(1)`` without printing, so an
    ``accelerate launch`` shows each message once.
    """
    import click

    state = process_state()
    try:
        check_output_folder(outdir)
        if source.is_dir():
            items, sources = plan_folder(source, outdir, settings), ()
        else:
            items, sources = plan_manifest(source, outdir, settings), (source,)
        check_plan(items, outdir, sources)
        try:
            outdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RetouchError(f"cannot create output folder '{outdir}': {error.strerror or error}") from None
        started = time.perf_counter()
        records = run_items(items, settings, rank=state.process_index, world=state.num_processes)
        if state.num_processes > 1:
            from accelerate.utils import gather_object

            records = sorted(gather_object(records), key=lambda record: record["index"])
        summary = {"summary": True, "total": len(items),
                   **{status: sum(r["status"] == status for r in records) for status in ("done", "skipped", "failed")},
                   "seconds": round(time.perf_counter() - started, 3), "processes": state.num_processes}
        log = outdir / LOG_NAME
        if state.is_main_process:
            from retouch.imageio import atomic_write_text

            atomic_write_text(log, "".join(json.dumps(r) + "\n" for r in (*records, summary)))
            click.echo(f"batch: {summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed "
                       f"of {summary['total']} in {summary['seconds']:.1f} s; log {log}")
        if summary["failed"]:
            raise RetouchError(f"{summary['failed']} of {summary['total']} items failed; see {log}")
    except RetouchError:
        if not state.is_main_process:
            raise SystemExit(1) from None
        raise
    return summary


def run_items(items: list[Item], settings: BatchSettings, *, rank: int = 0, world: int = 1) -> list[dict]:
    """Edit the items i with i % world == rank, in order; one log record each. Never raises for an item."""
    import click

    models: dict = {}  # (loader, model name) → loaded model, or the RetouchError loading it gave
    records = []
    for item in items[rank::world]:
        started = time.perf_counter()
        status, error = "done", item.error
        if error is None and item.output.exists():
            status = "skipped"
        elif error is None:
            try:
                _edit_item(item, settings, models)
            except RetouchError as failure:
                error = str(failure)
            except Exception as failure:  # noqa: BLE001 - one item's bug must not stop the batch (or hang a gather)
                error = f"{type(failure).__name__}: {' '.join(str(failure).split())}"
        seconds = time.perf_counter() - started
        label = f"[{item.index + 1}/{len(items)}] {item.image}"
        if error is not None:
            status = "failed"
            click.echo(f"retouch: failed {label}: {error}", err=True)
        elif status == "done":
            click.echo(f"done {label} -> {item.output} ({seconds:.1f} s)")
        records.append(_record(item, status, error, seconds, rank))
    return records


def _edit_item(item: Item, settings: BatchSettings, models: dict) -> None:
    from retouch.imageio import load_image, save_image
    from retouch.methods import edit_image

    source = load_image(item.image)
    model = _model(item, settings, models)
    result = edit_image(item.method, model, source, item.config, size_policy=settings.size_policy)
    save_image(result, item.output, inputs=item.inputs, make_parents=True)


def _model(item: Item, settings: BatchSettings, models: dict):
    """Load each (loader, model) once per batch; a model that failed to load fails its items without retrying."""
    import torch

    from retouch import methods

    key = (item.method.load_model, methods.model_name(item.method, item.model))
    if key not in models:
        try:
            models[key] = methods.load_method_model(
                item.method, item.model, device=_device(settings.device), dtype=getattr(torch, settings.dtype),
                allow_pickle=settings.allow_pickle, offline=settings.offline)
        except RetouchError as error:
            models[key] = error
    if isinstance(models[key], RetouchError):
        raise models[key]
    return models[key]


def _device(device: str) -> str:
    """``auto`` under several processes is each process's own device (cuda:r, or cpu under gloo)."""
    from retouch.backbone import resolve_device

    state = process_state()
    if device == "auto" and state.num_processes > 1:
        return str(state.device)
    return resolve_device(device)


def _record(item: Item, status: str, error: str | None, seconds: float, rank: int) -> dict:
    from retouch.methods import model_name

    method = item.method
    return {"index": item.index, "image": str(item.image), "output": str(item.output) if item.output else None,
            "method": method.name if method else None,
            "model": model_name(method, item.model) if method else None, "seed": item.seed,
            "status": status, "error": error, "seconds": round(seconds, 3), "rank": rank}
