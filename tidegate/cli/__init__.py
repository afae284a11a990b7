"""The `tidegate` command line.

    tidegate up                      # start + provision the local Pub/Sub emulator
    tidegate produce --count 10000 --invalid-rate 0.02 --seed 7
    tidegate contracts check         # compatibility of every contract version
    tidegate demo                    # the whole story on a private emulator
    tidegate down

Every command has `--help`. Mistakes print what to do and exit non-zero; a traceback is
shown only with TIDEGATE_DEBUG=1.
"""

# Each module registers its commands on `app` when imported; `tidegate --help` lists them in
# this order (the order a new user meets them in).
# isort: off
from tidegate.cli import platform, produce, ingest, status, reading, history  # noqa: F401
from tidegate.cli import quarantine, contracts, keys, demo, deploy, bench  # noqa: F401

# isort: on
from tidegate.cli.app import app, main

__all__ = ["app", "main"]
