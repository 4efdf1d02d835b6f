//! Calico facts and the public schema's column names for Python: the CT map parameters Calico creates per version and family,
//! the releases behind each version, the CT pin names, `<pin>_old`, Calico's default and
//! the largest max_entries, and the pin rules of the write commands. They are stated once, in
//! layout.rs / map.rs / migrate.rs; the Python package keeps no copy.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::layout::{self, Family};
use crate::map;
use crate::migrate;

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// {(version, family): {map_type, key_size, value_size, map_flags, map_extra}}: what
/// Calico creates (layout.rs `expected_params`), oldest version first.
#[pyfunction]
fn ct_layouts(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    for version in 2..=4u8 {
        for fam in FAMILIES {
            let Some(e) = layout::expected_params(version, fam) else { continue };
            let d = PyDict::new(py);
            d.set_item("map_type", layout::map_type_name(e.map_type))?;
            d.set_item("key_size", e.key_size)?;
            d.set_item("value_size", e.value_size)?;
            d.set_item("map_flags", e.map_flags)?;
            d.set_item("map_extra", 0u64)?;
            out.set_item((version, fam.number()), d)?;
        }
    }
    Ok(out)
}

/// {version: the Calico releases that create it}.
#[pyfunction]
fn ct_releases() -> BTreeMap<u8, &'static str> {
    (2..=4u8).filter_map(|v| layout::release(v).map(|r| (v, r))).collect()
}

/// {family: CT pin names, newest first}.
#[pyfunction]
fn ct_pin_names() -> BTreeMap<u8, Vec<&'static str>> {
    layout::CT_PIN_NAMES.iter().map(|(f, names)| (f.number(), names.to_vec())).collect()
}

/// (version, family) a Calico CT pin name stands for, or None.
#[pyfunction]
fn ct_pin_version(name: &str) -> Option<(u8, u8)> {
    layout::pin_name_version(name).map(|(v, f)| (v, f.number()))
}

/// Is `name` (with or without `_old`) one of Calico's CT pins?
#[pyfunction]
fn is_ct_pin_name(name: &str) -> bool {
    layout::is_ct_pin_name(name)
}

/// `<pin>_old` beside `pin`.
#[pyfunction]
fn old_pin_path(pin: PathBuf) -> PathBuf {
    migrate::old_pin(&pin)
}

/// The pin a write command acts on (map.rs `canonical_pin`): directory resolved, on a
/// bpffs, not a symlink.
#[pyfunction]
fn canonical_pin(pin: PathBuf) -> PyResult<PathBuf> {
    Ok(map::canonical_pin(&pin)?)
}

/// Flag labels in bit order, for documentation and filters.
#[pyfunction]
fn flag_labels() -> Vec<(u32, &'static str)> {
    layout::FLAG_LABELS.to_vec()
}

/// The columns every decoded dump has (the non-nullable ones of the CT schema): what a
/// snapshot file must hold to be analysed.
#[pyfunction]
fn ct_required_columns() -> Vec<String> {
    crate::decode::ct_schema().fields().iter().filter(|f| !f.is_nullable()).map(|f| f.name().clone()).collect()
}

/// The public CT schema's column names, in order.
#[pyfunction]
fn ct_columns() -> Vec<String> {
    crate::decode::ct_schema().fields().iter().map(|f| f.name().clone()).collect()
}


pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(flag_labels, m)?)?;
    m.add_function(wrap_pyfunction!(ct_required_columns, m)?)?;
    m.add_function(wrap_pyfunction!(ct_columns, m)?)?;
    m.add("OLD_PIN_SUFFIX", layout::OLD_PIN_SUFFIX)?;
    m.add("MAX_ENTRIES_LIMIT", migrate::MAX_ENTRIES_LIMIT)?;
    m.add("CT_DEFAULT_MAX_ENTRIES", layout::CT_DEFAULT_MAX_ENTRIES)?;
    m.add_function(wrap_pyfunction!(ct_layouts, m)?)?;
    m.add_function(wrap_pyfunction!(ct_releases, m)?)?;
    m.add_function(wrap_pyfunction!(ct_pin_names, m)?)?;
    m.add_function(wrap_pyfunction!(ct_pin_version, m)?)?;
    m.add_function(wrap_pyfunction!(is_ct_pin_name, m)?)?;
    m.add_function(wrap_pyfunction!(old_pin_path, m)?)?;
    m.add_function(wrap_pyfunction!(canonical_pin, m)?)?;
    Ok(())
}
