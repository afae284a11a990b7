"""Ingestion against the real emulator and real Delta tables: exactly once across
duplicates, redelivery, snapshot replay and SIGKILL at both crash points; quarantine reasons;
PII; lineage; schema evolution."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from tests.conftest import CONTRACTS_DIR
from tidegate.catalog import Catalog, load_catalog
from tidegate.expectations.contracts import ContractRegistry
from tidegate.infra.pubsub import provision, subscriber, subscription_path
from tidegate.lake.tables import ledger_uri, quarantine_uri, raw_uri
from tidegate.lake.verify import verify
from tidegate.pipelines.local import ConsumerOptions, LocalIngest, LocalOptions
from tidegate.pipelines.runs import new_run_id
from tidegate.producer import EXPECTED_RULE, FAULT_KINDS, ProduceConfig, generate, publish
from tidegate.transforms.base import IngestConfig

pytestmark = pytest.mark.emulator
LEASE = ConsumerOptions().lease_seconds


def produce(emulator, catalog: Catalog, project: str, manifest: Path, **kw) -> None:  # type: ignore[no-untyped-def]
    registry = ContractRegistry.from_catalog(catalog)
    config = ProduceConfig(**{"types": tuple(catalog.event_types), "count": 2000, "seed": 21, **kw})
    report = publish(
        generate(config, catalog, registry), project, emulator.address, config.count, manifest=manifest
    )
    assert report.failed == 0


def ingest(emulator, catalog: Catalog, project: str, lake: Path, **opts):  # type: ignore[no-untyped-def]
    config = IngestConfig(str(lake), new_run_id(), str(catalog.path), "test", "test-sha")
    options = LocalOptions(**{"max_batch": 20_000, "max_wait": 0.5, "until_idle": 0.5, **opts})
    return LocalIngest(catalog, emulator.address, config, options, project=project).run()


def test_messy_traffic_lands_exactly_once_with_reasons_and_lineage(
    pubsub_emulator, catalog, project, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    provision(catalog, pubsub_emulator.address, project)
    manifest = tmp_path / "manifest.jsonl"
    produce(
        pubsub_emulator,
        catalog,
        project,
        manifest,
        count=4000,
        invalid_rate=0.08,
        duplicate_rate=0.05,
        structured_rate=0.1,
    )
    lake = tmp_path / "lake"
    summary = ingest(pubsub_emulator, catalog, project, lake, max_batch=700)
    assert summary.batches >= 5  # duplicates straddle batches, not only within one
    assert summary.received == 4000

    report = verify(str(lake), catalog.event_types, manifest)
    assert report.ok, report.problems[:10]

    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    q = pl.read_delta(quarantine_uri(str(lake)))
    assert set(zip(q.get_column("stage"), q.get_column("rule"), strict=True)) == set(EXPECTED_RULE.values())
    assert q.height == sum(r["expect"] == "quarantine" for r in rows)
    assert {r["kind"] for r in rows} >= set(FAULT_KINDS)

    orders = pl.read_delta(raw_uri(str(lake), "shop.order.placed"))
    assert orders.get_column("customer_email").str.starts_with("pii_").all()
    assert orders.get_column("amount").dtype == pl.Decimal(12, 2)
    assert set(orders.get_column("schema_version").unique()) == {1, 2}
    assert orders.get_column("subscription").unique().to_list() == ["shop-orders-tidegate"]
    assert orders.get_column("trace_id").null_count() < orders.height  # W3C trace ids carried through

    ledger = pl.read_delta(ledger_uri(str(lake)))
    assert ledger.height == summary.batches
    assert ledger.get_column("duplicates_skipped").sum() == sum(r["kind"] == "duplicate" for r in rows)

    for event_type in catalog.event_types:
        for h in DeltaTable(raw_uri(str(lake), event_type)).history():
            assert h["tidegate_run_id"] == summary.run_id
            assert h["tidegate_git_sha"] == "test-sha"
            assert h["tidegate_gx_suite_fingerprint"]
            assert h["tidegate_pii_key_id"]
            assert json.loads(h["tidegate_subscriptions"])
            assert int(h["tidegate_message_count"]) > 0
            versions = json.loads(h["tidegate_contracts"])
            assert all(len(fp) == 64 for fp in versions.values())


def test_replaying_a_snapshot_changes_nothing(pubsub_emulator, catalog, project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    provision(catalog, pubsub_emulator.address, project)
    client = subscriber(pubsub_emulator.address)
    snapshot = f"projects/{project}/snapshots/before-ingest"
    sub = subscription_path(project, "shop-orders-tidegate")
    client.create_snapshot(request={"name": snapshot, "subscription": sub})
    manifest = tmp_path / "m.jsonl"
    produce(
        pubsub_emulator,
        catalog,
        project,
        manifest,
        types=("shop.order.placed",),
        count=800,
        invalid_rate=0.05,
    )
    lake = tmp_path / "lake"
    first = ingest(pubsub_emulator, catalog, project, lake)
    before = {t.name: DeltaTable(str(t)).version() for t in (lake / "raw").iterdir()}

    client.seek(request={"subscription": sub, "snapshot": snapshot})  # Pub/Sub redelivers all of it
    client.close()
    second = ingest(pubsub_emulator, catalog, project, lake)
    assert second.received == first.received == 800
    assert (second.raw_written, second.quarantined) == (0, 0)
    assert second.duplicates_skipped + second.quarantine_duplicates == 800
    after = {t.name: DeltaTable(str(t)).version() for t in (lake / "raw").iterdir()}
    assert after == before  # not even an empty commit
    assert verify(str(lake), catalog.event_types, manifest).ok


def _crash_catalog(tmp_path: Path, project: str, port: int, ack_deadline: int = 10) -> Path:
    p = tmp_path / "catalog.yaml"
    p.write_text(
        f"""project: {project}
emulator: {{host: 127.0.0.1, port: {port}}}
contracts: {CONTRACTS_DIR}
defaults: {{ack_deadline_seconds: {ack_deadline}}}
streams:
  - {{event_type: shop.order.placed, topic: shop-orders, subscription: shop-orders-tidegate}}
  - {{event_type: shop.page.viewed, topic: shop-pageviews, subscription: shop-pageviews-tidegate}}
"""
    )
    return p


def _cli(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "tidegate.cli", *args], capture_output=True, text=True, timeout=240, env=env
    )


@pytest.mark.parametrize(
    ("crash_point", "ack_deadline"), [("before_commit", 10), ("after_commit", 10), ("before_commit", 600)]
)
def test_sigkill_at_each_crash_point_loses_nothing_and_doubles_nothing(
    pubsub_emulator, project, tmp_path: Path, crash_point: str, ack_deadline: int
) -> None:  # type: ignore[no-untyped-def]
    """`ack_deadline`: the subscription's. 10 s (the shipped default) is already our lease; a
    600 s one (older catalogs) is shortened to the lease as each pull lands."""
    cat_file = _crash_catalog(tmp_path, project, pubsub_emulator.port, ack_deadline)
    catalog = load_catalog(cat_file)
    provision(catalog, pubsub_emulator.address)
    manifest = tmp_path / "m.jsonl"
    produce(pubsub_emulator, catalog, project, manifest, count=1500, invalid_rate=0.05, duplicate_rate=0.02)
    lake = tmp_path / "lake"
    args = ["ingest", "--catalog", str(cat_file), "--lake", str(lake), "--emulator", pubsub_emulator.address]

    crashed = _cli([*args, "--until-idle", "1"], {"TIDEGATE_FAULT_INJECT": crash_point})
    assert crashed.returncode == -9, crashed.stderr  # SIGKILL, mid-batch
    raw_dir = lake / "raw"
    if crash_point == "before_commit":
        assert not raw_dir.exists() or not any(raw_dir.iterdir())  # nothing landed
    else:
        assert any(raw_dir.iterdir())  # landed, but never acked

    # Restart: the killed process's leases lapse within LEASE seconds (whatever the
    # subscription's ack deadline), so a restart that stops after LEASE + 2 idle seconds must
    # find every message again.
    started = time.monotonic()
    restarted = _cli([*args, "--until-idle", str(LEASE + 2)])
    assert restarted.returncode == 0, restarted.stderr
    assert time.monotonic() - started < 30 + LEASE
    report = verify(str(lake), catalog.event_types, manifest)
    assert report.ok, report.problems[:10]
    ledger = pl.read_delta(ledger_uri(str(lake)))
    if crash_point == "after_commit":
        # the killed run committed and wrote its ledger rows but never acked: the restart got
        # those messages again and skipped every one of them as a duplicate
        first_run = ledger.sort("committed_at").get_column("run_id")[0]
        crashed_rows = ledger.filter(pl.col("run_id") == first_run)
        again = ledger.filter(pl.col("run_id") != first_run)
        skipped = (
            again.get_column("duplicates_skipped").sum() + again.get_column("quarantine_duplicates").sum()
        )
        assert skipped >= crashed_rows.get_column("received").sum() > 0


def test_schema_evolves_when_v2_arrives(pubsub_emulator, project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    only_v1 = tmp_path / "v1" / "contracts"
    shutil.copytree(CONTRACTS_DIR, only_v1)
    (only_v1 / "shop.order.placed" / "v2.avsc").unlink()
    body = "project: {p}\ncontracts: {c}\nstreams:\n  - {{event_type: shop.order.placed, topic: shop-orders, subscription: shop-orders-tidegate}}\n"
    (tmp_path / "v1.yaml").write_text(body.format(p=project, c=only_v1))
    (tmp_path / "v2.yaml").write_text(body.format(p=project, c=CONTRACTS_DIR))
    cat_v1, cat_v2 = load_catalog(tmp_path / "v1.yaml"), load_catalog(tmp_path / "v2.yaml")
    provision(cat_v1, pubsub_emulator.address, project)
    lake = tmp_path / "lake"

    produce(
        pubsub_emulator,
        cat_v1,
        project,
        tmp_path / "a.jsonl",
        types=("shop.order.placed",),
        count=300,
        seed=1,
    )
    ingest(pubsub_emulator, cat_v1, project, lake)
    uri = raw_uri(str(lake), "shop.order.placed")
    assert "coupon_code" not in DeltaTable(uri).schema().to_arrow().names

    produce(
        pubsub_emulator,
        cat_v2,
        project,
        tmp_path / "b.jsonl",
        types=("shop.order.placed",),
        count=300,
        seed=2,
        v2_rate=1.0,
    )
    ingest(pubsub_emulator, cat_v2, project, lake)
    df = pl.read_delta(uri)
    assert df.height == 600
    v1, v2 = df.filter(pl.col("schema_version") == 1), df.filter(pl.col("schema_version") == 2)
    assert v1.height == 300
    assert v2.height == 300
    assert v1.get_column("coupon_code").null_count() == 300  # old rows read as null
    assert v2.get_column("coupon_code").drop_nulls().len() > 0


def test_production_mode_refuses_the_development_key(
    cli, pubsub_emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("TIDEGATE_PII_KEY", raising=False)
    monkeypatch.delenv("TIDEGATE_PII_KEY_FILE", raising=False)
    r = cli("ingest", "--production", "--lake", tmp_path / "lake", "--emulator", pubsub_emulator.address)
    assert r.code == 2
    assert "a PII key is required here (--production" in r.text
    assert not (tmp_path / "lake" / "raw").exists()


def test_ingest_without_an_emulator_says_what_to_do(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tidegate.infra.emulator import free_port

    r = cli("ingest", "--lake", tmp_path / "lake", "--emulator", f"127.0.0.1:{free_port()}")
    assert r.code == 3
    assert "tidegate up" in r.text


def test_lineage_leads_from_a_row_to_its_commit_and_maintain_compacts(
    cli, pubsub_emulator, catalog, registry, project, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    provision(catalog, pubsub_emulator.address, project)
    manifest = tmp_path / "m.jsonl"
    produce(
        pubsub_emulator,
        catalog,
        project,
        manifest,
        types=("shop.order.placed",),
        count=1200,
        invalid_rate=0.05,
    )
    lake = tmp_path / "lake"
    summary = ingest(pubsub_emulator, catalog, project, lake, max_batch=250)
    uri = raw_uri(str(lake), "shop.order.placed")

    r = cli("lineage", "raw/shop.order.placed", "--lake", lake, "--json")
    assert r.code == 0, r.text
    history = json.loads(r.out)["commits"]
    assert len(history) >= 4
    assert {h["tidegate_run_id"] for h in history} == {summary.run_id}

    row = pl.read_delta(uri).filter(pl.col("schema_version") == 2).row(0, named=True)
    r = cli("lineage", "raw/shop.order.placed", "--lake", lake, "--row", row["event_id"], "--json")
    assert r.code == 0, r.text
    info = json.loads(r.out)
    assert info["copies"] == 1
    assert info["row"]["pubsub_message_id"] == row["pubsub_message_id"]
    assert info["commit"]["tidegate_batch_id"] == row["batch_id"]
    assert info["contract_fingerprint"] == registry.get("shop.order.placed", 2).fingerprint

    quarantined = pl.read_delta(quarantine_uri(str(lake))).row(0, named=True)
    r = cli("lineage", "quarantine", "--lake", lake, "--row", quarantined["pubsub_message_id"], "--json")
    assert json.loads(r.out)["row"]["rule"] == quarantined["rule"]

    rows_before = pl.read_delta(uri).height
    files_before = len(DeltaTable(uri).file_uris())
    r = cli("maintain", "--lake", lake, "--retain-hours", "0")
    assert r.code == 0, r.text
    assert len(DeltaTable(uri).file_uris()) < files_before
    assert pl.read_delta(uri).height == rows_before  # compaction never changes rows
    assert verify(str(lake), catalog.event_types, manifest).ok

    r = cli("lineage", "raw/shop.order.shipped", "--lake", lake)
    assert r.code == 2
    assert "unknown table" in r.text


def test_emulator_gone_stops_the_run_clearly_and_quarantines_nothing(
    catalog, registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from tidegate.errors import PlatformError
    from tidegate.infra.emulator import private_emulator, stop_pid

    with private_emulator(tmp_path / "logs") as proc:
        provision(catalog, proc.address)
        produce(proc, catalog, catalog.project, tmp_path / "m.jsonl", count=300, invalid_rate=0.2)
        stop_pid(proc.pid)  # the world goes away before ingestion starts
        config = IngestConfig(str(tmp_path / "lake"), new_run_id(), str(catalog.path), "test", "sha")
        ingest_run = LocalIngest(
            catalog,
            proc.address,
            config,
            LocalOptions(until_idle=0.5, consumer=ConsumerOptions(rpc_timeout=3.0)),
        )
        with pytest.raises(PlatformError, match="failed") as exc:
            ingest_run.run()
        assert "tidegate up" in str(exc.value.hint)
    assert not (tmp_path / "lake" / "quarantine").exists()  # infrastructure errors never quarantine data


def test_follow_runs_until_ctrl_c_and_finishes_the_batch_cleanly(
    pubsub_emulator, project, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import signal
    import time

    cat_file = _crash_catalog(tmp_path, project, pubsub_emulator.port)
    catalog = load_catalog(cat_file)
    provision(catalog, pubsub_emulator.address)
    lake = tmp_path / "lake"
    env = {**os.environ}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidegate.cli",
            "ingest",
            "--follow",
            "--catalog",
            str(cat_file),
            "--lake",
            str(lake),
            "--emulator",
            pubsub_emulator.address,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        manifest = tmp_path / "m.jsonl"
        produce(pubsub_emulator, catalog, project, manifest, count=1000, invalid_rate=0.05)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if verify(str(lake), catalog.event_types, manifest).ok:
                break
            time.sleep(1)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "interrupted (current batch finished)" in " ".join(out.split())
    assert verify(str(lake), catalog.event_types, manifest).ok


def test_every_batch_leaves_its_data_quality_results_in_the_quality_table(
    pubsub_emulator, catalog, project, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from tidegate.lake.tables import quality_uri

    provision(catalog, pubsub_emulator.address, project)
    manifest = tmp_path / "m.jsonl"
    produce(pubsub_emulator, catalog, project, manifest, count=900, invalid_rate=0.2, seed=8)
    lake = tmp_path / "lake"
    summary = ingest(pubsub_emulator, catalog, project, lake, max_batch=300)
    q = pl.read_delta(quality_uri(str(lake)))
    assert set(q.get_column("run_id")) == {summary.run_id}
    assert q.get_column("batch_id").n_unique() == summary.batches
    assert set(q.get_column("event_type")) == set(catalog.event_types)
    assert (q.get_column("element_count") > 0).all()
    failed = q.filter(~pl.col("success"))
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    gx_rejected = sum(r["expect"] == "quarantine" and r["stage"] == "expectations" for r in rows)
    assert failed.get_column("unexpected_count").sum() >= gx_rejected > 0  # every GX rejection is counted
    assert (
        (failed.get_column("unexpected_percent") > 0) & (failed.get_column("unexpected_percent") <= 100)
    ).all()
    assert q.filter(pl.col("success")).get_column("unexpected_count").sum() == 0
    assert q.get_column("suite_fingerprint").null_count() == 0


def test_every_batch_records_its_beam_metrics_and_latency(
    pubsub_emulator, catalog, project, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from tidegate.lake.metrics import metrics_uri

    provision(catalog, pubsub_emulator.address, project)
    produce(
        pubsub_emulator,
        catalog,
        project,
        tmp_path / "m.jsonl",
        count=700,
        invalid_rate=0.1,
        duplicate_rate=0.05,
        seed=9,
    )
    lake = tmp_path / "lake"
    summary = ingest(pubsub_emulator, catalog, project, lake, max_batch=300)
    m = pl.read_delta(metrics_uri(str(lake))).filter(pl.col("run_id") == summary.run_id)
    counters = dict(
        m.filter(pl.col("kind") == "counter").group_by("name").agg(pl.col("value").sum()).iter_rows()
    )
    assert counters["raw_written"] == summary.raw_written
    assert counters["duplicates_skipped"] == summary.duplicates_skipped
    assert counters["quarantined"] == summary.quarantined
    per_rule = sum(v for k, v in counters.items() if k.startswith("quarantined_"))
    assert per_rule == summary.quarantined + summary.quarantine_duplicates  # every rejection, by rule
    assert counters["events_in"] == summary.received
    latency = m.filter(pl.col("name") == "publish_to_commit_s")
    assert latency.height == summary.batches
    assert latency.get_column("count").sum() == summary.received
    assert (latency.get_column("p50") <= latency.get_column("p99")).all()
    assert m.filter(pl.col("name") == "raw_commit_ms").height > 0
