"""The one training loop every retouch model uses, on ``accelerate``.

The same script runs on one CPU core, one GPU or ``accelerate launch`` over several processes and
nodes: data parallelism, mixed precision and gradient synchronisation are accelerate's (on CPUs,
accelerate joins the processes only with ``ACCELERATE_USE_CPU=1``, e.g.
``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 script.py``, gloo backend). A step
is a global step at any world size: the LR schedule advances once per step. What this file adds is
what our experiments need to be reproducible:

* batches are a pure function of (step, process): ``make_batch(step, rank, world_size)``, and any
  randomness inside a loss is drawn from ``step_generator(seed, step, rank)`` — so a run resumed
  from a checkpoint sees exactly the batches and noise an uninterrupted run would have seen;
* checkpoints (model, optimizer, LR schedule, EMA, step) are written to a temporary folder and
  renamed into place, so a run killed mid-save never leaves a half checkpoint behind;
* an exponential moving average of the weights (optional) is what gets exported.

Under several processes the whole loss is the forward of the module DDP wraps (:class:`_LossModule`),
so a loss may call any method of the model (``encode``, ``get_text_features``), not only ``forward``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

CHECKPOINT_PREFIX = "step-"


@dataclass
class LoopConfig:
    output_dir: str
    max_steps: int
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    mixed_precision: str = "no"  # "no", "fp16", "bf16"
    ema_decay: float | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50
    seed: int = 0


def step_generator(seed: int, step: int, rank: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    """The RNG for one step on one process: independent of how the run was interrupted."""
    generator = torch.Generator(device=device)
    generator.manual_seed(((seed * 1_000_003 + step) * 4_099 + rank) % (2**63 - 1))
    return generator


@dataclass
class TrainResult:
    steps: int
    seconds: float
    samples_per_second: float
    losses: list[tuple[int, float]]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The finished checkpoint with the highest step: ``step-N`` folders only, never a ``step-N.tmp``."""
    done = _finished_checkpoints(Path(output_dir) / "checkpoints")
    return done[-1] if done else None


def _finished_checkpoints(folder: Path) -> list[Path]:
    """``step-N`` folders by step; anything else there (a save's ``.tmp``, a user's copy) is not ours."""
    if not folder.is_dir():
        return []
    done = [p for p in folder.iterdir()
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def train(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any, torch.Generator], tuple[torch.Tensor, dict]],
    make_batch: Callable[[int, int, int], Any],
    config: LoopConfig,
    *,
    batch_size: int,
    accelerator=None,
    resume: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Optimise ``model`` for ``config.max_steps`` steps of AdamW with linear warm-up then cosine decay.

    ``loss_fn(model, batch, generator) -> (loss, logs)``; ``make_batch(step, rank, world_size)`` gives
    this process's share of the global batch. Returns timings and the logged loss curve. ``model`` is
    trained in place; checkpoints hold its own state dict at any number of processes.
    """
    from accelerate import Accelerator
    from accelerate.utils import send_to_device

    from retouch.distributed import check_launch
    from tqdm import tqdm

    accelerator = accelerator or Accelerator(mixed_precision=config.mixed_precision)
    check_launch(accelerator.num_processes)
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.json").write_text(json.dumps(asdict(config), indent=2))

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config.warmup_steps, config.max_steps))
    # DDP (several processes) synchronises gradients only through the forward of the module it wraps: the
    # loss is that forward, so it may call model.encode, model.logit_scale... One process runs as before.
    wrapped = accelerator.num_processes > 1
    module = _LossModule(model, loss_fn, float32_outputs=accelerator.native_amp) if wrapped else model
    module, optimizer, schedule = accelerator.prepare(module, optimizer, schedule)
    ema = _make_ema(model, config.ema_decay)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    start_step = 0
    checkpoint = latest_checkpoint(output_dir) if resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start_step = int(checkpoint.name[len(CHECKPOINT_PREFIX):])

    losses: list[tuple[int, float]] = _read_losses(output_dir, start_step)
    rank, world = accelerator.process_index, accelerator.num_processes
    bar = tqdm(total=config.max_steps, initial=start_step, disable=not (progress and accelerator.is_main_process),
               desc=output_dir.name, unit="step", dynamic_ncols=True)
    started = time.perf_counter()
    module.train()
    for step in range(start_step, config.max_steps):
        # Batches are built on the CPU (pure functions of the step); the model may live on a GPU.
        batch = send_to_device(make_batch(step, rank, world), accelerator.device)
        generator = step_generator(config.seed, step, rank)
        with accelerator.autocast():
            loss, logs = module(batch, generator) if wrapped else loss_fn(module, batch, generator)
        accelerator.backward(loss)
        if config.grad_clip is not None:
            accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        # Not schedule.step(): a prepared scheduler steps once per process, as if each process's data were
        # 1/N of the epoch. Our steps are global steps, so the schedule advances once per step at any
        # world size (and, like accelerate's, not when a mixed-precision step was skipped).
        if not optimizer.step_was_skipped:
            schedule.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(model.parameters())
        done = step + 1
        if done % config.log_every == 0 or done == config.max_steps:
            value = accelerator.gather(loss.detach().float().reshape(1)).mean().item()
            losses.append((done, value))
            bar.set_postfix(loss=f"{value:.4f}", **{k: f"{float(v):.3g}" for k, v in logs.items()})
        bar.update(1)
        if done % config.checkpoint_every == 0 or done == config.max_steps:
            _save_checkpoint(accelerator, output_dir, done, config.keep_checkpoints, losses)
    bar.close()
    elapsed = time.perf_counter() - started
    steps_run = config.max_steps - start_step
    rate = steps_run * batch_size * world / elapsed if elapsed > 0 and steps_run else 0.0
    if ema is not None:
        ema.copy_to(model.parameters())
    return TrainResult(steps=config.max_steps, seconds=elapsed, samples_per_second=rate, losses=losses)


class _LossModule(torch.nn.Module):
    """``loss_fn(model, batch, generator)`` as one module's forward, the module DDP wraps.

    Its parameters are the model's, in the model's order (optimizer, gradient clipping and EMA see the same
    list), and its state dict is the model's, key for key: accelerate's ``save_state`` / ``load_state`` call
    ``state_dict`` / ``load_state_dict`` on the module given to ``prepare`` (not on the DDP wrapper), so a
    checkpoint does not depend on the number of processes that wrote it.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, *, float32_outputs: bool) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        if float32_outputs:
            from accelerate.utils import convert_outputs_to_fp32

            # Under mixed precision, prepare casts a prepared model's outputs back to float32; it now prepares
            # this module, so the model's own outputs get that here (the autocast around them is the loss's),
            # and the loss sees what it sees with one process.
            model.forward = convert_outputs_to_fp32(model.forward)

    def forward(self, batch, generator: torch.Generator):
        return self.loss_fn(self.model, batch, generator)

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _make_ema(model: torch.nn.Module, decay: float | None):
    if decay is None:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(model.parameters(), decay=decay)


def _save_checkpoint(accelerator, output_dir: Path, step: int, keep: int, losses) -> None:
    """Write to ``step-N.tmp`` and rename: a checkpoint folder either exists whole or not at all."""
    folder = output_dir / "checkpoints"
    final = folder / f"{CHECKPOINT_PREFIX}{step}"
    temporary = folder / f"{CHECKPOINT_PREFIX}{step}.tmp"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / "losses.json").write_text(json.dumps(losses))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        for stale in _finished_checkpoints(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()


def _read_losses(output_dir: Path, step: int) -> list[tuple[int, float]]:
    checkpoint = output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step}" / "losses.json"
    if step == 0 or not checkpoint.is_file():
        return []
    return [tuple(x) for x in json.loads(checkpoint.read_text())]
