//! Per-layer selection of the feature maps to prune (spec section 3, step 4) and the scan report.
//!
//! Selection: in each conv, the `floor(C / p)` channels with the lowest FRG score; ties go to the lower mean
//! true-class probability, then the lower channel index (a total, deterministic order; the reference's
//! unstable sort is defect 3). `--reference-order` reproduces defect 4: rankings computed in execution order
//! are applied to the convs in PyTorch *registration* order, which differs inside the three downsampling
//! blocks (execution: shortcut, conv1, conv2; registration: conv1, conv2, shortcut).
use std::cmp::Ordering;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Parse `4/255`, `0.0157` or `1e-2` into a float.
pub fn parse_fraction(s: &str) -> Result<f32> {
    let bad = || {
        Error::InvalidArgument(format!(
            "cannot read '{s}' as a number: write e.g. 4/255 or 0.0157"
        ))
    };
    let v = match s.split_once('/') {
        Some((a, b)) => {
            let a: f64 = a.trim().parse().map_err(|_| bad())?;
            let b: f64 = b.trim().parse().map_err(|_| bad())?;
            if b == 0.0 {
                return Err(bad());
            }
            a / b
        }
        None => s.trim().parse::<f64>().map_err(|_| bad())?,
    };
    if !v.is_finite() {
        return Err(bad());
    }
    Ok(v as f32)
}

/// The `floor(C / p)` channels with the lowest scores (ties: lower `true_prob`, then lower index), ascending
/// by that order.
pub fn select_lowest(scores: &[f32], true_prob: &[f32], p: usize) -> Result<Vec<usize>> {
    let c = scores.len();
    if p == 0 {
        return Err(Error::InvalidArgument("--p must be at least 1".into()));
    }
    if p > c {
        return Err(Error::InvalidArgument(format!(
            "--p {p} is larger than a layer's width ({c} channels): it would select nothing there; use --p {c} or less"
        )));
    }
    assert_eq!(true_prob.len(), c);
    let mut order: Vec<usize> = (0..c).collect();
    order.sort_by(|&a, &b| {
        cmp_f32(scores[a], scores[b])
            .then(cmp_f32(true_prob[a], true_prob[b]))
            .then(a.cmp(&b))
    });
    order.truncate(c / p);
    Ok(order)
}

/// NaN sorts first (a channel whose scoring produced NaN is the most suspicious, never silently kept).
fn cmp_f32(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.partial_cmp(&b).unwrap(),
    }
}

/// Position of each conv (given in execution order by name) in PyTorch registration order.
/// Registration order: `conv1`, then per block `conv1`, `conv2`, `shortcut.0`.
pub fn registration_order(exec_names: &[String]) -> Vec<usize> {
    let key = |name: &str| -> (usize, usize, usize) {
        if name == "conv1" {
            return (0, 0, 0);
        }
        let parts: Vec<&str> = name.split('.').collect();
        let layer = parts
            .first()
            .and_then(|l| l.strip_prefix("layer"))
            .and_then(|l| l.parse().ok())
            .unwrap_or(usize::MAX);
        let block = parts
            .get(1)
            .and_then(|b| b.parse().ok())
            .unwrap_or(usize::MAX);
        let kind = match parts.get(2).copied() {
            Some("conv1") => 0,
            Some("conv2") => 1,
            _ => 2,
        };
        (layer, block, kind)
    };
    let mut reg: Vec<usize> = (0..exec_names.len()).collect();
    reg.sort_by_key(|&i| key(&exec_names[i]));
    // reg[r] = exec index of the r-th registered conv; invert to exec -> registration position.
    let mut pos = vec![0; exec_names.len()];
    for (r, &e) in reg.iter().enumerate() {
        pos[e] = r;
    }
    pos
}

/// `selected[e]` are per-conv selections in execution order; returns what the reference applies to each conv:
/// conv `e` gets the selection computed for the conv whose *execution* index equals `e`'s registration
/// position.
pub fn reference_order_remap(exec_names: &[String], selected: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let pos = registration_order(exec_names);
    (0..exec_names.len())
        .map(|e| selected[pos[e]].clone())
        .collect()
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReportModel {
    pub path: String,
    pub width: usize,
    pub num_classes: usize,
}

/// The FRG scan's parameters (images, p, alpha, eps, seed, selection order): in a report's
/// settings and in a partial scan's identity (`journal::ScanIdentity`) alike, flattened (its
/// fields are JSON keys of the object that holds it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScanParams {
    pub samples: usize,
    pub p: usize,
    pub alpha: f32,
    pub eps: f32,
    pub seed: u64,
    pub reference_order: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReportSettings {
    #[serde(flatten)]
    pub params: ScanParams,
    /// Where the clean scan images came from.
    pub data: String,
    pub device: String,
    /// Channels per batched chunk (0: the naive one-channel loop).
    pub chunk_channels: usize,
    /// Selection score: acc (accuracy, ties by true-class probability), prob or margin (`stability`).
    #[serde(default = "default_score")]
    pub score: String,
    /// Independent draws of images and noise (`scan --repeats`).
    #[serde(default = "one")]
    pub repeats: usize,
    /// How the repeats' scores are combined: mean or median.
    #[serde(default = "default_aggregate")]
    pub aggregate: String,
    /// FRG sign steps per feature map.
    #[serde(default = "one")]
    pub steps: usize,
}

fn default_score() -> String {
    "acc".into()
}
fn default_aggregate() -> String {
    "mean".into()
}
fn one() -> usize {
    1
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConvReport {
    /// Execution index (spec section 2).
    pub index: usize,
    pub name: String,
    pub channels: usize,
    /// FRG score per channel: accuracy on the adversarial batch for that channel.
    pub scores: Vec<f32>,
    /// Mean softmax probability of the true class on that batch (tie-break).
    pub true_prob: Vec<f32>,
    /// Mean logit margin (true-class logit minus the largest other); empty in older reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub margin: Vec<f32>,
    /// Channels to prune, in selection order.
    pub selected: Vec<usize>,
    /// With `--repeats R > 1`: spread and agreement of the repeats (the scores above are their aggregate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stability: Option<super::stability::ConvStability>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReportTotals {
    pub convs: usize,
    pub feature_maps: usize,
    pub selected: usize,
}

/// Version of the scan report's JSON layout (docs/report.md). A report without the field is version 1.
pub const SCAN_SCHEMA: u32 = 1;

fn schema_1() -> u32 {
    1
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScanReport {
    /// `SCAN_SCHEMA` of the engine that wrote it.
    #[serde(default = "schema_1")]
    pub schema: u32,
    pub model: ReportModel,
    pub settings: ReportSettings,
    pub convs: Vec<ConvReport>,
    pub totals: ReportTotals,
    pub seconds: f64,
    /// With `--repeats R > 1`: agreement between the repeats over all convs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stability: Option<super::stability::StabilitySummary>,
    /// With `--attack`: selected maps among the most trigger-sensitive ones, against chance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<super::controls::TriggerDiagnostic>,
}

impl ScanReport {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let r: ScanReport = serde_json::from_str(&text).map_err(|e| Error::File {
            path: path.into(),
            msg: format!("not a scan report: {e}"),
        })?;
        if r.schema > SCAN_SCHEMA {
            return Err(Error::File {
                path: path.into(),
                msg: format!(
                    "scan report schema {} is newer than this engine reads ({SCAN_SCHEMA}): use a newer fmp-engine",
                    r.schema
                ),
            });
        }
        for c in &r.convs {
            if c.scores.len() != c.channels
                || c.true_prob.len() != c.channels
                || !(c.margin.is_empty() || c.margin.len() == c.channels)
            {
                return Err(Error::File {
                    path: path.into(),
                    msg: format!(
                        "conv {}: {} channels but {} scores / {} probabilities",
                        c.name,
                        c.channels,
                        c.scores.len(),
                        c.true_prob.len()
                    ),
                });
            }
            if let Some(&bad) = c.selected.iter().find(|&&s| s >= c.channels) {
                return Err(Error::File {
                    path: path.into(),
                    msg: format!(
                        "conv {}: selected channel {bad} out of range 0..{}",
                        c.name, c.channels
                    ),
                });
            }
        }
        Ok(r)
    }
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Msg(format!("serialising report: {e}")))?;
        super::write_atomic(path, text.as_bytes())
    }
}
