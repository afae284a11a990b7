"""The quickstart notebook runs top to bottom against the lake a demo run leaves (nbclient,
a real kernel), so it can never rot."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.emulator


def test_quickstart_notebook_runs_against_a_demo_lake(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TIDEGATE_HOME", str(tmp_path / "home"))
    r = cli("demo", "--count", "1200")
    assert r.code == 0, r.text
    lake = tmp_path / "home" / "demo" / "lake"
    monkeypatch.setenv("TIDEGATE_NOTEBOOK_LAKE", str(lake))
    monkeypatch.setenv("TIDEGATE_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    assert (tmp_path / "out" / "revenue.png").stat().st_size > 10_000  # the chart was drawn
    texts = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "consistent" in texts
