"""Reading the lake from a notebook: polars LazyFrames, time travel, consistent cuts, lineage.

    import polars as pl
    from tidegate.lake.read import Lake

    lake = Lake(".tidegate/demo/lake")               # or "gs://bucket/lake" (ADC credentials)
    lake.raw("shop.order.placed").filter(pl.col("currency") == "EUR").collect()
    lake.aggregate("revenue_per_currency_1m", version=3)          # time travel by version
    lake.quarantine(as_of="2026-11-26T10:00:00Z")                 # ... or by timestamp
    cut = lake.cut(run_id="run-20261126T101500Z-1a2b3c")          # every table as of one run
    cut.raw("shop.order.placed"), cut.aggregate("revenue_per_currency_1m")   # never mixed moments
    lake.window_events("revenue_per_currency_1m", "2026-11-26T10:15:00Z", currency="EUR")
    lake.event_lineage("shop.order.placed", "<ce-id>")   # message, run, code, contract, rules passed

**Consistent cut.** An aggregate is a function of one raw version (its Delta app transaction
says which). A cut pins every aggregate at a commit and the raw table of its source at exactly
the raw version that commit incorporates, so joining `cut.raw(...)` with `cut.aggregate(...)`
never mixes two moments. Quarantine, ledger and quality are pinned at the cut's time. With
`run_id`, the cut is the end of that ingest run (its last ledger row: the raw versions it left);
with `as_of`, the newest commits at or before that time.

Tables are opened and scanned by tidegate.lake.delta.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from tidegate.catalog import Catalog, load_catalog
from tidegate.errors import TidegateError
from tidegate.expectations.coercion import parse_rfc3339
from tidegate.lake import aggregates as agg
from tidegate.lake.aggregate_writes import app_id
from tidegate.lake.delta import scan_table, try_open
from tidegate.lake.lineage import row_lineage
from tidegate.lake.tables import (
    LakeTables,
)

TimeRef = datetime | str | None


def _when(value: TimeRef) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value.astimezone(UTC) if isinstance(value, datetime) else None

    return parse_rfc3339(value)


@dataclass
class Lake:
    """The lake's tables, by name; every reader takes `version=` or `as_of=` for time travel."""

    root: str
    storage_options: dict[str, str] | None = None
    catalog: Catalog = field(default_factory=load_catalog)

    # -- tables --------------------------------------------------------------------------------

    @property
    def tables(self) -> LakeTables:
        """The registry of this lake's tables (tidegate.lake.tables)."""
        return LakeTables(self.root, self.catalog)

    def uri(self, table: str) -> str:
        """'raw/<type>', 'quarantine', '_ledger', '_quality', '_metrics', 'aggregates/<name>',
        'aggregates/_late'."""
        return self.tables.uri(table)

    def table_names(self) -> list[str]:
        """Every table of this lake's catalog (those made on demand, like `_redrives`, once they exist)."""
        return [
            s.name
            for s in self.tables.specs()
            if not s.on_demand or try_open(s.uri(self.root), self.storage_options) is not None
        ]

    def has_tables(self) -> bool:
        """Whether any table of this lake's catalog exists (a typo in --lake has none)."""
        if "://" not in self.root and not Path(self.root).is_dir():
            return False
        return any(try_open(s.uri(self.root), self.storage_options) is not None for s in self.tables.specs())

    def delta(self, table: str, *, version: int | None = None, as_of: TimeRef = None) -> DeltaTable:
        uri = self.uri(table)
        try:
            dt = DeltaTable(uri, storage_options=self.storage_options)
        except TableNotFoundError:
            raise TidegateError(
                f"{table} does not exist yet in {self.root}", hint="run `tidegate ingest` first"
            ) from None
        when = _when(as_of)
        if version is not None:
            dt.load_as_version(version)
        elif when is not None:
            if datetime.fromtimestamp(dt.history(limit=None)[-1]["timestamp"] / 1000, UTC) > when:
                raise TidegateError(f"{table} did not exist yet at {when.isoformat()}")
            dt.load_as_version(when)
        return dt

    def scan(self, table: str, *, version: int | None = None, as_of: TimeRef = None) -> pl.LazyFrame:
        return scan_table(self.delta(table, version=version, as_of=as_of), self.storage_options)

    def raw(self, event_type: str, **travel: Any) -> pl.LazyFrame:
        return self.scan(f"raw/{event_type}", **travel)

    def aggregate(self, name: str, **travel: Any) -> pl.LazyFrame:
        return self.scan(f"aggregates/{name}", **travel)

    def view(self, name: str, **travel: Any) -> pl.LazyFrame:
        """A current-state view (tidegate.lake.views), e.g. `lake.view("order_state", version=3)`
        for its state as of an earlier version."""
        return self.scan(f"views/{name}", **travel)

    def quarantine(self, **travel: Any) -> pl.LazyFrame:
        return self.scan("quarantine", **travel)

    def ledger(self, **travel: Any) -> pl.LazyFrame:
        return self.scan("_ledger", **travel)

    def quality(self, **travel: Any) -> pl.LazyFrame:
        return self.scan("_quality", **travel)

    def late(self, **travel: Any) -> pl.LazyFrame:
        return self.scan("aggregates/_late", **travel)

    def metrics(self, **travel: Any) -> pl.LazyFrame:
        return self.scan("_metrics", **travel)

    # -- consistent cuts -----------------------------------------------------------------------

    def _exists(self, table: str) -> bool:
        try:
            DeltaTable(self.uri(table), storage_options=self.storage_options)
        except TableNotFoundError:
            return False
        return True

    def cut(self, *, run_id: str | None = None, as_of: TimeRef = None) -> Cut:
        """Every table as of the end of one ingest run, or as of one point in time."""
        if (run_id is None) == (as_of is None):
            raise TidegateError("a cut is either at the end of a run (run_id=...) or at a time (as_of=...)")
        versions: dict[str, int] = {}
        if run_id is not None:
            ledger = self.ledger().filter(pl.col("run_id") == run_id).collect()
            if ledger.is_empty():
                raise TidegateError(f"no ingest run {run_id!r} in the ledger", hint="see lake.ledger()")
            when = ledger.get_column("committed_at").max()
            assert isinstance(when, datetime)
            raw_at: dict[str, int] = {}
            for pairs in ledger.get_column("raw_versions").to_list():
                items = pairs.items() if isinstance(pairs, dict) else ((p["key"], p["value"]) for p in pairs)
                for event_type, v in items:
                    raw_at[event_type] = max(raw_at.get(event_type, -1), int(v))
        else:
            when = _when(as_of)
            assert when is not None
            raw_at = {}
            for t in self.catalog.event_types:
                if self._exists(f"raw/{t}"):
                    try:
                        raw_at[t] = self.delta(f"raw/{t}", as_of=when).version()
                    except TidegateError:
                        continue
        consistent, notes = True, []
        late_at = when  # the late ledger is read as of the newest aggregate commit pinned below
        for spec in self.catalog.aggregates:
            if spec.source not in raw_at or not self._exists(f"aggregates/{spec.name}"):
                continue
            commit = self._aggregate_commit(spec.name, raw_at[spec.source])
            if commit is None:
                notes.append(
                    f"aggregates/{spec.name}: no commit incorporates raw/{spec.source} <= v{raw_at[spec.source]}"
                )
                consistent = False
                continue
            version, incorporated, committed = commit
            late_at = max(late_at, committed)
            versions[f"aggregates/{spec.name}"] = version
            if incorporated != raw_at[spec.source]:
                notes.append(
                    f"aggregates/{spec.name} v{version} incorporates raw/{spec.source} v{incorporated}"
                )
            # raw pinned where its aggregates stand (the first one decides; a disagreement is reported)
            previous = versions.setdefault(f"raw/{spec.source}", incorporated)
            if previous != incorporated:
                consistent = False
                notes.append(
                    f"aggregates over raw/{spec.source} stand at different raw versions ({previous}, {incorporated})"
                )
        for t, v in raw_at.items():
            versions.setdefault(f"raw/{t}", v)
        for table in ("quarantine", "_ledger", "_quality", "_metrics", "aggregates/_late"):
            if self._exists(table):
                try:
                    # The projector records a batch's late pairs just before the aggregate commit
                    # that incorporates it, which may come after the run's last ledger row.
                    at = late_at if table == "aggregates/_late" else when
                    versions[table] = self.delta(table, as_of=at).version()
                except TidegateError:
                    continue
        return Cut(self, versions, when, run_id, consistent, notes)

    def _aggregate_commit(self, name: str, raw_version: int) -> tuple[int, int, datetime] | None:
        """The newest commit of an aggregate table incorporating a raw version <= raw_version:
        (its version, the raw version it incorporates, its commit time)."""
        best: tuple[int, int, datetime] | None = None
        for h in self.delta(f"aggregates/{name}").history():
            incorporated = h.get("tidegate_raw_version")
            if incorporated is None or int(incorporated) < 0:
                continue
            if int(incorporated) <= raw_version and (best is None or int(h["version"]) > best[0]):
                at = datetime.fromtimestamp(int(h["timestamp"]) / 1000, UTC)
                best = (int(h["version"]), int(incorporated), at)
        return best

    # -- lineage -------------------------------------------------------------------------------

    def window_events(self, aggregate: str, window_start: TimeRef, **keys: Any) -> pl.DataFrame:
        """The raw events counted in one window of an aggregate (late ones excluded, as the
        aggregate excludes them), from the raw version the aggregate table incorporates."""
        spec = self.catalog.aggregate(aggregate)
        start = _when(window_start)
        unknown = set(keys) - set(spec.keys)
        if unknown or set(spec.keys) - set(keys):
            raise TidegateError(f"{aggregate} is keyed by {spec.keys}; got {sorted(keys)}")
        table = self.delta(f"aggregates/{aggregate}")

        version = table.transaction_version(app_id(spec))
        raw = self.raw(spec.source, version=version) if version is not None else self.raw(spec.source)
        rows = raw.collect()
        pairs = agg.split(rows, spec).on_time
        if spec.window.type == "session":
            sessions = agg.compute(rows, spec)
            match = sessions.filter(pl.col("window_start") == start)
            for k, v in keys.items():
                match = match.filter(pl.col(k) == v)
            if match.is_empty():
                return rows.head(0)
            end = match.get_column("window_end")[0]
            picked = pairs.filter((pl.col("event_time") >= start) & (pl.col("event_time") < end))
        else:
            picked = pairs.filter(pl.col("window_start") == start)
        for k, v in keys.items():
            picked = picked.filter(pl.col(k) == v)
        return picked.drop(["window_start", "window_end", "watermark", "late"]).sort("event_time")

    def event_lineage(self, event_type: str, event_id: str) -> dict[str, Any]:
        """Where one raw event came from: its Pub/Sub message, the run and batch, the code
        version, the contract it was checked against and the GX expectations its batch ran."""

        info = row_lineage(self.uri(f"raw/{event_type}"), event_id, self.storage_options, root=self.root)
        row, commit = info["row"], info["commit"] or {}
        rules: list[dict[str, Any]] = []
        if self._exists("_quality"):
            batches = str(row.get("batch_id", "")).split(",")
            rules = (
                self.quality()
                .filter(pl.col("batch_id").is_in(batches) & (pl.col("event_type") == event_type))
                .select("expectation", "column", "success", "unexpected_count", "batch_id")
                .collect()
                .to_dicts()
            )
        return {
            "event_id": event_id,
            "event_type": event_type,
            "pubsub_message_id": row.get("pubsub_message_id"),
            "subscription": row.get("subscription"),
            "publish_time": row.get("pubsub_publish_time"),
            "run_id": row.get("run_id"),
            "batch_id": row.get("batch_id"),
            "ingest_time": row.get("ingest_time"),
            "code_version": commit.get("tidegate_version"),
            "git_sha": commit.get("tidegate_git_sha"),
            "schema_version": row.get("schema_version"),
            "contract_fingerprint": info["contract_fingerprint"],
            "gx_suite_fingerprint": commit.get("tidegate_gx_suite_fingerprint"),
            "expectations": rules,
            "commit": {k: v for k, v in commit.items() if k in ("version", "timestamp", "operation")},
            "raw_row": {k: v for k, v in row.items() if k not in ("traceparent",)},
        }


@dataclass
class Cut:
    """Every table pinned at one version (see Lake.cut); readers mirror Lake's."""

    lake: Lake
    versions: dict[str, int]
    at: datetime
    run_id: str | None
    consistent: bool
    notes: list[str]

    def scan(self, table: str) -> pl.LazyFrame:
        if table not in self.versions:
            raise TidegateError(f"{table} has no version in this cut (it did not exist yet)")
        return self.lake.scan(table, version=self.versions[table])

    def raw(self, event_type: str) -> pl.LazyFrame:
        return self.scan(f"raw/{event_type}")

    def aggregate(self, name: str) -> pl.LazyFrame:
        return self.scan(f"aggregates/{name}")

    def quarantine(self) -> pl.LazyFrame:
        return self.scan("quarantine")

    def ledger(self) -> pl.LazyFrame:
        return self.scan("_ledger")

    def quality(self) -> pl.LazyFrame:
        return self.scan("_quality")

    def late(self) -> pl.LazyFrame:
        """Late pairs of the raw versions in this cut (the ledger may hold later ones)."""
        pinned = [(t.removeprefix("raw/"), v) for t, v in self.versions.items() if t.startswith("raw/")]
        if not pinned:
            return self.scan("aggregates/_late").filter(pl.lit(False))
        keep = pl.any_horizontal(
            [(pl.col("event_type") == t) & (pl.col("raw_version") <= v) for t, v in pinned]
        )
        return self.scan("aggregates/_late").filter(keep)

    def describe(self) -> str:
        head = f"cut at {self.at.isoformat()}" + (f" (end of {self.run_id})" if self.run_id else "")
        return json.dumps(
            {"cut": head, "versions": self.versions, "consistent": self.consistent, "notes": self.notes}
        )
