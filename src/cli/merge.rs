//! `fmp-engine merge PARTS... --out report.json`: combine the partial reports of `scan --shard I/N` into
//! the report one unsharded scan writes (same weights hash, images and settings in every part; every
//! feature map scored exactly once; the same per-conv selection).
use std::path::PathBuf;

use fmp_engine::fmp::journal::PartialScan;
use fmp_engine::Result;

use super::common::JsonOut;
use super::scan::{print_summary, report_from_parts, report_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Partial reports written by `scan --shard I/N --out PART`.
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
    /// The merged scan report.
    #[arg(long)]
    pub out: PathBuf,
    /// Print one JSON object on stdout (the fields of `scan --json`, plus `parts`); the text goes to
    /// stderr.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let _lock = super::check::claim_out(&a.out)?;
    let json = JsonOut::begin(a.json)?;
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
    let mut v = report_json(&report, &a.out, None);
    v["parts"] = serde_json::json!(names);
    json.emit(&v)
}
