//! The map definitions a BPF ELF object carries (BTF-defined `.maps` and legacy `maps`),
//! read with aya-obj: the same six fields libbpf compares before it reuses a pin (facts
//! §7), plus the pinning mode that makes libbpf look for a pin at all.

use std::path::Path;

use aya_obj::maps::PinningType;
use aya_obj::{EbpfSectionKind, Object};

use crate::error::{CtError, Result};

/// One map as the object declares it (before any loader overrides `max_entries`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMap {
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub map_extra: u64,
    /// libbpf pins (and reuses pins of) only `LIBBPF_PIN_BY_NAME` maps.
    pub pinned_by_name: bool,
    /// `.maps` (BTF-defined) or `maps` (legacy); data sections are skipped.
    pub section: &'static str,
}

/// Parse `path` and list its map definitions, sorted by name.
pub fn object_maps(path: &Path) -> Result<Vec<ObjectMap>> {
    let shown = path.display();
    let open_err = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => CtError::PinNotFound(format!("{shown}: no such BPF object file")),
        _ => CtError::os(format!("{shown}: reading BPF object"), e),
    };
    // Only a regular file, read up to its fstat length (`--object /dev/zero` grew without bound).
    let file = std::fs::File::open(path).map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(CtError::BadArgument(format!("{shown}: not a regular file; expected a BPF object (ELF) file")));
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::io::Read::read_to_end(&mut std::io::Read::take(&file, meta.len()), &mut data).map_err(open_err)?;
    parse_maps(&data).map_err(|e| CtError::BadArgument(format!("{shown}: {e}")))
}

/// The map definitions in an ELF image; an error message when it is not a BPF object.
pub fn parse_maps(data: &[u8]) -> std::result::Result<Vec<ObjectMap>, String> {
    // Only maps matter here: hide the program sections, so that a section name aya-obj
    // 0.3 does not know (`SEC("tc")`, Calico's own objects) cannot fail the parse.
    let data = without_programs(data);
    let obj = Object::parse(&data).map_err(|e| format!("not a BPF ELF object that aya-obj can parse: {e}"))?;
    let mut out: Vec<ObjectMap> = obj
        .maps
        .iter()
        .filter_map(|(name, m)| {
            let section = match m.section_kind() {
                EbpfSectionKind::BtfMaps => ".maps",
                EbpfSectionKind::Maps => "maps",
                // .data/.bss/.rodata are global-variable arrays, not declared maps.
                _ => return None,
            };
            Some(ObjectMap {
                name: name.clone(),
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
                map_flags: m.map_flags(),
                map_extra: m.map_extra(),
                pinned_by_name: m.pinning() == PinningType::ByName,
                section,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

const SHF_EXECINSTR: u64 = 0x4;

/// A copy of an ELF64 image with SHF_EXECINSTR cleared on every section header, so the
/// parser sees no program sections. Anything that is not ELF64 is returned unchanged
/// (and then rejected by the parser with its own message).
fn without_programs(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return out;
    }
    let le = data[5] == 1;
    let u16_at = |o: usize| {
        let b = [data[o], data[o + 1]];
        if le { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) }
    };
    let u64_at = |d: &[u8], o: usize| {
        let b: [u8; 8] = d[o..o + 8].try_into().unwrap();
        if le { u64::from_le_bytes(b) } else { u64::from_be_bytes(b) }
    };
    let shoff = u64_at(data, 0x28) as usize;
    let (shentsize, shnum) = (u16_at(0x3a) as usize, u16_at(0x3c) as usize);
    if shentsize < 64 {
        return out;
    }
    for i in 0..shnum {
        let flags_off = shoff + i * shentsize + 8;
        if flags_off + 8 > out.len() {
            break;
        }
        let flags = u64_at(&out, flags_off) & !SHF_EXECINSTR;
        let bytes = if le { flags.to_le_bytes() } else { flags.to_be_bytes() };
        out[flags_off..flags_off + 8].copy_from_slice(&bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf_input() {
        let err = parse_maps(b"definitely not an ELF file").unwrap_err();
        assert!(err.contains("not a BPF ELF object"), "{err}");
    }
}
