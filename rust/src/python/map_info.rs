//! MapInfo: a map's live parameters as Python sees them, and libbpf's six map fields in
//! dicts (the one way map parameters cross into Python).

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::layout::{self, Family};
use crate::map::MapParams;

/// Live parameters of a map (kernel's view) plus the CT version/family ctscope detected.
#[pyclass(frozen, module = "ctscope._native", get_all)]
#[derive(Clone)]
pub struct MapInfo {
    pub path: String,
    pub map_type: String,
    pub map_type_id: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub name: String,
    pub btf_id: u32,
    pub map_extra: u64,
    pub version: Option<u8>,
    pub family: Option<u8>,
    /// The layout `auto` picks without reading data ("v3?" for ct3: decided from the data).
    pub layout: Option<String>,
}

impl MapInfo {
    pub(crate) fn from_params(path: &str, p: &MapParams) -> Self {
        MapInfo {
            path: path.to_string(),
            map_type: layout::map_type_name(p.map_type),
            map_type_id: p.map_type,
            id: p.id,
            key_size: p.key_size,
            value_size: p.value_size,
            max_entries: p.max_entries,
            map_flags: p.map_flags,
            name: p.name.clone(),
            btf_id: p.btf_id,
            map_extra: p.map_extra,
            version: p.version,
            family: p.family.map(Family::number),
            layout: match (p.static_layout(), p.version) {
                (Some(l), _) => Some(l.name().to_string()),
                (None, Some(3)) => Some("v3?".to_string()),
                _ => None,
            },
        }
    }
}

#[pymethods]
impl MapInfo {
    pub(crate) fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("path", &self.path)?;
        d.set_item("name", &self.name)?;
        d.set_item("id", self.id)?;
        let (ks, vs, max, flags) = (self.key_size, self.value_size, self.max_entries, self.map_flags);
        set_map_fields(&d, self.map_type_id, ks, vs, max, flags, self.map_extra)?;
        d.set_item("btf_id", self.btf_id)?;
        d.set_item("version", self.version)?;
        d.set_item("family", self.family)?;
        d.set_item("layout", &self.layout)?;
        Ok(d)
    }

    pub(super) fn __repr__(&self) -> String {
        format!(
            "MapInfo(name={:?}, type={}, key_size={}, value_size={}, max_entries={}, flags={:#x}, version={}, family={})",
            self.name,
            self.map_type,
            self.key_size,
            self.value_size,
            self.max_entries,
            self.map_flags,
            py_opt(self.version),
            py_opt(self.family)
        )
    }
}

/// An optional number as Python prints it: `2` or `None`.
fn py_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "None".to_string(), |x| x.to_string())
}


/// libbpf's six map fields (facts §7), under the same keys wherever a dict describes a map:
/// a pin's info, a backup's source map, an object's map definition.
pub(crate) fn set_map_fields(
    d: &Bound<'_, PyDict>,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    map_extra: u64,
) -> PyResult<()> {
    d.set_item("map_type", layout::map_type_name(map_type))?;
    d.set_item("map_type_id", map_type)?;
    d.set_item("key_size", key_size)?;
    d.set_item("value_size", value_size)?;
    d.set_item("max_entries", max_entries)?;
    d.set_item("map_flags", map_flags)?;
    d.set_item("map_extra", map_extra)?;
    Ok(())
}


pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<MapInfo>()?;
    Ok(())
}
