//! Pruning (spec section 4): for every selected (conv, channel) of a scan report, zero that output filter and
//! the gamma of the BN named by the model's `ConvInfo::pruned_bn` (beta is kept, as in the reference).
//!
//! `--mask`: the pruned channels are also written to a sidecar JSON file next to the output weights,
//! `<weights>.mask.json` (`{"pruned": {"<conv name>": [channels...]}}`), so the safetensors file stays a plain
//! PyTorch state_dict. `finetune` picks the sidecar up (or takes `--mask FILE`) and keeps those filters and
//! gammas at zero after every SGD step (`PreActResNet18::set_masks`).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::select::ScanReport;
use crate::error::{Error, Result};
use crate::model::PreActResNet18;

/// (conv index, channel) pairs to prune, checked against the model: every conv of the model must be in the
/// report under the same name with the same channel count, and nothing else.
pub fn selections(
    model: &PreActResNet18,
    report: &ScanReport,
    report_path: &Path,
) -> Result<Vec<(usize, usize)>> {
    let err = |msg: String| Error::File {
        path: report_path.into(),
        msg: format!("{msg}; was this report made for this model?"),
    };
    let convs = model.convs();
    if report.convs.len() != convs.len() {
        return Err(err(format!(
            "report lists {} convs, the model has {}",
            report.convs.len(),
            convs.len()
        )));
    }
    let mut out = Vec::new();
    for rc in &report.convs {
        let ci = model.conv_index(&rc.name).ok_or_else(|| {
            err(format!(
                "conv '{}' of the report is not in the model",
                rc.name
            ))
        })?;
        let ch = convs[ci].params.c_out as usize;
        if rc.channels != ch {
            return Err(err(format!(
                "conv '{}' has {} channels in the report but {ch} in the model",
                rc.name, rc.channels
            )));
        }
        for &c in &rc.selected {
            if c >= ch {
                return Err(err(format!(
                    "conv '{}': selected channel {c} out of range 0..{ch}",
                    rc.name
                )));
            }
            out.push((ci, c));
        }
    }
    let mut seen: Vec<&str> = report.convs.iter().map(|c| c.name.as_str()).collect();
    seen.sort_unstable();
    if seen.windows(2).any(|w| w[0] == w[1]) {
        return Err(err("a conv appears twice in the report".into()));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Zero the given filters and their `pruned_bn` gammas in place.
pub fn apply(model: &mut PreActResNet18, pruned: &[(usize, usize)]) -> Result<()> {
    for &(conv, ch) in pruned {
        model.zero_channel(conv, ch)?;
    }
    Ok(())
}

/// Pruned channels by conv name (the `--mask` sidecar).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PruneMask {
    pub pruned: BTreeMap<String, Vec<usize>>,
}

impl PruneMask {
    pub fn from_pairs(model: &PreActResNet18, pruned: &[(usize, usize)]) -> Self {
        let mut m = PruneMask::default();
        for &(conv, ch) in pruned {
            m.pruned
                .entry(model.convs()[conv].name.clone())
                .or_default()
                .push(ch);
        }
        m
    }
    /// (conv index, channel) pairs for `model`; unknown names or channels are errors naming `path`.
    pub fn pairs(&self, model: &PreActResNet18, path: &Path) -> Result<Vec<(usize, usize)>> {
        let mut out = Vec::new();
        for (name, chs) in &self.pruned {
            let ci = model.conv_index(name).ok_or_else(|| Error::File {
                path: path.into(),
                msg: format!("mask names conv '{name}', which the model lacks"),
            })?;
            let cout = model.convs()[ci].params.c_out as usize;
            for &c in chs {
                if c >= cout {
                    return Err(Error::File {
                        path: path.into(),
                        msg: format!("mask channel {c} out of range 0..{cout} of {name}"),
                    });
                }
                out.push((ci, c));
            }
        }
        Ok(out)
    }
    /// Sidecar path for a weights file: `<weights>.mask.json`.
    pub fn sidecar(weights: &Path) -> PathBuf {
        let mut s = weights.as_os_str().to_owned();
        s.push(".mask.json");
        PathBuf::from(s)
    }
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Msg(format!("serialising mask: {e}")))?;
        super::write_atomic(path, text.as_bytes())
    }
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::File {
            path: path.into(),
            msg: format!("not a prune mask: {e}"),
        })
    }
}
