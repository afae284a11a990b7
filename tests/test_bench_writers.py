"""`tidegate bench writers`: N writer processes on one table, through the Dataflow job's commit.

The figures themselves are for docs/deploy.md; these tests hold what they rest on: the bench
commits with the job's arguments, counts every chunk, and finds every landed row exactly once.
"""

from __future__ import annotations

import json
import queue
from datetime import UTC, datetime
from pathlib import Path

import pytest
from deltalake import DeltaTable

from tidegate.bench_writers import (
    WriterJob,
    bench_writers,
    check_table,
    commit_rounds,
    landed_ids,
    make_chunk,
    merge_kwargs,
    template_rows,
    write_chunks,
)
from tidegate.lake.tables import raw_schema, raw_table
from tidegate.lake.writer import insert_new

TYPE = "shop.order.placed"
RUN_KEYS = {"writers", "rows_per_s", "retries", "failed_chunks", "p99_commit_s"}


def test_the_bench_commits_a_chunk_as_the_dataflow_job_does(catalog, registry) -> None:  # type: ignore[no-untyped-def]
    from tidegate.transforms.base import IngestConfig
    from tidegate.transforms.writes import _insert

    template = template_rows(catalog, TYPE, 20)
    assert template.schema == raw_schema(registry.types[TYPE])
    now = datetime.now(UTC)
    job = WriterJob(3, "gs://b/lake/raw/shop.order.placed", TYPE, template, 1, "r", {"k": "v"})
    rows = make_chunk(template, 3, 0, now)
    ours = merge_kwargs(job, rows, now)
    config = IngestConfig(
        lake="gs://b/lake",
        run_id="r",
        catalog_path="c",
        code_version="v",
        git_sha="s",
        storage_options=(("k", "v"),),
    )
    spec = raw_table(TYPE)
    theirs = _insert(  # what WriteRawHistoryFn.finish_bundle commits
        config,
        job.uri,
        rows,
        spec.keys,
        value="payload_digest",
        metadata=ours["metadata"],
        partition_by=spec.partition_by,
        prepare=ours["prepare"],
    )
    assert theirs.func is insert_new
    assert theirs.args == (job.uri, rows)
    assert theirs.keywords == ours


def test_every_chunk_gets_new_identities(catalog) -> None:  # type: ignore[no-untyped-def]
    template = template_rows(catalog, TYPE, 30)
    now = datetime.now(UTC)
    a, b = make_chunk(template, 0, 0, now), make_chunk(template, 1, 0, now)
    for column in ("event_id", "pubsub_message_id", "payload_digest", "batch_id"):
        assert not set(a.column(column).to_pylist()) & set(b.column(column).to_pylist()), column
    assert a.schema == template.schema
    assert a.drop_columns(
        ["event_id", "pubsub_message_id", "payload_digest", "batch_id", "ingest_time"]
    ).equals(
        template.drop_columns(["event_id", "pubsub_message_id", "payload_digest", "batch_id", "ingest_time"])
    )


def test_one_writer_in_process_lands_its_chunks_once(catalog, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    template = template_rows(catalog, TYPE, 25)
    uri = str(tmp_path / "raw" / TYPE)
    report = write_chunks(WriterJob(0, uri, TYPE, template, 3, "r"))
    assert [(o.chunk, o.inserted, o.attempts, o.error) for o in report.chunks] == [
        (k, 25, 1, None) for k in range(3)
    ]
    again = write_chunks(WriterJob(0, uri, TYPE, template, 3, "r"))  # a redelivery: nothing twice
    assert [o.inserted for o in again.chunks] == [0, 0, 0]
    check = check_table(uri, None, landed_ids([(0, o) for o in report.chunks], 25), TYPE)
    assert check == {
        "rows_in_table": 75,
        "missing_rows": 0,
        "duplicate_rows": 0,
        "unexpected_rows": 0,
        "table_version": 2,  # versions 0-2; the redelivery committed nothing
    }


def test_the_committer_commits_what_writers_staged_in_rounds(catalog, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    template = template_rows(catalog, TYPE, 20)
    uri = str(tmp_path / "raw" / TYPE)
    seed = write_chunks(WriterJob(-1, uri, TYPE, template, 1, "r"))
    handoff: queue.Queue[object] = queue.Queue()
    jobs = [WriterJob(w, uri, TYPE, template, 3, "r", path="committer") for w in range(2)]
    staged = [write_chunks(job, handoff=handoff) for job in jobs]
    assert all(o.staged and o.error is None for r in staged for o in r.chunks)
    assert DeltaTable(uri).version() == 0  # staged, not committed
    report = commit_rounds(jobs[0], 2, handoff)
    assert [(n, attempts, committed) for n, attempts, _, committed in report.rounds] == [(6, 1, True)]
    assert sorted((w, o.chunk, o.inserted) for w, o in report.chunks) == [
        (w, k, 20) for w in range(2) for k in range(3)
    ]
    expected = landed_ids([(-1, seed.chunks[0]), *report.chunks], 20)
    check = check_table(uri, None, expected, TYPE)
    assert (check["rows_in_table"], check["missing_rows"], check["duplicate_rows"]) == (140, 0, 0)
    assert check["table_version"] == 1


@pytest.mark.parametrize("path", ["merge", "committer"])
def test_writers_on_the_local_filesystem_land_every_row_exactly_once(cli, path: str) -> None:  # type: ignore[no-untyped-def]
    r = cli(
        "bench",
        "writers",
        "--writers",
        "1,2",
        "--chunks",
        "2",
        "--chunk-rows",
        "40",
        "--path",
        path,
        "--json",
    )
    assert r.code == 0, r.text
    runs = json.loads(r.out)["runs"]
    assert [run["writers"] for run in runs] == [1, 2]
    for run in runs:
        assert set(run) >= RUN_KEYS
        assert run["failed_chunks"] == 0
        assert run["rows_landed"] == run["writers"] * 2 * 40
        assert (run["missing_rows"], run["duplicate_rows"], run["unexpected_rows"]) == (0, 0, 0)
        assert run["exactly_once"] is True
        assert (run["store"], run["path"]) == ("local", path)
        assert run["rows_per_s"] > 0
        assert run["p99_commit_s"] >= run["p50_commit_s"] > 0
    assert runs[0]["retries"] == 0  # one writer races nobody
    if path == "committer":  # one committer: nothing races, and a round takes what arrived
        assert all(run["retries"] == 0 and run["rounds"] >= 1 for run in runs)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--writers", "0,x"], "--writers"),
        (["--writers", "1,,4"], "--writers"),
        (["--writers", "1000"], "--writers"),
        (["--store", "local", "--latency-ms", "50"], "--latency-ms"),
        (["--store", "s3"], "--store"),
        (["--path", "append"], "--path"),
        (["--chunks", "0"], "--chunks"),
    ],
)
def test_mistakes_exit_2_with_the_flag_named(cli, args: list[str], words: str) -> None:  # type: ignore[no-untyped-def]
    r = cli("bench", "writers", *args)
    assert r.code == 2, r.text
    assert words in r.text
    assert "Traceback" not in r.text


@pytest.mark.gcs
@pytest.mark.parametrize("path", ["merge", "committer"])
def test_writers_on_the_gcs_emulator_with_latency_land_every_row_exactly_once(catalog, path: str) -> None:  # type: ignore[no-untyped-def]
    figures = bench_writers(
        catalog,
        [2],
        chunks=2,
        chunk_rows=30,
        store="gcs-emulator",
        latency_ms=10.0,
        path=path,
        progress=lambda m: None,
    )
    (run,) = figures["runs"]
    assert set(run) >= RUN_KEYS
    assert (run["store"], run["latency_ms"], run["path"]) == ("gcs-emulator", 10.0, path)
    assert run["store_requests"] > 0
    assert run["failed_chunks"] == 0
    assert run["rows_landed"] == 2 * 2 * 30
    assert run["exactly_once"] is True
