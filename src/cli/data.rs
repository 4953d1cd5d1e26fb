//! `fmp-engine data cifar10 [--dir DIR]`: download CIFAR-10 (binary version) from its official address into
//! the engine's cache (or DIR), verify its MD5, unpack it.
use std::path::PathBuf;

use fmp_engine::fmp::download::{
    fetch_cifar10_with_progress, offline, CIFAR10_DIR, CIFAR10_MD5, CIFAR10_URL,
};
use fmp_engine::fmp::pipeline::cache_dir;
use fmp_engine::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset to fetch (only cifar10 can be downloaded; CIFAR-100 and GTSRB are read from --data folders).
    pub dataset: String,
    /// Where to put it [default: the engine's cache, $FMP_CACHE or ~/.cache/fmp-engine].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Unpack this already-downloaded cifar-10-binary.tar.gz instead of downloading (checksum still verified).
    #[arg(long)]
    pub archive: Option<PathBuf>,
    /// Download from this address instead (a mirror); the checksum must still match --md5.
    #[arg(long, default_value = CIFAR10_URL)]
    pub url: String,
    #[arg(long, default_value = CIFAR10_MD5)]
    pub md5: String,
    /// Download again even when the folder exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: Args) -> Result<()> {
    if !a.dataset.eq_ignore_ascii_case("cifar10") {
        return Err(Error::InvalidArgument(format!(
            "cannot download '{}': only cifar10 is supported (put CIFAR-100 or GTSRB binaries in a folder and pass --data)",
            a.dataset
        )));
    }
    let dir = a.dir.clone().unwrap_or_else(cache_dir);
    let dest = dir.join(CIFAR10_DIR);
    if !a.force && fmp_engine::data::detect(&dest).is_ok() {
        println!(
            "CIFAR-10 is already in {} (use --force to fetch it again)",
            dest.display()
        );
        return Ok(());
    }
    if a.archive.is_none() && !offline() {
        println!("downloading {} into {}", a.url, dir.display());
    }
    let out = fetch_cifar10_with_progress(&a.url, &a.md5, &dir, a.archive.as_deref())?;
    println!("CIFAR-10 ready (MD5 verified): {}", out.display());
    if a.dir.is_some() {
        println!(
            "use it with --data {} or FMP_DATA={}",
            out.display(),
            out.display()
        );
    }
    Ok(())
}
