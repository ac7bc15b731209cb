"""The Prometheus text and OpenMetrics formats written straight from the fold state.

prometheus_client builds sample objects per scrape, validates and escapes every label name of every
sample, and sorts labels per sample. Here each family's fixed parts (names, ``HELP``/``TYPE`` lines,
bucket bounds) are derived once from its :class:`~.metrics.MetricDef`, and each series' escaped label
string once per series (cached until the series is gone). Each series' rendered lines are kept too,
reused while the numbers captured for it are those they were written from: a scrape formats only the
series that changed since the previous one and joins the others' strings. The output
is byte for byte what prometheus_client writes for :class:`~.exposition.StateCollector` on the same
state (tests compare them), so both formats stay what the library's parser and ``promtool`` read.

A scrape is two steps, so that the consumer's lock is held only for the first:

1. :meth:`Renderer.capture` (under the consumer's lock): flat copies of the series tables, the live
   sources' gauge values. O(series) pointer copies, no formatting.
2. :meth:`Renderer.lines` (no lock): sort order, label strings and kept lines from the caches, then
   the text, in chunks (the kept lines are ~the size of the exposition; the chunks are what a scrape
   holds besides them).
"""

from __future__ import annotations

import re
import threading
from bisect import insort
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain, repeat
from operator import is_
from typing import Any

from prometheus_client.openmetrics.exposition import ALLOWUTF8, UNDERSCORES
from prometheus_client.utils import floatToGoString

from .exposition import combine
from .fold import Exemplar, ExemplarRow, LabelKey, State, merge_exemplars
from .metrics import METRICS, Kind, MetricDef, PartitionReading, Readings

#: Names every escaping scheme we render ourselves leaves unchanged (others go through the library).
_PLAIN_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
#: Escaping schemes (``escaping=`` in the scraper's Accept header) that leave plain names unchanged.
FAST_ESCAPINGS = frozenset({UNDERSCORES, ALLOWUTF8})
#: Series per chunk of text (a histogram series is ~1.4 KB of text).
CHUNK_SERIES = 512
#: A re-sort of a family's series order is cheaper than this many single insertions.
_INSERT_LIMIT = 256
#: Bucket counts below this are formatted from a table of strings ("12.0\n").
_SMALL = 8192
_SMALL_LINES = [f"{i}.0\n" for i in range(_SMALL)]
_INF = float("inf")
#: The ``rendered`` entries of a histogram's series that have exemplars (OpenMetrics).
_WITH_EXEMPLARS = "#exemplars"


def go_float(v: float) -> str:
    """``prometheus_client.utils.floatToGoString``, exactly, with the common cases first."""
    t = type(v)
    if t is int:
        if -(10**15) < v < 1_000_000:  # exact as a float, and Go's format writes no exponent
            return f"{v}.0"
    elif t is float and -_INF < v < 1_000_000.0:  # repr is Go's format below 1e6 (NaN fails the test)
        return repr(v)
    return str(floatToGoString(v))  # type: ignore[no-untyped-call]  # unannotated upstream


def escape_value(v: str) -> str:
    """A label value as both formats write it: backslash, newline and double quote escaped."""
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help_text(doc: str) -> str:
    return doc.replace("\\", "\\\\").replace("\n", "\\n")


def _help_openmetrics(doc: str) -> str:
    return escape_value(doc)


class Family:
    """What never changes about one metric family's rendering: names, header lines, bucket lines."""

    def __init__(self, m: MetricDef, prefix: str) -> None:
        self.m = m
        name = prefix + m.name
        if m.kind is Kind.COUNTER:
            # As CounterMetricFamily: the family is named without _total, its samples with it.
            base = name.removesuffix("_total")
            self.sample = base + "_total"
            text_name, om_name, type_ = self.sample, base, "counter"
        else:
            base = self.sample = name
            text_name = om_name = name
            type_ = str(m.kind)
        self.text_header = f"# HELP {text_name} {_help_text(m.help)}\n# TYPE {text_name} {type_}\n"
        self.om_header = f"# HELP {om_name} {_help_openmetrics(m.help)}\n# TYPE {om_name} {type_}\n"
        names = [base, self.sample, *m.labels]
        self.labels = m.labels
        #: Label positions in the order both formats write them (sorted by name).
        self.label_order = sorted(range(len(m.labels)), key=m.labels.__getitem__)
        if m.kind is Kind.HISTOGRAM:
            bounds = [repr(float(b)) for b in m.buckets or ()] + ["+Inf"]
            names += [base + "_bucket", base + "_count", base + "_sum", "le"]
            self.bucket_head = base + "_bucket{"
            self.les = [f'le="{b}"' for b in bounds]
            self.count_name = base + "_count"
            self.sum_name = base + "_sum"
            #: How many of the series' labels sort before ``le``.
            self.le_at = sum(1 for label in m.labels if label < "le")
            #: ``le`` sorts first and there are labels (every histogram of metrics.py but one): each line
            #: of a series is one of these heads, the series' label text, and the line's number.
            self.le_first = bool(m.labels) and self.le_at == 0
            self.heads = [f"{self.bucket_head}{le}," for le in self.les]
            self.heads += [self.count_name + "{", self.sum_name + "{"]
            #: Values per series in the state: the buckets, +Inf, the sum.
            self.width = len(bounds) + 1
        #: Every name is one that the escaping schemes in FAST_ESCAPINGS leave as it is.
        self.plain = all(_PLAIN_NAME.match(n) for n in names)

    def label_text(self, key: LabelKey) -> str:
        """``{a="x",b="y"}`` (empty without labels): the series' labels, sorted and escaped."""
        if not key:
            return ""
        return "{" + ",".join(f'{self.labels[i]}="{escape_value(key[i])}"' for i in self.label_order) + "}"

    def line_head(self, key: LabelKey) -> str:
        """``name{labels} ``: a counter or gauge series' line up to its value."""
        return f"{self.sample}{self.label_text(key)} "

    def histogram_text(self, key: LabelKey) -> str | tuple[str, str, str]:
        """A histogram series' label strings.

        When ``le`` sorts first: ``a="x",b="y"} ``, the part of every line of the series after its
        head (:attr:`heads`). Otherwise: the bucket lines' head up to ``le``, their tail after it, and
        the label text of ``_count`` and ``_sum``.
        """
        parts = [f'{self.labels[i]}="{escape_value(key[i])}"' for i in self.label_order]
        if self.le_first:
            return ",".join(parts) + "} "
        before, after = parts[: self.le_at], parts[self.le_at :]
        head = self.bucket_head + "".join(p + "," for p in before)
        tail = "".join("," + p for p in after) + "} "
        return head, tail, self.label_text(key)


@dataclass(slots=True)
class _Order:
    """A family's series in output order, their label strings and rendered lines; kept from one scrape
    to the next.

    ``keys`` is the series keys in the order the state's dict holds them (insertion order), ``order``
    their indices sorted by key, ``texts`` the label strings of ``keys``. Series are only ever added
    to a table, so most scrapes find the same keys, or the same keys followed by new ones.
    ``rendered[name]`` is, per series of ``keys``, what family ``name`` last wrote for it: an entry
    holding the values it was written from and the text (see :func:`_histogram_chunks`), or None.
    A series gone from ``keys`` loses its entries: they never outnumber the series.
    """

    keys: list[LabelKey] = field(default_factory=list)
    order: list[int] = field(default_factory=list)
    texts: list[Any] = field(default_factory=list)
    rendered: dict[str, list[Any]] = field(default_factory=dict)

    def update(
        self, keys: list[LabelKey], text: Callable[[LabelKey], Any], rendered: str
    ) -> tuple[list[int], list[Any], list[Any]]:
        """The output order, label strings and ``rendered`` entries for ``keys``; reuses what it can.

        The lists returned are never resized: when keys change, new lists replace them (a scrape still
        writing entries into the old ones loses those entries, nothing else)."""
        known = len(self.keys)
        if len(keys) >= known and keys[:known] == self.keys:  # identity comparison for the same keys
            new = keys[known:]
            if new:
                texts = self.texts + [text(k) for k in new]
                if len(new) <= _INSERT_LIMIT:
                    order = list(self.order)
                    for i in range(known, len(keys)):
                        insort(order, i, key=keys.__getitem__)
                else:
                    order = sorted(range(len(keys)), key=keys.__getitem__)
                self.keys, self.order, self.texts = list(keys), order, texts
                pad = [None] * len(new)
                self.rendered = {name: entries + pad for name, entries in self.rendered.items()}
        else:  # a new state (restored, merged partitions) or series removed: start again
            at = {k: n for n, k in enumerate(self.keys)}
            was = [at.get(k) for k in keys]
            old_texts = self.texts
            self.keys = list(keys)
            self.texts = [text(k) if n is None else old_texts[n] for k, n in zip(keys, was, strict=True)]
            self.order = sorted(range(len(keys)), key=keys.__getitem__)
            self.rendered = {
                name: [None if n is None else entries[n] for n in was]
                for name, entries in self.rendered.items()
            }
        entries = self.rendered.get(rendered)
        if entries is None:
            entries = self.rendered[rendered] = [None] * len(keys)
        return self.order, self.texts, entries

    def forget_rendered(self) -> None:
        self.rendered = {}


@dataclass(slots=True)
class Capture:
    """What one scrape copied from the state under the consumer's lock.

    ``series[name]`` is ``(keys, values)`` in the state's dict order: counters' numbers; histograms'
    numbers flat (``Family.width`` per series: buckets, +Inf, sum); snapshot gauges' combined value
    over live sources (None: no live source).
    """

    version: int
    now: float
    live_sources: int
    #: When Redis accepted the newest entry folded (unix seconds).
    newest_entry_s: float
    #: Sources silent past the TTL without ``source.stopped``, by service.
    vanished: dict[str, int]
    series: dict[str, tuple[list[LabelKey], list[Any]]]
    #: Histograms' exemplars, captured for OpenMetrics only: per partition, the keys of the series that
    #: have any and their :data:`~.fold.ExemplarRow` flat (``Family.width - 1`` per series).
    exemplars: dict[str, list[tuple[list[LabelKey], list[Exemplar | None]]]] = field(default_factory=dict)

    def readings(self, partitions: Mapping[int, PartitionReading] | None = None) -> Readings:
        """The scrape-time inputs, with the consumer's per-partition readings."""
        return Readings(self.now, self.live_sources, self.newest_entry_s, self.vanished, partitions or {})


class Renderer:
    """Renders fold state in the text format (0.0.4) or OpenMetrics 1.0, families as in ``metrics.py``.

    Parameters:
        prefix: metric name prefix, e.g. ``boilerhouse_``.
        source_ttl_s: a source silent for longer than this stops contributing to gauges.
        metrics: the metric definitions (all of them, in exposition order).
    """

    def __init__(
        self, prefix: str = "boilerhouse_", source_ttl_s: float = 30.0, metrics: Sequence[MetricDef] = METRICS
    ) -> None:
        self.families = [Family(m, prefix) for m in metrics]
        self.source_ttl_s = source_ttl_s
        #: Whether the formats can be written here for scrapers asking the escapings of FAST_ESCAPINGS.
        self.plain = all(f.plain for f in self.families)
        self._orders: dict[str, _Order] = {f.m.name: _Order() for f in self.families}
        self._orders_lock = threading.Lock()
        #: Per histogram, per series: each bucket's exemplar and its text, kept while that exemplar (the
        #: same tuple object) is the bucket's latest; a new exemplar replaces its entry.
        self._exemplar_texts: dict[str, dict[LabelKey, list[tuple[Exemplar, str] | None]]] = {
            f.m.name: {} for f in self.families if f.m.kind is Kind.HISTOGRAM
        }
        self._families = {f.m.name: f for f in self.families}

    def handles(self, escaping: str) -> bool:
        """True if :meth:`lines` writes exactly what prometheus_client would for this escaping."""
        return self.plain and escaping in FAST_ESCAPINGS

    # ---- step 1: under the consumer's lock ------------------------------------------------------

    def capture(self, states: Sequence[State], version: int, now: float, exemplars: bool = False) -> Capture:
        """Copy what a scrape needs from the partitions' states. Call with the states' lock held.

        A few big flat lists, no object per series: allocating one per series would also make the
        garbage collector walk the whole state, under the lock. ``exemplars``: also the histograms'
        exemplars (OpenMetrics; the text format has none).
        """
        ttl = self.source_ttl_s
        live: set[str] = set()
        vanished: dict[str, int] = {}
        newest = 0.0
        for st in states:  # each source is in one partition: sets and counts add up
            live |= st.live_sources(now, ttl)
            for service, n in st.vanished_by_service(now, ttl).items():
                vanished[service] = vanished.get(service, 0) + n
            newest = max(newest, st.newest_entry_s)
        series: dict[str, tuple[list[LabelKey], list[Any]]] = {}
        for fam in self.families:
            m = fam.m
            if not m.stateful:
                continue
            parts: list[tuple[list[LabelKey], list[Any]]] = []
            for st in states:
                if m.snapshot:
                    table = st.gauges[m.name]
                    alive = [[v for s, v in per_src.items() if s in live] for per_src in table.values()]
                    parts.append((list(table), alive))
                elif m.kind is Kind.HISTOGRAM:
                    hists = st.hists[m.name]
                    parts.append((list(hists), list(chain.from_iterable(hists.values()))))
                else:
                    counters = st.counters[m.name]
                    parts.append((list(counters), list(counters.values())))
            keys, values = parts[0] if len(parts) == 1 else _merge(fam, parts)
            if m.snapshot:
                values = [combine(m.combine, v) if v else None for v in values]
            series[m.name] = (keys, values)
        captured: dict[str, list[tuple[list[LabelKey], list[Exemplar | None]]]] = {}
        if exemplars:
            for fam in self.families:
                if fam.m.kind is Kind.HISTOGRAM and fam.m.stateful:
                    rows = [st.exemplars[fam.m.name] for st in states]
                    if any(rows):
                        captured[fam.m.name] = [
                            (list(r), list(chain.from_iterable(r.values()))) for r in rows if r
                        ]
        return Capture(version, now, len(live), newest, vanished, series, captured)

    # ---- step 2: no lock --------------------------------------------------------------------------

    def lines(
        self, cap: Capture, readings: Readings | None = None, openmetrics: bool = False
    ) -> Iterator[str]:
        """The exposition of ``cap`` in chunks of text; OpenMetrics without its final ``# EOF``.

        ``readings`` are the scrape-time inputs (lag, pending ...); by default those of ``cap`` alone.
        """
        readings = readings or cap.readings()
        #: Per histogram written so far: each series' entry that its values were found equal to.
        checked: dict[str, list[Any]] = {}
        for fam in self.families:
            m = fam.m
            head = fam.om_header if openmetrics else fam.text_header
            if m.read is not None:
                read = m.read(readings)
                yield head + "".join(
                    f"{fam.sample}{fam.label_text(k)} {go_float(v)}\n" for k, v in sorted(read.items())
                )
                continue
            source = m.count_of or m.name
            keys, values = cap.series[source]
            if m.kind is Kind.HISTOGRAM:
                order, texts, plain = self._order(m.name, keys, fam.histogram_text, m.name)
                yield head
                rows = _exemplar_rows(fam, cap.exemplars.get(m.name)) if openmetrics else None
                cache = self._exemplar_texts[m.name]
                if rows is not None and len(cache) > 2 * len(rows):  # series gone (a restored state)
                    cache.clear()
                with_rows = None
                if rows:
                    with_rows = self._order(m.name, keys, fam.histogram_text, m.name + _WITH_EXEMPLARS)[2]
                checked[m.name] = found_h = [None] * len(keys)
                yield from _histogram_chunks(
                    fam, order, texts, values, keys, rows, cache, plain, with_rows, found_h
                )
            elif m.count_of is not None:
                hist = self._families[m.count_of]
                yield head
                found = checked.get(m.count_of)  # the histogram's, if written before from this capture
                if hist.le_first:  # the histogram's label strings serve: "name{" + 'a="x"} '
                    order, texts, done = self._order(m.count_of, keys, hist.histogram_text, m.name)
                    yield from _count_chunks(fam.sample + "{", order, texts, values, hist.width, done, found)
                else:
                    order, texts, done = self._order(m.name, keys, fam.line_head, m.name)
                    yield from _count_chunks("", order, texts, values, hist.width, done, found)
            else:
                order, texts, done = self._order(m.name, keys, fam.line_head, m.name)
                yield head
                yield from _value_chunks(order, texts, values, done)

    def forget_rendered(self) -> None:
        """Drop every series' rendered text (the next scrape writes them all anew; for benchmarks)."""
        with self._orders_lock:
            for o in self._orders.values():
                o.forget_rendered()

    def _order(
        self, name: str, keys: list[LabelKey], text: Callable[[LabelKey], Any], rendered: str
    ) -> tuple[list[int], list[Any], list[Any]]:
        with self._orders_lock:
            return self._orders[name].update(keys, text, rendered)


def _merge(fam: Family, parts: list[tuple[list[LabelKey], list[Any]]]) -> tuple[list[LabelKey], list[Any]]:
    """Several partitions' series as one (each source writes to one partition): counters added,
    histograms added bucket by bucket, snapshot gauges' live values put together; in the order of
    :meth:`.fold.State.merge`, so that float sums come out the same."""
    m = fam.m
    acc: dict[LabelKey, Any] = {}
    for keys, flat in parts:
        values = flat
        if m.kind is Kind.HISTOGRAM:
            w = fam.width
            values = [flat[i : i + w] for i in range(0, len(flat), w)]
        for k, v in zip(keys, values, strict=True):
            cur = acc.get(k)
            if cur is None:
                acc[k] = v
            elif m.snapshot:
                acc[k] = cur + v
            elif m.kind is Kind.HISTOGRAM:
                acc[k] = [x + y for x, y in zip(cur, v, strict=True)]
            else:
                acc[k] = cur + v
    if m.kind is Kind.HISTOGRAM:
        return list(acc), list(chain.from_iterable(acc.values()))
    return list(acc), list(acc.values())


def _exemplar_rows(
    fam: Family, parts: list[tuple[list[LabelKey], list[Exemplar | None]]] | None
) -> dict[LabelKey, ExemplarRow] | None:
    """The captured exemplars of one histogram by series (partitions merged: the later per bucket)."""
    if not parts:
        return None
    w = fam.width - 1
    rows: dict[LabelKey, ExemplarRow] = {}
    for keys, flat in parts:
        for n, k in enumerate(keys):
            row = flat[n * w : n * w + w]
            cur = rows.get(k)
            rows[k] = row if cur is None else merge_exemplars(cur, row)
    return rows


def exemplar_text(e: Exemplar) -> str:
    """`` # {trace_id="..."} value timestamp\n``: what prometheus_client's OpenMetrics writer appends to a
    bucket line for ``Exemplar({"trace_id": ...}, value, timestamp)``, and the newline. The trace id
    needs no escaping: the validator let only lowercase hex through (docs/events.md)."""
    v = e[1]
    value = repr(v) if type(v) is float and -_INF < v < 1_000_000.0 else go_float(v)
    return f' # {{trace_id="{e[0]}"}} {value} {e[2]!r}\n'


def _value_chunks(
    order: list[int], texts: list[str], values: list[Any], done: list[Any] | None = None
) -> Iterator[str]:
    """Counter and gauge lines: the cached ``name{labels} `` and the value (gauges without live
    sources, None, are left out).

    ``done[i]`` (by series index) is ``(value, line)`` as last written: the line is reused while the
    value is the same object, or an equal number other than zero (equal numbers that are not zeros
    are written alike, an int as the equal float; a zero may be ``-0.0``)."""
    if done is None:
        done = [None] * len(values)
    out: list[str] = []
    append = out.append
    for n, i in enumerate(order, 1):
        v = values[i]
        if v is not None:
            e = done[i]
            if e is not None and (e[0] is v or (v and e[0] == v)):
                append(e[1])
            else:
                line = f"{texts[i]}{go_float(v)}\n"
                done[i] = (v, line)
                append(line)
        if n % (CHUNK_SERIES * 8) == 0:
            yield "".join(out)
            out.clear()
    if out:
        yield "".join(out)


def _count_chunks(
    head: str,
    order: list[int],
    texts: list[str],
    flat: list[Any],
    width: int,
    done: list[Any] | None = None,
    checked: list[Any] | None = None,
) -> Iterator[str]:
    """A counter that is a histogram's ``_count`` (the sum of its buckets), from the histogram's values:
    each line is ``head``, the series' text and the number.

    ``checked`` (when the histogram was written before, from the same capture): per series, the
    histogram's entry that this scrape found its values equal to, if they did not change since the last
    scrape (see :func:`_histogram_chunks`), else None. ``done[i]`` is then ``(entry, line)``, the line
    reused while the histogram's entry is the same object (equal int counts: the same total); a series
    that changed is written as pieces, as the histogram's are. Without ``checked``, ``(total, line)``
    as for :func:`_value_chunks`."""
    if done is None:
        done = [None] * (len(flat) // width)
    out: list[str] = []
    append, extend, small = out.append, out.extend, _SMALL_LINES
    for n, i in enumerate(order):
        if n and n % (CHUNK_SERIES * 8) == 0:
            yield "".join(out)
            out.clear()
        e = done[i]
        a = i * width
        if checked is not None:
            key = checked[i]
            if key is None:  # changed (or new): written, not kept
                total = sum(flat[a : a + width - 1])
                extend(
                    (
                        head,
                        texts[i],
                        small[total] if type(total) is int and total < _SMALL else _number_line(float(total)),
                    )
                )
                continue
            if e is not None and e[0] is key:
                append(e[1])
                continue
            total = sum(flat[a : a + width - 1])
        else:
            total = key = sum(flat[a : a + width - 1])
            if e is not None and (e[0] is total or (total and e[0] == total)):
                append(e[1])
                continue
        number = small[total] if type(total) is int and total < _SMALL else _number_line(float(total))
        line = f"{head}{texts[i]}{number}"
        done[i] = (key, line)
        append(line)
    if out:
        yield "".join(out)


def _histogram_chunks(
    fam: Family,
    order: list[int],
    texts: list[Any],
    flat: list[Any],
    keys: list[LabelKey] | None = None,
    exemplars: Mapping[LabelKey, ExemplarRow] | None = None,
    cache: dict[LabelKey, list[tuple[Exemplar, str] | None]] | None = None,
    plain: list[Any] | None = None,
    with_rows: list[Any] | None = None,
    checked: list[Any] | None = None,
) -> Iterator[str]:
    """Bucket lines (cumulative counts), then ``_count`` and ``_sum``, per series.

    A series' lines are one string, kept by series index in ``plain`` as ``(buckets, sum, text)`` and
    reused while the captured values are the same: the bucket counts equal and all ints (equal ints
    are written alike; a float count may be ``-0.0``), the sum the same object or an equal number other
    than zero. So a scrape formats only the series that changed and joins the others' strings. A series
    that changed since the last scrape is written as pieces into the chunk (as every series was before
    lines were kept) and only its values are kept, ``(buckets, sum, None)``: its string is made and kept
    at the first scrape that finds it unchanged, so that series changing at every scrape cost no more
    than before (a string made and kept per series costs ~20 % of writing it).

    ``exemplars`` (OpenMetrics only) by series key (``keys[i]`` is series ``i``'s): a series that
    has any is kept in ``with_rows`` instead, as ``(buckets, sum, text, row)``, reused only while each
    bucket's exemplar is also the same object; its bucket lines with an exemplar are written as their
    number, then `` # {trace_id="..."} value timestamp`` and the newline. The text format never shows
    them. ``cache`` keeps each exemplar's text (by series and bucket) while the exemplar is the same
    object: an exemplar replaced in the fold is a new tuple, so its text is written anew.
    """
    if cache is None:
        cache = {}
    width = fam.width
    if plain is None:
        plain = [None] * (len(flat) // width)
    if with_rows is None and exemplars:
        with_rows = [None] * (len(flat) // width)
    if checked is None:
        checked = [None] * (len(flat) // width)
    join, pieces = "".join, chain.from_iterable
    small = _SMALL_LINES.__getitem__
    heads, les, le_first = fam.heads, fam.les, fam.le_first
    w = width - 1
    out: list[str] = []
    append = out.append
    for n, i in enumerate(order):
        if n and n % CHUNK_SERIES == 0:
            yield join(out)
            out.clear()
        a = i * width
        b = flat[a : a + w]
        s = flat[a + w]
        row = exemplars.get(keys[i]) if exemplars and keys is not None else None
        done = plain if row is None else with_rows
        assert done is not None
        e = done[i]
        if e is None:  # new: keep it
            keep = True
        elif (
            (e[1] is s or (s and e[1] == s))  # the sum first: it changes with every observation
            and e[0] == b
            and type(sum(b)) is int
            and (row is None or all(map(is_, row, e[3])))
        ):
            checked[i] = e
            if e[2] is not None:
                append(e[2])
                continue
            keep = True  # unchanged since the last scrape, which wrote it without keeping it
        else:  # changed since the last scrape: write it, keep only its values (see above)
            keep = False
        numbers = list(accumulate(b))  # cumulative bucket counts, then the count again
        count = numbers[-1]
        numbers.append(count)
        sum_line = (repr(s) if type(s) is float and -_INF < s < 1_000_000.0 else go_float(s)) + "\n"
        lines: Iterator[str]
        if type(count) is int and count < _SMALL:
            lines = chain(map(small, numbers), (sum_line,))
        else:
            lines = chain(map(_number_line, numbers), (sum_line,))
        if row is not None:
            patched = list(lines)
            key = keys[i]  # type: ignore[index]  # exemplars come with keys
            known = cache.get(key)
            if known is None:
                known = cache[key] = [None] * len(row)
            for j, x in enumerate(row):
                if x is not None:
                    c = known[j]
                    if c is None or c[0] is not x:
                        c = known[j] = (x, exemplar_text(x))
                    patched[j] = patched[j][:-1] + c[1]
            lines = iter(patched)
        text = texts[i]
        parts = [] if keep else out  # kept: the series' own string; else its pieces go to the chunk
        if le_first:
            parts += pieces(zip(heads, repeat(text), lines))
        else:
            head, tail, labels = text
            parts += pieces(zip(repeat(head), les, repeat(tail), lines))
            parts += (fam.count_name, labels, " ", next(lines), fam.sum_name, labels, " ", next(lines))
        series = None
        if keep:
            series = join(parts)
            append(series)
        if type(count) is int:  # all counts ints: see above
            done[i] = entry = (b, s, series) if row is None else (b, s, series, row)
            if keep and e is not None:  # unchanged since the last scrape: its _count line may be kept
                checked[i] = entry
        else:
            done[i] = None
    if out:
        yield join(out)


def _number_line(v: Any) -> str:
    return go_float(v) + "\n"


__all__ = ["Capture", "Family", "Renderer", "escape_value", "exemplar_text", "go_float"]
