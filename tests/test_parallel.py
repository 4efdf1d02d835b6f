"""Parallel bucket-range scans: the same rows as a single reader, no duplicate and no
missing key at any range boundary, for 1–8 ranges and maps of many sizes and fills,
also while another process churns the map."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bpfkernel
import ctscope

pytestmark = pytest.mark.kernel


def fill_random(fd: int, n: int, seed: int, ks: int = 16, vs: int = 88) -> set[bytes]:
    rng = random.Random(seed)
    keys: set[bytes] = set()
    while len(keys) < n:
        keys.add(rng.randbytes(ks))
    kl = list(keys)
    for i in range(0, len(kl), 4096):
        part = kl[i:i + 4096]
        bpfkernel.update_batch(fd, b"".join(part), b"".join(k[:8] * (vs // 8) for k in part), len(part))
    return keys


def raw_keys(pin: Path, threads: int, batch_size: int | None = None) -> list[bytes]:
    df = ctscope.open_map(pin, layout="raw").to_polars(threads=threads, batch_size=batch_size)
    return df["key"].to_list()


@pytest.mark.parametrize("max_entries,entries", [(1, 1), (7, 5), (100, 3), (1000, 999), (4096, 4096),
                                                 (5000, 37), (65536, 40000), (100_000, 100_000)])
def test_ranges_match_single_reader(pin_dir, max_entries, entries):
    pin = pin_dir / f"m{max_entries}_{entries}"
    fd = bpfkernel.create_pinned(str(pin), bpfkernel.HASH, 16, 88, max_entries)
    try:
        expected = fill_random(fd, entries, seed=max_entries)
    finally:
        os.close(fd)
    for threads in range(1, 9):
        for batch in (None, 7):
            got = raw_keys(pin, threads, batch)
            assert len(got) == len(set(got)), f"duplicates with {threads} ranges, batch {batch}"
            assert set(got) == expected, f"missing/extra keys with {threads} ranges, batch {batch}"


def test_ranges_values_equal_single_reader(pin_dir):
    pin = pin_dir / "cali_v4_ct4"
    ctscope_synth(pin, 30_000)
    one = ctscope.open_map(pin).to_polars(threads=1, now_ns=10**15).sort("addr_a", "port_a", "addr_b", "port_b", "proto")
    for threads in (2, 3, 5):
        many = ctscope.open_map(pin).to_polars(threads=threads, now_ns=10**15).sort(
            "addr_a", "port_a", "addr_b", "port_b", "proto")
        assert many.equals(one)


def ctscope_synth(pin: Path, n: int) -> None:
    from ctscope.cli.synth import synth

    synth(str(pin), n, max_entries=n * 2)


CHURN = r"""
import os, random, sys, time
sys.path.insert(0, sys.argv[3])
import bpfkernel
fd = bpfkernel.obj_get(sys.argv[1])
rng = random.Random(1)
stop = time.monotonic() + float(sys.argv[2])
while time.monotonic() < stop:
    k = b"\xff" + rng.randbytes(15)   # churn keys start with 0xff; stable ones never do
    try:
        bpfkernel.update_elem(fd, k, b"\0" * 88)
        bpfkernel.delete_elem(fd, k)
        bpfkernel.update_elem(fd, k, b"\1" * 88)
    except OSError:
        pass
"""


def test_ranges_under_churn(pin_dir):
    pin = pin_dir / "churned"
    fd = bpfkernel.create_pinned(str(pin), bpfkernel.HASH, 16, 88, 200_000)
    try:
        rng = random.Random(7)
        stable = set()
        while len(stable) < 50_000:
            k = rng.randbytes(16)
            if k[0] != 0xFF:
                stable.add(k)
        kl = list(stable)
        for i in range(0, len(kl), 4096):
            part = kl[i:i + 4096]
            bpfkernel.update_batch(fd, b"".join(part), b"\2" * 88 * len(part), len(part))
    finally:
        os.close(fd)
    writer = subprocess.Popen([sys.executable, "-c", CHURN, str(pin), "6", str(Path(__file__).parent)])
    try:
        time.sleep(0.2)
        for threads in (2, 3, 4, 8):
            got = raw_keys(pin, threads, 512)
            assert len(got) == len(set(got)), f"duplicate key with {threads} ranges under churn"
            assert stable <= set(got), f"{len(stable - set(got))} stable keys missing with {threads} ranges"
    finally:
        writer.kill()
        writer.wait()
