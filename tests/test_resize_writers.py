"""Resize under live writers and concurrent ctscope runs (issue 9 §1), against the real kernel.

* a writer that reopens the pin (as a reloaded program or Felix does) keeps every key at its
  LAST written value: the final delta copy applies the newer-last_seen-wins rule;
* one write command per pin: a second resize, --recover, --delta or `check --recover` while a
  migration is in progress refuses (exit 5, naming the holder) instead of "recovering" it;
* backups are never overwritten, and an unwritable backup directory is named (exit 4);
* processes holding the old map's fd are named, with what happens to their writes;
* a CAP_BPF-only run blames CAP_SYS_ADMIN for walking program ids.

A command is held mid-migration by `CTSCOPE_TEST_PAUSE_AFTER=<phase>` (it stops itself with
SIGSTOP after that phase until SIGCONT): no sleeps, no timing guesses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bpfkernel
import ctbytes
from conftest import build_c, skip_or_fail
from test_check_resize import PIN, SMALL, BpfNamespace, assert_same_entries, exists, make_map, ns, pin_state  # noqa: F401

HERE = Path(__file__).resolve().parent
KS, VS = 16, 88
WRITER_KEYS = 2000


@pytest.fixture(scope="module")
def pin_writer(tmp_path_factory):
    """`churn_writer reopen`: a writer that reopens its pin and switches to the swapped-in map."""
    exe = build_c(HERE / "churn_writer.c", tmp_path_factory.mktemp("pinwriter") / "churn_writer")
    return [str(exe), "reopen"]


def start(ns: BpfNamespace, *args: str, cwd: Path, pause: str | None = None) -> subprocess.Popen:
    """`ctscope ARGS` in the namespace, in the background; with `pause`, it stops itself
    after that phase."""
    env = dict(os.environ, **ns.env)
    if pause:
        env["CTSCOPE_TEST_PAUSE_AFTER"] = pause
    # nsenter (mount namespace only) execs the command: the Popen pid is ctscope's.
    return subprocess.Popen(["nsenter", "-t", str(ns.holder.pid), "-m", f"--wd={cwd}", "--", sys.executable, "-m",
                             "ctscope", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_stopped(p: subprocess.Popen) -> None:
    """Until `p` has stopped itself (state T), or fail if it exits first."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if p.poll() is not None:
            out, err = p.communicate()
            pytest.fail(f"exited {p.returncode} before pausing: {out}{err}")
        try:
            state = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        if state in ("T", "t"):
            return
        time.sleep(0.01)
    pytest.fail("never paused")


def resume(p: subprocess.Popen) -> tuple[str, str]:
    p.send_signal(signal.SIGCONT)
    return p.communicate(timeout=300)


def writer_last(path: Path) -> dict[bytes, bytes]:
    data = path.read_bytes()
    assert len(data) == WRITER_KEYS * (KS + VS)
    recs = (data[i:i + KS + VS] for i in range(0, len(data), KS + VS))
    return {r[:KS]: r[KS:] for r in recs}


def with_last_seen(value: bytes, ns_: int) -> bytes:
    return value[:8] + ns_.to_bytes(8, "little") + value[16:]


def assert_writer_last_values(got: dict[bytes, bytes], last: dict[bytes, bytes]) -> None:
    wrong = [k for k, v in last.items() if got.get(k) != v]
    if wrong:
        k = wrong[0]
        have = got.get(k)
        pytest.fail(f"{len(wrong)} of {len(last)} writer keys do not hold the writer's last value; e.g. round "
                    f"{int.from_bytes(last[k][24:32], 'little')} written, map holds "
                    f"{int.from_bytes(have[24:32], 'little') if have else None} (last_seen "
                    f"{(int.from_bytes(last[k][8:16], 'little') - int.from_bytes(have[8:16], 'little')) / 1e6 if have else 0:.1f}"
                    " ms older)")


# ------------------------------------------------------------------ 1. the final delta copy

@pytest.mark.kernel
def test_final_delta_keeps_what_a_pin_reopening_writer_wrote_last(ns, tmp_path, pin_writer):
    """The writer's last values are in the new map, older ones in the old map: the delta
    (held until the writer is done, so this is deterministic) must not copy the older ones
    over them, and verification must accept the newer values."""
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    out = tmp_path / "last.bin"
    w = subprocess.Popen([*pin_writer, ns.host(PIN), str(WRITER_KEYS), "20", str(out)], stdout=subprocess.PIPE,
                         text=True)
    assert w.stdout.readline().strip() == "ready"
    r = start(ns, "resize", PIN, "--max-entries", "40000", "--yes", cwd=tmp_path, pause="swap")
    wait_stopped(r)
    wout, _ = w.communicate(timeout=120)  # it saw the swap, wrote 20 ms more into the new map, stopped
    assert "swapped=1" in wout and "failures=0" in wout, wout
    stdout, stderr = resume(r)
    assert r.returncode == 0, stdout + stderr
    assert "delta: copied and verified" in stdout and "newer or equal last_seen" in stdout, stdout
    got = pin_state(ns)["entries"]
    assert_writer_last_values(got, writer_last(out))
    assert_same_entries({k: v for k, v in got.items() if k in original}, original)
    assert len(got) == SMALL + WRITER_KEYS and not exists(ns, PIN + "_old")


@pytest.mark.kernel
def test_delta_under_a_writer_running_through_the_swap(ns, tmp_path, pin_writer):
    """No pause: the writer runs through the whole resize and 20 ms past the swap."""
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 200_000, 100_000)
    out = tmp_path / "last.bin"
    w = subprocess.Popen([*pin_writer, ns.host(PIN), str(WRITER_KEYS), "20", str(out)], stdout=subprocess.PIPE,
                         text=True)
    assert w.stdout.readline().strip() == "ready"
    r = ns.ctscope("resize", PIN, "--max-entries", "300000", "--yes", cwd=tmp_path)
    wout, _ = w.communicate(timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "swapped=1" in wout, wout
    got = pin_state(ns)["entries"]
    assert_writer_last_values(got, writer_last(out))
    assert_same_entries({k: v for k, v in got.items() if k in original}, original)
    assert len(got) == 100_000 + WRITER_KEYS


# ----------------------------------------------------------------------------- 2. the lock

@pytest.mark.kernel
def test_a_second_write_command_refuses_while_a_migration_runs(ns, tmp_path):
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    old_id = pin_state(ns)["id"]
    a = start(ns, "resize", PIN, "--max-entries", "40000", "--yes", cwd=tmp_path, pause="swap")
    wait_stopped(a)
    assert exists(ns, PIN + "_old"), "mid-migration: the old map at _old, the new one swapped in"
    new_id = pin_state(ns)["id"]
    for cmd in (("resize", PIN, "--max-entries", "50000", "--yes"),
                ("resize", PIN, "--recover", "--yes"),
                ("resize", PIN, "--delta", "--yes"),
                ("check", PIN, "--recover", "--yes"),
                ("resize", PIN, "--max-entries", "50000", "--yes", "--wait", "0.3")):
        r = ns.ctscope(*cmd, cwd=tmp_path)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 5, (cmd, r.stdout + r.stderr)
        assert len(err) == 1 and f"pid {a.pid}: ctscope resize" in err[0], (cmd, r.stderr)
        assert ("waited 0.3 s" in err[0]) == ("--wait" in cmd), err[0]
        assert exists(ns, PIN + "_old") and pin_state(ns)["id"] == new_id, f"{cmd} changed the pins"
    stdout, stderr = resume(a)
    assert a.returncode == 0, stdout + stderr
    final = pin_state(ns)
    assert final["id"] == new_id != old_id and final["max_entries"] == 40_000
    assert_same_entries(final["entries"], original)
    assert not exists(ns, PIN + "_old")
    assert len(list(tmp_path.glob("ctscope-backup-*.arrow"))) == 1
    # The lock is free again: a plain rerun acts.
    r = ns.ctscope("resize", PIN, "--max-entries", "50000", "--yes", cwd=tmp_path)
    assert r.returncode == 0 and pin_state(ns)["max_entries"] == 50_000, r.stdout + r.stderr


def test_a_write_command_through_another_name_of_the_map_refuses_during_a_resize(ns, tmp_path):
    """The pin lock alone let a delete through a second pin name of the same map (a hard link,
    `bpftool map pin`) run mid-migration, into the old map whose later writes resize cannot
    carry: resize also holds its map's lock (by map id), so the delete exits 5."""
    make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    alias = "/sys/fs/bpf/ct_alias"
    assert ns.run("ln", PIN, alias).returncode == 0
    before = pin_state(ns)["entries"]
    a = start(ns, "resize", PIN, "--max-entries", "40000", "--yes", cwd=tmp_path, pause="swap")
    wait_stopped(a)
    r = ns.ctscope("delete", alias, "--where", "proto >= 0", "--force", "--yes", "--backup-dir", str(tmp_path),
                   cwd=tmp_path)
    assert r.returncode == 5 and f"pid {a.pid}: ctscope resize" in r.stderr, r.stdout + r.stderr
    stdout, stderr = resume(a)
    assert a.returncode == 0, stdout + stderr
    assert_same_entries(pin_state(ns)["entries"], before)


def test_wait_must_not_be_negative():
    r = subprocess.run([sys.executable, "-m", "ctscope", "resize", "/sys/fs/bpf/x", "--max-entries", "10", "--yes",
                        "--wait", "-1"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr


# --------------------------------------------------------------------------- 3. backups

@pytest.mark.kernel
def test_an_existing_backup_is_refused_before_anything_changes(ns, tmp_path):
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    before = pin_state(ns)
    taken = tmp_path / "taken.arrow"
    taken.write_bytes(b"someone else's file")
    for extra in ((), ("--yes",)):
        r = ns.ctscope("resize", PIN, "--max-entries", "40000", "--backup", str(taken), *extra, cwd=tmp_path)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1, r.stdout + r.stderr
        assert str(taken) in err[0] and "already exists" in err[0] and "never overwritten" in err[0], err[0]
    assert taken.read_bytes() == b"someone else's file"
    after = pin_state(ns)
    assert after["id"] == before["id"] and not exists(ns, PIN + "_old")
    assert_same_entries(after["entries"], original)


@pytest.mark.kernel
def test_default_backup_name_taken_meanwhile_gets_the_next_number(ns, tmp_path):
    """Another run (here: files a test makes) takes the default name between this run's plan
    and its backup, in the same second: the backup goes to `-2`, the other file is untouched."""
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    t0 = time.time()
    a = start(ns, "resize", PIN, "--max-entries", "40000", "--yes", "--json", cwd=tmp_path, pause="plan")
    wait_stopped(a)
    others = {}
    for t in range(int(t0) - 1, int(time.time()) + 2):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))
        p = tmp_path / f"ctscope-backup-cali_v4_ct4-{stamp}.arrow"
        p.write_bytes(f"other run {stamp}".encode())
        others[p] = p.read_bytes()
    stdout, stderr = resume(a)
    assert a.returncode == 0, stdout + stderr
    backup = tmp_path / json.loads(stdout)["backup"]  # relative to the working directory
    assert backup.name.endswith("-2.arrow") and backup.with_name(backup.name.replace("-2.arrow", ".arrow")) in others
    assert all(p.read_bytes() == b for p, b in others.items()), "another run's backup was overwritten"
    import polars as pl

    assert pl.read_ipc(backup).height == SMALL
    assert oct(backup.stat().st_mode & 0o777) == oct(0o600)
    assert_same_entries(pin_state(ns)["entries"], original)


@pytest.mark.kernel
def test_read_only_backup_directory_is_named_exit_4(ns, tmp_path):
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    ro = tmp_path / "ro"
    ro.mkdir()
    r = ns.run("mount", "-t", "tmpfs", "-o", "ro", "ctscope-ro", str(ro))
    if r.returncode != 0:
        skip_or_fail(f"cannot mount a read-only tmpfs: {r.stderr.strip()}")
    cmd = f"{sys.executable} -m ctscope resize {PIN} --max-entries 40000 --yes"
    # nsenter --wd opens the directory before entering the namespace (the one under the
    # mount): `cd` inside it for the default backup path in the working directory.
    for line in (f"{cmd} --backup {ro / 'b.arrow'}", f"cd {ro} && {cmd}"):
        r = ns.run("sh", "-c", line, cwd=tmp_path)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 4 and len(err) == 1, r.stdout + r.stderr
        assert "not writable" in err[0] and ".partial" not in err[0], err[0]
        assert f"directory {ro} is not writable" in err[0], err[0]
    assert pin_state(ns)["max_entries"] == 20_000 and not exists(ns, PIN + "_old")
    assert_same_entries(pin_state(ns)["entries"], original)


# ------------------------------------------------------------ 4. processes holding the map

@pytest.mark.kernel
def test_processes_holding_the_old_map_are_named_and_their_writes_explained(ns, tmp_path):
    original = make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, SMALL)
    me, comm = os.getpid(), Path("/proc/self/comm").read_text().strip()
    fd = bpfkernel.obj_get(ns.host(PIN))  # this test process is the user-space writer
    try:
        plan = ns.ctscope("resize", PIN, "--max-entries", "40000", cwd=tmp_path)
        assert plan.returncode == 0, plan.stdout + plan.stderr
        line = next(x for x in plan.stdout.splitlines() if f"pid {me} ({comm}, fd {fd})" in x)
        assert "after the delta snapshot goes to the old map" in line and "lost" in line, line

        r = ns.ctscope("resize", PIN, "--max-entries", "40000", "--keep-old", "--yes", "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        res = json.loads(r.stdout)
        assert {"pid": me, "comm": comm, "fds": [fd]} in res["holders"]
        note = next(n for n in res["notes"] if f"pid {me}" in n)
        assert "goes to the old map" in note and "--delta" in note, note

        # It writes after the swap: into the old map, not the new one ...
        k, v = ctbytes.seq_key(SMALL + 7), with_last_seen(ctbytes.seq_value(SMALL + 7, 88), 10**12)
        bpfkernel.update_elem(fd, k, v)
        assert k not in pin_state(ns)["entries"]
        # ... which a later --delta copies while _old is kept.
        r = ns.ctscope("resize", PIN, "--delta", "--yes", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert_same_entries(pin_state(ns)["entries"], {**original, k: v})
    finally:
        os.close(fd)

    # Without --keep-old the notes say the writes are lost.
    fd = bpfkernel.obj_get(ns.host(PIN))
    try:
        r = ns.ctscope("resize", PIN, "--max-entries", "50000", "--yes", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        note = next(x for x in r.stdout.splitlines() if f"pid {me} ({comm}" in x)
        assert "still hold the old map" in note and "it is lost" in note, note
    finally:
        os.close(fd)


# ------------------------------------------------------------------- 5. CAP_SYS_ADMIN

@pytest.mark.kernel
def test_cap_bpf_only_run_blames_cap_sys_admin_for_the_program_walk(ns, tmp_path):
    if shutil.which("capsh") is None:
        skip_or_fail("needs capsh (libcap2-bin)")
    make_map(ns, PIN, bpfkernel.LRU_HASH, 20_000, 100)
    cmd = f"{sys.executable} -m ctscope resize {PIN} --max-entries 40000"
    r = ns.run("capsh", "--drop=cap_sys_admin", "--", "-c", cmd, cwd=tmp_path)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 4 and len(err) == 1, r.stdout + r.stderr
    assert "BPF_PROG_GET_NEXT_ID" in err[0] and "needs CAP_SYS_ADMIN" in err[0], err[0]
    assert "needs root or CAP_BPF" not in err[0], err[0]
