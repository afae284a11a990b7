"""Reconcile the lake with itself and with a producer manifest (`tidegate verify`).

Checks, each with a readable list of what is wrong:
- every raw table holds each event id once, the quarantine each (subscription, message id) once;
- every ledger row balances: received = written + duplicates skipped + quarantined
  + quarantine duplicates;
- parity: every aggregate table equals a recompute from the raw version it says it
  incorporates (its Delta app transaction), exactly (count, sum, min, max, mean), and the late
  ledger holds exactly the late pairs of that raw history; the differing windows are listed;
- with a manifest: every message sent landed where it must, exactly once: a valid event
  (or its duplicate) by ce-id in `raw/<type>`, a faulty one by Pub/Sub message id in the
  quarantine with the stage and rule the fault must produce; every event the producer sent
  late is in the late ledger of each aggregate over its type (unless no watermark existed
  yet when it landed), and no other event is.

    tidegate verify --manifest .tidegate/demo/manifest.jsonl
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from tidegate.catalog import AggregateSpec
from tidegate.errors import TidegateError
from tidegate.lake import aggregates as agg
from tidegate.lake.aggregate_writes import app_id
from tidegate.lake.delta import try_open
from tidegate.lake.history import (
    GROUP_ROWS,
    FileGroups,
    duplicates,
    missing_files,
    readable_version,
    vacuumed,
)
from tidegate.lake.tables import (
    QUARANTINE,
    TableSpec,
    aggregate_uri,
    late_uri,
    ledger_uri,
    quarantine_uri,
    raw_table,
    raw_uri,
)


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


def _groups(uri: str, storage: dict[str, str] | None, group_rows: int) -> FileGroups | None:
    table = try_open(uri, storage)
    return FileGroups.of(table, group_rows) if table is not None else None


def unreadable_problem(aggregate: str, version: int | None, reason: str) -> str:
    """What verify reports when the raw version an aggregate incorporates can no longer be read."""
    return (
        f"{aggregate}: raw version {version}, which the table incorporates, can no longer be read "
        f"({reason}); raw changed since, so nothing holds its rows: "
        f"`tidegate replay {aggregate}` rebuilds the table from the current raw version"
    )


def verify(
    lake: str,
    event_types: list[str],
    manifest: Path | None = None,
    storage_options: dict[str, str] | None = None,
    aggregates: Sequence[AggregateSpec] = (),
    catalog: Any = None,  # catalog.Catalog: its state views are checked too
    group_rows: int = GROUP_ROWS,
) -> Report:
    """Every check in bounded memory: raw history is read a group of files at a time
    (tidegate.lake.history); what a check keeps grows with its output (windows, view rows, late
    pairs, duplicates), not with the raw rows behind it."""
    report = Report()
    views_catalog = catalog
    catalog_views = list(catalog.views) if catalog is not None else []
    raw: dict[str, FileGroups] = {}
    for t in event_types:
        groups = _groups(raw_uri(lake, t), storage_options, group_rows)
        if groups is None:
            continue
        raw[t] = groups
        _one_row_per_key(report, raw_table(t), groups, "event (source, id), whatever its date")
    quarantined = _groups(quarantine_uri(lake), storage_options, group_rows)
    if quarantined is not None:
        _one_row_per_key(report, QUARANTINE, quarantined, "message")
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
    governed = Governed.of(lake, storage_options)
    if quarantined is not None:
        conflicts = [
            quarantined.read(i, _QUARANTINE_COLUMNS).filter(pl.col("rule") == "id_conflict")
            for i in range(len(quarantined))
        ]
        if conflicts:
            _conflicts_recorded(report, pl.concat(conflicts), raw, ledger_uri(lake), storage_options)
    for spec in aggregates:
        if spec.source in raw:
            _parity(
                report, lake, spec, storage_options, governed.cutoffs.get(f"raw/{spec.source}"), group_rows
            )
    for view in catalog_views:
        if any(e.type in raw for e in view.events):
            from tidegate.lake.views import view_parity

            problems = view_parity(views_catalog, lake, view.name, storage_options)
            report.check(
                f"views/{view.name}: equals a fold of raw history",
                not problems,
                "every key" if not problems else f"{len(problems)} key(s) differ",
                problems,
            )
    if manifest is not None:
        quarantine = _read(quarantine_uri(lake), _QUARANTINE_COLUMNS, storage_options)
        _reconcile(report, manifest, raw, quarantine, governed)
        if aggregates:
            _late_vs_manifest(report, lake, manifest, aggregates, storage_options)
    if not report.checks:
        report.check(
            "lake has tables",
            False,
            f"nothing under {lake}",
            [f"no tidegate tables under {lake}: run `tidegate ingest` first"],
        )
    return report


_QUARANTINE_COLUMNS = ["subscription", "pubsub_message_id", "stage", "rule", "event_id", "event_type"]


def _counts(groups: FileGroups, ids: Sequence[str]) -> dict[str, int]:
    """How many raw rows hold each of `ids` (any source), a group's id column at a time."""
    if not ids:
        return {}
    wanted = pl.Series(sorted(set(ids)), dtype=pl.String).implode()
    found: Counter[str] = Counter()
    for i in range(len(groups)):
        # filtered in polars, not as a dataset filter: files rewritten by an erasure can hold
        # string_view columns, which Arrow's statistics pruning cannot compare with strings
        held = groups.read(i, ["event_id"]).get_column("event_id")
        found.update(held.filter(held.is_in(wanted)).to_list())
    return dict(found)


def _conflicts_recorded(
    report: Report,
    quarantine: pl.DataFrame,
    raw: dict[str, FileGroups],
    ledger: str,
    storage_options: dict[str, str] | None,
) -> None:
    """Every id conflict is recorded once: one quarantine row per conflicting message (its key),
    as many as the ledger counted, each naming an event that is in raw history."""
    rows = quarantine.filter(pl.col("rule") == "id_conflict")
    counted = None
    try:
        table = DeltaTable(ledger, storage_options=storage_options)
        if "id_conflicts" in table.schema().to_arrow().names:
            counted = int(
                pl.from_arrow(table.to_pyarrow_table(columns=["id_conflicts"]))  # type: ignore[union-attr]
                .get_column("id_conflicts")
                .fill_null(0)
                .sum()
            )
    except TableNotFoundError:
        pass
    if rows.height == 0 and not counted:
        return
    problems: list[str] = []
    if counted is not None and counted != rows.height:
        problems.append(
            f"the ledger counts {counted:,} id conflicts, the quarantine holds {rows.height:,} id_conflict rows"
        )
    landed: dict[str, set[str]] = {}
    for t in rows.get_column("event_type").unique().drop_nulls().to_list():
        groups = raw.get(t)
        ids = rows.filter(pl.col("event_type") == t).get_column("event_id").drop_nulls().to_list()
        landed[t] = set(_counts(groups, ids)) if groups is not None else set()
    for r in rows.to_dicts():
        if r["event_id"] not in landed.get(r["event_type"] or "", set()):
            problems.append(
                f"quarantine: id_conflict of message {r['pubsub_message_id']} names {r['event_type']} "
                f"ce-id {r['event_id']}, which is not in raw history"
            )
    report.check(
        "id conflicts: each recorded once, each against an event in raw",
        not problems,
        f"{rows.height:,} id conflicts",
        problems[:20],
    )


def _one_row_per_key(report: Report, table: TableSpec, groups: FileGroups, what: str) -> None:
    """The table holds each of its keys (tidegate.lake.tables) once, across all its files."""
    keys = list(table.keys)
    dup = duplicates(groups, keys)
    report.check(
        f"{table.name}: one row per {what}",
        dup.height == 0,
        f"{groups.rows:,} rows",
        [
            f"{table.name}: {', '.join(f'{k}={r[k]}' for k in keys)} is there {r['len']} times"
            for r in dup.head(20).to_dicts()
        ],
    )


_MANIFEST_KEYS = {"seq", "kind", "type", "ce_id", "expect"}


def read_manifest(manifest: Path) -> list[dict[str, Any]]:
    """The producer's manifest (JSONL, one object per message sent); a file that is not one is
    a user mistake, named with its first bad line."""
    rows: list[dict[str, Any]] = []
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TidegateError(f"manifest {manifest} cannot be read: {exc}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not row.keys() >= _MANIFEST_KEYS:
            raise TidegateError(
                f"manifest {manifest} is not a producer manifest (line {n} is not one of its JSON rows)",
                hint="pass the file `tidegate produce --manifest FILE` wrote",
            )
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Governed:
    """What governance deleted on purpose (tidegate.lake.governance, tidegate.lake.erasure):
    per table the latest retention cutoff, and digests of erased events."""

    cutoffs: dict[str, datetime]
    erased: frozenset[str]

    @classmethod
    def of(cls, lake: str, storage: dict[str, str] | None) -> Governed:
        from tidegate.lake.governance import audit_rows, retention_cutoffs

        audit = audit_rows(lake, storage).filter(pl.col("action") == "erase")
        erased = {d for ds in audit.get_column("erased_events").drop_nulls().to_list() for d in ds}
        return cls(retention_cutoffs(lake, storage), frozenset(erased))

    def expired(self, table: str, when: str | None) -> bool:
        cutoff = self.cutoffs.get(table)
        if cutoff is None or not when:
            return False
        return datetime.fromisoformat(when.replace("Z", "+00:00")) < cutoff

    def was_erased(self, event_type: str, event_id: str) -> bool:
        return event_digest(event_type, event_id) in self.erased


def event_digest(event_type: str, event_id: str) -> str:
    """How `_audit` names an erased event (its type and id, never its data)."""
    return hashlib.sha256(f"{event_type}\x1f{event_id}".encode()).hexdigest()[:32]


def _reconcile(
    report: Report,
    manifest: Path,
    raw: dict[str, FileGroups],
    quarantine: pl.DataFrame | None,
    governed: Governed | None = None,
) -> None:
    governed = governed or Governed({}, frozenset())
    expired = erased = 0
    rows = read_manifest(manifest)
    raw_count: dict[tuple[str, str], int] = {}
    for t, groups in raw.items():  # only the ids the manifest names are read back
        sent = [r["ce_id"] for r in rows if r["type"] == t and r.get("ce_id") is not None]
        for eid, n in _counts(groups, sent).items():
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
            if n == 0 and governed.expired(f"raw/{row['type']}", row.get("event_time")):
                expired += 1  # older than the stream's retention: deleted on purpose (_audit)
                continue
            if n == 0 and governed.was_erased(row["type"], row["ce_id"]):
                erased += 1
                continue
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
        if not got and governed.expired("quarantine", row.get("event_time")):
            expired += 1  # quarantined before the quarantine's retention cutoff
            continue
        if not got and governed.was_erased(row["type"], row["ce_id"]):
            erased += 1
            continue
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
        f"{kinds['quarantine']:,} to quarantine"
        + (f"; {expired:,} since deleted by retention" if expired else "")
        + (f"; {erased:,} since erased (tidegate forget)" if erased else ""),
        [*missing, *wrong, *doubled],
    )


def _fmt(row: dict[str, object], cols: Sequence[str]) -> str:
    return ", ".join(f"{c}={row.get(c)}" for c in cols)


def _same(a: object, b: object) -> bool:
    """Exact equality, except floats (a sum of a float field, in a different order, can differ
    in its last bits; means are computed from exact sums and compare equal anyway)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def window_diff(expected: pl.DataFrame, got: pl.DataFrame, spec: AggregateSpec) -> list[str]:
    """Readable differences between two aggregate frames (window, keys, metrics)."""
    key = [*agg.WINDOW, *spec.keys]
    metrics = agg.metric_columns(spec)
    got = got.select(agg.value_columns(spec)).cast(dict(expected.schema))  # type: ignore[arg-type]
    joined = expected.with_columns(pl.lit(True).alias("_raw")).join(
        got.with_columns(pl.lit(True).alias("_table")),
        on=key,
        how="full",
        suffix="_table",
        nulls_equal=True,
        coalesce=True,
    )
    out: list[str] = []
    for r in joined.to_dicts():
        where = _fmt(r, key)
        if not r["_table"]:
            out.append(
                f"{spec.name}: window {where} is missing from the table (raw gives {_fmt(r, metrics)})"
            )
        elif not r["_raw"]:
            out.append(f"{spec.name}: window {where} is in the table but not in a recompute from raw")
        else:
            diffs = [
                f"{m}: table {r[f'{m}_table']} != raw {r[m]}"
                for m in metrics
                if not _same(r[m], r[f"{m}_table"])
            ]
            if diffs:
                out.append(f"{spec.name}: window {where}: " + "; ".join(diffs))
    return out


def pairs_per_event(spec: AggregateSpec) -> int:
    """How many (event, window) pairs one raw row becomes (sliding windows: size / period)."""
    w = spec.window
    return int(agg.duration(w.size or "") / agg.duration(w.period or "")) if w.type == "sliding" else 1


def recompute(
    groups: FileGroups, spec: AggregateSpec, chunk_pairs: int = 250_000
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`agg.compute` and the late pairs (event_id, window_start) of a raw version, a chunk of
    rows at a time: each chunk (`chunk_pairs` (event, window) pairs) is split by the recorded
    lateness and pre-aggregated, and partial rows are merged into the running ones (partials
    merge exactly whatever the grouping, sessions included: the path `tidegate replay` takes),
    so memory holds one chunk plus the windows, never the history."""
    columns = agg.source_columns(spec)
    rows_per_chunk = max(10_000, chunk_pairs // pairs_per_event(spec))
    merged: pl.DataFrame | None = None
    pending: list[pl.DataFrame] = []
    late: list[pl.DataFrame] = []

    def fold(parts: list[pl.DataFrame]) -> pl.DataFrame:
        return agg.merge(pl.concat(parts, how="vertical_relaxed"), spec)

    for i in range(len(groups)):
        for rows in groups.chunks(i, columns, rows_per_chunk):
            parts = agg.split(agg.frame(rows.to_arrow()), spec)
            late.append(parts.late.select("event_id", "window_start"))
            pending.append(agg.partials(parts.on_time, spec))
            # merge when the pending partials outgrow the merged ones: linear in the history
            if sum(p.height for p in pending) > max(chunk_pairs, merged.height if merged is not None else 0):
                merged = fold([*([merged] if merged is not None else []), *pending])
                pending = []
    if merged is None and not pending:
        empty = agg.frame(groups.dataset.schema.empty_table().select(groups.columns(columns)))
        return agg.compute(empty, spec), agg.split(empty, spec).late.select("event_id", "window_start")
    merged = fold([*([merged] if merged is not None else []), *pending])
    return agg.finalize(merged, spec), pl.concat(late)


def _parity(
    report: Report,
    lake: str,
    spec: AggregateSpec,
    storage: dict[str, str] | None,
    cutoff: datetime | None = None,
    group_rows: int = GROUP_ROWS,
) -> None:
    """The aggregate equals a recompute of its raw history, for the windows that history still
    holds: after retention deleted raw rows before `cutoff`, older windows (which the aggregate
    keeps) are left out of the comparison, and the detail says how many."""

    name = f"aggregates/{spec.name}: equals a recompute from raw"
    table = try_open(aggregate_uri(lake, spec.name), storage)
    current = try_open(raw_uri(lake, spec.source), storage)
    assert current is not None
    if table is None:
        report.check(
            name,
            False,
            "table missing",
            [
                f"aggregates/{spec.name} does not exist: `tidegate ingest` builds it, `tidegate replay {spec.name}` rebuilds it"
            ],
        )
        return
    version = table.transaction_version(app_id(spec))
    behind = current.version() - (version if version is not None else -1)
    groups = None
    unreadable = None
    if version is not None:
        # the same rows at the newest version that holds them: a vacuum after compaction deleted
        # the files `version` listed, not its rows
        uri = raw_uri(lake, spec.source)
        same = readable_version(uri, version, storage)
        gone = missing_files(uri, same, storage)
        if gone:
            unreadable = vacuumed(gone)
        else:
            try:
                raw_at = try_open(uri, storage, version=same)
                groups = FileGroups.of(raw_at, group_rows) if raw_at is not None else None
                if groups is not None:
                    expected, expected_late = recompute(groups, spec)
            except (OSError, DeltaError) as exc:
                groups, unreadable = None, f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
    if groups is None:
        problem = (
            unreadable_problem(spec.name, version, unreadable)
            if unreadable
            else f"{spec.name}: table has no raw version marker"
        )
        report.check(name, False, f"raw version {version}", [problem])
        return
    got = pl.from_arrow(table.to_pyarrow_table(columns=agg.value_columns(spec)))
    assert isinstance(got, pl.DataFrame)
    kept_older = 0
    if cutoff is not None:
        kept_older = got.filter(pl.col("window_start") < cutoff).height
        got = got.filter(pl.col("window_start") >= cutoff)
        if not expected.is_empty() and "window_start" in expected.columns:
            expected = expected.filter(pl.col("window_start") >= cutoff)
    problems = window_diff(expected, got, spec)
    report.check(
        name,
        not problems,
        f"{got.height:,} windows, raw version {version}"
        + (f" ({behind} raw version(s) not projected yet: the next ingest catches up)" if behind > 0 else "")
        + (
            f"; {kept_older:,} windows before the retention cutoff {cutoff:%Y-%m-%d} kept, not compared"
            if kept_older and cutoff is not None
            else ""
        ),
        problems[:50],
    )
    ledger_table = try_open(late_uri(lake), storage)
    ledger = (
        pl.from_arrow(ledger_table.to_pyarrow_table(columns=["aggregate", "event_id", "window_start"]))
        if ledger_table is not None
        else pl.DataFrame(
            schema={"aggregate": pl.String, "event_id": pl.String, "window_start": pl.Datetime("us", "UTC")}
        )
    )
    assert isinstance(ledger, pl.DataFrame)
    ledger = ledger.filter(pl.col("aggregate") == spec.name).select("event_id", "window_start")
    if cutoff is not None:  # late pairs of expired raw rows stay in the ledger, as the windows do
        ledger = ledger.filter(pl.col("window_start") >= cutoff)
        expected_late = expected_late.filter(pl.col("window_start") >= cutoff)
    missing = expected_late.join(ledger, on=["event_id", "window_start"], how="anti")
    extra = (
        ledger.join(expected_late, on=["event_id", "window_start"], how="anti")
        if behind <= 0
        else ledger.head(0)
    )
    report.check(
        f"aggregates/_late: {spec.name} late pairs match raw history",
        missing.height == 0 and extra.height == 0,
        f"{expected_late.height:,} late (event, window) pairs",
        [f"{spec.name}: late pair {r} missing from the ledger" for r in missing.head(20).to_dicts()]
        + [
            f"{spec.name}: ledger holds {r}, which raw history does not make late"
            for r in extra.head(20).to_dicts()
        ],
    )


def _late_vs_manifest(
    report: Report,
    lake: str,
    manifest: Path,
    aggregates: Sequence[AggregateSpec],
    storage: dict[str, str] | None,
) -> None:
    rows = read_manifest(manifest)
    sent_late = {(r["type"], r["ce_id"]) for r in rows if r["kind"] == "late"}
    table = try_open(late_uri(lake), storage)
    ledger = (
        pl.from_arrow(table.to_pyarrow_table(columns=["aggregate", "event_type", "event_id"])).unique()
        if table is not None
        else pl.DataFrame(schema={"aggregate": pl.String, "event_type": pl.String, "event_id": pl.String})
    )
    assert isinstance(ledger, pl.DataFrame)
    in_ledger = {(r["aggregate"], r["event_id"]) for r in ledger.to_dicts()}
    no_watermark: set[tuple[str, str]] = set()
    anonymous: dict[str, set[str]] = {}  # per session aggregate: events without a session key
    for t in {t for t, _ in sent_late}:
        raw = try_open(raw_uri(lake, t), storage)
        if raw is None:
            continue
        keys = sorted({k for s in aggregates if s.source == t and s.window.type == "session" for k in s.keys})
        df = pl.from_arrow(raw.to_pyarrow_table(columns=["event_id", "seen_max_event_time", *keys]))
        assert isinstance(df, pl.DataFrame)
        no_watermark |= {
            (t, e) for e in df.filter(pl.col("seen_max_event_time").is_null()).get_column("event_id")
        }
        for s in aggregates:
            if s.source == t and s.window.type == "session" and s.keys:
                nulls = df.filter(pl.any_horizontal([pl.col(k).is_null() for k in s.keys]))
                anonymous[s.name] = set(nulls.get_column("event_id"))
    problems = []
    for spec in aggregates:
        for t, eid in sorted(sent_late):
            if (
                t == spec.source
                and (spec.name, eid) not in in_ledger
                and (t, eid) not in no_watermark
                and eid not in anonymous.get(spec.name, set())  # never sessionized: not late either
            ):
                problems.append(f"{spec.name}: event {eid} was sent late but is not in the late ledger")
    on_time = {
        (r["type"], r["ce_id"]) for r in rows if r["expect"] == "raw"
    } - sent_late  # duplicates of late ones are late
    for r in ledger.to_dicts():
        if (r["event_type"], r["event_id"]) in on_time:
            problems.append(
                f"{r['aggregate']}: event {r['event_id']} was not sent late but is in the late ledger"
            )
    sent = {(r["type"], r["ce_id"]) for r in rows}
    covered = ledger.filter(
        pl.struct("event_type", "event_id").is_in([{"event_type": t, "event_id": e} for t, e in sent])
    )
    detail = (
        f"{len(sent_late):,} events of this manifest sent late; the late ledger holds "
        f"{covered.select('event_type', 'event_id').unique().height:,} of its events "
        f"({ledger.height - covered.height:,} (aggregate, event) entries are for events it does not cover)"
    )
    if not sent_late:
        detail += "; nothing was sent late, so only that no on-time event is in the ledger was checked"
    report.check(
        "manifest: events sent late are in the late ledger, and no on-time event is",
        not problems,
        detail,
        problems,
    )


__all__ = ["Report", "verify", "window_diff"]
