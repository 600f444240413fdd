"""Image I/O: every bad input is one RetouchError line naming the file; good inputs load exactly."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retouch import imageio
from retouch.errors import RetouchError
from retouch.imageio import (
    fit_to_multiple,
    from_tensor,
    from_tensor_batch,
    load_image,
    load_map,
    resize_image,
    restore_size,
    save_image,
    side_by_side,
    to_tensor,
    to_tensor_batch,
    validate_map,
)


def _random_rgb(height=12, width=16, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, 3), dtype=np.float32)


def _smooth_rgb(height=32, width=48) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([x / (width - 1), y / (height - 1), 0.5 + 0.0 * x], axis=-1).astype(np.float32)


def _png_bytes(width=8, height=8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR is patched to claim ``width`` × ``height`` (CRC fixed up)."""
    data = bytearray(_png_bytes())
    # Signature (8) | length (4) | b"IHDR" (4) | width (4) | height (4) | 5 more bytes | CRC (4)
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _assert_one_line_naming(error: pytest.ExceptionInfo, name: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert name in message, message
    # Raised "from None" where it replaces one: the user never sees a Pillow/OS exception chained under it.
    assert error.value.__cause__ is None
    assert error.value.__context__ is None or error.value.__suppress_context__


# ---------------------------------------------------------------------------------------------------
# Bad inputs to load_image


def _corrupt_png(folder: Path) -> Path:
    path = folder / "corrupt.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    return path


def _truncated_png(folder: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray((_random_rgb(64, 64) * 255).astype(np.uint8)).save(buffer, format="PNG")
    path = folder / "truncated.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def _zero_bytes(folder: Path) -> Path:
    path = folder / "empty.png"
    path.write_bytes(b"")
    return path


def _text_named_jpg(folder: Path) -> Path:
    path = folder / "notes.jpg"
    path.write_text("this is not a JPEG\n")
    return path


def _missing(folder: Path) -> Path:
    return folder / "missing.png"


def _directory(folder: Path) -> Path:
    path = folder / "photos.png"
    path.mkdir()
    return path


def _bomb_header(folder: Path) -> Path:
    path = folder / "bomb.png"
    path.write_bytes(_png_claiming_size(100_000, 100_000))
    return path


def _over_default_limit(folder: Path) -> Path:
    # 81 MP: above our 64 MP default but below Pillow's own warning, so our header check must catch it.
    path = folder / "large.png"
    path.write_bytes(_png_claiming_size(9_000, 9_000))
    return path


def _nan_float_tiff(folder: Path) -> Path:
    path = folder / "nan.tiff"
    values = np.full((4, 4), 0.5, np.float32)
    values[1, 2] = np.nan
    Image.fromarray(values).save(path)
    return path


_BAD_IMAGES = [
    (_corrupt_png, "corrupt"),
    (_truncated_png, "truncated or corrupt"),
    (_zero_bytes, "empty"),
    (_text_named_jpg, "not a recognised image"),
    (_missing, "no such file"),
    (_directory, "directory"),
    (_bomb_header, "decompression-bomb"),
    (_over_default_limit, "more than the limit"),
    (_nan_float_tiff, "NaN"),
]


@pytest.mark.parametrize(
    "make, expected", [pytest.param(m, e, id=m.__name__.strip("_")) for m, e in _BAD_IMAGES]
)
def test_bad_image_is_one_line_naming_the_file(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(RetouchError) as error:
        load_image(path)
    _assert_one_line_naming(error, path.name)
    # Look for the reason after the quoted path: pytest's tmp_path repeats the test id.
    assert expected in str(error.value).split("': ", 1)[1], str(error.value)


def test_max_pixels_is_checked_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 10)).save(path)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a refused image"))
    with pytest.raises(RetouchError, match="200 pixels, more than the limit of 100") as error:
        load_image(path, max_pixels=100)
    _assert_one_line_naming(error, "small.png")


def test_bad_map_file_is_one_line_naming_the_file(tmp_path):
    path = _truncated_png(tmp_path)
    with pytest.raises(RetouchError) as error:
        load_map(path)
    _assert_one_line_naming(error, "truncated.png")


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.array([[0.5, np.nan]], np.float32), "NaN"),
        (np.array([[0.5, np.inf]], np.float32), "infinite"),
        (np.zeros((4, 4, 3), np.float32), "2-D"),
        (np.zeros((0, 4), np.float32), "empty"),
        (np.array([[0, 255]], np.uint8), "divide 0-255"),
        (np.array([[-0.5, 0.5]], np.float32), r"\[0, 1\]"),
        (np.array([["a", "b"]]), "numbers"),
    ],
    ids=["nan", "inf", "3d", "empty", "0-255", "negative", "strings"],
)
def test_validate_map_refuses(array, expected):
    with pytest.raises(RetouchError, match=expected) as error:
        validate_map(array, name="edit map 'mask.png'")
    _assert_one_line_naming(error, "mask.png")


def test_validate_map_clips_within_tolerance():
    result = validate_map(np.array([[-1e-4, 1.0 + 1e-4, 0.25]], np.float64))
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, [[0.0, 1.0, 0.25]])


# ---------------------------------------------------------------------------------------------------
# Bad outputs for save_image


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_save_refuses_unknown_extension(tmp_path):
    with pytest.raises(RetouchError, match=r"\.png, \.jpg, \.jpeg, \.webp") as error:
        save_image(_random_rgb(), tmp_path / "out.gif")
    _assert_one_line_naming(error, "out.gif")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("bad_value, expected", [(np.nan, "NaN"), (np.inf, "infinite values")])
def test_save_refuses_non_finite(tmp_path, bad_value, expected):
    image = _random_rgb()
    image[3, 4, 1] = bad_value
    with pytest.raises(RetouchError, match=f"refusing to save an image containing {expected}") as error:
        save_image(image, tmp_path / "out.png")
    _assert_one_line_naming(error, "out.png")
    assert _listing(tmp_path) == []


def test_save_refuses_uint8_arrays(tmp_path):
    with pytest.raises(RetouchError, match="divide 8-bit values by 255"):
        save_image(np.zeros((4, 4, 3), np.uint8), tmp_path / "out.png")


def test_save_refuses_missing_folder_unless_asked(tmp_path):
    target = tmp_path / "new" / "deeper" / "out.png"
    with pytest.raises(RetouchError, match="does not exist") as error:
        save_image(_random_rgb(), target)
    _assert_one_line_naming(error, "out.png")
    assert not (tmp_path / "new").exists()
    save_image(_random_rgb(), target, make_parents=True)
    assert target.is_file()


def test_save_refuses_a_file_as_folder(tmp_path):
    # Fails for root too, unlike a chmod'ed folder.
    regular = tmp_path / "somefile.txt"
    regular.write_text("x")
    with pytest.raises(RetouchError, match="not a folder") as error:
        save_image(_random_rgb(), regular / "out.png")
    _assert_one_line_naming(error, "out.png")


def _unwritable_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    # Root ignores permission bits; sysfs refuses new files even to root.
    folder = Path("/sys")
    try:
        (folder / ".retouch-probe").touch()
    except OSError:
        return folder
    pytest.skip("no folder here that refuses writes")


def test_save_to_unwritable_folder(tmp_path):
    folder = _unwritable_folder(tmp_path)
    before = _listing(folder)
    try:
        with pytest.raises(RetouchError, match="cannot save") as error:
            save_image(_random_rgb(), folder / "out.png")
        _assert_one_line_naming(error, "out.png")
        assert _listing(folder) == before
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(0o700)


def test_save_refuses_existing_output_without_overwrite(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"keep me")
    with pytest.raises(RetouchError, match="refusing to overwrite existing") as error:
        save_image(_random_rgb(), target, overwrite=False)
    _assert_one_line_naming(error, "out.png")
    assert target.read_bytes() == b"keep me"


def test_save_refuses_directory_as_output(tmp_path):
    (tmp_path / "out.png").mkdir()
    with pytest.raises(RetouchError, match="directory"):
        save_image(_random_rgb(), tmp_path / "out.png")


def _same_path(folder: Path) -> Path:
    return folder / "in.png"


def _relative_detour(folder: Path) -> Path:
    (folder / "sub").mkdir()
    return Path("sub") / ".." / "in.png"


def _symlink(folder: Path) -> Path:
    link = folder / "link.png"
    link.symlink_to(folder / "in.png")
    return link


@pytest.mark.parametrize("output_path", [_same_path, _relative_detour, _symlink], ids=["same", "relative", "symlink"])
def test_save_refuses_to_overwrite_an_input(tmp_path, monkeypatch, output_path):
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "in.png"
    save_image(_random_rgb(), source)
    original_bytes = source.read_bytes()
    target = output_path(tmp_path)
    with pytest.raises(RetouchError, match="refusing to overwrite input") as error:
        save_image(_random_rgb(seed=1), target, inputs=[str(source)])
    _assert_one_line_naming(error, "in.png")
    assert source.read_bytes() == original_bytes


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
@pytest.mark.parametrize("failure", [OSError("No space left on device"), RuntimeError("encoder bug")])
def test_save_is_atomic(tmp_path, monkeypatch, existing, failure):
    target = tmp_path / "out.png"
    if existing:
        save_image(_random_rgb(), target)
    before = _listing(tmp_path)
    old_bytes = target.read_bytes() if existing else None

    def write_half_then_fail(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG\r\n\x1a\npartial")
        raise failure

    monkeypatch.setattr(Image.Image, "save", write_half_then_fail)
    expected_error = RetouchError if isinstance(failure, OSError) else type(failure)
    with pytest.raises(expected_error) as error:
        save_image(_random_rgb(seed=2), target)
    if expected_error is RetouchError:
        _assert_one_line_naming(error, "out.png")
    assert _listing(tmp_path) == before  # no temp file, no partial output
    if existing:
        assert target.read_bytes() == old_bytes
    else:
        assert not target.exists()


# ---------------------------------------------------------------------------------------------------
# Loading: modes, precision, orientation


def test_png_round_trip_is_exact_for_8bit_values(tmp_path):
    values = np.random.default_rng(0).integers(0, 256, (9, 13, 3)).astype(np.float32) / 255.0
    save_image(values, tmp_path / "exact.png")
    loaded = load_image(tmp_path / "exact.png")
    assert loaded.dtype == np.float32 and loaded.shape == (9, 13, 3)
    np.testing.assert_array_equal(np.round(loaded * 255), np.round(values * 255))
    np.testing.assert_allclose(loaded, values, atol=1e-7)


def test_saved_file_gets_normal_permissions(tmp_path):
    save_image(_random_rgb(), tmp_path / "out.png")
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o666 & ~umask


def test_16bit_png_keeps_precision(tmp_path):
    values = np.linspace(0, 65535, 64 * 16).astype(np.uint16).reshape(16, 64)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    loaded = load_image(tmp_path / "deep.png")
    expected = values.astype(np.float32) / 65535.0
    np.testing.assert_allclose(loaded[..., 0], expected, atol=1e-6)
    assert np.all(loaded[..., 0] == loaded[..., 2])
    assert len(np.unique(loaded)) > 256  # more levels than 8 bits could carry
    np.testing.assert_allclose(load_map(tmp_path / "deep.png"), expected, atol=1e-6)


def test_rgba_is_composited_over_background(tmp_path):
    pixels = np.zeros((1, 3, 4), np.uint8)
    pixels[0, 0] = (255, 0, 0, 255)  # opaque red
    pixels[0, 1] = (0, 0, 255, 0)  # fully transparent blue
    pixels[0, 2] = (0, 0, 0, 128)  # half-transparent black
    Image.fromarray(pixels, "RGBA").save(tmp_path / "alpha.png")
    loaded = load_image(tmp_path / "alpha.png")
    np.testing.assert_allclose(loaded[0, 0], [1, 0, 0])
    np.testing.assert_allclose(loaded[0, 1], [1, 1, 1])
    np.testing.assert_allclose(loaded[0, 2], [127 / 255] * 3, atol=1e-6)
    on_black = load_image(tmp_path / "alpha.png", background=(0, 0, 0))
    np.testing.assert_allclose(on_black[0, 1], [0, 0, 0])


def test_palette_image(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(load_image(tmp_path / "palette.png")[0], [[1, 0, 0], [0, 1, 0]])
    img.save(tmp_path / "palette-transparent.png", transparency=1)
    np.testing.assert_array_equal(load_image(tmp_path / "palette-transparent.png")[0], [[1, 0, 0], [1, 1, 1]])


def test_grayscale_is_replicated(tmp_path):
    values = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(values, "L").save(tmp_path / "grey.png")
    loaded = load_image(tmp_path / "grey.png")
    assert loaded.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], values / np.float32(255))


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    Image.new("CMYK", (5, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    loaded = load_image(tmp_path / "cmyk.jpg")
    assert loaded.shape == (4, 5, 3)
    assert loaded[..., 0].mean() > 0.9 and loaded[..., 1:].mean() < 0.1  # red


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.new("RGB", (40, 20), (200, 10, 10)).save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").shape == (40, 20, 3)


def test_webp_and_jpeg_round_trip(tmp_path):
    image = _smooth_rgb()
    for name in ("out.webp", "out.jpg", "out.jpeg"):
        save_image(image, tmp_path / name)
        loaded = load_image(tmp_path / name)
        assert loaded.shape == image.shape
        assert np.abs(loaded - image).mean() < 0.01, name
    assert Image.open(tmp_path / "out.webp").format == "WEBP"
    assert Image.open(tmp_path / "out.jpg").format == "JPEG"


def test_save_accepts_maps_and_clips(tmp_path):
    save_image(np.array([[-0.5, 0.5, 2.0]], np.float32), tmp_path / "map.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "map.png")), [[0, 128, 255]])


def test_load_map_luminance_resize_and_transparency(tmp_path):
    Image.new("RGB", (8, 6), (255, 255, 255)).save(tmp_path / "white.png")
    resized = load_map(tmp_path / "white.png", size=(4, 3))
    assert resized.shape == (3, 4) and resized.dtype == np.float32
    np.testing.assert_allclose(resized, 1.0)
    pixels = np.zeros((1, 2, 4), np.uint8)
    pixels[0, 0] = (255, 255, 255, 255)
    pixels[0, 1] = (255, 255, 255, 0)
    Image.fromarray(pixels, "RGBA").save(tmp_path / "mask.png")
    np.testing.assert_allclose(load_map(tmp_path / "mask.png"), [[1.0, 0.0]])


def test_load_map_bilinear_stays_in_range(tmp_path):
    checker = (np.indices((16, 16)).sum(axis=0) % 2 * 255).astype(np.uint8)
    Image.fromarray(checker, "L").save(tmp_path / "checker.png")
    resized = load_map(tmp_path / "checker.png", size=(7, 5))
    assert resized.shape == (5, 7)
    assert 0.0 <= resized.min() and resized.max() <= 1.0


# ---------------------------------------------------------------------------------------------------
# Fitting to a model's multiple


@pytest.mark.parametrize("policy", ["resize", "crop", "pad"])
@pytest.mark.parametrize("height, width", [(20, 30), (64, 64), (13, 71)])
@pytest.mark.parametrize("channels", [(3,), ()], ids=["rgb", "map"])
def test_fit_to_multiple_and_restore(policy, height, width, channels):
    image = np.random.default_rng(1).random((height, width) + channels, dtype=np.float32)
    fitted = fit_to_multiple(image, 8, policy)
    assert fitted.shape[0] % 8 == 0 and fitted.shape[1] % 8 == 0 and fitted.shape[2:] == channels
    restored = restore_size(fitted, (height, width), policy)
    assert restored.shape == image.shape and restored.dtype == np.float32
    if policy == "pad":
        np.testing.assert_array_equal(restored, image)
    if policy == "crop":
        pasted = restore_size(fitted, (height, width), policy, original=image)
        np.testing.assert_array_equal(pasted, image)  # the centre came from the image itself
    if (height, width) == (64, 64):
        np.testing.assert_allclose(fitted, image)


@pytest.mark.parametrize(
    "length, multiple, expected",
    [(12, 8, 16), (11, 8, 8), (3, 8, 8), (20, 8, 24), (96, 64, 128), (95, 64, 64), (10, 4, 12), (11, 7, 14), (10, 7, 7)],
)
def test_resize_policy_rounds_half_up_to_at_least_one_multiple(length, multiple, expected):
    fitted = fit_to_multiple(np.zeros((length, length, 3), np.float32), multiple, "resize")
    assert fitted.shape == (expected, expected, 3)


def test_crop_policy_centres_and_pad_policy_reflects():
    image = np.arange(10, dtype=np.float32)[None, :].repeat(8, axis=0) / 10
    np.testing.assert_array_equal(fit_to_multiple(image, 8, "crop")[0], image[0, 1:9])
    padded = fit_to_multiple(image, 8, "pad")
    np.testing.assert_allclose(padded[0, 10:], image[0, [8, 7, 6, 5, 4, 3]])


def test_crop_smaller_than_one_multiple_and_unknown_policy():
    with pytest.raises(RetouchError, match="smaller than one 8-pixel block"):
        fit_to_multiple(np.zeros((5, 20, 3), np.float32), 8, "crop")
    with pytest.raises(RetouchError, match="resize, crop, pad"):
        fit_to_multiple(np.zeros((8, 8, 3), np.float32), 8, "stretch")
    with pytest.raises(ValueError):
        fit_to_multiple(np.zeros((8, 8, 3), np.float32), 0)


def test_resize_image_takes_width_height():
    resized = resize_image(_random_rgb(12, 16), (10, 6))
    assert resized.shape == (6, 10, 3) and resized.dtype == np.float32
    assert 0.0 <= resized.min() and resized.max() <= 1.0


# ---------------------------------------------------------------------------------------------------
# Strips and tensors


def test_side_by_side_common_height_and_labels():
    strip = side_by_side([_random_rgb(20, 30), _random_rgb(10, 10)[..., 0]], gap=4)
    assert strip.shape == (20, 30 + 4 + 20, 3)
    assert np.all(strip[:, 30:34] == 1.0)  # white gap
    labelled = side_by_side([_random_rgb(20, 30), _random_rgb(20, 30)], labels=["input", "edited"])
    assert labelled.shape[0] > 20 and labelled.shape[1] == 64
    band = labelled[: labelled.shape[0] - 20]
    assert band.min() < 0.5  # some text was drawn
    np.testing.assert_array_equal(labelled[-20:, :30], _random_rgb(20, 30))
    with pytest.raises(ValueError):
        side_by_side([_random_rgb()], labels=["a", "b"])


def test_tensor_conversion_round_trip():
    image = _random_rgb(6, 10)
    tensor = to_tensor(image)
    assert tensor.shape == (1, 3, 6, 10) and tensor.dtype == torch.float32
    assert -1.0 <= tensor.min() and tensor.max() <= 1.0
    np.testing.assert_allclose(tensor[0, 1].numpy(), image[..., 1] * 2 - 1, atol=1e-6)
    np.testing.assert_allclose(from_tensor(tensor), image, atol=1e-6)
    np.testing.assert_allclose(from_tensor(tensor[0]), image, atol=1e-6)
    assert to_tensor(image, dtype=torch.float16).dtype == torch.float16


def test_batched_tensor_conversion_and_clamping():
    images = [_random_rgb(6, 10, seed=s) for s in range(3)]
    batch = to_tensor_batch(images)
    assert batch.shape == (3, 3, 6, 10)
    back = from_tensor_batch(batch)
    assert isinstance(back, list) and len(back) == 3
    for original, restored in zip(images, back):
        np.testing.assert_allclose(restored, original, atol=1e-6)
    overshoot = from_tensor(torch.full((1, 3, 2, 2), 1.5))
    np.testing.assert_array_equal(overshoot, 1.0)
    with pytest.raises(ValueError, match="from_tensor_batch"):
        from_tensor(batch)


def test_public_surface_is_listed():
    for name in imageio.__all__:
        assert callable(getattr(imageio, name)) or name.isupper()
