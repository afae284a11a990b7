"""Governance end to end on an emulator-fed lake: retention deletes what is past it and keeps
the books true; erasure removes a data subject from every file and verify still passes."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.test_consumer import ingest, publish_plain, valid_orders
from tests.test_security import lake_text
from tidegate.expectations.contracts import ContractRegistry
from tidegate.infra.pubsub import provision
from tidegate.lake.pii import PiiProtector
from tidegate.lake.tables import QUARANTINE, LakeTables, raw_uri
from tidegate.producer import ProduceConfig, generate

KEY = secrets.token_hex(32)
CUSTOMER = "cus_FORGETME01"
USER = "cus_FORGETU2"


def _at(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _row(
    seq: int, attrs: dict[str, str], body: bytes, mid: str, expect: str, rule: tuple[str, str] | None = None
) -> dict[str, Any]:
    return {
        "seq": seq,
        "ce_id": attrs["ce-id"],
        "type": attrs["ce-type"],
        "kind": "valid" if expect == "raw" else "invalid",
        "event_time": attrs["ce-time"],
        "topic": "",
        "message_id": mid,
        "expect": expect,
        "stage": rule[0] if rule else None,
        "rule": rule[1] if rule else None,
    }


@pytest.mark.emulator
def test_retention_and_erasure_keep_the_books_true_and_leave_no_byte_of_the_subject(
    pubsub_emulator, catalog, project, tmp_path: Path, cli, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TIDEGATE_PII_KEY", KEY)
    provision(catalog, pubsub_emulator.address, project)
    now = datetime.now(UTC)
    orders = valid_orders(catalog, 12, seed=51)
    sent: list[tuple[bytes, dict[str, str]]] = []
    expect: list[tuple[str, tuple[str, str] | None]] = []
    mine: list[str] = []  # the subject's order ids: their data, which must go too
    for i, (body, attrs) in enumerate(orders):
        data = json.loads(body)
        when = now - timedelta(days=450) if i < 3 else now - timedelta(minutes=30 - i)  # 3 past 400d
        if i in (4, 7, 9):
            data["customer_id"] = CUSTOMER
            mine.append(data["order_id"])
        sent.append((json.dumps(data).encode(), {**attrs, "ce-time": _at(when)}))
        expect.append(("raw", None))
    bad = json.loads(orders[5][0])
    bad.update(customer_id=CUSTOMER, item_count="many", order_id="ord_FORGET99")
    sent.append((json.dumps(bad).encode(), {**orders[5][1], "ce-id": "bad-one", "ce-time": _at(now)}))
    expect.append(("quarantine", ("contract", "wrong_type")))
    mine.append("ord_FORGET99")
    ids = publish_plain(pubsub_emulator.address, project, "shop-orders", sent)
    registry = ContractRegistry.from_catalog(catalog)
    views = []
    for i, m in enumerate(
        generate(
            ProduceConfig(types=("shop.page.viewed",), count=6, seed=5, structured_rate=0.0),
            catalog,
            registry,
        )
    ):
        data = json.loads(m.data)
        data.update(
            user_id=USER if i < 3 else f"cus_OTHER{i}X",
            session_id="ses_forgetmesubj" if i < 3 else data["session_id"],
        )
        # the subject's session an hour ago (closed by the others' later views), the others now
        when = now - timedelta(minutes=60 - i) if i < 3 else now - timedelta(seconds=10 - i)
        views.append((json.dumps(data).encode(), {**m.attributes, "ce-time": _at(when)}))
    view_ids = publish_plain(pubsub_emulator.address, project, "shop-pageviews", views)
    manifest = tmp_path / "manifest.jsonl"
    rows = [
        _row(i, a, b, mid, e, r)
        for i, ((b, a), mid, (e, r)) in enumerate(zip(sent, ids, expect, strict=True))
    ]
    rows += [
        _row(100 + i, a, b, mid, "raw") for i, ((b, a), mid) in enumerate(zip(views, view_ids, strict=True))
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    lake = tmp_path / "lake"
    summary = ingest(pubsub_emulator.address, catalog, project, lake)
    assert summary.received == len(sent) + len(views)
    # sessions close when the watermark passes them; rebuild from raw now (a replay) so the
    # subject's session is there to be erased
    replayed = cli("replay", "sessions_per_user", "--lake", lake)
    assert replayed.code == 0, replayed.text
    sessions = pl.read_delta(str(lake / "aggregates" / "sessions_per_user"))
    assert USER in sessions.get_column("user_id").to_list()

    # retention: the three orders 450 days old are past the stream's 400 days
    maintained = cli("maintain", "--lake", lake, "--actor", "dpo@shop.example.com")
    assert maintained.code == 0, maintained.text
    raw = pl.read_delta(raw_uri(str(lake), "shop.order.placed"))
    assert raw.height == 9
    verified = cli("verify", "--lake", lake, "--manifest", manifest, "--json")
    assert verified.code == 0, verified.out
    checks = {c["name"]: c for c in json.loads(verified.out)["checks"]}
    assert (
        "3 since deleted by retention"
        in checks["manifest: every message landed where expected, exactly once"]["detail"]
    )

    # erasure: the customer's orders (raw and quarantine) and the user's page views and sessions
    for subject in (CUSTOMER, USER):
        r = cli("forget", subject, "--lake", lake, "--actor", "dpo@shop.example.com")
        assert r.code == 0, r.text
    raw = pl.read_delta(raw_uri(str(lake), "shop.order.placed"))
    assert CUSTOMER not in raw.get_column("customer_id").to_list()
    assert raw.height == 6
    assert pl.read_delta(QUARANTINE.uri(str(lake))).filter(pl.col("event_id") == "bad-one").height == 0
    sessions = pl.read_delta(str(lake / "aggregates" / "sessions_per_user"))
    assert USER not in sessions.get_column("user_id").to_list()
    verified = cli("verify", "--lake", lake, "--manifest", manifest, "--json")
    assert verified.code == 0, verified.out  # ledger, parity of every aggregate, the manifest
    detail = {c["name"]: c for c in json.loads(verified.out)["checks"]}[
        "manifest: every message landed where expected, exactly once"
    ]["detail"]
    assert "since erased" in detail

    audit = json.loads(cli("audit", "--lake", lake, "--json").out)
    actions = sorted({(a["action"], a["table"]) for a in audit})
    assert ("expire", "raw/shop.order.placed") in actions
    assert ("erase", "raw/shop.order.placed") in actions
    assert ("erase", "quarantine") in actions
    assert ("erase", "raw/shop.page.viewed") in actions
    assert all(a["actor"] == "dpo@shop.example.com" for a in audit)

    # no byte of either subject, or of the customer's orders, in any file of the lake
    protector = PiiProtector(KEY.encode())
    text = lake_text(lake)
    for value in (CUSTOMER, USER, "ses_forgetmesubj", *mine):
        assert value not in text, value
    email = json.loads(sent[4][0])["customer_email"]
    assert (protector.token(email, "email") or "") not in text


def test_the_quarantine_expires_after_its_retention_and_each_deletion_is_audited(
    catalog, registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Function level, with the clock moved: 31 days later the quarantine's rows are past its
    30-day retention; raw (400 days) keeps everything; one audit row says what went."""
    from tests.test_batch import orders
    from tidegate.lake.governance import audit_rows, expire, retention_cutoffs
    from tidegate.pipelines.local.batch import BatchRunner
    from tidegate.transforms.base import IngestConfig

    lake = tmp_path / "lake"
    good = orders(catalog, registry, 4)
    broken = [
        type(m)(b"{", m.attributes, f"bad-{i}", m.publish_time, m.subscription)
        for i, m in enumerate(good[:2])
    ]
    BatchRunner(IngestConfig(str(lake), "r", str(catalog.path), "t", "t"), single_writer=True).run(
        "b1", [*good, *broken]
    )
    tables = LakeTables(str(lake), catalog)
    assert expire(tables, run_id="m1", actor="test") == []  # nothing is past anything today
    later = datetime.now(UTC) + timedelta(days=31)
    done = expire(tables, run_id="m2", actor="test", now=later)
    assert [(d["table"], d["rows"]) for d in done] == [("quarantine", 2)]
    assert pl.read_delta(raw_uri(str(lake), "shop.order.placed")).height == 4
    audit = audit_rows(str(lake))
    assert audit.select("action", "table", "rows", "actor").rows() == [("expire", "quarantine", 2, "test")]
    assert "quarantine_date <" in audit.get_column("predicate")[0]
    assert retention_cutoffs(str(lake))["quarantine"] > datetime.now(UTC)
    from deltalake import DeltaTable

    commit = DeltaTable(QUARANTINE.uri(str(lake))).history(1)[0]
    assert commit["tidegate_operation"] == "expire"
    assert "retention 30d" in commit["tidegate_reason"]
    # the deleted rows can be restored from the files the audit names, long after the commit
    # log's window (docs/operations.md, "Restore deleted rows")
    files = audit.get_column("removed_files")[0].to_list()
    assert files
    assert all(Path(f.removeprefix("file://")).exists() for f in files)
    removed = pl.scan_parquet(files, hive_partitioning=True).collect()
    assert sorted(removed.get_column("pubsub_message_id")) == ["bad-0", "bad-1"]
    # the runbook's restore, as written there
    from deltalake import CommitProperties, write_deltalake

    from tidegate.lake.read import Lake

    reader = Lake(str(lake))
    table, key = "quarantine", ["subscription", "pubsub_message_id"]
    deletion = audit_rows(reader.root, reader.storage_options).filter(pl.col("table") == table)[-1]
    files = deletion.get_column("removed_files")[0].to_list()
    removed_lf = pl.scan_parquet(files, hive_partitioning=True, storage_options=reader.storage_options)
    current = reader.scan(table).collect_schema()
    lost = (
        removed_lf.join(reader.scan(table).select(key), on=key, how="anti")
        .select([pl.col(c).cast(t) for c, t in current.items()])
        .collect()
    )
    write_deltalake(
        reader.uri(table),
        lost.to_arrow(),
        mode="append",
        storage_options=reader.storage_options,
        commit_properties=CommitProperties(custom_metadata={"tidegate_operation": "restore"}),
    )
    back = pl.read_delta(QUARANTINE.uri(str(lake)))
    assert sorted(back.get_column("pubsub_message_id")) == ["bad-0", "bad-1"]
    assert (
        back.drop("quarantine_date")
        .sort("pubsub_message_id")
        .equals(removed.select(back.columns).drop("quarantine_date").sort("pubsub_message_id"))
    )
