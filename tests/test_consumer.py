"""The local consumer under real Pub/Sub traffic, published the way a user's producer would (the
plain google-cloud-pubsub client): a 9.5 MB message, hostile small messages, a message that
crashes processing, transient failures, and the operational mistakes a person makes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import CONTRACTS_DIR
from tidegate.catalog import Catalog, load_catalog
from tidegate.expectations.contracts import ContractRegistry
from tidegate.infra.pubsub import provision, publisher, subscriber, subscription_path, topic_path
from tidegate.lake.lock import lake_lock
from tidegate.lake.tables import ledger_uri, quarantine_uri, raw_uri
from tidegate.pipelines.local import Heartbeat, LocalIngest, LocalOptions
from tidegate.pipelines.runs import new_run_id
from tidegate.producer import ProduceConfig, generate
from tidegate.transforms.base import IngestConfig

pytestmark = pytest.mark.emulator


def valid_orders(catalog: Catalog, count: int, seed: int = 5) -> list[tuple[bytes, dict[str, str]]]:
    """Valid shop.order.placed messages (body, attributes), binary mode, from the producer."""
    registry = ContractRegistry.from_catalog(catalog)
    config = ProduceConfig(
        types=("shop.order.placed",), count=count, seed=seed, structured_rate=0.0, v2_rate=0.0
    )
    return [(m.data, m.attributes) for m in generate(config, catalog, registry)]


def publish_plain(
    address: str, project: str, topic: str, messages: list[tuple[bytes, dict[str, str]]]
) -> list[str]:
    """Publish with the official client's batching publisher, as a user's producer would."""
    client = publisher(address)
    futures = [client.publish(topic_path(project, topic), data, **attrs) for data, attrs in messages]
    ids = [f.result(timeout=120) for f in futures]
    client.stop()
    return ids


def ingest(address: str, catalog: Catalog, project: str, lake: Path, **opts):  # type: ignore[no-untyped-def]
    config = IngestConfig(str(lake), new_run_id(), str(catalog.path), "test", "test-sha")
    options = LocalOptions(**{"max_wait": 0.5, "until_idle": 1.0, **opts})
    return LocalIngest(catalog, address, config, options, project=project).run()


def with_body(
    message: tuple[bytes, dict[str, str]], body: bytes, **attrs: str
) -> tuple[bytes, dict[str, str]]:
    return body, {**message[1], **attrs}


def test_a_9_5_mb_message_is_quarantined_as_oversize_and_its_neighbours_land(
    pubsub_emulator, catalog, project, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    provision(catalog, pubsub_emulator.address, project)
    orders = valid_orders(catalog, 120)
    big_body = json.dumps({"order_id": "ord_BIG", "note": "x" * 9_500_000}).encode()
    big = with_body(orders[0], big_body, **{"ce-id": "big-one"})
    ids = publish_plain(pubsub_emulator.address, project, "shop-orders", [*orders[1:60], big, *orders[60:]])
    big_id = ids[59]

    summary = ingest(pubsub_emulator.address, catalog, project, tmp_path / "lake")
    assert summary.received == 120
    raw = pl.read_delta(raw_uri(str(tmp_path / "lake"), "shop.order.placed"))
    assert raw.height == 119
    q = pl.read_delta(quarantine_uri(str(tmp_path / "lake"))).filter(pl.col("pubsub_message_id") == big_id)
    assert q.height == 1
    row = q.row(0, named=True)
    assert (row["stage"], row["rule"]) == ("envelope", "oversize")
    assert str(len(big_body)) in row["reason"]
    assert row["payload_size"] == len(big_body)
    assert len(row["payload_sha256"]) == 64


def test_hostile_small_messages_are_quarantined_and_the_valid_ones_around_them_land(
    pubsub_emulator, catalog, project, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    provision(catalog, pubsub_emulator.address, project)
    orders = valid_orders(catalog, 90, seed=6)
    payload = json.loads(orders[0][0])
    deep: object = 1
    for _ in range(500):
        deep = [deep]
    hostile = {
        "overflowing placed_at": with_body(
            orders[0], json.dumps({**payload, "placed_at": 2**63 - 1}).encode(), **{"ce-id": "h-1"}
        ),
        "year-1 ce-time": with_body(
            orders[0], orders[0][0], **{"ce-id": "h-2", "ce-time": "0001-01-01T00:00:00+01:00"}
        ),
        "500-deep JSON": with_body(
            orders[0], json.dumps({**payload, "note": deep}).encode(), **{"ce-id": "h-3"}
        ),
    }
    ids = publish_plain(
        pubsub_emulator.address, project, "shop-orders", [*orders[1:40], *hostile.values(), *orders[40:]]
    )
    hostile_ids = dict(zip(hostile, ids[39:42], strict=True))

    summary = ingest(pubsub_emulator.address, catalog, project, tmp_path / "lake")
    assert summary.received == 92
    assert pl.read_delta(raw_uri(str(tmp_path / "lake"), "shop.order.placed")).height == 89
    q = pl.read_delta(quarantine_uri(str(tmp_path / "lake")))
    for what, message_id in hostile_ids.items():
        rows = q.filter(pl.col("pubsub_message_id") == message_id)
        assert rows.height == 1, what
        assert rows.get_column("stage")[0] in ("envelope", "contract"), what
    ledger = pl.read_delta(ledger_uri(str(tmp_path / "lake")))
    assert ledger.get_column("received").sum() == 92


def test_a_message_that_crashes_processing_is_isolated_and_left_to_the_dead_letter_policy(
    pubsub_emulator, catalog, project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:  # type: ignore[no-untyped-def]
    provision(catalog, pubsub_emulator.address, project)
    orders = valid_orders(catalog, 200, seed=7)
    culprit = orders[123][1]["ce-id"]
    ids = publish_plain(pubsub_emulator.address, project, "shop-orders", orders)
    monkeypatch.setenv("TIDEGATE_FAULT_CRASH_ON", culprit)

    with caplog.at_level(logging.ERROR, logger="tidegate.pipelines.local.batch"):
        # Each delivery of the culprit crashes its batch; the rest commits and is acked, the
        # culprit is nacked, redelivered, crashes again ... until Pub/Sub's dead-letter policy
        # (max_delivery_attempts in the catalog) moves it aside. The run then goes idle.
        summary = ingest(pubsub_emulator.address, catalog, project, tmp_path / "lake", until_idle=3.0)
    assert summary.poisoned >= 1
    assert summary.received == 199
    raw = pl.read_delta(raw_uri(str(tmp_path / "lake"), "shop.order.placed"))
    assert raw.height == 199
    assert culprit not in set(raw.get_column("event_id"))
    assert any(ids[123] in r.getMessage() and "poison message" in r.getMessage() for r in caplog.records)

    client = subscriber(pubsub_emulator.address)
    dead = subscription_path(project, catalog.dead_letter.subscription)
    got = client.pull(request={"subscription": dead, "max_messages": 10}, timeout=30)
    assert [m.message.attributes["ce-id"] for m in got.received_messages] == [culprit]
    client.close()


def test_a_transient_failure_is_retried_and_the_batch_lands(
    pubsub_emulator, catalog, project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import tidegate.faults

    provision(catalog, pubsub_emulator.address, project)
    publish_plain(pubsub_emulator.address, project, "shop-orders", valid_orders(catalog, 50, seed=8))
    monkeypatch.setenv("TIDEGATE_FAULT_TRANSIENT", "2")
    monkeypatch.setattr(tidegate.faults, "_transient_raised", 0)
    summary = ingest(pubsub_emulator.address, catalog, project, tmp_path / "lake")
    assert (summary.received, summary.raw_written) == (50, 50)


def test_transient_failures_that_outlast_the_retries_stop_the_run_with_exit_3_and_lose_nothing(
    cli, pubsub_emulator, catalog, project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import tidegate.faults

    cat = tmp_path / "catalog.yaml"
    text = catalog.path.read_text().replace("project: local-lake", f"project: {project}")
    cat.write_text(text.replace("contracts: ../expectations/contracts", f"contracts: {CONTRACTS_DIR}"))
    provision(load_catalog(cat), pubsub_emulator.address)
    publish_plain(pubsub_emulator.address, project, "shop-orders", valid_orders(catalog, 30, seed=9))
    monkeypatch.setenv("TIDEGATE_FAULT_TRANSIENT", "1000")
    monkeypatch.setattr(tidegate.faults, "_transient_raised", 0)
    args = ["ingest", "--catalog", cat, "--lake", tmp_path / "lake", "--emulator", pubsub_emulator.address]
    r = cli(*args, "--until-idle", "1")
    assert r.code == 3, r.text
    assert "transient" in r.text
    assert "nothing is lost" in r.text
    assert "bug" not in r.text

    monkeypatch.setenv("TIDEGATE_FAULT_TRANSIENT", "0")
    r = cli(*args, "--until-idle", "1")  # nacked at the stop: all 30 are there again at once
    assert r.code == 0, r.text
    assert pl.read_delta(raw_uri(str(tmp_path / "lake"), "shop.order.placed")).height == 30


def test_a_second_ingest_on_the_same_lake_says_another_is_writing(
    cli, pubsub_emulator, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    lake = tmp_path / "lake"
    with lake_lock(str(lake)):
        r = cli("ingest", "--lake", lake, "--emulator", pubsub_emulator.address, "--until-idle", "1")
    assert r.code == 2
    assert "another `tidegate ingest` is writing to" in r.text
    assert "bug" not in r.text


def test_a_lake_path_that_is_a_file_is_a_clear_mistake(cli, pubsub_emulator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    not_a_dir = tmp_path / "lake.txt"
    not_a_dir.write_text("oops")
    r = cli("ingest", "--lake", not_a_dir, "--emulator", pubsub_emulator.address, "--until-idle", "1")
    assert r.code == 2, r.text
    assert "cannot use" in r.text
    assert "--lake" in r.text
    assert "bug" not in r.text


def test_follow_and_until_idle_together_are_refused(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("ingest", "--follow", "--until-idle", "3", "--lake", tmp_path / "lake")
    assert r.code == 2
    assert "--follow and --until-idle" in r.text


def test_follow_reports_a_heartbeat(pubsub_emulator, catalog, project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import threading
    import time

    provision(catalog, pubsub_emulator.address, project)
    publish_plain(pubsub_emulator.address, project, "shop-orders", valid_orders(catalog, 40, seed=10))
    beats: list[Heartbeat] = []
    config = IngestConfig(str(tmp_path / "lake"), new_run_id(), str(catalog.path), "test", "test-sha")
    run = LocalIngest(
        catalog,
        pubsub_emulator.address,
        config,
        LocalOptions(follow=True, until_idle=None, heartbeat_seconds=0.5),
        project=project,
        on_heartbeat=beats.append,
    )

    def stop_after_beats() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (beats and any(b.last_commit for b in beats)):
            time.sleep(0.1)
        time.sleep(0.6)
        run.stop_requested = True

    threading.Thread(target=stop_after_beats, daemon=True).start()
    summary = run.run()
    assert summary.received == 40
    assert len(beats) >= 2
    assert sum(b.messages for b in beats) <= 40
    assert beats[-1].last_commit is not None
    assert beats[-1].batches >= 1


def test_odd_but_legal_cloudevents_from_the_sdk_and_misplaced_or_impossible_ones(
    pubsub_emulator, catalog, project, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Published with the plain client, built with the cloudevents SDK where it applies: a
    structured event carrying data_base64 and one with lower-case t/z land; a page view on the
    orders topic, a ce-time in 2099 and a structured event with a bad specversion are
    quarantined with their rule and keep the event's id and type; a second producer reusing an
    id lands as its own event."""

    from datetime import datetime

    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    provision(catalog, pubsub_emulator.address, project)
    orders = valid_orders(catalog, 6, seed=12)
    body, attrs = orders[0]
    ce = {k.removeprefix("ce-"): v for k, v in attrs.items() if k.startswith("ce-")}
    structured = {"content-type": "application/cloudevents+json"}
    when = datetime.fromisoformat(ce["time"].replace("Z", "+00:00"))
    sdk_attrs = {**ce, "id": "sdk-b64", "time": when, "datacontenttype": "application/json"}
    sdk = CloudEvent(sdk_attrs, body)  # bytes data: the SDK writes data_base64
    lower = {**attrs, "ce-id": "lower-tz", "ce-time": attrs["ce-time"].lower()}
    page_view = {**attrs, "ce-id": "misplaced", "ce-type": "shop.page.viewed"}
    future = {**attrs, "ce-id": "from-2099", "ce-time": "2099-01-01T00:00:00Z"}
    bad_spec = json.dumps({**ce, "id": "bad-spec", "specversion": "0.3", "data": json.loads(body)}).encode()
    second_producer = {**orders[1][1], "ce-source": "//other-shop.example.com"}
    messages = [
        *orders,
        (JSONFormat().write(sdk), structured),
        (body, lower),
        (body, page_view),
        (body, future),
        (bad_spec, structured),
        (orders[1][0], second_producer),
    ]
    publish_plain(pubsub_emulator.address, project, "shop-orders", messages)

    summary = ingest(pubsub_emulator.address, catalog, project, tmp_path / "lake")
    assert summary.received == len(messages)
    raw = pl.read_delta(raw_uri(str(tmp_path / "lake"), "shop.order.placed"))
    assert {"sdk-b64", "lower-tz"} <= set(raw.get_column("event_id"))
    assert raw.filter(pl.col("event_id") == orders[1][1]["ce-id"]).height == 2  # two sources
    assert raw.height == 6 + 2 + 1
    q = pl.read_delta(quarantine_uri(str(tmp_path / "lake")))
    got = {r["event_id"]: (r["rule"], r["event_type"]) for r in q.to_dicts()}
    assert got == {
        "misplaced": ("type_not_on_topic", "shop.page.viewed"),
        "from-2099": ("event_time_in_future", "shop.order.placed"),
        "bad-spec": ("unsupported_specversion", "shop.order.placed"),
    }
    assert q.filter(pl.col("event_id") == "bad-spec").get_column("event_time").is_not_null().all()


def test_an_id_reused_for_another_payload_is_quarantined_as_a_conflict_and_verify_counts_it(
    pubsub_emulator, catalog, project, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    """A producer sends order A; later the same (source, id) with another item count (a conflict),
    and the same data again as a structured event from the cloudevents SDK (a plain duplicate):
    A stays in raw, the conflict is quarantined with both digests, the ledger counts it, and
    verify, status and `quarantine list --rule id_conflict` show it."""
    from datetime import datetime

    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    provision(catalog, pubsub_emulator.address, project)
    orders = valid_orders(catalog, 5, seed=21)
    lake = tmp_path / "lake"
    publish_plain(pubsub_emulator.address, project, "shop-orders", orders)
    assert ingest(pubsub_emulator.address, catalog, project, lake).raw_written == 5

    body, attrs = orders[2]
    changed = json.loads(body)
    changed["item_count"] += 1
    ce = {k.removeprefix("ce-"): v for k, v in attrs.items() if k.startswith("ce-")}
    ce["time"] = datetime.fromisoformat(ce["time"].replace("Z", "+00:00"))
    same_again = CloudEvent({**ce, "datacontenttype": "application/json"}, json.loads(body))
    conflict_id, _dup_id = publish_plain(
        pubsub_emulator.address,
        project,
        "shop-orders",
        [
            (json.dumps(changed).encode(), attrs),
            (JSONFormat().write(same_again), {"content-type": "application/cloudevents+json"}),
        ],
    )
    summary = ingest(pubsub_emulator.address, catalog, project, lake)
    assert (summary.received, summary.raw_written, summary.duplicates_skipped) == (2, 0, 1)
    assert (summary.quarantined, summary.id_conflicts) == (1, 1)

    raw = pl.read_delta(raw_uri(str(lake), "shop.order.placed"))
    assert raw.height == 5
    assert raw.filter(pl.col("event_id") == attrs["ce-id"]).get_column("item_count").to_list() == [
        json.loads(body)["item_count"]
    ]
    q = pl.read_delta(quarantine_uri(str(lake))).row(0, named=True)
    assert (q["pubsub_message_id"], q["rule"], q["event_id"]) == (conflict_id, "id_conflict", attrs["ce-id"])

    verified = cli("verify", "--lake", lake)
    assert verified.code == 0, verified.out
    assert "id conflicts: each recorded once" in verified.out
    status = cli("status", "--lake", lake, "--json")
    assert json.loads(status.out)["ledger"]["id_conflicts"] == 1
    listed = cli("quarantine", "list", "--lake", lake, "--rule", "id_conflict", "--json")
    assert [r["pubsub_message_id"] for r in json.loads(listed.out)] == [conflict_id]


def test_a_redrive_after_a_suite_fix_lands_the_wrongly_quarantined_orders_once(
    pubsub_emulator, project, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    """End to end: a too-strict suite (EUR only) quarantines real orders published with the plain
    client; the suite is fixed; `tidegate quarantine redrive` lands them once, and verify passes."""
    from tests.test_redrive import catalog_copy

    strict = catalog_copy(tmp_path / "strict", currencies=["EUR"])
    fixed = catalog_copy(tmp_path / "fixed")
    provision(strict, pubsub_emulator.address, project)
    orders = valid_orders(fixed, 60, seed=31)
    publish_plain(pubsub_emulator.address, project, "shop-orders", orders)
    lake = tmp_path / "lake"
    summary = ingest(pubsub_emulator.address, strict, project, lake)
    assert summary.received == 60
    wrongly = (
        pl.read_delta(quarantine_uri(str(lake)))
        .filter(pl.col("rule") == "expect_column_values_to_be_in_set")
        .get_column("pubsub_message_id")
    )
    assert 0 < wrongly.len() < 60

    done = cli(
        "quarantine",
        "redrive",
        "--lake",
        lake,
        "--catalog",
        fixed.path,
        "--rule",
        "expect_column_values_to_be_in_set",
    )
    assert done.code == 0, done.out + done.err
    raw = pl.read_delta(raw_uri(str(lake), "shop.order.placed"))
    assert raw.get_column("event_id").n_unique() == raw.height
    assert set(wrongly) <= set(raw.get_column("pubsub_message_id"))
    assert cli("verify", "--lake", lake, "--catalog", fixed.path).code == 0
    again = cli(
        "quarantine",
        "redrive",
        "--lake",
        lake,
        "--catalog",
        fixed.path,
        "--rule",
        "expect_column_values_to_be_in_set",
    )
    assert again.code == 0
    assert pl.read_delta(raw_uri(str(lake), "shop.order.placed")).height == raw.height


def test_a_backlog_that_arrives_slowly_is_still_taken_in_big_batches(
    pubsub_emulator, catalog, project
) -> None:  # type: ignore[no-untyped-def]
    """Messages published long ago mean the ingest is behind: a batch keeps filling for its
    backlog time even when they trickle in (a 500k emulator backlog arrives at ~5k msg/s), so the
    batch's fixed cost is paid for many of them; fresh messages keep the short fill."""
    import threading
    import time

    from tidegate.pipelines.local.consumer import Consumer, ConsumerOptions

    provision(catalog, pubsub_emulator.address, project)
    orders = valid_orders(catalog, 60, seed=21)
    stream = next(s for s in catalog.streams if "shop.order.placed" in s.event_types)

    def take_while_more_arrive(backlog_age: float) -> int:
        client = subscriber(pubsub_emulator.address)
        consumer = Consumer(
            client, {subscription_path(project, stream.subscription): stream.subscription}, ConsumerOptions()
        )
        consumer.start()
        late = threading.Timer(
            0.4, publish_plain, (pubsub_emulator.address, project, stream.topic, orders[30:])
        )
        try:
            # the first 30 are there before the take begins; 30 more come 0.4 s into it
            deadline = time.monotonic() + 10
            while consumer.buffered < 30 and time.monotonic() < deadline:
                time.sleep(0.02)
            late.start()
            taken = consumer.take(
                1000, wait=1.0, fill=0.1, backlog_rate=1e9, backlog_fill=2.0, backlog_age=backlog_age
            )
            consumer.ack(taken)
            late.join()
            rest = consumer.take(1000, wait=3.0, fill=0.5)
            consumer.ack(rest)
            return len(taken)
        finally:
            consumer.close()
            client.close()

    publish_plain(pubsub_emulator.address, project, stream.topic, orders[:30])
    time.sleep(1.5)  # now 1.5 s old
    assert take_while_more_arrive(backlog_age=1.0) == 60  # behind: filled on, the late 30 joined
    publish_plain(pubsub_emulator.address, project, stream.topic, orders[:30])
    assert take_while_more_arrive(backlog_age=10.0) == 30  # fresh: the short fill, a batch of 30


def test_a_backlog_is_pulled_with_several_pulls_in_flight_and_each_message_taken_once(
    pubsub_emulator, catalog, project, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The emulator hands over ~100 messages a pull: a backlogged subscription gets its helper
    pullers (several pulls in flight) and every message is still taken exactly once; an idle
    one is polled by its own puller only (no helper spends the emulator's time on empty pulls)."""
    import threading
    import time
    from collections import Counter

    from tidegate.pipelines.local import consumer as consumer_module
    from tidegate.pipelines.local.consumer import Consumer, ConsumerOptions

    provision(catalog, pubsub_emulator.address, project)
    stream = next(s for s in catalog.streams if "shop.order.placed" in s.event_types)
    orders = valid_orders(catalog, 10_000, seed=23)  # ~100 pulls: time for the helpers to join
    publish_plain(pubsub_emulator.address, project, stream.topic, orders)

    pulled: Counter[str] = Counter()  # thread -> messages it pulled
    pulls: Counter[str] = Counter()  # thread -> pull calls
    lock = threading.Lock()
    real_pull = consumer_module.pull_now

    def counting_pull(*args, **kwargs):  # type: ignore[no-untyped-def]
        received = real_pull(*args, **kwargs)
        with lock:
            pulls[threading.current_thread().name] += 1
            pulled[threading.current_thread().name] += len(received)
        return received

    monkeypatch.setattr(consumer_module, "pull_now", counting_pull)
    client = subscriber(pubsub_emulator.address)
    consumer = Consumer(
        client,
        {subscription_path(project, stream.subscription): stream.subscription},
        # held messages capped, taken in slices: the drain lasts long enough for the helpers to
        # notice the backlog, however many messages the emulator hands over a pull
        ConsumerOptions(pullers_per_subscription=3, max_messages=2000),
    )
    consumer.start()
    try:
        ids: list[str] = []
        deadline = time.monotonic() + 60
        while len(ids) < len(orders) and time.monotonic() < deadline:
            taken = consumer.take(500, wait=1.0, fill=0.0)
            ids += [t.message.attributes["ce-id"] for t in taken]
            consumer.ack(taken)
            time.sleep(0.01)
        assert sorted(ids) == sorted(a["ce-id"] for _, a in orders)  # each once, none missing
        helpers = {name: n for name, n in pulled.items() if not name.endswith("-0")}
        assert sum(helpers.values()) > 0, (pulled, pulls)  # several pulls were in flight
        time.sleep(0.5)  # the helpers notice the subscription is drained
        with lock:
            pulls.clear()
        time.sleep(1.5)  # idle
        with lock:
            idle = dict(pulls)
        assert idle.get(f"pull-{stream.subscription}-0", 0) > 0, idle  # still polled
        assert all(name.endswith("-0") for name in idle), idle  # by its own puller only
    finally:
        consumer.close()
        client.close()
