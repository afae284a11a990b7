"""The stream catalog: defaults inherited, every mistake reported readably."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CONTRACTS_DIR, write_catalog
from tidegate.catalog import Compatibility, load_catalog
from tidegate.errors import ConfigError

BASE = f"""
project: local-lake
contracts: {CONTRACTS_DIR}
streams:
  - event_type: shop.order.placed
    topic: shop-orders
    subscription: shop-orders-tidegate
"""


def test_shipped_catalog_declares_the_sample_domain(catalog) -> None:
    assert catalog.event_types == ["shop.order.placed", "shop.payment.captured", "shop.page.viewed"]
    assert catalog.emulator.host == "127.0.0.1"
    assert catalog.contracts_dir.is_dir()


def test_streams_inherit_defaults_and_may_override_them(catalog) -> None:
    orders = catalog.stream("shop.order.placed")
    views = catalog.stream("shop.page.viewed")
    assert orders.ack_deadline_seconds == 10  # leases are extended while held: a crash costs 10 s
    assert orders.message_retention_seconds == 7 * 86400
    assert views.message_retention_seconds == 3 * 86400  # overridden
    assert views.compatibility is Compatibility.BACKWARD
    assert orders.compatibility is Compatibility.FULL_TRANSITIVE


def test_minimal_catalog_gets_sensible_defaults(tmp_path: Path) -> None:
    cat = load_catalog(write_catalog(tmp_path, BASE))
    s = cat.stream("shop.order.placed")
    assert s.ack_deadline_seconds == 10
    assert s.max_payload_bytes == 65536
    assert cat.dead_letter.topic == "tidegate-dead-letter"


def test_unknown_event_type_lists_the_known_ones(catalog) -> None:
    with pytest.raises(ConfigError) as exc:
        catalog.stream("shop.order.shipped")
    assert "shop.order.placed" in str(exc.value.hint)


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (("project: local-lake", "project: demo"), "not a valid GCP project id"),
        (("topic: shop-orders", "topic: goog-orders"), "not a valid Pub/Sub resource id"),
        (("topic: shop-orders", "topic: 1orders"), "not a valid Pub/Sub resource id"),
        (("event_type: shop.order.placed", "event_type: OrderPlaced"), "dotted event type"),
        (
            ("subscription: shop-orders-tidegate", "subscription: shop-orders-tidegate\n    colour: red"),
            "colour",
        ),
        (("streams:", "defaults:\n  ack_deadline_seconds: 5000\nstreams:"), "ack_deadline_seconds"),
        (("streams:", "defaults:\n  message_retention: 90d\nstreams:"), "between 10m and 31d"),
        (("streams:", "defaults:\n  compatibility: SIDEWAYS\nstreams:"), "compatibility"),
        (("streams:", "emulator:\n  host: 10.0.0.5\nstreams:"), "loopback"),
    ],
)
def test_invalid_catalogs_say_where_and_why(tmp_path: Path, patch: tuple[str, str], expected: str) -> None:
    text = BASE.replace(*patch)
    with pytest.raises(ConfigError) as exc:
        load_catalog(write_catalog(tmp_path, text))
    assert expected in str(exc.value)


def test_duplicate_subscription_is_rejected(tmp_path: Path) -> None:
    text = (
        BASE
        + """
  - event_type: shop.page.viewed
    topic: shop-pageviews
    subscription: shop-orders-tidegate
"""
    )
    with pytest.raises(ConfigError, match="subscription 'shop-orders-tidegate' is declared twice"):
        load_catalog(write_catalog(tmp_path, text))


def test_missing_catalog_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_catalog(tmp_path / "nope.yaml")
    assert "TIDEGATE_CATALOG" in str(exc.value.hint)


def test_not_yaml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_catalog(write_catalog(tmp_path, "project: [unclosed"))


def test_missing_contracts_directory_is_reported(tmp_path: Path) -> None:
    text = BASE.replace(str(CONTRACTS_DIR), "no/such/dir")
    with pytest.raises(ConfigError, match="contracts directory"):
        load_catalog(write_catalog(tmp_path, text))


def test_a_stream_may_carry_several_types_behind_one_subscription(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    """`event_types: [a, b]`: both types are the catalog's, both land from that one subscription
    in their own raw tables, and a known type from another topic is still refused there."""
    from datetime import UTC, datetime

    import polars as pl

    from tests.test_batch import orders
    from tidegate.expectations.envelope import RawMessage
    from tidegate.lake.tables import QUARANTINE, raw_uri
    from tidegate.pipelines.local.batch import BatchRunner
    from tidegate.producer import ProduceConfig, generate
    from tidegate.transforms.base import IngestConfig

    text = f"""
project: local-lake
contracts: {CONTRACTS_DIR}
streams:
  - event_types: [shop.order.placed, shop.payment.captured]
    topic: shop-checkout
    subscription: shop-checkout-tidegate
  - event_type: shop.page.viewed
    topic: shop-pageviews
    subscription: shop-pageviews-tidegate
"""
    catalog = load_catalog(write_catalog(tmp_path, text))
    assert catalog.event_types == ["shop.order.placed", "shop.payment.captured", "shop.page.viewed"]
    assert catalog.stream("shop.payment.captured").subscription == "shop-checkout-tidegate"
    assert catalog.types_by_subscription["shop-checkout-tidegate"] == {
        "shop.order.placed",
        "shop.payment.captured",
    }

    def read_from_checkout(types: tuple[str, ...], n: int, seed: int) -> list[RawMessage]:
        config = ProduceConfig(types=types, count=n, seed=seed, structured_rate=0.0)
        return [
            RawMessage(m.data, m.attributes, f"{seed}-{i}", datetime.now(UTC), "shop-checkout-tidegate")
            for i, m in enumerate(generate(config, catalog, registry))
        ]

    messages = [
        *orders(catalog, registry, 3),
        *read_from_checkout(("shop.payment.captured",), 2, 7),
        *read_from_checkout(("shop.page.viewed",), 1, 8),
    ]
    messages[:3] = [
        RawMessage(m.data, m.attributes, m.message_id, m.publish_time, "shop-checkout-tidegate")
        for m in messages[:3]
    ]
    lake = tmp_path / "lake"
    BatchRunner(IngestConfig(str(lake), "r", str(catalog.path), "t", "t"), single_writer=True).run(
        "b1", messages
    )
    assert pl.read_delta(raw_uri(str(lake), "shop.order.placed")).height == 3
    assert pl.read_delta(raw_uri(str(lake), "shop.payment.captured")).height == 2
    assert pl.read_delta(QUARANTINE.uri(str(lake))).get_column("rule").to_list() == ["type_not_on_topic"]


def test_a_type_in_two_streams_is_rejected(tmp_path: Path) -> None:
    text = (
        BASE
        + """
  - event_types: [shop.page.viewed, shop.order.placed]
    topic: shop-pageviews
    subscription: shop-pageviews-tidegate
"""
    )
    with pytest.raises(ConfigError, match=r"event type 'shop\.order\.placed' is declared twice"):
        load_catalog(write_catalog(tmp_path, text))
