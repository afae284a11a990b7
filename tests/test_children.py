"""The emulators a tidegate process starts for itself die with it, however it dies.

A test run, `tidegate demo` or a bench killed by SIGKILL or SIGTERM (a CI timeout, `kill`, the
OOM killer) never runs its `with` blocks' cleanup. The private Pub/Sub emulator (a JVM of
~300-500 MiB) and fake-gcs-server with its proxy must not outlive it (tidegate.infra.children).
Each test kills a real Python process that holds them, then watches the real processes go.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tidegate.infra import emulator as emu


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for init to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _children_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _holder(code: str) -> subprocess.Popen[str]:
    """A Python process that runs `code` (which prints one line once its helpers run), then waits."""
    script = f"{code}\nimport time\ntime.sleep(600)\n"
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )


def _wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if not _gone(p)]
        if not alive:
            return []
        time.sleep(0.1)
    return [p for p in pids if not _gone(p)]


@pytest.mark.emulator
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_private_pubsub_emulator_dies_with_the_process_that_started_it(tmp_path: Path, sig: int) -> None:
    holder = _holder(
        "from pathlib import Path\n"
        "from tidegate.infra.emulator import private_emulator\n"
        f"ctx = private_emulator(Path({str(tmp_path)!r}))\n"
        "proc = ctx.__enter__()\n"
        "print(proc.pid, proc.port, flush=True)\n"
    )
    pid = 0
    try:
        assert holder.stdout is not None
        pid, port = (int(x) for x in holder.stdout.readline().split())
        assert emu.is_up("127.0.0.1", port)
        holder.send_signal(sig)
        holder.wait(10)
        assert _wait_gone([pid]) == [], "the emulator outlived the process that started it"
        assert not emu.is_up("127.0.0.1", port)
    finally:
        holder.kill()
        holder.wait()
        if pid and not _gone(pid):
            emu.stop_pid(pid)  # the test failed: leave no emulator behind


@pytest.mark.gcs
def test_the_gcs_emulator_and_its_proxy_die_with_the_process_that_started_them() -> None:
    holder = _holder(
        "import os\n"
        "from tidegate.infra.gcs_emulator import private_gcs_emulator\n"
        "ctx = private_gcs_emulator()\n"
        "gcs = ctx.__enter__()\n"
        "print(gcs.base_url, flush=True)\n"
    )
    helpers: list[int] = []
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().startswith("http://127.0.0.1:")
        helpers = _children_of(holder.pid)
        assert len(helpers) == 2  # fake-gcs-server and the fixing proxy
        holder.kill()
        holder.wait(10)
        assert _wait_gone(helpers) == [], "fake-gcs-server or its proxy outlived its parent"
    finally:
        holder.kill()
        holder.wait()
        for p in helpers:
            if not _gone(p):
                os.kill(p, signal.SIGKILL)  # the test failed: leave nothing behind


@pytest.mark.emulator
def test_the_emulator_of_tidegate_up_outlives_the_process_that_started_it(tmp_path: Path) -> None:
    """`tidegate up`'s emulator is meant to stay up after the CLI exits (`down` stops it)."""
    port = emu.free_port()
    starter = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pathlib import Path\n"
            "from tidegate.infra.emulator import start\n"
            f"print(start('127.0.0.1', {port}, Path({str(tmp_path / 'e.log')!r})).pid)\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(starter.stdout.strip())
    try:
        time.sleep(0.5)
        assert not _gone(pid)
        assert emu.is_up("127.0.0.1", port)
    finally:
        emu.stop_pid(pid)
