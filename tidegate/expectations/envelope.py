"""The CloudEvents 1.0 envelope over Pub/Sub: decode a message, or say precisely why not.

Two content modes are accepted, as in the CloudEvents Pub/Sub protocol binding:

- **binary** (what tidegate's producer sends): the event's attributes are Pub/Sub message
  attributes with a `ce-` prefix (`ce-id`, `ce-source`, `ce-type`, `ce-specversion`,
  `ce-time`, `ce-dataschema`, extensions such as `ce-traceparent`), `content-type` carries
  `datacontenttype` (`application/json`), and the message body is the JSON payload.
  Attribute values are used as they are (Pub/Sub attributes are UTF-8 strings already; the
  HTTP binding's percent-encoding does not apply).
- **structured**: attribute `content-type: application/cloudevents+json` and the body is the
  whole event as JSON (`{"specversion": "1.0", "id": ..., "data": {...}}`).

The CloudEvents SDK (`cloudevents.core.v1.event.CloudEvent`) validates the attribute set.
Two things are checked here *before* it sees them, because the SDK would otherwise repair
them silently: a missing `id` (it invents a UUID) and a missing `time` (it uses now). For a
lake both are data errors: an event without its id cannot be deduplicated, and one without
its time cannot be windowed.

JSON is read with two limits a hostile but syntactically legal body could otherwise turn into a
crash of the whole batch: nesting deeper than `MAX_JSON_DEPTH` (64) arrays/objects is
`json_too_deep` (checked on the text before parsing: Python's parser, the redaction of the
quarantine preview and pickling between workers all recurse), and an integer longer than
Python's 4300-digit conversion limit is `malformed_json`. A `\\uD800`-style escape of an unpaired
UTF-16 surrogate decodes to a string no UTF-8 writer accepts: `non_utf8`.

Every failure is a `EnvelopeError(rule, field, message)`; the rules are:
`oversize`, `non_utf8`, `malformed_json`, `json_too_deep`, `missing_attribute`,
`invalid_attribute`, `unsupported_specversion`, `unsupported_content_type`.

    uv run python -c "from tidegate.expectations.envelope import RawMessage, decode_envelope; \
        decode_envelope(RawMessage(b'[' * 65 + b']' * 65, {'ce-id': 'x'}), 65536)"
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import orjson
from cloudevents.core.exceptions import CloudEventValidationError
from cloudevents.core.v1.event import CloudEvent

from tidegate.errors import TerminalError
from tidegate.expectations.coercion import parse_rfc3339

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
JSON_CONTENT_TYPE = "application/json"
CE_PREFIX = "ce-"
REQUIRED = ("id", "source", "type", "specversion", "time")
# Deepest nesting of arrays/objects accepted: far beyond any event (tidegate's contracts nest
# 1-3 levels), far below Python's recursion limit (1000) that parsing, redaction and pickling hit.
MAX_JSON_DEPTH = 64
# A JSON string, or an unterminated one up to the end of the text: a match from every quote, so
# the scan stays linear (a pattern that could fail from a quote made `"\"\"...` quadratic: 17 s
# for 60 kB).
_JSON_STRING_RE = re.compile(r'"[^"\\]*(?:\\(?:.|\Z)[^"\\]*)*(?:"|\Z)', re.DOTALL)
_BRACKET_RE = re.compile(r"[\[\]{}]")


@dataclass(frozen=True)
class RawMessage:
    """A Pub/Sub message as tidegate sees it, independent of the client library."""

    data: bytes
    attributes: dict[str, str]
    message_id: str = ""
    publish_time: datetime | None = None
    subscription: str = ""


@dataclass(frozen=True)
class Envelope:
    """A decoded, spec-valid CloudEvent with JSON data (not yet checked against a contract)."""

    id: str
    source: str
    type: str
    specversion: str
    time: datetime
    data: Any
    mode: str  # "binary" or "structured"
    dataschema: str | None = None
    datacontenttype: str | None = None
    subject: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)


class EnvelopeError(TerminalError):
    """The CloudEvents envelope is bad: `rule` names the check, `field` the attribute. The event's
    id, type and time ride along whenever decoding got that far (the quarantine row keeps them)."""

    def __init__(
        self, rule: str, message: str, field: str | None = None, event_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.rule = rule
        self.field = field
        self.message = message
        self.event_id = event_id
        self.event_type: str | None = None
        self.event_time: datetime | None = None

    def identify(self, attrs: dict[str, Any]) -> EnvelopeError:
        """Fill in id, type and time from the event's attributes, where they can be read."""
        if self.event_id is None and isinstance(attrs.get("id"), str):
            self.event_id = attrs["id"]
        if self.event_type is None and isinstance(attrs.get("type"), str):
            self.event_type = attrs["type"]
        if self.event_time is None and isinstance(attrs.get("time"), str):
            with contextlib.suppress(ValueError):
                self.event_time = parse_rfc3339(attrs["time"])
        return self


def _is_json_content_type(ct: str | None) -> bool:
    if ct is None:
        return True  # CloudEvents: absent datacontenttype means application/json for our binding
    base = ct.split(";", 1)[0].strip().lower()
    return base == JSON_CONTENT_TYPE or (base.endswith("+json") and base != STRUCTURED_CONTENT_TYPE)


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvelopeError(
            "non_utf8", f"{what} is not valid UTF-8 (byte {exc.start}: {data[exc.start : exc.start + 1]!r})"
        ) from None


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON text nests arrays/objects more than `limit` levels deep (brackets inside
    strings do not count). Costs two `str.count` calls for a text with at most `limit`
    opening brackets (every normal event), which cannot nest deeper than that."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for bracket in _BRACKET_RE.findall(_JSON_STRING_RE.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


# a run of this many digits may be an integer beyond 64 bits, which orjson reads as a float
# One pass of bytes.translate answers both of _parse's questions: opening brackets become b"{"
# (counted), ASCII digits b"0" (a run of 19 is a long number), everything else b" ". It costs
# ~0.9 us on a small body, where counting brackets and re.search(rb"\d{19}") cost ~2.6 us.
_SHAPE = bytes(ord("{") if c in b"[{" else ord("0") if c in b"0123456789" else ord(" ") for c in range(256))
_LONG_NUMBER = b"0" * 19


def _parse(data: bytes, what: str) -> Any:
    """A JSON body as Python values: orjson (~2.5x faster) where it is sure to give what the
    standard library gives, `_json` otherwise. orjson refuses what `_json` must explain (bad
    UTF-8, unpaired surrogates, NaN, out-of-range numbers) and reads integers beyond 64 bits as
    floats, so any refusal, a long digit run or many brackets take the standard path."""
    shape = data.translate(_SHAPE)
    if shape.count(b"{") <= MAX_JSON_DEPTH and _LONG_NUMBER not in shape:
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(data)
    return _json(_utf8(data, what), what)


def _json(text: str, what: str) -> Any:
    if json_depth_exceeds(text):
        raise EnvelopeError(
            "json_too_deep", f"{what} nests arrays/objects more than {MAX_JSON_DEPTH} levels deep"
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EnvelopeError(
            "malformed_json", f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError:  # the only other one json raises: int("9" * 5000) is refused by Python
        raise EnvelopeError(
            "malformed_json",
            f"{what} has an integer of more than {sys.get_int_max_str_digits()} digits",
        ) from None
    if "\\u" in text and not _unicode_text(value):
        raise EnvelopeError(
            "non_utf8", f"{what} escapes an unpaired UTF-16 surrogate (\\ud800-\\udfff): not Unicode text"
        )
    return value


def _unicode_text(value: Any) -> bool:
    """Whether every string (keys included) of a parsed JSON value can be written as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_SPEC_NAMES = frozenset(
    {"id", "source", "type", "specversion", "time", "datacontenttype", "dataschema", "subject"}
)
_EXTENSION_NAME = re.compile(r"^[a-z0-9]+$")
_good_extensions: set[str] = set()


def spec_valid(attrs: dict[str, Any]) -> bool:
    """True only if the CloudEvents SDK's v1 attribute validation would accept `attrs` (the same
    rules, written without building error objects). Building a `CloudEvent` just to validate
    cost ~26 us per message, a third of decoding; this check costs ~2 us, and whenever it says
    no, the SDK itself decides and words the error (tests/test_envelope.py holds them equal)."""
    for name in ("id", "source", "type"):
        value = attrs.get(name)
        if not isinstance(value, str) or not value:
            return False
    if attrs.get("specversion") != "1.0":
        return False
    if "time" in attrs and (not isinstance(attrs["time"], datetime) or attrs["time"].tzinfo is None):
        return False
    for name in ("subject", "datacontenttype", "dataschema"):
        if name in attrs and (not isinstance(attrs[name], str) or not attrs[name]):
            return False
    for name in attrs:
        if name in _SPEC_NAMES or name in _good_extensions:
            continue
        if name == "data" or not _EXTENSION_NAME.match(name):
            return False
        if len(_good_extensions) < 1024:
            _good_extensions.add(name)
    return True


def _build(attributes: dict[str, Any], data: Any, mode: str) -> Envelope:
    event_id = attributes.get("id") if isinstance(attributes.get("id"), str) else None
    for name in REQUIRED:
        value = attributes.get(name)
        if value is None or value == "":
            raise EnvelopeError(
                "missing_attribute", f"required CloudEvents attribute '{name}' is missing", name, event_id
            )
    if attributes["specversion"] != "1.0":
        raise EnvelopeError(
            "unsupported_specversion",
            f"specversion {attributes['specversion']!r} is not supported (only 1.0)",
            "specversion",
            event_id,
        )
    raw_time = attributes["time"]
    try:
        when = parse_rfc3339(raw_time) if isinstance(raw_time, str) else None
    except ValueError as exc:
        raise EnvelopeError("invalid_attribute", f"time: {exc}", "time", event_id) from None
    if when is None:
        raise EnvelopeError("invalid_attribute", "time must be an RFC 3339 string", "time", event_id)
    attrs = {**attributes, "time": when}
    if not spec_valid(attrs):  # the SDK is the authority; it only runs when something is off
        try:
            CloudEvent(attrs, None)
        except CloudEventValidationError as exc:
            first = next(iter(exc.errors), None)
            raise EnvelopeError("invalid_attribute", str(exc).strip(), first, event_id) from None
    ext = {k: str(v) for k, v in attrs.items() if k not in _SPEC_NAMES}
    return frozen(
        Envelope,
        {
            "id": attrs["id"],
            "source": attrs["source"],
            "type": attrs["type"],
            "specversion": attrs["specversion"],
            "time": when,
            "data": data,
            "mode": mode,
            "dataschema": attrs.get("dataschema"),
            "datacontenttype": attrs.get("datacontenttype"),
            "subject": attrs.get("subject"),
            "traceparent": ext.pop("traceparent", None),
            "tracestate": ext.pop("tracestate", None),
            "extensions": ext,
        },
    )


_T = TypeVar("_T")
_new_object = object.__new__


def frozen(cls: type[_T], fields: dict[str, Any]) -> _T:
    """An instance of the frozen dataclass `cls` holding `fields` (every field, by name), made by
    filling its `__dict__`. The generated constructor sets each field through
    `object.__setattr__`: ~2.7 us for Envelope's 13 fields against ~0.8 us here, on every message
    (decode; the pullers' RawMessage). tests/test_envelope.py checks both classes come out equal
    to what their constructors make, every field set, still frozen."""
    instance = _new_object(cls)
    instance.__dict__.update(fields)
    return instance


_UNSEEN = object()
_ce_names: dict[str, str | None] = {}  # attribute key -> CloudEvents name (None: not ce-*)


def _ce_attributes(attributes: dict[str, str]) -> dict[str, Any]:
    """The ce-* attributes by their CloudEvents name (`ce-Time` -> `time`; a later key of the
    same name wins). The names are looked up in a bounded cache of the keys seen: producers
    send the same few keys on every message, and lower-casing and slicing each of them cost
    ~2.7 us of a ~14 us decode."""
    names = _ce_names
    out: dict[str, Any] = {}
    for k, v in attributes.items():
        name = names.get(k, _UNSEEN)
        if name is _UNSEEN:
            name = k[len(CE_PREFIX) :].lower() if k.lower().startswith(CE_PREFIX) else None
            if len(names) < 1024:
                names[k] = name
        if name is not None:
            out[name] = v  # type: ignore[index]
    return out


def decode_envelope(message: RawMessage, max_payload_bytes: int) -> Envelope:
    """Decode one Pub/Sub message into an Envelope or raise EnvelopeError (which names the
    event's id, type and time when they could be read)."""
    size = len(message.data)
    content_type = message.attributes.get("content-type") or message.attributes.get("Content-Type")
    attrs = _ce_attributes(message.attributes)
    binary = bool(attrs)  # any ce-* attribute: binary mode
    if size > max_payload_bytes:  # never parse a body over the limit (structured mode: not even its id)
        oversize = EnvelopeError(
            "oversize", f"message body is {size} bytes, the limit is {max_payload_bytes}"
        )
        raise oversize.identify(attrs)
    if binary:
        try:
            return _decode_binary(message, attrs, content_type)
        except EnvelopeError as exc:
            raise exc.identify(attrs) from None
    if content_type and content_type.split(";", 1)[0].strip().lower() == STRUCTURED_CONTENT_TYPE:
        doc = _parse(message.data, "structured event")
        if not isinstance(doc, dict):
            raise EnvelopeError("malformed_json", "structured event must be a JSON object")
        try:
            return _decode_structured(doc)
        except EnvelopeError as exc:
            raise exc.identify(doc) from None
    raise EnvelopeError(
        "missing_attribute",
        "not a CloudEvent: no ce-* attributes (binary mode) and content-type is not "
        f"{STRUCTURED_CONTENT_TYPE} (structured mode)",
        "specversion",
    )


def _decode_binary(message: RawMessage, attrs: dict[str, Any], content_type: str | None) -> Envelope:
    if content_type:
        attrs["datacontenttype"] = content_type
    if not _is_json_content_type(content_type):
        raise EnvelopeError(
            "unsupported_content_type",
            f"content-type {content_type!r} is not JSON; tidegate payloads are application/json",
            "datacontenttype",
        )
    if not message.data:
        raise EnvelopeError("malformed_json", "message body is empty; expected a JSON payload")
    data = _parse(message.data, "payload")
    return _build(attrs, data, "binary")


def _decode_structured(doc: dict[str, Any]) -> Envelope:
    """The JSON event format: attributes and `data` (JSON) or `data_base64` (the payload's bytes,
    base64; with a JSON content type they are decoded and parsed like a binary-mode body)."""
    inner_ct = doc.get("datacontenttype")
    if not _is_json_content_type(inner_ct if isinstance(inner_ct, str) else None):
        raise EnvelopeError(
            "unsupported_content_type", f"datacontenttype {inner_ct!r} is not JSON", "datacontenttype"
        )
    if "data_base64" in doc:
        if "data" in doc:
            raise EnvelopeError(
                "invalid_attribute", "an event carries either data or data_base64, not both", "data_base64"
            )
        encoded = doc.pop("data_base64")
        try:
            raw = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None:
            raise EnvelopeError("malformed_json", "data_base64 is not a base64 string", "data_base64")
        data = _json(_utf8(raw, "data_base64 payload"), "data_base64 payload")
    else:
        data = doc.pop("data", None)
    return _build(doc, data, "structured")


def to_binary(
    attributes: dict[str, str], data: bytes, content_type: str = JSON_CONTENT_TYPE
) -> tuple[bytes, dict[str, str]]:
    """Binary-mode Pub/Sub message for CloudEvents attributes (without the ce- prefix)."""
    out = {f"{CE_PREFIX}{k}": v for k, v in attributes.items()}
    out["content-type"] = content_type
    return data, out


def to_structured(attributes: dict[str, str], data: Any) -> tuple[bytes, dict[str, str]]:
    """Structured-mode Pub/Sub message: the whole event as the JSON body."""
    doc = {**attributes, "datacontenttype": JSON_CONTENT_TYPE, "data": data}
    return json.dumps(doc, separators=(",", ":")).encode(), {"content-type": STRUCTURED_CONTENT_TYPE}
