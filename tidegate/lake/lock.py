"""One local writer per lake: `tidegate ingest`, `replay` and the emulator backlog count take
this lock, so two of them never race for the same commits.

    with lake_lock(".tidegate/lake"):
        ...

Object stores (gs://) have no file lock: one writer per lake is the deployment's job there (one
Dataflow job per lake), and Delta's conditional commits keep the log consistent.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tidegate.errors import TidegateError


class LakeBusy(TidegateError):
    """Another process holds the lake's lock (a running ingest, replay, ...): not a bad path."""


def is_locked_lake(lake: str) -> bool:
    """Whether `lake_lock` really excludes other writers of `lake`: a lake on the local file
    system. An object-store lake (gs://) has no lock here, so its writers must MERGE."""
    return lake.startswith("file://") or "://" not in lake


def check_lake_dir(lake: str) -> None:
    """A local lake must be a directory (or not exist yet): `--lake /etc/passwd` is a mistake,
    said as one (a TidegateError, exit 2) before anything tries to create or lock it."""
    if "://" in lake and not lake.startswith("file://"):
        return
    path = Path(lake.removeprefix("file://"))
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise TidegateError(
                    f"cannot use {lake} as the lake: {p} is a file, not a directory",
                    hint="--lake (or TIDEGATE_LAKE) must name a directory you can write, or one that can be created",
                )
            return


@contextmanager
def lake_lock(lake: str) -> Iterator[None]:
    check_lake_dir(lake)
    if lake.startswith("file://"):
        lake = lake.removeprefix("file://")
    elif "://" in lake:
        yield
        return
    root = Path(lake)
    try:
        root.mkdir(parents=True, exist_ok=True)
        # never truncate, never follow a symlink planted in the lake: the lock is a plain file
        fd = os.open(root / ".ingest.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fh = os.fdopen(fd, "w")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TidegateError(
                f"{root / '.ingest.lock'} is a symbolic link; tidegate will not follow it",
                hint="remove it (tidegate creates the lock file itself) and check who planted it",
            ) from None
        raise TidegateError(
            f"cannot use {lake} as the lake: {exc.strerror or exc}",
            hint="--lake (or TIDEGATE_LAKE) must name a directory you can write, or one that can be created",
        ) from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LakeBusy(
                f"another `tidegate ingest` is writing to {lake}",
                hint="stop it first, or give this one another --lake",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
