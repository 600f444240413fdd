"""``retouch eval``: the papers' tables on the trained models (multitask Tables 2–4, portrait Table 1 and
Fig. 8, the mini models' own evaluation)."""

from __future__ import annotations

from pathlib import Path

import click

from retouch.cli.common import comma_list, named_folders, seed_option


@click.group("eval")
def evaluate() -> None:
    """Evaluate trained models on their benchmarks and write tables."""


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
    from retouch.train.evaluate_multitask import run_multitask_tables

    click.echo(run_multitask_tables(output, data, named_folders(models, "--model"),
                                    singles=named_folders(singles, "--single"), split=split, tasks=comma_list(tasks),
                                    steps=steps, limit=limit, judge=judge, lpips_weights=lpips_weights))



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
@seed_option("world seed and seed of every system's noise")
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
    from retouch.train.evaluate_portrait import run_portrait_table

    chosen = [] if baselines.strip() == "none" else list(comma_list(baselines))
    click.echo(run_portrait_table(output, models=named_folders(models, "--model"), baselines=chosen, backbone=backbone,
                                  count=count, num_steps=num_steps, batch=batch, seed=seed, probes=probes,
                                  figure=figure, figure_rows=figure_rows, log=click.echo))


@evaluate.command("mini")
@click.option("--models", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="the mini models' folder (default: the shipped one); evaluation.json and MODEL_CARD.md go there")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/mini_samples.png"),
              show_default=True, help="contact sheet of held-out scenes and generated samples")
@click.option("--generation-count", type=int, default=200, show_default=True, help="generated samples scored")
def eval_mini(models, grid, generation_count) -> None:
    """The mini models on held-out mini-world scenes: reconstruction, judge accuracy, generation (make mini-models)."""
    from retouch.train.evaluate_mini import evaluate_and_document

    click.echo(evaluate_and_document(models, grid=grid, generation_count=generation_count))


@evaluate.command("edits")
@click.option("--edits", default="red->blue,circle->square,plain->striped,none->hat", show_default=True,
              help="comma-separated SOURCE->TARGET attribute edits of the mini world")
@click.option("--method", default="pix2pix-zero", show_default=True, help="the editing method")
@click.option("--set", "settings", multiple=True, metavar="FIELD=VALUE",
              help="a method config field, e.g. --set xa_guidance=0.2 (repeatable)")
@click.option("--count", type=click.IntRange(min=1), default=100, show_default=True, help="held-out scenes per edit")
@click.option("--batch", type=click.IntRange(min=1), default=25, show_default=True, help="scenes edited at once")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSON file for the report")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG: the first 8 inputs and edits of every edit")
def eval_edits(edits, method, settings, count, batch, output, grid) -> None:
    """Attribute edits on held-out mini-world scenes with the shipped mini models: success by the probes and
    by the judge, background L1 outside the edited object, object centre moved."""
    from retouch.batch import typed_settings
    from retouch.methods import get_method
    from retouch.train.evaluate_edits import run_edit_evaluation

    typed = typed_settings(get_method(method).config_class, named_folders(settings, "--set"))
    click.echo(run_edit_evaluation(comma_list(edits), output, method=method, settings=typed,
                                   count=count, batch=batch, grid=grid))
