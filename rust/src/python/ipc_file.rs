//! Arrow IPC files with ctscope metadata and a CRC (crate::ipc_file) for Python: a writer fed
//! polars frames through the Arrow PyCapsule interface (`__arrow_c_stream__`: no copy into
//! Python), and the metadata reader.
//!
//! I/O errors reach Python as OSError subclasses (python/output.rs); format errors as
//! BadArgument naming the file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

use arrow_array::RecordBatchReader;
use arrow_schema::ArrowError;
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use super::errors::{detached, locked};
use super::output::{import_stream, open_target, os_error, write_frames, Fail};
use crate::error::CtError;
use crate::ipc_file::{self, IpcFileWriter};


fn arrow(e: ArrowError) -> Fail {
    match e {
        ArrowError::IoError(_, io) => Fail::Io(io),
        e => Fail::Ct(CtError::BadArgument(format!("writing Arrow IPC: {e}"))),
    }
}

type Out = BufWriter<File>;

/// An Arrow IPC file being written (see crate::ipc_file).
#[pyclass(module = "ctscope._native")]
pub struct ArrowFileWriter {
    inner: Mutex<Option<IpcFileWriter<Out>>>,
}

#[pymethods]
impl ArrowFileWriter {
    /// Start writing to `target`, a path (opened for writing, truncated; created 0666 &
    /// ~umask when missing) or an open file descriptor (duplicated; the caller's stays
    /// open). `schema`: anything with `__arrow_c_stream__` whose schema the file gets
    /// (an empty polars frame); `metadata`: the schema's (provisional) metadata.
    #[new]
    fn new(py: Python<'_>, target: &Bound<'_, PyAny>, schema: &Bound<'_, PyAny>, metadata: HashMap<String, String>) -> PyResult<Self> {
        let fields = import_stream(schema)?.schema().fields().clone();
        let schema = ipc_file::schema_with(&fields, metadata)?;
        let file = open_target(target)?;
        let w = detached(py, "Arrow file write", || Ok(IpcFileWriter::try_new(BufWriter::with_capacity(1 << 20, file), &schema)))?;
        Ok(ArrowFileWriter { inner: Mutex::new(Some(w.map_err(arrow)?)) })
    }

    /// Append `frame`'s rows (anything with `__arrow_c_stream__` of the file's columns);
    /// returns how many. Empty batches are not written.
    fn write(&self, py: Python<'_>, frame: &Bound<'_, PyAny>) -> PyResult<u64> {
        let reader = import_stream(frame)?;
        let mut guard = locked(&self.inner);
        let w = guard.as_mut().ok_or_else(|| PyOSError::new_err("the Arrow file is finished"))?;
        let schema = w.schema().clone();
        let r = detached(py, "Arrow file write", || Ok(write_frames(reader, &schema, |b| w.write(b).map_err(arrow))))?;
        Ok(r?)
    }

    /// Rows written so far.
    #[getter]
    fn rows(&self) -> u64 {
        locked(&self.inner).as_ref().map_or(0, |w| w.rows())
    }

    /// Write the footer with the final `metadata` (plus the CRC key) and close the file;
    /// returns the file's length.
    fn finish(&self, py: Python<'_>, metadata: HashMap<String, String>) -> PyResult<u64> {
        let w = locked(&self.inner).take().ok_or_else(|| PyOSError::new_err("the Arrow file is finished"))?;
        let r = detached(py, "Arrow file finish", || {
            Ok((|| {
                let (mut out, len) = w.finish(&metadata).map_err(arrow)?;
                out.flush().map_err(Fail::Io)?;
                Ok::<_, Fail>(len)
            })())
        })?;
        Ok(r?)
    }
}

/// The metadata of an Arrow IPC file and the CRC it records (None: none), its structure
/// checked and, with `verify`, its CRC (crate::ipc_file::read_metadata).
#[pyfunction]
#[pyo3(signature = (path, verify=false))]
fn read_arrow_metadata(py: Python<'_>, path: PathBuf, verify: bool) -> PyResult<(HashMap<String, String>, Option<String>)> {
    // Not a FIFO's open that blocks forever: non-blocking, then only a regular file is read.
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(&path).map_err(|e| os_error(&e, Some(&path)))?;
    let shown = path.display().to_string();
    let m = detached(py, "read_arrow_metadata", || {
        if !file.metadata().map_err(|e| CtError::os(format!("{shown}: stat"), e))?.is_file() {
            return Err(CtError::BadArgument(format!("{shown}: not a regular file; expected an Arrow IPC file")));
        }
        ipc_file::read_metadata(&file, &shown, verify)
    })?;
    Ok((m.metadata, m.crc))
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ArrowFileWriter>()?;
    m.add_function(wrap_pyfunction!(read_arrow_metadata, m)?)?;
    m.add("ARROW_CRC_KEY", ipc_file::CRC_KEY)?;
    m.add("ARROW_META_CRC_KEY", ipc_file::META_CRC_KEY)?;
    Ok(())
}
