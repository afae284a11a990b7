"""Which code is running: package version and git commit, recorded in lineage.

The git sha comes from `TIDEGATE_GIT_SHA` (set it when building images: there is no .git on
a Dataflow worker), else from `git rev-parse HEAD` next to the package, else "unknown".
A checkout with uncommitted changes gets a `-dirty` suffix.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

from tidegate import __version__


@functools.cache
def git_sha() -> str:
    env = os.environ.get("TIDEGATE_GIT_SHA")
    if env:
        return env
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return "unknown"
    try:
        sha = _git(root, "rev-parse", "HEAD", check=True)
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no", check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def _git(root: Path, *args: str, check: bool) -> str:
    return subprocess.run(  # noqa: S603
        ["git", *args],  # noqa: S607
        cwd=root,
        capture_output=True,
        text=True,
        timeout=5,
        check=check,
    ).stdout.strip()


def code_version() -> str:
    return __version__
