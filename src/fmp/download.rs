//! `fmp-engine data cifar10`: download the CIFAR-10 binary archive from its official address into the
//! engine's cache, verify the MD5 the dataset's page publishes, and unpack `cifar-10-batches-bin/`.
//! The archive streams to a temporary file while hashed; nothing is unpacked unless the checksum matches, and
//! the unpacked folder appears under its final name only once complete (rename).
//!
//! The same download runs by itself when a subcommand finds no dataset (`pipeline::find_data`), unless the
//! engine is offline (`--offline` or `FMP_OFFLINE=1`). `FMP_CIFAR10_URL` / `FMP_CIFAR10_MD5` name a mirror.
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use md5::{Digest, Md5};

use crate::error::{Error, Result};

pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// MD5 of `cifar-10-binary.tar.gz` as published on https://www.cs.toronto.edu/~kriz/cifar.html.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// Folder inside the archive (and under the cache).
pub const CIFAR10_DIR: &str = "cifar-10-batches-bin";

/// Stream `url` into `dest`, returning the MD5 (hex) of the bytes. `progress(done, total)`.
pub fn download(
    url: &str,
    dest: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<String> {
    let resp = ureq::get(url).timeout(std::time::Duration::from_secs(600)).call().map_err(|e| {
        Error::Msg(format!(
            "could not download {url}: {e}\nWithout internet: fetch that file on a machine that has it, then run\n    \
             fmp-engine data cifar10 --archive cifar-10-binary.tar.gz\nor point --data / FMP_DATA at an unpacked copy."
        ))
    })?;
    let total = resp
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok());
    let mut reader = resp.into_reader();
    let mut file = std::fs::File::create(dest).map_err(|e| Error::io(dest, e))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| Error::Msg(format!("download of {url} interrupted: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(|e| Error::io(dest, e))?;
        done += n as u64;
        progress(done, total);
    }
    file.sync_all().map_err(|e| Error::io(dest, e))?;
    if let Some(t) = total {
        if t != done {
            return Err(Error::Msg(format!(
                "download of {url} truncated: {done} of {t} bytes"
            )));
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// MD5 (hex) of a file.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Unpack a verified `.tar.gz` holding `CIFAR10_DIR/` into `cache/CIFAR10_DIR`; returns that folder.
pub fn unpack(archive: &Path, cache: &Path) -> Result<PathBuf> {
    let staging = cache.join(format!(".unpack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let result = (|| {
        let f = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
        let entries = tar.entries().map_err(|e| Error::File {
            path: archive.into(),
            msg: format!("not a tar.gz archive: {e}"),
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|e| Error::File {
                path: archive.into(),
                msg: format!("corrupt archive: {e}"),
            })?;
            // unpack_in refuses paths that escape the staging folder
            entry.unpack_in(&staging).map_err(|e| Error::File {
                path: archive.into(),
                msg: format!("cannot unpack an entry: {e}"),
            })?;
        }
        let inner = staging.join(CIFAR10_DIR);
        crate::data::detect(&inner).map_err(|_| Error::File {
            path: archive.into(),
            msg: format!("the archive has no {CIFAR10_DIR}/ with CIFAR-10 files"),
        })?;
        let dest = cache.join(CIFAR10_DIR);
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(|e| Error::io(&dest, e))?;
        }
        std::fs::rename(&inner, &dest).map_err(|e| Error::io(&dest, e))?;
        Ok(dest)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Download (unless `archive` is given), verify `md5`, unpack into `cache`. Returns the dataset folder.
pub fn fetch_cifar10(
    url: &str,
    md5: &str,
    cache: &Path,
    archive: Option<&Path>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<PathBuf> {
    std::fs::create_dir_all(cache).map_err(|e| Error::io(cache, e))?;
    let (path, got, temp) = match archive {
        Some(a) => (a.to_path_buf(), md5_file(a)?, false),
        None => {
            let tmp = cache.join(format!(
                ".cifar-10-binary.tar.gz.part{}",
                std::process::id()
            ));
            match download(url, &tmp, progress) {
                Ok(h) => (tmp, h, true),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
    };
    let cleanup = || {
        if temp {
            let _ = std::fs::remove_file(&path);
        }
    };
    if !got.eq_ignore_ascii_case(md5) {
        cleanup();
        return Err(Error::File {
            path: if temp {
                PathBuf::from(url)
            } else {
                path.clone()
            },
            msg: format!("checksum mismatch: MD5 {got}, expected {md5}; nothing was unpacked"),
        });
    }
    let r = unpack(&path, cache);
    cleanup();
    r
}

static OFFLINE: AtomicBool = AtomicBool::new(false);

/// `--offline`: never download (also `FMP_OFFLINE=1`).
pub fn set_offline(on: bool) {
    OFFLINE.store(on, Ordering::Relaxed);
}

/// True under `--offline` or when `FMP_OFFLINE` is set to anything but empty, `0`, `false` or `no`.
pub fn offline() -> bool {
    OFFLINE.load(Ordering::Relaxed)
        || std::env::var("FMP_OFFLINE")
            .map(|v| {
                let v = v.trim().to_ascii_lowercase();
                !(v.is_empty() || v == "0" || v == "false" || v == "no")
            })
            .unwrap_or(false)
}

/// What to tell a user who is offline and has no data.
pub fn offline_help() -> String {
    format!(
        "offline (--offline or FMP_OFFLINE=1): not downloading CIFAR-10 ({CIFAR10_URL}).\n\
         Point the engine at a local copy instead:\n    \
         --data DIR   or   export FMP_DATA=DIR   (DIR holds data_batch_*.bin and test_batch.bin)\n\
         or unpack an archive you already have into the cache:\n    \
         fmp-engine data cifar10 --archive cifar-10-binary.tar.gz"
    )
}

/// The address and MD5 the automatic download uses: `FMP_CIFAR10_URL` / `FMP_CIFAR10_MD5` when set (a
/// mirror), else the official archive.
pub fn cifar10_source() -> (String, String) {
    let get = |k: &str, d: &str| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| d.to_string())
    };
    (
        get("FMP_CIFAR10_URL", CIFAR10_URL),
        get("FMP_CIFAR10_MD5", CIFAR10_MD5),
    )
}

/// Download progress on stderr: an indicatif bar (bytes, rate, ETA) on a terminal, else one line per
/// tenth of the file (for logs).
pub struct DownloadProgress {
    bar: Option<ProgressBar>,
    start: Instant,
    next_tenth: u64,
}

impl Default for DownloadProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl DownloadProgress {
    pub fn new() -> Self {
        DownloadProgress {
            bar: None,
            start: Instant::now(),
            next_tenth: 1,
        }
    }

    /// The `progress(done, total)` callback of `download`.
    pub fn update(&mut self, done: u64, total: Option<u64>) {
        if std::io::stderr().is_terminal() {
            let bar = self.bar.get_or_insert_with(|| {
                let (pb, tmpl) = match total {
                    Some(t) => (
                        ProgressBar::new(t),
                        "  {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})",
                    ),
                    None => (
                        ProgressBar::new_spinner(),
                        "  {spinner} {bytes} ({bytes_per_sec})",
                    ),
                };
                pb.set_style(
                    ProgressStyle::with_template(tmpl)
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                pb
            });
            bar.set_position(done);
            return;
        }
        let Some(t) = total.filter(|&t| t > 0) else {
            return;
        };
        if done * 10 < self.next_tenth * t {
            return;
        }
        while self.next_tenth * t <= done * 10 {
            self.next_tenth += 1;
        }
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = (t - done.min(t)) as f64 / rate.max(1.0);
        eprintln!(
            "  {:.1} / {:.1} MB ({:.0}%), {:.2} MB/s, ETA {:.0} s",
            done as f64 / 1e6,
            t as f64 / 1e6,
            100.0 * done as f64 / t as f64,
            rate / 1e6,
            eta
        );
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// `fetch_cifar10` with a `DownloadProgress` on stderr; refuses to download when `offline()`.
pub fn fetch_cifar10_with_progress(
    url: &str,
    md5: &str,
    cache: &Path,
    archive: Option<&Path>,
) -> Result<PathBuf> {
    if archive.is_none() && offline() {
        return Err(Error::Msg(offline_help()));
    }
    let mut p = DownloadProgress::new();
    let r = fetch_cifar10(url, md5, cache, archive, &mut |d, t| p.update(d, t));
    p.finish();
    r
}
