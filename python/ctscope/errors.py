"""ctscope's exceptions and the CLI exit code each one maps to.

The classes are defined in the Rust core (so Rust raises them directly) and re-exported
here, the one place a user or the CLI needs to import them from.
"""

from ctscope._native import (
    BadArgument,
    CtscopeError,
    IterationLimit,
    NotACtMap,
    PermissionDenied,
    PinNotFound,
)

__all__ = [
    "BadArgument",
    "CtscopeError",
    "IterationLimit",
    "LockBusy",
    "NoEntry",
    "NotACtMap",
    "PermissionDenied",
    "PinNotFound",
    "SnapshotError",
    "exit_code",
]


class SnapshotError(CtscopeError):
    """A snapshot file is missing, truncated or not a ctscope snapshot."""


class LockBusy(CtscopeError):
    """Another ctscope write command holds the pin's lock (ctscope.pinlock)."""


class NoEntry(CtscopeError):
    """`ctscope get`: the map holds no entry for the connection (not an error of the tool)."""


# Exit codes of the CLI (README "Exit codes").
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_FOUND = 3
EXIT_PERMISSION = 4
EXIT_BUSY = 5
EXIT_NO_ENTRY = 6

_CODES: list[tuple[type[BaseException], int]] = [
    (PinNotFound, EXIT_NOT_FOUND),
    (PermissionDenied, EXIT_PERMISSION),
    (NotACtMap, EXIT_BAD_INPUT),
    (BadArgument, EXIT_BAD_INPUT),
    (SnapshotError, EXIT_BAD_INPUT),
    (LockBusy, EXIT_BUSY),
    (NoEntry, EXIT_NO_ENTRY),
]


def exit_code(exc: BaseException) -> int:
    """The CLI exit code for an exception."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_ERROR


def polars_gist(e: BaseException) -> str:
    """polars' messages run to many lines (query plans, every column name): the gist, on one line."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    first = first.split("; valid columns:")[0].split(" Resolved plan until failure")[0]
    return (first[:240] + "…") if len(first) > 240 else first
