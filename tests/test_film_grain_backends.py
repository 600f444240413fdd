"""The compiled film-grain renderer draws the numpy renderer's grains: same image, same seed."""

import importlib

import numpy as np
import pytest

pytest.importorskip("numba")

from retouch.effects.film_grain import GrainModel, film_grain  # noqa: E402

# retouch.effects re-exports the function under the module's name, so fetch the module itself.
module = importlib.import_module("retouch.effects.film_grain")


def both(image, radius, **kwargs):
    return (film_grain(image, radius, backend="numpy", **kwargs),
            film_grain(image, radius, backend="numba", **kwargs))


def image(shape, seed):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


# σ = 0.1 with N = 48 and σ = 0.05, 0.025 with N = 800 take the dense loop (G² ≤ N); σ = 0.01 and
# 0.05 with N = 48 the sparse one; σ = 0.3 ± 0.1 draws log-normal radii through scipy's ndtri.
@pytest.mark.parametrize("radius,std,n_samples", [(0.1, 0.0, 48), (0.05, 0.0, 48), (0.01, 0.0, 48),
                                                  (0.3, 0.1, 48), (0.1, 0.03, 64)])
@pytest.mark.parametrize("seed", [0, 7, 2**31 - 1])
@pytest.mark.parametrize("shape", [(7, 9, 3), (8, 6)])
def test_backends_give_the_same_image(shape, seed, radius, std, n_samples):
    numpy_out, numba_out = both(image(shape, seed), radius, radius_std=std, n_samples=n_samples, seed=seed)
    assert numba_out.shape == numpy_out.shape == shape and numba_out.dtype == np.float32
    np.testing.assert_allclose(numba_out, numpy_out, rtol=0, atol=1e-6)


@pytest.mark.parametrize("radius", [0.05, 0.025, 0.075])
def test_backends_agree_at_the_papers_sample_count(radius):
    """N = 800 (Newson et al.'s default): the dense loop over a ring of bucket rows."""
    numpy_out, numba_out = both(image((4, 5, 3), 3), radius, n_samples=800, seed=11)
    np.testing.assert_allclose(numba_out, numpy_out, rtol=0, atol=1e-6)


def test_backends_agree_on_bright_images_with_many_grains_per_bucket():
    """Near white, a bucket holds ~3 grains: the dense loop's grain table outgrows its first size, and some
    Poisson draws land past the CDF terms a row tabulates, where the whole draw is made again."""
    bright = np.clip(0.9 + 0.05 * image((6, 7, 3), 8), 0, 1).astype(np.float32)
    model = GrainModel(0.05)
    mean = model.intensity(np.float64(bright.max() / (bright.max() + module.EPSILON))) * model.bucket**2
    assert mean > 2.5  # the first table holds 2 grains a bucket, and P(N ≥ 8) ≈ 1 % of ~4,000 buckets per row band
    numpy_out, numba_out = both(bright, 0.05, n_samples=800, seed=13)
    np.testing.assert_allclose(numba_out, numpy_out, rtol=0, atol=1e-6)


@pytest.mark.parametrize("zoom", [0.5, 1.5, 2.0])
def test_backends_agree_when_zoomed(zoom):
    for radius, n_samples in ((0.1, 48), (0.05, 400)):
        numpy_out, numba_out = both(image((6, 5, 3), 4), radius, n_samples=n_samples, zoom=zoom, seed=5,
                                    filter_sigma=0.6)
        assert numba_out.shape == (round(6 * zoom), round(5 * zoom), 3)
        np.testing.assert_allclose(numba_out, numpy_out, rtol=0, atol=1e-6)


def test_constant_and_black_images():
    """u = 0 gives no grain at all; a flat image's grains reach past its edges (negative buckets)."""
    black = np.zeros((5, 5, 3), np.float32)
    assert not film_grain(black, 0.05, n_samples=64, backend="numba").any()
    numpy_out, numba_out = both(np.full((5, 5), 0.7, np.float32), 0.1, n_samples=64, seed=2)
    np.testing.assert_allclose(numba_out, numpy_out, rtol=0, atol=1e-6)


def test_strips_do_not_change_the_image(monkeypatch):
    """Counter-based grains: any split of the columns into jobs gives the same image."""
    picture = image((10, 21, 3), 8)
    for radius, n_samples in ((0.1, 48), (0.01, 32)):
        whole = film_grain(picture, radius, n_samples=n_samples, seed=1, backend="numba")
        monkeypatch.setattr(module, "_STRIP", 8)
        assert np.array_equal(whole, film_grain(picture, radius, n_samples=n_samples, seed=1, backend="numba"))
        monkeypatch.undo()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_progress_reaches_the_total(backend):
    calls = []
    film_grain(image((6, 70, 3), 1), 0.1, n_samples=16, backend=backend, progress=lambda *a: calls.append(a))
    done = [d for d, _ in calls]
    assert calls and done == sorted(done) and calls[-1] == (3 * 6 * 70, 3 * 6 * 70)
    assert {total for _, total in calls} == {3 * 6 * 70}


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        film_grain(image((4, 4), 0), 0.05, n_samples=4, backend="cuda")


def test_default_backend_is_numba_when_installed():
    assert module.default_backend() == "numba"
    picture = image((5, 4, 3), 6)
    assert np.array_equal(film_grain(picture, 0.1, n_samples=32), film_grain(picture, 0.1, n_samples=32,
                                                                            backend="numba"))


def test_bucket_span_is_at_most_two():
    """The compiled loops size their buffers from GrainModel.span; b ≥ 2·r_max keeps it ≤ 2 below r = 0.5."""
    for radius, std in ((0.01, 0.0), (0.05, 0.0), (0.25, 0.0), (0.1, 0.05)):
        assert GrainModel(radius, std).span <= 2


def test_apply_effects_reports_grain_progress():
    """The CLI's bar is fed through apply_effects; effects without grain report nothing."""
    from retouch.effects import EffectsRecipe, apply_effects

    calls = []
    picture = image((6, 7, 3), 2)
    out = apply_effects(picture, EffectsRecipe(grain=0.1, blur=0.3, seed=4), grain_samples=32,
                        progress=lambda *a: calls.append(a))
    assert calls[-1] == (3 * 6 * 7, 3 * 6 * 7) and out.shape == picture.shape
    calls.clear()
    apply_effects(picture, EffectsRecipe(blur=0.3), progress=lambda *a: calls.append(a))
    assert not calls
