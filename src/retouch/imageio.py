"""Reading, writing and shaping images: the one edge every command passes through.

In memory an image is a float32 numpy array (H, W, 3), RGB in [0, 1]; an edit map or mask is a float32
array (H, W) in [0, 1]. The model side sees (B, 3, H, W) tensors in [-1, 1]; :func:`to_tensor` and
:func:`from_tensor` are the only place that conversion happens.

Everything wrong with a user's file (missing, empty, truncated, not an image, too large, unwritable
destination, output that would overwrite an input) raises :class:`~retouch.errors.RetouchError` with
one line naming the file and what to do, never a Pillow or OS traceback.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import tempfile
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError, features

from retouch.errors import RetouchError

PathLike = Union[str, "os.PathLike[str]"]

# 64 megapixels (8192 × 8192) as float32 RGB is 768 MiB; beyond that a typo'd or hostile header, not a
# photo, is the likely cause. Lower than Pillow's own warning threshold (~89.5 MP) on purpose.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
FIT_POLICIES = ("resize", "crop", "pad")
WHITE = (1.0, 1.0, 1.0)

# Lossy outputs are results people look at closely; Pillow's default (75) shows blocking in gradients.
_LOSSY_QUALITY = 95
_READABLE_HINT = "PNG, JPEG, WebP or another format Pillow can open (BMP, TIFF, GIF, ...)"
# Pillow raises all of these for damaged files depending on the plugin and where the damage is.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)
# Rec. 601 luma, the weights Pillow's convert("L") uses, so grey maps load identically either way.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# The encoders' own limits on a side: WebP stores sides in 14 bits, JPEG in 16 (libjpeg stops at 65500).
# Pillow only finds out mid-encode, with a ValueError (WebP) or a vague "broken data stream" (JPEG).
_MAX_SAVE_SIDE = {"JPEG": 65500, "WEBP": 16383}


# ---------------------------------------------------------------------------------------------------
# Loading


def load_image(
    path: PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    background: Sequence[float] = WHITE,
) -> np.ndarray:
    """Read an image file as float32 RGB (H, W, 3) in [0, 1], upright per its EXIF orientation.

    PNG, JPEG and WebP are the supported formats; anything else Pillow opens (BMP, TIFF, GIF, ...) is
    read too, first frame only for animations. Mode policy: grey is replicated to RGB; transparency
    (RGBA, LA, palette or colour-key) is composited over ``background`` (white by default, what image
    viewers show); 16-bit and 32-bit integer grey is scaled by 1/65535 without passing through 8 bits;
    float grey is clipped to [0, 1]; CMYK and YCbCr are converted by Pillow. Note Pillow itself reads
    16-bit-per-channel *colour* PNGs as 8-bit RGB.

    Images with more than ``max_pixels`` pixels, or a side longer than ``max_side``, are refused from
    their header, before decoding.
    """
    background = _check_background(background)
    with _open_decoded(path, max_pixels, max_side) as img:
        rgb = _to_float_rgb(img, background, name=_quoted(path))
    return rgb


def load_map(
    path: PathLike,
    *,
    size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    background: float = 0.0,
) -> np.ndarray:
    """Read an edit map or mask as float32 (H, W) in [0, 1]: the image's luminance.

    Any image :func:`load_image` reads works; 16-bit grey keeps its precision. Transparent pixels
    count as ``background`` (0: a transparent area of a mask means "do not edit"). ``size`` is a
    (width, height) to resize to, bilinearly: maps are soft weights, and unlike Lanczos bilinear never
    overshoots [0, 1] or rings around a mask's edge.
    """
    if not 0.0 <= float(background) <= 1.0:
        raise RetouchError(f"map background must lie in [0, 1]; got {background}")
    with _open_decoded(path, max_pixels, max_side) as img:
        rgb = _to_float_rgb(img, (float(background),) * 3, name=_quoted(path))
    return map_from_array(rgb, size=size, name=f"edit map {_quoted(path)}")


def map_from_array(image: np.ndarray, *, size: tuple[int, int] | None = None, name: str = "edit map") -> np.ndarray:
    """:func:`load_map` without the file: float32 (H, W) in [0, 1], the luminance of an RGB image (H, W, 3) or a
    grey map (H, W) in [0, 1], resized bilinearly to ``size`` = (width, height) when given."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = _replicate(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise RetouchError(f"{name} must be (H, W) or (H, W, 3); got an array of shape {image.shape}")
    luminance = np.clip(image @ _LUMA_WEIGHTS, 0.0, 1.0)
    if size is not None:
        width, height = _check_size(size)
        luminance = np.clip(_resize(luminance, (width, height), Image.Resampling.BILINEAR), 0.0, 1.0)
    return validate_map(luminance, name=name)


def validate_map(array, *, name: str = "edit map", tolerance: float = 1e-3) -> np.ndarray:
    """Check an in-memory edit map and return it as float32 (H, W) in [0, 1].

    Refused: a shape other than (H, W), an empty map, non-numeric data, NaN or infinity, and values
    outside [0, 1] by more than ``tolerance`` (a 0-255 map passed by mistake, say). Values within the
    tolerance, e.g. from interpolation, are clipped.
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != 2:
        raise RetouchError(f"{name} must be a 2-D (height, width) array; got shape {tuple(array.shape)}")
    if array.size == 0:
        raise RetouchError(f"{name} is empty (shape {tuple(array.shape)}); it needs at least one pixel")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise RetouchError(f"{name} must hold numbers; got dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise RetouchError(f"{name} contains NaN or infinite values; fix whatever produced it")
    low, high = float(array.min()), float(array.max())
    if low < -tolerance or high > 1.0 + tolerance:
        hint = "; divide 0-255 values by 255" if high > 1.0 + tolerance and high <= 255 else ""
        raise RetouchError(
            f"{name} has values in [{low:.4g}, {high:.4g}]; they must lie in [0, 1] "
            f"(tolerance {tolerance:g}){hint}"
        )
    return np.ascontiguousarray(np.clip(array, 0.0, 1.0))


def check_image_size(width: int, height: int, *, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                     max_side: int | None = None) -> None:
    """Refuse a ``width`` × ``height`` image over the pixel or side limit, or without pixels, in one line.

    :func:`load_image` applies it to a file's header; callers holding pixels from elsewhere (the web
    app's canvas) apply it to their arrays, so both refuse the same sizes with the same words.
    """
    if width * height > max_pixels:
        raise RetouchError(f"cannot read image {name}: {width}x{height} is {width * height} pixels, more than the "
                           f"limit of {max_pixels}; downscale it first or raise max_pixels")
    if max_side is not None and max(width, height) > max_side:
        raise RetouchError(f"cannot read image {name}: {width}x{height} has a side longer than the limit of "
                           f"{max_side} pixels; downscale it first")
    if width == 0 or height == 0:
        raise RetouchError(f"cannot read image {name}: it has no pixels ({width}x{height}); re-export it")


def _open_decoded(path: PathLike, max_pixels: int, max_side: int | None = None) -> Image.Image:
    """Open ``path``, fully decoded and upright, or raise a one-line RetouchError.

    Decoding (``img.load()``) happens here, inside the try, so a truncated file fails at load time
    rather than later in whatever first touches the pixels.
    """
    name = _quoted(path)

    def refuse(reason: str) -> RetouchError:
        return RetouchError(f"cannot read image {name}: {reason}")

    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise refuse("no such file; check the path") from None
    except OSError as error:
        raise refuse(f"{error.strerror or error}; check the path and its permissions") from None
    if stat.S_ISDIR(info.st_mode):
        raise refuse("it is a directory, not an image file; name a file inside it")
    if info.st_size == 0:
        raise refuse("file is empty (0 bytes); re-export or re-download it")

    with warnings.catch_warnings():
        # Our max_pixels is the policy. Pillow's warning would only repeat it (or, above Pillow's
        # threshold, second-guess a caller who raised max_pixels on purpose); its hard error at twice
        # that threshold still applies and is converted below.
        action = "error" if max_pixels <= Image.MAX_IMAGE_PIXELS else "ignore"
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise refuse(
                f"its header claims more pixels than Pillow's decompression-bomb limit "
                f"({Image.MAX_IMAGE_PIXELS}); refusing to decode it"
            ) from None
        except UnidentifiedImageError:
            raise refuse(f"not a recognised image format, or the file is corrupt; use {_READABLE_HINT}") from None
        except PermissionError:
            raise refuse("permission denied; check the file's permissions") from None
        except _DECODE_ERRORS as error:
            raise refuse(f"file is truncated or corrupt ({_reason(error)}); re-export it") from None
        with img:
            check_image_size(*img.size, name=name, max_pixels=max_pixels, max_side=max_side)
            try:
                img.load()
                # Always a new image, so it outlives the file handle closed by ``with img``.
                return ImageOps.exif_transpose(img)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise refuse("it decodes to more pixels than allowed; refusing to decode it") from None
            except _DECODE_ERRORS as error:
                raise refuse(f"file is truncated or corrupt ({_reason(error)}); re-export it") from None


def _to_float_rgb(img: Image.Image, background: tuple[float, float, float], *, name: str) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I"):
        # I;16 / I;16B / I;16L (16-bit PNG, TIFF) and I (32-bit int). Scaling straight to float keeps
        # all 16 bits; a tRNS colour key on 16-bit grey is rare enough that we ignore it.
        grey = np.clip(np.asarray(img).astype(np.float32) / 65535.0, 0.0, 1.0)
        return _replicate(grey)
    if mode == "F":
        grey = np.asarray(img, dtype=np.float32)
        if not np.isfinite(grey).all():
            raise RetouchError(f"cannot read image {name}: it contains NaN or infinite values; re-export it")
        return _replicate(np.clip(grey, 0.0, 1.0))
    if img.has_transparency_data:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        # Straight (non-premultiplied) alpha, as PNG and WebP store it.
        composited = rgba[..., :3] * alpha + np.asarray(background, dtype=np.float32) * (1.0 - alpha)
        return np.ascontiguousarray(np.clip(composited, 0.0, 1.0), dtype=np.float32)
    if mode in ("1", "L"):
        return _replicate(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)
    if mode != "RGB":
        try:
            img = img.convert("RGB")
        except ValueError:
            raise RetouchError(
                f"cannot read image {name}: colour mode {mode!r} is not supported; save it as RGB"
            ) from None
    return np.ascontiguousarray(np.asarray(img, dtype=np.float32) / 255.0)


def _replicate(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1), dtype=np.float32)


def _check_background(background: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(v) for v in background)
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
        raise RetouchError(f"background must be three values (R, G, B) in [0, 1]; got {background}")
    return values  # type: ignore[return-value]


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise RetouchError(f"size must be (width, height); got {size!r}") from None
    if width < 1 or height < 1:
        raise RetouchError(f"size must be positive (width, height); got {size!r}")
    return width, height


def _quoted(path: PathLike) -> str:
    return f"'{os.fspath(path)}'"


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__


# ---------------------------------------------------------------------------------------------------
# Resizing and fitting to a model's multiple


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an image (H, W, 3) or map (H, W) to ``size`` = (width, height) with Lanczos, clipped to [0, 1].

    Float (or bool) values only: integer arrays raise :class:`RetouchError`, as clipping 0-255 to [0, 1]
    would silently turn them white.
    """
    width, height = _check_size(size)
    image = np.asarray(image)
    if not (np.issubdtype(image.dtype, np.floating) or image.dtype == np.bool_):
        raise RetouchError(f"cannot resize an image of dtype {image.dtype}: expected float values in [0, 1]; "
                           f"divide 8-bit values by 255")
    return np.clip(_resize(image, (width, height), Image.Resampling.LANCZOS), 0.0, 1.0)


def _resize(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    # Each channel goes through Pillow as a 32-bit float ("F") image, so no 8-bit rounding.
    if array.shape[1::-1] == tuple(size):
        return np.array(array, dtype=np.float32)
    if array.ndim == 2:
        channel = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))
        return np.asarray(channel.resize(size, resample), dtype=np.float32).copy()
    channels = [_resize(array[..., c], size, resample) for c in range(array.shape[-1])]
    return np.stack(channels, axis=-1)


def fit_to_multiple(image: np.ndarray, multiple: int, policy: str = "resize") -> np.ndarray:
    """Make height and width multiples of ``multiple`` (8 for an SD VAE, 64 for U-Net-friendly sizes).

    Policies: ``"resize"`` Lanczos-resizes each side to the nearest multiple (halves round up, at least
    one multiple); ``"crop"`` centre-crops down to a multiple, losing up to ``multiple - 1`` pixels per
    axis; ``"pad"`` reflect-pads the bottom and right up to a multiple, so the model also sees (and may
    edit) mirrored content. ``"resize"`` is the default because it is the only one that keeps every
    input pixel's content and invents none: the aspect ratio moves by under half a block, and
    :func:`restore_size` (which undoes each policy) brings the output back to the exact input size.
    """
    _check_multiple(multiple)
    policy = _check_policy(policy)
    height, width = image.shape[:2]
    if policy == "resize":
        target_h, target_w = _nearest_multiple(height, multiple), _nearest_multiple(width, multiple)
        return resize_image(image, (target_w, target_h))
    if policy == "crop":
        target_h, target_w = (height // multiple) * multiple, (width // multiple) * multiple
        if target_h == 0 or target_w == 0:
            raise RetouchError(
                f"image is {width}x{height}, smaller than one {multiple}-pixel block; "
                f"use policy 'resize' or 'pad' instead of 'crop'"
            )
        top, left = (height - target_h) // 2, (width - target_w) // 2
        return np.array(image[top : top + target_h, left : left + target_w], dtype=np.float32)
    pad_h, pad_w = -height % multiple, -width % multiple
    return _pad_bottom_right(image, pad_h, pad_w, mode="reflect")


def restore_size(
    image: np.ndarray,
    original_hw: tuple[int, int],
    policy: str = "resize",
    *,
    original: np.ndarray | None = None,
) -> np.ndarray:
    """Undo :func:`fit_to_multiple` so an output comes back at the input's (height, width).

    ``"resize"`` resizes back with Lanczos and ``"pad"`` crops the padding off. ``"crop"`` cannot
    recover the cut border: with ``original`` (the unfitted input) the result is pasted into a copy of
    it; without, the border is filled by repeating the edge pixels.
    """
    policy = _check_policy(policy)
    height, width = (int(v) for v in original_hw)
    if policy == "resize":
        return resize_image(image, (width, height))
    if policy == "pad":
        return np.array(image[:height, :width], dtype=np.float32)
    fitted_h, fitted_w = image.shape[:2]
    top, left = (height - fitted_h) // 2, (width - fitted_w) // 2
    if original is not None:
        if tuple(original.shape[:2]) != (height, width) or original.ndim != image.ndim:
            raise ValueError(
                f"original has shape {original.shape}, expected {(height, width) + image.shape[2:]}"
            )
        restored = np.array(original, dtype=np.float32)
        restored[top : top + fitted_h, left : left + fitted_w] = image
        return restored
    widths = [(top, height - fitted_h - top), (left, width - fitted_w - left)]
    widths += [(0, 0)] * (image.ndim - 2)
    return np.pad(image, widths, mode="edge").astype(np.float32)


def _nearest_multiple(length: int, multiple: int) -> int:
    # floor(length / multiple + 1/2) in integers, so a half rounds up and odd multiples work too.
    return max(multiple, (2 * length + multiple) // (2 * multiple) * multiple)


def _pad_bottom_right(image: np.ndarray, pad_h: int, pad_w: int, *, mode: str) -> np.ndarray:
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (image.ndim - 2)
    # numpy reflects repeatedly when the pad exceeds the side; a 1-pixel side has nothing to reflect.
    if mode == "reflect" and min(image.shape[:2]) < 2:
        mode = "edge"
    return np.pad(image, widths, mode=mode).astype(np.float32)


def _check_multiple(multiple: int) -> None:
    if not isinstance(multiple, (int, np.integer)) or isinstance(multiple, bool) or multiple < 1:
        raise ValueError(f"multiple must be a positive integer; got {multiple!r}")


def _check_policy(policy: str) -> str:
    if policy not in FIT_POLICIES:
        raise RetouchError(f"unknown size policy {policy!r}; choose one of {', '.join(FIT_POLICIES)}")
    return policy


# ---------------------------------------------------------------------------------------------------
# Saving


def check_output_path(
    path: PathLike,
    *,
    inputs: Sequence[PathLike] = (),
    overwrite: bool = True,
    make_parents: bool = False,
) -> str:
    """Refuse an output path :func:`save_image` would refuse, before any work is done; returns its format.

    Commands call this first so that a long edit never fails at the very end on a typo'd extension,
    a missing folder or an output that is one of the inputs.
    """
    path = Path(path)
    name = _quoted(path)
    image_format = SAVE_FORMATS.get(path.suffix.lower())
    if image_format is None:
        supported = ", ".join(SAVE_FORMATS)
        raise RetouchError(f"cannot save {name}: unknown extension {path.suffix or '(none)'!r}; use {supported}")
    if image_format == "WEBP" and not features.check("webp"):
        raise RetouchError(f"cannot save {name}: this Pillow was built without WebP; save as .png")
    folder = path.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != folder and not make_parents:
        raise RetouchError(
            f"cannot save {name}: folder '{folder}' does not exist; create it first (or pass make_parents=True)"
        )
    if not existing.is_dir():
        raise RetouchError(f"cannot save {name}: '{existing}' is not a folder; choose another output path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RetouchError(f"cannot save {name}: folder '{existing}' is not writable; choose another output path")
    if path.is_dir():
        raise RetouchError(f"cannot save {name}: it is a directory; name a file inside it")
    for source in inputs:
        if _same_file(path, Path(source)):
            raise RetouchError(f"refusing to overwrite input {_quoted(source)}; choose another output path")
    if not overwrite and os.path.lexists(path):
        raise RetouchError(f"refusing to overwrite existing {name}; choose another name or allow overwriting")
    return image_format


def check_outputs(outputs: Sequence[PathLike], inputs: Sequence[PathLike] = ()) -> None:
    """Refuse a command's unusable outputs before any work: a bad extension, an input, two outputs that are
    one path, an unwritable folder (parents are made when saving)."""
    if len(set(map(str, outputs))) != len(outputs):
        raise RetouchError("the output and comparison paths must differ")
    for path in outputs:
        check_output_path(path, inputs=inputs, make_parents=True)


def save_with_comparison(output: PathLike, result: np.ndarray, compare: PathLike | None, source: np.ndarray,
                         inputs: Sequence[PathLike] = ()) -> None:
    """Write ``result`` to ``output`` and, when ``compare`` is given, an input | output strip there."""
    save_image(result, output, inputs=inputs, make_parents=True)
    if compare is not None:
        save_image(side_by_side([source, result], labels=["input", "output"]), compare, inputs=inputs,
                   make_parents=True)


def save_image(
    image: np.ndarray,
    path: PathLike,
    *,
    inputs: Sequence[PathLike] = (),
    overwrite: bool = True,
    make_parents: bool = False,
) -> Path:
    """Write a float image (H, W, 3) or map (H, W) in [0, 1] atomically; the format follows the extension.

    Supported: .png (lossless), .jpg/.jpeg and .webp (quality 95). Values are clipped to [0, 1] and
    rounded to 8 bits; NaN or infinity is refused. The file appears complete or not at all: it is
    written to a temporary file beside the target, fsynced, then renamed over it. Refuses to overwrite
    any of ``inputs`` (also through another path or a symlink), an existing file when
    ``overwrite=False``, and a missing parent folder unless ``make_parents=True``.
    """
    path = Path(path)
    name = _quoted(path)
    image_format = check_output_path(path, inputs=inputs, overwrite=overwrite, make_parents=make_parents)
    pixels = _to_uint8(image, name)
    limit = _MAX_SAVE_SIDE.get(image_format)
    if limit is not None and max(pixels.shape[:2]) > limit:
        raise RetouchError(f"cannot save {name}: {pixels.shape[1]}x{pixels.shape[0]} has a side longer than the "
                           f"{image_format} limit of {limit} pixels; save as .png or downscale it")
    folder = path.parent
    if not folder.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RetouchError(f"cannot save {name}: cannot create folder '{folder}' ({_reason(error)})") from None

    _atomic_write(path, lambda handle: _encode(pixels, handle, image_format), name)
    return path


def png_bytes(image: np.ndarray, name: str = "a PNG record") -> bytes:
    """A float image (H, W, 3) or map (H, W) in [0, 1] as 8-bit PNG bytes (for archives such as dataset shards)."""
    buffer = io.BytesIO()
    _encode(_to_uint8(image, name), buffer, "PNG")
    return buffer.getvalue()


def as_8bit(image: np.ndarray, name: str = "an image") -> np.ndarray:
    """A float image (H, W, 3) or map (H, W) as saving it to PNG and reading it back gives it, without the file:
    clipped to [0, 1] and rounded to 8 bits, float32."""
    return _to_uint8(image, name).astype(np.float32) / 255.0


def image_from_png_bytes(data: bytes, name: str = "a PNG record") -> np.ndarray:
    """Inverse of :func:`png_bytes`: float32 (H, W, 3), or (H, W) for a single-channel PNG, in [0, 1].

    Damaged or oversized records (more than :data:`DEFAULT_MAX_PIXELS`) raise :class:`RetouchError`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_image_size is the policy
            with Image.open(io.BytesIO(data)) as img:
                check_image_size(*img.size, name=name)
                pixels = np.asarray(img.convert("L" if img.mode in ("L", "1") else "RGB"))
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as error:
        raise RetouchError(f"cannot read {name}: not a valid PNG ({_reason(error)})") from None
    return pixels.astype(np.float32) / 255.0


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write a text file atomically (temporary file beside it, fsync, rename), like :func:`save_image`."""
    path = Path(path)
    _atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), _quoted(path))
    return path


def _atomic_write(path: Path, write: Callable, name: str) -> None:
    """Run ``write(handle)`` on a temporary file beside ``path`` and rename it over ``path``."""
    folder = path.parent
    mode = stat.S_IMODE(os.stat(path).st_mode) if path.exists() else 0o666 & ~_current_umask()
    temporary = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=folder, prefix=f".{path.name}.", suffix=path.suffix, delete=False
        ) as handle:
            temporary = handle.name
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # NamedTemporaryFile creates 0600; give the output the mode a plain open() would have.
        os.chmod(temporary, mode)
        os.replace(temporary, path)
        temporary = None
    except OSError as error:
        reason = error.strerror or _reason(error)
        raise RetouchError(f"cannot save {name}: {reason}; check the folder is writable") from None
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass
    _fsync_folder(folder)


def _encode(pixels: np.ndarray, handle, image_format: str) -> None:
    options = {"quality": _LOSSY_QUALITY} if image_format in ("JPEG", "WEBP") else {}
    if image_format == "JPEG":
        options["subsampling"] = 0  # 4:4:4 keeps thin coloured edits from bleeding
    Image.fromarray(pixels).save(handle, format=image_format, **options)


def _to_uint8(image: np.ndarray, name: str) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        raise RetouchError(f"cannot save {name}: got a torch tensor; convert it with from_tensor() first")
    image = np.asarray(image)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)) or image.size == 0:
        raise RetouchError(f"cannot save {name}: expected an (H, W, 3) or (H, W) array, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise RetouchError(
            f"cannot save {name}: expected float values in [0, 1], got dtype {image.dtype}; "
            f"divide 8-bit values by 255"
        )
    if np.isnan(image).any():
        raise RetouchError(f"refusing to save an image containing NaN to {name}; fix whatever produced it")
    if np.isinf(image).any():
        raise RetouchError(f"refusing to save an image containing infinite values to {name}")
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _current_umask() -> int:
    # os.umask can only be read by setting it, which races with other threads; Linux exposes it.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, and the file is already safe.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------------------------------------------
# Comparison strips for demos


def side_by_side(
    images: Sequence[np.ndarray], labels: Sequence[str] | None = None, gap: int = 4
) -> np.ndarray:
    """Panels left to right on white, each resized to the first one's height, optionally labelled above.

    Maps (H, W) are shown as grey. Labels use Pillow's default font; a label wider than its panel is cut.
    """
    if len(images) == 0:
        raise ValueError("side_by_side needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    panels = [np.asarray(p, dtype=np.float32) for p in images]
    panels = [_replicate(p) if p.ndim == 2 else p for p in panels]
    height = panels[0].shape[0]
    panels = [p if p.shape[0] == height else resize_image(p, (_width_at(p, height), height)) for p in panels]
    font = ImageFont.load_default()
    label_height = 0
    if labels is not None:
        ascent, descent = font.getmetrics()
        label_height = ascent + descent + 2 * gap
    total_width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    strip = np.ones((label_height + height, total_width, 3), dtype=np.float32)
    left = 0
    for panel in panels:
        strip[label_height:, left : left + panel.shape[1]] = np.clip(panel, 0.0, 1.0)
        left += panel.shape[1] + gap
    if labels is None:
        return strip
    canvas = Image.fromarray(np.round(strip * 255).astype(np.uint8))
    left = 0
    for panel, label in zip(panels, labels):
        # Draw on a panel-sized crop so long labels are clipped at their own panel's edge.
        tile = canvas.crop((left, 0, left + panel.shape[1], label_height))
        ImageDraw.Draw(tile).text((gap, gap), str(label), fill=(0, 0, 0), font=font)
        canvas.paste(tile, (left, 0))
        left += panel.shape[1] + gap
    labelled = np.asarray(canvas, dtype=np.float32) / 255.0
    # Keep the panels' float values exact; only the label band went through 8 bits.
    labelled[label_height:] = strip[label_height:]
    return labelled


def _width_at(panel: np.ndarray, height: int) -> int:
    return max(1, round(panel.shape[1] * height / panel.shape[0]))


# ---------------------------------------------------------------------------------------------------
# Model-side tensors


def to_tensor(
    image: np.ndarray, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(H, W, 3) in [0, 1] → (1, 3, H, W) in [-1, 1], the range the VAE encoder expects."""
    return to_tensor_batch([image], device=device, dtype=dtype)


def to_tensor_batch(
    images: Sequence[np.ndarray] | np.ndarray,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Same-size float images (a list, or an array (B, H, W, 3)) in [0, 1] → (B, 3, H, W) in [-1, 1].

    Raises ``ValueError`` for other shapes and non-float dtypes (0-255 integers would leave [-1, 1]).
    """
    arrays = [np.asarray(i) for i in images]
    for array in arrays:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"expected float images in [0, 1]; got dtype {array.dtype} (divide 8-bit values by 255)")
    stacked = np.stack([a.astype(np.float32, copy=False) for a in arrays])
    if stacked.ndim != 4 or stacked.shape[-1] != 3:
        raise ValueError(f"expected images of shape (H, W, 3); got a stack of shape {stacked.shape}")
    batch = torch.from_numpy(stacked).permute(0, 3, 1, 2)  # (B, 3, H, W)
    return (batch * 2.0 - 1.0).to(device=device, dtype=dtype).contiguous()


def from_tensor(tensor: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) in [-1, 1] → float32 (H, W, 3) in [0, 1], clamped."""
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4 or tensor.shape[0] != 1:
        raise ValueError(
            f"from_tensor takes one image (1, 3, H, W); got {tuple(tensor.shape)}; use from_tensor_batch"
        )
    return from_tensor_batch(tensor)[0]


def from_tensor_batch(tensor: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) in [-1, 1] → a list of B float32 (H, W, 3) arrays in [0, 1]."""
    if tensor.ndim != 4 or tensor.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) tensor; got {tuple(tensor.shape)}")
    # Decoders overshoot [-1, 1] slightly; clamping here is what the saved file would do anyway.
    images = ((tensor.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) / 2.0).permute(0, 2, 3, 1)
    return [np.ascontiguousarray(i.numpy(), dtype=np.float32) for i in images]


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "check_image_size",
    "check_output_path",
    "FIT_POLICIES",
    "SAVE_FORMATS",
    "fit_to_multiple",
    "from_tensor",
    "from_tensor_batch",
    "load_image",
    "load_map",
    "resize_image",
    "restore_size",
    "save_image",
    "side_by_side",
    "to_tensor",
    "to_tensor_batch",
    "validate_map",
]
