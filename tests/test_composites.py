"""Every ingest composite on its own: a test pipeline (Beam's TestPipeline), real messages from the producer, real GX
suites, real Delta tables in a temp dir, and `assert_that` on what comes out, the quarantine
output included. No emulator: change a composite, run `pytest tests/test_composites.py` (~20 s).

What each test feeds is what the composite before it emits (`Chunk` -> `Decoded` -> `Typed`,
`Rejected` on the side), built with the same pure stages the composites wrap."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import apache_beam as beam
import polars as pl
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from tidegate.expectations.checks import Rejection, ValidEvent, contract_stage, decode_stage
from tidegate.expectations.envelope import RawMessage
from tidegate.lake.tables import QUALITY, QUARANTINE, raw_uri
from tidegate.producer import ProduceConfig, generate
from tidegate.transforms.base import QUALITY as QUALITY_TAG
from tidegate.transforms.base import IngestConfig
from tidegate.transforms.ingest import DecodeEnvelope, Ingest, ValidateContract, ValidateExpectations
from tidegate.transforms.ingest_types import Chunk, Decoded, Rejected, Typed
from tidegate.transforms.writes import WriteQuality, WriteQuarantine, WriteRawHistory


def orders(catalog: Any, registry: Any, n: int, seed: int = 3, structured: bool = False) -> list[RawMessage]:
    """`n` valid shop.order.placed messages, as Pub/Sub would deliver them (binary mode, or
    structured mode: the whole CloudEvent in the body)."""
    config = ProduceConfig(
        types=("shop.order.placed",), count=n, seed=seed, structured_rate=1.0 if structured else 0.0
    )
    return [
        RawMessage(m.data, dict(m.attributes), message_id=f"m-{m.seq}", subscription="shop-orders-tidegate")
        for m in generate(config, catalog, registry)
    ]


def with_payload(message: RawMessage, **changes: Any) -> RawMessage:
    payload = json.loads(message.data)
    payload.update(changes)
    return replace(message, data=json.dumps(payload).encode(), message_id=message.message_id + "-x")


def ce_id(m: RawMessage) -> str:
    return m.attributes.get("ce-id") or json.loads(m.data)["id"]


def ids(messages: list[RawMessage]) -> list[str]:
    return sorted(ce_id(m) for m in messages)


def rejected_as(rejected: Rejected) -> list[tuple[str | None, str, str]]:
    return sorted((r.event_id, r.stage, r.failures[0].rule) for r in rejected.rejections)


@pytest.fixture
def config(catalog: Any, tmp_path: Path) -> IngestConfig:
    return IngestConfig(str(tmp_path / "lake"), "run-composites", str(catalog.path), "test", "sha")


def test_decode_envelope_passes_cloudevents_and_rejects_what_is_not(catalog, registry, config) -> None:  # type: ignore[no-untyped-def]
    good = orders(catalog, registry, 4) + orders(catalog, registry, 2, seed=4, structured=True)
    garbled = replace(good[0], data=b'{"order_id": ', message_id="m-garbled")
    no_time = replace(
        good[1],
        attributes={k: v for k, v in good[1].attributes.items() if k != "ce-time"},
        message_id="m-no-time",
    )
    chunk = Chunk("b1", [*good, garbled, no_time])
    with test_pipeline.TestPipeline() as p:
        out = p | beam.Create([chunk]) | DecodeEnvelope(config)
        assert_that(
            out.valid | beam.Map(lambda d: sorted(env.id for _, env in d.items)),
            equal_to([ids(good)]),
            label="valid",
        )
        assert_that(
            out.invalid | beam.Map(rejected_as),
            equal_to(
                [
                    sorted(
                        [
                            (good[0].attributes["ce-id"], "envelope", "malformed_json"),
                            (good[1].attributes["ce-id"], "envelope", "missing_attribute"),
                        ]
                    )
                ]
            ),
            label="invalid",
        )


def test_validate_contract_types_payloads_and_rejects_violations(catalog, registry, config) -> None:  # type: ignore[no-untyped-def]
    good = orders(catalog, registry, 3)
    wrong_type = with_payload(good[0], item_count="three")
    unknown_field = with_payload(good[1], gift_wrap=True)
    items = []
    for m in [*good, wrong_type, unknown_field]:
        envelope = decode_stage(m, catalog)
        assert not isinstance(envelope, Rejection)
        items.append((m, envelope))
    with test_pipeline.TestPipeline() as p:
        out = p | beam.Create([Decoded("b1", items)]) | ValidateContract(config)
        assert_that(
            out.valid
            | beam.Map(
                lambda t: sorted((e.envelope.id, type(e.record["item_count"]).__name__) for e in t.events)
            ),
            equal_to([sorted((m.attributes["ce-id"], "int") for m in good)]),
            label="valid",
        )
        assert_that(
            out.invalid | beam.Map(rejected_as),
            equal_to(
                [
                    sorted(
                        [
                            (good[0].attributes["ce-id"], "contract", "wrong_type"),
                            (good[1].attributes["ce-id"], "contract", "unexpected_field"),
                        ]
                    )
                ]
            ),
            label="invalid",
        )


def typed(catalog: Any, registry: Any, messages: list[RawMessage]) -> list[ValidEvent]:
    events = []
    for m in messages:
        envelope = decode_stage(m, catalog)
        assert not isinstance(envelope, Rejection)
        event = contract_stage(m, envelope, registry)
        assert isinstance(event, ValidEvent)
        events.append(event)
    return events


def test_validate_expectations_runs_the_suite_and_reports_every_expectation(
    catalog, registry, config
) -> None:  # type: ignore[no-untyped-def]
    good = orders(catalog, registry, 5)
    bad_currency = with_payload(good[0], currency="XXX")  # a valid string, not in the suite's set
    events = typed(catalog, registry, [*good[1:], bad_currency])
    with test_pipeline.TestPipeline() as p:
        stage = ValidateExpectations(config)
        out = p | beam.Create([Typed("b1", events)]) | stage
        assert_that(
            out.valid | beam.Map(lambda t: sorted(e.envelope.id for e in t.events)),
            equal_to([ids(good[1:])]),
            label="valid",
        )
        assert_that(
            out.invalid | beam.Map(rejected_as),
            equal_to([[(good[0].attributes["ce-id"], "expectations", "expect_column_values_to_be_in_set")]]),
            label="invalid",
        )
        assert_that(
            stage.extra[QUALITY_TAG]
            | beam.Map(
                lambda bo: any(
                    o.expectation == "expect_column_values_to_be_in_set" and not o.success for o in bo[1]
                )
            ),
            equal_to([True]),
            label="quality",
        )


def test_write_raw_history_commits_once_and_a_retried_bundle_adds_nothing(catalog, registry, config) -> None:  # type: ignore[no-untyped-def]
    events = typed(catalog, registry, orders(catalog, registry, 6))
    for attempt in (1, 2):  # the second run is a retried bundle: same chunk, same batch
        with test_pipeline.TestPipeline() as p:
            out = p | beam.Create([Typed("b1", events)]) | WriteRawHistory(config)
            assert_that(
                out.commits | beam.Map(lambda c: (c.kind, c.event_type, c.received, c.inserted)),
                equal_to([("raw", "shop.order.placed", 6, 6 if attempt == 1 else 0)]),
            )
    raw = pl.read_delta(raw_uri(config.lake, "shop.order.placed"))
    assert sorted(raw.get_column("event_id").to_list()) == sorted(e.envelope.id for e in events)
    assert set(raw.get_column("batch_id")) == {"b1"}
    emails = {e.record["customer_email"] for e in events}
    assert not emails & set(raw.get_column("customer_email"))  # PII tokenized, never in clear
    assert raw.get_column("customer_email").str.starts_with("pii_").all()


def test_write_quarantine_keeps_the_reason_and_never_the_pii_in_clear(catalog, registry, config) -> None:  # type: ignore[no-untyped-def]
    good = orders(catalog, registry, 2)
    rejections = []
    for m in (replace(good[0], data=b"{", message_id="m-a"), with_payload(good[1], item_count="x")):
        envelope = decode_stage(m, catalog)
        result = envelope if isinstance(envelope, Rejection) else contract_stage(m, envelope, registry)
        assert isinstance(result, Rejection)
        rejections.append(result)
    with test_pipeline.TestPipeline() as p:
        out = p | beam.Create([Rejected("b1", rejections)]) | WriteQuarantine(config)
        assert_that(
            out | beam.Map(lambda c: (c.kind, c.received, c.inserted)), equal_to([("quarantine", 2, 2)])
        )
    q = pl.read_delta(QUARANTINE.uri(config.lake))
    assert sorted(q.select("stage", "rule").rows()) == [
        ("contract", "wrong_type"),
        ("envelope", "malformed_json"),
    ]
    emails = [json.loads(m.data)["customer_email"] for m in good]
    text = str(q.drop("payload_encrypted").to_dicts())
    assert not [e for e in emails if e in text]


def test_write_quality_stores_one_row_per_expectation(catalog, registry, config) -> None:  # type: ignore[no-untyped-def]
    from tidegate.transforms.ingest import suite_validator

    events = typed(catalog, registry, orders(catalog, registry, 4))
    outcomes = (
        suite_validator(config.catalog_path)
        .validate("shop.order.placed", [e.record for e in events])
        .outcomes
    )
    with test_pipeline.TestPipeline() as p:
        out = p | beam.Create([("b1", outcomes)]) | WriteQuality(config)
        assert_that(out | beam.Map(lambda c: (c.kind, c.inserted)), equal_to([("quality", len(outcomes))]))
    quality = pl.read_delta(QUALITY.uri(config.lake))
    assert quality.height == len(outcomes)
    assert quality.get_column("success").all()
    assert set(quality.get_column("batch_id")) == {"b1"}


def test_ingest_sends_every_message_to_exactly_one_table(catalog, registry, config) -> None:  # type: ignore[no-untyped-def]
    good = orders(catalog, registry, 8)
    bad = [replace(good[0], data=b"not json", message_id="m-bad1"), with_payload(good[1], currency="XXX")]
    chunk = Chunk("b1", [*good[2:], *bad])
    with test_pipeline.TestPipeline() as p:
        ingested = p | beam.Create([chunk]) | Ingest(config)
        assert_that(
            ingested.commits
            | beam.Filter(lambda c: c.kind in ("raw", "quarantine"))
            | beam.Map(lambda c: (c.kind, c.inserted)),
            equal_to([("raw", 6), ("quarantine", 2)]),
        )
    raw = pl.read_delta(raw_uri(config.lake, "shop.order.placed"))
    quarantine = pl.read_delta(QUARANTINE.uri(config.lake))
    assert sorted(raw.get_column("event_id")) == ids(good[2:])
    assert sorted(quarantine.get_column("rule")) == ["expect_column_values_to_be_in_set", "malformed_json"]
    assert raw.height + quarantine.height == len(chunk.messages)


def test_to_chunks_groups_messages_without_losing_any(catalog, registry) -> None:  # type: ignore[no-untyped-def]
    from tidegate.pipelines.streaming import ToChunks

    messages = orders(catalog, registry, 25)
    with test_pipeline.TestPipeline() as p:
        chunks = p | beam.Create(messages) | ToChunks(size=10, seconds=1.0, shards=2)
        assert_that(
            chunks | beam.FlatMap(lambda c: [m.attributes["ce-id"] for m in c.messages]),
            equal_to(ids(messages)),
            label="all",
        )
        assert_that(chunks | beam.Map(lambda c: len(c.messages)), _sizes_at_most(10), label="sizes")


def test_a_chunk_is_bounded_by_bytes_too(catalog, registry) -> None:  # type: ignore[no-untyped-def]
    """What ToChunks does to each batch GroupIntoBatches hands it: ten 3 MB messages with a 7 MB
    limit make chunks of two, none lost; a message over the limit travels alone; the batch is
    read once, lazily."""
    from tidegate.pipelines.streaming import message_bytes, split_by_bytes

    base = orders(catalog, registry, 11)
    big = [replace(m, data=m.data + b" " * 3_000_000) for m in base[:10]]
    huge = replace(base[10], data=base[10].data + b" " * 9_000_000)
    chunks = list(split_by_bytes(iter([*big[:5], huge, *big[5:]]), 7_000_000))
    assert [len(c.messages) for c in chunks] == [2, 2, 1, 1, 2, 2, 1]
    assert sorted(ce_id(m) for c in chunks for m in c.messages) == ids(base)
    assert all(len(c.messages) == 1 or sum(message_bytes(m) for m in c.messages) <= 7_000_000 for c in chunks)
    assert len({c.batch_id for c in chunks}) == len(chunks)


def _sizes_at_most(limit: int) -> Any:
    def check(sizes: list[int]) -> None:
        assert sum(sizes) == 25
        assert max(sizes) <= limit

    return check


def test_balance_ledger_writes_one_balanced_row_per_chunk(catalog, registry, config) -> None:  # type: ignore[no-untyped-def]
    """The streaming ledger branch: chunks and their commits meet per chunk id; each chunk's
    row is written once its messages add up (received = written + duplicates + quarantined)."""
    from dataclasses import replace as dc_replace

    from tidegate.lake.tables import LEDGER
    from tidegate.transforms.ledger import BalanceLedger, WriteLedger

    streaming = dc_replace(config, commit_per_chunk=True)
    good = orders(catalog, registry, 9)
    first = Chunk("c1", [*good[:4], replace(good[4], data=b"{", message_id="m-bad")])
    second = Chunk("c2", [*good[5:], good[0]])  # good[0] again: a duplicate of c1's
    with test_pipeline.TestPipeline() as p:
        chunks = p | beam.Create([first, second])
        ingested = chunks | Ingest(streaming)
        rows = chunks | BalanceLedger(streaming, ingested.commits)
        _ = rows | WriteLedger(streaming)
        assert_that(
            rows | beam.Map(lambda r: (r["batch_id"], r["received"], r["raw_written"], r["quarantined"])),
            equal_to([("c1", 5, 4, 1), ("c2", 5, 4, 0)]),
        )
    ledger = pl.read_delta(LEDGER.uri(config.lake)).sort("batch_id")
    assert ledger.select("batch_id", "received", "duplicates_skipped").rows() == [("c1", 5, 0), ("c2", 5, 1)]


def test_streaming_chunks_quarantine_an_id_conflict_and_their_ledger_rows_balance(
    catalog, registry, config
) -> None:  # type: ignore[no-untyped-def]
    """Streaming mode (one commit per chunk, the horizon MERGE): a copy of a landed event with
    another payload goes to the quarantine as id_conflict from the raw writer, and the chunk's
    ledger row still balances, with the conflict counted."""
    from dataclasses import replace as dc_replace

    from tidegate.transforms.ledger import BalanceLedger

    streaming = dc_replace(config, commit_per_chunk=True, single_writer=False, parallel_commits=False)
    good = orders(catalog, registry, 4, seed=8)
    first = Chunk("c1", good)
    second = Chunk("c2", [with_payload(good[1], item_count=99), replace(good[2], message_id="m-again")])
    with test_pipeline.TestPipeline() as p:
        chunks = p | beam.Create([first, second])
        ingested = chunks | Ingest(streaming)
        rows = chunks | BalanceLedger(streaming, ingested.commits)
        assert_that(
            rows
            | beam.Map(
                lambda r: (
                    r["batch_id"],
                    r["received"],
                    r["raw_written"],
                    r["duplicates_skipped"],
                    r["quarantined"],
                    r["id_conflicts"],
                )
            ),
            equal_to([("c1", 4, 4, 0, 0, 0), ("c2", 2, 0, 1, 1, 1)]),
        )
    q = pl.read_delta(QUARANTINE.uri(config.lake))
    assert q.select("rule", "event_id").rows() == [("id_conflict", ce_id(good[1]))]


def test_the_quarantine_lists_and_shows_a_message_without_pii_in_clear(
    catalog, registry, config, cli
) -> None:  # type: ignore[no-untyped-def]
    """`tidegate quarantine list|show` on what WriteQuarantine wrote: newest first, by rule; the
    decrypted original comes back with its PII fields tokenized."""
    from tidegate.lake.pii import load_protector
    from tidegate.lake.read import Lake
    from tidegate.ops.quarantine import quarantined, quarantined_message

    good = orders(catalog, registry, 2)
    bad = with_payload(good[1], item_count="x")
    envelope = decode_stage(bad, catalog)
    assert not isinstance(envelope, Rejection)
    rejection = contract_stage(bad, envelope, registry)
    assert isinstance(rejection, Rejection)
    with test_pipeline.TestPipeline() as p:
        _ = p | beam.Create([Rejected("b1", [rejection])]) | WriteQuarantine(config)
    lake = Lake(config.lake, catalog=catalog)
    listed = quarantined(lake, rule="wrong_type")
    assert listed.get_column("pubsub_message_id").to_list() == [bad.message_id]
    assert quarantined(lake, rule="malformed_json").is_empty()
    info = quarantined_message(lake, bad.message_id, load_protector()[0])
    email = json.loads(bad.data)["customer_email"]
    assert info["original"]["item_count"] == "x"
    assert info["original"]["customer_email"].startswith("pii_")
    assert email not in json.dumps(info, default=str)

    r = cli("quarantine", "show", "no-such-id", "--lake", config.lake)
    assert r.code == 2
    assert "quarantine list" in r.text
    r = cli("quarantine", "list", "--lake", config.lake, "--rule", "wrong_type", "--json")
    assert r.code == 0
    assert json.loads(r.text)[0]["rule"] == "wrong_type"
    # a rule the quarantine does not hold is most likely a typo: say which rules it holds
    r = cli("quarantine", "list", "--lake", config.lake, "--rule", "wrong_typ")
    assert r.code == 2, r.text
    assert "no rows under rule 'wrong_typ'" in r.text
    assert "wrong_type" in r.text
