"""The single writer's dedup (lake.keyindex + lake.writer.append_new) on real Delta tables: it
never inserts a key the table holds, whoever wrote it, across dates, after compaction, after a
failed commit and in a fresh process; it forgets keys older than its horizon. No Beam here."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from tidegate.lake.delta import CHECKPOINT_INTERVAL
from tidegate.lake.keyindex import KeyIndex
from tidegate.lake.maintenance import compact_small_files
from tidegate.lake.writer import append_new, insert_new


def rows(ids: list[str], day: date = date(2026, 12, 1), ingested: datetime | None = None) -> pa.Table:
    when = ingested or datetime.now(UTC)
    return pa.table(
        {
            "event_id": ids,
            "event_date": [day] * len(ids),
            "ingest_time": pa.array([when] * len(ids), pa.timestamp("us", tz="UTC")),
        }
    )


def ids_in(uri: str) -> list[str]:
    return sorted(pl.read_delta(uri).get_column("event_id").to_list())


def append(uri: str, index: KeyIndex, table: pa.Table):  # type: ignore[no-untyped-def]
    return append_new(uri, table, keys=["event_id"], index=index, partition_by=["event_date"])


def test_an_id_already_in_the_table_is_skipped_whatever_its_date_and_whoever_wrote_it(tmp_path: Path) -> None:
    uri = str(tmp_path / "raw")
    # an earlier process (or another writer) with the MERGE path
    insert_new(uri, rows(["a", "b"]), keys=["event_id"], partition_by=["event_date"])
    index = KeyIndex(uri, ["event_id"])
    first = append(uri, index, rows(["b", "c"], day=date(2031, 5, 5)))  # b re-sent with another date
    assert (first.offered, first.inserted) == (2, 1)
    again = append(uri, index, rows(["c", "a", "d"]))
    assert (again.offered, again.inserted) == (3, 1)
    assert ids_in(uri) == ["a", "b", "c", "d"]
    assert index.loads == 1  # followed its own commits without reading the table again


def test_a_fresh_process_rebuilds_the_index_from_the_table(tmp_path: Path) -> None:
    uri = str(tmp_path / "raw")
    append(uri, KeyIndex(uri, ["event_id"]), rows(["a", "b"]))  # creates the table
    restarted = KeyIndex(uri, ["event_id"])  # what a restart after a crash starts with
    result = append(uri, restarted, rows(["a", "b", "c"]))
    assert result.inserted == 1
    assert ids_in(uri) == ["a", "b", "c"]


def test_compaction_does_not_reload_the_index_and_a_foreign_write_does(tmp_path: Path) -> None:
    uri = str(tmp_path / "raw")
    index = KeyIndex(uri, ["event_id"])
    for i in range(20):
        append(uri, index, rows([f"e{i}"]))
    assert compact_small_files(uri, min_files=16) > 0
    assert append(uri, index, rows(["e3", "new"])).inserted == 1
    assert index.loads == 0  # it created the table and followed every commit since
    # another writer adds a key behind the index's back: the index notices and reloads
    write_deltalake(uri, rows(["foreign"]), mode="append", partition_by=["event_date"])
    assert append(uri, index, rows(["foreign", "mine"])).inserted == 1
    assert index.loads == 1
    assert ids_in(uri).count("foreign") == 1


def test_a_commit_that_fails_leaves_the_index_to_be_reloaded(tmp_path: Path) -> None:
    uri = str(tmp_path / "raw")
    index = KeyIndex(uri, ["event_id"])
    append(uri, index, rows(["a"]))

    def broken(table, batch):  # type: ignore[no-untyped-def]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        append_new(uri, rows(["b"]), keys=["event_id"], index=index, prepare=broken)
    assert index.version is None
    assert append(uri, index, rows(["a", "b"])).inserted == 1
    assert ids_in(uri) == ["a", "b"]


def test_keys_older_than_the_horizon_are_not_loaded(tmp_path: Path) -> None:
    uri = str(tmp_path / "raw")
    old = datetime.now(UTC) - timedelta(days=30)
    write_deltalake(uri, rows(["old"], ingested=old), partition_by=["event_date"])
    write_deltalake(uri, rows(["recent"]), mode="append", partition_by=["event_date"])
    index = KeyIndex(uri, ["event_id"], horizon=timedelta(days=7))
    assert append(uri, index, rows(["old", "recent"])).inserted == 1  # "old" is past the horizon
    assert len(index) == 2  # recent + the re-sent old one
    assert DeltaTable(uri).version() == 2


def test_many_keys_stay_exact_after_the_recent_set_is_merged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tidegate.lake.keyindex as ki

    monkeypatch.setattr(ki, "_MERGE_RECENT", 50)
    uri = str(tmp_path / "raw")
    index = KeyIndex(uri, ["event_id"])
    for start in range(0, 400, 40):
        append(uri, index, rows([f"k{i}" for i in range(start, start + 40)]))
    result = append(uri, index, rows([f"k{i}" for i in range(380, 420)]))
    assert result.inserted == 20
    assert len(ids_in(uri)) == 420


def test_generations_past_the_horizon_are_dropped_and_newer_ones_kept(tmp_path: Path) -> None:
    uri = str(tmp_path / "raw")
    index = KeyIndex(uri, ["event_id"], horizon=timedelta(days=7))
    append(uri, index, rows(["today"]))
    long_ago = datetime.now(UTC).date() - timedelta(days=9)
    week_ago = datetime.now(UTC).date() - timedelta(days=7)
    no_value = np.zeros(1, dtype=np.uint64)
    index._generations[:0] = [
        (long_ago, np.array([b"x" * 16], dtype="S16"), no_value),
        (week_ago, np.array([b"y" * 16], dtype="S16"), no_value),
    ]
    index._merge()  # what happens every 50k keys
    assert [day for day, _, _ in index._generations] == [week_ago, datetime.now(UTC).date()]
    assert index.seen(index.digests(rows(["today", "other"]))) == [True, False]


def test_the_writer_reopens_its_table_now_and_then_and_keeps_deduplicating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an open DeltaTable grows with every log segment it follows, so the writer opens it afresh
    # every REOPEN_AFTER versions; the index must neither reload nor forget across that
    monkeypatch.setattr("tidegate.lake.delta.REOPEN_AFTER", 3)
    uri = str(tmp_path / "raw")
    index = KeyIndex(uri, ["event_id"])
    tables = set()
    for i in range(8):
        result = append(uri, index, rows([f"e{i}", f"e{i - 1}"]))
        assert result.inserted == (2 if i == 0 else 1)
        tables.add(index.opened.opened_at(uri))
    assert ids_in(uri) == sorted({"e-1", *(f"e{i}" for i in range(8))})
    assert len(tables) >= 3  # it did open the table afresh
    assert index.loads == 0  # it created the table and followed its own commits: never read it


def test_the_writer_alone_checkpoints_and_drops_expired_log_files_every_hundred_versions(
    tmp_path: Path,
) -> None:
    # a short `ingest` run has no compactor: the writer's own commits still keep the log bounded,
    # cleaning expired log files with each checkpoint (not on every commit: lake.delta.commit_hooks)
    from tidegate.lake.maintenance import set_log_retention

    uri = str(tmp_path / "raw")
    index = KeyIndex(uri, ["event_id"])
    append(uri, index, rows(["e0"]))
    set_log_retention(uri, "1s")
    log_dir = tmp_path / "raw" / "_delta_log"
    for i in range(1, 150):
        append(uri, index, rows([f"e{i}"]))
    assert len(list(log_dir.glob("*.json"))) >= 150  # between checkpoints, nothing is deleted
    time.sleep(1.2)
    for i in range(150, 320):
        append(uri, index, rows([f"e{i}"]))
    # the cleanups after the checkpoints deleted the expired files up to a checkpoint the writer
    # knew (199): the log holds at most two checkpoint intervals, not every commit
    assert not (log_dir / "00000000000000000150.json").exists()
    assert len(list(log_dir.glob("*.json"))) <= 2 * CHECKPOINT_INTERVAL
    assert ids_in(uri) == sorted(f"e{i}" for i in range(320))
