"""`verify` of a lake as a bounded Beam batch job: the checks `tidegate verify` makes of raw
history and of what is derived from it, one element per group of files, for lakes beyond one
machine. The work is the pure functions `tidegate verify` runs in one process
(tidegate.lake.history, tidegate.lake.verify, tidegate.lake.views); Beam only distributes it.
The findings land as one JSON report in the lake (a job on Dataflow workers cannot print):
`<lake>/_reports/verify/<run_id>.json`, `ok` true when `problems` is empty.

    uv run python -m tidegate.pipelines.verify --lake .tidegate/lake
    tidegate deploy dataflow --verify --project P --region R --lake gs://B/lake \\
        --temp-location gs://S/tmp [--dry-run]

    raw/<type> groups -> HashKeys -> GroupByKey(bucket) -> RepeatedHashes ─┐
                      -> NameDuplicates(side input: repeated hashes) ◄─────┘ -> a key held twice
    raw/<source> groups -> PreAggregate -> CombineGlobally(MergePartials) -> CompareWithTable
                                        └> late pairs by bucket ─┐
    aggregates/_late groups -> ReadLedgerPairs by bucket ────────┴> CoGroupByKey -> CompareLatePairs
    raw/<view source> groups, views/<name> groups -> rows by key bucket -> CoGroupByKey -> FoldAndCompare
    all problems -> FirstProblems (count, the first 1,000) -> WriteReport

`plan` runs where the job is built (this machine, or the Flex Template launcher): it pins every
table at its version now and counts its file groups from the Delta log; each worker opens its
table at the pinned version and plans the same groups (sorted by path), so an element is a group
index. Keys are shuffled as 64-bit hashes (8 bytes a row), by hash bucket; only rows whose hash
repeats are read again to be named. Partial aggregate rows merge exactly in any grouping
(tidegate.lake.aggregates), so the combine is associative and a runner may merge them in any
tree. Late pairs and view rows are compared bucket by bucket (a hash of the join key, so each
pair or view key meets its counterpart in one bucket): a worker holds one bucket, not a table.
Problems are the same lines `tidegate verify` prints.

Locally it runs on the in-process FnApiRunner (pinned, as replay is). On Dataflow the same graph
runs with the lake on gs:// (`tidegate deploy dataflow --verify`, the Flex Template's
`--mode verify`: tidegate/pipelines/dataflow.py, flex_main.py; docs/deploy.md, "Verifying").
Not in the graph (`tidegate verify` has them): one quarantine row per message, the ledger's
balance, id conflicts, and `--manifest` reconciliation.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import polars as pl
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import PBegin, PCollection
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
from deltalake.exceptions import DeltaError
from deltalake.fs import DeltaStorageHandler

from tidegate.catalog import AggregateSpec, Catalog, ViewSpec, load_catalog
from tidegate.lake import aggregates as agg
from tidegate.lake import views
from tidegate.lake.aggregate_writes import app_id
from tidegate.lake.delta import try_open
from tidegate.lake.governance import retention_cutoffs
from tidegate.lake.history import (
    GROUP_ROWS,
    FileGroups,
    key_hashes,
    missing_files,
    readable_version,
    vacuumed,
)
from tidegate.lake.read import Lake
from tidegate.lake.tables import aggregate_uri, late_uri, raw_uri
from tidegate.lake.verify import pairs_per_event, unreadable_problem, window_diff
from tidegate.pipelines.runs import new_run_id
from tidegate.transforms.view_fold import (
    BucketRowsFn,
    Groups,
    GroupsFn,
    Pinned,
    Storage,
    bucket_raw_rows,
    by_bucket,
    concat,
    fold_bucket,
)
from tidegate.version import code_version, git_sha

BUCKETS = 64  # key-hash buckets of the exactly-once check; at most this many for late pairs
# raw rows behind a bucket of late pairs (~1% of events late: ~10k events and their windows)
LATE_BUCKET_ROWS = 1_000_000
KEYS = ["event_source", "event_id"]
LATE_PAIR = ["event_id", "window_start"]
LATE = "late"
REPORTS = "_reports/verify"  # under the lake: <lake>/_reports/verify/<run_id>.json
PROBLEM_LIMIT = 1_000  # problems a report lists (all are counted)


def _concat_or(frames: Iterable[pl.DataFrame], empty: pl.DataFrame) -> pl.DataFrame:
    found = concat(frames)
    return empty if found is None else found


def _groups(label: str, count: int) -> beam.PTransform:
    return label >> Groups(count)


# -- exactly once per raw table ---------------------------------------------------------------


class HashKeysFn(GroupsFn):
    """A file group -> (bucket, the 64-bit hashes of its rows' keys in that bucket)."""

    def process(self, i: int) -> Iterator[tuple[int, bytes]]:
        hashes = key_hashes(self.groups.read(i, KEYS), KEYS).to_numpy()
        which = hashes % np.uint64(BUCKETS)
        for b in np.unique(which):
            yield int(b), hashes[which == b].tobytes()


def repeated_hashes(item: tuple[int, Iterable[bytes]]) -> Iterator[int]:
    hashes = np.sort(np.frombuffer(b"".join(item[1]), dtype=np.uint64))
    yield from (int(h) for h in np.unique(hashes[1:][hashes[1:] == hashes[:-1]]))


class NameDuplicatesFn(GroupsFn):
    """A file group's rows whose key hash repeats somewhere (rare), as (key, 1)."""

    def process(self, i: int, repeated: list[int]) -> Iterator[tuple[tuple[str, str], int]]:
        if not repeated:
            return
        frame = self.groups.read(i, KEYS)
        suspects = pl.Series(repeated, dtype=pl.UInt64)
        for row in frame.filter(key_hashes(frame, KEYS).is_in(suspects.implode())).iter_rows():
            yield (row[0], row[1]), 1


class DuplicateKeys(beam.PTransform):  # type: ignore[misc]
    """File group indices of one raw table -> (source, id, times) for every key held twice."""

    def __init__(self, pinned: Pinned) -> None:
        super().__init__()
        self.pinned = pinned

    def expand(self, groups: PCollection) -> PCollection:
        repeated = (
            groups
            | "HashKeys" >> beam.ParDo(HashKeysFn(self.pinned))
            | "GroupBuckets" >> beam.GroupByKey()
            | "RepeatedHashes" >> beam.FlatMap(repeated_hashes)
        )
        return (
            groups
            | "NameDuplicates" >> beam.ParDo(NameDuplicatesFn(self.pinned), beam.pvalue.AsList(repeated))
            | "CountPerKey" >> beam.CombinePerKey(sum)
            | "HeldTwice" >> beam.Filter(lambda kv: kv[1] > 1)
            | "AsRow" >> beam.Map(lambda kv: (kv[0][0], kv[0][1], kv[1]))
        )


@dataclass(frozen=True)
class RawCheck:
    event_type: str
    pinned: Pinned
    groups: int

    @property
    def name(self) -> str:
        return (
            f"raw/{self.event_type}: one row per event (source, id), whatever its date "
            f"(version {self.pinned.version})"
        )


class ExactlyOnce(beam.PTransform):  # type: ignore[misc]
    """One raw table -> a problem per key it holds more than once."""

    def __init__(self, check: RawCheck) -> None:
        super().__init__()
        self.check = check

    def expand(self, p: PBegin) -> PCollection:
        t = self.check.event_type
        return (
            p
            | _groups("Groups", self.check.groups)
            | "DuplicateKeys" >> DuplicateKeys(self.check.pinned)
            | "Say"
            >> beam.Map(lambda r: f"raw/{t}: event_source={r[0]}, event_id={r[1]} is there {r[2]} times")
        )


# -- aggregate parity and the late ledger -----------------------------------------------------


@dataclass(frozen=True)
class ParityConfig:
    lake: str
    spec_json: str
    storage_options: Storage = ()
    table_version: int | None = None  # the aggregate table's version at planning (None: latest)
    cutoff: datetime | None = None  # retention of raw/<source>: older windows are not compared
    report_extra_late: bool = True  # False while raw is ahead of the table: the ledger may be too
    buckets: int = BUCKETS


def _late_frame(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        pl.col("event_id").cast(pl.String), pl.col("window_start").cast(pl.Datetime("us", "UTC"))
    )


class PreAggregateFn(GroupsFn):
    """A file group -> partial rows (main) and its late (event_id, window_start) pairs by bucket
    (LATE), columnar."""

    def __init__(self, pinned: Pinned, config: ParityConfig) -> None:
        super().__init__(pinned)
        self.config = config

    def setup(self) -> None:
        super().setup()
        self.spec = AggregateSpec.model_validate_json(self.config.spec_json)

    def process(self, i: int) -> Iterator[Any]:
        rows_per_chunk = max(10_000, 250_000 // pairs_per_event(self.spec))
        for rows in self.groups.chunks(i, agg.source_columns(self.spec), rows_per_chunk):
            parts = agg.split(agg.frame(rows.to_arrow()), self.spec)
            yield agg.partials(parts.on_time, self.spec)
            for bucket in by_bucket(_late_frame(parts.late), LATE_PAIR, self.config.buckets):
                yield beam.pvalue.TaggedOutput(LATE, bucket)


class MergePartials(beam.CombineFn):  # type: ignore[misc]
    """Partial rows of any number of groups -> merged (exact in any order), None if no group."""

    def __init__(self, spec_json: str) -> None:
        self.spec_json = spec_json

    def create_accumulator(self) -> list[pl.DataFrame]:
        return []

    def add_input(self, acc: list[pl.DataFrame], partials: pl.DataFrame) -> list[pl.DataFrame]:
        acc.append(partials)
        if len(acc) > 16:
            acc = [self._merge(acc)]
        return acc

    def merge_accumulators(self, accs: Iterable[list[pl.DataFrame]]) -> list[pl.DataFrame]:
        merged = [x for acc in accs for x in acc]
        return [self._merge(merged)] if merged else []

    def _merge(self, items: list[pl.DataFrame]) -> pl.DataFrame:
        spec = AggregateSpec.model_validate_json(self.spec_json)
        partials = [p for p in items if p.height]
        return agg.merge(pl.concat(partials, how="vertical_relaxed"), spec) if partials else items[0]

    def extract_output(self, acc: list[pl.DataFrame]) -> pl.DataFrame | None:
        return self._merge(acc) if acc else None


def compare(config: ParityConfig, merged: pl.DataFrame | None) -> list[str]:
    """Problems between the aggregate table and the merged recompute (empty: none), the windows
    before the retention cutoff left out (the table keeps them, raw no longer has their rows)."""
    spec = AggregateSpec.model_validate_json(config.spec_json)
    storage = dict(config.storage_options) or None
    table = try_open(aggregate_uri(config.lake, spec.name), storage, version=config.table_version)
    if table is None:
        return [f"aggregates/{spec.name} does not exist"]
    got = pl.from_arrow(table.to_pyarrow_table(columns=agg.value_columns(spec)))
    assert isinstance(got, pl.DataFrame)
    if config.cutoff is not None:
        got = got.filter(pl.col("window_start") >= config.cutoff)
    if merged is None:
        return [f"{spec.name}: {got.height} windows in the table, no raw rows"] if got.height else []
    expected = agg.finalize(merged, spec)
    if config.cutoff is not None and not expected.is_empty():
        expected = expected.filter(pl.col("window_start") >= config.cutoff)
    return window_diff(expected, got, spec)


class ReadLedgerPairsFn(GroupsFn):
    """A file group of the late ledger -> its (event_id, window_start) pairs of one aggregate,
    by bucket (the ledger is partitioned by aggregate: other partitions' files are skipped)."""

    def __init__(self, pinned: Pinned, aggregate: str, buckets: int) -> None:
        super().__init__(pinned)
        self.aggregate = aggregate
        self.buckets = buckets

    def process(self, i: int) -> Iterator[tuple[int, pl.DataFrame]]:
        pairs = self.groups.read(i, LATE_PAIR, filter=ds.field("aggregate") == self.aggregate)
        yield from by_bucket(_late_frame(pairs), LATE_PAIR, self.buckets)


def late_diff(config: ParityConfig, item: tuple[int, dict[str, Iterable[pl.DataFrame]]]) -> list[str]:
    """One bucket: the late pairs raw history makes that the ledger lacks, and (when the table
    is up to date with raw) the ledger's pairs raw does not make late: `tidegate verify`'s lines."""
    name = AggregateSpec.model_validate_json(config.spec_json).name
    empty = pl.DataFrame(schema={"event_id": pl.String, "window_start": pl.Datetime("us", "UTC")})
    expected = _concat_or(item[1].get("raw", []), empty)
    ledger = _concat_or(item[1].get("ledger", []), empty)
    if config.cutoff is not None:  # late pairs of expired raw rows stay in the ledger, as windows do
        expected = expected.filter(pl.col("window_start") >= config.cutoff)
        ledger = ledger.filter(pl.col("window_start") >= config.cutoff)
    missing = expected.join(ledger, on=LATE_PAIR, how="anti")
    extra = ledger.join(expected, on=LATE_PAIR, how="anti") if config.report_extra_late else empty
    return [f"{name}: late pair {r} missing from the ledger" for r in missing.head(20).to_dicts()] + [
        f"{name}: ledger holds {r}, which raw history does not make late" for r in extra.head(20).to_dicts()
    ]


@dataclass(frozen=True)
class AggregateCheck:
    name: str
    raw: Pinned
    groups: int
    config: ParityConfig
    ledger: Pinned | None  # None: no late ledger yet (every late pair is missing from it)
    ledger_groups: int = 0

    @property
    def names(self) -> list[str]:
        return [
            f"aggregates/{self.name}: equals a recompute from raw (raw version {self.raw.version})",
            f"aggregates/_late: {self.name} late pairs match raw history",
        ]


class AggregateParity(beam.PTransform):  # type: ignore[misc]
    """One aggregate -> problems: windows that differ from a recompute of the raw version it
    incorporates, and late pairs the late ledger lacks or holds in excess."""

    def __init__(self, check: AggregateCheck) -> None:
        super().__init__()
        self.check = check

    def expand(self, p: PBegin) -> PCollection:
        c = self.check
        pre = (
            p
            | _groups("Groups", c.groups)
            | "PreAggregate"
            >> beam.ParDo(PreAggregateFn(c.raw, c.config)).with_outputs(LATE, main="partials")
        )
        windows = (
            pre.partials
            | "MergePartials" >> beam.CombineGlobally(MergePartials(c.config.spec_json))
            | "CompareWithTable" >> beam.FlatMap(lambda m, config=c.config: compare(config, m))
        )
        ledger = (
            p
            | _groups("LedgerGroups", c.ledger_groups)
            | "ReadLedgerPairs" >> beam.ParDo(ReadLedgerPairsFn(c.ledger, c.name, c.config.buckets))
            if c.ledger is not None
            else p | "NoLedger" >> beam.Create([])
        )
        late = (
            {"raw": pre[LATE], "ledger": ledger}
            | "JoinLatePairs" >> beam.CoGroupByKey()
            | "CompareLatePairs" >> beam.FlatMap(lambda kv, config=c.config: late_diff(config, kv))
        )
        return (windows, late) | "Problems" >> beam.Flatten()


# -- views ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewCheck:
    name: str
    view_json: str
    table: Pinned
    table_groups: int
    sources: tuple[tuple[str, Pinned, int], ...]  # (event type, raw pinned, groups)
    buckets: int = BUCKETS

    @property
    def names(self) -> list[str]:
        versions = ", ".join(f"{t} version {p.version}" for t, p, _ in self.sources)
        return [f"views/{self.name}: equals a fold of raw history ({versions or 'no source yet'})"]


class FoldAndCompareFn(beam.DoFn):  # type: ignore[misc]
    """One key bucket: the fold of its raw rows against the view rows of the same keys."""

    def __init__(self, check: ViewCheck) -> None:
        self.check = check

    def setup(self) -> None:
        self.view: ViewSpec = ViewSpec.model_validate_json(self.check.view_json)
        self.table = self.check.table.table()  # its schema, for a bucket without view rows
        self.ident = [self.view.key, *(["valid_from"] if self.view.history else [])]

    def process(self, item: tuple[int, dict[str, Iterable[pl.DataFrame]]]) -> Iterator[str]:
        sides = item[1]
        expected = fold_bucket(self.view, (t for t, _, _ in self.check.sources), sides)
        stored = concat(sides.get("table", []))
        # view_parity's own comparison of a key range, so the lines are `tidegate verify`'s
        yield from views.differences(self.view.name, self.ident, expected, stored, self.table)


class ViewParity(beam.PTransform):  # type: ignore[misc]
    """One view -> problems: keys whose rows differ from a fold of the raw versions the view
    records. A key's events sit in any file of any source: rows meet by key bucket."""

    def __init__(self, check: ViewCheck) -> None:
        super().__init__()
        self.check = check

    def expand(self, p: PBegin) -> PCollection:
        c = self.check
        view = ViewSpec.model_validate_json(c.view_json)
        sides = bucket_raw_rows(p, view, c.sources, c.buckets)
        sides["table"] = (
            p
            | _groups("Groups/table", c.table_groups)
            | "BucketRows/table" >> beam.ParDo(BucketRowsFn(c.table, view.key, None, c.buckets))
        )
        return (
            sides
            | "GroupBuckets" >> beam.CoGroupByKey()
            | "FoldAndCompare" >> beam.ParDo(FoldAndCompareFn(c))
        )


# -- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the job checks, every table pinned: small and picklable (it is the job's graph)."""

    lake: str
    raw: tuple[RawCheck, ...] = ()
    aggregates: tuple[AggregateCheck, ...] = ()
    views: tuple[ViewCheck, ...] = ()
    problems: tuple[str, ...] = ()  # found while planning (a missing table, an unreadable version)
    storage_options: Storage = ()

    @property
    def checks(self) -> list[str]:
        return [
            *(c.name for c in self.raw),
            *(n for c in self.aggregates for n in c.names),
            *(n for c in self.views for n in c.names),
        ]


def plan(
    catalog: Catalog,
    lake: str,
    storage: dict[str, str] | None = None,
    *,
    offline: bool = False,
    group_rows: int = GROUP_ROWS,
) -> Plan:
    """Every raw table, aggregate and view of `catalog` that exists in `lake`, pinned at its
    version now, and what `tidegate verify` would say before reading any row (a missing table,
    a table without its raw version marker). `offline` (a dry run, no credentials): every table
    of the catalog at version -1 in two placeholder groups, nothing read; the steps are the real
    ones."""
    options: Storage = tuple(sorted((storage or {}).items()))
    if offline:
        return _offline_plan(catalog, lake, options)
    return _Planner(lake, storage, options, group_rows).plan(catalog)


@dataclass(frozen=True)
class _Planner:
    lake: str
    storage: dict[str, str] | None
    options: Storage
    group_rows: int

    def pin(self, uri: str, version: int) -> tuple[Pinned, FileGroups]:
        pinned = Pinned(uri, version, self.group_rows, self.options)
        return pinned, pinned.groups()

    def plan(self, catalog: Catalog) -> Plan:
        lake, storage = self.lake, self.storage
        raw: dict[str, RawCheck] = {}
        for t in catalog.event_types:
            table = try_open(raw_uri(lake, t), storage)
            if table is not None:
                pinned, groups = self.pin(raw_uri(lake, t), table.version())
                raw[t] = RawCheck(t, pinned, len(groups))
        problems: list[str] = []
        if not Lake(lake, storage, catalog).has_tables():
            problems.append(f"no tidegate tables under {lake}: run `tidegate ingest` first")
        cutoffs = retention_cutoffs(lake, storage)
        ledger = try_open(late_uri(lake), storage)
        ledger_pin = self.pin(late_uri(lake), ledger.version()) if ledger is not None else None
        aggregates: list[AggregateCheck] = []
        for spec in catalog.aggregates:
            if spec.source in raw:
                found = self.aggregate(spec, raw[spec.source], cutoffs, ledger_pin)
                if isinstance(found, str):
                    problems.append(found)
                else:
                    aggregates.append(found)
        checked_views: list[ViewCheck] = []
        for view in catalog.views:
            if any(e.type in raw for e in view.events):
                got = self.view(view)
                if isinstance(got, str):
                    problems.append(got)
                else:
                    checked_views.append(got)
        return Plan(
            lake, tuple(raw.values()), tuple(aggregates), tuple(checked_views), tuple(problems), self.options
        )

    def aggregate(
        self,
        spec: AggregateSpec,
        source: RawCheck,
        cutoffs: dict[str, datetime],
        ledger: tuple[Pinned, FileGroups] | None,
    ) -> AggregateCheck | str:
        """An aggregate's check, or the problem `tidegate verify` reports before reading a row."""
        table = try_open(aggregate_uri(self.lake, spec.name), self.storage)
        if table is None:
            return (
                f"aggregates/{spec.name} does not exist: `tidegate ingest` builds it, "
                f"`tidegate replay {spec.name}` rebuilds it"
            )
        version = table.transaction_version(app_id(spec))
        if version is None:
            return f"{spec.name}: table has no raw version marker"
        uri = raw_uri(self.lake, spec.source)
        same = readable_version(uri, version, self.storage)  # a vacuum after compaction: same rows
        gone = missing_files(uri, same, self.storage)
        if gone:
            return unreadable_problem(spec.name, version, vacuumed(gone))
        try:
            pinned, groups = self.pin(uri, same)
        except (OSError, DeltaError) as exc:
            reason = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
            return unreadable_problem(spec.name, version, reason)
        config = ParityConfig(
            self.lake,
            spec.model_dump_json(),
            self.options,
            table_version=table.version(),
            cutoff=cutoffs.get(f"raw/{spec.source}"),
            report_extra_late=source.pinned.version - version <= 0,
            buckets=min(BUCKETS, math.ceil(groups.rows / LATE_BUCKET_ROWS) or 1),
        )
        return AggregateCheck(
            spec.name,
            pinned,
            len(groups),
            config,
            ledger[0] if ledger else None,
            len(ledger[1]) if ledger else 0,
        )

    def view(self, view: ViewSpec) -> ViewCheck | str:
        """A view's check at the raw versions it records (`views.view_parity`'s), or its problem."""
        table = try_open(views.view_uri(self.lake, view.name), self.storage)
        if table is None:
            return (
                f"views/{view.name} does not exist: `tidegate ingest` builds it, "
                f"`tidegate replay {view.name}` rebuilds it"
            )
        recorded: dict[str, int] = {}
        for e in view.events:
            version = table.transaction_version(views.app_id(view, e.type))
            if version is None or version < 0:  # the source did not exist when the view last committed
                continue
            if try_open(raw_uri(self.lake, e.type), self.storage) is not None:
                recorded[e.type] = version
        readable, problem = views.readable_sources(self.lake, view, recorded, self.storage)
        if problem:
            return problem
        sources: list[tuple[str, Pinned, int]] = []
        rows = 0
        for t, version in readable.items():
            pinned, groups = self.pin(raw_uri(self.lake, t), version)
            rows += groups.rows
            sources.append((t, pinned, len(groups)))
        pinned, table_groups = self.pin(views.view_uri(self.lake, view.name), table.version())
        # a bucket folds about views.BUCKET_ROWS raw rows, as the one-process fold's key range does
        buckets = math.ceil(rows / views.BUCKET_ROWS) or 1
        return ViewCheck(
            view.name, view.model_dump_json(), pinned, len(table_groups), tuple(sources), buckets
        )


# A dry run's placeholder group count: two, so its spec shows the Spread steps a real lake's has.
_OFFLINE_GROUPS = 2


def _offline_plan(catalog: Catalog, lake: str, options: Storage) -> Plan:
    def pin(uri: str) -> Pinned:
        return Pinned(uri, -1, storage_options=options)

    n = _OFFLINE_GROUPS

    raw = tuple(RawCheck(t, pin(raw_uri(lake, t)), n) for t in catalog.event_types)
    aggregates = tuple(
        AggregateCheck(
            spec.name,
            pin(raw_uri(lake, spec.source)),
            n,
            ParityConfig(lake, spec.model_dump_json(), options),
            pin(late_uri(lake)),
            n,
        )
        for spec in catalog.aggregates
    )
    checked_views = tuple(
        ViewCheck(
            v.name,
            v.model_dump_json(),
            pin(views.view_uri(lake, v.name)),
            n,
            tuple((e.type, pin(raw_uri(lake, e.type)), n) for e in v.events),
        )
        for v in catalog.views
    )
    return Plan(lake, raw, aggregates, checked_views, (), options)


def build(p: beam.Pipeline, plan: Plan) -> PCollection:
    """The verify graph of `plan`: a PCollection of problems (text lines, `tidegate verify`'s)."""
    outputs = [p | "PlanningProblems" >> beam.Create(list(plan.problems))]
    for r in plan.raw:
        outputs.append(p | f"ExactlyOnce/raw/{r.event_type}" >> ExactlyOnce(r))
    for a in plan.aggregates:
        outputs.append(p | f"AggregateParity/{a.name}" >> AggregateParity(a))
    for v in plan.views:
        outputs.append(p | f"ViewParity/{v.name}" >> ViewParity(v))
    return tuple(outputs) | "Problems" >> beam.Flatten()


# -- the report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportConfig:
    """Where the report goes and what it says about the run (small, picklable)."""

    lake: str
    run_id: str
    started_at: str
    checks: tuple[str, ...] = ()
    code_version: str = field(default_factory=code_version)
    git_sha: str = field(default_factory=git_sha)
    storage_options: Storage = ()
    limit: int = PROBLEM_LIMIT


def report_path(run_id: str) -> str:
    """The report's path inside the lake."""
    return f"{REPORTS}/{run_id}.json"


def report_uri(lake: str, run_id: str) -> str:
    return f"{lake.rstrip('/')}/{report_path(run_id)}"


class FirstProblems(beam.CombineFn):  # type: ignore[misc]
    """Problems -> (how many, the first `limit` in sorted order): a report stays readable when
    a broken lake has millions, and the same problems give the same report whatever the order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def create_accumulator(self) -> tuple[int, list[str]]:
        return 0, []

    def add_input(self, acc: tuple[int, list[str]], problem: str) -> tuple[int, list[str]]:
        count, kept = acc
        kept.append(problem)
        if len(kept) > 2 * self.limit:  # trimmed now and then: O(log limit) a problem
            kept = heapq.nsmallest(self.limit, kept)
        return count + 1, kept

    def merge_accumulators(self, accs: Iterable[tuple[int, list[str]]]) -> tuple[int, list[str]]:
        accs = list(accs)
        return sum(n for n, _ in accs), heapq.nsmallest(self.limit, (p for _, ps in accs for p in ps))

    def extract_output(self, acc: tuple[int, list[str]]) -> tuple[int, list[str]]:
        return acc[0], heapq.nsmallest(self.limit, acc[1])


def _lake_storage(lake: str, storage: dict[str, str] | None, *, create: bool) -> DeltaStorageHandler:
    """The lake's root through delta-rs's object store: the same credentials and endpoint as its
    tables (tidegate.lake.committer writes staged files the same way). A local root must exist."""
    if "://" not in lake or lake.startswith("file://"):
        root = Path(lake.removeprefix("file://"))
        if create:
            root.mkdir(parents=True, exist_ok=True)
        elif not root.is_dir():
            raise FileNotFoundError(f"no lake at {lake}")
    return DeltaStorageHandler(lake, storage)


def report(
    config: ReportConfig, found: tuple[int, list[str]], finished_at: datetime | None = None
) -> dict[str, Any]:
    """The report object of a run that found `found` (count, the problems kept)."""
    count, problems = found
    return {
        "run_id": config.run_id,
        "lake": config.lake,
        "started_at": config.started_at,
        "finished_at": _iso(finished_at or datetime.now(UTC)),
        "ok": count == 0,
        "problem_count": count,
        "problems": problems,
        "checks": list(config.checks),
        "code_version": config.code_version,
        "git_sha": config.git_sha,
    }


def write_report(config: ReportConfig, found: tuple[int, list[str]]) -> dict[str, Any]:
    """Write the run's report to `<lake>/_reports/verify/<run_id>.json` (a retried bundle writes
    the same object again) and return it."""
    body = report(config, found)
    handler = _lake_storage(config.lake, dict(config.storage_options) or None, create=True)
    # raw bytes through the handler itself: its pyarrow wrapper hands the stream Buffers (and
    # the stream's stub lacks the close() it has)
    out: Any = handler._handler.open_output_stream(report_path(config.run_id), None)
    try:
        out.write(json.dumps(body, indent=2).encode())
    finally:
        out.close()
    return body


def read_report(
    lake: str, run_id: str | None = None, storage: dict[str, str] | None = None
) -> dict[str, Any]:
    """A verify report of `lake`: run `run_id`'s, or the latest (run ids sort by start time)."""
    handler = _lake_storage(lake, storage, create=False)
    if run_id is None:
        found = handler.get_file_info_selector(pafs.FileSelector(REPORTS, allow_not_found=True))
        names = sorted(f.base_name for f in found if f.base_name.endswith(".json"))
        if not names:
            raise FileNotFoundError(f"no verify report under {report_uri(lake, '')}")
        run_id = names[-1].removesuffix(".json")
    with handler.open_input_stream(report_path(run_id)) as f:
        body: dict[str, Any] = json.loads(f.read())
    return body


class WriteReport(beam.PTransform):  # type: ignore[misc]
    """Problems -> the run's report, written once to the lake (also when there is no problem)."""

    def __init__(self, config: ReportConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, problems: PCollection) -> PCollection:
        return (
            problems
            | "FirstProblems" >> beam.CombineGlobally(FirstProblems(self.config.limit))
            | "Write" >> beam.Map(lambda found, config=self.config: write_report(config, found))
        )


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def build_job(
    p: beam.Pipeline,
    catalog: Catalog,
    lake: str,
    storage: dict[str, str] | None,
    *,
    run_id: str,
    offline: bool = False,
    group_rows: int = GROUP_ROWS,
) -> PCollection:
    """The whole job: plan `lake` now (offline: nothing read), check it, write the report of
    `run_id`. The one builder behind `run_local`, `tidegate deploy dataflow --verify` and the Flex
    Template's `--mode verify`."""
    started = _iso(datetime.now(UTC))
    verify_plan = plan(catalog, lake, storage, offline=offline, group_rows=group_rows)
    config = ReportConfig(
        lake, run_id, started, tuple(verify_plan.checks), storage_options=verify_plan.storage_options
    )
    return build(p, verify_plan) | "WriteReport" >> WriteReport(config)


def run_report(
    catalog: Catalog,
    lake: str,
    storage: dict[str, str] | None = None,
    run_id: str | None = None,
    group_rows: int = GROUP_ROWS,
) -> dict[str, Any]:
    """Run the job on the in-process runner; the report it wrote to the lake, read back."""
    run_id = run_id or new_run_id("verify")
    options = PipelineOptions(["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    with beam.Pipeline(runner=FnApiRunner(), options=options) as p:
        build_job(p, catalog, lake, storage, run_id=run_id, group_rows=group_rows)
    return read_report(lake, run_id, storage)


def run_local(catalog: Catalog, lake: str, storage: dict[str, str] | None = None) -> list[str]:
    """Run the job on the in-process runner; the problems found (empty: the lake verifies; at
    most PROBLEM_LIMIT of them, sorted). Its report is in the lake too."""
    problems: list[str] = run_report(catalog, lake, storage)["problems"]
    return problems


if __name__ == "__main__":  # pragma: no cover - a manual entry point
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lake", required=True)
    args = parser.parse_args()
    body = run_report(load_catalog(), args.lake)
    for line in body["problems"] or ["verified: no problem"]:
        print(line)
    print(f"report: {report_uri(args.lake, body['run_id'])}")
