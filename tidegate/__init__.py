"""tidegate: CloudEvents from Pub/Sub into Delta Lake through Apache Beam.

The command line lives in `tidegate.cli`; the stream catalog in `tidegate.catalog`; the
producer in `tidegate.producer`. See README.md and docs/ for the whole picture.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tidegate")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"
