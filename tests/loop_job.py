"""A tiny training job on ``retouch.train.loop.train``, run in its own process by the resume and
distributed tests (plain ``python``, or ``torchrun`` / ``accelerate launch`` for several processes).

The global batch is ``--shards`` equal shards, each a pure function of (step, shard); a process with
rank r of w takes shards [r·s/w, (r+1)·s/w), so one process sees exactly the concatenation of what
two processes see. Each process writes ``result-rank{r}.json`` (losses, the batches it saw) and
``weights-rank{r}.pt`` (final weights, EMA applied) into ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from retouch.train.loop import LoopConfig, step_generator, train

TARGET = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


class Autoencoder(torch.nn.Module):
    """A model whose loss calls ``encode`` and ``decode``, not ``forward`` (as mini's autoencoder stage
    does), with a frozen input layer (as its decoder stage's encoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = torch.nn.Linear(4, 4).requires_grad_(False)
        self.encoder = torch.nn.Linear(4, 16)
        self.decoder = torch.nn.Linear(16, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(self.encoder(self.frozen(x)))

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(h)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--log-every", type=int, default=4)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--loss-noise", action="store_true", help="draw noise inside the loss from its generator")
    parser.add_argument("--encode-loss", action="store_true", help="train an Autoencoder through encode/decode")
    parser.add_argument("--hang-at-step", type=int, help="block in make_batch at this step (to be killed)")
    parser.add_argument("--hang-in-save", type=int, help="block inside the save of this step's checkpoint")
    args = parser.parse_args()
    output = Path(args.output_dir)

    torch.manual_seed(0)
    if args.encode_loss:
        model = Autoencoder()
    else:
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1))
    accelerator = Accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    seen: list[tuple[int, float]] = []

    def make_batch(step, rank, world):
        if step == args.hang_at_step:
            _hang(output / "hanging")
        per_process = args.shards // world
        shards = range(rank * per_process, (rank + 1) * per_process)
        x = torch.cat([torch.randn(args.shard_size, 4, generator=step_generator(123, step, s)) for s in shards])
        seen.append((step, float(x.sum())))
        return x, x @ TARGET

    def loss_fn(model, batch, generator):
        x, y = batch
        if args.loss_noise:
            y = y + 0.01 * torch.randn(y.shape, generator=generator)
        prediction = model.decode(model.encode(x)) if args.encode_loss else model(x)
        return torch.nn.functional.mse_loss(prediction, y), {}

    if args.hang_in_save is not None:
        save_state = accelerator.save_state

        def slow_save_state(folder, *a, **kw):
            written = save_state(folder, *a, **kw)
            if Path(folder).name == f"step-{args.hang_in_save}.tmp":
                _hang(output / "hanging")  # every file is written, the rename has not happened yet
            return written

        accelerator.save_state = slow_save_state

    config = LoopConfig(output_dir=str(output), max_steps=args.max_steps, learning_rate=3e-2, weight_decay=0.01,
                        warmup_steps=3, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                        ema_decay=0.9, seed=7)
    result = train(model, loss_fn, make_batch, config, batch_size=args.shard_size * args.shards // world,
                   accelerator=accelerator, progress=False)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, output / f"weights-rank{rank}.pt")
    (output / f"result-rank{rank}.json").write_text(json.dumps(
        {"losses": result.losses, "seen": seen, "world": world, "pid": os.getpid()}))


def _hang(marker: Path) -> None:
    marker.write_text(str(os.getpid()))
    while True:  # until the test's SIGKILL
        time.sleep(1)


if __name__ == "__main__":
    main()
