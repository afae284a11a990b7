"""Helper processes that die with the tidegate process that started them.

The private Pub/Sub emulator (tests, `tidegate demo`, the benches) and fake-gcs-server (the
gs:// tests) are stopped by the context managers that start them. That cleanup does not run when
the Python process is killed: SIGKILL, or SIGTERM (Python's default handler ends the process
without unwinding `with` blocks), e.g. a CI timeout, `kill`, or an out-of-memory kill. Before this
module each such kill left a JVM of ~300-500 MiB behind, pulling CPU from whatever ran next
(found 2026-12-04: two orphaned emulators beside a benchmark).

    subprocess.Popen(args, preexec_fn=die_with_parent())

`die_with_parent()` returns a function for `Popen(preexec_fn=...)` that asks Linux to SIGKILL
the child when the thread that started it ends (`PR_SET_PDEATHSIG`; it survives the `exec` of
the emulator's launcher script into `java`). If the parent is already gone by the time the
child runs it, the child exits at once. The signal follows the starting *thread*: start such a
child from the thread that also stops it (a `with` block does), not from a short-lived helper
thread. `tidegate up` does not use it: that emulator is meant to outlive the CLI.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that ties the child's life to this process (module docstring); None where
    the C library has no `prctl` (not Linux): there the context manager's cleanup is the only one."""
    parent = os.getpid()
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
    except (AttributeError, OSError):
        return None

    def in_child() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            return  # refused: the context manager's cleanup is the only one
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return in_child
