"""`tidegate bench writers`: do many writers committing to one table thrash?

    tidegate bench writers --writers 1,4,16,64 [--latency-ms 50] [--path merge|committer]
                           [--chunks 2] [--chunk-rows 1000] [--json]

What a scaled-out Dataflow job does to a raw table: N workers writing their chunks to the same
table (one event type, today's dates). Each writer is its own process and writes `--chunks`
chunks of `--chunk-rows` rows through one of the job's two raw-history write paths, called with
the job's arguments (tidegate.transforms.writes):

- `--path merge` (`staged_commits=False`, `WriteRawHistoryFn`): every writer commits its own
  chunks with `tidegate.lake.writer.insert_new`, the insert-only MERGE: dedup on
  (event_source, event_id) within `DEDUP_HORIZON`, id conflicts on `payload_digest`,
  partitioned by `event_date`, the watermark stamped by `prepare` on every attempt, lineage
  metadata. Writers race for each table version; the losers retry inside `insert_new`.
- `--path committer` (`staged_commits=True`, the streaming job's default: `StageRawHistoryFn` +
  `CommitRawHistoryFn`): every writer stages its chunks as Parquet files
  (`tidegate.lake.committer.stage_rows`, the watermark stamped from the snapshot it staged
  against) and hands them to ONE committer process for the table, which commits whatever
  arrived in rounds (`commit_staged`; a round is 64 chunks or 1 s after its first, as the
  job's GroupIntoBatches).

The rows are real raw rows: the producer's events for the type, decoded and checked against
their contract, turned into raw rows with PII tokenized (development key); each chunk gets its
own event ids, message ids and digests. The table is created (one seed chunk) before the
writers start, as a running job finds it. Every writer builds its chunks, then waits at a
barrier; the clock runs from the barrier to the last commit. Per run: rows/s (rows landed /
that wall time), retries (commit attempts lost to another writer and retried), failed chunks
(a commit that gave up after `MAX_COMMIT_ATTEMPTS`, or a staging that raised), commit time
p50/p99 per chunk (from the start of its write to its rows being committed: retries, backoff
and, on the committer path, the wait for its round included), the CPU the writers used and the
whole machine's CPU in use (near 1.0: the figures say more about the machine than about the
table), and a check of the table afterwards: every committed chunk's rows exactly once,
nothing lost, nothing doubled, nothing of a failed chunk.

`--latency-ms L` puts the table on the GCS emulator (`tidegate.infra.gcs_emulator`): its proxy
adds L ms to every request and enforces delta-rs's conditional commit PUTs, as an object store
does. Without it the table is on the local filesystem (`--store local`).

The writer processes start with `spawn` (a child forked after deltalake has been used in the
parent can hang) and import pyarrow, deltalake and `tidegate.lake` only, never Beam or GX
(~200 MB each: 64 writers take ~10 GB): this module imports nothing heavier at its top, and
the rows template is built in the parent. 64 writers on a 2-core machine oversubscribe the
CPU; `machine_cpu_busy` says how much.

docs/deploy.md ("Many writers per table") has the figures and what they mean.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import resource
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from threading import BrokenBarrierError
from typing import Any

import pyarrow as pa

from tidegate.errors import TidegateError, TransientError
from tidegate.lake.committer import StagedChunk, commit_staged, stage_rows
from tidegate.lake.delta import open_table, try_open
from tidegate.lake.keyindex import DEDUP_HORIZON, key_index
from tidegate.lake.rows import commit_metadata, stamp_seen_max_event_time
from tidegate.lake.tables import raw_table
from tidegate.lake.writer import MAX_COMMIT_ATTEMPTS, insert_new

STORES = ("local", "gcs-emulator")
STARTUP_TIMEOUT_S = 600.0  # 64 spawned writers importing deltalake on 2 cores take ~2 min
RUN_TIMEOUT_S = 3600.0
# the committer's rounds, as the streaming job batches them (IngestConfig.committer_batch/_seconds)
ROUND_CHUNKS = 64
ROUND_SECONDS = 1.0


@dataclass(frozen=True)
class WriterJob:
    """What one writer process does: write `chunks` chunks made from `template` to `uri`."""

    writer: int
    uri: str
    event_type: str
    template: pa.Table  # one chunk of real raw rows; each chunk gets its own ids
    chunks: int
    run_id: str
    storage_options: dict[str, str] | None = None
    path: str = "merge"


@dataclass(frozen=True)
class ChunkOutcome:
    chunk: int
    started: float  # time.monotonic() (CLOCK_MONOTONIC: one clock for every process)
    ended: float  # when its rows were committed (or its write failed)
    rows: int
    inserted: int
    attempts: int
    error: str | None = None  # the chunk failed: what its commit (or staging) raised
    staged: bool = False  # committer path, writer side: staged and handed off, not committed yet


@dataclass(frozen=True)
class WriterReport:
    writer: int
    chunks: list[ChunkOutcome] = field(default_factory=list)
    cpu_s: float = 0.0  # CPU this process used from the barrier to its last chunk
    error: str | None = None  # the process itself failed (before or between chunks)


@dataclass(frozen=True)
class Handoff:
    """Committer path: a staged chunk on its way from a writer to the table's committer."""

    writer: int
    chunk: int
    started: float
    staged: StagedChunk
    message_ids: tuple[str, ...]


@dataclass(frozen=True)
class WriterDone:
    """Committer path: a writer has handed off everything it will."""

    writer: int


@dataclass(frozen=True)
class CommitterReport:
    chunks: list[tuple[int, ChunkOutcome]] = field(default_factory=list)  # (writer, outcome)
    # (chunks, attempts, seconds, committed: the round made a commit)
    rounds: list[tuple[int, int, float, bool]] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step of commit_staged, summed
    cpu_s: float = 0.0
    error: str | None = None


def event_id(writer: int, chunk: int, row: int) -> str:
    """The event id `make_chunk` gives row `row` of `writer`'s chunk `chunk`."""
    return f"bench-w{writer:04d}c{chunk:06d}-{row:06d}"


def make_chunk(template: pa.Table, writer: int, chunk: int, now: datetime) -> pa.Table:
    """`template` with new identities: event ids, message ids and payload digests unique to
    (writer, chunk, row), so every chunk is new rows; the lineage columns as a bundle has them."""
    n = template.num_rows
    tag = f"w{writer:04d}c{chunk:06d}"

    def put(rows: pa.Table, name: str, values: pa.Array) -> pa.Table:
        i = rows.schema.get_field_index(name)
        return rows.set_column(i, rows.schema.field(i), values.cast(rows.schema.field(i).type))

    ids = [event_id(writer, chunk, i) for i in range(n)]
    digests = [f"{(writer + 1) << 44 | chunk << 20 | i:016x}" for i in range(n)]
    rows = put(template, "event_id", pa.array(ids))
    rows = put(rows, "pubsub_message_id", pa.array([f"{tag}{i:06d}" for i in range(n)]))
    rows = put(rows, "payload_digest", pa.array(digests))
    rows = put(rows, "batch_id", pa.array([tag] * n))
    return put(rows, "ingest_time", pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), n))


def _metadata(
    run_id: str, event_type: str, batch_ids: list[str], message_ids: list[str], **extra: str
) -> dict[str, str]:
    return commit_metadata(
        run_id=run_id,
        batch_ids=batch_ids,
        code_version="bench",
        git_sha="bench",
        subscriptions=["bench"],
        message_ids=message_ids,
        extra={"tidegate_event_type": event_type, "tidegate_table": "raw", **extra},
    )


def merge_kwargs(job: WriterJob, rows: pa.Table, now: datetime) -> dict[str, Any]:
    """`insert_new`'s arguments as the Dataflow job's raw history writer passes them
    (tidegate.transforms.writes: `_insert(..., value="payload_digest", metadata=..., partition_by=...,
    prepare=...)` in `WriteRawHistoryFn.finish_bundle`)."""
    spec = raw_table(job.event_type)
    meta = _metadata(
        job.run_id,
        job.event_type,
        [rows.column("batch_id")[0].as_py()],
        rows.column("pubsub_message_id").to_pylist(),
    )
    return {
        "keys": spec.keys,
        "horizon": DEDUP_HORIZON,
        "conflict_on": "payload_digest",
        "metadata": meta,
        "partition_by": spec.partition_by,
        "storage_options": job.storage_options,
        "prepare": lambda table, batch: stamp_seen_max_event_time(table, batch, now),
    }


def _merge_chunk(
    job: WriterJob, chunk: int, rows: pa.Table, now: datetime, handoff: Any
) -> tuple[int, int, bool]:
    """Merge path: the writer commits the chunk itself. (inserted, attempts, staged)"""
    result = insert_new(job.uri, rows, **merge_kwargs(job, rows, now))
    return result.inserted, result.attempts, False


def stage_chunk(job: WriterJob, rows: pa.Table, now: datetime) -> StagedChunk:
    """Committer path, the writer's half, as `StageRawHistoryFn.process` does it: the watermark
    from the snapshot staged against, then Parquet files in the table's folder, uncommitted."""
    spec = raw_table(job.event_type)
    rows = stamp_seen_max_event_time(try_open(job.uri, job.storage_options), rows, now)
    staged = stage_rows(
        job.uri,
        rows,
        keys=spec.keys,
        conflict_on="payload_digest",
        partition_by=spec.partition_by,
        storage_options=job.storage_options,
    )
    return StagedChunk(rows.column("batch_id")[0].as_py(), staged)


def _stage_chunk(
    job: WriterJob, chunk: int, rows: pa.Table, now: datetime, handoff: Any
) -> tuple[int, int, bool]:
    """Committer path: stage the chunk and hand it to the table's committer."""
    started = time.monotonic()
    staged = stage_chunk(job, rows, now)
    messages = tuple(rows.column("pubsub_message_id").to_pylist())
    handoff.put(Handoff(job.writer, chunk, started, staged, messages))
    return 0, 1, True


# --path: what a writer does with one chunk
PATHS: dict[str, Callable[[WriterJob, int, pa.Table, datetime, Any], tuple[int, int, bool]]] = {
    "merge": _merge_chunk,
    "committer": _stage_chunk,
}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread, delta-rs' included
    return usage.ru_utime + usage.ru_stime


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def write_chunks(job: WriterJob, start: Any = None, handoff: Any = None) -> WriterReport:
    """One writer: build its chunks, wait for the others at `start` (a barrier, or None), write
    each chunk through `PATHS[job.path]` (committer path: handing it off on `handoff`). A chunk
    whose write raises is a failed chunk; the writer goes on with the next one, as a Dataflow
    worker goes on with other bundles."""
    step = PATHS[job.path]
    now = datetime.now(UTC)
    chunks = [make_chunk(job.template, job.writer, k, now) for k in range(job.chunks)]
    if start is not None:
        start.wait(STARTUP_TIMEOUT_S)
    cpu = _cpu_s()
    outcomes = []
    for k, rows in enumerate(chunks):
        began = time.monotonic()
        try:
            inserted, attempts, staged = step(job, k, rows, now, handoff)
            outcomes.append(
                ChunkOutcome(k, began, time.monotonic(), rows.num_rows, inserted, attempts, None, staged)
            )
        except Exception as exc:  # noqa: BLE001 - a failed chunk is a figure of the bench
            attempts = MAX_COMMIT_ATTEMPTS if isinstance(exc, TransientError) else 1
            outcomes.append(ChunkOutcome(k, began, time.monotonic(), rows.num_rows, 0, attempts, _error(exc)))
    if handoff is not None:
        handoff.put(WriterDone(job.writer))
    return WriterReport(job.writer, outcomes, _cpu_s() - cpu)


def _round(job: WriterJob, pending: list[Handoff], report: CommitterReport) -> None:
    """One committer round, as `CommitRawHistoryFn.process` commits it: every chunk that
    arrived, in one commit."""
    spec = raw_table(job.event_type)
    meta = _metadata(
        job.run_id,
        job.event_type,
        [h.staged.batch_id for h in pending],
        [m for h in pending for m in h.message_ids],
        tidegate_commit_path="committer",
    )
    began = time.monotonic()
    try:
        result = commit_staged(
            job.uri,
            [h.staged for h in pending],
            schema=job.template.schema,
            keys=spec.keys,
            conflict_on="payload_digest",
            horizon=DEDUP_HORIZON,
            partition_by=spec.partition_by,
            metadata=meta,
            storage_options=job.storage_options,
            index=key_index(job.uri, spec.keys, "payload_digest"),  # as CommitRawHistoryFn
        )
    except Exception as exc:  # noqa: BLE001 - a failed round fails its chunks: a figure of the bench
        ended = time.monotonic()
        attempts = MAX_COMMIT_ATTEMPTS if isinstance(exc, TransientError) else 1
        report.rounds.append((len(pending), attempts, ended - began, False))
        for h in pending:
            report.chunks.append(
                (h.writer, ChunkOutcome(h.chunk, h.started, ended, h.staged.rows, 0, attempts, _error(exc)))
            )
        return
    ended = time.monotonic()
    report.rounds.append((len(pending), result.attempts, ended - began, result.version is not None))
    for step, seconds in result.timings.items():
        report.steps[step] = report.steps.get(step, 0.0) + seconds
    for h, outcome in zip(pending, result.chunks, strict=True):
        report.chunks.append(
            (
                h.writer,
                ChunkOutcome(h.chunk, h.started, ended, h.staged.rows, outcome.inserted, result.attempts),
            )
        )


def commit_rounds(job: WriterJob, writers: int, handoff: Any, start: Any = None) -> CommitterReport:
    """Committer path, the table's one committer: a round is every chunk that arrived, up to
    `ROUND_CHUNKS`, or what arrived within `ROUND_SECONDS` of its first; until all `writers`
    said they are done."""
    if start is not None:
        start.wait(STARTUP_TIMEOUT_S)
    cpu = _cpu_s()
    report = CommitterReport()
    done = 0
    while done < writers:
        pending: list[Handoff] = []
        deadline = None
        while len(pending) < ROUND_CHUNKS and done < writers:
            timeout = RUN_TIMEOUT_S if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                item = handoff.get(timeout=timeout)
            except queue.Empty:
                break
            if isinstance(item, WriterDone):
                done += 1
                continue
            pending.append(item)
            if deadline is None:
                deadline = time.monotonic() + ROUND_SECONDS
        if pending:
            _round(job, pending, report)
    return dataclasses.replace(report, cpu_s=_cpu_s() - cpu)


def _writer_process(job: WriterJob, start: Any, out: Any, handoff: Any) -> None:
    """A spawned writer's entry point: its report goes back on `out`, whatever happens."""
    report: WriterReport
    try:
        report = write_chunks(job, start, handoff)
    except BaseException as exc:  # noqa: BLE001 - the parent must hear of it, not wait for it
        start.abort()
        report = WriterReport(job.writer, error=_error(exc))
        if handoff is not None:
            handoff.put(WriterDone(job.writer))
    out.put(report)


def _committer_process(job: WriterJob, writers: int, start: Any, out: Any, handoff: Any) -> None:
    """The spawned committer's entry point (committer path)."""
    report: CommitterReport
    try:
        report = commit_rounds(job, writers, handoff, start)
    except BaseException as exc:  # noqa: BLE001 - the parent must hear of it, not wait for it
        start.abort()
        report = CommitterReport(error=_error(exc))
    out.put(report)


def template_rows(catalog: Any, event_type: str, rows: int) -> pa.Table:
    """`rows` real raw rows of `event_type`: the producer's valid events (seeded), decoded and
    checked against their contracts, as raw rows with PII tokenized (development key)."""
    # Imported here: the writer processes import this module and need none of these.
    from tidegate.expectations.checks import Rejection, contract_stage, decode_stage
    from tidegate.expectations.contracts import ContractRegistry
    from tidegate.expectations.envelope import RawMessage
    from tidegate.lake.pii import DEV_KEY, PiiProtector, pii_policies
    from tidegate.lake.rows import raw_rows
    from tidegate.lake.tables import raw_schema
    from tidegate.producer import ProduceConfig, generate

    registry = ContractRegistry.from_catalog(catalog)
    subscription = catalog.stream(event_type).subscription
    valid = []
    now = datetime.now(UTC)
    for m in generate(ProduceConfig(types=(event_type,), count=rows, seed=18), catalog, registry):
        message = RawMessage(m.data, m.attributes, str(m.seq), now, subscription)
        envelope = decode_stage(message, catalog)
        checked = envelope if isinstance(envelope, Rejection) else contract_stage(message, envelope, registry)
        if isinstance(checked, Rejection):  # a clean config makes none; a broken catalog would
            raise TidegateError(f"{event_type}: the producer's event {m.seq} was rejected: {checked.rules}")
        valid.append(checked)
    contracts = registry.types[event_type]
    return raw_rows(
        valid,
        raw_schema(contracts),
        pii_policies(catalog, registry)[event_type],
        PiiProtector(DEV_KEY, development=True),
        run_id="bench-writers",
        batch_id="template",
        ingest_time=now,
    )


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _stop(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(10)


def _machine_cpu() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole machine since boot (Linux), None elsewhere: the
    writers, the object store emulator and anything else that runs."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


@dataclass(frozen=True)
class WritersRun:
    started: float  # time.monotonic() when the barrier let the writers go
    reports: list[WriterReport]
    committer: CommitterReport | None  # committer path
    startup_s: float  # from starting the processes to the barrier (imports, building chunks)
    machine_busy: float | None  # share of the machine's CPU in use while they ran (Linux)

    def outcomes(self) -> list[tuple[int, ChunkOutcome]]:
        """(writer, outcome) of every chunk: on the committer path, a staged chunk's outcome is
        its round's (ended: when its round committed)."""
        out = [(r.writer, o) for r in self.reports for o in r.chunks if not o.staged]
        if self.committer is not None:
            out += self.committer.chunks
            committed = {(w, o.chunk) for w, o in self.committer.chunks}
            for r in self.reports:  # staged, never reached a round: cannot happen, counted if it does
                for o in r.chunks:
                    if o.staged and (r.writer, o.chunk) not in committed:
                        out.append((r.writer, dataclasses.replace(o, error="staged, never committed")))
        return sorted(out, key=lambda wo: (wo[0], wo[1].chunk))


def run_writers(jobs: list[WriterJob]) -> WritersRun:
    """Start one spawned process per job (and, on the committer path, the table's committer),
    release them together, wait for every report."""
    ctx = multiprocessing.get_context("spawn")
    committer = jobs[0].path == "committer"
    start = ctx.Barrier(len(jobs) + 1 + committer)
    out = ctx.Queue()
    handoff = ctx.Queue() if committer else None
    procs = [
        ctx.Process(target=_writer_process, args=(job, start, out, handoff), daemon=True) for job in jobs
    ]
    if committer:
        args = (jobs[0], len(jobs), start, out, handoff)
        procs.append(ctx.Process(target=_committer_process, args=args, daemon=True))
    launched = time.monotonic()
    for p in procs:
        p.start()
    reports: list[WriterReport] = []
    rounds: CommitterReport | None = None
    try:
        with suppress(BrokenBarrierError):  # a process failed before the start: its report says why
            start.wait(STARTUP_TIMEOUT_S)
        t0 = time.monotonic()
        cpu0 = _machine_cpu()
        deadline = t0 + RUN_TIMEOUT_S
        while len(reports) + (rounds is not None) < len(procs):
            try:
                got = out.get(timeout=5.0)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    why = (
                        f"exit code {dead[0].exitcode}" if dead else f"no report after {RUN_TIMEOUT_S:.0f} s"
                    )
                    raise TidegateError(f"a bench process stopped without its report ({why})") from None
                continue
            if isinstance(got, CommitterReport):
                rounds = got
            else:
                reports.append(got)
        cpu1 = _machine_cpu()
    finally:
        _stop(procs)
    failed = [r for r in reports if r.error]
    if failed:
        raise TidegateError(f"writer {failed[0].writer} failed: {failed[0].error}")
    if rounds is not None and rounds.error:
        raise TidegateError(f"the committer failed: {rounds.error}")
    busy = None
    if cpu0 and cpu1 and cpu1[1] > cpu0[1]:
        busy = round((cpu1[0] - cpu0[0]) / (cpu1[1] - cpu0[1]), 2)
    return WritersRun(t0, sorted(reports, key=lambda r: r.writer), rounds, round(t0 - launched, 1), busy)


def landed_ids(outcomes: list[tuple[int, ChunkOutcome]], chunk_rows: int) -> set[str]:
    """The event ids of every chunk whose commit returned: what the table must hold, once each."""
    return {
        event_id(writer, o.chunk, i) for writer, o in outcomes if o.error is None for i in range(chunk_rows)
    }


def check_table(
    uri: str, storage_options: dict[str, str] | None, expected: set[str], event_type: str
) -> dict[str, int]:
    """The table against `expected` event ids: rows missing, rows there twice, rows there that
    should not be (a chunk reported failed that landed after all)."""
    keys = list(raw_table(event_type).keys)
    table = open_table(uri, storage_options)
    landed = table.to_pyarrow_table(columns=keys)
    distinct = landed.group_by(keys).aggregate([]).num_rows
    have = set(landed.column("event_id").to_pylist())
    return {
        "rows_in_table": landed.num_rows,
        "missing_rows": len(expected - have),
        "duplicate_rows": landed.num_rows - distinct,
        "unexpected_rows": len(have - expected),
        "table_version": int(table.version()),
    }


def _run_figures(writers: int, chunks: int, template: pa.Table, run: WritersRun) -> dict[str, Any]:
    outcomes = [o for _, o in run.outcomes()]
    ok = [o for o in outcomes if o.error is None]
    wall = max(o.ended for o in outcomes) - run.started
    landed = sum(o.inserted for o in ok)
    times = [o.ended - o.started for o in outcomes]
    ok_times = [o.ended - o.started for o in ok]
    if run.committer is None:
        retries = sum(o.attempts - 1 for o in outcomes)
        commits = len(ok)  # one commit per chunk
    else:
        commits = sum(committed for *_, committed in run.committer.rounds)
        retries = sum(attempts - 1 for _, attempts, _, _ in run.committer.rounds)
    cpu = sum(r.cpu_s for r in run.reports) + (run.committer.cpu_s if run.committer else 0.0)
    cores = os.cpu_count() or 1
    errors = sorted({o.error for o in outcomes if o.error})
    figures: dict[str, Any] = {
        "writers": writers,
        "rows_per_s": round(landed / wall) if wall > 0 else 0,
        "retries": retries,
        "failed_chunks": len(outcomes) - len(ok),
        "p99_commit_s": round(_p(times, 0.99), 3),
        "p50_commit_s": round(statistics.median(times), 3),
        "mean_commit_s": round(statistics.fmean(times), 3),
        "mean_ok_commit_s": round(statistics.fmean(ok_times), 3) if ok_times else None,
        "retries_per_chunk": round(retries / len(outcomes), 2),
        "chunks": len(outcomes),
        "chunks_per_writer": chunks,
        "chunk_rows": template.num_rows,
        "rows_landed": landed,
        "seconds": round(wall, 2),
        "commits_per_s": round(commits / wall, 2) if wall > 0 else 0.0,  # table versions added
        # the writers' (and committer's) CPU over the run's wall time, as a share of this machine's cores
        "cpu_busy": round(cpu / (wall * cores), 2) if wall > 0 else 0.0,
        # the whole machine's CPU in use meanwhile (writers, the emulator, anything else)
        "machine_cpu_busy": run.machine_busy,
        "cpu_oversubscribed": writers > cores,
        "startup_s": run.startup_s,
        "errors": errors[:3],
    }
    if run.committer is not None:
        staged = [o.ended - o.started for r in run.reports for o in r.chunks if o.staged]
        sizes = [n for n, _, _, _ in run.committer.rounds]
        figures |= {
            "rounds": len(sizes),
            "mean_chunks_per_round": round(statistics.fmean(sizes), 1) if sizes else 0.0,
            "mean_round_s": round(statistics.fmean(s for _, _, s, _ in run.committer.rounds), 3)
            if sizes
            else 0.0,
            "mean_stage_s": round(statistics.fmean(staged), 3) if staged else 0.0,
            # where the committer's rounds went: open, lookup (dedup keys), plan, commit
            **{f"round_{k}": round(v / len(sizes), 3) for k, v in sorted(run.committer.steps.items())},
        }
    return figures


@dataclass(frozen=True)
class _Store:
    """Where the runs' tables go."""

    uri: Callable[[str], str]  # a table's name -> its URI
    storage_options: dict[str, str] | None = None
    requests: Callable[[], dict[str, int]] | None = None  # the object store's counters so far


@contextmanager
def _store(store: str, latency_ms: float | None) -> Iterator[_Store]:
    if store == "local":
        work = tempfile.mkdtemp(prefix="tidegate-bench-writers-")
        try:
            yield _Store(lambda name: os.path.join(work, name))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    # Imported here: only this store starts an emulator.
    from tidegate.infra.gcs_emulator import private_gcs_emulator

    with private_gcs_emulator(latency_ms=latency_ms or 0.0) as emu:
        yield _Store(emu.uri, dict(emu.storage_options), lambda: dataclasses.asdict(emu.stats()))


def bench_writers(
    catalog: Any,
    writers: list[int],
    *,
    chunks: int = 2,
    chunk_rows: int = 1000,
    store: str = "local",
    latency_ms: float | None = None,
    path: str = "merge",
    event_type: str = "shop.order.placed",
    progress: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """One run per entry of `writers`, each on a fresh table: {"runs": [figures per run]}."""
    if path not in PATHS:
        raise TidegateError(f"unknown write path {path!r}", hint=f"paths: {', '.join(PATHS)}")
    if store not in STORES:
        raise TidegateError(f"unknown store {store!r}", hint=f"stores: {', '.join(STORES)}")
    catalog.stream(event_type)  # an unknown type: a ConfigError naming the known ones
    template = template_rows(catalog, event_type, chunk_rows)
    runs = []
    with _store(store, latency_ms) as where:
        storage_options = where.storage_options
        for n in writers:
            uri = where.uri(f"bench-writers-{n}-{uuid.uuid4().hex[:8]}/raw/{event_type}")
            run_id = f"bench-writers-{n}"
            # the table as a running job finds it: created, with rows of its own
            seed = write_chunks(WriterJob(-1, uri, event_type, template, 1, run_id, storage_options))
            if seed.chunks[0].error:
                raise TidegateError(f"cannot create the bench table {uri}: {seed.chunks[0].error}")
            progress(f"{n} writer(s) x {chunks} chunk(s) of {chunk_rows:,} rows, {path}, {store} ...")
            jobs = [
                WriterJob(w, uri, event_type, template, chunks, run_id, storage_options, path)
                for w in range(n)
            ]
            before = where.requests() if where.requests else {}
            run = run_writers(jobs)
            figures = _run_figures(n, chunks, template, run)
            if where.requests:  # what the writers asked of the object store (the check excluded)
                after = where.requests()
                figures |= {f"store_{k}": after[k] - before.get(k, 0) for k in after}
            expected = landed_ids([(-1, seed.chunks[0]), *run.outcomes()], template.num_rows)
            check = check_table(uri, storage_options, expected, event_type)
            figures |= {k: v for k, v in check.items() if k != "rows_in_table"}
            figures["exactly_once"] = (
                check["missing_rows"] == 0 and check["duplicate_rows"] == 0 and check["unexpected_rows"] == 0
            )
            figures |= {
                "store": store,
                "latency_ms": latency_ms or 0.0,
                "path": path,
                "event_type": event_type,
            }
            progress(
                f"  {n} writer(s): {figures['rows_per_s']:,} rows/s, {figures['retries']} retries, "
                f"{figures['failed_chunks']} failed chunk(s), commit p99 {figures['p99_commit_s']} s"
            )
            runs.append(figures)
    return {"runs": runs}
