//! Reading a map into Arrow: NativeMap (an open pin), Dump (a dump in flight), Batch, their
//! export through the Arrow C stream interface, the raw read the benchmarks use as their
//! floor, and the clocks a dump's reference times come from.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arrow_array::ffi_stream::FFI_ArrowArrayStream;
use arrow_array::{RecordBatch, RecordBatchIterator};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict};

use super::errors::{CtscopeError, detached, locked};
use super::map_info::MapInfo;
use crate::error::CtError;
use crate::iter::{self, MapReader, Method};
use crate::layout::Layout;
use crate::map::PinnedMap;
use crate::stream::{DumpOptions, DumpStream, ReaderStatus};
use crate::sys;

const STREAM_CAPSULE: &std::ffi::CStr = c"arrow_array_stream";

pub(crate) fn export_stream(py: Python<'_>, reader: Box<dyn arrow_array::RecordBatchReader + Send>) -> PyResult<Bound<'_, PyCapsule>> {
    // The capsule owns the stream; a consumer moves it out (leaving `release` null), and
    // an unconsumed stream is released when the capsule is dropped.
    PyCapsule::new_with_value(py, FFI_ArrowArrayStream::new(reader), STREAM_CAPSULE)
}


/// A pinned map opened read-only (or read-write for repair commands).
#[pyclass(module = "ctscope._native")]
pub struct NativeMap {
    inner: Arc<PinnedMap>,
    info: MapInfo,
}

#[pymethods]
impl NativeMap {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = detached(py, "open", || PinnedMap::open(&path, false))?;
        let info = MapInfo::from_params(&path.to_string_lossy(), &inner.params);
        Ok(NativeMap { inner: Arc::new(inner), info })
    }

    #[getter]
    fn info(&self) -> MapInfo {
        self.info.clone()
    }

    /// Re-read the live parameters (max_entries etc. can change when a pin is replaced).
    fn refresh_info(&mut self, py: Python<'_>) -> PyResult<MapInfo> {
        let p = detached(py, "refresh_info", || crate::map::read_params(self.inner.fd(), &self.inner.target))?;
        self.info = MapInfo::from_params(&self.inner.path.to_string_lossy(), &p);
        Ok(self.info.clone())
    }

    /// Start a dump. `layout`: auto|v2|v3-created|v3|v4|raw; `method`: auto|batch|next_key.
    /// `threads`: bucket-range workers for the batch method (default: available cores, or 1
    /// for maps too small for the split to pay).
    /// `columns`: decode only these (CT layouts); `predicate`: a pushdown IR
    /// (`ctscope.pushdown`) whose rejected rows are not decoded, `limit` counting kept rows.
    /// `gather_wait_ms`: how long the rows a predicate keeps may wait for more to fill a batch
    /// (default 50): lower hands rows over sooner, in more, smaller batches.
    #[pyo3(signature = (layout="auto", method="auto", batch_size=None, now_ns=None, limit=None, threads=None, columns=None, predicate=None, gather_wait_ms=None))]
    #[allow(clippy::too_many_arguments)]
    fn dump(
        &self,
        py: Python<'_>,
        layout: &str,
        method: &str,
        batch_size: Option<u32>,
        now_ns: Option<u64>,
        limit: Option<u64>,
        threads: Option<usize>,
        columns: Option<Vec<String>>,
        predicate: Option<Bound<'_, PyAny>>,
        gather_wait_ms: Option<u64>,
    ) -> PyResult<Dump> {
        let columns = columns.map(|c| crate::decode::Columns::named(&c).map_err(CtError::BadArgument)).transpose()?;
        let predicate = predicate.map(|p| crate::pushdown::Pred::from_py(&p).map(Arc::new)).transpose()?;
        let layout = Layout::parse(layout)?;
        let method = Method::parse(method)?;
        if batch_size == Some(0) {
            return Err(CtError::BadArgument("batch_size must be at least 1".into()).into());
        }
        let mono_at_start = sys::monotonic_ns();
        let wall_at_start = sys::realtime_ns();
        let now = now_ns.unwrap_or(mono_at_start);
        let inner = self.inner.clone();
        if threads == Some(0) {
            return Err(CtError::BadArgument("threads must be at least 1".into()).into());
        }
        let threads = threads.unwrap_or_else(|| crate::parallel::auto_threads(inner.params.max_entries));
        let opts =
            DumpOptions {
            layout,
            method,
            batch: batch_size.unwrap_or(iter::DEFAULT_BATCH),
            now_ns: now,
            limit,
            threads,
            columns,
            predicate,
            gather_wait: gather_wait_ms.map(std::time::Duration::from_millis).unwrap_or(crate::stream::GATHER_WAIT),
        };
        let path = inner.path.to_string_lossy().into_owned();
        let stream = detached(py, "dump", || DumpStream::start(inner.fd.clone(), &inner.params, &inner.batch_ok, &path, opts))?;
        Ok(Dump {
            schema: stream.schema(),
            layout: stream.layout.name().to_string(),
            layout_reason: stream.layout_reason.clone(),
            status: stream.status.clone(),
            stream: Mutex::new(Some(stream)),
            now_ns: now,
            mono_ns: mono_at_start,
            wall_ns: wall_at_start,
            info: self.info.clone(),
        })
    }

    fn __repr__(&self) -> String {
        format!("NativeMap({})", self.info.__repr__())
    }
}

/// A dump in flight: iterate with `next_batch()` or hand the whole stream to any Arrow
/// consumer through `__arrow_c_stream__` (one or the other: the stream is consumed).
#[pyclass(module = "ctscope._native")]
pub struct Dump {
    pub(super) stream: Mutex<Option<DumpStream>>,
    schema: arrow_schema::SchemaRef,
    status: Arc<Mutex<ReaderStatus>>,
    #[pyo3(get)]
    layout: String,
    #[pyo3(get)]
    layout_reason: String,
    /// Reference time for `idle_s` (monotonic ns).
    #[pyo3(get)]
    now_ns: u64,
    /// CLOCK_MONOTONIC and CLOCK_REALTIME when the dump started.
    #[pyo3(get)]
    mono_ns: u64,
    #[pyo3(get)]
    wall_ns: u64,
    #[pyo3(get)]
    info: MapInfo,
}

#[pymethods]
impl Dump {
    /// The next record batch (as a single-batch Arrow stream object), or None at the end.
    fn next_batch(&self, py: Python<'_>) -> PyResult<Option<Batch>> {
        let res = detached(py, "next_batch", || {
            let mut guard = locked(&self.stream);
            match guard.as_mut() {
                Some(s) => s.next_batch(),
                None => Ok(None),
            }
        })?;
        Ok(res.map(|b| Batch::of(vec![b])))
    }

    /// The next batches, at least `rows` rows of them unless the map ends first, as one
    /// stream object (one import into polars instead of one per batch), or None at the end.
    fn next_batches(&self, py: Python<'_>, rows: usize) -> PyResult<Option<Batch>> {
        let res = detached(py, "next_batches", || {
            let mut guard = locked(&self.stream);
            let Some(s) = guard.as_mut() else { return Ok(vec![]) };
            let (mut out, mut n) = (Vec::new(), 0);
            while n < rows.max(1) {
                match s.next_batch()? {
                    Some(b) => {
                        n += b.num_rows();
                        out.push(b);
                    }
                    None => break,
                }
            }
            Ok(out)
        })?;
        Ok(if res.is_empty() { None } else { Some(Batch::of(res)) })
    }

    /// Arrow PyCapsule interface: the remaining batches as one stream.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema; // we only offer our own schema
        let s = locked(&self.stream)
            .take()
            .ok_or_else(|| CtscopeError::new_err("this dump was already consumed"))?;
        export_stream(py, Box::new(s))
    }

    /// The method that did the reading ("batch" or "next_key", after any fallback).
    #[getter]
    fn method(&self) -> &'static str {
        locked(&self.status).method.name()
    }

    #[getter]
    fn finished(&self) -> bool {
        locked(&self.status).finished
    }

    /// Reader counters: entries, syscalls, enospc_retries, duplicates_dropped, and for the
    /// per-key walk restarts, vanished (deleted before their value was read) and visits.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = locked(&self.status).stats;
        let d = PyDict::new(py);
        d.set_item("entries", s.entries)?;
        d.set_item("syscalls", s.syscalls)?;
        d.set_item("enospc_retries", s.enospc_retries)?;
        d.set_item("duplicates_dropped", s.duplicates_dropped)?;
        d.set_item("restarts", s.restarts)?;
        d.set_item("vanished", s.vanished)?;
        d.set_item("visits", s.visits)?;
        Ok(d)
    }

    /// The Arrow schema of the batches, as a schema capsule (`__arrow_c_schema__`).
    fn __arrow_c_schema__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        let ffi = arrow_schema::ffi::FFI_ArrowSchema::try_from(self.schema.as_ref())
            .map_err(|e| CtscopeError::new_err(e.to_string()))?;
        PyCapsule::new_with_value(py, ffi, c"arrow_schema")
    }
}

/// Record batches (one from `next_batch`, several from `next_batches`), importable by
/// polars without copying (`pl.DataFrame(batch)`).
#[pyclass(module = "ctscope._native")]
pub struct Batch {
    batches: Mutex<Option<Vec<RecordBatch>>>,
    #[pyo3(get)]
    num_rows: usize,
    /// Bytes of the Arrow buffers behind this batch (views, data, offsets, validity), as
    /// allocated: what the batch really holds in memory, unlike polars' estimated_size,
    /// which leaves out the 16-byte views of string columns.
    #[pyo3(get)]
    nbytes: usize,
}

impl Batch {
    fn of(batches: Vec<RecordBatch>) -> Self {
        Batch {
            num_rows: batches.iter().map(|b| b.num_rows()).sum(),
            nbytes: batches.iter().map(|b| b.get_array_memory_size()).sum(),
            batches: Mutex::new(Some(batches)),
        }
    }
}

#[pymethods]
impl Batch {
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema;
        let b = locked(&self.batches).take().ok_or_else(|| CtscopeError::new_err("batch already consumed"))?;
        let schema = b[0].schema(); // never empty: next_batch(es) return None instead
        export_stream(py, Box::new(RecordBatchIterator::new(b.into_iter().map(Ok), schema)))
    }

    fn __len__(&self) -> usize {
        self.num_rows
    }
}


/// The benchmark floor: read every entry with `BPF_MAP_LOOKUP_BATCH` (or the chosen
/// method) and decode nothing. Returns (entries, seconds).
#[pyfunction]
#[pyo3(signature = (pin, batch_size=4096, method="batch"))]
fn raw_read(py: Python<'_>, pin: PathBuf, batch_size: u32, method: &str) -> PyResult<(u64, f64)> {
    let method = Method::parse(method)?;
    detached(py, "raw_read", || {
        let m = PinnedMap::open(&pin, false)?;
        m.require_hash()?;
        let p = &m.params;
        let t = std::time::Instant::now();
        let mut r = MapReader::new(m.fd.clone(), p.key_size, p.value_size, p.max_entries, method, batch_size);
        let mut n = 0u64;
        while let Some(c) = r.next_chunk()? {
            n += c.count as u64;
        }
        Ok::<_, CtError>((n, t.elapsed().as_secs_f64()))
    })
    .map_err(Into::into)
}

#[pyfunction]
fn monotonic_ns() -> u64 {
    sys::monotonic_ns()
}

#[pyfunction]
fn realtime_ns() -> u64 {
    sys::realtime_ns()
}


pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeMap>()?;
    m.add_class::<Dump>()?;
    m.add_class::<Batch>()?;
    m.add_function(wrap_pyfunction!(raw_read, m)?)?;
    m.add_function(wrap_pyfunction!(monotonic_ns, m)?)?;
    m.add_function(wrap_pyfunction!(realtime_ns, m)?)?;
    Ok(())
}
