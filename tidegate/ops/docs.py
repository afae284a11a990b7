"""`tidegate docs`: Great Expectations Data Docs built from the `_quality` table (the results
each batch stored), not from a GX store: the lake is the only state. The site works offline:
every asset is a local file (tidegate/expectations/data_docs.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tidegate.errors import TidegateError
from tidegate.expectations.contracts import ContractRegistry
from tidegate.lake.read import Lake


@dataclass(frozen=True)
class DocsBuild:
    index: Path
    batches: int


def quality_rows(lake: Lake, run: str | None, last: int) -> list[dict[str, object]]:
    """The `_quality` rows of the `last` most recent batches (of one run, if given)."""
    quality = lake.quality()
    if run is not None:
        quality = quality.filter(pl.col("run_id") == run)
    batches = quality.group_by("batch_id").agg(pl.col("validated_at").max()).sort("validated_at").tail(last)
    rows = quality.join(batches.select("batch_id"), on="batch_id", how="semi").collect().to_dicts()
    if not rows:
        raise TidegateError(
            "no data-quality results to show" + (f" for run {run}" if run else ""),
            hint="ingest something first",
        )
    return rows


def build_docs(lake: Lake, out: Path, rows: list[dict[str, object]]) -> DocsBuild:
    """Build the site under `out` (replacing what an earlier build left there); `index` is its
    `gx/uncommitted/data_docs/local_site/index.html`."""
    # GX takes seconds to import: loaded only when docs are built
    from tidegate.expectations.data_docs import build_data_docs

    index = build_data_docs(rows, ContractRegistry.from_catalog(lake.catalog), out)
    return DocsBuild(index, len({r["batch_id"] for r in rows}))
