"""``retouch edit``, ``effects``, ``demo`` and ``directions build``: the commands that make edited images."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import click

from retouch.cli.common import DEFAULT_MODEL, device_option, loading_options, seed_option

_CLICK_TYPES = {"str": str, "float": float, "int": int, "bool": bool}


# ---------------------------------------------------------------------------------------------
# retouch edit
# ---------------------------------------------------------------------------------------------
def method_option_help(readers: list[tuple[str, dataclasses.Field]]) -> str:
    """Help of an option read by several methods: every method named, grouped by what the field means
    to it and its default there (``[ddim, sdedit] DDIM steps (default 50); [pixels] … (default 100)``)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name, field in sorted(readers, key=lambda reader: reader[0]):
        groups.setdefault((field.metadata.get("help", ""), repr(field.default)), []).append(name)
    return "; ".join(f"[{', '.join(names)}] {text} (default {default})" for (text, default), names in groups.items())


def _method_options(command):
    """Add every registered method's config fields as options (``prompt`` → ``--prompt``), each helped with
    every method that reads it."""
    from retouch.methods import available_methods

    readers: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    hints: dict[str, object] = {}
    for method in available_methods().values():
        method_hints = typing.get_type_hints(method.config_class)
        for field in dataclasses.fields(method.config_class):
            if field.name != "seed":
                readers.setdefault(field.name, []).append((method.name, field))
                hints.setdefault(field.name, method_hints[field.name])
    for name, fields in readers.items():
        hint = hints[name]
        if type(None) in typing.get_args(hint):  # ``float | None``: an option that may be left out
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        multiple = typing.get_origin(hint) is tuple  # tuple[str, ...] fields take a repeatable option
        hint = typing.get_args(hint)[0] if multiple else hint
        kind = _CLICK_TYPES[getattr(hint, "__name__", str(hint))]
        option = "--" + name.replace("_", "-")
        if kind is bool:
            option = f"{option}/--no-{name.replace('_', '-')}"
        command = click.option(option, name, type=kind, default=None, multiple=multiple,
                               help=method_option_help(fields))(command)
    return command


@click.command(context_settings={"max_content_width": 110})
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="where to write the result (.png, .jpg, .webp); for a batch, the output folder")
@click.option("--method", "method_name", help="editing method (see `retouch info`); a manifest row may give its own")
@click.option("--model", default=None,
              help=f"model name ({DEFAULT_MODEL}: the shipped mini models), diffusers folder, .safetensors file or "
                   f"Hugging Face repo id (default: {DEFAULT_MODEL}; for --method multitask and portrait their "
                   "shipped models)")
@seed_option("makes the edit deterministic")
@device_option
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@loading_options
@click.option("--size-policy", type=click.Choice(["resize", "crop", "pad"]), default="resize", show_default=True,
              help="how the input is fitted to the model's size multiple (undone on output)")
@click.option("--compare", type=click.Path(dir_okay=False, path_type=Path),
              help="also write an input | output comparison strip here")
@click.option("--attention-slicing", is_flag=True,
              help="compute U-Net attention half the heads at a time (less GPU memory, a little slower)")
@click.option("--cpu-offload", is_flag=True,
              help="keep the model in host memory, moving each part to the GPU while it runs (no effect on cpu)")
@_method_options
def edit(image, output, method_name, model, seed, device, dtype, allow_pickle, offline, size_policy, compare,
         attention_slicing, cpu_offload, **method_options) -> None:
    """Edit IMAGE with a diffusion method and write the result to OUTPUT.

    IMAGE may also be a folder of images or a .csv/.jsonl manifest, and OUTPUT a folder: a resumable
    batch, one result per image, logged to OUTPUT/batch_log.jsonl (docs/batch.md).
    """
    from retouch.batch import BatchSettings, edit_path

    given = {name: value for name, value in method_options.items() if value is not None and value != ()}
    settings = BatchSettings(method_name, model, seed, given, device, dtype, allow_pickle, offline, size_policy)
    line = edit_path(image, output, settings, compare=compare, attention_slicing=attention_slicing,
                     cpu_offload=cpu_offload)
    if line is not None:
        click.echo(line)


# ---------------------------------------------------------------------------------------------
# retouch effects
# ---------------------------------------------------------------------------------------------
@click.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="where to write the result (.png, .jpg, .webp)")
@click.option("--blur", type=float, help="motion-blur degree β in [0, 1] (multitask paper, Table 1)")
@click.option("--blur-angle", type=float, help="motion direction in degrees (random from --seed if omitted)")
@click.option("--grain", type=float, help="film-grain radius σ in input pixels, (0, 0.5]; the paper uses 0.01-0.1")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path),
              help="colour reference image for Reinhard colour transfer")
@click.option("--mask", type=click.Path(dir_okay=False, path_type=Path),
              help="inpainting mask (white = hole) applied last, as the multitask paper's input")
@click.option("--sharpen", help="unsharp masking AMOUNT[,THRESHOLD]: λ in [1, 3], μ in [0, 0.1] (paper ranges)")
@seed_option("seed for grain and random blur angle")
@click.option("--compare", type=click.Path(dir_okay=False, path_type=Path),
              help="also write an input | output comparison strip here")
def effects(image, output, blur, blur_angle, grain, reference, mask, sharpen, seed, compare) -> None:
    """Apply compositing effects to IMAGE in the fixed order blur → colour → sharpen → grain → mask."""
    from retouch.effects import apply_effects_file
    from retouch.effects.sharpen import parse_sharpen
    from retouch.progress import count_bar

    # Film grain at N = 800 takes seconds to a minute at photo sizes; quicker runs print no bar.
    with count_bar("film grain", "px", delay=2.0, unit_scale=True) as progress:
        line = apply_effects_file(image, output, blur=blur, blur_angle=blur_angle, grain=grain, reference=reference,
                                  mask=mask, sharpen=None if sharpen is None else parse_sharpen(sharpen), seed=seed,
                                  compare=compare, progress=progress)
    click.echo(line)


# ---------------------------------------------------------------------------------------------
# retouch demo (the README's main job)
# ---------------------------------------------------------------------------------------------
@click.command()
@click.option("-o", "--output", "folder", type=click.Path(file_okay=False, path_type=Path), default=Path("out/demo"),
              show_default=True, help="folder for input.png, result.png and comparison.png")
@click.option("--effects", is_flag=True, help="run the compositing-effects demo on a photograph instead")
@click.option("--size", type=int, default=256, show_default=True, help="[--effects] side of the square crop")
def demo(folder: Path, effects: bool, size: int) -> None:
    """Edit held-out mini-world scenes with the shipped mini models (input | output strips).

    Everything is offline: the scenes are rendered on the fly and the models ship with retouch.
    """
    from retouch.demo import diffusion_demo, effects_demo

    click.echo(effects_demo(folder, size) if effects else diffusion_demo(folder))


# ---------------------------------------------------------------------------------------------
# retouch directions
# ---------------------------------------------------------------------------------------------
@click.group()
def directions() -> None:
    """Edit directions for pix2pix-zero: mean text-embedding differences of sentence banks."""


@directions.command("build")
@click.argument("source")
@click.argument("target")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the .safetensors file to write")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="model name, diffusers folder, .safetensors file or Hugging Face repo id (its text encoder)")
@click.option("--bank", type=click.Choice(["auto", "templates", "world"]), default="auto", show_default=True,
              help="built-in sentences: templates, mini-world captions, or auto (world for mini-world words on "
                   "the mini model)")
@click.option("--bank-file", nargs=2, type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="SOURCE_FILE TARGET_FILE", help="your sentence files, one sentence per line")
@click.option("--generator", "sentence_generator", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="local transformers causal-LM folder that writes the sentences")
@click.option("--count", type=int, default=None, help="sentences per word (default: 32 templates, else 64)")
@seed_option("seed of world and generated sentences")
@device_option
@loading_options
def directions_build(source, target, output, model, bank, bank_file, sentence_generator, count, seed, device,
                     allow_pickle, offline) -> None:
    """Build the edit direction SOURCE → TARGET (e.g. `cat dog`) for one model's text encoder."""
    from retouch.directions import build_direction_file

    click.echo(build_direction_file(source, target, output, model=model, bank=bank, bank_files=bank_file,
                                    generator=sentence_generator, count=count, seed=seed, device=device,
                                    allow_pickle=allow_pickle, offline=offline))
