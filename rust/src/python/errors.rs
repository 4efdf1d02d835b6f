//! ctscope's exception classes (each CtError variant raises one; the CLI maps them to exit
//! codes), and the panic guard every entry point runs its work under.

use std::sync::Mutex;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::error::CtError;

create_exception!(_native, CtscopeError, PyException, "Base class of ctscope's errors.");
create_exception!(_native, PinNotFound, CtscopeError, "The pin path does not exist.");
create_exception!(_native, NotACtMap, CtscopeError, "Not a usable (CT) map: wrong filesystem, object, type or sizes.");
create_exception!(_native, PermissionDenied, CtscopeError, "Root or CAP_BPF is needed.");
create_exception!(_native, BadArgument, CtscopeError, "An argument has a value ctscope cannot use.");
create_exception!(_native, IterationLimit, CtscopeError, "The key-by-key walk exceeded its bound under churn.");

impl From<CtError> for PyErr {
    fn from(e: CtError) -> PyErr {
        let msg = e.to_string();
        match e {
            CtError::PinNotFound(_) => PinNotFound::new_err(msg),
            CtError::NotCtMap(_) => NotACtMap::new_err(msg),
            CtError::Permission(_) => PermissionDenied::new_err(msg),
            CtError::BadArgument(_) => BadArgument::new_err(msg),
            CtError::IterationLimit(_) => IterationLimit::new_err(msg),
            CtError::Os { .. } => CtscopeError::new_err(msg),
        }
    }
}

/// `py.detach(f)` under `error::guard`: the GIL released and any panic an error.
pub(crate) fn detached<T: Send>(py: Python<'_>, what: &str, f: impl FnOnce() -> Result<T, CtError> + Send) -> Result<T, CtError> {
    py.detach(|| crate::error::guard(what, f))
}

/// A mutex poisoned by a (caught) panic still holds usable data: never panic on it.
pub(crate) fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}


pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    crate::error::quiet_panics();
    m.add("CtscopeError", py.get_type::<CtscopeError>())?;
    m.add("PinNotFound", py.get_type::<PinNotFound>())?;
    m.add("NotACtMap", py.get_type::<NotACtMap>())?;
    m.add("PermissionDenied", py.get_type::<PermissionDenied>())?;
    m.add("BadArgument", py.get_type::<BadArgument>())?;
    m.add("IterationLimit", py.get_type::<IterationLimit>())?;
    Ok(())
}
