"""Text from files and maps (map names, snapshot metadata, data columns, error messages)
shown on a terminal: control characters escaped, so a crafted name cannot move the cursor,
retitle the window or hide text. The one owner of that rule.

* `printable`: C0 controls (including newline and tab), DEL, C1 controls and the Unicode
  bidirectional overrides as `\\xNN` / `\\uNNNN`; a backslash stays a backslash.
* `json_controls`: for JSON text (exact data otherwise): DEL, C1 controls and bidi
  overrides as `\\u00NN` escapes, which JSON readers decode back to the same characters
  (polars already escapes C0 controls).
"""

from __future__ import annotations

import re

_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
# The same class as a regex both Python's re and polars' (Rust) regex read.
UNSAFE_PATTERN = "[\\x00-\\x1f\\x7f-\\x9f" + "".join(f"\\u{ord(c):04x}" for c in _BIDI) + "]"
_JSON_UNSAFE = re.compile(f"[\x7f-\x9f{_BIDI}]")


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: object) -> str:
    """`text` with control characters shown as escapes (for terminals and one-line errors)."""
    s = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_escape, s) if _UNSAFE.search(s) else s


def json_controls(text: str) -> str:
    """JSON text with DEL, C1 controls and bidi overrides as \\u escapes (same data)."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) if _JSON_UNSAFE.search(text) else text
