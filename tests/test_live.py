"""`ctscope watch` (screen, plain lines, --events) and `ctscope serve` scraped by a real Prometheus,
against real maps that the tests change while ctscope watches."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import ctbytes
from conftest import skip_or_fail

pytestmark = pytest.mark.kernel

CTSCOPE = [sys.executable, "-m", "ctscope"]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
PATIENCE_S = 60  # how long to wait for something that must happen (not a speed goal)


def key(i: int, proto: int = ctbytes.TCP) -> ctbytes.Key:
    return ctbytes.Key(proto, f"10.1.{i // 250}.{i % 250 + 1}", 20000 + i, "10.9.0.1", 443)


def value(last_seen: int, nbytes: int = 100, packets: int = 2) -> bytes:
    leg = ctbytes.Leg(bytes=nbytes, packets=packets, syn=True, ack=True)
    return ctbytes.pack_value("v4", 4, ts0=0, last_seen=last_seen, a2b=leg, b2a=ctbytes.Leg(syn=True, ack=True))


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def ident(k: ctbytes.Key) -> tuple:
    return (k.proto, k.addr_a, k.port_a, k.addr_b, k.port_b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lines:
    """A subprocess' stdout, line by line, read by a thread (no blocking reads in the test)."""

    def __init__(self, proc: subprocess.Popen):
        self.q: queue.Queue[str] = queue.Queue()
        self.proc = proc
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.q.put(line)

    def until(self, pred, what: str) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            try:
                got.append(self.q.get(timeout=0.2))
            except queue.Empty:
                if self.proc.poll() is not None and self.q.empty():
                    break
                continue
            if pred(got):
                return got
        raise AssertionError(f"never saw {what}; got {got!r}; stderr {self.proc.stderr.read() if self.proc.poll() is not None else ''}")


# ------------------------------------------------------------------------------------------ --events
def test_events_report_every_insert_update_delete_and_nothing_else(make_ct_map):
    m = make_ct_map("v4", 4, 4096)
    t = now_ns()
    base = {i: key(i) for i in range(300)}
    for i, k in base.items():
        m.update(k.pack(), value(t, 1000 + i, 10))
    p = subprocess.Popen([*CTSCOPE, "watch", str(m.path), "--events", "-f", "ndjson", "--interval", "0.3"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        out = Lines(p)
        # Sentinels prove the baseline refresh happened before the changes below: insert one
        # until one is reported (those inserted before the baseline never are).
        sentinels, seen = [], []
        deadline = time.monotonic() + PATIENCE_S
        while not seen and time.monotonic() < deadline:
            sentinels.append(key(5000 + len(sentinels)))
            m.update(sentinels[-1].pack(), value(now_ns()))
            try:
                seen.append(out.q.get(timeout=1.0))
            except queue.Empty:
                pass
        time.sleep(1.0)  # a few more refreshes: every sentinel reported has been
        while not out.q.empty():
            seen.append(out.q.get())
        sentinel_ids = {ident(k) for k in sentinels}
        assert seen and all(json.loads(x)["event"] == "new" for x in seen)
        assert {(e["proto"], e["addr_a"], e["port_a"], e["addr_b"], e["port_b"]) for e in map(json.loads, seen)} \
            <= sentinel_ids

        inserted = {key(i) for i in range(1000, 1040)}
        updated = {base[i]: 7000 + i for i in range(0, 30)}       # counters up
        deleted = {base[i] for i in range(100, 125)}
        recreated = {base[i] for i in range(200, 205)}              # deleted and made again: counters go back
        t2 = now_ns()
        for k in inserted:
            m.update(k.pack(), value(t2, 5, 1))
        for k, b in updated.items():
            m.update(k.pack(), value(t2, b, 20))
        for k in deleted:
            m.delete(k.pack())
        for k in recreated:
            m.delete(k.pack())
            m.update(k.pack(), value(t2, 1, 1))
        expected = ({("new", ident(k)) for k in inserted} | {("updated", ident(k)) for k in updated}
                    | {("gone", ident(k)) for k in deleted} | {("recreated", ident(k)) for k in recreated})

        def events(g):
            return [json.loads(x) for x in g]

        got = events(out.until(lambda g: len(g) >= len(expected), f"{len(expected)} events"))
        # A few more refreshes: nothing else may show up.
        time.sleep(1.5)
        while not out.q.empty():
            got.append(json.loads(out.q.get()))
        assert sorted((e["event"], (e["proto"], e["addr_a"], e["port_a"], e["addr_b"], e["port_b"])) for e in got) \
            == sorted(expected)
        for e in got:
            assert e["time"].endswith("Z") and e["src"] and e["dport"] == 443
            k = (e["proto"], e["addr_a"], e["port_a"], e["addr_b"], e["port_b"])
            if e["event"] == "updated":
                i = next(i for i, kk in base.items() if ident(kk) == k)
                assert (e["bytes_delta"], e["packets_delta"]) == (7000 + i - (1000 + i), 10)
                assert e["bytes"] == 7000 + i
            elif e["event"] == "gone":
                assert e["bytes_delta"] is None
            else:  # new, recreated: everything the entry has counted
                assert (e["bytes_delta"], e["packets_delta"]) == (e["bytes"], e["packets"])
    finally:
        p.kill()
        p.wait()


def test_events_count_table_and_csv(make_ct_map):
    m = make_ct_map("v4", 4, 1024)
    for fmt in ("table", "csv"):
        p = subprocess.Popen([*CTSCOPE, "watch", str(m.path), "--events", "-f", fmt, "--interval", "0.2",
                              "--count", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        out = Lines(p)
        deadline = time.monotonic() + PATIENCE_S
        i = 0
        while p.poll() is None and time.monotonic() < deadline:
            m.update(key(100 + i + (0 if fmt == "table" else 500)).pack(), value(now_ns()))
            i += 1
            time.sleep(0.1)
        assert p.wait(timeout=PATIENCE_S) == 0, p.stderr.read()
        lines = []
        while not out.q.empty():
            lines.append(out.q.get())
        if fmt == "csv":
            assert lines[0].startswith("time,event,proto,addr_a") and len(lines) == 4
        else:
            assert len(lines) == 3 and all("[      NEW] tcp 10.1." in x and "-> 10.9.0.1:443" in x for x in lines)


# ------------------------------------------------------------------------------------------ screen, lines
def test_plain_lines_when_piped(make_ct_map):
    m = make_ct_map("v4", 4, 1000)
    t = now_ns()
    for i in range(250):
        m.update(key(i).pack(), value(t))
    p = subprocess.run([*CTSCOPE, "watch", str(m.path), "--interval", "0.2", "--duration", "1"],
                       capture_output=True, text=True, env=ENV, timeout=PATIENCE_S)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) >= 2 and "\x1b" not in p.stdout
    for line in lines:
        assert " entries=250 max_entries=1000 fill=25.0% " in line and "verdict=ok" in line and "new/s=" in line



@pytest.mark.parametrize("events", [True, False])
def test_watch_ends_when_its_reader_goes_away(make_ct_map, events):
    """`watch --events | head -1` on a quiet map: nothing more is ever written, so no EPIPE
    comes; watch must notice the closed pipe itself instead of running until --duration."""
    m = make_ct_map("v4", 4, 1000)
    m.update(key(1).pack(), value(now_ns()))
    r, w = os.pipe()
    p = subprocess.Popen([*CTSCOPE, "watch", str(m.path), "--interval", "600", *(["--events"] if events else [])],
                         stdout=w, stderr=subprocess.PIPE, text=True, env=ENV)
    os.close(w)
    if not events:
        assert os.read(r, 4096)  # the first summary line, then the reader leaves
    os.close(r)
    try:
        rc = p.wait(timeout=PATIENCE_S)  # the interval is 600 s: only the closed pipe can end it sooner
    finally:
        p.kill()
    assert rc == 0, p.stderr.read()

def tmux(*args: str, sock: str) -> str:
    return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True, check=True).stdout


class Terminal:
    """`ctscope watch PIN` in a real 80x24 terminal (a tmux session); `rc` holds its exit code."""

    def __init__(self, pin, tmp_path: Path):
        if shutil.which("tmux") is None:
            skip_or_fail("needs tmux (apt-get install tmux)")
        self.sock = f"ctscope-test-{os.getpid()}-{tmp_path.name}"
        self.done = tmp_path / "rc"
        cmd = f"{sys.executable} -m ctscope watch {pin} --interval 0.3; echo $? > {self.done}; sleep 60"
        tmux("new-session", "-d", "-x", "80", "-y", "24", cmd, sock=self.sock)

    def pane(self) -> str:
        return tmux("capture-pane", "-p", sock=self.sock)

    def wait_for(self, pred, what: str) -> str:
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            text = self.pane()
            if pred(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"never saw {what}:\n{self.pane()}")

    def keys(self, *keys: str) -> int:
        """Send keys; the exit code of watch once it has left."""
        tmux("send-keys", *keys, sock=self.sock)
        deadline = time.monotonic() + PATIENCE_S
        while not self.done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return int(self.done.read_text())

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)


def test_screen_in_a_real_terminal_draws_refreshes_and_quits_on_q(make_ct_map, tmp_path):
    m = make_ct_map("v4", 4, 1000)
    t = now_ns()
    for i in range(100):
        m.update(key(i).pack(), value(t))
    term = Terminal(m.path, tmp_path)
    try:
        first = term.wait_for(lambda s: "100/1,000" in s and "Busiest by bytes/s" in s, "the first screen")
        lines = first.splitlines()
        assert len(lines) <= 24 and all(len(x) <= 80 for x in lines)
        assert lines[0].startswith("ctscope watch") and "q quits" in lines[0]
        assert any(x.startswith("Cost") and "CPU" in x for x in lines)
        # Traffic on one flow and new entries: the next refreshes show both.
        t2 = now_ns()
        m.update(key(7).pack(), value(t2, 10_000_000, 5000))
        for i in range(100, 150):
            m.update(key(i).pack(), value(t2))
        term.wait_for(lambda s: "150/1,000" in s and f"10.1.0.8:{20007}" in s, "the refreshed screen")
        assert term.keys("q") == 0
        assert "Busiest" not in term.pane()  # the alternate screen is gone
    finally:
        term.close()


def test_screen_leaves_cleanly_on_ctrl_c(make_ct_map, tmp_path):
    m = make_ct_map("v4", 4, 1000)
    m.update(key(1).pack(), value(now_ns()))
    term = Terminal(m.path, tmp_path)
    try:
        term.wait_for(lambda s: "1/1,000" in s, "the screen")
        assert term.keys("C-c") == 0
        pane = term.pane()
        assert "Busiest" not in pane and "Traceback" not in pane and "interrupted" not in pane
    finally:
        term.close()


# ------------------------------------------------------------------------------------------ serve
def get(url: str, accept: str | None = None) -> tuple[str, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=PATIENCE_S) as r:
        return r.headers["Content-Type"], r.read().decode()


def start_serve(pin: str, min_interval: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    p = subprocess.Popen([*CTSCOPE, "serve", pin, "--listen", f"127.0.0.1:{port}", "--min-interval", str(min_interval)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**ENV, "NODE_NAME": "node-7"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        try:
            get(base + "/healthz")
            return p, base
        except OSError:
            if p.poll() is not None:
                raise AssertionError(p.stderr.read())
            time.sleep(0.1)
    raise AssertionError("serve never answered")


def samples(text: str) -> dict[str, list]:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_serve_formats_health_shared_reads_and_sigterm(make_ct_map):
    m = make_ct_map("v4", 4, 2048)
    t = now_ns()
    for i in range(60):
        m.update(key(i).pack(), value(t))
    p, base = start_serve(str(m.path), min_interval=3600)
    try:
        ctype, text = get(base + "/metrics")
        assert ctype.startswith("text/plain; version=0.0.4")
        s = samples(text)
        assert [x.value for x in s["ctscope_conntrack_max_entries"]] == [2048]
        assert s["ctscope_conntrack_max_entries"][0].labels == {"node": "node-7", "map": "cali_v4_ct4"}
        assert sum(x.value for x in s["ctscope_conntrack_entries"]) == 60
        assert s["ctscope_build_info"][0].labels["version"]
        ctype, om = get(base + "/metrics", "application/openmetrics-text; version=1.0.0")
        assert ctype.startswith("application/openmetrics-text") and om.endswith("# EOF\n")
        # Concurrent scrapes within --min-interval share the one read made at start-up.
        m.update(key(999).pack(), value(t))
        results: list[str] = []
        threads = [threading.Thread(target=lambda: results.append(get(base + "/metrics")[1])) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for text in results:
            s = samples(text)
            assert [x.value for x in s["ctscope_reads"] if x.name == "ctscope_reads_total"] == [1]
            assert sum(x.value for x in s["ctscope_conntrack_entries"]) == 60
        assert get(base + "/healthz")[1] == "ok\n"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=PATIENCE_S) == 0
        assert "stopped" in p.stderr.read()
    finally:
        p.kill()
        p.wait()


def test_serve_on_a_taken_port_names_the_listen_option(make_ct_map):
    m = make_ct_map("v4", 4, 100)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([*CTSCOPE, "serve", str(m.path), "--listen", f"127.0.0.1:{port}"], capture_output=True,
                           text=True, env=ENV, timeout=PATIENCE_S)
    assert r.returncode == 1
    assert r.stderr.strip() == f"ctscope: error: --listen 127.0.0.1:{port}: cannot listen there: Address already in use"

def test_serve_survives_a_missing_pin_and_counts_the_error(bpffs, tmp_path):
    missing = bpffs / f"nothing-here-{os.getpid()}"
    p, base = start_serve(str(missing), min_interval=0)
    try:
        s = samples(get(base + "/metrics")[1])
        assert s["ctscope_last_read_success"][0].value == 0
        assert [x.value for x in s["ctscope_read_errors"] if x.name.endswith("_total")][0] >= 1
        assert "ctscope_conntrack_entries" not in s
        assert get(base + "/healthz")[1].startswith("serving; last read failed:")
    finally:
        p.terminate()
        p.wait()


def test_real_prometheus_scrapes_entries_and_max_entries(make_ct_map, tmp_path):
    prom = shutil.which("prometheus")
    if prom is None:
        skip_or_fail("needs the prometheus server (apt-get install prometheus)")
    m = make_ct_map("v4", 4, 3000)
    t = now_ns()
    for i in range(500):
        m.update(key(i).pack(), value(t))
    p, base = start_serve(str(m.path), min_interval=0.5)
    port = free_port()
    target = base.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: ctscope\n    static_configs: [{{targets: ['{target}']}}]\n")
    pr = subprocess.Popen([prom, f"--config.file={tmp_path / 'prometheus.yml'}",
                           f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    api = f"http://127.0.0.1:{port}/api/v1/query?query="

    def query(q: str) -> float | None:
        try:
            _, body = get(api + urllib.parse.quote(q))
        except OSError:
            return None
        r = json.loads(body)["data"]["result"]
        return float(r[0]["value"][1]) if r else None

    def wait_value(q: str, want: float) -> None:
        deadline = time.monotonic() + PATIENCE_S
        got = None
        while time.monotonic() < deadline:
            got = query(q)
            if got == want:
                return
            time.sleep(0.5)
        raise AssertionError(f"{q}: {got}, expected {want}")

    try:
        wait_value('ctscope_conntrack_max_entries{job="ctscope",node="node-7",map="cali_v4_ct4"}', 3000)
        wait_value("sum(ctscope_conntrack_entries)", 500)
        wait_value("ctscope_conntrack_fill_ratio", 500 / 3000)
        t2 = now_ns()
        for i in range(500, 800):
            m.update(key(i).pack(), value(t2))
        wait_value("sum(ctscope_conntrack_entries)", 800)
        for i in range(0, 200):
            m.delete(key(i).pack())
        wait_value("sum(ctscope_conntrack_entries)", 600)
        wait_value('ctscope_conntrack_changes_total{change="gone"}', 200)
        assert query('up{job="ctscope"}') == 1
    finally:
        pr.terminate()
        p.terminate()
        pr.wait(timeout=PATIENCE_S)
        p.wait(timeout=PATIENCE_S)


def test_hashed_join_and_exact_join_classify_alike(make_ct_map):
    """The key-hash join (default) and the exact join (the fallback on a hash collision) agree."""
    from ctscope.analysis.diff import KEY
    from ctscope.analysis.live import Watcher

    m = make_ct_map("v4", 4, 1024)
    t = now_ns()
    for i in range(100):
        m.update(key(i).pack(), value(t, 100 + i))
    w = Watcher(str(m.path), events=True)
    g1 = w.read()
    for i in range(100, 110):
        m.update(key(i).pack(), value(t))
    for i in range(10):
        m.update(key(i).pack(), value(t + 5, 5000 + 50 * i, 9))  # distinct byte deltas
    for i in range(20, 30):
        m.delete(key(i).pack())
    g2 = w.read()
    cols = ["change", *KEY, "src", "sport", "dst", "dport", "type", "tcp_state_new", "bytes_delta", "packets_delta"]
    hashed = w._compare(g1.frame, g2.frame, 1.0)
    exact = w._compare(g1.frame, g2.frame, 1.0, exact=True)
    a, b = (r[1].select(cols).with_columns(pl_str("type"), pl_str("tcp_state_new")).sort(KEY) for r in (hashed, exact))
    assert a.height == 30 and a.equals(b)
    assert hashed[2].equals(exact[2])  # distinct byte rates; packet rates tie, so only their values
    assert hashed[3]["packets_per_s"].to_list() == exact[3]["packets_per_s"].to_list()


def pl_str(c: str):
    import polars as pl

    return pl.col(c).cast(pl.String)


def test_readme_alert_rule_is_valid_for_prometheus(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("needs promtool (apt-get install prometheus)")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme[readme.index("```yaml\ngroups:") + len("```yaml\n"):]
    (tmp_path / "rules.yml").write_text(block[:block.index("```")])
    p = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert p.returncode == 0 and "2 rules found" in p.stdout, p.stdout + p.stderr
    assert "ctscope_conntrack_fill_after_sweep_ratio > 0.90" in block  # Felix's grow threshold


def test_serve_refuses_at_start_what_can_never_be_a_ct_map(bpffs, tmp_path):
    """A regular file, a snapshot file or a non-CT map is a configuration error: exit 2 with one
    line at start, not an exporter that serves read errors forever (a missing pin is waited for)."""
    plain = tmp_path / "not-a-pin.json"
    plain.write_text("{}")
    snap = tmp_path / "x.parquet"
    snap.write_bytes(b"PAR1")
    for target in (plain, snap):
        r = subprocess.run([*CTSCOPE, "serve", str(target), "--listen", f"127.0.0.1:{free_port()}"],
                           capture_output=True, text=True, env=ENV, timeout=PATIENCE_S)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and str(target) in r.stderr, \
            (target, r.stderr)
