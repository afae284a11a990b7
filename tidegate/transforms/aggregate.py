"""Beam composites for the aggregates: columnar replay from raw history, and event-time windows
for streaming mode. Thin adapters over `tidegate.lake.aggregates` (the one combine logic).

Replay (bounded, `tidegate replay`, locally on FnApiRunner or on Dataflow batch):

    file groups -> ReadRawHistory -> PreAggregate -> MergePartials -> (final frames, late pairs)

Elements are polars frames, never single events: Beam's per-element cost is what made a naive
windowed combine crawl at ~5k events/s on this machine (platform facts), while polars groups a
million rows in a fraction of a second. Each file group is read, split into on-time and late
(event, window) pairs by the watermark recorded on each row, and pre-aggregated into partial
rows; partial rows are sharded by their group keys (sessions only merge within a key) and
merged per shard; shards are finalized into metric rows.

Streaming (`ComputeWindowedAggregates`, Dataflow): see its docstring.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import apache_beam as beam
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
from apache_beam.coders import coders
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PCollection, TaggedOutput
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import IntervalWindow, TimestampedValue
from deltalake import DeltaTable

from tidegate.catalog import AggregateSpec
from tidegate.lake import aggregates as agg
from tidegate.lake.aggregate_writes import (
    aggregate_commit_meta,
    aggregate_rows,
    apply_panes,
    replace_all,
    write_late,
)
from tidegate.lake.tables import raw_schema
from tidegate.transforms.base import worker_state

LATE = "late"


def _utc(value: datetime) -> pa.Scalar:
    return pa.scalar(value, type=pa.timestamp("us", tz="UTC"))


SHARDS = 16


@dataclass(frozen=True)
class ReplayConfig:
    """What a replay worker needs (small, picklable, never PipelineOptions)."""

    lake: str
    catalog_path: str
    raw_uri: str
    raw_version: int
    spec_json: str  # the AggregateSpec as JSON (stable across processes and versions)
    run_id: str
    code_version: str
    git_sha: str
    storage_options: tuple[tuple[str, str], ...] = ()
    read_since: str | None = None  # ISO timestamps bounding the event time read (None: all)
    read_until: str | None = None
    since: str | None = None  # the windows replaced: window_start in [since, until)
    until: str | None = None

    @property
    def spec(self) -> AggregateSpec:
        return AggregateSpec.model_validate_json(self.spec_json)

    @property
    def storage(self) -> dict[str, str] | None:
        return dict(self.storage_options) or None


class Replayed(NamedTuple):
    windows: PCollection  # polars frames of final window rows (window, keys, metrics)
    late: PCollection  # polars frames of late (event, window) pairs


def read_files(config: ReplayConfig, paths: list[str]) -> pl.DataFrame:
    """The raw rows of some files of the pinned raw version, only the columns the spec needs."""

    dataset = DeltaTable(config.raw_uri, version=config.raw_version, storage_options=config.storage)
    full = dataset.to_pyarrow_dataset()
    assert isinstance(full, ds.FileSystemDataset)
    wanted = set(paths)
    fragments = [f for f in full.get_fragments() if f.path in wanted]
    subset = ds.FileSystemDataset(fragments, full.schema, full.format, full.filesystem)
    filt = None
    if config.read_since:
        filt = ds.field("event_time") >= _utc(datetime.fromisoformat(config.read_since))
    if config.read_until:
        upper = ds.field("event_time") < _utc(datetime.fromisoformat(config.read_until))
        filt = upper if filt is None else filt & upper
    return agg.frame(subset.to_table(columns=agg.read_columns(config.spec, full.schema), filter=filt))


def _shard(frame: pl.DataFrame, spec: AggregateSpec) -> Iterator[tuple[int, pl.DataFrame]]:
    cols = list(spec.keys) if spec.window.type == "session" else ["window_start", *spec.keys]
    if not cols:
        yield 0, frame
        return
    keyed = frame.with_columns((pl.struct(cols).hash(seed=0) % SHARDS).alias("_shard"))
    for (shard,), part in keyed.partition_by("_shard", as_dict=True).items():
        yield int(shard), part.drop("_shard")  # type: ignore[call-overload]


class ReadAndPreAggregateFn(beam.DoFn):
    """A group of raw files -> sharded partial rows (main) and late pairs (`late`)."""

    def __init__(self, config: ReplayConfig) -> None:
        self.config = config

    def setup(self) -> None:
        self.spec = self.config.spec
        self.events = Metrics.counter("tidegate", "replay_events_read")
        self.late = Metrics.counter("tidegate", "replay_late_pairs")

    def process(self, paths: list[str]) -> Iterator[Any]:
        rows = read_files(self.config, paths)
        self.events.inc(rows.height)
        parts = agg.split(rows, self.spec)
        if parts.late.height:
            self.late.inc(parts.late.height)
            yield TaggedOutput(LATE, agg.late_pairs_of(parts.late, self.spec))
        partial = agg.partials(parts.on_time, self.spec)
        if partial.height:
            yield from _shard(partial, self.spec)


class MergeShardFn(beam.DoFn):
    """All partial rows of one shard -> final window rows."""

    def __init__(self, config: ReplayConfig) -> None:
        self.config = config

    def setup(self) -> None:
        self.spec = self.config.spec

    def process(self, item: tuple[int, Iterable[pl.DataFrame]]) -> Iterator[pl.DataFrame]:
        _, frames = item
        merged = agg.merge(pl.concat(list(frames), how="vertical_relaxed"), self.spec)
        yield agg.finalize(merged, self.spec)


class ReplayAggregate(beam.PTransform):
    """File groups of the raw table -> Replayed(windows, late) as polars frames."""

    def __init__(self, config: ReplayConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, groups: PCollection) -> Replayed:
        pre = groups | "ReadAndPreAggregate" >> beam.ParDo(ReadAndPreAggregateFn(self.config)).with_outputs(
            LATE, main="partials"
        )
        windows = (
            pre.partials
            | "GroupShards" >> beam.GroupByKey()
            | "MergePartials" >> beam.ParDo(MergeShardFn(self.config))
        )
        return Replayed(windows, pre[LATE])


def _gather(frames: PCollection, label: str) -> PCollection:
    """All frames of a PCollection as one element (one writer, one commit)."""
    return frames | f"Key{label}" >> beam.Map(lambda f: (None, f)) | f"Gather{label}" >> beam.GroupByKey()


class WriteReplayedWindowsFn(beam.DoFn):
    """Replaces the aggregate's windows in [since, until) in one Delta commit (lake.projection)."""

    def __init__(self, config: ReplayConfig) -> None:
        self.config = config

    def setup(self) -> None:
        self.windows = Metrics.counter("tidegate", "replay_windows_written")

    def process(self, item: tuple[None, Iterable[pl.DataFrame]]) -> None:

        c = self.config
        spec = c.spec
        frames = [f for f in item[1] if f.height]
        since = datetime.fromisoformat(c.since) if c.since else None
        until = datetime.fromisoformat(c.until) if c.until else None
        frame = pl.concat(frames, how="vertical_relaxed") if frames else None
        if frame is not None:
            frame = frame.sort([*agg.WINDOW, *spec.keys], nulls_last=True)
            if since is not None:
                frame = frame.filter(pl.col("window_start") >= since)
            if until is not None:
                frame = frame.filter(pl.col("window_start") < until)
        _, registry = worker_state(c.catalog_path)
        schema = agg.output_schema(spec, raw_schema(registry.types[spec.source]))
        rows = (
            aggregate_rows(schema, frame, c.raw_version, c.run_id, "replay")
            if frame is not None and frame.height
            else schema.empty_table()
        )
        meta = aggregate_commit_meta(
            spec,
            run_id=c.run_id,
            code_version=c.code_version,
            git_sha=c.git_sha,
            written_by="replay",
            source=c.raw_uri,
            raw_version=c.raw_version,
            replay_since=c.since or "",
            replay_until=c.until or "",
        )
        replace_all(
            c.lake,
            spec,
            rows,
            raw_version=c.raw_version,
            since=since,
            until=until,
            metadata=meta,
            storage=c.storage,
        )
        self.windows.inc(rows.num_rows)


class WriteLateLedgerFn(beam.DoFn):
    """Late pairs of a replay into the late ledger (insert-only: a re-replay adds nothing)."""

    def __init__(self, config: ReplayConfig) -> None:
        self.config = config

    def process(self, item: tuple[None, Iterable[pl.DataFrame]]) -> None:

        c = self.config
        frames = [f for f in item[1] if f.height]
        if frames:
            write_late(
                c.lake, c.spec, pl.concat(frames, how="vertical_relaxed"), c.raw_version, c.run_id, c.storage
            )


class WriteReplayed(beam.PTransform):
    """Replayed(windows, late) -> the aggregate table and the late ledger."""

    def __init__(self, config: ReplayConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, replayed: Replayed) -> None:
        # one empty frame always joins the windows: a range whose raw rows are all gone (an
        # erasure, a retention cut) must still clear its stale windows, and a GroupByKey over
        # no element would never call the writer
        nothing = replayed.windows.pipeline | "NoWindows" >> beam.Create([pl.DataFrame()])
        windows = (replayed.windows, nothing) | "WithEmpty" >> beam.Flatten()
        _gather(windows, "Windows") | "WriteAggregate" >> beam.ParDo(WriteReplayedWindowsFn(self.config))
        _gather(replayed.late, "Late") | "WriteLateLedger" >> beam.ParDo(WriteLateLedgerFn(self.config))


# -- streaming: Beam windows, triggers and accumulating panes ----------------------------------


def window_fn(spec: AggregateSpec) -> Any:
    """The Beam WindowFn of an aggregate: fixed and sliding windows come assigned per element
    (see SplitLateFn); sessions are Beam's merging Sessions over the same proto-windows."""

    if spec.window.type == "session":
        return window.Sessions(spec.window.seconds("gap"))
    return AssignedWindows()


class AggregateCombineFn(beam.CombineFn):
    """The metrics of one (window, keys) group, mergeable (sessions merge). Accumulators are
    lake.aggregates' partial states (`_n`, `_sum__f`, ...) built and merged by its REDUCERS, and
    the output comes from its METRICS: the same definitions the polars paths use."""

    def __init__(self, spec_json: str) -> None:
        self.spec_json = spec_json
        spec = AggregateSpec.model_validate_json(spec_json)
        self.states = [(st.column, st.field, agg.REDUCERS[st.reducer]) for st in agg.states(spec)]
        self.metrics = [(agg.METRICS[m.fn], m.field, m.column) for m in spec.metrics]

    def create_accumulator(self) -> dict[str, Any]:
        return {}

    def add_input(self, acc: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
        for column, field, reducer in self.states:
            acc[column] = reducer.add(acc.get(column), row.get(field) if field else None)
        return acc

    def merge_accumulators(self, accs: Iterable[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for a in accs:
            for column, _field, reducer in self.states:
                out[column] = reducer.combine(out.get(column), a.get(column))
        return out

    def extract_output(self, acc: dict[str, Any]) -> dict[str, Any]:
        return {column: kind.finalize_py(acc, field) for kind, field, column in self.metrics}


@dataclass(frozen=True)
class StreamingAggregateConfig:
    spec_json: str
    early_firing_seconds: int = 30  # speculative panes while a window is open
    # Beam's own allowed lateness: the catalog's lateness plus the out-of-orderness bound plus a
    # margin. The decision what is late is taken before windowing by lake.aggregates' rule on the
    # watermark base recorded at commit (the same rule as local mode and replay); Beam's
    # watermark is only a safety net and should never drop what that rule kept.
    beam_lateness_margin_seconds: int = 3600

    @property
    def spec(self) -> AggregateSpec:
        return AggregateSpec.model_validate_json(self.spec_json)


class SplitLateFn(beam.DoFn):
    """The rows one raw commit inserted, as (event type, [row dicts]) -> one element per on-time
    (event, window) pair, timestamped by event time; late pairs tagged. The lateness rule runs
    once per commit on a frame (lake.aggregates.split), not once per event."""

    def __init__(self, spec_json: str) -> None:
        self.spec_json = spec_json

    def setup(self) -> None:
        self.spec = AggregateSpec.model_validate_json(self.spec_json)
        self.late_counter = Metrics.counter("tidegate", f"late_{self.spec.name}")

    def process(self, committed: tuple[str, list[dict[str, Any]]]) -> Iterator[Any]:

        _, rows = committed
        if not rows:
            return
        frame = pl.DataFrame(
            rows,
            schema_overrides={
                "event_time": pl.Datetime("us", "UTC"),
                "seen_max_event_time": pl.Datetime("us", "UTC"),
            },
            infer_schema_length=None,
        ).with_row_index("_row")
        parts = agg.split(frame, self.spec)  # (session rows without a key are never assigned)
        if parts.late.height:
            self.late_counter.inc(parts.late.height)
            yield TaggedOutput(LATE, agg.late_pairs_of(parts.late, self.spec))
        # rows by position, not by id: two sources may send the same id in one commit
        for i, ws, we in parts.on_time.select("_row", "window_start", "window_end").iter_rows():
            row = rows[i]
            yield TimestampedValue(
                {**row, "_window": (ws.timestamp(), we.timestamp())}, row["event_time"].timestamp()
            )


class AssignedWindows(beam.transforms.window.NonMergingWindowFn):  # type: ignore[misc]
    """Windows already assigned by lake.aggregates.assign (one element per on-time pair), so
    Beam windows exactly the pairs the lateness rule kept, never one it sent to the ledger."""

    def assign(self, context: Any) -> list[Any]:

        start, end = context.element["_window"]
        return [IntervalWindow(start, end)]

    def get_window_coder(self) -> Any:

        return coders.IntervalWindowCoder()


class PaneRowFn(beam.DoFn):
    """(keys, metrics) in a window pane -> an aggregate row with the pane as its revision."""

    def __init__(self, spec_json: str) -> None:
        self.spec_json = spec_json

    def setup(self) -> None:
        self.spec = AggregateSpec.model_validate_json(self.spec_json)

    def process(
        self,
        item: tuple[tuple[Any, ...], dict[str, Any]],
        window: Any = beam.DoFn.WindowParam,
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[dict[str, Any]]:

        keys, metrics = item
        row = {
            "window_start": datetime.fromtimestamp(float(window.start), UTC),
            "window_end": datetime.fromtimestamp(float(window.end), UTC),
            **dict(zip(self.spec.keys, keys, strict=True)),
            **metrics,
            "revision": pane.index + 1,
            "pane_timing": {0: "EARLY", 1: "ON_TIME", 2: "LATE", 3: "UNKNOWN"}.get(pane.timing, "UNKNOWN"),
        }
        yield row


class WindowedAggregates(NamedTuple):
    panes: PCollection  # dict rows: window, keys, metrics, revision (pane index + 1), pane_timing
    late: PCollection  # polars frames of late (event, window) pairs


class ComputeWindowedAggregates(beam.PTransform):
    """Streaming: committed raw rows, (event type, [rows]) per commit -> one row per (window,
    keys) pane.

    Windows by event time (element timestamps = ce-time); trigger: at the watermark, with early
    firings every `early_firing_seconds` of processing time and a late firing for every late
    element; ACCUMULATING panes, so every pane carries the full window so far and the sink can
    simply keep the newest pane (highest index) per (window, keys)."""

    def __init__(self, config: StreamingAggregateConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, committed: PCollection) -> WindowedAggregates:

        spec = self.config.spec
        split = committed | "SplitLate" >> beam.ParDo(SplitLateFn(self.config.spec_json)).with_outputs(
            LATE, main="on_time"
        )
        lateness = agg.duration(spec.allowed_lateness) + agg.duration(spec.out_of_orderness)
        keys = list(spec.keys)
        panes = (
            split.on_time
            | "Window"
            >> beam.WindowInto(
                window_fn(spec),
                trigger=trigger.AfterWatermark(
                    early=trigger.AfterProcessingTime(int(self.config.early_firing_seconds)),
                    late=trigger.AfterCount(1),
                ),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=int(lateness.total_seconds()) + self.config.beam_lateness_margin_seconds,
            )
            | "KeyByGroup" >> beam.Map(lambda r: (tuple(r.get(k) for k in keys), r))
            | "Combine" >> beam.CombinePerKey(AggregateCombineFn(self.config.spec_json))
            | "ToPaneRows" >> beam.ParDo(PaneRowFn(self.config.spec_json))
        )
        return WindowedAggregates(panes, split[LATE])


@dataclass(frozen=True)
class StreamSinkConfig:
    lake: str
    catalog_path: str
    spec_json: str
    run_id: str
    code_version: str
    git_sha: str
    storage_options: tuple[tuple[str, str], ...] = ()

    @property
    def storage(self) -> dict[str, str] | None:
        return dict(self.storage_options) or None


class WriteAggregatePanesFn(beam.DoFn):
    """Buffers panes; one guarded upsert per bundle (lake.projection.apply_panes)."""

    def __init__(self, config: StreamSinkConfig) -> None:
        self.config = config

    def setup(self) -> None:

        self.spec = AggregateSpec.model_validate_json(self.config.spec_json)
        _, registry = worker_state(self.config.catalog_path)
        self.schema = agg.output_schema(self.spec, raw_schema(registry.types[self.spec.source]))
        self.written = Metrics.counter("tidegate", f"panes_written_{self.spec.name}")

    def start_bundle(self) -> None:
        self.buffer: list[dict[str, Any]] = []

    def process(self, pane: dict[str, Any]) -> None:
        self.buffer.append(pane)

    def finish_bundle(self) -> None:

        if not self.buffer:
            return
        c = self.config
        meta = aggregate_commit_meta(
            self.spec, run_id=c.run_id, code_version=c.code_version, git_sha=c.git_sha, written_by="stream"
        )
        self.written.inc(
            apply_panes(
                c.lake, self.spec, self.schema, self.buffer, run_id=c.run_id, metadata=meta, storage=c.storage
            )
        )


class WriteStreamLateFn(beam.DoFn):
    """Late pairs from the streaming path into the late ledger (insert-only, raw_version -1:
    streaming commits are many and concurrent, the pair itself is the record)."""

    def __init__(self, config: StreamSinkConfig) -> None:
        self.config = config

    def setup(self) -> None:
        self.spec = AggregateSpec.model_validate_json(self.config.spec_json)

    def start_bundle(self) -> None:
        self.buffer: list[pl.DataFrame] = []

    def process(self, pairs: pl.DataFrame) -> None:
        self.buffer.append(pairs)

    def finish_bundle(self) -> None:

        if self.buffer:
            c = self.config
            write_late(
                c.lake, self.spec, pl.concat(self.buffer, how="vertical_relaxed"), -1, c.run_id, c.storage
            )


class WriteAggregatePanes(beam.PTransform):
    def __init__(self, config: StreamSinkConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, out: WindowedAggregates) -> None:
        out.panes | "Upsert" >> beam.ParDo(WriteAggregatePanesFn(self.config))
        out.late | "LateLedger" >> beam.ParDo(WriteStreamLateFn(self.config))
