//! What the file writers (ipc_file, parquet_file) share: opening their target, raising I/O
//! errors as Python's own OSErrors, importing frames through the Arrow C stream.
//!
//! I/O errors reach Python as OSError subclasses (BrokenPipeError for a closed pipe, so
//! `dump -f parquet | head` ends quietly; no file name, so ctscope.outfile names the output).

use std::fs::{File, OpenOptions};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use arrow_array::ffi_stream::{FFI_ArrowArrayStream, RecordBatchStreamReader};
use arrow_array::{new_null_array, RecordBatch, RecordBatchOptions};
use arrow_schema::{ArrowError, DataType, Schema};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyCapsuleMethods};

use crate::error::CtError;

const STREAM_CAPSULE: &std::ffi::CStr = c"arrow_array_stream";
const SCHEMA_CAPSULE: &std::ffi::CStr = c"arrow_schema";

/// `OSError(errno, strerror[, filename])`, as Python's own I/O raises it: Python picks the
/// subclass (BrokenPipeError, FileNotFoundError, …) and callers read `errno`/`strerror`.
pub(super) fn os_error(e: &std::io::Error, filename: Option<&std::path::Path>) -> PyErr {
    match e.raw_os_error() {
        Some(n) => {
            // SAFETY: strerror returns a NUL-terminated static or thread-local message.
            let text = unsafe { std::ffi::CStr::from_ptr(libc::strerror(n)) }.to_string_lossy().into_owned();
            match filename {
                Some(f) => PyOSError::new_err((n, text, f.to_path_buf())),
                None => PyOSError::new_err((n, text)),
            }
        }
        None => PyOSError::new_err(e.to_string()),
    }
}

/// Import `obj.__arrow_c_stream__()` (a polars DataFrame, a pyarrow table, …).
pub(super) fn import_stream(obj: &Bound<'_, PyAny>) -> PyResult<RecordBatchStreamReader> {
    let capsule = obj.call_method0("__arrow_c_stream__")?;
    let capsule = capsule.cast::<PyCapsule>().map_err(PyErr::from)?;
    let ptr = capsule.pointer_checked(Some(STREAM_CAPSULE))?;
    // SAFETY: a live "arrow_array_stream" capsule holds an FFI_ArrowArrayStream; from_raw
    // moves it out and leaves a released stream behind for the capsule's destructor.
    unsafe { RecordBatchStreamReader::from_raw(ptr.as_ptr().cast::<FFI_ArrowArrayStream>()) }
        .map_err(|e| CtError::BadArgument(format!("importing an Arrow stream: {e}")).into())
}

/// The schema of `obj`: its `__arrow_c_schema__` (a ctscope Dump) or that of its
/// `__arrow_c_stream__` (an empty polars frame).
pub(super) fn import_schema(obj: &Bound<'_, PyAny>) -> PyResult<Schema> {
    if obj.hasattr("__arrow_c_schema__")? {
        let capsule = obj.call_method0("__arrow_c_schema__")?;
        let capsule = capsule.cast::<PyCapsule>().map_err(PyErr::from)?;
        let ptr = capsule.pointer_checked(Some(SCHEMA_CAPSULE))?;
        // SAFETY: a live "arrow_schema" capsule holds an FFI_ArrowSchema, borrowed here.
        let ffi = unsafe { &*ptr.as_ptr().cast::<arrow_schema::ffi::FFI_ArrowSchema>() };
        return Schema::try_from(ffi).map_err(|e| CtError::BadArgument(format!("importing an Arrow schema: {e}")).into());
    }
    use arrow_array::RecordBatchReader;
    Ok(import_stream(obj)?.schema().as_ref().clone())
}

/// `batch` with the Null-typed columns of `schema` it lacks put back, all null. polars
/// exports a Null column with a buffer the Arrow C data interface does not allow (arrow-rs
/// refuses the whole batch), so the Python side drops them before the export (see
/// ctscope.snapshot_file) and they are rebuilt here from the row count.
pub(super) fn with_null_columns(batch: RecordBatch, schema: &Schema) -> Result<RecordBatch, ArrowError> {
    if batch.num_columns() == schema.fields().len() {
        return Ok(batch);
    }
    let (given, n) = (batch.schema(), batch.num_rows());
    let mut j = 0;
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        if j < given.fields().len() && given.field(j).name() == f.name() {
            fields.push(given.field(j).clone());
            columns.push(batch.column(j).clone());
            j += 1;
        } else if f.data_type() == &DataType::Null {
            fields.push(f.as_ref().clone());
            columns.push(new_null_array(&DataType::Null, n));
        }
    }
    if j < given.fields().len() {
        return Ok(batch); // not a batch of the file's columns: the writer says so
    }
    RecordBatch::try_new_with_options(std::sync::Arc::new(Schema::new(fields)), columns, &RecordBatchOptions::new().with_row_count(Some(n)))
}

/// Hand every batch of an imported stream (its Null columns put back from the file's
/// `schema`, see `with_null_columns`) to `write`, skipping empty ones; returns the rows
/// written. What both file writers do with polars frames.
pub(super) fn write_frames(
    reader: RecordBatchStreamReader,
    schema: &Schema,
    mut write: impl FnMut(&RecordBatch) -> Result<(), Fail>,
) -> Result<u64, Fail> {
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch
            .and_then(|b| with_null_columns(b, schema))
            .map_err(|e| Fail::Ct(CtError::BadArgument(format!("reading an Arrow stream: {e}"))))?;
        if batch.num_rows() == 0 {
            continue;
        }
        write(&batch)?;
        rows += batch.num_rows() as u64;
    }
    Ok(rows)
}

/// `target` opened for writing: a path (created 0666 & ~umask when missing, truncated), or
/// an open file descriptor (duplicated; the caller's stays open).
pub(super) fn open_target(target: &Bound<'_, PyAny>) -> PyResult<File> {
    if let Ok(fd) = target.extract::<i32>() {
        if fd < 0 {
            return Err(CtError::BadArgument(format!("file descriptor {fd}")).into());
        }
        // SAFETY: borrowed only to duplicate it; the caller keeps its descriptor open.
        let owned: OwnedFd = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned().map_err(|e| os_error(&e, None))?;
        Ok(File::from(owned))
    } else {
        let path: PathBuf = target.extract()?;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| os_error(&e, Some(&path)))
    }
}

/// Either error: an I/O error (raised as its OSError) or ctscope's.
pub(super) enum Fail {
    Io(std::io::Error),
    Ct(CtError),
}

impl From<CtError> for Fail {
    fn from(e: CtError) -> Self {
        Fail::Ct(e)
    }
}

impl From<Fail> for PyErr {
    fn from(f: Fail) -> PyErr {
        match f {
            Fail::Io(e) => os_error(&e, None),
            Fail::Ct(e) => e.into(),
        }
    }
}

