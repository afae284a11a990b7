"""Opening and scanning Delta tables: the one home for it.

- `open_table(uri)`: the table, or a TidegateError that says to ingest first (readers, lineage);
- `try_open(uri)`: the table, or None when there is none yet (writers, the projector, verify);
- `OpenTables`: the tables one long-lived owner (a writer, the projector, the bookkeeper) keeps
  open between rounds, brought up to date from the log entries added since instead of opened
  afresh each time;
- `data_files(table)`: its data files as locations polars can open;
- `scan_table(table)`: the table (at the version it is loaded at) as a polars LazyFrame.
- `LOG_RETENTION`, `retention_properties`, `commit_hooks`: how long a table's commit log is kept,
  and what a writer's commit does to it (a checkpoint every 100 versions, cleanup with it).

Files are read with polars' parquet scanner on the table's data files, not `scan_delta`, which
cannot open the percent-encoded local paths delta-rs reports for directories with spaces; files
written under older contract versions read as the table's current schema.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, PostCommitHookProperties
from deltalake.exceptions import TableNotFoundError

from tidegate.errors import TidegateError

Storage = dict[str, str] | None

log = logging.getLogger(__name__)


OPEN_ATTEMPTS = 3


def log_cleaned_under_read(exc: BaseException) -> bool:
    """Whether `exc` is a read of a table's commit log that a log cleanup beside it (`clean_log`,
    or a writer's cleanup after a checkpoint) outran: the table is fine, read it again."""
    return isinstance(exc, OSError) and "_delta_log" in str(exc)


def try_open(uri: str, storage_options: Storage = None, version: int | None = None) -> DeltaTable | None:
    """The Delta table at `uri` (at `version`, default the latest), or None if there is none.

    An open lists the log, then reads the files after the newest checkpoint it saw; a log
    cleanup (`clean_log`, beside every writer) that checkpoints and deletes old log files in
    between makes that read fail with "not found". The table is fine: open it again."""
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            return DeltaTable(uri, version=version, storage_options=storage_options)
        except TableNotFoundError:
            return None
        except OSError as exc:
            if attempt == OPEN_ATTEMPTS or version is not None or not log_cleaned_under_read(exc):
                raise
    return None  # not reached


REOPEN_AFTER = 100  # versions an open DeltaTable follows before it is opened afresh (OpenTables)


class OpenTables:
    """Delta tables kept open by one owner, each at its latest version when asked for.

        tables = OpenTables(storage)
        table = tables.get(uri)     # None: no table yet; else up to date with the log
        ...commit through `table`...
        tables.forget(uri)          # after a failure whose outcome is unknown: open afresh next time

    Why: an open replays the log from the last checkpoint: ~20-30 ms of delta-rs CPU for a table
    ~60 commits past it (2-core bench machine, deltalake 1.6.6), where bringing an open table up
    to date reads only the entries added since (~4 ms when there are none). A `--follow` batch
    at 2k events/s opened 12.9 tables (604 opens in 47 batches: each aggregate twice, the raw
    sources of the projector and of the view, the ledger, `_metrics`); with the raw writers',
    the projector's and the view's sources and the bookkeeper's tables kept open, 6.6 (269 in
    41), and delta-rs's threads used 7.1-7.8 s of CPU in a 30 s run instead of 8.6 s.
    Aggregate and view tables are still opened once a round: `tidegate replay` may make one
    anew, and a DeltaTable brought up to date across that would mix two tables' logs.

    Every `reopen_after` versions a table is opened afresh: an open DeltaTable keeps each
    incremental log segment it read (~27 KB a commit, measured with deltalake 1.6), which grew a
    10-minute `--follow` run by ~80 MiB; a fresh open reads the checkpoint delta-rs writes every
    100 versions. A table whose update fails is opened afresh. An open table reads its log
    lazily: if `clean_log` deletes log files under it, a later read fails; its owner then
    `forget`s it (the projector every table of a failed round, which the next round redoes;
    `writer.append` retries once, the failure came before anything was written). Not
    thread-safe for one table: a uri belongs to one thread at a time (several threads may use
    distinct uris)."""

    def __init__(self, storage: Storage = None, reopen_after: int | None = None) -> None:
        self.storage = storage
        self.reopen_after = reopen_after or REOPEN_AFTER
        self._open: dict[str, tuple[DeltaTable, int]] = {}  # uri -> (table, version opened at)

    def get(self, uri: str) -> DeltaTable | None:
        held = self._open.pop(uri, None)
        if held is not None:
            table, opened_at = held
            try:
                table.update_incremental()
                if table.version() - opened_at < self.reopen_after:
                    self._open[uri] = held
                    return table
            except Exception:  # gone, replaced, its log cleaned past it: open it afresh
                log.info("reopening %s", uri, exc_info=True)
        fresh = try_open(uri, self.storage)
        if fresh is not None:
            self._open[uri] = (fresh, fresh.version())
        return fresh

    def opened_at(self, uri: str) -> int | None:
        """The version `uri`'s open table was opened at (None: not open)."""
        held = self._open.get(uri)
        return None if held is None else held[1]

    def adopt(self, uri: str, table: DeltaTable) -> None:
        """Keep `table` (just created by its owner) open."""
        self._open[uri] = (table, table.version())

    def forget(self, uri: str | None = None) -> None:
        """Open `uri` (every table, if None) afresh next time."""
        if uri is None:
            self._open.clear()
        else:
            self._open.pop(uri, None)


def open_table(uri: str, storage_options: Storage = None, version: int | None = None) -> DeltaTable:
    """The Delta table at `uri`; a missing table is an operator's error, with what to do."""
    table = try_open(uri, storage_options, version)
    if table is None:
        raise TidegateError(f"no Delta table at {uri}", hint="run `tidegate ingest` first")
    return table


def data_files(table: DeltaTable) -> list[str]:
    """A Delta table's data files as locations polars can open. delta-rs percent-encodes local
    paths (`lake%20x/...`): those are decoded; URIs (gs://...) stay URLs, which the object
    store decodes itself. (polars' own scan_delta trips on the encoded local paths.)"""
    return [unquote(u) if u.startswith("/") else u for u in table.file_uris()]


def scan_table(
    table: DeltaTable,
    storage_options: Storage = None,
    files: list[str] | None = None,
    file_column: str | None = None,
) -> pl.LazyFrame:
    """A Delta table (at whatever version `table` is loaded) as a LazyFrame. `files`: only
    these of its data files (as `data_files` names them); `file_column`: add a column of that
    name holding each row's data file."""
    partitions = set(table.metadata().partition_columns)
    full = pa.schema(table.schema().to_arrow())
    schema = pl.from_arrow(pa.schema([f for f in full if f.name not in partitions]).empty_table()).schema  # type: ignore[union-attr]
    hive = pl.from_arrow(pa.schema([f for f in full if f.name in partitions]).empty_table()).schema  # type: ignore[union-attr]
    names = list(full.names)
    if file_column is not None:
        full = full.append(pa.field(file_column, pa.string()))
    files = data_files(table) if files is None else files
    if not files:
        return pl.from_arrow(full.empty_table()).lazy()  # type: ignore[union-attr]
    frame = pl.scan_parquet(
        files,
        schema=schema,
        missing_columns="insert",
        extra_columns="ignore",
        hive_partitioning=bool(partitions),
        hive_schema=hive if partitions else None,
        storage_options=storage_options,
        include_file_paths=file_column,
    )
    return frame.select([*names, *([file_column] if file_column else [])])


# How long a table keeps its commit log: time travel by version or timestamp reaches back this
# far (plus to the last checkpoint). Every commit adds a log file, and on a local disk every
# open, update and commit lists the whole log directory (object_store's local list has no
# offset: ~3 listings and a stat per log file per commit, measured with strace on deltalake
# 1.6.6). A --follow run commits every ~2 s: 1 h of log is ~1,800 files and made each commit
# 2.5-2.9x slower than on a fresh table, 10 minutes keeps it within 1.5x (`tidegate bench
# commits`, docs/architecture.md). Commit lineage outlives the window: the log's commit infos
# are archived in `_commits` before they go (tidegate.lake.lineage.CommitArchive). Removed data
# files stay for `maintain --retain-hours` (168 h), so a reader that opened a version keeps it.
LOG_RETENTION = "10m"


CHECKPOINT_INTERVAL = 100  # delta-rs's `delta.checkpointInterval` default: a checkpoint every 100 versions


def commit_hooks(table: DeltaTable | None) -> PostCommitHookProperties:
    """What a tidegate writer's commit does after it lands: a checkpoint every
    CHECKPOINT_INTERVAL versions (delta-rs's own rule), and the deletion of log files past the
    log retention only right after that checkpoint. delta-rs otherwise looks for expired log files on
    every commit, one more listing of the whole `_delta_log` (object_store lists a local
    directory with no offset): ~2-4 ms of a ~15 ms append with 300 log files (deltalake 1.6.6,
    `tidegate bench commits`). Between checkpoints, `clean_log` (the compactor every 2
    minutes, the streaming job's maintenance tick, `maintain`) archives lineage, then cleans."""
    landing = 0 if table is None else table.version() + 1
    # delta-rs checkpoints versions 99, 199...; a cleanup deletes only up to the newest
    # checkpoint already there, so the commit after one (100, 200...) is the one to clean
    return PostCommitHookProperties(
        create_checkpoint=True, cleanup_expired_logs=landing % CHECKPOINT_INTERVAL == 0
    )


def retention_properties(retention: str = LOG_RETENTION) -> dict[str, str]:
    """The table properties that bound what every open of a table reads: its commit log
    (`delta.logRetentionDuration`: one file per commit, listed on every open and update) and
    the tombstones of removed files its checkpoints carry (`delta.deletedFileRetentionDuration`:
    every compaction adds ~16; at the default 7 days a day of `--follow` put ~3,000 remove
    actions in every checkpoint each open reads, measured with `tidegate bench commits`).
    Both are the time-travel window (by version or timestamp). Vacuum runs in full mode (lake.maintenance.maintain), so
    a file whose tombstone has left the checkpoints is still deleted after the data retention."""
    from tidegate.catalog import parse_duration

    interval = f"interval {parse_duration(retention)} seconds"
    return {"delta.logRetentionDuration": interval, "delta.deletedFileRetentionDuration": interval}
