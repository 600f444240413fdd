"""``retouch train``: the mini models, the multitask compositing model, the portrait MCDM and its pair
prior, pix2pix-zero's distilled translator; ``retouch train ship`` makes a trained model the default.
Every training command runs unchanged under ``accelerate launch``."""

from __future__ import annotations

from pathlib import Path

import click

from retouch.cli.common import comma_list, mixed_precision_option, say_trained, seed_option
from retouch.errors import RetouchError


@click.group()
def train() -> None:
    """Train retouch's models (runs unchanged under `accelerate launch`)."""


@train.command("mini")
@click.option("--stages", default="tokenizer,vae,decoder,splice_decoder,clip,judge,unet,export", show_default=True,
              help="comma-separated subset of tokenizer, vae, decoder, splice_decoder, clip, judge, unet, export; "
                   "finished stages are reused")
@click.option("--recipe", type=click.Choice(["v1", "v2"]), default="v1", show_default=True,
              help="which world and model sizes to train (train/mini.py: MINI_RECIPES; v2: docs/world_v2.md)")
@click.option("--work-dir", default="out/train-mini", show_default=True, help="checkpoints and logs (resumable)")
@click.option("--export-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where the trained models go (default: the package's shipped folder)")
@seed_option()
@click.option("--vae-steps", type=int, default=None)
@click.option("--decoder-steps", type=int, default=None, help="local-decoder fine-tuning steps (encoder frozen)")
@click.option("--splice-steps", type=int, default=None,
              help="the splice decoder's fine-tuning steps, after the decoder stage (0 = no such stage)")
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
@click.option("--unet-offset-noise", type=float, default=None,
              help="per-channel offset added to the U-Net's training noise (0 = off; MiniConfig.unet_offset_noise)")
@click.option("--unet-learning-rate", type=float, default=None, help="peak learning rate of the U-Net stage")
@click.option("--unet-zero-terminal-snr", is_flag=True, default=None,
              help="Lin et al. 2024: ᾱ_T = 0, v-prediction, trailing steps (MiniConfig.unet_zero_terminal_snr)")
@click.option("--unet-init", default=None, help="a saved U-Net folder the U-Net stage fine-tunes")
def train_mini(stages, recipe, work_dir, export_dir, seed, vae_steps, decoder_steps, splice_steps, clip_steps,
               unet_steps, judge_steps, judge_batch, vae_batch, clip_batch, unet_batch, unet_object_weight, unet_min_snr_gamma,
               unet_offset_noise, unet_learning_rate, unet_zero_terminal_snr, unet_init) -> None:
    """Train the mini world's autoencoder, CLIP-style judge and text-to-image U-Net."""
    from retouch.train.mini import MINI_DIR, STAGES, mini_recipe, run_mini_training

    chosen = comma_list(stages)
    unknown = sorted(set(chosen) - set(STAGES))
    if unknown:
        raise RetouchError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    given = dict(vae_steps=vae_steps, decoder_steps=decoder_steps, splice_steps=splice_steps, clip_steps=clip_steps, unet_steps=unet_steps,
                 vae_batch=vae_batch, clip_batch=clip_batch, unet_batch=unet_batch, judge_steps=judge_steps,
                 judge_batch=judge_batch, unet_object_weight=unet_object_weight,
                 unet_min_snr_gamma=unet_min_snr_gamma, unet_offset_noise=unet_offset_noise,
                 unet_learning_rate=unet_learning_rate, unet_zero_terminal_snr=unet_zero_terminal_snr,
                 unet_init=unet_init)
    overrides = {name: value for name, value in given.items() if value is not None}
    config = mini_recipe(recipe, work_dir=work_dir, seed=seed, **overrides)  # checks the values (MiniConfig)
    report = run_mini_training(config, chosen, export_dir or MINI_DIR)
    for name, stats in report["stages"].items():
        click.echo(f"{name}: {stats['seconds'] / 60:.1f} min, {stats['samples_per_second']:.1f} samples/s, "
                   f"final loss {stats['final_loss']:.4f}")


@train.command("probes")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where the probes go (default: the shipped folder, assets/mini/probes)")
@click.option("--profile", type=click.Choice(["v1", "v2"]), default=None, help="world profile the probes read")
@click.option("--model", default="mini", show_default=True, help="backbone whose autoencoder round trip is reported")
@click.option("--judge", "judge_folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="judge folder for the linear-probe comparison (default: the shipped judge)")
@click.option("--train-scenes", type=click.IntRange(min=1), default=4000, show_default=True)
@click.option("--test-scenes", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=15, show_default=True)
@click.option("--blur", type=click.FloatRange(min=0), default=1.5, show_default=True,
              help="half of each batch is blurred by σ ~ U(0, blur) px")
@seed_option()
def train_probes(output, profile, model, judge_folder, train_scenes, test_scenes, epochs, blur, seed) -> None:
    """Train the pixel attribute probes (world/probe.py) and report them beside the judge's linear probe."""
    from retouch.world.probe import SHIPPED_PROBES, build_shipped_probes

    output = output or SHIPPED_PROBES
    build_shipped_probes(output, profile=profile, model=model, judge_folder=judge_folder, train_scenes=train_scenes,
                         test_scenes=test_scenes, epochs=epochs, blur=blur, seed=seed, log=click.echo)
    click.echo(f"wrote {output}")


def _channel_list(text: str | None) -> tuple[int, ...] | None:
    """``"32,32,64,128"`` → (32, 32, 64, 128); the config says what widths it takes."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in comma_list(text))
    except ValueError:
        raise RetouchError(f"--pixel-channels takes comma-separated integers, e.g. 32,32,64,128; got '{text}'") from None


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
@click.option("--conditioning", type=click.Choice(["cross-attention", "concat", "cross-attention+concat"]),
              default="cross-attention", show_default=True,
              help="ours (C through f_θ into cross-attention), Palette++ (all concatenated), or ours with C also "
                   "concatenated on the input (not the paper; what lets a pixel model tell local tasks apart)")
@click.option("--labels/--no-labels", default=True, show_default=True, help="binary task labels in C (ablation)")
@click.option("--mapping-depth", type=int, default=2, show_default=True, help="linear layers in f_θ (0, 1, 2, 4)")
@click.option("--loss-space", type=click.Choice(["epsilon", "v"]), default="epsilon", show_default=True,
              help="where Eq. 2's error is measured: ε (the paper) or v (weights high-noise steps by 1/√ᾱ)")
@click.option("--input-gain", type=float, default=1.0, show_default=True,
              help="factor on the z_A/reference input channels: >1 makes their zero-initialised weights learn faster")
@click.option("--space", type=click.Choice(["latent", "pixel"]), default="latent", show_default=True,
              help="latent diffusion on the backbone (the paper) or pixels with a small U-Net from scratch, no autoencoder")
@click.option("--prediction", type=click.Choice(["epsilon", "residual"]), default="epsilon", show_default=True,
              help="predict ε (Eq. 2, the paper) or the clean target as an offset from the input, x̂₀ − z_A")
@click.option("--block-conditioning", type=click.Choice(["add", "film"]), default="add", show_default=True,
              help="pixel U-Net: C and t added in each ResNet block, or FiLM (scale and shift of its features)")
@click.option("--pixel-channels", default=None,
              help="pixel U-Net: channels per level, e.g. '32,32,64,128' (default 16,32,64,128, the shipped width)")
@click.option("--crop", type=int, default=None,
              help="train a pixel model on random crop² windows of the dataset's crops (a quarter of the cost at 32)")
@click.option("--tasks", default="blur,grain,colour,inpaint,sharpen", show_default=True,
              help="tasks to train on (one task: the 'ours-single' baseline)")
@click.option("--task-weights", default=None,
              help="share of draws per task, e.g. 'inpaint=2,sharpen=2' (unnamed tasks: 1; default uniform, the paper)")
@click.option("--n-pair", type=click.Choice(["bottleneck", "labels"]), default=None,
              help="add Eq. 3's N-pair loss on U-Net bottleneck (config A) or label (config B) features")
@click.option("--n-pair-weight", type=float, default=0.1, show_default=True, help="its weight (not in the paper)")
@click.option("--identity-examples/--no-identity-examples", default=True, show_default=True,
              help="also train on unedited examples (target = input); off for --prediction residual, whose zero "
                   "residual they reward (docs/multitask.md)")
@click.option("--hole-channel/--no-hole-channel", default=False, show_default=True,
              help="give the network the inpainting hole as an input channel (not the paper: its only cue is "
                   "the zeroed source)")
@click.option("--min-timestep", type=int, default=0, show_default=True,
              help="train on noise levels t ≥ this only (0 = all, the paper); 999 = direct regression from z_A")
@click.option("--snr-weight-cap", type=float, default=1.0, show_default=True,
              help="residual models: weight the x̂₀ error by clamp(√SNR_t, 1, cap), so low noise levels count as in "
                   "the paper's ε loss (1 = uniform; not the paper)")
@click.option("--texture-weight", type=float, default=0.0, show_default=True,
              help="residual models: weight of a loss on the local texture amplitude of x̂₀ against the target's, "
                   "so random textures such as film grain are drawn rather than averaged away (0 = off, the paper)")
@click.option("--texture-tasks", default=None,
              help="with --texture-weight: only examples with one of these tasks on get the texture term, e.g. "
                   "'grain,sharpen' (of blur, grain, sharpen; default every example)")
@click.option("--combination-share", type=float, default=0.0, show_default=True,
              help="share of draws that are multi-task examples, 2-3 tasks at once (needs a dataset built with "
                   "--train-combinations; 0 = single tasks only, the paper)")
@mixed_precision_option
@seed_option()
def train_multitask_command(data, output_dir, init, steps, batch, learning_rate, loss_p, architecture, conditioning,
                            labels, mapping_depth, loss_space, input_gain, space, prediction, block_conditioning, pixel_channels, crop, tasks, task_weights, n_pair,
                            n_pair_weight, identity_examples, hole_channel, min_timestep, snr_weight_cap,
                            texture_weight, texture_tasks, combination_share, mixed_precision, seed) -> None:
    """Train the multi-task compositing model (multitask paper §3.2, §4.1) on a compositing dataset."""
    from retouch.train.multitask import MultitaskTrainConfig, parse_task_weights, train_multitask

    tasks = comma_list(tasks)
    config = MultitaskTrainConfig(data=str(data), output_dir=output_dir, init=init, steps=steps, batch=batch,
                                  learning_rate=learning_rate, loss_p=loss_p, architecture=architecture,
                                  conditioning=conditioning,
                                  labels=labels, mapping_depth=mapping_depth, loss_space=loss_space,
                                  input_gain=input_gain, space=space, prediction=prediction,
                                  block_conditioning=block_conditioning, crop=crop,
                                  pixel_channels=_channel_list(pixel_channels),
                                  tasks=tasks, task_weights=parse_task_weights(task_weights, tasks),
                                  n_pair=n_pair, n_pair_weight=n_pair_weight, min_timestep=min_timestep,
                                  snr_weight_cap=snr_weight_cap, identity_examples=identity_examples, hole_channel=hole_channel,
                                  texture_weight=texture_weight, combination_share=combination_share,
                                  texture_tasks=None if texture_tasks is None else comma_list(texture_tasks),
                                  mixed_precision=mixed_precision, seed=seed)
    _, report = train_multitask(config)
    say_trained(report, output_dir)


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
@mixed_precision_option
@seed_option()
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
    say_trained(report, output_dir, data=f" on {report['pairs']} pairs")


@train.command("pair-prior")
@click.option("--output-dir", default="out/pair-prior", show_default=True,
              help="checkpoints (resumable) and the fine-tuned backbone folder in final/")
@click.option("--init", default="mini", show_default=True, help="backbone whose U-Net is fine-tuned")
@click.option("--steps", type=int, default=1200, show_default=True)
@click.option("--batch", type=int, default=16, show_default=True)
@click.option("--learning-rate", type=float, default=4e-4, show_default=True,
              help="1e-4 barely moved the mini U-Net in 1,050 steps; 4e-4 gave twins (docs/portrait.md)")
@mixed_precision_option
@seed_option("world seed of the pairs and the loop's seed")
def train_pair_prior_command(output_dir, init, steps, batch, learning_rate, mixed_precision, seed) -> None:
    """Fine-tune a U-Net on side-by-side mini-world pairs, the prior Eq. 2 (portrait paper §3.2) needs."""
    from retouch.train.pair_prior import PairPriorConfig, train_pair_prior

    config = PairPriorConfig(output_dir=output_dir, init=init, steps=steps, batch=batch, learning_rate=learning_rate,
                             mixed_precision=mixed_precision, seed=seed)
    _, report = train_pair_prior(config)
    loss = report["final_loss"]
    say_trained(report, output_dir, rate_note="" if loss is None else f", final loss {loss:.4f}", what="backbone")


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
@seed_option()
def train_distill(edit, output_dir, model, judge_dir, pairs, edit_steps, train_steps, batch, clip_increase,
                  inside_fraction, lpips, seed) -> None:
    """Distil pix2pix-zero into a one-pass translator (pix2pix-zero §4.5) on mini-world pairs."""
    from retouch.train.distill import DistillConfig, distill_on_mini_world

    config = DistillConfig(edit=edit, model=model, output_dir=output_dir, pairs=pairs, edit_steps=edit_steps,
                           train_steps=train_steps, batch=batch, clip_increase=clip_increase,
                           inside_fraction=inside_fraction, lpips=lpips, seed=seed)
    click.echo(distill_on_mini_world(config, judge_dir))


@train.command("terminal-prior")
@click.option("--model", default="mini", show_default=True,
              help="a local backbone folder (or 'mini', the shipped one); the prior is saved into it")
@click.option("--scenes", type=click.IntRange(min=16), default=4096, show_default=True,
              help="training-split mini-world scenes the prior is fitted on")
@click.option("--profile", type=click.Choice(["v1", "v2"]), default=None, help="world profile (default: the world's)")
@seed_option()
def train_terminal_prior_command(model, scenes, profile, seed) -> None:
    """Fit the caption-conditioned start of text-to-image sampling (retouch/terminal_prior.py) to a mini-world
    backbone: the channel means its x_T should carry, so samples take their background from the caption."""
    from retouch.backbone import model_folder
    from retouch.progress import count_bar
    from retouch.train.terminal_prior import train_terminal_prior

    folder = model_folder(model)
    if folder is None or not (folder / "model_index.json").is_file():
        raise RetouchError(f"--model must be a local diffusers backbone folder or 'mini', not '{model}'")
    with count_bar("encoding scenes", "scene") as progress:
        report = train_terminal_prior(folder, count=scenes, seed=seed, profile=profile, progress=progress)
    r2 = ", ".join(f"{v:.3f}" for v in report["r2_val"])
    click.echo(f"wrote {report['path']} (validation R² of the channel means: {r2})")


@train.command("ship")
@click.argument("kind", type=click.Choice(["multitask", "portrait"]))
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--base", default="mini", show_default=True,
              help="[portrait] the backbone whose frozen parts (autoencoder, text encoder) the MCDM shares")
def train_ship(kind: str, folder: Path, base: str) -> None:
    """Make a trained model (FOLDER = …/final) the package default of --method KIND (U-Net in float16)."""
    if kind == "multitask":
        from retouch.train.multitask import ship_multitask_model

        click.echo(f"shipped to {ship_multitask_model(folder)}")
    else:
        from retouch.train.portrait import ship_portrait_model

        click.echo(f"shipped to {ship_portrait_model(folder, base=base)}")
