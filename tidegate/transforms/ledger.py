"""The streaming job's ledger: one `_ledger` row per chunk, once every message of it is accounted for.

Local mode writes its ledger row in the driver after a micro-batch's commits (pipelines.local).
A streaming job has no driver, so the ledger is a branch of the pipeline:

    chunks  --ChunkReceived----------------------------+
                                                       +--> BalanceLedger (state per chunk id)
    Ingest commits (raw + quarantine, one per chunk) --+        --> WriteLedger (insert-only)

`ChunkReceived` counts the chunk's messages where it is made. The writers commit once per chunk
in streaming mode (`IngestConfig.commit_per_chunk`), so each raw / quarantine `TableCommit`
names exactly one chunk. `BalanceFn` keeps, per chunk id, what arrived; when the messages
handed to the writers add up to the messages received it emits the ledger row (received =
written + duplicates + quarantined + re-quarantined, as in local mode; `id_conflicts` counts the
quarantined copies that reused a landed (source, id) with another payload) and forgets the chunk.
If they never add up (a message vanished between reading and writing: a bug), a processing-time
timer emits what it has after `timeout_seconds` anyway: an unbalanced row, which
`tidegate status` and `tidegate verify` flag, instead of state that silently waits forever.

`WriteLedger` inserts on `batch_id` (lake.writer.insert_new), so a bundle Dataflow retries adds
nothing twice. The ledger is a Delta table like the others: `Lake.ledger()`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import apache_beam as beam
import pyarrow as pa
from apache_beam.coders import PickleCoder
from apache_beam.pvalue import PCollection
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer

from tidegate.lake.delta import OpenTables
from tidegate.lake.rows import commit_metadata, message_digest
from tidegate.lake.tables import LEDGER, LEDGER_SCHEMA
from tidegate.lake.writer import append, insert_new
from tidegate.transforms.base import IngestConfig
from tidegate.transforms.ingest_types import Chunk
from tidegate.transforms.writes import TableCommit


class ChunkReceived(NamedTuple):
    batch_id: str
    received: int
    subscriptions: tuple[str, ...]
    started_at: datetime
    message_digest: str


def chunk_received(chunk: Chunk) -> tuple[str, ChunkReceived]:

    return chunk.batch_id, ChunkReceived(
        chunk.batch_id,
        len(chunk.messages),
        tuple(sorted({m.subscription for m in chunk.messages})),
        datetime.now(UTC),
        message_digest(m.message_id for m in chunk.messages),
    )


def commit_outcomes(commit: TableCommit) -> Iterator[tuple[str, TableCommit]]:
    """Raw and quarantine commits, keyed by their (single) chunk id."""
    if commit.kind in ("raw", "quarantine"):
        for batch_id in commit.batch_ids:
            yield batch_id, commit


def ledger_row(batch_id: str, run_id: str, items: Iterable[Any]) -> dict[str, Any]:
    """The ledger row of one chunk from what arrived for it (balanced or not)."""
    received: ChunkReceived | None = None
    commits: list[TableCommit] = []
    for item in items:
        if isinstance(item, ChunkReceived):
            received = item
        else:
            commits.append(item)
    raw = [c for c in commits if c.kind == "raw"]
    quarantine = [c for c in commits if c.kind == "quarantine"]
    now = datetime.now(UTC)
    return {
        "run_id": run_id,
        "batch_id": batch_id,
        "started_at": received.started_at if received else now,
        "committed_at": now,
        "subscriptions": list(received.subscriptions) if received else [],
        "received": received.received if received else 0,
        "raw_written": sum(c.inserted for c in raw),
        "duplicates_skipped": sum(c.received - c.inserted for c in raw),
        "quarantined": sum(c.inserted for c in quarantine),
        "quarantine_duplicates": sum(c.received - c.inserted for c in quarantine),
        "raw_versions": sorted((c.event_type or "", c.version) for c in raw if c.version is not None),
        "quarantine_version": max((c.version for c in quarantine if c.version is not None), default=None),
        "message_digest": received.message_digest if received else "",
        "id_conflicts": sum(c.conflicts for c in quarantine),
    }


def balanced(items: list[Any]) -> bool:
    received = next((i for i in items if isinstance(i, ChunkReceived)), None)
    handed = sum(i.received for i in items if isinstance(i, TableCommit))
    return received is not None and handed == received.received


_ITEMS = BagStateSpec("items", PickleCoder())
_DEADLINE = TimerSpec("deadline", TimeDomain.REAL_TIME)
_ITEMS_PARAM = beam.DoFn.StateParam(_ITEMS)
_DEADLINE_PARAM = beam.DoFn.TimerParam(_DEADLINE)


class BalanceFn(beam.DoFn):
    def __init__(self, run_id: str, timeout_seconds: float) -> None:
        super().__init__()
        self.run_id = run_id
        self.timeout_seconds = timeout_seconds

    def process(
        self,
        element: tuple[str, Any],
        items: Any = _ITEMS_PARAM,
        deadline: Any = _DEADLINE_PARAM,
    ) -> Iterator[dict[str, Any]]:
        batch_id, item = element
        seen = [*items.read(), item]
        if balanced(seen):
            items.clear()
            deadline.clear()
            yield ledger_row(batch_id, self.run_id, seen)
            return
        if len(seen) == 1:
            deadline.set(time.time() + self.timeout_seconds)
        items.add(item)

    @on_timer(_DEADLINE)
    def expire(self, key: Any = beam.DoFn.KeyParam, items: Any = _ITEMS_PARAM) -> Iterator[dict[str, Any]]:
        seen = list(items.read())
        items.clear()
        if seen:
            yield ledger_row(key, self.run_id, seen)


class WriteLedgerFn(beam.DoFn):
    """Ledger rows of a bundle -> one insert-only commit on batch_id."""

    def __init__(self, config: IngestConfig) -> None:
        super().__init__()
        self.config = config

    def start_bundle(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def process(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def finish_bundle(self) -> None:
        if self.rows:
            write_ledger(self.config, self.rows, insert_only=True)


def write_ledger(
    config: IngestConfig,
    rows: list[dict[str, Any]],
    *,
    insert_only: bool,
    message_ids: Sequence[str] = (),
    opened: OpenTables | None = None,
) -> None:
    """Ledger rows (dicts of LEDGER_SCHEMA) -> one commit to `_ledger`. Streaming inserts on
    batch_id (a bundle Dataflow retries adds nothing twice); local mode appends (one driver, a
    batch id is written once)."""

    meta = commit_metadata(
        run_id=config.run_id,
        batch_ids=[r["batch_id"] for r in rows],
        code_version=config.code_version,
        git_sha=config.git_sha,
        subscriptions={s for r in rows for s in r["subscriptions"]},
        message_ids=message_ids,
        extra={"tidegate_table": "ledger"},
    )
    table = pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA)
    if insert_only:
        insert_new(
            LEDGER.uri(config.lake), table, keys=LEDGER.keys, metadata=meta, storage_options=config.storage
        )
    else:
        append(LEDGER.uri(config.lake), table, metadata=meta, storage_options=config.storage, opened=opened)


class BalanceLedger(beam.PTransform):
    """(chunks, commits) -> ledger rows (dicts of LEDGER_SCHEMA), one per chunk."""

    def __init__(self, config: IngestConfig, commits: PCollection, timeout_seconds: float = 600) -> None:
        super().__init__()
        self.config = config
        self.commits = commits
        self.timeout_seconds = timeout_seconds

    def expand(self, chunks: PCollection) -> PCollection:
        keyed = tuple[str, Any]
        received = chunks | "Received" >> beam.Map(chunk_received).with_output_types(keyed)
        outcomes = self.commits | "Outcomes" >> beam.FlatMap(commit_outcomes).with_output_types(keyed)
        return (
            (received, outcomes)
            | "PerChunk" >> beam.Flatten()
            | "Balance" >> beam.ParDo(BalanceFn(self.config.run_id, self.timeout_seconds))
        )


class WriteLedger(beam.PTransform):
    def __init__(self, config: IngestConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, rows: PCollection) -> PCollection:
        return rows | beam.ParDo(WriteLedgerFn(self.config))
