"""`ctscope serve`: a Prometheus exporter for the live CT map (prometheus_client).

GET /metrics answers in the Prometheus text format or OpenMetrics, whichever the Accept
header asks for; GET /healthz says whether the process serves (200) and how the last read
went. A scrape reads the map only when the last read started --min-interval or more ago;
concurrent scrapes wait for that one read and share it. SIGTERM (and Ctrl-C) stop the
server after the requests in flight.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

import typer

from ctscope.analysis.live import EVENTS, Watcher
from ctscope.analysis.metrics import Exposition, exporter_families, families
from ctscope.cli import analysis_io as io
from ctscope.cli.app import app
from ctscope.cli.watch import PIN_HELP
from ctscope.errors import EXIT_BAD_INPUT, BadArgument, CtscopeError, exit_code

DEFAULT_LISTEN = "127.0.0.1:9769"  # 9769: not taken in Prometheus' default port allocations list


class Exporter:
    """Reads on demand, at most once per `min_interval`, shared by concurrent scrapes."""

    def __init__(self, watcher: Watcher, min_interval: float):
        self.watcher, self.min_interval = watcher, min_interval
        self.lock = threading.Lock()
        self.last_start: float | None = None
        self.st: dict | None = None  # the last good read's figures, as stats() gives them
        self.reads = self.errors = 0
        self.last_ok: bool | None = None
        self.last_error = ""
        self.last_duration = 0.0
        self.last_wall = 0.0
        self.changes = dict.fromkeys(EVENTS, 0)

    def _read(self) -> None:
        t0, self.last_wall = time.perf_counter(), time.time()
        self.reads += 1
        try:
            r = self.watcher.refresh()
        except CtscopeError as e:
            # A --where typo, or a first read finding something that can never be a CT map (a
            # regular file, a snapshot, a non-CT map): a configuration error, refused at start
            # (exit 2) instead of served as read errors forever. A missing pin is waited for.
            if str(e).startswith("--where") or (self.reads == 1 and exit_code(e) == EXIT_BAD_INPUT):
                raise
            self._failed(e)
        except Exception as e:  # a missing pin (Calico not up yet), a map replaced mid-read ...
            self._failed(e)
        else:
            self.last_ok, self.last_error = True, ""
            g = r.gen
            self.st = {"snapshots": [{**g.snapshot.summary(), **g.summary}]}
            for k, n in r.counts.items():
                self.changes[k] += n
        self.last_duration = time.perf_counter() - t0

    def _failed(self, e: Exception) -> None:
        self.errors += 1
        self.last_ok, self.last_error = False, " ".join(str(e).split())[:300]
        self.st = None  # never export a stale map as if current
        print(f"ctscope serve: read failed: {self.last_error}", file=sys.stderr, flush=True)

    def exposition(self) -> Exposition:
        with self.lock:
            now = time.monotonic()
            if self.last_start is None or now - self.last_start >= self.min_interval:
                self.last_start = now
                self._read()
            e = families(self.st) if self.st is not None else Exposition()
            s = self.st["snapshots"][0] if self.st is not None else None
            return exporter_families(e, reads=self.reads, errors=self.errors, last_ok=self.last_ok,
                                     last_duration=self.last_duration, last_wall=self.last_wall,
                                     changes=self.changes if s else None,
                                     labels={"node": s["node"], "map": s["map_name"]} if s else None)

    def collect(self):  # prometheus_client Collector protocol
        return self.exposition().prometheus()

    def describe(self):
        return []


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise BadArgument(f"--listen {listen!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN} or 0.0.0.0:9769")
    return host, int(port)


def make_server(exporter: Exporter, host: str, port: int) -> ThreadingHTTPServer:
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)

    class Handler(BaseHTTPRequestHandler):
        # One request per connection: on SIGTERM, server_close() waits for the requests in flight
        # (non-daemon threads) without waiting on idle keep-alive connections.
        protocol_version = "HTTP/1.0"

        def do_GET(self):  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, ctype, encoder(registry))
            elif path == "/healthz":
                state = ("ok" if exporter.last_ok is not False else f"serving; last read failed: {exporter.last_error}")
                self._send(200, "text/plain; charset=utf-8", (state + "\n").encode())
            elif path == "/":
                self._send(200, "text/plain; charset=utf-8", b"ctscope serve: /metrics, /healthz\n")
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):  # no access log on stderr
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = False
    return server


@app.command()
def serve(
    pin: Optional[str] = typer.Argument(None, help=PIN_HELP, show_default=False),
    listen: str = typer.Option(DEFAULT_LISTEN, "--listen", help="HOST:PORT to serve /metrics and /healthz on."),
    min_interval: float = typer.Option(10.0, "--min-interval", min=0, help="Seconds: scrapes within this of the last read share it."),
    where: Optional[str] = io.Where,
    timeouts: Optional[str] = io.Timeouts,
    felix_config: Optional[str] = io.FelixConfig,
    bpffs: str = io.Bpffs,
    ipv6: bool = io.Ipv6,
    layout: str = io.Layout,
) -> None:
    """Prometheus exporter: /metrics (Prometheus text or OpenMetrics), /healthz."""
    host, port = parse_listen(listen)
    w = Watcher(pin, bpffs=bpffs, ipv6=ipv6, layout=layout, where=where, timeouts=timeouts, felix_config=felix_config)
    exporter = Exporter(w, min_interval)
    exporter.exposition()  # the first read now: a --where typo is a usage error (exit 2), not a scrape error
    try:
        server = make_server(exporter, host, port)
    except OSError as e:  # port taken, address not on this host: name the option, not just "[Errno 98]"
        raise CtscopeError(f"--listen {listen}: cannot listen there: {e.strerror or e}") from None

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"ctscope serve: listening on http://{host}:{server.server_address[1]}/metrics", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("ctscope serve: stopped", file=sys.stderr, flush=True)
