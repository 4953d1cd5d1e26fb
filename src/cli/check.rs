//! Checks done before any work starts: numeric flags (as clap value parsers, so the error names the flag,
//! the value and the allowed range, and nothing runs), and output paths (the folder exists and is
//! writable, the path is not a folder).
//!
//! Use: `#[arg(long, value_parser = int_in(1, MAX_EPOCHS))]`. clap reports a rejected value as
//! `invalid value '0' for '--epochs <EPOCHS>': must be an integer in 1..=100000` and exits with status 2.
use std::path::{Path, PathBuf};

use fmp_engine::{Error, Result};

/// Upper bounds that catch typos and values that cannot fit in memory, while allowing every real use.
pub const MAX_BATCH: u64 = 1 << 16;
pub const MAX_EPOCHS: u64 = 100_000;
pub const MAX_WIDTH: u64 = 512;
pub const MAX_IMAGES: u64 = 100_000_000;
pub const MAX_SAMPLES: u64 = 1_000_000;
pub const MAX_CHANNELS: u64 = 1 << 20;
pub const MAX_CLASS: u64 = 65_535;
pub const MAX_REPEATS: u64 = 100_000;
pub const MAX_STEPS: u64 = 10_000;

/// An integer flag in `lo..=hi` (decimal; also rejects negatives, fractions and values that do not fit).
pub fn int_in<T>(
    lo: u64,
    hi: u64,
) -> impl Fn(&str) -> std::result::Result<T, String> + Clone + Send + Sync
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
{
    move |s: &str| {
        let range = format!("must be an integer in {lo}..={hi}");
        let v: u64 = s.trim().parse().map_err(|_| range.clone())?;
        if v < lo || v > hi {
            return Err(range);
        }
        T::try_from(v).map_err(|_| format!("{range} (does not fit this machine's integers)"))
    }
}

/// Any 64-bit seed.
pub fn seed(s: &str) -> std::result::Result<u64, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("must be an integer in 0..={}", u64::MAX))
}

/// A finite real flag in `lo..hi`, each end open or closed (`lo_open`: `lo` itself is refused).
/// Accepts fractions written `a/b` (`4/255`), read by `select::parse_fraction`.
pub fn real_in(
    lo: f64,
    lo_open: bool,
    hi: f64,
    hi_open: bool,
) -> impl Fn(&str) -> std::result::Result<f32, String> + Clone + Send + Sync {
    move |s: &str| {
        let range = format!(
            "must be a finite number in {}{lo}, {hi}{}",
            if lo_open { "(" } else { "[" },
            if hi_open { ")" } else { "]" }
        );
        let v = fmp_engine::fmp::select::parse_fraction(s).map_err(|_| range.clone())? as f64;
        let low_ok = if lo_open { v > lo } else { v >= lo };
        let high_ok = if hi_open { v < hi } else { v <= hi };
        if !(v.is_finite() && low_ok && high_ok) {
            return Err(range);
        }
        let f = v as f32;
        if !f.is_finite() {
            return Err(range);
        }
        Ok(f)
    }
}

/// A device name (`auto`, `cpu`, `cuda`, `cuda:N`), checked at parse time; kept as the string.
pub fn device(s: &str) -> std::result::Result<String, String> {
    s.parse::<fmp_engine::backend::select::DeviceSpec>()
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// `I/N` with 1 <= I <= N: the I-th of N shards.
pub fn shard(s: &str) -> std::result::Result<(usize, usize), String> {
    let bad = || format!("'{s}': write I/N with 1 <= I <= N <= 100000 (the I-th of N shards)");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let i: usize = i.trim().parse().map_err(|_| bad())?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if i == 0 || n == 0 || i > n || n > 100_000 {
        return Err(bad());
    }
    Ok((i, n))
}

/// Fail before any work when `path` (given as `flag`) cannot be written: its folder must exist and take a
/// new file, and the path itself must not be a folder. Nothing is left behind by the probe.
pub fn output_path(path: &Path, flag: &str) -> Result<()> {
    let bad = |msg: String| Error::InvalidArgument(format!("{flag} {}: {msg}", path.display()));
    if path.as_os_str().is_empty() {
        return Err(bad("empty path".into()));
    }
    if path.is_dir() {
        return Err(bad(
            "is a folder; give a file name inside it (e.g. DIR/out.json)".into(),
        ));
    }
    if path.file_name().is_none() {
        return Err(bad("does not end in a file name".into()));
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(bad(format!(
            "the folder {} does not exist (create it first)",
            dir.display()
        )));
    }
    let probe = dir.join(format!(
        ".fmp-engine-write-probe-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
        }
        Err(e) => {
            return Err(bad(format!(
                "cannot write into the folder {}: {e}",
                dir.display()
            )))
        }
    }
    if path.exists() {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.permissions().readonly() {
            return Err(bad("exists and is read-only".into()));
        }
    }
    Ok(())
}

/// Held while a command writes `path`: an OS lock on `<path>.lock` (released by the OS if the process
/// dies, SIGKILL included), so a second run given the same output fails at once with a clear message
/// instead of racing the first. The lock file is removed on drop.
pub struct OutputLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Take the lock of output `path` (given as `flag`); see [`OutputLock`].
pub fn lock_output(path: &Path, flag: &str) -> Result<OutputLock> {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    let lock = PathBuf::from(s);
    // A lock file can be removed by its holder between our open and our lock; retry on a fresh file then.
    for _ in 0..5 {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|e| Error::io(&lock, e))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::InvalidArgument(format!(
                    "{flag} {}: another fmp-engine run is writing it (it holds {}); wait for it to finish or choose another {flag}",
                    path.display(),
                    lock.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock, e)),
        }
        if same_file(&f, &lock) {
            return Ok(OutputLock {
                path: lock,
                _file: f,
            });
        }
    }
    Err(Error::Msg(format!(
        "{}: could not take the output lock",
        lock.display()
    )))
}

/// `--out` that a command writes: it must be writable (`output_path`), and this run holds its lock.
pub fn claim_out(path: &Path) -> Result<OutputLock> {
    output_path(path, "--out")?;
    lock_output(path, "--out")
}

impl OutputLock {
    /// Remove temporary files a killed run left beside `files` (`.NAME.tmpPID`, from
    /// `weights::write_atomic`); safe because the lock shows that no other run writes them now.
    pub fn remove_stale_temps(&self, files: &[&Path]) {
        for f in files {
            let (Some(name), dir) = (f.file_name(), parent_dir(f)) else {
                continue;
            };
            let prefix = format!(".{}.tmp", name.to_string_lossy());
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.strip_prefix(&prefix)
                    .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

#[cfg(unix)]
fn same_file(f: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::File, path: &Path) -> bool {
    path.exists()
}

/// An input file (given as `flag`) must exist and be a readable file.
pub fn input_file(path: &Path, flag: &str) -> Result<()> {
    let bad = |msg: &str| Error::InvalidArgument(format!("{flag} {}: {msg}", path.display()));
    if path.is_dir() {
        return Err(bad("is a folder, not a file"));
    }
    std::fs::File::open(path).map_err(|e| bad(&format!("cannot be read: {e}")))?;
    Ok(())
}

/// The folder holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let p = int_in::<usize>(1, 10);
        assert_eq!(p("3"), Ok(3));
        assert!(p("0").unwrap_err().contains("1..=10"));
        assert!(p("11").is_err());
        assert!(p("-1").is_err());
        assert!(p("1.5").is_err());
        assert!(p("99999999999999999999999").is_err());
        let u = int_in::<u32>(0, u64::MAX);
        assert!(u("5000000000").unwrap_err().contains("fit"));
        let r = real_in(0.0, true, 1.0, false);
        assert_eq!(r("1"), Ok(1.0));
        assert_eq!(r("4/255"), Ok(4.0 / 255.0));
        for bad in ["0", "1.5", "nan", "inf", "-0.1", "x", "1/0"] {
            assert!(r(bad).unwrap_err().contains("(0, 1]"), "{bad}");
        }
        assert_eq!(shard("2/4"), Ok((2, 4)));
        for bad in ["0/4", "5/4", "4", "a/b", "1/0"] {
            assert!(shard(bad).is_err(), "{bad}");
        }
        assert!(device("cuda:x").is_err());
        assert_eq!(device("cuda:1").unwrap(), "cuda:1");
    }

    #[test]
    fn outputs() {
        let dir = std::env::temp_dir().join(format!("fmp-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(output_path(&dir.join("r.json"), "--out").is_ok());
        let e = output_path(&dir.join("missing/r.json"), "--out").unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = output_path(&dir, "--out").unwrap_err();
        assert!(e.to_string().contains("folder"), "{e}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "probe left");
        // the output lock: a second holder is refused, the lock file goes with the guard, and stale
        // temporaries of killed runs are removed (other files are not)
        let out = dir.join("r.json");
        let lock = lock_output(&out, "--out").unwrap();
        let e = lock_output(&out, "--out").err().expect("second lock taken");
        assert!(e.to_string().contains("another fmp-engine run"), "{e}");
        for n in [".r.json.tmp123", ".r.json.tmpx", "keep.json"] {
            std::fs::write(dir.join(n), b"x").unwrap();
        }
        lock.remove_stale_temps(&[&out]);
        drop(lock);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".r.json.tmpx", "keep.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
