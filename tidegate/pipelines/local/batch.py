"""One micro-batch through Beam: the ingest composites on the in-process runner, a poison
message isolated by splitting, transient failures retried.

    runner = BatchRunner(config)
    result = runner.run(batch_id, messages)      # -> BatchRun(commits, poison, metrics, stages)

Each run is **one bounded Beam pipeline** on the in-process `FnApiRunner`, pinned explicitly
(`DirectRunner` would first try to download Prism; platform facts). The messages reach it in
memory through `HANDOFF` (a `beam.Create` of 50k messages pickles them and costs seconds): the
pipeline carries only a key, `TakeBatch` swaps it for the messages in the same process, and
`CollectCommits` hands back what the graph emits. The writers commit every table of the batch
side by side on `tidegate.transforms.ingest.COMMITS` (`parallel_commits`), and the run drains their
`TableCommit`s by batch id once Beam returns.

Every batch runs the same graph, so the runner keeps what Beam would rebuild for each run
(`WarmRunner`): the graph's translation (once per runner) and the SDK worker with its bundle
processors (the DoFns deserialized, set up, and checked; ~40 ms of every batch, a third of a
small one). Between runs they are reset the way a streaming worker resets them between bundles.

Failures are sorted the way tidegate.errors says:
- `TidegateError` (a person must act) stops the run at once;
- `TransientError` (a commit conflict that outlasted its retries, the lake briefly unreachable)
  is retried with bounded backoff, then stops the run as a PlatformError (exit 3); nothing is
  acked, so nothing is lost;
- anything else is a crash on some message (a bug, a resource limit): the batch is split in
  halves and each half run again, until the rest has committed and the culprit stands alone.
  It is returned as `poison`: the driver nacks it and logs its id, and Pub/Sub's dead-letter
  policy moves it aside after `max_delivery_attempts`. The writers' idempotent commits make the
  re-runs safe: whatever a failed half had already committed is skipped as a duplicate.
- unless the crash is not about a message: when no part of the batch commits (or more than
  `MAX_POISON` messages crash, or that many one-message batches crash in a row) the failure
  is systematic (a bug, a broken table) and the original error stops the run with nothing
  acked, instead of sending healthy messages towards the dead-letter topic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_fn_api_pb2, beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner, translations
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner, RunnerResult
from apache_beam.runners.portability.fn_api_runner.worker_handlers import WorkerHandlerManager
from apache_beam.runners.worker.sdk_worker import BundleProcessorCache

from tidegate.errors import PlatformError, TidegateError, TransientError
from tidegate.expectations.envelope import RawMessage
from tidegate.lake import tracing
from tidegate.lake.delta import log_cleaned_under_read
from tidegate.transforms.base import IngestConfig
from tidegate.transforms.ingest import Ingest
from tidegate.transforms.ingest_types import Chunk
from tidegate.transforms.writes import COMMITS, TableCommit

log = logging.getLogger(__name__)

TRANSIENT_ATTEMPTS = 5  # runs of one batch before a TransientError stops ingestion
TRANSIENT_BACKOFF = (0.5, 8.0)  # first and longest pause between them, seconds
MAX_POISON = 10  # more crashing messages than this in one batch (or one-message batches in a row): systematic


class Handoff:
    """Objects handed to and from an in-process Beam run by key (module docstring). The runner
    pickles DoFns and elements; a key crosses that boundary for free, 20k messages do not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inputs: dict[str, Any] = {}
        self._outputs: dict[str, list[Any]] = {}

    def put(self, value: Any, key: str) -> str:
        with self._lock:
            self._inputs[key] = value
            self._outputs[key] = []
        return key

    def take(self, key: str) -> Any:
        with self._lock:
            return self._inputs.pop(key)

    def collect(self, value: Any, key: str) -> None:
        with self._lock:
            self._outputs[key].append(value)

    def results(self, key: str) -> list[Any]:
        with self._lock:
            self._inputs.pop(key, None)
            return self._outputs.pop(key, [])


HANDOFF = Handoff()


def _take_chunk(key: str) -> Chunk:
    return HANDOFF.take(key)  # type: ignore[no-any-return]


def _collect(value: Any, key: str) -> None:
    HANDOFF.collect(value, key)  # a module function: Beam pickles it by reference


class _KeptHandlers(WorkerHandlerManager):
    """A `WorkerHandlerManager` that outlives a run: `close_all` (the end of every run) keeps the
    SDK worker and its cached bundle processors; `close` ends them."""

    def register_process_bundle_descriptor(
        self, process_bundle_descriptor: beam_fn_api_pb2.ProcessBundleDescriptor
    ) -> None:
        """Beam numbers a run's descriptors from 0, so a cached processor is found by the id of
        the same stage in the next run. Should a stage ever translate differently, its cached
        processors are dropped rather than run with another stage's graph."""
        known = self._process_bundle_descriptors.get(process_bundle_descriptor.id)
        if known is not None and known != process_bundle_descriptor:
            for handlers in self._cached_handlers.values():
                for handler in handlers:
                    cache = getattr(handler, "bundle_processor_cache", None)
                    if cache is not None:
                        BundleProcessorCache._shutdown_cached_bundle_processors(
                            cache.cached_bundle_processors[process_bundle_descriptor.id]
                        )
        super().register_process_bundle_descriptor(process_bundle_descriptor)

    def close_all(self) -> None:
        """The end of a run: keep everything for the next one."""

    def close(self) -> None:
        WorkerHandlerManager.close_all(self)


_KEPT = threading.local()  # the _KeptHandlers of the WarmRunner running on this thread, if any
_SEAM = "WorkerHandlerManager"  # the name in fn_runner that run_stages constructs its manager by
_BEAM_MANAGER = getattr(fn_runner, _SEAM)


def _worker_handler_manager(environments: Any, provision_info: Any) -> WorkerHandlerManager:
    """Stands in for `fn_runner.WorkerHandlerManager`, which `FnApiRunner.run_stages` constructs
    once per run: a WarmRunner's kept one on its own thread, Beam's own class for every other run."""
    kept = getattr(_KEPT, "manager", None)
    return kept if kept is not None else _BEAM_MANAGER(environments, provision_info)


def reusable(proto: beam_runner_api_pb2.Pipeline) -> bool:
    """Whether a graph's runs may share bundle processors: nothing in it keeps state between
    bundles through the runner (side inputs, user state, timers) that a kept worker would carry
    over from one run into the next."""
    for t in proto.components.transforms.values():
        if t.spec.urn != common_urns.primitives.PAR_DO.urn:
            continue
        payload = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload)
        if payload.side_inputs or payload.state_specs or payload.timer_family_specs:
            return False
    return True


class WarmRunner(FnApiRunner):
    """The in-process runner for one graph run many times (module docstring).

    `run_via_runner_api(proto)` runs like FnApiRunner's, on a kept SDK worker whose bundle
    processors (one per fused stage) are built on the first run and reset after each bundle,
    as a long-lived worker does: a DoFn's `setup` runs once, `start_bundle`/`finish_bundle`
    every run, metrics are per bundle. Beam keeps no hook for this, so `fn_runner`'s module name
    `WorkerHandlerManager` dispatches on the running thread (`_worker_handler_manager`), and
    `kept` says whether it took effect (tests/test_batch.py checks it with this Beam). Runs are
    plain FnApiRunner runs until the owner sets `warm` (after checking the graph: `reusable`).
    A run that fails ends the kept worker; the next starts afresh. Call `close` when done."""

    def __init__(self) -> None:
        super().__init__()
        if getattr(fn_runner, _SEAM) is _BEAM_MANAGER:
            setattr(fn_runner, _SEAM, _worker_handler_manager)
        self.warm = False  # set once the graph is known to be `reusable`
        self._kept: _KeptHandlers | None = None
        self.workers_started = 0  # kept workers started over this runner's life

    @property
    def kept(self) -> bool:
        """The last run left a worker (with its bundle processors) for the next one."""
        return self._kept is not None and bool(self._kept._cached_handlers)

    def run_stages(
        self, stage_context: translations.TransformContext, stages: list[translations.Stage]
    ) -> RunnerResult:
        if not self.warm:
            return super().run_stages(stage_context, stages)
        if self._kept is None:
            self._kept = _KeptHandlers(stage_context.components.environments, self._provision_info)
            self.workers_started += 1
        _KEPT.manager = self._kept
        try:
            return super().run_stages(stage_context, stages)
        except BaseException:
            self.close()  # whatever state the failed bundles left, the next run starts afresh
            raise
        finally:
            _KEPT.manager = None

    def close(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            kept.close()


@dataclass
class BatchRun:
    """What running one micro-batch produced."""

    commits: list[TableCommit] = field(default_factory=list)
    poison: list[int] = field(default_factory=list)  # indexes (into the messages) left to Pub/Sub
    metrics: list[Any] = field(default_factory=list)  # Beam metric query results, one per run
    runs: int = 0
    beam_seconds: float = 0.0  # running the Beam pipeline, commits included


def unwrap(exc: BaseException) -> BaseException:
    """Beam wraps DoFn errors; surface tidegate's own (a person's, a transient one) as they are."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, TidegateError | TransientError):
            return cur
        if log_cleaned_under_read(cur) and "not found" in str(cur):
            # a log cleanup beside the batch (the compactor's clean_log) deleted a log file a
            # read had just listed: the table is fine, the batch runs again (never poison)
            return TransientError(f"a table's commit log changed under a read: {str(cur).splitlines()[0]}")
        cur = cur.__cause__ or cur.__context__
    return exc


class BatchRunner:
    def __init__(
        self, config: IngestConfig, sleep: Callable[[float], None] = time.sleep, single_writer: bool = False
    ) -> None:
        """`single_writer`: the caller holds the lake lock, so the writers may dedup in memory and
        append (lake.keyindex) instead of MERGE."""
        # every table of a batch commits side by side (transforms.ingest.CommitPool)
        self.config = dataclasses.replace(config, parallel_commits=True, single_writer=single_writer)
        self.sleep = sleep
        self.options = PipelineOptions(["--direct_running_mode=in_memory", "--direct_num_workers=1"])
        self._runner = WarmRunner()
        self._slot = f"batch-{uuid.uuid4().hex}"  # this runner's HANDOFF key
        self._proto: Any = None
        self.successes = 0  # Beam runs that committed, over this runner's life
        self.single_failures = 0  # one-message batches in a row whose message crashed

    def run(self, batch_id: str, messages: list[RawMessage]) -> BatchRun:
        out = BatchRun()
        try:
            self._with_retries(batch_id, messages, out)
            return out
        except (TidegateError, TransientError):
            raise
        except Exception as exc:  # noqa: BLE001 - a crash: poison or systematic (module docstring)
            first = exc
        log.warning(
            "batch %s (%d messages) failed (%s: %s); splitting it to isolate the message",
            batch_id,
            len(messages),
            first.__class__.__name__,
            str(first)[:200],
        )
        tracing.event("split", {"messages": len(messages), "error": first.__class__.__name__})
        before = self.successes
        suspects: list[tuple[int, BaseException]] = [(0, first)] if len(messages) == 1 else []
        if len(messages) > 1:
            self._split(batch_id, messages, list(range(len(messages))), out, suspects)
        # Poison only if the rest of this batch committed (a batch of one: if the last batch
        # did); otherwise every part failed alike, which no single message explains: stop.
        isolated = self.successes > before or (len(messages) == 1 and self.single_failures < MAX_POISON)
        if not isolated or len(suspects) > MAX_POISON:
            raise first
        self.single_failures = self.single_failures + 1 if len(messages) == 1 else 0
        for i, crash in suspects:
            m = messages[i]
            log.error(
                "poison message %s (ce-id %s) on %s crashed processing (%s: %s); left to Pub/Sub's "
                "dead-letter policy, the rest of batch %s is committed",
                m.message_id,
                m.attributes.get("ce-id", "?"),
                m.subscription,
                crash.__class__.__name__,
                str(crash)[:200],
                batch_id,
            )
            out.poison.append(i)
            tracing.event(
                "poison",
                {
                    "messaging.message.id": m.message_id,
                    "cloudevents.event_id": m.attributes.get("ce-id", "?"),
                    "error": crash.__class__.__name__,
                },
            )
        return out

    def _split(
        self,
        batch_id: str,
        messages: list[RawMessage],
        index: list[int],
        out: BatchRun,
        suspects: list[tuple[int, BaseException]],
    ) -> None:
        half = len(index) // 2
        for part in (index[:half], index[half:]):
            try:
                self._with_retries(batch_id, [messages[i] for i in part], out)
            except (TidegateError, TransientError):
                raise
            except Exception as exc:  # noqa: BLE001 - narrow it down
                if len(part) > 1:
                    self._split(batch_id, messages, part, out, suspects)
                    continue
                suspects.append((part[0], exc))
                if len(suspects) > MAX_POISON:
                    return  # systematic: run() raises

    def _with_retries(self, batch_id: str, messages: list[RawMessage], out: BatchRun) -> None:
        pause, longest = TRANSIENT_BACKOFF
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            try:
                self._traced_run_once(batch_id, messages, out, attempt)
                self.successes += 1
                self.single_failures = 0
                return
            except TransientError as exc:
                if attempt == TRANSIENT_ATTEMPTS:
                    raise PlatformError(
                        f"batch {batch_id} failed {attempt} times on a transient error: {exc}",
                        hint="nothing of it was acknowledged, so nothing is lost; check that the lake "
                        "is reachable and that no other writer fights over it, then run ingest again",
                    ) from None
                log.warning("batch %s: %s; retrying in %.1fs", batch_id, exc, pause)
                self.sleep(pause)
                pause = min(pause * 2, longest)

    def _traced_run_once(
        self, batch_id: str, messages: list[RawMessage], out: BatchRun, attempt: int
    ) -> None:
        """`_run_once` as a `beam.run` span (a child of the caller's), with one `commit` child per
        table commit, placed where the writer timed it (docs/tracing.md)."""
        attributes = tracing.attributes_of(messages=len(messages), attempt=attempt)
        with tracing.tracer().start_as_current_span("beam.run", attributes=attributes) as span:
            before = len(out.commits)
            self._run_once(batch_id, messages, out)
            if not span.is_recording():
                return
            for c in out.commits[before:]:
                if not c.committed_at:
                    continue
                end = int(c.committed_at * 1e9)
                tracing.span_between(
                    "commit",
                    end - c.ms * 1_000_000,
                    end,
                    span,
                    tracing.attributes_of(
                        kind=c.kind,
                        table=c.table,
                        event_type=c.event_type,
                        version=c.version,
                        received=c.received,
                        offered=c.offered,
                        inserted=c.inserted,
                        files=c.files,
                        bytes=c.bytes,
                        conflicts=c.conflicts,
                    ),
                )

    def _execute(self) -> Any:
        """Run the batch pipeline. Every batch runs the same graph, reading its messages from this
        runner's HANDOFF slot, so the graph is built and translated once (that cost ~120 ms per
        batch): the first run goes the documented way (`run_pipeline`, which also sets the runner
        up), later ones re-run a copy of its runner proto on the kept worker (WarmRunner).
        FnApiRunner is pinned: never DirectRunner's Prism download or a network fallback."""
        if self._proto is None:
            p = beam.Pipeline(runner=self._runner, options=self.options)
            commits = (
                p
                | "ReadEvents" >> beam.Create([self._slot], reshuffle=False)
                | "TakeBatch" >> beam.Map(_take_chunk).with_output_types(Chunk)
                | "Ingest" >> Ingest(self.config)
            ).commits
            commits | "CollectCommits" >> beam.Map(_collect, self._slot)
            result = self._runner.run_pipeline(p, self.options)
            self._proto = p.to_runner_api(default_environment=self._runner._default_environment)
            self._runner.warm = reusable(self._proto)
            return result
        proto = beam_runner_api_pb2.Pipeline()
        proto.CopyFrom(self._proto)
        return self._runner.run_via_runner_api(proto, self.options)

    def warm_up(self) -> float:
        """Build the graph and the kept worker's bundle processors with a run of no messages,
        before the first batch needs them (the driver calls it while its pullers fill the first
        batch: ~0.4-0.8 s of Beam's own work, on a backlog's critical path otherwise). Nothing
        is committed (the writers have nothing to write). A failure is not reported here: the
        first batch meets it again and handles it as every batch does. Returns the seconds."""
        started = time.perf_counter()
        out = BatchRun()
        try:
            for _ in range(2):  # the documented first run, then the kept worker's (WarmRunner)
                self._run_once(f"warm-up-{uuid.uuid4().hex[:8]}", [], out)
        except Exception as exc:  # noqa: BLE001 - the first batch reports it (docstring)
            log.debug("warm-up run failed (%s: %s); the first batch builds afresh", type(exc).__name__, exc)
            self.close()
        return time.perf_counter() - started

    def close(self) -> None:
        """End the kept SDK worker (WarmRunner); a later run starts a new one."""
        self._runner.close()

    def _run_once(self, batch_id: str, messages: list[RawMessage], out: BatchRun) -> None:
        key = HANDOFF.put(Chunk(batch_id, messages), self._slot)
        started = time.perf_counter()
        try:
            result = self._execute()
            result.wait_until_finish()
        except Exception as exc:  # noqa: BLE001 - Beam wraps everything; surface ours
            HANDOFF.results(key)
            # nothing of a failed run may still be committing when it is retried or split; the
            # run's own error is the one to report
            with contextlib.suppress(Exception):
                COMMITS.drain(batch_id)
            raise unwrap(exc) from None
        else:
            try:
                commits = COMMITS.drain(batch_id)
            except Exception as exc:  # noqa: BLE001 - same handling as an error inside the run
                HANDOFF.results(key)
                raise unwrap(exc) from None
        finally:
            out.runs += 1
            out.beam_seconds += time.perf_counter() - started
        out.commits += HANDOFF.results(key) + commits
        out.metrics.append(result.metrics().query())
