"""Diffusers → original (CompVis ``ldm``) key layout of an SD 1.x backbone, to build test checkpoints.

Written from the two layouts, not from diffusers' conversion script, so that loading the file through
diffusers' ``from_single_file`` checks one key mapping against an independent one.

The original U-Net numbers its blocks flat: ``input_blocks.0`` is conv_in, then each down level adds
``layers_per_block`` (resnet, attention) pairs and, except the last level, a downsampler;
``middle_block`` is resnet, attention, resnet; ``output_blocks`` run over the up levels with
``layers_per_block + 1`` (resnet, attention) pairs each, a level's upsampler appended to its last pair.
Inside an attention block (SpatialTransformer ≡ Transformer2DModel) the names agree; resnets name their
layers by position. The VAE numbers its decoder levels in reverse and its mid attention holds 1×1
convolutions where diffusers has linear layers. The text encoder is the transformers CLIP model as is.
"""

from __future__ import annotations

import torch

#: diffusers ResnetBlock2D layer → the ldm U-Net ResBlock's (its Sequentials' indices)
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}  # norm1, conv1, norm2, conv2 keep their names
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_modules(config) -> dict[str, tuple[str, dict]]:
    """diffusers module path → (ldm module path, renaming of the layers inside it)."""
    n, levels = config.layers_per_block, len(config.down_block_types)
    modules = {"time_embedding.linear_1": ("time_embed.0", {}), "time_embedding.linear_2": ("time_embed.2", {}),
               "conv_in": ("input_blocks.0.0", {}), "conv_norm_out": ("out.0", {}), "conv_out": ("out.2", {}),
               "mid_block.resnets.0": ("middle_block.0", _UNET_RESNET),
               "mid_block.attentions.0": ("middle_block.1", {}),
               "mid_block.resnets.1": ("middle_block.2", _UNET_RESNET)}
    for level in range(levels):
        first = 1 + level * (n + 1)
        for j in range(n):
            modules[f"down_blocks.{level}.resnets.{j}"] = (f"input_blocks.{first + j}.0", _UNET_RESNET)
            modules[f"down_blocks.{level}.attentions.{j}"] = (f"input_blocks.{first + j}.1", {})
        modules[f"down_blocks.{level}.downsamplers.0.conv"] = (f"input_blocks.{first + n}.0.op", {})
    for level, block_type in enumerate(config.up_block_types):
        first = level * (n + 1)
        for j in range(n + 1):
            modules[f"up_blocks.{level}.resnets.{j}"] = (f"output_blocks.{first + j}.0", _UNET_RESNET)
            modules[f"up_blocks.{level}.attentions.{j}"] = (f"output_blocks.{first + j}.1", {})
        slot = 2 if block_type.startswith("CrossAttn") else 1  # after the attention, if the level has one
        modules[f"up_blocks.{level}.upsamplers.0.conv"] = (f"output_blocks.{first + n}.{slot}.conv", {})
    return modules


def _vae_modules(config) -> dict[str, tuple[str, dict]]:
    levels = len(config.block_out_channels)
    modules = {"quant_conv": ("quant_conv", {}), "post_quant_conv": ("post_quant_conv", {})}
    for part in ("encoder", "decoder"):
        modules.update({f"{part}.conv_in": (f"{part}.conv_in", {}), f"{part}.conv_out": (f"{part}.conv_out", {}),
                        f"{part}.conv_norm_out": (f"{part}.norm_out", {}),
                        f"{part}.mid_block.attentions.0": (f"{part}.mid.attn_1", _VAE_ATTENTION)})
        for k in range(2):
            modules[f"{part}.mid_block.resnets.{k}"] = (f"{part}.mid.block_{k + 1}", _VAE_RESNET)
    for level in range(levels):
        up = levels - 1 - level  # diffusers' first up block is ldm's deepest level
        for j in range(config.layers_per_block):
            modules[f"encoder.down_blocks.{level}.resnets.{j}"] = (f"encoder.down.{level}.block.{j}", _VAE_RESNET)
        for j in range(config.layers_per_block + 1):
            modules[f"decoder.up_blocks.{level}.resnets.{j}"] = (f"decoder.up.{up}.block.{j}", _VAE_RESNET)
        modules[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = (f"encoder.down.{level}.downsample.conv", {})
        modules[f"decoder.up_blocks.{level}.upsamplers.0.conv"] = (f"decoder.up.{up}.upsample.conv", {})
    return modules


def _rename(key: str, modules: dict[str, tuple[str, dict]]) -> str:
    """The ldm name of diffusers parameter ``key``: its longest module prefix mapped, then the inner layer."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in modules:
            new_head, inner = modules[head]
            rest = ".".join(parts[cut:])
            for old, new in inner.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
            return f"{new_head}.{rest}"
    raise KeyError(f"no original name for {key!r}")


def sd15_state_dict(backbone) -> dict[str, torch.Tensor]:
    """One state dict in the SD 1.x original layout, under the prefixes of ``FAMILIES["sd15"]``.

    SD 1.x only: SD 2.x and SDXL's OpenCLIP towers are stored in another layout (fused q/k/v).
    """
    from retouch.families import FAMILIES

    if backbone.family != "sd":
        raise ValueError("only the SD 1.x layout is written")
    prefixes = FAMILIES["sd15"].single_file_prefixes
    state = {}
    unet_modules = _unet_modules(backbone.unet.config)
    for key, value in backbone.unet.state_dict().items():
        state[prefixes["unet"] + _rename(key, unet_modules)] = value
    vae_modules = _vae_modules(backbone.vae.config)
    for key, value in backbone.vae.state_dict().items():
        name = _rename(key, vae_modules)
        if ".attn_1." in name and name.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # ldm's attention projections are 1×1 convolutions
        state[prefixes["vae"] + name] = value
    for key, value in backbone.text_encoders[0].state_dict().items():
        # the original file keeps CLIPTextModel's text_model level, which newer transformers drop
        state[prefixes["text_encoder"] + ("" if key.startswith("text_model.") else "text_model.") + key] = value
    return {k: v.detach().contiguous() for k, v in state.items()}
