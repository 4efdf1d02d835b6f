"""Test infrastructure: a private bpffs, pinned test maps, and kernel/bpftool gating.

Kernel-backed tests carry ``@pytest.mark.kernel``. Where the process cannot create BPF maps or
mount a bpffs they are skipped with the reason; with ``CTSCOPE_REQUIRE_KERNEL=1`` (set by CI)
that skip becomes a failure, so CI can never pass while silently skipping them. Tests that need
``bpftool`` use the ``bpftool`` fixture, gated the same way.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bpfkernel  # noqa: E402

NEEDS_KERNEL = "needs root or CAP_BPF+CAP_SYS_ADMIN to create maps and mount bpffs"
NEEDS_BPFTOOL = "needs bpftool on PATH (apt-get install bpftool)"


def require_kernel() -> bool:
    return os.environ.get("CTSCOPE_REQUIRE_KERNEL", "") not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """Skip the current test, or fail it when CTSCOPE_REQUIRE_KERNEL=1."""
    if require_kernel():
        pytest.fail(f"{reason} (CTSCOPE_REQUIRE_KERNEL=1: kernel tests must not be skipped)", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config):
    config.addinivalue_line("markers", "kernel: needs root (CAP_BPF) and a bpffs; skipped elsewhere, must run in CI")
    config.addinivalue_line("markers", "bpftool: needs the bpftool binary")


_kernel_status: tuple[bool, str] | None = None


def kernel_status() -> tuple[bool, str]:
    """(usable, reason): can this process create a BPF map? (Cached.)"""
    global _kernel_status
    if _kernel_status is None:
        try:
            fd = bpfkernel.map_create(bpfkernel.HASH, 4, 4, 1, 0, b"ctscope_probe")
        except OSError as e:
            who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
            _kernel_status = (False, f"{NEEDS_KERNEL} (BPF_MAP_CREATE as {who}: {e.strerror})")
        else:
            os.close(fd)
            _kernel_status = (True, "")
    return _kernel_status


@pytest.fixture(autouse=True)
def _kernel_gate(request):
    if request.node.get_closest_marker("kernel") is not None:
        ok, reason = kernel_status()
        if not ok:
            skip_or_fail(reason)
    if request.node.get_closest_marker("bpftool") is not None and shutil.which("bpftool") is None:
        skip_or_fail(NEEDS_BPFTOOL)


@pytest.fixture(scope="session")
def bpffs():
    """A private bpffs mounted on a fresh temporary directory; unmounted at the end of the session."""
    ok, reason = kernel_status()
    if not ok:
        skip_or_fail(reason)
    d = Path(tempfile.mkdtemp(prefix="ctscope-bpffs-"))
    r = subprocess.run(["mount", "-t", "bpf", "bpf", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        d.rmdir()
        skip_or_fail(f"{NEEDS_KERNEL} (mount -t bpf failed: {r.stderr.strip() or r.returncode})")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)
        try:
            d.rmdir()
        except OSError:
            pass


@pytest.fixture
def bpftool():
    path = shutil.which("bpftool")
    if path is None:
        skip_or_fail(NEEDS_BPFTOOL)
    return path


_counter = itertools.count()


class PinnedMap:
    """A map created by the tests (via bpfkernel) and pinned under the private bpffs."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd
        self.info = bpfkernel.map_info(fd)

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def key_size(self) -> int:
        return self.info.key_size

    @property
    def value_size(self) -> int:
        return self.info.value_size

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        bpfkernel.update_elem(self.fd, key, value, flags)

    def fill(self, entries) -> int:
        return bpfkernel.fill(self.fd, entries)

    def delete(self, key: bytes) -> None:
        bpfkernel.delete_elem(self.fd, key)

    def items(self) -> dict[bytes, bytes]:
        return bpfkernel.items(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@pytest.fixture
def pin_dir(bpffs, request):
    """A fresh directory on the private bpffs, unique to this test."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]
    d = bpffs / f"{next(_counter):04d}-{name}"
    d.mkdir()
    return d


@pytest.fixture
def make_map(pin_dir):
    """``make_map(name, map_type, key_size, value_size, max_entries, map_flags=0, pin_name=None)``
    creates a map whose kernel name is ``name`` (≤ 15 chars) and pins it at ``pin_dir/pin_name``
    (default: ``name``). Returns a PinnedMap; fds are closed and pins removed after the test."""
    made: list[PinnedMap] = []

    def _make(name: str, map_type: int, key_size: int, value_size: int, max_entries: int,
              map_flags: int = 0, pin_name: str | None = None) -> PinnedMap:
        path = pin_dir / (pin_name or name)
        fd = bpfkernel.create_pinned(path, map_type, key_size, value_size, max_entries, map_flags,
                                     name.encode()[:15])
        m = PinnedMap(path, fd)
        made.append(m)
        return m

    yield _make
    for m in made:
        m.close()
        try:
            os.unlink(m.path)
        except OSError:
            pass


# The Calico CT map shapes of facts §1, by (layout, family).
def ct_map_params(layout: str, family: int):
    """(kernel name, map type, key size, value size, map_flags) for a CT map of ``layout``."""
    import ctbytes

    ks = ctbytes.KEY_SIZE[family]
    vs = ctbytes.VALUE_SIZE[(layout, family)]
    if layout == "v2":
        return f"cali_v{family}_ct2", bpfkernel.HASH, ks, vs, bpfkernel.BPF_F_NO_PREALLOC
    if layout in ("v3", "v3-created"):
        return f"cali_v{family}_ct3", bpfkernel.HASH, ks, vs, bpfkernel.BPF_F_NO_PREALLOC
    if layout == "v4":
        return f"cali_v{family}_ct4", bpfkernel.LRU_HASH, ks, vs, 0
    raise ValueError(layout)


@pytest.fixture
def make_ct_map(make_map):
    """``make_ct_map(layout, family, max_entries=1024)``: a Calico-shaped CT map (facts §1) pinned under
    its Calico basename (``cali_v4_ct3`` ...) in this test's own directory."""

    def _make(layout: str, family: int, max_entries: int = 1024) -> PinnedMap:
        name, mtype, ks, vs, flags = ct_map_params(layout, family)
        return make_map(name, mtype, ks, vs, max_entries, flags)

    return _make


def build_c(src: Path, out: Path, *flags: str, libs: tuple[str, ...] = ()) -> Path:
    """Compile one of the tests' C helpers with gcc (or cc); skip (fail in CI) without one."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        skip_or_fail(f"needs gcc to build tests/{src.name}")
    r = subprocess.run([cc, "-O2", "-Wall", *flags, "-o", str(out), str(src), *libs], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out
