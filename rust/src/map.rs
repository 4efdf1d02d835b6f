//! Opening a pinned map and reading its live parameters.
//!
//! Read commands open pins with `BPF_F_RDONLY`, so an update through ctscope's fd is
//! refused by the kernel itself. aya reads the map info from that fd; the few fields aya
//! does not expose (`btf_id`, `map_extra`) come from our own `BPF_OBJ_GET_INFO_BY_FD`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aya::maps::MapData;

use crate::error::{CtError, Result};
use crate::layout::{self, Family, Layout};
use crate::sys::{self, BPF_F_RDONLY, MAP_TYPE_HASH, MAP_TYPE_LRU_HASH};

/// The live parameters of a map, as the kernel reports them.
#[derive(Clone, Debug)]
pub struct MapParams {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub name: String,
    pub btf_id: u32,
    pub map_extra: u64,
    /// CT version and family detected from name, type and sizes.
    pub version: Option<u8>,
    pub family: Option<Family>,
}

impl MapParams {
    pub fn is_hash(&self) -> bool {
        self.map_type == MAP_TYPE_HASH || self.map_type == MAP_TYPE_LRU_HASH
    }

    /// The layout `auto` resolves to without looking at data (ct3 needs data: None).
    pub fn static_layout(&self) -> Option<Layout> {
        match self.version? {
            2 => Some(Layout::V2),
            4 => Some(Layout::V4),
            _ => None,
        }
    }

    /// Refuse anything but HASH / LRU_HASH: the batch cursor and CT layouts assume them.
    pub fn require_hash(&self, shown: &str) -> Result<()> {
        if self.is_hash() {
            return Ok(());
        }
        let t = layout::map_type_name(self.map_type);
        Err(CtError::NotCtMap(format!("{shown}: is {} {t} map, expected hash or lru_hash", article(&t))))
    }
}

/// "a" or "an" before a map type name as it is read aloud ("an array", "an lru_hash").
fn article(word: &str) -> &'static str {
    let w = word.to_ascii_lowercase();
    let vowel_sound = w.starts_with(['a', 'e', 'i', 'o', 'u']) || ["lru", "xsk"].iter().any(|p| w.starts_with(p));
    if vowel_sound { "an" } else { "a" }
}

/// Is `dir` on a bpffs (statfs magic)?
pub fn on_bpffs(dir: &Path) -> bool {
    sys::fs_type(dir).ok() == Some(sys::BPF_FS_MAGIC)
}

/// The pin a write command acts on: its directory resolved, so no path component leads
/// out of the bpffs. Refuses a missing directory (PinNotFound), a directory that is not on
/// a bpffs, and a symlink as the pin itself (NotCtMap). The pin need not exist (recovery
/// finds `<pin>_old` alone).
pub fn canonical_pin(pin: &Path) -> Result<PathBuf> {
    let shown = pin.display();
    let abs = if pin.is_absolute() {
        pin.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| CtError::os("the current directory".to_string(), e))?.join(pin)
    };
    let (parent, name) = match (abs.parent(), abs.components().next_back()) {
        (Some(p), Some(n)) => (p.to_path_buf(), n.as_os_str().to_owned()),
        _ => (abs.clone(), Default::default()),
    };
    let dir = match std::fs::canonicalize(&parent) {
        Ok(d) if d.is_dir() => d,
        _ => return Err(CtError::PinNotFound(format!("{shown}: directory {} does not exist", parent.display()))),
    };
    if !on_bpffs(&dir) {
        return Err(CtError::NotCtMap(format!(
            "{shown}: not on a BPF filesystem (bpffs); resize and restore act only on pins in a bpffs mount such as \
             /sys/fs/bpf/tc/globals"
        )));
    }
    let q = dir.join(name);
    if std::fs::symlink_metadata(&q).map(|m| m.file_type().is_symlink()).unwrap_or(false) {
        return Err(CtError::NotCtMap(format!("{shown}: is a symlink; give the pin itself (ctscope does not follow links)")));
    }
    Ok(q)
}

/// A pinned map opened by ctscope.
pub struct PinnedMap {
    /// The path as given (shown to the user).
    pub path: PathBuf,
    /// The pin really opened: `path`, or the target of the symlink `path` (read-only opens).
    pub target: PathBuf,
    pub fd: Arc<OwnedFd>,
    pub params: MapParams,
    pub writable: bool,
    /// Whether the kernel has BPF_MAP_LOOKUP_BATCH for this map, once a dump's probe call
    /// has found out (it cannot change for the map behind `fd`).
    pub batch_ok: std::sync::OnceLock<bool>,
}

impl PinnedMap {
    /// Open `path` read-only (or read-write for repair commands) and read its parameters.
    ///
    /// Read-only opens follow a symlink and check its target (a link to a pin reads that
    /// pin); read-write opens refuse symlinks, so a repair never acts through one.
    pub fn open(path: &Path, writable: bool) -> Result<Self> {
        let shown = path.display();
        let meta = std::fs::symlink_metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CtError::PinNotFound(format!("{shown}: no such pin")),
            _ => CtError::os(format!("{shown}: stat"), e),
        })?;
        if meta.file_type().is_symlink() && writable {
            return Err(CtError::NotCtMap(format!("{shown}: is a symlink; give the pin itself")));
        }
        // The file that is really opened, and how to name it in errors.
        let (target, via) = if meta.file_type().is_symlink() {
            let t = std::fs::canonicalize(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => CtError::PinNotFound(format!(
                    "{shown}: is a symlink to {}, which does not exist",
                    std::fs::read_link(path).map(|l| l.display().to_string()).unwrap_or_else(|_| "?".into())
                )),
                _ => CtError::os(format!("{shown}: resolving the symlink"), e),
            })?;
            let via = format!("{shown}: is a symlink to {}, which", t.display());
            (t, Some(via))
        } else {
            (path.to_path_buf(), None)
        };
        // "<path>: <what>" for the pin itself, "<link>: is a symlink to <t>, which <what>" for a link.
        let said = |what: &str| match &via {
            None => format!("{shown}: {what}"),
            Some(v) => format!("{v} {what}"),
        };
        let tmeta = std::fs::metadata(&target).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CtError::PinNotFound(said("no longer exists")),
            _ => CtError::os(format!("{}: stat", target.display()), e),
        })?;
        if tmeta.is_dir() {
            return Err(CtError::NotCtMap(said("is a directory, expected a pinned BPF map")));
        }
        let dir = target.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p });
        if !dir.is_some_and(on_bpffs) {
            return Err(CtError::NotCtMap(said(
                "is not on a BPF filesystem (bpffs), expected a pin such as /sys/fs/bpf/tc/globals/cali_v4_ct4",
            )));
        }
        let flags = if writable { 0 } else { BPF_F_RDONLY };
        let fd = sys::obj_get(&target, flags).map_err(|e| {
            // A file on a bpffs that BPF_OBJ_GET cannot find is no pinned object (the
            // bpffs's own maps.debug / progs.debug iterator files), unless it just vanished.
            if e.raw_os_error() == Some(libc::ENOENT) && target.exists() {
                CtError::NotCtMap(said(
                    "is not a BPF map pin (a file of the bpffs itself, such as maps.debug, not a pinned object)",
                ))
            } else if e.raw_os_error() == Some(libc::ENOENT) {
                CtError::PinNotFound(said("no longer exists"))
            } else {
                CtError::os(format!("{shown}: BPF_OBJ_GET"), e)
            }
        })?;
        // BPF_OBJ_GET_INFO_BY_FD answers for programs and links too (with their own info
        // struct, read as map info that is garbage sizes), so ask what the fd is first.
        match bpf_fd_kind(fd.as_fd()).as_deref() {
            None | Some("bpf-map") => {}
            Some("bpf-prog") => {
                return Err(CtError::NotCtMap(format!("{shown}: is a BPF program pin, expected a map")));
            }
            Some("bpf_link") => return Err(CtError::NotCtMap(format!("{shown}: is a BPF link pin, expected a map"))),
            Some(other) => {
                return Err(CtError::NotCtMap(format!(
                    "{shown}: is {} {other} pin, expected a BPF map",
                    article(other)
                )));
            }
        }
        let params = read_params(fd.as_fd(), &target).map_err(|e| match e {
            // A program or link pin opens fine but has no map info.
            CtError::Os { err, .. } if err.raw_os_error() == Some(libc::EINVAL) => {
                CtError::NotCtMap(format!("{shown}: is a BPF program or link pin, expected a map"))
            }
            e => e,
        })?;
        Ok(PinnedMap { path: path.to_path_buf(), target, fd: Arc::new(fd), params, writable, batch_ok: Default::default() })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn require_hash(&self) -> Result<()> {
        self.params.require_hash(&self.path.to_string_lossy())
    }
}

/// What a BPF fd is, from its anon inode (`anon_inode:bpf-map` -> "bpf-map"); None when
/// /proc is not there to tell.
fn bpf_fd_kind(fd: BorrowedFd<'_>) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let s = link.to_string_lossy();
    Some(s.strip_prefix("anon_inode:").unwrap_or(&s).to_string())
}

/// Parameters of the map behind `fd`: aya for the standard fields, our own call for the rest.
pub fn read_params(fd: BorrowedFd<'_>, path: &Path) -> Result<MapParams> {
    let owned = fd.try_clone_to_owned().map_err(|e| CtError::os("dup", e))?;
    let data = MapData::from_fd(owned).map_err(|e| aya_error(path, e))?;
    let info = data.info().map_err(|e| aya_error(path, e))?;
    let extra = sys::map_info(fd).map_err(|e| CtError::os(format!("{}: BPF_OBJ_GET_INFO_BY_FD", path.display()), e))?;
    // `name()` only; `name_as_str()` would run aya's feature probes (loads test programs).
    let name = String::from_utf8_lossy(info.name()).into_owned();
    let pin_name = path.to_string_lossy();
    let det = layout::detect(&name, &pin_name, extra.type_, info.key_size(), info.value_size());
    Ok(MapParams {
        map_type: extra.type_,
        id: info.id(),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        map_flags: info.map_flags(),
        name,
        btf_id: extra.btf_id,
        map_extra: extra.map_extra,
        version: det.version,
        family: det.family,
    })
}

fn aya_error(path: &Path, e: aya::maps::MapError) -> CtError {
    // Pull the errno back out of aya's error so permission problems stay exit code 4.
    let shown = path.display();
    if let aya::maps::MapError::SyscallError(s) = &e {
        let io = std::io::Error::from_raw_os_error(s.io_error.raw_os_error().unwrap_or(libc::EIO));
        return CtError::os(format!("{shown}: {}", s.call), io);
    }
    CtError::Os { op: format!("{shown}: reading map info"), err: std::io::Error::other(e.to_string()) }
}
