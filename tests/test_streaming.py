"""Streaming mode: the same composites behind ReadFromPubSub. The Dataflow job is built
offline (dry run: nothing staged, submitted or contacted); a short smoke run on Beam's local
streaming runner against the emulator lands events in Delta."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tests.streaming_runner import run_local_streaming
from tidegate.errors import TidegateError
from tidegate.expectations.contracts import ContractRegistry
from tidegate.infra.pubsub import provision
from tidegate.pipelines.dataflow import DataflowTarget, launch
from tidegate.producer import ProduceConfig, generate, publish
from tidegate.transforms.base import IngestConfig


def config(catalog, lake: str) -> IngestConfig:  # type: ignore[no-untyped-def]
    return IngestConfig(lake, "run-streaming", str(catalog.path), "test", "sha")


def test_dataflow_job_builds_offline_with_stable_step_names(catalog) -> None:  # type: ignore[no-untyped-def]
    target = DataflowTarget("acme-data", "europe-west1", "gs://acme-dataflow/tmp", "gs://acme-lake/lake")
    job = launch(catalog, target, production=False, dry_run=True)
    assert job["type"] == "JOB_TYPE_STREAMING"
    steps = set(job["steps"])
    for s in catalog.streams:
        assert f"ReadEvents/Read/{s.subscription}" in steps
    for step in (
        "ToChunks/Batch",
        "Ingest/DecodeEnvelope",
        "Ingest/ValidateContract",
        "Ingest/ValidateExpectations",
        "Ingest/WriteRawHistory",
        "Ingest/WriteQuarantine",
    ):
        assert step in steps
    for a in catalog.aggregates:  # windowed aggregates, then their guarded sink, one per aggregate
        assert f"ComputeWindowedAggregates/{a.name}/Window" in steps
        assert f"ComputeWindowedAggregates/{a.name}/Combine" in steps
        assert f"WriteAggregates/{a.name}/Upsert" in steps
        assert f"WriteAggregates/{a.name}/LateLedger" in steps
    assert job["options"]["streaming"] is True
    # the job compacts the partitions it writes on a schedule, as `ingest --follow` does
    assert "MaintainTables/Tick" in " ".join(steps) or any(s.startswith("MaintainTables") for s in steps)
    import base64

    reads = [
        base64.b64decode(t["spec"]["payload"])
        for t in job["pipeline"]["components"]["transforms"].values()
        if t.get("spec", {}).get("urn") == "beam:transform:pubsub_read:v1"
    ]
    assert len(reads) == len(catalog.streams)
    for payload in reads:
        assert b"ce-id" in payload  # id_label: Dataflow drops redeliveries by CloudEvents id
        assert b"ce-time" in payload  # timestamp_attribute: event-time watermark


def test_dry_run_refuses_a_location_that_would_send_it_looking_on_gcs(catalog) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TidegateError, match="not a gs://bucket/path"):
        launch(catalog, DataflowTarget("acme-data", "r", "gs://b/tmp", "gs://l/l"), dry_run=True)


@pytest.mark.emulator
def test_local_streaming_smoke_lands_events(
    pubsub_emulator, catalog, registry: ContractRegistry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # The catalog's own project: the local runner's ReadFromPubSub reads the catalog's subscriptions.
    provision(catalog, pubsub_emulator.address)
    cfg = ProduceConfig(types=tuple(catalog.event_types), count=200, seed=5, invalid_rate=0.1)
    publish(generate(cfg, catalog, registry), catalog.project, pubsub_emulator.address, 200)
    lake = tmp_path / "lake"

    def landed() -> int:
        total = 0
        for t in catalog.event_types:
            uri = lake / "raw" / t
            if (uri / "_delta_log").exists():
                df = pl.read_delta(str(uri))
                assert df.get_column("event_id").n_unique() == df.height
                total += df.height
        return total

    def ledger() -> pl.DataFrame:
        uri = lake / "_ledger"
        return pl.read_delta(str(uri)) if (uri / "_delta_log").exists() else pl.DataFrame()

    def accounted() -> int:
        led = ledger()
        return int(led.get_column("received").sum()) if led.height else 0

    # That runner is slow (10 messages a bundle) and fires processing-time timers late when
    # idle: wait until at least half the messages are accounted for, up to 120 s.
    run_local_streaming(
        catalog,
        config(catalog, str(lake)),
        address=pubsub_emulator.address,
        project=catalog.project,
        seconds=120,
        chunk_size=50,
        until=lambda: accounted() >= 100,
    )
    # The streaming job keeps a ledger like local mode: one row per chunk, each balanced, and
    # each row's counts are exactly the rows its chunk left in the raw history and quarantine.
    led = ledger()
    assert accounted() >= 100
    assert led.get_column("batch_id").n_unique() == led.height
    outcome = led.select(
        pl.col("raw_written")
        + pl.col("duplicates_skipped")
        + pl.col("quarantined")
        + pl.col("quarantine_duplicates")
    ).to_series()
    assert outcome.to_list() == led.get_column("received").to_list()
    raw = pl.concat(
        [
            pl.read_delta(str(lake / "raw" / t)).select("batch_id")
            for t in catalog.event_types
            if (lake / "raw" / t).exists()
        ]
    )
    quarantine = pl.read_delta(str(lake / "quarantine")).select("batch_id")
    for row in led.iter_rows(named=True):
        assert raw.filter(pl.col("batch_id") == row["batch_id"]).height == row["raw_written"]
        assert quarantine.filter(pl.col("batch_id") == row["batch_id"]).height == row["quarantined"]
    assert landed() >= led.get_column("raw_written").sum() > 0
    assert led.get_column("quarantined").sum() > 0


def test_cli_builds_the_streaming_job_offline(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job_file = tmp_path / "job.json"
    r = cli(
        "ingest",
        "--mode",
        "streaming",
        "--dry-run",
        "--lake",
        "gs://acme-lake/lake",
        "--temp-location",
        "gs://acme-dataflow/tmp",
        "--project",
        "acme-data",
        "--job-file",
        job_file,
    )
    assert r.code == 0, r.text
    assert "JOB_TYPE_STREAMING" in r.text
    assert "not submitted" in r.text
    assert "ReadEvents/Read/shop-orders-tidegate" in job_file.read_text()
    r = cli("ingest", "--mode", "streaming", "--lake", "gs://acme-lake/lake")
    assert r.code == 2
    assert "--dry-run" in r.text
    r = cli(
        "ingest",
        "--mode",
        "streaming",
        "--dry-run",
        "--lake",
        str(tmp_path),
        "--temp-location",
        "gs://acme-dataflow/tmp",
    )
    assert r.code == 2
    assert "must be a gs://bucket/path URI for Dataflow" in r.text  # the same check as deploy dataflow


def test_a_chunk_that_never_balances_still_gets_an_unbalanced_ledger_row() -> None:
    """The timeout path of BalanceLedger: a message lost between reading and writing shows up
    as an unbalanced row (status and verify flag it) rather than state waiting forever."""
    from datetime import UTC, datetime

    from tidegate.transforms.ledger import ChunkReceived, balanced, ledger_row
    from tidegate.transforms.writes import TableCommit

    got = ChunkReceived("c1", 10, ("shop-orders-tidegate",), datetime.now(UTC), "digest")
    raw = TableCommit("raw", "shop.order.placed", "raw/shop.order.placed", ("c1",), 7, 7, 6, 3)
    quarantine = TableCommit("quarantine", None, "quarantine", ("c1",), 2, 2, 2, 5)
    assert not balanced([got, raw, quarantine])  # 9 of 10 handed to the writers
    row = ledger_row("c1", "run-x", [got, raw, quarantine])
    assert (row["received"], row["raw_written"], row["duplicates_skipped"], row["quarantined"]) == (
        10,
        6,
        1,
        2,
    )
    assert row["raw_written"] + row["duplicates_skipped"] + row["quarantined"] != row["received"]
    assert row["raw_versions"] == [("shop.order.placed", 3)]
    assert row["quarantine_version"] == 5
    more = TableCommit("quarantine", None, "quarantine", ("c1",), 1, 1, 1, 6)
    assert balanced([raw, got, quarantine, more])  # arrival order does not matter
