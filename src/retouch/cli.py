"""The ``retouch`` command line.

Validation lives here and in ``imageio``: every problem with the user's input becomes one line on
stderr (``retouch: error: ...``) and exit status 1; outputs are checked before any work starts and
written atomically, so a failed run leaves no partial file and never touches an input.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import typing
from pathlib import Path

import click

from retouch.errors import RetouchError, check_range

EXIT_ERROR = 1


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the click group and turn RetouchError into one line + non-zero exit."""
    try:
        cli.main(args=argv, prog_name="retouch", standalone_mode=False)
    except RetouchError as err:
        click.echo(f"retouch: error: {err}", err=True)
        sys.exit(EXIT_ERROR)
    except click.exceptions.Abort:
        click.echo("retouch: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="retouch")
def cli() -> None:
    """Diffusion-based image editing with fine-grained control.

    Methods: pix2pix-zero, pix2pix-zeroCon, PIXELS, the multi-task compositing model and
    feature-preserving portrait editing, on real Stable Diffusion checkpoints or retouch's own
    small offline models. Run `retouch COMMAND --help` for each command's options.
    """
    from retouch._quiet import quiet_third_party

    quiet_third_party()


# ---------------------------------------------------------------------------------------------
# retouch info
# ---------------------------------------------------------------------------------------------
@cli.command()
def info() -> None:
    """Versions, compute device, available models and methods, cache location."""
    import diffusers
    import torch
    import transformers
    from huggingface_hub import constants

    from retouch import __version__
    from retouch.backbone import TINY_NAMES
    from retouch.methods import available_methods

    cuda = torch.cuda.is_available()
    lines = [
        f"retouch       {__version__}",
        f"python        {sys.version.split()[0]}",
        f"torch         {torch.__version__} ({'CUDA ' + torch.version.cuda if cuda else 'CPU only'})",
        f"diffusers     {diffusers.__version__}",
        f"transformers  {transformers.__version__}",
        f"device        {torch.cuda.get_device_name(0) if cuda else 'cpu'} ({torch.get_num_threads()} CPU threads)",
        f"hub cache     {constants.HF_HUB_CACHE} ({'offline' if constants.HF_HUB_OFFLINE else 'online allowed'})",
        f"models        {', '.join(TINY_NAMES)}, any diffusers folder, .safetensors file or cached repo id",
        "methods       " + ", ".join(sorted(available_methods())),
    ]
    click.echo("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# retouch effects
# ---------------------------------------------------------------------------------------------
def _parse_sharpen(text: str | None) -> tuple[float, float] | None:
    from retouch.effects import EFFECT_RANGES
    from retouch.effects.sharpen import parse_sharpen

    if text is None:
        return None
    amount, threshold = parse_sharpen(text)
    check_range("--sharpen amount λ", amount, *EFFECT_RANGES["sharpen_amount"])
    check_range("--sharpen threshold μ", threshold, *EFFECT_RANGES["sharpen_threshold"])
    return amount, threshold


@cli.command()
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
@click.option("--seed", type=int, default=0, show_default=True, help="seed for grain and random blur angle")
@click.option("--compare", type=click.Path(dir_okay=False, path_type=Path),
              help="also write an input | output comparison strip here")
def effects(image, output, blur, blur_angle, grain, reference, mask, sharpen, seed, compare) -> None:
    """Apply compositing effects to IMAGE in the fixed order blur → colour → sharpen → grain → mask."""
    from retouch.effects import EFFECT_RANGES, EffectsRecipe, apply_effects
    from retouch.imageio import load_image, load_map

    check_range("--blur", blur, *EFFECT_RANGES["blur"])
    check_range("--grain", grain, *EFFECT_RANGES["grain"])
    sharpen_values = _parse_sharpen(sharpen)
    inputs = [p for p in (image, reference, mask) if p is not None]
    outputs = [p for p in (output, compare) if p is not None]
    _check_outputs(outputs, inputs)
    if not any(v is not None for v in (blur, grain, reference, mask, sharpen_values)):
        raise RetouchError("no effect chosen: give at least one of --blur, --grain, --reference, --mask, --sharpen")

    source = load_image(image)
    height, width = source.shape[:2]
    recipe = EffectsRecipe(
        blur=blur, blur_angle=blur_angle, grain=grain,
        reference=load_image(reference) if reference else None,
        mask=(load_map(mask, size=(width, height)) > 0.5) if mask else None,
        sharpen=sharpen_values, seed=seed,
    )
    started = time.perf_counter()
    result = apply_effects(source, recipe)
    _save_all(output, result, compare, [source, result], inputs)
    click.echo(f"wrote {output} ({width}x{height}, {time.perf_counter() - started:.1f} s)")


# ---------------------------------------------------------------------------------------------
# retouch edit
# ---------------------------------------------------------------------------------------------
_CLICK_TYPES = {"str": str, "float": float, "int": int, "bool": bool}


def _method_options(command):
    """Add every registered method's config fields as options (``prompt`` → ``--prompt``)."""
    from retouch.methods import available_methods

    seen: dict[str, str] = {}
    for method in available_methods().values():
        hints = typing.get_type_hints(method.config_class)
        for field in dataclasses.fields(method.config_class):
            if field.name == "seed" or field.name in seen:
                continue
            hint = hints[field.name]
            if type(None) in typing.get_args(hint):  # ``float | None``: an option that may be left out
                hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
            multiple = typing.get_origin(hint) is tuple  # tuple[str, ...] fields take a repeatable option
            hint = typing.get_args(hint)[0] if multiple else hint
            kind = _CLICK_TYPES[getattr(hint, "__name__", str(hint))]
            seen[field.name] = method.name
            option = "--" + field.name.replace("_", "-")
            if kind is bool:
                option = f"{option}/--no-{field.name.replace('_', '-')}"
            command = click.option(option, field.name, type=kind, default=None, multiple=multiple,
                                   help=f"[{method.name}] {field.metadata.get('help', '')} (default {field.default!r})")(command)
    return command


@cli.command(context_settings={"max_content_width": 110})
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="where to write the result (.png, .jpg, .webp); for a batch, the output folder")
@click.option("--method", "method_name", help="editing method (see `retouch info`); a manifest row may give its own")
@click.option("--model", default=None,
              help="tiny name, diffusers folder, .safetensors file or Hugging Face repo id (default: tiny-sd; "
                   "for --method multitask the shipped multitask model)")
@click.option("--seed", type=int, default=0, show_default=True, help="makes the edit deterministic")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, … or auto")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--allow-pickle", is_flag=True, help="allow loading pickle checkpoints (can run arbitrary code)")
@click.option("--offline/--online", default=None, help="forbid/allow hub downloads (default: HF_HUB_OFFLINE)")
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
    import torch

    from retouch.batch import BatchSettings, edit_batch, is_batch_source
    from retouch.imageio import load_image
    from retouch.methods import edit_image, get_method, load_method_model, model_name, resolve_device

    if is_batch_source(image):
        if compare is not None:
            raise RetouchError("--compare takes one image; a batch writes only the results")
        if attention_slicing or cpu_offload:
            raise RetouchError("--attention-slicing and --cpu-offload take one image for now; a batch does not use them")
        given = {name: value for name, value in method_options.items() if value is not None and value != ()}
        edit_batch(image, output, BatchSettings(method_name, model, seed, given, device, dtype, allow_pickle,
                                                offline, size_policy))
        return
    if method_name is None:
        raise RetouchError("missing --method; see `retouch info` for the methods")
    method = get_method(method_name)
    config = _method_config(method, seed, method_options)
    outputs = [p for p in (output, compare) if p is not None]
    inputs = [image, *map(Path, getattr(config, "input_files", tuple)())]
    _check_outputs(outputs, inputs)
    source = load_image(image)

    if cpu_offload and resolve_device(device) == "cpu":
        click.echo("retouch: --cpu-offload does nothing on cpu: the model is in host memory already", err=True)
    backbone = load_method_model(method, model, device=device, dtype=getattr(torch, dtype),
                                 allow_pickle=allow_pickle, offline=offline,
                                 attention_slicing="auto" if attention_slicing else None, cpu_offload=cpu_offload)
    started = time.perf_counter()
    with _progress(config, method.name) as progress:
        result = edit_image(method, backbone, source, config, size_policy=size_policy, progress=progress)
    _save_all(output, result, compare, [source, result], inputs)
    click.echo(f"wrote {output} ({method.name} on {model_name(method, model)}, {time.perf_counter() - started:.1f} s)")


def _method_config(method, seed: int, options: dict):
    from retouch.methods import make_config

    given = {name: value for name, value in options.items() if value is not None and value != ()}
    foreign = sorted(set(given) - set(method.option_names()))
    if foreign:
        flags = ", ".join("--" + name.replace("_", "-") for name in foreign)
        raise RetouchError(f"{flags} not used by method '{method.name}'; its options: "
                           + ", ".join("--" + n.replace("_", "-") for n in method.option_names()))
    if "seed" in method.option_names():
        given["seed"] = seed
    return make_config(method, **given)


class _progress:
    """A tqdm bar over the sampling steps, fed by the methods' per-step callback."""

    def __init__(self, config, label: str):
        self.total = getattr(config, "num_steps", None)
        self.label = label

    def __enter__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, desc=self.label, unit="step", leave=False, disable=None)
        return lambda *_: self.bar.update(1)

    def __exit__(self, *exc):
        self.bar.close()
        return False


# ---------------------------------------------------------------------------------------------
# retouch serve
# ---------------------------------------------------------------------------------------------
@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind; 0.0.0.0 exposes it to the network")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/app"),
              show_default=True, help="the only folder the app writes to: results, directions, upload cache")
@click.option("--max-upload-mb", type=click.FloatRange(0.01, 1024), default=10.0, show_default=True,
              help="largest upload accepted")
@click.option("--max-side", type=click.IntRange(16, 16384), default=1024, show_default=True,
              help="longest image side accepted, in pixels")
@click.option("--concurrency", type=click.IntRange(1, 64), default=1, show_default=True,
              help="jobs computed at once; the rest wait in the queue")
@click.option("--model", "models", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="also offer this local diffusers folder, .safetensors file or multitask model folder (repeatable)")
def serve(host, port, output_dir, max_upload_mb, max_side, concurrency, models) -> None:
    """Start the web app: a tab per method, the shipped mini models, a request queue. Offline."""
    from retouch.app.server import serve as run_server

    run_server(output_dir, host=host, port=port, max_upload_mb=max_upload_mb, max_side=max_side,
               concurrency=concurrency, models=tuple(str(m) for m in models))


# ---------------------------------------------------------------------------------------------
# retouch directions
# ---------------------------------------------------------------------------------------------
@cli.group()
def directions() -> None:
    """Edit directions for pix2pix-zero: mean text-embedding differences of sentence banks."""


@directions.command("build")
@click.argument("source")
@click.argument("target")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the .safetensors file to write")
@click.option("--model", default="tiny-sd", show_default=True,
              help="tiny name, diffusers folder, .safetensors file or Hugging Face repo id (its text encoder)")
@click.option("--bank", type=click.Choice(["auto", "templates", "world"]), default="auto", show_default=True,
              help="built-in sentences: templates, mini-world captions, or auto (world for mini-world words on "
                   "the mini model)")
@click.option("--bank-file", nargs=2, type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="SOURCE_FILE TARGET_FILE", help="your sentence files, one sentence per line")
@click.option("--generator", "sentence_generator", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="local transformers causal-LM folder that writes the sentences")
@click.option("--count", type=int, default=None, help="sentences per word (default: 32 templates, else 64)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of world and generated sentences")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, … or auto")
@click.option("--allow-pickle", is_flag=True, help="allow loading pickle checkpoints (can run arbitrary code)")
@click.option("--offline/--online", default=None, help="forbid/allow hub downloads (default: HF_HUB_OFFLINE)")
def directions_build(source, target, output, model, bank, bank_file, sentence_generator, count, seed, device,
                     allow_pickle, offline) -> None:
    """Build the edit direction SOURCE → TARGET (e.g. `cat dog`) for one model's text encoder."""
    import torch

    from retouch.backbone import load_backbone
    from retouch.directions import build_direction, save_direction, sentence_banks
    from retouch.methods.edit_text import parse_edit

    spec = parse_edit(f"{source}->{target}")
    if output.suffix.lower() != ".safetensors":
        raise RetouchError(f"an edit direction is saved as .safetensors; got '{output}'")
    if bank_file and any(output.resolve() == Path(p).resolve() for p in bank_file):
        raise RetouchError(f"the output '{output}' is one of the sentence files; choose another path")
    if count is not None and count < 1:
        raise RetouchError(f"--count must be at least 1; got {count}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    backbone = load_backbone(model, device=device, allow_pickle=allow_pickle, offline=offline)
    started = time.perf_counter()
    source_bank, target_bank, label = sentence_banks(
        spec.source, spec.target, bank=bank, count=count, generator=sentence_generator or "",
        files=tuple(bank_file) if bank_file else None, seed=seed, model=backbone.source,
    )
    direction = build_direction(backbone, source_bank, target_bank, source=spec.source, target=spec.target,
                                bank=label)
    save_direction(direction, output, model=str(model))
    click.echo(f"wrote {output} ({spec}, {len(source_bank)}+{len(target_bank)} sentences ({label}), text encoder "
               f"{direction.encoder_id}, {time.perf_counter() - started:.1f} s)")


# ---------------------------------------------------------------------------------------------
# retouch train
# ---------------------------------------------------------------------------------------------
@cli.group()
def train() -> None:
    """Train retouch's models (runs unchanged under `accelerate launch`)."""


@train.command("mini")
@click.option("--stages", default="tokenizer,vae,decoder,clip,judge,unet,export", show_default=True,
              help="comma-separated subset of tokenizer, vae, decoder, clip, judge, unet, export; finished stages "
                   "are reused")
@click.option("--work-dir", default="out/train-mini", show_default=True, help="checkpoints and logs (resumable)")
@click.option("--export-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where the trained models go (default: the package's shipped folder)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--vae-steps", type=int, default=None)
@click.option("--decoder-steps", type=int, default=None, help="local-decoder fine-tuning steps (encoder frozen)")
@click.option("--clip-steps", type=int, default=None)
@click.option("--unet-steps", type=int, default=None)
@click.option("--judge-steps", type=int, default=None)
@click.option("--judge-batch", type=int, default=None)
@click.option("--vae-batch", type=int, default=None)
@click.option("--clip-batch", type=int, default=None)
@click.option("--unet-batch", type=int, default=None)
@click.option("--unet-object-weight", type=float, default=None,
              help="extra ε-loss weight on object pixels (0 = plain MSE)")
@click.option("--unet-min-snr-gamma", type=float, default=None, help="Min-SNR-γ timestep weighting (0 = off)")
def train_mini(stages, work_dir, export_dir, seed, vae_steps, decoder_steps, clip_steps, unet_steps, judge_steps,
               judge_batch, vae_batch, clip_batch, unet_batch, unet_object_weight, unet_min_snr_gamma) -> None:
    """Train the mini world's autoencoder, CLIP-style judge and text-to-image U-Net."""
    from retouch.train.mini import MINI_DIR, STAGES, MiniConfig, run_mini_training

    chosen = tuple(s.strip() for s in stages.split(",") if s.strip())
    unknown = sorted(set(chosen) - set(STAGES))
    if unknown:
        raise RetouchError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    overrides = {k: v for k, v in dict(vae_steps=vae_steps, decoder_steps=decoder_steps, clip_steps=clip_steps,
                                       unet_steps=unet_steps,
                                       vae_batch=vae_batch, clip_batch=clip_batch, unet_batch=unet_batch,
                                       judge_steps=judge_steps, judge_batch=judge_batch).items() if v is not None}
    for name, value in overrides.items():
        if value <= 0:
            raise RetouchError(f"--{name.replace('_', '-')} must be positive; got {value}")
    for name, value in dict(unet_object_weight=unet_object_weight, unet_min_snr_gamma=unet_min_snr_gamma).items():
        if value is not None:
            if not value >= 0:
                raise RetouchError(f"--{name.replace('_', '-')} must be zero or positive; got {value}")
            overrides[name] = value
    config = MiniConfig(work_dir=work_dir, seed=seed, **overrides)
    report = run_mini_training(config, chosen, export_dir or MINI_DIR)
    for name, stats in report["stages"].items():
        click.echo(f"{name}: {stats['seconds'] / 60:.1f} min, {stats['samples_per_second']:.1f} samples/s, "
                   f"final loss {stats['final_loss']:.4f}")


@train.command("multitask")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="a dataset folder from `retouch data compositing`")
@click.option("--output-dir", default="out/train-multitask", show_default=True,
              help="checkpoints (resumable) and the trained model in final/")
@click.option("--init", default="mini", show_default=True, help="backbone to initialise the U-Net and VAE from")
@click.option("--steps", type=int, default=3000, show_default=True)
@click.option("--batch", type=int, default=16, show_default=True)
@click.option("--learning-rate", type=float, default=1e-4, show_default=True)
@click.option("--loss-p", type=float, default=1.0, show_default=True, help="p of Eq. 2's ‖ε_θ − ε‖_p^p (paper: 1)")
@click.option("--architecture", type=click.Choice(["diffusion", "pix2pix"]), default="diffusion", show_default=True,
              help="the multitask diffusion model, or the pix2pix conditional-GAN baseline")
@click.option("--conditioning", type=click.Choice(["cross-attention", "concat"]), default="cross-attention",
              show_default=True, help="ours (C through f_θ into cross-attention) or Palette++ (all concatenated)")
@click.option("--labels/--no-labels", default=True, show_default=True, help="binary task labels in C (ablation)")
@click.option("--mapping-depth", type=int, default=2, show_default=True, help="linear layers in f_θ (0, 1, 2, 4)")
@click.option("--loss-space", type=click.Choice(["epsilon", "v"]), default="epsilon", show_default=True,
              help="where Eq. 2's error is measured: ε (the paper) or v (weights high-noise steps by 1/√ᾱ)")
@click.option("--input-gain", type=float, default=1.0, show_default=True,
              help="factor on the z_A/reference input channels: >1 makes their zero-initialised weights learn faster")
@click.option("--tasks", default="blur,grain,colour,inpaint,sharpen", show_default=True,
              help="tasks to train on (one task: the 'ours-single' baseline)")
@click.option("--n-pair", type=click.Choice(["bottleneck", "labels"]), default=None,
              help="add Eq. 3's N-pair loss on U-Net bottleneck (config A) or label (config B) features")
@click.option("--n-pair-weight", type=float, default=0.1, show_default=True, help="its weight (not in the paper)")
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default="no", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def train_multitask_command(data, output_dir, init, steps, batch, learning_rate, loss_p, architecture, conditioning,
                            labels, mapping_depth, loss_space, input_gain, tasks, n_pair, n_pair_weight, mixed_precision,
                            seed) -> None:
    """Train the multi-task compositing model (multitask paper §3.2, §4.1) on a compositing dataset."""
    from retouch.train.multitask import MultitaskTrainConfig, train_multitask

    config = MultitaskTrainConfig(data=str(data), output_dir=output_dir, init=init, steps=steps, batch=batch,
                                  learning_rate=learning_rate, loss_p=loss_p, architecture=architecture,
                                  conditioning=conditioning,
                                  labels=labels, mapping_depth=mapping_depth, loss_space=loss_space,
                                  input_gain=input_gain,
                                  tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()),
                                  n_pair=n_pair, n_pair_weight=n_pair_weight, mixed_precision=mixed_precision,
                                  seed=seed)
    _, report = train_multitask(config)
    _say_trained(report, output_dir)


@train.command("portrait")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), required=True, multiple=True,
              help="a pairs dataset from `retouch data pairs` (kept train-split pairs are used); repeat for "
                   "several edit directions")
@click.option("--output-dir", default="out/train-portrait", show_default=True,
              help="checkpoints (resumable) and the trained model in final/")
@click.option("--init", default="mini", show_default=True, help="pretrained backbone the MCDM starts from")
@click.option("--image-encoder", default="mini-judge", show_default=True,
              help="CLIP_im of c_im: a local CLIP-style folder, or mini-judge")
@click.option("--steps", type=int, default=2000, show_default=True)
@click.option("--batch", type=int, default=16, show_default=True)
@click.option("--learning-rate", type=float, default=1e-4, show_default=True)
@click.option("--identity-rate", type=float, default=0.05, show_default=True,
              help="share of rows replaced by identity pairs (p_b→p_a, x_B→x_A; §3.3)")
@click.option("--dropout", type=float, default=0.2, show_default=True,
              help="probability of dropping each of c_s, c_im, c_p, independently (§3.3)")
@click.option("--spatial/--no-spatial", default=True, show_default=True, help="c_s = E(x_A) at the input (ablation)")
@click.option("--image-embedding/--no-image-embedding", default=True, show_default=True,
              help="c_im tokens in cross-attention (ablation)")
@click.option("--scratch", is_flag=True, help="random U-Net initialisation instead of the pretrained one (ablation)")
@click.option("--input-gain", type=float, default=1.0, show_default=True,
              help="factor on c_s: >1 makes its zero-initialised input weights learn faster (not in the paper)")
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default="no", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def train_portrait_command(data, output_dir, init, image_encoder, steps, batch, learning_rate, identity_rate, dropout,
                           spatial, image_embedding, scratch, input_gain, mixed_precision, seed) -> None:
    """Train the Multi-Conditioned Diffusion Model (portrait paper §3.3) on generated pairs."""
    from retouch.train.portrait import PortraitTrainConfig, train_portrait

    config = PortraitTrainConfig(data=tuple(str(d) for d in data), output_dir=output_dir, init=init,
                                 image_encoder=image_encoder,
                                 steps=steps, batch=batch, learning_rate=learning_rate, identity_rate=identity_rate,
                                 dropout=dropout, spatial=spatial, image_embedding=image_embedding, scratch=scratch,
                                 input_gain=input_gain, mixed_precision=mixed_precision, seed=seed)
    _, report = train_portrait(config)
    _say_trained(report, output_dir, data=f" on {report['pairs']} pairs")


def _say_trained(report: dict, output_dir: str, *, data: str = "", rate_note: str = "", what: str = "model") -> None:
    """The training commands' last line, once: under ``accelerate launch`` every process returns here."""
    from retouch.distributed import is_main_process

    if is_main_process():
        click.echo(f"trained {report['steps']} steps{data} in {report['seconds'] / 60:.1f} min "
                   f"({report['samples_per_second']:.1f} samples/s{rate_note}); {what} in {Path(output_dir) / 'final'}")


@train.command("pair-prior")
@click.option("--output-dir", default="out/pair-prior", show_default=True,
              help="checkpoints (resumable) and the fine-tuned backbone folder in final/")
@click.option("--init", default="mini", show_default=True, help="backbone whose U-Net is fine-tuned")
@click.option("--steps", type=int, default=1200, show_default=True)
@click.option("--batch", type=int, default=16, show_default=True)
@click.option("--learning-rate", type=float, default=4e-4, show_default=True,
              help="1e-4 barely moved the mini U-Net in 1,050 steps; 4e-4 gave twins (docs/portrait.md)")
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default="no", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="world seed of the pairs and the loop's seed")
def train_pair_prior_command(output_dir, init, steps, batch, learning_rate, mixed_precision, seed) -> None:
    """Fine-tune a U-Net on side-by-side mini-world pairs, the prior Eq. 2 (portrait paper §3.2) needs."""
    from retouch.train.pair_prior import PairPriorConfig, train_pair_prior

    config = PairPriorConfig(output_dir=output_dir, init=init, steps=steps, batch=batch, learning_rate=learning_rate,
                             mixed_precision=mixed_precision, seed=seed)
    _, report = train_pair_prior(config)
    loss = report["final_loss"]
    _say_trained(report, output_dir, rate_note="" if loss is None else f", final loss {loss:.4f}", what="backbone")


@train.command("distill")
@click.option("--edit", default="red->blue", show_default=True,
              help="attribute edit on mini-world scenes, SOURCE->TARGET")
@click.option("--output-dir", default="out/distill", show_default=True, help="translator checkpoints and distill.json")
@click.option("--model", default="mini", show_default=True, help="backbone that makes the pix2pix-zero pairs")
@click.option("--judge", "judge_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="local CLIP-style folder scoring the pairs (default: the mini judge)")
@click.option("--pairs", type=int, default=200, show_default=True, help="pix2pix-zero pairs to collect (paper: 15,000)")
@click.option("--edit-steps", type=int, default=25, show_default=True, help="DDIM steps of each pix2pix-zero edit")
@click.option("--train-steps", type=int, default=600, show_default=True)
@click.option("--batch", type=int, default=32, show_default=True)
@click.option("--clip-increase", type=float, default=0.10, show_default=True,
              help="keep pairs whose judge cosine to the target caption rises at least this much (App. A)")
@click.option("--inside-fraction", type=float, default=0.70, show_default=True,
              help="keep pairs with at least this share of the pixel change inside the object mask")
@click.option("--lpips", type=click.Path(dir_okay=False), default=None,
              help="local LPIPS weights for the perceptual term (App. A: L1 + LPIPS); L1 only without")
@click.option("--seed", type=int, default=0, show_default=True)
def train_distill(edit, output_dir, model, judge_dir, pairs, edit_steps, train_steps, batch, clip_increase,
                  inside_fraction, lpips, seed) -> None:
    """Distil pix2pix-zero into a one-pass translator (pix2pix-zero §4.5) on mini-world pairs."""
    from retouch.backbone import MINI_DIR, load_backbone
    from retouch.metrics import TransformersCLIPJudge
    from retouch.train.distill import DistillConfig, distill
    from retouch.world import World

    for flag, value in (("--pairs", pairs), ("--edit-steps", edit_steps), ("--train-steps", train_steps),
                        ("--batch", batch)):
        if value < 1:
            raise RetouchError(f"{flag} must be at least 1; got {value}")
    if not 0.0 <= inside_fraction <= 1.0:
        raise RetouchError(f"--inside-fraction must lie in [0, 1]; got {inside_fraction:g}")
    config = DistillConfig(edit=edit, model=model, output_dir=output_dir, pairs=pairs, edit_steps=edit_steps,
                           train_steps=train_steps, batch=batch, clip_increase=clip_increase,
                           inside_fraction=inside_fraction, lpips=lpips, seed=seed)
    judge = TransformersCLIPJudge(judge_dir or MINI_DIR / "judge")
    report = distill(load_backbone(model), judge, World(seed=0), config)
    click.echo(f"kept {report['pairs_kept']} of {report['pairs_collected']} pairs; translator in "
               f"{Path(output_dir) / 'translator' / 'final'} (trained {report['train_seconds'] / 60:.1f} min)")


# ---------------------------------------------------------------------------------------------
# retouch world
# ---------------------------------------------------------------------------------------------
@cli.group("eval")
def evaluate() -> None:
    """Evaluate trained models on their benchmarks and write tables."""


def _named_folders(pairs, flag: str) -> dict[str, str]:
    named = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise RetouchError(f"{flag} takes NAME=FOLDER; got {pair!r}")
        named[name] = folder
    return named


@evaluate.command("multitask")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="a dataset folder from `retouch data compositing`")
@click.option("--model", "models", multiple=True, required=True, metavar="NAME=FOLDER",
              help="a trained multitask or pix2pix model (repeat: ours, palette++, pix2pix, ablations, …)")
@click.option("--single", "singles", multiple=True, metavar="TASK=FOLDER",
              help="single-task models applied in sequence, reported as 'ours-single' (one per task)")
@click.option("--split", default="test", show_default=True, help="test, val or photos (the unseen photographs)")
@click.option("--tasks", default="blur,grain,colour,inpaint,sharpen,blur+grain,grain+colour,blur+grain+colour,"
              "grain+colour+sharpen", show_default=True, help="single tasks and multi-task combinations")
@click.option("--steps", type=int, default=25, show_default=True, help="DDIM steps per edit")
@click.option("--limit", type=int, default=None, help="at most this many crops per task")
@click.option("--judge", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="a local CLIP-style folder whose image features KID uses (default: the mini judge)")
@click.option("--lpips", "lpips_weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="local LPIPS weights (.pth); without them the LPIPS column is empty")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Markdown file for the table")
def eval_multitask(data, models, singles, split, tasks, steps, limit, judge, lpips_weights, output) -> None:
    """Tables 2–4 of the multitask paper: L1, SSIM, LPIPS, KID per task and model."""
    from retouch.backbone import MINI_DIR
    from retouch.imageio import atomic_write_text
    from retouch.metrics import TransformersCLIPJudge, load_lpips
    from retouch.train.evaluate_multitask import evaluate as run_evaluation
    from retouch.train.evaluate_multitask import load_compositing_model, multitask_table

    if output.suffix.lower() != ".md":
        raise RetouchError(f"--output must be a .md file; got '{output}'")
    if not output.parent.is_dir():
        raise RetouchError(f"cannot write '{output}': folder '{output.parent}' does not exist")
    loaded = {name: load_compositing_model(folder) for name, folder in _named_folders(models, "--model").items()}
    if singles:
        loaded["ours-single"] = {task: load_compositing_model(folder)
                                 for task, folder in _named_folders(singles, "--single").items()}
    judge_folder = judge or MINI_DIR / "judge"
    extractor = TransformersCLIPJudge(judge_folder).encode_images
    lpips = load_lpips(lpips_weights) if lpips_weights else None
    chosen = [t.strip() for t in tasks.split(",") if t.strip()]
    rows = run_evaluation(loaded, data, split, chosen, num_steps=steps, limit=limit, extractor=extractor,
                          lpips=lpips)
    label = "mini-world judge features" if judge is None else f"{judge_folder.name} features"
    atomic_write_text(output, f"Split `{split}`, {steps} DDIM steps from noise.\n\n" + multitask_table(rows, label))
    click.echo(f"wrote {output} ({len(rows)} rows)")


@evaluate.command("portrait")
@click.option("--model", "models", multiple=True, metavar="NAME=FOLDER",
              help="a trained MCDM (`retouch train portrait`); rows NAME and 'NAME w/o mask' (repeat for ablations)")
@click.option("--baselines", default="sdedit-0.5,sdedit-0.8,diffedit,p2p,pix2pix-zero", show_default=True,
              help="comma-separated training-free baselines, or 'none'")
@click.option("--backbone", default="mini", show_default=True,
              help="text-to-image model the baselines run on (and whose autoencoder the reference row uses)")
@click.option("--count", type=int, default=100, show_default=True, help="held-out inputs per direction")
@click.option("--num-steps", type=int, default=20, show_default=True, help="DDIM steps of every system")
@click.option("--batch", type=int, default=25, show_default=True, help="images per call (baselines: per caption)")
@click.option("--seed", type=int, default=0, show_default=True, help="world seed and seed of every system's noise")
@click.option("--probes", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="attribute probes (default: the shipped mini-world probes)")
@click.option("--figure", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG grid like the paper's Fig. 8: a few inputs, one column per system")
@click.option("--figure-rows", type=int, default=3, show_default=True, help="inputs per direction in --figure")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Markdown file for the table; the numbers go to the same name with .json")
def eval_portrait(models, baselines, backbone, count, num_steps, batch, seed, probes, figure, figure_rows,
                  output) -> None:
    """Table 1 and Fig. 8 of the portrait paper: edit success, identity, background, mask IoU per system."""
    import json

    from retouch.backbone import MINI_DIR, load_backbone
    from retouch.imageio import atomic_write_text
    from retouch.methods.portrait import PortraitModel
    from retouch.metrics import TransformersCLIPJudge
    from retouch.train import evaluate_portrait as bench
    from retouch.world import World
    from retouch.world.probe import SHIPPED_PROBES, load_probes

    for path, suffix, flag in ((output, ".md", "--output"), (figure, ".png", "--figure")):
        if path is None:
            continue
        if path.suffix.lower() != suffix:
            raise RetouchError(f"{flag} must be a {suffix} file; got '{path}'")
        if not path.parent.is_dir():
            raise RetouchError(f"cannot write '{path}': folder '{path.parent}' does not exist")
    for flag, value in (("--count", count), ("--num-steps", num_steps), ("--batch", batch)):
        if value < 1:
            raise RetouchError(f"{flag} must be at least 1; got {value}")
    chosen = [] if baselines.strip() == "none" else [b.strip() for b in baselines.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in bench.BASELINES]
    if unknown:
        raise RetouchError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(bench.BASELINES)} or none")
    named = _named_folders(models, "--model")
    loaded = {name: PortraitModel.load(Path(folder)) for name, folder in named.items()}
    probe_set = load_probes(probes or SHIPPED_PROBES)
    text_to_image = load_backbone(backbone)
    systems = bench.reference_systems(text_to_image)
    for name, model in loaded.items():
        systems += bench.mcdm_systems(name, model, num_steps=num_steps, seed=seed)
    systems += bench.baseline_systems(text_to_image, chosen, num_steps=num_steps, seed=seed)
    world = World(seed=seed, size=64)
    inputs = {d: bench.direction_inputs(world, d, count) for d in bench.DIRECTIONS}
    judge = TransformersCLIPJudge(MINI_DIR / "judge")
    result = bench.evaluate(systems, inputs, probe_set, judge, batch=batch, figure_rows=figure_rows if figure else 0,
                            log=click.echo)
    header = (f"Mini world, {count} held-out inputs per direction, {num_steps} DDIM steps, baselines on "
              f"`{backbone}`, seed {seed}. Success and identity by the attribute probes; CLIP-Acc by the "
              "zero-shot mini judge; background outside the true edit region (PSNR capped at "
              f"{bench.PSNR_CAP:g} dB per image); mask IoU against that region.")
    atomic_write_text(output, bench.report_markdown(result.rows, header))
    atomic_write_text(output.with_suffix(".json"), json.dumps({"settings": {
        "count": count, "num_steps": num_steps, "backbone": backbone, "seed": seed, "models": named,
        "baselines": chosen}, "rows": result.rows}, indent=2) + "\n")
    if figure is not None:
        bench.save_figure(result.figure, figure)
    click.echo(f"wrote {output} and {output.with_suffix('.json')}" + (f" and {figure}" if figure else ""))


@cli.group()
def data() -> None:
    """Build datasets (offline, from local images and procedural sources)."""


@data.command("compositing")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="new folder for the shards, manifest.jsonl and dataset.json")
@click.option("--images", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder of your own images (random crops, hash split)")
@click.option("--world-scenes", type=int, default=400, show_default=True, help="mini-world scenes")
@click.option("--dead-leaves", type=int, default=400, show_default=True, help="dead-leaves images")
@click.option("--photos/--no-photos", default=True, show_default=True,
              help="scikit-image's photographs as the held-out 'photos' split")
@click.option("--crop", type=int, default=64, show_default=True, help="side of the square crops")
@click.option("--crops-per-image", type=int, default=4, show_default=True, help="crops per folder image or photo")
@click.option("--split", default="0.8,0.1,0.1", show_default=True, help="train,val,test fractions")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--grain-samples", type=int, default=800, show_default=True,
              help="film grain's Monte-Carlo samples per pixel (Newson et al.: 800; fewer is faster and noisier)")
@click.option("--shard-size", type=int, default=256, show_default=True, help="samples per tar shard")
@click.option("--workers", type=int, default=1, show_default=True,
              help="processes rendering the targets (the dataset's bytes do not depend on it)")
def data_compositing(output: Path, images, world_scenes, dead_leaves, photos, crop, crops_per_image, split, seed,
                     grain_samples, shard_size, workers) -> None:
    """The multi-task paper's compositing benchmark: crops with blur, grain ×5, colour, mask, sharpen targets."""
    from retouch.data.compositing import CompositingConfig, build_compositing_dataset

    try:
        fractions = tuple(float(part) for part in split.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3:
        raise RetouchError(f"--split takes three comma-separated fractions, e.g. 0.8,0.1,0.1; got {split!r}")
    config = CompositingConfig(images=str(images) if images else None, world_scenes=world_scenes,
                               dead_leaves=dead_leaves, photos=photos, crop=crop, crops_per_image=crops_per_image,
                               split=fractions, seed=seed, grain_samples=grain_samples, shard_size=shard_size,
                               workers=workers)
    from tqdm.auto import tqdm

    bars = []  # opened on the first finished sample, so a refused build prints only its error line

    def progress(done, total):
        if not bars:
            bars.append(tqdm(total=total, desc="building", unit="sample", file=sys.stderr))
        bars[0].update(done - bars[0].n)

    try:
        summary = build_compositing_dataset(config, output, progress)
    finally:
        for bar in bars:
            bar.close()
    counts = ", ".join(f"{split_name} {n}" for split_name, n in summary["counts"].items())
    click.echo(f"wrote {output}: {counts}")


@data.command("pairs")
@click.option("-o", "--out", "output", type=click.Path(path_type=Path), required=True,
              help="new folder for left/, right/, rejected/, manifest.jsonl and dataset.json")
@click.option("--direction", required=True, help="edit direction: striped (plain → striped) or hat (none → hat)")
@click.option("--count", type=int, default=64, show_default=True, help="pairs to make (kept or not)")
@click.option("--source", default="generate", show_default=True,
              help="generate (side-by-side diffusion, Eq. 2) or renderer (the world's ground-truth pairs)")
@click.option("--model", default="mini", show_default=True, help="backbone that generates (tiny name, folder, file)")
@click.option("--steps", type=int, default=25, show_default=True, help="DDIM steps")
@click.option("--guidance-scale", type=float, default=5.0, show_default=True, help="CFG scale of each ε̃ in Eq. 2")
@click.option("--strengths", default="0.5,0.5,0.5", show_default=True, help="s_d,s_a,s_b of Eq. 2")
@click.option("--seed", type=int, default=0, show_default=True, help="world seed and base of the noise seeds")
@click.option("--split", default="train", show_default=True, help="world split of the pairs: train, val or test")
@click.option("--batch", type=int, default=8, show_default=True, help="pairs per denoising batch")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, … or auto")
@click.option("--overwrite", is_flag=True, help="replace an existing pairs dataset in the output folder")
@click.pass_context
def data_pairs(ctx, output: Path, direction, count, source, model, steps, guidance_scale, strengths, seed, split, batch,
               device, overwrite) -> None:
    """Paired data for the portrait paper's MCDM (§3.2): one side-by-side denoising per pair, filtered."""
    import torch

    from retouch.data.pairs import PairGuidance, PairsConfig, build_pairs_dataset

    if source == "renderer":
        given = [f"--{name.replace('_', '-')}" for name in ("model", "steps", "guidance_scale", "strengths")
                 if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
        if given:
            raise RetouchError(f"{', '.join(given)} only apply to --source generate")
    try:
        s_d, s_a, s_b = (float(part) for part in strengths.split(","))
    except ValueError:
        raise RetouchError(f"--strengths takes three comma-separated numbers s_d,s_a,s_b; got {strengths!r}") from None
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    config = PairsConfig(direction=direction, count=count, source=source, model=model, steps=steps, seed=seed,
                         split=split, guidance=PairGuidance(guidance_scale, s_d, s_a, s_b), batch=batch,
                         device=device, overwrite=overwrite)
    from tqdm.auto import tqdm

    bars = []  # opened on the first finished batch, so a refused build prints only its error line

    def progress(done, total):
        if not bars:
            bars.append(tqdm(total=total, desc="pairs", unit="pair", file=sys.stderr))
        bars[0].update(done - bars[0].n)

    try:
        summary = build_pairs_dataset(config, output, progress)
    finally:
        for bar in bars:
            bar.close()
    click.echo(f"wrote {output}: {summary['pairs']} {split} pairs ({direction}, {source}), kept {summary['kept']} "
               f"({100 * summary['kept_fraction']:.0f} %)")


@cli.command("world")
@click.option("-o", "--output", "folder", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="folder for scene PNGs, mask PNGs and scenes.jsonl")
@click.option("--count", type=int, default=16, show_default=True, help="how many scenes (or pairs)")
@click.option("--start", type=int, default=0, show_default=True, help="index of the first scene")
@click.option("--seed", type=int, default=0, show_default=True, help="world seed: every scene is a function of it")
@click.option("--size", type=int, default=64, show_default=True, help="side of a scene in pixels")
@click.option("--pairs", "change", default=None, metavar="ATTR=VALUE",
              help="render side-by-side pairs instead, the right object changed, e.g. pattern=striped")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), help="also write a contact sheet here")
def world(folder: Path, count: int, start: int, seed: int, size: int, change: str | None, grid: Path | None) -> None:
    """Render mini-world scenes with their captions, attributes and exact per-object masks."""
    import json

    import numpy as np

    from retouch.imageio import save_image
    from retouch.world import VOCABULARIES, World, sample_grid

    if not 1 <= count <= 100_000:
        raise RetouchError(f"--count must lie in [1, 100000]; got {count}")
    if not 16 <= size <= 1024:
        raise RetouchError(f"--size must lie in [16, 1024]; got {size}")
    if start < 0:
        raise RetouchError(f"--start must be ≥ 0; got {start}")
    changes = _parse_change(change, VOCABULARIES) if change is not None else None
    first = f"{'pair' if changes is not None else 'scene'}_{start:06d}.png"
    _check_outputs([folder / first, *([grid] if grid else [])], [])
    mini = World(seed=seed, size=size)
    records = []
    for index in range(start, start + count):
        if changes is not None:
            left, right, rendered, prompts = mini.pair(index, changes)
            record = {"index": index, "caption": prompts.shared, "left_caption": prompts.left,
                      "right_caption": prompts.right,
                      "left": _spec_dict(left), "right": _spec_dict(right)}
            name = f"pair_{index:06d}"
        else:
            spec, rendered, text = mini.scene(index)
            record = {"index": index, "split": mini.split(index), "caption": text, "scene": _spec_dict(spec)}
            name = f"scene_{index:06d}"
        save_image(rendered.image, folder / f"{name}.png", make_parents=True)
        # mask PNG: 0 = background, k = object k (1-based), scaled so it is visible in a viewer
        labels = np.zeros(rendered.image.shape[:2], dtype=np.float32)
        for k, mask in enumerate(rendered.masks, start=1):
            labels[mask] = k
        save_image(labels / 3.0, folder / f"{name}_mask.png")
        records.append({**record, "image": f"{name}.png", "mask": f"{name}_mask.png"})
    from retouch.imageio import atomic_write_text

    atomic_write_text(folder / "scenes.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    if grid is not None:
        rows = max(1, min(4, count // 8))
        save_image(sample_grid(mini, rows, 8, start=start), grid, make_parents=True)
    click.echo(f"wrote {count} {'pairs' if changes is not None else 'scenes'} to {folder}"
               + (f" and a contact sheet to {grid}" if grid else ""))


def _parse_change(text: str, vocabularies: dict) -> dict:
    """``"pattern=striped,colour=blue"`` → dict, checked against the world's vocabularies."""
    changes = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if name not in vocabularies or name in ("background", "position"):
            choices = ", ".join(n for n in vocabularies if n not in ("background", "position"))
            raise RetouchError(f"bad --pairs {text!r}: attribute must be one of {choices}")
        if value not in vocabularies[name]:
            raise RetouchError(f"bad --pairs {text!r}: {name} must be one of {', '.join(vocabularies[name])}")
        changes[name] = value
    return changes


def _spec_dict(spec) -> dict:
    return {"background": spec.background,
            "objects": [dataclasses.asdict(obj) for obj in spec.objects]}


# ---------------------------------------------------------------------------------------------
# retouch demo (the README's main job)
# ---------------------------------------------------------------------------------------------
#: The documented effects recipe: scikit-image's "astronaut" photograph with a light motion blur,
#: the colour grading of its "coffee" photograph, unsharp masking and film grain at σ = 0.05.
DEMO_RECIPE = dict(blur=0.25, blur_angle=30.0, grain=0.05, sharpen=(1.5, 0.02), seed=0)
#: The documented diffusion demo: the first held-out (test-split) single-object mini-world scenes,
#: each edited by swapping one attribute word of its caption.
DEMO_EDITS = ("colour", "shape", "colour", "pattern")
DEMO_METHOD = "sdedit"


@cli.command()
@click.option("-o", "--output", "folder", type=click.Path(file_okay=False, path_type=Path), default=Path("out/demo"),
              show_default=True, help="folder for input.png, result.png and comparison.png")
@click.option("--effects", is_flag=True, help="run the compositing-effects demo on a photograph instead")
@click.option("--size", type=int, default=256, show_default=True, help="[--effects] side of the square crop")
def demo(folder: Path, effects: bool, size: int) -> None:
    """Edit held-out mini-world scenes with the shipped mini models (input | output strips).

    Everything is offline: the scenes are rendered on the fly and the models ship with retouch.
    """
    if effects:
        _effects_demo(folder, size)
    else:
        _diffusion_demo(folder)


def _diffusion_demo(folder: Path) -> None:
    import numpy as np
    import torch

    from retouch.backbone import load_backbone
    from retouch.imageio import from_tensor_batch, save_image, side_by_side, to_tensor_batch
    from retouch.methods import get_method
    from retouch.train.evaluate_mini import held_out_scenes
    from retouch.world import World

    _check_outputs([folder / "comparison.png"], [])
    started = time.perf_counter()
    backbone = load_backbone("mini")
    scenes = held_out_scenes(World(seed=0, size=64), len(DEMO_EDITS))
    inputs, sources, targets = [], [], []
    for image, spec, attribute in zip(scenes.images, scenes.specs, DEMO_EDITS):
        source_text, target_text = _demo_texts(spec, attribute)
        inputs.append(image.permute(1, 2, 0).numpy())
        sources.append(source_text)
        targets.append(target_text)
    method = get_method(DEMO_METHOD)
    results = []
    for image, source_text, target_text in zip(inputs, sources, targets):
        config = method.config_class(prompt=target_text, strength=0.6, num_steps=50, guidance_scale=5.0, seed=0)
        edited = method.edit(backbone, to_tensor_batch([image]), config)
        results.append(from_tensor_batch(edited)[0])
    elapsed = time.perf_counter() - started
    rows = [side_by_side([_upscale(image, 4), _upscale(result, 4)], labels=[source, "edited: " + target])
            for image, result, source, target in zip(inputs, results, sources, targets)]
    width = max(row.shape[1] for row in rows)
    strip = np.concatenate([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=1.0)
                            for row in rows])
    save_image(inputs[0], folder / "input.png", make_parents=True)
    save_image(results[0], folder / "result.png")
    save_image(strip, folder / "comparison.png")
    click.echo(f"wrote {folder}/input.png, result.png, comparison.png "
               f"({DEMO_METHOD} on the mini models, {len(inputs)} edits in {elapsed:.1f} s on {torch.get_num_threads()} threads)")


def _upscale(image, factor: int):
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def _demo_texts(spec, attribute: str) -> tuple[str, str]:
    """Canonical caption of a scene and of the same scene with one attribute of its object changed."""
    from retouch.world import VOCABULARIES, caption, with_changes

    values = VOCABULARIES[attribute]
    new_value = values[(values.index(getattr(spec.objects[0], attribute)) + 3) % len(values)]
    template = "a photo of {things} on {background}"
    return caption(spec, template=template), caption(with_changes(spec, **{attribute: new_value}), template=template)


def _effects_demo(folder: Path, size: int) -> None:
    from skimage import data

    from retouch.effects import EffectsRecipe, apply_effects
    from retouch.imageio import resize_image, save_image, side_by_side

    if not 16 <= size <= 2048:
        raise RetouchError(f"--size must lie in [16, 2048]; got {size}")
    photo = resize_image(data.astronaut().astype("float32") / 255.0, (size, size))
    reference = data.coffee().astype("float32") / 255.0
    started = time.perf_counter()
    result = apply_effects(photo, EffectsRecipe(reference=reference, **DEMO_RECIPE))
    elapsed = time.perf_counter() - started
    strip = side_by_side([photo, resize_image(reference, (size * reference.shape[1] // reference.shape[0], size)),
                          result], labels=["input (astronaut)", "colour reference (coffee)", "result"])
    for name, image in (("input.png", photo), ("result.png", result), ("comparison.png", strip)):
        save_image(image, folder / name, make_parents=True)
    click.echo(f"wrote {folder}/input.png, result.png, comparison.png (effects took {elapsed:.1f} s)")


# ---------------------------------------------------------------------------------------------
# shared output handling
# ---------------------------------------------------------------------------------------------
def _check_outputs(outputs: list[Path], inputs: list[Path]) -> None:
    """Refuse unusable outputs before any work: bad extension, an input, a clash, an unwritable folder."""
    from retouch.imageio import check_output_path

    if len(set(map(str, outputs))) != len(outputs):
        raise RetouchError("the output and comparison paths must differ")
    for path in outputs:
        check_output_path(path, inputs=inputs, make_parents=True)


def _save_all(output: Path, result, compare: Path | None, panels, inputs) -> None:
    from retouch.imageio import save_image, side_by_side

    save_image(result, output, inputs=inputs, make_parents=True)
    if compare is not None:
        save_image(side_by_side(panels, labels=["input", "output"]), compare, inputs=inputs, make_parents=True)


if __name__ == "__main__":  # pragma: no cover
    main()
