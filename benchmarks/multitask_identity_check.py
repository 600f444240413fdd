"""Why the residual pixel multitask model copies its input on local effects (issue 21, docs/multitask.md).

A minimal Adam loop (lr 3e-4, batch 16, no schedule, no EMA) on the training pipeline's own data path and
loss (``TrainingSet``, ``LatentCache`` with 32² windows, ``draw_examples``, ``multitask_loss`` at t = 999,
i.e. direct regression x̂₀ = z_A + D(noise, z_A, C)), for a pixel U-Net (``MultitaskModel.for_pixels``,
residual, input gain 10). It prints the val L1 of unsharp masking on the first 24 val crops (the copy's is
0.0429) for two label sets: sharpening alone, and sharpening mixed with the identity examples (label
None: target = input, every task off) that ``train_multitask`` always draws.

    python benchmarks/multitask_identity_check.py --data out/compositing --labels sharpen
    python benchmarks/multitask_identity_check.py --data out/compositing --labels none,sharpen

``--labels blur,sharpen`` (any tasks but grain) mixes local operators whose residuals point opposite ways;
blur's val L1 (copy 0.0356) is printed too when blur is drawn. ``--block-conditioning film`` builds the U-Net
with FiLM blocks; ``--conditioning concat`` puts C on the input as constant maps (Palette++'s route);
``--loss-p 2`` trains with L2 instead of Eq. 2's L1.
"""

from __future__ import annotations

import numpy as np
import torch
from _options import script_parser

from retouch.data.compositing import iter_compositing
from retouch.networks.multitask import EditingVector, MultitaskModel, MultitaskSpec
from retouch.sampling import NoiseSchedule
from retouch.train.multitask import LatentCache, TrainingSet, draw_examples, multitask_loss, target_name


def main() -> None:
    args = script_parser(__doc__, full_doc=True, data="out/compositing", labels="none,sharpen", steps=300,
                         threads=1, every=150, block_conditioning="add", conditioning="cross-attention",
                         loss_p=1.0).parse_args()
    torch.set_num_threads(args.threads)
    val = list(iter_compositing(args.data, "val"))[:24]
    source = torch.from_numpy(np.stack([s.images["source"] for s in val])).permute(0, 3, 1, 2) * 2 - 1
    labels = tuple(None if name == "none" else name for name in args.labels.split(","))
    checked = {task: (torch.from_numpy(np.stack([s.images[task] for s in val])).permute(0, 3, 1, 2) * 2 - 1,
                      torch.stack([EditingVector(**{task: tuple(s.params[task]) if task == "sharpen" else s.params[task]}
                                                 ).as_tensor() for s in val]))
               for task in ("sharpen", "blur") if task in labels or task == "sharpen"}
    torch.manual_seed(0)
    model = MultitaskModel.for_pixels(MultitaskSpec(space="pixel", latent_channels=3, prediction="residual",
                                                    input_gain=10.0, conditioning=args.conditioning),
                                      block_conditioning=args.block_conditioning)
    denoiser = model.denoiser.train()
    data = TrainingSet(args.data)
    cache = LatentCache(model, data, {target_name(label, None) for label in labels}, crop=32)
    alphas = NoiseSchedule.from_scheduler_config(model.scheduler_config).alphas_cumprod
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=3e-4)
    for step in range(args.steps + 1):
        batch = cache.batch(draw_examples(data, labels, 16, np.random.default_rng([0, step, 0]), 32), True)
        loss = multitask_loss(denoiser, alphas, *batch, torch.Generator().manual_seed(step), min_timestep=999,
                              p=args.loss_p)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0:
            scores = []
            for task, (target, vectors) in checked.items():
                with torch.no_grad():
                    noisy = torch.randn(source.shape, generator=torch.Generator().manual_seed(0))
                    out = denoiser(noisy, torch.full((len(val),), 999), source, torch.zeros_like(source), vectors)
                copy = ((source - target).abs().mean() / 2).item()
                scores.append(f"val {task} L1 {((out - target).abs().mean() / 2).item():.4f} (copy {copy:.4f})")
            print(f"labels {args.labels}: step {step}, {step * 16} samples, " + ", ".join(scores), flush=True)


if __name__ == "__main__":
    main()
