//! Parquet files (crate::parquet_file) for Python: a writer fed either a ctscope Dump
//! directly (its record batches go from the decoder to the encoder without the GIL or a
//! polars frame) or polars frames through the Arrow PyCapsule interface.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Mutex;

use parquet::errors::ParquetError;
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use super::dump::Dump;
use super::errors::{detached, locked};
use super::output::{import_schema, import_stream, open_target, write_frames, Fail};
use crate::error::CtError;
use crate::parquet_file::{self, ParquetFileWriter as Writer};

type Out = BufWriter<File>;

fn parquet(e: ParquetError) -> Fail {
    match parquet_file::io_error(e) {
        Ok(io) => Fail::Io(io),
        Err(e) => Fail::Ct(CtError::BadArgument(format!("writing parquet: {e}"))),
    }
}

const FINISHED: &str = "the parquet file is finished";

/// A parquet file being written (see crate::parquet_file).
#[pyclass(module = "ctscope._native")]
pub struct ParquetFileWriter {
    inner: Mutex<Option<Writer<Out>>>,
}

#[pymethods]
impl ParquetFileWriter {
    /// Start writing to `target`, a path (opened for writing, truncated; created 0666 &
    /// ~umask when missing) or an open file descriptor (duplicated; the caller's stays
    /// open). `schema`: the columns, from anything with `__arrow_c_schema__` (a Dump) or
    /// `__arrow_c_stream__` (an empty polars frame).
    #[new]
    fn new(py: Python<'_>, target: &Bound<'_, PyAny>, schema: &Bound<'_, PyAny>) -> PyResult<Self> {
        let schema = import_schema(schema)?;
        let file = open_target(target)?;
        let w = detached(py, "parquet file write", || Ok(Writer::try_new(BufWriter::with_capacity(1 << 20, file), &schema)))?;
        Ok(ParquetFileWriter { inner: Mutex::new(Some(w.map_err(parquet)?)) })
    }

    /// Append `frame`'s rows (anything with `__arrow_c_stream__` of the file's columns);
    /// returns how many.
    fn write(&self, py: Python<'_>, frame: &Bound<'_, PyAny>) -> PyResult<u64> {
        let reader = import_stream(frame)?;
        let mut guard = locked(&self.inner);
        let w = guard.as_mut().ok_or_else(|| PyOSError::new_err(FINISHED))?;
        let schema = w.schema().clone();
        let r = detached(py, "parquet file write", || Ok(write_frames(reader, &schema, |b| w.write(b).map_err(parquet))))?;
        Ok(r?)
    }

    /// Move the next batches of `dump`, at least `rows` rows unless it ends first, into the
    /// file; returns how many rows (0: the dump has ended). The dump's own errors (a walk
    /// bound, a failed syscall) are raised as they are.
    fn write_dump(&self, py: Python<'_>, dump: &Dump, rows: usize) -> PyResult<u64> {
        let mut guard = locked(&self.inner);
        let w = guard.as_mut().ok_or_else(|| PyOSError::new_err(FINISHED))?;
        let r = detached(py, "parquet file write", || {
            let mut stream = locked(&dump.stream);
            let Some(s) = stream.as_mut() else { return Ok(Ok(0)) };
            let mut n = 0u64;
            while n < rows.max(1) as u64 {
                let Some(batch) = s.next_batch()? else { break };
                if let Err(e) = w.write(&batch) {
                    return Ok(Err(parquet(e)));
                }
                n += batch.num_rows() as u64;
            }
            Ok(Ok(n))
        })?;
        Ok(r?)
    }

    /// Rows written so far.
    #[getter]
    fn rows(&self) -> u64 {
        locked(&self.inner).as_ref().map_or(0, |w| w.rows())
    }

    /// Write the last row group and the footer with the key/value `metadata`, and flush.
    fn finish(&self, py: Python<'_>, metadata: HashMap<String, String>) -> PyResult<()> {
        let w = locked(&self.inner).take().ok_or_else(|| PyOSError::new_err(FINISHED))?;
        let r = detached(py, "parquet file finish", || {
            Ok((|| {
                let mut out = w.finish(&metadata).map_err(parquet)?;
                out.flush().map_err(Fail::Io)
            })())
        })?;
        Ok(r?)
    }
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ParquetFileWriter>()?;
    m.add("PARQUET_ZSTD_LEVEL", parquet_file::ZSTD_LEVEL)?;
    m.add("PARQUET_ROW_GROUP_ROWS", parquet_file::ROW_GROUP_ROWS)?;
    Ok(())
}
