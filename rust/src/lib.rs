//! `ctscope._native`: the Rust core behind the Python package.
//!
//! * `sys`    — raw bpf(2) calls aya lacks (read-only open, batch ops, map create)
//! * `map`    — opening pins and reading their live parameters (aya)
//! * `layout` — Calico CT byte layouts, flags, detection
//! * `iter`   — batch / next-key iteration
//! * `decode` — bytes → Arrow record batches
//! * `stream` — reader thread + decoder = a dump in flight
//! * `synth`  — realistic synthetic CT maps
//! * `python/` — the PyO3 surface, one file per class or concern (see python/mod.rs)
//! * `ipc_file` — Arrow IPC files with ctscope metadata and a CRC (snapshots, backups)
//! * `parquet_file` — parquet files (dumps, snapshots, results): how ctscope encodes them
//! * `object`, `backup`, `migrate`, `prog_refs` — check / resize / restore

pub mod act;
pub mod backup;
pub mod decode;
pub mod error;
pub mod iter;
pub mod ipc_file;
pub mod layout;
pub mod map;
pub mod migrate;
pub mod object;
pub mod parallel;
pub mod parquet_file;
pub mod prog_refs;
pub mod python;
pub mod pushdown;
pub mod stream;
pub mod synth;
pub mod sys;

#[cfg(test)]
mod fuzz_tests;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    python::register(m)
}
