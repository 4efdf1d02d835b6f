//! Who uses a map: the loaded BPF programs that reference it (a program holds the map
//! object it was loaded with until it is reloaded, whatever is pinned later, facts §7),
//! and the processes holding a file descriptor of it (a user-space writer keeps writing to
//! the map its fd names, whatever is pinned later). Programs: `BPF_PROG_GET_NEXT_ID` and
//! each program's `map_ids`; processes: `/proc/PID/fdinfo/FD`'s `map_id:` line. Nothing
//! is loaded, no feature probes.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use crate::error::{CtError, Result};
use crate::sys;

/// A loaded program that uses the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgRef {
    pub id: u32,
    pub name: String,
    pub prog_type: u32,
}

/// A process (other than this one) holding file descriptors of the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    pub fds: Vec<u32>,
}

/// The error for a failed program walk. The kernel allows `BPF_PROG_GET_NEXT_ID` and
/// `BPF_PROG_GET_FD_BY_ID` with CAP_SYS_ADMIN only: CAP_BPF, enough for the map commands,
/// is not, so the generic "needs CAP_BPF" message would blame the wrong capability.
fn walk_error(op: String, err: io::Error) -> CtError {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => CtError::Permission(format!(
            "{op}: {err}: listing the programs that use a map needs CAP_SYS_ADMIN (CAP_BPF is not enough for \
             walking program ids)"
        )),
        _ => CtError::os(op, err),
    }
}

/// Every loaded program whose map list contains `map_id`.
pub fn programs_using(map_id: u32) -> Result<Vec<ProgRef>> {
    let mut out = Vec::new();
    let mut id = 0u32;
    loop {
        id = match sys::prog_get_next_id(id).map_err(|e| walk_error("BPF_PROG_GET_NEXT_ID".into(), e))? {
            Some(next) => next,
            None => break,
        };
        let fd = match sys::prog_get_fd_by_id(id) {
            Ok(fd) => fd,
            // Unloaded between the two calls.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(walk_error(format!("BPF_PROG_GET_FD_BY_ID {id}"), e)),
        };
        let info_err = |e| CtError::os(format!("prog {id}: BPF_OBJ_GET_INFO_BY_FD"), e);
        let first = sys::prog_info(fd.as_fd(), &mut []).map_err(info_err)?;
        if first.nr_map_ids == 0 {
            continue;
        }
        let mut ids = vec![0u32; first.nr_map_ids as usize];
        let info = sys::prog_info(fd.as_fd(), &mut ids).map_err(info_err)?;
        ids.truncate(info.nr_map_ids.min(ids.len() as u32) as usize);
        if ids.contains(&map_id) {
            let name: Vec<u8> = info.name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
            out.push(ProgRef { id, name: String::from_utf8_lossy(&name).into_owned(), prog_type: info.type_ });
        }
    }
    Ok(out)
}

/// The map id a `/proc/PID/fdinfo/FD` text names (`map_id:\t<id>`), if any.
fn fdinfo_map_id(text: &str) -> Option<u32> {
    text.lines().find_map(|l| l.strip_prefix("map_id:").and_then(|v| v.trim().parse().ok()))
}

/// Processes other than this one holding a file descriptor of map `map_id`, by pid. Only
/// fds whose link reads `anon_inode:bpf-map` have their fdinfo read. Processes that exit
/// or deny access meanwhile are skipped (root sees them all).
pub fn map_holders(map_id: u32) -> Result<Vec<Holder>> {
    holders_in(Path::new("/proc"), map_id)
}

fn holders_in(proc_root: &Path, map_id: u32) -> Result<Vec<Holder>> {
    let me = std::process::id();
    let dir = std::fs::read_dir(proc_root).map_err(|e| CtError::os(format!("{}: list processes", proc_root.display()), e))?;
    let mut out = Vec::new();
    for ent in dir.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let base = ent.path();
        let Ok(fds) = std::fs::read_dir(base.join("fd")) else { continue };
        let mut held = Vec::new();
        for fd in fds.flatten() {
            let Some(n) = fd.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            match std::fs::read_link(fd.path()) {
                Ok(t) if t.as_os_str() == "anon_inode:bpf-map" => {}
                _ => continue,
            }
            let Ok(info) = std::fs::read_to_string(base.join("fdinfo").join(n.to_string())) else { continue };
            if fdinfo_map_id(&info) == Some(map_id) {
                held.push(n);
            }
        }
        if !held.is_empty() {
            held.sort_unstable();
            let comm = std::fs::read_to_string(base.join("comm")).map(|c| c.trim_end().to_string()).unwrap_or_default();
            out.push(Holder { pid, comm, fds: held });
        }
    }
    out.sort_by_key(|h| h.pid);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_program_walk_blames_cap_sys_admin() {
        let e = walk_error("BPF_PROG_GET_NEXT_ID".into(), io::Error::from_raw_os_error(libc::EPERM));
        let msg = e.to_string();
        assert!(matches!(e, CtError::Permission(_)));
        assert!(msg.contains("CAP_SYS_ADMIN") && msg.contains("CAP_BPF is not enough"), "{msg}");
        assert!(!msg.contains("needs root or CAP_BPF"), "{msg}");
        // Other errors keep the generic mapping.
        assert!(matches!(walk_error("x".into(), io::Error::from_raw_os_error(libc::EINVAL)), CtError::Os { .. }));
    }

    #[test]
    fn reads_the_map_id_of_an_fdinfo() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t9\nkey_size:\t16\n\
                    value_size:\t88\nmax_entries:\t512000\nmap_flags:\t0x0\nmap_extra:\t0x0\nmemlock:\t1\nmap_id:\t42\n";
        assert_eq!(fdinfo_map_id(text), Some(42));
        assert_eq!(fdinfo_map_id("pos:\t0\nflags:\t0\n"), None);
    }
}
