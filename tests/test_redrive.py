"""Redrive (tidegate quarantine redrive) on real Delta tables with real GX suites: a suite that
was too strict quarantines good orders; after the fix, a redrive lands exactly those once, keeps
the ledger balanced, records what it did in `_redrives`, and a second redrive takes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from tests.test_batch import orders
from tidegate.catalog import Catalog, load_catalog
from tidegate.lake.read import Lake
from tidegate.lake.tables import LEDGER, QUARANTINE, REDRIVES, raw_uri
from tidegate.lake.verify import verify
from tidegate.pipelines.local.batch import BatchRunner
from tidegate.transforms.base import IngestConfig
from tidegate.transforms.ledger import ChunkReceived, ledger_row, write_ledger

SHIPPED = Path(__file__).resolve().parent.parent / "tidegate" / "infra" / "catalog.yaml"
CONTRACTS = SHIPPED.parent.parent / "expectations" / "contracts"


def catalog_copy(where: Path, currencies: list[str] | None = None) -> Catalog:
    """The shipped catalog and contracts under `where`; `currencies` narrows the orders suite."""
    shutil.copytree(CONTRACTS, where / "contracts")
    if currencies is not None:
        suite_path = where / "contracts" / "shop.order.placed" / "suite.json"
        suite = json.loads(suite_path.read_text())
        for e in suite["expectations"]:
            if e["kwargs"].get("column") == "currency" and e["type"] == "expect_column_values_to_be_in_set":
                e["kwargs"]["value_set"] = currencies
        suite_path.write_text(json.dumps(suite))
    text = SHIPPED.read_text().replace("contracts: ../expectations/contracts", "contracts: contracts")
    (where / "catalog.yaml").write_text(text)
    return load_catalog(where / "catalog.yaml")


def ingest_batch(catalog: Catalog, lake: Path, messages: list[Any]) -> None:
    """One local batch and its ledger row, as the driver writes them."""
    config = IngestConfig(str(lake), "run-strict", str(catalog.path), "t", "t")
    run = BatchRunner(config, single_writer=True).run("run-strict-b1", messages)
    received = ChunkReceived("run-strict-b1", len(messages), ("shop-orders-tidegate",), run_started(), "")
    write_ledger(
        config, [ledger_row("run-strict-b1", "run-strict", [received, *run.commits])], insert_only=False
    )


def run_started():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_after_a_suite_fix_a_redrive_lands_what_was_wrongly_quarantined_once(
    tmp_path: Path, registry
) -> None:  # type: ignore[no-untyped-def]
    from tidegate.pipelines.redrive import redrive

    strict = catalog_copy(tmp_path / "strict", currencies=["EUR"])
    fixed = catalog_copy(tmp_path / "fixed")
    lake = tmp_path / "lake"
    messages = orders(fixed, registry, 40)
    ingest_batch(strict, lake, messages)

    quarantine = pl.read_delta(QUARANTINE.uri(str(lake)))
    wrongly = quarantine.filter(pl.col("rule") == "expect_column_values_to_be_in_set")
    raw_before = pl.read_delta(raw_uri(str(lake), "shop.order.placed")).height
    assert wrongly.height > 0
    assert raw_before + quarantine.height == len(messages)

    first = redrive(fixed, str(lake), rule="expect_column_values_to_be_in_set")
    assert first.taken == wrongly.height
    assert sorted(first.landed) == sorted(wrongly.get_column("pubsub_message_id"))
    assert first.rejected_again == []
    assert first.not_kept == []

    raw = pl.read_delta(raw_uri(str(lake), "shop.order.placed"))
    assert raw.height == len(messages) - (quarantine.height - wrongly.height)
    assert raw.get_column("event_id").n_unique() == raw.height
    redriven = raw.filter(pl.col("run_id") == first.run_id)
    assert sorted(redriven.get_column("pubsub_message_id")) == sorted(
        first.landed
    )  # lineage to the quarantine row
    assert pl.read_delta(QUARANTINE.uri(str(lake))).height == quarantine.height  # never deleted

    ledger = pl.read_delta(LEDGER.uri(str(lake)))
    row = ledger.filter(pl.col("run_id") == first.run_id).row(0, named=True)
    assert (row["received"], row["raw_written"]) == (wrongly.height, wrongly.height)
    records = Lake(str(lake), catalog=fixed).scan("_redrives").collect()
    assert set(records.get_column("outcome")) == {"landed"}
    assert set(records.get_column("rule_before")) == {"expect_column_values_to_be_in_set"}
    report = verify(str(lake), fixed.event_types)
    assert report.ok, report.failures

    again = redrive(fixed, str(lake), rule="expect_column_values_to_be_in_set")
    assert again.taken == 0  # already landed: not taken twice
    assert pl.read_delta(REDRIVES.uri(str(lake))).height == wrongly.height


def test_a_message_that_still_fails_stays_quarantined_and_the_ledger_balances(
    tmp_path: Path, registry
) -> None:  # type: ignore[no-untyped-def]
    from tidegate.pipelines.redrive import redrive

    strict = catalog_copy(tmp_path / "strict", currencies=["EUR"])
    lake = tmp_path / "lake"
    messages = orders(strict, registry, 20)
    ingest_batch(strict, lake, messages)
    ids = pl.read_delta(QUARANTINE.uri(str(lake))).get_column("pubsub_message_id").to_list()[:2]
    result = redrive(strict, str(lake), message_ids=ids)  # nothing fixed: they fail again
    assert sorted(result.rejected_again) == sorted(ids)
    row = pl.read_delta(LEDGER.uri(str(lake))).filter(pl.col("run_id") == result.run_id).row(0, named=True)
    assert (row["received"], row["raw_written"], row["quarantine_duplicates"]) == (2, 0, 2)
    assert verify(str(lake), strict.event_types).ok


def test_redrive_without_a_selection_says_what_to_pass(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("quarantine", "redrive", "--lake", tmp_path / "lake")
    assert r.code == 2
    assert "--rule" in r.text
    assert "bug" not in r.text
