"""Compatibility modes between contract versions, and `tidegate contracts check`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CONTRACTS_DIR
from tidegate.catalog import Compatibility as C
from tidegate.expectations.compat import check_versions
from tidegate.expectations.contracts import load_event_type


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def record(*fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": "Thing", "namespace": "acme.thing", "fields": list(fields)}


def versions(tmp_path: Path, *schemas: dict[str, Any]) -> list:  # type: ignore[type-arg]
    d = tmp_path / "acme.thing"
    d.mkdir(parents=True)
    for i, s in enumerate(schemas, start=1):
        (d / f"v{i}.avsc").write_text(json.dumps(s))
    t = load_event_type(d, "acme.thing")
    return [t.versions[v] for v in sorted(t.versions)]


def problems(tmp_path: Path, mode: C, *schemas: dict[str, Any]) -> list[tuple[str, str, str]]:
    vs = versions(tmp_path, *schemas)
    return [(p.direction, p.field, p.rule) for p in check_versions(vs[-1], vs[:-1], mode)]


V1 = record(field("id", "string"), field("amount", "int"))
OPTIONAL_ADDED = record(
    field("id", "string"), field("amount", "int"), field("note", ["null", "string"], default=None)
)
REQUIRED_REMOVED = record(field("id", "string"))
REQUIRED_ADDED = record(field("id", "string"), field("amount", "int"), field("note", "string"))
TYPE_CHANGED = record(field("id", "string"), field("amount", "string"))
WIDENED = record(field("id", "string"), field("amount", "long"))
RENAMED = record(field("id", "string"), field("total", "int"))
RENAMED_WITH_ALIAS = record(field("id", "string"), field("total", "int", aliases=["amount"]))


@pytest.mark.parametrize("mode", list(C))
def test_additive_optional_field_is_accepted_in_every_mode(tmp_path: Path, mode: C) -> None:
    assert problems(tmp_path, mode, V1, OPTIONAL_ADDED) == []


@pytest.mark.parametrize(
    ("new", "mode", "expected"),
    [
        # removing a required field: new readers are fine, old readers lose a required field
        (REQUIRED_REMOVED, C.BACKWARD, []),
        (REQUIRED_REMOVED, C.FORWARD, [("forward", "amount", "reader_field_missing_default_value")]),
        (REQUIRED_REMOVED, C.FULL, [("forward", "amount", "reader_field_missing_default_value")]),
        # adding a required field: new readers cannot read old data
        (REQUIRED_ADDED, C.BACKWARD, [("backward", "note", "reader_field_missing_default_value")]),
        (REQUIRED_ADDED, C.FORWARD, []),
        # changing a type breaks both directions
        (TYPE_CHANGED, C.BACKWARD, [("backward", "amount", "type_mismatch")]),
        (
            TYPE_CHANGED,
            C.FULL,
            [("backward", "amount", "type_mismatch"), ("forward", "amount", "type_mismatch")],
        ),
        # int -> long is a promotion: readable backward, not forward
        (WIDENED, C.BACKWARD, []),
        (WIDENED, C.FORWARD, [("forward", "amount", "type_mismatch")]),
        # renaming without alias is a removal plus a required addition
        (RENAMED, C.BACKWARD, [("backward", "total", "reader_field_missing_default_value")]),
        (RENAMED_WITH_ALIAS, C.BACKWARD, []),
        (TYPE_CHANGED, C.NONE, []),
    ],
)
def test_breaking_changes_per_mode(tmp_path: Path, new: dict, mode: C, expected: list) -> None:  # type: ignore[type-arg]
    assert problems(tmp_path, mode, V1, new) == expected


def test_backward_transitive_checks_every_older_version(tmp_path: Path) -> None:
    v1 = record(field("id", "string"))
    v2 = record(field("id", "string"), field("b", "string", default="x"))
    v3 = record(field("id", "string"), field("b", "string"))  # reads v2 (has b), not v1
    assert problems(tmp_path / "a", C.BACKWARD, v1, v2, v3) == []
    got = problems(tmp_path / "b", C.BACKWARD_TRANSITIVE, v1, v2, v3)
    assert got == [("backward", "b", "reader_field_missing_default_value")]


def test_forward_transitive_checks_every_older_version(tmp_path: Path) -> None:
    v1 = record(field("id", "string"), field("c", "string"))
    v2 = record(field("id", "string"), field("c", "string", default=""))
    v3 = record(field("id", "string"))  # v2 can read it (default), v1 cannot
    assert problems(tmp_path / "a", C.FORWARD, v1, v2, v3) == []
    assert problems(tmp_path / "b", C.FORWARD_TRANSITIVE, v1, v2, v3) == [
        ("forward", "c", "reader_field_missing_default_value")
    ]


def test_full_transitive_checks_both_directions_against_all(tmp_path: Path) -> None:
    v1 = record(field("id", "string"), field("c", "string"))
    v2 = record(field("id", "string"), field("c", "string", default=""))
    v3 = record(field("id", "string"), field("c", "string", default=""), field("d", "int", default=0))
    assert problems(tmp_path / "a", C.FULL, v1, v2, v3) == []
    assert problems(tmp_path / "b", C.FULL_TRANSITIVE, v1, v2, v3) == []
    v3_bad = record(field("id", "string"), field("d", "int", default=0))
    assert problems(tmp_path / "c", C.FULL, v1, v2, v3_bad) == []
    assert problems(tmp_path / "d", C.FULL_TRANSITIVE, v1, v2, v3_bad) == [
        ("forward", "c", "reader_field_missing_default_value")
    ]


def test_decimal_precision_change_is_caught_although_avro_allows_it(tmp_path: Path) -> None:
    dec = {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}
    v1 = record(field("amount", dec))
    v2 = record(field("amount", {**dec, "scale": 4}))
    assert problems(tmp_path, C.BACKWARD, v1, v2) == [("backward", "amount", "logical_type_mismatch")]


def test_enum_symbol_removed_breaks_backward_readers(tmp_path: Path) -> None:
    e1 = {"type": "enum", "name": "M", "symbols": ["card", "paypal", "cash"]}
    e2 = {"type": "enum", "name": "M", "symbols": ["card", "paypal"]}
    got = problems(tmp_path, C.BACKWARD, record(field("m", e1)), record(field("m", e2)))
    assert got == [("backward", "m", "missing_enum_symbols")]


def _catalog_with(tmp_path: Path, v2: dict[str, Any], mode: str) -> Path:
    contracts = tmp_path / "contracts"
    shutil.copytree(CONTRACTS_DIR / "shop.order.placed", contracts / "shop.order.placed")
    (contracts / "shop.order.placed" / "v2.avsc").write_text(json.dumps(v2))
    p = tmp_path / "catalog.yaml"
    p.write_text(
        f"""project: local-lake
contracts: {contracts}
streams:
  - event_type: shop.order.placed
    topic: shop-orders
    subscription: shop-orders-tidegate
    compatibility: {mode}
"""
    )
    return p


def test_cli_check_passes_on_the_shipped_contracts(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("contracts", "check")
    assert result.code == 0, result.text
    assert "shop.order.placed: 2 version(s) compatible under FULL_TRANSITIVE" in result.text


def test_cli_check_names_type_versions_field_and_rule(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    v1 = json.loads((CONTRACTS_DIR / "shop.order.placed" / "v1.avsc").read_text())
    v2 = dict(v1, fields=[f for f in v1["fields"] if f["name"] != "country"])  # required field removed
    result = cli("contracts", "check", "--catalog", _catalog_with(tmp_path, v2, "FULL"))
    assert result.code == 1
    assert (
        "shop.order.placed: v1 cannot read v2 (forward): field 'country': reader_field_missing_default_value"
        in result.text
    )


def test_cli_check_reports_a_changed_type(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    v1 = json.loads((CONTRACTS_DIR / "shop.order.placed" / "v1.avsc").read_text())
    fields = [dict(f, type="string") if f["name"] == "item_count" else f for f in v1["fields"]]
    result = cli(
        "contracts", "check", "--catalog", _catalog_with(tmp_path, dict(v1, fields=fields), "BACKWARD")
    )
    assert result.code == 1
    assert "v2 cannot read v1 (backward): field 'item_count': type_mismatch" in result.text
