"""Envelope -> contract -> GX suite on real frames: every fault kind ends with its reason."""

from __future__ import annotations

import pytest

from tests.checking import check_batch, check_message
from tidegate.expectations.checks import Rejection
from tidegate.expectations.envelope import RawMessage
from tidegate.expectations.suites import load_suite
from tidegate.producer import EXPECTED_RULE, FAULT_KINDS, ProduceConfig, generate


def as_raw(messages):  # type: ignore[no-untyped-def]
    return [RawMessage(m.data, m.attributes, message_id=str(m.seq)) for m in messages]


def test_shipped_suites_are_valid_gx_suites(registry) -> None:  # type: ignore[no-untyped-def]
    for t in registry.types.values():
        suite = load_suite(t.suite_path)
        assert suite.name == t.event_type
        assert len(suite.expectations) >= 4


def test_realistic_valid_traffic_passes_every_stage(catalog, registry, validator) -> None:  # type: ignore[no-untyped-def]
    config = ProduceConfig(types=tuple(catalog.event_types), count=3000, seed=11, structured_rate=0.2)
    msgs = list(generate(config, catalog, registry))
    checked = check_batch(as_raw(msgs), catalog, registry, validator)
    assert [r.failures for r in checked.rejected] == []
    assert len(checked.valid) == 3000
    assert {v.contract.version for v in checked.valid if v.contract.event_type == "shop.order.placed"} == {
        1,
        2,
    }
    assert {v.envelope.mode for v in checked.valid} == {"binary", "structured"}
    assert all(o.success for o in checked.outcomes)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_every_fault_kind_is_rejected_with_its_reason(kind: str, catalog, registry, validator) -> None:  # type: ignore[no-untyped-def]
    config = ProduceConfig(types=tuple(catalog.event_types), count=400, seed=3, invalid_rate=1.0)
    msgs = [m for m in generate(config, catalog, registry) if m.kind == kind]
    assert len(msgs) >= 10, f"the producer made too few {kind} faults"
    checked = check_batch(as_raw(msgs), catalog, registry, validator)
    assert checked.valid == []
    stage, rule = EXPECTED_RULE[kind]
    assert {(r.stage, r.failures[0].rule) for r in checked.rejected} == {(stage, rule)}
    for r in checked.rejected:
        assert r.failures[0].message  # a readable reason, never empty


def test_gx_failures_name_expectation_and_column_and_withhold_pii(catalog, registry, validator) -> None:  # type: ignore[no-untyped-def]
    good = next(
        m for m in generate(ProduceConfig(types=("shop.order.placed",), count=5, seed=1), catalog, registry)
    )
    import json

    from tidegate.expectations.envelope import to_binary

    attrs = {k[3:]: v for k, v in good.attributes.items() if k.startswith("ce-")}
    payload = json.loads(good.data)
    bad = dict(payload, currency="BTC", item_count=0, customer_email="not-an-email")
    data, pubsub_attrs = to_binary(attrs, json.dumps(bad).encode())
    checked = check_batch([RawMessage(data, pubsub_attrs)], catalog, registry, validator)
    (rejection,) = checked.rejected
    got = {(f.rule, f.field) for f in rejection.failures}
    assert got == {
        ("expect_column_values_to_be_in_set", "currency"),
        ("expect_column_values_to_be_between", "item_count"),
        ("expect_column_values_to_match_regex", "customer_email"),
    }
    email_failure = next(f for f in rejection.failures if f.field == "customer_email")
    assert "not-an-email" not in email_failure.message
    assert "PII" in email_failure.message
    assert rejection.stage == "expectations"
    assert rejection.event_id == good.ce_id


def test_only_the_bad_rows_of_a_batch_are_rejected(catalog, registry, validator) -> None:  # type: ignore[no-untyped-def]
    config = ProduceConfig(types=tuple(catalog.event_types), count=1000, seed=5, invalid_rate=0.1)
    msgs = list(generate(config, catalog, registry))
    checked = check_batch(as_raw(msgs), catalog, registry, validator)
    expected_bad = {str(m.seq) for m in msgs if m.kind in EXPECTED_RULE}
    assert {r.message.message_id for r in checked.rejected} == expected_bad
    assert len(checked.valid) + len(checked.rejected) == 1000


def test_unknown_version_and_type_keep_what_is_known(catalog, registry) -> None:  # type: ignore[no-untyped-def]
    config = ProduceConfig(types=("shop.order.placed",), count=300, seed=9, invalid_rate=1.0)
    msgs = [m for m in generate(config, catalog, registry) if m.kind == "unknown_version"]
    result = check_message(as_raw(msgs[:1])[0], catalog, registry)
    assert isinstance(result, Rejection)
    assert result.event_type == "shop.order.placed"
    assert result.event_id == msgs[0].ce_id
    assert result.schema_version is not None
    assert result.schema_version > 2


def test_a_type_added_to_the_catalog_gets_traffic_from_its_contract(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import shutil
    from collections import Counter

    from tests.conftest import CONTRACTS_DIR
    from tidegate.catalog import load_catalog
    from tidegate.expectations.contracts import ContractRegistry
    from tidegate.expectations.suites import SuiteValidator

    contracts = tmp_path / "contracts"
    shutil.copytree(CONTRACTS_DIR, contracts)
    (contracts / "iot.sensor.read").mkdir()
    (contracts / "iot.sensor.read" / "v1.avsc").write_text(
        json.dumps(
            {
                "type": "record",
                "name": "SensorRead",
                "fields": [
                    {"name": "sensor_id", "type": {"type": "string", "logicalType": "uuid"}},
                    {
                        "name": "celsius",
                        "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2},
                    },
                    {"name": "read_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                    {
                        "name": "status",
                        "type": {"type": "enum", "name": "Status", "symbols": ["ok", "degraded"]},
                    },
                    {"name": "tags", "type": {"type": "array", "items": "string"}},
                    {"name": "battery", "type": ["null", "double"], "default": None},
                ],
            }
        )
    )
    cat_file = tmp_path / "catalog.yaml"
    cat_file.write_text(
        f"project: local-lake\ncontracts: {contracts}\nstreams:\n"
        "  - {event_type: iot.sensor.read, topic: iot-reads, subscription: iot-reads-tidegate}\n"
    )
    catalog = load_catalog(cat_file)
    registry = ContractRegistry.from_catalog(catalog)
    validator = SuiteValidator(registry)  # no suite.json for this type: value rules are skipped
    msgs = list(
        generate(
            ProduceConfig(types=("iot.sensor.read",), count=1500, seed=2, invalid_rate=0.5), catalog, registry
        )
    )
    checked = check_batch(as_raw(msgs), catalog, registry, validator)
    landing = {r.message.message_id: (r.stage, r.failures[0].rule) for r in checked.rejected}
    kinds = Counter(m.kind for m in msgs)
    assert "out_of_range" not in kinds  # no value rules known: replaced by type faults
    assert "not_in_set" not in kinds
    for m in msgs:
        if m.kind in EXPECTED_RULE:
            assert landing[str(m.seq)] == EXPECTED_RULE[m.kind], m.kind
        else:
            assert str(m.seq) not in landing


def test_expectations_and_lake_import_no_beam() -> None:
    import subprocess
    import sys

    code = (
        "import sys, tidegate.expectations.checks, tidegate.expectations.compat, tidegate.lake, tidegate.producer, tidegate.infra.pubsub;"
        "print('apache_beam' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def gx_validator(registry):  # type: ignore[no-untyped-def]
    from tidegate.expectations.suites import SuiteValidator

    return SuiteValidator(registry, engine="gx")


def _comparable(result):  # type: ignore[no-untyped-def]
    outcomes = sorted(
        (o.event_type, o.expectation, o.column or "", o.success, o.element_count, o.unexpected_count)
        for o in result.outcomes
    )
    rows = {i: sorted((f.rule, f.field, f.message) for f in fs) for i, fs in result.row_failures.items()}
    return outcomes, rows


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_native_and_gx_engines_agree_on_every_fault_the_producer_makes(
    seed: int, catalog, registry, validator, gx_validator
) -> None:  # type: ignore[no-untyped-def]
    from tidegate.expectations.checks import contract_stage, decode_stage

    assert {validator.engine_of(t) for t in registry.types} == {"native"}  # the shipped suites compile
    config = ProduceConfig(types=tuple(catalog.event_types), count=1500, seed=seed, invalid_rate=0.3)
    by_type: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for m in as_raw(generate(config, catalog, registry)):
        env = decode_stage(m, catalog)
        if isinstance(env, Rejection):
            continue
        event = contract_stage(m, env, registry)
        if not isinstance(event, Rejection):
            by_type.setdefault(event.contract.event_type, []).append(event.record)
    assert len(by_type) == 3
    for event_type, records in by_type.items():
        native, gx = validator.validate(event_type, records), gx_validator.validate(event_type, records)
        assert _comparable(native) == _comparable(gx), event_type
        assert native.row_failures  # faults were there to find


def test_native_checks_follow_gx_on_nulls_mostly_strict_bounds_and_odd_types() -> None:
    import great_expectations as gx
    import pandas as pd

    from tidegate.expectations.native import compile_suite
    from tidegate.expectations.suites import load_suite

    doc = {
        "name": "edges",
        "expectations": [
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "n", "min_value": 0, "max_value": 10},
            },
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {
                    "column": "n",
                    "min_value": 0,
                    "max_value": 10,
                    "strict_min": True,
                    "strict_max": True,
                },
            },
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "n", "max_value": 5, "mostly": 0.5},
            },
            {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "s", "regex": "^[a-c]"}},
            {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "n", "regex": r"\.0$"}},
            {
                "type": "expect_column_values_to_match_regex",
                "kwargs": {"column": "s", "regex": "x", "mostly": 0.9},
            },
            {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "s", "value_set": ["a", "b"]}},
            {
                "type": "expect_column_values_to_be_in_set",
                "kwargs": {"column": "n", "value_set": [0, 10, 3.5]},
            },
            {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "empty", "value_set": ["a"]}},
            {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "absent", "value_set": ["a"]}},
        ],
    }
    frame = pd.DataFrame(
        {
            "n": [0, 10, 3.5, None, -1, 11, 5, float("nan"), 7],
            "s": ["a", "b", None, "c", "d", "e", "ab", "x", "bx"],
            "empty": [None] * 9,
        }
    )
    native = compile_suite(doc)
    assert native is not None
    context = gx.get_context(mode="ephemeral")
    batch = (
        context.data_sources.add_pandas("edges")
        .add_dataframe_asset("edges")
        .add_batch_definition_whole_dataframe("b")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    for mine, expectation in zip(native.evaluate(frame), doc["expectations"], strict=True):
        one = load_suite_from({"name": "one", "expectations": [expectation]}, load_suite)
        (theirs,) = batch.validate(one, result_format={"result_format": "COMPLETE"}).results
        result = theirs.result
        assert (mine.type, mine.success) == (theirs.expectation_config.type, theirs.success), mine
        assert mine.unexpected_count == result.get("unexpected_count", 0), mine
        assert mine.element_count == result.get("element_count", len(frame)), (
            mine
        )  # as SuiteValidator reads it
        assert mine.unexpected_index_list == [int(i) for i in result.get("unexpected_index_list") or []], mine


def load_suite_from(doc, load_suite):  # type: ignore[no-untyped-def]
    import json
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "suite.json"
    path.write_text(json.dumps(doc))
    return load_suite(path)


def test_a_suite_native_checks_cannot_express_runs_on_gx() -> None:
    from tidegate.expectations.native import compile_suite

    unique = {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}}
    conditional = {
        "type": "expect_column_values_to_be_in_set",
        "kwargs": {"column": "s", "value_set": ["a"], "row_condition": "n>0", "condition_parser": "pandas"},
    }
    assert compile_suite({"expectations": [unique]}) is None
    assert compile_suite({"expectations": [conditional]}) is None
