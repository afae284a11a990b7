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


def _scan(lake: Lake, table: str) -> pl.LazyFrame | None:
    if try_open(lake.uri(table), lake.storage_options) is None:
        return None
    return lake.scan(table)


def _rows(lake: Lake, table: str) -> int:
    frame = _scan(lake, table)
    return 0 if frame is None else int(frame.select(pl.len()).collect().item())


def _per(lake: Lake, table: str, *by: str) -> pl.DataFrame:
    frame = _scan(lake, table)
    if frame is None:
        return pl.DataFrame()
    return frame.group_by(*by).len().sort(*by).collect()


def landed(lake: Lake) -> list[Landed]:
    out = [Landed(f"raw/{t}", "", "", _rows(lake, f"raw/{t}")) for t in lake.catalog.event_types]
    for r in _per(lake, "quarantine", "stage", "rule").iter_rows(named=True):
        out.append(Landed("quarantine", r["stage"], r["rule"], r["len"]))
    late = _per(lake, "aggregates/_late", "aggregate")
    late_by = dict(late.iter_rows()) if late.height else {}
    for a in lake.catalog.aggregates:
        out.append(
            Landed(f"aggregates/{a.name}", "windows", a.window.type, _rows(lake, f"aggregates/{a.name}"))
        )
        if late_by.get(a.name):
            out.append(Landed("aggregates/_late", a.name, "too late for the window", late_by[a.name]))
    return out
