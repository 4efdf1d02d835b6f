"""Arrow IPC files with schema metadata (ctscope.arrow_ipc): readable by polars (and, when
installed, by pyarrow, the reference implementation, with full validation), metadata in the
footer and in the leading schema message, truncation detected."""

from __future__ import annotations

import json

import polars as pl
import pytest

from ctscope import arrow_ipc


def frame(n: int, offset: int = 0) -> pl.DataFrame:
    return pl.DataFrame({
        "proto": pl.Series([6, 17, 1] * (n // 3) + [6] * (n % 3), dtype=pl.UInt8),
        "addr_a": [f"10.0.{i // 256}.{i % 256}" for i in range(offset, offset + n)],
        "port_a": pl.Series(range(offset, offset + n), dtype=pl.UInt16),
        "last_seen_ns": pl.Series([10**15 + i for i in range(n)], dtype=pl.UInt64),
        "idle_s": [i / 7 for i in range(n)],
        "tcp_state": [None if i % 4 == 0 else "ESTABLISHED" for i in range(n)],
        "flag_names": [["B-A"] if i % 5 == 0 else [] for i in range(n)],
        "a2b_syn": [i % 2 == 0 for i in range(n)],
    })


def test_round_trip_with_metadata(tmp_path):
    frames = [frame(1000, 0), frame(10, 1000), frame(0), frame(777, 1010)]
    out = tmp_path / "x.arrow"
    calls = []

    def meta(final: bool) -> dict[str, str]:
        calls.append(final)
        return {"ctscope": json.dumps({"final": final}), "other": "ü"}

    rows = arrow_ipc.write_file(iter(frames), frames[0].schema, out, meta)
    assert rows == 1787 and calls == [False, True]
    got = pl.read_ipc(out)
    assert got.equals(pl.concat(frames))
    assert arrow_ipc.read_metadata(str(out)) == {"ctscope": json.dumps({"final": True}), "other": "ü"}
    assert pl.scan_ipc(out).filter(pl.col("proto") == 17).select(pl.len()).collect().item() == 595


def test_empty_file_keeps_schema(tmp_path):
    out = tmp_path / "empty.arrow"
    schema = frame(3).schema
    assert arrow_ipc.write_file(iter([]), schema, out, lambda _f: {"k": "v"}) == 0
    got = pl.read_ipc(out)
    assert got.height == 0 and got.schema == schema
    assert arrow_ipc.read_metadata(str(out)) == {"k": "v"}


def test_stream_part_is_a_valid_ipc_stream(tmp_path):
    """After the 8-byte file magic comes an ordinary IPC stream; its schema has the provisional metadata."""
    out = tmp_path / "s.arrow"
    arrow_ipc.write_file([frame(50)], frame(50).schema, out, lambda final: {"final": str(final)})
    data = out.read_bytes()
    assert pl.read_ipc_stream(data[8:]).equals(frame(50))
    schemas = [fb for t, fb, _ in arrow_ipc._messages(data[8:]) if t == arrow_ipc.HEADER_SCHEMA]
    assert len(schemas) == 1
    assert arrow_ipc._key_values(arrow_ipc._root(schemas[0]).table(2)) == {"final": "False"}


@pytest.mark.parametrize("cut", [10, 0.5, -5])
def test_truncated_files_are_detected(tmp_path, cut):
    out = tmp_path / "t.arrow"
    arrow_ipc.write_file([frame(300)], frame(300).schema, out, lambda _f: {"a": "b"})
    data = out.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else cut if cut > 0 else len(data) + cut
    out.write_bytes(data[:n])
    with pytest.raises(arrow_ipc.IpcFormatError):
        arrow_ipc.read_metadata(str(out))


def test_not_arrow(tmp_path):
    p = tmp_path / "n.arrow"
    p.write_bytes(b"PAR1" + bytes(100))
    with pytest.raises(arrow_ipc.IpcFormatError, match="not an Arrow IPC file"):
        arrow_ipc.read_metadata(str(p))


def test_pyarrow_validates_the_file(tmp_path):
    """The reference implementation parses and fully validates what we write (its flatbuffer
    verifier checks every offset and alignment)."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.ipc as ipc

    out = tmp_path / "v.arrow"
    arrow_ipc.write_file([frame(500), frame(20, 500)], frame(500).schema, out, lambda f: {"ctscope": f"final={f}"})
    r = ipc.open_file(out)
    assert r.schema.metadata[b"ctscope"] == b"final=True" and r.num_record_batches == 2
    assert set(r.schema.metadata) == {b"ctscope", arrow_ipc.CRC_KEY.encode()}
    t = r.read_all()
    t.validate(full=True)
    assert t.num_rows == 520
    s = ipc.open_stream(out.read_bytes()[8:])
    assert s.schema.metadata == {b"ctscope": b"final=False"}
    assert isinstance(s.read_all(), pa.Table)


def test_damaged_batch_headers_are_detected(tmp_path):
    """The footer's block list is checked against the file: a batch header overwritten, or a
    footer pointing past the data, is an error before any data is read."""
    out = tmp_path / "d.arrow"
    arrow_ipc.write_file([frame(100), frame(100, 100)], frame(100).schema, out, lambda _f: {"a": "b"})
    data = bytearray(out.read_bytes())
    root = arrow_ipc._root(bytes(data[-10 - int.from_bytes(data[-10:-6], "little"):-10]))
    (off, meta_len, body_len), _ = arrow_ipc._blocks(root, 3)
    bad = bytearray(data)
    bad[off + 12:off + 20] = bytes(8)  # inside the second batch's message flatbuffer
    out.write_bytes(bad)
    with pytest.raises(arrow_ipc.IpcFormatError, match="record batch header"):
        arrow_ipc.read_metadata(str(out))
    bad = bytearray(data)
    bad[off:off + 4] = b"\0\0\0\0"  # its continuation marker
    out.write_bytes(bad)
    with pytest.raises(arrow_ipc.IpcFormatError, match="record batch header"):
        arrow_ipc.read_metadata(str(out))


def test_damage_inside_a_batch_is_caught_by_the_crc(tmp_path):
    """IPC has no checksums: bytes flipped inside a batch's buffers would be read as data.
    The CRC the writer records in the footer catches them; files without one still read."""
    out = tmp_path / "c.arrow"
    arrow_ipc.write_file([frame(1000), frame(1000, 1000)], frame(1000).schema, out, lambda _f: {"k": "v"})
    assert arrow_ipc.read_metadata(str(out), verify=True) == {"k": "v"}
    data = bytearray(out.read_bytes())
    root = arrow_ipc._root(bytes(data[-10 - int.from_bytes(data[-10:-6], "little"):-10]))
    (off, meta_len, body_len), _ = arrow_ipc._blocks(root, 3)
    bad = bytearray(data)
    bad[off + meta_len + body_len // 2] ^= 0xFF  # one byte in the middle of a body
    out.write_bytes(bad)
    assert arrow_ipc.read_metadata(str(out)) == {"k": "v"}  # the structure is intact...
    with pytest.raises(arrow_ipc.IpcFormatError, match="CRC-32"):
        arrow_ipc.read_metadata(str(out), verify=True)  # ...the bytes are not
