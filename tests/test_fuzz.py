"""Property-based fuzzing of the effects operators, edit maps and image I/O (hypothesis).

Each property feeds random shapes (1×1, 1×N, odd sizes), dtypes and values to one public function and
checks its contract: it either returns a finite array of the documented shape, dtype and range, or
raises the error its docstring names (``RetouchError`` at the edges). CI runs the ``ci`` profile:
derandomised, so a run is reproducible, and sized to stay under a minute. For a deeper hunt run
``RETOUCH_FUZZ=deep pytest tests/test_fuzz.py`` (random seeds, many more examples).
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from retouch import edit_maps, imageio
from retouch.effects import (
    GRAIN_RADII,
    EffectsRecipe,
    apply_effects,
    apply_inpainting_mask,
    film_grain,
    free_form_mask,
    motion_blur,
    motion_blur_kernel,
    reinhard_color_transfer,
    unsharp_mask,
)
from retouch.errors import RetouchError
from retouch.methods.pixels import THRESHOLDS, threshold_values

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("deep", derandomize=False, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_PROFILE = os.environ.get("RETOUCH_FUZZ", "ci")
# Pillow warns about the damaged files these tests feed it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Truncated File Read", "ignore:Corrupt EXIF data",
                                        "ignore::PIL.Image.DecompressionBombWarning")
settings.load_profile(_PROFILE)


def examples(n: int) -> settings:
    """``n`` examples on CI, twenty times as many in the deep profile."""
    return settings(max_examples=n * (20 if _PROFILE == "deep" else 1))


FLOAT_DTYPES = (np.float32, np.float64)
ALL_DTYPES = (np.uint8, np.uint16, np.float32, np.float64, np.bool_)


# --- strategies -----------------------------------------------------------------------------------
def sides(high: int = 24):
    """Image sides with the degenerate ones (1, 2) and odd sizes well represented."""
    return st.one_of(st.sampled_from([1, 1, 2, 3]), st.integers(1, high))


@st.composite
def unit_images(draw, max_side: int = 24, channels=(None, 3), dtypes=FLOAT_DTYPES):
    """Images (H, W) or (H, W, C) with constant regions: floats in [0, 1] with exact 0s and 1s; integer
    dtypes over their whole range, as an undivided 8- or 16-bit image would be; bools."""
    height, width = draw(sides(max_side)), draw(sides(max_side))
    c = draw(st.sampled_from(channels))
    shape = (height, width) if c is None else (height, width, c)
    dtype = draw(st.sampled_from(dtypes))
    if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
        return draw(hnp.arrays(dtype, shape))
    values = st.floats(0.0, 1.0, width=32)
    return draw(hnp.arrays(dtype, shape, elements=values, fill=st.sampled_from([0.0, 1.0, 0.5]) | values))


def check_unit_float32(out: np.ndarray, shape: tuple[int, ...]) -> None:
    assert out.shape == shape
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min(initial=0.0) >= 0.0 and out.max(initial=0.0) <= 1.0


# --- effects --------------------------------------------------------------------------------------
@examples(60)
@given(image=unit_images(channels=(None, 1, 3)), degree=st.floats(0.0, 1.0),
       angle=st.none() | st.floats(-720.0, 720.0), seed=st.integers(0, 2**32 - 1),
       fraction=st.sampled_from([0.1, 0.5, 1.0]))
def test_motion_blur_stays_in_range(image, degree, angle, seed, fraction):
    out = motion_blur(image, degree, angle=angle, seed=seed, max_length_fraction=fraction)
    check_unit_float32(out, image.shape)
    if degree == 0:
        assert np.array_equal(out, image.astype(np.float32))
    # A convex combination of neighbours: never outside the input's own range.
    assert out.min() >= image.min() - 1e-6 and out.max() <= image.max() + 1e-6


@examples(80)
@given(length=st.floats(0.0, 60.0), angle=st.floats(-1e4, 1e4))
def test_motion_blur_kernel_is_a_normalised_odd_square(length, angle):
    kernel = motion_blur_kernel(length, angle)
    assert kernel.ndim == 2 and kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert np.isfinite(kernel).all() and (kernel >= 0).all()
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5)


@examples(12)
@given(image=unit_images(max_side=3, channels=(None, 1, 3)), radius=st.sampled_from(GRAIN_RADII[2:]) | st.floats(0.05, 0.1),
       radius_std=st.sampled_from([0.0, 0.0, 0.01]), n_samples=st.integers(1, 6),
       zoom=st.sampled_from([1.0, 1.0, 2.0]), seed=st.integers(0, 2**31 - 1))
def test_film_grain_stays_in_range_and_is_deterministic(image, radius, radius_std, n_samples, zoom, seed):
    out = film_grain(image, radius, radius_std=radius_std, n_samples=n_samples, zoom=zoom, seed=seed)
    shape = (round(image.shape[0] * zoom), round(image.shape[1] * zoom)) + image.shape[2:]
    check_unit_float32(out, shape)
    assert np.array_equal(out, film_grain(image, radius, radius_std=radius_std, n_samples=n_samples, zoom=zoom,
                                          seed=seed))
    if not image.any():  # u = 0 everywhere: the Poisson intensity is 0, so no grain at all
        assert not out.any()


@examples(60)
@given(image=unit_images(), reference=unit_images())
def test_reinhard_transfer_stays_in_range(image, reference):
    if image.ndim != 3 or reference.ndim != 3:
        with pytest.raises(RetouchError, match="RGB"):
            reinhard_color_transfer(image, reference)
        return
    out = reinhard_color_transfer(image, reference)
    check_unit_float32(out, image.shape)


@examples(30)
@given(image=unit_images(channels=(3,)))
def test_reinhard_transfer_onto_itself_is_the_identity(image):
    # Same statistics: the shift is 0 and the scale 1, up to the 1e-6 guard before the logarithm.
    np.testing.assert_allclose(reinhard_color_transfer(image, image), image, atol=1e-4)


@examples(60)
@given(image=unit_images(channels=(None, 1, 3)), amount=st.floats(1.0, 3.0), threshold=st.floats(0.0, 0.1),
       blur_sigma=st.floats(0.1, 4.0))
def test_unsharp_mask_stays_in_range(image, amount, threshold, blur_sigma):
    out = unsharp_mask(image, amount, threshold, blur_sigma=blur_sigma)
    check_unit_float32(out, image.shape)
    if image.min() == image.max():  # no detail to sharpen
        np.testing.assert_allclose(out, image, atol=1e-5)


@examples(40)
@given(height=sides(40), width=sides(40), seed=st.integers(0, 2**32 - 1),
       bounds=st.sampled_from([(None, None), (0.1, 0.3), (0.0, 0.05), (0.5, None)]),
       max_tries=st.integers(1, 5))
def test_free_form_mask_is_a_deterministic_bool_hole(height, width, seed, bounds, max_tries):
    mask = free_form_mask(height, width, seed, min_coverage=bounds[0], max_coverage=bounds[1], max_tries=max_tries)
    assert mask.shape == (height, width) and mask.dtype == np.bool_
    assert np.array_equal(mask, free_form_mask(height, width, seed, min_coverage=bounds[0],
                                               max_coverage=bounds[1], max_tries=max_tries))
    image = np.ones((height, width, 3), np.float32)
    holed = apply_inpainting_mask(image, mask)
    assert holed.dtype == np.float32
    assert not holed[mask].any() and (holed[~mask] == 1).all()


@st.composite
def recipes(draw, image_ndim: int, height: int, width: int) -> EffectsRecipe:
    sharpen = draw(st.none() | st.tuples(st.floats(1.0, 3.0), st.floats(0.0, 0.1)))
    mask = draw(st.none() | hnp.arrays(np.bool_, (height, width)))
    reference = draw(st.none() | unit_images(max_side=8, channels=(3,))) if image_ndim == 3 else None
    return EffectsRecipe(blur=draw(st.none() | st.floats(0.0, 1.0)), blur_angle=draw(st.none() | st.floats(0, 360)),
                         grain=draw(st.none() | st.floats(0.05, 0.1)), reference=reference, mask=mask,
                         sharpen=sharpen, seed=draw(st.integers(0, 2**31 - 1)))


@examples(25)
@given(data=st.data(), image=unit_images(max_side=4))
def test_apply_effects_stays_in_range_and_honours_the_mask(data, image):
    recipe = data.draw(recipes(image.ndim, *image.shape[:2]))
    out = apply_effects(image, recipe, grain_samples=4)
    check_unit_float32(out, image.shape)
    if recipe.mask is not None:
        assert not out[recipe.mask].any()


# --- edit maps and threshold functions ------------------------------------------------------------
@st.composite
def masks(draw, max_side: int = 24):
    """Masks in every dtype a caller might hold: bool, 0/255 uint8, 0/65535 uint16, soft floats."""
    shape = (draw(sides(max_side)), draw(sides(max_side)))
    dtype = draw(st.sampled_from(ALL_DTYPES))
    if dtype == np.bool_:
        return draw(hnp.arrays(dtype, shape))
    if np.issubdtype(dtype, np.integer):
        return draw(hnp.arrays(dtype, shape, elements=st.sampled_from([0, 1, np.iinfo(dtype).max])))
    return draw(hnp.arrays(dtype, shape, elements=st.floats(0.0, 1.0, width=32)))


def _as_binary(mask: np.ndarray) -> np.ndarray:
    return mask if mask.dtype == np.bool_ else mask > 0.5


@examples(60)
@given(mask=masks(), small=st.floats(0.0, 10.0), extra=st.floats(0.0, 10.0) | st.just(math.inf))
def test_grow_mask_contains_the_mask_and_grows_monotonically(mask, small, extra):
    grown, more = edit_maps.grow_mask(mask, small), edit_maps.grow_mask(mask, small + extra)
    check_unit_float32(grown, mask.shape)
    check_unit_float32(more, mask.shape)
    assert set(np.unique(grown)) <= {0.0, 1.0}
    assert (grown[_as_binary(mask)] == 1).all()
    assert (more >= grown).all()
    if not _as_binary(mask).any():  # dilating nothing, by any radius, is nothing
        assert not more.any()


@examples(60)
@given(mask=masks(), width=st.floats(1e-3, 50.0) | st.just(math.inf))
def test_linear_ramp_map_keeps_the_mask_whole(mask, width):
    ramp = edit_maps.linear_ramp_map(mask, width)
    check_unit_float32(ramp, mask.shape)
    assert (ramp[_as_binary(mask)] == 1).all()
    assert (ramp <= edit_maps.grow_mask(mask, width)).all()  # nothing beyond the band


@examples(60)
@given(edit_map=unit_images(channels=(None,)), sigma=st.sampled_from([0.0]) | st.floats(0.0, 8.0))
def test_blur_map_returns_a_fresh_map_in_range(edit_map, sigma):
    blurred = edit_maps.blur_map(edit_map, sigma)
    check_unit_float32(blurred, edit_map.shape)
    assert blurred is not edit_map and not np.shares_memory(blurred, edit_map)
    if sigma == 0:
        assert np.array_equal(blurred, edit_map.astype(np.float32))


@examples(60)
@given(array=hnp.arrays(st.sampled_from(ALL_DTYPES + (np.float16,)), hnp.array_shapes(min_dims=1, max_dims=3,
                                                                                     min_side=0, max_side=6)),
       value=st.floats(allow_nan=True, allow_infinity=True), which=st.sampled_from(["blur", "ramp", "grow"]))
@example(array=np.ones((1, 1), bool), value=1e-175, which="ramp")  # found by the deep profile: 0/0 in float32
def test_edit_map_helpers_refuse_or_return_a_map(array, value, which):
    """Any array and any parameter (NaN, ±inf, negative): a RetouchError, or a finite map in [0, 1]."""
    call = {"blur": edit_maps.blur_map, "ramp": edit_maps.linear_ramp_map, "grow": edit_maps.grow_mask}[which]
    finite = np.isfinite(array.astype(np.float64)).all()
    if which == "blur":  # a soft map, checked like validate_map
        valid = (value >= 0 and array.ndim == 2 and array.size > 0 and finite
                 and array.astype(np.float64).min() >= -1e-3 and array.astype(np.float64).max() <= 1 + 1e-3)
    else:  # a mask: any 2-D numbers, binarised at one half
        valid = (value > 0 if which == "ramp" else value >= 0) and array.ndim == 2 and finite
    if not valid:
        with pytest.raises(RetouchError):
            call(array, value)
        return
    check_unit_float32(call(array, value), array.shape)


@pytest.mark.parametrize("name", sorted(THRESHOLDS))
@examples(40)
@given(n=st.integers(1, 2000))
def test_threshold_functions_are_valid_schedules(name, n):
    values = threshold_values(name, n)
    assert values.shape == (n,) and values.dtype == torch.float32
    assert torch.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    assert (values[1:] >= values[:-1]).all()


@examples(60)
@given(n=st.integers(1, 20), returned=hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=2, max_side=20),
                                                elements=st.floats(allow_nan=True, allow_infinity=True)))
def test_threshold_values_refuses_bad_user_functions(n, returned):
    try:
        values = threshold_values(lambda _: returned, n)
    except RetouchError:
        return
    assert values.shape == (n,) and torch.isfinite(values).all()
    assert values.min() >= 0 and values.max() <= 1 and (values[1:] >= values[:-1]).all()


# --- image I/O: arrays ----------------------------------------------------------------------------
@examples(60)
@given(image=unit_images(max_side=20))
def test_png_bytes_round_trip_is_exact_to_8_bits(image):
    back = imageio.image_from_png_bytes(imageio.png_bytes(image))
    assert back.shape == image.shape and back.dtype == np.float32
    np.testing.assert_array_equal(back, np.round(image.astype(np.float64) * 255).astype(np.uint8) / np.float32(255))


@examples(60)
@given(array=hnp.arrays(st.sampled_from(ALL_DTYPES + (np.float16, np.int32)),
                        hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)),
       poison=st.sampled_from([None, np.nan, np.inf, -np.inf, 2.0, -1.0]))
def test_png_bytes_refuses_or_encodes(array, poison):
    if poison is not None and np.issubdtype(array.dtype, np.floating) and array.size:
        array = array.copy()
        array.flat[0] = poison
    # Only float (H, W) / (H, W, 3) arrays of finite values are encoded; out-of-range ones are clipped.
    valid = (np.issubdtype(array.dtype, np.floating) and array.size > 0 and np.isfinite(array).all()
             and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)))
    if not valid:
        with pytest.raises(RetouchError):
            imageio.png_bytes(array)
        return
    back = imageio.image_from_png_bytes(imageio.png_bytes(array))
    assert back.shape == array.shape
    check_unit_float32(back, array.shape)


@examples(60)
@given(image=unit_images(max_side=20, dtypes=ALL_DTYPES), width=sides(40), height=sides(40))
def test_resize_image_takes_floats_and_refuses_integers(image, width, height):
    if np.issubdtype(image.dtype, np.integer):
        with pytest.raises(RetouchError, match="dtype"):
            imageio.resize_image(image, (width, height))
        return
    out = imageio.resize_image(image, (width, height))
    check_unit_float32(out, (height, width) + image.shape[2:])


@examples(60)
@given(image=unit_images(max_side=20, channels=(None, 3)), multiple=st.integers(1, 16),
       policy=st.sampled_from(imageio.FIT_POLICIES))
def test_fit_to_multiple_then_restore_size(image, multiple, policy):
    try:
        fitted = imageio.fit_to_multiple(image, multiple, policy)
    except RetouchError:
        assert policy == "crop" and min(image.shape[:2]) < multiple
        return
    assert fitted.shape[0] % multiple == 0 and fitted.shape[1] % multiple == 0
    assert fitted.shape[2:] == image.shape[2:]
    check_unit_float32(fitted, fitted.shape)
    restored = imageio.restore_size(fitted, image.shape[:2], policy)
    check_unit_float32(restored, image.shape)
    if policy == "pad":
        np.testing.assert_array_equal(restored, image.astype(np.float32))


@examples(60)
@given(image=unit_images(max_side=16, channels=(3,), dtypes=ALL_DTYPES))
def test_to_tensor_range_and_round_trip(image):
    if not np.issubdtype(image.dtype, np.floating):
        with pytest.raises(ValueError, match="dtype"):
            imageio.to_tensor(image)
        return
    tensor = imageio.to_tensor(image)
    assert tensor.shape == (1, 3, *image.shape[:2]) and tensor.dtype == torch.float32
    assert tensor.min() >= -1 and tensor.max() <= 1
    np.testing.assert_allclose(imageio.from_tensor(tensor), image, atol=1e-6)


@examples(80)
@given(array=hnp.arrays(st.sampled_from(ALL_DTYPES + (np.float16, np.int64)),
                        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)),
       scale=st.sampled_from([1.0, 255.0, 1.0005, -0.0005, np.nan, np.inf]))
@example(array=np.ones((2, 2), np.float32), scale=1.0005)
def test_validate_map_refuses_or_returns_a_unit_map(array, scale):
    if np.issubdtype(array.dtype, np.floating):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            array = (array * scale).astype(array.dtype)
    with warnings.catch_warnings(), np.errstate(over="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        as_float = array.astype(np.float32)
    valid = (array.ndim == 2 and array.size > 0 and np.isfinite(as_float).all()
             and as_float.min() >= -1e-3 and as_float.max() <= 1 + 1e-3)
    if not valid:
        with pytest.raises(RetouchError):
            imageio.validate_map(array)
        return
    out = imageio.validate_map(array)
    check_unit_float32(out, array.shape)
    np.testing.assert_array_equal(out, np.clip(as_float, 0, 1))


# --- image I/O: files -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@st.composite
def image_files(draw):
    """Real files in every mode and format load_image handles, with their expected shape."""
    height, width = draw(sides(12)), draw(sides(12))
    kind = draw(st.sampled_from(["rgb", "grey", "grey16", "rgba", "la", "palette", "bilevel"]))
    fmt = draw(st.sampled_from(["PNG", "PNG", "TIFF", "BMP", "GIF", "JPEG", "WEBP", "PPM"]))
    pixels = draw(hnp.arrays(np.uint8, (height, width, 4)))
    if kind == "grey16":
        fmt = draw(st.sampled_from(["PNG", "TIFF"]))
        image = Image.fromarray(draw(hnp.arrays(np.uint16, (height, width))))
    elif kind == "rgb":
        image = Image.fromarray(pixels[..., :3])
    elif kind == "rgba":
        image = Image.fromarray(pixels)
    elif kind == "la":
        image = Image.fromarray(pixels).convert("LA")
    elif kind == "palette":
        image = Image.fromarray(pixels[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=draw(st.integers(2, 16)))
    elif kind == "bilevel":
        image = Image.fromarray(pixels[..., 0]).convert("1")
    else:
        image = Image.fromarray(pixels[..., 0])
    if fmt in ("JPEG", "PPM") and image.mode not in ("L", "RGB", "1"):
        image = image.convert("RGB")
    if fmt == "BMP" and image.mode in ("LA",):
        image = image.convert("RGBA")
    if fmt == "GIF":
        image = image.convert("P") if image.mode not in ("P", "L", "1") else image
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue(), (height, width)


def _check_loaded(path, shape) -> None:
    check_unit_float32(imageio.load_image(path), shape + (3,))
    check_unit_float32(imageio.load_map(path), shape)


@examples(60)
@given(file=image_files())
def test_every_format_and_mode_loads_in_range(workdir, file):
    data, shape = file
    path = workdir / "whole.img"
    path.write_bytes(data)
    _check_loaded(path, shape)


@examples(80)
@given(file=image_files(), data=st.data())
def test_truncated_files_fail_cleanly(workdir, file, data):
    """A file cut anywhere either still decodes (trailers are optional) or is one RetouchError."""
    content, shape = file
    cut = data.draw(st.integers(0, len(content) - 1))
    path = workdir / "cut.img"
    path.write_bytes(content[:cut])
    try:
        _check_loaded(path, shape)
    except RetouchError as error:
        assert "'" + str(path) + "'" in str(error) and "\n" not in str(error)


@examples(100)
@given(file=image_files(), data=st.data())
def test_corrupted_files_fail_cleanly(workdir, file, data):
    content, _ = file
    corrupt = bytearray(content)
    for _ in range(data.draw(st.integers(1, 8))):
        corrupt[data.draw(st.integers(0, len(corrupt) - 1))] = data.draw(st.integers(0, 255))
    path = workdir / "corrupt.img"
    path.write_bytes(bytes(corrupt))
    try:
        image = imageio.load_image(path, max_pixels=1 << 20)
    except RetouchError:
        return
    # A corrupted header may change the size; whatever decodes must still be a valid image.
    check_unit_float32(image, image.shape)
    assert image.ndim == 3 and image.shape[2] == 3


@examples(60)
@given(content=st.binary(min_size=0, max_size=200) | st.sampled_from([b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM",
                                                                     b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBP",
                                                                     b"II*\x00", b"P6\n1 1\n255\n"]))
def test_random_bytes_are_one_retouch_error(workdir, content):
    path = workdir / "random.png"
    path.write_bytes(content)
    for load in (imageio.load_image, imageio.load_map):
        with pytest.raises(RetouchError):
            load(path)
    with pytest.raises(RetouchError):
        imageio.image_from_png_bytes(content)


@examples(80)
@given(file=image_files(), data=st.data())
def test_png_records_cut_or_corrupted_fail_cleanly(file, data):
    """image_from_png_bytes reads dataset shards: a damaged record is a RetouchError, never a Pillow error."""
    content, _ = file
    damaged = bytearray(content[: data.draw(st.integers(0, len(content)))])
    for _ in range(data.draw(st.integers(0, 4)) if damaged else 0):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    try:
        image = imageio.image_from_png_bytes(bytes(damaged))
    except RetouchError:
        return
    assert image.ndim in (2, 3) and np.isfinite(image).all() and image.min(initial=0) >= 0 and image.max(initial=0) <= 1


@examples(40)
@given(image=unit_images(max_side=12, channels=(None, 3)), suffix=st.sampled_from([".png", ".jpg", ".webp"]))
def test_save_then_load_round_trip(workdir, image, suffix):
    path = workdir / f"saved{suffix}"
    imageio.save_image(image, path)
    loaded = imageio.load_image(path)
    check_unit_float32(loaded, image.shape[:2] + (3,))
    if suffix == ".png":
        expected = np.round(image.astype(np.float64) * 255).astype(np.uint8) / np.float32(255)
        expected = expected if image.ndim == 3 else np.repeat(expected[..., None], 3, axis=-1)
        np.testing.assert_array_equal(loaded, expected)
        if image.ndim == 2:
            np.testing.assert_allclose(imageio.load_map(path), expected[..., 0], atol=1e-6)


@examples(30)
@given(grey=hnp.arrays(np.uint16, st.tuples(sides(12), sides(12))), fmt=st.sampled_from(["PNG", "TIFF"]),
       size=st.none() | st.tuples(sides(16), sides(16)))
def test_16_bit_grey_keeps_its_precision(workdir, grey, fmt, size):
    path = workdir / f"grey16.{fmt.lower()}"
    Image.fromarray(grey).save(path, format=fmt)
    np.testing.assert_array_equal(imageio.load_image(path)[..., 0], grey.astype(np.float32) / 65535)
    edit_map = imageio.load_map(path, size=size)
    check_unit_float32(edit_map, grey.shape if size is None else size[::-1])
    if size is None:
        np.testing.assert_allclose(edit_map, grey.astype(np.float32) / 65535, atol=1e-6)


@examples(40)
@given(array=hnp.arrays(st.sampled_from(ALL_DTYPES + (np.float16,)),
                        hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)),
       suffix=st.sampled_from([".png", ".jpg", ".webp"]))
def test_save_refuses_what_it_cannot_write(workdir, array, suffix):
    path = workdir / f"refused{suffix}"
    path.unlink(missing_ok=True)
    valid = (np.issubdtype(array.dtype, np.floating) and array.size > 0
             and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)) and np.isfinite(array).all())
    if valid:
        imageio.save_image(array, path)
        check_unit_float32(imageio.load_image(path), array.shape[:2] + (3,))
    else:
        with pytest.raises(RetouchError):
            imageio.save_image(array, path)
        assert not path.exists()


@pytest.mark.parametrize("suffix, side", [(".webp", 16384), (".jpg", 65501)])
def test_save_refuses_sides_over_the_encoders_limit(workdir, suffix, side):
    """WebP stores sides in 14 bits and JPEG in 16: Pillow fails mid-encode with a ValueError or a vague error."""
    path = workdir / f"long{suffix}"
    with pytest.raises(RetouchError, match="limit"):
        imageio.save_image(np.zeros((1, side), np.float32), path)
    assert not path.exists()
    imageio.save_image(np.zeros((1, side), np.float32), workdir / "long.png")  # PNG has no such limit


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@examples(60)
@given(width=st.integers(0, 2**31 - 1) | sides(8), height=st.integers(0, 2**31 - 1) | sides(8),
       depth_colour=st.sampled_from([(8, 0), (16, 0), (8, 2), (16, 2), (8, 3), (8, 4), (8, 6), (1, 0), (7, 2)]),
       payload=st.binary(max_size=64))
def test_forged_png_headers_are_refused_or_decoded(workdir, width, height, depth_colour, payload):
    """Any IHDR (huge, zero or invalid sizes, depths and colour types) over a small IDAT: never a Pillow error."""
    depth, colour = depth_colour
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(payload)) + _png_chunk(b"IEND", b""))
    path = workdir / "forged.png"
    path.write_bytes(data)
    for load in (imageio.load_image, lambda p: imageio.load_map(p)[..., None]):
        try:
            image = load(path)
        except RetouchError:
            continue
        assert image.shape[:2] == (height, width) and np.isfinite(image).all()
    try:
        record = imageio.image_from_png_bytes(data)
    except RetouchError:
        return
    assert record.shape[:2] == (height, width) and np.isfinite(record).all()
