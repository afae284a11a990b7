"""Where a benchmark's CPU goes: this process's threads by job, and another process (the
emulator's JVM), over one span of work.

    with CpuMeter(other_pid=emulator.pid) as cpu:
        LocalIngest(...).run()
    figures |= cpu.figures(messages=100_000)
    # {"cpu_process_s": 15.1, "cpu_emulator_s": 7.8, "cpu_thread_batch_s": 7.5,
    #  "cpu_thread_pullers_s": 2.7, ..., "cpu_native_threads_s": 2.9, "cpu_process_us_per_msg": 151}

Read from `/proc/self/task/<native_id>/stat` (utime + stime), sampled every `every` seconds by a
daemon thread that maps `threading.enumerate()`'s `native_id` to names. Not from py-spy: on this
stack py-spy counts a thread blocked in a gRPC call or `Condition.wait` as running (docs/
architecture.md, "Where a 100k backlog's CPU goes, thread by thread"). A thread that ends between
two samples loses at most `every` seconds of its CPU; what no Python thread accounts for
(gRPC core, delta-rs, Arrow) is `cpu_native_threads_s`. Linux only, like the benches' RSS.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType

# a thread's name -> the job it does (the first prefix that matches); anything else: "other"
JOBS = (
    ("MainThread", "batch"),  # the driver: Beam, decode, contract, GX, rows
    ("pull-", "pullers"),  # pull-<subscription>-<n> (pipelines.local.consumer)
    ("commit_", "commits"),  # the writers' commit pool (transforms.ingest)
    ("tidegate-bookkeeper", "bookkeeper"),  # ledger, acks, lineage
    ("tidegate-leases", "leases"),
    ("tidegate-projector", "projector"),
    ("project_", "projector"),
    ("tidegate-compactor", "compactor"),
    ("tidegate-cpu-meter", "meter"),  # this module's own sampler
)
_TICK = os.sysconf("SC_CLK_TCK")


def job_of(name: str) -> str:
    for prefix, job in JOBS:
        if name.startswith(prefix):
            return job
    return "other"


def _cpu_seconds(stat: Path) -> float | None:
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


class CpuMeter:
    """CPU seconds over the `with` block (module docstring)."""

    def __init__(self, other_pid: int | None = None, every: float = 0.2) -> None:
        self.other_pid = other_pid
        self.every = every
        self._base: dict[int, float] = {}  # native id -> CPU seconds when first seen
        self._last: dict[int, tuple[str, float]] = {}  # native id -> (name, latest CPU seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = (0.0, 0.0)  # this process's CPU seconds at the start and the end
        self._other: tuple[float | None, float | None] = (None, None)  # the same for other_pid

    def _sample(self, first: bool = False) -> None:
        for t in threading.enumerate():
            if t.native_id is None:
                continue
            cpu = _cpu_seconds(Path(f"/proc/self/task/{t.native_id}/stat"))
            if cpu is None:
                continue
            if t.native_id not in self._base:
                # a thread already running at the start counts from there; a later one from 0
                self._base[t.native_id] = cpu if first else 0.0
            self._last[t.native_id] = (t.name, cpu)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _other_cpu(self) -> float | None:
        if self.other_pid is None:
            return None
        return _cpu_seconds(Path(f"/proc/{self.other_pid}/stat"))

    def __enter__(self) -> CpuMeter:
        self._sample(first=True)
        self._process = (time.process_time(), 0.0)
        self._other = (self._other_cpu(), None)
        self._thread = threading.Thread(target=self._run, name="tidegate-cpu-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._sample()
        self._process = (self._process[0], time.process_time())
        self._other = (self._other[0], self._other_cpu())

    def by_job(self) -> dict[str, float]:
        """CPU seconds of this process's Python threads over the block, by job."""
        out: dict[str, float] = {}
        for tid, (name, cpu) in self._last.items():
            job = job_of(name)
            out[job] = out.get(job, 0.0) + max(0.0, cpu - self._base.get(tid, 0.0))
        return out

    def figures(self, messages: int | None = None) -> dict[str, float]:
        """Flat figures for a bench's JSON (module docstring); empty before the block has run."""
        if self._thread is None:
            return {}
        process = self._process[1] - self._process[0]
        jobs = self.by_job()
        out = {"cpu_process_s": round(process, 2)}
        start, end = self._other
        if start is not None and end is not None:
            out["cpu_emulator_s"] = round(end - start, 2)
        for job, seconds in sorted(jobs.items(), key=lambda kv: -kv[1]):
            out[f"cpu_thread_{job}_s"] = round(seconds, 2)
        out["cpu_native_threads_s"] = round(max(0.0, process - sum(jobs.values())), 2)
        if messages:
            out["cpu_process_us_per_msg"] = round(process / messages * 1e6)
        return out
