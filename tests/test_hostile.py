"""Hostile but legal-ish messages never stop ingestion: each one is quarantined alone, with a
precise rule where the case is known and `unexpected_error` (naming only the exception type)
where it is not, and the valid messages of its batch still land in the raw table.

Real messages through the real stages (decode_stage, contract_stage, expectations_stage with
the shipped GX suites), real rows (raw_rows, quarantine_rows) written with insert_new into
Delta tables in tmp_path. No emulator, no mocks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.conftest import CONTRACTS_DIR
from tests.test_contracts import ORDER
from tidegate.catalog import load_catalog
from tidegate.expectations.checks import (
    Rejection,
    ValidEvent,
    contract_stage,
    decode_stage,
    expectations_stage,
)
from tidegate.expectations.contracts import dataschema_uri
from tidegate.expectations.envelope import (
    MAX_JSON_DEPTH,
    Envelope,
    RawMessage,
    decode_envelope,
    to_binary,
    to_structured,
)
from tidegate.lake.pii import PiiPolicy, PiiProtector, pii_policies
from tidegate.lake.rows import QUARANTINE_MAX_ORIGINAL_BYTES, quarantine_rows, raw_rows
from tidegate.lake.tables import raw_schema
from tidegate.lake.writer import insert_new

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
PROTECTOR = PiiProtector(b"k" * 40)


def POLICIES(registry):  # type: ignore[no-untyped-def]
    """Every shipped type's PII policy (the catalog's pii settings and the contracts' marks)."""
    from tidegate.catalog import load_catalog

    return pii_policies(load_catalog(), registry)


ORDER_TYPE = "shop.order.placed"
ORDER_JSON = json.dumps(ORDER)


def attributes(seq: int, event_type: str = ORDER_TYPE, **override: str) -> dict[str, str]:
    return {
        "id": f"evt-{seq}",
        "source": "//shop.example.com/checkout",
        "type": event_type,
        "specversion": "1.0",
        "time": "2026-11-26T10:15:00Z",
        "dataschema": dataschema_uri(event_type, 1),
        **override,
    }


SUBSCRIPTIONS = {  # the shipped catalog: each type arrives on its own topic's subscription
    ORDER_TYPE: "shop-orders-tidegate",
    "shop.page.viewed": "shop-pageviews-tidegate",
    "shop.payment.captured": "shop-payments-tidegate",
}


def message(seq: int, body: bytes, event_type: str = ORDER_TYPE, **override: str) -> RawMessage:
    data, attrs = to_binary(attributes(seq, event_type, **override), body)
    subscription = SUBSCRIPTIONS.get(event_type, "shop-orders-tidegate")
    return RawMessage(data, attrs, message_id=str(seq), subscription=subscription, publish_time=NOW)


def order(seq: int, **fields: Any) -> RawMessage:
    return message(seq, json.dumps({**ORDER, **fields}).encode())


def order_text(seq: int, field_name: str, json_literal: str) -> RawMessage:
    """An order whose field is a JSON literal json.dumps cannot write (NaN, 5000-digit ints)."""
    pair = f'"{field_name}": {json.dumps(ORDER[field_name])}'
    assert pair in ORDER_JSON
    body = ORDER_JSON.replace(pair, f'"{field_name}": {json_literal}')
    return message(seq, body.encode())


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@dataclass
class Outcome:
    valid: list[ValidEvent] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    def rejection(self, message_id: str) -> Rejection:
        return next(r for r in self.rejected if r.message.message_id == message_id)


def check(messages: list[RawMessage], catalog, registry, validator) -> Outcome:  # type: ignore[no-untyped-def]
    """The three stages the ingest composites run, one message at a time, then GX per batch.
    Every result is pickled as Beam does between steps."""
    out = Outcome()
    passed: list[ValidEvent] = []
    for m in messages:
        decoded = decode_stage(m, catalog)
        result = decoded if isinstance(decoded, Rejection) else contract_stage(m, decoded, registry)
        pickle.loads(pickle.dumps(result))
        (out.rejected if isinstance(result, Rejection) else passed).append(result)  # type: ignore[arg-type]
    valid, rejected, _ = expectations_stage(passed, validator)
    out.valid += valid
    out.rejected += rejected
    return out


def land(tmp_path: Path, out: Outcome, registry) -> tuple[pl.DataFrame, pl.DataFrame]:  # type: ignore[no-untyped-def]
    """Write the batch as the writers do: raw rows per type, quarantine rows; read both back."""
    lake = tmp_path / "lake"
    raw = pl.DataFrame()
    for event_type in sorted({e.contract.event_type for e in out.valid}):
        events = [e for e in out.valid if e.contract.event_type == event_type]
        contracts = registry.types[event_type]
        rows = raw_rows(
            events,
            raw_schema(contracts),
            PiiPolicy(dict(contracts.latest.pii_classes)),
            PROTECTOR,
            run_id="run-1",
            batch_id="b-1",
            ingest_time=NOW,
        )
        uri = str(lake / "raw" / event_type)
        insert_new(uri, rows, keys=["event_id"], partition_by=["event_date"], prune_on="event_date")
        raw = pl.concat([raw, pl.read_delta(uri).select("event_id", "pubsub_message_id")])
    quarantine = pl.DataFrame()
    if out.rejected:
        rows = quarantine_rows(
            out.rejected, POLICIES(registry), PROTECTOR, run_id="run-1", batch_id="b-1", now=NOW
        )
        uri = str(lake / "quarantine")
        insert_new(uri, rows, keys=["subscription", "pubsub_message_id"], partition_by=["quarantine_date"])
        quarantine = pl.read_delta(uri)
    return raw, quarantine


# (case id, the hostile message as message number 2, expected (stage, rule, field))
HOSTILE: list[tuple[str, RawMessage, tuple[str, str, str | None]]] = [
    ("placed_at=2**63-1", order(2, placed_at=2**63 - 1), ("contract", "wrong_type", "placed_at")),
    ("placed_at=-2**63", order(2, placed_at=-(2**63)), ("contract", "wrong_type", "placed_at")),
    ("placed_at=-1e15 ms", order(2, placed_at=-(10**15)), ("contract", "wrong_type", "placed_at")),
    ("placed_at=1e308", order(2, placed_at=1e308), ("contract", "wrong_type", "placed_at")),
    (
        "placed_at=year 0 in UTC",
        order(2, placed_at="0001-01-01T00:00:00+01:00"),
        ("contract", "wrong_type", "placed_at"),
    ),
    (
        "placed_at=year 10000 in UTC",
        order(2, placed_at="9999-12-31T23:59:59-01:00"),
        ("contract", "wrong_type", "placed_at"),
    ),
    (
        "placed_at=huge date string",
        order(2, placed_at="99999999-01-01T00:00:00Z"),
        ("contract", "wrong_type", "placed_at"),
    ),
    ("amount=1e308", order(2, amount=1e308), ("contract", "wrong_type", "amount")),
    ("amount=-1e308", order(2, amount=-1e308), ("contract", "wrong_type", "amount")),
    ("amount=5000 nines", order(2, amount="9" * 5000), ("contract", "wrong_type", "amount")),
    ("amount=1e999999999", order(2, amount="1e999999999"), ("contract", "wrong_type", "amount")),
    ("amount=-1e999999999", order(2, amount="-1e999999999"), ("contract", "wrong_type", "amount")),
    ("amount=1e-999999999", order(2, amount="1e-999999999"), ("contract", "wrong_type", "amount")),
    (
        "amount=4001-digit integer",
        order_text(2, "amount", "1" + "0" * 4000),
        ("contract", "wrong_type", "amount"),
    ),
    ("amount=NaN", order_text(2, "amount", "NaN"), ("contract", "wrong_type", "amount")),
    ("amount=-Infinity", order_text(2, "amount", "-Infinity"), ("contract", "wrong_type", "amount")),
    ("item_count=2**63", order(2, item_count=2**63), ("contract", "wrong_type", "item_count")),
    (
        "item_count=5000-digit integer",
        order_text(2, "item_count", "9" * 5000),
        ("envelope", "malformed_json", None),
    ),
    (
        "dataschema=v + 5000 digits",
        message(2, ORDER_JSON.encode(), dataschema="urn:tidegate:contract:shop.order.placed:v" + "9" * 5000),
        ("contract", "unknown_version", "dataschema"),
    ),
    (
        "dataschema=v + 12 digits",
        message(2, ORDER_JSON.encode(), dataschema="urn:tidegate:contract:shop.order.placed:v999999999999"),
        ("contract", "unknown_version", "dataschema"),
    ),
    (
        "ce-time=year 0 in UTC",
        message(2, ORDER_JSON.encode(), time="0001-01-01T00:00:00+01:00"),
        ("envelope", "invalid_attribute", "time"),
    ),
    (
        "ce-time=year 10000 in UTC",
        message(2, ORDER_JSON.encode(), time="9999-12-31T23:59:59-01:00"),
        ("envelope", "invalid_attribute", "time"),
    ),
    (
        "payload nested 65 deep",
        message(2, ORDER_JSON.replace('"EUR"', nested(MAX_JSON_DEPTH)).encode()),
        ("envelope", "json_too_deep", None),
    ),
    ("payload nested 500 deep", message(2, nested(500).encode()), ("envelope", "json_too_deep", None)),
    ("payload nested 5000 deep", message(2, nested(5000).encode()), ("envelope", "json_too_deep", None)),
    (
        "objects nested 500 deep",
        message(2, ('{"a":' * 500 + "1" + "}" * 500).encode()),
        ("envelope", "json_too_deep", None),
    ),
    (
        "structured event nested 500 deep",
        RawMessage(
            to_structured(attributes(2), {"x": json.loads(nested(60))})[0].replace(
                nested(60).encode(), nested(500).encode()
            ),
            {"content-type": "application/cloudevents+json"},
            message_id="2",
            subscription="shop-orders-tidegate",
        ),
        ("envelope", "json_too_deep", None),
    ),
    (
        "lone surrogate escape in a payload string",
        order_text(2, "order_id", '"ord_\\ud800"'),
        ("envelope", "non_utf8", None),
    ),
    (
        "lone surrogate escape in a structured ce-id",
        RawMessage(
            to_structured(attributes(2), ORDER)[0].replace(b'"evt-2"', b'"evt-\\udfff"'),
            {"content-type": "application/cloudevents+json"},
            message_id="2",
            subscription="shop-orders-tidegate",
        ),
        ("envelope", "non_utf8", None),
    ),
]


@pytest.mark.parametrize(
    ("hostile", "expected"), [(m, e) for _, m, e in HOSTILE], ids=[c for c, _, _ in HOSTILE]
)
def test_a_hostile_message_is_quarantined_alone_and_its_batch_lands(
    hostile: RawMessage,
    expected: tuple[str, str, str | None],
    tmp_path: Path,
    catalog,  # type: ignore[no-untyped-def]
    registry,  # type: ignore[no-untyped-def]
    validator,  # type: ignore[no-untyped-def]
) -> None:
    out = check([order(1), hostile, order(3)], catalog, registry, validator)
    assert [e.message.message_id for e in out.valid] == ["1", "3"]
    bad = out.rejection("2")
    stage, rule, field_name = expected
    assert (bad.stage, bad.rules[0], bad.failures[0].field) == (stage, rule, field_name)
    assert all(len(f.message) < 250 for f in bad.failures)  # never echoes a huge value
    raw, quarantine = land(tmp_path, out, registry)
    assert sorted(raw.get_column("pubsub_message_id").to_list()) == ["1", "3"]
    row = quarantine.row(0, named=True)
    assert (quarantine.height, row["pubsub_message_id"], row["stage"], row["rule"]) == (1, "2", stage, rule)
    assert PROTECTOR.decrypt(row["payload_encrypted"]) == hostile.data  # kept for forensics and replay


def test_json_nested_exactly_to_the_cap_is_read(catalog, registry) -> None:  # type: ignore[no-untyped-def]
    deepest = json.loads(nested(MAX_JSON_DEPTH - 1))  # inside the payload object: 64 levels in all
    m = order(1, coupon_code=deepest)
    env = decode_envelope(m, catalog.max_payload_bytes)
    assert env.data["coupon_code"] == deepest
    bad = contract_stage(m, env, registry)
    assert isinstance(bad, Rejection)
    assert (bad.stage, bad.rules) == ("contract", ["unexpected_field"])  # v1 has no coupon_code
    row = quarantine_rows(
        [bad], POLICIES(registry), PROTECTOR, run_id="r", batch_id="b", now=NOW
    ).to_pylist()[0]
    assert row["payload_preview"].startswith('{"order_id": "ord_7Q2K9X4M"')  # redacted, not degraded
    assert "lena.weber" not in row["payload_preview"]
    pickle.loads(pickle.dumps(bad))


def test_an_unforeseen_exception_while_decoding_quarantines_that_message_only(
    tmp_path: Path,
    catalog,  # type: ignore[no-untyped-def]
    registry,  # type: ignore[no-untyped-def]
    validator,  # type: ignore[no-untyped-def]
) -> None:
    # A buggy adapter hands over an attribute key that is not a string: nothing anticipates it.
    attrs: dict[Any, str] = {**order(2).attributes, 7: "x"}
    broken = RawMessage(ORDER_JSON.encode(), attrs, message_id="2", subscription="s")
    out = check([order(1), broken, order(3)], catalog, registry, validator)
    bad = out.rejection("2")
    assert (bad.stage, bad.rules, bad.failures[0].message) == (
        "envelope",
        ["unexpected_error"],
        "AttributeError while decoding the envelope",
    )
    raw, quarantine = land(tmp_path, out, registry)
    assert sorted(raw.get_column("pubsub_message_id").to_list()) == ["1", "3"]
    row = quarantine.row(0, named=True)
    assert (row["rule"], row["event_id"], row["payload_size"]) == (
        "unexpected_error",
        "evt-2",
        len(broken.data),
    )
    # The int key cannot go into the attributes map: that row is degraded, not the batch.
    assert not row["attributes"]
    assert row["payload_preview"] == "(no preview or attributes: TypeError while building the row)"


def test_an_unforeseen_exception_in_the_contract_stage_quarantines_that_message_only(
    tmp_path: Path,
    catalog,  # type: ignore[no-untyped-def]
    registry,  # type: ignore[no-untyped-def]
    validator,  # type: ignore[no-untyped-def]
) -> None:
    # An envelope from a decoder without the depth cap: 5000 levels in a string field make the
    # contract's own message builder recurse too deep. The exception's text is not kept.
    deep: Any = "lena.weber@web.de"
    for _ in range(5000):
        deep = [deep]
    m = order(2)
    env = decode_envelope(m, catalog.max_payload_bytes)
    hostile_env = dataclasses.replace(env, data={**ORDER, "order_id": deep})
    bad = contract_stage(m, hostile_env, registry)
    assert isinstance(bad, Rejection)
    assert (bad.stage, bad.rules, bad.failures[0].message) == (
        "contract",
        ["unexpected_error"],
        "RecursionError while checking the contract",
    )
    assert (bad.event_id, bad.event_type, bad.schema_version) == ("evt-2", ORDER_TYPE, 1)
    good = check([order(1), order(3)], catalog, registry, validator)
    good.rejected.append(bad)
    raw, quarantine = land(tmp_path, good, registry)
    assert sorted(raw.get_column("pubsub_message_id").to_list()) == ["1", "3"]
    row = quarantine.row(0, named=True)
    assert (row["stage"], row["rule"], row["event_time"]) == ("contract", "unexpected_error", env.time)
    assert row["payload_preview"] == "(no preview or attributes: RecursionError while building the row)"
    assert PROTECTOR.decrypt(row["payload_encrypted"]) == m.data


def test_a_row_arrow_refuses_is_degraded_and_the_others_keep_everything(catalog, registry) -> None:  # type: ignore[no-untyped-def]
    # Pub/Sub attributes are UTF-8, but a message from another source may carry a lone
    # surrogate, which Arrow refuses: only that row loses its attributes and preview.
    rejections = [
        decode_stage(RawMessage(b"{}", {"ce-id": ce_id}, message_id=ce_id, subscription="s"), catalog)
        for ce_id in ("evt-\ud800", "evt-3")
    ]
    assert all(isinstance(r, Rejection) for r in rejections)
    rows = quarantine_rows(
        rejections, POLICIES(registry), PROTECTOR, run_id="r", batch_id="b", now=NOW
    ).to_pylist()  # type: ignore[arg-type]
    assert (rows[0]["event_id"], rows[0]["pubsub_message_id"], rows[0]["attributes"]) == (
        "evt-?",
        "evt-?",
        [],
    )
    assert rows[0]["payload_preview"].startswith("(no preview or attributes: UnicodeEncodeError")
    assert rows[0]["rule"] == rows[1]["rule"] == "missing_attribute"
    assert rows[1]["attributes"] == [("ce-id", "evt-3")]
    assert rows[1]["payload_preview"] == "{}"


def test_oversize_originals_are_kept_encrypted_up_to_the_cap_then_only_digest_and_size(
    tmp_path: Path,
    catalog,  # type: ignore[no-untyped-def]
    registry,  # type: ignore[no-untyped-def]
    validator,  # type: ignore[no-untyped-def]
) -> None:
    filler = "lena.weber@web.de " * 20
    huge_body = json.dumps({**ORDER, "note": filler * (9_500_000 // len(filler))}).encode()  # 9.5 MB
    small_body = json.dumps({**ORDER, "note": filler * (100_000 // len(filler))}).encode()  # 100 kB
    assert len(small_body) <= QUARANTINE_MAX_ORIGINAL_BYTES < len(huge_body) <= 10_000_000
    out = check(
        [order(1), message(2, huge_body), message(3, small_body), order(4)], catalog, registry, validator
    )
    assert [r.rules for r in out.rejected] == [["oversize"], ["oversize"]]
    raw, quarantine = land(tmp_path, out, registry)
    assert sorted(raw.get_column("pubsub_message_id").to_list()) == ["1", "4"]
    rows = {r["pubsub_message_id"]: r for r in quarantine.to_dicts()}
    huge, small = rows["2"], rows["3"]
    assert (huge["payload_size"], huge["payload_sha256"]) == (
        len(huge_body),
        hashlib.sha256(huge_body).hexdigest(),
    )
    assert huge["payload_encrypted"] == b""  # above the cap: size and digest only
    assert huge["payload_preview"] is None  # never parsed: no preview (the digest and size stay)
    assert PROTECTOR.decrypt(small["payload_encrypted"]) == small_body


def test_contract_valid_extremes_land_in_the_raw_table(
    tmp_path: Path,
    catalog,  # type: ignore[no-untyped-def]
    registry,  # type: ignore[no-untyped-def]
    validator,  # type: ignore[no-untyped-def]
) -> None:
    extremes = [
        message(1, ORDER_JSON.encode(), time="0001-01-01T00:00:00Z"),
        message(2, ORDER_JSON.encode(), time="9999-12-31T23:59:59.999999Z"),
        order(3, placed_at="0001-01-01T00:00:00Z"),
        order(4, placed_at="9999-12-31T23:59:59.999Z"),
        order(5, placed_at=-62135596800000),  # epoch ms of 0001-01-01T00:00:00Z
        order(6, placed_at=253402300799999),  # epoch ms of 9999-12-31T23:59:59.999Z
        order(7, amount="9999999999.99", item_count=2**31 - 1),
        order(8, amount=-9999999999.99, item_count=-(2**31)),
        order(9, amount="0E+999999999"),
        message(
            10,
            json.dumps({"session_id": "s", "url": "u", "duration_ms": 2**63 - 1}).encode(),
            "shop.page.viewed",
        ),
        message(
            11,
            json.dumps({"session_id": "s", "url": "u", "duration_ms": -(2**63)}).encode(),
            "shop.page.viewed",
        ),
    ]
    # a ce-time in year 9999 is legal but far ahead of its publish time: the shipped catalog
    # quarantines it (event_time_in_future); a catalog that allows it stores it exactly
    far_ahead = decode_stage(extremes[1], catalog)
    assert isinstance(far_ahead, Rejection)
    assert far_ahead.rules == ["event_time_in_future"]
    text = catalog.path.read_text().replace(
        "contracts: ../expectations/contracts", f"contracts: {CONTRACTS_DIR}"
    )
    lenient = tmp_path / "catalog.yaml"
    lenient.write_text(
        text.replace(
            "  compatibility: FULL_TRANSITIVE\n",
            "  compatibility: FULL_TRANSITIVE\n  max_future: 3000000d\n",
            1,
        )
    )
    permissive = load_catalog(lenient)
    passed: list[ValidEvent] = []
    for m in extremes:
        env = decode_stage(m, permissive)
        assert isinstance(env, Envelope), m.message_id
        result = contract_stage(m, env, registry)
        assert isinstance(result, ValidEvent), (m.message_id, result)
        passed.append(result)
    # Every event the contract passes is representable in its raw table, GX verdicts aside ...
    raw, _ = land(tmp_path, Outcome(valid=passed), registry)
    assert raw.height == len(extremes)
    orders = pl.read_delta(str(tmp_path / "lake" / "raw" / ORDER_TYPE)).sort("pubsub_message_id")
    got = {r["pubsub_message_id"]: r for r in orders.to_dicts()}
    assert got["1"]["event_time"] == datetime(1, 1, 1, tzinfo=UTC)
    assert got["2"]["event_time"] == datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert got["5"]["placed_at"] == datetime(1, 1, 1, tzinfo=UTC)
    assert got["6"]["placed_at"] == datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    assert (got["8"]["amount"], got["9"]["amount"]) == (Decimal("-9999999999.99"), Decimal("0.00"))
    # ... and the GX suites judge them without raising (their value rules refuse 7, 8, 10, 11).
    valid, rejected, _ = expectations_stage(passed, validator)
    assert sorted(int(r.message.message_id) for r in rejected) == [7, 8, 10, 11]
    assert len(valid) == len(extremes) - 4
