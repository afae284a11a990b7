"""Stream monitors: each stream's traffic judged against its own recent past (docs/monitors.md).

    breaches = evaluate(lake)                 # every monitor the catalog declares, as of now
    new = record(lake.root, breaches)         # into `_monitors`, each breach once
    tidegate monitor [--json]                 # the same, printed; exit 0 either way

The catalog declares them per stream (`stream.monitors`, inherited from `defaults`;
tidegate.catalog.Monitors). Windows are event-time windows aligned to the epoch (a 5m window
starts at :00, :05, ...), over the raw history (`lake.raw`) and the quarantine:

- **volume**: events per window against the median of the previous `baseline_windows` windows;
  fewer than `drop_below` x that is a drop, more than `spike_above` x a spike. Judged only once
  there are that many windows behind it and the baseline is at least `min_baseline`. A window
  with no event at all counts as 0 (windows run up to now), so a producer that falls silent is
  a drop.
- **quarantine_rate**: quarantined / (landed + quarantined) per window, above `above` with at
  least `min_messages` messages. A quarantined message is its event type's (else, when its
  subscription carries one type, that type's), at its event time (else its quarantine time).
- **null_rate**: per listed column, the share of nulls in a window minus the median share of
  the previous `baseline_windows` windows (with at least `min_rows` rows each), above
  `drift_above`.
- **freshness**: now minus the newest event time above `max_event_lag`; now minus the last
  commit that landed rows in the raw table (Delta history; compaction and retention commits do
  not count) above `max_commit_lag`.

**Only closed windows are judged**: a window is judged once it ended at least one window ago
(`now - window`), so events still arriving for it (ingestion takes seconds) never make a
partly filled window look like a drop. Windows judged: those ending in the last `lookback`
(24 h).

**A breach is recorded once.** It is identified by (monitor, kind, event type, window start
[, column]); `_monitors` takes each id once (insert-only), so evaluating again, from the CLI or
from the ingest loop, never records it twice. A condition that lasts several windows (a silent
producer, a source that keeps sending bad events) is ONE breach, at its first window: a window
is flagged only when the window before it was not flagged the same way. Freshness breaches are
identified by the newest event time (the last commit), so a stream that stays stale is one
breach until new data lands.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from math import ceil
from typing import Any, TextIO

import polars as pl
from deltalake import DeltaTable

from tidegate.catalog import (
    FreshnessMonitor,
    NullRateMonitor,
    QuarantineMonitor,
    Stream,
    VolumeMonitor,
    parse_duration,
)
from tidegate.errors import ConfigError
from tidegate.lake.delta import try_open
from tidegate.lake.monitor_rows import recorded_breaches, recorded_ids, write_breaches
from tidegate.lake.read import Lake

log = logging.getLogger(__name__)

LOG_EVENT = "tidegate_monitor_breach"  # the structured log line a log-based metric counts (GCP)
LOOKBACK = timedelta(hours=24)  # windows ending this far back are judged
RECENT = timedelta(hours=24)  # what `tidegate status` and the report show
# commits that land rows in a raw table; OPTIMIZE (compaction), DELETE (retention, erasure) and
# VACUUM do not make a table fresh
_LANDING = frozenset({"WRITE", "MERGE", "CREATE TABLE", "CREATE OR REPLACE TABLE"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TS = pl.Datetime("us", "UTC")


def new_run_id() -> str:
    """`monitor-20261202T041500Z-1a2b3c`, like every run id of tidegate (sortable, unique)."""
    return datetime.now(UTC).strftime("monitor-%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _us(t: datetime) -> int:
    return (t.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _clock(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


@dataclass(frozen=True)
class Breach:
    """One monitor out of bounds for one event type (and column), at one window."""

    monitor: str  # volume | freshness | quarantine_rate | null_rate
    kind: str  # drop | spike | event_lag | commit_lag | above | drift
    event_type: str
    window_start: datetime  # freshness: the newest event time / the last commit
    window_end: datetime  # freshness: the evaluation's now
    observed: float  # events; a share; a lag in seconds
    expected: float | None  # the baseline, where the monitor has one
    threshold: float  # the bound `observed` crossed
    message: str
    detected_at: datetime
    run_id: str
    column: str | None = None

    @property
    def breach_id(self) -> str:
        """What makes two findings the same breach (the `_monitors` key)."""
        parts = [self.monitor, self.kind, self.event_type, _iso(self.window_start)]
        return "/".join([*parts, self.column] if self.column else parts)

    def row(self) -> dict[str, Any]:
        """A `_monitors` row (tidegate.lake.tables.MONITORS_SCHEMA)."""
        return {
            "breach_id": self.breach_id,
            "monitor": self.monitor,
            "kind": self.kind,
            "event_type": self.event_type,
            "column": self.column,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "observed": float(self.observed),
            "expected": None if self.expected is None else float(self.expected),
            "threshold": float(self.threshold),
            "message": self.message,
            "detected_at": self.detected_at,
            "run_id": self.run_id,
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (times as RFC 3339): `--json`, status, OpenLineage."""
        return {k: _iso(v) if isinstance(v, datetime) else v for k, v in self.row().items()}

    def log_line(self) -> str:
        """The structured log line Cloud Logging reads as jsonPayload (GCP: a log-based metric
        counts these by monitor and event type; tidegate/infra/terraform/monitoring.tf)."""
        return json.dumps(
            {
                "severity": "WARNING",
                "message": LOG_EVENT,
                "monitor": self.monitor,
                "kind": self.kind,
                "event_type": self.event_type,
                "column": self.column,
                "window_start": _iso(self.window_start),
                "window_end": _iso(self.window_end),
                "observed": self.observed,
                "expected": self.expected,
                "threshold": self.threshold,
                "breach_id": self.breach_id,
                "detail": self.message,
            }
        )


# -- windows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Window indexes (event time // size) one monitor reads and judges."""

    size: int  # microseconds
    first: int  # the first window read (the baselines of the first windows judged)
    judge_from: int  # the first window judged
    last: int  # the last closed window

    @classmethod
    def of(cls, window: str, baseline: int, now: datetime, lookback: timedelta) -> _Plan:
        size = parse_duration(window) * 1_000_000
        last = _us(now) // size - 2  # it ended at least one window before now
        judge_from = last - max(1, ceil(lookback / timedelta(microseconds=size))) + 1
        # one more window than the baseline: whether the window before the first judged one was
        # flagged too (a breach is recorded at the first window of a run of flagged ones)
        return cls(size, judge_from - 1 - baseline, judge_from, last)

    @property
    def lo(self) -> datetime:
        return _at(self.first * self.size)

    @property
    def hi(self) -> datetime:
        return _at((self.last + 1) * self.size)

    def start(self, i: int) -> datetime:
        return _at(i * self.size)

    def end(self, i: int) -> datetime:
        return _at((i + 1) * self.size)


def _window_index(column: str, size: int) -> pl.Expr:
    return (pl.col(column).dt.epoch("us") // size).alias("w")


def _in_range(column: str | pl.Expr, plan: _Plan) -> pl.Expr:
    col = pl.col(column) if isinstance(column, str) else column
    return (col >= pl.lit(plan.lo, dtype=_TS)) & (col < pl.lit(plan.hi, dtype=_TS))


def _starts(flags: dict[int, str | None], plan: _Plan) -> list[int]:
    """Judged windows flagged where the window before was not flagged the same way."""
    return [
        i
        for i in range(plan.judge_from, plan.last + 1)
        if flags.get(i) is not None and flags.get(i - 1) != flags.get(i)
    ]


class _TypeData:
    """One event type's raw history and quarantine, read once per evaluation and window size."""

    def __init__(self, lake: Lake, event_type: str, quarantine: pl.LazyFrame | None) -> None:
        self.event_type = event_type
        self.table: DeltaTable | None = try_open(lake.uri(f"raw/{event_type}"), lake.storage_options)
        self.raw: pl.LazyFrame | None = lake.raw(event_type) if self.table is not None else None
        self.quarantine = quarantine
        self._counts: dict[int, tuple[int, dict[int, int]]] = {}  # size -> (first window, counts)

    def raw_counts(self, plan: _Plan) -> dict[int, int]:
        """Events per window of `plan` (windows without one are absent)."""
        cached = self._counts.get(plan.size)
        if cached is not None and cached[0] <= plan.first:  # read once per size (same now)
            return {i: n for i, n in cached[1].items() if i >= plan.first}
        counts: dict[int, int] = {}
        if self.raw is not None:
            frame = (
                self.raw.filter(_in_range("event_time", plan))
                .group_by(_window_index("event_time", plan.size))
                .len()
                .collect()
            )
            counts = dict(frame.iter_rows())
        self._counts[plan.size] = (plan.first, counts)
        return counts

    def quarantine_counts(self, plan: _Plan) -> dict[int, int]:
        if self.quarantine is None:
            return {}
        counts = (
            self.quarantine.filter((pl.col("_type") == self.event_type) & _in_range("_time", plan))
            .group_by(_window_index("_time", plan.size))
            .len()
            .collect()
        )
        return dict(counts.iter_rows())


def _quarantine(lake: Lake, lo: datetime) -> pl.LazyFrame | None:
    """The quarantine as (_type, _time): each message's event type (else its subscription's one
    type) and its event time (else when it was quarantined)."""
    if try_open(lake.uri("quarantine"), lake.storage_options) is None:
        return None
    types = lake.catalog.event_types
    by_subscription = {s: next(iter(t)) for s, t in lake.catalog.types_by_subscription.items() if len(t) == 1}
    fallback = (
        pl.col("subscription").replace_strict(by_subscription, default=None, return_dtype=pl.String)
        if by_subscription
        else pl.lit(None, pl.String)
    )
    owner = pl.when(pl.col("event_type").is_in(types)).then(pl.col("event_type")).otherwise(fallback)
    return (
        lake.quarantine()
        # a message is quarantined around its event time (a ce-time far ahead of its publish
        # time is itself a reason): two days of margin prune old partitions safely
        .filter(pl.col("quarantine_date") >= (lo - timedelta(days=2)).date())
        .select(owner.alias("_type"), pl.coalesce("event_time", "quarantined_at").alias("_time"))
    )


# -- the monitors ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    now: datetime
    lookback: timedelta
    detected_at: datetime
    run_id: str

    def breach(self, **fields: Any) -> Breach:
        return Breach(detected_at=self.detected_at, run_id=self.run_id, **fields)


def _volume(data: _TypeData, m: VolumeMonitor, ctx: _Context) -> list[Breach]:
    if data.raw is None:
        return []
    plan = _Plan.of(m.window, m.baseline_windows, ctx.now, ctx.lookback)
    counts = data.raw_counts(plan)
    if not counts:
        return []
    # windows before the first event read are unknown, not empty (a new stream has no past)
    start = max(plan.first, min(counts))
    series = [counts.get(i, 0) for i in range(start, plan.last + 1)]
    n = m.baseline_windows
    flags: dict[int, str | None] = {}
    judged: dict[int, tuple[int, float]] = {}
    for k in range(n, len(series)):
        i, count = start + k, series[k]
        base = float(statistics.median(series[k - n : k]))
        judged[i] = (count, base)
        if base <= 0 or base < m.min_baseline:
            flags[i] = None
        elif count < m.drop_below * base:
            flags[i] = "drop"
        elif count > m.spike_above * base:
            flags[i] = "spike"
        else:
            flags[i] = None
    out = []
    for i in _starts(flags, plan):
        count, base = judged[i]
        kind = flags[i]
        factor = m.drop_below if kind == "drop" else m.spike_above
        bound = factor * base
        words = "below" if kind == "drop" else "above"
        out.append(
            ctx.breach(
                monitor="volume",
                kind=kind,
                event_type=data.event_type,
                window_start=plan.start(i),
                window_end=plan.end(i),
                observed=float(count),
                expected=base,
                threshold=bound,
                message=(
                    f"{data.event_type}: {count:,} events in the {m.window} window from "
                    f"{_clock(plan.start(i))}, against a baseline of {base:,.1f} (the median of the "
                    f"previous {n} windows): a {kind}, {words} {factor:g} x baseline ({bound:,.1f})"
                ),
            )
        )
    return out


def _quarantine_rate(data: _TypeData, m: QuarantineMonitor, ctx: _Context) -> list[Breach]:
    plan = _Plan.of(m.window, 0, ctx.now, ctx.lookback)
    quarantined = data.quarantine_counts(plan)
    if not quarantined:
        return []
    landed = data.raw_counts(plan)
    flags: dict[int, str | None] = {}
    for i in range(plan.first, plan.last + 1):
        q = quarantined.get(i, 0)
        total = q + landed.get(i, 0)
        flags[i] = "above" if total >= m.min_messages and q / total > m.above else None
    out = []
    for i in _starts(flags, plan):
        q = quarantined.get(i, 0)
        total = q + landed.get(i, 0)
        out.append(
            ctx.breach(
                monitor="quarantine_rate",
                kind="above",
                event_type=data.event_type,
                window_start=plan.start(i),
                window_end=plan.end(i),
                observed=q / total,
                expected=None,
                threshold=m.above,
                message=(
                    f"{data.event_type}: {q:,} of {total:,} messages in the {m.window} window from "
                    f"{_clock(plan.start(i))} were quarantined ({q / total:.1%}, above {m.above:.1%}); "
                    "`tidegate quarantine list` says why"
                ),
            )
        )
    return out


def _null_rate(data: _TypeData, m: NullRateMonitor, ctx: _Context) -> list[Breach]:
    if data.raw is None or not m.columns:
        return []
    present = data.raw.collect_schema().names()
    missing = [c for c in m.columns if c not in present]
    if missing:
        raise ConfigError(
            f"monitors.null_rate of {data.event_type}: {', '.join(missing)} is not a column of raw/{data.event_type}",
            hint="null_rate columns are per stream: declare null_rate on the streams whose events have them",
        )
    plan = _Plan.of(m.window, m.baseline_windows, ctx.now, ctx.lookback)
    stats = (
        data.raw.filter(_in_range("event_time", plan))
        .group_by(_window_index("event_time", plan.size))
        .agg(pl.len().alias("_rows"), *(pl.col(c).is_null().sum().alias(c) for c in m.columns))
        .collect()
    )
    rows = {r["w"]: r for r in stats.iter_rows(named=True)}
    n = m.baseline_windows
    out = []
    for column in m.columns:
        share: dict[int, float] = {
            i: r[column] / r["_rows"] for i, r in rows.items() if r["_rows"] >= m.min_rows
        }
        flags: dict[int, str | None] = {}
        judged: dict[int, tuple[float, float]] = {}
        for i in range(plan.first + n, plan.last + 1):
            before = [share[j] for j in range(i - n, i) if j in share]
            if i not in share or len(before) < (n + 1) // 2:
                flags[i] = None
                continue
            base = float(statistics.median(before))
            judged[i] = (share[i], base)
            flags[i] = "drift" if share[i] - base > m.drift_above else None
        for i in _starts(flags, plan):
            now_share, base = judged[i]
            out.append(
                ctx.breach(
                    monitor="null_rate",
                    kind="drift",
                    event_type=data.event_type,
                    column=column,
                    window_start=plan.start(i),
                    window_end=plan.end(i),
                    observed=now_share,
                    expected=base,
                    threshold=base + m.drift_above,
                    message=(
                        f"{data.event_type}.{column}: {now_share:.1%} nulls in the {m.window} window from "
                        f"{_clock(plan.start(i))} ({rows[i]['_rows']:,} rows), against {base:.1%} (the median "
                        f"of the previous {n} windows): up {100 * (now_share - base):.1f} points, more than "
                        f"{100 * m.drift_above:g}"
                    ),
                )
            )
    return out


def _last_landing(table: DeltaTable) -> datetime | None:
    """When rows last landed in a table (its newest WRITE or MERGE commit)."""
    history = table.history(limit=100)
    for h in history:  # newest first
        if h.get("operation") in _LANDING:
            return datetime.fromtimestamp(int(h["timestamp"]) / 1000, UTC)
    return datetime.fromtimestamp(int(history[0]["timestamp"]) / 1000, UTC) if history else None


def _freshness(data: _TypeData, m: FreshnessMonitor, ctx: _Context) -> list[Breach]:
    if data.raw is None or data.table is None:
        return []  # nothing ever landed: there is no freshness to lose
    out = []
    max_lag = parse_duration(m.max_event_lag)
    # the newest event time: from the recent files first (file statistics prune the rest)
    recent = ctx.now - timedelta(seconds=max_lag) - ctx.lookback
    newest = (
        data.raw.filter(pl.col("event_time") >= pl.lit(recent, dtype=_TS))
        .select(pl.col("event_time").max())
        .collect()
        .item()
    )
    if newest is None:
        newest = data.raw.select(pl.col("event_time").max()).collect().item()
    if isinstance(newest, datetime):
        lag = (ctx.now - newest).total_seconds()
        if lag > max_lag:
            out.append(
                ctx.breach(
                    monitor="freshness",
                    kind="event_lag",
                    event_type=data.event_type,
                    window_start=newest,
                    window_end=ctx.now,
                    observed=lag,
                    expected=None,
                    threshold=float(max_lag),
                    message=(
                        f"{data.event_type}: the newest event time is {_clock(newest)}, {_ago(lag)} before "
                        f"{_clock(ctx.now)} (more than max_event_lag {m.max_event_lag})"
                    ),
                )
            )
    max_commit = parse_duration(m.max_commit_lag)
    landed = _last_landing(data.table)
    if landed is not None:
        lag = (ctx.now - landed).total_seconds()
        if lag > max_commit:
            out.append(
                ctx.breach(
                    monitor="freshness",
                    kind="commit_lag",
                    event_type=data.event_type,
                    window_start=landed,
                    window_end=ctx.now,
                    observed=lag,
                    expected=None,
                    threshold=float(max_commit),
                    message=(
                        f"{data.event_type}: rows last landed in raw/{data.event_type} at {_clock(landed)}, "
                        f"{_ago(lag)} before {_clock(ctx.now)} (more than max_commit_lag {m.max_commit_lag})"
                    ),
                )
            )
    return out


def _oldest_read(stream: Stream, now: datetime, lookback: timedelta) -> datetime:
    """The earliest event time any of a stream's monitors reads."""
    m = stream.monitors
    plans = [
        _Plan.of(x.window, getattr(x, "baseline_windows", 0), now, lookback)
        for x in (m.volume, m.quarantine_rate, m.null_rate)
        if x is not None
    ]
    return min((p.lo for p in plans), default=now - lookback)


def evaluate(
    lake: Lake,
    now: datetime | None = None,
    *,
    lookback: timedelta = LOOKBACK,
    run_id: str | None = None,
) -> list[Breach]:
    """Every breach of every monitor of every stream, as of `now` (default: the clock), for the
    windows ending in the last `lookback`. Reads only; `record` writes them."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    ctx = _Context(now, lookback, datetime.now(UTC), run_id or new_run_id())
    streams = lake.catalog.streams
    oldest = min((_oldest_read(s, now, lookback) for s in streams), default=now - lookback)
    wants_quarantine = any(s.monitors.quarantine_rate is not None for s in streams)
    quarantine = _quarantine(lake, oldest) if wants_quarantine else None
    out: list[Breach] = []
    for stream in streams:
        m = stream.monitors
        for event_type in stream.types:
            data = _TypeData(lake, event_type, quarantine)
            if m.volume is not None:
                out += _volume(data, m.volume, ctx)
            if m.quarantine_rate is not None:
                out += _quarantine_rate(data, m.quarantine_rate, ctx)
            if m.null_rate is not None:
                out += _null_rate(data, m.null_rate, ctx)
            if m.freshness is not None:
                out += _freshness(data, m.freshness, ctx)
    return sorted(out, key=lambda b: (b.window_start, b.event_type, b.monitor, b.column or ""))


def record(root: str, breaches: Sequence[Breach], storage: dict[str, str] | None = None) -> list[Breach]:
    """Record the breaches in `_monitors`; returns the ones that were not recorded before."""
    unique = list({b.breach_id: b for b in breaches}.values())
    if not unique:
        return []
    known = recorded_ids(root, [b.breach_id for b in unique], storage)
    new = [b for b in unique if b.breach_id not in known]
    if new:
        write_breaches(root, [b.row() for b in new], storage, run_id=new[0].run_id)
    return new


def log_breaches(breaches: Sequence[Breach], stream: TextIO | None = None) -> None:
    """One structured log line per breach (`tidegate_monitor_breach`), on stderr by default."""
    out = stream or sys.stderr
    for b in breaches:
        out.write(b.log_line() + "\n")
    out.flush()


def recent(lake: Lake, *, within: timedelta = RECENT, now: datetime | None = None) -> list[dict[str, Any]]:
    """The breaches recorded (detected) in the last `within`, newest window first, JSON-ready."""
    since = (now or datetime.now(UTC)) - within
    rows = recorded_breaches(lake.root, lake.storage_options, since=since)
    return [{k: _iso(v) if isinstance(v, datetime) else v for k, v in r.items()} for r in rows.to_dicts()]


class MonitorTicker:
    """Evaluate and record the monitors at most every `every` seconds, on a thread of its own,
    so a caller on a hot path (the ingest loop, after each batch) never waits for it:

        ticker = MonitorTicker(lake, every=60)
        ticker()          # after each batch: starts an evaluation if one is due and none runs
        ticker.close()    # at the end: waits for the one running

    A failing evaluation is logged, never raised: monitors must not stop ingestion."""

    def __init__(
        self,
        lake: Lake,
        every: float = 60.0,
        on_breach: Callable[[Breach], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lake = lake
        self.every = every
        self.on_breach = on_breach
        self.clock = clock
        self._last: float | None = None
        self._thread: threading.Thread | None = None

    def __call__(self, *_: Any) -> None:
        """Any arguments are ignored: it can be handed over as an `on_batch` callback."""
        if self._thread is not None and self._thread.is_alive():
            return
        t = self.clock()
        if self._last is not None and t - self._last < self.every:
            return
        self._last = t
        self._thread = threading.Thread(target=self._run, name="tidegate-monitors", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            new = record(self.lake.root, evaluate(self.lake), self.lake.storage_options)
        except Exception as exc:  # noqa: BLE001 - monitors must never stop the data
            log.warning("stream monitors not evaluated: %s", exc)
            return
        for b in new:
            log.warning("monitor breach: %s", b.message)
            if self.on_breach is not None:
                self.on_breach(b)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
