//! The selection as a measured quantity (`scan --repeats R --score acc|prob|margin --aggregate mean|median`).
//!
//! Repeat r draws its own scan images and X0 noise from seed `repeat_seed(seed, r)` (repeat 0 uses the seed
//! itself, so R = 1 is the plain scan). Per conv, the report keeps the aggregate (mean or median over the
//! repeats) of every per-map quantity (accuracy, mean true-class probability, mean logit margin) and the
//! spread (standard deviation over repeats) of the selection score, and measures how well the repeats
//! agree: the share of selected maps two repeats have in common and the Kendall tau (tau-b, ties allowed) of
//! their per-map scores, averaged over all pairs of repeats. The final selection is made from the aggregate.
//!
//! Selection scores: `acc` (the spec: accuracy, ties by lower true-class probability), `prob` (mean
//! true-class probability, ties by accuracy) and `margin` (mean logit margin, ties by accuracy); all pick
//! the lowest floor(C/p) maps per conv, ties last by channel index (`select::select_lowest`).
use serde::{Deserialize, Serialize};

use super::frg::{scan, ScanOptions};
use super::pipeline::scan_samples;
use super::rng::Rng;
use super::select::{reference_order_remap, select_lowest, ConvReport};
use super::LabeledImages;
use crate::error::{Error, Result};
use crate::model::PreActResNet18;

/// The per-map quantity the selection ranks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreKind {
    Acc,
    Prob,
    Margin,
}

crate::named_enum! {
    ScoreKind {
        Acc => "acc" | "accuracy",
        Prob => "prob" | "probability",
        Margin => "margin",
    } else |s| format!("--score '{s}': expected acc, prob or margin")
}

impl ScoreKind {
    /// (ranking score, tie-break) of a conv's report under this kind.
    pub fn keys<'a>(&self, c: &'a ConvReport) -> Result<(&'a [f32], &'a [f32])> {
        match self {
            ScoreKind::Acc => Ok((&c.scores, &c.true_prob)),
            ScoreKind::Prob => Ok((&c.true_prob, &c.scores)),
            ScoreKind::Margin => {
                if c.margin.len() != c.channels {
                    return Err(Error::InvalidArgument(format!(
                        "--score margin: conv {} has no logit margins (a report from an older scan?)",
                        c.name
                    )));
                }
                Ok((&c.margin, &c.scores))
            }
        }
    }
}

/// How repeats are combined per map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    Mean,
    Median,
}

crate::named_enum! {
    Aggregate {
        Mean => "mean",
        Median => "median",
    } else |s| format!("--aggregate '{s}': expected mean or median")
}

impl Aggregate {
    fn of(&self, v: &mut [f32]) -> f32 {
        match self {
            Aggregate::Mean => (v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64) as f32,
            Aggregate::Median => {
                v.sort_by(|a, b| a.total_cmp(b));
                let n = v.len();
                if n % 2 == 1 {
                    v[n / 2]
                } else {
                    0.5 * (v[n / 2 - 1] + v[n / 2])
                }
            }
        }
    }
}

/// Per conv, over the repeats.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConvStability {
    /// Standard deviation over repeats of each map's selection score.
    pub score_std: Vec<f32>,
    /// Mean over pairs of repeats of |S_r ∩ S_s| / |S_r| (1 when the conv selects nothing).
    pub common_share: f32,
    /// Mean over pairs of repeats of Kendall's tau-b between their per-map scores.
    pub kendall_tau: f32,
}

/// Over all convs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StabilitySummary {
    pub repeats: usize,
    /// The seed of each repeat (images and X0 noise).
    pub seeds: Vec<u64>,
    pub score: String,
    /// Mean over pairs of repeats of (maps selected by both) / (maps selected), all convs together.
    pub common_share: f32,
    /// The lowest pairwise share.
    pub min_common_share: f32,
    /// Mean over convs of the conv's mean pairwise Kendall tau.
    pub kendall_tau: f32,
}

impl StabilitySummary {
    /// The summary's one line.
    pub fn line(&self) -> String {
        format!(
            "stability over {} repeats ({} score): pairs of repeats share {:.0}% of selected maps (lowest pair {:.0}%), Kendall tau of per-map scores {:.2} (mean over convs)",
            self.repeats,
            self.score,
            100.0 * self.common_share,
            100.0 * self.min_common_share,
            self.kendall_tau
        )
    }
}

/// The seed of repeat `r`: `seed` itself for r = 0, else the r-th value of a stream derived from
/// `seed`, so two scan seeds never share a draw. (Until the seventh session it derived from
/// `seed ^ r`, so scan seeds 0 and 1 shared repeats 2 and 3 -- half of margin4's draws -- which
/// inflated the seed overlap of selections reported before then; docs/STUDY.md.)
pub fn repeat_seed(seed: u64, r: usize) -> u64 {
    if r == 0 {
        return seed;
    }
    let mut g = Rng::derive(seed, "scan-repeat");
    std::iter::repeat_with(|| g.next_u64())
        .nth(r - 1)
        .expect("an endless stream")
}

/// The floor(C/p) lowest maps of one conv under `kind`.
pub fn select_by(kind: ScoreKind, c: &ConvReport, p: usize) -> Result<Vec<usize>> {
    let (a, b) = kind.keys(c)?;
    select_lowest(a, b, p)
}

/// Kendall's tau-b of two equally long score vectors (ties in either count as neither concordant nor
/// discordant; 1 when one of them is constant and so is the other, 0 when only one is).
pub fn kendall_tau(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let n = a.len();
    let (mut conc, mut disc, mut ties_a, mut ties_b) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let da = a[i].total_cmp(&a[j]) as i64;
            let db = b[i].total_cmp(&b[j]) as i64;
            match (da, db) {
                (0, 0) => {}
                (0, _) => ties_a += 1,
                (_, 0) => ties_b += 1,
                _ if da == db => conc += 1,
                _ => disc += 1,
            }
        }
    }
    let na = (conc + disc + ties_b) as f64; // pairs not tied in a
    let nb = (conc + disc + ties_a) as f64;
    if na == 0.0 && nb == 0.0 {
        return 1.0;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    ((conc - disc) as f64 / (na * nb).sqrt()) as f32
}

/// |a ∩ b| / |a| (1 for an empty a).
pub fn share_in_common(a: &[usize], b: &[usize]) -> f32 {
    if a.is_empty() {
        return 1.0;
    }
    a.iter().filter(|x| b.contains(x)).count() as f32 / a.len() as f32
}

/// Per-pair share of selected maps in common over all convs: (common, selected) summed over convs.
pub fn selection_overlap(a: &[ConvReport], b: &[ConvReport]) -> (usize, usize) {
    let mut common = 0;
    let mut total = 0;
    for (x, y) in a.iter().zip(b) {
        common += x.selected.iter().filter(|s| y.selected.contains(s)).count();
        total += x.selected.len();
    }
    (common, total)
}

/// Combine the repeats' reports (each selected by `kind` in execution order) into one: aggregate scores,
/// spread, agreement, selection from the aggregate.
pub fn combine(
    reps: &[Vec<ConvReport>],
    seeds: &[u64],
    kind: ScoreKind,
    agg: Aggregate,
    p: usize,
) -> Result<(Vec<ConvReport>, StabilitySummary)> {
    let r = reps.len();
    if r == 0 {
        return Err(Error::InvalidArgument(
            "--repeats must be at least 1".into(),
        ));
    }
    let nconv = reps[0].len();
    let mut out = Vec::with_capacity(nconv);
    let mut taus = Vec::with_capacity(nconv);
    for ci in 0..nconv {
        let first = &reps[0][ci];
        let ch = first.channels;
        let gather = |f: &dyn Fn(&ConvReport) -> &[f32]| -> Vec<f32> {
            (0..ch)
                .map(|m| {
                    let mut v: Vec<f32> = reps.iter().map(|rep| f(&rep[ci])[m]).collect();
                    agg.of(&mut v)
                })
                .collect()
        };
        let has_margin = reps.iter().all(|rep| rep[ci].margin.len() == ch);
        let mut c = ConvReport {
            index: first.index,
            name: first.name.clone(),
            channels: ch,
            scores: gather(&|c| &c.scores),
            true_prob: gather(&|c| &c.true_prob),
            margin: if has_margin {
                gather(&|c| &c.margin)
            } else {
                Vec::new()
            },
            selected: Vec::new(),
            stability: None,
        };
        let keys: Vec<&[f32]> = reps
            .iter()
            .map(|rep| kind.keys(&rep[ci]).map(|k| k.0))
            .collect::<Result<_>>()?;
        let score_std = (0..ch)
            .map(|m| {
                let mean = keys.iter().map(|k| k[m] as f64).sum::<f64>() / r as f64;
                let var = keys
                    .iter()
                    .map(|k| (k[m] as f64 - mean).powi(2))
                    .sum::<f64>()
                    / r as f64;
                var.sqrt() as f32
            })
            .collect();
        let (mut share, mut tau, mut pairs) = (0f64, 0f64, 0usize);
        for a in 0..r {
            for b in a + 1..r {
                share += share_in_common(&reps[a][ci].selected, &reps[b][ci].selected) as f64;
                tau += kendall_tau(keys[a], keys[b]) as f64;
                pairs += 1;
            }
        }
        let (share, tau) = if pairs == 0 {
            (1.0, 1.0)
        } else {
            ((share / pairs as f64) as f32, (tau / pairs as f64) as f32)
        };
        taus.push(tau);
        c.selected = select_by(kind, &c, p)?;
        c.stability = Some(ConvStability {
            score_std,
            common_share: share,
            kendall_tau: tau,
        });
        out.push(c);
    }
    let mut shares = Vec::new();
    for a in 0..r {
        for b in a + 1..r {
            let (common, total) = selection_overlap(&reps[a], &reps[b]);
            shares.push(if total == 0 {
                1.0
            } else {
                common as f32 / total as f32
            });
        }
    }
    if shares.is_empty() {
        shares.push(1.0);
    }
    let summary = StabilitySummary {
        repeats: r,
        seeds: seeds.to_vec(),
        score: kind.name().into(),
        common_share: shares.iter().sum::<f32>() / shares.len() as f32,
        min_common_share: shares.iter().cloned().fold(f32::INFINITY, f32::min),
        kendall_tau: taus.iter().sum::<f32>() / taus.len().max(1) as f32,
    };
    Ok((out, summary))
}

/// What `scan_repeated` runs.
#[derive(Clone, Debug)]
pub struct RepeatOptions {
    pub samples: usize,
    pub repeats: usize,
    pub score: ScoreKind,
    pub aggregate: Aggregate,
}

/// R scans with independent images (`scan_samples` with the repeat's seed) and X0 noise, combined.
/// With R = 1 and the acc score this is exactly `frg::scan` (and no stability summary).
/// Returns the per-conv reports, the summary (R > 1) and the chunk size used.
pub fn scan_repeated(
    model: &PreActResNet18,
    clean: &LabeledImages,
    opts: &ScanOptions,
    ro: &RepeatOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<ConvReport>, Option<StabilitySummary>, usize)> {
    if ro.repeats == 0 {
        return Err(Error::InvalidArgument(
            "--repeats must be at least 1".into(),
        ));
    }
    let exec = ScanOptions {
        reference_order: false,
        ..opts.clone()
    };
    let mut reps = Vec::with_capacity(ro.repeats);
    let mut seeds = Vec::with_capacity(ro.repeats);
    let mut chunk = 0;
    for r in 0..ro.repeats {
        let seed = repeat_seed(opts.seed, r);
        let (pixels, labels) = scan_samples(clean, ro.samples, seed)?;
        let (mut convs, k) = scan(
            model,
            &pixels,
            &labels,
            &ScanOptions {
                seed,
                ..exec.clone()
            },
            progress,
        )?;
        chunk = chunk.max(k);
        if ro.score != ScoreKind::Acc {
            for c in convs.iter_mut() {
                c.selected = select_by(ro.score, c, opts.p)?;
            }
        }
        reps.push(convs);
        seeds.push(seed);
    }
    let (mut convs, summary) = if ro.repeats == 1 {
        (reps.pop().expect("one repeat"), None)
    } else {
        let (c, s) = combine(&reps, &seeds, ro.score, ro.aggregate, opts.p)?;
        (c, Some(s))
    };
    if opts.reference_order {
        let names: Vec<String> = convs.iter().map(|c| c.name.clone()).collect();
        let sel: Vec<Vec<usize>> = convs.iter().map(|c| c.selected.clone()).collect();
        for (c, s) in convs.iter_mut().zip(reference_order_remap(&names, &sel)) {
            c.selected = s;
        }
    }
    Ok((convs, summary, chunk))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(scores: Vec<f32>, prob: Vec<f32>, margin: Vec<f32>) -> ConvReport {
        ConvReport {
            index: 0,
            name: "c".into(),
            channels: scores.len(),
            scores,
            true_prob: prob,
            margin,
            selected: Vec::new(),
            stability: None,
        }
    }

    #[test]
    fn kendall_tau_known_values() {
        assert_eq!(kendall_tau(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 1.0);
        assert_eq!(kendall_tau(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
        // (1,2,3,4) vs (1,3,2,4): 5 concordant, 1 discordant of 6 pairs
        assert!((kendall_tau(&[1., 2., 3., 4.], &[1., 3., 2., 4.]) - 4.0 / 6.0).abs() < 1e-6);
        // tau-b with a tie: a = (1,1,2), b = (1,2,3): conc 2, disc 0, ties_a 1 -> 2 / sqrt(2 * 3)
        let t = kendall_tau(&[1., 1., 2.], &[1., 2., 3.]);
        assert!((t - 2.0 / 6f32.sqrt()).abs() < 1e-6, "{t}");
        assert_eq!(kendall_tau(&[1., 1.], &[2., 2.]), 1.0);
        assert_eq!(kendall_tau(&[1., 1.], &[1., 2.]), 0.0);
    }

    #[test]
    fn score_kinds_rank_by_their_own_quantity() {
        let c = conv(
            vec![0.5, 0.5, 0.25, 1.0],
            vec![0.2, 0.1, 0.9, 0.05],
            vec![-1.0, 2.0, 3.0, -5.0],
        );
        assert_eq!(select_by(ScoreKind::Acc, &c, 2).unwrap(), vec![2, 1]);
        assert_eq!(select_by(ScoreKind::Prob, &c, 2).unwrap(), vec![3, 1]);
        assert_eq!(select_by(ScoreKind::Margin, &c, 2).unwrap(), vec![3, 0]);
        let old = conv(vec![0.5, 0.5], vec![0.1, 0.2], Vec::new());
        let e = select_by(ScoreKind::Margin, &old, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("margin"), "{e}");
    }

    #[test]
    fn combine_aggregates_and_measures_agreement() {
        // two repeats of one 4-map conv, p = 2 (2 maps selected)
        let mut a = conv(vec![0.0, 0.5, 1.0, 1.0], vec![0.1, 0.2, 0.3, 0.4], vec![]);
        let mut b = conv(vec![1.0, 0.5, 0.0, 1.0], vec![0.1, 0.2, 0.3, 0.4], vec![]);
        a.selected = select_by(ScoreKind::Acc, &a, 2).unwrap(); // [0, 1]
        b.selected = select_by(ScoreKind::Acc, &b, 2).unwrap(); // [2, 1]
        let (out, s) = combine(
            &[vec![a], vec![b]],
            &[0, 9],
            ScoreKind::Acc,
            Aggregate::Mean,
            2,
        )
        .unwrap();
        assert_eq!(out[0].scores, vec![0.5, 0.5, 0.5, 1.0]);
        // aggregate ties on acc 0.5 broken by probability: 0 then 1
        assert_eq!(out[0].selected, vec![0, 1]);
        let st = out[0].stability.as_ref().unwrap();
        assert_eq!(st.score_std, vec![0.5, 0.0, 0.5, 0.0]);
        assert_eq!(st.common_share, 0.5);
        assert_eq!(s.common_share, 0.5);
        assert_eq!(s.min_common_share, 0.5);
        assert_eq!(s.repeats, 2);
        assert_eq!(s.seeds, vec![0, 9]);
        assert!(s.line().contains("50%"), "{}", s.line());
    }

    #[test]
    fn median_and_repeat_seeds() {
        assert_eq!(Aggregate::Median.of(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(Aggregate::Median.of(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(Aggregate::Mean.of(&mut [4.0, 1.0]), 2.5);
        assert_eq!(repeat_seed(5, 0), 5);
        // every (scan seed, repeat) pair draws its own images and noise: no two scan seeds share a
        // repeat (the earlier `seed ^ r` derivation gave seed 0's repeat 2 to seed 1's repeat 3)
        let mut all: Vec<u64> = (0..16u64)
            .flat_map(|s| (0..16).map(move |r| repeat_seed(s, r)))
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 16 * 16);
        assert!("bogus".parse::<ScoreKind>().is_err());
        assert!("median".parse::<Aggregate>().is_ok());
    }
}
