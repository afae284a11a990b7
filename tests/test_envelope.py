"""CloudEvents over Pub/Sub: both content modes decode; every envelope fault is named."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from tidegate.expectations.envelope import (
    MAX_JSON_DEPTH,
    Envelope,
    EnvelopeError,
    RawMessage,
    decode_envelope,
    json_depth_exceeds,
    to_binary,
    to_structured,
)

ATTRS = {
    "id": "3f1c2a9e-7a51-4a43-9a3e-1f0d8b6f2c11",
    "source": "//shop.example.com/checkout",
    "type": "shop.order.placed",
    "specversion": "1.0",
    "time": "2026-11-26T10:15:00.250Z",
    "dataschema": "urn:tidegate:contract:shop.order.placed:v1",
}
DATA = {"order_id": "ord_7Q2K9X4M", "amount": "12.00"}
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def binary(attrs: dict[str, str] | None = None, body: bytes | None = None) -> RawMessage:
    data, pubsub_attrs = to_binary(
        ATTRS if attrs is None else attrs, json.dumps(DATA).encode() if body is None else body
    )
    return RawMessage(data, pubsub_attrs, message_id="1")


def fault(msg: RawMessage, limit: int = 65536) -> tuple[str, str | None]:
    with pytest.raises(EnvelopeError) as exc:
        decode_envelope(msg, limit)
    return exc.value.rule, exc.value.field


def test_binary_mode_decodes_attributes_and_json_data() -> None:
    env = decode_envelope(binary({**ATTRS, "traceparent": TRACE, "subject": "ord_7Q2K9X4M"}), 65536)
    assert env.mode == "binary"
    assert env.id == ATTRS["id"]
    assert env.type == "shop.order.placed"
    assert env.time.isoformat() == "2026-11-26T10:15:00.250000+00:00"
    assert env.data == DATA
    assert env.traceparent == TRACE  # W3C trace context carried through
    assert env.subject == "ord_7Q2K9X4M"
    assert env.datacontenttype == "application/json"


def test_structured_mode_decodes_the_same_event() -> None:
    data, attrs = to_structured({**ATTRS, "traceparent": TRACE}, DATA)
    env = decode_envelope(RawMessage(data, attrs), 65536)
    assert env.mode == "structured"
    assert (env.id, env.type, env.dataschema, env.data, env.traceparent) == (
        ATTRS["id"],
        ATTRS["type"],
        ATTRS["dataschema"],
        DATA,
        TRACE,
    )


def test_a_decoded_envelope_is_the_frozen_dataclass_with_every_field_set() -> None:
    """decode fills the Envelope's __dict__ directly (speed): it must be the same object the
    dataclass's own constructor makes, and as immutable."""
    env = decode_envelope(binary({**ATTRS, "traceparent": TRACE, "tenant": "eu1"}), 65536)
    assert set(vars(env)) == {f.name for f in dataclasses.fields(Envelope)}
    assert env == Envelope(**{f.name: getattr(env, f.name) for f in dataclasses.fields(Envelope)})
    assert env.extensions == {"tenant": "eu1"}
    assert env.tracestate is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.id = "other"  # type: ignore[misc]


def test_attribute_names_are_read_case_insensitively_and_other_attributes_ignored() -> None:
    data, attrs = to_binary(ATTRS, json.dumps(DATA).encode())
    attrs = {("CE-TYPE" if k == "ce-type" else k): v for k, v in attrs.items()}
    for _ in range(2):  # the second time from the cache of the names seen
        env = decode_envelope(
            RawMessage(data, {**attrs, "x-goog-trace": "t", "Ce-Tenant": "eu1"}, "1"), 65536
        )
        assert env.type == ATTRS["type"]
        assert env.extensions == {"tenant": "eu1"}


def test_unknown_extensions_are_kept() -> None:
    env = decode_envelope(binary({**ATTRS, "tenant": "eu1"}), 65536)
    assert env.extensions == {"tenant": "eu1"}


@pytest.mark.parametrize("name", ["id", "time", "source", "type", "specversion"])
def test_missing_required_attribute_is_not_invented(name: str) -> None:
    # The CloudEvents SDK would invent an id and a time; a lake must not.
    attrs = {k: v for k, v in ATTRS.items() if k != name}
    assert fault(binary(attrs)) == ("missing_attribute", name)


@pytest.mark.parametrize(
    "bad", ["26/11/2026 10:15:00", "2026-13-45T99:00:00Z", "yesterday", "2026-11-26T10:15:00"]
)
def test_bad_time_is_rejected(bad: str) -> None:
    assert fault(binary({**ATTRS, "time": bad})) == ("invalid_attribute", "time")


def test_wrong_specversion_is_rejected() -> None:
    assert fault(binary({**ATTRS, "specversion": "0.3"})) == ("unsupported_specversion", "specversion")


def test_malformed_json_is_rejected_with_position() -> None:
    with pytest.raises(EnvelopeError) as exc:
        decode_envelope(binary(body=b'{"order_id": "ord_1", "amount": '), 65536)
    assert exc.value.rule == "malformed_json"
    assert "line 1 column" in exc.value.message
    assert exc.value.event_id == ATTRS["id"]  # still attributable to its event


def test_non_utf8_is_rejected() -> None:
    assert fault(binary(body='{"email": "jos\u00e9@x.de"}'.encode("latin-1"))) == ("non_utf8", None)


def test_oversize_is_rejected_before_parsing() -> None:
    assert fault(binary(body=b"{" + b" " * 70000 + b"}"), limit=65536) == ("oversize", None)


def test_empty_body_is_malformed() -> None:
    assert fault(binary(body=b"")) == ("malformed_json", None)


def test_non_json_content_type_is_rejected() -> None:
    data, attrs = to_binary(ATTRS, b"<order/>", content_type="application/xml")
    assert fault(RawMessage(data, attrs)) == ("unsupported_content_type", "datacontenttype")


def test_invalid_extension_name_is_rejected_by_the_sdk() -> None:
    assert fault(binary({**ATTRS, "Bad_Name": "x"}))[0] == "invalid_attribute"


def test_message_without_any_cloudevents_markers() -> None:
    assert fault(RawMessage(b'{"a": 1}', {"origin": "legacy"}))[0] == "missing_attribute"


def test_structured_mode_faults() -> None:
    assert (
        fault(RawMessage(b"[1,2]", {"content-type": "application/cloudevents+json"}))[0] == "malformed_json"
    )
    body = json.dumps({k: v for k, v in ATTRS.items() if k != "id"} | {"data": DATA}).encode()
    assert fault(RawMessage(body, {"content-type": "application/cloudevents+json"})) == (
        "missing_attribute",
        "id",
    )
    body = json.dumps(ATTRS | {"data_base64": "not base64!"}).encode()
    assert fault(RawMessage(body, {"content-type": "application/cloudevents+json"})) == (
        "malformed_json",
        "data_base64",
    )
    body = json.dumps(ATTRS | {"data_base64": "eyJhIjoxfQ==", "data": {"a": 1}}).encode()
    assert fault(RawMessage(body, {"content-type": "application/cloudevents+json"})) == (
        "invalid_attribute",
        "data_base64",
    )


@pytest.mark.parametrize("time", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_time_outside_years_1_to_9999_in_utc_is_an_invalid_attribute(time: str) -> None:
    # A legal RFC 3339 time whose UTC instant is in year 0 or 10000: no datetime can hold it.
    with pytest.raises(EnvelopeError) as exc:
        decode_envelope(binary({**ATTRS, "time": time}), 65536)
    assert (exc.value.rule, exc.value.field, exc.value.event_id) == ("invalid_attribute", "time", ATTRS["id"])
    assert "outside the storable range" in exc.value.message


def test_json_depth_counts_nesting_not_brackets_in_strings() -> None:
    assert not json_depth_exceeds("[" * 64 + "]" * 64)
    assert json_depth_exceeds("[" * 65 + "]" * 65)
    assert json_depth_exceeds('{"a":' * 65 + "1" + "}" * 65)
    assert not json_depth_exceeds(json.dumps({"note": "[[[{{{" * 100}))  # inside a string
    assert not json_depth_exceeds(json.dumps(['\\"[[[' * 100, '"' + "{" * 100]))  # escapes
    assert not json_depth_exceeds(json.dumps([[i] for i in range(1000)]))  # many, but shallow


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 500, 5000])
def test_json_nested_beyond_the_cap_is_rejected_before_parsing(depth: int) -> None:
    body = ("[" * depth + "]" * depth).encode()
    assert fault(binary(body=body)) == ("json_too_deep", None)
    structured = b'{"specversion": "1.0", "data": ' + body + b"}"
    assert fault(RawMessage(structured, {"content-type": "application/cloudevents+json"})) == (
        "json_too_deep",
        None,
    )


def test_json_nested_to_the_cap_is_read() -> None:
    body = ("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH).encode()
    assert decode_envelope(binary(body=body), 65536).data == json.loads(body)


def test_integer_beyond_pythons_digit_limit_is_malformed_json() -> None:
    with pytest.raises(EnvelopeError) as exc:
        decode_envelope(binary(body=b'{"amount": ' + b"9" * 5000 + b"}"), 65536)
    assert (exc.value.rule, exc.value.event_id) == ("malformed_json", ATTRS["id"])
    assert "more than 4300 digits" in exc.value.message


def test_lone_surrogate_escape_is_not_unicode_but_a_pair_is() -> None:
    assert fault(binary(body=b'{"name": "x\\ud800y"}')) == ("non_utf8", None)
    assert fault(binary(body=b'{"x\\udc00": 1}')) == ("non_utf8", None)  # keys too
    assert decode_envelope(binary(body=b'{"name": "\\ud83d\\ude00"}'), 65536).data == {"name": "\U0001f600"}
    assert decode_envelope(binary(body=b'{"name": "\\\\ud800"}'), 65536).data == {"name": "\\ud800"}


def test_depth_scan_stays_linear_on_unterminated_strings() -> None:
    # 65 brackets pass the cheap gate; then 30k escaped quotes without a closing quote took
    # 17 s with a string pattern that could fail from every quote.
    started = time.perf_counter()
    assert json_depth_exceeds("[" * 65 + '"' + '\\"' * 30000 + "\\")
    assert not json_depth_exceeds("[" * 60 + '"' + "[" * 30000)  # inside an unterminated string
    assert time.perf_counter() - started < 1.0


def test_the_fast_spec_check_accepts_only_what_the_cloudevents_sdk_accepts() -> None:
    from datetime import UTC, datetime

    from cloudevents.core.exceptions import CloudEventValidationError
    from cloudevents.core.v1.event import CloudEvent

    from tidegate.expectations.envelope import spec_valid

    good = {
        "id": "e-1",
        "source": "//shop/checkout",
        "type": "shop.order.placed",
        "specversion": "1.0",
        "time": datetime(2026, 11, 26, tzinfo=UTC),
        "dataschema": "urn:x:v1",
        "datacontenttype": "application/json",
        "subject": "s",
        "traceparent": "00-ab-cd-01",
    }
    variants = [good]
    for key in list(good):
        variants.append({k: v for k, v in good.items() if k != key})
        for bad in ("", None, 7, datetime(2026, 11, 26)):
            variants.append({**good, key: bad})
    variants += [
        {**good, "data": "x"},
        {**good, "Bad-Name": "x"},
        {**good, "ext9": "y"},
        {**good, "specversion": "0.3"},
    ]
    for attrs in variants:
        try:
            CloudEvent(dict(attrs), None)
            sdk = True
        except CloudEventValidationError:
            sdk = False
        # the SDK fills a missing id, time or specversion itself; tidegate rejects those earlier
        if spec_valid(attrs):
            assert sdk, attrs
        elif all(k in attrs for k in ("id", "specversion", "time")):
            assert not sdk, attrs


def _sdk_event(data: bytes | dict[str, object]):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    from cloudevents.core.v1.event import CloudEvent

    attrs = {k: v for k, v in ATTRS.items() if k != "time"}
    attrs |= {
        "time": datetime(2026, 11, 26, 10, 15, 0, 250000, tzinfo=UTC),
        "datacontenttype": "application/json",
    }
    return CloudEvent(attrs, data)


def test_the_cloudevents_sdks_own_structured_and_binary_outputs_decode() -> None:
    """What the official SDK writes: structured JSON with `data_base64` (bytes data) or `data`,
    and the binary binding's ce- headers; all give the same event."""
    from cloudevents.core.bindings.http import to_binary as sdk_binary
    from cloudevents.core.formats.json import JSONFormat

    structured_ct = {"content-type": "application/cloudevents+json"}
    as_bytes = JSONFormat().write(_sdk_event(json.dumps(DATA).encode()))
    assert b"data_base64" in as_bytes
    as_json = JSONFormat().write(_sdk_event(DATA))
    headers = sdk_binary(_sdk_event(DATA), JSONFormat())
    from_binary = RawMessage(headers.body, dict(headers.headers))
    for msg in (RawMessage(as_bytes, structured_ct), RawMessage(as_json, structured_ct), from_binary):
        env = decode_envelope(msg, 65536)
        assert (env.id, env.type, env.data) == (ATTRS["id"], ATTRS["type"], DATA)
        assert env.time.isoformat() == "2026-11-26T10:15:00.250000+00:00"


def test_lower_case_t_and_z_are_rfc3339() -> None:
    env = decode_envelope(binary(ATTRS | {"time": "2026-12-01t20:56:29z"}), 65536)
    assert env.time.isoformat() == "2026-12-01T20:56:29+00:00"


def test_a_structured_rejection_still_names_the_events_id_type_and_time(catalog) -> None:  # type: ignore[no-untyped-def]
    from tidegate.expectations.checks import Rejection, decode_stage

    body = json.dumps(ATTRS | {"specversion": "0.9", "data": DATA}).encode()
    rejected = decode_stage(RawMessage(body, {"content-type": "application/cloudevents+json"}), catalog)
    assert isinstance(rejected, Rejection)
    assert rejected.rules == ["unsupported_specversion"]
    assert (rejected.event_id, rejected.event_type) == (ATTRS["id"], ATTRS["type"])
    assert rejected.event_time is not None
    assert rejected.event_time.isoformat() == "2026-11-26T10:15:00.250000+00:00"


def test_a_type_the_catalog_puts_on_another_topic_is_quarantined(catalog) -> None:  # type: ignore[no-untyped-def]
    from tidegate.expectations.checks import Rejection, decode_stage

    page_view = ATTRS | {
        "type": "shop.page.viewed",
        "dataschema": "urn:tidegate:contract:shop.page.viewed:v1",
    }
    data, attrs = to_binary(page_view, json.dumps(DATA).encode())
    on_orders = RawMessage(data, attrs, message_id="1", subscription="shop-orders-tidegate")
    rejected = decode_stage(on_orders, catalog)
    assert isinstance(rejected, Rejection)
    assert rejected.rules == ["type_not_on_topic"]
    assert "shop-orders" in rejected.failures[0].message
    # on its own topic, or read from elsewhere (a test, the dead-letter sweep), it passes this stage
    for subscription in ("shop-pageviews-tidegate", "", "tidegate-dead-letter-sub"):
        ok = RawMessage(data, attrs, message_id="1", subscription=subscription)
        assert (
            not isinstance(decode_stage(ok, catalog), Rejection) or subscription == "shop-pageviews-tidegate"
        )


def test_event_time_far_ahead_of_publish_time_or_too_old_is_quarantined(catalog, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    from tests.conftest import CONTRACTS_DIR
    from tidegate.catalog import load_catalog
    from tidegate.expectations.checks import Rejection, decode_stage

    published = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def check(cat, when: str):  # type: ignore[no-untyped-def]
        data, attrs = to_binary(ATTRS | {"time": when}, json.dumps(DATA).encode())
        out = decode_stage(RawMessage(data, attrs, message_id="1", publish_time=published), cat)
        return out.rules if isinstance(out, Rejection) else []

    assert check(catalog, "2099-01-01T00:00:00Z") == ["event_time_in_future"]
    assert check(catalog, "2026-12-01T12:59:00Z") == []  # within the default hour
    assert check(catalog, "2020-01-01T00:00:00Z") == []  # no max_event_age by default
    text = catalog.path.read_text().replace(
        "contracts: ../expectations/contracts", f"contracts: {CONTRACTS_DIR}"
    )
    text = text.replace(
        "  compatibility: FULL_TRANSITIVE\n", "  compatibility: FULL_TRANSITIVE\n  max_event_age: 30d\n", 1
    )
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    strict = load_catalog(path)
    assert check(strict, "2020-01-01T00:00:00Z") == ["event_too_old"]
    assert check(strict, "2026-11-20T00:00:00Z") == []


def test_streams_sharing_a_topic_accept_each_others_types(catalog, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two streams on one topic: a message of either type is on its topic on both subscriptions
    (each lands once in its own raw table; the other copy is a duplicate there)."""
    from tests.conftest import CONTRACTS_DIR
    from tidegate.catalog import load_catalog

    text = catalog.path.read_text().replace(
        "contracts: ../expectations/contracts", f"contracts: {CONTRACTS_DIR}"
    )
    text = text.replace("topic: shop-payments", "topic: shop-orders")  # payments share the orders topic
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    shared = load_catalog(path)
    assert shared.types_by_subscription["shop-payments-tidegate"] == {
        "shop.order.placed",
        "shop.payment.captured",
    }
    assert shared.types_by_subscription["shop-pageviews-tidegate"] == {"shop.page.viewed"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"amount": 123456789012345678901234567890}',  # beyond 64 bits: an int, never a float
        b'{"amount": -9999999999999999999}',
        b'{"amount": NaN}',
        b'{"amount": 1e400}',
        b'{"note": "\\ud83d\\ude00", "n": 9223372036854775807}',
    ],
)
def test_payload_values_are_exactly_what_the_standard_library_reads(body: bytes) -> None:
    """The fast JSON path (orjson) never changes a value: where it would (long integers, NaN,
    infinities) the standard library reads the body, so the contract sees the same types."""
    got = decode_envelope(binary(body=body), 65536).data
    want = json.loads(body)
    assert json.dumps(got) == json.dumps(want)
    assert [type(v) for v in got.values()] == [type(v) for v in want.values()]


def test_a_pulled_message_becomes_the_frozen_raw_message_with_every_field() -> None:
    """to_raw fills the RawMessage's __dict__ directly (speed, on the pullers' threads): it must
    equal what the dataclass's constructor makes, stay immutable, and copy the attributes."""
    from datetime import UTC, datetime

    from google.pubsub_v1.types import PullResponse

    from tidegate.pipelines.local.consumer import to_raw

    attrs = {"ce-id": "e1", "ce-type": "shop.order.placed", "content-type": "application/json"}
    response = PullResponse(
        received_messages=[
            {
                "ack_id": "a1",
                "message": {
                    "data": b'{"x": 1}',
                    "attributes": attrs,
                    "message_id": "42",
                    "publish_time": {"seconds": 1_764_800_000, "nanos": 250_000_000},
                },
            }
        ]
    )
    raw = to_raw(PullResponse.pb(response).received_messages[0], "projects/p/subscriptions/s")
    want = RawMessage(
        b'{"x": 1}', attrs, "42", datetime.fromtimestamp(1_764_800_000.25, UTC), "projects/p/subscriptions/s"
    )
    assert raw == want
    assert set(vars(raw)) == {f.name for f in dataclasses.fields(RawMessage)}
    assert type(raw.attributes) is dict
    with pytest.raises(dataclasses.FrozenInstanceError):
        raw.data = b""  # type: ignore[misc]
