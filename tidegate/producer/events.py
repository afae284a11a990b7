"""The sample shop's events: a deterministic generator of valid and faulty CloudEvents
(tidegate.producer says which kinds and where each lands)."""

from __future__ import annotations

import json
import random
import string
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tidegate.catalog import Catalog
from tidegate.expectations.contracts import ContractRegistry, dataschema_uri
from tidegate.expectations.envelope import to_binary, to_structured

FAULT_KINDS: tuple[str, ...] = (
    "malformed_json",
    "missing_required_field",
    "wrong_type",
    "out_of_range",
    "not_in_set",
    "unknown_type",
    "unknown_version",
    "missing_id",
    "missing_time",
    "bad_time",
    "non_utf8",
    "oversize",
)
VALID_KINDS: tuple[str, ...] = ("valid", "duplicate", "out_of_order", "late")

# The quarantine rule each fault must produce (stage: rule), used by tests and `verify`.
EXPECTED_RULE: dict[str, tuple[str, str]] = {
    "malformed_json": ("envelope", "malformed_json"),
    "missing_required_field": ("contract", "missing_required_field"),
    "wrong_type": ("contract", "wrong_type"),
    "out_of_range": ("expectations", "expect_column_values_to_be_between"),
    "not_in_set": ("expectations", "expect_column_values_to_be_in_set"),
    "unknown_type": ("contract", "unknown_type"),
    "unknown_version": ("contract", "unknown_version"),
    "missing_id": ("envelope", "missing_attribute"),
    "missing_time": ("envelope", "missing_attribute"),
    "bad_time": ("envelope", "invalid_attribute"),
    "non_utf8": ("envelope", "non_utf8"),
    "oversize": ("envelope", "oversize"),
}

# Share of traffic per type when several are produced: page views dominate a shop's stream.
TYPE_WEIGHTS = {"shop.page.viewed": 6, "shop.order.placed": 3, "shop.payment.captured": 2}

_FIRST = [
    "anna",
    "lena",
    "max",
    "lukas",
    "sofia",
    "emma",
    "noah",
    "mia",
    "elias",
    "paul",
    "lea",
    "ben",
    "clara",
    "jonas",
    "marie",
    "felix",
    "olivia",
    "liam",
    "ava",
    "lucas",
    "chloe",
    "hugo",
    "alice",
    "louis",
    "jade",
    "arthur",
    "ines",
    "leo",
    "nora",
    "finn",
    "ida",
    "oscar",
    "maja",
    "william",
    "elsa",
    "oliver",
    "freya",
    "james",
    "amelia",
    "mateo",
    "lucia",
    "pablo",
    "sara",
    "giulia",
    "marco",
    "chiara",
    "jan",
    "eva",
    "tomas",
    "petra",
    "nils",
    "astrid",
]
_LAST = [
    "mueller",
    "schmidt",
    "schneider",
    "fischer",
    "weber",
    "meyer",
    "wagner",
    "becker",
    "hoffmann",
    "schulz",
    "smith",
    "jones",
    "brown",
    "taylor",
    "wilson",
    "martin",
    "bernard",
    "dubois",
    "moreau",
    "laurent",
    "garcia",
    "martinez",
    "lopez",
    "rossi",
    "russo",
    "bianchi",
    "novak",
    "svoboda",
    "kowalski",
    "nowak",
    "jensen",
    "nielsen",
    "hansen",
    "johansson",
    "andersson",
    "berg",
    "lindqvist",
    "janssen",
    "devries",
    "bakker",
    "murphy",
    "kelly",
    "obrien",
    "walsh",
]
_DOMAINS = (
    "gmail.com",
    "outlook.com",
    "web.de",
    "gmx.de",
    "yahoo.com",
    "proton.me",
    "icloud.com",
    "orange.fr",
    "libero.it",
)
# (country, currency, share of customers)
_MARKETS = (
    ("DE", "EUR", 30),
    ("FR", "EUR", 12),
    ("NL", "EUR", 6),
    ("IT", "EUR", 6),
    ("ES", "EUR", 5),
    ("AT", "EUR", 4),
    ("GB", "GBP", 12),
    ("US", "USD", 10),
    ("CH", "CHF", 4),
    ("SE", "SEK", 3),
    ("DK", "DKK", 2),
    ("NO", "NOK", 2),
    ("PL", "PLN", 2),
    ("CZ", "CZK", 1),
    ("CA", "CAD", 1),
)
_CATEGORIES = ("shoes", "jackets", "shirts", "trousers", "bags", "accessories", "kids", "sale")
_ADJ = ("classic", "urban", "alpine", "merino", "trail", "linen", "vintage", "everyday", "recycled", "slim")
_NOUN = ("sneaker", "parka", "oxford-shirt", "chino", "backpack", "beanie", "boot", "hoodie", "tote", "belt")
_REFERRERS = (
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://duckduckgo.com/",
    "https://www.instagram.com/",
    "https://www.facebook.com/",
    "https://newsletter.shop.example.com/",
)
_COUPONS = ("WELCOME10", "BLACKFRIDAY", "SPRING24", "FREESHIP", "VIP20", "SUMMER15")
_SOURCES = {
    "shop.order.placed": "//shop.example.com/checkout",
    "shop.payment.captured": "//payments.shop.example.com/capture",
    "shop.page.viewed": "//shop.example.com/web",
}
_BASE36 = string.digits + string.ascii_uppercase
_LOWER36 = string.digits + string.ascii_lowercase


@dataclass(frozen=True)
class ProduceConfig:
    types: tuple[str, ...]
    count: int
    seed: int = 42
    start_time: datetime | None = None
    rate: float | None = None
    duplicate_rate: float = 0.0
    invalid_rate: float = 0.0
    out_of_order_rate: float = 0.0
    late_rate: float = 0.0
    out_of_order_max: timedelta = timedelta(minutes=2)
    late_by: timedelta = timedelta(hours=2)
    structured_rate: float = 0.05
    v2_rate: float = 0.5
    trace_rate: float = 0.3
    # event-time spacing between consecutive events when no --rate is given
    spacing: timedelta = timedelta(milliseconds=10)

    def resolved_start(self) -> datetime:
        """Where event time starts: given, or so that the last event is about now."""
        if self.start_time is not None:
            return self.start_time.astimezone(UTC)
        now = datetime.now(UTC).replace(microsecond=0)
        if self.rate:
            return now
        return now - self.spacing * self.count

    def step(self) -> timedelta:
        return timedelta(seconds=1 / self.rate) if self.rate else self.spacing


@dataclass(frozen=True)
class OutgoingMessage:
    seq: int
    topic: str
    data: bytes
    attributes: dict[str, str]
    event_type: str
    kind: str
    ce_id: str  # the id the event was generated with, even if a fault left it out
    event_time: datetime

    @property
    def expected(self) -> str:
        return "quarantine" if self.kind in EXPECTED_RULE else "raw"

    def manifest_row(self, message_id: str | None) -> dict[str, Any]:
        stage, rule = EXPECTED_RULE.get(self.kind, (None, None))
        return {
            "seq": self.seq,
            "ce_id": self.ce_id,
            "type": self.event_type,
            "kind": self.kind,
            "event_time": self.event_time.isoformat().replace("+00:00", "Z"),
            "topic": self.topic,
            "message_id": message_id,
            "expect": self.expected,
            "stage": stage,
            "rule": rule,
        }


@dataclass
class _Customer:
    id: str
    email: str
    country: str
    currency: str


@dataclass
class _World:
    """Deterministic pools so values repeat the way real traffic does (customers return)."""

    rng: random.Random
    customers: list[_Customer] = field(default_factory=list)
    sessions: list[tuple[str, str | None]] = field(default_factory=list)
    recent_orders: list[tuple[str, str, str]] = field(default_factory=list)
    products: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, rng: random.Random) -> _World:
        w = cls(rng)
        markets = [m for m in _MARKETS for _ in range(m[2])]
        seen_ids: set[str] = set()
        while len(w.customers) < 3000:
            cid = "cus_" + "".join(rng.choices(_BASE36, k=8))
            if cid in seen_ids:
                continue
            seen_ids.add(cid)
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            sep = rng.choice((".", "_", ""))
            num = str(rng.randint(1, 999)) if rng.random() < 0.4 else ""
            country, currency, _ = rng.choice(markets)
            w.customers.append(
                _Customer(cid, f"{first}{sep}{last}{num}@{rng.choice(_DOMAINS)}", country, currency)
            )
        w.products = [f"{a}-{n}-{rng.randint(100, 999)}" for a in _ADJ for n in _NOUN]
        return w

    def uid(self, prefix: str, k: int, alphabet: str = _BASE36) -> str:
        return prefix + "".join(self.rng.choices(alphabet, k=k))

    def session(self) -> tuple[str, str | None]:
        if not self.sessions or self.rng.random() < 0.08:
            user = self.rng.choice(self.customers).id if self.rng.random() < 0.4 else None
            self.sessions.append((self.uid("ses_", 12, _LOWER36), user))
            if len(self.sessions) > 400:
                self.sessions.pop(0)
        return self.rng.choice(self.sessions[-50:])


def _money(rng: random.Random, median: float) -> str:
    value = rng.lognormvariate(0, 0.8) * median
    return f"{min(value, 25000):.2f}"


def _order(w: _World, when: datetime, version: int) -> dict[str, Any]:
    c = w.rng.choice(w.customers)
    order_id = w.uid("ord_", 8)
    amount = _money(w.rng, 60.0)
    w.recent_orders.append((order_id, amount, c.currency))
    if len(w.recent_orders) > 500:
        w.recent_orders.pop(0)
    payload: dict[str, Any] = {
        "order_id": order_id,
        "customer_id": c.id,
        "customer_email": c.email,
        "amount": amount,
        "currency": c.currency,
        "item_count": 1 + int(w.rng.expovariate(0.6)),
        "country": c.country,
        "placed_at": _iso(when),
    }
    if version >= 2:
        payload["coupon_code"] = w.rng.choice(_COUPONS) if w.rng.random() < 0.2 else None
    return payload


def _payment(w: _World, when: datetime, version: int) -> dict[str, Any]:
    if w.recent_orders and w.rng.random() < 0.9:
        order_id, amount, currency = w.rng.choice(w.recent_orders)
    else:
        c = w.rng.choice(w.customers)
        order_id, amount, currency = w.uid("ord_", 8), _money(w.rng, 60.0), c.currency
    method = w.rng.choices(("card", "paypal", "bank_transfer"), weights=(70, 20, 10))[0]
    return {
        "payment_id": w.uid("pay_", 10),
        "order_id": order_id,
        "amount": amount,
        "currency": currency,
        "method": method,
    }


def _page_view(w: _World, when: datetime, version: int) -> dict[str, Any]:
    session_id, user_id = w.session()
    r = w.rng.random()
    if r < 0.15:
        path = "/"
    elif r < 0.45:
        path = f"/c/{w.rng.choice(_CATEGORIES)}"
    elif r < 0.9:
        path = f"/p/{w.rng.choice(w.products)}"
    else:
        path = w.rng.choice(("/cart", "/checkout", "/account", "/search?q=" + w.rng.choice(_NOUN)))
    ref_r = w.rng.random()
    referrer = (
        None
        if ref_r < 0.45
        else (
            w.rng.choice(_REFERRERS)
            if ref_r < 0.7
            else f"https://shop.example.com/c/{w.rng.choice(_CATEGORIES)}"
        )
    )
    return {
        "session_id": session_id,
        "user_id": user_id,
        "url": f"https://shop.example.com{path}",
        "referrer": referrer,
        "duration_ms": int(w.rng.expovariate(1 / 28000)),
    }


_BUILDERS: dict[str, Callable[[_World, datetime, int], dict[str, Any]]] = {
    "shop.order.placed": _order,
    "shop.payment.captured": _payment,
    "shop.page.viewed": _page_view,
}


# Types the sample domain does not cover still get traffic: values drawn from the contract.
_WORDS = ("alpha", "berlin", "cobalt", "delta", "ember", "fjord", "granite", "harbor", "indigo", "juniper")


def _generic_value(schema: Any, rng: random.Random, when: datetime) -> Any:
    if isinstance(schema, list):
        non_null = [b for b in schema if b != "null"]
        if "null" in schema and (not non_null or rng.random() < 0.2):
            return None
        return _generic_value(non_null[0], rng, when)
    if isinstance(schema, str):
        schema = {"type": schema}
    t, logical = schema.get("type"), schema.get("logicalType")
    if isinstance(t, dict | list):
        return _generic_value(t, rng, when)
    if logical == "decimal":
        scale = schema.get("scale", 0)
        return f"{rng.uniform(0, 500):.{scale}f}"
    if logical in (
        "timestamp-millis",
        "timestamp-micros",
        "local-timestamp-millis",
        "local-timestamp-micros",
    ):
        return _iso(when)
    if logical == "date":
        return when.date().isoformat()
    if logical == "uuid":
        return str(_uuid(rng))
    if t == "string":
        return f"{rng.choice(_WORDS)}-{rng.randint(1, 9999)}"
    if t in ("int", "long"):
        return rng.randint(0, 1000)
    if t in ("float", "double"):
        return round(rng.uniform(0, 1000), 3)
    if t == "boolean":
        return rng.random() < 0.5
    if t == "enum":
        return rng.choice(schema["symbols"])
    if t == "array":
        return [_generic_value(schema["items"], rng, when) for _ in range(rng.randint(1, 3))]
    if t == "map":
        return {rng.choice(_WORDS): _generic_value(schema["values"], rng, when) for _ in range(2)}
    if t == "record":
        return {f["name"]: _generic_value(f["type"], rng, when) for f in schema["fields"]}
    return None


def _is_textual(schema: Any) -> bool:
    if isinstance(schema, list):
        non_null = [b for b in schema if b != "null"]
        return bool(non_null) and _is_textual(non_null[0])
    if isinstance(schema, dict):
        if schema.get("logicalType"):
            return schema.get("logicalType") == "uuid"
        return _is_textual(schema.get("type"))
    return schema in ("string", "enum")


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _corrupt_payload(
    kind: str, event_type: str, payload: dict[str, Any], rng: random.Random, fields: list[dict[str, Any]]
) -> None:
    required = [f for f in fields if "default" not in f]
    if kind == "missing_required_field":
        del payload[rng.choice(required)["name"]]
    elif kind == "wrong_type":
        bad = {
            "shop.order.placed": ("item_count", "three"),
            "shop.payment.captured": ("amount", True),
            "shop.page.viewed": ("duration_ms", "12.5s"),
        }
        if event_type in bad:
            name, value = bad[event_type]
        else:
            target = rng.choice(required)
            name, value = target["name"], 12345 if _is_textual(target["type"]) else "not-a-number"
        payload[name] = value
    elif kind == "out_of_range":
        if event_type == "shop.page.viewed":
            payload["duration_ms"] = -rng.randint(1, 5000)
        elif event_type == "shop.order.placed" and rng.random() < 0.5:
            payload["item_count"] = 0
        else:
            payload["amount"] = f"-{rng.randint(1, 300)}.{rng.randint(0, 99):02d}"
    elif kind == "not_in_set":
        if event_type == "shop.order.placed" and rng.random() < 0.5:
            payload["country"] = rng.choice(("XX", "EU", "UK", "ZZ"))
        else:
            payload["currency"] = rng.choice(("XYZ", "EURO", "BTC", "usd"))


def generate(
    config: ProduceConfig, catalog: Catalog, registry: ContractRegistry
) -> Iterator[OutgoingMessage]:
    """Yield `config.count` messages, deterministically for (seed, start time)."""
    rng = random.Random(config.seed)
    world = _World.build(random.Random(config.seed ^ 0x5EED))
    start = config.resolved_start()
    step = config.step()
    weights = [TYPE_WEIGHTS.get(t, 1) for t in config.types]
    streams = {t: catalog.stream(t) for t in config.types}
    recent_valid: list[OutgoingMessage] = []
    oversize_pad = max(s.max_payload_bytes for s in streams.values()) + 1024

    for seq in range(config.count):
        nominal = start + step * seq
        # A duplicate: an earlier valid event published again, byte for byte (a producer retry).
        if recent_valid and rng.random() < config.duplicate_rate:
            orig = rng.choice(recent_valid)
            yield OutgoingMessage(
                seq,
                orig.topic,
                orig.data,
                dict(orig.attributes),
                orig.event_type,
                "duplicate",
                orig.ce_id,
                orig.event_time,
            )
            continue
        event_type = config.types[0] if len(config.types) == 1 else rng.choices(config.types, weights)[0]
        kind = "valid"
        if rng.random() < config.invalid_rate:
            kind = rng.choice(FAULT_KINDS)
            if kind == "not_in_set" and event_type == "shop.page.viewed":
                # page views have no value-set rule; a set fault needs a type that has one
                kind = "out_of_range"
            if kind in ("out_of_range", "not_in_set") and event_type not in _BUILDERS:
                kind = "wrong_type"  # value rules of a type we know nothing about are unknown
        else:
            r = rng.random()
            if r < config.late_rate:
                kind = "late"
            elif r < config.late_rate + config.out_of_order_rate:
                kind = "out_of_order"
        when = nominal
        if kind == "late":
            when = nominal - config.late_by
        elif kind == "out_of_order":
            when = nominal - timedelta(
                milliseconds=rng.randint(1000, int(config.out_of_order_max.total_seconds() * 1000))
            )
        stream = streams[event_type]
        contracts = registry.types[event_type]
        versions = sorted(contracts.versions)
        version = versions[-1] if len(versions) > 1 and rng.random() < config.v2_rate else versions[0]
        contract = contracts.versions[version]
        builder = _BUILDERS.get(event_type)
        payload = builder(world, when, version) if builder else _generic_value(contract.schema, rng, when)
        ce_id = str(_uuid(rng))
        attrs = {
            "id": ce_id,
            "source": _SOURCES.get(event_type, f"//tidegate/{event_type}"),
            "type": event_type,
            "specversion": "1.0",
            "time": _iso(when),
            "dataschema": dataschema_uri(event_type, version),
        }
        if rng.random() < config.trace_rate:
            attrs["traceparent"] = f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"
        if "order_id" in payload:
            attrs["subject"] = payload["order_id"]
        _corrupt_payload(kind, event_type, payload, rng, contract.schema["fields"])
        body = _dumps(payload)
        if kind == "malformed_json":
            body = body[: max(1, len(body) // 2)] if rng.random() < 0.5 else body.replace(b":", b"=", 1)
        elif kind == "non_utf8":
            payload_text = json.dumps(payload, ensure_ascii=False)
            body = payload_text.replace('"', '"\u00e9', 1).encode("latin-1", errors="replace")
        elif kind == "oversize":
            payload["notes"] = "x" * oversize_pad
            body = _dumps(payload)
        elif kind == "unknown_type":
            attrs["type"] = rng.choice(("shop.order.cancelled", "shop.cart.updated", "shop.order.placed.v2"))
        elif kind == "unknown_version":
            attrs["dataschema"] = dataschema_uri(event_type, versions[-1] + rng.randint(1, 7))
        elif kind == "missing_id":
            del attrs["id"]
        elif kind == "missing_time":
            del attrs["time"]
        elif kind == "bad_time":
            attrs["time"] = rng.choice(
                (
                    nominal.strftime("%d/%m/%Y %H:%M:%S"),
                    "2026-13-45T99:00:00Z",
                    "yesterday",
                    nominal.strftime("%Y-%m-%dT%H:%M:%S"),
                )
            )
        structured = kind in VALID_KINDS and rng.random() < config.structured_rate
        if structured:
            data, pubsub_attrs = to_structured(attrs, payload)
        else:
            data, pubsub_attrs = to_binary(attrs, body)
        msg = OutgoingMessage(seq, stream.topic, data, pubsub_attrs, event_type, kind, ce_id, when)
        if kind in VALID_KINDS:
            recent_valid.append(msg)
            if len(recent_valid) > 1000:
                recent_valid.pop(0)
        yield msg


def _uuid(rng: random.Random) -> Any:

    return uuid.UUID(int=rng.getrandbits(128), version=4)
