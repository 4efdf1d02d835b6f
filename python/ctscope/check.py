"""`ctscope check`: would libbpf reuse this pinned CT map?

libbpf reuses a pin only when six fields equal the loader's definition: map type,
key_size, value_size, max_entries, map_flags and map_extra (facts §7). This module
compares each pinned map with every expectation we can gather (the Calico layout of its
version, a configured size, BPF objects) and explains each difference: the message
libbpf would print and the remedy.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ctscope._native import object_maps
from ctscope import felixconfig, fill
from ctscope.errors import BadArgument, CtscopeError
from ctscope.pins import GLOBALS, ct_pin_version, globals_dir, is_ct_pin_name

FIELDS = ("map_type", "key_size", "value_size", "max_entries", "map_flags", "map_extra")
# Fields a resize can change; any other difference is a different map version.
RESIZABLE = {"max_entries"}

CALICO_DEFAULT_SIZE = 512_000
DEFAULT_SIZE_FILE = "/var/lib/calico/bpf_ct_map_size"
POSSIBLE_CPUS = "/sys/devices/system/cpu/possible"

# What `ctscope resize --max-entries` accepts (resize.resize): a u32, at least 1.
RESIZE_MAX = 0xFFFFFFFF

# Calico's CT maps by (version, family): type, key, value, flags (facts §1).
LAYOUTS: dict[tuple[int, int], dict[str, Any]] = {
    (2, 4): {"map_type": "hash", "key_size": 16, "value_size": 64, "map_flags": 1, "map_extra": 0},
    (3, 4): {"map_type": "hash", "key_size": 16, "value_size": 88, "map_flags": 1, "map_extra": 0},
    (3, 6): {"map_type": "hash", "key_size": 40, "value_size": 128, "map_flags": 1, "map_extra": 0},
    (4, 4): {"map_type": "lru_hash", "key_size": 16, "value_size": 88, "map_flags": 0, "map_extra": 0},
    (4, 6): {"map_type": "lru_hash", "key_size": 40, "value_size": 128, "map_flags": 0, "map_extra": 0},
}
RELEASES = {2: "Calico <= v3.23", 3: "Calico v3.24-v3.30", 4: "Calico v3.31+"}


def layout_of(version: int | None, family: int | None) -> dict[str, Any] | None:
    if version is None or family is None:
        return None
    return LAYOUTS.get((version, family))


def looks_like(params: dict[str, Any]) -> str:
    """Which Calico CT version a map's type/sizes/flags belong to, in words."""
    for (ver, fam), lay in LAYOUTS.items():
        if all(params.get(k) == v for k, v in lay.items()):
            return f"ct{ver} IPv{fam} ({lay['map_type']}, flags {lay['map_flags']:#x}: {RELEASES[ver]})"
    return f"no Calico CT version ({params.get('map_type')}, {params.get('key_size')}/{params.get('value_size')} bytes, flags {params.get('map_flags', 0):#x})"


# --- configured size -------------------------------------------------------------------------

def possible_cpus(path: str = POSSIBLE_CPUS) -> int:
    """Number of possible CPUs from a list such as `0-3,5` (what Felix multiplies by)."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return os.cpu_count() or 1
    n = 0
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return max(n, 1)


def load_felix_config(path: str) -> dict[str, Any]:
    """The `spec` of the `default` FelixConfiguration in a kubectl -o yaml|json file."""
    return felixconfig.spec(path)


def _int_field(spec: dict[str, Any], key: str, path: str) -> int | None:
    v = spec.get(key)
    if v is None:
        return None
    try:
        if isinstance(v, (bool, list, dict)):
            raise TypeError
        n = int(v)
    except (TypeError, ValueError, OverflowError):  # .inf is a YAML float
        shown = repr(v) if isinstance(v, (str, int, float)) else type(v).__name__
        raise BadArgument(f"{path}: spec.{key} = {shown[:60]}, expected an integer") from None
    if n < 0:
        raise BadArgument(f"{path}: spec.{key} = {n}, expected >= 0")
    return n


@dataclass
class ConfiguredSize:
    value: int
    source: str
    # No FelixConfiguration was given: `value` is Calico's default (or the node's auto-grow
    # size file), which holds only if the cluster configures no other size.
    assumed: bool = False
    # The node's auto-grow size file: Felix loads at least this many (max(configured, file)).
    floor: int | None = None


def felix_size(config_path: str | None, size_file: str | None, cpus_path: str = POSSIBLE_CPUS) -> ConfiguredSize:
    """Felix's effective CT size: bpfMapSizeConntrack, or bpfMapSizePerCPUConntrack x
    possible CPUs when that is > 0, or a larger number in the auto-grow size file
    (felix/dataplane/linux/int_dataplane.go). Without a FelixConfiguration the base is
    Calico's default bpfMapSizeConntrack (512000, felix/config/config_params.go) and the
    result is marked `assumed`: the cluster may configure another size."""
    spec = load_felix_config(config_path) if config_path else {}
    where = config_path or "defaults"
    base = _int_field(spec, "bpfMapSizeConntrack", where)
    size, source = ((base, f"{where}: bpfMapSizeConntrack") if base else
                    (CALICO_DEFAULT_SIZE, f"Calico's default bpfMapSizeConntrack {CALICO_DEFAULT_SIZE:,}"
                     + ("" if config_path else " (assumed: no --felix-config)")))
    per_cpu = _int_field(spec, "bpfMapSizePerCPUConntrack", where) or 0
    if per_cpu > 0:
        cpus = possible_cpus(cpus_path)
        size, source = per_cpu * cpus, f"{where}: bpfMapSizePerCPUConntrack {per_cpu} x {cpus} possible CPUs"
    sf = size_file or DEFAULT_SIZE_FILE
    try:
        with open(sf, "rb") as f:  # a number: 4 KiB is plenty (`--size-file /dev/zero` grew without bound)
            text = f.read(4096).decode("utf-8", "replace").strip()
    except FileNotFoundError:
        if size_file:
            raise BadArgument(f"{sf}: no such size file") from None
        text = ""
    except OSError as e:
        raise BadArgument(f"{sf}: cannot read size file: {e.strerror}") from None
    if text:
        try:
            grown = int(text)
        except ValueError:
            raise BadArgument(f"{sf}: holds {text[:40]!r}, expected a number of entries") from None
        if grown > size:
            size, source = grown, f"{sf} (auto-grow size, larger than {source})"
        floor = grown if grown > 0 else None
    else:
        floor = None
    return ConfiguredSize(size, source, assumed=config_path is None, floor=floor)


# --- the comparison ----------------------------------------------------------------------------

@dataclass
class Row:
    field: str
    pinned: Any
    expected: Any
    source: str
    ok: bool
    # The expectation is an assumption (Calico's default size, no configuration given): a
    # difference is reported but is not a mismatch.
    assumed: bool = False


@dataclass
class ObjectView:
    """One object's map definition and what libbpf sees of it."""
    object: str
    name: str
    compiled: dict[str, Any]
    pinning: str
    loader_max_entries: int | None
    libbpf_sees: int
    note: str


@dataclass
class MapReport:
    pin: str
    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    objects: list[ObjectView] = field(default_factory=list)
    libbpf_message: list[str] = field(default_factory=list)
    remedy: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    entries: int | None = None
    fill: float | None = None
    interrupted: str | None = None
    recovered: str | None = None
    error: str | None = None
    exit_code: int = 0
    superseded_by: str | None = None

    @property
    def compatible(self) -> bool:
        return self.error is None and all(r.ok or r.assumed for r in self.rows) and self.interrupted is None

    @property
    def max_entries_check(self) -> str:
        """How max_entries was judged: checked (against a given or certain size), assumed
        (equal to Calico's default, the configuration unknown), not checked."""
        rows = [r for r in self.rows if r.field == "max_entries"]
        if any(not r.assumed for r in rows):
            return "checked"
        if rows and all(r.ok for r in rows):
            return "assumed"
        return "not checked"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compatible"] = self.compatible
        d["max_entries_check"] = self.max_entries_check
        return d


def fmt_value(fld: str, v: Any) -> str:
    if v is None:
        return "-"
    if fld in ("map_flags", "map_extra"):
        return f"{v:#x}"
    if isinstance(v, int):
        return f"{v:,}" if fld == "max_entries" else str(v)
    return str(v)


def _object_views(pin: Path, params: dict[str, Any], objects: list[str], configured: ConfiguredSize | None,
                  loader: str) -> tuple[list[ObjectView], list[tuple[str, dict[str, Any]]]]:
    """Object maps that libbpf would match against this pin (same name, pinned by name)."""
    views, expectations = [], []
    base = pin.name.removesuffix("_old")
    for obj in objects:
        for m in object_maps(obj):
            if m["name"] not in (base, params.get("name")):
                continue
            compiled = {k: m[k] for k in FIELDS}
            loader_value = configured.value if configured else None
            if m["pinning"] != "by_name":
                views.append(ObjectView(obj, m["name"], compiled, m["pinning"], loader_value, m["max_entries"],
                                        "not pinned by name: libbpf creates its own map and never reuses this pin"))
                continue
            if loader == "calico" and loader_value is not None:
                sees = loader_value
                note = (f"Calico's loader (v3.28.2+/v3.29+) calls bpf_map__set_max_entries({loader_value:,}) before "
                        f"load: libbpf sees {loader_value:,}"
                        + (f", not the compiled {m['max_entries']:,}" if loader_value != m["max_entries"] else ""))
            else:
                sees = m["max_entries"]
                note = (f"loaded as compiled (bpftool, plain libbpf, or Calico v3.27.x's tc loader, issue 9651): "
                        f"libbpf sees {m['max_entries']:,}")
                if loader_value is not None and loader_value != m["max_entries"]:
                    note += f"; Calico's fixed loader would set {loader_value:,} ({configured.source})"
            views.append(ObjectView(obj, m["name"], compiled, m["pinning"], loader_value, sees, note))
            exp = dict(compiled, max_entries=sees)
            label = f"{Path(obj).name} ({'as Calico loads it' if loader == 'calico' and loader_value is not None else 'compiled'})"
            expectations.append((label, exp))
    return views, expectations


def check_pin(pin: str | os.PathLike[str], *, objects: list[str] = (), configured: ConfiguredSize | None = None,
              max_entries: int | None = None, loader: str = "plain", count: bool = True) -> MapReport:
    """Compare one pin with every expectation; never modifies anything."""
    from ctscope.ctmap import open_map

    pin = Path(pin)
    rep = MapReport(pin=str(pin))
    old = pin.with_name(pin.name + "_old")
    if not os.path.lexists(pin) and os.path.lexists(old):
        rep.interrupted = (f"{pin} is missing but {old.name} exists: a migration was interrupted between its two pins; "
                           f"Felix puts {old.name} back on restart")
        rep.remedy.append(f"ctscope resize {pin} --recover --yes    # Felix's rule: {old.name} back to {pin.name}")
        return rep
    try:
        m = open_map(pin)
    except CtscopeError as e:
        from ctscope.errors import exit_code

        rep.error, rep.exit_code = str(e), exit_code(e)
        return rep
    info = m.info.as_dict()
    rep.name = info["name"]
    rep.params = {k: info[k] for k in FIELDS} | {"id": info["id"], "version": info["version"], "family": info["family"]}

    expectations: list[tuple[str, dict[str, Any]]] = []
    lay = layout_of(info["version"], info["family"])
    named = ct_pin_version(pin.name)
    if named and lay and named != (info["version"], info["family"]):
        # The loader looks the map up by the pin's name: it expects that version's parameters,
        # whatever map was pinned there.
        ver, fam = named
        lay = layout_of(ver, fam)
        rep.notes.append(f"the pin is named for ct{ver} but holds map {info['name']!r} with ct{info['version']}'s "
                         f"shape: Calico's loader expects ct{ver} here")
        expectations.append((f"ct{ver} layout ({RELEASES[ver]}; from the pin's name)", lay))
    elif lay:
        expectations.append((f"ct{info['version']} layout ({RELEASES[info['version']]})", lay))
    else:
        rep.notes.append("not a Calico CT map by name and sizes: only the given sizes and objects are compared")
    rep.superseded_by = _newer_pin(pin, info)
    if rep.superseded_by:
        # Felix leaves lower-version pins behind after an upgrade and never loads them again:
        # the configured size is the current pin's business, not this leftover's.
        sized = max_entries is not None or configured is not None
        rep.notes.append(f"superseded by {rep.superseded_by}: a ct{info['version']} pin Felix left behind after an "
                         "upgrade; nothing loads it any more"
                         + (f", so the expected max_entries is checked on {Path(rep.superseded_by).name} only" if sized else ""))
    else:
        if max_entries is not None:
            expectations.append(("--max-entries", {"max_entries": max_entries}))
        if configured is None and max_entries is None:
            # Nothing says what this cluster configures: compare with what the node says (the
            # auto-grow size file) or Calico's default, as an assumption (judged last).
            configured = felix_size(None, None)
        if configured is not None and not configured.assumed:
            expectations.append((configured.source, {"max_entries": configured.value}))
    explicit = configured if configured is not None and not configured.assumed else None
    loader_size = explicit or (ConfiguredSize(max_entries, "--max-entries") if max_entries is not None else None)
    views, obj_exp = _object_views(pin, info, list(objects), loader_size, loader)
    rep.objects = views
    expectations.extend(obj_exp)
    if configured is not None and configured.assumed and max_entries is None and not rep.superseded_by:
        expectations.append((configured.source, {"max_entries": configured.value}))
    if objects and not views:
        rep.notes.append(f"no map named {pin.name!r} in {', '.join(objects)}: libbpf would not touch this pin")

    for source, exp in expectations:
        for fld in FIELDS:
            if fld in exp:
                rep.rows.append(Row(fld, info[fld], exp[fld], source, info[fld] == exp[fld]))
    if configured is not None and configured.assumed:
        _assumed_size(rep, info, configured)

    _explain(rep, pin, info, views, {label for label, _ in obj_exp})
    _interrupted(rep, pin, info)
    _leftovers(rep, pin, info)
    if rep.superseded_by:
        rep.remedy.append(f"ctscope dump {pin} -o {pin.name}.parquet && rm {pin}    # keep its entries, then remove it")
    if count and info["map_type"] in ("hash", "lru_hash"):
        _fill(rep, m, info)
    return rep


def _newer_pin(pin: Path, info: dict[str, Any]) -> str | None:
    """The higher-version CT pin of the same family beside `pin`, if any."""
    ver, fam = info.get("version"), info.get("family")
    if not ver or not fam or not pin.name.startswith(f"cali_v{fam}_ct"):
        return None
    for higher in range(4, ver, -1):
        p = pin.with_name(f"cali_v{fam}_ct{higher}")
        if os.path.lexists(p):
            return str(p)
    return None


def _explain(rep: MapReport, pin: Path, info: dict[str, Any], views: list[ObjectView], object_sources: set[str]) -> None:
    bad = [r for r in rep.rows if not r.ok and not r.assumed]
    if not bad:
        return
    name = views[0].name if views else pin.name
    loaded = [v for v in views if v.pinning == "by_name"]
    if loaded and not any(r.source in object_sources for r in bad):
        # The objects, as they will be loaded, match the pin: libbpf reuses it. The mismatch
        # is with a configured size that this way of loading does not apply.
        rep.notes.append(f"libbpf reuses this pin when loading {', '.join(Path(v.object).name for v in loaded)} as "
                         f"given (it sees max_entries {loaded[0].libbpf_sees:,}); the mismatch is with "
                         f"{', '.join(sorted({r.source for r in bad}))}, which only Calico's loader applies "
                         "(--loader calico)")
    else:
        rep.libbpf_message = [
            f"libbpf: couldn't reuse pinned map at '{pin}': parameter mismatch",
            f"libbpf: map '{name}': error reusing pinned map",
            f"libbpf: map '{name}': failed to create: Invalid argument(-22)",
        ]
    fixed = sorted({r.field for r in bad} - RESIZABLE)
    if fixed:
        wanted = {r.field: r.expected for r in bad}
        diffs = ", ".join(f"{f} {fmt_value(f, info[f])} vs {fmt_value(f, wanted[f])}" for f in fixed)
        rep.remedy.append(
            f"{diffs}: the pin is a different map version, not a different size. Pinned: {looks_like(info)}. "
            f"Expected: {looks_like({**info, **{r.field: r.expected for r in bad}})}. "
            "`ctscope resize` keeps type, sizes and flags, so it refuses this. Calico pins each CT version under its "
            "own name (cali_v4_ct3 -> cali_v4_ct4) and copies entries on upgrade; a pin with this name and these "
            f"parameters was made by something else. Save it (`ctscope dump {pin} -o ct-backup.parquet`), then "
            "remove or rename the pin so the loader creates the map it declares.")
        return
    targets = sorted({r.expected for r in bad})
    for t in targets:
        srcs = ", ".join(r.source for r in bad if r.expected == t)
        if not isinstance(t, int) or not 0 < t <= RESIZE_MAX:
            rep.remedy.append(f"{srcs} expects max_entries {fmt_value('max_entries', t)}, which no BPF map can have "
                              f"(max_entries is a u32: 1 .. {RESIZE_MAX:,}; `ctscope resize` accepts no more): fix "
                              "that setting rather than the map")
            continue
        rep.remedy.append(f"ctscope resize {pin} --max-entries {t} --yes    # max_entries {info['max_entries']:,} -> "
                          f"{t:,}, as {srcs} expects")
    # An object that matches the pin today would stop matching after such a resize.
    for r in rep.rows:
        if r.ok and r.field == "max_entries" and r.source in object_sources and targets:
            rep.remedy.append(f"but {r.source} expects max_entries {r.expected:,}, as the pin is now: after the resize "
                              "that load would fail; resize only if the loader you run sets the configured size")
    if len(targets) > 1:
        rep.remedy.append("the expectations disagree on max_entries: resize to the one the loader you run will use")


def _interrupted(rep: MapReport, pin: Path, info: dict[str, Any]) -> None:
    if pin.name.endswith("_old"):
        return
    old = pin.with_name(pin.name + "_old")
    if not os.path.lexists(old):
        return
    from ctscope.ctmap import open_map

    try:
        old_id = open_map(old).info.id
    except CtscopeError as e:
        rep.interrupted = f"{old} exists but cannot be opened: {e}"
        return
    same = old_id == info["id"]
    what = "the same map" if same else f"map id {info['id']}"
    rep.interrupted = (
        f"{old} exists (map id {old_id}; {pin.name} is {what}): a migration "
        "was interrupted, or `resize --keep-old` left it. Felix treats it as interrupted: on restart it removes "
        f"{pin.name} and puts {old.name} back.")
    rep.remedy.append(f"ctscope resize {pin} --recover --yes    # Felix's rule: {old.name} back to {pin.name}")
    if not same:
        rep.remedy.append(f"ctscope resize {pin} --delta --yes    # or finish: copy entries changed in {old.name}, drop it")


def _leftovers(rep: MapReport, pin: Path, info: dict[str, Any]) -> None:
    ver, fam = info.get("version"), info.get("family")
    if not ver or not fam or not pin.name.startswith(f"cali_v{fam}_ct"):
        return
    for lower in range(2, ver):
        p = pin.with_name(f"cali_v{fam}_ct{lower}")
        if os.path.lexists(p):
            rep.notes.append(f"{p} is a ct{lower} pin left beside ct{ver} (Felix does not remove it after an "
                             "upgrade); nothing loads it any more: dump it if you need it, then remove it")


def _fill(rep: MapReport, m, info: dict[str, Any]) -> None:
    from ctscope._native import raw_read

    try:
        n, _ = raw_read(m.path, 16384, "auto")
    except CtscopeError as e:
        rep.notes.append(f"could not count entries: {e}")
        return
    f = fill.judge(n, info["max_entries"])
    rep.entries = n
    rep.fill = f.ratio
    if f.ratio is None:
        return
    if f.warning():
        rep.notes.append(f.warning())
    # Felix judges the fill after its sweep has deleted expired entries; this count includes
    # them, so it can only say that growth is possible (`ctscope stats` gives the verdict).
    if fill.level(f.ratio):
        rep.notes.append(f"fill {f.text()}, expired entries included: if more than {fill.GROW_AT:.0%} is still live "
                         f"after Felix's next sweep (more than {fill.GROW_SUSTAINED_AT:.0%} for 3 sweeps in a row), "
                         f"DoubleIfFull auto-grow doubles the map and restarts Felix; `ctscope stats {rep.pin}` shows "
                         "the fill after that sweep")


def _assumed_size(rep: MapReport, info: dict[str, Any], size: ConfiguredSize) -> None:
    """Judge max_entries against a size that was not configured but assumed (Calico's
    default, or the node's auto-grow size file): equal is consistent; smaller than the size
    file is a certain mismatch (Felix loads at least that); anything else is unknown."""
    pinned = info["max_entries"]
    for r in rep.rows:
        if r.field != "max_entries" or r.source != size.source:
            continue
        if r.ok:
            r.assumed = True
            rep.notes.append(f"max_entries {pinned:,} equals {size.source}: compatible only if FelixConfiguration "
                             "sets no other bpfMapSizeConntrack/bpfMapSizePerCPUConntrack (check with --felix-config "
                             "FILE or --max-entries N)")
        elif size.floor is not None and pinned < size.floor:
            r.source += "; Felix loads at least this many"  # a certain mismatch: max(configured, file)
        else:
            r.assumed = True
            rep.notes.append(f"max_entries NOT checked: the pin has {pinned:,}, {size.source} is {size.value:,}, "
                             "and without --felix-config or --max-entries ctscope cannot tell which size this cluster "
                             "configures (the difference that makes libbpf refuse the pin, Calico issue 9651): pass "
                             "one of them")


def discover_pins(bpffs: str) -> list[Path]:
    """CT pins under BPFFS/tc/globals, without the `_old` ones (reported with their pin)."""
    d = globals_dir(bpffs)
    if not d.is_dir():
        raise BadArgument(f"{d}: no such directory; expected Calico's pins under BPFFS/{GLOBALS} (use --bpffs or name PINs)")
    pins = [p for p in sorted(d.iterdir()) if is_ct_pin_name(p.name) and not p.name.endswith("_old")]
    # An `_old` without its pin: Felix died between the two pins; report it under the base name.
    for p in sorted(d.iterdir()):
        if p.name.endswith("_old") and is_ct_pin_name(p.name) and not p.with_name(p.name[:-4]).exists():
            pins.append(p.with_name(p.name[:-4]))
    return sorted(set(pins))
