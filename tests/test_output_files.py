"""Output files (issue 9 §2; README "Output files"): root never writes through another
user's symlink or through any link in a world-writable directory, temporaries are O_EXCL
beside the target, replaced files keep their mode and owner, new files holding connection
data are 0600 whatever the umask, new snapshot directories 0700. Every -o / --dir writer
goes through ctscope.outfile; each is exercised here through the real command line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from test_bad_input import EXIT_BAD_INPUT, EXIT_PERMISSION, assert_one_line_error, cli, synth

NOBODY = 65534


def module_pin(bpffs: Path, directory: str, entries: int) -> Path:
    """A small synthetic CT map of its own for a test module."""
    d = bpffs / directory
    d.mkdir()
    synth(d / "cali_v4_ct4", entries, 1024)
    return d / "cali_v4_ct4"


@pytest.fixture(scope="module")
def pin(bpffs):
    return module_pin(bpffs, "outfiles", 300)


@pytest.fixture(scope="module")
def snap(pin, tmp_path_factory):
    s = tmp_path_factory.mktemp("snap") / "s.parquet"
    r = cli("snapshot", pin, "-o", s)
    assert r.returncode == 0, r.stderr
    return s


@pytest.fixture
def attack(tmp_path):
    """A world-writable sticky directory (like /tmp), a root-only 0600 file in a root-only
    directory, and a helper making a symlink there owned by another user."""
    pub = tmp_path / "pub"
    pub.mkdir()
    pub.chmod(0o1777)
    secret_dir = tmp_path / "rootonly"
    secret_dir.mkdir(mode=0o700)
    secret = secret_dir / "secret"
    secret.write_bytes(b"root only\n")
    secret.chmod(0o600)

    def link(name: str, to: Path, uid: int = NOBODY) -> Path:
        p = pub / name
        p.symlink_to(to)
        os.lchown(p, uid, uid)
        return p

    return pub, secret, link


def commands(pin: Path, snap: Path, out: Path) -> list[tuple]:
    return [
        ("dump", pin, "-f", "csv", "-o", out),
        ("dump", pin, "-f", "parquet", "-o", out),
        ("dump", pin, "-f", "arrow", "-o", out),  # Arrow files: written by Rust (ipc_file.rs) into outfile's temporary
        ("expired", snap, "--all", "-f", "arrow", "-o", out),
        ("report", snap, "-o", out),
        ("metrics", snap, "-o", out),
        ("expired", snap, "--all", "-f", "ndjson", "-o", out),
        ("snapshot", pin, "-f", "parquet", "-o", out),
        ("query", snap, "SELECT count(*) AS n FROM ct", "-f", "csv", "-o", out),
        ("top", snap, "-f", "json", "-o", out),
        ("stats", snap, "-o", out),
    ]


@pytest.mark.kernel
def test_other_users_symlink_in_sticky_dir_is_refused(pin, snap, attack):
    pub, secret, link = attack
    before = secret.read_bytes()
    out = link("out.csv", secret)
    for args in commands(pin, snap, out):
        r = cli(*args)
        assert_one_line_error(r, EXIT_PERMISSION, str(out), "symlink", f"uid {NOBODY}")
        assert secret.read_bytes() == before and stat.S_IMODE(secret.stat().st_mode) == 0o600, args[0]
        assert out.is_symlink() and sorted(p.name for p in pub.iterdir()) == ["out.csv"], args[0]


@pytest.mark.kernel
def test_dangling_link_is_refused_and_creates_nothing(pin, snap, attack):
    pub, secret, link = attack
    target = secret.parent / "created-by-root.csv"
    out = link("dangling.csv", target)
    for args in commands(pin, snap, out):
        assert_one_line_error(cli(*args), EXIT_PERMISSION, str(out), "symlink")
        assert not target.exists(), args[0]


@pytest.mark.kernel
def test_own_link_in_world_writable_dir_is_refused_too(pin, attack):
    pub, secret, link = attack
    out = link("mine.csv", secret, uid=0)
    assert_one_line_error(cli("dump", pin, "-f", "csv", "-o", out), EXIT_PERMISSION, "world-writable", str(pub))
    assert secret.read_bytes() == b"root only\n"


@pytest.mark.kernel
def test_link_in_a_directory_component_is_checked(pin, attack):
    """-o PUB/d/x.csv where PUB/d is another user's link to a root-only directory."""
    pub, secret, link = attack
    d = link("d", secret.parent)
    assert_one_line_error(cli("dump", pin, "-f", "csv", "-o", d / "x.csv"), EXIT_PERMISSION, "symlink", str(d))
    assert sorted(p.name for p in secret.parent.iterdir()) == ["secret"]


@pytest.mark.kernel
def test_other_users_file_in_world_writable_dir_and_non_sticky_dirs(pin, tmp_path):
    pub = tmp_path / "pub"
    pub.mkdir()
    pub.chmod(0o1777)
    planted = pub / "planted.csv"
    planted.write_text("x\n")
    os.chown(planted, NOBODY, NOBODY)
    planted.chmod(0o666)
    assert_one_line_error(cli("dump", pin, "-f", "csv", "-o", planted), EXIT_PERMISSION, str(planted), "owned by uid")
    assert planted.read_text() == "x\n"
    # A world-writable directory without the sticky bit: anyone could swap the names.
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    assert_one_line_error(cli("dump", pin, "-f", "csv", "-o", open_dir / "x.csv"), EXIT_PERMISSION, str(open_dir),
                          "sticky")
    assert list(open_dir.iterdir()) == []
    # In a sticky world-writable dir a new file of our own is fine.
    r = cli("dump", pin, "-f", "csv", "-o", pub / "new.csv")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((pub / "new.csv").stat().st_mode) == 0o600


def run_umask(umask: int, *args) -> subprocess.CompletedProcess:
    code = f"import os, sys; os.umask({umask}); from ctscope.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.mark.kernel
def test_new_files_are_private_whatever_the_umask(pin, snap, tmp_path):
    for i in range(len(commands(pin, snap, tmp_path))):
        out = tmp_path / f"out{i}"
        args = commands(pin, snap, out)[i]
        r = run_umask(0, *args)
        assert r.returncode == 0, (args[0], r.stderr)
        want = 0o644 if args[0] == "metrics" else 0o600
        assert stat.S_IMODE(out.stat().st_mode) == want, (args[0], oct(out.stat().st_mode))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


@pytest.mark.kernel
def test_snapshot_dirs_are_0700_and_files_0600(pin, tmp_path):
    root = tmp_path / "snaps"
    r = run_umask(0, "snapshot", pin, "--dir", root, "--node", "n1")
    assert r.returncode == 0, r.stderr
    f = Path(r.stdout.strip())
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    for d in (root, root / "node=n1", f.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


@pytest.mark.kernel
def test_replaced_file_keeps_mode_and_owner(pin, tmp_path):
    out = tmp_path / "keep.csv"
    out.write_text("old\n")
    out.chmod(0o640)
    os.chown(out, NOBODY, NOBODY)
    r = run_umask(0, "dump", pin, "-f", "csv", "-o", out)
    assert r.returncode == 0, r.stderr
    st = out.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    assert len(out.read_text().splitlines()) == 301
    # the same for an Arrow file, which the Rust writer fills
    arrow = tmp_path / "keep.arrow"
    arrow.write_bytes(b"old")
    arrow.chmod(0o640)
    os.chown(arrow, NOBODY, NOBODY)
    r = run_umask(0, "dump", pin, "-o", arrow)
    assert r.returncode == 0, r.stderr
    st = arrow.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    import polars as pl

    assert pl.read_ipc(arrow).height == 300


@pytest.mark.kernel
def test_read_only_output_directory_is_exit_4_naming_it(pin, tmp_path):
    """Without CAP_DAC_OVERRIDE (so mode bits bind root), dump -o, snapshot -o and
    snapshot --dir into a 0555 directory: exit 4 naming the directory, nothing left."""
    from test_bad_input import _need_setpriv

    setpriv = _need_setpriv()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    drop = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]
    for args in (("dump", pin, "-o", ro / "x.csv"), ("snapshot", pin, "-o", ro / "x.parquet"),
                 ("snapshot", pin, "--dir", ro), ("snapshot", pin, "--dir", ro / "sub"),
                 ("metrics", pin, "-o", ro / "x.prom")):
        r = subprocess.run(drop + [sys.executable, "-m", "ctscope", *map(str, args)], capture_output=True, text=True,
                           timeout=120)
        assert_one_line_error(r, EXIT_PERMISSION, str(ro))
        assert list(ro.iterdir()) == [], args


def test_unknown_output_suffix_is_refused(tmp_path):
    out = tmp_path / "x.xlsx"
    r = cli("dump", "/nonexistent/pin", "-o", out)
    assert_one_line_error(r, EXIT_BAD_INPUT, ".xlsx", "--format")
    assert not out.exists()


def _started_writing(p: subprocess.Popen, out: Path, name: str, others: tuple[Path, ...] = ()) -> Path:
    """The temporary `p` is writing `name` under (not one of `others`), once it holds data."""
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        mine = [f for f in out.iterdir()
                if f.name.startswith(f".{name}.") and f.name.endswith(".partial") and f not in others]
        if mine and mine[0].stat().st_size > 0:
            return mine[0]
        time.sleep(0.01)
    raise AssertionError(f"the dump ended (exit {p.returncode}) before it was seen writing")


@pytest.mark.kernel
def test_rerun_removes_the_temporary_a_killed_run_left(bpffs, tmp_path):
    """Nothing runs on SIGKILL: a dump killed mid-write leaves `.x.parquet.XXXXXXXX.partial`
    (connection data, hidden). The next write of x.parquet removes it, and only what is
    surely a dead run's: a stopped writer's temporary stays (it holds its lock; its run then
    completes), as do a temporary changed within the last minute, another output's, and a
    link, a hard link and another user's file named like one."""
    d = bpffs / "killed"
    d.mkdir()
    pin = d / "cali_v4_ct4"
    synth(pin, 500_000, 524_288)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "x.parquet"
    argv = [sys.executable, "-m", "ctscope", "dump", str(pin), "-o", str(target), "--batch-size", "256"]
    old = os.stat(out).st_mtime - 3600

    killed = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dead = _started_writing(killed, out, "x.parquet")
    killed.kill()
    killed.wait()
    assert dead.exists() and not target.exists()
    os.utime(dead, (old, old))

    stopped = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        live = _started_writing(stopped, out, "x.parquet", (dead,))
        stopped.send_signal(__import__("signal").SIGSTOP)
        os.utime(live, (old, old))
        fresh = out / ".x.parquet.0123abcd.partial"
        fresh.write_bytes(b"fresh")
        other = out / ".y.parquet.0123abcd.partial"
        other.write_bytes(b"other")
        link = out / ".x.parquet.feedf00d.partial"
        link.symlink_to(other)
        theirs = out / ".x.parquet.deadbeef.partial"
        theirs.write_bytes(b"theirs")
        os.chown(theirs, NOBODY, NOBODY)
        precious = tmp_path / "precious"
        precious.write_bytes(b"precious")
        hard = out / ".x.parquet.0badf00d.partial"  # a hard link to a file of ours elsewhere
        os.link(precious, hard)
        for f in (other, theirs, hard):
            os.utime(f, (old, old))
        os.utime(link, (old, old), follow_symlinks=False)

        r = cli("dump", pin, "-o", target, "--limit", "10")
        assert r.returncode == 0, r.stderr
        assert not dead.exists(), "the killed run's temporary is left"
        assert {f.name for f in (live, fresh, other, link, theirs, hard)} <= {f.name for f in out.iterdir()}
        import polars as pl

        assert pl.read_parquet(target).height == 10
    finally:
        stopped.send_signal(__import__("signal").SIGCONT)
        _, err = stopped.communicate(timeout=120)
    assert stopped.returncode == 0, err
    assert not live.exists() and pl.read_parquet(target).height == 500_000


@pytest.mark.kernel
def test_snapshot_dir_rerun_removes_the_temporary_a_killed_snapshot_left(pin, tmp_path):
    """`snapshot --dir` names every file after its dump's start time, so no later run ever
    writes the same NAME again: "the next write of the same NAME" never comes, and the
    temporary a killed scheduled snapshot left (OOM kill, node reboot) stayed in its
    partition for good, a full hidden copy of the map's connection data. The next snapshot
    of the same map into the same partition removes it, under the same rules as -o's
    (own, regular, single link, unlocked, a minute unchanged); other maps' and other
    names' temporaries, and fresh ones, stay."""
    root = tmp_path / "snaps"
    r = cli("snapshot", pin, "--dir", root, "--node", "n1")
    assert r.returncode == 0, r.stderr
    (first,) = root.rglob("*.parquet")
    part = first.parent
    dead = part / ".000000.000Z-cali_v4_ct4.parquet.deadbeef.partial"
    fresh = part / ".000001.000Z-cali_v4_ct4.parquet.0123abcd.partial"
    other_map = part / ".000000.000Z-cali_v6_ct4.parquet.deadbeef.partial"
    other_name = part / ".notes.txt.deadbeef.partial"
    old = os.stat(part).st_mtime - 3600
    for f in (dead, fresh, other_map, other_name):
        f.write_bytes(b"x" * 100)
        os.chmod(f, 0o600)
    for f in (dead, other_map, other_name):
        os.utime(f, (old, old))

    r = cli("snapshot", pin, "--dir", root, "--node", "n1")
    assert r.returncode == 0, r.stderr
    assert len(list(root.rglob("*.parquet"))) == 2
    names = {f.name for f in part.iterdir()}
    assert dead.name not in names, "the killed snapshot's temporary is left"
    assert {fresh.name, other_map.name, other_name.name} <= names
