"""Hypothesis over the Python API with random bytes in real maps (issue 5, "Fuzzing").

Keys and values are arbitrary bytes (not CT-shaped entries as in test_decode.py): every
layout that fits the map's sizes, with every method, must read them without raising,
one row per key written; unknown `type` bytes and flag bits are shown, not fatal; the
raw layout gives back exactly the bytes written.
"""

from __future__ import annotations

import itertools
import os

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bpfkernel
import ctscope

pytestmark = pytest.mark.kernel

NOW = 10**18
# (key size, value size) -> layouts that fit, for the three Calico CT shapes.
SHAPES = {
    (16, 64): ["v2", "raw", "auto"],
    (16, 88): ["v3-created", "v3", "v4", "raw", "auto"],
    (40, 128): ["v3-created", "v3", "v4", "raw", "auto"],
}
READS = [("batch", 1, None), ("batch", 2, None), ("batch", 2, 3), ("next_key", 1, None)]
HIGH_FLAGS = {"v4"}  # value bytes 18-19 are flags3/flags4 only in ct4 (padding in ct3 maps)
_names = itertools.count()


@st.composite
def maps(draw):
    ks, vs = draw(st.sampled_from(sorted(SHAPES)))
    keys = draw(st.lists(st.binary(min_size=ks, max_size=ks), min_size=0, max_size=60, unique=True))
    values = [draw(st.binary(min_size=vs, max_size=vs)) for _ in keys]
    # Bias the type byte: known types and unknown ones both occur often.
    values = [v[:16] + bytes([draw(st.sampled_from([0, 1, 2, 3, 7, 255]))]) + v[17:] if draw(st.booleans()) else v
              for v in values]
    lru = draw(st.booleans())
    name = draw(st.sampled_from(["cali_v4_ct4", "cali_v4_ct3", "cali_v6_ct4", "cali_v4_ct2", "other"]))
    return ks, vs, dict(zip(keys, values)), lru, name


@settings(max_examples=100, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(spec=maps())
def test_random_bytes_every_layout_and_method(bpffs, spec):
    ks, vs, entries, lru, name = spec
    d = bpffs / f"fuzz-{next(_names)}"
    d.mkdir()
    pin = d / name
    mtype = bpfkernel.LRU_HASH if lru else bpfkernel.HASH
    # An LRU map evicts before it is full (per-CPU free lists): leave it room.
    fd = bpfkernel.create_pinned(pin, mtype, ks, vs, 4 * len(entries) + 64 if lru else max(len(entries), 1),
                                 0, name[:15])
    try:
        bpfkernel.fill(fd, entries.items())
        stored = bpfkernel.items(fd)
        assert stored == entries
        for layout in SHAPES[(ks, vs)]:
            for method, threads, batch in READS:
                what = f"{name} {ks}/{vs} {'lru' if lru else 'hash'}, layout {layout}, {method}/{threads}/{batch}"
                m = ctscope.open_map(pin, layout=layout)
                dump = m.dump(method=method, threads=threads, batch_size=batch, now_ns=NOW)
                df = ctscope.ctmap.dump_to_polars(dump)
                assert df.height == len(entries), what
                if dump.layout == "raw":
                    got = dict(zip(df["key"].to_list(), df["value"].to_list()))
                    assert got == entries, what
                    continue
                check_decoded(df, entries, dump.layout, ks, what)
    finally:
        os.close(fd)
        os.unlink(pin)
        d.rmdir()


def check_decoded(df: pl.DataFrame, entries: dict[bytes, bytes], layout: str, ks: int, what: str) -> None:
    """Per row: the type byte's name (or unknown(N)), and one label per set flag bit."""
    # Rows come back in the kernel's order: match them to what was written by the key's
    # ports and protocol byte (random keys make those unique enough; ties are checked as sets).
    exp = {}
    for k, v in entries.items():
        pa, pb = int.from_bytes(k[ks - 4:ks - 2], "little"), int.from_bytes(k[ks - 2:], "little")
        flags = v[17] | v[23] << 8 | ((v[18] << 16 | v[19] << 24) if layout in HIGH_FLAGS else 0)
        t = v[16]
        typ = {0: "normal", 1: "nat_fwd", 2: "nat_rev"}.get(t, f"unknown({t})")
        exp.setdefault((k[0], pa, pb), []).append((typ, flags))
    got = {}
    for row in df.select("proto", "port_a", "port_b", "type", "flags", "flag_names").iter_rows():
        proto, pa, pb, typ, flags, names = row
        assert len(names) == bin(flags).count("1"), f"{what}: flags {flags:#x} but labels {names}"
        assert all(n and not n.startswith("0x0") for n in names), f"{what}: {names}"
        got.setdefault((proto, pa, pb), []).append((typ, flags))
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in exp.items()}, what
