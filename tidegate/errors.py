"""Errors tidegate raises, split the way the pipeline must treat them.

- `TidegateError` is what a *person* must fix (a bad flag, a broken catalog, a missing
  emulator). The CLI prints its message and its `hint` and exits non-zero, never a traceback.
- `TerminalError` means the *data* is bad: the record goes to quarantine with the reason.
  The checks raise its kinds (`EnvelopeError`, `ContractViolation`) and their stage turns
  them into a quarantine row (tidegate.expectations.checks); any other exception while
  checking one message quarantines it too, as `unexpected_error`.
- `TransientError` means the *world* is flaky (emulator down, commit conflict): retry, and
  never quarantine good data because of it. The local driver retries a batch that raised it
  with bounded backoff before it stops the run (tidegate.pipelines.local.batch).
"""

from __future__ import annotations


class TidegateError(Exception):
    """An error a user can act on. `hint` says what to do about it."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(TidegateError):
    """The catalog, a contract or a suite on disk is wrong."""


class PlatformError(TidegateError):
    """The local platform (Java, Cloud SDK, the emulator) is missing or not answering."""

    exit_code = 3


class TerminalError(Exception):
    """The data is bad and retrying will not help: quarantine it."""


class TransientError(Exception):
    """The world is flaky: retry, never quarantine because of it."""
