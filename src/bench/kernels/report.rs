//! Reporting: the table printed per case, the JSON report and the commit it was run at.

use super::*;
use crate::backend::Backend;
use crate::bench::timing::BenchDevice;
use crate::error::{Error, Result};

/// The current commit (short hash), when run inside a git checkout.
pub fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Header and one line per result, for terminals and RESULTS.md.
pub fn table_header() -> String {
    format!(
        "{:<58} {:>10} {:>9} {:>9} {:>8} {:>7}  {}",
        "kernel", "median", "GFLOP/s", "GB/s", "%peakFL", "%roof", "check"
    )
}

pub fn table_line(r: &KernelResult) -> String {
    let check = match (&r.check, &r.error) {
        (Some(c), _) if c.passed => format!(
            "ok ({:.2})",
            c.worst_vs_reference
                .max(c.worst_vs_cpu_backend.unwrap_or(0.0))
        ),
        (_, Some(e)) => format!("ERROR: {e}"),
        _ => "-".into(),
    };
    match &r.time {
        Some(t) => format!(
            "{:<58} {:>10} {:>9.2} {:>9.2} {:>7.2}% {:>6.1}%  {}",
            r.name,
            fmt_time(t.median_s),
            r.gflops.unwrap_or(0.0),
            r.gbytes_per_s.unwrap_or(0.0),
            100.0 * r.frac_peak_flops.unwrap_or(0.0),
            100.0 * r.frac_roofline.unwrap_or(0.0),
            check
        ),
        None => format!(
            "{:<58} {:>10} {:>9} {:>9} {:>8} {:>7}  {}",
            r.name, "-", "-", "-", "-", "-", check
        ),
    }
}

pub fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}

/// Write `value` as pretty JSON to `path` (through a temporary file and a rename).
pub fn write_json<T: serde::Serialize>(path: &std::path::Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::File {
        path: path.into(),
        msg: e.to_string(),
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Run the suite on `be`, print a table line per case, write the JSON report to `json`, and print
/// the case furthest from its roofline. Returns the report; failed cases are listed in it.
pub fn run_and_report(
    dev: &BenchDevice,
    cpu: Option<&dyn Backend>,
    cfg: &SuiteConfig,
    json: Option<&std::path::Path>,
) -> Result<SuiteReport> {
    let be = dev.backend.as_ref();
    let ceil = crate::bench::device::ceilings_for(&be.name(), be.is_gpu());
    println!(
        "# kernels on {} (batch {}, width {})",
        be.name(),
        cfg.batch,
        cfg.width
    );
    println!("# ceilings: {}", ceil.source);
    println!("{}", table_header());
    let report = run_suite(dev, cpu, cfg, ceil, |r| println!("{}", table_line(r)));
    if let Some(w) = report.furthest_from_roofline() {
        println!(
            "# furthest from its roofline: {} at {:.1}% ({:.2} GFLOP/s, {:.2} GB/s)",
            w.name,
            100.0 * w.frac_roofline.unwrap_or(0.0),
            w.gflops.unwrap_or(0.0),
            w.gbytes_per_s.unwrap_or(0.0)
        );
    }
    let timed: Vec<&KernelResult> = report.results.iter().filter(|r| r.time.is_some()).collect();
    if !timed.is_empty() {
        let t: f64 = timed
            .iter()
            .map(|r| r.time.as_ref().unwrap().median_s)
            .sum();
        let f: u64 = timed.iter().map(|r| r.flops).sum();
        println!(
            "# {} cases timed, {} in total, {:.2} GFLOP/s overall",
            timed.len(),
            fmt_time(t),
            f as f64 / t / 1e9
        );
    }
    if let Some(path) = json {
        write_json(path, &report)?;
        println!("# wrote {}", path.display());
    }
    Ok(report)
}
