"""What every exemplar method (PIXELS and its two baselines) reads besides the source image.

The options they share (:class:`ExemplarConfig`), exemplar images fitted to the source's size, edit
maps shaped and checked, the text denoiser, the fixed noise and the encoded inputs with each map
area-averaged to latent size (PIXELS' μ_d, Algorithm 1 line 6). The CLI reads exemplars and maps from
files (:func:`load_exemplar_inputs`), the app hands them over in memory (:func:`exemplar_tensors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from retouch.errors import RetouchError
from retouch.methods import guidance_option, steps_option
from retouch.options import check_options, option
from retouch.sampling import guided_denoiser

EXEMPLAR_FITS = ("resize", "center")


def downsample_map(edit_map: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """μ_d of Algorithm 1 line 6, as an edit map: (B, 1, H, W) → (B, 1, h, w) by area averaging.

    Each latent cell summarises one f×f pixel block (f = 8 for SD's VAE, which keeps pixels at the
    same relative positions, §Algorithm), so the cell takes the block's mean: a cell counts as
    fully edited (m = 1) only when its whole block is, and a binary mask's boundary becomes
    fractional cells that the thresholds turn into a one-cell transition.
    """
    return F.interpolate(edit_map, size=latent_hw, mode="area")


# ---------------------------------------------------------------------------------------------
@dataclass
class ExemplarConfig:
    """Options every exemplar method shares; the exemplar and map *files* are for the CLI only."""

    prompt: str = option("", "text guidance p (PIXELS §Bringing Back Text Control); the paper keeps it empty")
    negative_prompt: str = option("", "text the result should move away from")
    strength: float = option(0.8, "t_ds^max/T, the start step of the most edited region (PIXELS Lemma 1; the paper "
                                  "tunes it per edit)", above=0, at_most=1)
    num_steps: int = steps_option()
    guidance_scale: float = guidance_option()
    seed: int = option(0, "seed of the added noise")
    exemplar: tuple[str, ...] = option((), "exemplar image; repeat for several, each followed by its --map")
    map: tuple[str, ...] = option((), "grayscale edit map of the matching --exemplar: white = take the exemplar, "
                                      "black = keep the input")
    exemplar_fit: str = option("resize", "resize: stretch each exemplar to the input's size; center: keep its "
                                         "pixels, centre it on black (crop if larger), as the paper pads placed "
                                         "exemplars (appendix §3)", choices=EXEMPLAR_FITS)
    map_grow: float = option(0.0, "dilate each map (binarised at ½) by this many pixels", at_least=0)
    map_ramp: float = option(0.0, "binarise each map at ½ and fade it out linearly over this many pixels around "
                                  "the mask", at_least=0)
    map_blur: float = option(0.0, "Gaussian blur σ in pixels applied to each map last", at_least=0)

    def validate(self) -> None:
        if len(self.exemplar) != len(self.map):
            raise RetouchError(f"got {len(self.exemplar)} --exemplar but {len(self.map)} --map; "
                               "give one --map per --exemplar, in the same order")
        for path in (*self.exemplar, *self.map):
            if not Path(path).is_file():
                raise RetouchError(f"cannot read image '{path}': no such file; check the path")
        check_options(self)
        if int(self.num_steps * self.strength) < 1:
            raise RetouchError(f"--strength {self.strength:g} × --num-steps {self.num_steps} runs no step; "
                               "raise either")

    def input_files(self) -> tuple[str, ...]:
        """Files the CLI must never overwrite."""
        return (*self.exemplar, *self.map)


def fit_exemplar(image: np.ndarray, size: tuple[int, int], policy: str = "resize") -> np.ndarray:
    """Bring an exemplar (H, W, 3) in [0, 1] to the source's ``size`` = (width, height).

    ``"resize"`` (default, as the official code resizes both images to one size) stretches it with
    Lanczos. ``"center"`` keeps its pixels: smaller exemplars are centred on black, larger ones
    centre-cropped; to put an exemplar somewhere else, compose it on a source-sized canvas first
    (the paper's placed exemplars, appendix §3) and use either policy.
    """
    from retouch.imageio import resize_image

    width, height = size
    if policy == "resize":
        return resize_image(image, (width, height))
    canvas = np.zeros((height, width, 3), dtype=np.float32)
    h, w = min(height, image.shape[0]), min(width, image.shape[1])
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    dst_top, dst_left = (height - h) // 2, (width - w) // 2
    canvas[dst_top:dst_top + h, dst_left:dst_left + w] = image[top:top + h, left:left + w]
    return canvas


def load_exemplar_inputs(config: ExemplarConfig, size: tuple[int, int], device, dtype) -> dict:
    """The CLI's ``prepare`` hook: exemplar and map files at the fitted source ``size`` (width, height).

    Maps are read as luminance and resized bilinearly by :func:`retouch.imageio.load_map`; the rest is
    :func:`exemplar_tensors`.
    """
    from retouch.imageio import load_image, load_map

    if not config.exemplar:
        raise RetouchError("exemplar editing needs at least one --exemplar IMAGE with its --map MAP")
    return exemplar_tensors(config, [load_image(path) for path in config.exemplar],
                            [load_map(path, size=size) for path in config.map], size, device, dtype)


def exemplar_tensors(config: ExemplarConfig, images: Sequence[np.ndarray], maps: Sequence[np.ndarray],
                     size: tuple[int, int], device, dtype) -> dict:
    """``prepare``'s result from exemplar images (H, W, 3) and edit maps already at ``size`` (width, height), both
    in [0, 1]: the exemplars fitted to ``size``, the maps shaped by ``map_grow`` → ``map_ramp`` → ``map_blur``
    (:mod:`retouch.edit_maps`). The CLI reads them from files, the app hands them over in memory."""
    from retouch.edit_maps import blur_map, grow_mask, linear_ramp_map
    from retouch.imageio import to_tensor

    exemplars = [to_tensor(fit_exemplar(image, size, config.exemplar_fit), device=device, dtype=dtype)
                 for image in images]
    shaped = []
    for edit_map in maps:
        for amount, shape in ((config.map_grow, grow_mask), (config.map_ramp, linear_ramp_map),
                              (config.map_blur, blur_map)):
            edit_map = shape(edit_map, amount) if amount > 0 else edit_map
        shaped.append(torch.from_numpy(edit_map))
    return {"exemplars": exemplars, "maps": shaped}


def check_exemplar_inputs(source: torch.Tensor, exemplars, maps) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Exemplars as (1|B, 3, H, W) and maps as (1|B, 1, H, W) float tensors on the source's device.

    Exemplars (3, H, W) or (B, 3, H, W) in [−1, 1] and maps (H, W), (1, H, W) or (B, 1, H, W) in
    [0, 1] must have the source's height and width (use :func:`fit_exemplar` and
    :func:`retouch.imageio.resize_image`); one map per exemplar, NaN or out-of-range maps refused.
    """
    from retouch.imageio import validate_map

    exemplars, maps = list(exemplars or ()), list(maps or ())
    if not exemplars:
        raise RetouchError("exemplar editing needs at least one exemplar with its edit map")
    if len(exemplars) != len(maps):
        raise RetouchError(f"got {len(exemplars)} exemplars but {len(maps)} edit maps; give one map per exemplar")
    batch, _, height, width = source.shape
    checked_exemplars, checked_maps = [], []
    for k, (exemplar, edit_map) in enumerate(zip(exemplars, maps), start=1):
        exemplar = torch.as_tensor(exemplar)
        exemplar = exemplar[None] if exemplar.dim() == 3 else exemplar
        if exemplar.dim() != 4 or exemplar.shape[1] != 3 or exemplar.shape[0] not in (1, batch):
            raise RetouchError(f"exemplar {k} must be (3, H, W) or ({batch}, 3, H, W); got {tuple(exemplar.shape)}")
        if exemplar.shape[-2:] != (height, width):
            raise RetouchError(f"exemplar {k} is {exemplar.shape[-1]}x{exemplar.shape[-2]} but the source is "
                               f"{width}x{height}; fit it first (fit_exemplar)")
        edit_map = torch.as_tensor(edit_map)
        shape = tuple(edit_map.shape)
        if edit_map.dim() in (2, 3):
            edit_map = edit_map.reshape(-1, 1, *edit_map.shape[-2:])  # (H, W) / (1|B, H, W) → (1|B, 1, H, W)
        if edit_map.dim() != 4 or edit_map.shape[1] != 1 or edit_map.shape[0] not in (1, batch):
            raise RetouchError(f"edit map {k} must be (H, W), (1, H, W) or ({batch}, 1, H, W); got {shape}")
        if edit_map.shape[-2:] != (height, width):
            raise RetouchError(f"edit map {k} is {edit_map.shape[-1]}x{edit_map.shape[-2]} but the source is "
                               f"{width}x{height}; resize it first")
        rows = [torch.from_numpy(validate_map(row, name=f"edit map {k}")) for row in edit_map[:, 0]]
        checked_maps.append(torch.stack(rows)[:, None].to(source.device))
        checked_exemplars.append(exemplar.to(source.device, source.dtype))
    return checked_exemplars, checked_maps


def text_denoiser(backbone, config: ExemplarConfig, batch: int):
    """The backbone's denoiser with the config's prompt and classifier-free guidance."""
    cond = backbone.encode_text([config.prompt] * batch)
    if config.prompt == config.negative_prompt:
        # Identical branches make CFG return ε(c) exactly (the default, p = ""): skip the second pass.
        return guided_denoiser(backbone.denoise, cond, cond, 1.0)
    return guided_denoiser(backbone.denoise, cond, backbone.encode_text([config.negative_prompt] * batch),
                           config.guidance_scale)


def draw_noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """ε drawn on the CPU from ``generator`` (device-independent results, as SDEdit draws it)."""
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


def encode_exemplar_inputs(backbone, source, exemplars, maps):
    """(source latents, exemplar latents, latent-size maps m_d) for one pass."""
    source_latents = backbone.encode_images(source)
    exemplar_latents = [backbone.encode_images(e) for e in exemplars]  # one at a time: lower peak memory
    latent_maps = [downsample_map(m.to(source_latents.dtype), source_latents.shape[-2:]) for m in maps]
    return source_latents, exemplar_latents, latent_maps
