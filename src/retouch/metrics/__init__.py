"""Image-editing metrics on any backbone.

- :mod:`~retouch.metrics.pixel`: L1, PSNR, SSIM (masked too), background preservation, optional LPIPS.
- :mod:`~retouch.metrics.distribution`: KID and FID on features from any :class:`FeatureExtractor`.
- :mod:`~retouch.metrics.semantic`: CLIP score, CLIP-Acc, CLIP-I on any :class:`ImageTextJudge`.
- :mod:`~retouch.metrics.structure`: Splice's self-similarity structure distance on any
  :class:`SpatialFeatureExtractor`.

Images are ``(B, 3, H, W)`` floats in [0, 1]; per-image metrics return ``(B,)`` tensors, distribution
metrics return Python floats.
"""

from retouch.metrics.distribution import FeatureExtractor, extract_features, fid, frechet_distance, kid, mmd2_unbiased
from retouch.metrics.pixel import background_preservation, l1, load_lpips, mse, psnr, ssim, ssim_map
from retouch.metrics.semantic import (
    ImageTextJudge,
    TransformersCLIPJudge,
    clip_accuracy,
    clip_image_similarity,
    clip_score,
    crop_to_mask,
)
from retouch.metrics.structure import (
    PixelPatchFeatures,
    SpatialFeatureExtractor,
    TransformersViTSpatial,
    self_similarity,
    structure_distance,
)

__all__ = [
    "FeatureExtractor", "ImageTextJudge", "PixelPatchFeatures", "SpatialFeatureExtractor",
    "TransformersCLIPJudge", "TransformersViTSpatial", "background_preservation", "clip_accuracy",
    "clip_image_similarity", "clip_score", "crop_to_mask", "extract_features", "fid", "frechet_distance",
    "kid", "l1", "load_lpips", "mmd2_unbiased", "mse", "psnr", "self_similarity", "ssim", "ssim_map",
    "structure_distance",
]
