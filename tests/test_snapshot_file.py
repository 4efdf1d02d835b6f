"""Arrow snapshots (ctscope.snapshot_file.write_arrow → rust/src/ipc_file.rs): readable by
polars, pyarrow (the reference implementation, with full validation) and DuckDB; the schema
carries the provisional metadata and the footer the final one with a CRC of the bytes from
offset 8 to the footer; truncation, damaged batch headers and damage inside a batch are
detected."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import polars as pl
import pytest

from ctscope import snapshot_file
from ctscope._native import read_arrow_metadata
from ctscope.errors import BadArgument, SnapshotError


def frame(n: int, offset: int = 0) -> pl.DataFrame:
    return pl.DataFrame({
        "proto": pl.Series([6, 17, 1] * (n // 3) + [6] * (n % 3), dtype=pl.UInt8),
        "addr_a": [f"10.0.{i // 256}.{i % 256}" for i in range(offset, offset + n)],
        "port_a": pl.Series(range(offset, offset + n), dtype=pl.UInt16),
        "last_seen_ns": pl.Series([10**15 + i for i in range(n)], dtype=pl.UInt64),
        "idle_s": [i / 7 for i in range(n)],
        "tcp_state": [None if i % 4 == 0 else "ESTABLISHED" for i in range(n)],
        "flag_names": [["B-A"] if i % 5 == 0 else [] for i in range(n)],
        "raw": [bytes([i % 256]) * 20 for i in range(n)],
        "a2b_syn": [i % 2 == 0 for i in range(n)],
    })


def write(out: Path, frames: list[pl.DataFrame], meta=lambda final: {"ctscope": json.dumps({"final": final})}) -> int:
    return snapshot_file.write_arrow(iter(frames), frames[0].schema if frames else frame(3).schema, out, meta)


def first_block(data: bytes) -> int:
    """Offset of the first record batch: right after the Schema message (which follows the
    leading magic and its padding)."""
    pos = data.index(b"\xff\xff\xff\xff", 8)
    (n,) = struct.unpack_from("<i", data, pos + 4)
    return pos + 8 + n


def footer_start(data: bytes) -> int:
    return len(data) - 10 - int.from_bytes(data[-10:-6], "little")


def test_round_trip_with_final_metadata_in_the_footer(tmp_path):
    frames = [frame(1000, 0), frame(10, 1000), frame(0), frame(777, 1010)]
    out = tmp_path / "x.arrow"
    calls = []

    def meta(final: bool) -> dict[str, str]:
        calls.append(final)
        return {"ctscope": json.dumps({"final": final}), "other": "ü"}

    assert snapshot_file.write_arrow(iter(frames), frames[0].schema, out, meta) == 1787
    assert calls == [False, True]
    assert pl.read_ipc(out).equals(pl.concat(frames))
    kv, crc = read_arrow_metadata(out, verify=True)
    assert kv == {"ctscope": json.dumps({"final": True}), "other": "ü"}
    data = out.read_bytes()
    assert crc == f"{zlib.crc32(data[8:footer_start(data)]):08x}"
    assert data[footer_start(data) - 8:footer_start(data)] == b"\xff\xff\xff\xff\0\0\0\0", "CRC covers the EOS marker"
    assert pl.scan_ipc(out).filter(pl.col("proto") == 17).select(pl.len()).collect().item() == 595


def test_empty_file_keeps_schema(tmp_path):
    out = tmp_path / "empty.arrow"
    schema = frame(3).schema
    assert snapshot_file.write_arrow(iter([]), schema, out, lambda _f: {"k": "v"}) == 0
    got = pl.read_ipc(out)
    assert got.height == 0 and got.schema == schema
    assert read_arrow_metadata(out, verify=True)[0] == {"k": "v"}


def test_pyarrow_validates_the_file_and_sees_both_metadata(tmp_path):
    """The reference implementation parses and fully validates what we write; the schema
    (leading message and the footer's copy) has the provisional metadata, the footer's
    custom_metadata the final one and the CRC; the part after the leading magic is a valid
    IPC stream."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.ipc as ipc

    out = tmp_path / "v.arrow"
    write(out, [frame(500), frame(20, 500)], lambda f: {"ctscope": f"final={f}"})
    r = ipc.open_file(out)
    assert r.num_record_batches == 2
    assert r.schema.metadata == {b"ctscope": b"final=False"}
    assert set(r.metadata) == {b"ctscope", snapshot_file.CRC_KEY.encode(), b"ctscope_meta_crc32"}
    assert r.metadata[b"ctscope"] == b"final=True"
    t = r.read_all()
    t.validate(full=True)
    assert t.num_rows == 520
    assert t.schema.field("addr_a").type == pa.string_view()  # polars' own types, as polars writes them
    data = out.read_bytes()
    s = ipc.open_stream(data[data.index(b"\xff\xff\xff\xff", 8):])
    assert s.schema.metadata == {b"ctscope": b"final=False"}
    assert s.read_all().num_rows == 520


def test_same_arrow_schema_as_polars_writes(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.ipc as ipc

    ours, theirs = tmp_path / "ours.arrow", tmp_path / "polars.arrow"
    write(ours, [frame(30)])
    frame(30).write_ipc(theirs, compat_level=pl.CompatLevel.newest())
    assert ipc.open_file(ours).schema.remove_metadata().equals(ipc.open_file(theirs).schema.remove_metadata())
    assert ipc.open_file(ours).read_all().equals(ipc.open_file(theirs).read_all())


def test_duckdb_queries_the_file(tmp_path):
    """DuckDB reads Arrow IPC files through pyarrow (its own `read_arrow` is a community
    extension, not installed offline)."""
    duckdb = pytest.importorskip("duckdb")
    import pyarrow.ipc as ipc

    out = tmp_path / "d.arrow"
    write(out, [frame(300), frame(300, 300)])
    t = ipc.open_file(out).read_all()  # noqa: F841 - DuckDB finds it by name
    assert duckdb.sql("SELECT count(*), sum(port_a), count(DISTINCT addr_a) FROM t WHERE proto = 17").fetchall()[0] == (
        200, sum(i for i in range(600) if i % 3 == 1), 200)


@pytest.mark.parametrize("cut", [10, 0.5, -5])
def test_truncated_files_are_detected(tmp_path, cut):
    out = tmp_path / "t.arrow"
    write(out, [frame(300)])
    data = out.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else cut if cut > 0 else len(data) + cut
    out.write_bytes(data[:n])
    with pytest.raises(BadArgument, match=f"^{out}: .*(truncated|not an Arrow IPC file)"):
        read_arrow_metadata(out)
    with pytest.raises(SnapshotError, match=str(out)):
        snapshot_file.read_metadata(out)


def test_not_arrow(tmp_path):
    p = tmp_path / "n.arrow"
    p.write_bytes(b"PAR1" + bytes(100))
    with pytest.raises(BadArgument, match="not an Arrow IPC file"):
        read_arrow_metadata(p)
    with pytest.raises(FileNotFoundError):
        read_arrow_metadata(tmp_path / "missing.arrow")


def test_damaged_batch_headers_are_detected(tmp_path):
    """The footer's block list is checked against the file: a batch header overwritten is an
    error before any data is read."""
    out = tmp_path / "d.arrow"
    write(out, [frame(100), frame(100, 100)])
    data = out.read_bytes()
    off = first_block(data)
    for start, end in ((off + 12, off + 20), (off, off + 4)):  # inside its flatbuffer; its continuation marker
        bad = bytearray(data)
        bad[start:end] = bytes(end - start)
        out.write_bytes(bad)
        with pytest.raises(BadArgument, match=f"record batch header at offset {off}"):
            read_arrow_metadata(out)


def test_damage_inside_a_batch_is_caught_by_the_crc(tmp_path):
    """IPC has no checksums: bytes flipped inside a batch's buffers would be read as data.
    The CRC in the footer catches them; without verification the structure reads."""
    out = tmp_path / "c.arrow"
    write(out, [frame(1000), frame(1000, 1000)], lambda _f: {"k": "v"})
    data = bytearray(out.read_bytes())
    data[first_block(data) + 2000] ^= 0xFF  # inside the first batch's body (~40 kB)
    out.write_bytes(data)
    assert read_arrow_metadata(out) == ({"k": "v"}, read_arrow_metadata(out)[1])  # the structure is intact...
    with pytest.raises(BadArgument, match="CRC-32 .* the footer records"):
        read_arrow_metadata(out, verify=True)  # ...the bytes are not


def test_writes_to_an_open_descriptor(tmp_path):
    out = tmp_path / "fd.arrow"
    with open(out, "wb") as f:
        f.write(b"")  # Python's buffer is flushed first; the fd stays open for the caller
        assert snapshot_file.write_arrow([frame(50)], frame(50).schema, f, lambda _f: {"k": "v"}) == 50
        assert not f.closed
    assert pl.read_ipc(out).equals(frame(50))
    assert read_arrow_metadata(out, verify=True)[0] == {"k": "v"}


def test_categorical_columns_are_refused(tmp_path):
    df = pl.DataFrame({"c": pl.Series(["a", "b"], dtype=pl.Categorical)})
    with pytest.raises(BadArgument, match="categorical"):
        snapshot_file.write_arrow([df], df.schema, tmp_path / "c.arrow")


def test_suffix_kinds_and_node_name(monkeypatch):
    assert snapshot_file.kind_of("a/B.FEATHER") == "arrow" and snapshot_file.kind_of("x.parquet") == "parquet"
    assert snapshot_file.kind_of("x.csv") is None
    monkeypatch.setenv("NODE_NAME", "n-env")
    assert snapshot_file.node_name() == "n-env" and snapshot_file.node_name("n-flag") == "n-flag"
    assert all(snapshot_file.kind_of("x" + s) == k for k, s in snapshot_file.SUFFIX.items())


@pytest.mark.parametrize("suffix", [".arrow", ".parquet"])
def test_deeply_nested_metadata_json_is_a_snapshot_error(tmp_path, suffix):
    """Hostile metadata: JSON nested deeper than Python's recursion limit is a one-line
    SnapshotError (exit 2), not a RecursionError traceback."""
    out = tmp_path / f"deep{suffix}"
    deep = '{"now_ns": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    if suffix == ".arrow":
        write(out, [frame(3)], meta=lambda final: {"ctscope": deep})
    else:
        frame(3).write_parquet(out, metadata={"ctscope": deep})
    with pytest.raises(SnapshotError, match="corrupt ctscope metadata"):
        snapshot_file.read_metadata(out)
