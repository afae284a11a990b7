"""OpenTelemetry traces of an ingest run: a span per run, per micro-batch and per stage, the batch
linked to the producers' traces (docs/tracing.md).

    span = tracer().start_span("tidegate.batch", links=links_for(traceparents).links)
    ...
    flush()                                  # the end of a run: export what has ended

Nothing is exported, and nothing of the SDK runs, unless an endpoint is configured: `tracer()`
is OpenTelemetry's no-op tracer then (no provider, no exporter, no thread, no socket). An
endpoint turns it on, read once per process at the first `tracer()` (`reset()` reads again):
- `TIDEGATE_OTEL=http://collector:4318`: tidegate's own switch, an OTLP/HTTP base URL (spans go to
  `<url>/v1/traces`); `TIDEGATE_OTEL=off` keeps tracing off whatever else is set, `on` uses
  the standard variables below or, without them, OTLP's default `http://localhost:4318`;
- else the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL) or
  `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL);
- `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off as well.
The exporter is OTLP over HTTP/protobuf behind a `BatchSpanProcessor` (its own thread); the
other standard variables (`OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, `..._COMPRESSION`,
`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_SPAN_*_LIMIT`)
apply as the SDK defines them. tidegate keeps its own provider: it never sets OpenTelemetry's
global one, so a host application's tracing is left alone.

Links: a batch holds up to 20k messages, each with its producer's W3C `traceparent`; a span
carries at most `LINK_LIMIT` links (the SDK's default link limit too). `links_for` keeps a
stable sample when there are more (`Links.attributes` says how many of how many).

No Beam here (the lake layer): the driver (tidegate.pipelines.local) opens the spans.
"""

from __future__ import annotations

import heapq
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanContext, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from tidegate import __version__
from tidegate.errors import ConfigError

ENV = "TIDEGATE_OTEL"
OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTLP_TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
DEFAULT_OTLP = "http://localhost:4318"  # OTLP/HTTP's default, used only for TIDEGATE_OTEL=on
TRACES_PATH = "/v1/traces"
LINK_LIMIT = 128  # links per batch span (= the SDK's default OTEL_SPAN_LINK_COUNT_LIMIT)
FLUSH_MILLIS = 10_000  # longest wait for the exporter at the end of a run
SCOPE = "tidegate"

_OFF = {"0", "off", "false", "no", "none", "disabled"}
_ON = {"1", "on", "true", "yes", "otlp"}

# W3C Trace Context (level 1/2): version-traceid-parentid-flags, lower-case hex. A version other
# than 00 may carry more fields after the flags; ff is never valid.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

_lock = threading.Lock()
_configured = False
_provider: TracerProvider | None = None


def endpoint() -> str | None:
    """The OTLP/HTTP traces URL the environment asks for, or None: tracing off (module docstring)."""
    flag = os.environ.get(ENV, "").strip()
    if flag.lower() in _OFF or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    if flag.startswith(("http://", "https://")):
        return flag.rstrip("/") + TRACES_PATH
    if flag and flag.lower() not in _ON:
        raise ConfigError(
            f"{ENV}={flag!r} is neither an OTLP/HTTP URL nor on/off",
            hint=f"{ENV}=http://127.0.0.1:4318 exports there, {ENV}=off turns tracing off (docs/tracing.md)",
        )
    if traces := os.environ.get(OTLP_TRACES_ENDPOINT_ENV, "").strip():
        return traces
    if base := os.environ.get(OTLP_ENDPOINT_ENV, "").strip():
        return base.rstrip("/") + TRACES_PATH
    return DEFAULT_OTLP + TRACES_PATH if flag else None


def _new_provider(processor: SpanProcessor) -> TracerProvider:
    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win over tidegate's defaults
    env = dict(OTELResourceDetector().detect().attributes)
    resource = Resource.create({SERVICE_NAME: "tidegate", SERVICE_VERSION: __version__, **env})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(processor)
    return provider


def _configure() -> TracerProvider | None:
    global _configured, _provider
    with _lock:
        if not _configured:
            url = endpoint()
            if url is not None:
                # imported only when spans are exported: ~120 ms of protobuf and HTTP client
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                _provider = _new_provider(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
            _configured = True
        return _provider


def tracer() -> trace.Tracer:
    """tidegate's tracer: a real one when an endpoint is configured (or `install` was called), else
    OpenTelemetry's no-op tracer, whose spans record nothing and cost next to nothing."""
    provider = _configure()
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer(SCOPE, __version__)


def enabled() -> bool:
    """Whether spans are recorded (callers skip work only spans need, such as parsing links)."""
    return _configure() is not None


def install(processor: SpanProcessor) -> TracerProvider:
    """Send every span to `processor` from now on, whatever the environment says, until `reset()`:
    tests install `SimpleSpanProcessor(InMemorySpanExporter())`."""
    global _configured, _provider
    reset()
    with _lock:
        _provider = _new_provider(processor)
        _configured = True
        return _provider


def reset() -> None:
    """Shut the current provider down (its exporter flushes and its thread ends); the next
    `tracer()` reads the environment again."""
    global _configured, _provider
    with _lock:
        provider, _provider, _configured = _provider, None, False
    if provider is not None:
        provider.shutdown()


def flush(timeout_millis: int = FLUSH_MILLIS) -> bool:
    """Export every span ended so far (the end of a run); True when there was nothing to do or
    the exporter took it all in time. The provider stays up for the next run in this process
    (the SDK shuts it down when the process exits)."""
    with _lock:
        provider = _provider
    return True if provider is None else provider.force_flush(timeout_millis)


# -- links to the producers' traces -------------------------------------------------------------


def _parse(traceparent: str) -> tuple[int, int, int] | None:
    """(trace id, span id, flags) of a W3C `traceparent`, or None when it is not one."""
    m = _TRACEPARENT.fullmatch(traceparent.strip())
    if m is None:
        return None
    version, trace_hex, span_hex, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_hex == _ZERO_TRACE or span_hex == _ZERO_SPAN:
        return None
    return int(trace_hex, 16), int(span_hex, 16), int(flags, 16)


def _remote(trace_id: int, span_id: int, flags: int) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def span_context(traceparent: str | None) -> SpanContext | None:
    """The remote span context a W3C `traceparent` names, or None when it is not one."""
    parsed = _parse(traceparent) if traceparent else None
    return _remote(*parsed) if parsed is not None else None


@dataclass(frozen=True)
class Links:
    """A batch's links to its producers' spans, and how many there were to choose from."""

    links: list[Link]
    total: int  # distinct well-formed producer span contexts in the batch
    invalid: int  # traceparents present but not W3C

    @property
    def sampled(self) -> bool:
        return len(self.links) < self.total

    @property
    def attributes(self) -> dict[str, AttributeValue]:
        return {
            "tidegate.links.total": self.total,
            "tidegate.links.linked": len(self.links),
            "tidegate.links.sampled": self.sampled,
            "tidegate.links.invalid": self.invalid,
        }


NO_LINKS = Links([], 0, 0)


def links_for(traceparents: Iterable[str | None], limit: int = LINK_LIMIT) -> Links:
    """Links to the producer spans named by W3C traceparents (None and "" are skipped), one per
    distinct span context. More than `limit` of them: a stable sample, the same for the same
    batch on every run and machine, preferring producer spans that were sampled (the others
    were likely never exported), then the lowest trace ids (random by W3C, so an unbiased pick)."""
    distinct: dict[tuple[int, int], int] = {}  # (trace id, span id) -> flags
    invalid = 0
    for value in set(traceparents):
        if not value:
            continue
        parsed = _parse(value)
        if parsed is None:
            invalid += 1
            continue
        trace_id, span_id, flags = parsed
        distinct.setdefault((trace_id, span_id), flags)
    # sampled ones first (flag bit 0), then by trace id: heapq only keeps `limit` of them
    keys = ((not flags & 1, trace_id, span_id, flags) for (trace_id, span_id), flags in distinct.items())
    chosen = heapq.nsmallest(max(limit, 0), keys)
    chosen.sort(key=lambda k: (k[1], k[2]))
    return Links([Link(_remote(t, s, f)) for _, t, s, f in chosen], len(distinct), invalid)


# -- spans the driver places after the fact -----------------------------------------------------


def span_between(
    name: str,
    start_ns: int,
    end_ns: int,
    parent: Span | None = None,
    attributes: dict[str, AttributeValue] | None = None,
) -> Span:
    """An ended span over a past interval (a stage another thread timed, a commit the writer
    timed), a child of `parent` (else of the current span)."""
    ctx = trace.set_span_in_context(parent) if parent is not None else None
    span = tracer().start_span(name, context=ctx, start_time=start_ns, attributes=attributes)
    span.end(end_time=max(end_ns, start_ns))
    return span


def spans_in_sequence(
    parent: Span, stages: Sequence[tuple[str, float]], start_ns: int, attribute: str = "tidegate.stage"
) -> int:
    """Consecutive ended spans (name, seconds) from `start_ns` under `parent`; returns their end."""
    at = start_ns
    for name, seconds in stages:
        end = at + int(seconds * 1e9)
        span_between(name, at, end, parent, {attribute: name})
        at = end
    return at


def fail(span: Span, exc: BaseException) -> None:
    """Mark `span` failed by `exc` (any BaseException: an interrupt too)."""
    if span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{exc.__class__.__name__}: {exc}"))


class OpenSpans:
    """Spans started on one thread and ended on another (a batch's span ends once the bookkeeper
    has acked it); `end_all` closes whatever a stopped run left open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: dict[str, Span] = {}

    def add(self, key: str, span: Span) -> None:
        with self._lock:
            self._spans[key] = span

    def pop(self, key: str) -> Span | None:
        with self._lock:
            return self._spans.pop(key, None)

    def end_all(self, reason: str) -> int:
        with self._lock:
            spans, self._spans = list(self._spans.values()), {}
        for span in spans:
            span.set_status(Status(StatusCode.ERROR, reason))
            span.end()
        return len(spans)


def event(name: str, attributes: dict[str, AttributeValue] | None = None) -> None:
    """An event on the current span (a batch split to isolate a message, a poison message)."""
    trace.get_current_span().add_event(name, attributes)


@contextmanager
def current(span: Span) -> Iterator[Span]:
    """Make `span` the parent of spans started inside, without ending it on the way out."""
    # whoever owns `span` records its failure (tracing.fail), once
    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield span


def attributes_of(**values: Any) -> dict[str, AttributeValue]:
    """`tidegate.<name>` attributes, leaving out None (OpenTelemetry has no null)."""
    return {f"tidegate.{k}": v for k, v in values.items() if v is not None}
