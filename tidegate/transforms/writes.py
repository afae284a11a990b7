"""The writers of the ingest pipeline: raw history, quarantine, data quality.

Writers buffer in `process` and commit in `finish_bundle` (one commit per table per bundle),
idempotently on the table's key (tidegate.lake.tables), so a retried bundle or a redelivered
message changes nothing: through `tidegate.lake.writer.insert_new` (an insert-only MERGE:
streaming workers are many writers) or, when the process is the lake's only writer
(`single_writer`, local mode under the lake lock), `tidegate.lake.writer.append_new` (an
in-memory key index, then an append). In local mode the writers hand their commits to `COMMITS`
so every table of a batch commits side by side (`parallel_commits`). Each commit comes out as a
`TableCommit`, which the ledger adds up (tidegate.transforms.ledger).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PCollection, TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue

from tidegate.expectations.checks import (
    Rejection,
    ValidEvent,
    id_conflict,
)
from tidegate.expectations.envelope import RawMessage
from tidegate.faults import fault_point, transient_fault
from tidegate.lake.committer import StagedChunk, commit_staged, stage_rows
from tidegate.lake.delta import try_open
from tidegate.lake.keyindex import DEDUP_HORIZON, key_index
from tidegate.lake.pii import load_protector
from tidegate.lake.rows import (
    commit_metadata,
    committed_rows,
    quarantine_rows,
    raw_rows,
    stamp_seen_max_event_time,
)
from tidegate.lake.tables import QUALITY as QUALITY_TABLE
from tidegate.lake.tables import (
    QUALITY_SCHEMA,
    QUARANTINE,
    raw_table,
    raw_uri,
)
from tidegate.lake.writer import append_new, insert_new
from tidegate.transforms.base import (
    ROWS,
    IngestConfig,
    _CatalogFn,
    _global,
    pii_policies_of,
    raw_schemas,
    suite_fingerprints,
    suite_validator,
)
from tidegate.transforms.ingest_types import Rejected, Typed


@dataclass(frozen=True)
class TableCommit:
    """What a writer committed for one table in one bundle."""

    kind: str  # raw | quarantine | quality
    event_type: str | None
    table: str
    batch_ids: tuple[str, ...]
    received: int
    offered: int
    inserted: int
    version: int | None
    files: int = 0  # data files the commit added, and their bytes (lineage statistics)
    bytes: int = 0
    # quality commits: (event_type, expectation, column, success) per outcome, for lineage
    details: tuple[tuple[str, str, str | None, bool], ...] = ()
    committed_at: float = 0.0  # epoch seconds when the commit was done: its rows are visible
    ms: int = 0  # how long the commit took
    conflicts: int = 0  # quarantine commits: of `inserted`, the id conflicts (ledger id_conflicts)

    @classmethod
    def of(
        cls,
        kind: str,
        event_type: str | None,
        batch_ids: list[str],
        received: int,
        result: Any,  # lake.writer.CommitResult
        details: tuple[tuple[str, str, str | None, bool], ...],
        committed_at: float,
        ms: int,
    ) -> TableCommit:
        return cls(
            kind,
            event_type,
            result.table,
            tuple(batch_ids),
            received,
            result.offered,
            result.inserted,
            result.version,
            result.files,
            result.bytes,
            details,
            committed_at,
            ms,
        )


def _commit_timed(
    kind: str,
    event_type: str | None,
    batch_ids: list[str],
    received: int,
    commit: Callable[[], Any],
    details: tuple[Any, ...] = (),
) -> TableCommit:
    """Run one table's commit (a `tidegate.lake.writer` call) and describe it as a TableCommit: how long it
    took, and when it was done (its rows are visible from then on)."""
    started = time.perf_counter()
    result = commit()
    ms = int((time.perf_counter() - started) * 1000)
    return TableCommit.of(kind, event_type, batch_ids, received, result, details, time.time(), ms)


class CommitPool:
    """Local mode's side-by-side commits (`IngestConfig.parallel_commits`).

    Beam finishes a fused stage's DoFns one after the other, so the raw, quarantine and
    _quality writers would commit in turn (each commit is mostly delta-rs work that releases
    the GIL). With parallel commits each writer submits its commits here from `finish_bundle`
    and returns; the local driver `drain`s the batch after the Beam run, which waits for every
    commit of the batch (also when the run failed: nothing of a failed run may still be
    committing when it is retried or split) and raises the first commit error.
    """

    def __init__(self, workers: int = 8) -> None:
        self._lock = threading.Lock()
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, list[Future[Any]]] = defaultdict(list)

    def submit(self, key: str, commit: Callable[[], TableCommit | tuple[TableCommit, ...]]) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="commit")
            self._pending[key].append(self._pool.submit(commit))

    def drain(self, key: str) -> list[TableCommit]:
        with self._lock:
            futures = self._pending.pop(key, [])
        wait(futures)
        for f in futures:
            exc = f.exception()
            if exc is not None:
                raise exc
        done: list[TableCommit] = []
        for f in futures:
            result = f.result()
            done += result if isinstance(result, tuple) else [result]  # raw commits: (raw, conflicts)
        return done


COMMITS = CommitPool()


class _WriterFn(_CatalogFn):
    def _handed_off(self, commits: list[tuple[list[str], Callable[[], Any]]]) -> bool:
        """Local mode (`parallel_commits`): give the commits to COMMITS, keyed by their batch
        ids, and let finish_bundle return without waiting. False: commit here, in the bundle."""
        if not self.config.parallel_commits:
            return False
        for batch_ids, commit in commits:
            COMMITS.submit(",".join(batch_ids), commit)
        return True

    def setup(self) -> None:
        super().setup()

        self.protector, _warning = load_protector(
            self.config.production, self.config.pii_key_secret, lake=self.config.lake
        )
        self.policies = pii_policies_of(self.config.catalog_path)

    def _meta(self, batch_ids: list[str], messages: list[RawMessage], **extra: Any) -> dict[str, str]:

        return commit_metadata(
            run_id=self.config.run_id,
            batch_ids=batch_ids,
            code_version=self.config.code_version,
            git_sha=self.config.git_sha,
            subscriptions={m.subscription for m in messages},
            message_ids=[m.message_id for m in messages],
            pii_key_id=self.protector.key_id,
            pii_key_version=self.protector.key_version,
            **extra,
        )


def _insert(
    config: IngestConfig,
    uri: str,
    rows: Any,
    keys: Sequence[str],
    value: str | None = None,
    **kwargs: Any,
) -> Callable[[], Any]:
    """The idempotent commit of `rows` to `uri`: append after an in-memory key check for the lake's
    only writer (local mode), the insert-only MERGE otherwise (lake.writer). With `value` (raw
    history: `payload_digest`) the commit dedups within the horizon whatever the event date and
    reports id conflicts on that column."""

    if config.single_writer:
        return functools.partial(
            append_new,
            uri,
            rows,
            keys=keys,
            index=key_index(uri, keys, value),
            storage_options=config.storage,
            **kwargs,
        )
    if value is not None:
        kwargs.update(horizon=DEDUP_HORIZON, conflict_on=value)
    return functools.partial(insert_new, uri, rows, keys=keys, storage_options=config.storage, **kwargs)


class _RawCommitterFn(_WriterFn):
    """What both raw-history committers share: schemas, counters and a commit's lineage."""

    def setup(self) -> None:
        super().setup()
        self.schemas = raw_schemas(self.config.catalog_path)
        self.fingerprints = suite_fingerprints(self.config.catalog_path)
        self.written = Metrics.counter("tidegate", "raw_written")
        self.duplicates = Metrics.counter("tidegate", "duplicates_skipped")
        self.commit_ms = Metrics.distribution("tidegate", "raw_commit_ms")

    def _raw_meta(
        self, event_type: str, batch_ids: list[str], events: Sequence[ValidEvent], **extra: str
    ) -> dict[str, str]:
        """A raw commit's metadata: its messages, the contract versions and suite it checked them
        with, and which engine evaluated the suite (native or gx)."""
        contracts = self.registry.types[event_type]
        used = sorted({e.contract.version for e in events})
        return self._meta(
            batch_ids,
            [e.message for e in events],
            contracts={f"v{v}": contracts.versions[v].fingerprint for v in used},
            suite_fingerprint=self.fingerprints.get(event_type),
            extra={
                "tidegate_event_type": event_type,
                "tidegate_table": "raw",
                **extra,
                "tidegate_expectations_engine": suite_validator(self.config.catalog_path).engine_of(
                    event_type
                ),
            },
        )


class WriteRawHistoryFn(_RawCommitterFn):
    """Buffers valid events per type; one idempotent commit (`_insert`) per type per bundle."""

    def start_bundle(self) -> None:
        self.buffer: dict[str, list[ValidEvent]] = defaultdict(list)
        self.batch_ids: dict[str, set[str]] = defaultdict(set)

    def process(self, typed: Typed) -> Iterator[WindowedValue | TaggedOutput]:
        for e in typed.events:
            self.buffer[e.contract.event_type].append(e)
            self.batch_ids[e.contract.event_type].add(typed.batch_id)
        if self.config.commit_per_chunk:
            yield from self.finish_bundle()
            self.start_bundle()

    def finish_bundle(self) -> Iterator[WindowedValue | TaggedOutput]:

        if not self.buffer:  # no valid event: no raw commit (nor its fault points)
            return
        now = datetime.now(UTC)
        commits: list[tuple[str, list[str], Any]] = []  # event type, batch ids, the commit
        for event_type in sorted(self.buffer):
            events = self.buffer[event_type]
            batch_ids = sorted(self.batch_ids[event_type])
            rows = raw_rows(
                events,
                self.schemas[event_type],
                self.policies[event_type],
                self.protector,
                run_id=self.config.run_id,
                batch_id=",".join(batch_ids),
                ingest_time=now,
            )
            meta = self._raw_meta(event_type, batch_ids, events)
            commits.append(
                (
                    event_type,
                    batch_ids,
                    functools.partial(
                        self._commit_raw,
                        event_type,
                        batch_ids,
                        events,
                        rows.column("payload_digest").to_pylist(),
                        _insert(
                            self.config,
                            raw_uri(self.config.lake, event_type),
                            rows,
                            raw_table(event_type).keys,
                            value="payload_digest",
                            metadata=meta,
                            partition_by=raw_table(event_type).partition_by,
                            prepare=lambda table, batch: stamp_seen_max_event_time(table, batch, now),
                        ),
                    ),
                )
            )
        fault_point("before_commit")
        transient_fault()
        if self._handed_off([(batch_ids, commit) for _, batch_ids, commit in commits]):
            return
        # One table per type: the commits are independent, and delta-rs releases the GIL while
        # it merges, so they run side by side (~half the wall time with two or three types).
        if len(commits) > 1:
            with ThreadPoolExecutor(len(commits), thread_name_prefix="raw-commit") as pool:
                done = list(pool.map(lambda c: c[2](), commits))
        else:
            done = [c[2]() for c in commits]
        for (event_type, batch_ids, _), (commit, *conflicts) in zip(commits, done, strict=True):
            self.commit_ms.update(commit.ms)
            self.written.inc(commit.inserted)
            self.duplicates.inc(commit.received - commit.inserted)
            emit = dict(self.config.emit_rows).get(event_type)
            if emit:
                rows = committed_rows(
                    raw_uri(self.config.lake, event_type),
                    batch_id=",".join(batch_ids),
                    dates=sorted({e.envelope.time.date() for e in self.buffer[event_type]}),
                    columns=emit,
                    storage_options=self.config.storage,
                )
                yield TaggedOutput(ROWS, _global((event_type, rows)))  # one element per commit
            yield _global(commit)
            for quarantined in conflicts:
                yield _global(quarantined)

    def _commit_raw(
        self,
        event_type: str,
        batch_ids: list[str],
        events: list[ValidEvent],
        digests: list[str],
        commit: Callable[[], Any],
    ) -> tuple[TableCommit, ...]:
        """One type's raw commit, then (if any) its id conflicts to the quarantine: the raw
        commit found them, and they must be recorded before the batch is accounted for."""
        started = time.perf_counter()
        result = commit()
        ms = int((time.perf_counter() - started) * 1000)
        n = len(result.conflicts)
        raw = TableCommit.of("raw", event_type, batch_ids, len(events) - n, result, (), time.time(), ms)
        if not n:
            return (raw,)
        return raw, self._quarantine_conflicts(batch_ids, events, digests, result.conflicts)

    def _quarantine_conflicts(
        self,
        batch_ids: list[str],
        events: Sequence[ValidEvent],
        digests: Sequence[str],
        conflicts: Sequence[tuple[int, str]],
    ) -> TableCommit:
        """The id conflicts a raw commit found (position in `events`, digest that landed), to
        the quarantine; they must be recorded before the batch is accounted for."""
        n = len(conflicts)
        Metrics.counter("tidegate", "id_conflicts").inc(n)
        rejections = [id_conflict(events[i], landed, digests[i]) for i, landed in conflicts]
        rows = quarantine_rows(
            rejections,
            self.policies,
            self.protector,
            run_id=self.config.run_id,
            batch_id=",".join(batch_ids),
            now=datetime.now(UTC),
        )
        meta = self._meta(batch_ids, [r.message for r in rejections], extra={"tidegate_table": "quarantine"})
        quarantined = _commit_timed(
            "quarantine",
            None,
            batch_ids,
            n,
            _insert(
                self.config,
                QUARANTINE.uri(self.config.lake),
                rows,
                QUARANTINE.keys,
                metadata=meta,
                partition_by=QUARANTINE.partition_by,
            ),
        )
        return dataclasses.replace(quarantined, conflicts=quarantined.inserted)


@dataclass(frozen=True)
class StagedRaw:
    """One chunk's valid events of one type, staged (written, not committed) in the raw table:
    what the table's committer needs to commit, account for and quarantine them."""

    batch_id: str
    chunk: StagedChunk
    events: tuple[ValidEvent, ...]  # id conflicts become quarantine rows; lineage names the messages
    digests: tuple[str, ...]  # payload digest of each event, in `events` order


class StageRawHistoryFn(_WriterFn):
    """The workers' half of the staged raw path (tidegate.lake.committer): each chunk's rows of
    each type written as Parquet files into the type's table, uncommitted, keyed by type for
    the table's committer. Many workers stage side by side; nothing here commits."""

    def setup(self) -> None:
        super().setup()
        self.schemas = raw_schemas(self.config.catalog_path)

    def process(self, typed: Typed) -> Iterator[tuple[str, StagedRaw]]:
        by_type: dict[str, list[ValidEvent]] = defaultdict(list)
        for e in typed.events:
            by_type[e.contract.event_type].append(e)
        now = datetime.now(UTC)
        fault_point("before_commit")
        transient_fault()
        for event_type in sorted(by_type):
            events = by_type[event_type]
            uri = raw_uri(self.config.lake, event_type)
            rows = raw_rows(
                events,
                self.schemas[event_type],
                self.policies[event_type],
                self.protector,
                run_id=self.config.run_id,
                batch_id=typed.batch_id,
                ingest_time=now,
            )
            # the lateness base from the snapshot staged against (lake.committer docstring)
            rows = stamp_seen_max_event_time(try_open(uri, self.config.storage), rows, now)
            spec = raw_table(event_type)
            staged = stage_rows(
                uri,
                rows,
                keys=spec.keys,
                conflict_on="payload_digest",
                partition_by=spec.partition_by,
                storage_options=self.config.storage,
            )
            digests = tuple(rows.column("payload_digest").to_pylist())
            yield (
                event_type,
                StagedRaw(typed.batch_id, StagedChunk(typed.batch_id, staged), tuple(events), digests),
            )


class CommitRawHistoryFn(_RawCommitterFn):
    """The committer of the staged raw path: its input is keyed by event type, so Beam runs one
    of these at a time per raw table (a keyed stage), and each round commits every chunk staged
    since the last one in ONE commit (tidegate.lake.committer.commit_staged). Out: one raw
    `TableCommit` per chunk (the ledger balances chunk by chunk), the id conflicts' quarantine
    commits, and (streaming aggregates) the committed rows of each chunk."""

    def setup(self) -> None:
        super().setup()
        self.round_chunks = Metrics.distribution("tidegate", "raw_round_chunks")

    def process(self, item: tuple[str, Any]) -> Iterator[WindowedValue | TaggedOutput]:
        event_type, batch = item[0], list(item[1])
        batch_ids = [s.batch_id for s in batch]
        uri = raw_uri(self.config.lake, event_type)
        meta = self._raw_meta(
            event_type, batch_ids, [e for s in batch for e in s.events], tidegate_commit_path="committer"
        )
        spec = raw_table(event_type)
        started = time.perf_counter()
        result = commit_staged(
            uri,
            [s.chunk for s in batch],
            schema=self.schemas[event_type],
            keys=spec.keys,
            conflict_on="payload_digest",
            horizon=DEDUP_HORIZON,
            partition_by=spec.partition_by,
            metadata=meta,
            storage_options=self.config.storage,
            # the committer is the table's only raw writer: the horizon's keys in memory
            index=key_index(uri, spec.keys, "payload_digest") if self.config.committer_index else None,
        )
        ms = int((time.perf_counter() - started) * 1000)
        self.commit_ms.update(ms)
        self.round_chunks.update(len(batch))
        committed_at = time.time()
        emit = dict(self.config.emit_rows).get(event_type)
        for staged, outcome in zip(batch, result.chunks, strict=True):
            n = len(outcome.conflicts)
            self.written.inc(outcome.inserted)
            self.duplicates.inc(len(staged.events) - n - outcome.inserted)
            yield _global(
                TableCommit(
                    "raw",
                    event_type,
                    result.table,
                    (staged.batch_id,),
                    len(staged.events) - n,
                    outcome.offered,
                    outcome.inserted,
                    result.version,
                    result.files,
                    result.bytes,
                    (),
                    committed_at,
                    ms,
                )
            )
            if n:
                yield _global(
                    self._quarantine_conflicts(
                        [staged.batch_id], staged.events, staged.digests, outcome.conflicts
                    )
                )
            if emit:
                rows = committed_rows(
                    uri,
                    batch_id=staged.batch_id,
                    dates=sorted({e.envelope.time.date() for e in staged.events}),
                    columns=emit,
                    storage_options=self.config.storage,
                )
                yield TaggedOutput(ROWS, _global((event_type, rows)))


class WriteQuarantineFn(_WriterFn):
    """Buffers rejections; one idempotent commit (key: subscription + message id) per bundle."""

    def setup(self) -> None:
        super().setup()
        self.quarantined = Metrics.counter("tidegate", "quarantined")

    def start_bundle(self) -> None:
        self.buffer: list[Rejection] = []
        self.batch_ids: set[str] = set()

    def process(self, rejected: Rejected) -> Iterator[WindowedValue]:
        self.buffer += rejected.rejections
        self.batch_ids.add(rejected.batch_id)
        for r in rejected.rejections:
            Metrics.counter("tidegate", f"quarantined_{r.stage}_{r.failures[0].rule}").inc()
        if self.config.commit_per_chunk:
            yield from self.finish_bundle()
            self.start_bundle()

    def finish_bundle(self) -> Iterator[WindowedValue]:

        if not self.buffer:
            return
        batch_ids = sorted(self.batch_ids)
        rows = quarantine_rows(
            self.buffer,
            self.policies,
            self.protector,
            run_id=self.config.run_id,
            batch_id=",".join(batch_ids),
            now=datetime.now(UTC),
        )
        meta = self._meta(batch_ids, [r.message for r in self.buffer], extra={"tidegate_table": "quarantine"})
        commit = functools.partial(
            _commit_timed,
            "quarantine",
            None,
            batch_ids,
            len(self.buffer),
            _insert(
                self.config,
                QUARANTINE.uri(self.config.lake),
                rows,
                QUARANTINE.keys,
                metadata=meta,
                partition_by=QUARANTINE.partition_by,
            ),
        )
        if self._handed_off([(batch_ids, commit)]):
            return
        done = commit()
        Metrics.distribution("tidegate", "quarantine_commit_ms").update(done.ms)
        self.quarantined.inc(done.inserted)
        yield _global(done)


class WriteQualityFn(_WriterFn):
    """GX outcomes of the bundle's batches -> the _quality table (insert-only on batch,
    type, expectation and column: a retried bundle adds nothing)."""

    def setup(self) -> None:
        super().setup()
        self.fingerprints = suite_fingerprints(self.config.catalog_path)

    def start_bundle(self) -> None:
        self.buffer: list[tuple[str, Any]] = []

    def process(self, item: tuple[str, list[Any]]) -> None:
        batch_id, outcomes = item
        self.buffer += [(batch_id, o) for o in outcomes]

    def finish_bundle(self) -> Iterator[WindowedValue]:

        if not self.buffer:
            return
        now = datetime.now(UTC)
        rows = {
            "run_id": [self.config.run_id] * len(self.buffer),
            "batch_id": [b for b, _ in self.buffer],
            "event_type": [o.event_type for _, o in self.buffer],
            "expectation": [o.expectation for _, o in self.buffer],
            "column": [o.column for _, o in self.buffer],
            "success": [o.success for _, o in self.buffer],
            "element_count": [o.element_count for _, o in self.buffer],
            "unexpected_count": [o.unexpected_count for _, o in self.buffer],
            "unexpected_percent": [o.unexpected_percent for _, o in self.buffer],
            "suite_fingerprint": [self.fingerprints.get(o.event_type) for _, o in self.buffer],
            "validated_at": [now] * len(self.buffer),
            "quality_date": [now.date()] * len(self.buffer),
        }
        batch_ids = sorted({b for b, _ in self.buffer})
        meta = commit_metadata(
            run_id=self.config.run_id,
            batch_ids=batch_ids,
            code_version=self.config.code_version,
            git_sha=self.config.git_sha,
            subscriptions=[],
            message_ids=[],
            extra={"tidegate_table": "_quality"},
        )
        details = tuple((o.event_type, o.expectation, o.column, o.success) for _, o in self.buffer)
        commit = functools.partial(
            _commit_timed,
            "quality",
            None,
            batch_ids,
            len(self.buffer),
            _insert(
                self.config,
                QUALITY_TABLE.uri(self.config.lake),
                pa.Table.from_pydict(rows, schema=QUALITY_SCHEMA),
                QUALITY_TABLE.keys,
                metadata=meta,
                partition_by=QUALITY_TABLE.partition_by,
            ),
            details,
        )
        if self._handed_off([(batch_ids, commit)]):
            return
        done = commit()
        Metrics.distribution("tidegate", "quality_commit_ms").update(done.ms)
        yield _global(done)


class _Writer(beam.PTransform):
    """A writer: one ParDo whose output is the TableCommits of its bundles."""

    fn: type[beam.DoFn]

    def __init__(self, config: IngestConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, pcoll: PCollection) -> PCollection:
        return pcoll | beam.ParDo(self.fn(self.config))


class WriteRawHistory(_Writer):
    """Valid events -> raw history. By default each bundle (local mode: each batch; streaming
    without `staged_commits`: each chunk) commits its own insert-only MERGE or append. With
    `IngestConfig.staged_commits` (the streaming job's default): workers stage Parquet files in
    parallel, and one committer per table (keyed by event type, batched by GroupIntoBatches)
    commits them, so throughput grows with workers instead of commits racing
    (tidegate.lake.committer)."""

    fn = WriteRawHistoryFn

    def expand(self, pcoll: PCollection) -> Any:
        if not self.config.staged_commits:
            return pcoll | beam.ParDo(self.fn(self.config)).with_outputs(ROWS, main="commits")
        staged = pcoll | "Stage" >> beam.ParDo(StageRawHistoryFn(self.config))
        rounds = staged | "ByTable" >> beam.GroupIntoBatches(
            self.config.committer_batch, max_buffering_duration_secs=self.config.committer_seconds
        )
        return rounds | "Commit" >> beam.ParDo(CommitRawHistoryFn(self.config)).with_outputs(
            ROWS, main="commits"
        )


class WriteQuarantine(_Writer):
    fn = WriteQuarantineFn


class WriteQuality(_Writer):
    fn = WriteQualityFn
