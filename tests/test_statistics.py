"""Paired bootstrap intervals on synthetic cases whose answer is known."""
import numpy as np
import pytest

from ais.evaluation.statistics import mean_of_means_interval, mean_interval, paired_difference, verdict


def test_paired_difference_finds_a_known_shift_that_unpaired_noise_would_hide():
    rng = np.random.default_rng(0)
    base = rng.normal(0.7, 0.2, size=200)           # large between-prompt spread
    shifted = base + 0.02 + rng.normal(0, 0.005, 200)  # a small, consistent per-prompt gain
    diff = paired_difference(shifted, base, seed=1)
    assert diff.low < 0.02 < diff.high and diff.excludes_zero and diff.high - diff.low < 0.005
    assert "measurably higher" in verdict("shifted minus base", diff)


def test_no_difference_gives_an_interval_around_zero():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.5, 0.1, 300), rng.normal(0.5, 0.1, 300)
    diff = paired_difference(a, b, seed=3)
    assert diff.low < 0 < diff.high and not diff.excludes_zero
    assert "no measurable difference" in verdict("a minus b", diff)


def test_intervals_are_seeded_and_cover_the_mean():
    values = np.random.default_rng(4).binomial(1, 0.3, 400).astype(float)
    first, again = mean_interval(values, seed=5), mean_interval(values, seed=5)
    assert first == again and first.low < values.mean() < first.high
    half_width = (first.high - first.low) / 2
    assert abs(half_width - 1.96 * values.std() / np.sqrt(len(values))) < 0.01  # the normal approximation


def test_identical_values_give_a_zero_width_interval_and_bad_input_is_refused():
    same = paired_difference([0.5, 0.7, 0.9], [0.5, 0.7, 0.9], seed=0)
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="one value per prompt"):
        paired_difference([1, 2, 3], [1, 2], seed=0)
    with pytest.raises(ValueError, match="non-empty"):
        mean_interval([], seed=0)


def test_mean_of_means_weights_each_sample_equally_and_covers_it():
    rng = np.random.default_rng(0)
    easy, hard = (rng.random(400) < 0.6).astype(float), (rng.random(100) < 0.3).astype(float)
    interval = mean_of_means_interval([easy, hard], seed=0)
    assert interval.mean == pytest.approx((easy.mean() + hard.mean()) / 2) and interval.n == 500
    assert interval.low < interval.mean < interval.high and interval.high - interval.low < 0.15


def test_pooled_ratio_of_rates_and_its_interval():
    from ais.evaluation.statistics import ratio_of_rates_interval

    tokens = [32, 32, 16, 32]
    fast, slow = [1.0, 0.5, 0.4, 0.8], [1.2, 1.0, 0.5, 1.0]
    out = ratio_of_rates_interval(tokens, fast, tokens, slow, seed=0)
    assert out.mean == pytest.approx((112 / 2.7) / (112 / 3.7)) and out.low <= out.mean <= out.high and out.n == 4
    same = ratio_of_rates_interval(tokens, fast, tokens, fast, seed=0)
    assert same.mean == same.low == same.high == pytest.approx(1.0)
