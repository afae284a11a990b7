"""Where a benchmark works: a temporary folder, removed when the process exits.

A soak leaves lakes of several hundred MB behind (a bench ingest ~100 MB); run after run they
filled /tmp. Set `TIDEGATE_BENCH_KEEP=1` to keep the folder (its path goes to stderr at exit),
e.g. to read the lake's `_metrics` or a table's history after a run.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path


def scratch_dir(prefix: str) -> Path:
    work = Path(tempfile.mkdtemp(prefix=prefix))
    if os.environ.get("TIDEGATE_BENCH_KEEP"):
        atexit.register(lambda: print(f"kept the benchmark's work folder: {work}", file=sys.stderr))
    else:
        atexit.register(shutil.rmtree, work, True)
    return work
