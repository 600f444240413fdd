"""The three Stable Diffusion architecture families, as data: SD 1.5, SD 2.1 and SDXL.

Each :class:`Family` holds the component configs of the released checkpoint (the values of its
``*/config.json`` files, written out here so nothing is downloaded), the diffusers folder layout and the
key prefixes of the original single-file checkpoint. From that we

* count parameters (on the meta device: no memory, no weights) — :func:`parameter_counts`;
* build randomly initialised models of the same structure, at full size (benchmarks on a GPU) or with
  tiny widths (tests) — :func:`random_backbone`;
* save them the way the released repositories are laid out (their scheduler class, SD 1.5's listed but
  absent safety checker) — :func:`save_release_layout`, so loading them goes through
  :func:`retouch.backbone.load_backbone` exactly as a downloaded checkpoint does.

The tiny variant keeps every structural choice (block types and count, layers per block, transformer
depth per level, heads-vs-head-width convention, linear projections, text-encoder activation and pooling,
the SDXL added conditioning, VAE factor 8, scheduler and prediction type) and divides the widths.
"""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Shared by every family: the noise schedule of Stable Diffusion training (scheduler/config.json).
_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 trained_betas=None, clip_sample=False, set_alpha_to_one=False, steps_offset=1, skip_prk_steps=True)

# The KL autoencoder of SD 1.x, 2.x and SDXL (same architecture; SDXL retrained it, new scaling factor).
_VAE = dict(act_fn="silu", block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            layers_per_block=2, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)

# CLIP ViT-L/14's text tower (SD 1.x; SDXL's first encoder).
_CLIP_L = dict(hidden_act="quick_gelu", hidden_size=768, intermediate_size=3072, num_attention_heads=12,
               num_hidden_layers=12, max_position_embeddings=77, projection_dim=768, vocab_size=49408,
               layer_norm_eps=1e-5)


@dataclass(frozen=True)
class Family:
    """One released architecture: its component configs, layouts and defaults."""

    key: str  #: short name used in recipes and tests: sd15, sd21, sdxl
    title: str
    repo_id: str  #: the reference checkpoint on the Hugging Face hub
    resolution: int  #: native image side in pixels
    pipeline: str  #: diffusers pipeline class named in model_index.json
    scheduler_class: str
    unet: dict
    vae: dict
    #: (class name, CLIPTextConfig fields) per text encoder, in folder order (text_encoder, text_encoder_2)
    text_encoders: tuple[tuple[str, dict], ...]
    scheduler: dict
    #: the padding token of each tokenizer: CLIP's end-of-text for ViT-L, "!" for the OpenCLIP towers
    pad_tokens: tuple[str, ...]
    #: component → key prefix inside the original (CompVis / Stability) single-file checkpoint
    single_file_prefixes: dict[str, str]
    #: extra model_index.json entries of the released folder that retouch does not load
    unused_components: dict[str, list] = field(default_factory=dict)
    force_zeros_for_empty_prompt: bool = False
    recommended_dtype: str = "float16"
    notes: tuple[str, ...] = ()

    @property
    def backbone_family(self) -> str:
        """``sd`` or ``sdxl``, as :class:`retouch.backbone.Backbone` calls them."""
        return "sdxl" if len(self.text_encoders) == 2 else "sd"

    @property
    def prediction_type(self) -> str:
        return self.scheduler.get("prediction_type", "epsilon")

    @property
    def folder_components(self) -> tuple[str, ...]:
        """The sub-folders of the diffusers layout that retouch loads."""
        names = ["unet", "vae"]
        for i in range(len(self.text_encoders)):
            suffix = "" if i == 0 else f"_{i + 1}"
            names += [f"text_encoder{suffix}", f"tokenizer{suffix}"]
        return (*names, "scheduler")


SD15 = Family(
    key="sd15", title="Stable Diffusion 1.5", repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5", resolution=512,
    pipeline="StableDiffusionPipeline", scheduler_class="PNDMScheduler",
    unet=dict(act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], center_input_sample=False,
              cross_attention_dim=768, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4,
              out_channels=4, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32,
              sample_size=64,
              down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
              up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
    vae=_VAE,
    text_encoders=(("CLIPTextModel", _CLIP_L),),
    scheduler=_SCHEDULE,
    pad_tokens=("<|endoftext|>",),
    single_file_prefixes={"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                          "text_encoder": "cond_stage_model.transformer."},
    unused_components={"safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
                       "feature_extractor": ["transformers", "CLIPImageProcessor"]},
)

SD21 = Family(
    key="sd21", title="Stable Diffusion 2.1 (768, v-prediction)", repo_id="stabilityai/stable-diffusion-2-1",
    resolution=768, pipeline="StableDiffusionPipeline", scheduler_class="DDIMScheduler",
    # attention_head_dim here is the number of heads per level (diffusers' historical name): 64 channels each.
    unet=dict(SD15.unet, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True,
              upcast_attention=True, sample_size=96),
    vae=dict(_VAE, sample_size=768),
    # OpenCLIP ViT-H/14's text tower with its last layer dropped: SD 2 conditions on the penultimate layer.
    text_encoders=(("CLIPTextModel", dict(hidden_act="gelu", hidden_size=1024, intermediate_size=4096,
                                          num_attention_heads=16, num_hidden_layers=23, max_position_embeddings=77,
                                          projection_dim=512, vocab_size=49408, layer_norm_eps=1e-5)),),
    scheduler=dict(_SCHEDULE, prediction_type="v_prediction"),
    pad_tokens=("!",),
    single_file_prefixes={"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                          "text_encoder": "cond_stage_model.model."},
    notes=("predicts v: its folder's scheduler config says so, an original single file does not — load one with "
           "`load_backbone(path, config=FOLDER_OR_REPO, prediction_type=\"v_prediction\")` (no CLI flag for "
           "either yet)",
           "the 512-px stabilityai/stable-diffusion-2-1-base predicts ε and has the same architecture"),
)

SDXL = Family(
    key="sdxl", title="Stable Diffusion XL 1.0 (base)", repo_id="stabilityai/stable-diffusion-xl-base-1.0",
    resolution=1024, pipeline="StableDiffusionXLPipeline", scheduler_class="EulerDiscreteScheduler",
    unet=dict(act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64,
              addition_time_embed_dim=256, attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280],
              center_input_sample=False, cross_attention_dim=2048, downsample_padding=1, flip_sin_to_cos=True,
              freq_shift=0, in_channels=4, out_channels=4, layers_per_block=2, mid_block_scale_factor=1,
              norm_eps=1e-5, norm_num_groups=32, sample_size=128,
              # 6 micro-conditioning ids × 256 Fourier features + the 1280-wide pooled text embedding
              projection_class_embeddings_input_dim=2816, transformer_layers_per_block=[1, 2, 10],
              use_linear_projection=True,
              down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
              up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]),
    vae=dict(_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
    # CLIP ViT-L and OpenCLIP ViT-bigG/14 (pooled, projected); both condition on their penultimate layer.
    text_encoders=(("CLIPTextModel", _CLIP_L),
                   ("CLIPTextModelWithProjection", dict(hidden_act="gelu", hidden_size=1280, intermediate_size=5120,
                                                        num_attention_heads=20, num_hidden_layers=32,
                                                        max_position_embeddings=77, projection_dim=1280,
                                                        vocab_size=49408, layer_norm_eps=1e-5))),
    scheduler=dict(_SCHEDULE, interpolation_type="linear", timestep_spacing="leading", use_karras_sigmas=False,
                   sample_max_value=1.0),
    pad_tokens=("<|endoftext|>", "!"),
    single_file_prefixes={"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                          "text_encoder": "conditioner.embedders.0.transformer.",
                          "text_encoder_2": "conditioner.embedders.1.model."},
    force_zeros_for_empty_prompt=True, recommended_dtype="bfloat16",
    notes=("its VAE overflows in float16 (force_upcast in its config; retouch does not upcast): use bfloat16, "
           "float32, or a float16-safe VAE such as madebyollin/sdxl-vae-fp16-fix",),
)

FAMILIES: dict[str, Family] = {f.key: f for f in (SD15, SD21, SDXL)}


def get_family(key: str) -> Family:
    from retouch.errors import RetouchError

    if key not in FAMILIES:
        raise RetouchError(f"unknown model family '{key}'; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[key]


# ---------------------------------------------------------------------------------------------
# Tiny widths, same structure
# ---------------------------------------------------------------------------------------------
#: Width divisor of the tiny variants' U-Net (320 → 32) and VAE (128 → 16) channels.
TINY_DIVISOR = {"unet": 10, "vae": 8}
#: Tiny text towers: hidden width and depth per encoder (SD 2.1 and SDXL's second are wider, as in life).
TINY_TEXT = {"sd15": ((32, 2),), "sd21": ((48, 3),), "sdxl": ((32, 2), (48, 3))}
TINY_VOCAB = 1000
TINY_TIME_EMBED = 8  # SDXL's addition_time_embed_dim 256 → 8
TINY_HEAD_WIDTH = 8  # SD 2.1 / SDXL use 64 channels per head → 8


def tiny_configs(family: Family) -> tuple[dict, dict, tuple[tuple[str, dict], ...]]:
    """(unet, vae, text encoders) configs of ``family`` with tiny widths and the same structure."""
    text = []
    for (cls, config), (hidden, layers) in zip(family.text_encoders, TINY_TEXT[family.key]):
        text.append((cls, dict(config, hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=4,
                               num_hidden_layers=layers, vocab_size=TINY_VOCAB,
                               projection_dim=hidden)))
    unet = dict(family.unet)
    channels = [c // TINY_DIVISOR["unet"] for c in unet["block_out_channels"]]
    unet.update(block_out_channels=channels, norm_num_groups=8, sample_size=8,
                cross_attention_dim=sum(config["hidden_size"] for _, config in text))
    if isinstance(unet["attention_head_dim"], list):  # heads per level at a fixed width per head
        unet["attention_head_dim"] = [c // TINY_HEAD_WIDTH for c in channels]
    if unet.get("addition_embed_type") == "text_time":
        unet.update(addition_time_embed_dim=TINY_TIME_EMBED, addition_embed_type_num_heads=4,
                    projection_class_embeddings_input_dim=6 * TINY_TIME_EMBED + text[-1][1]["projection_dim"])
    vae = dict(family.vae, block_out_channels=[c // TINY_DIVISOR["vae"] for c in family.vae["block_out_channels"]],
               norm_num_groups=8, sample_size=64)
    return unet, vae, tuple(text)


# ---------------------------------------------------------------------------------------------
# Parameter counts and weight memory
# ---------------------------------------------------------------------------------------------
def _build_components(family: Family, tiny: bool):
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_config, vae_config, text = tiny_configs(family) if tiny else (family.unet, family.vae, family.text_encoders)
    unet = UNet2DConditionModel(**unet_config)
    vae = AutoencoderKL(**vae_config)
    encoders = []
    for cls, config in text:
        model_class = getattr(transformers, cls)
        encoders.append(model_class(transformers.CLIPTextConfig(**config)))
    return unet, vae, tuple(encoders)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.lru_cache(maxsize=None)
def parameter_counts(key: str, tiny: bool = False) -> dict[str, int]:
    """Parameters per component (unet, vae, text_encoder[, text_encoder_2]), counted on the meta device."""
    with torch.device("meta"):
        unet, vae, encoders = _build_components(get_family(key), tiny)
    counts = {"unet": _count(unet), "vae": _count(vae)}
    for i, encoder in enumerate(encoders):
        counts["text_encoder" if i == 0 else f"text_encoder_{i + 1}"] = _count(encoder)
    return counts


BYTES_PER_WEIGHT = {"float32": 4, "float16": 2, "bfloat16": 2}


def weight_bytes(counts: dict[str, int], dtype: str) -> int:
    return sum(counts.values()) * BYTES_PER_WEIGHT[dtype]


# ---------------------------------------------------------------------------------------------
# Random models of a family
# ---------------------------------------------------------------------------------------------
def _tokenizer(pad_token: str):
    from transformers import CLIPTokenizer

    from retouch.backbone import _tiny_vocabulary
    from retouch.tokenizer import CLIP_MAX_LENGTH

    vocab, merges = _tiny_vocabulary()
    with tempfile.TemporaryDirectory(prefix="retouch-family-tokenizer-") as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
        (Path(folder) / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return CLIPTokenizer(str(Path(folder) / "vocab.json"), str(Path(folder) / "merges.txt"),
                             model_max_length=CLIP_MAX_LENGTH, pad_token=pad_token)


def _scheduler(family: Family):
    import diffusers

    return getattr(diffusers, family.scheduler_class).from_config(family.scheduler)


def random_backbone(key: str, *, tiny: bool = True, seed: int = 0, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32):
    """A randomly initialised :class:`~retouch.backbone.Backbone` of family ``key``.

    ``tiny`` divides the widths (tests, CPU); otherwise the released architecture at full size (built
    directly on ``device``: an SDXL U-Net has 2.6 billion weights). The tokenizers are the tiny offline
    BPE (ids below 1000) with the family's padding token, so any prompt works with either size.
    """
    from retouch.backbone import Backbone
    from retouch.sampling import NoiseSchedule

    family = get_family(key)
    torch.manual_seed(seed)
    with torch.device(device):
        unet, vae, encoders = _build_components(family, tiny)
    scheduler = _scheduler(family)
    backbone = Backbone(
        vae=vae, unet=unet, text_encoders=encoders, tokenizers=tuple(_tokenizer(p) for p in family.pad_tokens),
        schedule=NoiseSchedule.from_scheduler_config(scheduler.config), family=family.backbone_family,
        source=f"random-{key}{'-tiny' if tiny else ''}", scheduler_config=dict(scheduler.config),
        force_zeros_for_empty_prompt=family.force_zeros_for_empty_prompt,
    )
    return backbone.to(dtype=dtype).eval()


def save_release_layout(backbone, key: str, folder: str | Path) -> Path:
    """Save ``backbone`` as family ``key``'s released diffusers folder is laid out.

    The family's own scheduler class, and model_index.json entries for components retouch does not load
    (SD 1.5's safety checker, left absent as a user who skipped it would have it; its feature extractor,
    written).
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    family, folder = get_family(key), Path(folder)
    parts = dict(vae=backbone.vae, unet=backbone.unet, text_encoder=backbone.text_encoders[0],
                 tokenizer=backbone.tokenizers[0], scheduler=_scheduler(family))
    if family.backbone_family == "sdxl":
        pipe = StableDiffusionXLPipeline(**parts, text_encoder_2=backbone.text_encoders[1],
                                         tokenizer_2=backbone.tokenizers[1],
                                         force_zeros_for_empty_prompt=family.force_zeros_for_empty_prompt)
    else:
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    if family.unused_components:
        index_path = folder / "model_index.json"
        index = json.loads(index_path.read_text())
        index.update(family.unused_components)
        index["requires_safety_checker"] = True
        index_path.write_text(json.dumps(index, indent=2))
        if "feature_extractor" in family.unused_components:
            from transformers import CLIPImageProcessor

            CLIPImageProcessor().save_pretrained(folder / "feature_extractor")
    return folder
