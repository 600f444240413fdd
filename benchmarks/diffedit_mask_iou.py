"""How well DiffEdit's mask (§3.2 step 1) finds the edited object on the shipped mini model.

    nice -n 19 .venv/bin/python benchmarks/diffedit_mask_iou.py [--scenes 100] [--draws 10]
        [--strength 0.5] [--threshold 0.5] [--num-steps 50] [--threads 2] [--model mini]

For each direction (plain→striped, none→hat) it takes ``edit_scenes(World(0), source, target, N)``:
single-object test scenes with their source and target captions and the object's true mask grown by
2 px. The mask contrasts the mini U-Net's noise predictions under the two captions (reference R = the
input's caption, query Q = its edited caption), is upsampled nearest from the 16² latent grid to 64²
pixels, and is scored by IoU with the true mask, per image, averaged. References: an all-ones mask
(its IoU is the object's share of the image) and a centred disc with the mean true-mask area (knows
the object's size, not where it is), and the latent-grid ceiling: the true mask rounded to the 16²
grid (a cell is in when half its pixels are), the best a latent mask can do. The last column is the
threshold that would have maximised the mean IoU on these scenes (an oracle, from the same maps). The hat is drawn above the body, outside the input's object
mask, so for none→hat the script also scores against the edited scene's mask (body ∪ hat) and
against the hat alone (edited mask minus input mask).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from _options import script_parser

from retouch._quiet import quiet_third_party
from retouch.backbone import load_backbone
from retouch.distributed import exit_unless_main_process
from retouch.methods.diffedit import difference_mask, mask_to_pixels, text_noise_predictor
from retouch.world import World
from retouch.world.edits import MASK_GROWTH, edit_scenes
from retouch.world.render import render_scene
from retouch.world.scene import sample_scene, with_changes
from retouch.world.vocabulary import attribute_of

DIRECTIONS = (("plain", "striped"), ("none", "hat"))
THRESHOLDS = tuple(k / 10 for k in range(1, 10))


def edited_masks(world: World, source: str, target: str, count: int, split: str = "test") -> torch.Tensor:
    """The object masks (N, 1, H, W) bool of the *edited* scenes, grown like ``edit_scenes``' masks.

    Walks the same scene streams as :func:`retouch.world.edits.edit_scenes` (index i from (seed, i, 7)).
    """
    attribute, masks, index = attribute_of(source), [], 0
    while len(masks) < count:
        if world.split(index) == split:
            spec = sample_scene(np.random.default_rng([world.seed, index, 7]), n_objects=1, **{attribute: source})
            masks.append(render_scene(with_changes(spec, **{attribute: target}), world.size).masks[0])
        index += 1
    mask = torch.from_numpy(np.stack(masks)).float()[:, None]
    side = 2 * MASK_GROWTH + 1
    return torch.nn.functional.max_pool2d(mask, side, stride=1, padding=MASK_GROWTH) > 0.5


def iou(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of (N, 1, H, W) bool masks (1 when both are empty)."""
    inter = (predicted & truth).flatten(1).sum(1).float()
    union = (predicted | truth).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def latent_grid(truth: torch.Tensor, factor: int) -> torch.Tensor:
    """``truth`` (N, 1, H, W) bool rounded to the latent grid: cells at least half inside, upsampled back."""
    cells = torch.nn.functional.avg_pool2d(truth.float(), factor) >= 0.5
    return mask_to_pixels(cells, truth.shape[-2:])


def centred_disc(area: float, size: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return (((x - size / 2) ** 2 + (y - size / 2) ** 2) <= area / math.pi)[None, None]


@torch.no_grad()
def diffedit_masks(backbone, scenes, args) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel masks (N, 1, H, W) bool, latent edit maps (N, 1, h, w)) for every scene, ``args.batch`` at a time."""
    masks, maps = [], []
    for start in range(0, len(scenes.sources), args.batch):
        stop = start + args.batch
        images = scenes.images[start:stop].to(backbone.device) * 2 - 1
        latents = backbone.encode_images(images)
        predict_noise = text_noise_predictor(backbone, backbone.encode_text(scenes.sources[start:stop]),
                                             backbone.encode_text(scenes.targets[start:stop]))
        edit_map, mask = difference_mask(predict_noise, latents, backbone.schedule, strength=args.strength,
                                         num_steps=args.num_steps, draws=args.draws, seed=args.seed,
                                         threshold=args.threshold)
        masks.append(mask_to_pixels(mask, images.shape[-2:]).cpu())
        maps.append(edit_map.cpu())
    return torch.cat(masks), torch.cat(maps)


def main() -> None:
    args = script_parser(__doc__, model="mini", scenes=100, draws=(10, "DiffEdit §3.2: n = 10"),
                         strength=(0.5, "noise level of the mask (DiffEdit §3.2: 50 %%)"), threshold=0.5,
                         num_steps=(50, "the DDIM grid the mask's timestep is on"), seed=0, batch=25,
                         threads=2).parse_args()
    torch.set_num_threads(args.threads)
    quiet_third_party()

    backbone = load_backbone(args.model)
    world = World(0)
    print(f"DiffEdit mask IoU on {args.model}, {args.scenes} test scenes per direction, {args.draws} draws, "
          f"strength {args.strength}, threshold {args.threshold} (pixel IoU at {world.size}², latent mask upsampled)")
    print("| direction | truth | DiffEdit | all-ones | centred disc | latent-grid ceiling | DiffEdit mask area "
          "| true area | best threshold (IoU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for source, target in DIRECTIONS:
        started = time.perf_counter()
        scenes = edit_scenes(world, source, target, args.scenes)
        predicted, maps = diffedit_masks(backbone, scenes, args)
        factor = world.size // maps.shape[-1]
        truths = {"object": scenes.masks > 0.5}
        if attribute_of(source) == "accessory":
            edited = edited_masks(world, source, target, args.scenes)
            truths |= {"edited object": edited, "hat only": edited & ~truths["object"]}
        for name, truth in truths.items():
            ones = torch.ones_like(truth)
            disc = centred_disc(truth.flatten(1).sum(1).float().mean().item(), world.size).expand_as(truth)
            sweep = {th: iou(mask_to_pixels(maps > th, truth.shape[-2:]), truth).mean().item() for th in THRESHOLDS}
            best = max(sweep, key=sweep.get)
            print(f"| {source}->{target} | {name} | {iou(predicted, truth).mean():.3f} | {iou(ones, truth).mean():.3f} "
                  f"| {iou(disc, truth).mean():.3f} | {iou(latent_grid(truth, factor), truth).mean():.3f} "
                  f"| {predicted.float().mean():.3f} | {truth.float().mean():.3f} | {best:.1f} ({sweep[best]:.3f}) |")
        print(f"<!-- {source}->{target}: {time.perf_counter() - started:.0f} s -->")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
