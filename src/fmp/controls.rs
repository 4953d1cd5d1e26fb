//! Controls for a selection: random maps with the same count per conv (`prune --random SEED`), and, when the
//! attack is known, a trigger diagnostic: how many selected maps are among the maps the trigger moves most.
//!
//! Trigger sensitivity of map c of conv l: `mean_(n,h,w) |A_l(x + trigger)[:, c] - A_l(x)[:, c]|` over clean
//! images x (eval mode, raw conv outputs). For a conv that selects k maps, the k most sensitive are its
//! "trigger maps"; hits = selected maps among them, summed over convs. A random selection of the same
//! sizes hits `sum_l k_l^2 / C_l` on average (the chance level printed beside it).
use serde::{Deserialize, Serialize};

use super::attacks::{Attack, IMG};
use super::rng::Rng;
use super::select::ConvReport;
use super::{u8_to_pixels, LabeledImages};
use crate::error::{Error, Result};
use crate::model::PreActResNet18;

/// Per conv: floor(C / p) (the count FMP prunes).
pub fn counts_for_p(model: &PreActResNet18, p: usize) -> Result<Vec<usize>> {
    if p == 0 {
        return Err(Error::InvalidArgument("--p must be at least 1".into()));
    }
    Ok(model
        .convs()
        .iter()
        .map(|c| c.params.c_out as usize / p)
        .collect())
}

/// `counts[i]` distinct random maps of conv i (in execution order), from `Rng::derive(seed, "random-prune")`.
pub fn random_selection(
    model: &PreActResNet18,
    counts: &[usize],
    seed: u64,
) -> Result<Vec<(usize, usize)>> {
    let convs = model.convs();
    if counts.len() != convs.len() {
        return Err(Error::InvalidArgument(format!(
            "random selection: {} counts for {} convs",
            counts.len(),
            convs.len()
        )));
    }
    let mut rng = Rng::derive(seed, "random-prune");
    let mut out = Vec::new();
    for (i, (cv, &k)) in convs.iter().zip(counts).enumerate() {
        let ch = cv.params.c_out as usize;
        if k > ch {
            return Err(Error::InvalidArgument(format!(
                "random selection: {k} maps asked of {} ({ch} channels)",
                cv.name
            )));
        }
        let mut idx: Vec<usize> = (0..ch).collect();
        rng.shuffle(&mut idx);
        out.extend(idx[..k].iter().map(|&c| (i, c)));
    }
    out.sort_unstable();
    Ok(out)
}

/// Per conv (execution order), per map: the mean over images and positions of `f(clean, triggered)` of the
/// raw conv outputs, `batch` images at a time. `triggered` is None when no attack is given (f gets 0s).
fn tap_means(
    model: &PreActResNet18,
    images: &LabeledImages,
    attack: Option<&Attack>,
    batch: usize,
    f: &dyn Fn(f32, f32) -> f32,
) -> Result<Vec<Vec<f32>>> {
    let n = images.len();
    if n == 0 {
        return Err(Error::InvalidArgument(
            "no clean images to measure activations on".into(),
        ));
    }
    let be = model.backend();
    let taps: Vec<usize> = (0..model.convs().len()).collect();
    let mut sums: Vec<Vec<f64>> = model
        .convs()
        .iter()
        .map(|c| vec![0.0; c.params.c_out as usize])
        .collect();
    let mut counts = vec![0usize; taps.len()];
    for start in (0..n).step_by(batch.max(1)) {
        let m = (start + batch.max(1)).min(n) - start;
        let raw = &images.pixels[start * IMG..(start + m) * IMG];
        let x = be.from_host(&u8_to_pixels(raw), &[m, 3, 32, 32])?;
        let (_, clean) = model.forward_taps(&x, &taps)?;
        let trig = match attack {
            Some(a) => {
                let mut t = raw.to_vec();
                for img in t.chunks_mut(IMG) {
                    a.apply_in_place(img);
                }
                let xt = be.from_host(&u8_to_pixels(&t), &[m, 3, 32, 32])?;
                Some(model.forward_taps(&xt, &taps)?.1)
            }
            None => None,
        };
        for l in 0..taps.len() {
            let a = be.to_host(&clean[l])?;
            let b = match &trig {
                Some(t) => Some(be.to_host(&t[l])?),
                None => None,
            };
            let (_, c, h, w) = clean[l].nchw();
            let hw = h * w;
            for i in 0..m {
                for (ch, sum) in sums[l].iter_mut().enumerate().take(c) {
                    let base = (i * c + ch) * hw;
                    let s: f64 = (base..base + hw)
                        .map(|j| f(a[j], b.as_ref().map_or(0.0, |b| b[j])) as f64)
                        .sum();
                    *sum += s;
                }
            }
            counts[l] += m * hw;
        }
    }
    Ok(sums
        .into_iter()
        .zip(counts)
        .map(|(s, n)| s.iter().map(|v| (v / n as f64) as f32).collect())
        .collect())
}

/// Per conv, per map: mean |A(x + trigger) - A(x)| over `images`.
pub fn trigger_sensitivity(
    model: &PreActResNet18,
    images: &LabeledImages,
    attack: &Attack,
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    tap_means(model, images, Some(attack), batch, &|a, t| (t - a).abs())
}

/// Per conv, per map: mean |A(x)| over clean `images` (Fine-Pruning's activity).
pub fn mean_activation(
    model: &PreActResNet18,
    images: &LabeledImages,
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    tap_means(model, images, None, batch, &|a, _| a.abs())
}

/// Selected maps among the most trigger-sensitive ones, against chance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TriggerDiagnostic {
    pub attack: String,
    /// Clean images the sensitivity was measured on.
    pub images: usize,
    pub selected: usize,
    /// Selected maps that are among their conv's `k` most trigger-sensitive (k = the conv's count).
    pub hits: usize,
    /// Expected hits of a random selection of the same sizes.
    pub chance: f64,
}

impl TriggerDiagnostic {
    pub fn line(&self) -> String {
        format!(
            "trigger diagnostic ({}, {} clean images): {} of {} selected maps are among their conv's most trigger-sensitive maps (chance {:.1})",
            self.attack, self.images, self.hits, self.selected, self.chance
        )
    }
}

/// Indices of the `k` largest values (ties: lower index first).
pub fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Compare selections (per conv, execution order) with the sensitivities.
pub fn trigger_overlap(
    convs: &[ConvReport],
    sensitivity: &[Vec<f32>],
    attack: &Attack,
    images: usize,
) -> Result<TriggerDiagnostic> {
    if convs.len() != sensitivity.len() {
        return Err(Error::InvalidArgument(format!(
            "trigger diagnostic: {} convs in the report, {} measured",
            convs.len(),
            sensitivity.len()
        )));
    }
    let pairs: Vec<(usize, usize)> = convs
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.selected.iter().map(move |&m| (i, m)))
        .collect();
    trigger_overlap_pairs(&pairs, sensitivity, attack, images)
}

/// The same for a selection given as (conv index, map) pairs.
pub fn trigger_overlap_pairs(
    pairs: &[(usize, usize)],
    sensitivity: &[Vec<f32>],
    attack: &Attack,
    images: usize,
) -> Result<TriggerDiagnostic> {
    let (mut hits, mut selected, mut chance) = (0, 0, 0.0);
    for (i, s) in sensitivity.iter().enumerate() {
        let sel: Vec<usize> = pairs.iter().filter(|p| p.0 == i).map(|p| p.1).collect();
        let k = sel.len();
        let top = top_k(s, k);
        hits += sel.iter().filter(|m| top.contains(m)).count();
        selected += k;
        chance += (k * k) as f64 / s.len().max(1) as f64;
    }
    if pairs.iter().any(|p| p.0 >= sensitivity.len()) {
        return Err(Error::InvalidArgument(
            "trigger diagnostic: a selected conv was not measured".into(),
        ));
    }
    Ok(TriggerDiagnostic {
        attack: attack.kind.name().into(),
        images,
        selected,
        hits,
        chance,
    })
}
