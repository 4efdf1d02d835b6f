//! The resize primitives: read every entry of a live map, create its twin with a new
//! `max_entries`, copy, verify key→value equality, swap pins atomically, and copy the
//! delta written to the old map meanwhile. The order and the crash-recovery rules live in
//! Python (`ctscope.repair`); each step here is one kernel-visible action.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backup::Entries;
use crate::error::{CtError, Result};
use crate::iter::{MapReader, Method};
use crate::map::MapParams;
use crate::sys::{self, CreateParams};

/// Every entry of the map behind `fd` (batch lookup, next-key fallback).
pub fn read_all(fd: Arc<OwnedFd>, p: &MapParams) -> Result<Entries> {
    let mut r = MapReader::new(fd, p.key_size, p.value_size, p.max_entries, Method::Auto, 16384);
    let mut e = Entries::new(p.key_size as usize, p.value_size as usize);
    while let Some(c) = r.next_chunk()? {
        e.keys.extend_from_slice(&c.keys);
        e.values.extend_from_slice(&c.values);
        e.count += c.count;
    }
    Ok(e)
}

/// A new, unpinned map with the type, sizes, flags and name of `p` and `max_entries`.
/// It lives as long as the returned fd unless pinned.
pub fn create_like(p: &MapParams, max_entries: u32) -> Result<OwnedFd> {
    if p.map_extra != 0 {
        // CreateParams has no map_extra: refuse rather than create a map libbpf would reject.
        return Err(CtError::BadArgument(format!(
            "map {} has map_extra {:#x}; ctscope resizes hash maps, whose map_extra is 0",
            p.name, p.map_extra
        )));
    }
    let cp = CreateParams {
        map_type: p.map_type,
        key_size: p.key_size,
        value_size: p.value_size,
        max_entries,
        map_flags: p.map_flags,
        name: p.name.clone(),
    };
    sys::map_create(&cp).map_err(|e| CtError::os(format!("BPF_MAP_CREATE {} with max_entries {max_entries}", p.name), e))
}

/// Write all `entries` into `fd` (`BPF_MAP_UPDATE_BATCH`, per-element fallback).
pub fn copy_into(fd: &OwnedFd, entries: &Entries) -> Result<u64> {
    crate::synth::write_entries(fd, &entries.keys, &entries.values, entries.count, entries.key_size, entries.value_size)
}

/// Word-at-a-time mixing with murmur3's finaliser: much cheaper than SipHash, and the
/// finaliser matters: CT keys vary mostly in their high bytes (addresses, ports), which a
/// bare multiply never carries down to the low bits the table indexes by.
#[derive(Default)]
pub struct FastHasher(u64);
const MIX: u64 = 0x51_7c_c1_b7_27_22_0a_95;
impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(MIX);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(MIX);
        }
    }
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}
type FastMap<'a> = HashMap<&'a [u8], &'a [u8], BuildHasherDefault<FastHasher>>;

fn index(e: &Entries) -> FastMap<'_> {
    let mut m = FastMap::with_capacity_and_hasher(e.count, Default::default());
    for i in 0..e.count {
        m.insert(e.key(i), e.value(i));
    }
    m
}

/// How a map's content compares with the entries it should hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    pub expected: u64,
    pub actual: u64,
    /// Keys in both with byte-identical values.
    pub equal: u64,
    /// Expected keys the map lacks.
    pub missing: u64,
    /// Keys in both whose values differ.
    pub different: u64,
    /// Keys the map holds that were not expected.
    pub extra: u64,
}

impl Comparison {
    pub fn identical(&self) -> bool {
        self.missing == 0 && self.different == 0 && self.extra == 0 && self.equal == self.expected
    }
}

/// Compare key→value sets exactly.
pub fn compare(expected: &Entries, actual: &Entries) -> Comparison {
    let idx = index(expected);
    let mut c = Comparison { expected: expected.count as u64, actual: actual.count as u64, ..Default::default() };
    for i in 0..actual.count {
        match idx.get(actual.key(i)) {
            Some(v) if *v == actual.value(i) => c.equal += 1,
            Some(_) => c.different += 1,
            None => c.extra += 1,
        }
    }
    c.missing = c.expected - c.equal - c.different;
    c
}

/// Look up each of `entries` in the map behind `fd` (one `LOOKUP_ELEM` per key): cheap
/// for the few entries a delta writes, where re-reading the whole map would dominate.
/// `actual` and `extra` are not known this way and stay 0.
/// With `newer_ok`, a CT entry a live program has made newer since (last_seen not older
/// than expected) counts as equal: the write landed and was then superseded.
pub fn lookup_compare(fd: BorrowedFd<'_>, entries: &Entries, newer_ok: bool) -> Result<Comparison> {
    let mut c = Comparison { expected: entries.count as u64, ..Default::default() };
    let mut value = vec![0u8; entries.value_size];
    let newer_ok = newer_ok && entries.value_size >= 16;
    for i in 0..entries.count {
        let found = sys::lookup_elem(fd, entries.key(i), &mut value).map_err(|e| CtError::os("BPF_MAP_LOOKUP_ELEM", e))?;
        match found {
            true if value == entries.value(i) => c.equal += 1,
            true if newer_ok && last_seen(&value) >= last_seen(entries.value(i)) => c.equal += 1,
            true => c.different += 1,
            false => c.missing += 1,
        }
    }
    c.actual = c.equal + c.different;
    Ok(c)
}

/// Entries of `current` whose key is absent from `reference` or whose value differs.
pub fn changed_since(reference: &Entries, current: &Entries) -> Entries {
    let idx = index(reference);
    let mut out = Entries::new(current.key_size, current.value_size);
    for i in 0..current.count {
        if idx.get(current.key(i)) != Some(&current.value(i)) {
            out.push(current.key(i), current.value(i));
        }
    }
    out
}

/// last_seen (u64 ns, value offset 8 in every CT layout, facts §4).
fn last_seen(v: &[u8]) -> u64 {
    u64::from_le_bytes(v[8..16].try_into().unwrap())
}

/// What to write into a destination map (whose content is `dest`) so that it loses nothing
/// fresher that `source` holds.
pub struct Fresher {
    /// Source entries whose key the destination lacks.
    pub add: Entries,
    /// Source entries the destination holds with an older last_seen (`by_last_seen`), or
    /// with any other value (`overwrite_differing`, Felix's delta rule).
    pub update: Entries,
    /// Keys whose destination entry differs but is kept (as fresh, or no overwrite rule).
    pub kept: u64,
}

pub fn fresher(source: &Entries, dest: &Entries, by_last_seen: bool, overwrite_differing: bool) -> Fresher {
    let idx = index(dest);
    let (mut add, mut update) =
        (Entries::new(source.key_size, source.value_size), Entries::new(source.key_size, source.value_size));
    let mut kept = 0;
    for i in 0..source.count {
        let (k, v) = (source.key(i), source.value(i));
        match idx.get(k) {
            None => add.push(k, v),
            Some(d) if *d == v => {}
            Some(d) if replaces(v, d, by_last_seen, overwrite_differing) => update.push(k, v),
            Some(_) => kept += 1,
        }
    }
    Fresher { add, update, kept }
}

/// The freshness rule, in one place: does `v` replace a destination's differing value `d`?
/// CT layouts (`by_last_seen`): only when its last_seen is newer (an equal last_seen keeps
/// `d`); otherwise Felix's delta rule, `overwrite_differing`.
fn replaces(v: &[u8], d: &[u8], by_last_seen: bool, overwrite_differing: bool) -> bool {
    if by_last_seen && v.len() >= 16 && d.len() >= 16 { last_seen(v) > last_seen(d) } else { overwrite_differing }
}

/// What `write_fresher` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreshWrite {
    /// Keys the map lacked, inserted.
    pub added: u64,
    /// Keys whose older value was replaced.
    pub updated: u64,
    /// Keys whose differing value the map keeps (as fresh or fresher; or no overwrite rule).
    pub kept: u64,
}

/// How often one key is retried when a live writer inserts or deletes it between our
/// lookup and our write (each retry means the map changed under us: bounded, not a loop).
const FRESH_RETRIES: u32 = 64;

/// Write each of `candidates` into the live map behind `fd` by the freshness rule
/// (`replaces`), deciding per key against what the map holds at that moment rather than
/// against an earlier snapshot: a key the map lacks is inserted with `BPF_NOEXIST` (so a
/// value a live writer inserted meanwhile is never replaced blindly: the key is looked at
/// again), a key it holds with an older value is replaced with `BPF_EXIST`. What stays
/// racy: a writer updating the same key between our lookup and our update (microseconds)
/// has its value replaced by the older one; the bpf(2) map API has no compare-and-swap.
pub fn write_fresher(fd: BorrowedFd<'_>, candidates: &Entries, by_last_seen: bool, overwrite_differing: bool) -> Result<FreshWrite> {
    let mut w = FreshWrite::default();
    let mut cur = vec![0u8; candidates.value_size];
    for i in 0..candidates.count {
        let (k, v) = (candidates.key(i), candidates.value(i));
        let mut tries = 0;
        loop {
            tries += 1;
            if tries > FRESH_RETRIES {
                return Err(CtError::Os {
                    op: format!("writing the delta: key {} changed under us {FRESH_RETRIES} times", hex(k)),
                    err: std::io::Error::from_raw_os_error(libc::EAGAIN),
                });
            }
            let found = sys::lookup_elem(fd, k, &mut cur).map_err(|e| CtError::os("BPF_MAP_LOOKUP_ELEM", e))?;
            let (flags, counter) = if !found {
                (sys::BPF_NOEXIST, &mut w.added)
            } else if cur == v {
                break;
            } else if replaces(v, &cur, by_last_seen, overwrite_differing) {
                (sys::BPF_EXIST, &mut w.updated)
            } else {
                w.kept += 1;
                break;
            };
            match sys::update_elem(fd, k, v, flags) {
                Ok(()) => {
                    *counter += 1;
                    break;
                }
                // Inserted (EEXIST) or deleted (ENOENT) by someone else meanwhile: look again.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOENT)) => continue,
                Err(e) => return Err(CtError::os("BPF_MAP_UPDATE_ELEM", e)),
            }
        }
    }
    Ok(w)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The entries whose last_seen (value offset 8, every CT layout) is newest, at most `n`:
/// what `--force` keeps when a map shrinks below its entry count.
pub fn newest(e: &Entries, n: usize) -> Entries {
    let mut order: Vec<usize> = (0..e.count).collect();
    if e.value_size >= 16 {
        order.sort_unstable_by_key(|&i| std::cmp::Reverse(last_seen(e.value(i))));
    }
    let mut out = Entries::new(e.key_size, e.value_size);
    for &i in order.iter().take(n) {
        out.push(e.key(i), e.value(i));
    }
    out
}

/// `<pin>_old` beside `pin` (layout.rs `OLD_PIN_SUFFIX`).
pub fn old_pin(pin: &Path) -> PathBuf {
    let name = pin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    pin.with_file_name(format!("{name}{}", crate::layout::OLD_PIN_SUFFIX))
}

/// The largest max_entries a BPF map can have (the field is a u32); resize accepts 1 ..= this.
pub const MAX_ENTRIES_LIMIT: u32 = u32::MAX;

/// The temporary pin name used while swapping, in the same directory so rename(2) works.
/// bpffs refuses names with a dot (EPERM), so it is a suffix: Felix's version scan parses
/// `4_ctscope_swap` as no version and skips it, and `ctscope maps` ignores it.
pub fn swap_name(pin: &Path) -> PathBuf {
    let name = pin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    pin.with_file_name(format!("{name}_ctscope_swap"))
}

/// Pin `fd` at `pin`, replacing whatever is pinned there in one step: pin under
/// `swap_name(pin)`, then rename(2) over `pin` (bpffs supports rename). A loader that
/// opens `pin` at any moment finds either the old map or the new one, never nothing.
pub fn pin_replace(fd: BorrowedFd<'_>, pin: &Path) -> Result<()> {
    let tmp = swap_name(pin);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CtError::os(format!("{}: removing a stale swap pin", tmp.display()), e)),
    }
    sys::obj_pin(fd, &tmp).map_err(|e| CtError::os(format!("{}: BPF_OBJ_PIN", tmp.display()), e))?;
    std::fs::rename(&tmp, pin).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CtError::os(format!("rename {} -> {}", tmp.display(), pin.display()), e)
    })
}

/// `BPF_OBJ_PIN` at a path that must not exist yet (EEXIST otherwise).
pub fn pin_new(fd: BorrowedFd<'_>, pin: &Path) -> Result<()> {
    sys::obj_pin(fd, pin).map_err(|e| CtError::os(format!("{}: BPF_OBJ_PIN", pin.display()), e))
}

/// Atomically move the pin `from` to `to` (replacing `to`).
pub fn rename_pin(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| CtError::os(format!("rename {} -> {}", from.display(), to.display()), e))
}

/// Kernel id of the map behind a fd.
pub fn map_id(fd: BorrowedFd<'_>) -> Result<u32> {
    Ok(sys::map_info(fd).map_err(|e| CtError::os("BPF_OBJ_GET_INFO_BY_FD", e))?.id)
}

/// Write `entries` into the map behind `fd` (a writable pin) — used by restore and delta.
pub fn write_into(fd: BorrowedFd<'_>, entries: &Entries) -> Result<u64> {
    let owned = fd.try_clone_to_owned().map_err(|e| CtError::os("dup", e))?;
    copy_into(&owned, entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(items: &[(u8, u8)]) -> Entries {
        let mut e = Entries::new(4, 16);
        for &(k, v) in items {
            let mut val = [v; 16];
            val[8..16].copy_from_slice(&(v as u64).to_le_bytes());
            e.push(&[k; 4], &val);
        }
        e
    }

    #[test]
    fn compares_exactly() {
        let a = entries(&[(1, 1), (2, 2), (3, 3)]);
        assert!(compare(&a, &a).identical());
        let b = entries(&[(1, 1), (2, 9), (4, 4)]);
        let c = compare(&a, &b);
        assert_eq!((c.equal, c.different, c.missing, c.extra), (1, 1, 1, 1));
        assert!(!c.identical());
    }

    #[test]
    fn fresher_keeps_newer_destination_entries() {
        // source: 1 same, 2 newer, 3 older, 4 new; dest also has 5.
        let src = entries(&[(1, 1), (2, 9), (3, 2), (4, 4)]);
        let dst = entries(&[(1, 1), (2, 5), (3, 7), (5, 5)]);
        let f = fresher(&src, &dst, true, false);
        assert_eq!((f.add.count, f.update.count, f.kept), (1, 1, 1));
        assert_eq!((f.add.key(0), f.update.key(0)), (&[4u8; 4][..], &[2u8; 4][..]));
        // Felix's rule without last_seen: every differing value is overwritten.
        let f = fresher(&src, &dst, false, true);
        assert_eq!((f.add.count, f.update.count, f.kept), (1, 2, 0));
    }

    #[test]
    fn finds_changes_and_newest() {
        let base = entries(&[(1, 1), (2, 2)]);
        let now = entries(&[(1, 1), (2, 5), (3, 3)]);
        let d = changed_since(&base, &now);
        assert_eq!(d.count, 2);
        assert_eq!(d.key(0), &[2; 4]);
        let top = newest(&now, 2);
        assert_eq!(top.count, 2);
        assert_eq!(top.key(0), &[2; 4]); // last_seen 5
        assert_eq!(top.key(1), &[3; 4]);
    }

    #[test]
    fn hashes_keys_that_differ_only_in_high_bytes_apart() {
        // 16-byte keys whose varying bytes sit at offsets 5-7 and 12-13 (address, port).
        let mut low = std::collections::HashSet::new();
        for i in 0u32..4096 {
            let mut k = [0u8; 16];
            k[5..8].copy_from_slice(&i.to_be_bytes()[1..]);
            k[12..14].copy_from_slice(&(i as u16).to_le_bytes());
            let mut h = FastHasher::default();
            h.write(&k);
            low.insert(h.finish() & 0xfff);
        }
        assert!(low.len() > 2000, "low 12 bits take only {} values", low.len());
    }

    #[test]
    fn swap_name_is_beside_the_pin_without_dots() {
        let p = swap_name(Path::new("/sys/fs/bpf/tc/globals/cali_v4_ct4"));
        assert_eq!(p, Path::new("/sys/fs/bpf/tc/globals/cali_v4_ct4_ctscope_swap"));
    }
}
