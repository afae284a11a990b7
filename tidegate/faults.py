"""Crash-test hook: `TIDEGATE_FAULT_INJECT=<name>` kills the process at the named point.

Used only by the tests that prove exactly-once (and self-healing aggregates) across a SIGKILL
at each crash point: `before_commit` (raw history), `after_commit` (raw committed, not acked),
`before_aggregates_commit` (raw committed and acked, the aggregate projection not yet committed).
"""

from __future__ import annotations

import os
import signal

from tidegate.errors import TransientError

FAULT_ENV = "TIDEGATE_FAULT_INJECT"


ALSO_KILL: int | None = None  # in local mode's batch worker: the ingest process (its parent)


def fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        if ALSO_KILL is not None:  # the point kills the ingest, whichever of its processes reached it
            os.kill(ALSO_KILL, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


CRASH_ON_ENV = "TIDEGATE_FAULT_CRASH_ON"


def crash_on() -> str | None:
    """`TIDEGATE_FAULT_CRASH_ON=<ce-id>`: processing any message with that ce-id raises, as a bug
    or a resource limit would (the poison-message test). Read once per worker (DoFn.setup)."""
    return os.environ.get(CRASH_ON_ENV) or None


DIE_ON_ENV = "TIDEGATE_FAULT_DIE_ON"


def die_on() -> str | None:
    """`TIDEGATE_FAULT_DIE_ON=<ce-id>`: processing a message with that ce-id SIGKILLs the process
    that runs the batch, as a crash in native code or the OOM killer would (the batch worker
    test: the ingest survives it, pipelines/local/worker.py). Read once per worker (DoFn.setup)."""
    return os.environ.get(DIE_ON_ENV) or None


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class InjectedCrash(RuntimeError):
    """Raised by the crash-on hook: not bad data, a crash (so never quarantined)."""


TRANSIENT_ENV = "TIDEGATE_FAULT_TRANSIENT"
_transient_raised = 0


def transient_fault() -> None:
    """`TIDEGATE_FAULT_TRANSIENT=N`: the first N raw commits of this process raise TransientError,
    as a commit conflict that outlasted the writer's own retries would (the retry tests)."""
    global _transient_raised
    limit = int(os.environ.get(TRANSIENT_ENV) or 0)
    if _transient_raised < limit:
        _transient_raised += 1
        raise TransientError(f"injected transient failure {_transient_raised} of {limit}")


def reset_transient() -> None:
    """Count `TIDEGATE_FAULT_TRANSIENT` from 0 again (the batch worker, when its value changes)."""
    global _transient_raised
    _transient_raised = 0
