//! What people look at rather than read: the scan plot (`scan --plot`), the defense report
//! (`defend --report DIR`: `report.html` with inline SVG, `scan.svg`, `summary.json`) and the summary that
//! `defend --json` prints. Everything is drawn from report objects (a `ScanReport`, a `DefendSummary`),
//! so it can be tested on synthetic reports without running a scan. Format: `docs/report.md`.
pub mod html;
pub mod plot;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::fmp::metrics::Metrics;
use crate::fmp::select::ScanReport;

/// Version of the `DefendSummary` JSON layout.
pub const DEFEND_SCHEMA: u32 = 1;

/// Acc / ASR / RA at one stage of a defense.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Stage {
    /// `before`, `after pruning` or `after fine-tuning`.
    pub stage: String,
    #[serde(flatten)]
    pub metrics: Metrics,
}

/// One `defend` run: what went in, the metrics at each stage, how to reproduce it.
#[derive(Clone, Debug, Serialize)]
pub struct DefendSummary {
    pub schema: u32,
    /// Input weights.
    pub weights: String,
    /// Defended weights.
    pub out: String,
    /// The scan report (JSON) written by the run.
    pub scan_report: String,
    /// Dataset folder and kind.
    pub data: String,
    pub dataset: String,
    pub device: String,
    /// Attack whose ASR/RA were measured (None: clean accuracy only).
    pub attack: Option<String>,
    pub target: Option<u32>,
    /// Pruned filters kept at zero during fine-tuning.
    pub mask: bool,
    /// Feature maps pruned.
    pub pruned: usize,
    /// Metrics on the test split's first `stages[_].n` images; empty when nothing was evaluated.
    pub stages: Vec<Stage>,
    /// Fine-tuning settings (the scan's are in the scan report).
    pub finetune: serde_json::Value,
    /// Wall-clock seconds: the scan, and the whole defense (scan, prune, fine-tune; not evaluation).
    pub scan_seconds: f64,
    pub defend_seconds: f64,
    /// The command line of this run, shell-quoted.
    pub command: String,
    /// The same defense one subcommand at a time (scan, prune, finetune, eval), shell-quoted.
    pub reproduce: Vec<String>,
}

/// Write `report.html`, `scan.svg` and `summary.json` into `dir` (created if needed; each file through a
/// temporary file and a rename). Returns the path of `report.html`.
pub fn write_defend_report(
    dir: &Path,
    summary: &DefendSummary,
    scan: &ScanReport,
) -> Result<PathBuf> {
    if dir.is_file() {
        return Err(Error::File {
            path: dir.into(),
            msg: "--report names a folder for report.html, but this is a file".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let scan_svg = plot::scan_plot_svg(scan)?;
    let page = html::defend_report_html(summary, scan, &scan_svg)?;
    crate::fmp::write_atomic(&dir.join("scan.svg"), scan_svg.as_bytes())?;
    let json = serde_json::to_string_pretty(summary)
        .map_err(|e| Error::Msg(format!("serialising the summary: {e}")))?;
    crate::fmp::write_atomic(&dir.join("summary.json"), json.as_bytes())?;
    let path = dir.join("report.html");
    crate::fmp::write_atomic(&path, page.as_bytes())?;
    Ok(path)
}

/// `arg` as a POSIX shell word: unchanged when it holds only safe characters, else single-quoted.
pub fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// A command line from its words.
pub fn shell_line<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `k/255` when `v` is one (the way the scan's steps are usually written), else `v` in full precision.
pub fn fraction_arg(v: f32) -> String {
    let k = (v * 255.0).round();
    if k != 0.0 && k / 255.0 == v {
        format!("{k}/255")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a/b-c.safetensors"), "a/b-c.safetensors");
        assert_eq!(shell_quote("with space"), "'with space'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_line(&["scan", "m x"]), "scan 'm x'");
    }

    #[test]
    fn fractions() {
        assert_eq!(fraction_arg(4.0 / 255.0), "4/255");
        assert_eq!(fraction_arg(1.0 / 255.0), "1/255");
        assert_eq!(fraction_arg(0.01), "0.01");
        assert_eq!(
            crate::fmp::select::parse_fraction(&fraction_arg(0.0157)).unwrap(),
            0.0157
        );
    }
}
