"""One micro-batch through the Beam composites on the in-process runner (no emulator): a message
that crashes processing is isolated and the rest commits; a failure no message explains stops
the batch with nothing isolated."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from tidegate.catalog import Catalog
from tidegate.expectations.envelope import RawMessage
from tidegate.lake.tables import raw_uri
from tidegate.pipelines.local.batch import MAX_POISON, BatchRunner
from tidegate.producer import ProduceConfig, generate
from tidegate.transforms.base import IngestConfig


def orders(catalog: Catalog, registry, count: int) -> list[RawMessage]:  # type: ignore[no-untyped-def]
    config = ProduceConfig(types=("shop.order.placed",), count=count, seed=12, structured_rate=0.0)
    return [
        RawMessage(m.data, m.attributes, str(i), datetime.now(UTC), "shop-orders-tidegate")
        for i, m in enumerate(generate(config, catalog, registry))
    ]


def runner(catalog: Catalog, lake: Path) -> BatchRunner:
    return BatchRunner(IngestConfig(str(lake), "run-t", str(catalog.path), "t", "t"), sleep=lambda s: None)


def test_a_crashing_message_is_isolated_and_the_rest_of_its_batch_commits(
    catalog, registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    messages = orders(catalog, registry, 40)
    monkeypatch.setenv("TIDEGATE_FAULT_CRASH_ON", messages[17].attributes["ce-id"])
    run = runner(catalog, tmp_path / "lake").run("b1", messages)
    assert run.poison == [17]
    raw = pl.read_delta(raw_uri(str(tmp_path / "lake"), "shop.order.placed"))
    assert raw.height == 39
    assert sum(c.inserted for c in run.commits if c.kind == "raw") == 39
    assert run.runs > 2  # split, not retried whole


def test_a_failure_no_message_explains_stops_the_batch_and_isolates_nothing(
    catalog, registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    not_a_lake = tmp_path / "file"
    not_a_lake.write_text("x")  # every commit under it fails, whatever the messages
    r = runner(catalog, not_a_lake)
    with pytest.raises(Exception) as exc:  # noqa: PT011 - the writer's own error, whatever it is
        r.run("b1", orders(catalog, registry, 12))
    assert "poison" not in str(exc.value)
    assert r.successes == 0


def test_many_crashing_messages_in_one_batch_are_systematic_not_poison(
    catalog, registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    messages = orders(catalog, registry, 60)
    for m in messages[: MAX_POISON + 5]:  # these all crash: a fault that hits many, not one
        m.attributes["ce-id"] = "crashes"
    monkeypatch.setenv("TIDEGATE_FAULT_CRASH_ON", "crashes")
    r = runner(catalog, tmp_path / "lake")
    r.run("b0", messages[-1:])  # the runner has committed before
    with pytest.raises(Exception, match="injected crash"):
        r.run("b1", messages)


def test_the_lakes_only_writer_lands_an_id_once_even_when_it_is_resent_with_another_date(
    catalog, registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Local mode dedups by the in-memory key index (lake.keyindex), not by the batch's event
    dates: a producer re-sending an event with a ce-time on another day lands it once."""
    messages = orders(catalog, registry, 5)
    resent = messages[2]
    moved = dict(resent.attributes, **{"ce-time": "2021-05-05T10:00:00Z"})  # another day and year
    again = RawMessage(resent.data, moved, "99", datetime.now(UTC), resent.subscription)
    r = BatchRunner(
        IngestConfig(str(tmp_path / "lake"), "run-t", str(catalog.path), "t", "t"), single_writer=True
    )
    r.run("b1", messages)
    run = r.run("b2", [again])
    raw = pl.read_delta(raw_uri(str(tmp_path / "lake"), "shop.order.placed"))
    assert raw.height == 5
    assert raw.get_column("event_id").n_unique() == 5
    assert [(c.received, c.inserted) for c in run.commits if c.kind == "raw"] == [(1, 0)]


@pytest.mark.parametrize("single_writer", [True, False], ids=["key index", "merge"])
def test_an_event_is_identified_by_source_and_id_so_two_producers_may_share_an_id(
    catalog, registry, tmp_path: Path, single_writer: bool
) -> None:  # type: ignore[no-untyped-def]
    """CloudEvents identity is (source, id): another producer's `order-42` is another event.
    The same (source, id) again is still a duplicate, in both commit paths."""
    first = orders(catalog, registry, 3)
    other = RawMessage(
        first[0].data,
        dict(first[0].attributes, **{"ce-source": "//other-shop.example.com"}),
        "98",
        datetime.now(UTC),
        first[0].subscription,
    )
    same = RawMessage(
        first[0].data, dict(first[0].attributes), "99", datetime.now(UTC), first[0].subscription
    )
    r = BatchRunner(
        IngestConfig(str(tmp_path / "lake"), "run-t", str(catalog.path), "t", "t"),
        single_writer=single_writer,
    )
    r.run("b1", first)
    run = r.run("b2", [other, same])
    raw = pl.read_delta(raw_uri(str(tmp_path / "lake"), "shop.order.placed"))
    assert raw.height == 4
    shared = raw.filter(pl.col("event_id") == first[0].attributes["ce-id"])
    assert sorted(shared.get_column("event_source")) == sorted(
        [first[0].attributes["ce-source"], "//other-shop.example.com"]
    )
    assert [(c.received, c.inserted) for c in run.commits if c.kind == "raw"] == [(2, 1)]
