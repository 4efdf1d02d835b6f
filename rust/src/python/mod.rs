//! `ctscope._native`, the PyO3 surface, split by class and concern (as polars' bindings are).
//! Every syscall and every decode runs with the GIL released and under the panic guard;
//! record batches leave through the Arrow PyCapsule interface (`__arrow_c_stream__`), which
//! polars (and pyarrow, duckdb, …) import without copying primitive columns.
//!
//! * `errors`   — exception classes, CtError → exception, the panic guard (`detached`)
//! * `map_info` — MapInfo; libbpf's six map fields in dicts
//! * `dump`     — NativeMap, Dump, Batch: maps into Arrow; the raw-read floor; clocks
//! * `synth`    — synthetic CT maps
//! * `facts`    — Calico facts (layouts, releases, pin names, `<pin>_old`) and the schema's columns
//! * `repair`   — MapEntries, LiveMap, NewMap, backups, pins (check / resize / restore)
//! * `act`      — key building, lookups, removal (get / delete / clean / flush)
//! * `ipc_file` — ArrowFileWriter (polars frames in via `__arrow_c_stream__`), read_arrow_metadata
//! * `parquet_file` — ParquetFileWriter (a Dump's batches, or polars frames)
//! * `output`   — what the file writers share: targets, OSErrors, C-stream imports
//!
//! The module's types are in python/ctscope/_native.pyi (tests/test_native_stub.py keeps it whole).

mod act;
mod dump;
mod errors;
mod facts;
mod ipc_file;
mod map_info;
mod output;
mod parquet_file;
mod repair;
mod synth;

use pyo3::prelude::*;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The package's version: maturin takes the wheel's from Cargo.toml, so this is it
    // (`ctscope.__version__`; importlib.metadata cost ~10 ms of every snapshot's start-up).
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    map_info::register(m)?;
    dump::register(m)?;
    synth::register(m)?;
    facts::register(m)?;
    repair::register(m)?;
    act::register(m)?;
    ipc_file::register(m)?;
    parquet_file::register(m)?;
    Ok(())
}
