"""Memory options for small GPUs: attention slicing and model-level CPU offload.

* **Attention slicing** computes each U-Net attention layer a few (batch × head) rows at a time
  (diffusers' ``set_attention_slice``). Enable it before hooking: :func:`retouch.attention.hooked_attention`
  then keeps the hooked layers sliced too, and restores the sliced processors on exit. Enabling it
  while retouch's processors are installed is refused, since it would silently replace them.
* **CPU offload** keeps every module (VAE, text encoders, U-Net) in host memory and moves one to the
  GPU when it is called, sending the previous one back: weight memory on the GPU is the largest
  module's, at the cost of a host↔device copy whenever the module in use changes (an edit calls the
  text encoder, the VAE and the U-Net only a few times each, so it is a handful of copies per edit).
  On a CPU-only run there is nothing to offload to and it does nothing.
"""

from __future__ import annotations

import torch

from retouch.errors import RetouchError


def unet_of(model):
    """The diffusers U-Net of a backbone or of a multitask model."""
    unet = getattr(model, "unet", None)
    if unet is None and hasattr(model, "denoiser"):
        unet = model.denoiser.unet
    if unet is None:
        raise RetouchError(f"{type(model).__name__} has no U-Net to slice attention in")
    return unet


def enable_attention_slicing(model, slice_size: str | int | None = "auto") -> None:
    """Slice the attention of ``model``'s U-Net: ``"auto"`` (half the heads at a time), ``"max"`` (one
    row at a time), a number of rows, or ``None`` to switch slicing off (fused attention again)."""
    from retouch.attention import HookedAttnProcessor

    unet = unet_of(model)
    if any(isinstance(p, HookedAttnProcessor) for p in unet.attn_processors.values()):
        raise RuntimeError("attention slicing would replace retouch's attention hooks; enable it before hooking")
    unet.set_attention_slice(slice_size)


def attention_slice_sizes(model) -> set:
    """The slice sizes of the U-Net's attention layers (``{None}`` when nothing is sliced)."""
    return {getattr(p, "slice_size", None) for p in unet_of(model).attn_processors.values()}


class Residency:
    """Which offloaded module is on the execution device; moves modules in and out as they are called."""

    def __init__(self, device: torch.device, offload_device: torch.device):
        self.device, self.offload_device = device, offload_device
        self.active: torch.nn.Module | None = None
        self.log: list[str] = []  # names of the modules brought in, in order

    def bring_in(self, name: str, module: torch.nn.Module) -> None:
        if self.active is module:
            return
        if self.active is not None:
            self.active.to(self.offload_device)
        module.to(self.device)
        self.active = module
        self.log.append(name)


def _offload_hook(residency: Residency, name: str):
    from accelerate.hooks import ModelHook

    class BringIn(ModelHook):
        # accelerate calls pre_forward before forward, and diffusers' VAE calls it before encode/decode.
        def pre_forward(self, module, *args, **kwargs):
            residency.bring_in(name, module)
            return args, kwargs

    return BringIn()


def _offloadable_modules(backbone) -> dict[str, torch.nn.Module]:
    modules = {"vae": backbone.vae, "unet": backbone.unet}
    for i, encoder in enumerate(backbone.text_encoders):
        modules["text_encoder" if i == 0 else f"text_encoder_{i + 1}"] = encoder
    return modules


def enable_cpu_offload(backbone, device: str | torch.device = "cuda", *,
                       offload_device: str | torch.device = "cpu") -> Residency | None:
    """Keep ``backbone``'s modules on ``offload_device``, each moved to ``device`` while in use.

    Returns the :class:`Residency` (its ``log`` says which module came in when), or ``None`` when
    ``device`` is ``offload_device`` (a CPU-only run): then nothing changes.
    """
    from accelerate.hooks import add_hook_to_module

    from retouch.backbone import Backbone

    device, offload_device = torch.device(device), torch.device(offload_device)
    if device == offload_device:
        return None
    if not isinstance(backbone, Backbone):
        raise RetouchError(f"--cpu-offload works on text-to-image backbones, not on a {type(backbone).__name__}")
    residency = Residency(device, offload_device)
    for name, module in _offloadable_modules(backbone).items():
        module.to(offload_device)
        add_hook_to_module(module, _offload_hook(residency, name))
    backbone.execution_device = device
    return residency


def disable_cpu_offload(backbone) -> None:
    """Remove the offload hooks and put every module on the execution device."""
    from accelerate.hooks import remove_hook_from_module

    if getattr(backbone, "execution_device", None) is None:
        return
    for module in _offloadable_modules(backbone).values():
        remove_hook_from_module(module)
        module.to(backbone.execution_device)
    backbone.execution_device = None
