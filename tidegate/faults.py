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


def fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


CRASH_ON_ENV = "TIDEGATE_FAULT_CRASH_ON"


def crash_on() -> str | None:
    """`TIDEGATE_FAULT_CRASH_ON=<ce-id>`: processing any message with that ce-id raises, as a bug
    or a resource limit would (the poison-message test). Read once per worker (DoFn.setup)."""
    return os.environ.get(CRASH_ON_ENV) or None


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
