"""What landed where: rows per raw table, quarantine rows per stage and rule, windows per
aggregate and late pairs per aggregate (the demo's last table; `tidegate status` has more)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from tidegate.lake.delta import try_open
from tidegate.lake.read import Lake


@dataclass(frozen=True)
class Landed:
    table: str
    stage: str  # quarantine: the stage; aggregates: "windows", or the aggregate a late pair missed
    rule: str
    rows: int


def _count(lake: Lake, table: str, column: str) -> pl.DataFrame | None:
    dt = try_open(lake.uri(table), lake.storage_options)
    if dt is None:
        return None
    frame = pl.from_arrow(dt.to_pyarrow_table(columns=[column]))
    assert isinstance(frame, pl.DataFrame)
    return frame


def landed(lake: Lake) -> list[Landed]:
    out: list[Landed] = []
    for t in lake.catalog.event_types:
        raw = _count(lake, f"raw/{t}", "event_id")
        out.append(Landed(f"raw/{t}", "", "", 0 if raw is None else raw.height))
    q = try_open(lake.uri("quarantine"), lake.storage_options)
    if q is not None:
        frame = pl.from_arrow(q.to_pyarrow_table(columns=["stage", "rule"]))
        assert isinstance(frame, pl.DataFrame)
        for r in frame.group_by("stage", "rule").len().sort("stage", "rule").iter_rows(named=True):
            out.append(Landed("quarantine", r["stage"], r["rule"], r["len"]))
    late = _count(lake, "aggregates/_late", "aggregate")
    late_by = dict(late.group_by("aggregate").len().iter_rows()) if late is not None else {}
    for a in lake.catalog.aggregates:
        windows = _count(lake, f"aggregates/{a.name}", "window_start")
        out.append(
            Landed(f"aggregates/{a.name}", "windows", a.window.type, 0 if windows is None else windows.height)
        )
        if late_by.get(a.name):
            out.append(Landed("aggregates/_late", a.name, "too late for the window", late_by[a.name]))
    return out
