"""Commit accounting and the ack: a micro-batch is acknowledged only once every message of it is
accounted for in Delta, and its ledger row says so.

    bookkeeper = Bookkeeper(config, consumer, openlineage)
    outcome = account(batch_id, run, messages, started_at)   # raises if anything is missing
    bookkeeper.submit(outcome, leased, run)                   # ledger -> ack -> OpenLineage -> metrics

The arithmetic (received = written + duplicates + quarantined + re-quarantined) is
`tidegate.transforms.ledger.ledger_row`, the same one the streaming job balances its chunks with.

Why a thread: the ledger append, the ack, the OpenLineage event and the `_metrics` row take
~50-100 ms per batch and need not delay the next batch's pull and commit. They stay in order
per batch (one thread, a FIFO), and the ack still comes after the batch's commits and its
ledger row: a crash before the ack leaves the batch to Pub/Sub, whose redelivery is skipped as
duplicates. A failure here (the ack or the ledger) stops the run at the next batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tidegate.errors import TidegateError
from tidegate.expectations.envelope import RawMessage
from tidegate.faults import fault_point
from tidegate.lake.delta import OpenTables
from tidegate.lake.metrics import beam_metric_rows, commit_metric_rows, latency_row, write_metrics
from tidegate.lake.rows import message_digest
from tidegate.transforms.base import IngestConfig
from tidegate.transforms.ledger import ChunkReceived, ledger_row, write_ledger
from tidegate.transforms.writes import TableCommit

from .batch import BatchRun
from .consumer import Consumer, Leased

log = logging.getLogger(__name__)


@dataclass
class BatchOutcome:
    batch_id: str
    received: int  # accounted messages (poison ones excluded: they went back to Pub/Sub)
    raw_written: int
    duplicates_skipped: int
    quarantined: int
    quarantine_duplicates: int
    raw_versions: dict[str, int]
    id_conflicts: int
    quarantine_version: int | None
    seconds: float
    poisoned: int = 0
    published: list[float] = field(default_factory=list)  # publish times (epoch s) of its messages
    publish_latencies: list[float] = field(default_factory=list)  # publish -> raw/quarantine commit
    aggregate_latencies: list[float] = field(default_factory=list)  # publish -> window in Delta
    late: int = 0  # (event, window) pairs sent to the late ledger
    projections: list[Any] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per driver stage
    ledger: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSummary:
    run_id: str
    batches: int = 0
    received: int = 0
    raw_written: int = 0
    duplicates_skipped: int = 0
    quarantined: int = 0
    quarantine_duplicates: int = 0
    id_conflicts: int = 0
    poisoned: int = 0
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
        self.id_conflicts += b.id_conflicts
        self.poisoned += b.poisoned


def account(
    batch_id: str, run_id: str, run: BatchRun, messages: list[RawMessage], started_at: datetime
) -> BatchOutcome:
    """The batch's ledger row and outcome from its commits; raises when they do not add up."""
    received = ChunkReceived(
        batch_id,
        len(messages),
        tuple(sorted({m.subscription for m in messages})),
        started_at,
        message_digest(m.message_id for m in messages),
    )
    row = ledger_row(batch_id, run_id, [received, *run.commits])
    accounted = (
        row["raw_written"] + row["duplicates_skipped"] + row["quarantined"] + row["quarantine_duplicates"]
    )
    if accounted != row["received"]:
        # Never ack what did not land: leave it for redelivery and stop loudly.
        raise TidegateError(
            f"batch {batch_id}: {row['received']} received but {accounted} accounted for; not acknowledging",
            hint="nothing was acknowledged: Pub/Sub redelivers the batch; rerun with TIDEGATE_DEBUG=1 "
            "and report the ledger row",
        )
    return BatchOutcome(
        batch_id=batch_id,
        received=row["received"],
        raw_written=row["raw_written"],
        duplicates_skipped=row["duplicates_skipped"],
        quarantined=row["quarantined"],
        quarantine_duplicates=row["quarantine_duplicates"],
        raw_versions=dict(row["raw_versions"]),
        id_conflicts=row["id_conflicts"],
        quarantine_version=row["quarantine_version"],
        seconds=0.0,
        poisoned=len(run.poison),
        ledger=row,
    )


@dataclass
class _Work:
    outcome: BatchOutcome
    leased: list[Leased]
    run: BatchRun
    subscriptions: set[str]


class Bookkeeper:
    """Ledger row, ack, OpenLineage COMPLETE and `_metrics` of each batch, in order, on one thread."""

    def __init__(
        self,
        config: IngestConfig,
        consumer: Consumer,
        openlineage: Any,  # lake.openlineage.LineageEmitter
        inputs: Callable[[set[str]], list[Any]],  # subscriptions -> OpenLineage input datasets
        outputs: Callable[[list[TableCommit]], list[Any]],  # commits -> OpenLineage output datasets
    ) -> None:
        self.config = config
        self.consumer = consumer
        self.openlineage = openlineage
        self.inputs = inputs
        self.outputs = outputs
        self.tables = OpenTables(config.storage)  # the ledger and _metrics, open on this thread
        self.queue: queue.Queue[_Work | None] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="tidegate-bookkeeper", daemon=True)
        self.thread.start()

    def submit(
        self, outcome: BatchOutcome, leased: list[Leased], run: BatchRun, subscriptions: set[str]
    ) -> None:
        self.raise_error()
        self.queue.put(_Work(outcome, leased, run, subscriptions))

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Finish every submitted batch (raises the first failure)."""
        self.queue.put(None)
        self.thread.join()
        self.raise_error()

    def _run(self) -> None:
        while True:
            work = self.queue.get()
            if work is None:
                return
            if self.error is not None:
                continue  # after a failure nothing more is acked; the driver stops
            try:
                self._settle(work)
            except BaseException as exc:  # noqa: BLE001 - handed to the driver, which raises it
                self.error = exc

    def _settle(self, work: _Work) -> None:

        o = work.outcome
        t = time.perf_counter()
        write_ledger(
            self.config,
            [{**o.ledger, "committed_at": datetime.now(UTC)}],
            insert_only=False,
            message_ids=[x.message.message_id for x in work.leased],
            opened=self.tables,
        )
        o.stages["ledger"] = time.perf_counter() - t
        fault_point("after_commit")
        t = time.perf_counter()
        self.consumer.ack(work.leased)
        o.stages["ack"] = time.perf_counter() - t
        t = time.perf_counter()
        self.openlineage.emit(
            "COMPLETE",
            "ingest.batch",
            o.batch_id,
            parent=("ingest", self.config.run_id),
            inputs=self.inputs(work.subscriptions),
            outputs=self.outputs(work.run.commits),
            tidegate_run_id=self.config.run_id,
        )
        o.stages["openlineage"] = time.perf_counter() - t
        t = time.perf_counter()
        try:
            rows = [r for q in work.run.metrics for r in beam_metric_rows(q)]
            rows += commit_metric_rows(work.run.commits)
            stage_rows = [
                {"step": "driver", "name": f"{k}_s", "kind": "counter", "value": v}
                for k, v in o.stages.items()
            ]
            rows += [*stage_rows, latency_row(o.publish_latencies)]
            write_metrics(
                self.config.lake, self.config.run_id, o.batch_id, rows, self.config.storage, self.tables
            )
        except Exception as exc:  # noqa: BLE001 - metrics must never fail a committed batch
            log.warning("metrics of %s not recorded: %s", o.batch_id, exc)
        o.stages["metrics"] = time.perf_counter() - t
