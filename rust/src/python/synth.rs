//! Synthetic Calico CT maps (demo, benchmarks, tests).

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::errors::detached;
use crate::layout::{self, Family, Layout};
use crate::synth;
use crate::sys;

/// Create, fill and pin a synthetic Calico CT map. Returns a dict describing it.
#[pyfunction]
#[pyo3(signature = (pin, entries, max_entries, layout="v4", ipv6=false, seed=0, now_ns=None, profile="classic"))]
#[allow(clippy::too_many_arguments)]
fn synth_map<'py>(
    py: Python<'py>,
    pin: PathBuf,
    entries: u64,
    max_entries: u32,
    layout: &str,
    ipv6: bool,
    seed: u64,
    now_ns: Option<u64>,
    profile: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let layout = Layout::parse(layout)?.unwrap_or(Layout::V4);
    let family = if ipv6 { Family::V6 } else { Family::V4 };
    let spec = synth::SynthSpec {
        entries,
        max_entries,
        layout,
        family,
        seed,
        now_ns: now_ns.unwrap_or_else(sys::monotonic_ns),
        profile: synth::Profile::parse(profile)?,
    };
    let rep = detached(py, "synth_map", || synth::create_and_fill(&pin, &spec))?;
    let d = PyDict::new(py);
    d.set_item("pin", pin.to_string_lossy())?;
    d.set_item("name", rep.name)?;
    d.set_item("map_type", layout::map_type_name(rep.map_type))?;
    d.set_item("entries", rep.written)?;
    d.set_item("max_entries", max_entries)?;
    d.set_item("layout", layout.name())?;
    Ok(d)
}


pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(synth_map, m)?)?;
    Ok(())
}
