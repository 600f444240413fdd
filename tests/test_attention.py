"""The attention hook mechanism: transparent when recording, correct maps, gradients, clean removal."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from retouch.attention import (
    CrossAttentionRecorder,
    Gate,
    HookGroup,
    MapEditor,
    SelfAttentionRecorder,
    attention_layers,
    hooked_attention,
    layer_resolution,
    select_layers,
)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sd2-v", "tiny-sdxl"])
def test_recording_leaves_output_unchanged_and_maps_are_distributions(tiny_backbones, name):
    backbone = tiny_backbones[name]
    cond = backbone.encode_text(["a photo of a cat", "a dog"])
    latents = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    stock = backbone.denoise(latents, 500, cond)

    cross, selfs = CrossAttentionRecorder(), SelfAttentionRecorder()
    layers = select_layers(backbone.unet)
    with hooked_attention(backbone.unet, HookGroup(cross, selfs), layers):
        hooked = backbone.denoise(latents, 500, cond)
    assert (hooked - stock).abs().max().item() <= 1e-5

    n_cross = sum(layer.is_cross for layer in layers)
    assert len(cross.maps) == n_cross > 0 and len(selfs.outputs) == len(layers) - n_cross
    heads = backbone.unet.get_submodule(next(iter(cross.maps))).heads
    for layer_name, probs in cross.maps.items():
        side = layer_resolution(backbone.unet, next(l for l in layers if l.name == layer_name), (32, 32))
        assert probs.shape == (2, heads, side * side, 77)
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    for layer_name, hidden in selfs.outputs.items():
        assert hidden.shape[:2] == selfs.inputs[layer_name].shape[:2]


def test_a_closed_gate_records_nothing_and_computes_what_an_unhooked_unet_does(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    cond = backbone.encode_text(["a photo of a cat"])
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    stock = backbone.denoise(latents, 500, cond)
    recorder, selfs = CrossAttentionRecorder(), SelfAttentionRecorder()
    gate = Gate(HookGroup(recorder, selfs))
    with hooked_attention(backbone.unet, gate):
        with gate.closed():
            closed = backbone.denoise(latents, 500, cond)
        assert not recorder.maps and not selfs.outputs and gate.open
        backbone.denoise(latents, 500, cond)
        assert recorder.maps and selfs.outputs
    assert (closed - stock).abs().max().item() <= 1e-6


def test_gradients_flow_from_maps_to_latents(tiny_backbones):
    backbone = tiny_backbones["tiny-sd"]
    cond = backbone.encode_text(["a cat"])
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    recorder = CrossAttentionRecorder()
    with hooked_attention(backbone.unet, recorder, select_layers(backbone.unet, cross=True)):
        backbone.denoise(latents, 500, cond)
    loss = sum(m[..., 2].pow(2).sum() for m in recorder.maps.values())  # the word "cat"
    assert loss.item() > 0  # guidance losses must see non-empty maps (the "CrossAttention" trap)
    (grad,) = torch.autograd.grad(loss, latents)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()


def test_only_chosen_layers_are_hooked_and_processors_are_restored(tiny_backbones):
    unet = tiny_backbones["tiny-sd"].unet
    before = dict(unet.attn_processors)
    chosen = select_layers(unet, cross=True, places=("up",))
    assert chosen and all(layer.is_cross and layer.place == "up" for layer in chosen)
    with pytest.raises(RuntimeError):
        with hooked_attention(unet, CrossAttentionRecorder(), chosen):
            hooked = {k for k, p in unet.attn_processors.items() if not isinstance(p, AttnProcessor2_0)}
            assert hooked == {layer.name + ".processor" for layer in chosen}
            raise RuntimeError("processors must come back even when the body fails")
    assert all(unet.attn_processors[k] is p for k, p in before.items())


def test_map_replacement_changes_output(tiny_backbones):
    """A prompt-to-prompt style edit: the second sample takes the first sample's cross-attention maps."""
    backbone = tiny_backbones["tiny-sd"]
    cond = backbone.encode_text(["a photo of a cat", "a photo of a dog"])
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(3)).repeat(2, 1, 1, 1)

    def copy_source_maps(layer, probs):
        return torch.stack([probs[0], probs[0]])

    plain = backbone.denoise(latents, 400, cond)
    with hooked_attention(backbone.unet, MapEditor(copy_source_maps), select_layers(backbone.unet, cross=True)):
        edited = backbone.denoise(latents, 400, cond)
    assert torch.allclose(edited[0], plain[0], atol=1e-5)  # the source row is untouched
    assert (edited[1] - plain[1]).abs().max() > 1e-4  # the target row now follows the source's maps


def test_resolution_filter(tiny_backbones):
    unet = tiny_backbones["tiny-sd"].unet
    every = attention_layers(unet)
    assert select_layers(unet, max_resolution=8, latent_size=(32, 32)) == []
    assert select_layers(unet, max_resolution=16, latent_size=(32, 32)) == every


@pytest.mark.parametrize("upcast", [True, False])
def test_recorded_probabilities_are_upcast_where_the_layer_asks(upcast):
    """SD 2.x layers set ``upcast_attention``: in float16 their scores overflow unless computed in float32,
    as diffusers' ``get_attention_scores`` does; the recording path must do the same (the fused path
    accumulates wider by itself)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    from retouch.attention import AttentionLayer, HookedAttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=8, heads=2, dim_head=4, upcast_attention=upcast).half()
    with torch.no_grad():
        for linear in (attn.to_q, attn.to_k):
            linear.weight.fill_(1.0)
    hidden = torch.full((1, 3, 8), 40.0).half()  # q·k ≈ 320² · 4 / 2 ≫ 65504: inf in float16
    context = torch.full((1, 5, 8), 40.0).half() + torch.arange(5.0).view(1, 5, 1).half()
    recorder = CrossAttentionRecorder()
    attn.set_processor(HookedAttnProcessor(AttentionLayer("attn2", True, "mid"), recorder))
    hooked = attn(hidden, encoder_hidden_states=context)
    probabilities = recorder.maps["attn2"]
    if upcast:
        attn.set_processor(AttnProcessor())  # diffusers' reference, honouring upcast_attention
        reference = attn(hidden, encoder_hidden_states=context)
        assert torch.isfinite(probabilities).all() and probabilities.dtype == torch.float32
        assert torch.allclose(probabilities.sum(-1), torch.ones(()), atol=1e-5)
        assert torch.allclose(hooked.float(), reference.float(), atol=1e-2)
    else:  # the layer did not ask: float16 as the model runs, and these inputs overflow
        assert probabilities.dtype == torch.float16 and not torch.isfinite(probabilities).all()
