"""Global colour transfer of Reinhard, Ashikhmin, Gooch & Shirley (2001) in lαβ space.

Their §2: RGB → LMS (Eq. 1 matrix), log10, LMS → lαβ (Eq. 4/5 decorrelating transform); then each
lαβ channel of the source is shifted and scaled to the reference's mean and standard deviation
(Eq. 6), and the transform is inverted. The paper applies its matrix to RGB values as stored; we do
the same (no sRGB linearisation). Zeros are guarded with 1e-6 before the logarithm.
"""

from __future__ import annotations

import numpy as np

RGB_TO_LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
LMS_TO_RGB = np.linalg.inv(RGB_TO_LMS)
_LOG_LMS_TO_LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]], dtype=np.float64
)
_LAB_TO_LOG_LMS = np.linalg.inv(_LOG_LMS_TO_LAB)
_EPS = 1e-6


def rgb_to_lab(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] → lαβ (float64)."""
    lms = np.asarray(image, np.float64) @ RGB_TO_LMS.T
    return np.log10(np.maximum(lms, _EPS)) @ _LOG_LMS_TO_LAB.T


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """lαβ → RGB (unclipped float64)."""
    lms = 10.0 ** (np.asarray(lab, np.float64) @ _LAB_TO_LOG_LMS.T)
    return lms @ LMS_TO_RGB.T


def reinhard_color_transfer(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Give ``image`` the colour statistics of ``reference`` (any size); result clipped to [0, 1].

    Both must be RGB (H, W, 3); anything else raises :class:`~retouch.errors.RetouchError`.
    """
    for name, array in (("image", image), ("reference", reference)):
        shape = np.shape(array)
        # A grey (H, 3) image would otherwise be read as H pixels of RGB and silently mangled.
        if len(shape) != 3 or shape[2] != 3 or 0 in shape:
            from retouch.errors import RetouchError

            raise RetouchError(f"colour transfer needs RGB images (H, W, 3); the {name} has shape {shape}")
    source, target = rgb_to_lab(image), rgb_to_lab(reference)
    src_mean, src_std = source.reshape(-1, 3).mean(0), source.reshape(-1, 3).std(0)
    ref_mean, ref_std = target.reshape(-1, 3).mean(0), target.reshape(-1, 3).std(0)
    scale = np.where(src_std > 1e-8, ref_std / np.maximum(src_std, 1e-8), 1.0)
    matched = (source - src_mean) * scale + ref_mean
    return np.clip(lab_to_rgb(matched), 0.0, 1.0).astype(np.float32)
