"""Keeping tables cheap to write and read while they grow: compaction and vacuum.

    compact_small_files(".tidegate/lake/raw/shop.order.placed", min_files=16)
    maintain(LakeTables(".tidegate/lake", catalog), retain_hours=168)   # `tidegate maintain`

Every micro-batch adds one file per table (per partition it touches). A MERGE reads every file
of the partitions it touches (~1-1.5 ms each) and every open replays the log, so an
uncompacted table gets slower batch by batch (measured: a raw MERGE went from 70 ms to 400-670
ms over 80 batches). `ingest --follow` therefore compacts, on its own thread, every partition
holding at least `min_files` small files. Compaction never changes rows (OPTIMIZE commits add
and remove files with dataChange=false); the aggregate projection knows (lake.projection,
`raw_changes`). Removed files stay on disk for time travel until `tidegate maintain` vacuums.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import TableNotFoundError

from tidegate.lake.delta import LOG_RETENTION, retention_properties, try_open
from tidegate.lake.tables import LakeTables

log = logging.getLogger(__name__)

# Files at least this big are left alone: compaction bins small files up to this size and never
# rewrites a file that reached it, so a busy partition costs one rewrite of ~4 MB per ~4 MB of
# new data (not a rewrite of the whole partition every round) and holds one file per ~4 MB.
SMALL_FILE_BYTES = 4 * 1024 * 1024


def compact_small_files(uri: str, min_files: int = 16, storage_options: dict[str, str] | None = None) -> int:
    """Compact each partition (or the whole unpartitioned table) that holds `min_files` or more
    small files. Returns how many files were compacted away. A commit conflict with a concurrent
    writer is not an error: that partition is compacted next time."""
    try:
        table = DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError:
        return 0
    partitions = table.metadata().partition_columns
    actions = pa.table(table.get_add_actions(flatten=True)).to_pydict()  # an arro3 table
    small = [i for i, size in enumerate(actions["size_bytes"]) if size < SMALL_FILE_BYTES]
    keys: Counter[tuple[Any, ...]] = Counter(
        tuple(actions[f"partition.{c}"][i] for c in partitions) for i in small
    )
    removed = 0
    props = CommitProperties(custom_metadata={"tidegate_operation": "compact"})
    for key, count in keys.items():
        if count < min_files:
            continue
        filters = [(c, "=", str(v)) for c, v in zip(partitions, key, strict=True)] or None
        try:
            metrics = table.optimize.compact(
                partition_filters=filters, target_size=SMALL_FILE_BYTES, commit_properties=props
            )
        except Exception as exc:  # noqa: BLE001 - a lost race with a writer: next round
            log.info("compacting %s %s deferred: %s", uri, key, str(exc).splitlines()[0][:200])
            continue
        removed += int(metrics.get("numFilesRemoved", 0))
    return removed


def set_log_retention(
    uri: str, retention: str = LOG_RETENTION, storage_options: dict[str, str] | None = None
) -> None:
    """Record `retention` as the table's `delta.logRetentionDuration` (a metadata commit: run it
    when no local writer can race it, e.g. under the lake lock, or before a --follow run's loop;
    a writer that loses that race gets "Metadata changed since last commit")."""
    table = try_open(uri, storage_options)
    if table is None:
        return
    wanted = retention_properties(retention)
    current = table.metadata().configuration
    if any(current.get(k) != v for k, v in wanted.items()):
        table.alter.set_table_properties(wanted, raise_if_not_exists=False)


def clean_log(uri: str, storage_options: dict[str, str] | None = None, archive: Any = None) -> None:
    """Checkpoint the table and delete its log files older than its log retention (never the
    data: vacuum decides that; never a metadata change, so it is safe beside writers). Time
    travel to versions before then ends. `archive` (a tidegate.lake.lineage.CommitArchive of
    the table's lake) first copies the commits' lineage into `_commits`: a lake's writers
    always pass one; the bench, whose table has no lake, does not."""
    table = try_open(uri, storage_options)
    if table is None:
        return
    if archive is not None:
        archive.archive(uri)
    table.create_checkpoint()
    table.cleanup_metadata()


# Aggregates and views are rewritten in place by every projection round (the files holding the
# touched windows or keys), and a vacuum keeps what a rewrite removed for `maintain`'s
# --retain-hours (168 h by default). Measured, a 10-minute soak at 1.5k events/s: 435 MiB of
# removed view files beside 125 MiB per raw table; at 168 h that is tens of GB a day, while
# `maintain` needs the ingest stopped. These tables are reproducible from raw history
# (`tidegate replay`) and their time travel reaches back only as far as the log (10 minutes),
# so an ingest run vacuums their removed files after this long itself.
DERIVED_RETAIN_HOURS = 1


def vacuum_removed(uri: str, retain_hours: int, storage_options: dict[str, str] | None = None) -> int:
    """Delete the files that commits removed from the table more than `retain_hours` ago (the
    tombstones in its log: never a live file, never an unreferenced one). Returns how many."""
    table = try_open(uri, storage_options)
    if table is None:
        return 0
    deleted = table.vacuum(
        retention_hours=retain_hours,
        enforce_retention_duration=False,
        dry_run=False,
        commit_properties=CommitProperties(custom_metadata={"tidegate_operation": "vacuum"}),
    )
    return len(deleted)


def maintain(
    tables: LakeTables, retain_hours: int, storage_options: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Compact every existing table of the lake into large files and vacuum files older than
    the retention (rows never change). One report row per table, by name."""
    from tidegate.lake.lineage import CommitArchive

    report = []
    props = CommitProperties(custom_metadata={"tidegate_operation": "maintain"})
    archive = CommitArchive(tables.root, storage_options)
    for spec in tables.specs():
        uri = spec.uri(tables.root)
        table = try_open(uri, storage_options)
        if table is None:
            continue
        before = len(table.file_uris())
        set_log_retention(uri, LOG_RETENTION, storage_options)  # callers hold the lake lock
        table = try_open(uri, storage_options) or table
        metrics = table.optimize.compact(commit_properties=props)
        vacuumed = table.vacuum(
            retention_hours=retain_hours,
            enforce_retention_duration=False,
            dry_run=False,
            commit_properties=props,
            # also files no commit references (a committer round's files that were never
            # committed; removed files whose tombstones have left the checkpoints), by age; not
            # at 0 h, where it would delete the files a streaming worker is staging right now
            full=retain_hours >= 1,
        )
        clean_log(uri, storage_options, archive)
        report.append(
            {
                "table": spec.name,
                "files_before": before,
                "files_after": len(DeltaTable(uri, storage_options=storage_options).file_uris()),
                "compacted_from": metrics.get("numFilesRemoved", 0),
                "compacted_into": metrics.get("numFilesAdded", 0),
                "vacuumed": len(vacuumed),
            }
        )
    return report
