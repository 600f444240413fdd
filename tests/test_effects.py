"""Compositing effects: properties of each operator, not just shapes."""

import numpy as np
import pytest
from skimage import data

from retouch.effects import (
    EffectsRecipe,
    apply_effects,
    apply_inpainting_mask,
    film_grain,
    free_form_mask,
    motion_blur,
    motion_blur_kernel,
    reinhard_color_transfer,
    rgb_to_lab,
    unsharp_mask,
)
from retouch.effects._film_grain_reference import film_grain_reference


@pytest.fixture(scope="module")
def photo():
    return (data.astronaut()[::8, ::8] / 255.0).astype(np.float32)  # 64×64 RGB


# --- motion blur --------------------------------------------------------------------------------
def test_zero_blur_is_exact_identity(photo):
    assert np.array_equal(motion_blur(photo, 0.0, angle=30), photo)


def test_blur_kernel_is_normalised_and_grows_with_degree(photo):
    lengths = []
    for degree in (0.2, 0.5, 1.0):
        kernel = motion_blur_kernel(1 + degree * 0.1 * 64, 30.0)
        assert kernel.sum() == pytest.approx(1.0, abs=1e-5) and (kernel >= 0).all()
        lengths.append((kernel > 1e-3).sum())
    assert lengths[0] < lengths[1] < lengths[2]
    flat = np.full((32, 32, 3), 0.4, np.float32)
    assert np.allclose(motion_blur(flat, 1.0, angle=17), 0.4, atol=1e-6)


def test_blur_follows_its_angle():
    """A horizontal blur smears a vertical line sideways and leaves a horizontal line intact."""
    vertical = np.zeros((33, 33), np.float32)
    vertical[:, 16] = 1.0
    blurred = motion_blur(vertical, 1.0, angle=0.0)
    assert blurred[16, 14] > 0.05 and blurred[16, 16] < 0.5
    assert np.allclose(motion_blur(vertical.T.copy(), 1.0, angle=0.0)[2:-2], vertical.T[2:-2], atol=1e-5)


# --- film grain ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0.3, 0.6])
def test_grain_preserves_the_mean_in_expectation(value):
    grey = np.full((48, 48), value, np.float32)
    out = film_grain(grey, 0.05, n_samples=200, seed=1)
    assert abs(out.mean() - value) < 0.03
    assert out.std() > 0.005 and out.min() >= 0 and out.max() <= 1


def test_grain_is_seeded():
    grey = np.full((16, 16, 3), 0.5, np.float32)
    a, b = film_grain(grey, 0.05, n_samples=64, seed=3), film_grain(grey, 0.05, n_samples=64, seed=3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, film_grain(grey, 0.05, n_samples=64, seed=4))


@pytest.mark.parametrize("radius,std,zoom", [(0.05, 0.0, 1.0), (0.01, 0.0, 1.0), (0.3, 0.1, 1.0), (0.1, 0.0, 1.5)])
def test_fast_renderer_equals_reference_port(radius, std, zoom):
    image = np.random.default_rng(0).random((5, 6, 3)).astype(np.float32)
    fast = film_grain(image, radius, radius_std=std, n_samples=48, zoom=zoom, seed=2)
    slow = film_grain_reference(image, radius, radius_std=std, n_samples=48, zoom=zoom, seed=2)
    assert fast.shape == slow.shape == (round(5 * zoom), round(6 * zoom), 3)
    assert np.array_equal(fast, slow)


def test_grain_is_independent_of_tiling():
    """Counter-based randomness: rendering in chunks changes nothing."""
    image = np.random.default_rng(1).random((12, 12)).astype(np.float32)
    whole = film_grain(image, 0.05, n_samples=64)
    chunked = film_grain(image, 0.05, n_samples=64, max_points_per_chunk=500)
    assert np.array_equal(whole, chunked)


def test_larger_grains_are_coarser():
    grey = np.full((48, 48), 0.5, np.float32)

    def lag1_correlation(x):
        x = x - x.mean()
        return (x[:, 1:] * x[:, :-1]).mean() / (x * x).mean()

    fine = film_grain(grey, 0.025, n_samples=200, filter_sigma=0.4)
    coarse = film_grain(grey, 0.5, n_samples=200, filter_sigma=0.4)
    assert lag1_correlation(coarse) > lag1_correlation(fine) + 0.1


# --- colour transfer ----------------------------------------------------------------------------
def test_reinhard_matches_reference_statistics_in_lab():
    source = (data.chelsea()[::6, ::6] / 255.0 * 0.6 + 0.2).astype(np.float32)
    reference = (data.coffee()[::6, ::6] / 255.0 * 0.6 + 0.2).astype(np.float32)
    out = reinhard_color_transfer(source, reference)
    lab_out, lab_ref = rgb_to_lab(out).reshape(-1, 3), rgb_to_lab(reference).reshape(-1, 3)
    assert np.allclose(lab_out.mean(0), lab_ref.mean(0), atol=0.02)
    assert np.allclose(lab_out.std(0), lab_ref.std(0), rtol=0.1, atol=0.01)
    assert np.allclose(reinhard_color_transfer(source, source), source, atol=1e-4)


# --- free-form masks ----------------------------------------------------------------------------
def test_free_form_masks_respect_coverage_and_seed():
    for seed in range(5):
        mask = free_form_mask(128, 96, seed=seed, min_coverage=0.1, max_coverage=0.4)
        assert mask.dtype == bool and mask.shape == (128, 96)
        assert 0.1 <= mask.mean() <= 0.4
        assert np.array_equal(mask, free_form_mask(128, 96, seed=seed, min_coverage=0.1, max_coverage=0.4))
    assert not np.array_equal(free_form_mask(64, 64, seed=0), free_form_mask(64, 64, seed=1))


def test_inpainting_mask_zeroes_only_the_holes(photo):
    mask = free_form_mask(64, 64, seed=2)
    out = apply_inpainting_mask(photo, mask)
    assert (out[mask] == 0).all() and np.array_equal(out[~mask], photo[~mask])


# --- sharpening ---------------------------------------------------------------------------------
def test_threshold_suppresses_low_contrast_sharpening():
    rng = np.random.default_rng(0)
    texture = (0.5 + 0.01 * rng.standard_normal((32, 32, 3))).astype(np.float32)
    assert np.array_equal(unsharp_mask(texture, 2.0, threshold=0.1), texture)
    assert not np.allclose(unsharp_mask(texture, 2.0, threshold=0.0), texture, atol=1e-3)


def test_sharpening_raises_edge_contrast():
    edge = np.zeros((16, 16), np.float32) + 0.3
    edge[:, 8:] = 0.7
    out = unsharp_mask(edge, 2.0, threshold=0.01)
    assert out[8, 7] < 0.3 and out[8, 8] > 0.7  # overshoot on both sides of the step


# --- the recipe ---------------------------------------------------------------------------------
def test_recipe_applies_operators_in_the_documented_order(photo):
    reference = (data.coffee()[::8, ::8] / 255.0).astype(np.float32)
    mask = free_form_mask(64, 64, seed=0)
    recipe = EffectsRecipe(blur=0.5, blur_angle=10, grain=0.05, reference=reference, mask=mask,
                           sharpen=(2.0, 0.02), seed=5)
    expected = motion_blur(photo, 0.5, angle=10, seed=5)
    expected = reinhard_color_transfer(expected, reference)
    expected = unsharp_mask(expected, 2.0, 0.02)
    expected = film_grain(expected, 0.05, seed=5)
    expected = apply_inpainting_mask(expected, mask)
    assert np.array_equal(apply_effects(photo, recipe), expected)
    assert np.array_equal(apply_effects(photo, EffectsRecipe()), photo)
