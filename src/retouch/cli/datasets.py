"""``retouch data`` and ``retouch world``: datasets built offline, and mini-world scenes."""

from __future__ import annotations

from pathlib import Path

import click

from retouch.cli.common import DEFAULT_MODEL, device_option, seed_option
from retouch.errors import RetouchError


@click.group()
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
@seed_option()
@click.option("--grain-samples", type=int, default=800, show_default=True,
              help="film grain's Monte-Carlo samples per pixel (Newson et al.: 800; fewer is faster and noisier)")
@click.option("--shard-size", type=int, default=256, show_default=True, help="samples per tar shard")
@click.option("--workers", type=int, default=1, show_default=True,
              help="processes rendering the targets (the dataset's bytes do not depend on it)")
@click.option("--train-combinations", type=int, default=0, show_default=True,
              help="multi-task targets per training crop, random sets of 2-3 tasks (not the paper, which trains on "
                   "single tasks; for `retouch train multitask --combination-share`)")
def data_compositing(output: Path, images, world_scenes, dead_leaves, photos, crop, crops_per_image, split, seed,
                     grain_samples, shard_size, workers, train_combinations) -> None:
    """The multi-task paper's compositing benchmark: crops with blur, grain ×5, colour, mask, sharpen targets."""
    from retouch.data.compositing import CompositingConfig, build_compositing_dataset
    from retouch.progress import count_bar

    try:
        fractions = tuple(float(part) for part in split.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3:
        raise RetouchError(f"--split takes three comma-separated fractions, e.g. 0.8,0.1,0.1; got {split!r}")
    config = CompositingConfig(images=str(images) if images else None, world_scenes=world_scenes,
                               dead_leaves=dead_leaves, photos=photos, crop=crop, crops_per_image=crops_per_image,
                               split=fractions, seed=seed, grain_samples=grain_samples, shard_size=shard_size,
                               workers=workers, train_combinations=train_combinations)
    with count_bar("building", "sample") as progress:
        summary = build_compositing_dataset(config, output, progress)
    counts = ", ".join(f"{split_name} {n}" for split_name, n in summary["counts"].items())
    click.echo(f"wrote {output}: {counts}")


@data.command("pairs")
@click.option("-o", "--out", "output", type=click.Path(path_type=Path), required=True,
              help="new folder for left/, right/, rejected/, manifest.jsonl and dataset.json")
@click.option("--direction", required=True, help="edit direction: striped (plain → striped) or hat (none → hat)")
@click.option("--count", type=int, default=64, show_default=True, help="pairs to make (kept or not)")
@click.option("--source", default="generate", show_default=True,
              help="generate (side-by-side diffusion, Eq. 2) or renderer (the world's ground-truth pairs)")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="backbone that generates (model name, folder, file)")
@click.option("--steps", type=int, default=25, show_default=True, help="DDIM steps")
@click.option("--guidance-scale", type=float, default=5.0, show_default=True, help="CFG scale of each ε̃ in Eq. 2")
@click.option("--strengths", default="0.5,0.5,0.5", show_default=True, help="s_d,s_a,s_b of Eq. 2")
@seed_option("world seed and base of the noise seeds")
@click.option("--split", default="train", show_default=True, help="world split of the pairs: train, val or test")
@click.option("--batch", type=int, default=8, show_default=True, help="pairs per denoising batch")
@click.option("--terminal-prior", is_flag=True,
              help="start each pair's z_T from the model's terminal prior (the channel means its prompt implies; "
                   "docs/world_v2.md) instead of pure noise")
@device_option
@click.option("--overwrite", is_flag=True, help="replace an existing pairs dataset in the output folder")
@click.pass_context
def data_pairs(ctx, output: Path, direction, count, source, model, steps, guidance_scale, strengths, seed, split, batch,
               terminal_prior, device, overwrite) -> None:
    """Paired data for the portrait paper's MCDM (§3.2): one side-by-side denoising per pair, filtered."""
    from retouch.backbone import resolve_device
    from retouch.data.pairs import PairGuidance, PairsConfig, build_pairs_dataset
    from retouch.progress import count_bar

    if source == "renderer":
        given = [f"--{name.replace('_', '-')}" for name in ("model", "steps", "guidance_scale", "strengths",
                                                             "terminal_prior")
                 if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
        if given:
            raise RetouchError(f"{', '.join(given)} only apply to --source generate")
    try:
        s_d, s_a, s_b = (float(part) for part in strengths.split(","))
    except ValueError:
        raise RetouchError(f"--strengths takes three comma-separated numbers s_d,s_a,s_b; got {strengths!r}") from None
    config = PairsConfig(direction=direction, count=count, source=source, model=model, steps=steps, seed=seed,
                         split=split, guidance=PairGuidance(guidance_scale, s_d, s_a, s_b), batch=batch,
                         terminal_prior=terminal_prior, device=resolve_device(device), overwrite=overwrite)
    with count_bar("pairs", "pair") as progress:
        summary = build_pairs_dataset(config, output, progress)
    click.echo(f"wrote {output}: {summary['pairs']} {split} pairs ({direction}, {source}), kept {summary['kept']} "
               f"({100 * summary['kept_fraction']:.0f} %)")


@data.command("refilter")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
def data_refilter(folder: Path) -> None:
    """Apply the current pair filter to a `retouch data pairs` dataset again, from its stored scores."""
    from retouch.data.pairs import refilter_pairs

    if not (folder / "manifest.jsonl").is_file() or not (folder / "dataset.json").is_file():
        raise RetouchError(f"'{folder}' is not a pairs dataset (no manifest.jsonl and dataset.json)")
    summary = refilter_pairs(folder)
    click.echo(f"refiltered {folder}: kept {summary['kept']} of {summary['pairs']} ({100 * summary['kept_fraction']:.0f} %)")


@click.command("world")
@click.option("-o", "--output", "folder", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="folder for scene PNGs, mask PNGs and scenes.jsonl")
@click.option("--count", type=int, default=16, show_default=True, help="how many scenes (or pairs)")
@click.option("--start", type=int, default=0, show_default=True, help="index of the first scene")
@seed_option("world seed: every scene is a function of it")
@click.option("--size", type=int, default=64, show_default=True, help="side of a scene in pixels")
@click.option("--pairs", "change", default=None, metavar="ATTR=VALUE",
              help="render side-by-side pairs instead, the right object changed, e.g. pattern=striped")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), help="also write a contact sheet here")
def world(folder: Path, count: int, start: int, seed: int, size: int, change: str | None, grid: Path | None) -> None:
    """Render mini-world scenes with their captions, attributes and exact per-object masks."""
    from retouch.data.scenes import write_scenes

    click.echo(write_scenes(folder, count=count, start=start, seed=seed, size=size, change=change, grid=grid))
