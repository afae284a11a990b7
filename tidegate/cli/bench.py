"""`tidegate bench ...`: benchmarks on this machine (figures for notes and docs)."""

from __future__ import annotations

import json
import os
import time
from typing import Annotated, Any

import typer

from tidegate.catalog import load_catalog
from tidegate.cli.app import CatalogOpt, Table, bench_app, console, parse_rate
from tidegate.errors import TidegateError


def _print_figures(title: str, figures: dict[str, Any], as_json: bool) -> None:
    """Benchmark figures as JSON, or as a two-column table."""
    if as_json:
        console.print_json(json.dumps(figures))
        return
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in figures.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    console.print(table)


@bench_app.command("produce")
def bench_produce(
    events: Annotated[int, typer.Option("--events", "-n", min=1000, help="Messages to publish.")] = 200_000,
    invalid_rate: Annotated[float, typer.Option(help="Share of faulty messages in the mix.")] = 0.02,
    duplicate_rate: Annotated[float, typer.Option(help="Share of duplicates in the mix.")] = 0.01,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    catalog_path: CatalogOpt = None,
) -> None:
    """Producer throughput: generation alone, then publishing to a private emulator."""
    import resource

    from tidegate import settings
    from tidegate.expectations.contracts import ContractRegistry
    from tidegate.infra import emulator as emu
    from tidegate.infra.pubsub import provision
    from tidegate.producer import ProduceConfig, generate, publish

    catalog = load_catalog(catalog_path)
    registry = ContractRegistry.from_catalog(catalog)
    config = ProduceConfig(
        types=tuple(catalog.event_types),
        count=events,
        seed=1,
        invalid_rate=parse_rate("--invalid-rate", invalid_rate),
        duplicate_rate=parse_rate("--duplicate-rate", duplicate_rate),
    )
    t0 = time.perf_counter()
    generated = sum(1 for _ in generate(config, catalog, registry))
    gen_rate = generated / (time.perf_counter() - t0)
    with emu.private_emulator(settings.home() / "bench" / "logs") as proc:
        provision(catalog, proc.address)
        report = publish(generate(config, catalog, registry), catalog.project, proc.address, events)
    if report.failed:
        raise TidegateError(f"{report.failed} publishes failed: {'; '.join(report.errors)}")
    figures = {
        "events": events,
        "generate_per_s": round(gen_rate),
        "publish_per_s": round(report.rate),
        "publish_seconds": round(report.seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "mix": dict(sorted(report.sent.items())),
    }
    if as_json:
        console.print_json(json.dumps(figures))
        return
    table = Table(title=f"tidegate bench produce --events {events}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("generate only (no I/O)", f"{gen_rate:,.0f} msg/s")
    table.add_row("publish to emulator (generate + send + wait for acks)", f"{report.rate:,.0f} msg/s")
    table.add_row("wall time publishing", f"{report.seconds:.2f} s")
    table.add_row("peak RSS of this process", f"{figures['peak_rss_mib']} MiB")
    console.print(table)


@bench_app.command("ingest")
def bench_ingest_cmd(
    events: Annotated[
        int,
        typer.Option("--events", "-n", min=1000, help="Backlog to ingest (and to measure the ceiling with)."),
    ] = 200_000,
    rate: Annotated[
        float, typer.Option(help="Offered events/s for the latency run in --follow mode.")
    ] = 2000.0,
    latency_seconds: Annotated[float, typer.Option(help="Length of the latency run (0 skips it).")] = 30.0,
    max_batch: Annotated[int, typer.Option(help="Micro-batch size limit.")] = 20_000,
    max_wait: Annotated[float, typer.Option(help="Micro-batch time limit, seconds.")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    catalog_path: CatalogOpt = None,
) -> None:
    """Ingest on this machine: the plain parallel drain ceiling, end-to-end throughput of a realistic backlog, publish->Delta latency p50/p99 and per-stage batch cost in --follow mode, SIGKILL recovery, cold start, files, peak RSS."""
    from tidegate.bench_ingest import bench_ingest

    catalog = load_catalog(catalog_path)
    figures = bench_ingest(
        catalog,
        events,
        rate,
        latency_seconds,
        max_batch,
        max_wait,
        progress=(lambda m: None) if as_json else (lambda m: console.print(f"[dim]{m}[/]")),
    )
    _print_figures(f"tidegate bench ingest --events {events} --rate {rate:g}", figures, as_json)


@bench_app.command("soak")
def bench_soak_cmd(
    minutes: Annotated[float, typer.Option(min=1.0, help="How long to follow, minutes.")] = 10.0,
    rate: Annotated[float, typer.Option(min=1.0, help="Offered events/s.")] = 1500.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    catalog_path: CatalogOpt = None,
) -> None:
    """Sustained load: `ingest --follow` for M minutes at R events/s; publish->commit p50/p99, longest raw commit and RSS per minute, files and MiB on disk per table at the end."""
    from tidegate.bench_ingest import bench_soak

    catalog = load_catalog(catalog_path)
    figures = bench_soak(
        catalog,
        minutes,
        rate,
        progress=(lambda m: None) if as_json else (lambda m: console.print(f"[dim]{m}[/]")),
    )
    _print_figures(f"tidegate bench soak --minutes {minutes:g} --rate {rate:g}", figures, as_json)


@bench_app.command("replay")
def bench_replay_cmd(
    events: Annotated[
        int, typer.Option("--events", "-n", min=1000, help="Raw events per source type.")
    ] = 1_000_000,
    group_rows: Annotated[int, typer.Option(help="Raw rows per replay work item.")] = 250_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    catalog_path: CatalogOpt = None,
) -> None:
    """Replay speed: rebuild every aggregate from N raw events per source type (tables built once and cached)."""
    from tidegate.bench import bench_replay

    catalog = load_catalog(catalog_path)
    figures = bench_replay(
        catalog,
        events,
        group_rows,
        progress=(lambda m: None) if as_json else (lambda m: console.print(f"[dim]{m}[/]")),
    )
    _print_figures(f"tidegate bench replay --events {events}", figures, as_json)


@bench_app.command("backlog")
def bench_backlog_cmd(
    messages: Annotated[int, typer.Option("--messages", "-n", min=100, help="Backlog to publish.")] = 60_000,
    limit: Annotated[
        int, typer.Option(help="Count limit per subscription (as status --backlog-limit).")
    ] = 20_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    catalog_path: CatalogOpt = None,
) -> None:
    """How long `tidegate status` takes to count an emulator backlog (snapshot, pull without acking, seek back), twice: the second count finds the same messages."""
    from tidegate.bench import bench_backlog

    figures = bench_backlog(
        load_catalog(catalog_path),
        messages,
        limit,
        progress=(lambda m: None) if as_json else (lambda m: console.print(f"[dim]{m}[/]")),
    )
    _print_figures(f"tidegate bench backlog --messages {messages} --limit {limit}", figures, as_json)


@bench_app.command("dedup")
def bench_dedup_cmd(
    rows: Annotated[
        int, typer.Option("--rows", "-n", min=100_000, help="Grow the raw-shaped table up to this many rows.")
    ] = 10_000_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """What exactly-once by (source, id) costs as a raw table grows: the insert-only MERGE (pruned to the chunk's dates, and over the whole table) against the key index + append, per 5,000-row commit."""
    from tidegate.bench_dedup import bench_dedup

    figures = bench_dedup(
        rows, progress=(lambda m: None) if as_json else (lambda m: console.print(f"[dim]{m}[/]"))
    )
    _print_figures(f"tidegate bench dedup --rows {rows}", figures, as_json)


@bench_app.command("commits")
def bench_commits_cmd(
    commits: Annotated[int, typer.Option("--commits", "-n", min=200, help="Small commits to make.")] = 10_000,
    rows: Annotated[int, typer.Option(min=1, help="Rows per commit.")] = 50,
    log_retention: Annotated[
        str,
        typer.Option(
            help="The commit log window of the --follow run the bench stands for (a duration, or 'none' to keep the log); scaled to the bench's pace."
        ),
    ] = "10m",
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """A table after thousands of small commits (what `ingest --follow` makes all day, with its compactor): commit latency and open time of the last 100 commits against the first 100."""
    from tidegate.bench_commits import bench_commits

    figures = bench_commits(
        commits,
        rows,
        None if log_retention == "none" else log_retention,
        progress=(lambda m: None) if as_json else (lambda m: console.print(f"[dim]{m}[/]")),
    )
    _print_figures(f"tidegate bench commits --commits {commits}", figures, as_json)


def _writer_counts(text: str) -> list[int]:
    """`--writers 1,4,16,64` as numbers of writers, each 1..256."""
    counts = []
    for part in text.split(","):
        try:
            n = int(part.strip())
        except ValueError:
            n = 0
        if not 1 <= n <= 256:
            raise typer.BadParameter(
                f"expected comma-separated numbers of writers from 1 to 256 (e.g. 1,4,16,64), got {text!r}",
                param_hint="--writers",
            )
        counts.append(n)
    return counts


@bench_app.command("writers")
def bench_writers_cmd(
    writers: Annotated[
        str, typer.Option(help="Numbers of concurrent writer processes, one run each (comma-separated).")
    ] = "1,4,16,64",
    chunks: Annotated[int, typer.Option(min=1, max=1000, help="Chunks each writer writes.")] = 2,
    chunk_rows: Annotated[int, typer.Option(min=1, max=100_000, help="Rows per chunk.")] = 1000,
    latency_ms: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Object-store latency per request, ms: the table goes on the GCS emulator, behind a proxy adding it.",
            show_default=False,
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="Where the table goes: local | gcs-emulator (default: gcs-emulator with --latency-ms, else local).",
            show_default=False,
        ),
    ] = None,
    path: Annotated[
        str,
        typer.Option(
            help="Write path: merge (every writer commits its chunks: insert-only MERGE) | committer "
            "(writers stage Parquet files, one committer per table commits them: the streaming job's default)."
        ),
    ] = "merge",
    event_type: Annotated[
        str, typer.Option(help="Event type whose raw table the writers share.")
    ] = "shop.order.placed",
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    catalog_path: CatalogOpt = None,
) -> None:
    """Many writers, one table: N processes write chunks of raw rows to one raw table at once, through one of the Dataflow job's write paths (--path); rows/s, retries, failed chunks, commit p50/p99, and a check that every row landed exactly once (docs/deploy.md, "Many writers per table")."""
    from tidegate.bench_writers import PATHS, STORES, bench_writers

    counts = _writer_counts(writers)
    where = store or ("gcs-emulator" if latency_ms is not None else "local")
    if where not in STORES:
        raise typer.BadParameter(f"expected one of {', '.join(STORES)}, got {where!r}", param_hint="--store")
    if where == "local" and latency_ms:
        raise typer.BadParameter(
            "latency is injected by the GCS emulator's proxy: drop --store local, or use --store gcs-emulator",
            param_hint="--latency-ms",
        )
    if path not in PATHS:
        raise typer.BadParameter(f"expected one of {', '.join(PATHS)}, got {path!r}", param_hint="--path")
    figures = bench_writers(
        load_catalog(catalog_path),
        counts,
        chunks=chunks,
        chunk_rows=chunk_rows,
        store=where,
        latency_ms=latency_ms,
        path=path,
        event_type=event_type,
        progress=(lambda m: None) if as_json else (lambda m: console.print(f"[dim]{m}[/]")),
    )
    if as_json:
        console.print_json(json.dumps(figures))
        return
    lat = f", {latency_ms:g} ms per request" if latency_ms else ""
    table = Table(
        title=f"tidegate bench writers --writers {writers} --path {path} "
        f"({where}{lat}, {chunks} x {chunk_rows:,} rows per writer)",
        caption=f"{os.cpu_count()} CPU cores: with more writers than cores the CPU is oversubscribed "
        "(machine cpu near 1.0: the machine, not the table, is the limit)",
    )
    columns = (
        ("writers", "writers"),
        ("rows/s", "rows_per_s"),
        ("retries", "retries"),
        ("failed chunks", "failed_chunks"),
        ("commit p50 s", "p50_commit_s"),
        ("commit p99 s", "p99_commit_s"),
        ("machine cpu", "machine_cpu_busy"),
        ("exactly once", "exactly_once"),
    )
    for name, _ in columns:
        table.add_column(name, justify="right")
    for run in figures["runs"]:
        table.add_row(
            *(
                f"{run[k]:,}" if isinstance(run[k], int) and not isinstance(run[k], bool) else str(run[k])
                for _, k in columns
            )
        )
    console.print(table)
    for run in figures["runs"]:
        for error in run["errors"]:
            console.print(f"[yellow]{run['writers']} writer(s), a failed chunk:[/] {error}")


@bench_app.command("history")
def bench_history_cmd(
    events: Annotated[
        list[int] | None,
        typer.Option(
            "--events", "-n", min=1000, help="Raw events per source type (repeat for several sizes)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    catalog_path: CatalogOpt = None,
) -> None:
    """Whole-history operations against history size: replay every aggregate and view, then verify, each in its own process (wall time, peak RSS); raw tables built once per size and cached."""
    from tidegate.bench import bench_history

    catalog = load_catalog(catalog_path)
    sizes = events or [1_000_000]
    figures = bench_history(
        catalog, sizes, progress=(lambda m: None) if as_json else (lambda m: console.print(f"[dim]{m}[/]"))
    )
    if as_json:
        console.print_json(json.dumps(figures))
        return
    table = Table(title=f"tidegate bench history {' '.join(f'--events {n}' for n in sizes)}")
    steps = [k for k in figures["runs"][0] if k.startswith(("replay ", "verify"))]
    table.add_column("raw rows", justify="right")
    for step in steps:
        table.add_column(f"{step} s / MiB", justify="right")
    for run in figures["runs"]:
        table.add_row(
            f"{run['raw_rows']:,}",
            *(
                f"{run[s]['seconds']:,} / {run[s]['peak_rss_mib']:,}"
                + ("" if run[s]["exit"] == 0 else " (failed)")
                for s in steps
            ),
        )
    console.print(table)
