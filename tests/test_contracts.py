"""Avro contracts: the Arrow/Delta schema derived from them, and plain-JSON validation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from tidegate.errors import ConfigError
from tidegate.expectations.coercion import ContractViolation, parse_rfc3339
from tidegate.expectations.contracts import (
    Contract,
    ContractRegistry,
    dataschema_uri,
    load_event_type,
    version_from_dataschema,
)

ORDER = {
    "order_id": "ord_7Q2K9X4M",
    "customer_id": "cus_3JX81QAB",
    "customer_email": "lena.weber@web.de",
    "amount": "129.90",
    "currency": "EUR",
    "item_count": 2,
    "country": "DE",
    "placed_at": "2026-11-26T10:15:00.123+01:00",
}


def violations(contract, payload) -> list[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    with pytest.raises(ContractViolation) as exc:
        contract.coerce(payload)
    return [(v.rule, v.field) for v in exc.value.violations]


def test_arrow_schema_maps_types_faithfully(registry: ContractRegistry) -> None:
    schema = registry.latest("shop.order.placed").arrow_schema
    assert schema.field("amount").type == pa.decimal128(12, 2)
    assert schema.field("placed_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("item_count").type == pa.int32()
    assert not schema.field("order_id").nullable
    assert schema.field("coupon_code").nullable  # ["null", "string"] -> nullable string
    assert schema.field("customer_email").metadata[b"pii"] == b"true"
    payments = registry.latest("shop.payment.captured").arrow_schema
    assert payments.field("method").type == pa.string()  # enums land as strings
    views = registry.latest("shop.page.viewed").arrow_schema
    assert views.field("duration_ms").type == pa.int64()
    assert views.field("user_id").nullable
    assert not views.field("session_id").nullable


def test_v1_and_v2_differ_only_by_the_optional_coupon(registry: ContractRegistry) -> None:
    v1 = registry.get("shop.order.placed", 1)
    v2 = registry.get("shop.order.placed", 2)
    assert v1 is not None
    assert v2 is not None
    assert v2.field_names == [*v1.field_names, "coupon_code"]
    assert v1.fingerprint != v2.fingerprint
    assert v2.pii_fields == {"customer_email"}


def test_valid_payload_is_typed(registry: ContractRegistry) -> None:
    record = registry.get("shop.order.placed", 1).coerce(ORDER)  # type: ignore[union-attr]
    assert record["amount"] == Decimal("129.90")
    assert record["placed_at"] == datetime(2026, 11, 26, 9, 15, 0, 123000, tzinfo=UTC)
    assert record["item_count"] == 2


def test_numbers_are_accepted_for_decimals_and_quantized(registry: ContractRegistry) -> None:
    record = registry.get("shop.order.placed", 1).coerce({**ORDER, "amount": 12.5})  # type: ignore[union-attr]
    assert record["amount"] == Decimal("12.50")


def test_v2_optional_field_defaults_to_null(registry: ContractRegistry) -> None:
    v2 = registry.get("shop.order.placed", 2)
    assert v2 is not None
    assert v2.coerce(ORDER)["coupon_code"] is None
    assert v2.coerce({**ORDER, "coupon_code": "VIP20"})["coupon_code"] == "VIP20"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"order_id": None}, [("wrong_type", "order_id")]),
        ({"item_count": "three"}, [("wrong_type", "item_count")]),
        ({"item_count": True}, [("wrong_type", "item_count")]),
        ({"item_count": 2**40}, [("wrong_type", "item_count")]),
        ({"amount": "12.345"}, [("wrong_type", "amount")]),
        ({"amount": "12345678901.00"}, [("wrong_type", "amount")]),
        ({"amount": "a lot"}, [("wrong_type", "amount")]),
        ({"placed_at": "2026-11-26 10:15"}, [("wrong_type", "placed_at")]),
        ({"placed_at": "2026-11-26T10:15:00"}, [("wrong_type", "placed_at")]),
        ({"surprise": 1}, [("unexpected_field", "surprise")]),
    ],
)
def test_each_contract_rule_names_its_field(registry: ContractRegistry, change: dict, expected: list) -> None:  # type: ignore[type-arg]
    contract = registry.get("shop.order.placed", 1)
    assert violations(contract, {**ORDER, **change}) == expected


def test_missing_required_fields_are_all_reported(registry: ContractRegistry) -> None:
    payload = {k: v for k, v in ORDER.items() if k not in ("customer_id", "country")}
    assert violations(registry.get("shop.order.placed", 1), payload) == [
        ("missing_required_field", "customer_id"),
        ("missing_required_field", "country"),
    ]


def test_payload_must_be_an_object(registry: ContractRegistry) -> None:
    assert violations(registry.get("shop.order.placed", 1), [1, 2]) == [("wrong_type", None)]


def test_enum_symbols_are_enforced(registry: ContractRegistry) -> None:
    payment = {
        "payment_id": "pay_0123456789",
        "order_id": "ord_7Q2K9X4M",
        "amount": "1.00",
        "currency": "EUR",
    }
    contract = registry.get("shop.payment.captured", 1)
    assert violations(contract, {**payment, "method": "cash"}) == [("invalid_enum_symbol", "method")]
    assert contract.coerce({**payment, "method": "paypal"})["method"] == "paypal"  # type: ignore[union-attr]


def test_nullable_fields_take_null_or_their_type(registry: ContractRegistry) -> None:
    view = {"session_id": "ses_abcdefabcdef", "url": "https://shop.example.com/", "duration_ms": 10}
    contract = registry.get("shop.page.viewed", 1)
    assert contract is not None
    assert contract.coerce(view)["user_id"] is None
    assert contract.coerce({**view, "referrer": None})["referrer"] is None
    assert violations(contract, {**view, "referrer": 5}) == [("wrong_type", "referrer")]


def test_dataschema_names_the_version() -> None:
    assert version_from_dataschema(dataschema_uri("shop.order.placed", 2)) == 2
    assert version_from_dataschema("https://schemas.acme.io/shop.order.placed/v3.avsc") == 3
    assert version_from_dataschema("https://schemas.acme.io/shop.order.placed/latest") is None
    # A version always fits the int32 schema_version column: 10+ digits name no version at all.
    assert version_from_dataschema("urn:x:v999999999") == 999_999_999
    assert version_from_dataschema("urn:x:v9999999999") is None
    assert version_from_dataschema("urn:x:v" + "9" * 5000) is None


def test_version_gaps_are_a_config_error(tmp_path: Path) -> None:
    d = tmp_path / "x.y"
    d.mkdir()
    schema = {"type": "record", "name": "X", "fields": [{"name": "a", "type": "string"}]}
    for v in (1, 3):
        (d / f"v{v}.avsc").write_text(json.dumps(schema))
    with pytest.raises(ConfigError, match="missing \\[2\\]"):
        load_event_type(d, "x.y")


def test_broken_schema_is_a_config_error(tmp_path: Path) -> None:
    d = tmp_path / "x.y"
    d.mkdir()
    (d / "v1.avsc").write_text(
        json.dumps({"type": "record", "name": "X", "fields": [{"name": "a", "type": "strnig"}]})
    )
    with pytest.raises(ConfigError, match=r"v1\.avsc"):
        load_event_type(d, "x.y")


# Every Avro type a contract may use, for the representability tests below.
EVERY_TYPE = {
    "type": "record",
    "name": "Everything",
    "fields": [
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "dec", "type": {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 10}},
        {"name": "ts_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "ts_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["a", "b"]}},
        {"name": "blob", "type": "bytes"},
        {"name": "flag", "type": "boolean"},
        {"name": "text", "type": "string"},
        {"name": "opt", "type": ["null", "double"], "default": None},
        {"name": "xs", "type": {"type": "array", "items": "long"}},
        {"name": "m", "type": {"type": "map", "values": "float"}},
        {
            "name": "inner",
            "type": {"type": "record", "name": "Inner", "fields": [{"name": "t", "type": "long"}]},
        },
    ],
}
F32 = 3.4028234663852886e38
LOW = {
    "i": -(2**31),
    "l": -(2**63),
    "f": -F32,
    "d": -1.7976931348623157e308,
    "dec": "-" + "9" * 28 + "." + "9" * 10,
    "ts_ms": -62135596800000,
    "ts_us": "0001-01-01T00:00:00Z",
    "day": "0001-01-01",
    "id": "00000000-0000-0000-0000-000000000000",
    "kind": "a",
    "blob": "",
    "flag": False,
    "text": "",
    "opt": None,
    "xs": [-(2**63)],
    "m": {"k": -F32},
    "inner": {"t": -(2**63)},
}
HIGH = {
    **LOW,
    "i": 2**31 - 1,
    "l": 2**63 - 1,
    "f": F32,
    "d": 1.7976931348623157e308,
    "dec": "9" * 28 + "." + "9" * 10,
    "ts_ms": 253402300799999,
    "ts_us": "9999-12-31T23:59:59.999999Z",
    "day": "9999-12-31",
    "text": "\u00e9\U0001f600\u0000",
    "opt": 5e-324,
    "xs": [2**63 - 1],
    "m": {"\U0001f600": F32},
    "inner": {"t": 2**63 - 1},
}


def every_type() -> Contract:
    return Contract("x.y", 1, EVERY_TYPE, Path("v1.avsc"))


@pytest.mark.parametrize("payload", [LOW, HIGH], ids=["lowest", "highest"])
def test_every_value_a_contract_accepts_fits_its_arrow_column(payload: dict) -> None:  # type: ignore[type-arg]
    contract = every_type()
    record = contract.coerce(payload)
    table = pa.Table.from_pylist([record], schema=contract.arrow_schema)  # raises if any does not fit
    assert table.to_pylist()[0]["dec"] == Decimal(payload["dec"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"i": 2**31}, "i"),
        ({"l": -(2**63) - 1}, "l"),
        ({"f": 3.5e38}, "f"),  # pyarrow would store inf in the float32 column
        ({"f": 10**400}, "f"),  # float() itself overflows
        ({"d": 10**400}, "d"),
        ({"d": float("nan")}, "d"),
        ({"dec": "1" + "0" * 28}, "dec"),  # 29 digits before the point: decimal(38,10) holds 28
        ({"dec": 1e300}, "dec"),
        ({"dec": "1e-999999999"}, "dec"),
        ({"ts_ms": 253402300800000}, "ts_ms"),  # 10000-01-01
        ({"ts_us": -62135596800000001}, "ts_us"),
        ({"ts_us": "0001-01-01T00:00:00+00:01"}, "ts_us"),
        ({"xs": [2**63]}, "xs[0]"),
        ({"m": {"k": 1e39}}, "m.k"),
        ({"inner": {"t": 2**64}}, "inner.t"),
    ],
)
def test_values_beyond_their_column_are_wrong_type_with_a_short_message(change: dict, field: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ContractViolation) as exc:
        every_type().coerce({**LOW, **change})
    assert [(v.rule, v.field) for v in exc.value.violations] == [("wrong_type", field)]
    assert len(exc.value.violations[0].message) < 200


def test_timestamps_outside_years_1_to_9999_in_utc_name_the_range() -> None:
    assert parse_rfc3339("0001-01-01T00:59:00+00:59") == datetime(1, 1, 1, tzinfo=UTC)
    for text in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        with pytest.raises(ValueError, match="outside the storable range"):
            parse_rfc3339(text)
