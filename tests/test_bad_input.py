"""Bad input through the real command line (issue 5, "Bad input"): each case runs
`python -m ctscope ...` in a subprocess and checks the exit code (README: 1 other,
2 bad input, 3 not found, 4 permission, 130 interrupted), that stderr is exactly one
`ctscope: error: ...` line naming the problem, and that no traceback escapes."""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import bpfkernel
from conftest import skip_or_fail

EXIT_ERROR, EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_PERMISSION, EXIT_INTERRUPTED = 1, 2, 3, 4, 130


def cli(*args, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctscope", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def assert_one_line_error(r: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Exit `code`, stderr a single `ctscope: error:` line containing every needle."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, f"exit {r.returncode}, expected {code}: {r.stderr}"
    assert len(lines) == 1 and lines[0].startswith("ctscope: error: "), r.stderr
    for n in needles:
        assert n.lower() in lines[0].lower(), f"{n!r} not in {lines[0]!r}"
    return lines[0]


def synth(pin: Path, n: int, max_entries: int | None = None) -> None:
    from ctscope.cli.synth import synth as _synth

    _synth(str(pin), n, max_entries=max_entries)


@pytest.fixture
def ct_pin(pin_dir) -> Path:
    pin = pin_dir / "cali_v4_ct4"
    synth(pin, 2_000, 4_096)
    return pin


# ----------------------------------------------------------------------------- paths
@pytest.mark.kernel
def test_missing_path(bpffs, tmp_path):
    for p in (bpffs / "no-such-pin", tmp_path / "no" / "such" / "cali_v4_ct4"):
        for cmd in (["dump", p], ["dump", p, "--layout", "raw"], ["stats", p]):
            assert_one_line_error(cli(*cmd), EXIT_NOT_FOUND, str(p))


@pytest.mark.kernel
def test_directory(pin_dir, tmp_path):
    for p in (pin_dir, tmp_path):
        assert_one_line_error(cli("dump", p), EXIT_BAD_INPUT, str(p), "directory")


@pytest.mark.kernel
def test_regular_file(tmp_path):
    f = tmp_path / "cali_v4_ct4"
    f.write_bytes(bytes(104))
    assert_one_line_error(cli("dump", f), EXIT_BAD_INPUT, str(f), "bpffs")


@pytest.mark.kernel
def test_path_outside_any_bpffs(pin_dir):
    # A character device, and a symlink on the bpffs that points out of it.
    assert_one_line_error(cli("dump", "/dev/null"), EXIT_BAD_INPUT, "/dev/null", "bpffs")
    link = pin_dir / "cali_v4_ct4"
    link.symlink_to("/dev/null")
    assert_one_line_error(cli("dump", link), EXIT_BAD_INPUT, str(link), "symlink")


def load_socket_filter() -> int:
    """BPF_PROG_LOAD of `r0 = 0; exit` (a socket filter): returns the program fd."""
    insns = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    ibuf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    a = bpfkernel._attr()
    struct.pack_into("<IIQQ", a, 0, 1, 2, ctypes.addressof(ibuf), ctypes.addressof(lic))  # SOCKET_FILTER
    a[48:48 + 7] = b"ctscope"
    return bpfkernel._sys(5, a, "PROG_LOAD")  # BPF_PROG_LOAD


@pytest.mark.kernel
def test_program_pin_instead_of_a_map(pin_dir):
    fd = load_socket_filter()
    pin = pin_dir / "cali_v4_ct4"
    try:
        bpfkernel.obj_pin(fd, pin)
    finally:
        os.close(fd)
    for cmd in (["dump", pin], ["dump", pin, "--layout", "raw"], ["stats", pin]):
        assert_one_line_error(cli(*cmd), EXIT_BAD_INPUT, str(pin), "program")


@pytest.mark.kernel
@pytest.mark.parametrize(("map_type", "ks", "name"), [(bpfkernel.ARRAY, 4, "array"),
                                                       (bpfkernel.PERCPU_HASH, 16, "percpu_hash")])
def test_array_and_percpu_maps(make_map, map_type, ks, name):
    m = make_map("cali_v4_ct4", map_type, ks, 88, 16)
    m.update(bytes(ks), bytes(88))
    for layout in ("auto", "v4", "raw"):
        assert_one_line_error(cli("dump", m.path, "--layout", layout), EXIT_BAD_INPUT, str(m.path), name)


@pytest.mark.kernel
def test_sizes_that_fit_no_layout(make_map, ct_pin):
    m = make_map("cali_v4_ct4", bpfkernel.HASH, 8, 8, 16, pin_name="odd_ct4")
    m.update(bytes(8), bytes(8))
    for layout in ("v4", "v3", "v2", "auto"):
        assert_one_line_error(cli("dump", m.path, "--layout", layout), EXIT_BAD_INPUT, "8/8")
    # A real ct4 map read with the v2 layout (16/64) does not fit either.
    assert_one_line_error(cli("dump", ct_pin, "--layout", "v2"), EXIT_BAD_INPUT, "16/88")
    assert cli("dump", m.path, "--layout", "raw").returncode == 0


@pytest.mark.kernel
def test_usage_errors(ct_pin):
    for args in (["dump", ct_pin, "--no-such-option"], ["no-such-command"], ["dump", ct_pin, "--threads", "x"]):
        r = cli(*args)
        assert r.returncode == EXIT_BAD_INPUT and "Traceback" not in r.stderr, r.stderr
    assert_one_line_error(cli("dump", ct_pin, "--layout", "v9"), EXIT_BAD_INPUT, "v9")
    assert_one_line_error(cli("dump", ct_pin, "--method", "psychic"), EXIT_BAD_INPUT, "psychic")
    assert_one_line_error(cli("dump", ct_pin, "-f", "xml"), EXIT_BAD_INPUT, "xml")


# -------------------------------------------------------------------------- snapshots
def _damaged(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    mode = rng.choice(["flip", "truncate", "zero"])
    off = rng.randrange(len(b))
    if mode == "truncate":
        return bytes(b[:off])
    n = rng.randint(1, 4096)
    for j in range(off, min(len(b), off + n)):
        b[j] = 0 if mode == "zero" else b[j] ^ rng.randrange(1, 256)
    return bytes(b)


@pytest.mark.kernel
@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_truncated_or_corrupt_snapshot(ct_pin, tmp_path, fmt):
    snap = tmp_path / f"snap.{fmt}"
    r = cli("dump", ct_pin, "-o", snap)
    assert r.returncode == 0, r.stderr
    r = cli("stats", snap)
    assert r.returncode == 0 and "Total entries: 2000" in r.stdout, r.stdout + r.stderr
    data = snap.read_bytes()
    # Through the CLI: a truncated file, an empty one, garbage with the right suffix.
    for name, content in [("truncated", data[: len(data) // 2]), ("empty", b""), ("garbage", os.urandom(3000)),
                          ("no-footer", data[:-16])]:
        bad = tmp_path / f"{name}.{fmt}"
        bad.write_bytes(content)
        assert_one_line_error(cli("stats", bad), EXIT_BAD_INPUT, str(bad))
    # Many damaged copies in-process (fast): never a traceback; damage that is noticed is a
    # one-line error with exit 2. (Nothing in parquet/Arrow IPC detects every flipped data
    # byte, so some copies read "successfully".)
    from ctscope.cli import main

    rng = random.Random(fmt)
    codes = []
    bad = tmp_path / f"damaged.{fmt}"
    for _ in range(40):
        bad.write_bytes(_damaged(data, rng))
        code, err = _run_inprocess(main, ["stats", str(bad)])
        assert "Traceback" not in err, err
        assert code in (0, EXIT_BAD_INPUT), f"exit {code}: {err}"
        if code:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"ctscope: error: {bad}"), err
        codes.append(code)
    assert codes.count(EXIT_BAD_INPUT) >= 10, codes


def _run_inprocess(main, argv: list[str]) -> tuple[int, str]:
    """Run the CLI's main() here, returning (exit code, stderr). An exception escaping
    main() is what would print a traceback: report it as such."""
    import contextlib
    import io
    import traceback

    err, out = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - exactly what must not happen
            traceback.print_exc(file=err)
            code = EXIT_ERROR
    return code, err.getvalue()


# -------------------------------------------------------------------------- privilege
def _need_setpriv() -> str:
    exe = shutil.which("setpriv")
    if exe is None:
        skip_or_fail("needs setpriv (util-linux) to run as an unprivileged user")
    return exe


# Runs the CLI as uid/gid 65534 with no capabilities at all. The interpreter lives under
# /root (mode 0700), so the child starts with CAP_DAC_READ_SEARCH only (ambient), imports
# everything the command needs by running it once on a missing pin, then drops every
# capability (capset to zero, ambient cleared) before the real run.
UNPRIVILEGED = textwrap.dedent("""
    import contextlib, ctypes, io, os, sys
    import ctscope.cli
    argv = sys.argv[1:]
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            ctscope.cli.main([argv[0], "/nonexistent/cali_v4_ct4"] + argv[2:])
        except SystemExit:
            pass
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(47, 4, 0, 0, 0) == 0  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL
    hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    assert libc.capset(hdr, (ctypes.c_uint32 * 6)()) == 0, ctypes.get_errno()
    caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith(("CapEff", "CapPrm"))]
    assert os.getuid() == 65534 and caps == ["0000000000000000"] * 2, (os.getuid(), caps)
    ctscope.cli.main(argv)
""")


@pytest.mark.kernel
def test_no_permission_unprivileged_user(ct_pin):
    setpriv = _need_setpriv()
    cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all,+dac_read_search",
           "--ambient-caps=+dac_read_search", sys.executable, "-c", UNPRIVILEGED]
    for args in (["dump", str(ct_pin)], ["stats", str(ct_pin)], ["dump", str(ct_pin), "--layout", "raw"]):
        r = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120)
        assert_one_line_error(r, EXIT_PERMISSION, str(ct_pin), "CAP_BPF")


@pytest.mark.kernel
def test_unwritable_output_path(ct_pin, tmp_path):
    """Root without CAP_DAC_OVERRIDE (so mode bits bind it) but with CAP_BPF writes into a
    0555 directory: exit 4 naming the directory, and nothing is left in it."""
    setpriv = _need_setpriv()
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    drop = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]
    for name in ("x.parquet", "x.ndjson", "x.arrow", "x.csv"):
        r = subprocess.run(drop + [sys.executable, "-m", "ctscope", "dump", str(ct_pin), "-o", str(out / name)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode in (EXIT_BAD_INPUT, EXIT_PERMISSION), r.stderr
        assert_one_line_error(r, r.returncode, str(out))
        assert list(out.iterdir()) == []
    # The output's directory does not exist: bad input, nothing created.
    missing = tmp_path / "nope" / "x.parquet"
    assert_one_line_error(cli("dump", ct_pin, "-o", missing), EXIT_BAD_INPUT, str(missing.parent))
    assert not missing.parent.exists()


@pytest.mark.kernel
def test_output_to_devices_fifos_symlinks_and_directories(ct_pin, tmp_path):
    """-o never replaces what is not a regular file: a device or FIFO is written into, a
    symlink keeps pointing at its (replaced) target, a directory is a one-line exit 2."""
    import stat
    import threading

    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a private /dev/null
    for args in (("dump", ct_pin, "-o", null, "-f", "parquet"), ("dump", ct_pin, "-o", null, "-f", "ndjson"),
                 ("stats", ct_pin, "-o", null), ("snapshot", ct_pin, "-o", null)):
        r = cli(*args)
        assert r.returncode == 0, r.stderr
        assert stat.S_ISCHR(os.lstat(null).st_mode), f"{args[0]} replaced the device"

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    r = cli("dump", ct_pin, "-o", fifo, "-f", "ndjson")
    reader.join(timeout=60)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and len(got[0].splitlines()) == 2000

    real = tmp_path / "real"
    real.mkdir()
    (real / "x.ndjson").write_text("old\n")
    link = tmp_path / "link.ndjson"
    link.symlink_to(real / "x.ndjson")
    assert cli("dump", ct_pin, "-o", link, "-f", "ndjson").returncode == 0
    assert link.is_symlink() and len((real / "x.ndjson").read_text().splitlines()) == 2000
    assert sorted(p.name for p in real.iterdir()) == ["x.ndjson"]  # no temporary left beside it

    # /dev/stdout is the already open descriptor: the bytes go to the pipe.
    r = subprocess.run([sys.executable, "-m", "ctscope", "dump", str(ct_pin), "-o", "/dev/stdout", "-f", "parquet"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0 and r.stdout[:4] == b"PAR1" and r.stdout[-4:] == b"PAR1", r.stderr

    assert_one_line_error(cli("dump", ct_pin, "-o", real), EXIT_BAD_INPUT, str(real), "directory")
    assert_one_line_error(cli("stats", ct_pin, "-o", "/proc/x.prom"), EXIT_BAD_INPUT, "/proc/x.prom")


# ----------------------------------------------------------------- pipes and signals
@pytest.mark.kernel
@pytest.mark.parametrize("fmt", ["ndjson", "csv", "table", "json"])
def test_closed_pipe(pin_dir, fmt):
    """`ctscope dump PIN -f ndjson | head -1`: exit 0, nothing on stderr."""
    pin = pin_dir / "cali_v4_ct4"
    synth(pin, 50_000)
    r = subprocess.run(["bash", "-c", f'"$0" -m ctscope dump "$1" -f {fmt} | head -1; exit "${{PIPESTATUS[0]}}"',
                        sys.executable, str(pin)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    assert len(r.stdout.splitlines()) == 1


@pytest.mark.kernel
@pytest.mark.parametrize("cmd", [["dump", "-f", "parquet"], ["dump", "-f", "arrow"], ["expired", "--all", "-f", "parquet"],
                                 ["query", "SELECT * FROM ct", "-f", "parquet"]])
def test_closed_pipe_binary(pin_dir, cmd):
    """Binary output into `head -c 10` (ctscope's writers, fed a Dump or polars frames):
    still exit 0 and nothing on stderr."""
    pin = pin_dir / "cali_v4_ct4"
    synth(pin, 200_000)
    args = [cmd[0], str(pin), *cmd[1:]]
    r = subprocess.run(["bash", "-c", '"$0" -m ctscope "$@" | head -c 10 >/dev/null; exit "${PIPESTATUS[0]}"',
                        sys.executable, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr


@pytest.mark.kernel
def test_bad_option_values_and_failing_expressions_are_one_line_exit_2(ct_pin):
    for args, needle in ((("dump", ct_pin, "--limit", "-1"), "--limit"), (("dump", ct_pin, "--batch-size", "0"), "--batch-size"),
                         (("dump", ct_pin, "--now-ns", "-5"), "--now-ns"), (("stats", ct_pin, "--now-ns", "-5"), "--now-ns"),
                         (("dump", ct_pin, "--threads", "0"), "--threads"), (("top", ct_pin, "-n", "0"), "-n"),
                         (("dump", ct_pin, "--no-such-option"), "--no-such-option"),
                         # parses, then fails while running: the user's expression, so bad input
                         (("dump", ct_pin, "--where", "CAST(src AS INT) > 1"), "src"),
                         (("query", ct_pin, "SELECT nope FROM ct"), "nope")):
        line = assert_one_line_error(cli(*args), EXIT_BAD_INPUT, needle)
        assert len(line) < 400, line


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path):
    r = cli("--debug", "dump", tmp_path / "missing")
    assert r.returncode == EXIT_NOT_FOUND and "Traceback" in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("ctscope: error: ")


@pytest.mark.kernel
def test_raw_layout_and_empty_directories_are_not_analysed(ct_pin, tmp_path):
    for cmd in ("stats", "expired", "top", "metrics", "report"):
        assert_one_line_error(cli(cmd, ct_pin, "--layout", "raw", "-o", tmp_path / f"x.{cmd}.txt"), EXIT_BAD_INPUT,
                              "--layout raw")
    raw = tmp_path / "raw.parquet"
    assert cli("dump", ct_pin, "--layout", "raw", "-o", raw).returncode == 0
    assert_one_line_error(cli("stats", raw), EXIT_BAD_INPUT, str(raw), "raw-layout")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(cli("stats", empty), EXIT_BAD_INPUT, str(empty), "without snapshot files")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "raw.parquet"]


@pytest.mark.kernel
@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, EXIT_INTERRUPTED, "interrupted"),
                                           (signal.SIGTERM, 128 + signal.SIGTERM, "terminated")])
def test_sigint_during_parquet_dump(pin_dir, tmp_path, sig, code, word):
    """Ctrl-C (or SIGTERM: a timeout, a pod stopping) during a large `dump -o X.parquet`:
    exit 130 (143), 'interrupted' ('terminated'), no file under the final name and the
    temporary file removed (SIGTERM's default action left `.x.parquet.*.partial` behind). Repeated at different moments: the
    writer's encoding threads must be gone before Python exits (when polars' sink ran
    our source on its threads, a Ctrl-C that let Python exit under them aborted the
    process, SIGABRT, about one time in ten)."""
    pin = pin_dir / "cali_v4_ct4"
    synth(pin, 1_000_000, 1_048_576)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "x.parquet"
    for attempt in range(8):
        p = subprocess.Popen([sys.executable, "-m", "ctscope", "dump", str(pin), "-o", str(target), "--batch-size", "256"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None:
            partial = [f for f in out.iterdir() if f.name.endswith(".partial")]
            if partial and partial[0].stat().st_size > 0:
                break
            time.sleep(0.01)
        time.sleep(0.02 * attempt)
        assert p.poll() is None, "the dump ended before it could be interrupted"
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
        assert p.returncode == code, (attempt, err)
        assert "Traceback" not in err and err.strip().splitlines() == [f"ctscope: {word}"], err
        assert list(out.iterdir()) == []


# ---------------------------------------------------------------- FelixConfiguration
FELIX_BAD = {
    "unparseable.yaml": "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nspec: [unclosed\n  x: 1\n",
    "bad-timeouts.yaml": "kind: FelixConfiguration\nspec:\n  bpfConntrackTimeouts: \"TCPEstablished=banana\"\n",
    "not-json.json": "{\"kind\": \"FelixConfiguration\", \"spec\": {",
}


@pytest.mark.kernel
def test_felix_configuration_that_does_not_parse(ct_pin, tmp_path):
    for name, text in FELIX_BAD.items():
        f = tmp_path / name
        f.write_text(text)
        if name != "bad-timeouts.yaml":  # check reads the map-size fields only
            assert_one_line_error(cli("check", ct_pin, "--felix-config", f), EXIT_BAD_INPUT, str(f))
        assert_one_line_error(cli("stats", ct_pin, "--felix-config", f), EXIT_BAD_INPUT, str(f))
    # A missing file is "not found" for every command alike.
    missing = tmp_path / "no-such-felix.yaml"
    for cmd in ("check", "stats"):
        assert_one_line_error(cli(cmd, ct_pin, "--felix-config", missing), 3, str(missing))
