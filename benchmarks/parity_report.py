"""Print the parity numbers of the sampling core and the attention hooks (issue: foundation).

    .venv/bin/python benchmarks/parity_report.py

For each tiny backbone: max |ours − diffusers| of 10-step DDIM sampling (DDIMScheduler), 10-step
DDIM inversion (DDIMInverseScheduler), and of the U-Net output with every attention layer hooked and
recording versus stock fused attention. The tests assert the same quantities ≤ 1e-5.
"""

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from retouch._quiet import quiet_third_party
from retouch.attention import CrossAttentionRecorder, HookGroup, SelfAttentionRecorder, hooked_attention
from retouch.backbone import TINY_NAMES, build_tiny
from retouch.distributed import exit_unless_main_process
from retouch.sampling import ddim_invert, ddim_sample, ddim_timesteps


@torch.no_grad()
def diffusers_loop(scheduler, backbone, latents, cond, steps):
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        latents = scheduler.step(backbone.denoise(latents, t, cond), t, latents).prev_sample
    return latents


def main():
    quiet_third_party()
    steps = 10
    print(f"{'model':<12}{'DDIM sample':>14}{'DDIM invert':>14}{'hooked attn':>14}")
    for name in TINY_NAMES:
        backbone = build_tiny(name)
        cond = backbone.encode_text(["a photo of a cat"])
        noise = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = ddim_sample(backbone.denoise, backbone.schedule, noise, ddim_timesteps(backbone.schedule, steps),
                               cond, num_steps=steps)
            inverted = ddim_invert(backbone.denoise, backbone.schedule, noise * 0.5, cond, num_steps=steps)
        sample_diff = (ours - diffusers_loop(DDIMScheduler.from_config(backbone.scheduler_config), backbone, noise,
                                             cond, steps)).abs().max().item()
        invert_diff = (inverted - diffusers_loop(DDIMInverseScheduler.from_config(backbone.scheduler_config),
                                                 backbone, noise * 0.5, cond, steps)).abs().max().item()
        with torch.no_grad():
            stock = backbone.denoise(noise, 500, cond)
            with hooked_attention(backbone.unet, HookGroup(CrossAttentionRecorder(), SelfAttentionRecorder())):
                hooked = backbone.denoise(noise, 500, cond)
        attn_diff = (hooked - stock).abs().max().item()
        print(f"{name:<12}{sample_diff:>14.2e}{invert_diff:>14.2e}{attn_diff:>14.2e}")


if __name__ == "__main__":
    exit_unless_main_process("benchmarks measure one process")
    main()
