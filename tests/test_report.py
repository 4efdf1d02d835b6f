"""`ctscope report`: one self-contained HTML page, rendered in headless Chromium (Debian
`chromium`) to check that its charts drew and that the page is not blank."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

import pytest

from conftest import skip_or_fail

import ctscope
from ctscope.cli.synth import synth

pytestmark = pytest.mark.kernel

NOW = 5 * 86_400 * 10**9
CHARTS = {"fill-gauge", "idle-histogram", "top-talkers", "protocol-mix", "tcp-states"}


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    skip_or_fail("needs chromium on PATH (apt-get install chromium)")
    raise AssertionError("unreachable")


def headless(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="ctscope-chromium-") as profile:
        return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Rows of a non-interlaced 8-bit RGB/RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return w, bpp, rows


@pytest.fixture(scope="module")
def report_html(bpffs, tmp_path_factory):
    d = bpffs / "report"
    d.mkdir()
    pin = d / "cali_v4_ct4"
    synth(str(pin), 5000, max_entries=8192, seed=5, now_ns=NOW)
    out = tmp_path_factory.mktemp("report") / "report.html"
    p = subprocess.run([sys.executable, "-m", "ctscope", "report", str(pin), "-o", str(out), "--now-ns", str(NOW)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return out


def test_report_is_self_contained(report_html):
    html = report_html.read_text()
    # Nothing is fetched: no external scripts, styles, images or fonts.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html
    assert set(re.findall(r'data-chart="([^"]+)"', html)) == CHARTS
    assert "Total connections" in html and "TCP Established" in html


def test_charts_draw_in_headless_chromium(report_html, tmp_path):
    p = headless("--virtual-time-budget=5000", "--dump-dom", report_html.as_uri())
    dom = p.stdout
    assert "<svg" in dom, p.stderr[-2000:]
    # The page's own check (run after layout) records what each chart drew.
    assert re.search(r'data-charts-drawn="(\d+)"', dom).group(1) == str(len(CHARTS))
    drawn = dict(re.findall(r'data-chart="([^"]+)"[^>]*?data-drawn="([^"]+)"', dom)) or {
        c: d for d, c in re.findall(r'data-drawn="([^"]+)"[^>]*?data-chart="([^"]+)"', dom)}
    assert set(drawn) == CHARTS, drawn
    for chart, info in drawn.items():
        marks, area, size = info.split()
        w, h = map(int, size.split("x"))
        assert int(marks) > 0 and int(area) > 0 and w > 50 and h > 50, (chart, info)

    shot = tmp_path / "report.png"
    p = headless("--window-size=1280,1400", f"--screenshot={shot}", report_html.as_uri())
    assert shot.exists(), p.stderr[-2000:]
    w, bpp, rows = png_pixels(shot.read_bytes())
    colors = set()
    for row in rows[::7]:
        for x in range(0, w * bpp, bpp * 5):
            colors.add(row[x:x + 3])
    # Not blank: the background, text and several chart colours (palette blues/oranges/greens).
    assert len(colors) > 20, len(colors)
    assert any(r < 80 and g > 90 and b > 150 for r, g, b in colors), "no chart blue painted"


def test_report_of_a_snapshot_directory(report_html, tmp_path, bpffs):
    pin = bpffs / "report" / "cali_v4_ct4"
    root = tmp_path / "fleet"
    for node in ("n1", "n2"):
        subprocess.run([sys.executable, "-m", "ctscope", "snapshot", str(pin), "--dir", str(root), "--node", node],
                       check=True, capture_output=True)
    html = ctscope.report(str(root))
    assert "2 snapshots from 2 node(s)" in html and "<h2>Snapshots</h2>" in html
