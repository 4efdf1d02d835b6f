"""Felix's conntrack timeouts: defaults, the `bpfConntrackTimeouts` syntax, FelixConfiguration
files, and "Auto" (read from the node's nf_conntrack sysctls).

Mirrors felix/bpf/conntrack/timeouts.go (`DefaultTimeouts`, `GetTimeouts`): a value is a Go
duration ("20s", "1h30m", "1.5h") or "Auto", which takes the matching netfilter sysctl if it
can be read and the default otherwise. Felix only warns about unknown names or bad values and
keeps the default; ctscope refuses them, because here they come from a person typing.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

from ctscope import felixconfig
from ctscope.errors import BadArgument

S = 1_000_000_000

# Field names as Felix spells them, in Felix's order, with Felix's DefaultTimeouts().
DEFAULTS_NS: dict[str, int] = {
    "CreationGracePeriod": 10 * S,
    "TCPSynSent": 20 * S,
    "TCPEstablished": 3600 * S,
    "TCPFinsSeen": 30 * S,
    "TCPResetSeen": 40 * S,
    "UDPTimeout": 60 * S,
    "GenericTimeout": 600 * S,
    "ICMPTimeout": 5 * S,
}

# FelixConfiguration's default for bpfConntrackTimeouts sets only this one to Auto.
DEFAULT_SPEC: dict[str, str] = {"TCPFinsSeen": "Auto"}

# Names "Auto" may be used with, and the sysctl each reads (timeouts.go linuxSysctls).
AUTO_SYSCTLS: dict[str, str] = {
    "TCPSynSent": "nf_conntrack_tcp_timeout_syn_sent",
    "TCPEstablished": "nf_conntrack_tcp_timeout_established",
    "TCPFinsSeen": "nf_conntrack_tcp_timeout_time_wait",
    "GenericTimeout": "nf_conntrack_generic_timeout",
    "ICMPTimeout": "nf_conntrack_icmp_timeout",
}
SYSCTL_DIR = "/proc/sys/net/netfilter"

# Calico's CRD spells the fields in camelCase (creationGracePeriod, tcpSynSent, udpTimeout ...).
_BY_LOWER = {name.lower(): name for name in DEFAULTS_NS}

_GO_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": S, "m": 60 * S, "h": 3600 * S}
_GO_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> int:
    """Nanoseconds of a Go `time.ParseDuration` string ("1h30m", "1.5s", "0")."""
    s = text.strip()
    sign = -1 if s.startswith("-") else 1
    s = s.lstrip("+-")
    if s == "0":
        return 0
    pos, total, seen = 0, 0.0, False
    while pos < len(s):
        m = _GO_DURATION.match(s, pos)
        if not m or m.group(1) in ("", "."):
            raise ValueError(f"not a Go duration: {text!r}")
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos, seen = m.end(), True
    if not seen:
        raise ValueError(f"not a Go duration: {text!r}")
    return sign * round(total)


def read_sysctls(directory: str | os.PathLike[str] = SYSCTL_DIR) -> dict[str, int]:
    """The nf_conntrack timeout sysctls "Auto" may use, in seconds (missing ones left out:
    without the nf_conntrack module there are none)."""
    out: dict[str, int] = {}
    for name in sorted(set(AUTO_SYSCTLS.values())):
        try:
            out[name] = int(Path(directory, name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out


def parse_spec(spec: str | Mapping[str, object] | None, what: str = "--timeouts") -> dict[str, str]:
    """`"TCPSynSent=20s,TCPFinsSeen=Auto"` (or a mapping, e.g. the CRD's camelCase object) as
    {FelixName: value}. Unknown names are an error."""
    if spec is None:
        return {}
    items: list[tuple[str, str]] = []
    if isinstance(spec, Mapping):
        items = [(str(k), str(v)) for k, v in spec.items() if v is not None]
    else:
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise BadArgument(f"{what} {spec!r}: expected NAME=VALUE pairs separated by commas, got {part!r}")
            k, v = part.split("=", 1)
            items.append((k.strip(), v.strip()))
    out: dict[str, str] = {}
    for k, v in items:
        name = _BY_LOWER.get(k.lower())
        if name is None:
            raise BadArgument(f"{what}: unknown timeout {k!r}: expected one of {', '.join(DEFAULTS_NS)}")
        out[name] = v
    return out


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Effective timeouts in nanoseconds, and where each came from."""

    values: dict[str, int]
    origins: dict[str, str]

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    @classmethod
    def resolve(cls, spec: str | Mapping[str, object] | None = None, *, felix_config: str | os.PathLike[str] | None = None,
                node: str | None = None, sysctls: Mapping[str, int] | None = None) -> "Timeouts":
        """Felix's defaults (with TCPFinsSeen=Auto, FelixConfiguration's default), overlaid by
        `felix_config`'s spec.bpfConntrackTimeouts, overlaid by `spec`. "Auto" reads `sysctls`
        (a snapshot's recorded values; None = this host's /proc)."""
        wanted: dict[str, tuple[str, str]] = {k: (v, "default") for k, v in DEFAULT_SPEC.items()}
        if felix_config is not None:
            for k, v in felix_config_timeouts(felix_config, node).items():
                wanted[k] = (v, f"felix config {felix_config}")
        for k, v in parse_spec(spec).items():
            wanted[k] = (v, "--timeouts")
        if sysctls is None:
            sysctls = read_sysctls()
        values = dict(DEFAULTS_NS)
        origins = {k: "default" for k in DEFAULTS_NS}
        for name, (text, origin) in wanted.items():
            if text.lower() == "auto":
                sysctl = AUTO_SYSCTLS.get(name)
                if sysctl is not None and sysctl in sysctls:
                    values[name] = int(sysctls[sysctl]) * S
                    origins[name] = f"Auto: {sysctl}"
                else:
                    # Felix: "Not a valid BPF conntrack timeout value, using default".
                    origins[name] = "Auto: default (sysctl not available)" if sysctl else "default (Auto not supported)"
                continue
            try:
                values[name] = parse_go_duration(text)
            except ValueError:
                raise BadArgument(f"{origin}: {name}={text!r}: expected a Go duration (20s, 1h30m) or Auto") from None
            if values[name] < 0:
                # Go parses it and Felix would use it: every such entry would be expired at once.
                raise BadArgument(f"{origin}: {name}={text!r}: a timeout cannot be negative (it would expire every "
                                  "such entry); expected a duration >= 0 (20s, 1h30m) or Auto")
            origins[name] = origin
        return cls(values, origins)

    def spec(self) -> str:
        """The effective values in bpfConntrackTimeouts syntax."""
        return ",".join(f"{k}={format_duration(v)}" for k, v in self.values.items())


def format_duration(ns: int) -> str:
    """Go-style short form: 3600 s -> "1h", 90 s -> "1m30s", 1.5 s -> "1.5s"."""
    if ns % S:
        return f"{ns / S:g}s"
    s = ns // S
    out = ""
    for unit, size in (("h", 3600), ("m", 60)):
        if s >= size:
            out += f"{s // size}{unit}"
            s %= size
    return out + (f"{s}s" if s or not out else "")


def felix_config_timeouts(path: str | os.PathLike[str], node: str | None = None) -> dict[str, str]:
    """spec.bpfConntrackTimeouts of a FelixConfiguration file: `default`'s, with each timeout
    that `node.<node>` sets on top."""
    out: dict[str, str] = {}
    for s in felixconfig.specs(path, node):
        out.update(parse_spec(s.get("bpfConntrackTimeouts"), what=f"{path}: spec.bpfConntrackTimeouts"))
    return out


