"""The stream catalog: one declarative file that describes tidegate's world.

It names the GCP project, the topics and subscriptions of every event stream, the
dead-letter topic, where contracts live and each type's compatibility mode. `tidegate up`
provisions the emulator from it, the pipeline reads it, and the Terraform is generated from
it, so there is never a second list of topics to keep in sync.

    tidegate contracts list            # what the catalog declares
    TIDEGATE_CATALOG=my.yaml tidegate up

The default catalog is `tidegate/infra/catalog.yaml` (shipped inside the package, so an installed
tidegate and a Dataflow worker read the same file as a checkout).
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from enum import StrEnum
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tidegate.errors import ConfigError

CATALOG_ENV = "TIDEGATE_CATALOG"

# GCP resource-name rules (topics and subscriptions): 3-255 chars, start with a letter,
# letters, digits, - _ . ~ + %; must not start with "goog".
_RESOURCE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")
_PROJECT_RE = re.compile(r"^[a-z][a-z0-9\-]{4,28}[a-z0-9]$")
_EVENT_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_DURATION_RE = re.compile(r"^(\d+)([smhd])$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Compatibility(StrEnum):
    """Schema-evolution modes, as in Confluent's and Pub/Sub's schema registries."""

    NONE = "NONE"
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"

    @property
    def transitive(self) -> bool:
        return self.value.endswith("_TRANSITIVE")

    @property
    def backward(self) -> bool:
        """New readers must read data written with older schemas."""
        return self.value.startswith(("BACKWARD", "FULL"))

    @property
    def forward(self) -> bool:
        """Old readers must read data written with newer schemas."""
        return self.value.startswith(("FORWARD", "FULL"))


def parse_duration(text: str) -> int:
    """'7d' -> 604800 seconds. Raises ValueError on anything else."""
    m = _DURATION_RE.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration like 600s, 30m, 12h or 7d")
    return int(m.group(1)) * _DURATION_UNITS[m.group(2)]


def _optional_duration(value: str | None) -> str | None:
    """A duration setting that may be left out: checked, kept as written."""
    if value is not None:
        parse_duration(value)
    return value


def _resource_name(value: str) -> str:
    if not _RESOURCE_RE.match(value) or value.startswith("goog"):
        raise ValueError(
            f"{value!r} is not a valid Pub/Sub resource id (3-255 chars, starts with a letter, "
            "letters/digits/-_.~+%, not starting with 'goog')"
        )
    return value


ResourceName = Annotated[str, Field(min_length=3)]


def _duration(value: str) -> str:
    parse_duration(value)
    return value


def _landed_attributes(v: list[str]) -> list[str]:
    """Only CloudEvents attributes that land in raw as free text can be classified as PII."""
    for name in v:
        if name not in ("subject",):
            raise ValueError(
                f"pii_attributes: {name!r} is not an attribute tidegate lands as free text (only 'subject')"
            )
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Owner(_Strict):
    """Who answers for a stream: shown in status and lineage, sent in OpenLineage's ownership facet."""

    team: str
    contact: str = ""


def _retention(value: str | None) -> str | None:
    if value is not None:
        seconds = parse_duration(value)
        if seconds < 86400:
            raise ValueError(
                f"retention {value!r} is under a day: retention is counted in days of event time"
            )
    return value


class QuarantineSettings(_Strict):
    """The quarantine's own retention (rows quarantined longer ago are deleted by `maintain`)."""

    retention: str | None = "30d"

    _lake_retention = field_validator("retention")(_retention)


class VolumeMonitor(_Strict):
    """Events per window against the stream's own rolling baseline (the median of the
    previous `baseline_windows` windows): below `drop_below` x baseline is a drop, above
    `spike_above` x a spike. Needs `min_baseline` events per window on average to judge."""

    window: str = "5m"
    baseline_windows: int = Field(default=12, ge=3, le=1000)
    drop_below: float = Field(default=0.2, ge=0.0, lt=1.0)
    spike_above: float = Field(default=5.0, gt=1.0)
    min_baseline: float = Field(default=20.0, ge=0.0)

    _windows = field_validator("window")(_duration)


class FreshnessMonitor(_Strict):
    """Now minus the newest event time, and now minus the last raw commit."""

    max_event_lag: str = "15m"
    max_commit_lag: str = "15m"

    _durations = field_validator("max_event_lag", "max_commit_lag")(_duration)


class QuarantineMonitor(_Strict):
    """The share of a window's messages of this type that were quarantined."""

    window: str = "5m"
    above: float = Field(default=0.1, gt=0.0, le=1.0)
    min_messages: int = Field(default=20, ge=1)

    _windows = field_validator("window")(_duration)


class NullRateMonitor(_Strict):
    """Per payload column, the share of nulls in a window against its baseline: a rise of more
    than `drift_above` (absolute, e.g. 0.3 = 30 points) is a drift."""

    columns: list[str] = Field(default_factory=list)
    window: str = "5m"
    baseline_windows: int = Field(default=12, ge=3, le=1000)
    drift_above: float = Field(default=0.3, gt=0.0, le=1.0)
    min_rows: int = Field(default=20, ge=1)

    _windows = field_validator("window")(_duration)


class Monitors(_Strict):
    """A stream's monitors (tidegate.ops.monitors); each may be turned off with null."""

    volume: VolumeMonitor | None = VolumeMonitor()
    freshness: FreshnessMonitor | None = FreshnessMonitor()
    quarantine_rate: QuarantineMonitor | None = QuarantineMonitor()
    null_rate: NullRateMonitor | None = None


class StreamSettings(_Strict):
    """Settings a stream may inherit from `defaults`."""

    ack_deadline_seconds: int = Field(default=10, ge=10, le=600)
    message_retention: str = "7d"
    exactly_once_delivery: bool = False
    max_payload_bytes: int = Field(default=65536, ge=1024, le=10_000_000)
    compatibility: Compatibility = Compatibility.FULL_TRANSITIVE
    # GCP only: an Avro schema (the newest contract, JSON encoding) on the topic, so Pub/Sub
    # rejects non-conforming messages at publish time (tidegate/infra/terraform). Only for contracts whose
    # JSON form is Avro's JSON encoding (no decimals, timestamps or unions with a value): the
    # pipeline's own checks still quarantine everything else.
    publish_schema: bool = False
    # event-time sanity: a ce-time further ahead of the message's publish time than this is
    # quarantined (`event_time_in_future`); one older than `max_event_age` (if set) likewise
    # (`event_too_old`). Both keep a wrong producer clock out of the raw history and aggregates.
    max_future: str = "1h"
    max_event_age: str | None = None
    # personal data outside the contract's "pii" fields: CloudEvents attributes that land in raw
    # (only `subject` does: event_subject), tokenized like a PII field (class "subject"); and
    # payload fields holding URLs, whose query-string values (and user:password@) are tokenized
    # (class "url_query") while the path stays readable for aggregates (tidegate.lake.pii)
    pii_attributes: list[str] = Field(default_factory=lambda: ["subject"])
    pii_url_fields: list[str] = Field(default_factory=list)
    # governance: raw rows whose event date is older than `retention` are deleted by `maintain`
    # (None: kept forever); `subject_fields` name the payload fields that identify a data subject
    # (`tidegate forget`); `owner` answers for the stream
    retention: str | None = None
    subject_fields: list[str] = Field(default_factory=list)
    owner: Owner | None = None
    monitors: Monitors = Monitors()

    _durations = field_validator("max_future", "max_event_age")(_optional_duration)
    _pii_attributes = field_validator("pii_attributes")(_landed_attributes)
    _lake_retention = field_validator("retention")(_retention)

    @field_validator("message_retention")
    @classmethod
    def _retention(cls, v: str) -> str:
        seconds = parse_duration(v)
        if not 600 <= seconds <= 31 * 86400:
            raise ValueError("message_retention must be between 10m and 31d (Pub/Sub's limits)")
        return v

    @property
    def message_retention_seconds(self) -> int:
        return parse_duration(self.message_retention)


class Stream(_Strict):
    """One pipeline subscription on a topic, the event type(s) it carries and how their
    contracts evolve. `event_type: a` or `event_types: [a, b]` (several types behind one
    subscription; each still has its own contract, suite and raw table, and shares the
    stream's settings)."""

    event_type: str
    event_types: list[str] = Field(default_factory=list)
    description: str = ""
    topic: ResourceName
    subscription: ResourceName
    ack_deadline_seconds: int = Field(ge=10, le=600)
    message_retention: str
    exactly_once_delivery: bool
    max_payload_bytes: int = Field(ge=1024, le=10_000_000)
    compatibility: Compatibility
    publish_schema: bool = False
    max_future: str = "1h"
    max_event_age: str | None = None
    pii_attributes: list[str] = Field(default_factory=lambda: ["subject"])
    pii_url_fields: list[str] = Field(default_factory=list)
    # governance: raw rows whose event date is older than `retention` are deleted by `maintain`
    # (None: kept forever); `subject_fields` name the payload fields that identify a data subject
    # (`tidegate forget`); `owner` answers for the stream
    retention: str | None = None
    subject_fields: list[str] = Field(default_factory=list)
    owner: Owner | None = None
    monitors: Monitors = Monitors()

    _durations = field_validator("max_future", "max_event_age")(_optional_duration)
    _pii_attributes = field_validator("pii_attributes")(_landed_attributes)
    _lake_retention = field_validator("retention")(_retention)

    @model_validator(mode="before")
    @classmethod
    def _types(cls, data: Any) -> Any:
        """`event_types: [a, b]` alone names the stream by its first type; `event_type: a` alone
        is `event_types: [a]`; with both, `event_type` comes first."""
        if not isinstance(data, dict):
            return data
        many = data.get("event_types")
        if many is not None and not isinstance(many, list):
            return data  # the field's own validation says what is wrong
        one = data.get("event_type")
        if one is None and many:
            one = many[0]
        if one is None:
            return data
        return {**data, "event_type": one, "event_types": list(dict.fromkeys([one, *(many or [])]))}

    @field_validator("event_type")
    @classmethod
    def _event_type(cls, v: str) -> str:
        if not _EVENT_TYPE_RE.match(v):
            raise ValueError(f"{v!r} is not a dotted event type like shop.order.placed")
        return v

    @field_validator("event_types")
    @classmethod
    def _event_types(cls, v: list[str]) -> list[str]:
        for t in v:
            if not isinstance(t, str) or not _EVENT_TYPE_RE.match(t):
                raise ValueError(f"{t!r} is not a dotted event type like shop.order.placed")
        return v

    @property
    def types(self) -> tuple[str, ...]:
        """Every event type this stream carries (its `event_type` first)."""
        return tuple(self.event_types)

    @field_validator("topic", "subscription")
    @classmethod
    def _names(cls, v: str) -> str:
        return _resource_name(v)

    @property
    def message_retention_seconds(self) -> int:
        return parse_duration(self.message_retention)


class DeadLetter(_Strict):
    topic: ResourceName = "tidegate-dead-letter"
    subscription: ResourceName = "tidegate-dead-letter-sub"
    max_delivery_attempts: int = Field(default=10, ge=5, le=100)

    @field_validator("topic", "subscription")
    @classmethod
    def _names(cls, v: str) -> str:
        return _resource_name(v)


class EmulatorSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8085, ge=1, le=65535)

    @field_validator("host")
    @classmethod
    def _loopback(cls, v: str) -> str:
        if v not in ("127.0.0.1", "localhost", "::1") and not v.startswith("127."):
            raise ValueError("the emulator must listen on a loopback address (127.0.0.1)")
        return v

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class WindowSpec(_Strict):
    """Event-time window: fixed (size), sliding (size + period) or session (gap)."""

    type: str
    size: str | None = None
    period: str | None = None
    gap: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> WindowSpec:
        need = {"fixed": {"size"}, "sliding": {"size", "period"}, "session": {"gap"}}
        if self.type not in need:
            raise ValueError(f"window type {self.type!r} is not fixed, sliding or session")
        given = {k for k in ("size", "period", "gap") if getattr(self, k) is not None}
        if given != need[self.type]:
            raise ValueError(
                f"a {self.type} window takes exactly {sorted(need[self.type])}, got {sorted(given)}"
            )
        for k in given:
            if parse_duration(getattr(self, k)) <= 0:
                raise ValueError(f"window {k} must be positive")
        if self.type == "sliding":
            size, period = parse_duration(self.size or ""), parse_duration(self.period or "")
            if size % period:
                raise ValueError(
                    f"sliding window size {self.size} must be a multiple of its period {self.period}"
                )
        return self

    def seconds(self, key: str) -> int:
        value = getattr(self, key)
        return parse_duration(value) if value else 0


# the metric functions an aggregate may declare; each is one entry of
# tidegate.lake.aggregates.METRICS (a test keeps the two equal)
METRIC_FNS = ("count", "sum", "min", "max", "mean")


class MetricSpec(_Strict):
    fn: str
    field: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _fn(self) -> MetricSpec:
        if self.fn not in METRIC_FNS:
            raise ValueError(f"metric fn {self.fn!r} is not one of {', '.join(METRIC_FNS)}")
        if self.fn != "count" and not self.field:
            raise ValueError(f"metric {self.fn} needs a field")
        return self

    @property
    def column(self) -> str:
        return self.name or (self.fn if self.fn == "count" else f"{self.fn}_{self.field}")


class AggregateSpec(_Strict):
    """An aggregate declared in the catalog: a view of one raw table by event time."""

    name: str
    source: str
    window: WindowSpec
    keys: list[str] = Field(default_factory=list)
    metrics: list[MetricSpec]
    allowed_lateness: str = "10m"
    out_of_orderness: str = "2m"
    # windows older than this are deleted by `maintain` (None: the source's retention applies:
    # a window is kept while any of its source rows may still be in raw)
    retention: str | None = None

    _lake_retention = field_validator("retention")(_retention)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.match(r"^[a-z][a-z0-9_]{2,62}$", v):
            raise ValueError(f"{v!r} is not a table name (lowercase letters, digits, underscores)")
        return v

    @field_validator("allowed_lateness", "out_of_orderness")
    @classmethod
    def _durations(cls, v: str) -> str:
        parse_duration(v)
        return v

    @model_validator(mode="after")
    def _unique_columns(self) -> AggregateSpec:
        cols = [m.column for m in self.metrics] + self.keys + ["window_start", "window_end"]
        dupes = {c for c in cols if cols.count(c) > 1}
        if dupes:
            raise ValueError(f"aggregate {self.name}: column name(s) {sorted(dupes)} used twice")
        if not self.metrics:
            raise ValueError(f"aggregate {self.name} declares no metrics")
        return self


class ViewEvent(_Strict):
    """How one event type changes a view's row: `columns` maps view column -> the event's
    column (a payload field, or an envelope column such as event_time); `literals` sets view
    columns to constants (e.g. status: paid)."""

    type: str
    columns: dict[str, str] = Field(default_factory=dict)
    literals: dict[str, str | int | float | bool] = Field(default_factory=dict)


class ViewSpec(_Strict):
    """A current-state view folded from raw history, per `key` (tidegate.lake.views).

    Events of the listed types are folded in event-time order (ties: the order of `events`,
    then ce-source, then ce-id); each sets its columns, later values win. `history: false` keeps
    one row per key (SCD type 1); `true` keeps one row per change with valid_from/valid_to
    (SCD type 2)."""

    name: str
    key: str
    events: list[ViewEvent]
    history: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.match(r"^[a-z][a-z0-9_]{2,62}$", v):
            raise ValueError(f"{v!r} is not a table name (lowercase letters, digits, underscores)")
        return v

    @model_validator(mode="after")
    def _shape(self) -> ViewSpec:
        if not self.events:
            raise ValueError(f"view {self.name}: no events fold into it")
        types = [e.type for e in self.events]
        if len(set(types)) != len(types):
            raise ValueError(f"view {self.name}: an event type is listed twice")
        return self

    @property
    def columns(self) -> list[str]:
        """Every column the events set, in first-mention order (the key first)."""
        cols: list[str] = [self.key]
        for e in self.events:
            cols += [c for c in (*e.columns, *e.literals) if c not in cols]
        return cols


class Catalog(_Strict):
    """The parsed catalog. `path` is where it was read from (contracts resolve against it)."""

    version: int = 1
    project: str
    emulator: EmulatorSettings = EmulatorSettings()
    contracts: str = "../expectations/contracts"
    defaults: StreamSettings = StreamSettings()
    dead_letter: DeadLetter = DeadLetter()
    quarantine: QuarantineSettings = QuarantineSettings()
    streams: list[Stream]
    aggregates: list[AggregateSpec] = Field(default_factory=list)
    views: list[ViewSpec] = Field(default_factory=list)
    path: Path = Field(exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _inherit_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            return data
        base = StreamSettings(**defaults).model_dump()
        streams = data.get("streams")
        if isinstance(streams, list):
            data = dict(data)
            data["streams"] = [{**base, **s} if isinstance(s, dict) else s for s in streams]
        return data

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        if not _PROJECT_RE.match(v):
            raise ValueError(
                f"{v!r} is not a valid GCP project id (6-30 chars, lowercase letters, digits "
                "and hyphens, starting with a letter), e.g. local-lake"
            )
        return v

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        if not self.streams:
            raise ValueError("the catalog declares no streams")
        seen: dict[str, str] = {}
        for s in self.streams:
            for kind, name in (
                *(("event type", t) for t in s.types),
                ("subscription", s.subscription),
            ):
                key = f"{kind}:{name}"
                if key in seen:
                    raise ValueError(f"{kind} {name!r} is declared twice")
                seen[key] = s.event_type
        topics = {s.topic for s in self.streams}
        subs = {s.subscription for s in self.streams}
        if self.dead_letter.topic in topics:
            raise ValueError("the dead-letter topic must not also be a stream topic")
        if self.dead_letter.subscription in subs:
            raise ValueError("the dead-letter subscription must not also be a stream subscription")
        types = set(self.event_types)
        names: set[str] = set()
        for v in self.views:
            for e in v.events:
                if e.type not in types:
                    raise ValueError(f"view {v.name}: event type {e.type!r} is not a stream of the catalog")
            if v.name in {a.name for a in self.aggregates} or sum(x.name == v.name for x in self.views) > 1:
                raise ValueError(f"view {v.name} is declared twice (or as an aggregate)")
        for a in self.aggregates:
            if a.source not in types:
                raise ValueError(f"aggregate {a.name}: source {a.source!r} is not a stream of the catalog")
            if a.name in names:
                raise ValueError(f"aggregate {a.name} is declared twice")
            names.add(a.name)
        return self

    def aggregate(self, name: str) -> AggregateSpec:
        for a in self.aggregates:
            if a.name == name:
                return a
        known = ", ".join(a.name for a in self.aggregates) or "none"
        raise ConfigError(f"unknown aggregate {name!r}", hint=f"the catalog declares: {known}")

    @cached_property
    def contracts_dir(self) -> Path:
        return (self.path.parent / self.contracts).resolve()

    def stream(self, event_type: str) -> Stream:
        """The stream carrying `event_type`."""
        for s in self.streams:
            if event_type in s.types:
                return s
        known = ", ".join(self.event_types)
        raise ConfigError(f"unknown event type {event_type!r}", hint=f"the catalog declares: {known}")

    @cached_property
    def payload_limits(self) -> dict[str, int]:
        """max_payload_bytes per event type (computed once, read for every message)."""
        return {t: s.max_payload_bytes for s in self.streams for t in s.types}

    @cached_property
    def max_payload_bytes(self) -> int:
        """The largest limit: what a message of unknown type is held to."""
        return max(self.payload_limits.values())

    @property
    def event_types(self) -> list[str]:
        return [t for s in self.streams for t in s.types]

    @cached_property
    def time_bounds(self) -> dict[str, tuple[timedelta, timedelta | None]]:
        """Per event type: how far ahead of its publish time a ce-time may be, and how far
        behind (None: no limit)."""
        return {
            t: (
                timedelta(seconds=parse_duration(s.max_future)),
                timedelta(seconds=parse_duration(s.max_event_age)) if s.max_event_age else None,
            )
            for s in self.streams
            for t in s.types
        }

    @cached_property
    def types_by_subscription(self) -> dict[str, frozenset[str]]:
        """The event types each pipeline subscription's topic carries: the types of every stream
        on that topic (streams may share a topic). The dead-letter subscription is not here: a
        message moved there may be of any type."""
        by_topic: dict[str, set[str]] = {}
        for s in self.streams:
            by_topic.setdefault(s.topic, set()).update(s.types)
        return {s.subscription: frozenset(by_topic[s.topic]) for s in self.streams}


def default_catalog_path() -> Path:
    env = os.environ.get(CATALOG_ENV)
    if env:
        return Path(env)
    return Path(str(resources.files("tidegate.infra").joinpath("catalog.yaml")))


def load_catalog(path: Path | str | None = None) -> Catalog:
    """Read and validate a catalog; every problem becomes one readable ConfigError."""
    p = Path(path) if path is not None else default_catalog_path()
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"catalog file {p} does not exist",
            hint=f"pass --catalog PATH or set {CATALOG_ENV}; the default is tidegate/infra/catalog.yaml",
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"catalog {p} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"catalog {p} must be a YAML mapping with 'project' and 'streams'")
    try:
        catalog = Catalog(**raw, path=p.resolve())
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError(f"catalog {p} is invalid:\n" + "\n".join(lines)) from None
    if not catalog.contracts_dir.is_dir():
        raise ConfigError(
            f"catalog {p}: contracts directory {catalog.contracts_dir} does not exist",
            hint="'contracts' is resolved relative to the catalog file",
        )
    return catalog
