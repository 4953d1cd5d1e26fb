//! On-disk cache of compiled kernel images (CUBIN/PTX), so NVRTC runs once per (source, options,
//! NVRTC version) on a machine rather than once per process.
//!
//! Location: `$FMP_KERNEL_CACHE`, else `$XDG_CACHE_HOME/fmp-engine/kernels`, else
//! `$HOME/.cache/fmp-engine/kernels`; `FMP_KERNEL_CACHE=off` disables it. An entry is
//! `MAGIC | key (16 bytes) | payload length (u64 LE) | payload checksum (u64 LE) | payload`; an entry
//! that does not verify (truncated, corrupt, other key) is ignored and rewritten. Writes go to a
//! unique temporary file that is renamed into place, so readers never see a partial entry.
//! Every cache failure is non-fatal: the caller just compiles.
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"FMPKRN01";
const HEADER: usize = 8 + 16 + 8 + 8;

/// 64-bit FNV-1a with a caller-chosen offset basis.
fn fnv1a(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = seed;
    for p in parts {
        // Length prefix so that ("ab","c") and ("a","bc") differ.
        for b in (p.len() as u64).to_le_bytes().iter().chain(p.iter()) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// 128-bit cache key of a list of byte strings (two independent FNV-1a lanes).
pub fn key(parts: &[&[u8]]) -> [u8; 16] {
    let a = fnv1a(0xcbf2_9ce4_8422_2325, parts);
    let b = fnv1a(0x6c62_272e_07bb_0142, parts);
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_le_bytes());
    k[8..].copy_from_slice(&b.to_le_bytes());
    k
}

pub fn hex(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache directory, or None when disabled / no home directory.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("FMP_KERNEL_CACHE") {
        Some(v) if v == "off" || v == "0" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => super::nvrtc::engine_cache_dir().map(|d| d.join("kernels")),
    }
}

/// Entry path for a kernel file `stem`, an arch tag ("sm_90") and a key.
pub fn entry_path(dir: &Path, stem: &str, arch_tag: &str, k: &[u8; 16]) -> PathBuf {
    dir.join(format!("{stem}-{arch_tag}-{}.bin", hex(k)))
}

/// Read and verify an entry; None when absent or invalid.
pub fn load(path: &Path, k: &[u8; 16]) -> Option<Vec<u8>> {
    let data = std::fs::read(path).ok()?;
    if data.len() < HEADER || &data[..8] != MAGIC || &data[8..24] != k {
        return None;
    }
    let len = u64::from_le_bytes(data[24..32].try_into().ok()?) as usize;
    let sum = u64::from_le_bytes(data[32..40].try_into().ok()?);
    let payload = &data[HEADER..];
    if payload.len() != len || fnv1a(0xcbf2_9ce4_8422_2325, &[payload]) != sum {
        return None;
    }
    Some(payload.to_vec())
}

/// Write an entry atomically (temporary file + rename). Errors are returned for the caller to
/// report or ignore.
pub fn store(path: &Path, k: &[u8; 16], payload: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut data = Vec::with_capacity(HEADER + payload.len());
    data.extend_from_slice(MAGIC);
    data.extend_from_slice(k);
    data.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    data.extend_from_slice(&fnv1a(0xcbf2_9ce4_8422_2325, &[payload]).to_le_bytes());
    data.extend_from_slice(payload);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    let res = std::fs::write(&tmp, &data).and_then(|_| std::fs::rename(&tmp, path));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fmp-kcache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn keys_separate_parts() {
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
        assert_eq!(key(&[b"x", b"y"]), key(&[b"x", b"y"]));
        assert_ne!(
            key(&[b"src", b"-arch=sm_80"]),
            key(&[b"src", b"-arch=sm_90"])
        );
    }

    #[test]
    fn roundtrip_and_corruption_is_ignored() {
        let d = tmpdir("rt");
        let k = key(&[b"kernel source", b"opts"]);
        let p = entry_path(&d, "conv", "sm_90", &k);
        assert!(load(&p, &k).is_none());
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        store(&p, &k, &payload).unwrap();
        assert_eq!(load(&p, &k).unwrap(), payload);
        // Another key at the same path does not match.
        assert!(load(&p, &key(&[b"other"])).is_none());
        // Flip a payload byte: checksum fails.
        let mut raw = std::fs::read(&p).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0xff;
        std::fs::write(&p, &raw).unwrap();
        assert!(load(&p, &k).is_none());
        // Truncate: length check fails.
        std::fs::write(&p, &raw[..HEADER + 10]).unwrap();
        assert!(load(&p, &k).is_none());
        // Rewriting repairs it, and leaves no temporary files behind.
        store(&p, &k, &payload).unwrap();
        assert_eq!(load(&p, &k).unwrap(), payload);
        let n = std::fs::read_dir(&d).unwrap().count();
        assert_eq!(n, 1);
        let _ = std::fs::remove_dir_all(&d);
    }
}
