"""Local mode: micro-batches on Beam's in-process batch runner, acked only after commit.

    tidegate ingest --until-idle 5        # drain the subscriptions, stop after 5 s of nothing
    tidegate ingest --follow              # run until Ctrl-C (the current batch finishes cleanly)

Each micro-batch:
1. pulls up to `max_batch` messages (or for `max_wait` seconds) from the catalog's
   subscriptions with synchronous pulls (the emulator returns at most 100 per pull);
2. runs them as **one bounded Beam pipeline** on the in-process `FnApiRunner`, pinned
   explicitly (`DirectRunner` would first try to download Prism; platform facts), with the
   batch as a single chunk element handed over in memory (`beam.Create` of 50k messages
   pickles them and costs seconds);
3. the writers commit raw history and quarantine to Delta (insert-only MERGE: idempotent);
4. appends a ledger row; 5. only then acknowledges the messages;
6. projects the raw commits into the aggregate tables (`lake.projection`): the windows the
   batch touched are recomputed from raw history and upserted, with the raw version they
   incorporate recorded as a Delta app transaction. At start-up the same projection catches
   up on whatever a previous run committed to raw but never projected (a crash in between).

Why not Beam's local streaming runner: it pulls 10 messages at a time, acks *before*
processing (a crash loses data) and puts the watermark at wall-clock now.

Crash points and what happens (the exactly-once argument, see docs/architecture.md):
- killed before a commit: nothing was written, nothing acked -> Pub/Sub redelivers after
  the ack deadline -> the batch is processed again;
- killed after the commits, before the ack: redelivered -> the MERGE finds every event id
  (and quarantine message id) already there -> nothing is written twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from expectations.envelope import RawMessage
from infra.pubsub import pull_now, retry_for, subscriber, subscription_path
from tidegate.catalog import Catalog
from tidegate.errors import PlatformError, TidegateError, TransientError

log = logging.getLogger(__name__)

# Micro-batches handed to the in-process runner by key (see module docstring, step 2).
_BATCHES: dict[str, list[RawMessage]] = {}
_COMMITS: dict[str, list[Any]] = {}
_lock = threading.Lock()
MIN_FILL_SECONDS = 0.25  # shortest fill of a micro-batch when the committer is waiting for work


def _take_batch(batch_id: str) -> Any:
    from transforms.ingest_types import Chunk

    with _lock:
        return Chunk(batch_id, _BATCHES.pop(batch_id))


def _collect(commit: Any, batch_id: str) -> None:
    with _lock:
        _COMMITS.setdefault(batch_id, []).append(commit)


@dataclass(frozen=True)
class LocalOptions:
    max_batch: int = 20_000
    max_wait: float = 2.0
    until_idle: float | None = 5.0
    follow: bool = False
    rpc_timeout: float = 30.0  # per pull / ack call (the client retries transient errors within it)


@dataclass
class BatchOutcome:
    batch_id: str
    received: int
    raw_written: int
    duplicates_skipped: int
    quarantined: int
    quarantine_duplicates: int
    raw_versions: dict[str, int]
    quarantine_version: int | None
    seconds: float
    publish_latencies: list[float] = field(default_factory=list)
    aggregate_latencies: list[float] = field(default_factory=list)  # publish -> window in Delta
    late: int = 0  # (event, window) pairs sent to the late ledger
    projections: list[Any] = field(default_factory=list)


@dataclass
class RunSummary:
    run_id: str
    batches: int = 0
    received: int = 0
    raw_written: int = 0
    duplicates_skipped: int = 0
    quarantined: int = 0
    quarantine_duplicates: int = 0
    late: int = 0
    seconds: float = 0.0
    stopped_by: str = ""

    def add(self, b: BatchOutcome) -> None:
        self.batches += 1
        self.received += b.received
        self.raw_written += b.raw_written
        self.duplicates_skipped += b.duplicates_skipped
        self.quarantined += b.quarantined
        self.quarantine_duplicates += b.quarantine_duplicates
        self.late += b.late


def new_run_id() -> str:
    return datetime.now(UTC).strftime("run-%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def ingest_config(
    catalog: Catalog, lake: str, production: bool, pii_key_secret: str | None = None
) -> Any:  # transforms.ingest.IngestConfig
    """A fresh run's IngestConfig (new run id, this code's version and git sha, the lake's
    storage options): the CLI, the Dataflow launcher and the Flex Template entry point."""
    from tidegate import settings
    from tidegate.version import code_version, git_sha
    from transforms.ingest import IngestConfig

    return IngestConfig(
        lake=lake,
        run_id=new_run_id(),
        catalog_path=str(catalog.path),
        code_version=code_version(),
        git_sha=git_sha(),
        production=production,
        storage_options=tuple(sorted((settings.storage_options() or {}).items())),
        pii_key_secret=pii_key_secret,
    )


def _to_raw(received: Any, subscription: str) -> RawMessage:
    """A raw protobuf ReceivedMessage (see infra.pubsub.pull_now) as a RawMessage."""
    m = received.message
    pt = m.publish_time
    return RawMessage(
        data=m.data,
        attributes=dict(m.attributes),
        message_id=m.message_id,
        publish_time=datetime.fromtimestamp(pt.seconds + pt.nanos / 1e9, UTC) if pt.seconds else None,
        subscription=subscription,
    )


@contextlib.contextmanager
def lake_lock(lake: str) -> Iterator[None]:
    """One local ingest (or replay) per lake: a second one would race the first for the same
    commits. Object stores (gs://) have no file lock: one writer per lake is the deployment's job
    there (one Dataflow job per lake), and Delta's conditional commits keep the log consistent."""
    if lake.startswith("file://"):
        lake = lake.removeprefix("file://")
    elif "://" in lake:
        yield
        return
    root = Path(lake)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".ingest.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TidegateError(
                f"another `tidegate ingest` is writing to {lake}",
                hint="stop it first, or give this one another --lake",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class LocalIngest:
    """The micro-batch loop. `run()` until idle/interrupted; `run_batch()` for one batch."""

    def __init__(
        self,
        catalog: Catalog,
        address: str | None,
        config: Any,  # transforms.ingest.IngestConfig
        options: LocalOptions,
        project: str | None = None,
        on_batch: Callable[[BatchOutcome], None] | None = None,
        subscriptions: list[str] | None = None,
    ) -> None:
        """`subscriptions`: read these instead of the catalog streams' (e.g. the dead-letter
        subscription: messages are validated by their content, not by where they came from)."""
        self.catalog = catalog
        self.address = address
        self.config = config
        self.options = options
        self.project = project or catalog.project
        self.on_batch = on_batch
        self.stop_requested = False
        self.client = subscriber(address)
        names = subscriptions or [s.subscription for s in catalog.streams]
        self.paths = {subscription_path(self.project, name): name for name in names}
        self._seq = 0
        self._projector: Any = None
        self._background: _BackgroundProjector | None = None
        self._lineage: Any = None

    @property
    def lineage(self) -> Any:
        """OpenLineage events of this run and its batches (lake.openlineage)."""
        if self._lineage is None:
            from lake.openlineage import LineageEmitter

            self._lineage = LineageEmitter(self.config.lake)
        return self._lineage

    def _inputs(self, subscriptions: set[str]) -> list[tuple[str, str]]:
        from lake.openlineage import subscription_dataset

        return [subscription_dataset(self.project, s) for s in sorted(subscriptions)]

    def _outputs(self, commits: list[Any]) -> list[Any]:
        from lake.openlineage import OutputTable
        from lake.tables import raw_schema
        from transforms.ingest import _worker_state

        _, registry = _worker_state(self.config.catalog_path)
        quality = [d for c in commits if c.kind == "quality" for d in c.details]
        out = []
        for c in commits:
            if c.version is None:
                continue
            schema = raw_schema(registry.types[c.event_type]) if c.kind == "raw" else None
            assertions = [
                {"expectation": e, "column": col, "success": ok}
                for t, e, col, ok in quality
                if t == c.event_type
            ]
            out.append(
                OutputTable(c.table, c.version, c.inserted, c.files, c.bytes, schema, assertions or None)
            )
        return out

    @property
    def projector(self) -> Any:
        """The aggregates projector (lake.projection), built on first use."""
        if self._projector is None:
            from lake.projection import Projector
            from transforms.ingest import _worker_state

            catalog, registry = _worker_state(self.config.catalog_path)
            self._projector = Projector(
                catalog,
                registry,
                self.config.lake,
                run_id=self.config.run_id,
                code_version=self.config.code_version,
                git_sha=self.config.git_sha,
                storage=self.config.storage,
            )
        return self._projector

    # -- pulling ---------------------------------------------------------------------------

    _prefetch_halt: threading.Event | None = None
    _consumer_waiting: threading.Event | None = None

    def _consumer_idle(self) -> bool:
        return self._consumer_waiting is not None and self._consumer_waiting.is_set()

    def _halted(self) -> bool:
        return self._prefetch_halt is not None and self._prefetch_halt.is_set()

    def pull_batch(self) -> list[tuple[str, str, RawMessage]]:
        """Up to max_batch messages, or what arrived within max_wait; [] if all are empty."""
        batch: list[tuple[str, str, RawMessage]] = []
        started = time.monotonic()
        empty: set[str] = set()
        while len(batch) < self.options.max_batch and not self.stop_requested and not self._halted():
            progressed = False
            for path, name in self.paths.items():
                if path in empty:
                    continue
                try:
                    received = pull_now(
                        self.client,
                        path,
                        max_messages=min(1000, self.options.max_batch - len(batch)),
                        timeout=self.options.rpc_timeout,
                    )
                except Exception as exc:  # noqa: BLE001 - any transport failure means the same here
                    raise PlatformError(
                        f"pulling from {name} failed: {exc.__class__.__name__}: {exc}",
                        hint="is the emulator still running? `tidegate up`",
                    ) from None
                if not received:
                    empty.add(path)
                    continue
                progressed = True
                batch += [(path, r.ack_id, _to_raw(r, name)) for r in received]
                if len(batch) >= self.options.max_batch:
                    break
            if len(empty) == len(self.paths):
                if batch or time.monotonic() - started >= self.options.max_wait:
                    break
                empty.clear()
                time.sleep(0.05)
            elif not progressed and time.monotonic() - started >= self.options.max_wait:
                break
            if batch and time.monotonic() - started >= self.options.max_wait:
                break
            # Adaptive batching: if the committer is idle, hand over what we have after a short
            # fill (low latency when traffic is light); when it is busy, keep filling up to
            # max_batch / max_wait (throughput when there is a backlog).
            if batch and self._consumer_idle() and time.monotonic() - started >= MIN_FILL_SECONDS:
                break
        return batch

    def ack(self, batch: list[tuple[str, str, RawMessage]]) -> None:
        for path, ids in _ack_groups(batch):
            try:
                self.client.acknowledge(
                    request={"subscription": path, "ack_ids": ids},
                    timeout=self.options.rpc_timeout,
                    retry=retry_for(self.options.rpc_timeout),
                )
            except Exception as exc:  # noqa: BLE001 - the data is committed; only the ack failed
                raise PlatformError(
                    f"acknowledging {len(ids)} committed messages on {self.paths[path]} failed: "
                    f"{exc.__class__.__name__}; they will be redelivered and skipped as duplicates",
                    hint="is the emulator still running? `tidegate up`, then run ingest again",
                ) from None

    # -- one micro-batch -------------------------------------------------------------------

    def run_batch(self, batch: list[tuple[str, str, RawMessage]]) -> BatchOutcome:
        """One micro-batch, wrapped in its OpenLineage START and COMPLETE (or FAIL) events."""
        self._seq += 1
        batch_id = f"{self.config.run_id}-{self._seq:06d}"
        started_at = datetime.now(UTC)
        subscriptions = {m.subscription for _, _, m in batch}
        self.lineage.emit(
            "START",
            "ingest.batch",
            batch_id,
            parent=("ingest", self.config.run_id),
            inputs=self._inputs(subscriptions),
        )
        try:
            return self._run_batch(batch, batch_id, started_at, subscriptions)
        except BaseException as exc:
            self.lineage.emit(
                "FAIL",
                "ingest.batch",
                batch_id,
                parent=("ingest", self.config.run_id),
                inputs=self._inputs(subscriptions),
                error=f"{exc.__class__.__name__}: {exc}",
            )
            raise

    def _run_batch(
        self,
        batch: list[tuple[str, str, RawMessage]],
        batch_id: str,
        started_at: datetime,
        subscriptions: set[str],
    ) -> BatchOutcome:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
        from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

        from tidegate.faults import fault_point
        from transforms.ingest import Ingest
        from transforms.ingest_types import Chunk

        t0 = time.perf_counter()
        messages = [m for _, _, m in batch]
        with _lock:
            _BATCHES[batch_id] = messages
        options = PipelineOptions(["--direct_running_mode=in_memory", "--direct_num_workers=1"])
        try:
            # FnApiRunner pinned: never DirectRunner's Prism download or a network fallback.
            p = beam.Pipeline(runner=FnApiRunner(), options=options)
            commits = (
                p
                | "ReadEvents" >> beam.Create([batch_id], reshuffle=False)
                | "TakeBatch" >> beam.Map(_take_batch).with_output_types(Chunk)
                | "Ingest" >> Ingest(self.config)
            ).commits
            commits | "CollectCommits" >> beam.Map(_collect, batch_id)
            result = p.run()
            result.wait_until_finish()
        except TransientError:
            raise
        except Exception as exc:  # noqa: BLE001 - Beam wraps everything; unwrap ours, re-raise the rest
            with _lock:
                _BATCHES.pop(batch_id, None)
                _COMMITS.pop(batch_id, None)
            raise _unwrap(exc) from None
        committed_at = time.time()
        with _lock:
            commits_done = _COMMITS.pop(batch_id, [])
        raw = [c for c in commits_done if c.kind == "raw"]
        quarantine = [c for c in commits_done if c.kind == "quarantine"]
        outcome = BatchOutcome(
            batch_id=batch_id,
            received=len(batch),
            raw_written=sum(c.inserted for c in raw),
            duplicates_skipped=sum(c.received - c.inserted for c in raw),
            quarantined=sum(c.inserted for c in quarantine),
            quarantine_duplicates=sum(c.received - c.inserted for c in quarantine),
            raw_versions={c.event_type: c.version for c in raw if c.version is not None},
            quarantine_version=max((c.version for c in quarantine if c.version is not None), default=None),
            seconds=0.0,
        )
        accounted = (
            outcome.raw_written
            + outcome.duplicates_skipped
            + outcome.quarantined
            + outcome.quarantine_duplicates
        )
        if accounted != outcome.received:
            # Never ack what did not land: leave it for redelivery and stop loudly.
            raise TidegateError(
                f"batch {batch_id}: {outcome.received} received but {accounted} accounted for; not acknowledging",
            )
        self._write_ledger(outcome, started_at, messages)
        fault_point("after_commit")
        self.ack(batch)
        self.lineage.emit(
            "COMPLETE",
            "ingest.batch",
            batch_id,
            parent=("ingest", self.config.run_id),
            inputs=self._inputs(subscriptions),
            outputs=self._outputs(commits_done),
            tidegate_run_id=self.config.run_id,
        )
        # publish -> visible in Delta (the raw/quarantine commits are done at committed_at)
        outcome.publish_latencies = [
            committed_at - m.publish_time.timestamp() for m in messages if m.publish_time is not None
        ]
        self._write_metrics(batch_id, result, outcome.publish_latencies)
        changed = set(outcome.raw_versions)
        if changed and self.catalog.aggregates:
            published = [m.publish_time.timestamp() for m in messages if m.publish_time is not None]
            if self._background is not None:
                self._background.submit(outcome, published, changed)
            else:
                _attribute([(outcome, published)], self.projector.project_all(changed))
        outcome.seconds = time.perf_counter() - t0
        return outcome

    def _write_metrics(self, batch_id: str, result: Any, latencies: list[float]) -> None:
        """The batch's Beam metrics (counters per step, commit-time distributions) and its
        publish -> commit latency distribution, as rows of <lake>/_metrics (lake.metrics)."""
        from lake.metrics import beam_metric_rows, latency_row, write_metrics

        try:
            rows = [*beam_metric_rows(result.metrics().query()), latency_row(latencies)]
            write_metrics(self.config.lake, self.config.run_id, batch_id, rows, self.config.storage)
        except Exception as exc:  # noqa: BLE001 - metrics must never fail a committed batch
            log.warning("metrics of %s not recorded: %s", batch_id, exc)

    def _write_ledger(self, b: BatchOutcome, started_at: datetime, messages: list[RawMessage]) -> None:
        from lake.rows import lineage, message_digest
        from lake.tables import LEDGER_SCHEMA, ledger_uri
        from lake.writer import append

        row = {
            "run_id": [self.config.run_id],
            "batch_id": [b.batch_id],
            "started_at": [started_at],
            "committed_at": [datetime.now(UTC)],
            "subscriptions": [sorted({m.subscription for m in messages})],
            "received": [b.received],
            "raw_written": [b.raw_written],
            "duplicates_skipped": [b.duplicates_skipped],
            "quarantined": [b.quarantined],
            "quarantine_duplicates": [b.quarantine_duplicates],
            "raw_versions": [list(b.raw_versions.items())],
            "quarantine_version": [b.quarantine_version],
            "message_digest": [message_digest(m.message_id for m in messages)],
        }
        meta = lineage(
            run_id=self.config.run_id,
            batch_ids=[b.batch_id],
            code_version=self.config.code_version,
            git_sha=self.config.git_sha,
            subscriptions={m.subscription for m in messages},
            message_ids=[m.message_id for m in messages],
            extra={"tidegate_table": "ledger"},
        )
        append(
            ledger_uri(self.config.lake),
            pa.Table.from_pydict(row, schema=LEDGER_SCHEMA),
            metadata=meta,
            storage_options=self.config.storage,
        )

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> RunSummary:
        summary = RunSummary(self.config.run_id)
        t0 = time.perf_counter()
        idle_since: float | None = None
        previous = signal.getsignal(signal.SIGINT)

        def request_stop(signum: int, frame: Any) -> None:
            if self.stop_requested:  # second Ctrl-C: give up at once (nothing acked is lost)
                raise KeyboardInterrupt
            self.stop_requested = True

        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            signal.signal(signal.SIGINT, request_stop)
        prefetch = _Prefetcher(self)
        inputs = self._inputs(set(self.paths.values()))
        self.lineage.emit(
            "START", "ingest", self.config.run_id, inputs=inputs, tidegate_run_id=self.config.run_id
        )
        failed: BaseException | None = None
        try:
            with lake_lock(self.config.lake):
                if self.catalog.aggregates:
                    # heal: whatever an earlier run committed to raw but never projected
                    healed = self.projector.project_all()
                    if healed:
                        log.info("caught up %d aggregate table(s) with raw history", len(healed))
                    self._background = _BackgroundProjector(self.projector)
                prefetch.start()
                while not self.stop_requested:
                    batch = prefetch.next()
                    if not batch:
                        now = time.monotonic()
                        idle_since = idle_since or now
                        if (
                            not self.options.follow
                            and self.options.until_idle is not None
                            and now - idle_since >= self.options.until_idle
                        ):
                            summary.stopped_by = f"idle for {self.options.until_idle:g}s"
                            break
                        continue
                    idle_since = None
                    outcome = self.run_batch(batch)
                    summary.add(outcome)
                    if self.on_batch:
                        self.on_batch(outcome)
                if self.stop_requested and not summary.stopped_by:
                    summary.stopped_by = "interrupted (current batch finished)"
                if self._background is not None:
                    # leave the aggregates up to date with everything this run committed
                    summary.late = self._background.close()
                    self._background = None
        except BaseException as exc:
            failed = exc
            raise
        finally:
            self.lineage.emit(
                "FAIL" if failed is not None else "COMPLETE",
                "ingest",
                self.config.run_id,
                inputs=inputs,
                error=f"{failed.__class__.__name__}: {failed}" if failed is not None else None,
                tidegate_run_id=self.config.run_id,
            )
            self.stop_requested = True
            if self._background is not None:
                self._background.close(catch_up=False)
                self._background = None
            leftover = prefetch.stop()
            if leftover:
                self.release(leftover)
            if in_main:
                signal.signal(signal.SIGINT, previous)
            self.client.close()
        summary.seconds = time.perf_counter() - t0
        return summary

    def release(self, batch: list[tuple[str, str, RawMessage]]) -> None:
        """Hand pulled-but-unprocessed messages back to Pub/Sub now (not after the deadline)."""
        by_path: dict[str, list[str]] = {}
        for path, ack_id, _ in batch:
            by_path.setdefault(path, []).append(ack_id)
        for path, ids in by_path.items():
            for i in range(0, len(ids), 2500):
                with contextlib.suppress(Exception):
                    self.client.modify_ack_deadline(
                        request={
                            "subscription": path,
                            "ack_ids": ids[i : i + 2500],
                            "ack_deadline_seconds": 0,
                        },
                        timeout=30,
                    )


def _attribute(pending: list[tuple[BatchOutcome, list[float]]], results: list[Any]) -> None:
    """Credit one projection round to the batches it covered: freshness for every message (publish
    -> its windows committed), the round's late pairs to the last batch (counted once)."""
    if not results:
        return
    done = max(r.committed_at for r in results)
    for outcome, published in pending:
        outcome.projections = results
        outcome.aggregate_latencies = [done - p for p in published]
    pending[-1][0].late += sum(r.late for r in results)


class _BackgroundProjector:
    """Projects aggregates on its own thread while the next micro-batch is pulled, validated and
    committed (Delta and polars release the GIL: on 2 cores this keeps the projection off the
    ingest latency). Rounds coalesce: however many batches committed meanwhile, one round brings
    every aggregate up to the current raw version (the app transaction says where each stands).
    A failed round is logged and retried by the next one; `close()` runs a last round and raises
    if that one fails too (raw history is complete either way; the next run catches up)."""

    def __init__(self, projector: Any) -> None:
        self.projector = projector
        self.pending: list[tuple[BatchOutcome, list[float]]] = []
        self.sources: set[str] = set()
        self.cond = threading.Condition()
        self.closing = False
        self.late = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="tidegate-projector", daemon=True)
        self.thread.start()

    def submit(self, outcome: BatchOutcome, published: list[float], sources: set[str]) -> None:
        with self.cond:
            self.pending.append((outcome, published))
            self.sources |= sources
            self.cond.notify()

    def _round(self) -> bool:
        with self.cond:
            while not self.pending and not self.closing:
                self.cond.wait()
            if not self.pending:
                return False
            pending, sources = self.pending, self.sources
            self.pending, self.sources = [], set()
        try:
            results = self.projector.project_all(sources)
        except Exception as exc:  # noqa: BLE001 - retried next round; close() reports the last one
            log.warning("aggregate projection failed (retried with the next batch): %s", exc)
            self.error = exc
            with self.cond:
                self.pending = pending + self.pending
                self.sources |= sources
            if self.closing:
                return False  # close() makes the last, synchronous attempt
            time.sleep(0.5)
            return True
        self.error = None
        _attribute(pending, results)
        self.late += sum(r.late for r in results)
        return True

    def _run(self) -> None:
        while self._round():
            pass

    def close(self, catch_up: bool = True) -> int:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join()
        if catch_up:
            # whatever is still pending (or failed last) gets one more, synchronous try
            results = self.projector.project_all()
            self.late += sum(r.late for r in results)
        return self.late


def _ack_groups(
    batch: list[tuple[str, str, RawMessage]], size: int = 2500
) -> Iterator[tuple[str, list[str]]]:
    """Ack ids per subscription, in requests of at most `size` (Pub/Sub's request limit)."""
    by_path: dict[str, list[str]] = {}
    for path, ack_id, _ in batch:
        by_path.setdefault(path, []).append(ack_id)
    for path, ids in by_path.items():
        for i in range(0, len(ids), size):
            yield path, ids[i : i + size]


class _Prefetcher:
    """Pulls the next micro-batch while the current one is validated and committed.

    Pulling is mostly waiting on gRPC (the GIL is released), so overlapping it with
    processing is close to free throughput. At most one batch waits ahead; its messages are
    leased (ack deadline) and released back to Pub/Sub if the run stops before using them.
    """

    def __init__(self, ingest: LocalIngest) -> None:
        self.ingest = ingest
        self.queue: queue.Queue[list[tuple[str, str, RawMessage]] | BaseException] = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._run, name="tidegate-prefetch", daemon=True)
        self.halt = threading.Event()
        self.waiting = threading.Event()
        ingest._prefetch_halt = self.halt
        ingest._consumer_waiting = self.waiting

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.halt.is_set():
            try:
                item: list[tuple[str, str, RawMessage]] | BaseException = self.ingest.pull_batch()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
                item = exc
            self.queue.put(item)
            if isinstance(item, BaseException):
                return
            # Exactly one batch ahead: pull the next only once this one is taken, or messages
            # would wait through two commits (latency) while holding leases for nothing.
            while not self.halt.is_set() and not self.queue.empty():
                time.sleep(0.01)

    def next(self) -> list[tuple[str, str, RawMessage]]:
        while True:
            try:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    self.waiting.set()
                    item = self.queue.get(timeout=0.5)
                finally:
                    self.waiting.clear()
            except queue.Empty:
                if not self.thread.is_alive():
                    return []
                if self.ingest.stop_requested:
                    return []
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    def stop(self) -> list[tuple[str, str, RawMessage]]:
        """Stop pulling; return whatever was pulled but never handed out."""
        self.halt.set()
        self.thread.join(timeout=60)
        leftover: list[tuple[str, str, RawMessage]] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, list):
                leftover += item
        return leftover


def _unwrap(exc: BaseException) -> BaseException:
    """Beam wraps DoFn errors; surface tidegate's own (config, transient) as they are."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, TidegateError | TransientError):
            return cur
        cur = cur.__cause__ or cur.__context__
    return exc
