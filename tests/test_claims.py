"""retouch.metrics.claims on synthetic scenes whose answer is known."""

import numpy as np
import pytest

from retouch.metrics.claims import (
    FAILS,
    HOLDS,
    UNCLEAR,
    bootstrap_interval,
    bootstrap_statistic,
    check_claim,
    holm,
    mcnemar_test,
    paired_bootstrap_test,
    wilcoxon_test,
)


def scenes(n=100, seed=0):
    """A per-scene difficulty shared by both systems (what makes the test paired) and fresh noise."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.5, 0.2, n), rng


def test_a_clear_improvement_holds_and_its_reverse_does_not():
    base, rng = scenes()
    worse = base + 0.05 + rng.normal(0, 0.02, len(base))  # B: higher error on every scene, by about 0.05
    result = check_claim(base, worse, "lower")  # "A has lower error than B"
    assert result.verdict == HOLDS and result.p_value < 1e-6
    assert result.test.difference.high < 0  # the interval of A − B excludes 0 on the claimed side
    reversed_claim = check_claim(worse, base, "lower")
    assert reversed_claim.verdict == FAILS and reversed_claim.p_value < 1e-6
    assert check_claim(base, worse, "higher").verdict == FAILS


def test_identical_noise_cannot_be_told_apart():
    rejected = 0
    for seed in range(40):
        base, rng = scenes(seed=seed)
        a = base + rng.normal(0, 0.05, len(base))
        b = base + rng.normal(0, 0.05, len(base))
        result = check_claim(a, b, "higher")
        assert result.verdict in (UNCLEAR, HOLDS, FAILS)
        rejected += result.verdict != UNCLEAR
    # No true difference: about α = 5 % of the 40 comparisons may come out either way, not many more.
    assert rejected <= 6


def test_the_pairing_is_what_finds_a_small_shift_under_a_large_scene_spread():
    base, rng = scenes(seed=3)
    a = base * 10  # scenes differ by far more than the systems do
    b = a + 0.01 + rng.normal(0, 0.005, len(a))
    assert check_claim(a, b, "lower").verdict == HOLDS
    # Without the pairing (B's scenes shuffled), the same shift is lost in the spread.
    assert check_claim(a, rng.permutation(b), "lower").verdict == UNCLEAR


def test_a_zero_difference_is_unclear_with_p_one():
    values = np.linspace(0, 1, 50)
    result = check_claim(values, values.copy(), "higher")
    assert result.verdict == UNCLEAR and result.p_value == 1.0


def test_nan_scenes_are_dropped_from_both_sides():
    a = np.array([1.0, 2.0, np.nan, 4.0, 5.0] * 10)
    b = a - 1.0
    b[0] = np.nan
    test = wilcoxon_test(a, b)
    assert test.n == 50 - 10 - 1  # ten NaN in A, one more in B
    assert test.difference.estimate == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same scenes"):
        wilcoxon_test(a, b[:-1])


def test_mcnemar_counts_only_the_scenes_where_the_systems_disagree():
    # 30 scenes both right, 20 both wrong, 14 only A right, 2 only B right.
    a = np.array([1] * 30 + [0] * 20 + [1] * 14 + [0] * 2)
    b = np.array([1] * 30 + [0] * 20 + [0] * 14 + [1] * 2)
    test = mcnemar_test(a, b)
    from scipy.stats import binom

    assert test.p_value == pytest.approx(2 * binom.sf(13, 16, 0.5))  # P(X ≥ 14 | 16, ½), two-sided
    assert check_claim(a, b, "higher", "binary").verdict == HOLDS
    # Agreement everywhere: no discordant scene, no evidence either way.
    assert mcnemar_test(a, a).p_value == 1.0
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_test(a * 0.5, b)


def test_the_interval_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(7)
    covered_normal = covered_success = 0
    trials = 200
    for trial in range(trials):
        sample = rng.exponential(2.0, 60)  # skewed, true mean 2
        interval = bootstrap_interval(sample, resamples=2000, seed=trial)
        covered_normal += interval.low <= 2.0 <= interval.high
        successes = rng.random(100) < 0.3  # a success rate, true 0.3
        interval = bootstrap_interval(successes, resamples=2000, seed=trial)
        covered_success += interval.low <= 0.3 <= interval.high
    # 95 % nominal; the binomial spread over 200 trials is ±3 %, percentile intervals run a little short.
    assert 0.88 <= covered_normal / trials <= 0.99
    assert 0.88 <= covered_success / trials <= 0.99


def test_intervals_are_seeded_and_narrow_with_more_scenes():
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, 400)
    assert bootstrap_interval(values, seed=1) == bootstrap_interval(values, seed=1)
    wide, narrow = bootstrap_interval(values[:25]), bootstrap_interval(values)
    assert narrow.high - narrow.low < wide.high - wide.low
    assert bootstrap_interval([np.nan, 1.0, 3.0]).estimate == 2.0


def test_paired_bootstrap_of_a_set_statistic():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 1.0, 80), rng.normal(0.0, 1.0, 80)
    # The variance of a set is not a mean over scenes; A's scenes are spread twice as wide.
    wide = a * 2
    test = paired_bootstrap_test(lambda idx: wide[idx].var(), lambda idx: b[idx].var(), 80, resamples=500)
    assert test.leans == 1 and test.p_value < 0.01
    interval = bootstrap_statistic(lambda idx: wide[idx].var(), 80, resamples=500)
    assert interval.low < interval.estimate < interval.high
    same = paired_bootstrap_test(lambda idx: b[idx].var(), lambda idx: b[idx].var(), 80, resamples=200)
    assert same.p_value == 1.0


def test_holm_adjusts_step_down_and_keeps_order():
    adjusted = holm([0.01, 0.04, 0.03, 0.5])
    assert adjusted.tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])
