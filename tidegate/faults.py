"""Crash-test hook: `TIDEGATE_FAULT_INJECT=<name>` kills the process at the named point.

Used only by the tests that prove exactly-once (and self-healing aggregates) across a SIGKILL
at each crash point: `before_commit` (raw history), `after_commit` (raw committed, not acked),
`before_aggregates_commit` (raw committed and acked, the aggregate projection not yet committed).
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "TIDEGATE_FAULT_INJECT"


def fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
