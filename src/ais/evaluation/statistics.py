"""Uncertainty for every comparison the report makes: seeded bootstrap intervals over prompts (scipy).

A difference between two plans is paired: both were measured on the same prompts, so the interval
resamples prompts and takes the mean of the per-prompt differences. An interval that contains zero
means "no measurable difference", never a win."""
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 9999


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% bootstrap interval over `n` prompts (or questions)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self, prefix: str) -> dict:
        """Flat metric keys, e.g. prefix `routed_minus_global_top1` -> ..., ..._ci_low, ..._ci_high."""
        return {prefix: self.mean, f"{prefix}_ci_low": self.low, f"{prefix}_ci_high": self.high, f"{prefix}_n": self.n}

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def mean_interval(values, seed: int) -> Interval:
    """The mean of per-prompt values and its 95% BCa bootstrap interval (percentile where BCa is undefined)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"need a non-empty 1-D array of per-prompt values, got shape {values.shape}")
    mean = float(values.mean())
    if len(values) < 2 or np.all(values == values[0]):  # no spread: the bootstrap has nothing to resample
        return Interval(mean, mean, mean, len(values))
    result = stats.bootstrap((values,), np.mean, confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES,
                             method="BCa", random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):
        result = stats.bootstrap((values,), np.mean, confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES,
                                 method="percentile", random_state=np.random.default_rng(seed))
        low, high = result.confidence_interval
    return Interval(mean, float(low), float(high), len(values))


def paired_difference(a, b, seed: int) -> Interval:
    """mean(a - b) over prompts measured under both conditions, with its paired bootstrap interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one value per prompt in each condition, got {a.shape} and {b.shape}")
    return mean_interval(a - b, seed)


def ratio_of_rates_interval(tokens_a, seconds_a, tokens_b, seconds_b, seed: int) -> Interval:
    """Pooled speed ratio (sum(tokens_a)/sum(seconds_a)) / (sum(tokens_b)/sum(seconds_b)) over prompts
    measured under both conditions, with a 95% paired percentile bootstrap interval over prompts."""
    arrays = [np.asarray(x, dtype=np.float64) for x in (tokens_a, seconds_a, tokens_b, seconds_b)]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1 or len(arrays[0]) == 0:
        raise ValueError("need one value per prompt in each of the four arrays")

    def ratio(ta, sa, tb, sb, axis=-1):
        return (ta.sum(axis) / sa.sum(axis)) / (tb.sum(axis) / sb.sum(axis))

    value = float(ratio(*arrays))
    if len(arrays[0]) < 2:
        return Interval(value, value, value, len(arrays[0]))
    result = stats.bootstrap(arrays, ratio, paired=True, vectorized=True, confidence_level=CONFIDENCE,
                             n_resamples=N_RESAMPLES, method="percentile", random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return Interval(value, float(low), float(high), len(arrays[0]))


def mean_of_means_interval(samples, seed: int) -> Interval:
    """The unweighted mean of several independent samples' means (e.g. the ARC average of ARC-Easy
    and ARC-Challenge), with a 95% percentile bootstrap interval resampling each sample on its own."""
    samples = [np.asarray(s, dtype=np.float64) for s in samples]
    if not samples or any(s.ndim != 1 or len(s) < 2 for s in samples):
        raise ValueError("need at least one sample, each a 1-D array of two or more values")
    mean = float(np.mean([s.mean() for s in samples]))
    result = stats.bootstrap(samples, lambda *xs, axis=-1: np.mean([x.mean(axis=axis) for x in xs], axis=0),
                             confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES, method="percentile",
                             paired=False, random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return Interval(mean, float(low), float(high), sum(len(s) for s in samples))


def verdict(name: str, interval: Interval, digits: int = 3) -> str:
    """One sentence for the report: what the interval does and does not support."""
    if not interval.excludes_zero:
        return f"{name}: {interval.text(digits)}, no measurable difference (the 95% interval contains 0)"
    direction = "higher" if interval.mean > 0 else "lower"
    return f"{name}: {interval.text(digits)}, measurably {direction} (the 95% interval excludes 0)"


def rounded(values: dict, digits: int = 4) -> dict:
    """Every float of a flat metrics dict rounded (what the metrics files hold)."""
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}
