"""The batch worker: a child process that runs each micro-batch's Beam pipeline, so the ingest
uses both cores.

    worker = BatchWorker(catalog_path)                         # spawns the process, warms it up
    commits, metrics = worker.run(config, batch_id, messages)  # batch.InProcess.run, over there
    worker.close()

Why a process: local mode is bound by one interpreter. On a 100k backlog the driver thread held
the GIL ~9 s of a 20 s run (decode, contract, GX, the rows of each commit, Beam's planning) while
the pullers, the bookkeeper and the projector waited for it; the two cores were two-thirds
busy (docs/architecture.md, "Where the CPU goes"). The worker takes the driver's share to the
other core; the ingest process keeps pulling, leases, accounting, the ledger, acks and the
projector, and waits for the worker without holding the GIL.

What crosses the boundary, and what does not:
- in: the batch id and its `RawMessage`s (pickled, ~2 us a message); out: the `TableCommit`s,
  Beam's metric results and the run's seconds, or the run's exception (tidegate's own error
  classes as they are, anything unpicklable as a `RuntimeError` naming it);
- with each batch, the parent's environment (`_mirror`) and log level: the worker runs it as
  the parent would at that moment (the PII key, TIDEGATE_HOME, the crash-test hooks);
- log records the worker emits during a run come back with its answer and are handled by the
  parent's loggers (its stderr, its log file, a test's `caplog`);
- the split, retry and poison logic, tracing spans and the accounting stay in the parent
  (`batch.BatchRunner`): the worker runs one attempt at a time, whatever it is asked;
- the raw writers' dedup index (lake.keyindex) lives in the worker, the lake's only raw writer
  while the parent holds the lake lock;
- the worker dies with its parent (`PR_SET_PDEATHSIG`): a killed ingest never leaves a writer
  behind that a restarted one would race; the crash-test hook (`tidegate.faults`) kills the
  parent too, so a fault point in a writer still kills "the ingest";
- if the worker dies (a native crash, the OOM killer), the attempt fails with `WorkerDied`: a
  crash like any other, so the batch is split to find the message; the next attempt starts a
  new worker (~3 s of imports).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from tidegate.expectations.envelope import RawMessage
from tidegate.transforms.base import IngestConfig
from tidegate.transforms.writes import TableCommit

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


class WorkerDied(RuntimeError):
    """The batch worker process ended during a run: a crash (native, OOM), not bad data."""


# -c, not -m: the package's __init__ imports this module before runpy would run it as __main__
_ENTRY = f"import sys; from {__name__} import main; main(sys.argv[1:])"


class _Pipes:
    """Both directions of the worker's link: send on one pipe, receive on the other."""

    def __init__(self, receive: Connection, send: Connection) -> None:
        self._receive, self._send = receive, send

    def send(self, obj: Any) -> None:
        self._send.send(obj)

    def recv(self) -> Any:
        return self._receive.recv()

    def close(self) -> None:
        self._receive.close()
        self._send.close()


class BatchWorker:
    def __init__(self, catalog_path: str | None = None) -> None:
        """`catalog_path`: contracts and GX suites to load while the worker waits for its first
        batch. One worker serves any number of runs, each with its own `IngestConfig`."""
        self.catalog_path = catalog_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: _Pipes | None = None
        self.starts = 0
        self.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """A fresh interpreter (not fork: never fork after delta-rs, platform facts; not
        multiprocessing's spawn either, which re-imports the caller's `__main__`), talking over
        two pipes."""
        down_r, down_w = os.pipe()  # parent -> worker
        up_r, up_w = os.pipe()  # worker -> parent
        try:
            proc = subprocess.Popen(  # noqa: S603 - this interpreter, this module, two fd numbers
                [sys.executable, "-c", _ENTRY, str(down_r), str(up_w)],
                pass_fds=(down_r, up_w),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            for fd in (down_r, down_w, up_r, up_w):
                os.close(fd)
            raise
        os.close(down_r)
        os.close(up_w)
        self._proc = proc
        self._conn = _Pipes(Connection(up_r, writable=False), Connection(down_w, readable=False))
        self._conn.send((self.catalog_path, os.getpid(), logging.getLogger().getEffectiveLevel()))
        self.starts += 1

    def run(
        self, config: IngestConfig, batch_id: str, messages: list[RawMessage]
    ) -> tuple[list[TableCommit], Any]:
        """`batch.InProcess.run` in the worker: the commits and Beam's metric results, or the
        run's error raised here; `WorkerDied` if the process ended (the next run starts it again)."""
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self.start()
        assert self._conn is not None
        level = logging.getLogger().getEffectiveLevel()
        try:
            self._conn.send((config, dict(os.environ), level, batch_id, messages))
            kind, payload, records = self._conn.recv()
        except (EOFError, OSError) as exc:
            code = self._proc.wait() if self._proc is not None else None
            self.close()
            raise WorkerDied(
                f"the batch worker died during batch {batch_id} ({_exit_text(code)}): "
                "a crash in native code or the OOM killer; see its stderr above and dmesg"
            ) from exc
        for record in records:
            logging.getLogger(record.name).handle(record)
        if kind == "error":
            raise payload
        return payload  # type: ignore[no-any-return]

    def rss_mib(self, peak: bool = False) -> float:
        """The worker's resident set (`peak`: its high-water mark), from /proc; 0 if it is gone."""
        pid = self.pid
        if pid is None:
            return 0.0
        key = "VmHWM:" if peak else "VmRSS:"
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith(key):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def close(self) -> None:
        """Stop the worker at once: between runs it holds nothing unwritten (a run returns only
        once its commits are done), and one still importing would take seconds to read a polite
        request (a CLI mistake must not wait for it)."""
        proc, self._proc = self._proc, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_SHARED: dict[str, BatchWorker] = {}
_SHARED_LOCK = threading.Lock()


def shared_worker(catalog_path: str | None = None) -> BatchWorker:
    """This process's batch worker, started on first use and closed at exit: `tidegate ingest`
    (`cli/ingest.py`) and the benches use it, so a process that ingests many times (the CLI
    called in-process by the tests, a bench's warm-up then its measured run) starts it once. A
    worker that died is started again by its next run."""
    with _SHARED_LOCK:
        worker = _SHARED.get("worker")
        if worker is None:
            worker = _SHARED["worker"] = BatchWorker(catalog_path)
            atexit.register(worker.close)
        return worker


def shared_rss_mib(peak: bool = False) -> float:
    """The shared worker's resident set (`peak`: its high-water mark); 0 without one. The
    benches add it to their own: the ingest is both processes."""
    worker = _SHARED.get("worker")
    return worker.rss_mib(peak) if worker is not None else 0.0


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class _Collect(logging.Handler):
    """Log records of the worker, sent back with the run's answer (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        records, self.records = self.records, []
        return records


def _die_with(parent: int) -> None:
    """SIGKILL this process when its parent dies (Linux); if the parent is already gone, now."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it pickles and unpickles, else a RuntimeError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes, just made
        return exc
    except Exception:  # noqa: BLE001 - anything that does not round-trip
        return RuntimeError(f"{exc.__class__.__name__}: {exc}")


def _mirror(environ: dict[str, str]) -> None:
    """Run each batch under the parent's environment as it is now: the PII key, TIDEGATE_HOME,
    storage options and the crash-test hooks may have changed since the worker started (the
    tests change them between in-process CLI runs)."""
    from tidegate import faults

    if environ.get(faults.TRANSIENT_ENV) != os.environ.get(faults.TRANSIENT_ENV):
        faults.reset_transient()  # a new TIDEGATE_FAULT_TRANSIENT=N counts from 0, as in a new process
    for key in [k for k in os.environ if k not in environ]:
        del os.environ[key]
    os.environ.update(environ)


def _serve(conn: _Pipes) -> None:
    catalog_path, parent, level = conn.recv()
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it finishes the batch
    gc.set_threshold(50_000, 20, 100)  # as the CLI's (cli/app.py)
    from tidegate import faults

    faults.ALSO_KILL = parent  # a fault point kills the ingest, not only its worker
    collect = _Collect()
    root = logging.getLogger()
    root.handlers = [collect]
    root.setLevel(level)
    with contextlib.suppress(ValueError, OSError, AttributeError):
        import faulthandler

        faulthandler.enable(all_threads=True)

    from tidegate.transforms.base import suite_validator

    from .batch import InProcess

    started = time.perf_counter()
    if catalog_path is not None:
        suite_validator(catalog_path)  # contracts and GX before the first batch needs them
    log.info(
        "batch worker %d ready (contracts and GX loaded in %.1fs; parent %d)",
        os.getpid(),
        time.perf_counter() - started,
        parent,
    )
    runner: InProcess | None = None
    runs = 0
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        config, environ, level, batch_id, messages = job
        _mirror(environ)
        root.setLevel(level)
        if runner is None or runner.config != config:
            runner = InProcess(config)  # a new run: its graph is built on its first batch
        try:
            answer: tuple[str, Any] = ("ok", runner.run(batch_id, messages))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
            answer = ("error", _portable(exc))
        runs += 1
        if runs == 1:
            gc.freeze()  # as the driver does after its first batch
        try:
            conn.send((answer[0], answer[1], collect.take()))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            conn.send(("error", RuntimeError(f"the batch's result could not be sent back: {exc}"), []))
        del job, messages


def main(fds: list[str]) -> None:
    """The worker process's entry point (`BatchWorker.start`): the two pipes' fd numbers."""
    _serve(_Pipes(Connection(int(fds[0]), writable=False), Connection(int(fds[1]), readable=False)))
