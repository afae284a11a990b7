"""`replay <view>` as the Beam batch job Dataflow runs (tidegate.pipelines.replay_view), here on the
in-process runner on small real lakes: it writes the table the one-process replay
(`views.rebuild`) writes (rows, columns, types, markers, one commit), `tidegate verify` finds no
problem afterwards, and a commit retried after it landed changes nothing."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from tests.test_views import _messages
from tidegate.catalog import Catalog
from tidegate.expectations.contracts import ContractRegistry
from tidegate.lake import views
from tidegate.lake.delta import try_open
from tidegate.lake.verify import verify
from tidegate.pipelines.local.batch import BatchRunner
from tidegate.pipelines.replay_view import plan, replay_view
from tidegate.transforms.base import IngestConfig
from tidegate.transforms.view_fold import StagedViewFile, commit_staged_view

VIEW = "order_state"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog, registry: ContractRegistry) -> Path:
    """Orders and payments (three orders paid) in several raw commits each: several file groups
    per source, and the payments in another file than their orders."""
    root = tmp_path_factory.mktemp("views") / "lake"
    orders, payments = _messages(catalog, registry)
    runner = BatchRunner(IngestConfig(str(root), "r", str(catalog.path), "t", "t"), single_writer=True)
    runner.run("b1", orders[:3])
    runner.run("b2", payments[:2])
    runner.run("b3", orders[3:])
    runner.run("b4", payments[2:])
    return root


def _copy(lake: Path, to: Path) -> str:
    shutil.copytree(lake, to)
    return str(to)


def _table(lake: str) -> DeltaTable:
    table = try_open(views.view_uri(lake, VIEW))
    assert table is not None
    return table


def _rows(table: DeltaTable) -> pl.DataFrame:
    frame = pl.from_arrow(table.to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame.sort(frame.columns)


def _markers(table: DeltaTable, catalog: Catalog) -> dict[str, int | None]:
    view = next(v for v in catalog.views if v.name == VIEW)
    return {e.type: table.transaction_version(views.app_id(view, e.type)) for e in view.events}


@pytest.mark.parametrize(
    ("bucket_rows", "existing"),
    [(1, False), (1_000_000, True)],
    ids=["a-bucket-per-row-new-table", "one-bucket-over-a-table"],
)
def test_the_beam_view_replay_writes_what_the_one_process_replay_writes(
    lake: Path, catalog: Catalog, tmp_path: Path, bucket_rows: int, existing: bool
) -> None:
    one = _copy(lake, tmp_path / "one")
    beam = _copy(lake, tmp_path / "beam")
    views.rebuild(catalog, one, VIEW, run_id="one")
    if existing:  # the overwrite path: the view is there already
        views.rebuild(catalog, beam, VIEW, run_id="old")
    before = try_open(views.view_uri(beam, VIEW))
    r = replay_view(catalog, beam, VIEW, run_id="beam", group_rows=1, bucket_rows=bucket_rows)

    expected, got = _table(one), _table(beam)
    assert _rows(got).equals(_rows(expected))
    assert pa.schema(got.schema().to_arrow()) == pa.schema(expected.schema().to_arrow())
    assert _markers(got, catalog) == _markers(expected, catalog)
    assert all(v is not None and v >= 0 for v in _markers(got, catalog).values())
    # one commit, with the one-process rebuild's properties
    assert got.version() == (before.version() + 1 if before is not None else 0)
    last, theirs = got.history(1)[0], expected.history(1)[0]
    assert last["tidegate_run_id"] == "beam"
    assert last["tidegate_table"] == theirs["tidegate_table"] == f"views/{VIEW}"
    # a new table's one commit creates it (readers and monitors count CREATE TABLE as a write)
    assert last["operation"] == ("WRITE" if existing else "CREATE TABLE")
    assert (before is not None) == existing
    assert (r.rows, r.keys) == (expected.to_pyarrow_table().num_rows, 6)
    assert r.buckets == (1 if bucket_rows > 100 else 9)  # 6 orders + 3 payments
    assert r.versions == {t: v for t, v in _markers(got, catalog).items() if v is not None}

    assert not views.view_parity(catalog, beam, VIEW)
    report = verify(beam, catalog.event_types, catalog=catalog)
    assert report.ok, report.failures


def test_a_view_whose_source_has_no_raw_table_yet_is_replayed_with_its_marker_at_minus_one(
    catalog: Catalog, registry: ContractRegistry, tmp_path: Path
) -> None:
    orders, _ = _messages(catalog, registry)
    root = tmp_path / "lake"
    BatchRunner(IngestConfig(str(root), "r", str(catalog.path), "t", "t"), single_writer=True).run(
        "b1", orders
    )
    one, beam = _copy(root, tmp_path / "one"), _copy(root, tmp_path / "beam")
    views.rebuild(catalog, one, VIEW, run_id="one")
    replay_view(catalog, beam, VIEW, run_id="beam", bucket_rows=2)
    assert _rows(_table(beam)).equals(_rows(_table(one)))
    assert _markers(_table(beam), catalog) == _markers(_table(one), catalog)
    assert _markers(_table(beam), catalog)["shop.payment.captured"] == -1
    assert not views.view_parity(catalog, beam, VIEW)


def test_a_commit_retried_after_it_landed_changes_nothing(
    lake: Path, catalog: Catalog, tmp_path: Path
) -> None:
    root = _copy(lake, tmp_path / "lake")
    job = plan(catalog, root, VIEW, run_id="retried")
    first = commit_staged_view(job.config, [])  # no files: an empty view, committed
    assert commit_staged_view(job.config, []) == first
    empty = _table(root)
    assert empty.to_pyarrow_table().num_rows == 0
    assert pa.schema(empty.schema().to_arrow()) == views.view_schema(catalog, job.config.view)
    # a later run replaces it in one commit
    r = replay_view(catalog, root, VIEW, run_id="later", bucket_rows=3)
    assert r.table_version == first + 1
    assert _table(root).to_pyarrow_table().num_rows == 6
    staged = [StagedViewFile("missing.parquet", 1, "{}", 1, 1)]
    assert commit_staged_view(dataclasses.replace(job.config, run_id="later"), staged) == r.table_version
