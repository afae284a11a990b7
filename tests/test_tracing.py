"""Tracing (docs/tracing.md): a span per run, per batch and per stage, batch spans linked to the
producers' traces (a stable sample when a batch is large), exported over OTLP/HTTP when an
endpoint is configured and not at all otherwise. Spans are checked with the SDK's in-memory
exporter and with a real OTLP/HTTP receiver on loopback."""

from __future__ import annotations

import http.server
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.test_consumer import ingest, publish_plain
from tidegate.catalog import Catalog
from tidegate.errors import ConfigError
from tidegate.expectations.envelope import RawMessage
from tidegate.infra.pubsub import provision
from tidegate.lake import tracing
from tidegate.pipelines.local.batch import BatchRunner
from tidegate.producer import ProduceConfig, generate
from tidegate.transforms.base import IngestConfig

OTEL_ENV = (
    tracing.ENV,
    tracing.OTLP_ENDPOINT_ENV,
    tracing.OTLP_TRACES_ENDPOINT_ENV,
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
)


@pytest.fixture(autouse=True)
def _no_tracing_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever the developer's shell says about OpenTelemetry does not reach these tests, and
    no provider outlives one."""
    for name in OTEL_ENV:
        monkeypatch.delenv(name, raising=False)
    tracing.reset()
    yield
    tracing.reset()


@pytest.fixture
def memory() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(exporter))
    return exporter


def traceparent(rng: random.Random, sampled: bool = True) -> str:
    return f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-{'01' if sampled else '00'}"


def traced_orders(
    catalog: Catalog, registry, count: int, seed: int = 3
) -> list[tuple[bytes, dict[str, str]]]:  # type: ignore[no-untyped-def]
    """Valid binary-mode orders, each with its producer's own ce-traceparent."""
    config = ProduceConfig(
        types=("shop.order.placed",), count=count, seed=seed, structured_rate=0.0, v2_rate=0.0, trace_rate=1.0
    )
    out = [(m.data, m.attributes) for m in generate(config, catalog, registry)]
    assert all("ce-traceparent" in a for _, a in out)
    return out


def raw_messages(pairs: list[tuple[bytes, dict[str, str]]]) -> list[RawMessage]:
    return [
        RawMessage(d, a, str(i), datetime.now(UTC), "shop-orders-tidegate") for i, (d, a) in enumerate(pairs)
    ]


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def exporter_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("OtelBatch")]


# -- links ------------------------------------------------------------------------------------


def test_traceparents_become_remote_span_contexts_and_malformed_ones_are_counted_not_linked() -> None:
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ctx = tracing.span_context(f" {good} ")
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id) == (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7)
    assert ctx.is_remote
    assert ctx.trace_flags.sampled
    # a later version may add fields after the flags; version 00 may not
    assert tracing.span_context("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-next")
    bad = [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # W3C: lower-case hex only
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "not a traceparent",
    ]
    assert all(tracing.span_context(b) is None for b in bad)

    links = tracing.links_for([good, good, None, "", *bad])
    assert [(lk.context.trace_id, lk.context.span_id) for lk in links.links] == [(ctx.trace_id, ctx.span_id)]
    assert links.attributes == {
        "tidegate.links.total": 1,
        "tidegate.links.linked": 1,
        "tidegate.links.sampled": False,
        "tidegate.links.invalid": len(bad),
    }


def test_a_large_batch_links_a_stable_sample_preferring_sampled_producer_traces() -> None:
    rng = random.Random(7)
    sampled = [traceparent(rng) for _ in range(300)]
    unsampled = [traceparent(rng, sampled=False) for _ in range(300)]
    values = sampled + unsampled
    links = tracing.links_for(values, limit=128)
    assert len(links.links) == 128
    assert (links.total, links.sampled) == (600, True)
    assert links.attributes["tidegate.links.linked"] == 128
    assert all(lk.context.trace_flags.sampled for lk in links.links)
    # the same batch, in another order, links the same spans: the lowest trace ids among the sampled
    again = tracing.links_for(random.Random(1).sample(values, len(values)), limit=128)
    assert [lk.context for lk in again.links] == [lk.context for lk in links.links]
    lowest = sorted(int(v.split("-")[1], 16) for v in sampled)[:128]
    assert sorted(lk.context.trace_id for lk in links.links) == lowest


# -- configuration ------------------------------------------------------------------------------


def test_the_environment_decides_whether_and_where_spans_go(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracing.endpoint() is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")
    assert tracing.endpoint() == "http://127.0.0.1:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9999/custom")
    assert tracing.endpoint() == "http://127.0.0.1:9999/custom"
    monkeypatch.setenv("TIDEGATE_OTEL", "http://127.0.0.1:5555")
    assert tracing.endpoint() == "http://127.0.0.1:5555/v1/traces"
    monkeypatch.setenv("TIDEGATE_OTEL", "off")
    assert tracing.endpoint() is None
    monkeypatch.setenv("TIDEGATE_OTEL", "on")
    assert tracing.endpoint() == "http://127.0.0.1:9999/custom"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.endpoint() is None
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracing.endpoint() is None
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    for name in (tracing.OTLP_ENDPOINT_ENV, tracing.OTLP_TRACES_ENDPOINT_ENV):
        monkeypatch.delenv(name)
    assert tracing.endpoint() == "http://localhost:4318/v1/traces"  # on, and nothing else said
    monkeypatch.setenv("TIDEGATE_OTEL", "collector:4318")
    with pytest.raises(ConfigError, match="TIDEGATE_OTEL"):
        tracing.endpoint()


def test_without_an_endpoint_nothing_is_recorded_or_exported_and_no_exporter_runs(
    catalog, registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    runner = BatchRunner(IngestConfig(str(tmp_path / "lake"), "run-t", str(catalog.path), "t", "t"))
    with tracing.tracer().start_as_current_span("would-be-parent") as span:
        run = runner.run("b1", raw_messages(traced_orders(catalog, registry, 5)))
        assert not span.is_recording()
        assert not trace.get_current_span().is_recording()
    assert sum(c.inserted for c in run.commits if c.kind == "raw") == 5
    assert isinstance(tracing.tracer(), trace.NoOpTracer)
    assert not tracing.enabled()
    assert tracing._provider is None  # no provider, so no processor, exporter or socket
    assert exporter_threads() == []
    assert tracing.flush()
    # tidegate never touches OpenTelemetry's global provider
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


# -- spans of a batch -----------------------------------------------------------------------------


def test_each_beam_run_of_a_batch_is_a_span_with_its_table_commits_below_it(
    catalog, registry, tmp_path: Path, memory: InMemorySpanExporter
) -> None:  # type: ignore[no-untyped-def]
    runner = BatchRunner(IngestConfig(str(tmp_path / "lake"), "run-t", str(catalog.path), "t", "t"))
    with tracing.tracer().start_as_current_span("beam"):
        runner.run("b1", raw_messages(traced_orders(catalog, registry, 12)))
    spans = list(memory.get_finished_spans())
    (beam,) = by_name(spans, "beam")
    (beam_run,) = children(spans, beam)
    assert beam_run.name == "beam.run"
    assert beam_run.attributes is not None
    assert (beam_run.attributes["tidegate.messages"], beam_run.attributes["tidegate.attempt"]) == (12, 1)
    commits = children(spans, beam_run)
    assert commits
    assert {s.name for s in commits} == {"commit"}
    raw = [s for s in commits if s.attributes and s.attributes["tidegate.kind"] == "raw"]
    assert len(raw) == 1
    assert raw[0].attributes is not None
    assert raw[0].attributes["tidegate.inserted"] == 12
    assert raw[0].attributes["tidegate.event_type"] == "shop.order.placed"
    for s in commits:
        assert s.start_time is not None
        assert s.end_time is not None
        assert beam_run.start_time <= s.start_time <= s.end_time <= beam_run.end_time  # type: ignore[operator]


def test_a_poison_message_shows_as_failed_beam_runs_and_an_event_naming_it(
    catalog, registry, tmp_path: Path, memory: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    messages = raw_messages(traced_orders(catalog, registry, 6))
    monkeypatch.setenv("TIDEGATE_FAULT_CRASH_ON", messages[4].attributes["ce-id"])
    runner = BatchRunner(
        IngestConfig(str(tmp_path / "lake"), "run-t", str(catalog.path), "t", "t"), sleep=lambda s: None
    )
    with tracing.tracer().start_as_current_span("beam"):
        run = runner.run("b1", messages)
    assert run.poison == [4]
    spans = list(memory.get_finished_spans())
    (beam,) = by_name(spans, "beam")
    assert [e.name for e in beam.events] == ["split", "poison"]
    poison = beam.events[1].attributes
    assert poison is not None
    assert (poison["messaging.message.id"], poison["cloudevents.event_id"]) == (
        "4",
        messages[4].attributes["ce-id"],
    )
    runs = children(spans, beam)
    assert len(runs) == run.runs > 2
    failed = [r for r in runs if r.status.status_code == trace.StatusCode.ERROR]
    assert failed
    assert all(any(e.name == "exception" for e in r.events) for r in failed)
    assert {r.attributes["tidegate.messages"] for r in failed if r.attributes} >= {6, 1}


def test_spans_a_stopped_run_left_open_are_ended_as_failed(memory: InMemorySpanExporter) -> None:
    open_spans = tracing.OpenSpans()
    open_spans.add("b1", tracing.tracer().start_span("tidegate.batch"))
    open_spans.add("b2", tracing.tracer().start_span("tidegate.batch"))
    settled = open_spans.pop("b2")  # the bookkeeper's: it ends this one itself
    assert settled is not None
    assert open_spans.end_all("stopped") == 1
    (ended,) = memory.get_finished_spans()
    settled.end()
    assert (ended.status.status_code, ended.status.description) == (trace.StatusCode.ERROR, "stopped")


@pytest.mark.emulator
def test_an_ingest_run_traces_its_batches_and_stages_linked_to_the_producers(
    pubsub_emulator, catalog, registry, project, tmp_path: Path, memory: InMemorySpanExporter
) -> None:  # type: ignore[no-untyped-def]
    provision(catalog, pubsub_emulator.address, project)
    orders = traced_orders(catalog, registry, 300)
    publish_plain(pubsub_emulator.address, project, "shop-orders", orders)
    producers = {a["ce-traceparent"].split("-")[1] for _, a in orders}

    summary = ingest(pubsub_emulator.address, catalog, project, tmp_path / "lake", max_wait=1.0, fill=1.0)
    assert summary.received == 300
    spans = list(memory.get_finished_spans())

    (run,) = by_name(spans, "tidegate.ingest")
    assert run.parent is None
    assert run.attributes is not None
    assert run.context is not None
    assert run.attributes["tidegate.run_id"] == summary.run_id
    assert run.attributes["tidegate.lake"] == str(tmp_path / "lake")
    assert (run.attributes["tidegate.batches"], run.attributes["tidegate.raw_written"]) == (
        summary.batches,
        300,
    )
    assert {s.context.trace_id for s in spans if s.context} == {run.context.trace_id}  # one trace

    batches = by_name(spans, "tidegate.batch")
    assert len(batches) == summary.batches
    assert all(b.parent is not None and b.parent.span_id == run.context.span_id for b in batches)
    assert all(b.kind == trace.SpanKind.CONSUMER for b in batches)
    linked: set[str] = set()
    for b in batches:
        a = b.attributes
        assert a is not None
        assert a["tidegate.batch_id"].startswith(summary.run_id)  # type: ignore[union-attr]
        assert a["tidegate.messages"] == a["tidegate.raw_written"]
        assert (a["tidegate.quarantined"], a["tidegate.duplicates"]) == (0, 0)
        # every message has its own producer trace: all linked up to the limit, a sample beyond
        assert a["tidegate.links.total"] == a["tidegate.messages"]
        assert a["tidegate.links.linked"] == len(b.links) == min(a["tidegate.messages"], tracing.LINK_LIMIT)  # type: ignore[type-var]
        assert a["tidegate.links.sampled"] == (a["tidegate.messages"] > tracing.LINK_LIMIT)  # type: ignore[operator]
        linked |= {f"{lk.context.trace_id:032x}" for lk in b.links}
        assert all(lk.context.is_remote for lk in b.links)

        stages = children(spans, b)
        assert [s.name for s in sorted(stages, key=lambda s: s.start_time or 0)] == [
            "take",
            "beam",
            "ledger",
            "ack",
            "openlineage",
            "metrics",
        ]
        for s in stages:
            assert b.start_time <= s.start_time <= s.end_time <= b.end_time  # type: ignore[operator]
        (beam,) = (s for s in stages if s.name == "beam")
        beam_runs = children(spans, beam)
        assert beam_runs
        assert {s.name for s in beam_runs} == {"beam.run"}
        assert {c.name for r in beam_runs for c in children(spans, r)} == {"commit"}
    assert sum(b.attributes["tidegate.messages"] for b in batches if b.attributes) == 300  # type: ignore[misc]
    assert linked <= producers
    assert any(len(b.links) == tracing.LINK_LIMIT for b in batches), "no batch above the link limit"
    if sum(len(b.links) for b in batches) == 300:
        assert linked == producers

    projections = by_name(spans, "projection")
    if catalog.aggregates:
        assert projections
        assert all(p.parent is not None and p.parent.span_id == run.context.span_id for p in projections)
        assert {c.name for p in projections for c in children(spans, p)} <= {"aggregate"}


# -- OTLP/HTTP on loopback ----------------------------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[str, str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.requests.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A tiny OTLP/HTTP receiver on a free loopback port: records every POST."""
    received: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (_Receiver,), {"requests": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_spans_reach_an_otlp_receiver_when_the_endpoint_points_at_it(
    catalog, registry, tmp_path: Path, receiver, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    url, received = receiver
    for proxy in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    tracing.reset()
    assert tracing.enabled()
    assert exporter_threads() == ["OtelBatchSpanRecordProcessor"]

    pairs = traced_orders(catalog, registry, 6)
    links = tracing.links_for(a["ce-traceparent"] for _, a in pairs)
    runner = BatchRunner(IngestConfig(str(tmp_path / "lake"), "run-t", str(catalog.path), "t", "t"))
    with tracing.tracer().start_as_current_span(
        "tidegate.batch", links=links.links, attributes=links.attributes
    ):
        runner.run("b1", raw_messages(pairs))
    assert tracing.flush()

    assert received
    assert {path for path, _, _ in received} == {"/v1/traces"}
    assert {ctype for _, ctype, _ in received} == {"application/x-protobuf"}
    exported = {}
    for _, _, body in received:
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            resource = {a.key: a.value.string_value for a in rs.resource.attributes}
            assert resource["service.name"] == "tidegate"
            for ss in rs.scope_spans:
                assert ss.scope.name == "tidegate"
                exported.update({s.name: s for s in ss.spans})
    assert {"tidegate.batch", "beam.run", "commit"} <= set(exported)
    batch = exported["tidegate.batch"]
    assert {lk.trace_id.hex() for lk in batch.links} == {a["ce-traceparent"].split("-")[1] for _, a in pairs}
    assert exported["beam.run"].parent_span_id == batch.span_id

    tracing.reset()  # shuts the exporter down: its thread ends
    assert exporter_threads() == []
