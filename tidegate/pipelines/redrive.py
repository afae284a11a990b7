"""Redrive: quarantined messages through today's contracts and suites, as a batch of their own.

    result = redrive(catalog, ".tidegate/lake", rule="expect_column_values_to_be_in_set")

After a contract or a suite is fixed, what it wrongly rejected can land. The originals come from
the quarantine (kept Fernet-encrypted up to `QUARANTINE_MAX_ORIGINAL_BYTES`), rebuilt as the
messages they were (body, attributes, Pub/Sub message id, publish time, subscription), and run
through the same local batch pipeline as ingestion (tidegate.pipelines.local.BatchRunner), under
the lake lock, with a run id `redrive-...`:

- what passes lands in raw exactly once (an event already there is a duplicate), its rows
  carrying the redrive's run and batch ids and the quarantined message's id;
- what fails again stays quarantined (its quarantine row already exists: the insert skips it);
- the batch gets its `_ledger` row, balanced like any other (`received = written + duplicates +
  quarantined + re-quarantined`), so `tidegate verify` stays green;
- every message taken gets a `_redrives` row (outcome `landed`, `rejected_again` or
  `original_not_kept`). The quarantine row is never changed or deleted; a message that landed is
  not taken again by a later redrive.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa
from cryptography.fernet import InvalidToken

from tidegate import settings
from tidegate.catalog import Catalog
from tidegate.errors import TidegateError
from tidegate.expectations.envelope import RawMessage
from tidegate.lake.delta import try_open
from tidegate.lake.lock import is_locked_lake, lake_lock
from tidegate.lake.pii import is_remote_lake, load_protector
from tidegate.lake.read import Lake
from tidegate.lake.rows import message_digest
from tidegate.lake.tables import REDRIVES, REDRIVES_SCHEMA, raw_uri
from tidegate.lake.writer import insert_new
from tidegate.pipelines.local.batch import BatchRunner
from tidegate.pipelines.runs import ingest_config, new_run_id
from tidegate.transforms.ledger import ChunkReceived, ledger_row, write_ledger


@dataclass
class RedriveResult:
    run_id: str
    batch_id: str
    taken: int = 0
    landed: list[str] = field(default_factory=list)  # Pub/Sub message ids
    rejected_again: list[str] = field(default_factory=list)
    not_kept: list[str] = field(default_factory=list)
    ledger: dict[str, object] = field(default_factory=dict)


def redrive(
    catalog: Catalog,
    lake: str,
    *,
    rule: str | None = None,
    message_ids: list[str] | None = None,
    production: bool = False,
) -> RedriveResult:
    """Redrive the quarantined messages of `rule` and/or with these Pub/Sub `message_ids`."""
    if rule is None and not message_ids:
        raise TidegateError(
            "say which quarantined messages to redrive",
            hint="--rule RULE (e.g. expect_column_values_to_be_in_set) or --ids ID[,ID...]; "
            "`tidegate quarantine list` shows both",
        )
    # the key first: a lake that needs a real one is refused before anything is read
    protector, _warning = load_protector(production, lake=lake)
    production = production or is_remote_lake(lake)
    config = replace(ingest_config(catalog, lake, production), run_id=new_run_id("redrive"))
    batch_id = f"{config.run_id}-b000000"
    result = RedriveResult(config.run_id, batch_id)
    with lake_lock(lake):
        reader = Lake(lake, settings.storage_options(), catalog)
        rows = _selected(reader, rule, message_ids)
        result.taken = rows.height
        if rows.is_empty():
            return result
        messages: list[RawMessage] = []
        for r in rows.iter_rows(named=True):
            try:
                data = protector.decrypt(r["payload_encrypted"]) if r["payload_encrypted"] else None
            except InvalidToken:
                data = None
            if data is None:
                result.not_kept.append(r["pubsub_message_id"])
                continue
            messages.append(
                RawMessage(
                    data,
                    dict(r["attributes"] or []),
                    message_id=r["pubsub_message_id"],
                    publish_time=r["pubsub_publish_time"],
                    subscription=r["subscription"],
                )
            )
        started = datetime.now(UTC)
        if messages:
            runner = BatchRunner(config, single_writer=is_locked_lake(lake))
            try:
                run = runner.run(batch_id, messages)
            finally:
                runner.close()
            received = ChunkReceived(
                batch_id,
                len(messages),
                tuple(sorted({m.subscription for m in messages})),
                started,
                message_digest(m.message_id for m in messages),
            )
            result.ledger = ledger_row(batch_id, config.run_id, [received, *run.commits])
            write_ledger(
                config, [result.ledger], insert_only=False, message_ids=[m.message_id for m in messages]
            )
            landed = _landed(reader, batch_id)
            for m in messages:
                (result.landed if m.message_id in landed else result.rejected_again).append(m.message_id)
        _record(lake, rows, result, config.storage)
    return result


def _selected(reader: Lake, rule: str | None, message_ids: list[str] | None) -> pl.DataFrame:
    """Quarantine rows to take: by rule and/or message id, minus those a redrive already landed."""
    q = reader.quarantine()
    if rule is not None:
        q = q.filter(pl.col("rule") == rule)
    if message_ids:
        q = q.filter(pl.col("pubsub_message_id").is_in(message_ids))
    rows = q.collect()
    done = try_open(REDRIVES.uri(reader.root), reader.storage_options)
    if done is not None and rows.height:
        frame = pl.from_arrow(done.to_pyarrow_table(columns=["subscription", "pubsub_message_id", "outcome"]))
        assert isinstance(frame, pl.DataFrame)
        landed = frame.filter(pl.col("outcome") == "landed").select("subscription", "pubsub_message_id")
        rows = rows.join(landed, on=["subscription", "pubsub_message_id"], how="anti")
    return rows


def _landed(reader: Lake, batch_id: str) -> set[str]:
    """Pub/Sub message ids of the raw rows this redrive's batch wrote."""
    out: set[str] = set()
    for t in reader.catalog.event_types:
        if try_open(raw_uri(reader.root, t), reader.storage_options) is None:
            continue
        rows = reader.raw(t).filter(pl.col("batch_id") == batch_id).select("pubsub_message_id").collect()
        out |= set(rows.get_column("pubsub_message_id"))
    return out


def _record(lake: str, rows: pl.DataFrame, result: RedriveResult, storage: dict[str, str] | None) -> None:
    outcome = dict.fromkeys(result.landed, "landed") | dict.fromkeys(result.rejected_again, "rejected_again")
    outcome |= dict.fromkeys(result.not_kept, "original_not_kept")
    now = datetime.now(UTC)
    records = [
        {
            "subscription": r["subscription"],
            "pubsub_message_id": r["pubsub_message_id"],
            "redriven_at": now,
            "run_id": result.run_id,
            "batch_id": result.batch_id,
            "rule_before": r["rule"],
            "outcome": outcome[r["pubsub_message_id"]],
        }
        for r in rows.iter_rows(named=True)
    ]
    insert_new(
        REDRIVES.uri(lake),
        pa.Table.from_pylist(records, schema=REDRIVES_SCHEMA),
        keys=REDRIVES.keys,
        metadata={"tidegate_run_id": result.run_id, "tidegate_table": REDRIVES.name},
        storage_options=storage,
    )
