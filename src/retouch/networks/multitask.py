"""The multitask paper's network (§3.2, Table 1): what ``retouch edit --method multitask`` runs and
``retouch train multitask`` trains.

The denoiser ε_θ(z_0^A, I_ref, C, z_t^B, t) sees, concatenated on its input channels, the noisy target
latent z_t^B, the source latent z_0^A and the colour reference I_ref as RGB downsampled to the latent
size; the *editing vector*

    C = [β, σ, λ, μ, e1, e2, e3, e4, e5]

(blur degree, grain size, sharpening amount and threshold, then the binary activation labels of blur,
grain, colour transfer, inpainting and sharpening, in the paper's order) goes through the mapping
network f_θ — two linear layers with a SiLU between — into the U-Net's cross-attention. Inactive
tasks' conditions are zero (their scalars, their label, a zero reference); inpainting multiplies the
source image by the mask before encoding.

Palette++ (the paper's baseline) is the same network with everything concatenated: z_A, I_ref and C
broadcast over the latent grid, and a constant, all-zero cross-attention context.

Two switches exist for our CPU scale (``docs/multitask.md`` measures why; the paper's values are the
defaults):

- ``space="pixel"``: no autoencoder; "latents" are the RGB pixels in [−1, 1] and the U-Net is a small one
  trained from scratch. Our mini autoencoder's round trip on photo crops (22 dB) changes a crop more than
  blur or sharpening do, so a latent model cannot beat the unedited input there whatever it learns.
  There C also enters every ResNet block through the timestep embedding (a projection of C added to it,
  as class conditioning does), besides f_θ into cross-attention, which a pixel U-Net small enough for
  large images only has at its coarsest level. With ``block_conditioning="film"`` that embedding scales
  and shifts every block's normalised features (FiLM, Perez et al. 2018: diffusers' "scale_shift")
  instead of being added before the normalisation, which mostly removes a per-channel offset: a
  multiplicative gate lets one network switch between opposite local operators (blur, sharpening).
- ``prediction="residual"``: the network predicts the clean target as an offset from its input,
  x̂₀ = z_A + D(·), instead of ε. At init it already returns its input, and every noise level rewards
  reading z_A equally (the ε-loss scales that by √ᾱ_t, which is what left the paper's setting drawing
  an unrelated scene from noise here).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from retouch.backbone import widen_conv_in
from retouch.errors import RetouchError, check_choice, check_range
from retouch.networks import read_model_json

TASKS = ("blur", "grain", "colour", "inpaint", "sharpen")  # e1..e5, the paper's label order (§4.1)
SCALARS = ("beta", "sigma", "lambda", "mu")  # β, σ, λ, μ (Table 1)
RANGES = {"beta": (0.0, 1.0), "sigma": (0.0, 0.1), "lambda": (1.0, 3.0), "mu": (0.0, 0.1)}  # Table 1
#: ours (the paper), Palette++, and ours with C also on the input (not the paper: docs/multitask.md)
CONDITIONINGS = ("cross-attention", "concat", "cross-attention+concat")
SPACES = ("latent", "pixel")  # the paper's latent diffusion, or pixels with no autoencoder (not the paper)
PREDICTIONS = ("epsilon", "residual")  # Eq. 2's ε, or x̂₀ = z_A + D(·) (not the paper)
#: How the timestep + C embedding enters a pixel U-Net's ResNet blocks: added before the normalisation
#: (diffusers' default) or FiLM on it (scale and shift after it); diffusers' names for each.
BLOCK_CONDITIONINGS = {"add": "default", "film": "scale_shift"}
#: The pixel-space U-Net: widths per level (64² crops → 8² at the coarsest level, which alone has
#: attention, so a 512² photograph attends over 64² positions, not 128²).
PIXEL_CHANNELS = (16, 32, 64, 128)
#: DDPM's linear schedule (Ho et al. 2020), the usual one for pixel-space diffusion; the last DDIM step goes to
#: ᾱ = 1, so the result is the final x̂₀ itself, with no leftover noise in the pixels.
PIXEL_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
                  "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 1, "timestep_spacing": "leading"}


@dataclass(frozen=True)
class EditingVector:
    """Which tasks are on, with their sliders. ``None`` / ``False`` = the task is off."""

    blur: float | None = None  # β ∈ [0, 1]
    grain: float | None = None  # σ ∈ [0, 0.1]
    colour: bool = False  # a colour reference is given
    inpaint: bool = False  # an inpainting mask is given
    sharpen: tuple[float, float] | None = None  # (λ ∈ [1, 3], μ ∈ [0, 0.1])

    def validate(self) -> None:
        values = {"beta": self.blur, "sigma": self.grain}
        if self.sharpen is not None:
            values["lambda"], values["mu"] = self.sharpen
        flags = {"beta": "--blur", "sigma": "--grain", "lambda": "--sharpen amount", "mu": "--sharpen threshold"}
        for name, value in values.items():
            check_range(flags[name], None if value is None else float(value), *RANGES[name],
                        why="multitask paper, Table 1")

    @property
    def active(self) -> tuple[bool, ...]:
        return (self.blur is not None, self.grain is not None, self.colour, self.inpaint, self.sharpen is not None)

    def as_tensor(self, labels: bool = True) -> torch.Tensor:
        """C = [β, σ, λ, μ, e1..e5] (or the first four only, for the no-labels ablation), float32."""
        lam, mu = self.sharpen if self.sharpen is not None else (0.0, 0.0)
        scalars = [self.blur or 0.0, self.grain or 0.0, lam, mu]
        return torch.tensor(scalars + ([float(a) for a in self.active] if labels else []), dtype=torch.float32)


class MappingNetwork(nn.Module):
    """f_θ: the editing vector → a cross-attention context of ``tokens`` vectors of size ``width``.

    ``depth`` linear layers with SiLU between them (the paper: 2; its ablation: 0, 1, 2, 4). Depth 0
    passes C through, zero-padded to ``width``.
    """

    def __init__(self, in_features: int, width: int, depth: int = 2, tokens: int = 1):
        super().__init__()
        if depth < 0 or tokens < 1 or (depth == 0 and (in_features > width or tokens != 1)):
            raise RetouchError(f"mapping network: depth {depth} with {tokens} token(s) cannot map {in_features} "
                               f"features to width {width}")
        self.in_features, self.width, self.depth, self.tokens = in_features, width, depth, tokens
        layers: list[nn.Module] = []
        sizes = [in_features] + [width] * (depth - 1) + [width * tokens] if depth else []
        for k in range(depth):
            layers.append(nn.Linear(sizes[k], sizes[k + 1]))
            if k < depth - 1:
                layers.append(nn.SiLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, vector: torch.Tensor) -> torch.Tensor:
        if self.depth == 0:
            return F.pad(vector, (0, self.width - self.in_features))[:, None, :]
        return self.layers(vector).view(vector.shape[0], self.tokens, self.width)


@dataclass
class MultitaskSpec:
    """What a saved multitask model is (``multitask.json``)."""

    conditioning: str = "cross-attention"
    labels: bool = True
    mapping_depth: int = 2
    mapping_tokens: int = 1
    latent_channels: int = 4
    #: Factor on the conditioning channels (z_A, reference, Palette++'s C maps) before the U-Net. The
    #: weights reading them start at zero and Adam moves each weight by about the learning rate per
    #: step whatever its gradient's size, so a gain g makes those channels learn g× faster (the
    #: "equalised learning rate" of Karras et al. 2018). 1 is the paper's plain concatenation.
    input_gain: float = 1.0
    #: "latent" (the paper) or "pixel" (no autoencoder; see the module docstring).
    space: str = "latent"
    #: "epsilon" (Eq. 2) or "residual": the network's output is x̂₀ − z_A (see the module docstring).
    prediction: str = "epsilon"
    #: Also give the network the inpainting hole as one more input channel (1 in the hole, 0 elsewhere and
    #: whenever inpainting is off), as Stable Diffusion's inpainting models do; not the paper, whose only
    #: cue is the zeroed source I_A ⊙ (1 − M). In [−1, 1] a zeroed pixel is mid-grey, which photographs are
    #: full of, so without it the network must guess where the hole is (docs/multitask.md measures it).
    hole_channel: bool = False

    def validate(self) -> None:
        check_choice("conditioning", self.conditioning, CONDITIONINGS)
        check_choice("space", self.space, SPACES)
        check_choice("prediction", self.prediction, PREDICTIONS)

    @property
    def scheduler_prediction(self) -> str:
        """What the denoiser's output is, in diffusers' names (after the residual is added back)."""
        return "sample" if self.prediction == "residual" else "epsilon"

    @property
    def concatenates_vector(self) -> bool:
        """C broadcast over the grid and concatenated on the input channels (Palette++, and our hybrid)."""
        return self.conditioning in ("concat", "cross-attention+concat")

    @property
    def vector_size(self) -> int:
        return len(SCALARS) + (len(TASKS) if self.labels else 0)

    @property
    def input_channels(self) -> int:
        extra = self.vector_size if self.concatenates_vector else 0
        return 2 * self.latent_channels + self.side_channels + extra

    @property
    def side_channels(self) -> int:
        """Channels of the side conditions at the latent grid: the colour reference, then the hole map."""
        return 3 + int(self.hole_channel)


class MultitaskDenoiser(nn.Module):
    """ε_θ(z_0^A, I_ref, C, z_t^B, t): the U-Net with widened input and its conditioning (Fig. 1)."""

    def __init__(self, unet, mapping: MappingNetwork, spec: MultitaskSpec, vae_factor: int = 8):
        """``vae_factor``: pixels per latent cell along a side (SDXL's size conditioning is in pixels)."""
        super().__init__()
        spec.validate()
        if unet.config.in_channels != spec.input_channels:
            raise RetouchError(f"the U-Net takes {unet.config.in_channels} input channels; this model needs "
                               f"{spec.input_channels}")
        if unet.config.addition_embed_type not in (None, "text_time"):
            raise RetouchError("the multitask denoiser conditions U-Nets with no added embedding (SD 1.x/2.x) or "
                               f"SDXL's text_time; this one has {unet.config.addition_embed_type!r}")
        self.unet, self.mapping, self.spec, self.vae_factor = unet, mapping, spec, vae_factor

    def context(self, vector: torch.Tensor) -> torch.Tensor:
        if self.spec.conditioning == "concat":  # Palette++: nothing through cross-attention
            return vector.new_zeros(vector.shape[0], 1, self.unet.config.cross_attention_dim)
        return self.mapping(vector)

    def forward(self, noisy, t, source_latents, side, vector) -> torch.Tensor:
        """``side``: :func:`side_inputs` (the reference at latent size, then the hole map if the spec has one)."""
        if side.shape[1] != self.spec.side_channels:
            raise RetouchError(f"the multitask denoiser takes {self.spec.side_channels} side-condition channels; "
                               f"got {side.shape[1]}")
        conditions = [source_latents.to(noisy.dtype), side.to(noisy.dtype)]
        if self.spec.concatenates_vector:
            conditions.append(vector[:, :, None, None].expand(-1, -1, *noisy.shape[-2:]).to(noisy.dtype))
        conditions = torch.cat(conditions, dim=1)
        if self.spec.input_gain != 1.0:
            conditions = conditions * self.spec.input_gain
        context = self.context(vector.to(noisy.dtype))
        class_labels = vector.to(noisy.dtype) if self.unet.config.class_embed_type == "projection" else None
        output = self.unet(torch.cat([noisy, conditions], dim=1), t, encoder_hidden_states=context,
                           class_labels=class_labels, added_cond_kwargs=self.added_conditioning(noisy)).sample
        if self.spec.prediction == "residual":  # x̂₀ = z_A + D(·)
            return output + source_latents.to(output.dtype)
        return output

    def added_conditioning(self, latents: torch.Tensor) -> dict | None:
        """SDXL's added conditioning (Podell et al. 2023, §2.2) for a model without text.

        The pooled text embedding is zero, so the added embedding carries only the micro-conditioning
        time ids (H, W, 0, 0, H, W) in pixels: original size = target size, no crop.
        """
        config = self.unet.config
        if config.addition_embed_type != "text_time":
            return None
        pooled_size = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        height, width = (side * self.vae_factor for side in latents.shape[-2:])
        time_ids = latents.new_tensor([height, width, 0, 0, height, width]).expand(latents.shape[0], -1)
        return {"text_embeds": latents.new_zeros(latents.shape[0], pooled_size), "time_ids": time_ids}


@dataclass
class MultitaskModel:
    """The autoencoder, the denoiser and the noise schedule: everything a multitask edit needs.

    ``vae`` is None for a pixel-space model (encoding and decoding are then the identity). ``eta`` is the
    sampler's η the model is meant to be sampled with (0 = DDIM); loading sets it from the folder's
    ``method_defaults.json`` (:func:`retouch.methods.multitask.load_multitask_model`)."""

    vae: object | None
    denoiser: MultitaskDenoiser
    scheduler_config: dict
    eta: float = 0.0

    @property
    def spec(self) -> MultitaskSpec:
        return self.denoiser.spec

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's factor times the U-Net's downsamplings."""
        return self.denoiser.vae_factor * 2 ** (len(self.denoiser.unet.config.block_out_channels) - 1)

    @classmethod
    def from_backbone(cls, backbone, spec: MultitaskSpec | None = None) -> "MultitaskModel":
        """Initialise from a text-to-image backbone's U-Net and VAE (the paper's initialisation)."""
        spec = spec or MultitaskSpec(latent_channels=backbone.unet.config.in_channels)
        if spec.space != "latent":
            raise RetouchError("a backbone initialises latent-space models only; build pixel models with for_pixels")
        unet = widen_conv_in(backbone.unet, spec.input_channels)
        mapping = MappingNetwork(spec.vector_size, unet.config.cross_attention_dim, spec.mapping_depth,
                                 spec.mapping_tokens)
        # Eq. 2 trains ε_θ, whatever the init predicted (SD 2.1: v), so sampling must read what we train.
        scheduler_config = {**dict(backbone.scheduler_config), "prediction_type": spec.scheduler_prediction}
        return cls(backbone.vae, MultitaskDenoiser(unet, mapping, spec, backbone.vae_scale_factor), scheduler_config)

    @classmethod
    def for_pixels(cls, spec: MultitaskSpec, *, channels: tuple[int, ...] | None = None,
                   cross_attention_dim: int = 128, block_conditioning: str = "add", seed: int = 0) -> "MultitaskModel":
        """A pixel-space model trained from scratch (``spec.space == "pixel"``; not the paper's setting).

        ``block_conditioning``: "add" or "film" (:data:`BLOCK_CONDITIONINGS`); saved in the U-Net's config."""
        from diffusers import UNet2DConditionModel

        if spec.space != "pixel" or spec.latent_channels != 3:
            raise RetouchError("for_pixels builds pixel-space models: MultitaskSpec(space='pixel', latent_channels=3)")
        check_choice("block conditioning", block_conditioning, tuple(BLOCK_CONDITIONINGS))
        channels = tuple(channels or PIXEL_CHANNELS)
        torch.manual_seed(seed)
        levels = len(channels)
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=spec.input_channels, out_channels=3, block_out_channels=channels,
            layers_per_block=2, down_block_types=("DownBlock2D",) * (levels - 1) + ("CrossAttnDownBlock2D",),
            up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
            cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
            class_embed_type="projection", projection_class_embeddings_input_dim=spec.vector_size,
            resnet_time_scale_shift=BLOCK_CONDITIONINGS[block_conditioning])
        mapping = MappingNetwork(spec.vector_size, cross_attention_dim, spec.mapping_depth, spec.mapping_tokens)
        scheduler_config = {**PIXEL_SCHEDULE, "prediction_type": spec.scheduler_prediction}
        return cls(None, MultitaskDenoiser(unet, mapping, spec, vae_factor=1), scheduler_config)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.vae is not None:
            self.vae.save_pretrained(folder / "vae", safe_serialization=True)
        self.denoiser.unet.save_pretrained(folder / "unet", safe_serialization=True)
        save_file({k: v.contiguous() for k, v in self.denoiser.mapping.state_dict().items()} or
                  {"_empty": torch.zeros(0)}, str(folder / "mapping.safetensors"))
        (folder / "multitask.json").write_text(json.dumps({"spec": asdict(self.spec),
                                                           "scheduler": self.scheduler_config}, indent=2))

    @classmethod
    def load(cls, folder: Path, device: str | torch.device = "cpu") -> "MultitaskModel":
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = read_model_json(folder, "multitask.json", "multitask")
        spec = MultitaskSpec(**meta["spec"])
        try:
            vae = None if spec.space == "pixel" else AutoencoderKL.from_pretrained(folder / "vae").to(device).eval()
            unet = UNet2DConditionModel.from_pretrained(folder / "unet").to(device).eval()
            weights = load_file(str(folder / "mapping.safetensors"))
        except (OSError, ValueError) as error:
            raise RetouchError(f"cannot load the multitask model in '{folder}': {str(error).splitlines()[0]}") from None
        mapping = MappingNetwork(spec.vector_size, unet.config.cross_attention_dim, spec.mapping_depth,
                                 spec.mapping_tokens)
        mapping.load_state_dict({k: v for k, v in weights.items() if k != "_empty"})
        vae_factor = 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)  # as Backbone.vae_scale_factor
        return cls(vae, MultitaskDenoiser(unet, mapping.to(device).eval(), spec, vae_factor), meta["scheduler"])


# ---------------------------------------------------------------------------------------------
# The network's inputs
# ---------------------------------------------------------------------------------------------
def conditioning_inputs(model: MultitaskModel, images: torch.Tensor, vector: EditingVector,
                        reference: torch.Tensor | None = None, mask: torch.Tensor | None = None):
    """(z_0^A, the side conditions at latent size, C) for images (B, 3, H, W) in [−1, 1].

    ``mask`` (B, 1, H, W), 1 = keep, 0 = hole, is applied to the source before encoding when the
    inpainting task is on; ``reference`` (B or 1, 3, h, w) in [−1, 1] is resized to the latent grid
    when colour transfer is on; otherwise the reference input is zero (§4.1). The side conditions are
    that reference, then (``spec.hole_channel``) the hole map: :func:`side_inputs`.
    """
    images = masked_input(images, vector, mask)
    latents = encode(model, images)
    side = side_inputs(model.spec, reference_input(reference, vector, latents), vector, mask)
    c = vector.as_tensor(model.spec.labels).to(latents.device)[None].expand(latents.shape[0], -1)
    return latents, side, c


def side_inputs(spec: MultitaskSpec, reference_small: torch.Tensor, vector: EditingVector,
                keep: torch.Tensor | None) -> torch.Tensor:
    """The reference at latent size, and with ``spec.hole_channel`` the hole map 1 − keep area-resized to
    the same grid (zero when inpainting is off): what the denoiser takes beside z_A."""
    if not spec.hole_channel:
        return reference_small
    hole = reference_small.new_zeros(reference_small.shape[0], 1, *reference_small.shape[-2:])
    if vector.inpaint:
        if keep is None:
            raise RetouchError("the inpainting task needs a mask")
        hole = hole + F.interpolate(1 - keep.to(hole), size=hole.shape[-2:], mode="area")
    return torch.cat([reference_small, hole], dim=1)


def masked_input(images: torch.Tensor, vector: EditingVector, keep: torch.Tensor | None) -> torch.Tensor:
    """The source as the model sees it: times the keep-mask when inpainting is on (§4.1)."""
    if not vector.inpaint:
        return images
    if keep is None:
        raise RetouchError("the inpainting task needs a mask")
    return images * keep.to(images)


def reference_input(reference: torch.Tensor | None, vector: EditingVector, like: torch.Tensor) -> torch.Tensor:
    """I_ref area-resized to ``like``'s grid and batch when colour transfer is on, else zeros (§4.1)."""
    if not vector.colour:
        return like.new_zeros(like.shape[0], 3, *like.shape[-2:])
    if reference is None:
        raise RetouchError("the colour-transfer task needs a reference image")
    small = F.interpolate(reference.to(like), size=like.shape[-2:], mode="area")
    return small.expand(like.shape[0], -1, -1, -1)


def encode(model: MultitaskModel, images: torch.Tensor) -> torch.Tensor:
    vae = model.vae
    if vae is None:  # pixel space
        return images.to(model.dtype)
    return vae.encode(images.to(vae.dtype)).latent_dist.mode() * vae.config.scaling_factor


def decode(model: MultitaskModel, latents: torch.Tensor) -> torch.Tensor:
    vae = model.vae
    if vae is None:  # pixel space
        return latents
    return vae.decode(latents / vae.config.scaling_factor).sample
