"""CLIP-style metrics on any image/text judge: CLIP score, CLIP-Acc, CLIP-I.

A judge is anything with ``encode_images(images) -> (B, D)`` and ``encode_texts(texts) -> (N, D)``
(:class:`ImageTextJudge`); the metrics L2-normalise the embeddings themselves. On the mini world the
judge is the shipped CLIP-style model; with real checkpoints it is :class:`TransformersCLIPJudge`.
Values come from the judge's embeddings, so they compare only across runs with the same judge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

from retouch.errors import RetouchError, first_line
from retouch.metrics.pixel import _as_batch, _as_mask

CLIP_SCORE_WEIGHT = 100.0  # torchmetrics' CLIPScore scale; Hessel et al. 2021 use w = 2.5
CROP_FILL = 0.5  # grey used to pad a region crop to a square; neutral after CLIP normalisation


@runtime_checkable
class ImageTextJudge(Protocol):
    """Joint image/text embedder. Images are ``(B, 3, H, W)`` in [0, 1].

    A judge may also have an ``image_size`` attribute (its input side); region crops are resized
    to it (see :func:`clip_image_similarity`).
    """

    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode_texts(self, texts: list[str]) -> torch.Tensor: ...


def _per_image(texts: str | Sequence[str], n: int) -> list[str]:
    return [texts] * n if isinstance(texts, str) else list(texts)


def _image_embeddings(judge: ImageTextJudge, images: torch.Tensor) -> torch.Tensor:
    return F.normalize(judge.encode_images(_as_batch(images)).float(), dim=-1)


def _text_embeddings(judge: ImageTextJudge, texts: list[str]) -> torch.Tensor:
    return F.normalize(judge.encode_texts(texts).float(), dim=-1)


def clip_score(judge: ImageTextJudge, images: torch.Tensor, texts: str | Sequence[str]) -> torch.Tensor:
    """CLIP score per image: 100 · max(cos(E_I(image), E_T(text)), 0), one text per image (or one for all).

    The scale is torchmetrics' (w = 100), the one editing papers report; Hessel et al. 2021 define
    CLIPScore with w = 2.5 — multiply by 0.025 to compare with theirs.
    """
    image = _image_embeddings(judge, images)
    text = _text_embeddings(judge, _per_image(texts, image.shape[0])).to(image.device)
    return CLIP_SCORE_WEIGHT * (image * text).sum(-1).clamp(min=0)


def clip_accuracy(judge: ImageTextJudge, edited: torch.Tensor, source_texts: str | Sequence[str],
                  target_texts: str | Sequence[str]) -> torch.Tensor:
    """CLIP-Acc of pix2pix-zero §4.1: 1.0 where the edited image is closer to its target text than to
    its source text (cosine, strictly greater), else 0.0. The mean over images is the reported %/100.
    """
    image = _image_embeddings(judge, edited)
    n = image.shape[0]
    source = _text_embeddings(judge, _per_image(source_texts, n)).to(image.device)
    target = _text_embeddings(judge, _per_image(target_texts, n)).to(image.device)
    return ((image * target).sum(-1) > (image * source).sum(-1)).to(image.dtype)


def crop_to_mask(images: torch.Tensor, mask: torch.Tensor, size: int) -> torch.Tensor:
    """Each image cropped to the bounding box of its ``mask > 0``, padded to a square with grey
    (centred), then resized to ``size``×``size`` (bilinear, antialiased): ``(B, 3, size, size)``.

    An empty mask keeps the whole image (padded to a square the same way).
    """
    images = _as_batch(images)
    masks = _as_mask(mask, images).expand(images.shape[0], -1, -1, -1)
    crops = []
    for image, m in zip(images, masks):
        ys, xs = torch.nonzero(m[0] > 0, as_tuple=True)
        if ys.numel():
            image = image[:, int(ys.min()):int(ys.max()) + 1, int(xs.min()):int(xs.max()) + 1]
        h, w = image.shape[-2:]
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        square = image.new_full((image.shape[0], side, side), CROP_FILL)
        square[:, top:top + h, left:left + w] = image
        crops.append(F.interpolate(square[None], size=(size, size), mode="bilinear", antialias=True,
                                   align_corners=False) if side != size else square[None])
    return torch.cat(crops)


def clip_image_similarity(judge: ImageTextJudge, images_a: torch.Tensor, images_b: torch.Tensor,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP-I: cosine of the image embeddings of ``images_a`` and ``images_b`` (raw cosine, in [−1, 1]).

    With ``mask`` (the edit region of ``images_a``), each ``images_a`` is first cut to that region by
    :func:`crop_to_mask` — PIXELS' "similarity between edited region and the exemplar" (§4); the
    crop side is ``judge.image_size`` if the judge has one, else the images' height. ``images_b``
    (the exemplars) are embedded whole.
    """
    images_a = _as_batch(images_a)
    if mask is not None:
        size = int(getattr(judge, "image_size", None) or images_a.shape[-2])
        images_a = crop_to_mask(images_a, mask, size)
    a = _image_embeddings(judge, images_a)
    b = _image_embeddings(judge, images_b).to(a.device)
    return (a * b).sum(-1)


class TransformersCLIPJudge:
    """A LOCAL transformers CLIP-style folder as an :class:`ImageTextJudge`.

    Any model ``AutoModel`` loads that has ``get_image_features``/``get_text_features`` — ``CLIPModel``
    (OpenAI CLIP, the real-checkpoint case), ``VisionTextDualEncoderModel`` (the mini world's judge),
    SigLIP — with the processor saved beside it.

    Loads with ``local_files_only=True`` and safetensors weights only; nothing is downloaded. Images
    go through the folder's own processor (resize shortest side, centre crop, normalise), so scores
    match what the checkpoint's authors would compute. Embeddings are computed without gradients.
    """

    def __init__(self, model_path: str | Path, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoProcessor

        path = Path(model_path)
        if not path.is_dir():
            raise RetouchError(
                f"CLIP judge '{path}' not found: give a local folder holding a transformers CLIP-style model and "
                "its processor (config.json, model.safetensors, preprocessor_config.json, tokenizer files)"
            )
        try:
            self.model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise RetouchError(f"cannot load CLIP judge from '{path}': {first_line(err)}") from err
        if not all(hasattr(self.model, name) for name in ("get_image_features", "get_text_features")):
            raise RetouchError(f"'{path}' holds a {type(self.model).__name__}, not a CLIP-style image/text model")
        self.device = torch.device(device)
        self.model.to(self.device).eval().requires_grad_(False)
        crop = getattr(self.processor.image_processor, "crop_size", None)
        self.image_size = int(crop["height"]) if crop else int(self.model.config.vision_config.image_size)

    @staticmethod
    def _features(output) -> torch.Tensor:
        # transformers ≥ 5 returns a model output whose pooler_output is the projected embedding.
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        arrays = [image.permute(1, 2, 0).float().cpu().numpy() for image in _as_batch(images)]
        pixels = self.processor(images=arrays, do_rescale=False, return_tensors="pt")["pixel_values"]
        return self._features(self.model.get_image_features(pixel_values=pixels.to(self.device)))

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.processor(text=list(texts), padding=True, truncation=True, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return self._features(self.model.get_text_features(**tokens))
