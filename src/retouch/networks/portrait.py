"""The MCDM of "Learning Feature-Preserving Portrait Editing from Generated Pairs" (Chen et al. 2024),
§3.3: what ``retouch edit --method portrait`` runs and ``retouch train portrait`` trains.

ε_θ(z_t, t, {c_s, c_im, c_pb}) takes three conditions, each through its own pathway (§3.3, Fig. 5):

* spatial embeddings c_s = E(x_A), concatenated with z_t: the U-Net's first layer takes 8 channels,
  the 4 new ones zero-initialised so the network starts as the pretrained one;
* text embeddings c_pb of the target prompt p_b, fed to cross-attention as in Stable Diffusion;
* image embeddings c_im = MLP([E(x_A), CLIP_im(x_A)]), a few tokens appended to c_pb in cross-attention.

E(x_A) enters the MLP area-pooled to ``pool × pool`` cells (the paper flattens a 64² SD latent;
pooling keeps the MLP's size independent of the image size), and null conditions are zeros (c_s,
c_im) or the empty prompt (c_p).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from retouch.errors import RetouchError
from retouch.networks import read_model_json

#: The order of nested guidance (Eq. 1): spatial c_s, image c_im, text c_p.
CONDITIONS = ("spatial", "image", "text")

#: Edit directions on the mini world: (p_a, p_b), the source and target prompts (§3.2's "a woman, normal
#: costume" → "a woman, santa claus costume" in the world's words).
MINI_DIRECTIONS = {
    "striped": ("a photo of a plain object", "a photo of a striped object"),
    "hat": ("a photo of an object", "a photo of an object wearing a hat"),
}

#: The mini world's CLIP image encoder (the judge), named in saved models instead of copied.
SHIPPED_JUDGE = Path(__file__).resolve().parent.parent / "assets" / "mini" / "judge"
SHIPPED_JUDGE_NAME = "mini-judge"
#: the shipped layout's copy of the schedule the MCDM was trained with (``PortraitModel.save(base=…)``)
SCHEDULER_FILE = "scheduler_config.json"


@dataclass
class PortraitSpec:
    """What a saved MCDM is (``portrait.json``); the flags are the paper's ablations (Fig. 6)."""

    directions: dict = field(default_factory=lambda: dict(MINI_DIRECTIONS))
    spatial: bool = True  # c_s through the input ("w/o Spt" when False)
    image_embedding: bool = True  # c_im through cross-attention ("w/o Iemb" when False)
    image_tokens: int = 4
    pool: int = 8  # E(x_A) area-pooled to pool × pool before the MLP
    clip_dim: int = 0  # width of CLIP_im(x_A); 0: the MLP sees E(x_A) only
    image_encoder: str = ""  # a local CLIP-style folder, or "mini-judge"
    latent_channels: int = 4
    #: factor on c_s before the U-Net: an equalised learning rate for its zero-initialised weights
    #: (docs/multitask.md); 1 is the paper's plain concatenation.
    input_gain: float = 1.0

    def validate(self) -> None:
        if not self.directions:
            raise RetouchError("an MCDM needs at least one edit direction")
        for name, prompts in self.directions.items():
            if len(prompts) != 2 or not all(isinstance(p, str) and p for p in prompts):
                raise RetouchError(f"direction {name!r} needs a (source prompt, target prompt) pair")
        if self.image_embedding and self.image_tokens < 1:
            raise RetouchError("image embeddings need at least one token")

    def prompts(self, direction: str) -> tuple[str, str]:
        if direction not in self.directions:
            raise RetouchError(f"unknown edit {direction!r}; this model knows {', '.join(sorted(self.directions))}")
        return tuple(self.directions[direction])


class ImageEmbeddingMLP(nn.Module):
    """c_im = MLP([E(x_A), CLIP_im(x_A)]) → ``tokens`` vectors of the text width (§3.3)."""

    def __init__(self, spec: PortraitSpec, width: int):
        super().__init__()
        in_features = spec.latent_channels * spec.pool**2 + spec.clip_dim
        self.pool, self.tokens, self.width = spec.pool, spec.image_tokens, width
        self.net = nn.Sequential(nn.Linear(in_features, width), nn.SiLU(), nn.Linear(width, spec.image_tokens * width))

    def forward(self, source_latents: torch.Tensor, clip: torch.Tensor | None) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(source_latents.float(), self.pool).flatten(1)
        features = pooled if clip is None else torch.cat([pooled, clip.float()], dim=1)
        return self.net(features.to(self.net[0].weight.dtype)).view(-1, self.tokens, self.width)


class MCDMDenoiser(nn.Module):
    """ε_θ(z_t, t, {c_s, c_im, c_p}) with per-row switches for each condition (null = off)."""

    def __init__(self, unet, image_mlp: ImageEmbeddingMLP | None, spec: PortraitSpec):
        super().__init__()
        expected = spec.latent_channels * (2 if spec.spatial else 1)
        if unet.config.in_channels != expected:
            raise RetouchError(f"the U-Net takes {unet.config.in_channels} input channels; this MCDM needs {expected}")
        self.unet, self.image_mlp, self.spec = unet, image_mlp, spec

    def forward(self, noisy, t, source_latents, clip, text_states, use_spatial, use_image, added=None):
        """``use_spatial``/``use_image`` (B,) booleans; text nulls are the empty prompt's states in ``text_states``."""
        inputs = noisy
        if self.spec.spatial:
            spatial = source_latents.to(noisy.dtype) * use_spatial.to(noisy.dtype)[:, None, None, None]
            inputs = torch.cat([noisy, spatial * self.spec.input_gain], dim=1)
        context = text_states.to(noisy.dtype)
        if self.image_mlp is not None:
            tokens = self.image_mlp(source_latents, clip).to(noisy.dtype)
            context = torch.cat([context, tokens * use_image.to(noisy.dtype)[:, None, None]], dim=1)
        return self.unet(inputs, t, encoder_hidden_states=context, added_cond_kwargs=added).sample


@dataclass
class PortraitModel:
    """A backbone whose U-Net is the MCDM's, the c_im MLP, the CLIP image encoder and the spec."""

    backbone: object
    denoiser: MCDMDenoiser
    image_encoder: object | None  # has encode_images(images01) -> (B, clip_dim)

    @property
    def spec(self) -> PortraitSpec:
        return self.denoiser.spec

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.dtype

    @property
    def size_multiple(self) -> int:
        return self.backbone.size_multiple

    @classmethod
    def from_backbone(cls, backbone, spec: PortraitSpec, image_encoder=None, *, scratch: bool = False):
        """§3.3: initialise from a pretrained text-to-image model (c_s's channels zero-initialised);
        ``scratch`` re-initialises the U-Net instead (the paper's "w/o Prt" ablation)."""
        from retouch.backbone import widen_conv_in

        spec = replace(spec, directions=dict(spec.directions))  # the caller's spec stays as given
        spec.validate()
        spec.latent_channels = backbone.latent_channels
        if spec.image_embedding and image_encoder is not None and not spec.clip_dim:
            spec.clip_dim = int(image_encoder.encode_images(torch.zeros(1, 3, 32, 32)).shape[-1])
        unet = backbone.unet
        if scratch:
            from diffusers import UNet2DConditionModel

            unet = UNet2DConditionModel.from_config(unet.config).to(unet.device, unet.dtype)
        if spec.spatial:
            unet = widen_conv_in(unet, 2 * spec.latent_channels)
        width = unet.config.cross_attention_dim
        mlp = ImageEmbeddingMLP(spec, width).to(unet.device) if spec.image_embedding else None
        return cls(replace(backbone, unet=unet), MCDMDenoiser(unet, mlp, spec),
                   image_encoder if spec.image_embedding else None)

    # ---- persistence ---------------------------------------------------------------------
    def save(self, folder: Path, *, base: str | None = None) -> None:
        """The trained parts and ``portrait.json``; with ``base`` (a backbone name such as ``mini``) only
        the U-Net is written and the frozen autoencoder, text encoder, tokenizer and scheduler are read
        from ``base`` on load — the shipped layout, refused unless those parts equal ``base``'s."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if base is None:
            self.backbone.save(folder / "backbone")
        else:
            _check_frozen_parts_match(self.backbone, base)
            self.backbone.unet.save_pretrained(folder / "unet", safe_serialization=True)
            # The schedule belongs to the U-Net's training, not to the base: the base may move on to another.
            from retouch.sampling import scheduler_config_json

            (folder / SCHEDULER_FILE).write_text(scheduler_config_json(self.backbone.scheduler_config))
        if self.denoiser.image_mlp is not None:
            state = {k: v.contiguous() for k, v in self.denoiser.image_mlp.state_dict().items()}
            save_file(state, str(folder / "image_mlp.safetensors"))
        spec = asdict(self.spec)
        encoder = self.spec.image_encoder
        if encoder and encoder != SHIPPED_JUDGE_NAME and Path(encoder).is_dir():
            shutil.copytree(encoder, folder / "image_encoder", dirs_exist_ok=True)
            spec["image_encoder"] = "image_encoder"
        meta = {"spec": spec} if base is None else {"spec": spec, "base": base}
        (folder / "portrait.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path, device="cpu", dtype=torch.float32) -> "PortraitModel":
        from safetensors.torch import load_file

        from retouch.backbone import load_backbone

        folder = Path(folder)
        meta = read_model_json(folder, "portrait.json", "portrait (MCDM)")
        spec = PortraitSpec(**meta["spec"])
        if meta.get("base"):  # the shipped layout: only the U-Net is stored (see save)
            from diffusers import UNet2DConditionModel

            backbone = load_backbone(meta["base"], device=device, dtype=dtype).eval()
            try:
                unet = UNet2DConditionModel.from_pretrained(folder / "unet")
            except (OSError, ValueError) as error:
                raise RetouchError(f"cannot load the MCDM's U-Net in '{folder}': {str(error).splitlines()[0]}") from None
            backbone = replace(backbone, unet=unet.to(device, dtype).eval().requires_grad_(False))
            if (folder / SCHEDULER_FILE).is_file():
                from retouch.sampling import NoiseSchedule

                own = json.loads((folder / SCHEDULER_FILE).read_text())
                backbone = replace(backbone, schedule=NoiseSchedule.from_scheduler_config(own), scheduler_config=own)
        else:
            backbone = load_backbone(str(folder / "backbone"), device=device, dtype=dtype).eval()
        mlp = None
        if spec.image_embedding:
            try:
                weights = load_file(str(folder / "image_mlp.safetensors"))
            except (OSError, ValueError) as error:
                raise RetouchError(f"cannot load the MCDM's image MLP in '{folder}': {str(error).splitlines()[0]}") from None
            mlp = ImageEmbeddingMLP(spec, backbone.unet.config.cross_attention_dim)
            mlp.load_state_dict(weights)
            mlp.to(device, dtype).eval().requires_grad_(False)
        encoder = load_image_encoder(spec.image_encoder, folder, device) if spec.image_embedding and spec.clip_dim else None
        return cls(backbone, MCDMDenoiser(backbone.unet, mlp, spec), encoder)


def _check_frozen_parts_match(backbone, base: str) -> None:
    """Refuse to drop the autoencoder or text encoder from a saved MCDM unless ``base`` has the very same
    weights (the MCDM trains only the U-Net and the MLP; a model from another init must keep its own)."""
    from retouch.backbone import load_backbone

    reference = load_backbone(base)
    pairs = [("autoencoder", backbone.vae, reference.vae)]
    pairs += [("text encoder", mine, theirs) for mine, theirs in zip(backbone.text_encoders, reference.text_encoders)]
    for name, mine, theirs in pairs:
        ours, others = mine.state_dict(), theirs.state_dict()
        if ours.keys() != others.keys() or any(not torch.equal(ours[k].float().cpu(), others[k].float().cpu())
                                               for k in ours):
            raise RetouchError(f"this MCDM's {name} differs from {base!r}'s; save it without base=")


def load_image_encoder(name: str, base: Path | None = None, device="cpu"):
    """CLIP_im: the mini world's judge (``mini-judge``) or a local CLIP-style folder."""
    from retouch.metrics.semantic import TransformersCLIPJudge

    if not name:
        return None
    path = SHIPPED_JUDGE if name == SHIPPED_JUDGE_NAME else Path(name)
    if not path.is_absolute() and base is not None and (base / path).is_dir():
        path = base / path
    return TransformersCLIPJudge(path, device=device)


# ---------------------------------------------------------------------------------------------
# The network's inputs
# ---------------------------------------------------------------------------------------------
@dataclass
class Conditions:
    """Everything but z_t and t for a batch: c_s = E(x_A), CLIP_im(x_A), and the prompt states."""

    source_latents: torch.Tensor  # (B, 4, h, w)
    clip: torch.Tensor | None  # (B, clip_dim)
    text_states: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor | None = None  # SDXL's pooled text embedding
    time_ids: torch.Tensor | None = None

    def to(self, device) -> "Conditions":
        """Moved to ``device`` (the training loop sends batches to the model's device this way)."""
        def move(x):
            return None if x is None else x.to(device)

        return Conditions(*(move(getattr(self, name)) for name in ("source_latents", "clip", "text_states",
                                                                     "pooled", "time_ids")))


def source_conditions(model: PortraitModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(E(x_A), CLIP_im(x_A)) for images (B, 3, H, W) in [−1, 1]."""
    latents = model.backbone.encode_images(images)
    clip = None
    if model.image_encoder is not None:
        clip = model.image_encoder.encode_images(((images.float() + 1) / 2).clamp(0, 1)).to(latents.device)
    return latents, clip


def added_conditioning(backbone, latents: torch.Tensor, pooled, time_ids):
    """SDXL's added conditioning (pooled text + size time ids) for these rows, or None for SD 1.x/2.x."""
    from retouch.backbone import Conditioning

    return backbone.added_conditions(latents, Conditioning(None, pooled, time_ids))
