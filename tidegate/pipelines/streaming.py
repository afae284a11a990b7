"""Streaming mode: the same composites behind `ReadFromPubSub`, for Dataflow.

    tidegate ingest --mode streaming --project P --region R \
        --lake gs://bucket/lake --dry-run --job-file job.json     # build the Dataflow job offline

    ReadEvents (one ReadFromPubSub per catalog subscription, with attributes)
      -> ToChunks (GroupIntoBatches per shard: up to N messages or S seconds, then at most 64 MiB a chunk)
      -> Ingest (DecodeEnvelope -> ValidateContract -> ValidateExpectations
                 -> WriteRawHistory (Stage: Parquet files per chunk, on every worker
                                     -> ByTable: GroupIntoBatches keyed by event type
                                     -> Commit: one committer per raw table, one commit a round)
                 / WriteQuarantine)
      -> per aggregate: ComputeWindowedAggregates/<name> (the committed raw rows, split by the
         same lateness rule as local mode, then Beam windows: watermark trigger, early firings,
         a late firing per late element, accumulating panes)
         -> WriteAggregates/<name> (guarded upsert: the newest pane wins; late pairs to the ledger)
      -> BalanceLedger -> WriteLedger (one `_ledger` row per chunk once its messages are all
         accounted for; tidegate/transforms/ledger.py)

On Dataflow, `ReadFromPubSub` acks a message only once the step that read it is durably
checkpointed, so a crash replays unacked messages; the insert-only MERGE on event id makes the
replay harmless (exactly once in the table). Options that matter there:
- `id_label="ce-id"`: Dataflow drops redeliveries of the same ce-id within ~10 minutes before
  they cost anything (the MERGE catches the rest). Beam's local runners do not implement it.
- `timestamp_attribute="ce-time"`: element timestamps and the watermark follow event time
  (what aggregates window on). A message whose ce-time is missing or not RFC 3339 cannot be
  read with it; Pub/Sub redelivers it and, after the catalog's max_delivery_attempts, moves it
  to the dead-letter topic (never silently dropped). Off by default locally.
- Step names are stable ("ReadEvents/<subscription>", "ToChunks", "Ingest/...") so
  `--update` can replace a running job in place.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import apache_beam as beam
from apache_beam.io.gcp.pubsub import ReadFromPubSub
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PCollection
from apache_beam.transforms.periodicsequence import PeriodicImpulse

from tidegate.catalog import Catalog
from tidegate.expectations.envelope import RawMessage
from tidegate.lake.aggregates import source_columns
from tidegate.lake.tables import LakeTables
from tidegate.transforms.aggregate import (
    ComputeWindowedAggregates,
    StreamingAggregateConfig,
    StreamSinkConfig,
    WriteAggregatePanes,
)
from tidegate.transforms.base import IngestConfig
from tidegate.transforms.ingest import Ingest
from tidegate.transforms.ingest_types import Chunk
from tidegate.transforms.ledger import BalanceLedger, WriteLedger


def _to_raw(message: Any, subscription: str) -> RawMessage:
    publish_time = message.publish_time
    return RawMessage(
        data=message.data or b"",
        attributes=dict(message.attributes or {}),
        message_id=message.message_id or "",
        publish_time=publish_time,
        subscription=subscription,
    )


class ReadEvents(beam.PTransform):
    """One ReadFromPubSub per subscription of the catalog, flattened to RawMessages."""

    def __init__(
        self, catalog: Catalog, project: str, id_label: str | None, timestamp_attribute: str | None
    ) -> None:
        super().__init__()
        self.catalog = catalog
        self.project = project
        self.id_label = id_label
        self.timestamp_attribute = timestamp_attribute

    def expand(self, pbegin: Any) -> PCollection:

        reads = []
        for stream in self.catalog.streams:
            path = f"projects/{self.project}/subscriptions/{stream.subscription}"
            kwargs: dict[str, Any] = {"subscription": path, "with_attributes": True}
            if self.id_label:
                kwargs["id_label"] = self.id_label
            if self.timestamp_attribute:
                kwargs["timestamp_attribute"] = self.timestamp_attribute
            reads.append(
                pbegin
                | f"Read/{stream.subscription}" >> ReadFromPubSub(**kwargs)
                | f"ToRaw/{stream.subscription}" >> beam.Map(_to_raw, stream.subscription)
            )
        return tuple(reads) | "Merge" >> beam.Flatten()


CHUNK_MAX_BYTES = 64 * 1024 * 1024  # a chunk's bodies + attributes, at most (one bigger message alone)


def message_bytes(m: RawMessage) -> int:
    return len(m.data) + sum(len(k) + len(v) for k, v in m.attributes.items())


def split_by_bytes(messages: Iterable[RawMessage], max_bytes: int) -> Iterator[Chunk]:
    """Chunks of `messages` holding at most `max_bytes` each (a message larger than that makes a
    chunk of its own). Reads `messages` once, lazily: a batch Dataflow pages in from state is
    never held whole."""
    held: list[RawMessage] = []
    size = 0
    for m in messages:
        n = message_bytes(m)
        if held and size + n > max_bytes:
            yield Chunk(uuid.uuid4().hex[:12], held)
            held, size = [], 0
        held.append(m)
        size += n
    if held:
        yield Chunk(uuid.uuid4().hex[:12], held)


class ToChunks(beam.PTransform):
    """Messages -> chunks of up to `size` messages or `seconds` of buffering, per shard, and at
    most `max_bytes` (Pub/Sub allows 10 MB bodies: 5,000 of them would be 50 GB in one element)."""

    def __init__(self, size: int, seconds: float, shards: int, max_bytes: int = CHUNK_MAX_BYTES) -> None:
        super().__init__()
        self.size = size
        self.seconds = seconds
        self.shards = shards
        self.max_bytes = max_bytes

    def expand(self, messages: PCollection) -> PCollection:
        shards = self.shards
        max_bytes = self.max_bytes
        return (
            messages
            | "Shard" >> beam.WithKeys(lambda _m: random.randrange(shards))
            | "Batch" >> beam.GroupIntoBatches(self.size, max_buffering_duration_secs=self.seconds)
            | "Chunk"
            >> beam.FlatMapTuple(lambda _k, ms: split_by_bytes(ms, max_bytes)).with_output_types(Chunk)
        )


class CompactFn(beam.DoFn):
    """On each tick, compact the partitions of the job's tables that gathered `min_files` small
    files (tidegate.lake.maintenance.compact_small_files: a conflict with a concurrent commit is
    deferred to the next tick, never an error) and write a checkpoint, so opening a table stays
    cheap. Runs beside ingestion on one worker at a time; it never blocks a chunk."""

    def __init__(
        self, uris: list[str], min_files: int, storage: dict[str, str] | None, root: str | None = None
    ) -> None:
        self.uris = uris
        self.min_files = min_files
        self.storage = storage
        self.root = root
        self.archive: Any = None

    def setup(self) -> None:
        from tidegate.lake.lineage import CommitArchive

        self.archive = CommitArchive(self.root, self.storage) if self.root is not None else None

    def process(self, _tick: Any) -> Iterator[int]:
        from tidegate.lake.maintenance import clean_log, compact_small_files

        compacted = 0
        for uri in self.uris:
            try:
                compacted += compact_small_files(uri, self.min_files, self.storage)
                # the commits' lineage into _commits, a checkpoint; the log past its retention goes
                clean_log(uri, self.storage, self.archive)
            except Exception as exc:  # noqa: BLE001 - maintenance must never fail the job
                logging.getLogger(__name__).warning("maintaining %s deferred: %s", uri, exc)
        Metrics.counter("tidegate", "files_compacted").inc(compacted)
        yield compacted


class MaintainTables(beam.PTransform):
    """Every `every` seconds, CompactFn over the tables the streaming job writes: what
    `ingest --follow` does on its compactor thread (tidegate.pipelines.local.compaction).
    Retention, old partitions and vacuum are `tidegate maintain`'s (scheduled on GCP: docs/deploy.md)."""

    def __init__(
        self,
        uris: list[str],
        every: float,
        min_files: int,
        storage: dict[str, str] | None,
        root: str | None = None,
    ) -> None:
        super().__init__()
        self.root = root
        self.uris = uris
        self.every = every
        self.min_files = min_files
        self.storage = storage

    def expand(self, pbegin: Any) -> PCollection:
        return (
            pbegin
            | "Tick" >> PeriodicImpulse(fire_interval=self.every, apply_windowing=False)
            | "Compact" >> beam.ParDo(CompactFn(self.uris, self.min_files, self.storage, self.root))
        )


def build(
    pipeline: beam.Pipeline,
    catalog: Catalog,
    config: IngestConfig,
    *,
    project: str,
    chunk_size: int = 5000,
    chunk_seconds: float = 5.0,
    shards: int = 4,
    id_label: str | None = "ce-id",
    timestamp_attribute: str | None = "ce-time",
    early_firing_seconds: int = 30,
    compact_every: float = 300.0,
    compact_min_files: int = 16,
    staged_commits: bool = True,
) -> PCollection:

    specs = [a for a in catalog.aggregates if a.source in catalog.event_types]
    columns: dict[str, list[str]] = {}
    for spec in specs:
        columns.setdefault(spec.source, []).extend(source_columns(spec))
    config = replace(
        config,
        emit_rows=tuple((t, tuple(dict.fromkeys(c))) for t, c in sorted(columns.items())),
        commit_per_chunk=True,  # every commit belongs to one chunk: the ledger balances per chunk
        # raw history: workers stage files, one committer per table commits them (lake.committer)
        staged_commits=staged_commits,
    )
    messages = pipeline | "ReadEvents" >> ReadEvents(catalog, project, id_label, timestamp_attribute)
    chunks = messages | "ToChunks" >> ToChunks(chunk_size, chunk_seconds, shards)
    ingested = chunks | "Ingest" >> Ingest(config)
    ledger = chunks | "BalanceLedger" >> BalanceLedger(config, ingested.commits)
    _ = ledger | "WriteLedger" >> WriteLedger(config)
    for spec in specs:
        rows = ingested.rows | f"Rows/{spec.name}" >> beam.Filter(lambda c, t=spec.source: c[0] == t)
        windowed = rows | f"ComputeWindowedAggregates/{spec.name}" >> ComputeWindowedAggregates(
            StreamingAggregateConfig(spec.model_dump_json(), early_firing_seconds)
        )
        _ = windowed | f"WriteAggregates/{spec.name}" >> WriteAggregatePanes(
            StreamSinkConfig(
                lake=config.lake,
                catalog_path=config.catalog_path,
                spec_json=spec.model_dump_json(),
                run_id=config.run_id,
                code_version=config.code_version,
                git_sha=config.git_sha,
                storage_options=config.storage_options,
            )
        )
    if compact_every > 0:
        uris = LakeTables(config.lake, catalog).uris()
        _ = pipeline | "MaintainTables" >> MaintainTables(
            uris, compact_every, compact_min_files, config.storage, root=config.lake
        )
    return ingested.commits
