"""What several commands print: tables of Pub/Sub changes, publish summaries, dry-run jobs, figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from tidegate.cli.app import Table, console

if TYPE_CHECKING:
    from tidegate.producer import PublishReport


def print_job(job: dict[str, Any], job_file: Path | None) -> None:
    """A dry-run Dataflow job: its top-level steps and options; the whole spec to `job_file`."""
    if job_file is not None:
        job_file.write_text(json.dumps(job, indent=2, default=str))
    console.print(f"Dataflow job {job['name']} ({job['type']}), built offline, not submitted:")
    for step in job["steps"]:
        if step.count("/") <= 2 and not step.startswith("ref_"):
            console.print(f"  {step}")
    console.print("options: " + escape(json.dumps(job["options"], default=str)))
    if job_file is not None:
        console.print(f"full spec (portable pipeline graph): {job_file}")


def summary_table(report: PublishReport) -> Table:
    from tidegate.producer import EXPECTED_RULE

    table = Table(
        title=f"Published {report.total:,} messages in {report.seconds:.2f}s ({report.rate:,.0f} msg/s)"
    )
    table.add_column("kind")
    table.add_column("messages", justify="right")
    table.add_column("expected landing")
    for kind, n in sorted(report.sent.items(), key=lambda kv: (-kv[1], kv[0])):
        stage_rule = EXPECTED_RULE.get(kind)
        landing = f"quarantine ({stage_rule[0]}: {stage_rule[1]})" if stage_rule else "raw"
        if kind == "duplicate":
            landing = "raw (once: same ce-id as an earlier event)"
        table.add_row(kind, f"{n:,}", landing)
    return table
