"""Structure distance (Tumanyan et al. 2022, "Splicing ViT features"), on pluggable spatial features.

Structure is the self-similarity of an image's spatial tokens: S(x)_ij = cos(t_i(x), t_j(x)), an
``N×N`` matrix that keeps the layout (which parts resemble which) and drops the appearance. Splice
uses the keys of DINO-ViT's last layer; pix2pix-zero reports the resulting "Structure Dist".

Normalisation: Splice's Eq. 2 writes ‖S(x) − S(y)‖_F, while its code (``F.mse_loss`` of the two
matrices), whose numbers pix2pix-zero reports, takes the mean over entries of the squared
difference. :func:`structure_distance` returns that mean, ‖S(x) − S(y)‖_F² / N².
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from retouch.errors import RetouchError
from retouch.metrics.pixel import _as_batch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class SpatialFeatureExtractor(Protocol):
    """Any callable mapping images ``(B, 3, H, W)`` in [0, 1] to spatial tokens ``(B, N, D)``."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def self_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """Cosine self-similarity ``(B, N, N)`` of tokens ``(B, N, D)``; an all-zero token has similarity 0."""
    unit = F.normalize(tokens.float(), dim=-1)
    return unit @ unit.transpose(1, 2)


def structure_distance(extractor: SpatialFeatureExtractor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image structure distance ``(B,)``: mean over the N² entries of (S(a) − S(b))²."""
    s_a = self_similarity(extractor(_as_batch(a)))
    s_b = self_similarity(extractor(_as_batch(b)))
    return (s_a - s_b).square().flatten(1).mean(1)


class PixelPatchFeatures:
    """Non-learned stand-in: each non-overlapping ``patch``×``patch`` patch, flattened (3·p² values)
    and centred by subtracting its own mean, is a token.

    Centring makes S invariant to a global brightness offset (and cosine to a global contrast
    scale), so the distance reacts to where things are, not how bright they are. It knows nothing of
    semantics — two different textures with the same layout look alike — so it is a weak stand-in
    for tests and the mini world; real evaluations plug DINO keys (:class:`TransformersViTSpatial`).
    Rows/columns beyond a multiple of ``patch`` are dropped.
    """

    def __init__(self, patch: int = 8):
        self.patch = patch

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        tokens = F.unfold(_as_batch(images).float(), kernel_size=self.patch, stride=self.patch)
        tokens = tokens.transpose(1, 2)  # (B, N, 3·p²)
        return tokens - tokens.mean(-1, keepdim=True)


def _normalisation(path: Path) -> tuple[list[float], list[float]]:
    """Image mean/std of a model folder's image processor, ImageNet's if it has none.

    Stand-alone image processors save ``preprocessor_config.json``; transformers ≥ 5 processors save
    them nested under ``image_processor`` in ``processor_config.json``.
    """
    for name, section in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        file = path / name
        if file.is_file():
            settings = json.loads(file.read_text())
            settings = settings.get(section, {}) if section else settings
            if "image_mean" in settings and "image_std" in settings:
                return list(settings["image_mean"]), list(settings["image_std"])
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


class TransformersViTSpatial:
    """Spatial tokens of a LOCAL transformers ViT / DINO / DINOv2 / CLIP-vision folder.

    ``facet="key"`` (Splice's choice) takes the key projection of the last attention layer, all
    heads concatenated; ``facet="token"`` takes ``last_hidden_state``. Prefix tokens (CLS and any
    registers) are dropped, so N = (image_size / patch_size)². Images are resized to the model's
    ``image_size`` square (bilinear, antialiased) and normalised with the folder's image-processor
    mean/std (ImageNet's if it has none). Splice instead resizes the short
    side to 224 and keeps the CLS row in S, which shifts numbers slightly. Loads with
    ``local_files_only=True`` and safetensors only; runs without gradients.
    """

    FACETS = ("key", "token")

    def __init__(self, model_path: str | Path, device: str | torch.device = "cpu", facet: str = "key"):
        from transformers import AutoConfig, AutoModel, CLIPVisionModel

        if facet not in self.FACETS:
            raise RetouchError(f"facet must be one of {', '.join(self.FACETS)}, got '{facet}'")
        path = Path(model_path)
        if not path.is_dir():
            raise RetouchError(
                f"ViT feature model '{path}' not found: give a local transformers ViT/DINO folder "
                "(config.json and model.safetensors)"
            )
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            model_cls = CLIPVisionModel if config.model_type in ("clip", "clip_vision_model") else AutoModel
            self.model = model_cls.from_pretrained(path, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError, TypeError) as err:
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RetouchError(f"cannot load ViT feature model from '{path}': {text}") from err
        self.device = torch.device(device)
        self.model.to(self.device).eval().requires_grad_(False)
        self.facet = facet
        vision = getattr(self.model.config, "vision_config", self.model.config)
        self.image_size = int(vision.image_size)
        self.num_prefix_tokens = 1 + int(getattr(vision, "num_register_tokens", 0) or 0)
        mean, std = _normalisation(path)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self._key_layer = self._last_key_projection() if facet == "key" else None

    def _last_key_projection(self) -> torch.nn.Module:
        # ViT/DINO/DINOv2 name it "...attention.key", CLIP "...self_attn.k_proj"; named_modules is in
        # depth order, so the last match is the last layer's.
        keys = [m for name, m in self.model.named_modules() if name.endswith((".key", ".k_proj"))]
        if not keys:
            name = type(self.model).__name__
            raise RetouchError(f"cannot find the attention key projection in {name}; use facet='token'")
        return keys[-1]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = _as_batch(images).float().to(self.device)
        images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                               antialias=True, align_corners=False)
        pixels = (images - self.mean) / self.std
        if self._key_layer is None:
            tokens = self.model(pixel_values=pixels).last_hidden_state
        else:
            captured = []
            handle = self._key_layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
            try:
                self.model(pixel_values=pixels)
            finally:
                handle.remove()
            tokens = captured[-1]  # (B, T, heads·head_dim)
        return tokens[:, self.num_prefix_tokens:]
