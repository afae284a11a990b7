"""`verify` as the batch job Dataflow runs (tidegate.pipelines.verify): run here on the in-process
runner, on a small real lake (raw history, every aggregate replayed, the view rebuilt). Its only
output is the report it writes into the lake: these tests read that object back, on a local lake
and on a gs:// lake in the GCS emulator, and hold its findings to what `tidegate verify` finds."""

from __future__ import annotations

import shutil
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from deltalake import DeltaTable, write_deltalake
from deltalake.fs import DeltaStorageHandler

from tidegate.bench import _synthetic_raw
from tidegate.catalog import Catalog
from tidegate.expectations.contracts import ContractRegistry
from tidegate.infra.gcs_emulator import GcsEmulator
from tidegate.lake import views
from tidegate.lake.tables import aggregate_uri, late_uri, raw_uri
from tidegate.lake.verify import verify
from tidegate.pipelines.replay import replay
from tidegate.pipelines.verify import FirstProblems, read_report, report_uri, run_report

ORDERS, PAGES = "shop.order.placed", "shop.page.viewed"
GROUP_ROWS = 700  # a file group per data file: several elements per table, spread and merged


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog, registry: ContractRegistry) -> Path:
    """3k orders and 3k page views (1% late, 5% out of order) in 3 commits each, every aggregate
    replayed (and its late pairs in the ledger), the view rebuilt: a lake that verifies."""
    lake = tmp_path_factory.mktemp("built") / "lake"
    _synthetic_raw(lake, catalog, registry, 3_000, lambda _m: None, commit_rows=1_000)
    for spec in catalog.aggregates:
        replay(catalog, str(lake), spec.name, run_id="t", code_version="", git_sha="")
    for view in catalog.views:
        views.rebuild(catalog, str(lake), view.name, run_id="t")
    return lake


def _verify(lake: str, catalog: Catalog, storage: dict[str, str] | None = None) -> list[str]:
    """What `tidegate verify` (one process) finds."""
    report = verify(
        lake, catalog.event_types, aggregates=catalog.aggregates, catalog=catalog, storage_options=storage
    )
    return sorted(report.problems)


def _damage(lake: str, catalog: Catalog, storage: dict[str, str] | None = None) -> dict[str, str]:
    """One fault per check: an event landed twice, a late pair lost from the ledger, a view row
    and an aggregate window changed. What each fault is about, by check."""
    uri = raw_uri(lake, ORDERS)
    twin = DeltaTable(uri, storage_options=storage).to_pyarrow_dataset().head(1)
    write_deltalake(uri, twin, mode="append", storage_options=storage)
    ledger = DeltaTable(late_uri(lake), storage_options=storage)
    lost = ledger.to_pyarrow_table(columns=["aggregate", "event_id"]).slice(0, 1).to_pylist()[0]
    ledger.delete(f"aggregate = '{lost['aggregate']}' AND event_id = '{lost['event_id']}'")
    view = catalog.views[0]
    table = DeltaTable(views.view_uri(lake, view.name), storage_options=storage)
    key = table.to_pyarrow_table(columns=[view.key]).column(view.key)[5].as_py()
    table.update(predicate=f"{view.key} = '{key}'", updates={"currency": "'XXX'"})
    pages = DeltaTable(aggregate_uri(lake, "page_views_per_url_5m"), storage_options=storage)
    pages.update(predicate="url = 'https://shop.example.com/p/7'", updates={"views": "views + 1"})
    return {
        "raw": f"raw/{ORDERS}: event_source=bench, event_id={twin.column('event_id')[0].as_py()} is there 2 times",
        "late": f"{lost['aggregate']}: late pair {{'event_id': '{lost['event_id']}'",
        "view": f"views/{view.name}: {view.key}={key} is in the table, not in a fold of raw",
        "aggregate": "page_views_per_url_5m: window window_start=",
    }


def test_the_job_writes_an_ok_report_to_the_lake_then_names_every_fault_verify_names(
    built: Path, tmp_path: Path, catalog: Catalog
) -> None:
    lake = str(shutil.copytree(built, tmp_path / "lake"))
    report = run_report(catalog, lake, run_id="verify-20261202T100000Z-aaaaaa", group_rows=GROUP_ROWS)
    path = Path(lake) / "_reports" / "verify" / "verify-20261202T100000Z-aaaaaa.json"
    assert path.is_file()
    assert report_uri(lake, report["run_id"]) == str(path)
    assert report["ok"] is True
    assert (report["problems"], report["problem_count"]) == ([], 0)
    assert report["lake"] == lake
    assert report["started_at"] <= report["finished_at"]
    assert report["code_version"]
    # every check `tidegate verify` makes of raw history and what derives from it, versions named
    assert report["checks"] == [
        f"raw/{ORDERS}: one row per event (source, id), whatever its date (version 2)",
        f"raw/{PAGES}: one row per event (source, id), whatever its date (version 2)",
        *(
            name
            for spec in catalog.aggregates
            for name in (
                f"aggregates/{spec.name}: equals a recompute from raw (raw version 2)",
                f"aggregates/_late: {spec.name} late pairs match raw history",
            )
        ),
        f"views/{catalog.views[0].name}: equals a fold of raw history ({ORDERS} version 2)",
    ]
    assert _verify(lake, catalog) == []

    faults = _damage(lake, catalog)
    damaged = run_report(catalog, lake, group_rows=GROUP_ROWS)
    assert damaged["ok"] is False
    assert damaged["problems"] == _verify(lake, catalog)  # the same lines, in the same order
    assert damaged["problem_count"] == len(damaged["problems"])
    for check, fault in faults.items():
        assert any(p.startswith(fault) for p in damaged["problems"]), (check, damaged["problems"])
    assert read_report(lake) == damaged  # the latest report
    assert read_report(lake, report["run_id"]) == report  # the earlier one is still there


def test_a_report_lists_the_first_problems_in_order_and_counts_them_all() -> None:
    problems = [f"problem {i:05d}" for i in reversed(range(2_500))]
    with test_pipeline.TestPipeline() as p:
        many = p | "Many" >> beam.Create(problems) | "KeepMany" >> beam.CombineGlobally(FirstProblems(1_000))
        assert_that(many, equal_to([(2_500, sorted(problems)[:1_000])]), label="FirstOfMany")
        none = p | "None" >> beam.Create([]) | "KeepNone" >> beam.CombineGlobally(FirstProblems(1_000))
        assert_that(none, equal_to([(0, [])]), label="NoneYetOne")  # a lake with no problem gets a report too


def _upload(local: Path, lake: str, storage: dict[str, str]) -> None:
    """The local lake's files, byte for byte, under `lake` (a Delta log names its files relative
    to the table, so each table is the same table there)."""
    handler = DeltaStorageHandler(lake, storage)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        out = handler._handler.open_output_stream(str(path.relative_to(local)), None)
        out.write(path.read_bytes())
        out.close()


@pytest.mark.gcs
def test_the_flex_template_entry_point_verifies_a_gs_lake_and_writes_its_report_there(
    built: Path, gcs_emulator: GcsEmulator, gs_prefix: str, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--mode verify` as the template launcher runs it (plan on gs://, the lake's storage
    options from the environment), the job run here by the in-process runner instead of Dataflow."""
    from tidegate.pipelines import flex_main

    storage, lake = gcs_emulator.storage_options, gs_prefix
    _upload(built, lake, storage)
    monkeypatch.setenv("TIDEGATE_STORAGE_OPTIONS", gcs_emulator.storage_options_json)
    args = [
        "--mode",
        "verify",
        "--lake",
        lake,
        "--runner=FnApiRunner",
        "--temp_location=gs://acme-dataflow/tmp",
    ]
    flex_main.main(args)
    report = read_report(lake, storage=storage)
    assert gcs_emulator.exists(report_uri(lake, report["run_id"]))
    assert report["ok"] is True, report["problems"]
    assert report["lake"] == lake
    assert len(report["checks"]) == 2 + 2 * len(catalog.aggregates) + len(catalog.views)

    uri = raw_uri(lake, PAGES)
    twin = DeltaTable(uri, storage_options=storage).to_pyarrow_dataset().head(1)
    write_deltalake(uri, twin, mode="append", storage_options=storage)
    flex_main.main(args)
    damaged = read_report(lake, storage=storage)
    assert damaged["run_id"] != report["run_id"]
    eid = twin.column("event_id")[0].as_py()
    assert damaged["problems"] == [f"raw/{PAGES}: event_source=bench, event_id={eid} is there 2 times"]
    assert damaged["ok"] is False
