//! One error type for the crate; each variant maps to a Python exception (and, in the
//! CLI, to a distinct exit code), and its message is a single line naming the thing at
//! fault and what was expected.

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum CtError {
    /// The pin path does not exist (exit 3).
    PinNotFound(String),
    /// Exists, but is not a usable CT map: not on a bpffs, not a map, wrong map type,
    /// sizes that fit no layout (exit 2).
    NotCtMap(String),
    /// Missing privilege (exit 4).
    Permission(String),
    /// A caller passed a bad value (exit 2).
    BadArgument(String),
    /// The per-key walk hit its visit bound (churn); a retry usually succeeds.
    IterationLimit(String),
    /// Any other syscall failure (exit 1).
    Os { op: String, err: io::Error },
}

impl CtError {
    pub fn os(op: impl Into<String>, err: io::Error) -> Self {
        let op = op.into();
        match err.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => CtError::Permission(format!(
                "{op}: {err}: needs root or CAP_BPF (CAP_SYS_ADMIN on kernels before 5.8) and access to the pin"
            )),
            _ => CtError::Os { op, err },
        }
    }
}

impl fmt::Display for CtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtError::PinNotFound(m)
            | CtError::NotCtMap(m)
            | CtError::Permission(m)
            | CtError::BadArgument(m)
            | CtError::IterationLimit(m) => f.write_str(m),
            CtError::Os { op, err } => write!(f, "{op}: {err}"),
        }
    }
}

impl std::error::Error for CtError {}

pub type Result<T> = std::result::Result<T, CtError>;

/// Run `f`, turning a panic into an error: no Rust panic may cross into Python (where it
/// would be a PanicException, or an abort across an FFI callback). Every PyO3 entry point
/// that does real work, and every reader thread, runs under this.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(CtError::Os {
                op: format!("{what}: internal error (a ctscope bug; please report it)"),
                err: io::Error::other(msg.split_whitespace().collect::<Vec<_>>().join(" ")),
            })
        }
    }
}

/// Replace the default panic hook (which prints several lines to stderr) with one that is
/// silent unless RUST_BACKTRACE or CTSCOPE_DEBUG is set: `guard` reports the panic as one
/// error line instead.
pub fn quiet_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::env::var_os("RUST_BACKTRACE").is_some() || std::env::var_os("CTSCOPE_DEBUG").is_some() {
            default(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_turns_a_panic_into_an_error() {
        quiet_panics();
        let r: Result<()> = guard("test", || {
            let v: Vec<u8> = Vec::new();
            let i = v.len() + 3;
            let _ = v[i]; // index out of bounds: a panic
            Ok(())
        });
        let e = r.unwrap_err().to_string();
        assert!(e.contains("test: internal error") && e.contains("index out of bounds"), "{e}");
        assert_eq!(guard("ok", || Ok(7)).unwrap(), 7);
    }
}
