"""Whole-history reads in bounded memory: a raw table, pinned at one version, read as groups of
files of about `group_rows` rows, never as one frame.

`verify` (exactly once, parity, views) and the bench use it; memory then follows the group size
and what a check keeps per group (8 bytes per key, partial aggregate rows), not the history.

- `FileGroups.of(table, group_rows)`: the pinned version's files in groups (row counts from the
  Delta log's add actions: no data read to plan);
- `groups.read(i, columns)`: one group's rows (only `columns`) as a polars frame;
- `duplicates(groups, keys)`: the keys held more than once anywhere in the table. A key of one
  (source, id) can sit in any file and any event_date partition, so no per-group check can see
  it: every row's key is hashed to 64 bits, the hashes are spilled to K bucket files on disk by
  hash, each bucket is sorted and checked alone (K grows with the table: a bucket holds at most
  `bucket_rows` hashes), and only rows whose hash repeats are read again to name the keys (a
  hash collision is told apart there, so it never reports a false duplicate);
- `readable_version(uri, version)`: the newest version holding the same rows as `version`
  (later commits only compaction, vacuum or property changes), so a check pinned to a version
  whose files `tidegate maintain --retain-hours 0` vacuumed still reads them;
- `missing_files(uri, version)`: the files of a version that a vacuum deleted (then nothing
  holds its rows, and a check says so instead of failing on a missing file).

    uv run python -c "from tidegate.lake.history import FileGroups, duplicates; \
        from deltalake import DeltaTable; \
        g = FileGroups.of(DeltaTable('.tidegate/lake/raw/shop.order.placed'), 1_000_000); \
        print(duplicates(g, ['event_source', 'event_id']))"
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from deltalake import DeltaTable

from tidegate.lake.delta import try_open

GROUP_ROWS = 1_000_000
BUCKET_ROWS = 8_000_000  # 64 MiB of hashes per bucket, sorted in place
# commits that change no row: a version after only these reads the same rows as the one before
NO_DATA_CHANGE = {"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "UPGRADE PROTOCOL"}


@dataclass
class FileGroups:
    """A table version's data files in groups of about `group_rows` rows."""

    dataset: ds.FileSystemDataset
    groups: list[list[ds.Fragment]]
    rows: int  # all rows of the version (from the log)

    @classmethod
    def of(cls, table: DeltaTable, group_rows: int = GROUP_ROWS) -> FileGroups:
        actions = pa.table(table.get_add_actions(flatten=True))
        counts = {  # data file names are unique (uuid): match fragments to log entries by name
            str(p).rsplit("/", 1)[-1]: int(n or 0)
            for p, n in zip(
                actions.column("path").to_pylist(), actions.column("num_records").to_pylist(), strict=True
            )
        }
        dataset = table.to_pyarrow_dataset()
        assert isinstance(dataset, ds.FileSystemDataset)
        groups: list[list[ds.Fragment]] = []
        current: list[ds.Fragment] = []
        rows = in_group = 0
        for fragment in sorted(dataset.get_fragments(), key=lambda f: f.path):
            n = counts.get(fragment.path.rsplit("/", 1)[-1], 0)
            current.append(fragment)
            rows += n
            in_group += n
            if in_group >= group_rows:
                groups.append(current)
                current, in_group = [], 0
        if current:
            groups.append(current)
        return cls(dataset, groups, rows)

    def __len__(self) -> int:
        return len(self.groups)

    def columns(self, wanted: Sequence[str]) -> list[str]:
        """The columns of `wanted` this version has (older versions may lack newer ones)."""
        names = set(self.dataset.schema.names)
        return [c for c in dict.fromkeys(wanted) if c in names]

    def read(self, i: int, columns: Sequence[str], filter: ds.Expression | None = None) -> pl.DataFrame:
        d = self.dataset
        subset = ds.FileSystemDataset(self.groups[i], d.schema, d.format, d.filesystem)
        out = pl.from_arrow(subset.to_table(columns=self.columns(columns), filter=filter))
        assert isinstance(out, pl.DataFrame)
        return out

    def frames(self, columns: Sequence[str]) -> Iterator[pl.DataFrame]:
        for i in range(len(self.groups)):
            yield self.read(i, columns)

    def chunks(self, i: int, columns: Sequence[str], rows: int) -> Iterator[pl.DataFrame]:
        """Group `i` as frames of at most `rows` rows, read a record batch at a time (a file
        of 500k rows need not be in memory at once for a step that multiplies its rows)."""
        d = self.dataset
        subset = ds.FileSystemDataset(self.groups[i], d.schema, d.format, d.filesystem)
        pending: list[pa.RecordBatch] = []
        held = 0
        for batch in subset.to_batches(columns=self.columns(columns), batch_size=min(rows, 131_072)):
            pending.append(batch)
            held += batch.num_rows
            if held >= rows:
                yield _frame(pending)
                pending, held = [], 0
        if pending:
            yield _frame(pending)


def _frame(batches: list[pa.RecordBatch]) -> pl.DataFrame:
    out = pl.from_arrow(pa.Table.from_batches(batches))
    assert isinstance(out, pl.DataFrame)
    return out


def key_hashes(frame: pl.DataFrame, keys: Sequence[str]) -> pl.Series:
    return frame.select(pl.struct(list(keys)).hash(seed=0x7D1D)).to_series()


def duplicates(groups: FileGroups, keys: Sequence[str], bucket_rows: int = BUCKET_ROWS) -> pl.DataFrame:
    """The keys held more than once across the whole table version: `keys` and `len`."""
    schema = {k: groups.dataset.schema.field(k).type for k in keys}
    empty = pl.from_arrow(pa.schema(list(schema.items())).empty_table())
    assert isinstance(empty, pl.DataFrame)
    empty = empty.with_columns(pl.lit(0, pl.UInt32).alias("len"))
    if not groups.groups:
        return empty
    buckets = max(1, math.ceil(groups.rows / bucket_rows))
    repeated: list[np.ndarray[Any, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tidegate-keys-") as tmp:
        spill = [Path(tmp) / f"bucket-{b}.u64" for b in range(buckets)]
        handles = [p.open("ab") for p in spill]
        try:
            for frame in groups.frames(keys):
                hashes = key_hashes(frame, keys).to_numpy()
                if buckets == 1:
                    hashes.tofile(handles[0])
                    continue
                which = hashes % np.uint64(buckets)
                for b in range(buckets):
                    hashes[which == b].tofile(handles[b])
        finally:
            for h in handles:
                h.close()
        for path in spill:
            hashes = np.fromfile(path, dtype=np.uint64)
            hashes.sort()
            twice = hashes[1:][hashes[1:] == hashes[:-1]]
            if twice.size:
                repeated.append(np.unique(twice))
            del hashes
    if not repeated:
        return empty
    suspects = pl.Series(np.concatenate(repeated))
    # the rare second pass: only rows whose hash repeats, to name them (collisions drop out here)
    rows = [f.filter(key_hashes(f, keys).is_in(suspects.implode())) for f in groups.frames(keys)]
    found = pl.concat(rows).group_by(list(keys)).len().filter(pl.col("len") > 1).sort(list(keys))
    return found


def readable_version(uri: str, version: int, storage: dict[str, str] | None = None) -> int:
    """The newest version of `uri` with the same rows as `version`: later commits that only
    compact, vacuum or set properties keep the rows, and their files are the ones still there
    after a vacuum (`tidegate maintain --retain-hours 0` deletes the files `version` read)."""
    table = try_open(uri, storage)
    if table is None or table.version() <= version:
        return version
    later = sorted(
        (int(c["version"]), str(c.get("operation")))
        for c in table.history()
        if c.get("version") is not None and int(c["version"]) > version
    )
    newest = version
    for v, op in later:
        if v != newest + 1 or op not in NO_DATA_CHANGE:
            break
        newest = v
    return newest


def missing_files(uri: str, version: int, storage: dict[str, str] | None = None) -> list[str]:
    """Data files of `uri` at `version` that are gone: a later commit removed them from the table
    and a vacuum deleted them (`readable_version` first: a compaction keeps the rows elsewhere).
    Only files the current version no longer lists are looked at (a live file is never
    vacuumed), one `get_file_info` for them all: on gs:// a request per such file, usually none."""
    pinned = try_open(uri, storage, version=version)
    current = try_open(uri, storage)
    if pinned is None or current is None or current.version() == version:
        return []
    paths = pa.table(current.get_add_actions(flatten=True)).column("path").to_pylist()
    live = {str(p).rsplit("/", 1)[-1] for p in paths}
    dataset = pinned.to_pyarrow_dataset()
    assert isinstance(dataset, ds.FileSystemDataset)
    maybe = [f.path for f in dataset.get_fragments() if f.path.rsplit("/", 1)[-1] not in live]
    if not maybe:
        return []
    return [i.path for i in dataset.filesystem.get_file_info(maybe) if i.type == pafs.FileType.NotFound]


def vacuumed(gone: list[str]) -> str:
    """`missing_files`' answer, in words."""
    return f"{len(gone)} of its files were vacuumed, e.g. {gone[0].rsplit('/', 1)[-1]}"


__all__ = [
    "GROUP_ROWS",
    "FileGroups",
    "duplicates",
    "key_hashes",
    "missing_files",
    "readable_version",
    "vacuumed",
]
