"""Opening and scanning Delta tables: the one home for it.

- `open_table(uri)`: the table, or a TidegateError that says to ingest first (readers, lineage);
- `try_open(uri)`: the table, or None when there is none yet (writers, the projector, verify);
- `data_files(table)`: its data files as locations polars can open;
- `scan_table(table)`: the table (at the version it is loaded at) as a polars LazyFrame.

Files are read with polars' parquet scanner on the table's data files, not `scan_delta`, which
cannot open the percent-encoded local paths delta-rs reports for directories with spaces; files
written under older contract versions read as the table's current schema.
"""

from __future__ import annotations

from urllib.parse import unquote

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from tidegate.errors import TidegateError

Storage = dict[str, str] | None


def try_open(uri: str, storage_options: Storage = None, version: int | None = None) -> DeltaTable | None:
    """The Delta table at `uri` (at `version`, default the latest), or None if there is none."""
    try:
        return DeltaTable(uri, version=version, storage_options=storage_options)
    except TableNotFoundError:
        return None


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


def scan_table(table: DeltaTable, storage_options: Storage = None) -> pl.LazyFrame:
    """A Delta table (at whatever version `table` is loaded) as a LazyFrame."""
    partitions = set(table.metadata().partition_columns)
    full = pa.schema(table.schema().to_arrow())
    schema = pl.from_arrow(pa.schema([f for f in full if f.name not in partitions]).empty_table()).schema  # type: ignore[union-attr]
    hive = pl.from_arrow(pa.schema([f for f in full if f.name in partitions]).empty_table()).schema  # type: ignore[union-attr]
    files = data_files(table)
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
    )
    return frame.select(full.names)
