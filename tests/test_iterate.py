"""Iteration against real kernel maps: counts at batch boundaries, full maps, forced methods,
ENOSPC, bpftool agreement, concurrent mutation, and open errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

import bpfkernel
import ctbytes as cb
from conftest import skip_or_fail
import ctscope
from ctscope import errors

pytestmark = pytest.mark.kernel

NOW = 86_400 * 10**9
BATCH = 64
TESTS_DIR = Path(__file__).resolve().parent

# columns that are never null in a decoded CT dump
NEVER_NULL = ["proto", "addr_a", "port_a", "addr_b", "port_b", "src", "sport", "dst", "dport", "type", "flags",
              "flag_names", "last_seen_ns", "idle_s"]


ct_key = cb.seq_key
ct_value = cb.seq_value


def entries(n: int, family: int = 4, value_size: int = 88, start: int = 0) -> dict[bytes, bytes]:
    return {ct_key(i, family): ct_value(i, value_size) for i in range(start, start + n)}


def raw_pairs(df: pl.DataFrame) -> list[tuple[bytes, bytes]]:
    return list(zip(df["key"].to_list(), df["value"].to_list()))


def dump_raw(path, method="auto", batch_size=None) -> tuple[list[tuple[bytes, bytes]], object]:
    d = ctscope.open_map(path, layout="raw").dump(method=method, batch_size=batch_size)
    df = pl.DataFrame(d)
    assert df.columns[:2] == ["key", "value"]
    return raw_pairs(df), d


def assert_columns_consistent(df: pl.DataFrame, n: int) -> None:
    assert df.height == n
    for c in df.columns:
        assert len(df[c]) == n, c
    for c in NEVER_NULL:
        assert df[c].null_count() == 0, c


MAP_KINDS = {
    # name: (layout, family, map type, map_flags)
    "hash-ct3": ("v3", 4, bpfkernel.HASH, bpfkernel.BPF_F_NO_PREALLOC),
    "lru-ct4": ("v4", 4, bpfkernel.LRU_HASH, 0),
    "lru-ct4-v6": ("v4", 6, bpfkernel.LRU_HASH, 0),
}


# ------------------------------------------------------------------------------------ counts
@pytest.mark.parametrize("n", [0, 1, BATCH - 1, BATCH, BATCH + 1, 3 * BATCH])
@pytest.mark.parametrize("kind", list(MAP_KINDS))
@pytest.mark.parametrize("method", ["auto", "batch", "next_key"])
def test_entry_counts(make_ct_map, kind, n, method):
    layout, family, _, _ = MAP_KINDS[kind]
    m = make_ct_map(layout, family, max_entries=4096)
    want = entries(n, family, cb.VALUE_SIZE[(layout, family)])
    assert m.fill(want.items()) == n
    assert m.items() == want  # nothing evicted: the kernel holds exactly what we wrote

    got, d = dump_raw(m.path, method=method, batch_size=BATCH)
    assert len(got) == n
    assert dict(got) == want
    # Linux 6.18 has batch lookups: "auto" must use them
    assert d.method == ("batch" if method == "auto" else method)

    cm = ctscope.open_map(m.path, layout=layout)
    d2 = cm.dump(method=method, batch_size=BATCH, now_ns=NOW)
    df = pl.DataFrame(d2)
    assert d2.layout == layout
    assert_columns_consistent(df, n)
    if n:
        assert sorted(df["last_seen_ns"].to_list()) == list(range(1, n + 1))
        assert df.select(["addr_a", "port_a"]).n_unique() == n


def test_full_hash_map(make_ct_map):
    """Every slot of a HASH map filled (max_entries 50000)."""
    n = 50_000
    m = make_ct_map("v3", 4, max_entries=n)
    want = entries(n)
    assert m.fill(want.items()) == n
    with pytest.raises(OSError):  # really full
        m.update(ct_key(n + 1), ct_value(n + 1, 88))
    for method in ("batch", "next_key"):
        got, d = dump_raw(m.path, method=method)
        assert len(got) == n, method
        assert dict(got) == want, method
        assert d.method == method
    df = ctscope.open_map(m.path, layout="v3").to_polars(now_ns=NOW)
    assert_columns_consistent(df, n)
    assert df["last_seen_ns"].sort().to_list() == list(range(1, n + 1))


@pytest.mark.parametrize("threads", [1, 2])
def test_next_batches_gathers_batches_into_frames_of_at_least_n_rows(make_ct_map, threads):
    n = 20_000
    m = make_ct_map("v4", 4, max_entries=32_768)
    want = entries(n)
    assert m.fill(want.items()) == n
    cm = ctscope.open_map(m.path, layout="v4")
    d = cm.dump(now_ns=NOW, batch_size=512, threads=threads)
    sizes, seen = [], []
    while (b := d.next_batches(3000)) is not None:
        df = pl.DataFrame(b)
        assert df.height == b.num_rows
        sizes.append(df.height)
        seen += df["last_seen_ns"].to_list()
    assert d.next_batches(3000) is None
    assert all(s >= 3000 for s in sizes[:-1]) and len(sizes) < n // 512, sizes
    assert sorted(seen) == list(range(1, n + 1))  # every entry once
    assert cm.to_polars(now_ns=NOW).height == n


def test_live_max_entries_not_default(make_ct_map):
    """Sizes come from the live map: a sparse 1,000,000-entry map (larger than Calico's 512000 default)."""
    m = make_ct_map("v3", 4, max_entries=1_000_000)
    want = entries(5000)
    m.fill(want.items())
    cm = ctscope.open_map(m.path)
    assert cm.info.max_entries == 1_000_000
    for method in ("batch", "next_key"):
        got, _ = dump_raw(m.path, method=method)
        assert dict(got) == want and len(got) == len(want)


def test_lru_map_near_full(make_ct_map):
    """An LRU map written to max_entries: whatever the kernel kept (it evicts early), ctscope returns."""
    n = 20_000
    m = make_ct_map("v4", 4, max_entries=n)
    m.fill(entries(n).items())
    kernel = m.items()
    assert 0.9 * n <= len(kernel) <= n
    got, _ = dump_raw(m.path, method="batch")
    assert len(got) == len(kernel)
    assert dict(got) == kernel
    df = ctscope.open_map(m.path).to_polars(now_ns=NOW)
    assert_columns_consistent(df, len(kernel))


@pytest.mark.parametrize("kind", list(MAP_KINDS))
def test_next_key_equals_batch(make_ct_map, kind):
    layout, family, _, _ = MAP_KINDS[kind]
    m = make_ct_map(layout, family, max_entries=8192)
    want = entries(3000, family, cb.VALUE_SIZE[(layout, family)])
    m.fill(want.items())
    by_batch, db = dump_raw(m.path, method="batch", batch_size=BATCH)
    by_next, dn = dump_raw(m.path, method="next_key")
    assert (db.method, dn.method) == ("batch", "next_key")
    assert len(by_batch) == len(by_next) == len(want)
    assert sorted(by_batch) == sorted(by_next)
    assert dict(by_batch) == want
    cm = ctscope.open_map(m.path, layout=layout)
    keys = ["proto", "addr_a", "port_a", "addr_b", "port_b"]
    a = cm.to_polars(method="batch", now_ns=NOW).sort(keys)
    b = cm.to_polars(method="next_key", now_ns=NOW).sort(keys)
    assert a.equals(b)


def _kernel_hits_enospc(fd: int, key_size: int, value_size: int) -> bool:
    cursor = None
    while True:
        try:
            _, cursor, finished = bpfkernel.lookup_batch(fd, cursor, 1, key_size, value_size)
        except OSError as e:
            if e.errno == 28:  # ENOSPC
                return True
            raise
        if finished:
            return False


@pytest.mark.parametrize("map_type", [bpfkernel.HASH, bpfkernel.LRU_HASH], ids=["hash", "lru_hash"])
def test_enospc_with_tiny_batch(make_map, map_type):
    """batch_size=1 on a map whose buckets hold several entries: the kernel answers ENOSPC, and the
    dump must grow its buffer and retry, returning every entry exactly once."""
    n = 2000
    lru = map_type == bpfkernel.LRU_HASH
    m = make_map("cali_v4_ct4" if lru else "cali_v4_ct3", map_type, 16, 88, n * 2 if lru else n,
                 0 if lru else bpfkernel.BPF_F_NO_PREALLOC)
    want = entries(n)
    m.fill(want.items())
    want = m.items()  # (LRU: what the kernel kept)
    assert len(want) >= 0.9 * n
    assert _kernel_hits_enospc(m.fd, 16, 88), "precondition: some bucket holds more than one entry"
    got, d = dump_raw(m.path, method="batch", batch_size=1)
    assert d.method == "batch"
    assert len(got) == len(want)
    assert dict(got) == want
    layout = "v4" if lru else "v3"
    df = pl.DataFrame(ctscope.open_map(m.path, layout=layout).dump(method="batch", batch_size=1, now_ns=NOW))
    assert_columns_consistent(df, len(want))


# ------------------------------------------------------------------------------------ bpftool
def bpftool_dump(bpftool: str, path) -> list[tuple[bytes, bytes]]:
    r = subprocess.run([bpftool, "-j", "map", "dump", "pinned", str(path)], capture_output=True, text=True,
                       check=True, timeout=60)
    out = []
    for e in json.loads(r.stdout):
        out.append((bytes(int(x, 16) for x in e["key"]), bytes(int(x, 16) for x in e["value"])))
    return out


@pytest.mark.bpftool
@pytest.mark.parametrize(("layout", "family"), [("v2", 4), ("v3", 6), ("v4", 4), ("v4", 6)])
def test_raw_equals_bpftool(make_ct_map, bpftool, layout, family):
    m = make_ct_map(layout, family, max_entries=2048)
    vs = cb.VALUE_SIZE[(layout, family)]
    # varied, non-trivial bytes: real-looking entries plus random-ish filler
    data = {}
    for i in range(700):
        k = ct_key(i * 7919, family)
        v = bytes((i * 31 + j * 17) & 0xFF for j in range(vs))
        data[k] = v
    m.fill(data.items())
    ref = bpftool_dump(bpftool, m.path)
    assert len(ref) == len(data)
    got, _ = dump_raw(m.path)
    assert sorted(got) == sorted(ref)
    assert len(set(k for k, _ in got)) == len(got)


@pytest.mark.bpftool
def test_raw_equals_bpftool_non_ct_map(make_map, bpftool):
    m = make_map("plain", bpfkernel.HASH, 8, 8, 256)
    m.fill((i.to_bytes(8, "little"), (i * i).to_bytes(8, "big")) for i in range(200))
    assert sorted(dump_raw(m.path)[0]) == sorted(bpftool_dump(bpftool, m.path))


# ------------------------------------------------------------------------------------ mutation
MUTATOR = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
import bpfkernel
from ctbytes import seq_key as ct_key, seq_value as ct_value
path, base, pool, live, stop = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
fd = bpfkernel.obj_get(path)
ops = 0
s = 0
print("ready", flush=True)
while True:
    for _ in range(256):
        try:
            bpfkernel.delete_elem(fd, ct_key(base + s % pool))
        except OSError:
            pass
        bpfkernel.update_elem(fd, ct_key(base + (s + live) % pool), ct_value(base + (s + live) % pool, 88))
        s += 1
        ops += 2
    if os.path.exists(stop):
        break
print(ops, flush=True)
"""


@pytest.mark.parametrize("map_type", [bpfkernel.HASH, bpfkernel.LRU_HASH], ids=["hash", "lru_hash"])
def test_mutation_during_dump(make_map, tmp_path, map_type):
    """Another process deletes and adds entries while we dump: every dump finishes, has no duplicate
    key, and holds every key that was never touched (and only keys that could exist)."""
    untouched_n, base, pool, live = 20_000, 1_000_000, 16_000, 8_000
    max_entries = 4 * (untouched_n + live) if map_type == bpfkernel.LRU_HASH else untouched_n + pool
    m = make_map("cali_v4_ct4" if map_type == bpfkernel.LRU_HASH else "cali_v4_ct3", map_type, 16, 88,
                 max_entries, 0 if map_type == bpfkernel.LRU_HASH else bpfkernel.BPF_F_NO_PREALLOC)
    untouched = entries(untouched_n)
    m.fill(untouched.items())
    m.fill(entries(live, start=base).items())
    universe = set(untouched) | {ct_key(base + j) for j in range(pool)}
    stop = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, "-c", MUTATOR, str(TESTS_DIR), str(m.path), str(base), str(pool),
                             str(live), str(stop)], stdout=subprocess.PIPE, text=True)
    results = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        t_end = time.monotonic() + 1.5
        runs = [("batch", BATCH), ("batch", None), ("next_key", None), ("auto", 1)]
        rounds = 0
        while rounds < 2 or (time.monotonic() < t_end and rounds < 6):
            for method, bs in runs:
                got, d = dump_raw(m.path, method=method, batch_size=bs)
                results.append((method, bs, got))
            df = ctscope.open_map(m.path, layout="v3").to_polars(now_ns=NOW)
            assert_columns_consistent(df, df.height)
            rounds += 1
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    ops = int(out.split()[-1])
    assert ops > 10_000, f"mutator made only {ops} changes"
    kept = {k for k in untouched if bpfkernel.lookup_elem(m.fd, k, 88) is not None}
    if map_type == bpfkernel.HASH:
        assert kept == set(untouched)
    assert len(kept) > 0.9 * untouched_n
    for method, bs, got in results:
        keys = [k for k, _ in got]
        assert len(keys) == len(set(keys)), f"{method}/{bs}: duplicate keys"
        ks = set(keys)
        assert kept <= ks, f"{method}/{bs}: {len(kept - ks)} untouched keys missing"
        assert ks <= universe, f"{method}/{bs}: keys that were never written"
        for k, v in got:
            if k in untouched:
                assert v == untouched[k]


# ------------------------------------------------------------------------------------ errors
def test_missing_pin(bpffs, tmp_path):
    for p in (bpffs / "no-such-map", tmp_path / "nope" / "cali_v4_ct4"):
        with pytest.raises(errors.PinNotFound):
            ctscope.open_map(p)
        with pytest.raises(errors.CtscopeError):
            ctscope.open_map(str(p), layout="raw")


def test_directory_is_not_a_map(pin_dir, tmp_path):
    for p in (pin_dir, tmp_path):
        with pytest.raises(errors.NotACtMap):
            ctscope.open_map(p).to_polars()
        with pytest.raises(errors.NotACtMap):
            ctscope.open_map(p, layout="raw").to_polars()


def test_regular_file_outside_bpffs(tmp_path):
    f = tmp_path / "cali_v4_ct4"
    f.write_bytes(b"\0" * 128)
    with pytest.raises(errors.NotACtMap):
        ctscope.open_map(f).to_polars()
    with pytest.raises(errors.NotACtMap):
        ctscope.open_map(f, layout="raw").to_polars()


def test_array_map_is_rejected(make_map):
    m = make_map("cali_v4_ct4", bpfkernel.ARRAY, 4, 88, 16)
    m.update(b"\0\0\0\0", bytes(88))
    for layout in ("auto", "v4", "raw"):
        with pytest.raises(errors.NotACtMap):
            ctscope.open_map(m.path, layout=layout).to_polars(now_ns=NOW)


def test_percpu_hash_with_ct_sizes_is_rejected(make_map):
    m = make_map("cali_v4_ct4", bpfkernel.PERCPU_HASH, 16, 88, 16)
    with pytest.raises(errors.NotACtMap):
        ctscope.open_map(m.path).to_polars(now_ns=NOW)


def test_errors_hierarchy():
    for cls in (errors.PinNotFound, errors.NotACtMap, errors.PermissionDenied):
        assert issubclass(cls, errors.CtscopeError)


def test_read_only_open_leaves_map_untouched(make_ct_map):
    m = make_ct_map("v4", 4)
    want = entries(100)
    m.fill(want.items())
    before = bpfkernel.map_info(m.fd)
    for layout in ("auto", "raw"):
        ctscope.open_map(m.path, layout=layout).to_polars(now_ns=NOW)
    assert m.items() == want
    after = bpfkernel.map_info(m.fd)
    assert (before.id, before.max_entries, before.map_flags) == (after.id, after.max_entries, after.map_flags)


def test_permission_denied(make_ct_map):
    """A pin the process may not open gives PermissionDenied (not NotACtMap, though the kernel answers
    EACCES for directories too), and the message says what is needed. Set up as root: the pin belongs to
    another user with mode 0600 and the child drops CAP_DAC_OVERRIDE/READ_SEARCH/FOWNER/BPF/SYS_ADMIN."""
    import shutil

    if shutil.which("setpriv") is None:
        skip_or_fail("needs setpriv (util-linux) to drop capabilities")
    m = make_ct_map("v4", 4)
    m.fill(entries(3).items())
    os.chown(m.path, 65534, 65534)
    os.chmod(m.path, 0o600)
    code = ("import sys, ctscope\n"
            "from ctscope import errors\n"
            "try:\n"
            "    ctscope.open_map(sys.argv[1]).to_polars()\n"
            "except errors.PermissionDenied as e:\n"
            "    print('PermissionDenied:', e); sys.exit(0)\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e); sys.exit(3)\n"
            "print('no error'); sys.exit(4)\n")
    r = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner,-bpf,-sys_admin,-perfmon",
                        sys.executable, "-c", code, str(m.path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "root" in r.stdout or "CAP_BPF" in r.stdout, r.stdout


# ------------------------------------------------------------------------------------ ct3 layout, key by key
@pytest.mark.parametrize("written", ["v3-created", "v3"])
def test_ct3_layout_detected_when_read_key_by_key(pin_dir, written):
    """`auto` decides a ct3 map's offset-0 meaning from its values whichever way it reads:
    the batch probe's values, or (next_key, and kernels without batch ops) the first
    entries of the key-by-key walk. It used to assume v3 when reading key by key."""
    from ctscope.cli.synth import synth

    pin = pin_dir / "cali_v4_ct3"
    synth(pin, 2000, 4096, version=3, layout=written, seed=5)
    m = ctscope.open_map(pin)
    keys = ["proto", "addr_a", "port_a", "addr_b", "port_b"]
    frames = {}
    for method in ("batch", "next_key", "auto"):
        d = m.dump(method=method, now_ns=NOW)
        df = pl.DataFrame(d)
        assert d.layout == written, (method, d.layout, d.layout_reason)
        assert "sampled entries" in d.layout_reason, d.layout_reason
        assert df.height == 2000
        created, rst = df["created_ns"], df["rst_seen_ns"]
        if written == "v3-created":
            assert created.null_count() == 0 and (created <= df["last_seen_ns"]).all() and rst.null_count() == 2000
        else:
            assert created.null_count() == 2000 and rst.null_count() == 0
        frames[method] = df.sort(keys)
    assert frames["next_key"].equals(frames["batch"])
    # An explicit layout still wins over the sample.
    other = "v3" if written == "v3-created" else "v3-created"
    d = ctscope.open_map(pin, layout=other).dump(method="next_key")
    assert d.layout == other and "explicitly" in d.layout_reason


def test_empty_ct3_map_read_key_by_key_is_v3(make_ct_map):
    m = make_ct_map("v3", 4)
    d = ctscope.open_map(m.path).dump(method="next_key")
    assert d.layout == "v3" and "empty" in d.layout_reason
    assert pl.DataFrame(d).height == 0


# ------------------------------------------------------------------------------------ messages
def test_map_info_repr_is_python_not_rust(make_ct_map, make_map):
    m = make_ct_map("v3", 6)
    r = repr(ctscope.open_map(m.path).info)
    assert "version=3, family=6)" in r and "Some(" not in r, r
    plain = make_map("plain", bpfkernel.HASH, 8, 8, 16)
    r = repr(ctscope.open_map(plain.path).info)
    assert "version=None, family=None)" in r and "Some(" not in r, r
    assert "Some(" not in repr(ctscope.open_map(m.path)._native)


def test_wrong_map_type_message_has_the_right_article(make_map):
    arr = make_map("cali_v4_ct4", bpfkernel.ARRAY, 4, 88, 16)
    with pytest.raises(errors.NotACtMap, match=r": is an array map, expected hash or lru_hash$"):
        ctscope.open_map(arr.path).to_polars(now_ns=NOW)
    pc = make_map("cali_v4_ct3", bpfkernel.PERCPU_HASH, 16, 88, 16)
    with pytest.raises(errors.NotACtMap, match=r": is a percpu_hash map, expected"):
        ctscope.open_map(pc.path, layout="raw").to_polars()


# ------------------------------------------------------------------------------------ symlinks
def test_symlink_to_a_pin_is_read_through(make_ct_map, tmp_path, pin_dir):
    """Read commands follow a symlink and judge its target: a link outside the bpffs (or
    beside the pin) to a valid pin reads that pin. Repairs (writable) still refuse links."""
    m = make_ct_map("v4", 4)
    want = entries(500)
    m.fill(want.items())
    direct = ctscope.open_map(m.path)
    for link in (tmp_path / "link", pin_dir / "alias", tmp_path / "rel"):
        if link.name == "rel":
            link.symlink_to(os.path.relpath(m.path, tmp_path))
        else:
            link.symlink_to(m.path)
        cm = ctscope.open_map(link)
        assert cm.info.id == direct.info.id and cm.info.version == 4 and cm.path == str(link)
        got, _ = dump_raw(link)
        assert dict(got) == want
        # sizes, layout and version come from the pin, not the link's name
        assert ctscope.open_map(link).dump().layout == "v4"
    from ctscope._native import LiveMap

    with pytest.raises(errors.NotACtMap, match="symlink"):
        LiveMap(str(pin_dir / "alias"), writable=True)
    assert m.items() == want


def test_symlink_to_a_bad_target_names_the_target(pin_dir, tmp_path):
    plain = tmp_path / "cali_v4_ct4"
    plain.write_bytes(bytes(104))
    cases = {
        "out": (plain, errors.NotACtMap, "not on a BPF filesystem"),
        "dir": (pin_dir, errors.NotACtMap, "directory"),
        "dangling": (pin_dir / "gone", errors.PinNotFound, "does not exist"),
    }
    for name, (target, exc, why) in cases.items():
        link = pin_dir / f"link_{name}"
        link.symlink_to(target)
        with pytest.raises(exc) as ei:
            ctscope.open_map(link)
        msg = str(ei.value)
        assert msg.startswith(f"{link}: is a symlink to ") and why in msg, msg


def test_bpffs_own_files_are_not_map_pins(bpffs):
    """A fresh bpffs holds the kernel's maps.debug / progs.debug (bpf_preload): not pinned
    objects, which BPF_OBJ_GET cannot open. They are 'not a BPF map pin', not 'no such file'."""
    own = [bpffs / n for n in ("maps.debug", "progs.debug") if (bpffs / n).exists()]
    if not own:
        pytest.skip("this kernel's bpffs has no maps.debug/progs.debug (CONFIG_BPF_PRELOAD off)")
    for p in own:
        with pytest.raises(errors.NotACtMap, match="not a BPF map pin"):
            ctscope.open_map(p)
