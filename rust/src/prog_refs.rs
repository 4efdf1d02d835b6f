//! Which loaded BPF programs reference a map: a program holds the map object it was
//! loaded with until it is reloaded, whatever is pinned later (facts §7). Walks program
//! ids with `BPF_PROG_GET_NEXT_ID` and reads each program's `map_ids` — no feature probes,
//! nothing loaded.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};

use crate::error::{CtError, Result};

/// A loaded program that uses the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgRef {
    pub id: u32,
    pub name: String,
    pub prog_type: u32,
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: attr is a zero-initialised bpf_attr; the kernel reads/writes at most its size.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut bpf_attr, std::mem::size_of::<bpf_attr>())
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn next_prog_id(start: u32) -> io::Result<Option<u32>> {
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_6.__bindgen_anon_1.start_id = start;
    match bpf(bpf_cmd::BPF_PROG_GET_NEXT_ID, &mut attr) {
        Ok(_) => Ok(Some(unsafe { attr.__bindgen_anon_6.next_id })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn prog_fd(id: u32) -> io::Result<OwnedFd> {
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_6.__bindgen_anon_1.prog_id = id;
    let fd = bpf(bpf_cmd::BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: a new fd the kernel handed us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn prog_info(fd: &OwnedFd, map_ids: &mut [u32]) -> io::Result<bpf_prog_info> {
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    info.nr_map_ids = map_ids.len() as u32;
    info.map_ids = map_ids.as_mut_ptr() as u64;
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
    attr.info.info = &mut info as *mut _ as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// Every loaded program whose map list contains `map_id`.
pub fn programs_using(map_id: u32) -> Result<Vec<ProgRef>> {
    let mut out = Vec::new();
    let mut id = 0u32;
    loop {
        id = match next_prog_id(id).map_err(|e| CtError::os("BPF_PROG_GET_NEXT_ID", e))? {
            Some(next) => next,
            None => break,
        };
        let fd = match prog_fd(id) {
            Ok(fd) => fd,
            // Unloaded between the two calls.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(CtError::os(format!("BPF_PROG_GET_FD_BY_ID {id}"), e)),
        };
        let first = prog_info(&fd, &mut []).map_err(|e| CtError::os(format!("prog {id}: BPF_OBJ_GET_INFO_BY_FD"), e))?;
        if first.nr_map_ids == 0 {
            continue;
        }
        let mut ids = vec![0u32; first.nr_map_ids as usize];
        let info = prog_info(&fd, &mut ids).map_err(|e| CtError::os(format!("prog {id}: BPF_OBJ_GET_INFO_BY_FD"), e))?;
        ids.truncate(info.nr_map_ids.min(ids.len() as u32) as usize);
        if ids.contains(&map_id) {
            let name: Vec<u8> = info.name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
            out.push(ProgRef { id, name: String::from_utf8_lossy(&name).into_owned(), prog_type: info.type_ });
        }
    }
    Ok(out)
}
