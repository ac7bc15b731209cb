"""Expected PromQL results computed from two parsed expositions (before and after traffic), with checkers."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tests.support.expo import Samples
from tests.support.prometheus import Sample

Key = frozenset[tuple[str, str]]
Result = dict[Key, float]
Checker = Callable[[Result], None]

#: Labels Prometheus attaches to every scraped series; expectations ignore them unless grouped by.
TARGET_LABELS = ("instance", "job")


def key(**labels: str) -> Key:
    return frozenset(labels.items())


def as_result(samples: list[Sample], keep_target_labels: bool = False) -> Result:
    out: Result = {}
    for s in samples:
        labels = {k: v for k, v in s.labels.items()
                  if k != "__name__" and (keep_target_labels or k not in TARGET_LABELS)}
        k = frozenset(labels.items())
        assert k not in out, f"two series with labels {dict(k)}"
        out[k] = s.value
    return out


def series(samples: Samples, name: str) -> dict[Key, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def group(values: dict[Key, float], by: Iterable[str]) -> Result:
    by = tuple(by)
    out: Result = {}
    for labels, v in values.items():
        d = dict(labels)
        k = frozenset((b, d[b]) for b in by if b in d)
        out[k] = out.get(k, 0.0) + v
    return out


@dataclass
class Snapshots:
    """The aggregator's exposition before (``a``) and after (``b``) the measured traffic."""

    a: Samples
    b: Samples

    def gauge(self, name: str, by: Iterable[str] = ()) -> Result:
        return group(series(self.b, name), by)

    def delta(self, name: str, by: Iterable[str] = (), where: Callable[[dict[str, str]], bool] = lambda _: True,
              ) -> Result:
        """Increase of a counter between the snapshots, grouped; every moved series must exist in ``a``."""
        before, after = series(self.a, name), series(self.b, name)
        moved: dict[Key, float] = {}
        for labels, v in after.items():
            if not where(dict(labels)):
                continue
            assert labels in before or v == 0, (
                f"{name}{dict(labels)} (value {v}) appeared during the measured traffic: the warm-up must "
                "create every series so Prometheus has a baseline for it")
            moved[labels] = v - before.get(labels, 0.0)
        return group(moved, by)

    def bucket_increases(self, name: str, by: Iterable[str] = ()) -> dict[Key, list[tuple[float, float]]]:
        """Per group, the sorted ``(le, increase)`` of a histogram's cumulative buckets."""
        groups: dict[Key, list[tuple[float, float]]] = {}
        for labels, v in self.delta(name + "_bucket", (*by, "le")).items():
            d = dict(labels)
            le = float(d.pop("le"))
            groups.setdefault(frozenset(d.items()), []).append((le, v))
        return {k: sorted(bs) for k, bs in groups.items()}

    def quantile(self, name: str, q: float, by: Iterable[str] = ()) -> Result:
        """``histogram_quantile(q, sum by (by, le) (rate(name_bucket[w])))`` from the bucket increases."""
        return {k: histogram_quantile(q, bs) for k, bs in self.bucket_increases(name, by).items()}

    def quantile_range(self, name: str, q: float, by: Iterable[str] = (), slack: float = 1.3,
                       ) -> dict[Key, tuple[float, float]]:
        """Where ``histogram_quantile(q, sum by (by, le) (rate(name_bucket[w])))`` can land.

        Prometheus extrapolates every ``le`` series on its own (by up to about one scrape interval at
        each edge of the window, less near a counter's zero point), so each cumulative bucket's rate
        is its true increase times a factor in [1, ``slack``], not the same factor for all buckets.
        The lowest quantile inflates the finite buckets and not +Inf, the highest inflates only +Inf.
        """
        out: dict[Key, tuple[float, float]] = {}
        for k, bs in self.bucket_increases(name, by).items():
            *finite, (inf, total) = bs
            low = _monotonic([(b, c * slack) for b, c in finite] + [(inf, total)])
            high = _monotonic([*finite, (inf, total * slack)])
            out[k] = (histogram_quantile(q, low), histogram_quantile(q, high))
        return out


def _monotonic(buckets: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Prometheus' fix for buckets whose rates are not monotonic: each is at least the one below it."""
    out, highest = [], 0.0
    for bound, count in buckets:
        highest = max(highest, count)
        out.append((bound, highest))
    return out


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' interpolation over cumulative ``(upper bound, count)`` buckets ending with +Inf."""
    total = buckets[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


# ---- checkers ----------------------------------------------------------------------------------------


def _same_keys(got: Result, want: Result) -> None:
    assert set(got) == set(want), f"series differ: got {sorted(map(dict, got), key=str)}, " \
                                  f"want {sorted(map(dict, want), key=str)}"


def exact(want: Result) -> Checker:
    def check(got: Result) -> None:
        _same_keys(got, want)
        for k, v in want.items():
            assert got[k] == v or (math.isnan(v) and math.isnan(got[k])), f"{dict(k)}: got {got[k]}, want {v}"
    return check


def extrapolated(want: Result, divisor: float = 1.0, factor: float = 1.0, slack: float = 1.3) -> Checker:
    """``increase``/``rate`` of a counter whose true increase is ``want``: Prometheus extrapolates the
    sampled increase to the edges of the window by at most about one scrape interval on each side, so
    the result lies between the true value and ``slack`` times it."""
    def check(got: Result) -> None:
        _same_keys(got, want)
        for k, v in want.items():
            lo, hi = v * factor / divisor, v * factor * slack / divisor
            assert lo - 1e-9 <= got[k] <= hi + 1e-9, f"{dict(k)}: got {got[k]}, want {lo}..{hi}"
    return check


def quantiles(want: dict[Key, tuple[float, float]]) -> Checker:
    """Quantiles within the range that per-bucket extrapolation allows (``Snapshots.quantile_range``)."""
    def check(got: Result) -> None:
        assert set(got) == set(want), f"series differ: got {sorted(map(dict, got), key=str)}, " \
                                      f"want {sorted(map(dict, want), key=str)}"
        for k, (lo, hi) in want.items():
            if math.isnan(lo):
                assert math.isnan(got[k]), f"{dict(k)}: got {got[k]}, want NaN (no observations)"
                continue
            assert lo - 1e-9 <= got[k] <= hi + 1e-9, f"{dict(k)}: got {got[k]}, want {lo}..{hi}"
    return check


def empty() -> Checker:
    def check(got: Result) -> None:
        assert got == {}, f"expected no series, got {got}"
    return check


def between(k: Key, lo: float, hi: float) -> Checker:
    def check(got: Result) -> None:
        assert set(got) == {k}, got
        assert lo <= got[k] <= hi, f"{dict(k)}: {got[k]} not in {lo}..{hi}"
    return check


def where(result: Result, predicate: Callable[[float], bool]) -> Result:
    return {k: v for k, v in result.items() if not math.isnan(v) and predicate(v)}
