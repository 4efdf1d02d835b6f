"""A dump whose source fails (a key-by-key walk stopped at its bound, a map read error,
Ctrl-C) while export.write_binary streams it into a file.

Until parquet went through ctscope's own writer, polars' parquet sink ran our source on its
threads, and an exception raised into it returned from sink_parquet while polars' writer
was still finishing the file on another thread: it then called the footer's metadata
callback (Python) there. A command that exits on the error (`ctscope dump` prints it and
exits 1) let Python finalize under that thread; a thread that asks for the GIL during
finalization is killed with pthread_exit, which aborted the process (SIGABRT, about 1 run
in 20 of a failing parquet dump: the CI flake of test_next_key_walk_of_a_churning_full_lru_
map_is_bounded_and_recorded). So write_binary must not return or raise while any writer
thread may still call Python, and a failed dump must leave no valid file behind (no footer).
"""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest

from ctscope import export

SCHEMA = pl.Schema({"a": pl.Int64})


class WalkStopped(Exception):
    pass


def failing_frames(before: int):
    for i in range(before):
        yield pl.DataFrame({"a": list(range(i * 1000, (i + 1) * 1000))}, schema=SCHEMA)
    raise WalkStopped("key-by-key walk stopped")


# A process that exits on the error while polars' writer is in a Python call: the metadata
# callback, once entered, waits until Python is finalizing (a probe object, deleted when
# the modules are cleared at exit, signals it and holds finalization open a while with the
# GIL released), then needs the GIL back. If that callback can still be running when
# write_binary has raised, the process is killed by SIGABRT (a thread asking for the GIL
# during finalization is pthread_exit'ed); once write_binary waits for polars' writer, it
# cannot be, and the exit is clean.
EXIT_ON_ERROR = """
import sys, threading, time, types
import polars as pl
from ctscope import export

entered, finalizing = threading.Event(), threading.Event()

class Probe:
    def __init__(self):
        self.set, self.sleep = finalizing.set, time.sleep
    def __del__(self):
        self.set()
        self.sleep(0.5)

# Not a global of __main__: a running callback's frame keeps __main__'s globals alive.
sys.modules["_exit_probe"] = types.ModuleType("_exit_probe")
sys.modules["_exit_probe"].probe = Probe()

def frames():
    yield pl.DataFrame({"a": [1, 2, 3]})
    raise RuntimeError("walk stopped")

def metadata(n):
    entered.set()
    finalizing.wait(10)
    return {"rows": str(n)}

try:
    export.write_binary(frames(), pl.Schema({"a": pl.Int64}), "parquet", sys.argv[1], metadata)
except RuntimeError as e:
    print(f"error: {e}", file=sys.stderr)
    entered.wait(1)  # a callback polars makes after the error: let it start before the exit
    sys.exit(1)
"""


def test_a_process_exiting_on_a_failed_parquet_dump_exits_cleanly(tmp_path):
    r = subprocess.run([sys.executable, "-c", EXIT_ON_ERROR, str(tmp_path / "x.parquet")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr)  # -6 (SIGABRT) when Python exited under polars' writer
    assert r.stderr.strip().splitlines() == ["error: walk stopped"], r.stderr


@pytest.mark.parametrize("before", [0, 1, 5])
@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_a_failed_dump_raises_its_own_error_and_leaves_no_valid_file(tmp_path, fmt, before):
    """The source's own exception comes out of write_binary; the footer's metadata is not
    built for a failed dump, and what was written is no readable file (no footer), in
    both formats."""
    target = tmp_path / f"x.{fmt}"
    calls: list[int] = []

    def metadata(n: int) -> dict[str, str]:
        calls.append(n)
        return {"rows": str(n)}

    with pytest.raises(WalkStopped, match="key-by-key walk stopped"):
        export.write_binary(failing_frames(before), SCHEMA, fmt, target, metadata)
    if fmt == "parquet":
        assert calls == []
    reader = pl.read_parquet if fmt == "parquet" else pl.read_ipc
    with pytest.raises(Exception):
        reader(target)


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_a_failed_dump_to_a_stream_leaves_no_footer(tmp_path, fmt):
    """stdout (`dump -f parquet > x`): what was written before the error is no readable file."""
    out = tmp_path / f"stream.{fmt}"
    with open(out, "wb") as stream, pytest.raises(WalkStopped):
        export.write_binary(failing_frames(3), SCHEMA, fmt, stream, lambda n: {"rows": str(n)})
    assert out.stat().st_size > 0  # the rows before the error were written...
    with pytest.raises(Exception):  # ...but make no file
        (pl.read_parquet if fmt == "parquet" else pl.read_ipc)(out)


def test_a_finished_parquet_dump_is_unchanged(tmp_path):
    """The success path: every row, the metadata of the final count, no error."""
    target = tmp_path / "ok.parquet"
    frames = (pl.DataFrame({"a": list(range(i * 10, i * 10 + 10))}, schema=SCHEMA) for i in range(4))
    assert export.write_binary(frames, SCHEMA, "parquet", target, lambda n: {"rows": str(n)}) == 40
    assert pl.read_parquet(target)["a"].to_list() == list(range(40))
    assert pl.read_parquet_metadata(target)["rows"] == "40"
    assert export.write_binary(iter([]), SCHEMA, "parquet", target, None) == 0
    assert pl.read_parquet(target).height == 0


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_a_column_of_nulls_is_written(tmp_path, fmt):
    """`ctscope query SNAP "SELECT NULL AS note, dport FROM ct" -o x.parquet`: polars' Null
    columns (which it exports with a buffer the Arrow C interface does not allow) are
    written as Null columns, not refused as a broken Arrow stream."""
    schema = pl.Schema({"note": pl.Null, "dport": pl.UInt16, "gap": pl.Null})
    frames = [pl.DataFrame({"note": [None] * 3, "dport": [1, 2, 3], "gap": [None] * 3}, schema=schema),
              pl.DataFrame({"note": [None], "dport": [4], "gap": [None]}, schema=schema)]
    out = tmp_path / f"x.{fmt}"
    assert export.write_binary(iter(frames), schema, fmt, out, lambda n: {"rows": str(n)}) == 4
    got = pl.read_parquet(out) if fmt == "parquet" else pl.read_ipc(out)
    assert got.columns == ["note", "dport", "gap"]
    assert got["dport"].to_list() == [1, 2, 3, 4]
    assert got["note"].null_count() == got["gap"].null_count() == 4
