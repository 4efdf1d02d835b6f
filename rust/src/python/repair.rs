//! PyO3 surface of the repair commands (`check`, `resize`, `restore`): BPF object maps,
//! live maps to snapshot and swap, new maps to fill and verify, backup files, and the
//! programs that reference a map. Every syscall and every copy runs with the GIL released.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::backup::{self, Entries, SourceMap};
use crate::error::CtError;
use crate::map::{MapParams, PinnedMap};
use super::errors::detached;
use super::map_info::set_map_fields;
use crate::migrate::{self, Comparison};
use crate::object;
use crate::prog_refs;
use crate::sys;

fn params_dict<'py>(py: Python<'py>, path: &str, p: &MapParams) -> PyResult<Bound<'py, PyDict>> {
    super::map_info::MapInfo::from_params(path, p).as_dict(py)
}

fn source_of(path: &str, p: &MapParams) -> SourceMap {
    SourceMap {
        pin: path.to_string(),
        name: p.name.clone(),
        id: p.id,
        map_type: p.map_type,
        key_size: p.key_size,
        value_size: p.value_size,
        max_entries: p.max_entries,
        map_flags: p.map_flags,
        map_extra: p.map_extra,
    }
}

/// Raw entries held in Rust memory (never copied into Python objects), with the
/// parameters of the map they came from.
#[pyclass(module = "ctscope._native", frozen)]
pub struct MapEntries {
    pub(crate) entries: Arc<Entries>,
    pub(crate) source: SourceMap,
    #[pyo3(get)]
    pub(crate) taken_ns: u64,
}

#[pymethods]
impl MapEntries {
    #[getter]
    fn count(&self) -> usize {
        self.entries.count
    }

    #[getter]
    fn crc32(&self) -> u32 {
        self.entries.crc32()
    }

    /// Parameters of the source map: pin, name, id, map_type_id, key/value size, ...
    #[getter]
    fn source<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.source;
        let d = PyDict::new(py);
        d.set_item("pin", &s.pin)?;
        d.set_item("name", &s.name)?;
        d.set_item("id", s.id)?;
        set_map_fields(&d, s.map_type, s.key_size, s.value_size, s.max_entries, s.map_flags, s.map_extra)?;
        Ok(d)
    }

    /// Write as a backup file (atomic, fsynced, never overwrites). Returns its size.
    fn write(&self, py: Python<'_>, path: PathBuf) -> PyResult<u64> {
        Ok(detached(py, "backup write", || backup::write(&path, &self.source, &self.entries, self.taken_ns))?)
    }

    /// Write as a backup file under `path`, or with `numbered` (a default name a concurrent
    /// run may take too) under the first free `path`, `path-2`, ...; the final name is
    /// claimed atomically, never overwriting. Returns the path written.
    #[pyo3(signature = (path, numbered=false))]
    fn write_new(&self, py: Python<'_>, path: PathBuf, numbered: bool) -> PyResult<PathBuf> {
        let (p, _) = detached(py, "backup write", || backup::write_new(&path, &self.source, &self.entries, self.taken_ns, numbered))?;
        Ok(p)
    }

    /// The newest `n` entries by last_seen (what `--force` keeps when shrinking).
    fn newest(&self, py: Python<'_>, n: usize) -> PyResult<MapEntries> {
        let e = detached(py, "newest", || Ok(migrate::newest(&self.entries, n)))?;
        Ok(MapEntries { entries: Arc::new(e), source: self.source.clone(), taken_ns: self.taken_ns })
    }

    /// Entries here whose key is absent from `reference` or whose value differs.
    fn changed_since(&self, py: Python<'_>, reference: &MapEntries) -> PyResult<MapEntries> {
        let e = detached(py, "changed_since", || Ok(migrate::changed_since(&reference.entries, &self.entries)))?;
        Ok(MapEntries { entries: Arc::new(e), source: self.source.clone(), taken_ns: self.taken_ns })
    }

    /// What to write into a map whose content is `dest` so that it loses nothing fresher
    /// held here: (add: keys it lacks, newest first; update: keys it holds with an older
    /// last_seen when `by_last_seen`, else with any other value when `overwrite_differing`;
    /// kept: differing keys left as they are).
    #[pyo3(signature = (dest, by_last_seen, overwrite_differing=false))]
    fn fresher_than(&self, py: Python<'_>, dest: &MapEntries, by_last_seen: bool, overwrite_differing: bool) -> PyResult<(MapEntries, MapEntries, u64)> {
        let migrate::Fresher { add, update, kept } = detached(py, "fresher_than", || {
            let f = migrate::fresher(&self.entries, &dest.entries, by_last_seen, overwrite_differing);
            // Newest first: what a caller keeps when not all fit.
            Ok(if by_last_seen { migrate::Fresher { add: migrate::newest(&f.add, f.add.count), ..f } } else { f })
        })?;
        let wrap = |e| MapEntries { entries: Arc::new(e), source: self.source.clone(), taken_ns: self.taken_ns };
        Ok((wrap(add), wrap(update), kept))
    }

    /// Exact key→value comparison against what this snapshot expects:
    /// {expected, actual, equal, missing, different, extra, identical}.
    fn compare<'py>(&self, py: Python<'py>, actual: &MapEntries) -> PyResult<Bound<'py, PyDict>> {
        let c = detached(py, "compare", || Ok(migrate::compare(&self.entries, &actual.entries)))?;
        comparison_dict(py, &c)
    }

    /// Keys and values as bytes, for tests and small inspections only.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for i in 0..self.entries.count {
            d.set_item(
                pyo3::types::PyBytes::new(py, self.entries.key(i)),
                pyo3::types::PyBytes::new(py, self.entries.value(i)),
            )?;
        }
        Ok(d)
    }

    fn __len__(&self) -> usize {
        self.entries.count
    }
}

fn comparison_dict<'py>(py: Python<'py>, c: &Comparison) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("expected", c.expected)?;
    d.set_item("actual", c.actual)?;
    d.set_item("equal", c.equal)?;
    d.set_item("missing", c.missing)?;
    d.set_item("different", c.different)?;
    d.set_item("extra", c.extra)?;
    d.set_item("identical", c.identical())?;
    Ok(d)
}

fn fresh_dict<'py>(py: Python<'py>, w: &migrate::FreshWrite) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("added", w.added)?;
    d.set_item("updated", w.updated)?;
    d.set_item("kept", w.kept)?;
    Ok(d)
}

/// Read a backup file (format, count and CRC checked).
#[pyfunction]
fn read_backup(py: Python<'_>, path: PathBuf) -> PyResult<MapEntries> {
    let b = detached(py, "read_backup", || backup::read(&path))?;
    Ok(MapEntries { entries: Arc::new(b.entries), source: b.source, taken_ns: b.taken_ns })
}

/// A pinned map held open by one fd for the whole repair: the map that fd names cannot
/// change under us even if the pin is replaced meanwhile.
#[pyclass(module = "ctscope._native")]
pub struct LiveMap {
    pub(crate) inner: PinnedMap,
}

#[pymethods]
impl LiveMap {
    #[new]
    #[pyo3(signature = (path, writable=false))]
    fn new(py: Python<'_>, path: PathBuf, writable: bool) -> PyResult<Self> {
        let inner = detached(py, "open", || {
            let m = PinnedMap::open(&path, writable)?;
            m.require_hash()?;
            Ok::<_, CtError>(m)
        })?;
        Ok(LiveMap { inner })
    }

    #[getter]
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        params_dict(py, &self.inner.path.to_string_lossy(), &self.inner.params)
    }

    #[getter]
    fn id(&self) -> u32 {
        self.inner.params.id
    }

    /// Read every entry now.
    fn snapshot(&self, py: Python<'_>) -> PyResult<MapEntries> {
        let e = detached(py, "snapshot", || migrate::read_all(self.inner.fd.clone(), &self.inner.params))?;
        Ok(MapEntries {
            entries: Arc::new(e),
            source: source_of(&self.inner.path.to_string_lossy(), &self.inner.params),
            taken_ns: sys::realtime_ns(),
        })
    }

    /// A new unpinned map like this one with `max_entries`.
    fn create_twin(&self, py: Python<'_>, max_entries: u32) -> PyResult<NewMap> {
        let fd = detached(py, "create_twin", || migrate::create_like(&self.inner.params, max_entries))?;
        NewMap::from_fd(py, fd, &self.inner.params)
    }

    /// Pin this map (also) at `path`, which must not exist.
    fn pin_at(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        Ok(detached(py, "pin_at", || migrate::pin_new(self.inner.fd(), &path))?)
    }

    /// Look up each entry of `snap` here: {expected, equal, missing, different, ...}.
    /// `newer_ok`: a CT entry made newer since counts as equal.
    #[pyo3(signature = (snap, newer_ok=false))]
    fn lookup_compare<'py>(&self, py: Python<'py>, snap: &MapEntries, newer_ok: bool) -> PyResult<Bound<'py, PyDict>> {
        let c = detached(py, "lookup_compare", || migrate::lookup_compare(self.inner.fd(), &snap.entries, newer_ok))?;
        comparison_dict(py, &c)
    }

    /// Write entries into this map (needs `writable=True`).
    fn write(&self, py: Python<'_>, snap: &MapEntries) -> PyResult<u64> {
        if !self.inner.writable {
            return Err(CtError::BadArgument("map was opened read-only".into()).into());
        }
        Ok(detached(py, "write", || migrate::write_into(self.inner.fd(), &snap.entries))?)
    }

    /// Write `snap`'s entries by the freshness rule, decided per key against the map's
    /// value at that moment (migrate::write_fresher): {added, updated, kept}.
    #[pyo3(signature = (snap, by_last_seen, overwrite_differing=false))]
    fn write_fresher<'py>(&self, py: Python<'py>, snap: &MapEntries, by_last_seen: bool, overwrite_differing: bool) -> PyResult<Bound<'py, PyDict>> {
        if !self.inner.writable {
            return Err(CtError::BadArgument("map was opened read-only".into()).into());
        }
        let w = detached(py, "write_fresher", || migrate::write_fresher(self.inner.fd(), &snap.entries, by_last_seen, overwrite_differing))?;
        fresh_dict(py, &w)
    }
}

/// A map ctscope created; unpinned until `pin_replace`, so it vanishes if we die first.
#[pyclass(module = "ctscope._native")]
pub struct NewMap {
    fd: OwnedFd,
    params: MapParams,
}

impl NewMap {
    fn from_fd(py: Python<'_>, fd: OwnedFd, like: &MapParams) -> PyResult<Self> {
        let p = detached(py, "new map", || crate::map::read_params(fd.as_fd(), std::path::Path::new(&like.name)))?;
        Ok(NewMap { fd, params: p })
    }
}

#[pymethods]
impl NewMap {
    #[getter]
    fn id(&self) -> u32 {
        self.params.id
    }

    #[getter]
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        params_dict(py, "", &self.params)
    }

    /// Copy the snapshot's entries in (`BPF_MAP_UPDATE_BATCH`, per-element fallback).
    fn fill(&self, py: Python<'_>, snap: &MapEntries) -> PyResult<u64> {
        Ok(detached(py, "fill", || migrate::copy_into(&self.fd, &snap.entries))?)
    }

    /// Look up each entry of `snap` here: {expected, equal, missing, different, ...}.
    /// `newer_ok`: a CT entry as new or newer by last_seen counts as equal.
    #[pyo3(signature = (snap, newer_ok=false))]
    fn lookup_compare<'py>(&self, py: Python<'py>, snap: &MapEntries, newer_ok: bool) -> PyResult<Bound<'py, PyDict>> {
        let c = detached(py, "lookup_compare", || migrate::lookup_compare(self.fd.as_fd(), &snap.entries, newer_ok))?;
        comparison_dict(py, &c)
    }

    /// Write `snap`'s entries by the freshness rule (see `LiveMap.write_fresher`).
    #[pyo3(signature = (snap, by_last_seen, overwrite_differing=false))]
    fn write_fresher<'py>(&self, py: Python<'py>, snap: &MapEntries, by_last_seen: bool, overwrite_differing: bool) -> PyResult<Bound<'py, PyDict>> {
        let w = detached(py, "write_fresher", || migrate::write_fresher(self.fd.as_fd(), &snap.entries, by_last_seen, overwrite_differing))?;
        fresh_dict(py, &w)
    }

    /// Read every entry back.
    fn snapshot(&self, py: Python<'_>) -> PyResult<MapEntries> {
        let fd = Arc::new(self.fd.try_clone().map_err(|e| CtError::os("dup", e))?);
        let e = detached(py, "snapshot", || migrate::read_all(fd, &self.params))?;
        Ok(MapEntries { entries: Arc::new(e), source: source_of("", &self.params), taken_ns: sys::realtime_ns() })
    }

    /// Pin at `path`, which must not exist.
    fn pin_at(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        Ok(detached(py, "pin_at", || migrate::pin_new(self.fd.as_fd(), &path))?)
    }

    /// Pin at `pin`, atomically replacing what is there (temp pin + rename).
    fn pin_replace(&self, py: Python<'_>, pin: PathBuf) -> PyResult<()> {
        Ok(detached(py, "pin_replace", || migrate::pin_replace(self.fd.as_fd(), &pin))?)
    }
}

/// The `.maps`/`maps` definitions of a BPF ELF object, as dicts.
#[pyfunction]
fn object_maps<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyList>> {
    let maps = detached(py, "object_maps", || object::object_maps(&path))?;
    let out = PyList::empty(py);
    for m in maps {
        let d = PyDict::new(py);
        d.set_item("name", &m.name)?;
        set_map_fields(&d, m.map_type, m.key_size, m.value_size, m.max_entries, m.map_flags, m.map_extra)?;
        d.set_item("pinning", if m.pinned_by_name { "by_name" } else { "none" })?;
        d.set_item("section", m.section)?;
        out.append(d)?;
    }
    Ok(out)
}

/// Loaded programs whose map list contains `map_id`: [{id, name, prog_type}].
#[pyfunction]
fn programs_using_map<'py>(py: Python<'py>, map_id: u32) -> PyResult<Bound<'py, PyList>> {
    let progs = detached(py, "programs_using_map", || prog_refs::programs_using(map_id))?;
    let out = PyList::empty(py);
    for p in progs {
        let d = PyDict::new(py);
        d.set_item("id", p.id)?;
        d.set_item("name", p.name)?;
        d.set_item("prog_type", p.prog_type)?;
        out.append(d)?;
    }
    Ok(out)
}

/// Processes other than this one holding a file descriptor of map `map_id`:
/// [{pid, comm, fds}] (from /proc/PID/fdinfo).
#[pyfunction]
fn map_holders<'py>(py: Python<'py>, map_id: u32) -> PyResult<Bound<'py, PyList>> {
    let holders = detached(py, "map_holders", || prog_refs::map_holders(map_id))?;
    let out = PyList::empty(py);
    for h in holders {
        let d = PyDict::new(py);
        d.set_item("pid", h.pid)?;
        d.set_item("comm", h.comm)?;
        d.set_item("fds", h.fds)?;
        out.append(d)?;
    }
    Ok(out)
}

/// Atomically rename one pin over another (same bpffs directory tree).
#[pyfunction]
fn rename_pin(py: Python<'_>, src: PathBuf, dst: PathBuf) -> PyResult<()> {
    Ok(detached(py, "rename_pin", || migrate::rename_pin(&src, &dst))?)
}

/// The hidden temporary name a pin swap uses beside `pin`.
#[pyfunction]
fn swap_pin_name(pin: PathBuf) -> PathBuf {
    migrate::swap_name(&pin)
}

/// Is `path` on a bpffs (statfs magic)?
#[pyfunction]
fn on_bpffs(path: PathBuf) -> bool {
    sys::fs_type(&path).ok() == Some(sys::BPF_FS_MAGIC)
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<MapEntries>()?;
    m.add_class::<LiveMap>()?;
    m.add_class::<NewMap>()?;
    m.add_function(wrap_pyfunction!(read_backup, m)?)?;
    m.add_function(wrap_pyfunction!(object_maps, m)?)?;
    m.add_function(wrap_pyfunction!(programs_using_map, m)?)?;
    m.add_function(wrap_pyfunction!(map_holders, m)?)?;
    m.add_function(wrap_pyfunction!(rename_pin, m)?)?;
    m.add_function(wrap_pyfunction!(swap_pin_name, m)?)?;
    m.add_function(wrap_pyfunction!(on_bpffs, m)?)?;
    Ok(())
}
