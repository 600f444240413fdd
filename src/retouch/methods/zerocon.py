"""pix2pix-zeroCon (Si et al. 2025): pix2pix-zero plus a patch-wise contrastive loss.

Algorithm 1 of the paper is pix2pix-zero's guided edit with the step on
L_t = λ_c·L_c + λ_e·L_e (Eq. 17), x_t ← x_t − λ ∇L_t (Eq. 18): L_c is pix2pix-zero's cross-attention
loss, L_e the CUT/PatchNCE loss (Eq. 15–16) between U-Net encoder features h_l of the reconstruction
trajectory (queries) and ĥ_l of the edited trajectory (positives at the same position, negatives at the
other sampled positions). The paper takes h_l from "the l-th layer of the residual block and the
self-attention block" of the encoder; we record the outputs of the down blocks' residual blocks
(forward hooks) and of their self-attention layers (the attention hook), both by default.

The paper gives no numbers for the contrastive part; the defaults follow the contrastive reference it
builds on (CUT / Contrastive Denoising Score): 256 patches, τ = 0.07, patch sizes 1 and 2 (2×2
average pooling). λ_e = 1 with λ_c = 1 and λ = pix2pix-zero's λ_xa is our choice (Fig. 11 of the
paper: smaller steps preserve more structure).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from retouch.attention import SelfAttentionRecorder, select_layers
from retouch.errors import RetouchError
from retouch.guidance import patch_nce_loss
from retouch.methods import register
from retouch.guided_pass import CrossAttentionTerm
from retouch.methods.pix2pix_zero import Pix2PixZeroConfig, places, run_pix2pix_zero
from retouch.options import option

CUT_FEATURES = ("both", "self-attention", "residual")


@dataclass
class ZeroConConfig(Pix2PixZeroConfig):
    lambda_xa: float = option(1.0, "λ_c, weight of the cross-attention loss in L_t = λ_c L_c + λ_e L_e (zeroCon "
                                   "Eq. 17)", at_least=0)
    lambda_cut: float = option(1.0, "λ_e, weight of the patch-wise contrastive (CUT) loss (Eq. 17; not given in "
                                    "the paper)", at_least=0)
    cut_num_patches: int = option(256, "query positions per layer of the CUT loss (CUT, CDS: 256)", at_least=2,
                                  why="one positive, one negative")
    cut_temperature: float = option(0.07, "τ of the CUT loss (Eq. 16; CUT, CDS: 0.07)", above=0)
    cut_features: str = option("both", "U-Net features of the CUT loss: residual, self-attention or both "
                                       "(zeroCon §IV-B: both)", choices=CUT_FEATURES)
    cut_places: str = option("down", "U-Net parts the CUT features come from (zeroCon: the encoder, i.e. down)")
    cut_patch_sizes: str = option("1,2", "patch sides (in feature cells, average-pooled) the CUT loss compares "
                                         "(CDS: 1,2)")

    def validate(self) -> None:
        super().validate()
        places(self.cut_places, "--cut-places")
        patch_sizes(self.cut_patch_sizes)


def patch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise RetouchError(f"--cut-patch-sizes takes positive integers separated by commas, e.g. 1,2; got {text!r}")
    return sizes


class ContrastiveTerm:
    """L_e (zeroCon Eq. 15) over the chosen U-Net features, summed over layers and patch sizes."""

    name = "cut"

    def __init__(self, unet, latent_size: tuple[int, int], *, features: str = "both", places=("down",),
                 patch_sizes=(1, 2), num_patches: int = 256, temperature: float = 0.07, weight: float = 1.0,
                 generator: torch.Generator | None = None):
        self.latent_size = latent_size
        self.patch_sizes, self.num_patches, self.temperature = tuple(patch_sizes), num_patches, temperature
        self.weight, self.generator = weight, generator
        self.layers = select_layers(unet, cross=False, places=tuple(places)) if features != "residual" else []
        self.modules = _residual_blocks(unet, places) if features != "self-attention" else []
        if not self.layers and not self.modules:
            raise RetouchError(f"this U-Net has no {features} features in {', '.join(places)} for the CUT loss")
        self.hook = SelfAttentionRecorder()
        self.outputs: dict[str, torch.Tensor] = {}

    @contextmanager
    def forward_hooks(self, gate):
        def saver(name):
            def save(_module, _inputs, output):
                if gate.open:
                    self.outputs[name] = output
            return save

        handles = [module.register_forward_hook(saver(name)) for name, module in self.modules]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def features(self) -> dict[str, torch.Tensor]:
        """Feature maps (rows, C, h, w) recorded by the last U-Net call."""
        maps = {name: self._spatial(tokens) for name, tokens in self.hook.outputs.items()}
        maps.update(self.outputs)
        self.hook.clear()
        self.outputs = {}
        return maps

    def _spatial(self, tokens: torch.Tensor) -> torch.Tensor:
        """(rows, h·w, C) self-attention output → (rows, C, h, w) at that layer's resolution."""
        height, width = self.latent_size
        factor = round(math.sqrt(height * width / tokens.shape[1]))
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height // factor, width // factor)

    def loss(self, edited: dict, reference: dict) -> torch.Tensor:
        total = None
        for name, edited_map in edited.items():
            for size in self.patch_sizes:
                if min(edited_map.shape[-2:]) < size:
                    continue
                query, key = (F.avg_pool2d(m, size) if size > 1 else m for m in (reference[name], edited_map))
                term = patch_nce_loss(query.flatten(2).transpose(1, 2), key.flatten(2).transpose(1, 2),
                                      self.num_patches, self.temperature, self.generator)
                total = term if total is None else total + term
        if total is None:  # every map smaller than every patch size: nothing to contrast
            return next(iter(edited.values())).new_zeros(next(iter(edited.values())).shape[0])
        return total


def _residual_blocks(unet, chosen_places) -> list[tuple[str, torch.nn.Module]]:
    """(name, ResnetBlock2D) of the chosen U-Net parts, in forward order."""
    blocks = []
    for place in chosen_places:
        parents = [("mid_block", unet.mid_block)] if place == "mid" else \
            [(f"{place}_blocks.{i}", block) for i, block in enumerate(getattr(unet, f"{place}_blocks"))]
        for parent_name, parent in parents:
            for j, resnet in enumerate(getattr(parent, "resnets", None) or []):
                blocks.append((f"{parent_name}.resnets.{j}", resnet))
    return blocks


def zerocon_terms(config: ZeroConConfig):
    """The guidance terms of L_t = λ_c·L_c + λ_e·L_e (Eq. 17), as ``run_pix2pix_zero`` builds them."""

    def build(backbone, latent_size):
        return [
            CrossAttentionTerm(backbone.unet, places(config.xa_places, "--xa-places"), weight=config.lambda_xa),
            ContrastiveTerm(
                backbone.unet, latent_size, features=config.cut_features,
                places=places(config.cut_places, "--cut-places"), patch_sizes=patch_sizes(config.cut_patch_sizes),
                num_patches=config.cut_num_patches, temperature=config.cut_temperature, weight=config.lambda_cut,
                generator=torch.Generator().manual_seed(config.seed),
            ),
        ]

    return build


@register("zerocon", ZeroConConfig,
          "pix2pix-zeroCon: pix2pix-zero plus a patch-wise contrastive loss on U-Net encoder features (Si et al. 2025)")
def zerocon(backbone, images: torch.Tensor, config: ZeroConConfig, progress=None) -> torch.Tensor:
    return run_pix2pix_zero(backbone, images, config, terms=zerocon_terms(config), progress=progress)
