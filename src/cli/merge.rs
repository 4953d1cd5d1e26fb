//! `fmp-engine merge PARTS... --out report.json`: combine the partial reports of `scan --shard I/N` into
//! the report one unsharded scan writes (same weights hash, images and settings in every part; every
//! feature map scored exactly once; the same per-conv selection).
use std::path::PathBuf;

use fmp_engine::fmp::journal::PartialScan;
use fmp_engine::Result;

use super::scan::{print_summary, report_from_parts};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Partial reports written by `scan --shard I/N --out PART`.
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
    /// The merged scan report.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    super::check::output_path(&a.out, "--out")?;
    let _lock = super::check::lock_output(&a.out, "--out")?;
    let mut parts = Vec::new();
    for p in &a.parts {
        super::check::input_file(p, "PART")?;
        parts.push(PartialScan::load(p)?);
    }
    let names: Vec<String> = a.parts.iter().map(|p| p.display().to_string()).collect();
    let report = report_from_parts(&parts, &names)?;
    report.save(&a.out)?;
    print_summary(&report);
    println!("merged {} parts into {}", parts.len(), a.out.display());
    Ok(())
}
