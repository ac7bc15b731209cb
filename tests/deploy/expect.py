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
        labels = {
            k: v
            for k, v in s.labels.items()
            if k != "__name__" and (keep_target_labels or k not in TARGET_LABELS)
        }
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

    def series_delta(self, name: str) -> Result:
        """Increase of every series of a counter between the snapshots; each moved one must exist in ``a``."""
        before, after = series(self.a, name), series(self.b, name)
        for labels, v in after.items():
            assert labels in before or v == 0, (
                f"{name}{dict(labels)} (value {v}) appeared during the measured traffic: the warm-up must "
                "create every series so Prometheus has a baseline for it"
            )
        return {labels: v - before.get(labels, 0.0) for labels, v in after.items()}

    def delta(
        self,
        name: str,
        by: Iterable[str] = (),
        where: Callable[[dict[str, str]], bool] = lambda _: True,
    ) -> Result:
        """Increase of a counter between the snapshots, grouped."""
        return group({k: v for k, v in self.series_delta(name).items() if where(dict(k))}, by)

    def bucket_increases(self, name: str, by: Iterable[str] = ()) -> dict[Key, list[tuple[float, float]]]:
        """Per group, the sorted ``(le, increase)`` of a histogram's cumulative buckets."""
        return buckets(self.delta(name + "_bucket", (*by, "le")))

    def quantile(self, name: str, q: float, by: Iterable[str] = ()) -> Result:
        """The quantile of the observations made between the snapshots (no extrapolation)."""
        return {k: histogram_quantile(q, bs) for k, bs in self.bucket_increases(name, by).items()}

    def rate_quantile(
        self, name: str, q: float, by: Iterable[str], rates: Result, window: float, slack: float
    ) -> Result:
        """``histogram_quantile(q, sum by (by, le) (rate(name_bucket[window])))`` from Prometheus' own
        per-series ``rates`` at the same instant, after checking each against the traffic.

        Prometheus extrapolates every ``le`` series on its own (by a different factor in [1, ``slack``],
        less near a counter's zero point), so the quantile of the rates is not the quantile of the
        observations; the rates themselves are what the traffic pins down.
        """
        increases = self.series_delta(name + "_bucket")
        _same_keys(rates, increases)
        for k, inc in increases.items():
            lo, hi = inc / window, inc * slack / window
            assert lo - 1e-9 <= rates[k] <= hi + 1e-9, (
                f"rate({name}_bucket{dict(k)}) = {rates[k]}, but the series grew by {inc} in the window: "
                f"want {lo}..{hi}"
            )
        grouped = buckets(group(rates, (*by, "le")))
        return {k: histogram_quantile(q, _monotonic(bs)) for k, bs in grouped.items()}


def buckets(values: Result) -> dict[Key, list[tuple[float, float]]]:
    """``le``-labelled values regrouped as sorted ``(upper bound, value)`` lists per remaining label set."""
    out: dict[Key, list[tuple[float, float]]] = {}
    for labels, v in values.items():
        d = dict(labels)
        le = float(d.pop("le"))
        out.setdefault(frozenset(d.items()), []).append((le, v))
    return {k: sorted(bs) for k, bs in out.items()}


def extrapolation_limit(timestamps: list[float]) -> float:
    """The largest factor by which ``rate``/``increase`` can stretch the increase of a series whose samples
    in the window were taken at ``timestamps``: promql's extrapolatedRate extends the sampled interval
    towards each edge of the window by at most 1.1 average sample intervals."""
    if len(timestamps) < 2:
        return 1.0  # no rate at all for a series with a single sample
    sampled = timestamps[-1] - timestamps[0]
    return (sampled + 2.2 * sampled / (len(timestamps) - 1)) / sampled


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
    assert set(got) == set(want), (
        f"series differ: got {sorted(map(dict, got), key=str)}, want {sorted(map(dict, want), key=str)}"
    )


def exact(want: Result) -> Checker:
    def check(got: Result) -> None:
        _same_keys(got, want)
        for k, v in want.items():
            assert got[k] == v or (math.isnan(v) and math.isnan(got[k])), f"{dict(k)}: got {got[k]}, want {v}"

    return check


def extrapolated(want: Result, divisor: float, factor: float, slack: float) -> Checker:
    """``increase``/``rate`` of a counter whose true increase is ``want``: Prometheus extrapolates the
    sampled increase to the edges of the window by at most about one scrape interval on each side, so
    the result lies between the true value and ``slack`` times it."""

    def check(got: Result) -> None:
        _same_keys(got, want)
        for k, v in want.items():
            lo, hi = v * factor / divisor, v * factor * slack / divisor
            assert lo - 1e-9 <= got[k] <= hi + 1e-9, f"{dict(k)}: got {got[k]}, want {lo}..{hi}"

    return check


def computed(want: Callable[[], Result]) -> Checker:
    """Equal (to float rounding) to ``want()``, computed when checked so its own assertions are reported
    with the query."""

    def check(got: Result) -> None:
        expected = want()
        _same_keys(got, expected)
        for k, v in expected.items():
            if math.isnan(v):
                assert math.isnan(got[k]), f"{dict(k)}: got {got[k]}, want NaN (no observations)"
                continue
            assert math.isclose(got[k], v, rel_tol=1e-9, abs_tol=1e-12), f"{dict(k)}: got {got[k]}, want {v}"

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
