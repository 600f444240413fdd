"""pix2pix-zero distilled into a feed-forward translator (§4.5) on the mini world: speed-up and quality.

    .venv/bin/python benchmarks/distill_mini.py [--edit red->blue] [--pairs 200] [--train-steps 600]
        [--test 50] [--edit-steps 25] [--threads 2] [--work out/distill/red-to-blue] [--out docs/distill_mini.md]

Collects and filters pix2pix-zero pairs on training-split scenes and trains the translator
(``retouch.train.distill``) in ``--work`` (default: the edit's folder under out/, where ``make
distill-model`` trains it and ``retouch bench paper`` looks for it; the pairs are cached there and training
resumes from its checkpoints, so a translator already trained there with the same settings is reused), then
edits ``--test`` held-out scenes both ways and reports, side by side: seconds per image (the diffusion
edit's invert + edit vs one translator forward pass, each image edited on its own and timed, as ``retouch
bench paper`` does), CLIP-Acc, background L1/SSIM outside the object and structure distance (the judge's
ViT keys), as in ``ablation_mini.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from _grid import save_labelled_rows
from _options import script_parser

from retouch.backbone import MINI_DIR, load_backbone
from retouch.distributed import exit_unless_main_process
from retouch.edit_text import parse_edit
from retouch.metrics import TransformersCLIPJudge, background_preservation, clip_accuracy, structure_distance
from retouch.metrics.structure import TransformersViTSpatial
from retouch.train.distill import (
    DistillConfig,
    distill,
    final_translator,
    load_translator,
    pix2pix_zero_edits,
    teacher_settings,
    time_per_image,
    trained_folder,
    translate,
)
from retouch.world import World
from retouch.world.edits import edit_scenes


def main():
    args = script_parser(__doc__, edit=DistillConfig.edit, pairs=DistillConfig.pairs,
                         train_steps=DistillConfig.train_steps, test=50, edit_steps=DistillConfig.edit_steps, threads=2,
                         batch=DistillConfig.batch, clip_increase=DistillConfig.clip_increase,
                         inside_fraction=DistillConfig.inside_fraction, work=None,
                         out=Path("docs/distill_mini.md")).parse_args()
    torch.set_num_threads(args.threads)

    world = World(seed=0)
    backbone = load_backbone("mini")
    judge = TransformersCLIPJudge(MINI_DIR / "judge")
    structure = TransformersViTSpatial(MINI_DIR / "judge")
    work = args.work or str(Path("out") / trained_folder(args.edit))
    config = DistillConfig(edit=args.edit, output_dir=work, pairs=args.pairs, train_steps=args.train_steps,
                           edit_steps=args.edit_steps, batch=args.batch, clip_increase=args.clip_increase,
                           inside_fraction=args.inside_fraction)
    report = distill(backbone, judge, world, config)
    model = load_translator(final_translator(work))

    edit = parse_edit(args.edit)
    scenes = edit_scenes(world, edit.source, edit.target, args.test, split="test")
    diffusion, diffusion_seconds = time_per_image(lambda rows: pix2pix_zero_edits(
        backbone, scenes.images[rows], [scenes.sources[k] for k in rows], args.edit, steps=args.edit_steps, batch=1,
        seed=0, settings=teacher_settings(config.model)), args.test)
    with torch.no_grad():
        distilled, distilled_seconds = time_per_image(lambda rows: translate(model, scenes.images[rows]), args.test)
    diffusion_seconds, distilled_seconds = diffusion_seconds.mean(), distilled_seconds.mean()

    command = (f"python benchmarks/distill_mini.py --edit {args.edit} --pairs {args.pairs} "
               f"--train-steps {args.train_steps} --batch {args.batch} --test {args.test} --edit-steps {args.edit_steps} "
               f"--threads {args.threads} --clip-increase {args.clip_increase:g} "
               f"--inside-fraction {args.inside_fraction:g}")
    lines = [f"Mini world, edit `{args.edit}`: {report['pairs_kept']} of {report['pairs_collected']} pix2pix-zero "
             f"pairs kept by the filter (judge cosine rise ≥ {config.clip_increase:g}, change inside the object ≥ "
             f"{config.inside_fraction:g}); translator trained {args.train_steps} steps "
             f"({report['train_seconds'] / 60:.1f} min); {args.test} held-out test scenes, {args.threads} CPU threads "
             f"(`{command}`). Pair scores, 10/50/90 % quantiles: {report['score_quantiles_10_50_90']}.", "",
             "| edit by | s/image | speed-up | CLIP-Acc ↑ | BG L1 ↓ | BG SSIM ↑ | structure dist ↓ |",
             "|---|---|---|---|---|---|---|"]
    for name, edited, seconds in (("pix2pix-zero (diffusion)", diffusion, diffusion_seconds),
                                  ("distilled translator", distilled, distilled_seconds)):
        accuracy = clip_accuracy(judge, edited, scenes.sources, scenes.targets).mean().item()
        background = background_preservation(scenes.images, edited, scenes.masks)
        distance = structure_distance(structure, scenes.images, edited).mean().item()
        lines.append(f"| {name} | {seconds:.4f} | ×{diffusion_seconds / seconds:,.0f} | {accuracy:.2f} | "
                     f"{background['l1'].mean().item():.4f} | {background['ssim'].mean().item():.3f} | {distance:.4f} |")
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    save_labelled_rows([scenes.images[:8], diffusion[:8], distilled[:8]], args.out.with_suffix(".png"),
                       ["input", "pix2pix-zero", "distilled"])
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
