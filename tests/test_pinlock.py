"""The per-pin write lock: exclusion across processes, release on SIGKILL, safe directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ctscope.errors import EXIT_BUSY, LockBusy, exit_code
from ctscope.pinlock import lock_key, pin_lock

HOLD = textwrap.dedent("""
    import sys, time
    from ctscope.pinlock import pin_lock
    with pin_lock(sys.argv[1], "test-hold"):
        print("held", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def lockdir(tmp_path, monkeypatch):
    d = tmp_path / "locks"
    monkeypatch.setenv("CTSCOPE_LOCK_DIR", str(d))
    return d


def _holder(pin: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, pin], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_writer_refused_naming_holder_then_free_after_sigkill(lockdir):
    pin = "/sys/fs/bpf/tc/globals/cali_v4_ct4"
    p = _holder(pin)
    try:
        with pytest.raises(LockBusy) as e:
            with pin_lock(pin, "test"):
                pass
        assert f"pid {p.pid}" in str(e.value) and "test-hold" in str(e.value)
        assert exit_code(e.value) == EXIT_BUSY == 5
        # _old shares the pin's lock
        with pytest.raises(LockBusy):
            with pin_lock(pin + "_old", "test"):
                pass
        # another pin is independent
        with pin_lock(pin.replace("ct4", "ct3"), "test"):
            pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    # killed holder: the lock is free at once, no stale state
    with pin_lock(pin, "test") as path:
        assert os.stat(path).st_mode & 0o777 == 0o600
    assert oct(os.stat(lockdir).st_mode & 0o777) == oct(0o700)


def test_wait_gets_the_lock_when_holder_exits(lockdir):
    pin = "/x/cali_v6_ct4"
    p = _holder(pin)
    threading_kill = subprocess.Popen(["sh", "-c", f"sleep 0.5; kill -9 {p.pid}"])
    t = time.monotonic()
    with pin_lock(pin, "test", wait=10):
        took = time.monotonic() - t
    threading_kill.wait()
    p.wait()
    assert 0.3 < took < 10


def test_refuses_unsafe_lock_dir(tmp_path, monkeypatch):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    monkeypatch.setenv("CTSCOPE_LOCK_DIR", str(link))
    with pytest.raises(Exception, match="not a directory"):
        with pin_lock("/p/cali_v4_ct4", "t"):
            pass
    wide = tmp_path / "wide"
    wide.mkdir()
    os.chmod(wide, 0o777)
    monkeypatch.setenv("CTSCOPE_LOCK_DIR", str(wide))
    with pytest.raises(Exception, match="writable by it alone"):
        with pin_lock("/p/cali_v4_ct4", "t"):
            pass


def test_lock_file_symlink_not_followed(lockdir, tmp_path):
    lockdir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (lockdir / lock_key("/p/cali_v4_ct4")).symlink_to(victim)
    with pytest.raises(OSError):
        with pin_lock("/p/cali_v4_ct4", "t"):
            pass
    assert victim.read_text() == "keep"
