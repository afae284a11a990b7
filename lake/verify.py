"""Reconcile the lake with itself and with a producer manifest (`tidegate verify`).

Checks, each with a readable list of what is wrong:
- every raw table holds each event id once, the quarantine each (subscription, message id) once;
- every ledger row balances: received = written + duplicates skipped + quarantined
  + quarantine duplicates;
- with a manifest: every message sent landed where it must, exactly once: a valid event
  (or its duplicate) by ce-id in `raw/<type>`, a faulty one by Pub/Sub message id in the
  quarantine with the stage and rule the fault must produce.

    tidegate verify --manifest .tidegate/demo/manifest.jsonl
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from lake.tables import ledger_uri, quarantine_uri, raw_uri


@dataclass
class Report:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(passed for _, passed, _ in self.checks)

    def check(self, name: str, passed: bool, detail: str, problems: list[str] | None = None) -> None:
        self.checks.append((name, passed, detail))
        if not passed:
            self.problems += problems or []


def _read(uri: str, columns: list[str], storage_options: dict[str, str] | None) -> pl.DataFrame | None:
    try:
        table = DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError:
        return None
    return pl.from_arrow(table.to_pyarrow_table(columns=columns))  # type: ignore[return-value]


def verify(
    lake: str,
    event_types: list[str],
    manifest: Path | None = None,
    storage_options: dict[str, str] | None = None,
) -> Report:
    report = Report()
    raw: dict[str, pl.DataFrame] = {}
    for t in event_types:
        df = _read(raw_uri(lake, t), ["event_id", "pubsub_message_id"], storage_options)
        if df is None:
            continue
        raw[t] = df
        dup = df.group_by("event_id").len().filter(pl.col("len") > 1)
        report.check(
            f"raw/{t}: one row per event id",
            dup.height == 0,
            f"{df.height:,} rows",
            [f"raw/{t}: event id {r['event_id']} is there {r['len']} times" for r in dup.head(20).to_dicts()],
        )
    quarantine = _read(
        quarantine_uri(lake),
        ["subscription", "pubsub_message_id", "stage", "rule", "event_id", "event_type"],
        storage_options,
    )
    if quarantine is not None:
        dup = quarantine.group_by("subscription", "pubsub_message_id").len().filter(pl.col("len") > 1)
        report.check(
            "quarantine: one row per message",
            dup.height == 0,
            f"{quarantine.height:,} rows",
            [
                f"quarantine: message {r['pubsub_message_id']} is there {r['len']} times"
                for r in dup.head(20).to_dicts()
            ],
        )
    ledger = _read(
        ledger_uri(lake),
        ["batch_id", "received", "raw_written", "duplicates_skipped", "quarantined", "quarantine_duplicates"],
        storage_options,
    )
    if ledger is not None:
        off = ledger.filter(
            pl.col("received")
            != pl.col("raw_written")
            + pl.col("duplicates_skipped")
            + pl.col("quarantined")
            + pl.col("quarantine_duplicates")
        )
        totals = ledger.select(pl.all().exclude("batch_id").sum()).to_dicts()[0]
        report.check(
            "ledger: every batch balances",
            off.height == 0,
            f"{ledger.height:,} batches, {totals['received']:,} received = {totals['raw_written']:,} written + "
            f"{totals['duplicates_skipped']:,} duplicates + {totals['quarantined']:,} quarantined + "
            f"{totals['quarantine_duplicates']:,} re-quarantined",
            [f"ledger: batch {r['batch_id']} does not balance: {r}" for r in off.head(20).to_dicts()],
        )
    if manifest is not None:
        _reconcile(report, manifest, raw, quarantine)
    if not report.checks:
        report.check(
            "lake has tables",
            False,
            f"nothing under {lake}",
            [f"no tidegate tables under {lake}: run `tidegate ingest` first"],
        )
    return report


def _reconcile(
    report: Report, manifest: Path, raw: dict[str, pl.DataFrame], quarantine: pl.DataFrame | None
) -> None:
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    raw_count: dict[tuple[str, str], int] = {}
    for t, df in raw.items():
        for eid, n in Counter(df.get_column("event_id").to_list()).items():
            raw_count[(t, eid)] = n
    q_by_mid: dict[str, list[dict[str, str]]] = {}
    if quarantine is not None:
        for r in quarantine.to_dicts():
            q_by_mid.setdefault(r["pubsub_message_id"], []).append(r)
    missing: list[str] = []
    wrong: list[str] = []
    expected_raw: set[tuple[str, str]] = set()
    for row in rows:
        mid = row.get("message_id")
        where = f"#{row['seq']} {row['kind']} ({row['type']}, ce-id {row['ce_id']}, message {mid})"
        if row["expect"] == "raw":
            expected_raw.add((row["type"], row["ce_id"]))
            n = raw_count.get((row["type"], row["ce_id"]), 0)
            if n == 0:
                in_q = q_by_mid.get(mid or "")
                wrong.append(
                    f"{where}: expected in raw/{row['type']}, "
                    + (
                        f"found in quarantine: {in_q[0]['stage']}/{in_q[0]['rule']}"
                        if in_q
                        else "found nowhere"
                    )
                )
            continue
        got = q_by_mid.get(mid or "", [])
        if not got:
            n = raw_count.get((row["type"], row["ce_id"]), 0)
            (wrong if n else missing).append(
                f"{where}: expected in quarantine ({row['stage']}/{row['rule']}), "
                + ("found in raw" if n else "found nowhere")
            )
        elif (got[0]["stage"], got[0]["rule"]) != (row["stage"], row["rule"]):
            wrong.append(
                f"{where}: quarantined as {got[0]['stage']}/{got[0]['rule']}, expected {row['stage']}/{row['rule']}"
            )
    doubled = [
        f"raw/{t}: ce-id {eid} landed {raw_count[(t, eid)]} times"
        for (t, eid) in sorted(expected_raw)
        if raw_count.get((t, eid), 0) > 1
    ]
    kinds = Counter(r["expect"] for r in rows)
    report.check(
        "manifest: every message landed where expected, exactly once",
        not (missing or wrong or doubled),
        f"{len(rows):,} messages sent: {kinds['raw']:,} to raw ({len(expected_raw):,} distinct events), "
        f"{kinds['quarantine']:,} to quarantine",
        [*missing, *wrong, *doubled],
    )


__all__ = ["Report", "verify"]
