"""Arrow IPC files whose schema carries key/value metadata, written batch by batch.

polars writes Arrow IPC but cannot attach schema-level metadata (`sink_ipc` and
`write_ipc` have no metadata parameter), and a sidecar file would get separated from the
data. So the record batches are encoded by polars (`write_ipc_stream`, one frame at a
time, copied verbatim) and this module writes the two flatbuffers around them itself:
the leading Schema message and the file footer, each with `custom_metadata`. The new
Schema tables reuse polars' own encoded `fields` vector (flatbuffer offsets are
relative, so the original buffer is appended and pointed into): no field or type
encoding is re-implemented here.

Arrow format references: Message.fbs (Message, RecordBatch), Schema.fbs (Schema,
KeyValue), File.fbs (Footer, Block); "Encapsulated message format" for the 8-byte
prefix and 8-byte alignment.

The footer is written last, so it holds the final metadata (entry count, dump end);
the leading Schema message holds what was known when the first batch was written.
File readers (polars, pyarrow.ipc.open_file, DuckDB) read the footer.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO

import polars as pl

MAGIC = b"ARROW1"
# Footer metadata key: CRC-32 (zlib) of the bytes from offset 8 to the footer, as 8 hex digits.
CRC_KEY = "ctscope_crc32"
CONTINUATION = 0xFFFFFFFF
METADATA_V5 = 4  # MetadataVersion.V5
HEADER_SCHEMA, HEADER_DICTIONARY, HEADER_RECORD_BATCH = 1, 2, 3


class IpcFormatError(ValueError):
    """Bytes that are not a complete Arrow IPC file or stream."""


# ------------------------------------------------------------------------------- reading flatbuffers
class _Table:
    """Read access to one flatbuffer table: field `i` by its vtable slot."""

    def __init__(self, buf: bytes | memoryview, pos: int):
        self.buf, self.pos = buf, pos
        if pos < 0 or pos + 4 > len(buf):
            raise IpcFormatError("flatbuffer table out of bounds")
        self.vt = pos - struct.unpack_from("<i", buf, pos)[0]
        if self.vt < 0 or self.vt + 4 > len(buf):
            raise IpcFormatError("flatbuffer vtable out of bounds")
        self.vt_size = struct.unpack_from("<H", buf, self.vt)[0]

    def _slot(self, i: int) -> int:
        o = 4 + 2 * i
        return struct.unpack_from("<H", self.buf, self.vt + o)[0] if o < self.vt_size else 0

    def scalar(self, i: int, fmt: str, default=0):
        off = self._slot(i)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + off)[0] if off else default

    def ref(self, i: int) -> int | None:
        """Absolute position of the object field `i` points at (None when absent)."""
        off = self._slot(i)
        if not off:
            return None
        p = self.pos + off
        return p + struct.unpack_from("<I", self.buf, p)[0]

    def table(self, i: int) -> _Table | None:
        p = self.ref(i)
        return None if p is None else _Table(self.buf, p)

    def tables(self, i: int) -> list[_Table]:
        p = self.ref(i)
        if p is None:
            return []
        n = struct.unpack_from("<I", self.buf, p)[0]
        out = []
        for k in range(n):
            e = p + 4 + 4 * k
            out.append(_Table(self.buf, e + struct.unpack_from("<I", self.buf, e)[0]))
        return out

    def string(self, i: int) -> str | None:
        p = self.ref(i)
        if p is None:
            return None
        n = struct.unpack_from("<I", self.buf, p)[0]
        return bytes(self.buf[p + 4:p + 4 + n]).decode("utf-8")


def _root(buf: bytes | memoryview) -> _Table:
    if len(buf) < 8:
        raise IpcFormatError("flatbuffer too short")
    return _Table(buf, struct.unpack_from("<I", buf, 0)[0])


def _key_values(schema: _Table) -> dict[str, str]:
    return {kv.string(0) or "": kv.string(1) or "" for kv in schema.tables(2)}


# ------------------------------------------------------------------------------- writing flatbuffers
class _Builder:
    """A front-to-back flatbuffer builder: parents are laid out before children, so every
    uoffset points forward as the format requires; slots are patched once targets exist."""

    def __init__(self):
        self.b = bytearray(4)  # root uoffset

    def pad_to(self, align: int, extra: int = 0) -> None:
        while (len(self.b) + extra) % align:
            self.b.append(0)

    def patch(self, slot: int, target: int) -> None:
        assert target > slot, "flatbuffer offsets must point forward"
        struct.pack_into("<I", self.b, slot, target - slot)

    def table(self, fields: dict[int, tuple[str, object]]) -> tuple[int, dict[int, int]]:
        """fields: id -> (struct format, value) for scalars, (\"off\", None) for an offset
        patched later. Returns (table position, id -> slot position)."""
        n = max(fields) + 1 if fields else 0
        # Table body: soffset at 0, 4 bytes pad, then fields by size (largest first) so
        # an 8-aligned table start aligns every field.
        order = sorted(fields, key=lambda i: -struct.calcsize("<" + (fields[i][0] if fields[i][0] != "off" else "I")))
        offsets: dict[int, int] = {}
        cur = 8
        for i in order:
            size = struct.calcsize("<" + (fields[i][0] if fields[i][0] != "off" else "I"))
            cur = -(-cur // size) * size
            offsets[i] = cur
            cur += size
        table_size = -(-cur // 8) * 8
        vtable = struct.pack(f"<HH{n}H", 4 + 2 * n, table_size, *(offsets.get(i, 0) for i in range(n)))
        self.pad_to(2)
        vt_pos = len(self.b)
        self.b += vtable
        self.pad_to(8)
        pos = len(self.b)
        body = bytearray(table_size)
        struct.pack_into("<i", body, 0, pos - vt_pos)
        for i, (fmt, value) in fields.items():
            if fmt != "off":
                struct.pack_into("<" + fmt, body, offsets[i], value)
        self.b += body
        return pos, {i: pos + offsets[i] for i in fields}

    def string(self, s: str) -> int:
        data = s.encode("utf-8")
        self.pad_to(4)
        pos = len(self.b)
        self.b += struct.pack("<I", len(data)) + data + b"\0"
        return pos

    def offset_vector(self, n: int) -> tuple[int, list[int]]:
        self.pad_to(4)
        pos = len(self.b)
        self.b += struct.pack("<I", n) + bytes(4 * n)
        return pos, [pos + 4 + 4 * k for k in range(n)]

    def key_values(self, metadata: dict[str, str]) -> int:
        vec, slots = self.offset_vector(len(metadata))
        for slot, (k, v) in zip(slots, metadata.items()):
            pos, ref = self.table({0: ("off", None), 1: ("off", None)})
            self.patch(slot, pos)
            self.patch(ref[0], self.string(k))
            self.patch(ref[1], self.string(v))
        return vec

    def blocks(self, blocks: list[tuple[int, int, int]]) -> int:
        # struct Block { offset: long; metaDataLength: int; (pad) bodyLength: long } = 24 bytes, 8-aligned
        self.pad_to(8, extra=4)
        pos = len(self.b)
        self.b += struct.pack("<I", len(blocks))
        for off, meta_len, body_len in blocks:
            self.b += struct.pack("<qi4xq", off, meta_len, body_len)
        return pos

    def schema(self, original: _Table, metadata: dict[str, str]) -> tuple[int, Callable[[int], None]]:
        """A Schema table with `metadata`, reusing `original`'s fields (and features) once the
        original buffer is appended at some base; returns (position, patcher(base))."""
        fields_pos, features_pos = original.ref(1), original.ref(3)
        spec: dict[int, tuple[str, object]] = {2: ("off", None)}
        endianness = original.scalar(0, "h", 0)
        if endianness:
            spec[0] = ("h", endianness)
        if fields_pos is not None:
            spec[1] = ("off", None)
        if features_pos is not None:
            spec[3] = ("off", None)
        pos, ref = self.table(spec)
        self.patch(ref[2], self.key_values(metadata))

        def patch_original(base: int) -> None:
            if fields_pos is not None:
                self.patch(ref[1], base + fields_pos)
            if features_pos is not None:
                self.patch(ref[3], base + features_pos)

        return pos, patch_original

    def append_original(self, fb: bytes) -> int:
        self.pad_to(16)
        base = len(self.b)
        self.b += fb
        return base

    def finish(self, root: int) -> bytes:
        struct.pack_into("<I", self.b, 0, root)
        self.pad_to(8)
        return bytes(self.b)


# ------------------------------------------------------------------------------- IPC messages
def _messages(buf: bytes | memoryview) -> Iterator[tuple[int, memoryview, memoryview]]:
    """(header type, flatbuffer bytes incl. padding, body) of each message of an IPC stream."""
    buf = memoryview(buf)
    pos = 0
    while pos + 4 <= len(buf):
        (word,) = struct.unpack_from("<I", buf, pos)
        if word == CONTINUATION:
            (n,) = struct.unpack_from("<i", buf, pos + 4)
            pos += 8
        else:  # pre-1.0 streams: no continuation marker
            n = word
            pos += 4
        if n == 0:
            return
        fb = buf[pos:pos + n]
        msg = _root(fb)
        body_len = msg.scalar(3, "q", 0)
        yield msg.scalar(1, "B", 0), fb, buf[pos + n:pos + n + body_len]
        pos += n + body_len


def _frame_messages(df: pl.DataFrame) -> list[tuple[int, memoryview, memoryview]]:
    b = io.BytesIO()
    df.write_ipc_stream(b, compat_level=pl.CompatLevel.newest())
    return list(_messages(b.getbuffer()))  # views: batch bodies are not copied again


def _encapsulate(fb: bytes | memoryview) -> bytes:
    pad = (-(8 + len(fb))) % 8
    return struct.pack("<Ii", CONTINUATION, len(fb) + pad) + bytes(fb) + bytes(pad)


def _schema_message(schema_fb: bytes, metadata: dict[str, str]) -> bytes:
    original = _root(schema_fb).table(2)
    b = _Builder()
    msg, ref = b.table({0: ("h", METADATA_V5), 1: ("B", HEADER_SCHEMA), 2: ("off", None)})
    schema_pos, patch_original = b.schema(original, metadata)
    b.patch(ref[2], schema_pos)
    patch_original(b.append_original(schema_fb))
    return b.finish(msg)


def _footer(schema_fb: bytes, metadata: dict[str, str], batches: list[tuple[int, int, int]]) -> bytes:
    original = _root(schema_fb).table(2)
    b = _Builder()
    footer, ref = b.table({0: ("h", METADATA_V5), 1: ("off", None), 3: ("off", None)})
    schema_pos, patch_original = b.schema(original, metadata)
    b.patch(ref[1], schema_pos)
    b.patch(ref[3], b.blocks(batches))
    patch_original(b.append_original(schema_fb))
    return b.finish(footer)


def write_file(frames: Iterable[pl.DataFrame], schema: pl.Schema, target: str | IO[bytes],
               metadata: Callable[[bool], dict[str, str]] | None = None) -> int:
    """Write `frames` as one Arrow IPC file with schema metadata; returns rows written.

    `metadata(final)` is called with final=False before the first batch (for the leading
    Schema message) and with final=True after the last (for the footer)."""
    meta = metadata or (lambda _final: {})
    own = isinstance(target, (str, bytes)) or hasattr(target, "__fspath__")
    out: IO[bytes] = open(target, "wb") if own else target  # type: ignore[arg-type]
    try:
        schema_fb = bytes(next(fb for t, fb, _ in _frame_messages(pl.DataFrame(schema=schema)) if t == HEADER_SCHEMA))
        pos = 0
        crc = 0

        def put(data: bytes | memoryview) -> None:
            nonlocal pos, crc
            out.write(data)
            pos += len(data)
            if pos > 8:  # everything between the leading magic and the footer
                crc = zlib.crc32(data, crc)

        put(MAGIC + b"\0\0")
        put(_encapsulate(_schema_message(schema_fb, meta(False))))
        blocks: list[tuple[int, int, int]] = []
        rows = 0
        for df in frames:
            rows += df.height
            if df.height == 0:
                continue
            if df.schema != schema:
                df = df.cast(dict(schema))  # type: ignore[arg-type]
            for htype, fb, body in _frame_messages(df):
                if htype == HEADER_SCHEMA:
                    continue
                if htype != HEADER_RECORD_BATCH:
                    raise IpcFormatError("dictionary-encoded (categorical) columns are not supported in Arrow snapshots")
                start = pos
                msg = _encapsulate(fb)
                put(msg)
                put(body)
                blocks.append((start, len(msg), len(body)))
        put(struct.pack("<Ii", CONTINUATION, 0))  # end-of-stream marker, as writers emit before the footer
        # IPC has no checksums of its own: record one of the messages, so that damage inside
        # a batch is caught instead of read as data.
        final = {**meta(True), CRC_KEY: f"{crc:08x}"}
        footer = _footer(schema_fb, final, blocks)
        put(footer)
        put(struct.pack("<i", len(footer)) + MAGIC)
        out.flush()
        return rows
    finally:
        if own:
            out.close()


def read_metadata(path: str, verify: bool = False, keep_crc: bool = False) -> dict[str, str]:
    """The footer schema's custom_metadata of an Arrow IPC file (reads only the tail; with
    `verify`, also the whole file, to check the CRC ctscope's writer records). The CRC key
    itself is left in the result only with `keep_crc` (to tell a CRC-less file)."""
    with open(path, "rb") as f:
        head = f.read(6)
        f.seek(0, 2)
        size = f.tell()
        if head != MAGIC or size < 6 + 2 + 10:
            raise IpcFormatError("not an Arrow IPC file (no ARROW1 magic at the start)")
        f.seek(size - 10)
        tail = f.read(10)
        if tail[4:] != MAGIC:
            raise IpcFormatError("truncated Arrow IPC file (no ARROW1 magic at the end)")
        (flen,) = struct.unpack_from("<i", tail, 0)
        if flen <= 0 or flen > size - 18:
            raise IpcFormatError("corrupt Arrow IPC footer length")
        f.seek(size - 10 - flen)
        footer = f.read(flen)
    try:
        root = _root(footer)
        schema = root.table(1)
        meta = _key_values(schema) if schema is not None else {}
        blocks = _blocks(root, 2) + _blocks(root, 3)
    except (struct.error, IpcFormatError, UnicodeDecodeError) as e:
        raise IpcFormatError(f"corrupt Arrow IPC footer ({e})") from None
    _check_blocks(path, blocks, size - 10 - flen)
    crc = meta.get(CRC_KEY) if keep_crc else meta.pop(CRC_KEY, None)
    if verify and crc is not None:
        _check_crc(path, size - 10 - flen, crc)
    return meta


def _check_crc(path: str, data_end: int, want: str) -> None:
    crc = 0
    with open(path, "rb") as f:
        f.seek(8)
        left = data_end - 8
        while left > 0:
            chunk = f.read(min(left, 1 << 22))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
    if f"{crc:08x}" != want:
        raise IpcFormatError(f"corrupt Arrow IPC file (CRC-32 {crc:08x} of its batches, the footer records {want})")


def _blocks(footer: _Table, i: int) -> list[tuple[int, int, int]]:
    p = footer.ref(i)
    if p is None:
        return []
    (n,) = struct.unpack_from("<I", footer.buf, p)
    return [struct.unpack_from("<qi4xq", footer.buf, p + 4 + 24 * k) for k in range(n)]


def _check_blocks(path: str, blocks: list[tuple[int, int, int]], data_end: int) -> None:
    """Every batch the footer lists must lie inside the file and start with a message
    header of the recorded length: cheap structural checks (IPC has no checksums, so damage
    inside a batch's buffers can only be caught, if at all, when it is read)."""
    with open(path, "rb") as f:
        for off, meta_len, body_len in blocks:
            if off < 8 or meta_len < 8 or body_len < 0 or off + meta_len + body_len > data_end:
                raise IpcFormatError("corrupt Arrow IPC file (a record batch lies outside the file)")
            f.seek(off)
            head = f.read(8)
            if len(head) < 8:
                raise IpcFormatError("truncated Arrow IPC file")
            word, n = struct.unpack("<Ii", head)
            if not (word == CONTINUATION and n == meta_len - 8 or word != CONTINUATION and word == meta_len - 4):
                raise IpcFormatError(f"corrupt Arrow IPC file (no record batch header at offset {off})")
            f.seek(off + 8 if word == CONTINUATION else off + 4)
            try:
                msg = _root(f.read(meta_len - (8 if word == CONTINUATION else 4)))
                ok = msg.scalar(1, "B", 0) in (HEADER_RECORD_BATCH, HEADER_DICTIONARY) and msg.scalar(3, "q", 0) == body_len
            except (struct.error, IpcFormatError):
                ok = False
            if not ok:
                raise IpcFormatError(f"corrupt Arrow IPC file (bad record batch header at offset {off})")
