"""One micro-batch through the Beam composites on the in-process runner (no emulator): a message
that crashes processing is isolated and the rest commits; a failure no message explains stops
the batch with nothing isolated."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from apache_beam.runners.worker import bundle_processor

from tidegate import faults
from tidegate.catalog import Catalog
from tidegate.expectations.envelope import RawMessage
from tidegate.lake.metrics import beam_metric_rows
from tidegate.lake.rows import payload_digest
from tidegate.lake.tables import QUARANTINE, raw_uri
from tidegate.pipelines.local.batch import MAX_POISON, BatchRunner
from tidegate.producer import ProduceConfig, generate
from tidegate.transforms.base import IngestConfig
from tidegate.transforms.ledger import ChunkReceived, ledger_row


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


def _events_in(run) -> float:  # type: ignore[no-untyped-def]
    return sum(r["value"] for q in run.metrics for r in beam_metric_rows(q) if r["name"] == "events_in")


def processors_built(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that gains an item each time Beam builds a bundle processor."""
    built: list[int] = []
    original = bundle_processor.BundleProcessor.__init__

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(bundle_processor.BundleProcessor, "__init__", counting)
    return built


def test_a_runner_builds_its_stages_once_and_each_run_counts_only_its_own_batch(
    catalog, registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The kept SDK worker (WarmRunner): bundle processors are built on the first two runs (the
    plain first run, then the kept worker's) and reused after, while every run commits its own
    rows and reports its own counters, not the sum of the runs before it. With another Beam that
    constructs its worker manager differently, `kept` turns False and this test says so."""
    built = processors_built(monkeypatch)
    messages = orders(catalog, registry, 60)
    r = runner(catalog, tmp_path / "lake")
    per_run: list[int] = []
    for i, size in enumerate((5, 10, 15, 30)):
        before = len(built)
        start = sum((5, 10, 15, 30)[:i])
        run = r.run(f"b{i}", messages[start : start + size])
        per_run.append(len(built) - before)
        assert _events_in(run) == size
        assert sum(c.inserted for c in run.commits if c.kind == "raw") == size
    assert per_run[0] > 0
    assert per_run[1] > 0
    assert per_run[2:] == [0, 0]  # reused: no DoFn unpickled, set up or checked again
    assert r._runner.kept
    assert pl.read_delta(raw_uri(str(tmp_path / "lake"), "shop.order.placed")).height == 60
    r.close()
    assert not r._runner.kept


def test_a_warm_up_builds_the_stages_before_the_first_batch_and_writes_nothing(
    catalog, registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The driver warms its runner while the pullers fill the first batch: the graph and the
    kept worker's processors are built by runs of no messages, which commit nothing (no table,
    no fault point), and the first real batch builds nothing."""
    built = processors_built(monkeypatch)
    monkeypatch.setenv("TIDEGATE_FAULT_TRANSIENT", "1")  # counts raw commits: none in a warm-up
    monkeypatch.setattr(faults, "_transient_raised", 0)
    lake = tmp_path / "lake"
    r = runner(catalog, lake)
    assert r.warm_up() > 0
    assert built
    assert r._runner.kept
    assert not lake.exists() or not any(lake.rglob("_delta_log"))
    monkeypatch.delenv("TIDEGATE_FAULT_TRANSIENT")
    before = len(built)
    messages = orders(catalog, registry, 20)
    run = r.run("b0", messages[:10])
    assert len(built) == before  # nothing unpickled, set up or checked on the first batch
    assert sum(c.inserted for c in run.commits if c.kind == "raw") == 10
    r.close()
    monkeypatch.setenv("TIDEGATE_FAULT_TRANSIENT", "1")
    run = r.run("b1", messages[10:])  # the warm-up left the injected failure for a real commit
    assert run.runs == 2
    assert pl.read_delta(raw_uri(str(lake), "shop.order.placed")).height == 20


def test_a_crashed_run_ends_the_kept_worker_and_the_next_batch_runs_on_a_fresh_one(
    catalog, registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    messages = orders(catalog, registry, 50)
    r = runner(catalog, tmp_path / "lake")
    r.run("b0", messages[:10])
    r.run("b1", messages[10:20])  # the kept worker's first run
    assert r._runner.workers_started == 1
    monkeypatch.setenv("TIDEGATE_FAULT_CRASH_ON", messages[25].attributes["ce-id"])
    r.close()  # the fault is read when a DoFn is set up: once per worker
    run = r.run("b2", messages[20:40])
    assert run.poison == [5]  # messages[25]
    assert r._runner.workers_started > 2  # the crashed runs' workers were ended, not reused
    run = r.run("b3", messages[40:])
    assert _events_in(run) == 10
    assert sum(c.inserted for c in run.commits if c.kind == "raw") == 10
    assert pl.read_delta(raw_uri(str(tmp_path / "lake"), "shop.order.placed")).height == 49


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


@pytest.mark.parametrize("single_writer", [True, False], ids=["key index", "merge"])
def test_an_id_lands_once_even_when_it_is_resent_with_another_date(
    catalog, registry, tmp_path: Path, single_writer: bool
) -> None:  # type: ignore[no-untyped-def]
    """Dedup is by identity within the horizon (by ingest time), not by the batch's event
    dates: a producer re-sending an event with a ce-time on another day lands it once, through
    the key index (local mode) and the horizon MERGE (streaming, gs://) alike."""
    messages = orders(catalog, registry, 5)
    resent = messages[2]
    moved = dict(resent.attributes, **{"ce-time": "2021-05-05T10:00:00Z"})  # another day and year
    again = RawMessage(resent.data, moved, "99", datetime.now(UTC), resent.subscription)
    r = BatchRunner(
        IngestConfig(str(tmp_path / "lake"), "run-t", str(catalog.path), "t", "t"),
        single_writer=single_writer,
    )
    r.run("b1", messages)
    run = r.run("b2", [again])
    raw = pl.read_delta(raw_uri(str(tmp_path / "lake"), "shop.order.placed"))
    assert raw.height == 5
    assert raw.get_column("event_id").n_unique() == 5
    assert [(c.received, c.inserted) for c in run.commits if c.kind == "raw"] == [(1, 0)]


@pytest.mark.parametrize("single_writer", [True, False], ids=["key index", "merge"])
def test_an_event_is_identified_by_source_and_id_so_two_producers_may_share_an_id(
    catalog, registry, tmp_path: Path, single_writer: bool, cli
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
    # lineage of a shared id asks whose, and answers for the source given
    shared_id = first[0].attributes["ce-id"]
    lake = str(tmp_path / "lake")
    ambiguous = cli("lineage", "raw/shop.order.placed", "--lake", lake, "--row", shared_id)
    assert ambiguous.code != 0
    assert "--source" in ambiguous.err
    assert "//other-shop.example.com" in ambiguous.err
    chosen = cli(
        "lineage",
        "raw/shop.order.placed",
        "--lake",
        lake,
        "--row",
        shared_id,
        "--source",
        "//other-shop.example.com",
        "--json",
    )
    assert chosen.code == 0, chosen.err
    assert json.loads(chosen.out)["row"]["pubsub_message_id"] == "98"


def _copy(message: RawMessage, mid: str, **payload: object) -> RawMessage:
    """Another Pub/Sub message with the same ce-source and ce-id, its data changed by `payload`."""
    data = json.loads(message.data)
    data.update(payload)
    return RawMessage(
        json.dumps(data).encode(), dict(message.attributes), mid, datetime.now(UTC), message.subscription
    )


@pytest.mark.parametrize("single_writer", [True, False], ids=["key index", "merge"])
def test_the_same_identity_with_another_payload_is_an_id_conflict_recorded_once(
    catalog, registry, tmp_path: Path, single_writer: bool
) -> None:  # type: ignore[no-untyped-def]
    """A producer reusing (source, id) for another event: the first copy stays in raw, the
    later one is quarantined as id_conflict with both payload digests, counted by the ledger
    and checked by verify. The same payload, even reformatted, is a plain duplicate; the
    conflicting message redelivered is recorded once."""
    lake = tmp_path / "lake"
    first = orders(catalog, registry, 4)
    target = first[1]
    r = BatchRunner(
        IngestConfig(str(lake), "run-t", str(catalog.path), "t", "t"), single_writer=single_writer
    )
    r.run("b1", first)
    changed = _copy(target, "90", amount=12345.5)
    reformatted = RawMessage(  # same data, other whitespace and key order: not a conflict
        json.dumps(dict(reversed(list(json.loads(target.data).items()))), indent=2).encode(),
        dict(target.attributes),
        "91",
        datetime.now(UTC),
        target.subscription,
    )
    run = r.run("b2", [changed, reformatted])
    raw = pl.read_delta(raw_uri(str(lake), "shop.order.placed"))
    assert raw.height == 4
    kept = raw.filter(pl.col("event_id") == target.attributes["ce-id"])
    assert kept.get_column("pubsub_message_id").to_list() == [target.message_id]
    row = ledger_row("b2", "run-t", [_received(run), *run.commits])
    assert (row["raw_written"], row["duplicates_skipped"], row["quarantined"], row["id_conflicts"]) == (
        0,
        1,
        1,
        1,
    )
    q = pl.read_delta(QUARANTINE.uri(str(lake)))
    assert q.select("pubsub_message_id", "stage", "rule", "event_id").rows() == [
        ("90", "identity", "id_conflict", target.attributes["ce-id"])
    ]
    landed = kept.get_column("payload_digest")[0]
    reason = q.get_column("reason")[0]
    assert landed in reason
    assert payload_digest(json.loads(changed.data)) in reason
    assert landed == payload_digest(json.loads(target.data))

    again = r.run("b3", [changed])  # Pub/Sub redelivers the conflicting copy: recorded once
    row = ledger_row("b3", "run-t", [_received(again), *again.commits])
    assert (row["quarantined"], row["quarantine_duplicates"], row["id_conflicts"]) == (0, 1, 0)
    assert pl.read_delta(QUARANTINE.uri(str(lake))).height == 1


def test_two_copies_with_different_payloads_in_one_batch_keep_the_first(
    catalog, registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    lake = tmp_path / "lake"
    first = orders(catalog, registry, 2)
    r = BatchRunner(IngestConfig(str(lake), "run-t", str(catalog.path), "t", "t"), single_writer=True)
    run = r.run("b1", [*first, _copy(first[0], "77", amount=1.25)])
    row = ledger_row("b1", "run-t", [_received(run, 3), *run.commits])
    assert (row["raw_written"], row["quarantined"], row["id_conflicts"]) == (2, 1, 1)
    raw = pl.read_delta(raw_uri(str(lake), "shop.order.placed"))
    assert sorted(raw.get_column("pubsub_message_id")) == sorted(m.message_id for m in first)


def _received(run, count: int | None = None) -> ChunkReceived:  # type: ignore[no-untyped-def]
    n = (
        count
        if count is not None
        else sum(c.received for c in run.commits if c.kind in ("raw", "quarantine"))
    )
    return ChunkReceived("b", n, ("shop-orders-tidegate",), datetime.now(UTC), "")


def test_commit_lineage_outlives_the_commit_log_window(catalog, registry, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """The log keeps minutes of commits (LOG_RETENTION); `tidegate lineage` and `--row` still
    name the run, batch, code and contract of a commit whose log files were cleaned away: the
    compactor archives them in `_commits` first."""
    import time

    from deltalake import DeltaTable

    from tidegate.lake.lineage import CommitArchive
    from tidegate.lake.maintenance import clean_log, set_log_retention

    lake = str(tmp_path / "lake")
    r = runner(catalog, tmp_path / "lake")
    config = ProduceConfig(types=("shop.order.placed",), count=6, seed=7, structured_rate=0.0)
    made = [
        RawMessage(m.data, m.attributes, str(i), datetime.now(UTC), "shop-orders-tidegate")
        for i, m in enumerate(generate(config, catalog, registry))
    ]
    batches = [made[0:2], made[2:4], made[4:6]]
    for i, msgs in enumerate(batches):
        r.run(f"b{i}", msgs)
    uri = raw_uri(lake, "shop.order.placed")
    first_commits = json.loads(cli("lineage", "raw/shop.order.placed", "--lake", lake, "--json").out)[
        "commits"
    ]
    set_log_retention(uri, "1s")
    time.sleep(1.5)
    archive = CommitArchive(lake)
    clean_log(uri, None, archive)
    log = {p.name for p in (tmp_path / "lake" / "raw" / "shop.order.placed" / "_delta_log").iterdir()}
    assert "00000000000000000000.json" not in log  # the first commits' log files are gone
    assert len(DeltaTable(uri).history()) < len(first_commits)

    listed = json.loads(cli("lineage", "raw/shop.order.placed", "--lake", lake, "--json").out)["commits"]
    by_version = {c["version"]: c for c in listed}
    for before in first_commits:  # every commit still listed, with its lineage
        after = by_version[before["version"]]
        for key in ("tidegate_run_id", "tidegate_batch_id", "tidegate_git_sha", "tidegate_contracts"):
            assert after.get(key) == before.get(key), key
    assert any(c.get("archived") for c in listed)
    event = batches[0][0].attributes["ce-id"]
    row = json.loads(cli("lineage", "raw/shop.order.placed", "--lake", lake, "--row", event, "--json").out)
    assert row["commit"]["tidegate_batch_id"].endswith("b0")
    assert row["contract_fingerprint"]
    # archiving again adds nothing; a new archiver (a restart) finds where the last one stopped
    assert archive.archive(uri) == 0
    assert CommitArchive(lake).archive(uri) == 0
    archived = pl.read_delta(str(tmp_path / "lake" / "_commits"))
    assert archived.height == archived.unique(["table", "version"]).height


def test_a_log_file_cleaned_under_a_read_is_a_transient_error_not_a_poison_message() -> None:
    """The compactor's log cleanup may delete a log file a batch's read has just listed (seen
    with `tidegate bench commits`): the batch is retried whole, never split as poison."""
    from tidegate.errors import TransientError
    from tidegate.pipelines.local.batch import unwrap

    gone = FileNotFoundError("Object at location /lake/raw/t/_delta_log/00000000000000004714.json not found")
    wrapped = RuntimeError("a Beam stage failed")
    wrapped.__cause__ = gone
    assert isinstance(unwrap(wrapped), TransientError)
    other = FileNotFoundError("/lake/raw/t/part-0001.parquet not found")
    assert unwrap(other) is other
