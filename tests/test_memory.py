"""Attention slicing and CPU offload: honoured, and the edits do not change."""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import SlicedAttnProcessor
from PIL import Image

from retouch import memory
from retouch.attention import CrossAttentionRecorder, HookedAttnProcessor, hooked_attention, select_layers
from retouch.families import random_backbone
from retouch.methods import get_method, load_method_model, make_config
from helpers import run_cli

SIZE = 64
WORD_SWAP = dict(edit="cat->dog", source_text="a photo of a cat", num_steps=2)
CONFIGS = {  # methods that read or rewrite attention, and a plain sampler
    "sdedit": dict(prompt="a photo of a dog", num_steps=2),
    "p2p": WORD_SWAP,
    "pix2pix-zero": dict(WORD_SWAP, xa_guidance=20.0),  # a large step so the maps' gradient shows
    "zerocon": dict(WORD_SWAP, xa_guidance=20.0),
}


@pytest.fixture()
def sd15():
    """A fresh SD 1.5-structured tiny model per test (8 heads per layer, so slicing has slices)."""
    return random_backbone("sd15")


def _images():
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _edit(backbone, name):
    method = get_method(name)
    return method.edit(backbone, _images(), make_config(method, **CONFIGS[name]))


# ---------------------------------------------------------------------------------------------
# Attention slicing
# ---------------------------------------------------------------------------------------------
def test_slicing_does_not_change_any_edit(sd15):
    plain = {name: _edit(sd15, name) for name in CONFIGS}
    memory.enable_attention_slicing(sd15, "auto")
    assert memory.attention_slice_sizes(sd15) == {4}  # "auto": half of the 8 heads at a time
    for name, expected in plain.items():
        torch.testing.assert_close(_edit(sd15, name), expected, atol=1e-4, rtol=0, msg=name)
    assert memory.attention_slice_sizes(sd15) == {4}  # the hooks put the sliced processors back


def test_hooked_layers_stay_sliced_and_record_the_same_maps(sd15):
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = sd15.encode_text(["a photo of a cat"])
    layers = select_layers(sd15.unet, cross=True)

    def record():
        with torch.no_grad(), hooked_attention(sd15.unet, CrossAttentionRecorder(), layers) as recorder:
            out = sd15.denoise(latents, 500, cond)
            processors = dict(sd15.unet.attn_processors)
        return out, dict(recorder.maps), processors

    out, maps, _ = record()
    memory.enable_attention_slicing(sd15, 1)  # "max": one (batch × head) row at a time
    sliced_out, sliced_maps, processors = record()
    torch.testing.assert_close(sliced_out, out, atol=1e-5, rtol=0)
    for name in maps:
        torch.testing.assert_close(sliced_maps[name], maps[name], atol=1e-6, rtol=0)
    hooked = {layer.name + ".processor" for layer in layers}
    for key, processor in processors.items():
        if key in hooked:
            assert isinstance(processor, HookedAttnProcessor) and processor.slice_size == 1
        else:
            assert isinstance(processor, SlicedAttnProcessor)


def test_slicing_refuses_to_replace_installed_hooks(sd15):
    with hooked_attention(sd15.unet, CrossAttentionRecorder()):
        with pytest.raises(RuntimeError, match="before hooking"):
            memory.enable_attention_slicing(sd15)
    memory.enable_attention_slicing(sd15)
    memory.enable_attention_slicing(sd15, None)  # off again: fused attention
    assert memory.attention_slice_sizes(sd15) == {None}


def test_load_method_model_slices_on_request():
    method = get_method("sdedit")
    assert memory.attention_slice_sizes(load_method_model(method, "tiny-sd", device="cpu",
                                                          attention_slicing="auto")) == {4}
    assert memory.attention_slice_sizes(load_method_model(method, "tiny-sd", device="cpu")) == {None}


# ---------------------------------------------------------------------------------------------
# CPU offload
# ---------------------------------------------------------------------------------------------
def test_offload_is_a_no_op_on_cpu(sd15):
    assert memory.enable_cpu_offload(sd15, "cpu") is None
    assert sd15.execution_device is None and not hasattr(sd15.unet, "_hf_hook")
    loaded = load_method_model(get_method("sdedit"), "tiny-sd", device="cpu", cpu_offload=True)
    assert loaded.execution_device is None and not hasattr(loaded.unet, "_hf_hook")


@pytest.mark.parametrize("name", ["sdedit", "pix2pix-zero"])
def test_offload_brings_in_each_module_when_called_and_edits_the_same(sd15, name):
    expected = _edit(sd15, name)
    # "cpu:0" is a device distinct from "cpu" to the hooks, so they move modules as they would to a GPU.
    residency = memory.enable_cpu_offload(sd15, "cpu:0")
    assert sd15.device == torch.device("cpu:0")
    moves = []
    for module_name, module in (("vae", sd15.vae), ("unet", sd15.unet), ("text_encoder", sd15.text_encoder)):
        original_to = module.to

        def spy(*args, _name=module_name, _to=original_to, **kwargs):
            moves.append((_name, str(args[0] if args else kwargs.get("device"))))
            return _to(*args, **kwargs)

        module.to = spy
    result = _edit(sd15, name)
    torch.testing.assert_close(result, expected, atol=1e-4 if name == "pix2pix-zero" else 0, rtol=0)
    # Every module came in; each arrival sent the previous one out, so one was resident at a time.
    assert set(residency.log) == {"vae", "text_encoder", "unet"}
    assert residency.log[-1] == "vae"  # the decode comes last
    assert all(a != b for a, b in zip(residency.log, residency.log[1:]))
    arrivals = [m for m, device in moves if device == "cpu:0"]
    departures = [m for m, device in moves if device == "cpu"]
    assert arrivals == residency.log and departures == residency.log[:-1]
    memory.disable_cpu_offload(sd15)
    assert sd15.execution_device is None and not hasattr(sd15.unet, "_hf_hook")


def test_offload_refuses_models_that_are_not_backbones():
    with pytest.raises(Exception, match="text-to-image backbones"):
        memory.enable_cpu_offload(object(), "cpu:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_offload_on_a_gpu_keeps_one_module_there():
    backbone = random_backbone("sdxl")
    expected = _edit(backbone.to("cuda"), "sdedit").cpu()
    backbone.to("cpu")
    memory.enable_cpu_offload(backbone, "cuda")
    result = _edit(backbone, "sdedit").cpu()
    torch.testing.assert_close(result, expected, atol=1e-4, rtol=0)
    on_gpu = [m for m in (backbone.vae, backbone.unet, *backbone.text_encoders)
              if next(m.parameters()).device.type == "cuda"]
    assert on_gpu == [backbone.vae]  # decoded last; the rest went back to the host


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def test_cli_flags_are_honoured(tmp_path, capsys):
    source = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)).save(source)
    base = ["edit", source, "--method", "sdedit", "--prompt", "a cat", "--num-steps", "2", "--device", "cpu",
            "--model", "tiny-sd"]
    code, _, _ = run_cli(base + ["-o", tmp_path / "plain.png"], capsys)
    assert code == 0
    code, _, err = run_cli(base + ["-o", tmp_path / "low.png", "--attention-slicing", "--cpu-offload"], capsys)
    assert code == 0 and "--cpu-offload does nothing on cpu" in err
    plain, low = (np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=int) for n in ("plain", "low"))
    assert np.abs(plain - low).max() <= 1  # the same edit, to 8-bit rounding
