"""The local micro-batch loop: take leased messages, run them through Beam, account, ack.

    tidegate ingest --until-idle 5        # drain the subscriptions, stop after 5 s of nothing
    tidegate ingest --follow              # run until Ctrl-C (the current batch finishes)

How a message moves, and which thread owns it (docs/architecture.md has the picture):
1. a **puller** thread per subscription pulls it and puts it on a short lease (`consumer.py`);
   the **lease** thread extends it every few seconds while tidegate holds it;
2. the **driver** (this module, the caller's thread) takes up to `max_batch` buffered messages
   and runs them as one Beam pipeline (`batch.py`; the graph and its bundle processors are
   built by a warm-up run of no messages while the pullers fill the first batch); a message that
   crashes it is isolated and nacked, the rest commits raw history, quarantine and `_quality`;
3. the driver accounts for every message from the commits (`accounting.account`), or stops
   without acking;
4. the **bookkeeper** thread appends the ledger row, then acks, then writes lineage and metrics
   (`accounting.Bookkeeper`), while the driver already runs the next batch;
5. the **projector** thread brings the aggregates up to the new raw versions (`projection.py`).

Tracing (docs/tracing.md): a `tidegate.ingest` span per run, a `tidegate.batch` span per batch
(linked to its producers' traces, ended once it is acked), and a span per stage under it: `take`,
`beam` (its Beam runs and table commits below it), `ledger`, `ack`, `openlineage`, `metrics`;
projection rounds under the run. Spans are no-ops unless an OTLP endpoint is configured.

Crash points (the exactly-once argument): killed before a commit, nothing was written and
nothing acked, the leases lapse and Pub/Sub redelivers within `lease_seconds`; killed after the
commits and before the ack, the redelivered messages are found by the writers' dedup (the key
index, lake.keyindex; the MERGE on an object-store lake) and skipped as duplicates. A clean stop (Ctrl-C, an error) nacks whatever was not committed.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from tidegate.catalog import Catalog
from tidegate.expectations.envelope import RawMessage
from tidegate.infra.pubsub import subscriber, subscription_path
from tidegate.lake import tracing
from tidegate.lake.lock import is_locked_lake, lake_lock
from tidegate.lake.openlineage import LineageEmitter, OutputTable, subscription_dataset
from tidegate.lake.projection import ProjectionResult, Projector
from tidegate.lake.tables import Kind, LakeTables, raw_schema
from tidegate.transforms.base import IngestConfig, suite_validator, worker_state
from tidegate.transforms.writes import TableCommit

from .accounting import BatchOutcome, Bookkeeper, RunSummary, account
from .batch import BatchRunner
from .compaction import Compactor
from .consumer import Consumer, ConsumerOptions, Leased
from .projection import BackgroundProjector

log = logging.getLogger(__name__)

BOOKKEEPER_STAGES = ("ledger", "ack", "openlineage", "metrics")  # accounting.Bookkeeper's, in order


@dataclass(frozen=True)
class LocalOptions:
    max_batch: int = 20_000
    max_wait: float = 2.0  # longest wait for a batch's first message before checking idle / stop
    until_idle: float | None = 5.0
    follow: bool = False
    fill: float = 0.1  # once a message is there, how long to gather more
    # messages arriving faster than this (per second) during the fill mean a backlog: then gather
    # up to `backlog_fill` seconds (or max_batch) so the batch's fixed cost is spread wide
    backlog_rate: float = 5_000.0
    backlog_fill: float = 1.5
    # ... and so does a held message published this many seconds ago: the ingest is behind, and
    # a backlog may arrive slowly (the emulator hands a 500k backlog over at ~5k msg/s)
    backlog_age: float = 10.0
    heartbeat_seconds: float = 30.0
    # compaction on its own thread (follow mode, or any run longer than this): every this many
    # seconds, partitions with at least `compact_min_files` small files (lake.maintenance)
    compact_every: float = 20.0
    compact_min_files: int = 16
    consumer: ConsumerOptions = field(default_factory=ConsumerOptions)


@dataclass(frozen=True)
class Heartbeat:
    """What `--follow` prints every `heartbeat_seconds`."""

    seconds: float  # since the run started
    messages: int  # accounted in the last interval
    rate: float  # msg/s over the last interval
    held: int  # leased by this process: buffered + in the batch being committed
    buffered: int
    last_commit: datetime | None
    batches: int


class LocalIngest:
    """The micro-batch loop. `run()` until idle or interrupted (`stop_requested = True` from
    another thread stops it after the current batch)."""

    def __init__(
        self,
        catalog: Catalog,
        address: str | None,
        config: IngestConfig,
        options: LocalOptions,
        project: str | None = None,
        on_batch: Callable[[BatchOutcome], None] | None = None,
        subscriptions: list[str] | None = None,
        on_heartbeat: Callable[[Heartbeat], None] | None = None,
    ) -> None:
        """`subscriptions`: read these instead of the catalog streams' (e.g. the dead-letter
        subscription: messages are validated by their content, not by where they came from)."""
        self.catalog = catalog
        self.address = address
        self.config = config
        self.options = options
        self.project = project or catalog.project
        self.on_batch = on_batch
        self.on_heartbeat = on_heartbeat
        self.stop_requested = False
        names = subscriptions or [s.subscription for s in catalog.streams]
        self.paths = {subscription_path(self.project, name): name for name in names}
        # the lake lock (taken before the first batch) makes this process the lake's only writer
        self.runner = BatchRunner(config, single_writer=is_locked_lake(config.lake))
        self._seq = 0
        self._lineage: Any = None
        self._batch_spans = tracing.OpenSpans()  # started here, ended by the bookkeeper once acked

    # -- lineage ---------------------------------------------------------------------------

    @property
    def openlineage(self) -> Any:
        """OpenLineage events of this run and its batches (lake.openlineage)."""
        if self._lineage is None:
            self._lineage = LineageEmitter(self.config.lake, catalog=self.catalog)
        return self._lineage

    def _inputs(self, subscriptions: set[str]) -> list[tuple[str, str]]:

        return [subscription_dataset(self.project, s) for s in sorted(subscriptions)]

    def _outputs(self, commits: list[TableCommit]) -> list[Any]:

        _, registry = worker_state(self.config.catalog_path)
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

    def _projector(self) -> Any:

        catalog, registry = worker_state(self.config.catalog_path)
        projector = Projector(
            catalog,
            registry,
            self.config.lake,
            run_id=self.config.run_id,
            code_version=self.config.code_version,
            git_sha=self.config.git_sha,
            storage=self.config.storage,
        )
        return _TracedProjector(projector, trace.get_current_span())

    # -- one micro-batch -------------------------------------------------------------------

    def run_batch(
        self,
        leased: list[Leased],
        consumer: Consumer,
        bookkeeper: Bookkeeper,
        taken: tuple[int, int] | None = None,
    ) -> BatchOutcome:
        """Run, account, hand to the bookkeeper; the caller hands it to the projector. `taken`:
        when (time.time_ns) the driver started and finished taking these messages (a span)."""
        self._seq += 1
        batch_id = f"{self.config.run_id}-{self._seq:06d}"
        started_at = datetime.now(UTC)
        t0 = time.perf_counter()
        messages = [x.message for x in leased]
        subscriptions = {m.subscription for m in messages}
        parent = ("ingest", self.config.run_id)
        span = self._batch_span(batch_id, messages, subscriptions, taken)
        self.openlineage.emit(
            "START", "ingest.batch", batch_id, parent=parent, inputs=self._inputs(subscriptions)
        )
        try:
            if taken is not None:
                tracing.span_between("take", *taken, span, {"tidegate.stage": "take"})
            with tracing.current(span), tracing.tracer().start_as_current_span("beam") as beam:
                run = self.runner.run(batch_id, messages)
                beam.set_attributes(
                    tracing.attributes_of(stage="beam", runs=run.runs, poisoned=len(run.poison))
                )
            # every message of the batch is visible in Delta once its raw and quarantine commits
            # are done (the _quality commit and Beam's teardown come after)
            data = [c.committed_at for c in run.commits if c.kind in ("raw", "quarantine")]
            committed_at = max(data) if data else time.time()
            if run.poison:
                poison = set(run.poison)
                consumer.nack([leased[i] for i in run.poison])
                leased = [x for i, x in enumerate(leased) if i not in poison]
                messages = [x.message for x in leased]
            outcome = account(batch_id, self.config.run_id, run, messages, started_at)
        except BaseException as exc:
            tracing.fail(span, exc)
            span.end()
            self.openlineage.emit(
                "FAIL",
                "ingest.batch",
                batch_id,
                parent=parent,
                inputs=self._inputs(subscriptions),
                error=f"{exc.__class__.__name__}: {exc}",
            )
            raise
        outcome.stages["beam"] = run.beam_seconds
        # publish -> visible in Delta (the raw/quarantine commits are done at committed_at)
        outcome.published = [m.publish_time.timestamp() for m in messages if m.publish_time is not None]
        outcome.publish_latencies = [committed_at - p for p in outcome.published]
        outcome.seconds = time.perf_counter() - t0
        span.set_attributes(
            tracing.attributes_of(
                raw_written=outcome.raw_written,
                quarantined=outcome.quarantined,
                duplicates=outcome.duplicates_skipped,
                quarantine_duplicates=outcome.quarantine_duplicates,
                id_conflicts=outcome.id_conflicts,
                poisoned=outcome.poisoned,
            )
        )
        self._batch_spans.add(batch_id, span)  # the bookkeeper ends it, after the ack
        bookkeeper.submit(outcome, leased, run, subscriptions)
        return outcome

    def _batch_span(
        self,
        batch_id: str,
        messages: list[RawMessage],
        subscriptions: set[str],
        taken: tuple[int, int] | None,
    ) -> Span:
        """The batch's span, a child of the run's, linked to its producers' spans (binary-mode
        `ce-traceparent` attributes; docs/tracing.md), from when the driver began taking it."""
        links = tracing.NO_LINKS
        if tracing.enabled():  # 20k traceparents parsed only when someone receives the links
            links = tracing.links_for(m.attributes.get("ce-traceparent") for m in messages)
        attributes = {
            **tracing.attributes_of(
                batch_id=batch_id,
                run_id=self.config.run_id,
                messages=len(messages),
                subscriptions=sorted(subscriptions),
            ),
            "messaging.system": "gcp_pubsub",
            "messaging.operation.type": "process",
            "messaging.batch.message_count": len(messages),
            **links.attributes,
        }
        return tracing.tracer().start_span(
            "tidegate.batch",
            kind=SpanKind.CONSUMER,
            links=links.links,
            attributes=attributes,
            start_time=taken[0] if taken is not None else None,
        )

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> RunSummary:
        summary = RunSummary(self.config.run_id)
        t0 = time.perf_counter()
        attributes = tracing.attributes_of(run_id=self.config.run_id, lake=self.config.lake)
        try:
            with tracing.tracer().start_as_current_span("tidegate.ingest", attributes=attributes) as span:
                try:
                    with lake_lock(self.config.lake):  # first: a second ingest must touch nothing of the lake
                        self._run(summary)
                except BaseException as exc:
                    if not isinstance(exc, Exception):  # an interrupt: OpenTelemetry records only errors
                        tracing.fail(span, exc)
                    raise
                finally:
                    self._batch_spans.end_all("the run stopped before this batch was acknowledged")
                    span.set_attributes(
                        tracing.attributes_of(
                            batches=summary.batches,
                            received=summary.received,
                            raw_written=summary.raw_written,
                            quarantined=summary.quarantined,
                            duplicates=summary.duplicates_skipped,
                            poisoned=summary.poisoned,
                            stopped_by=summary.stopped_by or None,
                        )
                    )
        finally:
            tracing.flush()  # the run's spans leave before it returns (no-op without an endpoint)
        summary.seconds = time.perf_counter() - t0
        return summary

    def _run(self, summary: RunSummary) -> None:
        previous = signal.getsignal(signal.SIGINT)

        def request_stop(signum: int, frame: Any) -> None:
            if self.stop_requested:  # second Ctrl-C: give up at once (nothing acked is lost)
                raise KeyboardInterrupt
            self.stop_requested = True

        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            signal.signal(signal.SIGINT, request_stop)
        inputs = self._inputs(set(self.paths.values()))
        self.openlineage.emit(
            "START", "ingest", self.config.run_id, inputs=inputs, tidegate_run_id=self.config.run_id
        )
        client = subscriber(self.address)
        consumer = Consumer(client, self.paths, self.options.consumer)
        failed: BaseException | None = None
        background: BackgroundProjector | None = None
        try:
            consumer.start()  # pull (and lease) while the rest warms up
            # Contracts and GX suites once per process, before the first message needs them (in
            # --follow the first batch after an idle start would otherwise wait seconds for GX).
            suite_validator(self.config.catalog_path)
            # and the Beam graph with its bundle processors, while the pullers fill the first batch
            self.runner.warm_up()
            if self.catalog.aggregates:
                # its first round heals: whatever an earlier run committed to raw but never
                # projected is projected before any batch of this run
                background = BackgroundProjector(self._projector(), heal=True)
            bookkeeper = _TracedBookkeeper(
                self._batch_spans, self.config, consumer, self.openlineage, self._inputs, self._outputs
            )
            tables = LakeTables(self.config.lake, self.catalog)
            compactor = Compactor(
                tables.uris(),
                self.options.compact_every,
                self.options.compact_min_files,
                self.config.storage,
                root=self.config.lake,
                derived=frozenset(
                    s.uri(tables.root) for s in tables.specs() if s.kind in (Kind.AGGREGATE, Kind.VIEW)
                ),
            )
            try:
                self._loop(consumer, bookkeeper, background, summary)
            finally:
                compactor.close()
                bookkeeper.close()
            if background is not None:
                # leave the aggregates up to date with everything this run committed
                summary.late = background.close()
                background = None
        except BaseException as exc:
            failed = exc
            raise
        finally:
            self.openlineage.emit(
                "FAIL" if failed is not None else "COMPLETE",
                "ingest",
                self.config.run_id,
                inputs=inputs,
                error=f"{failed.__class__.__name__}: {failed}" if failed is not None else None,
                tidegate_run_id=self.config.run_id,
            )
            self.stop_requested = True
            if background is not None:
                background.close(catch_up=False)
            self.runner.close()
            returned = consumer.close()
            if returned:
                log.info("handed %d uncommitted message(s) back to Pub/Sub", returned)
            if in_main:
                signal.signal(signal.SIGINT, previous)
            client.close()

    def _loop(
        self,
        consumer: Consumer,
        bookkeeper: Bookkeeper,
        background: BackgroundProjector | None,
        summary: RunSummary,
    ) -> None:
        o = self.options
        started = last_beat = time.monotonic()
        beat_messages = 0
        last_commit: datetime | None = None
        while not self.stop_requested:
            bookkeeper.raise_error()
            now = time.monotonic()
            if o.follow and self.on_heartbeat and now - last_beat >= o.heartbeat_seconds:
                self.on_heartbeat(
                    Heartbeat(
                        now - started,
                        beat_messages,
                        beat_messages / (now - last_beat),
                        consumer.held_messages,
                        consumer.buffered,
                        last_commit,
                        summary.batches,
                    )
                )
                last_beat, beat_messages = now, 0
            wait = min(o.max_wait, 0.5, o.heartbeat_seconds)
            if not o.follow and o.until_idle is not None:
                wait = min(wait, max(o.until_idle, 0.05))
            taking = time.time_ns()
            leased = consumer.take(
                o.max_batch,
                wait=wait,
                fill=min(o.fill, o.max_wait),
                backlog_rate=o.backlog_rate,
                backlog_fill=min(o.backlog_fill, o.max_wait),
                backlog_age=o.backlog_age,
            )
            if not leased:
                if not o.follow and o.until_idle is not None and consumer.idle_for() >= o.until_idle:
                    summary.stopped_by = f"idle for {o.until_idle:g}s"
                    return
                continue
            outcome = self.run_batch(leased, consumer, bookkeeper, taken=(taking, time.time_ns()))
            if summary.batches == 0:
                # everything built so far (modules, contracts, GX, the batch graph) lives as long
                # as the process: keep it out of the collector's full passes (120-350 ms pauses)
                gc.freeze()
            last_commit = datetime.now(UTC)
            beat_messages += outcome.received
            summary.add(outcome)
            if outcome.raw_versions and background is not None:
                background.submit(outcome, outcome.published, set(outcome.raw_versions))
            if self.on_batch:
                self.on_batch(outcome)
        if not summary.stopped_by:
            summary.stopped_by = "interrupted (current batch finished)"


class _TracedBookkeeper(Bookkeeper):
    """The bookkeeper, whose stages become spans under their batch's span, placed from its own
    stage timings (accounting.Bookkeeper times them on its thread); it ends the batch's span."""

    def __init__(self, spans: tracing.OpenSpans, *args: Any) -> None:
        self.spans = spans  # before the thread starts
        super().__init__(*args)

    def _settle(self, work: Any) -> None:
        span = self.spans.pop(work.outcome.batch_id)
        start = time.time_ns()
        failed: BaseException | None = None
        try:
            super()._settle(work)
        except BaseException as exc:
            failed = exc
            raise
        finally:
            if span is not None:
                stages = work.outcome.stages
                done = [(k, stages[k]) for k in BOOKKEEPER_STAGES if k in stages]
                end = tracing.spans_in_sequence(span, done, start)
                if failed is not None:
                    # the stage that raised has no timing of its own: from the last one's end to now
                    name = next((k for k in BOOKKEEPER_STAGES if k not in stages), "bookkeeper")
                    tracing.fail(
                        tracing.span_between(name, end, time.time_ns(), span, {"tidegate.stage": name}),
                        failed,
                    )
                    tracing.fail(span, failed)
                span.end()


class _TracedProjector:
    """A projection round as a span under the run's (on the projector thread), one child per
    aggregate it committed."""

    def __init__(self, projector: Projector, parent: Span) -> None:
        self.projector = projector
        self.parent = parent

    def __getattr__(self, name: str) -> Any:
        return getattr(self.projector, name)

    def project_all(self, sources: set[str] | None = None, views: bool = True) -> list[ProjectionResult]:
        attributes = {
            "tidegate.stage": "projection",
            "tidegate.sources": sorted(sources) if sources is not None else ["*"],
        }
        with (
            tracing.current(self.parent),
            tracing.tracer().start_as_current_span("projection", attributes=attributes) as span,
        ):
            results = self.projector.project_all(sources, views=views)
            span.set_attributes(
                tracing.attributes_of(aggregates=len(results), late=sum(r.late for r in results))
            )
            for r in results:
                end = int(r.committed_at * 1e9)
                tracing.span_between(
                    "aggregate",
                    end - int(r.seconds * 1e9),
                    end,
                    span,
                    tracing.attributes_of(
                        aggregate=r.aggregate,
                        from_version=r.from_version,
                        to_version=r.to_version,
                        new_rows=r.new_rows,
                        windows_written=r.windows_written,
                        windows_deleted=r.windows_deleted,
                        late=r.late,
                    ),
                )
            return results
