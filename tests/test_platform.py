"""The local Pub/Sub platform against the real emulator: fixture, provisioning, publishing,
and the `up` / `down` / `produce` / `demo` commands."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.conftest import CONTRACTS_DIR
from tidegate.infra import emulator as emu
from tidegate.infra.pubsub import provision, pull_now, subscriber, subscription_path
from tidegate.producer import ProduceConfig, generate, publish

pytestmark = pytest.mark.emulator


def test_private_emulator_answers_on_loopback(pubsub_emulator) -> None:  # type: ignore[no-untyped-def]
    assert pubsub_emulator.host == "127.0.0.1"
    assert emu.is_up(pubsub_emulator.host, pubsub_emulator.port)
    assert not emu.is_up("127.0.0.1", emu.free_port())


def test_provisioning_is_idempotent_and_fixes_drift(pubsub_emulator, catalog, project) -> None:  # type: ignore[no-untyped-def]
    first = provision(catalog, pubsub_emulator.address, project)
    assert {c.action for c in first} == {"created"}
    assert {c.name for c in first if c.kind == "topic"} == {
        "shop-orders",
        "shop-payments",
        "shop-pageviews",
        "tidegate-dead-letter",
    }
    second = provision(catalog, pubsub_emulator.address, project)
    assert {c.action for c in second} == {"unchanged"}

    drifted = catalog.model_copy(
        update={
            "streams": [
                catalog.streams[0].model_copy(update={"ack_deadline_seconds": 120}),
                *catalog.streams[1:],
            ]
        }
    )
    third = provision(drifted, pubsub_emulator.address, project)
    assert [(c.name, c.action, c.detail) for c in third if c.action != "unchanged"] == [
        ("shop-orders-tidegate", "updated", "ack_deadline_seconds")
    ]
    assert {c.action for c in provision(drifted, pubsub_emulator.address, project)} == {"unchanged"}

    client = subscriber(pubsub_emulator.address)
    sub = client.get_subscription(
        request={"subscription": subscription_path(project, "shop-pageviews-tidegate")}
    )
    client.close()
    assert sub.ack_deadline_seconds == 10
    assert sub.dead_letter_policy.dead_letter_topic == f"projects/{project}/topics/tidegate-dead-letter"
    assert sub.dead_letter_policy.max_delivery_attempts == 10
    assert int(sub.message_retention_duration.total_seconds()) == 3 * 86400


def _pull_all(address: str, project: str, subscription: str) -> list:  # type: ignore[type-arg]
    client = subscriber(address)
    out = []
    try:
        while True:
            received = pull_now(client, subscription_path(project, subscription))
            if not received:
                break
            out += [r.message for r in received]
            client.acknowledge(
                request={
                    "subscription": subscription_path(project, subscription),
                    "ack_ids": [r.ack_id for r in received],
                }
            )
    finally:
        client.close()
    return out


def test_published_messages_arrive_with_manifest_message_ids(
    pubsub_emulator, catalog, registry, project, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    provision(catalog, pubsub_emulator.address, project)
    config = ProduceConfig(
        types=tuple(catalog.event_types),
        count=3000,
        seed=4,
        invalid_rate=0.05,
        duplicate_rate=0.02,
        structured_rate=0.1,
    )
    manifest = tmp_path / "manifest.jsonl"
    report = publish(
        generate(config, catalog, registry), project, pubsub_emulator.address, config.count, manifest=manifest
    )
    assert report.failed == 0
    assert report.total == 3000
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 3000
    assert all(r["message_id"] for r in rows)

    pulled = {}
    for stream in catalog.streams:
        for m in _pull_all(pubsub_emulator.address, project, stream.subscription):
            pulled[m.message_id] = m
    assert set(pulled) == {r["message_id"] for r in rows}  # nothing lost, nothing extra
    for r in rows:
        m = pulled[r["message_id"]]
        if r["kind"] not in ("missing_id",) and "ce-id" in m.attributes:
            assert m.attributes["ce-id"] == r["ce_id"]
    modes = {m.attributes.get("content-type") for m in pulled.values()}
    assert modes == {"application/json", "application/cloudevents+json"}


def test_paced_publishing_respects_the_rate(pubsub_emulator, catalog, registry, project) -> None:  # type: ignore[no-untyped-def]
    provision(catalog, pubsub_emulator.address, project)
    config = ProduceConfig(types=("shop.page.viewed",), count=300, rate=500)
    report = publish(generate(config, catalog, registry), project, pubsub_emulator.address, 300, rate=500)
    assert report.failed == 0
    assert report.seconds >= 0.55  # 300 messages at 500/s cannot take less than 0.6 s


def _catalog_on_port(tmp_path: Path, port: int) -> Path:
    p = tmp_path / "catalog.yaml"
    p.write_text(
        f"""project: local-lake
emulator: {{host: 127.0.0.1, port: {port}}}
contracts: {CONTRACTS_DIR}
streams:
  - event_type: shop.order.placed
    topic: shop-orders
    subscription: shop-orders-tidegate
  - event_type: shop.page.viewed
    topic: shop-pageviews
    subscription: shop-pageviews-tidegate
"""
    )
    return p


def test_up_down_lifecycle(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TIDEGATE_HOME", str(tmp_path / "home"))
    port = emu.free_port()
    cat = _catalog_on_port(tmp_path, port)
    try:
        r = cli("up", "--catalog", cat)
        assert r.code == 0, r.text
        assert f"Started the Pub/Sub emulator at 127.0.0.1:{port}" in r.text
        assert "6 change(s) applied" in r.text  # 2 topics + dead-letter topic, 3 subscriptions
        state = json.loads((tmp_path / "home" / "emulator.json").read_text())
        assert emu.is_up("127.0.0.1", port)

        r = cli("up", "--catalog", cat)
        assert r.code == 0, r.text
        assert "already running" in r.text
        assert "reusing" in r.text
        assert "Nothing to change: all 6 resources already match the catalog." in r.text

        r = cli(
            "produce",
            "--catalog",
            cat,
            "--count",
            "50",
            "--type",
            "shop.order.placed",
            "--manifest",
            tmp_path / "m.jsonl",
        )
        assert r.code == 0, r.text
        assert "Published 50 messages" in r.text
        assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 50

        r = cli("down")
        assert r.code == 0
        assert f"Stopped the Pub/Sub emulator at 127.0.0.1:{port} (pid {state['pid']})" in r.text
        assert not emu.is_up("127.0.0.1", port)
        r = cli("down")
        assert r.code == 0
        assert "No emulator started by tidegate is running" in r.text
    finally:
        st = emu.read_state(tmp_path / "home" / "emulator.json")
        if st and emu.pid_alive(st.pid):
            emu.stop_pid(st.pid)


def test_up_reuses_an_emulator_it_did_not_start_and_down_leaves_it(
    cli, pubsub_emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TIDEGATE_HOME", str(tmp_path / "home"))
    cat = _catalog_on_port(tmp_path, pubsub_emulator.port)
    r = cli("up", "--catalog", cat)
    assert r.code == 0
    assert "reusing it" in r.text
    r = cli("down")
    assert "No emulator started by tidegate" in r.text
    assert emu.is_up(pubsub_emulator.host, pubsub_emulator.port)


def test_up_refuses_a_port_taken_by_something_else(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TIDEGATE_HOME", str(tmp_path / "home"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = cli("up", "--catalog", _catalog_on_port(tmp_path, s.getsockname()[1]))
    assert r.code != 0
    assert "is taken by something that is not a Pub/Sub emulator" in r.text
    assert "Traceback" not in r.text


def test_produce_without_an_emulator_says_to_start_one(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("produce", "--catalog", _catalog_on_port(tmp_path, emu.free_port()), "--count", "5")
    assert r.code == 3
    assert "no Pub/Sub emulator answers" in r.text
    assert "tidegate up" in r.text


def test_demo_runs_end_to_end(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TIDEGATE_HOME", str(tmp_path / "home"))
    r = cli("demo", "--count", "800")
    assert r.code == 0, r.text
    assert "✓ manifest: every message landed where expected, exactly once" in r.text
    assert "raw/shop.order.placed" in r.text
    assert "missing_required_field" in r.text
    lake = tmp_path / "home" / "demo" / "lake"
    assert (lake / "raw" / "shop.order.placed" / "_delta_log").is_dir()
    assert (lake / "quarantine" / "_delta_log").is_dir()
    for name in ("revenue_per_currency_1m", "page_views_per_url_5m", "sessions_per_user"):
        assert f"✓ aggregates/{name}: equals a recompute from raw" in r.text
        assert (lake / "aggregates" / name / "_delta_log").is_dir()
    assert "✓ manifest: events sent late are in the late ledger, and no on-time event is" in r.text
    # the runbook's next step: `status` reads the default lake, which the demo did not write;
    # the hint names the demo's lake instead of telling the user to run the demo again
    monkeypatch.chdir(tmp_path)
    for args in (["status", "--backlog", "off"], ["verify"], ["quarantine", "list"]):
        after = cli(*args)
        assert after.code == 2, after.text
        assert "--lake home/demo/lake" in after.text, after.text
        assert "bug" not in after.text
    shown = cli("status", "--backlog", "off", "--lake", "home/demo/lake")
    assert shown.code == 0, shown.text
