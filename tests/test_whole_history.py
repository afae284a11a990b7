"""Whole-history operations in bounded memory (tidegate.lake.history): verify, parity and view
folds read raw history a group of files (a key range) at a time and must say exactly what a
read of the whole table says."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from tidegate.bench import _synthetic_raw
from tidegate.catalog import Catalog
from tidegate.expectations.contracts import ContractRegistry
from tidegate.lake import aggregates as agg
from tidegate.lake import views
from tidegate.lake.history import FileGroups, duplicates, readable_version
from tidegate.lake.tables import LakeTables, raw_uri
from tidegate.lake.verify import recompute, verify
from tidegate.pipelines.replay import replay

ORDERS, PAGES = "shop.order.placed", "shop.page.viewed"
KEYS = ["event_source", "event_id"]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog, registry: ContractRegistry) -> Path:
    """30k orders and 30k page views (1% late, 5% out of order) in 6 commits each."""
    lake = tmp_path_factory.mktemp("history") / "lake"
    _synthetic_raw(lake, catalog, registry, 30_000, lambda _m: None, commit_rows=5_000)
    return lake


def _whole(lake: Path, event_type: str, columns: list[str]) -> pl.DataFrame:
    out = pl.from_arrow(DeltaTable(raw_uri(str(lake), event_type)).to_pyarrow_table(columns=columns))
    assert isinstance(out, pl.DataFrame)
    return out


def _change_raw_then_vacuum(lake: Path, catalog: Catalog) -> None:
    """One more order lands, then `maintain --retain-hours 0`: the raw version a derived table
    recorded is gone, rows and files (nothing holds it any more)."""
    from tidegate.lake.maintenance import maintain

    extra = DeltaTable(raw_uri(str(lake), ORDERS)).to_pyarrow_dataset().head(1)
    extra = extra.set_column(0, extra.schema.field(0), pa.array(["late-comer"], pa.string()))
    write_deltalake(raw_uri(str(lake), ORDERS), extra, mode="append")
    maintain(LakeTables(str(lake), catalog), retain_hours=0)


def _asks_for_replay(problems: list[str], name: str) -> bool:
    return any("can no longer be read" in p and f"tidegate replay {name}" in p for p in problems)


def _copy(lake: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(lake, to)
    return to


def test_a_key_held_twice_in_different_files_and_dates_is_found_across_hash_buckets(
    history: Path, tmp_path: Path
) -> None:
    lake = _copy(history, tmp_path / "lake")
    uri = raw_uri(str(lake), ORDERS)
    table = DeltaTable(uri)
    twin = table.to_pyarrow_dataset().head(1)  # the first event again, on another day
    twin = twin.set_column(
        twin.schema.get_field_index("event_date"),
        twin.schema.field("event_date"),
        pa.array([pa.scalar(19_000, pa.date32()).as_py()], pa.date32()),
    )
    write_deltalake(uri, twin, mode="append")
    groups = FileGroups.of(DeltaTable(uri), group_rows=4_000)
    assert len(groups) > 3
    found = duplicates(groups, KEYS, bucket_rows=5_000)  # 7 buckets
    assert found.to_dicts() == [
        {"event_source": "bench", "event_id": twin.column("event_id")[0].as_py(), "len": 2}
    ]
    assert duplicates(FileGroups.of(DeltaTable(raw_uri(str(history), ORDERS)), 4_000), KEYS, 5_000).is_empty()
    report = verify(str(lake), [ORDERS, PAGES], group_rows=4_000)
    failed = [name for name, ok, _ in report.checks if not ok]
    assert failed == [f"raw/{ORDERS}: one row per event (source, id), whatever its date"]
    assert report.problems == [
        f"raw/{ORDERS}: event_source=bench, event_id={twin.column('event_id')[0].as_py()} is there 2 times"
    ]


@pytest.mark.parametrize(
    "aggregate", ["revenue_per_currency_1m", "page_views_per_url_5m", "sessions_per_user"]
)
def test_a_recompute_chunk_by_chunk_equals_one_compute_over_the_whole_history(
    history: Path, catalog: Catalog, aggregate: str
) -> None:
    spec = catalog.aggregate(aggregate)
    whole = agg.frame(_whole(history, spec.source, agg.source_columns(spec)).to_arrow())
    groups = FileGroups.of(DeltaTable(raw_uri(str(history), spec.source)), group_rows=7_000)
    windows, late = recompute(groups, spec, chunk_pairs=2_000)
    expected = agg.compute(whole, spec)
    assert windows.height > 10
    assert windows.equals(expected)  # same rows, same order, same values
    want = agg.late_pairs(whole, spec).select("event_id", "window_start")
    assert late.height > 50
    assert late.sort(["event_id", "window_start"]).equals(want.sort(["event_id", "window_start"]))


def test_a_view_folded_in_key_ranges_is_the_fold_of_the_whole_history(
    history: Path, tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = catalog.views[0]
    lake = _copy(history, tmp_path / "lake")
    whole = views.fold({ORDERS: _whole(lake, ORDERS, views.source_columns(view, ORDERS))}, view)
    monkeypatch.setattr(views, "BUCKET_ROWS", 4_000)  # 30k order rows: 8 key ranges
    monkeypatch.setattr(views, "SPILL_ROWS", 3_000)
    assert views.rebuild(catalog, str(lake), view.name, run_id="t") == 30_000
    table = DeltaTable(views.view_uri(str(lake), view.name))
    got = pl.from_arrow(table.to_pyarrow_table())
    assert isinstance(got, pl.DataFrame)
    # the same rows (a stream of ranges is written in parallel: a Delta table has no row order)
    assert got.select(whole.columns).cast(dict(whole.schema)).sort(view.key).equals(whole)  # type: ignore[arg-type]
    assert views.view_parity(catalog, str(lake), view.name) == []
    # one changed row is named, whatever range it is in
    key = whole.get_column(view.key)[12_345]
    table.update(predicate=f"{view.key} = '{key}'", updates={"currency": "'XXX'"})
    problems = views.view_parity(catalog, str(lake), view.name)
    assert len(problems) == 2, problems
    assert all(f"{view.key}={key}" in p for p in problems), problems


def test_verify_after_maintain_with_no_retention_reads_the_rows_the_aggregate_incorporates(
    history: Path, tmp_path: Path, catalog: Catalog
) -> None:
    lake = _copy(history, tmp_path / "lake")
    spec = catalog.aggregate("revenue_per_currency_1m")
    replay(catalog, str(lake), spec.name, run_id="t", code_version="", git_sha="")
    version = DeltaTable(raw_uri(str(lake), ORDERS)).version()
    from tidegate.lake.maintenance import maintain

    maintain(LakeTables(str(lake), catalog), retain_hours=0)  # compacts raw, vacuums what v read
    assert readable_version(raw_uri(str(lake), ORDERS), version) > version
    report = verify(str(lake), [ORDERS], aggregates=[spec])
    assert report.ok, report.problems
    from tidegate.pipelines.verify import run_local

    only = catalog.model_copy(update={"aggregates": [spec], "views": []})
    assert run_local(only, str(lake)) == []  # the Beam graph reads the same rows
    # raw changes after that: the version the aggregate incorporates is gone, and verify says so
    write_deltalake(
        raw_uri(str(lake), ORDERS),
        DeltaTable(raw_uri(str(lake), ORDERS)).to_pyarrow_dataset().head(0),
        mode="append",
    )
    _change_raw_then_vacuum(lake, catalog)
    report = verify(str(lake), [ORDERS], aggregates=[spec])
    assert not report.ok
    assert _asks_for_replay(report.problems, spec.name), report.problems
    problems = run_local(only, str(lake))
    assert _asks_for_replay(problems, spec.name), problems


def test_the_beam_verify_graph_finds_what_verify_finds(
    history: Path, tmp_path: Path, catalog: Catalog
) -> None:
    from tidegate.pipelines.verify import run_local

    lake = _copy(history, tmp_path / "lake")
    spec = catalog.aggregate("page_views_per_url_5m")
    replay(catalog, str(lake), spec.name, run_id="t", code_version="", git_sha="")
    # like `tidegate verify`, the graph names every aggregate and view of its catalog that is
    # missing from the lake: this lake has built one aggregate, so the catalog is cut to it
    catalog = catalog.model_copy(update={"aggregates": [spec], "views": []})
    assert run_local(catalog, str(lake)) == []
    uri = raw_uri(str(lake), PAGES)
    twin = DeltaTable(uri).to_pyarrow_dataset().head(1)  # an event landed twice, and its windows
    write_deltalake(uri, twin, mode="append")  # are no longer what the table says
    problems = run_local(catalog, str(lake))
    eid = twin.column("event_id")[0].as_py()
    assert f"raw/{PAGES}: event_source=bench, event_id={eid} is there 2 times" in problems
    # the aggregate incorporates the version before the twin: its parity still holds
    assert len(problems) == 1, problems
    table = DeltaTable(f"{lake}/aggregates/{spec.name}")
    table.update(predicate="url = 'https://shop.example.com/p/7'", updates={"views": "views + 1"})
    problems = run_local(catalog, str(lake))
    assert any(p.startswith(f"{spec.name}: window ") and "/p/7" in p for p in problems), problems


def test_a_view_whose_raw_version_was_vacuumed_is_verified_or_reported_never_a_crash(
    history: Path, tmp_path: Path, catalog: Catalog
) -> None:
    """`maintain --retain-hours 0` compacts raw and deletes the files of the raw version a view
    records: both verifies read the same rows at a newer version; once raw has changed since,
    both say the view must be replayed (the Beam graph used to fail on a missing file)."""
    from tidegate.lake.maintenance import maintain
    from tidegate.pipelines.verify import run_local

    view = catalog.views[0]
    lake = _copy(history, tmp_path / "lake")
    views.rebuild(catalog, str(lake), view.name, run_id="t")
    only_view = catalog.model_copy(update={"aggregates": [], "views": [view]})
    sources = [e.type for e in view.events]
    maintain(LakeTables(str(lake), catalog), retain_hours=0)
    assert verify(str(lake), sources, catalog=only_view).ok
    assert run_local(only_view, str(lake)) == []
    _change_raw_then_vacuum(lake, catalog)
    report = verify(str(lake), sources, catalog=only_view)
    assert not report.ok
    assert _asks_for_replay(report.problems, view.name), report.problems
    problems = run_local(only_view, str(lake))
    assert _asks_for_replay(problems, view.name), problems
