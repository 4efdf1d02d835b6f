//! PyO3 surface of `get`, `delete`, `clean` and `flush` (ctscope.act): keys built in
//! Calico's order, direct lookups, decoding a snapshot's entries, and the race-safe
//! removal loop. Every syscall and every loop runs with the GIL released.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arrow_array::{RecordBatch, RecordBatchIterator};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCapsule, PyDict};

use crate::act;
use crate::backup::Entries;
use crate::decode::CtDecoder;
use crate::error::CtError;
use crate::iter::{MapReader, Method};
use crate::layout::{self, Family, Layout};
use crate::map::{MapParams, PinnedMap};
use super::errors::detached;
use super::repair::{LiveMap, MapEntries};

/// Decoded rows (one record batch), importable by polars: `pl.DataFrame(rows)`.
#[pyclass(module = "ctscope._native")]
pub struct Rows {
    batches: Mutex<Option<Vec<RecordBatch>>>,
    #[pyo3(get)]
    num_rows: usize,
}

#[pymethods]
impl Rows {
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(&self, py: Python<'py>, requested_schema: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema;
        let b = self.batches.lock().unwrap().take().ok_or_else(|| CtError::BadArgument("rows already consumed".into()))?;
        let schema = crate::decode::ct_schema();
        super::dump::export_stream(py, Box::new(RecordBatchIterator::new(b.into_iter().map(Ok), schema)))
    }
}

fn family_of(n: u8) -> Result<Family, CtError> {
    match n {
        4 => Ok(Family::V4),
        6 => Ok(Family::V6),
        _ => Err(CtError::BadArgument(format!("family {n}: expected 4 or 6"))),
    }
}

/// The layout to decode with: explicit, or what the map's version says (ct3: judged from
/// `sample` values, as `dump` does).
fn resolve_layout(requested: &str, version: Option<u8>, family: Option<Family>, ks: u32, vs: u32, sample: impl FnOnce() -> Result<Vec<u8>, CtError>) -> Result<(Layout, Family), CtError> {
    let lay = match Layout::parse(requested)? {
        Some(l) => l,
        None => match version {
            Some(2) => Layout::V2,
            Some(4) => Layout::V4,
            Some(3) => layout::guess_v3_meaning(&sample()?, vs as usize).0,
            _ => {
                return Err(CtError::NotCtMap(format!(
                    "key/value sizes {ks}/{vs} fit no Calico CT layout (expected 16/64, 16/88 or 40/128)"
                )));
            }
        },
    };
    if lay == Layout::Raw {
        return Err(CtError::BadArgument("layout raw cannot be decoded into connections; give a CT layout".into()));
    }
    Ok((lay, layout::check_fits(lay, family, ks, vs)?))
}

/// Decode `n` entries, in order, in parallel chunks (one record batch per chunk).
fn decode_rows(lay: Layout, fam: Family, now_ns: u64, keys: &[u8], values: &[u8], n: usize) -> Result<Rows, CtError> {
    const CHUNK: usize = 65536;
    let d = CtDecoder::new(lay, fam, now_ns).ok_or_else(|| CtError::BadArgument(format!("layout {} has no IPv{} form", lay.name(), fam.number())))?;
    let (ks, vs) = (d.key_size(), d.value_size());
    let err = |e| CtError::Os { op: "decoding entries".into(), err: std::io::Error::other(e) };
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = cores.min(n / CHUNK + 1).max(1);
    let per = n.div_ceil(threads).max(1);
    let batches: Vec<RecordBatch> = if threads <= 1 {
        vec![d.decode(keys, values, n).map_err(err)?]
    } else {
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..n)
                .step_by(per)
                .map(|start| {
                    let m = per.min(n - start);
                    let d = &d;
                    sc.spawn(move || d.decode(&keys[start * ks..(start + m) * ks], &values[start * vs..(start + m) * vs], m))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().map_err(|_| CtError::BadArgument("decode worker panicked".into()))?.map_err(err))
                .collect::<Result<Vec<_>, CtError>>()
        })?
    };
    Ok(Rows { num_rows: n, batches: Mutex::new(Some(batches)) })
}

/// A key in Calico's order (`ordered`) or with A/B as given.
#[pyfunction]
#[pyo3(signature = (family, proto, src, sport, dst, dport, ordered=true))]
#[allow(clippy::too_many_arguments)]
fn build_key<'py>(py: Python<'py>, family: u8, proto: u32, src: &[u8], sport: u16, dst: &[u8], dport: u16, ordered: bool) -> PyResult<Bound<'py, PyBytes>> {
    let f = family_of(family)?;
    let k = if ordered { act::ordered_key(f, proto, src, sport, dst, dport)? } else { act::key_bytes(f, proto, src, sport, dst, dport)? };
    Ok(PyBytes::new(py, &k))
}

/// Look `keys` ([(key bytes, how)]) up in the pin, read-only, following NAT fwd -> rev.
/// Returns (rows, layout name, [how per row], map params dict).
#[pyfunction]
#[pyo3(signature = (path, keys, layout="auto", now_ns=None))]
fn lookup_keys<'py>(py: Python<'py>, path: PathBuf, keys: Vec<(Vec<u8>, String)>, layout: &str, now_ns: Option<u64>) -> PyResult<(Rows, String, Vec<String>, Bound<'py, PyDict>)> {
    let (rows, lay, hows, params) = detached(py, "lookup", || {
        let m = PinnedMap::open(&path, false)?;
        m.require_hash()?;
        let p: &MapParams = &m.params;
        let (lay, fam) = resolve_layout(layout, p.version, p.family, p.key_size, p.value_size, || {
            let mut r = MapReader::new(m.fd.clone(), p.key_size, p.value_size, p.max_entries, Method::Auto, 1024);
            Ok(r.next_chunk()?.map(|c| c.values).unwrap_or_default())
        })?;
        let ks = p.key_size as usize;
        if let Some((k, _)) = keys.iter().find(|(k, _)| k.len() != ks) {
            return Err(CtError::BadArgument(format!(
                "{}: holds {ks}-byte keys (IPv{}), the address given needs {}-byte keys",
                path.display(),
                fam.number(),
                k.len()
            )));
        }
        let found = act::lookup_follow(m.fd(), &keys, p.value_size as usize, true)?;
        let mut e = Entries::new(ks, p.value_size as usize);
        for f in &found {
            e.push(&f.key, &f.value);
        }
        let now = now_ns.unwrap_or_else(crate::sys::monotonic_ns);
        let rows = decode_rows(lay, fam, now, &e.keys, &e.values, e.count)?;
        Ok::<_, CtError>((rows, lay, found.into_iter().map(|f| f.how).collect::<Vec<_>>(), m.params.clone()))
    })?;
    let d = super::map_info::MapInfo::from_params(&path.to_string_lossy(), &params).as_dict(py)?;
    Ok((rows, lay.name().to_string(), hows, d))
}

/// A snapshot's entries decoded (same order as the snapshot): (rows, layout name).
#[pyfunction]
#[pyo3(signature = (snap, layout="auto", now_ns=None))]
fn snapshot_rows(py: Python<'_>, snap: &MapEntries, layout: &str, now_ns: Option<u64>) -> PyResult<(Rows, String)> {
    let s = &snap.source;
    let e = snap.entries.clone();
    let (rows, lay) = detached(py, "snapshot_rows", || {
        let det = layout::detect(&s.name, &s.pin, s.map_type, s.key_size, s.value_size);
        let n = e.count.min(4096);
        let (lay, fam) = resolve_layout(layout, det.version, det.family, s.key_size, s.value_size, || Ok(e.values[..n * e.value_size].to_vec()))?;
        let now = now_ns.unwrap_or_else(crate::sys::monotonic_ns);
        Ok::<_, CtError>((decode_rows(lay, fam, now, &e.keys, &e.values, e.count)?, lay))
    })?;
    Ok((rows, lay.name().to_string()))
}

/// The entries at `indices` (in that order).
#[pyfunction]
fn snapshot_take(py: Python<'_>, snap: &MapEntries, indices: Vec<u64>) -> PyResult<MapEntries> {
    let e = snap.entries.clone();
    let out = detached(py, "snapshot_take", || {
        let mut out = Entries::new(e.key_size, e.value_size);
        for &i in &indices {
            let i = usize::try_from(i).ok().filter(|&i| i < e.count).ok_or_else(|| CtError::BadArgument(format!("index {i} out of range")))?;
            out.push(e.key(i), e.value(i));
        }
        Ok::<_, CtError>(out)
    })?;
    Ok(MapEntries { entries: Arc::new(out), source: snap.source.clone(), taken_ns: snap.taken_ns })
}

/// Indices of the other sides of the NAT pairs `selected` touches (see act::nat_partners).
#[pyfunction]
fn nat_partners(py: Python<'_>, snap: &MapEntries, selected: Vec<u64>) -> PyResult<Vec<u64>> {
    let e = snap.entries.clone();
    Ok(detached(py, "nat_partners", || Ok(act::nat_partners(&e, &selected)))?)
}

/// Indices of the entries whose key is one of `keys`.
#[pyfunction]
fn find_keys(py: Python<'_>, snap: &MapEntries, keys: Vec<Vec<u8>>) -> PyResult<Vec<u64>> {
    let e = snap.entries.clone();
    Ok(detached(py, "find_keys", || Ok(act::find_keys(&e, &keys)))?)
}

/// Remove `cand`'s entries from the map by Felix's rule (act::remove_if_unchanged).
/// Returns (dict of counts, MapEntries of what was removed).
#[pyfunction]
#[pyo3(signature = (live, cand, ct, crash_after=None, force_fallback=false, threads=None))]
fn remove_entries<'py>(py: Python<'py>, live: &LiveMap, cand: &MapEntries, ct: bool, crash_after: Option<u64>, force_fallback: bool, threads: Option<usize>) -> PyResult<(Bound<'py, PyDict>, MapEntries)> {
    if !live.inner.writable {
        return Err(CtError::BadArgument("map was opened read-only".into()).into());
    }
    let e = cand.entries.clone();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let opt = act::RemoveOptions { ct, crash_after, force_fallback, threads: threads.unwrap_or(cores) };
    let r = detached(py, "remove_entries", || act::remove_if_unchanged(live.inner.fd(), &e, opt))?;
    let d = PyDict::new(py);
    d.set_item("deleted", r.deleted.count)?;
    d.set_item("refreshed", r.refreshed)?;
    d.set_item("fwd_kept_with_rev", r.fwd_kept_with_rev)?;
    d.set_item("repointed", r.repointed)?;
    d.set_item("gone", r.gone)?;
    d.set_item("pairs", r.pairs)?;
    d.set_item("newer_won", r.newer_won)?;
    d.set_item("reinsert_failed", r.reinsert_failed)?;
    d.set_item("method", if r.fallback { "lookup+delete" } else { "lookup_and_delete" })?;
    Ok((d, MapEntries { entries: Arc::new(r.deleted), source: cand.source.clone(), taken_ns: cand.taken_ns }))
}

/// Write `snap`'s entries with BPF_NOEXIST: (written, already present).
#[pyfunction]
fn insert_new(py: Python<'_>, live: &LiveMap, snap: &MapEntries) -> PyResult<(u64, u64)> {
    if !live.inner.writable {
        return Err(CtError::BadArgument("map was opened read-only".into()).into());
    }
    let e = snap.entries.clone();
    Ok(detached(py, "insert_new", || act::insert_new(live.inner.fd(), &e))?)
}

/// CT version and family (4/6) that the core detects for a map's name, type and sizes.
#[pyfunction]
fn detect_ct(name: &str, pin: &str, map_type: u32, key_size: u32, value_size: u32) -> (Option<u8>, Option<u8>) {
    let d = layout::detect(name, pin, map_type, key_size, value_size);
    (d.version, d.family.map(Family::number))
}

/// Benchmark floor: BPF_MAP_DELETE_BATCH of `snap`'s keys, no checks. Returns seconds.
#[pyfunction]
fn raw_delete_batch(py: Python<'_>, live: &LiveMap, snap: &MapEntries) -> PyResult<f64> {
    let e = snap.entries.clone();
    Ok(detached(py, "raw_delete_batch", || {
        let t = std::time::Instant::now();
        act::delete_batch_all(live.inner.fd(), &e)?;
        Ok::<_, CtError>(t.elapsed().as_secs_f64())
    })?)
}


pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Rows>()?;
    m.add_function(wrap_pyfunction!(build_key, m)?)?;
    m.add_function(wrap_pyfunction!(lookup_keys, m)?)?;
    m.add_function(wrap_pyfunction!(snapshot_rows, m)?)?;
    m.add_function(wrap_pyfunction!(snapshot_take, m)?)?;
    m.add_function(wrap_pyfunction!(nat_partners, m)?)?;
    m.add_function(wrap_pyfunction!(find_keys, m)?)?;
    m.add_function(wrap_pyfunction!(remove_entries, m)?)?;
    m.add_function(wrap_pyfunction!(insert_new, m)?)?;
    m.add_function(wrap_pyfunction!(detect_ct, m)?)?;
    m.add_function(wrap_pyfunction!(raw_delete_batch, m)?)?;
    Ok(())
}
