"""U-Net training throughput on this CPU: size, width, attention placement, channels-last, bf16, compile.

Issue 19 asks which of these reach the mini world's targets soonest. Every row is one training step
(forward, ε-MSE, backward, AdamW) on a batch of pre-encoded latents and text states, so the numbers
are pure U-Net cost; the peer row is the first world's U-Net (``v1``) in float32, measured in the same
run, and each row prints its speed as a ratio to it.

    OMP_NUM_THREADS=1 python benchmarks/unet_throughput.py --threads 1 --batch 64
    OMP_NUM_THREADS=2 python benchmarks/unet_throughput.py --threads 2 --only shipped   # the shipped U-Net only
"""

from __future__ import annotations

import time

import torch
from _options import script_parser

#: name → (block_out_channels, which levels have cross-attention (one flag per level, top first)).
CANDIDATES = {
    "v1": ((64, 128, 128), (True, True, False)),
    "v1-width, attention at 8² and 4²": ((64, 128, 128), (False, True, True)),
    "small (32, 64, 128), attention at 4²": ((32, 64, 128), (False, False, True)),
    "shipped v2 (32, 64, 128), attention at 8² and 4²": ((32, 64, 128), (False, True, True)),
    "(64, 128, 256), attention at 4²": ((64, 128, 256), (False, False, True)),
    "(64, 128, 256), attention at 8² and 4²": ((64, 128, 256), (False, True, True)),
    "(96, 192, 256), attention at 8² and 4²": ((96, 192, 256), (False, True, True)),
}


def build(channels, attention, latent_channels: int, cross_dim: int):
    from retouch.train.mini import mini_unet

    return mini_unet(channels=channels, attention=attention, latent_channels=latent_channels, cross_attention_dim=cross_dim)


def measure(unet, batch: int, latent_channels: int, side: int, cross_dim: int, *, steps: int, channels_last=False,
            bf16=False, compile_=False) -> float:
    latents = torch.randn(batch, latent_channels, side, side)
    states = torch.randn(batch, 32, cross_dim)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
        latents = latents.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    forward = torch.compile(unet) if compile_ else unet
    timings = []
    for step in range(steps + 2):
        tick = time.perf_counter()
        t = torch.randint(0, 1000, (batch,))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(latents, t, encoder_hidden_states=states).sample
        loss = (out.float() - latents.float()).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:  # the first steps allocate (and compile)
            timings.append(time.perf_counter() - tick)
    return batch / (sum(timings) / len(timings))


def main() -> None:
    args = script_parser(__doc__, full_doc=True, threads=1, batch=64, steps=4, latent_channels=8, side=16,
                         cross_dim=128, skip_compile=False,
                         only=(None, "measure only the candidates whose name contains this text (the v1 peer always)")
                         ).parse_args()
    torch.set_num_threads(args.threads)
    shape = dict(latent_channels=args.latent_channels, cross_dim=args.cross_dim)
    run = dict(batch=args.batch, latent_channels=args.latent_channels, side=args.side, cross_dim=args.cross_dim,
               steps=args.steps)
    torch.manual_seed(0)
    peer = measure(build(*CANDIDATES["v1"], **shape), **run)
    print(f"threads {args.threads}, batch {args.batch}, latents {args.latent_channels}×{args.side}²")
    print(f"| U-Net | params (M) | variant | samples/s | vs v1 fp32 |\n|---|---|---|---|---|")
    print(f"| v1 | {sum(p.numel() for p in build(*CANDIDATES['v1'], **shape).parameters()) / 1e6:.1f} | fp32 | "
          f"{peer:.1f} | 1.00 |")
    variants = [("fp32", {}), ("channels-last", {"channels_last": True}), ("bf16 autocast", {"bf16": True})]
    if not args.skip_compile:
        variants.append(("torch.compile", {"compile_": True}))
    for name, (channels, attention) in CANDIDATES.items():
        if args.only and args.only not in name and name != "v1":
            continue
        for variant, flags in variants:
            if name == "v1" and variant == "fp32":
                continue
            torch.manual_seed(0)
            unet = build(channels, attention, **shape)
            try:
                speed = measure(unet, **run, **flags)
            except Exception as error:  # a variant this CPU or torch build cannot run is reported, not fatal
                print(f"| {name} | | {variant} | failed: {type(error).__name__}: {str(error)[:60]} | |")
                continue
            params = sum(p.numel() for p in unet.parameters()) / 1e6
            print(f"| {name} | {params:.1f} | {variant} | {speed:.1f} | {speed / peer:.2f} |", flush=True)


if __name__ == "__main__":
    main()
