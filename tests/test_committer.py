"""Many writers, one committer per table (tidegate.lake.committer): staged files land exactly once.

Real Delta tables in a temp dir, and one on the GCS emulator (the object-store path Dataflow uses).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from tidegate.catalog import load_catalog
from tidegate.lake.committer import StagedChunk, commit_staged, stage_rows
from tidegate.lake.keyindex import KeyIndex
from tidegate.lake.maintenance import maintain
from tidegate.lake.rows import table_max_event_time
from tidegate.lake.tables import LakeTables

NOW = datetime.now(UTC)
SCHEMA = pa.schema(
    [
        ("event_source", pa.string()),
        ("event_id", pa.string()),
        ("payload_digest", pa.string()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("ingest_time", pa.timestamp("us", tz="UTC")),
        ("event_date", pa.date32()),
    ]
)
KW: dict[str, Any] = {
    "keys": ["event_source", "event_id"],
    "conflict_on": "payload_digest",
    "partition_by": ["event_date"],
}


def rows(ids: list[str], digest: str = "d", schema: pa.Schema = SCHEMA) -> pa.Table:
    n = len(ids)
    data: dict[str, list[Any]] = {
        "event_source": ["//shop"] * n,
        "event_id": ids,
        "payload_digest": [digest] * n,
        "event_time": [NOW - timedelta(minutes=int(i)) for i in ids],
        "ingest_time": [NOW] * n,
        "event_date": [date(2026, 12, 1 + int(i) % 2) for i in ids],
    }
    for f in schema:
        data.setdefault(f.name, ["x"] * n)
    return pa.Table.from_pydict(data, schema=schema)


def stage(uri: str, batch_id: str, ids: list[str], digest: str = "d", **options: Any) -> StagedChunk:
    return StagedChunk(batch_id, stage_rows(uri, rows(ids, digest), **KW, **options))


def commit(uri: str, chunks: list[StagedChunk], **options: Any) -> Any:
    return commit_staged(uri, chunks, schema=SCHEMA, horizon=timedelta(days=7), **KW, **options)


def landed(uri: str, **options: Any) -> list[str]:
    return sorted(pl.read_delta(uri, storage_options=options.get("storage_options")).get_column("event_id"))


def test_a_round_commits_many_chunks_once_and_dedups_across_them(tmp_path: Path) -> None:
    uri = str(tmp_path / "raw")
    a, b = stage(uri, "b1", ["1", "2", "3"]), stage(uri, "b2", ["3", "4"])
    # staged files are in the folder but not in the table: readers see nothing yet
    assert not (tmp_path / "raw" / "_delta_log").exists()
    result = commit(uri, [a, b])
    assert result.version == 0  # one commit for both chunks
    assert [(c.batch_id, c.offered, c.inserted) for c in result.chunks] == [("b1", 3, 3), ("b2", 2, 1)]
    assert landed(uri) == ["1", "2", "3", "4"]
    # a file left with nothing new was deleted, not committed
    table_files = {Path(u).name for u in DeltaTable(uri).file_uris()}
    on_disk = {p.name for p in (tmp_path / "raw").rglob("*.parquet")}
    assert on_disk == table_files
    # file statistics are written: the lateness base (max event time) reads from them
    assert table_max_event_time(DeltaTable(uri)) is not None


def test_a_retried_round_adds_nothing_twice_and_reports_the_same(tmp_path: Path) -> None:
    uri = str(tmp_path / "raw")
    commit(uri, [stage(uri, "b0", ["6"])])
    chunks = [stage(uri, "b1", ["6", "7", "8", "9"]), stage(uri, "b2", ["9", "10"])]
    first = commit(uri, chunks)
    assert first.rewritten == 1  # "6" was in the table already: its file is rewritten without it
    again = commit(uri, chunks)  # the bundle retried after its commit landed
    assert again.version == first.version  # no new commit
    assert again.chunks == first.chunks  # the same accounting for the ledger
    assert landed(uri) == sorted(["6", "7", "8", "9", "10"])


def test_an_id_reused_with_another_payload_is_a_conflict_not_a_row(tmp_path: Path) -> None:
    uri = str(tmp_path / "raw")
    commit(uri, [stage(uri, "b1", ["1", "2"])])
    result = commit(uri, [stage(uri, "b2", ["2", "3"], digest="other")])
    (outcome,) = result.chunks
    assert outcome.inserted == 1
    assert outcome.conflicts == ((0, "d"),)  # position in the rows the worker staged, landed digest
    df = pl.read_delta(uri)
    assert df.filter(pl.col("event_id") == "2").get_column("payload_digest").to_list() == ["d"]


def test_a_new_contract_versions_columns_are_added_to_the_table(tmp_path: Path) -> None:
    uri = str(tmp_path / "raw")
    commit(uri, [stage(uri, "b1", ["1"])])
    wider = pa.schema([*SCHEMA, pa.field("coupon", pa.string())])
    chunk = StagedChunk("b2", stage_rows(uri, rows(["2"], schema=wider), **KW))
    commit_staged(uri, [chunk], schema=wider, horizon=timedelta(days=7), **KW)
    df = pl.read_delta(uri).sort("event_id")
    assert df.get_column("coupon").to_list() == [None, "x"]


@pytest.mark.gcs
def test_the_committer_lands_every_row_once_on_the_object_store(gcs_emulator: Any, gs_prefix: str) -> None:
    uri = f"{gs_prefix}/raw"
    opts = {"storage_options": gcs_emulator.storage_options}
    chunks = [stage(uri, f"b{i}", [str(i * 10 + j) for j in range(5)], **opts) for i in range(4)]
    chunks.append(stage(uri, "dup", ["10", "11", "99"], **opts))
    result = commit(uri, chunks, **opts)
    assert sum(c.inserted for c in result.chunks) == 21
    assert commit(uri, chunks, **opts).chunks == result.chunks
    ids = landed(uri, **opts)
    assert len(ids) == len(set(ids)) == 21


def test_maintain_deletes_staged_files_no_round_committed_once_past_retention(tmp_path: Path) -> None:
    """A worker lost after staging leaves files no commit names: readers never see them, and
    `maintain` deletes them once older than the data retention, never a fresh one being staged."""
    lake = tmp_path / "lake"
    uri = str(lake / "raw" / "shop.order.placed")
    commit(uri, [stage(uri, "b1", ["1", "2"])])
    lost = stage(uri, "lost", ["3"])  # never committed
    fresh = stage(uri, "in-flight", ["4"])  # a round still to come
    old = time.time() - 3 * 3600
    for f in lost.files:
        os.utime(Path(uri) / f.path, (old, old))
    maintain(LakeTables(str(lake), load_catalog()), retain_hours=2)
    assert all(not (Path(uri) / f.path).exists() for f in lost.files)
    assert all((Path(uri) / f.path).exists() for f in fresh.files)
    assert landed(uri) == ["1", "2"]
    commit(uri, [fresh])  # the in-flight round still commits
    assert landed(uri) == ["1", "2", "4"]


def test_the_committers_key_index_decides_as_the_file_lookup_does(tmp_path: Path) -> None:
    """With its in-memory key index (the committer is its table's only raw writer), a round
    dedups, finds id conflicts and survives a retry exactly as the lookup in the files does."""
    A, B = "a1" * 8, "b2" * 8  # payload digests are 16 hex digits
    outcomes = {}
    for use_index in (False, True):
        uri = str(tmp_path / f"raw-{use_index}")
        index = KeyIndex(uri, KW["keys"], value="payload_digest") if use_index else None
        rounds = [
            [stage(uri, "b1", ["1", "2", "3"], A), stage(uri, "b2", ["3", "4"], A)],
            [stage(uri, "b3", ["4", "5"], A), stage(uri, "b4", ["2", "6"], digest=B)],
            [stage(uri, "b5", ["7"], A)],
        ]
        got = []
        for chunks in rounds:
            got.append(commit(uri, chunks, index=index).chunks)
        got.append(commit(uri, rounds[1], index=index).chunks)  # a retried round
        outcomes[use_index] = got
        assert landed(uri) == ["1", "2", "3", "4", "5", "6", "7"]
        if index is not None:
            assert index.loads == 1  # loaded once, then it followed its own commits
    assert outcomes[True] == outcomes[False]
    assert outcomes[True][1][1].conflicts == ((0, A),)
