"""Security properties (issue 5, "Security"):

* read commands hold only a read-only map fd: the kernel itself refuses an update
  through the fd ctscope opened, and an audit of every bpf(2) call a read command
  makes (an LD_PRELOAD shim over libc's syscall(), tests/bpf_audit.c) shows only
  BPF_OBJ_GET with BPF_F_RDONLY and no command that changes a map or a pin;
* write commands (resize, restore, check --recover) change nothing without --yes;
* resize and restore refuse pins outside a bpffs and symlinks, also symlinks that
  lead out of the bpffs;
* snapshot and backup paths stay where the user said, whatever the map is called.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bpfkernel
import ctscope
from conftest import build_c, skip_or_fail

pytestmark = pytest.mark.kernel

TESTS_DIR = Path(__file__).resolve().parent

# enum bpf_cmd values that change a map, a pin or create objects.
WRITE_CMDS = {
    0: "MAP_CREATE", 2: "MAP_UPDATE_ELEM", 3: "MAP_DELETE_ELEM", 5: "PROG_LOAD", 6: "OBJ_PIN",
    21: "MAP_LOOKUP_AND_DELETE_ELEM", 22: "MAP_FREEZE", 25: "MAP_LOOKUP_AND_DELETE_BATCH",
    26: "MAP_UPDATE_BATCH", 27: "MAP_DELETE_BATCH",
}
BPF_OBJ_GET = 7


def synth(pin: Path, n: int, max_entries: int | None = None) -> None:
    from ctscope.cli.synth import synth as _synth

    _synth(str(pin), n, max_entries=max_entries)


def bpf_map_fds() -> dict[int, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link == "anon_inode:bpf-map":
            out[int(fd)] = link
    return out


def fd_access_mode(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8) & os.O_ACCMODE
    raise AssertionError("no flags in fdinfo")


# ------------------------------------------------------------------ read-only fds
def test_read_only_fd_refuses_updates(pin_dir):
    pin = pin_dir / "cali_v4_ct4"
    synth(pin, 1_000, 2_048)
    ref = bpfkernel.obj_get(pin)  # our own read-write fd, for the control and the check
    try:
        before_items = bpfkernel.items(ref)
        key = next(iter(before_items))
        # Control: a read-write fd can update, so the refusals below mean something.
        bpfkernel.update_elem(ref, key, before_items[key])

        known = bpf_map_fds()
        m = ctscope.open_map(pin)
        d = m.dump(threads=2)
        first = d.next_batch()  # a dump in flight: its workers share ctscope's fd
        assert first is not None
        new = sorted(set(bpf_map_fds()) - set(known))
        assert new, "ctscope holds no map fd of its own"
        for fd in new:
            assert bpfkernel.map_info(fd).id == bpfkernel.map_info(ref).id
            assert fd_access_mode(fd) == os.O_RDONLY, f"fd {fd} is not opened O_RDONLY"
            for what, call in [("update", lambda: bpfkernel.update_elem(fd, key, bytes(88))),
                               ("insert", lambda: bpfkernel.update_elem(fd, b"\x07" * 16, bytes(88))),
                               ("delete", lambda: bpfkernel.delete_elem(fd, key)),
                               ("update_batch", lambda: bpfkernel.update_batch(fd, key, bytes(88), 1))]:
                with pytest.raises(PermissionError) as e:
                    call()
                assert e.value.errno == errno.EPERM, f"{what} on ctscope's fd {fd}: {e.value}"
            # Reading through it works (it is the fd ctscope dumps with).
            assert bpfkernel.lookup_elem(fd, key, 88) == before_items[key]
        while d.next_batch() is not None:
            pass
        del d, m
        assert bpfkernel.items(ref) == before_items
    finally:
        os.close(ref)


@pytest.fixture(scope="module")
def audit_lib(tmp_path_factory) -> str:
    so = tmp_path_factory.mktemp("audit") / "bpf_audit.so"
    return str(build_c(TESTS_DIR / "bpf_audit.c", so, "-shared", "-fPIC", libs=("-ldl",)))


def audited(audit_lib: str, log: Path, *args, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, list]:
    """Run `ctscope ARGS` with every bpf(2) call logged; returns (result, [(cmd, file_flags)])."""
    log.unlink(missing_ok=True)
    env = dict(os.environ, LD_PRELOAD=audit_lib, CTSCOPE_BPF_AUDIT=str(log))
    r = subprocess.run([sys.executable, "-m", "ctscope", *map(str, args)], capture_output=True, text=True,
                       timeout=300, env=env, cwd=cwd)
    calls = []
    if log.exists():
        for line in log.read_text().splitlines():
            kv = dict(p.split("=") for p in line.split())
            calls.append((int(kv["cmd"]), int(kv["file_flags"])))
    return r, calls


def assert_read_only(calls: list, what: str) -> None:
    gets = [f for c, f in calls if c == BPF_OBJ_GET]
    assert gets, f"{what}: no BPF_OBJ_GET seen (is the audit shim working?)"
    assert all(f & bpfkernel.BPF_F_RDONLY for f in gets), f"{what}: BPF_OBJ_GET without BPF_F_RDONLY: {gets}"
    writes = sorted({WRITE_CMDS[c] for c, _ in calls if c in WRITE_CMDS})
    assert not writes, f"{what}: issued {writes}"


def test_audit_shim_sees_writes(audit_lib, pin_dir, tmp_path):
    """Control: the shim records a write command's calls (so a clean audit means something)."""
    pin = pin_dir / "cali_v4_ct4"
    r, calls = audited(audit_lib, tmp_path / "log", "synth", pin, "--entries", "10")
    assert r.returncode == 0, r.stderr
    with pytest.raises(AssertionError):
        assert_read_only(calls + [(BPF_OBJ_GET, 0)], "synth")
    assert {0, 6} <= {c for c, _ in calls}  # MAP_CREATE, OBJ_PIN


def test_read_commands_only_read(audit_lib, pin_dir, tmp_path):
    root = pin_dir / "fs"
    (root / "tc" / "globals").mkdir(parents=True)
    pin = root / "tc" / "globals" / "cali_v4_ct4"
    synth(pin, 3_000, 4_096)
    ref = bpfkernel.obj_get(pin)
    try:
        before = bpfkernel.items(ref)
        out = tmp_path / "out"
        out.mkdir()
        commands = [
            ["dump", pin, "-n", "5"],
            ["dump", pin, "--method", "next_key", "-f", "ndjson"],
            ["dump", pin, "-o", out / "d.parquet"],
            ["dump", "--bpffs", root, "--layout", "raw", "-f", "csv"],
            ["maps", "--bpffs", root],
            ["stats", pin],
            ["top", pin, "--by", "dport"],
            ["expired", pin, "--all", "-n", "5"],
            ["query", pin, "SELECT proto, count(*) AS n FROM ct GROUP BY proto"],
            ["metrics", pin],
            ["report", pin, "-o", out / "r.html"],
            ["snapshot", pin, "-o", out / "s.parquet"],
            ["check", pin],
            # write commands without --yes are read commands too
            ["resize", pin, "--max-entries", "8192"],
            ["check", pin, "--recover"],
        ]
        for args in commands:
            r, calls = audited(audit_lib, tmp_path / "log", *args, cwd=out)
            what = "ctscope " + " ".join(map(str, args))
            assert r.returncode == 0, f"{what}: {r.stderr}"
            assert_read_only(calls, what)
        assert bpfkernel.items(ref) == before
        assert sorted(p.name for p in out.iterdir()) == ["d.parquet", "r.html", "s.parquet"]
    finally:
        os.close(ref)


# --------------------------------------------------------------- --yes for writes
def map_state(pin: Path) -> tuple:
    fd = bpfkernel.obj_get(pin, bpfkernel.BPF_F_RDONLY)
    try:
        info = bpfkernel.map_info(fd)
        return info.id, info.max_entries, bpfkernel.items(fd)
    finally:
        os.close(fd)


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctscope", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_write_commands_act_only_with_yes(pin_dir, tmp_path):
    pin = pin_dir / "cali_v4_ct4"
    synth(pin, 1_500, 2_048)
    work = tmp_path / "work"
    work.mkdir()
    state = map_state(pin)

    # resize: the plan only.
    r = cli("resize", pin, "--max-entries", "4096", cwd=work)
    assert r.returncode == 0 and "--yes" in r.stdout, r.stdout + r.stderr
    assert map_state(pin) == state
    assert sorted(p.name for p in pin_dir.iterdir()) == ["cali_v4_ct4"]
    assert list(work.iterdir()) == [], "resize without --yes wrote a backup"
    # ... and with --yes it acts (so the refusal above was the flag's doing).
    backup = work / "b.arrow"
    r = cli("resize", pin, "--max-entries", "4096", "--backup", backup, "--yes", cwd=work)
    assert r.returncode == 0, r.stderr
    new_id, new_max, new_items = map_state(pin)
    assert new_max == 4096 and new_id != state[0] and new_items == state[2]
    assert backup.exists()

    # restore into a map whose entries differ from the backup: nothing without --yes.
    target = pin_dir / "target_ct4"
    synth(target, 10, 4_096)
    tstate = map_state(target)
    r = cli("restore", target, "--from", backup, cwd=work)
    assert r.returncode == 0, r.stderr
    assert map_state(target) == tstate
    r = cli("restore", target, "--from", backup, "--yes", "--overwrite", cwd=work)  # synth gave its keys newer values
    assert r.returncode == 0, r.stderr
    restored = map_state(target)[2]
    assert set(state[2]) <= set(restored) and all(restored[k] == v for k, v in state[2].items())

    # check --recover: an interrupted migration (<pin>_old beside <pin>) stays as it is.
    old = pin_dir / "cali_v4_ct4_old"
    fd = bpfkernel.obj_get(pin)
    try:
        bpfkernel.obj_pin(fd, old)
    finally:
        os.close(fd)
    names = sorted(p.name for p in pin_dir.iterdir())
    r = cli("check", pin, "--recover", cwd=work)
    assert r.returncode in (0, 1), r.stderr
    assert sorted(p.name for p in pin_dir.iterdir()) == names
    assert map_state(old)[0] == map_state(pin)[0]


# ------------------------------------------------------- pins outside bpffs, symlinks
@pytest.fixture
def other_bpffs(tmp_path):
    """A second private bpffs, for symlinks that lead from one bpffs into another."""
    d = tmp_path / "bpffs2"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "bpf", "bpf", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        skip_or_fail(f"mount -t bpf failed: {r.stderr.strip()}")
    yield d
    subprocess.run(["umount", str(d)], check=False)


def test_resize_and_restore_refuse_outside_bpffs_and_symlinks(pin_dir, tmp_path, other_bpffs):
    pin = pin_dir / "cali_v4_ct4"
    synth(pin, 500, 1_024)
    far = other_bpffs / "cali_v4_ct4"
    synth(far, 500, 1_024)
    work = tmp_path / "work"
    work.mkdir()
    backup = work / "b.arrow"
    r = cli("resize", pin, "--max-entries", "2048", "--backup", backup, "--yes", "--keep-old", cwd=work)
    assert r.returncode == 0, r.stderr
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    plain = plain_dir / "cali_v4_ct4"
    plain.write_bytes(bytes(104))
    (pin_dir / "sub").mkdir()
    cases = {
        "regular file outside bpffs": plain,
        "symlink to a pin in the same bpffs": pin_dir / "link_same",
        "symlink to a pin in another bpffs": pin_dir / "link_far",
        "symlink out of the bpffs": pin_dir / "link_out",
        "directory symlink out of the bpffs": pin_dir / "sub" / "dirlink" / "cali_v4_ct4",
        "bpffs mount root": other_bpffs,
    }
    (pin_dir / "link_same").symlink_to(pin)
    (pin_dir / "link_far").symlink_to(far)
    (pin_dir / "link_out").symlink_to(plain)
    (pin_dir / "sub" / "dirlink").symlink_to(plain_dir)
    states = {p: map_state(p) for p in (pin, far)}
    plain_bytes = plain.read_bytes()
    far_listing = sorted(p.name for p in other_bpffs.iterdir())
    for what, target in cases.items():
        for args in (["resize", target, "--max-entries", "4096", "--yes"],
                     ["restore", target, "--from", backup, "--yes"]):
            r = cli(*args, cwd=work)
            assert r.returncode == 2, f"{args[0]} {what}: exit {r.returncode}: {r.stdout}{r.stderr}"
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("ctscope: error: "), r.stderr
    assert {p: map_state(p) for p in (pin, far)} == states
    assert plain.read_bytes() == plain_bytes
    assert sorted(p.name for p in work.iterdir()) == ["b.arrow"]
    assert sorted(p.name for p in other_bpffs.iterdir()) == far_listing


# ------------------------------------------------------------------------- paths
def test_output_paths_not_built_from_map_names(pin_dir, tmp_path):
    """A map may be called `..` (the kernel allows [A-Za-z0-9_.] in names): the snapshot
    dataset path and the default backup name must stay inside the directories given."""
    import ctbytes

    fd = bpfkernel.create_pinned(pin_dir / "cali_v4_ct4", bpfkernel.LRU_HASH, 16, 88, 1024, 0, b"..")
    try:
        bpfkernel.update_elem(fd, ctbytes.pack_key(6, "10.0.0.1", 1234, "10.0.0.2", 80),
                              ctbytes.pack_value("v4", 4, ts0=0, last_seen=1))
    finally:
        os.close(fd)
    pin = pin_dir / "cali_v4_ct4"
    assert ctscope.open_map(pin).info.name == ".."
    data = tmp_path / "data"
    work = tmp_path / "work"
    work.mkdir()
    for node in ("..", "../../etc", "a/b"):
        r = cli("snapshot", pin, "--dir", data, "--node", node, cwd=work)
        assert r.returncode == 0, r.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 3 and all(data.resolve() in p.resolve().parents for p in files), files
    r = cli("resize", pin, "--max-entries", "2048", "--yes", cwd=work)
    assert r.returncode == 0, r.stderr
    backups = [p for p in tmp_path.rglob("*.arrow")]
    assert len(backups) == 1 and backups[0].parent == work, backups
