"""Every table operation against a `gs://` lake on a real (emulated) object store.

The lake lives in fake-gcs-server behind tidegate's fixing proxy (tidegate.infra.gcs_emulator),
reached the way a deployment reaches GCS: a `gs://` URI plus $TIDEGATE_STORAGE_OPTIONS. One
ingest (the real `tidegate ingest` in local mode from a private Pub/Sub emulator) fills one lake
for the module; verify, replay, maintain, status, the read API and the quickstart notebook then
run against it. A gs:// lake is production by definition (tidegate.lake.pii.is_remote_lake), so
the module gives the run a strong PII key, as a deployment must.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import secrets
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from tests.conftest import CliResult
from tests.test_notebook import NOTEBOOK, ROOT, _jupyter_execute, _user_env
from tidegate.catalog import Catalog
from tidegate.errors import PlatformError
from tidegate.expectations.contracts import ContractRegistry
from tidegate.infra.emulator import EmulatorProcess
from tidegate.infra.gcs_emulator import BINARY_ENV, GcsEmulator, private_gcs_emulator
from tidegate.infra.pubsub import provision
from tidegate.lake.read import Lake
from tidegate.lake.tables import quarantine_uri, raw_uri
from tidegate.lake.verify import verify
from tidegate.producer import ProduceConfig, generate, publish

pytestmark = pytest.mark.gcs
COUNT = 1200


def run_cli(*args: str | Path) -> CliResult:
    """The real console-script entry point in-process (the `cli` fixture, usable at module scope)."""
    from tidegate.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with (
        pytest.MonkeyPatch.context() as mp,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        mp.setattr(sys, "argv", ["tidegate", *map(str, args)])
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


@dataclass(frozen=True)
class IngestedLake:
    root: str
    storage_options: dict[str, str]
    manifest: Path
    ingest: CliResult


@pytest.fixture(scope="module")
def gs_env(gcs_emulator: GcsEmulator) -> Iterator[None]:
    """What a deployment sets for a gs:// lake: its storage options and a production PII key."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIDEGATE_STORAGE_OPTIONS", gcs_emulator.storage_options_json)
        mp.setenv("TIDEGATE_PII_KEY", secrets.token_hex(32))
        yield


@pytest.fixture(scope="module")
def lake(
    gs_env: None,
    gcs_emulator: GcsEmulator,
    pubsub_emulator: EmulatorProcess,
    catalog: Catalog,
    tmp_path_factory: pytest.TempPathFactory,
) -> IngestedLake:
    project = f"tg-gcs-{secrets.token_hex(3)}"
    provision(catalog, pubsub_emulator.address, project)
    manifest = tmp_path_factory.mktemp("gcs") / "manifest.jsonl"
    config = ProduceConfig(  # the demo's messy mix: some late events, so aggregates/_late exists
        types=tuple(catalog.event_types),
        count=COUNT,
        seed=18,
        duplicate_rate=0.01,
        invalid_rate=0.05,
        out_of_order_rate=0.05,
        late_rate=0.02,
    )
    registry = ContractRegistry.from_catalog(catalog)
    report = publish(
        generate(config, catalog, registry), project, pubsub_emulator.address, COUNT, manifest=manifest
    )
    assert report.failed == 0
    root = gcs_emulator.uri(f"lake-{secrets.token_hex(4)}")
    result = run_cli(
        "ingest",
        "--lake",
        root,
        "--emulator",
        pubsub_emulator.address,
        "--project",
        project,
        "--until-idle",
        "0.5",
        "--max-batch",
        "300",  # several batches: later ones see the watermark earlier ones set
    )
    assert result.code == 0, result.text
    return IngestedLake(root, gcs_emulator.storage_options, manifest, result)


@pytest.mark.emulator
def test_ingest_lands_raw_and_quarantine_in_the_object_store(lake: IngestedLake, catalog: Catalog) -> None:
    """No lake lock on an object store, so local ingest commits as a lake with many writers does:
    insert-only MERGEs on the event key (lake.writer.insert_new), never the single writer's
    in-memory key index and plain appends."""
    rows = [json.loads(x) for x in lake.manifest.read_text().splitlines()]
    opts = lake.storage_options
    quarantined = pl.read_delta(quarantine_uri(lake.root), storage_options=opts)
    assert quarantined.height == sum(r["expect"] == "quarantine" for r in rows)
    landed = 0
    for event_type in catalog.event_types:
        table = DeltaTable(raw_uri(lake.root, event_type), storage_options=opts)
        landed += table.to_pyarrow_table(columns=["event_id"]).num_rows
        operations = [h["operation"] for h in table.history()]
        assert operations.count("WRITE") == 1  # the first batch creates the table
        assert set(operations) == {"WRITE", "MERGE"}
    assert landed == len({(r["type"], r["ce_id"]) for r in rows if r["expect"] == "raw"})
    assert "duplicates skipped" in lake.ingest.text


@pytest.mark.emulator
def test_verify_reconciles_the_gs_lake(lake: IngestedLake) -> None:
    r = run_cli("verify", "--lake", lake.root, "--manifest", lake.manifest, "--json")
    assert r.code == 0, r.text
    assert json.loads(r.out)["ok"] is True


@pytest.mark.emulator
def test_the_read_api_reads_raw_aggregates_views_and_travels_in_time(lake: IngestedLake) -> None:
    reader = Lake(lake.root, lake.storage_options)
    assert reader.has_tables()
    names = reader.table_names()
    assert {"raw/shop.order.placed", "quarantine", "_ledger", "aggregates/revenue_per_currency_1m"} <= set(
        names
    )

    orders = reader.raw("shop.order.placed").collect()
    assert orders.height > 0
    assert orders.get_column("customer_email").str.starts_with("pii_").all()
    revenue = reader.aggregate("revenue_per_currency_1m").collect()
    late = reader.late().filter(pl.col("aggregate") == "revenue_per_currency_1m").collect()
    assert revenue.get_column("orders").sum() + late.height == orders.height
    assert reader.view("order_state").collect().height > 0

    versions = [int(h["version"]) for h in reader.delta("raw/shop.order.placed").history()]
    assert max(versions) >= 1  # several batches: something to travel back to
    first = reader.raw("shop.order.placed", version=0).collect()
    assert 0 < first.height < orders.height

    run_id = reader.ledger().select("run_id").collect().get_column("run_id")[0]
    cut = reader.cut(run_id=run_id)
    assert cut.consistent
    assert cut.raw("shop.order.placed").select(pl.len()).collect().item() == orders.height

    info = reader.event_lineage("shop.order.placed", orders.get_column("event_id")[0])
    assert info["pubsub_message_id"]
    assert info["run_id"] == run_id


@pytest.mark.emulator
def test_the_quickstart_notebook_reads_the_gs_lake(lake: IngestedLake, tmp_path: Path) -> None:
    """TIDEGATE_LAKE=gs://... plus TIDEGATE_STORAGE_OPTIONS, as the notebook's first cell says."""
    out = tmp_path / "executed.ipynb"
    env = _user_env(TIDEGATE_LAKE=lake.root, TIDEGATE_STORAGE_OPTIONS=json.dumps(lake.storage_options))
    r = _jupyter_execute(NOTEBOOK.relative_to(ROOT), out, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    texts = "".join(o.get("text", "") for o in outputs)
    assert f"reading the lake at {lake.root}\n" in texts
    assert "consistent" in texts
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2


@pytest.mark.emulator
def test_replay_rebuilds_an_aggregate_and_a_view_in_place(lake: IngestedLake) -> None:
    reader = Lake(lake.root, lake.storage_options)
    keys = ["window_start", "currency", "orders", "revenue"]
    before = reader.aggregate("revenue_per_currency_1m").select(keys).collect().sort(keys)
    version = reader.delta("aggregates/revenue_per_currency_1m").version()
    r = run_cli("replay", "revenue_per_currency_1m", "--lake", lake.root)
    assert r.code == 0, r.text
    assert reader.delta("aggregates/revenue_per_currency_1m").version() > version
    assert reader.aggregate("revenue_per_currency_1m").select(keys).collect().sort(keys).equals(before)

    states = reader.view("order_state").select(pl.len()).collect().item()
    r = run_cli("replay", "order_state", "--lake", lake.root)
    assert r.code == 0, r.text
    assert reader.view("order_state").select(pl.len()).collect().item() == states


@pytest.mark.emulator
def test_status_reports_every_table_of_the_gs_lake(lake: IngestedLake) -> None:
    r = run_cli("status", "--lake", lake.root, "--backlog", "off", "--json")
    assert r.code == 0, r.text
    report = json.loads(r.out)
    tables = {t["table"]: t for t in report["tables"]}
    assert tables["raw/shop.order.placed"]["rows"] > 0
    assert tables["quarantine"]["rows"] > 0


@pytest.mark.emulator
def test_maintain_compacts_and_vacuums_in_the_object_store(
    lake: IngestedLake, catalog: Catalog, gcs_emulator: GcsEmulator
) -> None:
    """Last in the module: it vacuums with no retention, so time travel to old versions ends."""
    uri = raw_uri(lake.root, "shop.order.placed")
    table = DeltaTable(uri, storage_options=lake.storage_options)
    files_before = set(table.file_uris())
    rows_before = pl.read_delta(uri, storage_options=lake.storage_options).height
    partitions = {f.rsplit("/", 1)[0] for f in files_before}  # event_date=...: two near midnight
    assert len(files_before) > len(partitions)
    r = run_cli("maintain", "--lake", lake.root, "--retain-hours", "0")
    assert r.code == 0, r.text
    files_after = set(DeltaTable(uri, storage_options=lake.storage_options).file_uris())
    assert sorted(f.rsplit("/", 1)[0] for f in files_after) == sorted(partitions)  # one file each
    assert pl.read_delta(uri, storage_options=lake.storage_options).height == rows_before
    assert not any(gcs_emulator.exists(f) for f in files_before - files_after)  # DELETEd for real
    assert all(gcs_emulator.exists(f) for f in files_after)
    # raw and quarantine only: with --retain-hours 0 the raw version an aggregate incorporates
    # was vacuumed, and verify's parity check reads it (the same on a local lake)
    report = verify(lake.root, catalog.event_types, lake.manifest, lake.storage_options)
    assert report.ok, report.problems[:10]


def test_a_commit_file_is_never_overwritten(gcs_emulator: GcsEmulator, gs_prefix: str) -> None:
    """The raw request delta-rs sends for a commit, straight at the proxy: created once, then 412."""
    bucket, _, prefix = gs_prefix.removeprefix("gs://").partition("/")
    key = urllib.parse.quote(f"{prefix}/_delta_log/00000000000000000000.json", safe="")
    port = urllib.parse.urlsplit(gcs_emulator.base_url).port
    answers = []
    for body in (b"first", b"second"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("PUT", f"/{bucket}/{key}", body=body, headers={"x-goog-if-generation-match": "0"})
        resp = conn.getresponse()
        answers.append((resp.status, resp.read()))
        conn.close()
    assert answers[0][0] == 200
    assert answers[1][0] == 412
    assert b"<Code>PreconditionFailed</Code>" in answers[1][1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", f"/{bucket}/{key}")
    assert conn.getresponse().read() == b"first"
    conn.close()


def test_racing_writers_lose_versions_cleanly_and_land_every_row_once() -> None:
    """Writers racing for the same version on an emulator with a 5 ms round trip (so they do race):
    the losers get 412 from the proxy, delta-rs checks for conflicts and retries at the next
    version, and every append lands exactly once under a version of its own. (delta-rs reads the
    latest version before its first attempt, so only a true race reaches the 412.)"""
    writers, appends = 3, 4
    with private_gcs_emulator("race", latency_ms=5) as gcs:
        opts, uri = gcs.storage_options, gcs.uri("table")
        write_deltalake(uri, pa.table({"writer": [-1], "i": [-1]}), storage_options=opts)
        errors: list[BaseException] = []

        def append(writer: int) -> None:
            for i in range(appends):
                try:
                    write_deltalake(
                        uri, pa.table({"writer": [writer], "i": [i]}), storage_options=opts, mode="append"
                    )
                except Exception as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=append, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        table = DeltaTable(uri, storage_options=opts)
        rows = pl.from_arrow(table.to_pyarrow_table())
        assert isinstance(rows, pl.DataFrame)
        assert rows.height == 1 + writers * appends
        assert rows.unique().height == rows.height  # every row exactly once
        assert sorted(int(h["version"]) for h in table.history()) == list(range(writers * appends + 1))
        assert gcs.stats().precondition_failed > 0  # they did race for versions, and lost cleanly


def test_a_missing_binary_says_to_sync(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(BINARY_ENV, str(tmp_path / "fake-gcs-server"))
    with pytest.raises(PlatformError) as exc, private_gcs_emulator():
        pass
    assert "uv sync" in (exc.value.hint or "")
