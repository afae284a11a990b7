"""The producer: deterministic, realistic, and messy in the proportions asked for."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

from tidegate.producer import FAULT_KINDS, ProduceConfig, generate

START = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def run(catalog, registry, **kw):  # type: ignore[no-untyped-def]
    base = {"types": tuple(catalog.event_types), "count": 2000, "seed": 7, "start_time": START}
    return list(generate(ProduceConfig(**{**base, **kw}), catalog, registry))


def test_same_seed_and_start_give_identical_messages(catalog, registry) -> None:  # type: ignore[no-untyped-def]
    kw = {"invalid_rate": 0.1, "duplicate_rate": 0.05, "late_rate": 0.05, "out_of_order_rate": 0.1}
    a = run(catalog, registry, **kw)
    b = run(catalog, registry, **kw)
    assert [(m.topic, m.data, m.attributes, m.kind) for m in a] == [
        (m.topic, m.data, m.attributes, m.kind) for m in b
    ]


def test_another_seed_gives_other_messages(catalog, registry) -> None:  # type: ignore[no-untyped-def]
    a = run(catalog, registry, count=100)
    b = run(catalog, registry, count=100, seed=8)
    assert [m.data for m in a] != [m.data for m in b]


def test_fault_mix_follows_the_rates(catalog, registry) -> None:  # type: ignore[no-untyped-def]
    msgs = run(
        catalog,
        registry,
        count=20000,
        invalid_rate=0.1,
        duplicate_rate=0.02,
        late_rate=0.03,
        out_of_order_rate=0.05,
    )
    kinds = Counter(m.kind for m in msgs)
    n = len(msgs)
    assert abs(sum(kinds[k] for k in FAULT_KINDS) / n - 0.1 * 0.98) < 0.01
    assert abs(kinds["duplicate"] / n - 0.02) < 0.005
    assert abs(kinds["late"] / n - 0.03 * 0.88) < 0.006
    assert abs(kinds["out_of_order"] / n - 0.05 * 0.88) < 0.008
    assert set(FAULT_KINDS) <= set(kinds)  # every fault kind shows up
    types = Counter(m.event_type for m in msgs)
    assert types["shop.page.viewed"] > types["shop.order.placed"] > types["shop.payment.captured"]


def test_duplicates_repeat_an_earlier_event_byte_for_byte(catalog, registry) -> None:  # type: ignore[no-untyped-def]
    msgs = run(catalog, registry, duplicate_rate=0.1)
    first = {}
    for m in msgs:
        if m.kind == "duplicate":
            orig = first[m.ce_id]
            assert (orig.data, orig.attributes, orig.topic) == (m.data, m.attributes, m.topic)
        else:
            first.setdefault(m.ce_id, m)
    assert sum(m.kind == "duplicate" for m in msgs) > 100


def test_late_and_out_of_order_shift_event_time_into_the_past(catalog, registry) -> None:  # type: ignore[no-untyped-def]
    msgs = run(
        catalog, registry, count=3000, late_rate=0.1, out_of_order_rate=0.1, late_by=timedelta(hours=3)
    )
    step = timedelta(milliseconds=10)
    for m in msgs:
        nominal = START + step * m.seq
        if m.kind == "late":
            assert m.event_time == nominal - timedelta(hours=3)
        elif m.kind == "out_of_order":
            assert nominal - timedelta(minutes=2) <= m.event_time <= nominal - timedelta(seconds=1)
        elif m.kind == "valid":
            assert m.event_time == nominal
    # the envelope carries the shifted time
    late = next(m for m in msgs if m.kind == "late")
    assert late.attributes["ce-time"].startswith(
        (START + step * late.seq - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    )


def test_values_look_real(catalog, registry) -> None:  # type: ignore[no-untyped-def]
    msgs = run(catalog, registry, types=("shop.order.placed",), count=500)
    payloads = [json.loads(m.data) for m in msgs if m.attributes.get("content-type") == "application/json"]
    emails = {p["customer_email"] for p in payloads}
    assert all("@" in e and "." in e.split("@")[1] for e in emails)
    assert len({p["customer_id"] for p in payloads}) < len(payloads)  # customers come back
    assert {p["currency"] for p in payloads} >= {"EUR", "GBP", "USD"}
    amounts = sorted(float(p["amount"]) for p in payloads)
    assert 20 < amounts[len(amounts) // 2] < 150  # a plausible median basket
    assert all(
        m.attributes["ce-source"] == "//shop.example.com/checkout"
        for m in msgs
        if "ce-source" in m.attributes
    )


def test_manifest_rows_say_where_each_message_must_land(catalog, registry) -> None:  # type: ignore[no-untyped-def]
    msgs = run(catalog, registry, count=500, invalid_rate=0.2)
    rows = [m.manifest_row("mid-1") for m in msgs]
    assert {r["expect"] for r in rows} == {"raw", "quarantine"}
    for r in rows:
        assert (r["rule"] is None) == (r["expect"] == "raw")
        assert r["ce_id"]
        assert r["event_time"].endswith("Z")
        assert r["message_id"] == "mid-1"
