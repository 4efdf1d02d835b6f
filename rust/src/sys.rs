//! Thin wrappers over the bpf(2) commands aya does not offer: read-only `BPF_OBJ_GET`,
//! batch lookup/update, per-element walk, map creation and the info fields aya hides
//! (`btf_id`, `map_extra`). Every function returns the raw `io::Error` so callers can
//! decide what an errno means in their context (ENOENT ends an iteration, but is an
//! error for a missing pin).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_map_info, bpf_prog_info};

pub const BPF_F_NO_PREALLOC: u32 = 1;
pub const BPF_F_RDONLY: u32 = 8;
pub const BPF_ANY: u64 = 0;
pub const BPF_NOEXIST: u64 = 1;
pub const BPF_EXIST: u64 = 2;
/// The kernel's internal ENOTSUPP, returned by maps without batch ops.
pub const ENOTSUPP: i32 = 524;
/// statfs(2) magic of a bpffs mount.
pub const BPF_FS_MAGIC: i64 = 0xcafe4a11;

pub const MAP_TYPE_HASH: u32 = 1;
pub const MAP_TYPE_LRU_HASH: u32 = 9;

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: attr is a fully initialised bpf_attr; the kernel reads/writes at most its size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a plain C union; all-zero is its documented initial state.
    unsafe { std::mem::zeroed() }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `BPF_OBJ_GET`, optionally read-only (`BPF_F_RDONLY`).
pub fn obj_get(path: &Path, file_flags: u32) -> io::Result<OwnedFd> {
    let cpath = c_path(path)?;
    let mut attr = zeroed_attr();
    unsafe {
        let u = &mut attr.__bindgen_anon_4;
        u.pathname = cpath.as_ptr() as u64;
        u.file_flags = file_flags;
    }
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_OBJ_PIN`: fails with EEXIST when the path is taken (callers rely on that).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let cpath = c_path(path)?;
    let mut attr = zeroed_attr();
    unsafe {
        let u = &mut attr.__bindgen_anon_4;
        u.pathname = cpath.as_ptr() as u64;
        u.bpf_fd = fd.as_raw_fd() as u32;
    }
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// Parameters of a new map (`BPF_MAP_CREATE`).
#[derive(Clone, Debug)]
pub struct CreateParams {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub name: String,
}

pub fn map_create(p: &CreateParams) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    unsafe {
        let u = &mut attr.__bindgen_anon_1;
        u.map_type = p.map_type;
        u.key_size = p.key_size;
        u.value_size = p.value_size;
        u.max_entries = p.max_entries;
        u.map_flags = p.map_flags;
        for (dst, src) in u.map_name.iter_mut().zip(p.name.bytes().take(15)) {
            *dst = src as libc::c_char;
        }
    }
    let fd = bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: new fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The kernel's full `bpf_map_info` (aya's `MapInfo` hides btf ids and `map_extra`).
pub fn map_info(fd: BorrowedFd<'_>) -> io::Result<bpf_map_info> {
    // SAFETY: plain C struct, zero is a valid value.
    let mut info: bpf_map_info = unsafe { std::mem::zeroed() };
    obj_info(fd, &mut info)?;
    Ok(info)
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `info` (a kernel `bpf_*_info` struct, whose pointer
/// fields, if any, the caller has set).
fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<T>() as u32;
    attr.info.info = info as *mut T as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(|_| ())
}

/// Outcome of one `BPF_MAP_LOOKUP_BATCH` call.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchStep {
    /// `count` entries copied; more buckets remain.
    More(u32),
    /// `count` entries copied (possibly 0) and the walk reached the last bucket.
    /// The kernel signals this with ENOENT *and* a filled buffer.
    Done(u32),
}

/// One `BPF_MAP_LOOKUP_BATCH` call into the spare capacity of `keys`/`values` (reused
/// across calls, never zeroed): they come back holding exactly the entries the kernel
/// copied. `in_batch` None starts at the first bucket; the cursor written to `out_batch`
/// must be passed back as `in_batch` next time.
#[allow(clippy::too_many_arguments)]
pub fn lookup_batch_into(
    fd: BorrowedFd<'_>,
    in_batch: Option<&[u8]>,
    out_batch: &mut [u8],
    keys: &mut Vec<u8>,
    values: &mut Vec<u8>,
    count: u32,
    key_size: usize,
    value_size: usize,
) -> io::Result<BatchStep> {
    keys.clear();
    values.clear();
    keys.reserve(count as usize * key_size);
    values.reserve(count as usize * value_size);
    let mut attr = zeroed_attr();
    unsafe {
        let b = &mut attr.batch;
        b.in_batch = in_batch.map_or(0, |c| c.as_ptr() as u64);
        b.out_batch = out_batch.as_mut_ptr() as u64;
        b.keys = keys.as_mut_ptr() as u64;
        b.values = values.as_mut_ptr() as u64;
        b.count = count;
        b.map_fd = fd.as_raw_fd() as u32;
    }
    let res = bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
    // The kernel reports how many entries it copied, also with ENOENT; on other errors it
    // may have written nothing we can trust.
    let got = match &res {
        Ok(_) => unsafe { attr.batch.count },
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => unsafe { attr.batch.count },
        Err(_) => 0,
    }
    .min(count) as usize;
    // SAFETY: capacity was reserved above and the kernel initialised the first `got` entries.
    unsafe {
        keys.set_len(got * key_size);
        values.set_len(got * value_size);
    }
    match res {
        Ok(_) => Ok(BatchStep::More(got as u32)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(BatchStep::Done(got as u32)),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_UPDATE_BATCH`; returns how many entries the kernel wrote, also on error
/// (the error is returned together with the partial count).
pub fn update_batch(
    fd: BorrowedFd<'_>,
    keys: &[u8],
    values: &[u8],
    count: u32,
    elem_flags: u64,
) -> (u32, io::Result<()>) {
    let mut attr = zeroed_attr();
    unsafe {
        let b = &mut attr.batch;
        b.keys = keys.as_ptr() as u64;
        b.values = values.as_ptr() as u64;
        b.count = count;
        b.map_fd = fd.as_raw_fd() as u32;
        b.elem_flags = elem_flags;
    }
    let res = bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr).map(|_| ());
    (unsafe { attr.batch.count }, res)
}

/// `BPF_MAP_GET_NEXT_KEY`: Ok(false) at the end of the map.
pub fn get_next_key(fd: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut attr = zeroed_attr();
    unsafe {
        let u = &mut attr.__bindgen_anon_2;
        u.map_fd = fd.as_raw_fd() as u32;
        u.key = key.map_or(0, |k| k.as_ptr() as u64);
        u.__bindgen_anon_1.next_key = next.as_mut_ptr() as u64;
    }
    match bpf(bpf_cmd::BPF_MAP_GET_NEXT_KEY, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_LOOKUP_ELEM`: Ok(false) when the key is absent.
pub fn lookup_elem(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    elem_cmd(bpf_cmd::BPF_MAP_LOOKUP_ELEM, fd, key, value.as_mut_ptr() as u64)
}

/// One per-key command (`value`: a buffer address, or 0): Ok(false) when the key is absent.
fn elem_cmd(cmd: bpf_cmd, fd: BorrowedFd<'_>, key: &[u8], value: u64) -> io::Result<bool> {
    let mut attr = zeroed_attr();
    unsafe {
        let u = &mut attr.__bindgen_anon_2;
        u.map_fd = fd.as_raw_fd() as u32;
        u.key = key.as_ptr() as u64;
        u.__bindgen_anon_1.value = value;
    }
    match bpf(cmd, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_UPDATE_ELEM`.
pub fn update_elem(fd: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut attr = zeroed_attr();
    unsafe {
        let u = &mut attr.__bindgen_anon_2;
        u.map_fd = fd.as_raw_fd() as u32;
        u.key = key.as_ptr() as u64;
        u.__bindgen_anon_1.value = value.as_ptr() as u64;
        u.flags = flags;
    }
    bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// `BPF_MAP_DELETE_ELEM`: Ok(false) when the key was absent.
pub fn delete_elem(fd: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    elem_cmd(bpf_cmd::BPF_MAP_DELETE_ELEM, fd, key, 0)
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (hash maps: kernel >= 5.14): removes the entry and
/// returns the value it held, in one step. Ok(false) when the key was absent; EINVAL or
/// ENOTSUPP on kernels/maps without it (callers fall back to lookup + delete).
pub fn lookup_and_delete_elem(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    elem_cmd(bpf_cmd::BPF_MAP_LOOKUP_AND_DELETE_ELEM, fd, key, value.as_mut_ptr() as u64)
}

/// `BPF_MAP_DELETE_BATCH` of `count` keys; returns how many the kernel deleted, also on
/// error (it stops at the first absent key with ENOENT).
pub fn delete_batch(fd: BorrowedFd<'_>, keys: &[u8], count: u32) -> (u32, io::Result<()>) {
    let mut attr = zeroed_attr();
    unsafe {
        let b = &mut attr.batch;
        b.keys = keys.as_ptr() as u64;
        b.count = count;
        b.map_fd = fd.as_raw_fd() as u32;
    }
    let res = bpf(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr).map(|_| ());
    (unsafe { attr.batch.count }, res)
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns()` stamps `last_seen` with.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in ns, to turn monotonic stamps into wall-clock times.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// statfs(2) f_type of the filesystem holding `path`.
pub fn fs_type(path: &Path) -> io::Result<i64> {
    let cpath = c_path(path)?;
    // SAFETY: zeroed statfs is a valid out buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(cpath.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// `BPF_PROG_GET_NEXT_ID`: the next loaded program id after `start`, None at the end.
/// The kernel allows it with CAP_SYS_ADMIN only (CAP_BPF is not enough).
pub fn prog_get_next_id(start: u32) -> io::Result<Option<u32>> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_6.__bindgen_anon_1.start_id = start;
    match bpf(bpf_cmd::BPF_PROG_GET_NEXT_ID, &mut attr) {
        // SAFETY: the kernel filled next_id.
        Ok(_) => Ok(Some(unsafe { attr.__bindgen_anon_6.next_id })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `BPF_PROG_GET_FD_BY_ID` (CAP_SYS_ADMIN, like `prog_get_next_id`).
pub fn prog_get_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_6.__bindgen_anon_1.prog_id = id;
    let fd = bpf(bpf_cmd::BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: a new fd the kernel handed us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a program, filling up to `map_ids.len()` map ids
/// (`nr_map_ids` in the answer is the program's full count).
pub fn prog_info(fd: BorrowedFd<'_>, map_ids: &mut [u32]) -> io::Result<bpf_prog_info> {
    // SAFETY: plain C struct, zero is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    info.nr_map_ids = map_ids.len() as u32;
    info.map_ids = map_ids.as_mut_ptr() as u64;
    obj_info(fd, &mut info)?;
    Ok(info)
}
