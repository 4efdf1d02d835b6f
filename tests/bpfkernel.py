"""A small, independent ctypes wrapper over the bpf(2) syscall, for tests.

It deliberately does not use ctscope: tests create, pin and fill maps with it and then check what
ctscope reads back. Offsets follow ``union bpf_attr`` / ``struct bpf_map_info`` in
``/usr/include/linux/bpf.h`` (x86_64 / little-endian layout).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct
import time

# --- map types and flags (enum bpf_map_type, BPF_F_*) ------------------------------------------
HASH = 1
ARRAY = 2
PERCPU_HASH = 5
LRU_HASH = 9

BPF_F_NO_PREALLOC = 1
BPF_F_RDONLY = 1 << 3
BPF_F_WRONLY = 1 << 4

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

MAP_TYPE_NAMES = {HASH: "hash", ARRAY: "array", PERCPU_HASH: "percpu_hash", LRU_HASH: "lru_hash"}

# --- commands (enum bpf_cmd) ---------------------------------------------------------------------
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26

_SYSCALL_NR = {"x86_64": 321, "aarch64": 280}
NR_BPF = _SYSCALL_NR.get(platform.machine(), 321)

ATTR_SIZE = 144  # sizeof(union bpf_attr) on Linux 6.x; the kernel accepts any size with zero tail
INFO_SIZE = 88  # sizeof(struct bpf_map_info)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfMapInfo:
    """Decoded ``struct bpf_map_info``."""

    __slots__ = ("type", "id", "key_size", "value_size", "max_entries", "map_flags", "name",
                 "btf_id", "map_extra")

    def __init__(self, raw: bytes):
        (self.type, self.id, self.key_size, self.value_size, self.max_entries,
         self.map_flags) = struct.unpack_from("<6I", raw, 0)
        self.name = raw[24:40].split(b"\0", 1)[0].decode()
        (self.btf_id,) = struct.unpack_from("<I", raw, 64)
        (self.map_extra,) = struct.unpack_from("<Q", raw, 80)

    @property
    def type_name(self) -> str:
        return MAP_TYPE_NAMES.get(self.type, str(self.type))

    def __repr__(self) -> str:
        return "BpfMapInfo(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


def _attr() -> ctypes.Array:
    return ctypes.create_string_buffer(ATTR_SIZE)  # zero-filled


def _addr(buf) -> int:
    return 0 if buf is None else ctypes.addressof(buf)


def _sys(cmd: int, attr, what: str) -> int:
    ret = _libc.syscall(ctypes.c_long(NR_BPF), ctypes.c_long(cmd), attr, ctypes.c_uint(ATTR_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({what}): {os.strerror(err)}")
    return ret


def _put(attr, fmt: str, off: int, *vals) -> None:
    struct.pack_into(fmt, attr, off, *vals)


def _cbuf(data: bytes):
    return ctypes.create_string_buffer(bytes(data), len(data))


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               map_flags: int = 0, name: bytes | str = b"") -> int:
    """BPF_MAP_CREATE; returns a new fd (caller closes it)."""
    if isinstance(name, str):
        name = name.encode()
    if len(name) > 15:
        raise ValueError("map name is at most 15 bytes")
    a = _attr()
    _put(a, "<5I", 0, map_type, key_size, value_size, max_entries, map_flags)
    a[28:28 + len(name)] = name
    return _sys(BPF_MAP_CREATE, a, "MAP_CREATE")


def obj_pin(fd: int, path: str | os.PathLike) -> None:
    p = ctypes.create_string_buffer(os.fsencode(path))
    a = _attr()
    _put(a, "<QI", 0, _addr(p), fd)
    _sys(BPF_OBJ_PIN, a, f"OBJ_PIN {os.fspath(path)}")


def obj_get(path: str | os.PathLike, flags: int = 0) -> int:
    p = ctypes.create_string_buffer(os.fsencode(path))
    a = _attr()
    _put(a, "<QII", 0, _addr(p), 0, flags)
    return _sys(BPF_OBJ_GET, a, f"OBJ_GET {os.fspath(path)}")


def update_elem(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    k, v = _cbuf(key), _cbuf(value)
    a = _attr()
    _put(a, "<IIQQQ", 0, fd, 0, _addr(k), _addr(v), flags)
    _sys(BPF_MAP_UPDATE_ELEM, a, "MAP_UPDATE_ELEM")


def update_batch(fd: int, keys: bytes, values: bytes, count: int, elem_flags: int = BPF_ANY) -> int:
    """BPF_MAP_UPDATE_BATCH of ``count`` packed keys/values; returns how many were written."""
    if count == 0:
        return 0
    k, v = _cbuf(keys), _cbuf(values)
    a = _attr()
    _put(a, "<QQQQIIQQ", 0, 0, 0, _addr(k), _addr(v), count, fd, elem_flags, 0)
    try:
        _sys(BPF_MAP_UPDATE_BATCH, a, "MAP_UPDATE_BATCH")
    except OSError as e:
        done = struct.unpack_from("<I", a, 32)[0]
        e.args = (e.errno, f"{e.strerror} (after {done} of {count} elements)")
        raise
    return struct.unpack_from("<I", a, 32)[0]


def lookup_batch(fd: int, in_batch: bytes | None, count: int, key_size: int, value_size: int):
    """One BPF_MAP_LOOKUP_BATCH call.

    Returns ``(pairs, out_batch, finished)``; ``finished`` is True when the kernel answered ENOENT
    (the pairs returned with it are valid). Other errors (e.g. ENOSPC) raise OSError.
    """
    cursor_size = max(key_size, 4)
    ib = None if in_batch is None else _cbuf(in_batch)
    ob = ctypes.create_string_buffer(cursor_size)
    k = ctypes.create_string_buffer(key_size * count)
    v = ctypes.create_string_buffer(value_size * count)
    a = _attr()
    _put(a, "<QQQQIIQQ", 0, _addr(ib), _addr(ob), _addr(k), _addr(v), count, fd, 0, 0)
    finished = False
    try:
        _sys(BPF_MAP_LOOKUP_BATCH, a, "MAP_LOOKUP_BATCH")
    except OSError as e:
        if e.errno != 2:
            raise
        finished = True
    n = struct.unpack_from("<I", a, 32)[0]
    pairs = [(k.raw[i * key_size:(i + 1) * key_size], v.raw[i * value_size:(i + 1) * value_size])
             for i in range(n)]
    return pairs, ob.raw, finished


def delete_elem(fd: int, key: bytes) -> None:
    k = _cbuf(key)
    a = _attr()
    _put(a, "<IIQ", 0, fd, 0, _addr(k))
    _sys(BPF_MAP_DELETE_ELEM, a, "MAP_DELETE_ELEM")


def lookup_elem(fd: int, key: bytes, value_size: int | None = None) -> bytes | None:
    """BPF_MAP_LOOKUP_ELEM; returns the value bytes, or None when the key is absent."""
    if value_size is None:
        value_size = map_info(fd).value_size
    k = _cbuf(key)
    v = ctypes.create_string_buffer(value_size)
    a = _attr()
    _put(a, "<IIQQQ", 0, fd, 0, _addr(k), _addr(v), 0)
    try:
        _sys(BPF_MAP_LOOKUP_ELEM, a, "MAP_LOOKUP_ELEM")
    except OSError as e:
        if e.errno == 2:  # ENOENT
            return None
        raise
    return v.raw


def get_next_key(fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """BPF_MAP_GET_NEXT_KEY; None at the end of the map."""
    k = None if key is None else _cbuf(key)
    nk = ctypes.create_string_buffer(key_size)
    a = _attr()
    _put(a, "<IIQQ", 0, fd, 0, _addr(k), _addr(nk))
    try:
        _sys(BPF_MAP_GET_NEXT_KEY, a, "MAP_GET_NEXT_KEY")
    except OSError as e:
        if e.errno == 2:
            return None
        raise
    return nk.raw


def keys(fd: int) -> list[bytes]:
    """All keys by a GET_NEXT_KEY walk (for tests on quiescent maps)."""
    info = map_info(fd)
    out, k = [], None
    while (k := get_next_key(fd, k, info.key_size)) is not None:
        out.append(k)
    return out


def items(fd: int) -> dict[bytes, bytes]:
    info = map_info(fd)
    res = {}
    for k in keys(fd):
        v = lookup_elem(fd, k, info.value_size)
        if v is not None:
            res[k] = v
    return res


def map_info(fd: int) -> BpfMapInfo:
    buf = ctypes.create_string_buffer(INFO_SIZE)
    a = _attr()
    _put(a, "<IIQ", 0, fd, INFO_SIZE, _addr(buf))
    _sys(BPF_OBJ_GET_INFO_BY_FD, a, "OBJ_GET_INFO_BY_FD")
    return BpfMapInfo(buf.raw)


def clock_monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def create_pinned(path: str | os.PathLike, map_type: int, key_size: int, value_size: int,
                  max_entries: int, map_flags: int = 0, name: bytes | str = b"") -> int:
    """Create a map, pin it at ``path`` and return its fd (still open)."""
    fd = map_create(map_type, key_size, value_size, max_entries, map_flags, name)
    try:
        obj_pin(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def fill(fd: int, entries, chunk: int = 4096) -> int:
    """Write ``entries`` (iterable of (key, value) bytes) with UPDATE_BATCH; returns the count."""
    entries = list(entries)
    n = 0
    for i in range(0, len(entries), chunk):
        part = entries[i:i + chunk]
        n += update_batch(fd, b"".join(k for k, _ in part), b"".join(v for _, v in part), len(part))
    return n
