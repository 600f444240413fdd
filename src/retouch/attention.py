"""One attention-processor mechanism for every method that reads or rewrites attention.

pix2pix-zero needs cross-attention probabilities with gradients, pix2pix-zeroCon needs the outputs of
self-attention, prompt-to-prompt needs to replace maps. All three are an :class:`AttentionHook`
installed with :func:`hooked_attention` on *chosen layers only*; every other layer keeps diffusers'
fused scaled-dot-product attention, and the original processors are always restored on exit
(refiners' inject/eject discipline).

Shapes: probabilities are ``(B, heads, queries, keys)``; for cross-attention keys are text tokens.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AttentionLayer:
    """Where an attention module sits in the U-Net (its diffusers processor name)."""

    name: str  # e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    is_cross: bool
    place: str  # "down", "mid" or "up"

    @property
    def is_self(self) -> bool:
        return not self.is_cross


class AttentionHook:
    """Decides, per layer and call, what a hooked attention layer does. Subclass and override.

    ``wants_probabilities`` — compute the softmax explicitly (else fused SDPA);
    ``on_probabilities`` — see (and optionally return replaced) maps, with gradients;
    ``on_output`` — see (and optionally replace) the layer's input and output hidden states.
    """

    def wants_probabilities(self, layer: AttentionLayer) -> bool:
        return False

    def on_probabilities(self, layer: AttentionLayer, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities

    def on_output(self, layer: AttentionLayer, hidden_in: torch.Tensor, hidden_out: torch.Tensor) -> torch.Tensor:
        return hidden_out


class CrossAttentionRecorder(AttentionHook):
    """Keeps the latest cross-attention probabilities per layer, differentiably.

    Maps are overwritten on each U-Net call, so memory holds one step's maps of the chosen layers,
    not every timestep's (the reference pix2pix-zero code keeps all of them).
    """

    def __init__(self):
        self.maps: dict[str, torch.Tensor] = {}

    def wants_probabilities(self, layer):
        return layer.is_cross

    def on_probabilities(self, layer, probabilities):
        self.maps[layer.name] = probabilities
        return probabilities

    def clear(self) -> None:
        self.maps.clear()


class SelfAttentionRecorder(AttentionHook):
    """Keeps the latest input and output hidden states (B, HW, C) of self-attention layers."""

    def __init__(self):
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}

    def on_output(self, layer, hidden_in, hidden_out):
        if layer.is_self:
            self.inputs[layer.name] = hidden_in
            self.outputs[layer.name] = hidden_out
        return hidden_out

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()


class MapEditor(AttentionHook):
    """Rewrites attention maps with ``edit(layer, probabilities) -> probabilities`` (prompt-to-prompt)."""

    def __init__(self, edit: Callable[[AttentionLayer, torch.Tensor], torch.Tensor],
                 cross: bool = True, self_attention: bool = False):
        self.edit, self.cross, self.self_attention = edit, cross, self_attention

    def wants_probabilities(self, layer):
        return self.cross if layer.is_cross else self.self_attention

    def on_probabilities(self, layer, probabilities):
        return self.edit(layer, probabilities)


class HookGroup(AttentionHook):
    """Several hooks on the same layers, applied in order."""

    def __init__(self, *hooks: AttentionHook):
        self.hooks = hooks

    def wants_probabilities(self, layer):
        return any(h.wants_probabilities(layer) for h in self.hooks)

    def on_probabilities(self, layer, probabilities):
        for hook in self.hooks:
            if hook.wants_probabilities(layer):
                probabilities = hook.on_probabilities(layer, probabilities)
        return probabilities

    def on_output(self, layer, hidden_in, hidden_out):
        for hook in self.hooks:
            hidden_out = hook.on_output(layer, hidden_in, hidden_out)
        return hidden_out


class Gate(AttentionHook):
    """Passes every call to ``hook`` while open; while closed the hooked layers compute plain fused
    attention, so hooks can stay installed across calls that should not record (installing and
    removing processors costs a walk over the whole U-Net each time)."""

    def __init__(self, hook: AttentionHook):
        self.hook, self.open = hook, True

    def wants_probabilities(self, layer):
        return self.open and self.hook.wants_probabilities(layer)

    def on_probabilities(self, layer, probabilities):
        return self.hook.on_probabilities(layer, probabilities)

    def on_output(self, layer, hidden_in, hidden_out):
        return self.hook.on_output(layer, hidden_in, hidden_out) if self.open else hidden_out

    @contextmanager
    def closed(self) -> Iterator[None]:
        was_open, self.open = self.open, False
        try:
            yield
        finally:
            self.open = was_open


class HookedAttnProcessor:
    """A diffusers attention processor that routes through an :class:`AttentionHook`.

    Same arithmetic as diffusers' ``AttnProcessor2_0``; the softmax is written out only when the
    hook asks for the probabilities, so recording does not change the output beyond float rounding.
    """

    def __init__(self, layer: AttentionLayer, hook: AttentionHook, slice_size: int | None = None):
        self.layer, self.hook = layer, hook
        #: rows of (batch × heads) attended at a time, as diffusers' ``SlicedAttnProcessor`` does; set when
        #: the layer was sliced before the hook was installed, so hooking keeps the layer's memory bound
        self.slice_size = slice_size

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        hidden_in = hidden_states
        batch, query_len, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
            if encoder_hidden_states is None:
                context = hidden_states
        elif encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if self.hook.wants_probabilities(self.layer):
            # SD 2.x sets upcast_attention: its fp16 scores overflow (the fused kernel accumulates wider)
            scores_fn = _upcast_softmax_scores if attn.upcast_attention or attn.upcast_softmax else _softmax_scores
            probabilities = _sliced(scores_fn, self.slice_size, query, key, attention_mask)
            probabilities = self.hook.on_probabilities(self.layer, probabilities)
            out = probabilities.to(value.dtype) @ value  # (B, heads, queries, head_dim)
        else:
            out = _sliced(_fused_attention, self.slice_size, query, key, value, attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        out = self.hook.on_output(self.layer, hidden_in, out)

        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _softmax_scores(query, key, attention_mask):
    scores = query @ key.transpose(-1, -2) * (1.0 / math.sqrt(query.shape[-1]))
    if attention_mask is not None:
        scores = scores + attention_mask
    return scores.softmax(dim=-1)


def _upcast_softmax_scores(query, key, attention_mask):
    """:func:`_softmax_scores` in float32, as diffusers' ``get_attention_scores`` does for layers with
    ``upcast_attention`` / ``upcast_softmax`` (the probabilities stay float32; the caller casts)."""
    mask = None if attention_mask is None else attention_mask.float()
    return _softmax_scores(query.float(), key.float(), mask)


def _fused_attention(query, key, value, attention_mask):
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)


def _sliced(fn, slice_size: int | None, *tensors):
    """``fn`` over (B, heads, …) tensors, ``slice_size`` rows of the flattened batch × heads at a time.

    The recorded probabilities are still whole (the hook needs every map); slicing bounds the scores
    computed at once, as diffusers' attention slicing does.
    """
    query = tensors[0]
    batch, heads = query.shape[:2]
    if slice_size is None or slice_size >= batch * heads:
        return fn(*tensors)

    def rows(x):
        return None if x is None else x.expand(batch, heads, *x.shape[2:]).reshape(batch * heads, *x.shape[2:])

    flat = [rows(x) for x in tensors]
    parts = [fn(*(None if x is None else x[i:i + slice_size] for x in flat))
             for i in range(0, batch * heads, slice_size)]
    out = torch.cat(parts)
    return out.view(batch, heads, *out.shape[1:])


def attention_layers(unet) -> list[AttentionLayer]:
    """Every attention layer of a diffusers U-Net, in processor order."""
    layers = []
    for processor_name in unet.attn_processors:
        name = processor_name.removesuffix(".processor")
        module = unet.get_submodule(name)
        place = "mid" if name.startswith("mid_block") else name.split("_", 1)[0]
        layers.append(AttentionLayer(name=name, is_cross=bool(module.is_cross_attention), place=place))
    return layers


def select_layers(
    unet,
    *,
    cross: bool | None = None,
    places: tuple[str, ...] = ("down", "mid", "up"),
    max_resolution: int | None = None,
    latent_size: tuple[int, int] | None = None,
) -> list[AttentionLayer]:
    """Choose layers by kind (cross/self/both), U-Net part and, optionally, feature resolution.

    ``max_resolution`` (with ``latent_size``) keeps layers whose feature map side is at most that
    (prompt-to-prompt stores maps only at ≤ 32², replaces self-attention only at ≤ 16²).
    """
    chosen = []
    for layer in attention_layers(unet):
        if cross is not None and layer.is_cross != cross:
            continue
        if layer.place not in places:
            continue
        if max_resolution is not None and latent_size is not None:
            if layer_resolution(unet, layer, latent_size) > max_resolution:
                continue
        chosen.append(layer)
    return chosen


def layer_resolution(unet, layer: AttentionLayer, latent_size: tuple[int, int]) -> int:
    """Feature-map side length at ``layer`` for a latent of ``latent_size`` (the larger side)."""
    parts = layer.name.split(".")
    levels = len(unet.config.block_out_channels)
    side = max(latent_size)
    if layer.place == "down":
        return side // 2 ** int(parts[1])
    if layer.place == "mid":
        return side // 2 ** (levels - 1)
    return side // 2 ** (levels - 1 - int(parts[1]))


@contextmanager
def hooked_attention(unet, hook: AttentionHook, layers: list[AttentionLayer] | None = None) -> Iterator[AttentionHook]:
    """Route ``layers`` (default: all) of ``unet`` through ``hook``; restore the processors on exit.

    A layer that was sliced (:func:`retouch.memory.enable_attention_slicing`) stays sliced while hooked.
    """
    original = dict(unet.attn_processors)
    layers = attention_layers(unet) if layers is None else layers
    chosen = {layer.name + ".processor": layer for layer in layers}
    processors = {
        key: HookedAttnProcessor(chosen[key], hook, getattr(processor, "slice_size", None)) if key in chosen
        else processor
        for key, processor in original.items()
    }
    unet.set_attn_processor(processors)
    try:
        yield hook
    finally:
        unet.set_attn_processor(original)
