"""Ownership (issue 16): every stream's owner in the catalog shows in `tidegate status` (raw
tables; aggregates by their source stream), in `tidegate lineage` (the table's owner, or a
quarantined row's event type's) and in OpenLineage's ownership facet on the datasets tidegate
emits; the tables every stream shares have no owner of their own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.test_ingest import ingest, produce
from tidegate.catalog import Catalog
from tidegate.infra.pubsub import provision
from tidegate.lake.lineage import owner_json, row_owner, table_owner
from tidegate.lake.openlineage import LineageEmitter, OutputTable, subscription_dataset
from tidegate.lake.tables import LakeTables, aggregate_uri, quarantine_uri, raw_uri

CHECKOUT = {"team": "checkout", "contact": "checkout-team@shop.example.com"}
PAYMENTS = {"team": "payments", "contact": "payments-oncall@shop.example.com"}
WEB = {"team": "web-analytics", "contact": "web-analytics@shop.example.com"}
OWNERS = {"shop.order.placed": CHECKOUT, "shop.payment.captured": PAYMENTS, "shop.page.viewed": WEB}


def expected_owner(catalog: Catalog, table: str) -> dict[str, str] | None:
    """What the catalog says, written out independently of tidegate.lake.lineage."""
    if table.startswith("raw/"):
        return OWNERS[table.removeprefix("raw/")]
    if table.startswith("aggregates/") and table != "aggregates/_late":
        return OWNERS[catalog.aggregate(table.removeprefix("aggregates/")).source]
    return None


def ownership(dataset: dict[str, Any]) -> list[dict[str, Any]] | None:
    facet = dataset.get("facets", {}).get("ownership")
    return None if facet is None else facet["owners"]


def team_and_contact(owner: dict[str, str]) -> list[dict[str, str]]:
    return [
        {"name": f"team:{owner['team']}", "type": "MAINTAINER"},
        {"name": f"mailto:{owner['contact']}", "type": "CONTACT"},
    ]


def without_payments_owner(catalog: Catalog) -> Catalog:
    streams = [
        s.model_copy(update={"owner": None}) if s.event_type == "shop.payment.captured" else s
        for s in catalog.streams
    ]
    return catalog.model_copy(update={"streams": streams})


# -- no emulator ---------------------------------------------------------------------------------


def test_each_table_is_owned_by_its_stream_and_an_aggregate_by_its_source(catalog: Catalog) -> None:
    tables = LakeTables("/lake", catalog)
    for spec in tables.specs():
        assert owner_json(table_owner(catalog, spec)) == expected_owner(catalog, spec.name), spec.name
    # the catalog's aggregates: two on page views (web-analytics), one on orders (checkout)
    assert owner_json(table_owner(catalog, tables.resolve("sessions_per_user"))) == WEB
    assert owner_json(table_owner(catalog, tables.resolve("revenue_per_currency_1m"))) == CHECKOUT
    # a shared table has none; one of its rows belongs to its event type's owner
    quarantine = tables.resolve("quarantine")
    assert table_owner(catalog, quarantine) is None
    assert owner_json(row_owner(catalog, quarantine, {"event_type": "shop.payment.captured"})) == PAYMENTS
    assert row_owner(catalog, quarantine, {"event_type": None}) is None
    assert row_owner(catalog, quarantine, {"event_type": "shop.order.shipped"}) is None  # not in the catalog
    # a stream that declares no owner: its tables have none
    bare = without_payments_owner(catalog)
    assert table_owner(bare, LakeTables("/lake", bare).resolve("shop.payment.captured")) is None


def test_openlineage_datasets_carry_the_owner_of_the_catalog_given(catalog: Catalog, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    bare = without_payments_owner(catalog)
    emitter = LineageEmitter(lake, catalog=bare)
    subs = {s.event_type: s.subscription for s in catalog.streams}
    emitter.emit(
        "COMPLETE",
        "ingest.batch",
        "run-x-000001",
        inputs=[
            subscription_dataset("any-project", subs["shop.order.placed"]),
            subscription_dataset("any-project", subs["shop.payment.captured"]),
            subscription_dataset("any-project", catalog.dead_letter.subscription),
        ],
        outputs=[
            OutputTable(raw_uri(lake, "shop.order.placed"), 1, 10),
            OutputTable(raw_uri(lake, "shop.payment.captured"), 1, 10),
            OutputTable(aggregate_uri(lake, "page_views_per_url_5m"), 1, 3),
            OutputTable(quarantine_uri(lake), 1, 2),
        ],
    )
    (event,) = [json.loads(x) for x in (tmp_path / "lake" / "_openlineage" / "events.jsonl").open()]
    assert [ownership(i) for i in event["inputs"]] == [team_and_contact(CHECKOUT), None, None]
    assert [ownership(o) for o in event["outputs"]] == [
        team_and_contact(CHECKOUT),
        None,  # this catalog's payments stream declares no owner
        team_and_contact(WEB),
        None,  # the quarantine is every stream's
    ]
    schema = event["outputs"][0]["facets"]["ownership"]["_schemaURL"]
    assert "OwnershipDatasetFacet" in schema


# -- a real lake ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def owned_lake(pubsub_emulator, tmp_path_factory):  # type: ignore[no-untyped-def]
    from tidegate.catalog import load_catalog
    from tidegate.pipelines.replay import replay

    catalog = load_catalog()
    project = "tg-ownership"
    provision(catalog, pubsub_emulator.address, project)
    tmp = tmp_path_factory.mktemp("ownership")
    lake = tmp / "lake"
    produce(pubsub_emulator, catalog, project, tmp / "m.jsonl", count=400, seed=16, invalid_rate=0.1)
    summary = ingest(pubsub_emulator, catalog, project, lake)
    replay(
        catalog, str(lake), "revenue_per_currency_1m", run_id="replay-own-1", code_version="0", git_sha="x"
    )
    return catalog, lake, project, summary


@pytest.mark.emulator
def test_status_names_the_owner_of_every_table(owned_lake, pubsub_emulator, cli) -> None:  # type: ignore[no-untyped-def]
    catalog, lake, project, _ = owned_lake
    where = ("--lake", lake, "--emulator", pubsub_emulator.address, "--project", project, "--backlog", "off")
    r = cli("status", "--json", *where)
    assert r.code == 0, r.text
    tables = {t["table"]: t for t in json.loads(r.out)["tables"]}
    assert {f"raw/{t}" for t in catalog.event_types} | {"quarantine", "_ledger"} <= set(tables)
    for name, t in tables.items():
        assert t["owner"] == expected_owner(catalog, name), name
    assert tables["aggregates/revenue_per_currency_1m"]["owner"] == CHECKOUT
    assert tables["aggregates/sessions_per_user"]["owner"] == WEB
    human = cli("status", *where)
    assert human.code == 0, human.text
    assert "payments" in human.out  # the team; the contact is in --json and lineage
    assert "web-analytics" in human.out
    assert "owner" in human.out


@pytest.mark.emulator
def test_lineage_starts_with_the_owner(owned_lake, cli) -> None:  # type: ignore[no-untyped-def]
    _, lake, _, summary = owned_lake
    r = cli("lineage", "shop.page.viewed", "--lake", lake, "--json")
    assert r.code == 0, r.text
    info = json.loads(r.out)
    assert list(info)[:2] == ["table", "owner"]
    assert info["table"] == "raw/shop.page.viewed"
    assert info["owner"] == WEB
    assert {c["tidegate_run_id"] for c in info["commits"]} == {summary.run_id}

    r = cli("lineage", "aggregates/revenue_per_currency_1m", "--lake", lake, "--json")
    assert json.loads(r.out)["owner"] == CHECKOUT  # its source stream's
    r = cli("lineage", "_ledger", "--lake", lake, "--json")
    assert json.loads(r.out)["owner"] is None

    row = pl.read_delta(raw_uri(str(lake), "shop.payment.captured")).row(0, named=True)
    args = ("--row", row["event_id"], "--source", row["event_source"])
    r = cli("lineage", "raw/shop.payment.captured", *args, "--lake", lake, "--json")
    assert r.code == 0, r.text
    info = json.loads(r.out)
    assert info["owner"] == PAYMENTS
    assert info["row"]["event_id"] == row["event_id"]

    # a quarantined message belongs to its event type's owner
    q = (
        pl.read_delta(quarantine_uri(str(lake)))
        .filter(pl.col("event_type") == "shop.order.placed")
        .row(0, named=True)
    )
    r = cli("lineage", "quarantine", "--row", q["pubsub_message_id"], "--lake", lake, "--json")
    assert r.code == 0, r.text
    assert json.loads(r.out)["owner"] == CHECKOUT

    human = cli("lineage", "raw/shop.order.placed", "--lake", lake)
    assert human.code == 0, human.text
    assert human.out.lstrip().startswith("owner: checkout (checkout-team@shop.example.com)")


@pytest.mark.emulator
def test_emitted_openlineage_events_carry_the_ownership_facet(owned_lake) -> None:  # type: ignore[no-untyped-def]
    catalog, lake, project, _ = owned_lake
    events = [json.loads(x) for x in (lake / "_openlineage" / "events.jsonl").read_text().splitlines()]
    by_sub = {s.subscription: OWNERS[s.event_type] for s in catalog.streams}
    prefix = str(lake.absolute())
    seen_outputs: set[str] = set()
    for e in events:
        for i in e["inputs"]:
            if i["namespace"] == "pubsub":
                sub = i["name"].removeprefix(f"subscription:{project}:")
                want = by_sub.get(sub)  # the dead-letter subscription has no owner
            else:  # a replay reads its aggregate's raw table
                want = expected_owner(catalog, i["name"].removeprefix(prefix + "/"))
            assert ownership(i) == (team_and_contact(want) if want else None), i["name"]
        for o in e["outputs"]:
            table = o["name"].removeprefix(prefix + "/")
            want = expected_owner(catalog, table)
            assert ownership(o) == (team_and_contact(want) if want else None), table
            seen_outputs.add(table)
    # the facet was checked on real outputs: every raw table, the quarantine and the replayed aggregate
    assert {f"raw/{t}" for t in catalog.event_types} | {"quarantine"} <= seen_outputs
    assert "aggregates/revenue_per_currency_1m" in seen_outputs
