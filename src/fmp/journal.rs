//! Partial scans: the one mechanism behind the scan journal (`scan --resume`), shards (`scan --shard I/N`)
//! and `merge`.
//!
//! A [`PartialScan`] holds what identifies a scan ([`ScanIdentity`]: the MD5 of the weights file and of
//! the chosen scan images, the model's layout and every setting that changes a score or the selection)
//! and the scores of the slices ([`Slice`]: channels `start..end` of one conv) finished so far. `scan`
//! rewrites it atomically next to its `--out` after every finished slice (the journal,
//! `<out>.journal.json`); an interrupted scan (SIGKILL included) continues from it with `--resume`, which
//! refuses a journal whose identity differs. A shard's complete partial scan is its `--out`; [`merge`]
//! checks that the parts share one identity and cover every feature map exactly once, then hands the
//! per-conv scores to the same selection as an unsharded scan (`frg::select_convs`).
//!
//! Shards are balanced by counted cost ([`shard_slices`]): every (conv, channel) costs one one-hot
//! backward below its conv, one sign step and one scoring forward (`bench::count::Arch::scan`), and the
//! channels, in execution order, are cut where the running cost crosses i/N of the total.
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::frg::{select_convs, LayerScores, Slice};
use super::select::{reference_order_remap, ConvReport, ScanParams};
use super::stability::{select_by, ScoreKind};
use crate::bench::count::Arch;
use crate::error::{Error, Result};
use crate::model::PreActResNet18;

/// MD5 of the weights file (`download::md5_file`).
pub use super::download::md5_file as weights_md5;

/// The `format` field of every partial scan this version writes.
pub const FORMAT: &str = "fmp-engine partial scan 2";

/// Everything that must agree for two partial scans to belong to one scan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanIdentity {
    /// MD5 of the weights file's bytes.
    pub weights_md5: String,
    /// MD5 of the scan images (pixels as f32 bits) and their labels.
    pub images_md5: String,
    pub width: usize,
    pub num_classes: usize,
    /// (name, channels) of every conv, in execution order.
    pub convs: Vec<(String, usize)>,
    #[serde(flatten)]
    pub params: ScanParams,
    /// Selection score (`stability::ScoreKind::name`: acc, prob or margin).
    pub score: String,
    /// Draws of scan images and X0 (`scan --repeats`); a journal or shard holds one draw, so always 1
    /// today: `scan` refuses --resume/--shard with --repeats > 1.
    pub repeats: usize,
    /// How repeats are combined (`stability::Aggregate::name`).
    pub aggregate: String,
    /// FRG sign steps per feature map.
    pub steps: usize,
}

impl ScanIdentity {
    /// Field-by-field differences to `other` ("seed: 0 here, 1 there").
    pub fn differences(&self, other: &ScanIdentity) -> Vec<String> {
        let mut d = Vec::new();
        macro_rules! cmp {
            ($a:expr, $b:expr; $($f:ident),*) => {$(
                if $a.$f != $b.$f {
                    d.push(format!("{}: {:?} vs {:?}", stringify!($f), $a.$f, $b.$f));
                }
            )*};
        }
        cmp!(self, other; weights_md5, images_md5, width, num_classes);
        let (a, b) = (&self.params, &other.params);
        cmp!(a, b; samples, p, alpha, eps, seed, reference_order);
        cmp!(self, other; score, repeats, aggregate, steps);
        if self.convs != other.convs {
            d.push("convs: the models' layouts differ".into());
        }
        d
    }
}

/// MD5 of scan images and labels, in hex.
pub fn images_md5(pixels: &[f32], labels: &[u32]) -> String {
    let mut h = Md5::new();
    for v in pixels {
        h.update(v.to_bits().to_le_bytes());
    }
    for y in labels {
        h.update(y.to_le_bytes());
    }
    format!("{:x}", h.finalize())
}

/// (name, channels) of the model's convs in execution order.
pub fn conv_layout(model: &PreActResNet18) -> Vec<(String, usize)> {
    model
        .convs()
        .iter()
        .map(|c| (c.name.clone(), c.params.output_shape()[1]))
        .collect()
}

/// The scores of one finished slice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SliceScores {
    #[serde(flatten)]
    pub slice: Slice,
    pub scores: Vec<f32>,
    pub true_prob: Vec<f32>,
    /// Mean logit margins (`frg::LayerScores::margin`).
    pub margin: Vec<f32>,
    /// Channels per batched chunk (0: the naive loop).
    pub chunk: usize,
    pub seconds: f64,
}

/// A scan's finished slices: a journal while `complete` is false, a shard's partial report once true.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartialScan {
    pub format: String,
    pub identity: ScanIdentity,
    /// (I, N): the I-th of N shards (1-based); (1, 1) for an unsharded scan.
    pub shard: (usize, usize),
    /// The slices this scan (or shard) is to score, in order.
    pub plan: Vec<Slice>,
    pub done: Vec<SliceScores>,
    pub complete: bool,
    /// Informational: the weights path, data folder and device as given (not part of the identity).
    pub weights: String,
    pub data: String,
    pub device: String,
}

impl PartialScan {
    pub fn new(
        identity: ScanIdentity,
        shard: (usize, usize),
        plan: Vec<Slice>,
        weights: String,
        data: String,
        device: String,
    ) -> Self {
        PartialScan {
            format: FORMAT.into(),
            identity,
            shard,
            plan,
            done: Vec::new(),
            complete: false,
            weights,
            data,
            device,
        }
    }

    /// The planned slices not yet done.
    pub fn remaining(&self) -> Vec<Slice> {
        self.plan
            .iter()
            .filter(|s| !self.done.iter().any(|d| &d.slice == *s))
            .cloned()
            .collect()
    }

    pub fn channels_done(&self) -> usize {
        self.done.iter().map(|d| d.slice.end - d.slice.start).sum()
    }

    pub fn channels_planned(&self) -> usize {
        self.plan.iter().map(|s| s.end - s.start).sum()
    }

    /// Record a finished slice.
    pub fn push(&mut self, slice: &Slice, ls: LayerScores, chunk: usize, seconds: f64) {
        self.done.push(SliceScores {
            slice: slice.clone(),
            scores: ls.scores,
            true_prob: ls.true_prob,
            margin: ls.margin,
            chunk,
            seconds,
        });
        self.complete = self.remaining().is_empty();
    }

    /// Write atomically (temporary file in the same folder, fsync, rename): a reader, or a scan resumed
    /// after SIGKILL, sees the previous or the new version, never a torn one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(self)
            .map_err(|e| Error::Msg(format!("serialising partial scan: {e}")))?;
        crate::weights::write_atomic(path, text.as_bytes())
    }

    /// Read and check a partial scan: format, slices inside the model's layout, score counts.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::File {
            path: path.into(),
            msg,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        if len > 1 << 30 {
            return Err(bad(format!("{len} bytes: too large for a partial scan")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let p: PartialScan = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not a partial scan (journal or shard report): {e}")))?;
        if p.format != FORMAT {
            return Err(bad(format!(
                "format '{}', this version reads '{FORMAT}'",
                p.format
            )));
        }
        let (i, n) = p.shard;
        if i == 0 || i > n {
            return Err(bad(format!("shard {i}/{n} out of range")));
        }
        let layout = &p.identity.convs;
        let check = |s: &Slice| -> Result<()> {
            match layout.get(s.conv) {
                Some((_, ch)) if s.start < s.end && s.end <= *ch => Ok(()),
                _ => Err(bad(format!(
                    "slice {}..{} of conv {} is outside the model's layout",
                    s.start, s.end, s.conv
                ))),
            }
        };
        for s in &p.plan {
            check(s)?;
        }
        for d in &p.done {
            check(&d.slice)?;
            let n = d.slice.end - d.slice.start;
            if d.scores.len() != n || d.true_prob.len() != n || d.margin.len() != n {
                return Err(bad(format!(
                    "slice {}..{} of conv {}: {} scores / {} probabilities / {} margins for {n} channels",
                    d.slice.start,
                    d.slice.end,
                    d.slice.conv,
                    d.scores.len(),
                    d.true_prob.len(),
                    d.margin.len()
                )));
            }
            if !p.plan.contains(&d.slice) {
                return Err(bad(format!(
                    "slice {}..{} of conv {} was scored but is not in the plan",
                    d.slice.start, d.slice.end, d.slice.conv
                )));
            }
        }
        if p.complete != p.remaining().is_empty() {
            return Err(bad("'complete' disagrees with the scored slices".into()));
        }
        Ok(p)
    }
}

/// The journal of a scan writing `out`: `<out>.journal.json`.
pub fn journal_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".journal.json");
    PathBuf::from(s)
}

/// Counted cost (FLOPs) of scoring one channel of each conv with `b` samples.
pub fn channel_costs(model: &PreActResNet18, b: usize) -> Result<Vec<u64>> {
    let cfg = model.config();
    let arch = Arch::preact_resnet18(cfg.width, cfg.num_classes);
    let names: Vec<String> = arch.convs().into_iter().map(|(n, _)| n).collect();
    let ours: Vec<String> = model.convs().iter().map(|c| c.name.clone()).collect();
    if names != ours {
        return Err(Error::Msg(
            "internal: the FLOP counter's conv order differs from the model's".into(),
        ));
    }
    let all: Vec<usize> = (0..names.len()).collect();
    Ok(arch
        .scan(b as u64, &all, None)
        .per_conv
        .iter()
        .map(|c| (c.per_channel_backward + c.per_channel_step + c.per_channel_score).flops)
        .collect())
}

/// The slices of shard `i` of `n` (1-based): every (conv, channel) in execution order, cut where the running
/// counted cost crosses (i-1)/N and i/N of the total (a channel goes to the shard holding the midpoint of
/// its cost), so shards do equal work rather than equal channel counts. May be empty when N exceeds the
/// channel count.
pub fn shard_slices(model: &PreActResNet18, b: usize, i: usize, n: usize) -> Result<Vec<Slice>> {
    if i == 0 || i > n {
        return Err(Error::InvalidArgument(format!(
            "--shard {i}/{n}: need 1 <= I <= N"
        )));
    }
    let costs = channel_costs(model, b)?;
    let layout = conv_layout(model);
    let total: f64 = layout
        .iter()
        .zip(&costs)
        .map(|((_, ch), &c)| *ch as f64 * c as f64)
        .sum();
    let (lo, hi) = (
        total * (i - 1) as f64 / n as f64,
        total * i as f64 / n as f64,
    );
    let mut out: Vec<Slice> = Vec::new();
    let mut cum = 0f64;
    for (l, ((_, ch), &c)) in layout.iter().zip(&costs).enumerate() {
        for k in 0..*ch {
            let mid = cum + c as f64 / 2.0;
            cum += c as f64;
            let mine = mid >= lo && (mid < hi || (i == n && mid <= hi));
            if !mine {
                continue;
            }
            match out.last_mut() {
                Some(s) if s.conv == l && s.end == k => s.end = k + 1,
                _ => out.push(Slice {
                    conv: l,
                    start: k,
                    end: k + 1,
                }),
            }
        }
    }
    Ok(out)
}

/// Per-conv scores assembled from complete partial scans that share one identity and together score
/// every feature map exactly once. `names[i]` names part i in errors.
pub fn merge(parts: &[PartialScan], names: &[String]) -> Result<(ScanIdentity, Vec<LayerScores>)> {
    let first = parts
        .first()
        .ok_or_else(|| Error::InvalidArgument("merge: no parts given".into()))?;
    for (p, name) in parts.iter().zip(names) {
        let d = first.identity.differences(&p.identity);
        if !d.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{name} is from a different scan than {} ({})",
                names[0],
                d.join("; ")
            )));
        }
        if !p.complete {
            return Err(Error::InvalidArgument(format!(
                "{name} is an unfinished scan ({} of {} channels scored): finish it with scan --resume",
                p.channels_done(),
                p.channels_planned()
            )));
        }
    }
    let layout = &first.identity.convs;
    let mut scores: Vec<Vec<Option<(f32, f32, f32)>>> =
        layout.iter().map(|(_, ch)| vec![None; *ch]).collect();
    for (p, name) in parts.iter().zip(names) {
        for d in &p.done {
            for (j, c) in (d.slice.start..d.slice.end).enumerate() {
                let cell = &mut scores[d.slice.conv][c];
                if cell.is_some() {
                    return Err(Error::InvalidArgument(format!(
                        "feature map {c} of {} is scored twice ({name} and an earlier part)",
                        layout[d.slice.conv].0
                    )));
                }
                *cell = Some((d.scores[j], d.true_prob[j], d.margin[j]));
            }
        }
    }
    let mut out = Vec::with_capacity(layout.len());
    for ((name, _), cells) in layout.iter().zip(scores) {
        let missing: Vec<usize> = (0..cells.len()).filter(|&c| cells[c].is_none()).collect();
        if !missing.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{} of the {} feature maps of {name} are in no part (first: {}); a shard is missing",
                missing.len(),
                cells.len(),
                missing[0]
            )));
        }
        let mut ls = LayerScores::default();
        for (s, t, m) in cells.into_iter().flatten() {
            ls.scores.push(s);
            ls.true_prob.push(t);
            ls.margin.push(m);
        }
        out.push(ls);
    }
    Ok((first.identity.clone(), out))
}

/// Selection over merged scores, exactly as one scan selects (`stability::scan_repeated` with one
/// repeat): per conv by the identity's score kind, then `--reference-order`'s remap.
pub fn select(identity: &ScanIdentity, scores: Vec<LayerScores>) -> Result<Vec<ConvReport>> {
    if identity.repeats != 1 {
        return Err(Error::InvalidArgument(format!(
            "a partial scan holds one draw of scan images, not --repeats {}",
            identity.repeats
        )));
    }
    let kind: ScoreKind = identity.score.parse()?;
    let convs: Vec<(usize, String)> = identity
        .convs
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (i, n.clone()))
        .collect();
    let mut out = select_convs(&convs, scores, identity.params.p, false)?;
    if kind != ScoreKind::Acc {
        for c in out.iter_mut() {
            c.selected = select_by(kind, c, identity.params.p)?;
        }
    }
    if identity.params.reference_order {
        let names: Vec<String> = out.iter().map(|c| c.name.clone()).collect();
        let sel: Vec<Vec<usize>> = out.iter().map(|c| c.selected.clone()).collect();
        for (c, s) in out.iter_mut().zip(reference_order_remap(&names, &sel)) {
            c.selected = s;
        }
    }
    Ok(out)
}
