"""Subscription backlog: counted on a real emulator without changing what it will deliver, and
read from Cloud Monitoring (served by a real gRPC server on loopback: GCP itself cannot run here).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.gcp_fakes import grpc_service
from tests.test_ingest import ingest, produce
from tidegate.infra.backlog import SNAPSHOT_PREFIX, count_backlog, monitoring_backlog
from tidegate.infra.pubsub import provision, pull_now, subscriber, subscription_path
from tidegate.lake.lock import lake_lock


def _drain(client: Any, path: str) -> tuple[set[str], set[int]]:
    """Consume everything (pull + ack): the message ids and the delivery attempts seen."""
    ids: set[str] = set()
    attempts: set[int] = set()
    while received := pull_now(client, path, 100):
        ids.update(r.message.message_id for r in received)
        attempts.update(r.delivery_attempt for r in received)
        client.acknowledge(subscription=path, ack_ids=[r.ack_id for r in received])
    return ids, attempts


@pytest.mark.emulator
def test_count_is_exact_and_leaves_every_message_deliverable(
    pubsub_emulator, catalog, project, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    provision(catalog, pubsub_emulator.address, project)
    produce(pubsub_emulator, catalog, project, tmp_path / "m.jsonl", count=1500, seed=3)
    per_topic = Counter(json.loads(line)["topic"] for line in (tmp_path / "m.jsonl").open())
    stream = next(s for s in catalog.streams if per_topic[s.topic] > 300)
    path = subscription_path(project, stream.subscription)
    client = subscriber(pubsub_emulator.address)
    # A consumer acked 100 and then crashed holding leases on 100 more (ack deadline 600 s).
    acked = pull_now(client, path, 100)
    client.acknowledge(subscription=path, ack_ids=[r.ack_id for r in acked])
    assert len(pull_now(client, path, 100)) == 100
    # ... and an earlier count was killed, leaving its snapshot behind.
    client.create_snapshot(
        request={"name": f"projects/{project}/snapshots/{SNAPSHOT_PREFIX}killed", "subscription": path}
    )
    waiting = per_topic[stream.topic] - 100

    first = count_backlog(client, project, stream.subscription)
    again = count_backlog(client, project, stream.subscription)
    assert first.messages == again.messages == waiting  # the crashed consumer's leases count too
    assert first.complete
    assert first.oldest_unacked_age_seconds is not None
    assert first.oldest_unacked_age_seconds >= 0
    partial = count_backlog(client, project, stream.subscription, limit=250)
    assert (partial.messages, partial.complete) == (250, False)
    snapshots = [s.name for s in client.list_snapshots(project=f"projects/{project}")]
    assert not [s for s in snapshots if SNAPSHOT_PREFIX in s]

    # Counting three times changed nothing a consumer sees: every waiting message comes (once
    # each, as a first delivery attempt: nothing walks towards the dead-letter topic).
    ids, attempts = _drain(client, path)
    assert len(ids) == waiting
    assert attempts == {1}
    assert count_backlog(client, project, stream.subscription).messages == 0
    dead = subscription_path(project, catalog.dead_letter.subscription)
    assert pull_now(client, dead, 10) == []
    client.close()


@pytest.mark.emulator
def test_status_reports_the_backlog_of_every_subscription(
    pubsub_emulator, catalog, project, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    provision(catalog, pubsub_emulator.address, project)
    lake = tmp_path / "lake"
    produce(pubsub_emulator, catalog, project, tmp_path / "a.jsonl", count=400, seed=5)
    ingest(pubsub_emulator, catalog, project, lake)
    produce(pubsub_emulator, catalog, project, tmp_path / "b.jsonl", count=700, seed=6)
    waiting = Counter(json.loads(line)["topic"] for line in (tmp_path / "b.jsonl").open())
    args = ("status", "--lake", lake, "--emulator", pubsub_emulator.address, "--project", project)

    r = cli(*args, "--json")
    assert r.code == 0, r.text
    backlog = json.loads(r.out)["backlog"]
    assert backlog["source"] == "emulator count"
    assert backlog["unavailable"] is None
    got = {s["subscription"]: s["messages"] for s in backlog["subscriptions"]}
    want = {s.subscription: waiting[s.topic] for s in catalog.streams}
    assert got == {**want, catalog.dead_letter.subscription: 0}

    human = cli(*args)
    assert human.code == 0, human.text
    assert "subscription backlog (emulator count)" in human.text
    some = catalog.streams[0]
    assert f"│ {some.subscription} │ {waiting[some.topic]:,} │" in human.text

    # The waiting messages are still there for the next ingest: status took nothing.
    second = ingest(pubsub_emulator, catalog, project, lake)
    assert second.received == sum(waiting.values())
    after = json.loads(cli(*args, "--json").out)["backlog"]
    assert {s["messages"] for s in after["subscriptions"]} == {0}

    # While an ingest consumes the subscriptions, status says so instead of counting.
    with lake_lock(str(lake)):
        busy = json.loads(cli(*args, "--json").out)["backlog"]
    assert busy["subscriptions"] == []
    assert "tidegate ingest" in busy["unavailable"]


def test_status_without_an_emulator_says_how_to_start_one(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    from tidegate.infra.emulator import free_port

    r = cli("status", "--lake", tmp_path / "none", "--emulator", f"127.0.0.1:{free_port()}")
    assert r.code == 2
    assert "no Pub/Sub emulator answers" in r.text
    assert "tidegate up" in r.text
    assert "no tidegate tables under" in r.text
    assert "Traceback" not in r.text
    bad = cli("status", "--lake", tmp_path, "--backlog", "sometimes")
    assert bad.code == 2
    assert "is not one of auto, count, monitoring, off" in bad.text


# -- Cloud Monitoring -------------------------------------------------------------------


class _FakeMonitoring:
    """MetricService.ListTimeSeries served by a real gRPC server on loopback: the client's
    request, wire format and paging are the real ones; only Google's backend is replaced."""

    def __init__(self, series: dict[str, dict[str, list[tuple[datetime, int]]]]) -> None:
        self.series = series  # metric type -> subscription -> [(end time, value)]
        self.requests: list[Any] = []
        self.deny = False

    def list_time_series(self, request: Any, context: grpc.ServicerContext) -> Any:
        from google.cloud.monitoring_v3 import types

        self.requests.append(request)
        if self.deny:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "caller lacks monitoring.timeSeries.list")
        metric = request.filter.split('metric.type = "')[1].split('"')[0]
        out = []
        for sub, points in self.series.get(metric, {}).items():
            if f'"{sub}"' not in request.filter:
                continue
            out.append(
                types.TimeSeries(
                    metric={"type": metric},
                    resource={"type": "pubsub_subscription", "labels": {"subscription_id": sub}},
                    points=[
                        {"interval": {"end_time": when}, "value": {"int64_value": v}}
                        for when, v in sorted(points, reverse=True)
                    ],
                )
            )
        return types.ListTimeSeriesResponse(time_series=out)


@pytest.fixture
def monitoring() -> Iterator[tuple[_FakeMonitoring, Any]]:
    from google.cloud import monitoring_v3
    from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport
    from google.cloud.monitoring_v3.types import ListTimeSeriesRequest, ListTimeSeriesResponse

    now = datetime.now(UTC).replace(microsecond=0)
    fake = _FakeMonitoring(
        {
            "pubsub.googleapis.com/subscription/num_undelivered_messages": {
                "shop-orders-tidegate": [
                    (now - timedelta(minutes=3), 900),
                    (now - timedelta(minutes=1), 1234),
                ],
                "tidegate-dead-letter-sub": [(now - timedelta(minutes=1), 0)],
            },
            "pubsub.googleapis.com/subscription/oldest_unacked_message_age": {
                "shop-orders-tidegate": [(now - timedelta(minutes=3), 40), (now - timedelta(minutes=1), 95)],
                "tidegate-dead-letter-sub": [(now - timedelta(minutes=1), 0)],
            },
        }
    )
    methods = {"ListTimeSeries": (fake.list_time_series, ListTimeSeriesRequest, ListTimeSeriesResponse)}
    with grpc_service("google.monitoring.v3.MetricService", methods) as channel:
        yield fake, monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))


def test_monitoring_backlog_takes_the_newest_sample_per_subscription(monitoring) -> None:  # type: ignore[no-untyped-def]
    fake, client = monitoring
    subs = ["shop-orders-tidegate", "shop-payments-tidegate", "tidegate-dead-letter-sub"]
    report = monitoring_backlog("acme-data", subs, client=client)
    by = {s.subscription: s for s in report.subscriptions}
    assert (by["shop-orders-tidegate"].messages, by["shop-orders-tidegate"].oldest_unacked_age_seconds) == (
        1234,
        95,
    )
    assert by["tidegate-dead-letter-sub"].messages == 0
    assert by["tidegate-dead-letter-sub"].oldest_unacked_age_seconds is None
    assert by["shop-payments-tidegate"].messages is None  # no sample: said, not invented
    assert report.unavailable is not None
    assert "shop-payments-tidegate" in report.unavailable
    req = fake.requests[0]
    assert req.name == "projects/acme-data"
    assert 'resource.type = "pubsub_subscription"' in req.filter
    assert all(f'"{s}"' in req.filter for s in subs)
    fake.deny = True
    denied = monitoring_backlog("acme-data", subs, client=client)
    assert denied.subscriptions == []
    assert "roles/monitoring.viewer" in (denied.unavailable or "")


def test_status_on_a_gcs_lake_reads_cloud_monitoring(monitoring, tmp_path: Path, cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    import tidegate.infra.backlog

    fake, client = monitoring
    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), "acme-data"))
    monkeypatch.setattr(tidegate.infra.backlog, "monitoring_client", lambda: client)
    lake = f"file://{tmp_path}/lake"
    r = cli("status", "--json", "--lake", lake, "--backlog", "monitoring", "--project", "acme-data")
    assert r.code == 0, r.text
    backlog = json.loads(r.out)["backlog"]
    assert backlog["source"] == "cloud monitoring"
    assert {s["subscription"]: s["messages"] for s in backlog["subscriptions"]}[
        "shop-orders-tidegate"
    ] == 1234
    assert fake.requests[0].name == "projects/acme-data"


def test_monitoring_without_credentials_says_what_to_run(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    def no_credentials(*a: Any, **k: Any) -> Any:
        raise DefaultCredentialsError("none")

    monkeypatch.setattr(google.auth, "default", no_credentials)
    report = monitoring_backlog("acme-data", ["shop-orders-tidegate"])
    assert report.subscriptions == []
    assert "gcloud auth application-default login" in (report.unavailable or "")


# -- dead letters -----------------------------------------------------------------------


@pytest.mark.emulator
def test_dead_letters_are_swept_into_the_lake_and_nothing_is_lost(
    pubsub_emulator, catalog, project, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    """Pub/Sub moves a message aside after max_delivery_attempts (a pipeline that crashed on it,
    or an outage). `ingest --dead-letters` lands those like any message, and status shows the
    dead-letter subscription drained."""
    import polars as pl

    provision(catalog, pubsub_emulator.address, project)
    produce(pubsub_emulator, catalog, project, tmp_path / "m.jsonl", count=300, seed=8, invalid_rate=0.1)
    manifest = [json.loads(line) for line in (tmp_path / "m.jsonl").open()]
    stream = catalog.streams[0]
    sent = [m for m in manifest if m["topic"] == stream.topic]
    path = subscription_path(project, stream.subscription)
    client = subscriber(pubsub_emulator.address)
    # A consumer that fails on every delivery: nack until Pub/Sub gives up on the messages.
    for _ in range(catalog.dead_letter.max_delivery_attempts + 2):
        while received := pull_now(client, path, 100):
            client.modify_ack_deadline(
                subscription=path, ack_ids=[r.ack_id for r in received], ack_deadline_seconds=0
            )
            if all(r.delivery_attempt > catalog.dead_letter.max_delivery_attempts for r in received):
                break
    dead = catalog.dead_letter.subscription
    where = ("--emulator", pubsub_emulator.address, "--project", project)
    lake = tmp_path / "lake"
    lake.mkdir()
    before = json.loads(cli("status", "--json", "--lake", lake, *where).out)["backlog"]
    moved = {s["subscription"]: s["messages"] for s in before["subscriptions"]}
    assert moved[stream.subscription] == 0
    assert moved[dead] == len(sent)

    r = cli("ingest", "--dead-letters", "--until-idle", "1", "--lake", lake, *where)
    assert r.code == 0, r.text
    raw = pl.read_delta(str(lake / "raw" / stream.event_type))
    valid = {m["ce_id"] for m in sent if m["expect"] == "raw"}
    assert set(raw.get_column("event_id")) == valid
    assert set(raw.get_column("subscription")) == {dead}  # lineage says where it came from
    quarantined = pl.read_delta(str(lake / "quarantine")).height
    assert quarantined == sum(1 for m in sent if m["expect"] == "quarantine")
    after = json.loads(cli("status", "--json", "--lake", lake, *where).out)
    assert after["ledger"]["balanced"] is True
    assert after["ledger"]["received"] == len(sent)
    assert {s["subscription"]: s["messages"] for s in after["backlog"]["subscriptions"]}[dead] == 0
    client.close()


def test_ingest_from_gcp_without_credentials_says_what_to_run(cli, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    def no_credentials(*a: Any, **k: Any) -> Any:
        raise DefaultCredentialsError("none")

    monkeypatch.setattr(google.auth, "default", no_credentials)
    r = cli("ingest", "--dead-letters", "--gcp", "--project", "acme-data", "--lake", tmp_path / "lake")
    assert r.code == 2
    assert "no Google credentials to pull from Pub/Sub with" in r.text
    assert "gcloud auth application-default login" in r.text
    wrong = cli("ingest", "--dead-letters", "--mode", "streaming", "--dry-run")
    assert wrong.code == 2
    assert "--dead-letters and --gcp are for --mode local" in wrong.text
