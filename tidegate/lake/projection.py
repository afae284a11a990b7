"""Aggregates as a projection of the raw history (local mode), healed from Delta app transactions.

After each raw commit, `Projector.project_all()` brings every aggregate table up to the raw
table's current version:

1. the aggregate table's Delta app transaction `tidegate.raw/<type>` says which raw version it
   already incorporates (absent: none); the raw files added since then are the new rows;
2. the new rows' (event, window) pairs are split into on-time and late by the watermark
   recorded on each row (`tidegate.lake.aggregates`); late pairs go to the late ledger
   (`<lake>/aggregates/_late`, insert-only on aggregate + event id + window: idempotent);
3. the windows the on-time pairs touch are recomputed **from the raw table** (all rows, not
   just the new ones) with the same combine logic, and written in one MERGE that also records
   the new raw version as the app transaction. Fixed and sliding windows are upserted by
   (window_start, keys); sessions of the touched keys that overlap new events are replaced by
   the recomputed (possibly merged) sessions.

A crash anywhere in here (SIGKILL between the raw commit and the aggregate commit included)
heals itself: the next projection starts from the recorded raw version and recomputes the
same windows; rewriting a window with the values it already has changes nothing (revision
unchanged). The app transaction is written in the same commit as the rows, so the two never
disagree. One projector per lake at a time (the ingest lake lock); replays take the same lock.

Compaction (`tidegate maintain`) rewrites raw files: the next projection sees them as new
and recomputes the windows they cover, with the same result (slower once, never wrong).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable

from tidegate.catalog import AggregateSpec, Catalog
from tidegate.faults import fault_point
from tidegate.lake import aggregates as agg
from tidegate.lake.aggregate_writes import aggregate_commit_meta, aggregate_rows, app_id, write_late
from tidegate.lake.changes import raw_changes
from tidegate.lake.delta import OpenTables, data_files, try_open
from tidegate.lake.tables import aggregate_uri, raw_schema, raw_uri
from tidegate.lake.views import ViewMaintainer, ViewUpdate
from tidegate.lake.writer import replace_windows

log = logging.getLogger(__name__)

TS = pa.timestamp("us", tz="UTC")


@dataclass
class ProjectionResult:
    aggregate: str
    from_version: int | None
    to_version: int
    new_rows: int
    windows_written: int
    windows_deleted: int
    late: int
    seconds: float
    committed_at: float  # time.time() after the aggregate commit


def raw_dataset(table: DeltaTable) -> ds.FileSystemDataset:
    dataset = table.to_pyarrow_dataset()
    assert isinstance(dataset, ds.FileSystemDataset)
    return dataset


def _ts(value: datetime) -> pa.Scalar:
    return pa.scalar(value, type=TS)


@dataclass
class _FreshRows:
    """A source's new raw rows in one round, per raw version an aggregate stands at."""

    rows: dict[int | None, pl.DataFrame] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Projector:
    """Keeps a lake's aggregate tables equal to a recompute of its raw history."""

    def __init__(
        self,
        catalog: Catalog,
        registry: Any,  # expectations.contracts.ContractRegistry
        lake: str,
        *,
        run_id: str,
        code_version: str,
        git_sha: str,
        storage: dict[str, str] | None = None,
    ) -> None:

        self.catalog = catalog
        self.lake = lake
        self.run_id = run_id
        self.code_version = code_version
        self.git_sha = git_sha
        self.storage = storage
        self.schemas = {
            spec.name: agg.output_schema(spec, raw_schema(registry.types[spec.source]))
            for spec in catalog.aggregates
        }
        # raw tables kept open across rounds (each aggregate table is opened once a round: a
        # replay may have made it anew in between); forgotten when a round fails
        self.tables = OpenTables(storage)
        self._files: dict[tuple[str, int], frozenset[str]] = {}  # (source, version) -> data files
        self._views: ViewMaintainer | None = None
        self.view_updates: list[ViewUpdate] = []
        self._source_columns: dict[str, list[str]] = {}
        for spec in catalog.aggregates:
            cols = self._source_columns.setdefault(spec.source, [])
            cols += [
                c for c in agg.read_columns(spec, raw_schema(registry.types[spec.source])) if c not in cols
            ]

    def project_all(self, sources: set[str] | None = None, views: bool = True) -> list[ProjectionResult]:
        """Bring every aggregate (of the given source types) up to its raw table's version, then
        (unless `views` is False) every current-state view (`update_views`).

        Per source, the raw table is opened once and the new rows are read once for all the
        aggregates over it (grouped by the raw version each incorporates)."""
        try:
            return self._project_all(sources, views)
        except BaseException:
            self.tables.forget()  # whatever failed, the next round opens every table afresh
            raise

    def _project_all(self, sources: set[str] | None, views: bool) -> list[ProjectionResult]:
        out = []
        by_source: dict[str, list[AggregateSpec]] = {}
        for spec in self.catalog.aggregates:
            if sources is None or spec.source in sources:
                by_source.setdefault(spec.source, []).append(spec)
        jobs: list[tuple[AggregateSpec, DeltaTable, int, frozenset[str], _FreshRows]] = []
        targets: dict[str, int] = {}
        for source, specs in by_source.items():
            raw = self.tables.get(raw_uri(self.lake, source))
            if raw is None:
                continue
            target = raw.version()
            files = frozenset(data_files(raw))
            self._files[(source, target)] = files
            targets[source] = target
            fresh = _FreshRows()
            jobs += [(spec, raw, target, files, fresh) for spec in specs]
        # Each aggregate is its own table and commit: they run side by side (polars and delta-rs
        # release the GIL), the raw reads of one source once, under that source's lock.
        if len(jobs) > 1:
            with ThreadPoolExecutor(len(jobs), thread_name_prefix="project") as pool:
                results = list(pool.map(lambda job: self._project(*job), jobs))
        else:
            results = [self._project(*job) for job in jobs]
        out = [r for r in results if r is not None]
        for source, target in targets.items():
            # every aggregate over this source now stands at `target`: older file sets are dead
            for key in [k for k in self._files if k[0] == source and k[1] < target]:
                del self._files[key]
        if views:
            self.update_views()
        return out

    def update_views(self) -> list[ViewUpdate]:
        """Bring every current-state view up to the raw commits, key by key. Its own step: under
        load the background projector runs it less often than the aggregates (a view commit
        rewrites the files holding its keys, so one update of many keys costs little more than
        one of a few)."""
        if not self.catalog.views:
            return []
        if self._views is None:  # kept across rounds: it remembers the raw file sets
            self._views = ViewMaintainer(self.catalog, self.lake, run_id=self.run_id, storage=self.storage)
        self.view_updates = self._views.update()
        return self.view_updates

    def _new_rows(
        self,
        spec: AggregateSpec,
        raw: DeltaTable,
        done: int,
        files: frozenset[str],
        compacted_since: datetime | None = None,
    ) -> pl.DataFrame:
        """Rows of the raw files added after version `done` (file sets are remembered per run,
        so only the first round after a restart loads the old snapshot). After a compaction the
        new files hold old rows too: only rows ingested after `compacted_since` count."""
        before = self._files.get((spec.source, done))
        if before is None:
            old = try_open(raw_uri(self.lake, spec.source), self.storage, version=done)
            assert old is not None
            before = frozenset(data_files(old))
        fresh = sorted(files - before)
        arrow_schema = pa.schema(raw.schema().to_arrow())
        names = set(arrow_schema.names)
        wanted = [c for c in self._source_columns[spec.source] if c in names]
        if not fresh:
            return agg.frame(arrow_schema.empty_table().select(wanted))
        read = wanted if compacted_since is None else list(dict.fromkeys([*wanted, "ingest_time"]))
        schema = pl.from_arrow(arrow_schema.empty_table().select(read)).schema  # type: ignore[union-attr]
        scan = pl.scan_parquet(
            fresh,
            schema=schema,
            missing_columns="insert",
            extra_columns="ignore",
            storage_options=self.storage,
        )
        if compacted_since is not None:
            scan = scan.filter(pl.col("ingest_time") > compacted_since).select(wanted)
        return agg.frame(scan.collect().to_arrow())

    def _project(
        self,
        spec: AggregateSpec,
        raw: DeltaTable,
        target: int,
        files: frozenset[str],
        shared: _FreshRows,
    ) -> ProjectionResult | None:
        t0 = time.perf_counter()
        table = try_open(aggregate_uri(self.lake, spec.name), self.storage)
        done = None if table is None else table.transaction_version(app_id(spec))
        if done is not None and done >= target:
            return None
        with shared.lock:  # one reader of the source's raw table at a time, each read once
            changes = None if done is None else raw_changes(raw, done, target)
            rebuild = changes is None or not changes.only_appends
            key = None if rebuild else done
            if key not in shared.rows:
                if rebuild:
                    # first projection, or raw files were rewritten (compaction): all of raw history
                    dataset = raw_dataset(raw)
                    names = set(dataset.schema.names)
                    columns = [c for c in self._source_columns[spec.source] if c in names]
                    shared.rows[key] = agg.frame(dataset.to_table(columns=columns))
                else:
                    assert done is not None
                    assert changes is not None
                    shared.rows[key] = self._new_rows(spec, raw, done, files, changes.compacted_since)
            fresh = shared.rows[key]
        parts = agg.split(fresh, spec)
        late = self._write_late(spec, parts.late, target)
        if rebuild:
            upserts, deletes = self._rebuild(spec, table, parts.on_time)
        elif spec.window.type == "session":
            upserts, deletes = self._sessions(spec, table, parts.on_time)
        else:
            upserts, deletes = self._windows(spec, table, parts.on_time)
        fault_point("before_aggregates_commit")
        result = self._commit(spec, upserts, deletes, target, table)
        return ProjectionResult(
            aggregate=spec.name,
            from_version=done,
            to_version=target,
            new_rows=fresh.height,
            windows_written=result.inserted,
            windows_deleted=deletes.height,
            late=late,
            seconds=time.perf_counter() - t0,
            committed_at=time.time(),
        )

    # -- what to rewrite -------------------------------------------------------------------

    def _stored(self, spec: AggregateSpec, table: DeltaTable | None, filt: pl.Expr) -> pl.DataFrame:
        """Stored aggregate rows matching `filt`, with every column partials need."""
        cols = [*agg.WINDOW, *spec.keys, *dict.fromkeys(agg.state_columns(spec).values())]
        if table is None:
            return pl.DataFrame()
        files = data_files(table)  # aggregate tables are unpartitioned: every column is in the files
        if not files:
            return pl.DataFrame()
        return pl.scan_parquet(files, storage_options=self.storage).filter(filt).select(cols).collect()

    def _rebuild(
        self, spec: AggregateSpec, table: DeltaTable | None, on_time: pl.DataFrame
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Every window from all of raw history; stored windows that no longer exist go."""
        upserts = agg.finalize(agg.merge(agg.partials(on_time, spec), spec), spec)
        stored = self._stored(spec, table, pl.lit(True))
        if stored.is_empty():
            return upserts, pl.DataFrame()
        deletes = stored.select(["window_start", *spec.keys]).join(
            upserts.select(["window_start", *spec.keys]),
            on=["window_start", *spec.keys],
            how="anti",
            nulls_equal=True,
        )
        return upserts, deletes

    def _windows(
        self, spec: AggregateSpec, table: DeltaTable | None, on_time: pl.DataFrame
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Fixed / sliding: the new pairs' partials merged with the stored rows of the same windows."""
        new = agg.partials(on_time, spec)
        if new.is_empty():
            return agg.finalize(new, spec), pl.DataFrame()
        starts = new.get_column("window_start").unique()
        stored = self._stored(spec, table, pl.col("window_start").is_in(starts.implode()))
        if not stored.is_empty():
            stored = stored.join(
                new.select([*agg.WINDOW, *spec.keys]).unique(),
                on=[*agg.WINDOW, *spec.keys],
                how="semi",
                nulls_equal=True,
            )
            new = pl.concat([agg.stored_partials(stored, spec), new], how="vertical_relaxed")
        return agg.finalize(agg.merge(new, spec), spec), pl.DataFrame()

    def _sessions(
        self, spec: AggregateSpec, table: DeltaTable | None, on_time: pl.DataFrame
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Sessions: new events' proto-windows merged with the stored sessions of their keys that
        they overlap (stored sessions are maximal and disjoint, so no others can join); the
        stored sessions absorbed into a merged one are deleted."""
        keys = spec.keys
        new = agg.partials(on_time, spec)
        if new.is_empty():
            return agg.finalize(new, spec), pl.DataFrame()
        lo, hi = new.get_column("window_start").min(), new.get_column("window_end").max()
        stored = self._stored(spec, table, (pl.col("window_end") > lo) & (pl.col("window_start") < hi))
        if stored.is_empty():
            return agg.finalize(new, spec), pl.DataFrame()
        candidates = agg.stored_partials(stored, spec)
        overlap = candidates.join(
            new.select([*keys, *agg.WINDOW]), on=keys, how="inner", suffix="_new", nulls_equal=True
        ).filter(
            (pl.col("window_start") < pl.col("window_end_new"))
            & (pl.col("window_start_new") < pl.col("window_end"))
        )
        touched = overlap.select([*keys, *agg.WINDOW]).unique()
        absorbed = candidates.join(touched, on=[*keys, *agg.WINDOW], how="semi", nulls_equal=True)
        upserts = agg.finalize(agg.merge(pl.concat([absorbed, new], how="vertical_relaxed"), spec), spec)
        deletes = absorbed.select(["window_start", *keys]).join(
            upserts.select(["window_start", *keys]), on=["window_start", *keys], how="anti", nulls_equal=True
        )
        return upserts, deletes

    # -- writing ---------------------------------------------------------------------------

    def _commit(
        self,
        spec: AggregateSpec,
        upserts: pl.DataFrame,
        deletes: pl.DataFrame,
        raw_version: int,
        table: DeltaTable | None = None,
    ) -> Any:

        schema = self.schemas[spec.name]
        key_cols = ["window_start", *spec.keys]
        del_table = (
            pa.Table.from_arrays(
                [deletes.to_arrow().column(k).cast(schema.field(k).type) for k in key_cols], names=key_cols
            )
            if deletes.height
            else pa.table({k: pa.array([], schema.field(k).type) for k in key_cols})
        )
        meta = aggregate_commit_meta(
            spec,
            run_id=self.run_id,
            code_version=self.code_version,
            git_sha=self.git_sha,
            written_by="projection",
            source=raw_uri(self.lake, spec.source),
            raw_version=raw_version,
        )
        return replace_windows(
            aggregate_uri(self.lake, spec.name),
            aggregate_rows(self.schemas[spec.name], upserts, raw_version, self.run_id, "projection"),
            del_table,
            keys=key_cols,
            values=["window_end", *agg.metric_columns(spec), *agg.extra_state(spec)],
            app_id=app_id(spec),
            app_version=raw_version,
            metadata=meta,
            storage_options=self.storage,
            table=table,
        )

    def _write_late(self, spec: AggregateSpec, late: pl.DataFrame, raw_version: int) -> int:
        if late.is_empty():
            return 0
        return write_late(
            self.lake, spec, agg.late_pairs_of(late, spec), raw_version, self.run_id, self.storage
        )
