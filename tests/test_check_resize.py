"""`ctscope check`, `resize` and `restore` against the real libbpf (issue 3's acceptance tests).

Each kernel test gets its own private mount namespace (`unshare -m`) with a fresh bpffs at
/sys/fs/bpf, libbpf's pin root for `LIBBPF_PIN_BY_NAME` maps. ctscope and bpftool run inside it
(`nsenter -m`); the test itself creates, fills and reads maps with the independent ctypes wrapper
(`bpfkernel`) through `/proc/<pid>/root/sys/fs/bpf`, so every verdict about entries is made by
code that shares nothing with ctscope.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import bpfkernel
import ctbytes
from conftest import skip_or_fail

HERE = Path(__file__).resolve().parent
BPF_SRC = HERE / "bpf" / "ct_reuse.c"
PIN = "/sys/fs/bpf/cali_v4_ct4"
PROG_PIN = "/sys/fs/bpf/prog"
BIG = 300_000  # acceptance 1: "a few hundred thousand" entries
SMALL = 10_000


# ----------------------------------------------------------------------------------------- helpers

class BpfNamespace:
    """A mount namespace holding a fresh bpffs at /sys/fs/bpf for as long as the test runs."""

    def __init__(self):
        self.holder = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             "mount -t bpf bpf /sys/fs/bpf && echo ready && exec sleep 3600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            err = self.holder.stderr.read() if self.holder.poll() is not None else ""
            self.close()
            skip_or_fail(f"cannot make a private mount namespace with a bpffs (unshare -m): {err.strip() or line}")
        self.root = f"/proc/{self.holder.pid}/root"
        # ctscope's per-pin write locks, private to this namespace (its pins have the same
        # paths as every other test namespace's, and as other checkouts' tests running now).
        self.lockdir = tempfile.mkdtemp(prefix="ctscope-locks-")
        self.env = {"CTSCOPE_LOCK_DIR": self.lockdir}

    def host(self, path: str) -> str:
        """The namespace's `path` as seen from this (the test's) process."""
        return self.root + path

    def run(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        full_env = dict(os.environ, **self.env, **(env or {}))
        # Entering a mount namespace resets the working directory to its root: set it again.
        wd = f"--wd={cwd or os.getcwd()}"
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", wd, "--", *args], capture_output=True,
                              text=True, env=full_env, timeout=300)

    def ctscope(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
        return self.run(sys.executable, "-m", "ctscope", *args, env=env, cwd=cwd)

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait()
        shutil.rmtree(getattr(self, "lockdir", ""), ignore_errors=True)
        # The namespace, its bpffs and every map pinned only there go away with the holder.


@pytest.fixture
def ns():
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            skip_or_fail(f"needs {tool} (util-linux)")
    n = BpfNamespace()
    yield n
    n.close()


def _clang_includes() -> list[str]:
    # <linux/types.h> includes <asm/types.h>, which Debian keeps under the multiarch directory.
    return [f"-I{Path(p).parent.parent}" for p in glob.glob("/usr/include/*/asm/types.h")[:1]]


def compile_object(out_dir: Path, **defines: int) -> Path:
    if shutil.which("clang") is None:
        skip_or_fail("needs clang (apt-get install clang libbpf-dev)")
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        skip_or_fail("needs libbpf-dev (bpf/bpf_helpers.h)")
    name = "ct_reuse" + "".join(f"_{k}{v}" for k, v in sorted(defines.items())) + ".o"
    obj = out_dir / name
    cmd = ["clang", "-O2", "-g", "-target", "bpf", *_clang_includes(),
           *[f"-D{k}={v}" for k, v in defines.items()], "-c", str(BPF_SRC), "-o", str(obj)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"clang failed: {r.stderr}"
    return obj


@pytest.fixture(scope="module")
def v4_object(tmp_path_factory):
    """Calico v3.31+'s cali_v4_ct4 (LRU_HASH 16/88, flags 0) with max_entries 1048576, pinned by name."""
    return compile_object(tmp_path_factory.mktemp("bpfobj"))


def make_map(ns: BpfNamespace, path: str, map_type: int, max_entries: int, n: int, flags: int = 0,
             name: str = "cali_v4_ct4") -> dict[bytes, bytes]:
    """Create, pin and fill a CT-shaped map (16/88); returns its entries as read back."""
    fd = bpfkernel.create_pinned(ns.host(path), map_type, 16, 88, max_entries, flags, name)
    try:
        bpfkernel.fill(fd, ((ctbytes.seq_key(i), ctbytes.seq_value(i, 88)) for i in range(n)), chunk=8192)
        got = read_all(fd)
    finally:
        os.close(fd)
    assert len(got) == n, f"the map kept {len(got)} of {n} entries"
    return got


def read_all(fd: int) -> dict[bytes, bytes]:
    """Every entry via BPF_MAP_LOOKUP_BATCH (growing the buffer on ENOSPC), slicing each
    returned buffer once so that 300,000 entries read back in well under a second."""
    import ctypes
    import struct

    info = bpfkernel.map_info(fd)
    ks, vs = info.key_size, info.value_size
    out: dict[bytes, bytes] = {}
    cursor: bytes | None = None
    count = 8192
    while True:
        ib = None if cursor is None else ctypes.create_string_buffer(cursor, len(cursor))
        ob = ctypes.create_string_buffer(max(ks, 4))
        kb, vb = ctypes.create_string_buffer(ks * count), ctypes.create_string_buffer(vs * count)
        a = bpfkernel._attr()
        bpfkernel._put(a, "<QQQQIIQQ", 0, bpfkernel._addr(ib), bpfkernel._addr(ob), bpfkernel._addr(kb),
                       bpfkernel._addr(vb), count, fd, 0, 0)
        finished = False
        try:
            bpfkernel._sys(bpfkernel.BPF_MAP_LOOKUP_BATCH, a, "MAP_LOOKUP_BATCH")
        except OSError as e:
            if e.errno == 28:  # ENOSPC: one bucket needs more room; retry the same cursor
                count *= 2
                continue
            if e.errno != 2:  # ENOENT ends the walk, with valid entries in the buffers
                raise
            finished = True
        n = struct.unpack_from("<I", a, 32)[0]
        keys, vals = kb.raw, vb.raw
        for i in range(n):
            k = keys[i * ks:(i + 1) * ks]
            assert k not in out, "a batch walk returned a key twice"
            out[k] = vals[i * vs:(i + 1) * vs]
        if finished:
            return out
        cursor = ob.raw


def pin_state(ns: BpfNamespace, path: str = PIN) -> dict:
    """Map id, parameters and entries of a pin, read independently of ctscope."""
    fd = bpfkernel.obj_get(ns.host(path))
    try:
        info = bpfkernel.map_info(fd)
        return {"id": info.id, "type": info.type, "max_entries": info.max_entries, "flags": info.map_flags,
                "entries": read_all(fd)}
    finally:
        os.close(fd)


def exists(ns: BpfNamespace, path: str) -> bool:
    return os.path.lexists(ns.host(path))


def bpftool_load(ns: BpfNamespace, obj: Path) -> subprocess.CompletedProcess:
    if shutil.which("bpftool") is None:
        skip_or_fail("needs bpftool on PATH (apt-get install bpftool)")
    if exists(ns, PROG_PIN):
        os.unlink(ns.host(PROG_PIN))
    return ns.run("bpftool", "prog", "load", str(obj), PROG_PIN)


def assert_same_entries(got: dict[bytes, bytes], want: dict[bytes, bytes]) -> None:
    assert len(got) == len(want), f"{len(got)} entries, expected {len(want)}"
    missing = [k for k in want if k not in got]
    assert not missing, f"{len(missing)} keys missing, e.g. {missing[0].hex()}"
    changed = [k for k in want if got[k] != want[k]]
    assert not changed, f"{len(changed)} values changed, e.g. key {changed[0].hex()}"


# ----------------------------------------------------------------------------- acceptance 1 to 4

@pytest.mark.kernel
def test_resize_makes_libbpf_reuse_the_pin_and_keeps_every_entry(ns, v4_object, tmp_path):
    # 1. A Calico v3.31+ map at the default size, holding a few hundred thousand entries.
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 512_000, BIG)

    # 2. An object declaring max_entries 1048576: libbpf refuses the pin.
    r = bpftool_load(ns, v4_object)
    assert r.returncode != 0
    assert "couldn't reuse pinned map" in r.stderr and "parameter mismatch" in r.stderr, r.stderr

    # 3. check names the field and both values, and exits 1.
    r = ns.ctscope("check", PIN, "--object", str(v4_object))
    assert r.returncode == 1, r.stdout + r.stderr
    row = next(line for line in r.stdout.splitlines() if line.strip().startswith("max_entries"))
    assert "512,000" in row and "1,048,576" in row and "MISMATCH" in row, row
    assert f"couldn't reuse pinned map at '{PIN}': parameter mismatch" in r.stdout
    assert f"ctscope resize {PIN} --max-entries 1048576 --yes" in r.stdout
    j = json.loads(ns.ctscope("check", PIN, "--object", str(v4_object), "--json").stdout)
    bad = [row for m in j["maps"] for row in m["rows"] if not row["ok"]]
    assert [(b["field"], b["pinned"], b["expected"]) for b in bad] == [("max_entries", 512_000, 1_048_576)]
    assert j["compatible"] is False

    # Without --yes, resize only prints the plan.
    before = pin_state(ns)
    r = ns.ctscope("resize", PIN, "--max-entries", "1048576", cwd=tmp_path)
    assert r.returncode == 0 and "nothing done" in r.stdout, r.stdout + r.stderr
    assert pin_state(ns)["id"] == before["id"] and not list(tmp_path.iterdir())

    # 4. resize --yes succeeds, check passes, the same load now reuses the pin.
    r = ns.ctscope("resize", PIN, "--max-entries", "1048576", "--yes", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    after = pin_state(ns)
    assert after["id"] != before["id"] and after["max_entries"] == 1_048_576 and after["type"] == bpfkernel.LRU_HASH
    assert_same_entries(after["entries"], original)
    assert not exists(ns, PIN + "_old") and not exists(ns, PIN + "_ctscope_swap")

    r = ns.ctscope("check", PIN, "--object", str(v4_object))
    assert r.returncode == 0, r.stdout + r.stderr
    r = bpftool_load(ns, v4_object)
    assert r.returncode == 0, r.stderr
    prog = json.loads(ns.run("bpftool", "-j", "prog", "show", "pinned", PROG_PIN).stdout)
    assert after["id"] in prog["map_ids"], "the loaded program must use the pinned (resized) map"

    # The backup holds every original entry and is a plain Arrow IPC file.
    backups = list(tmp_path.glob("ctscope-backup-cali_v4_ct4-*.arrow"))
    assert len(backups) == 1
    import polars as pl

    df = pl.read_ipc(backups[0])
    assert df.height == BIG and dict(zip(df["key"].to_list(), df["value"].to_list())) == original


# ------------------------------------------------------------------------------------ acceptance 5

@pytest.mark.kernel
def test_version_change_is_explained_and_resize_refuses(ns, v4_object, tmp_path):
    # A v3-style HASH / BPF_F_NO_PREALLOC map where the v4 object expects an LRU_HASH.
    original = make_map(ns, PIN, bpfkernel.HASH, 512_000, SMALL, flags=bpfkernel.BPF_F_NO_PREALLOC)
    r = bpftool_load(ns, v4_object)
    assert r.returncode != 0 and "parameter mismatch" in r.stderr

    r = ns.ctscope("check", PIN, "--object", str(v4_object))
    assert r.returncode == 1
    out = r.stdout
    for field, pinned, expected in (("map_type", "hash", "lru_hash"), ("map_flags", "0x1", "0x0")):
        row = next(line for line in out.splitlines()
                   if line.strip().startswith(field) and "ct_reuse" in line and "MISMATCH" in line)
        assert pinned in row.split() and expected in row.split(), row
    assert "different map version" in out and "refuses" in out
    assert "ct3 IPv4 (hash, flags 0x1" in out and "ct4 IPv4 (lru_hash, flags 0x0" in out
    assert "--max-entries" not in out.split("remedy:", 1)[1], "no resize command for a version change"

    before = pin_state(ns)
    r = ns.ctscope("resize", PIN, "--max-entries", "1048576", "--yes", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "refusing to resize" in r.stderr and "map_type" in r.stderr and "map_flags" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, "errors are one line"
    after = pin_state(ns)
    assert after["id"] == before["id"] and after["max_entries"] == 512_000
    assert_same_entries(after["entries"], original)
    assert not exists(ns, PIN + "_old") and not list(tmp_path.iterdir()), "refused before any backup or pin change"


# ------------------------------------------------------------------------------------ acceptance 6

PHASES = ("plan", "backup", "create", "copy", "verify", "pin-old", "pin-new", "swap", "delta", "remove-old")


def test_crash_phases_match_the_code():
    from ctscope.repair import resize

    assert resize.PHASES == PHASES


@pytest.mark.kernel
@pytest.mark.parametrize("phase", PHASES)
def test_sigkill_at_each_phase_then_rerun_recovers(ns, tmp_path, phase):
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    old_id = pin_state(ns)["id"]
    r = ns.ctscope("resize", PIN, "--max-entries", "40000", "--yes", cwd=tmp_path,
                   env={"CTSCOPE_TEST_CRASH_AFTER": phase})
    assert r.returncode == -signal.SIGKILL, f"expected SIGKILL after {phase}: {r.returncode} {r.stderr}"

    # What the kill left behind: the live pin is never missing, and never loses an entry.
    state = pin_state(ns)
    if PHASES.index(phase) < PHASES.index("swap"):
        assert state["id"] == old_id, "nothing is repinned before the swap"
        assert_same_entries(state["entries"], original)
    else:
        assert state["max_entries"] == 40_000
        assert_same_entries(state["entries"], original)
    assert exists(ns, PIN + "_old") == (PHASES.index("pin-old") <= PHASES.index(phase) < PHASES.index("remove-old"))
    assert exists(ns, PIN + "_ctscope_swap") == (phase == "pin-new")

    # check sees an interrupted migration as not compatible.
    r = ns.ctscope("check", PIN, "--max-entries", "40000")
    if exists(ns, PIN + "_old"):
        assert r.returncode == 1 and "interrupted migration" in r.stdout

    # A rerun recovers (Felix's rule) and completes; count and bytes verified.
    r = ns.ctscope("resize", PIN, "--max-entries", "40000", "--yes", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    final = pin_state(ns)
    assert final["max_entries"] == 40_000 and final["type"] == bpfkernel.LRU_HASH
    assert_same_entries(final["entries"], original)
    assert not exists(ns, PIN + "_old") and not exists(ns, PIN + "_ctscope_swap")
    r = ns.ctscope("check", PIN, "--max-entries", "40000")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.kernel
@pytest.mark.parametrize("phase", ("pin-old", "pin-new", "swap", "delta"))
def test_check_recover_applies_felix_rule(ns, tmp_path, phase):
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    old_id = pin_state(ns)["id"]
    r = ns.ctscope("resize", PIN, "--max-entries", "40000", "--yes", cwd=tmp_path,
                   env={"CTSCOPE_TEST_CRASH_AFTER": phase})
    assert r.returncode == -signal.SIGKILL
    r = ns.ctscope("check", PIN, "--recover")
    assert r.returncode == 1 and "add --yes" in r.stdout and exists(ns, PIN + "_old"), "no action without --yes"
    r = ns.ctscope("check", PIN, "--recover", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    state = pin_state(ns)
    assert state["id"] == old_id and state["max_entries"] == 20_000, "Felix's rule: <pin>_old back in place"
    assert_same_entries(state["entries"], original)
    assert not exists(ns, PIN + "_old") and not exists(ns, PIN + "_ctscope_swap")


# ------------------------------------------------------------------------- programs, delta, restore

@pytest.mark.kernel
def test_plan_lists_programs_using_the_map_and_keep_old_then_delta(ns, tmp_path):
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    same_size = compile_object(tmp_path, CT_MAX_ENTRIES=20_000)
    r = bpftool_load(ns, same_size)
    assert r.returncode == 0, r.stderr
    prog_id = json.loads(ns.run("bpftool", "-j", "prog", "show", "pinned", PROG_PIN).stdout)["id"]
    old_id = pin_state(ns)["id"]

    r = ns.ctscope("resize", PIN, "--max-entries", "40000", cwd=tmp_path)
    assert f"prog {prog_id} ct_lookup" in r.stdout and "until reloaded" in r.stdout

    backup = tmp_path / "first.arrow"
    r = ns.ctscope("resize", PIN, "--max-entries", "40000", "--keep-old", "--backup", str(backup), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert exists(ns, PIN + "_old") and pin_state(ns, PIN + "_old")["id"] == old_id

    # The program still writes to the old map: change one entry, add one, there.
    fd = bpfkernel.obj_get(ns.host(PIN + "_old"))
    k0, k_new = ctbytes.seq_key(0), ctbytes.seq_key(SMALL + 1)
    v0, v_new = b"\x07" * 88, ctbytes.seq_value(SMALL + 1, 88)
    bpfkernel.update_elem(fd, k0, v0)
    bpfkernel.update_elem(fd, k_new, v_new)
    os.close(fd)
    # ... and the new map got an entry of its own that the delta must not clobber.
    fd = bpfkernel.obj_get(ns.host(PIN))
    k_own = ctbytes.seq_key(SMALL + 2)
    bpfkernel.update_elem(fd, k_own, b"\x09" * 88)
    os.close(fd)

    r = ns.ctscope("resize", PIN, "--delta", "--backup", str(backup), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "copied and verified 2 entries" in r.stdout
    want = {**original, k0: v0, k_new: v_new, k_own: b"\x09" * 88}
    assert_same_entries(pin_state(ns)["entries"], want)
    assert not exists(ns, PIN + "_old")


@pytest.mark.kernel
def test_restore_writes_a_backup_back(ns, tmp_path):
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    backup = tmp_path / "b.arrow"
    r = ns.ctscope("resize", PIN, "--max-entries", "30000", "--backup", str(backup), "--yes")
    assert r.returncode == 0, r.stderr
    fd = bpfkernel.obj_get(ns.host(PIN))
    lost = [ctbytes.seq_key(i) for i in range(0, SMALL, 7)]
    for k in lost:
        bpfkernel.delete_elem(fd, k)
    os.close(fd)
    assert len(pin_state(ns)["entries"]) == SMALL - len(lost)

    r = ns.ctscope("restore", PIN, "--from", str(backup))
    assert r.returncode == 0 and "nothing done" in r.stdout
    assert len(pin_state(ns)["entries"]) == SMALL - len(lost)
    r = ns.ctscope("restore", PIN, "--from", str(backup), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_entries(pin_state(ns)["entries"], original)

    # A damaged backup is refused, not restored.
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(bytes(data))
    r = ns.ctscope("restore", PIN, "--from", str(bad), "--yes")
    assert r.returncode == 2 and str(bad) in r.stderr


@pytest.mark.kernel
def test_shrinking_below_the_entry_count_needs_force(ns, tmp_path):
    path = "/sys/fs/bpf/cali_v4_ct3"
    original = make_map(ns, path, bpfkernel.HASH, 20_000, SMALL, flags=bpfkernel.BPF_F_NO_PREALLOC,
                        name="cali_v4_ct3")
    r = ns.ctscope("resize", path, "--max-entries", "5000", "--yes", cwd=tmp_path)
    assert r.returncode == 2 and "holds 10,000 entries" in r.stderr and "--force" in r.stderr
    assert pin_state(ns, path)["max_entries"] == 20_000
    r = ns.ctscope("resize", path, "--max-entries", "5000", "--force", "--yes", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    kept = pin_state(ns, path)["entries"]
    assert len(kept) == 5000
    assert all(original[k] == v for k, v in kept.items())
    # The newest by last_seen (seq_value(i) has last_seen i + 1) are the ones kept.
    assert set(kept) == {ctbytes.seq_key(i) for i in range(SMALL - 5000, SMALL)}


@pytest.mark.kernel
def test_refuses_pins_outside_a_bpffs_and_symlinks(ns, tmp_path):
    make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, 100)
    plain = tmp_path / "cali_v4_ct4"
    plain.write_bytes(b"")
    r = ns.ctscope("resize", str(plain), "--max-entries", "40000", "--yes")
    assert r.returncode == 2 and "not on a BPF filesystem" in r.stderr
    # A link from outside into the bpffs, and one inside the bpffs leading out.
    link = tmp_path / "link"
    link.symlink_to(ns.host(PIN))
    r = ns.ctscope("resize", str(link), "--max-entries", "40000", "--yes")
    assert r.returncode == 2, r.stderr
    os.symlink(str(tmp_path), ns.host("/sys/fs/bpf/out"))
    r = ns.ctscope("restore", "/sys/fs/bpf/out/cali_v4_ct4", "--from", str(plain), "--yes")
    assert r.returncode == 2 and "not on a BPF filesystem" in r.stderr
    os.symlink("cali_v4_ct4", ns.host("/sys/fs/bpf/alias"))
    r = ns.ctscope("resize", "/sys/fs/bpf/alias", "--max-entries", "40000", "--yes")
    assert r.returncode == 2 and "symlink" in r.stderr
    assert pin_state(ns)["max_entries"] == 20_000


@pytest.mark.kernel
def test_check_reports_old_pins_leftovers_and_fill(ns):
    # HASH (ct3) for the fill: an LRU map evicts before it is 91% full (facts §8).
    ct3 = "/sys/fs/bpf/cali_v4_ct3"
    make_map(ns, ct3, bpfkernel.HASH, 1000, 910, flags=bpfkernel.BPF_F_NO_PREALLOC, name="cali_v4_ct3")
    os.close(bpfkernel.create_pinned(ns.host("/sys/fs/bpf/cali_v4_ct2"), bpfkernel.HASH, 16, 64, 100, 1, "cali_v4_ct2"))
    r = ns.ctscope("check", ct3, "--json")
    rep = json.loads(r.stdout)["maps"][0]
    assert r.returncode == 0, r.stderr
    assert rep["entries"] == 910 and rep["fill"] == pytest.approx(0.91)
    notes = " ".join(rep["notes"])
    assert "fill 91.0%, expired entries included" in notes and "more than 90% is still live" in notes
    assert "cali_v4_ct2 is a ct2 pin left beside ct3" in notes
    # A named pin that does not exist is an error (exit 3), even beside a compatible one.
    r = ns.ctscope("check", ct3, "/sys/fs/bpf/no_such_pin")
    assert r.returncode == 3 and "no_such_pin" in r.stderr, r.stdout + r.stderr


@pytest.mark.kernel
def test_pin_name_decides_what_the_loader_expects(ns, v4_object, tmp_path):
    """A ct3 map (HASH, NO_PREALLOC, kernel name cali_v4_ct3) pinned at cali_v4_ct4: libbpf
    compares it with the ct4 declaration and refuses, so check must not call it compatible
    by its kernel name, and resize must refuse (it cannot change type or flags)."""
    make_map(ns, PIN, bpfkernel.HASH, 1_048_576, SMALL, flags=bpfkernel.BPF_F_NO_PREALLOC, name="cali_v4_ct3")
    r = bpftool_load(ns, v4_object)
    assert r.returncode != 0 and "parameter mismatch" in r.stderr, r.stderr
    r = ns.ctscope("check", PIN, "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    rep = json.loads(r.stdout)["maps"][0]
    bad = {row["field"]: (row["pinned"], row["expected"]) for row in rep["rows"] if not row["ok"]}
    assert bad == {"map_type": ("hash", "lru_hash"), "map_flags": (1, 0)}
    assert any("named for ct4" in n for n in rep["notes"])
    r = ns.ctscope("resize", PIN, "--max-entries", "2097152", "--yes", cwd=tmp_path)
    assert r.returncode == 2 and "named for ct4" in r.stderr, r.stdout + r.stderr
    assert pin_state(ns)["max_entries"] == 1_048_576 and not list(tmp_path.iterdir())


@pytest.mark.kernel
def test_leftover_lower_version_pin_is_not_held_to_the_configured_size(ns, tmp_path):
    """Felix leaves cali_v4_ct3 behind after the upgrade to ct4 and never loads it again:
    check must not fail forever on it because its size differs from bpfMapSizeConntrack."""
    os.makedirs(ns.host("/sys/fs/bpf/tc/globals"))
    make_map(ns, "/sys/fs/bpf/tc/globals/cali_v4_ct4", bpfkernel.LRU_HASH, 4096, 100)
    make_map(ns, "/sys/fs/bpf/tc/globals/cali_v4_ct3", bpfkernel.HASH, 2048, 50, flags=bpfkernel.BPF_F_NO_PREALLOC,
             name="cali_v4_ct3")
    felix = tmp_path / "felix.yaml"
    felix.write_text("kind: FelixConfiguration\nspec:\n  bpfMapSizeConntrack: 4096\n")
    size_file = tmp_path / "size"  # Felix's auto-grow file, holding nothing bigger
    size_file.write_text("0\n")
    args = ("check", "--bpffs", "/sys/fs/bpf", "--felix-config", str(felix), "--size-file", str(size_file), "--json")
    r = ns.ctscope(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    maps = {Path(m["pin"]).name: m for m in json.loads(r.stdout)["maps"]}
    ct3 = maps["cali_v4_ct3"]
    assert ct3["compatible"] and ct3["superseded_by"].endswith("cali_v4_ct4")
    assert not [row for row in ct3["rows"] if row["field"] == "max_entries"]
    assert any("rm /sys/fs/bpf/tc/globals/cali_v4_ct3" in x for x in ct3["remedy"])
    assert maps["cali_v4_ct4"]["compatible"] and maps["cali_v4_ct4"]["superseded_by"] is None
    # The current pin is still held to it.
    felix.write_text("kind: FelixConfiguration\nspec:\n  bpfMapSizeConntrack: 8192\n")
    r = ns.ctscope(*args)
    maps = {Path(m["pin"]).name: m for m in json.loads(r.stdout)["maps"]}
    assert r.returncode == 1 and not maps["cali_v4_ct4"]["compatible"] and maps["cali_v4_ct3"]["compatible"]


@pytest.mark.kernel
def test_object_loaded_as_compiled_is_not_blamed_for_the_configured_size(ns, tmp_path):
    """Pin and object agree (4096) while FelixConfiguration says 8192: a plain load reuses the
    pin (bpftool proves it), so check must not print libbpf's failure for it, and must warn
    that resizing to the configured size would break that load."""
    obj = compile_object(tmp_path, CT_MAX_ENTRIES=4096)
    make_map(ns, PIN, bpfkernel.LRU_HASH, 4096, 100)
    felix = tmp_path / "felix.yaml"
    felix.write_text("kind: FelixConfiguration\nspec:\n  bpfMapSizeConntrack: 8192\n")
    size_file = tmp_path / "size"
    size_file.write_text("0\n")
    base = ("check", PIN, "--object", str(obj), "--felix-config", str(felix), "--size-file", str(size_file))
    r = ns.ctscope(*base)
    assert r.returncode == 1, r.stdout + r.stderr  # the configured size still differs
    assert "couldn't reuse pinned map" not in r.stdout
    assert "libbpf reuses this pin when loading" in r.stdout
    assert "after the resize that load would fail" in r.stdout
    assert bpftool_load(ns, obj).returncode == 0
    # Loaded the way Calico's loader does it (configured size set first), libbpf does refuse.
    r = ns.ctscope(*base, "--loader", "calico")
    assert r.returncode == 1 and "couldn't reuse pinned map" in r.stdout
    assert "after the resize that load would fail" not in r.stdout
    # Without a FelixConfiguration, --max-entries is the size Calico's loader would set.
    r = ns.ctscope("check", PIN, "--object", str(obj), "--loader", "calico", "--max-entries", "8192", "--json")
    rows = [row for row in json.loads(r.stdout)["maps"][0]["rows"] if "as Calico loads it" in row["source"]]
    assert r.returncode == 1 and any(row["field"] == "max_entries" and row["expected"] == 8192 for row in rows)


# ----------------------------------------------------------------- configuration (no kernel needed)

def test_felix_configuration_sizes(tmp_path):
    from ctscope import felixconfig
    from ctscope.repair import check

    cpus = tmp_path / "possible"
    cpus.write_text("0-3,6\n")
    assert felixconfig.possible_cpus(str(cpus)) == 5
    missing = str(tmp_path / "no-size-file")
    yaml_cfg = tmp_path / "felix.yaml"
    yaml_cfg.write_text("apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n  name: default\n"
                        "spec:\n  bpfEnabled: true\n  bpfMapSizeConntrack: 1048576\n")
    assert check.felix_size(str(yaml_cfg), None).value == 1_048_576  # default size file absent here
    json_cfg = tmp_path / "felix.json"
    json_cfg.write_text(json.dumps({"kind": "FelixConfigurationList", "items": [
        {"kind": "FelixConfiguration", "metadata": {"name": "node.x"}, "spec": {}},
        {"kind": "FelixConfiguration", "metadata": {"name": "default"},
         "spec": {"bpfMapSizeConntrack": 600000, "bpfMapSizePerCPUConntrack": 100000}}]}))
    s = check.felix_size(str(json_cfg), None, cpus_path=str(cpus))
    assert (s.value, "x 5 possible CPUs" in s.source) == (500_000, True)
    size_file = tmp_path / "bpf_ct_map_size"
    size_file.write_text("2097152\n")
    s = check.felix_size(str(yaml_cfg), str(size_file))
    assert s.value == 2_097_152 and "auto-grow" in s.source
    size_file.write_text("1000\n")  # smaller: the configuration wins
    assert check.felix_size(str(yaml_cfg), str(size_file)).value == 1_048_576
    # Without a FelixConfiguration: Calico's default (felix/config/config_params.go), as an assumption.
    s = check.felix_size(None, None)
    assert (s.value, s.assumed, s.floor) == (512_000, True, None) and "default" in s.source
    from ctscope.errors import BadArgument

    with pytest.raises(BadArgument):
        check.felix_size(None, missing)


@pytest.mark.parametrize("text", ["spec: [unclosed", "kind: Deployment\nspec: {}\n",
                                  "kind: FelixConfiguration\nspec:\n  bpfMapSizeConntrack: lots\n", "{not json"])
def test_unparseable_felix_configuration_is_a_one_line_error(tmp_path, text):
    cfg = tmp_path / "felix.yaml"
    cfg.write_text(text)
    r = subprocess.run([sys.executable, "-m", "ctscope", "check", "/sys/fs/bpf/none", "--felix-config", str(cfg)],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctscope: error: ") and str(cfg) in lines[0]


def test_object_maps_are_parsed_with_aya_obj(tmp_path):
    from ctscope._native import object_maps

    obj = compile_object(tmp_path, CT_MAX_ENTRIES=4242, CT_MAP_TYPE=1, CT_MAP_FLAGS=1)
    (m,) = object_maps(str(obj))
    assert m == {"name": "cali_v4_ct4", "map_type": "hash", "map_type_id": 1, "key_size": 16, "value_size": 88,
                 "max_entries": 4242, "map_flags": 1, "map_extra": 0, "pinning": "by_name", "section": ".maps"}
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"\x7fELF not really")
    from ctscope.errors import BadArgument

    with pytest.raises(BadArgument, match="junk.o"):
        object_maps(str(junk))


# ------------------------------------------------ fresher entries win: --delta, recovery (kernel)

def with_last_seen(value: bytes, ns: int) -> bytes:
    """`value` with last_seen (u64 at offset 8 in every CT value version) set to `ns`."""
    return value[:8] + ns.to_bytes(8, "little") + value[16:]


def put(ns: BpfNamespace, path: str, items: dict[bytes, bytes]) -> None:
    fd = bpfkernel.obj_get(ns.host(path))
    try:
        for k, v in items.items():
            bpfkernel.update_elem(fd, k, v)
    finally:
        os.close(fd)


@pytest.mark.kernel
def test_delta_without_backup_keeps_values_written_to_the_new_map(ns, tmp_path):
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    r = ns.ctscope("resize", PIN, "--max-entries", "40000", "--keep-old", "--yes", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    k = [ctbytes.seq_key(i) for i in range(4)]
    k_old_only = ctbytes.seq_key(SMALL + 1)
    # The new map got fresher values for k0 (the live programs were reloaded onto it) ...
    new_vals = {k[0]: with_last_seen(b"\x01" * 88, 10**12), k[2]: with_last_seen(b"\x02" * 88, 10**12)}
    put(ns, PIN, new_vals)
    # ... while the old map, still used by an unreloaded program, got an older k0, a newer k1,
    # a k2 older than the new map's, and a key of its own.
    old_vals = {k[0]: with_last_seen(b"\x03" * 88, 10**9), k[1]: with_last_seen(b"\x04" * 88, 10**12),
                k[2]: with_last_seen(b"\x05" * 88, 10**12 - 1), k_old_only: ctbytes.seq_value(SMALL + 1, 88)}
    put(ns, PIN + "_old", old_vals)

    plan = ns.ctscope("resize", PIN, "--delta", cwd=tmp_path)
    assert plan.returncode == 0 and "nothing done" in plan.stdout, plan.stdout + plan.stderr
    r = ns.ctscope("resize", PIN, "--delta", "--yes", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    want = {**original, k[0]: new_vals[k[0]], k[1]: old_vals[k[1]], k[2]: new_vals[k[2]],
            k_old_only: old_vals[k_old_only]}
    got = pin_state(ns)["entries"]
    assert got[k[0]] == new_vals[k[0]] and got[k[2]] == new_vals[k[2]], "fresher values of the new map kept"
    assert_same_entries(got, want)
    assert not exists(ns, PIN + "_old")
    # The rule used is named, in the plan and in the result.
    assert "last_seen" in plan.stdout, plan.stdout
    assert "copied and verified 2 entries" in r.stdout and "rule: CT last_seen" in r.stdout, r.stdout


@pytest.mark.kernel
def test_delta_without_backup_on_a_non_ct_pair_keeps_felix_rule(ns, tmp_path):
    """No last_seen to compare (not a CT layout): every old entry whose value differs is copied."""
    plain = "/sys/fs/bpf/plain_map"
    for path, val in ((plain + "_old", b"O"), (plain, b"N")):
        fd = bpfkernel.create_pinned(ns.host(path), bpfkernel.HASH, 8, 24, 1000, 0, "plain_map")
        for i in range(10):
            bpfkernel.update_elem(fd, i.to_bytes(8, "little"), (val * 8) + (i + 100).to_bytes(16, "little"))
        os.close(fd)
    r = ns.ctscope("resize", plain, "--delta", "--yes", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "copied and verified 10 entries" in r.stdout and "Felix's delta copy" in r.stdout, r.stdout
    got = pin_state(ns, plain)["entries"]
    assert got == {i.to_bytes(8, "little"): b"O" * 8 + (i + 100).to_bytes(16, "little") for i in range(10)}


@pytest.mark.kernel
@pytest.mark.parametrize("how", ["resize --recover", "check --recover", "rerun"])
def test_recovery_after_keep_old_carries_the_new_maps_entries_back(ns, tmp_path, how):
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    old_id = pin_state(ns)["id"]
    r = ns.ctscope("resize", PIN, "--max-entries", "40000", "--keep-old", "--yes", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    new_id = pin_state(ns)["id"]
    # Written to the new map since: 50 new connections and a fresher k0 ...
    added = {ctbytes.seq_key(SMALL + i): ctbytes.seq_value(SMALL + i, 88) for i in range(50)}
    k0, k1 = ctbytes.seq_key(0), ctbytes.seq_key(1)
    put(ns, PIN, {**added, k0: with_last_seen(b"\x01" * 88, 10**12), k1: with_last_seen(b"\x02" * 88, 10**9)})
    # ... and to the old map a k1 fresher than the new map's.
    put(ns, PIN + "_old", {k1: with_last_seen(b"\x03" * 88, 10**12)})
    want = {**original, **added, k0: with_last_seen(b"\x01" * 88, 10**12), k1: with_last_seen(b"\x03" * 88, 10**12)}

    plan = None
    if how == "resize --recover":
        plan = ns.ctscope("resize", PIN, "--recover", cwd=tmp_path)
        assert plan.returncode == 0 and "nothing done" in plan.stdout, plan.stdout + plan.stderr
        assert pin_state(ns)["id"] == new_id
        r = ns.ctscope("resize", PIN, "--recover", "--yes", cwd=tmp_path)
    elif how == "check --recover":
        r = ns.ctscope("check", PIN, "--recover", "--yes", "--max-entries", "20000")
    else:
        r = ns.ctscope("resize", PIN, "--max-entries", "40000", "--yes", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    state = pin_state(ns)
    if how == "rerun":  # recovered, then resized again: the new map holds it all
        assert state["id"] not in (old_id, new_id) and state["max_entries"] == 40_000
    else:
        assert state["id"] == old_id and state["max_entries"] == 20_000
    assert_same_entries(state["entries"], want)
    assert not exists(ns, PIN + "_old")
    assert "carried and verified 51 entries" in r.stdout and "50 new keys, 1 newer values" in r.stdout, r.stdout
    assert plan is None or "carry 51 entries" in plan.stdout, plan.stdout


@pytest.mark.kernel
@pytest.mark.parametrize("kind", ["hash", "lru_hash"])
def test_recovery_refuses_when_the_new_entries_do_not_fit_the_old_map(ns, tmp_path, kind):
    if kind == "hash":
        path, mtype, flags, name = "/sys/fs/bpf/cali_v4_ct3", bpfkernel.HASH, bpfkernel.BPF_F_NO_PREALLOC, "cali_v4_ct3"
    else:
        path, mtype, flags, name = PIN, bpfkernel.LRU_HASH, 0, "cali_v4_ct4"
    original = make_map(ns, path, mtype, 12_000, SMALL, flags=flags, name=name)
    r = ns.ctscope("resize", path, "--max-entries", "40000", "--keep-old", "--yes", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    new_id = pin_state(ns, path)["id"]
    added = {ctbytes.seq_key(SMALL + i): ctbytes.seq_value(SMALL + i, 88) for i in range(5000)}
    put(ns, path, added)

    for cmd in (("resize", path, "--recover", "--yes"), ("resize", path, "--max-entries", "50000", "--yes"),
                ("check", path, "--recover", "--yes")):
        r = ns.ctscope(*cmd, cwd=tmp_path)
        assert r.returncode == 2, (cmd, r.stdout + r.stderr)
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and "would lose" in err[0] and "--delta" in err[0] and "--force" in err[0], r.stderr
        if kind == "hash":
            assert "would lose 3,000 of the 5,000" in err[0], err[0]
        assert pin_state(ns, path)["id"] == new_id and exists(ns, path + "_old"), "nothing repinned"
    assert_same_entries(pin_state(ns, path)["entries"], {**original, **added})

    if kind == "hash":  # --force puts the old map back with what fits; the rest is reported lost
        r = ns.ctscope("resize", path, "--recover", "--force", "--yes", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "3,000 entries of cali_v4_ct3 did not fit" in r.stdout, r.stdout
        state = pin_state(ns, path)
        assert state["max_entries"] == 12_000 and len(state["entries"]) == 12_000
        assert all(state["entries"].get(k) == v for k, v in original.items())
    else:  # the way out the error names: finish the migration
        r = ns.ctscope("resize", path, "--delta", "--yes", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert_same_entries(pin_state(ns, path)["entries"], {**original, **added})
    assert not exists(ns, path + "_old")


# -------------------------------------------------------- backups, --force on LRU, restore sizes

@pytest.mark.kernel
def test_rerun_removes_partial_backups_left_by_a_kill(ns, tmp_path):
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 512_000, BIG)
    holder = ns.holder.pid  # a live process: its partial file (a concurrent run) must stay
    live_partial = tmp_path / f".ctscope-backup-cali_v4_ct4-20260101T000000Z.arrow.{holder}.partial"
    live_partial.write_bytes(b"x")
    other_map = tmp_path / ".ctscope-backup-cali_v6_ct4-20260101T000000Z.arrow.999999999.partial"
    other_map.write_bytes(b"x")

    proc = subprocess.Popen(["nsenter", "-t", str(holder), "-m", f"--wd={tmp_path}", "--", sys.executable, "-m",
                             "ctscope", "resize", PIN, "--max-entries", "600000", "--yes"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, **ns.env))
    killed = None
    while proc.poll() is None:
        found = list(tmp_path.glob(f".ctscope-backup-cali_v4_ct4-*.arrow.{proc.pid}.partial"))
        if found:
            proc.send_signal(signal.SIGKILL)
            killed = found[0]
            break
    proc.communicate()
    assert killed is not None and proc.returncode == -signal.SIGKILL, "the backup was not caught in progress"
    assert killed.exists() and not list(tmp_path.glob("*.arrow")), "a kill during the backup leaves its partial file"
    assert pin_state(ns)["max_entries"] == 512_000

    r = ns.ctscope("resize", PIN, "--max-entries", "600000", cwd=tmp_path)
    assert r.returncode == 0 and killed.name in r.stdout and f"pid {proc.pid} gone" in r.stdout, r.stdout + r.stderr
    assert killed.exists(), "the plan changes nothing"
    r = ns.ctscope("resize", PIN, "--max-entries", "600000", "--yes", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if killed.name in x)
    assert line.startswith("removed ") and "partial backup" in line and f"pid {proc.pid} is gone" in line, r.stdout
    assert not killed.exists() and live_partial.exists() and other_map.exists()
    assert len(list(tmp_path.glob("ctscope-backup-cali_v4_ct4-*.arrow"))) == 1
    assert_same_entries(pin_state(ns)["entries"], original)


@pytest.mark.kernel
def test_force_shrink_of_an_lru_map_reports_what_it_kept(ns, tmp_path):
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    r = ns.ctscope("resize", PIN, "--max-entries", "5000", "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "copy at most 5,000 of 10,000 entries" in r.stdout and "evicts before it is full" in r.stdout, r.stdout
    assert "drops 5,000" not in r.stdout, "an LRU map keeps fewer than max_entries: it drops more"
    r = ns.ctscope("resize", PIN, "--max-entries", "5000", "--force", "--yes", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    kept = pin_state(ns)["entries"]
    assert res["copied"] == len(kept) and res["dropped"] == SMALL - len(kept), (res["copied"], res["dropped"], len(kept))
    assert len(kept) < 5000 and all(original[k] == v for k, v in kept.items())
    # The newest by last_seen (seq_value(i) has last_seen i + 1) are the ones kept.
    assert set(kept) == {ctbytes.seq_key(i) for i in range(SMALL - len(kept), SMALL)}
    # Without --json the counts are printed.
    os.unlink(ns.host(PIN))
    make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    r = ns.ctscope("resize", PIN, "--max-entries", "5000", "--force", "--yes", cwd=tmp_path)
    n = len(pin_state(ns)["entries"])
    assert f"the new map holds {n:,} of the 10,000 entries" in r.stdout and f"{SMALL - n:,} were dropped" in r.stdout, \
        r.stdout


@pytest.mark.kernel
def test_restore_into_a_too_small_lru_map_suggests_a_size_that_works(ns, tmp_path):
    import math
    import re

    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    backup = tmp_path / "b.arrow"
    r = ns.ctscope("resize", PIN, "--max-entries", "30000", "--backup", str(backup), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    # Another node's map: LRU, too small, already holding 100 entries of its own.
    os.makedirs(ns.host("/sys/fs/bpf/tc/globals"))
    target = "/sys/fs/bpf/tc/globals/cali_v4_ct4"
    fd = bpfkernel.create_pinned(ns.host(target), bpfkernel.LRU_HASH, 16, 88, 8000, 0, "cali_v4_ct4")
    own = {ctbytes.seq_key(50_000 + i): ctbytes.seq_value(50_000 + i, 88) for i in range(100)}
    for k, v in own.items():
        bpfkernel.update_elem(fd, k, v)
    os.close(fd)

    r = ns.ctscope("restore", target, "--from", str(backup), "--yes")
    assert r.returncode == 2, r.stdout + r.stderr
    m = re.search(r"(ctscope resize \S+ --max-entries (\d+) --yes)", r.stderr)
    assert m, r.stderr
    # Following the suggestion works.
    r = ns.ctscope(*m[1].split()[1:], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = ns.ctscope("restore", target, "--from", str(backup), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_entries(pin_state(ns, target)["entries"], {**original, **own})
    assert int(m[2]) == math.ceil(1.25 * (SMALL + 100)), "headroom for an LRU map, counting the entries it holds"
