"""Current-state views (tidegate.lake.views) on real Delta tables: the fold's order and
tie-break, SCD type 1 and 2, incremental maintenance after raw commits, a crash between the raw
and the view commit, replay, verify's parity, and time travel."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from tidegate.catalog import ViewSpec, load_catalog
from tidegate.expectations.envelope import RawMessage
from tidegate.lake.read import Lake
from tidegate.lake.verify import verify
from tidegate.lake.views import ViewMaintainer, fold, view_parity
from tidegate.pipelines.local.batch import BatchRunner
from tidegate.producer import ProduceConfig, generate
from tidegate.transforms.base import IngestConfig

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _view(history: bool = False) -> ViewSpec:
    return load_catalog().views[0].model_copy(update={"history": history})


def _raw(rows: list[dict]) -> pl.DataFrame:  # type: ignore[type-arg]
    return pl.DataFrame(rows, schema_overrides={"event_time": pl.Datetime("us", "UTC")})


def test_the_fold_orders_by_event_time_with_a_documented_tie_break() -> None:
    placed = _raw(
        [
            {
                "order_id": "o1",
                "event_time": T0,
                "event_source": "s",
                "event_id": "p1",
                "customer_id": "c1",
                "amount": "10.00",
                "currency": "EUR",
            },
            {
                "order_id": "o2",
                "event_time": T0,
                "event_source": "s",
                "event_id": "p2",
                "customer_id": "c2",
                "amount": "5.00",
                "currency": "CHF",
            },
            {
                "order_id": "o3",
                "event_time": T0 + timedelta(minutes=5),
                "event_source": "s",
                "event_id": "p3",
                "customer_id": "c3",
                "amount": "7.00",
                "currency": "EUR",
            },
        ]
    )
    paid = _raw(
        [
            # o1 paid later: paid
            {
                "order_id": "o1",
                "event_time": T0 + timedelta(minutes=1),
                "event_source": "s",
                "event_id": "y1",
                "amount": "10.00",
                "method": "card",
            },
            # o2 paid at the same instant as placed: the tie goes to the order events are listed in
            {
                "order_id": "o2",
                "event_time": T0,
                "event_source": "s",
                "event_id": "y2",
                "amount": "5.00",
                "method": "twint",
            },
            # o3's payment arrived out of order, with an earlier event time than the placement
            {
                "order_id": "o3",
                "event_time": T0 + timedelta(minutes=1),
                "event_source": "s",
                "event_id": "y3",
                "amount": "7.00",
                "method": "card",
            },
        ]
    )
    rows = {
        r["order_id"]: r
        for r in fold({"shop.order.placed": placed, "shop.payment.captured": paid}, _view()).to_dicts()
    }
    assert rows["o1"]["status"] == "paid"
    assert (rows["o1"]["order_amount"], rows["o1"]["paid_amount"], rows["o1"]["events"]) == (
        "10.00",
        "10.00",
        2,
    )
    assert rows["o2"]["status"] == "paid"  # placed is listed first: at the same time, paid wins
    assert rows["o3"]["status"] == "placed"  # by event time, the placement is the latest event
    assert rows["o3"]["payment_method"] == "card"  # and a later event never erases a value
    history = fold({"shop.order.placed": placed, "shop.payment.captured": paid}, _view(history=True))
    o1 = history.filter(pl.col("order_id") == "o1").sort("valid_from").to_dicts()
    assert [(r["status"], r["valid_to"], r["is_current"]) for r in o1] == [
        ("placed", T0 + timedelta(minutes=1), False),
        ("paid", None, True),
    ]


def _messages(catalog, registry) -> tuple[list[RawMessage], list[RawMessage]]:  # type: ignore[no-untyped-def]
    def made(event_type: str, n: int, seed: int) -> list[RawMessage]:
        config = ProduceConfig(types=(event_type,), count=n, seed=seed, structured_rate=0.0, v2_rate=0.0)
        sub = catalog.stream(event_type).subscription
        return [
            RawMessage(m.data, m.attributes, f"{seed}-{i}", datetime.now(UTC), sub)
            for i, m in enumerate(generate(config, catalog, registry))
        ]

    orders = made("shop.order.placed", 6, 61)
    payments = made("shop.payment.captured", 3, 62)
    for pay, order in zip(payments, orders, strict=False):  # the first three orders get paid
        data = json.loads(pay.data)
        data["order_id"] = json.loads(order.data)["order_id"]
        pay.attributes["ce-time"] = order.attributes["ce-time"].replace("Z", "") + "Z"
        object.__setattr__(pay, "data", json.dumps(data).encode())
    return orders, payments


def test_views_follow_raw_commits_key_by_key_and_survive_a_crash_between_the_commits(
    catalog, registry, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    lake = tmp_path / "lake"
    orders, payments = _messages(catalog, registry)
    runner = BatchRunner(IngestConfig(str(lake), "r", str(catalog.path), "t", "t"), single_writer=True)
    views = ViewMaintainer(catalog, str(lake), run_id="r")
    runner.run("b1", orders)
    (first,) = views.update()
    assert (first.view, first.rows) == ("order_state", 6)
    state = Lake(str(lake), catalog=catalog).view("order_state").collect()
    assert set(state.get_column("status")) == {"placed"}
    version_after_orders = Lake(str(lake), catalog=catalog).delta("views/order_state").version()

    # the payments commit to raw; the process dies before the view commit (nothing calls update)
    runner.run("b2", payments)
    assert not view_parity(catalog, str(lake), "order_state")  # consistent with what it records
    report = verify(str(lake), catalog.event_types, catalog=catalog)
    assert report.ok, report.failures
    (caught_up,) = views.update()  # the next round: only the three paid orders are folded again
    assert caught_up.keys == 3
    state = Lake(str(lake), catalog=catalog).view("order_state").collect()
    assert sorted(state.get_column("status").to_list()) == ["paid"] * 3 + ["placed"] * 3
    assert not view_parity(catalog, str(lake), "order_state")
    assert views.update() == []  # nothing new: no commit

    # time travel: the state as it was before the payments
    before = Lake(str(lake), catalog=catalog).view("order_state", version=version_after_orders).collect()
    assert set(before.get_column("status")) == {"placed"}

    # a replay folds the same rows from scratch
    r = cli("replay", "order_state", "--lake", lake)
    assert r.code == 0, r.text
    again = Lake(str(lake), catalog=catalog).view("order_state").collect()
    assert again.sort("order_id").drop("events").equals(state.sort("order_id").drop("events")) or again.sort(
        "order_id"
    ).select("order_id", "status").equals(state.sort("order_id").select("order_id", "status"))
    verified = cli("verify", "--lake", lake, "--json")
    checks = {c["name"]: c for c in json.loads(verified.out)["checks"]}
    assert checks["views/order_state: equals a fold of raw history"]["passed"] is True
    assert cli("replay", "order_state", "--lake", lake, "--since", "2026-01-01T00:00:00Z").code == 2


@pytest.mark.parametrize("name", ["order_state"])
def test_a_view_typo_in_the_catalog_is_refused_before_anything_runs(tmp_path: Path, cli, name: str) -> None:  # type: ignore[no-untyped-def]
    from tests.test_exit_codes import typo_catalog

    bad = typo_catalog(tmp_path, "paid_amount: amount", "paid_amount: amout")
    r = cli("contracts", "check", "--catalog", bad)
    assert r.code == 2
    assert "'amout'" in r.text


def test_under_ingest_the_views_follow_the_aggregates_on_their_own_cadence_and_catch_up_when_idle(
    catalog, registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """`--follow`'s background projector: an aggregate round no longer waits for the view (whose
    commit rewrites its files); the view follows within VIEW_SECONDS under load, at once when the
    aggregates are idle, and is up to date when the run stops."""
    import time

    from tidegate.lake.projection import Projector
    from tidegate.pipelines.local import projection as background
    from tidegate.pipelines.local.accounting import BatchOutcome

    lake = tmp_path / "lake"
    orders, payments = _messages(catalog, registry)
    runner = BatchRunner(IngestConfig(str(lake), "r", str(catalog.path), "t", "t"), single_writer=True)
    projector = Projector(catalog, registry, str(lake), run_id="r", code_version="0", git_sha="x")

    def statuses() -> list[str]:
        view = Lake(str(lake), catalog=catalog).view("order_state")
        return sorted(view.collect().get_column("status").to_list())

    def outcome(batch_id: str) -> BatchOutcome:
        return BatchOutcome(batch_id, 0, 0, 0, 0, 0, {}, 0, None, 0.0)

    # an aggregate round alone leaves the view where it was
    runner.run("b1", orders)
    assert projector.project_all(views=False)
    assert not (lake / "views" / "order_state" / "_delta_log").exists()
    (update,) = projector.update_views()
    assert update.rows == 6

    background_projector = background.BackgroundProjector(projector)
    try:
        runner.run("b2", payments)
        first = outcome("b2")
        background_projector.submit(first, [time.time()], set(catalog.event_types))
        deadline = time.monotonic() + 30
        while statuses().count("paid") < 3 and time.monotonic() < deadline:  # idle: it catches up
            time.sleep(0.1)
        assert statuses() == ["paid"] * 3 + ["placed"] * 3
    finally:
        background_projector.close()
    assert not view_parity(catalog, str(lake), "order_state")


def _orders_in_view(catalog, registry, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A lake whose raw orders are folded into `order_state`; the payments not yet ingested."""
    lake = tmp_path / "lake"
    orders, payments = _messages(catalog, registry)
    runner = BatchRunner(IngestConfig(str(lake), "r", str(catalog.path), "t", "t"), single_writer=True)
    maintainer = ViewMaintainer(catalog, str(lake), run_id="r")
    runner.run("b1", orders)
    maintainer.update()
    return lake, runner, maintainer, payments


def test_a_view_commit_of_many_keys_merges_them_instead_of_overflowing_the_stack(
    catalog, registry, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """delta-rs needs stack in proportion to an overwrite predicate's `key IN (...)` list: 50,000
    keys killed the process (SIGSEGV) on an 8 MiB thread stack, 20,000 on a 1 MiB one. A view
    commit replaces its keys' rows with a MERGE instead, which rewrites only the files holding
    them, and keeps the view's files bounded."""
    import threading

    import pyarrow as pa

    from tidegate.lake import views

    lake, runner, maintainer, payments = _orders_in_view(catalog, registry, tmp_path)
    runner.run("b2", payments)
    (update,) = maintainer.update()
    assert update.keys == 3
    state = Lake(str(lake), catalog=catalog).view("order_state").collect()
    assert sorted(state.get_column("status").to_list()) == ["paid"] * 3 + ["placed"] * 3
    assert not view_parity(catalog, str(lake), "order_state")

    # 30,000 keys replaced in one commit, on a thread whose stack the predicate would overflow
    view = _view()
    table = Lake(str(lake), catalog=catalog).delta("views/order_state")
    markers = {
        t: v
        for t in {e.type for e in view.events}
        if (v := table.transaction_version(views.app_id(view, t))) is not None
    }
    one = table.to_pyarrow_table().slice(0, 1)
    keys = [f"ord_many_{i:06d}" for i in range(30_000)]
    many = pa.concat_tables([one] * len(keys)).set_column(
        one.schema.get_field_index(view.key), view.key, pa.array(keys, type=pa.string())
    )
    frame = pl.from_arrow(many)
    assert isinstance(frame, pl.DataFrame)
    failed: list[BaseException] = []

    def commit() -> None:
        try:
            views._commit(catalog, str(lake), view, frame, markers, None, keys=keys, run_id="r")
        except BaseException as exc:  # reported by the assertion below
            failed.append(exc)

    threading.stack_size(1 << 20)
    try:
        worker = threading.Thread(target=commit)
        worker.start()
    finally:
        threading.stack_size(0)
    worker.join()
    assert not failed, failed
    after = Lake(str(lake), catalog=catalog).view("order_state").collect()
    assert after.height == 6 + len(keys)
    assert after.filter(pl.col(view.key).str.starts_with("ord_many_")).height == len(keys)
    assert sorted(
        after.filter(~pl.col(view.key).str.starts_with("ord_many_")).get_column("status")
    ) == sorted(state.get_column("status"))
    table = Lake(str(lake), catalog=catalog).delta("views/order_state")
    assert table.metadata().configuration["delta.targetFileSize"] == str(views.VIEW_FILE_BYTES)

    # the same 30,000 keys again, one of them paid: their rows are replaced, not added
    again = frame.with_columns(
        pl.when(pl.col(view.key) == keys[0]).then(pl.lit("paid")).otherwise(pl.col("status")).alias("status")
    )
    views._commit(catalog, str(lake), view, again, markers, None, keys=keys, run_id="r")
    final = Lake(str(lake), catalog=catalog).view("order_state").collect()
    assert final.height == after.height
    assert final.filter(pl.col(view.key) == keys[0]).get_column("status").to_list() == ["paid"]


def test_a_follow_runs_compactor_deletes_the_files_a_view_update_removed_but_no_raw_file(
    catalog, registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Every view update rewrites files; `maintain` (168 h, ingest stopped) would keep them for a
    week. The ingest's own compactor deletes a derived table's removed files after
    DERIVED_RETAIN_HOURS (here 0), never a live file, and never a raw table's."""
    import time

    from deltalake import DeltaTable

    from tidegate.lake.tables import raw_uri
    from tidegate.lake.views import view_uri
    from tidegate.pipelines.local.compaction import Compactor

    lake, runner, maintainer, payments = _orders_in_view(catalog, registry, tmp_path)
    view = view_uri(str(lake), "order_state")
    before = {Path(f).name for f in DeltaTable(view).file_uris()}
    runner.run("b2", payments)
    maintainer.update()  # the paid orders' file is rewritten: the old one is removed
    live = {Path(f).name for f in DeltaTable(view).file_uris()}
    removed = before - live
    assert removed
    raw = Path(raw_uri(str(lake), "shop.order.placed"))
    raw_files = {p.name for p in raw.rglob("*.parquet") if "_delta_log" not in p.parts}
    state = Lake(str(lake), catalog=catalog).view("order_state").collect().sort("order_id")

    compactor = Compactor(
        [view, str(raw)],
        every=0.05,
        min_files=1000,
        storage=None,
        root=str(lake),
        clean_every=0.0,
        derived=frozenset({view}),
        derived_retain_hours=0,
    )
    try:
        deadline = time.monotonic() + 30
        while not compactor.vacuumed and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        compactor.close()
    on_disk = {p.name for p in Path(view).glob("*.parquet")}
    assert not removed & on_disk  # the removed files are gone
    assert live <= on_disk  # the live ones are all there
    assert {p.name for p in raw.rglob("*.parquet") if "_delta_log" not in p.parts} == raw_files
    assert Lake(str(lake), catalog=catalog).view("order_state").collect().sort("order_id").equals(state)
    assert not view_parity(catalog, str(lake), "order_state")


def test_a_view_update_reads_only_the_raw_files_that_hold_its_keys(catalog, registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An update folds its touched keys again from raw. It used to scan the key column of all
    of its sources' raw history to find their rows, so each update cost more than the last (a
    soak's view updates grew with the history, not with the traffic). Now it reads only the
    raw files that hold a touched key, and the view is still exactly a fold of raw."""
    from tidegate.lake import views

    lake, runner, maintainer, payments = _orders_in_view(catalog, registry, tmp_path)
    # two more batches of orders: raw files that hold none of the keys the payments touch
    for seed in (71, 72):
        config = ProduceConfig(
            types=("shop.order.placed",), count=5, seed=seed, structured_rate=0.0, v2_rate=0.0
        )
        sub = catalog.stream("shop.order.placed").subscription
        more = [
            RawMessage(m.data, m.attributes, f"{seed}-{i}", datetime.now(UTC), sub)
            for i, m in enumerate(generate(config, catalog, registry))
        ]
        runner.run(f"o{seed}", more)
    maintainer.update()
    orders = Lake(str(lake), catalog=catalog).delta("raw/shop.order.placed")
    assert len(orders.file_uris()) == 3

    read: list[list[str] | None] = []
    scan = views.scan_table

    def spy(table, storage=None, files=None, file_column=None):  # type: ignore[no-untyped-def]
        if file_column is None:  # the key-index build names its files; the fold's read does not
            read.append(files)
        return scan(table, storage, files=files, file_column=file_column)

    views.scan_table = spy  # type: ignore[assignment]
    try:
        runner.run("b2", payments)  # pays three orders of the first batch
        (update,) = maintainer.update()
    finally:
        views.scan_table = scan  # type: ignore[assignment]
    assert update.keys == 3
    # one file of orders (not the two other order files), one of payments
    assert [None if f is None else len(f) for f in read] == [1, 1]
    state = Lake(str(lake), catalog=catalog).view("order_state").collect()
    assert sorted(state.get_column("status").to_list()) == ["paid"] * 3 + ["placed"] * 13
    assert not view_parity(catalog, str(lake), "order_state")
