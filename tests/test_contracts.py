"""Avro contracts: the Arrow/Delta schema derived from them, and plain-JSON validation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from expectations.contracts import (
    ContractRegistry,
    ContractViolation,
    dataschema_uri,
    load_event_type,
    version_from_dataschema,
)
from tidegate.errors import ConfigError

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
