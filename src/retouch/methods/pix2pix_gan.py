"""pix2pix (Isola et al., CVPR 2017) as the multitask paper's GAN baseline (§4.2).

A conditional GAN: a U-Net generator G maps the conditioning to the edited image in one pass and a
PatchGAN discriminator D (their 70×70 design: C64-C128-C256-C512 of 4×4 convolutions, instance norm
after the first, LeakyReLU 0.2) judges overlapping patches of (condition, image) pairs. Loss (their
Eq. 4): min_G max_D E[log D(x, y)] + E[log(1 − D(x, G(x)))] + λ·‖y − G(x)‖₁ with λ = 100, G trained
with the non-saturating −log D(x, G(x)).

As in the multitask paper, the condition is "the input image, the color reference image, and the
editing vector expanded to the same input spatial size", concatenated on channels (the reference and
the vector are zero for inactive tasks, the input masked for inpainting, exactly as for the
diffusion model). Both networks train in one optimizer step: D's loss sees G's output detached, and
G's adversarial loss sees D through detached weights, so each loss reaches only its own network.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from retouch.errors import RetouchError
from retouch.networks.multitask import EditingVector, masked_input, reference_input

L1_WEIGHT = 100.0  # pix2pix's λ


@dataclass
class Pix2PixSpec:
    size: int = 64  # training crop side (the generator is fully convolutional but built for it)
    vector_size: int = 9
    generator_channels: tuple[int, ...] = (32, 64, 128, 128)
    discriminator_channels: int = 64
    l1_weight: float = L1_WEIGHT

    @property
    def condition_channels(self) -> int:
        return 3 + 3 + self.vector_size  # input image, reference, editing vector


class PatchDiscriminator(nn.Module):
    """PatchGAN: 4×4 convolutions C64-C128-C256-C512 then a 1-channel map of patch logits."""

    def __init__(self, in_channels: int, width: int = 64):
        super().__init__()
        layers, channels = [], in_channels
        for k, out in enumerate((width, width * 2, width * 4, width * 8)):
            stride = 2 if k < 3 else 1
            layers.append(nn.Conv2d(channels, out, 4, stride, 1))
            if k > 0:
                layers.append(nn.InstanceNorm2d(out, affine=True))
            layers.append(nn.LeakyReLU(0.2))
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([condition, image], dim=1))


class Pix2PixGAN(nn.Module):
    """Generator (a diffusers ``UNet2DModel`` at t = 0, tanh output) and discriminator."""

    def __init__(self, spec: Pix2PixSpec):
        super().__init__()
        from diffusers import UNet2DModel

        self.spec = spec
        channels = tuple(spec.generator_channels)
        self.generator = UNet2DModel(
            sample_size=spec.size, in_channels=spec.condition_channels, out_channels=3, layers_per_block=1,
            block_out_channels=channels, norm_num_groups=min(32, channels[0]),
            down_block_types=("DownBlock2D",) * len(channels), up_block_types=("UpBlock2D",) * len(channels),
        )
        self.discriminator = PatchDiscriminator(spec.condition_channels + 3, spec.discriminator_channels)

    def generate(self, condition: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros(condition.shape[0], device=condition.device, dtype=torch.long)
        return torch.tanh(self.generator(condition, zero).sample)

    def loss(self, condition: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """L_D + L_G for one optimizer step (see the module docstring)."""
        fake = self.generate(condition)
        real_logits = self.discriminator(condition, target)
        fake_logits = self.discriminator(condition, fake.detach())
        loss_d = 0.5 * (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                        + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        fooled = torch.func.functional_call(self.discriminator, frozen, (condition, fake))
        adversarial = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        l1 = (fake - target).abs().mean()
        loss_g = adversarial + self.spec.l1_weight * l1
        return loss_d + loss_g, {"l1": l1.detach(), "d": loss_d.detach(), "g_adv": adversarial.detach()}

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "pix2pix.safetensors"))
        (folder / "pix2pix.json").write_text(json.dumps(asdict(self.spec), indent=2))

    @classmethod
    def load(cls, folder: Path, device: str | torch.device = "cpu") -> "Pix2PixGAN":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "pix2pix.json").is_file():
            raise RetouchError(f"'{folder}' is not a pix2pix model folder (no pix2pix.json)")
        spec = json.loads((folder / "pix2pix.json").read_text())
        model = cls(Pix2PixSpec(**{**spec, "generator_channels": tuple(spec["generator_channels"])}))
        model.load_state_dict(load_file(str(folder / "pix2pix.safetensors")))
        return model.to(device).eval()


def gan_condition(images: torch.Tensor, vector: EditingVector, reference: torch.Tensor | None = None,
                  keep: torch.Tensor | None = None, labels: bool = True) -> torch.Tensor:
    """(B, 3 + 3 + |C|, H, W): the (masked) input, the reference (zero when off), C broadcast."""
    images = masked_input(images, vector, keep)
    reference = reference_input(reference, vector, images)
    c = vector.as_tensor(labels).to(images)[None, :, None, None].expand(images.shape[0], -1, *images.shape[-2:])
    return torch.cat([images, reference, c], dim=1)


@torch.no_grad()
def pix2pix_edit(model: Pix2PixGAN, images: torch.Tensor, vector: EditingVector, *,
                 reference: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One generator pass on images (B, 3, H, W) in [−1, 1]."""
    vector.validate()
    return model.generate(gan_condition(images, vector, reference, mask))
