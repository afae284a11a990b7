"""Start, find and stop the official Cloud SDK Pub/Sub emulator on a loopback port.

The emulator is the Cloud SDK's `cloud-pubsub-emulator` (Java 17). It keeps everything in
memory: stopping it drops every topic and message, so `tidegate up` provisions again.

    tidegate up      # starts it in the background (pid file under .tidegate/), provisions
    tidegate down    # stops the one tidegate started, and only that one

Facts that shaped this module (../shared/notes/platform-facts.md): it answers HTTP `GET /`
with `Ok` once ready (about 1.5 s here); project ids must be valid GCP ids; an empty pull
without `return_immediately` blocks ~30 s.

The launcher is found, in order, from `TIDEGATE_PUBSUB_EMULATOR` (path to the launcher),
the Cloud SDK next to `gcloud` on PATH, then the usual install locations.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from tidegate.errors import PlatformError
from tidegate.infra.children import die_with_parent

LAUNCHER_ENV = "TIDEGATE_PUBSUB_EMULATOR"
_LAUNCHER_REL = Path("platform/pubsub-emulator/bin/cloud-pubsub-emulator")
_SDK_GUESSES = (
    Path("/usr/lib/google-cloud-sdk"),
    Path("/usr/share/google-cloud-sdk"),
    Path("/opt/google-cloud-sdk"),
    Path.home() / "google-cloud-sdk",
)
INSTALL_HINT = (
    "install the Cloud SDK and its emulator: `apt-get install google-cloud-cli "
    "google-cloud-cli-pubsub-emulator` (or `gcloud components install pubsub-emulator beta`), "
    f"or point {LAUNCHER_ENV} at the cloud-pubsub-emulator launcher"
)


def find_launcher() -> Path:
    env = os.environ.get(LAUNCHER_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise PlatformError(f"{LAUNCHER_ENV}={env} is not a file", hint=INSTALL_HINT)
        if not os.access(p, os.X_OK):
            raise PlatformError(
                f"{LAUNCHER_ENV}={env} is not executable",
                hint="point it at the Cloud SDK's platform/pubsub-emulator/bin/cloud-pubsub-emulator "
                "(or `chmod +x` it if it is that launcher)",
            )
        return p
    candidates: list[Path] = []
    gcloud = shutil.which("gcloud")
    if gcloud:
        candidates.append(Path(gcloud).resolve().parent.parent / _LAUNCHER_REL)
    candidates += [root / _LAUNCHER_REL for root in _SDK_GUESSES]
    for c in candidates:
        if c.is_file():
            return c
    raise PlatformError("the Pub/Sub emulator (Cloud SDK) was not found", hint=INSTALL_HINT)


def check_java() -> None:
    java = Path(os.environ["JAVA_HOME"]) / "bin" / "java" if os.environ.get("JAVA_HOME") else None
    if java is None or not java.exists():
        found = shutil.which("java")
        if not found:
            raise PlatformError(
                "Java is not installed; the Pub/Sub emulator needs Java 17+",
                hint="apt-get install openjdk-17-jre-headless (or set JAVA_HOME)",
            )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def is_up(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a Pub/Sub emulator answers on host:port (its HTTP root says 'Ok')."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=timeout) as resp:
            return bool(resp.status == 200 and resp.read(16).strip() == b"Ok")
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@dataclass(frozen=True)
class EmulatorProcess:
    pid: int
    host: str
    port: int
    log: str
    started_at: float

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(
    host: str, port: int, log_path: Path, timeout: float = 60.0, die_with_us: bool = False
) -> EmulatorProcess:
    """Start the emulator in its own process group and wait until it answers. It outlives this
    process (`tidegate up`) unless `die_with_us` (a private emulator: killed with this process,
    even by SIGKILL; tidegate.infra.children)."""
    check_java()
    launcher = find_launcher()
    if port_in_use(host, port):
        raise PlatformError(
            f"port {host}:{port} is taken by something that is not a Pub/Sub emulator",
            hint="free the port, or give another: `--emulator 127.0.0.1:PORT` (or `emulator:` in the catalog)",
        )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(  # noqa: S603 - fixed launcher, our own arguments
                [str(launcher), f"--host={host}", f"--port={port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the CLI; `down` kills the whole group
                preexec_fn=die_with_parent() if die_with_us else None,  # tidegate.infra.children
            )
        except OSError as exc:  # not a program this machine can run (permissions, format)
            raise PlatformError(
                f"the Pub/Sub emulator launcher {launcher} could not be started: {exc.strerror or exc}",
                hint=INSTALL_HINT,
            ) from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PlatformError(
                f"the Pub/Sub emulator exited at start (code {proc.returncode}); log {log_path}:\n"
                + _tail(log_path)
            )
        if is_up(host, port, timeout=0.5):
            return EmulatorProcess(proc.pid, host, port, str(log_path), time.time())
        time.sleep(0.1)
    stop_pid(proc.pid)
    raise PlatformError(
        f"the Pub/Sub emulator did not answer on {host}:{port} within {timeout:.0f}s; log {log_path}:\n"
        + _tail(log_path)
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def looks_like_emulator(pid: int) -> bool:
    cmd = _cmdline(pid)
    return "pubsub-emulator" in cmd or "pubsub_emulator" in cmd or (not cmd and pid_alive(pid))


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the emulator's process group, then SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                waited, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                waited = 0
            if waited == pid or not pid_alive(pid):
                return
            time.sleep(0.05)


# ---- the pid file that `up` writes and `down` reads ------------------------------------


def read_state(state_file: Path) -> EmulatorProcess | None:
    try:
        return EmulatorProcess(**json.loads(state_file.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_state(state_file: Path, proc: EmulatorProcess) -> None:
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(asdict(proc)))


@contextmanager
def private_emulator(log_dir: Path, host: str = "127.0.0.1") -> Iterator[EmulatorProcess]:
    """An emulator on a free port for the duration of the block (tests, `demo --isolated`, the
    benches). It dies with this process even when the block's cleanup never runs (SIGKILL,
    SIGTERM): tidegate.infra.children."""
    port = free_port(host)
    proc = start(host, port, log_dir / f"pubsub-emulator-{port}.log", die_with_us=True)
    try:
        yield proc
    finally:
        stop_pid(proc.pid)
