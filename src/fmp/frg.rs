//! Feature Reverse Generation scan (spec section 3), intended semantics: pixel space, normalisation inside the
//! model, clamps in pixel space, eval-mode BN.
//!
//! `X0 = clamp(X + alpha * sign(U(-1,1)), 0, 1)` (one seeded draw shared by every feature map). For every conv
//! `l` and channel `c`: `G_c = d/dX0 mean_(b,h,w) (A_l(X) - A_l(X0))[:, c]^2`,
//! `Xadv_c = clamp(X0 + eps * sign(G_c), 0, 1)`, score = accuracy of the model on `Xadv_c`.
//!
//! Batched engine (`scan_range`): per layer, the prefix traces of X and X0 are computed once; channels
//! are processed in chunks of K: `frg_seed` writes the [K*B,1,H,W] one-channel cotangents, one
//! `input_grad(Cotangent::OneHot)` backward gives all K*B input gradients (the trace's B saved activations are
//! broadcast), `sign_step` builds the K*B adversarial images and one forward scores them. K is sized from
//! `Backend::memory_budget()` and the model's activation sizes.
//!
//! Naive engine (`scan_range` with `ScanOptions::naive`): one channel at a time, with a full [B,C,H,W] cotangent (the gradient of
//! that channel's MSE, zero elsewhere), a plain `Cotangent::Full` backward, host-side sign step and scoring.
//! Both give identical scores for the same seed (tests/fmp_scan.rs).
use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::frg_steps;
use super::metrics::argmax;
use super::rng::Rng;
use super::select::{reference_order_remap, select_lowest, ConvReport};
use crate::error::{Error, Result};
use crate::model::{Cotangent, PreActResNet18, Trace};
use crate::tensor::Tensor;

/// Scan settings (spec defaults: alpha 1/255, eps 4/255, seed 0).
#[derive(Clone, Debug)]
pub struct ScanOptions {
    pub p: usize,
    pub alpha: f32,
    pub eps: f32,
    pub seed: u64,
    pub reference_order: bool,
    /// Channels per chunk; None: sized from the backend's memory budget.
    pub chunk: Option<usize>,
    /// Use the one-channel-at-a-time loop.
    pub naive: bool,
    /// FRG sign steps per feature map (1: the spec's single step; more: `frg_steps`).
    pub steps: usize,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            p: 64,
            alpha: 1.0 / 255.0,
            eps: 4.0 / 255.0,
            seed: 0,
            reference_order: false,
            chunk: None,
            naive: false,
            steps: 1,
        }
    }
}

/// Per-channel results of one conv.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerScores {
    pub scores: Vec<f32>,
    pub true_prob: Vec<f32>,
    /// Mean logit margin: true-class logit minus the largest other logit (negative: misclassified).
    pub margin: Vec<f32>,
}

/// `X0 = clamp(X + alpha * sign(U(-1,1)), 0, 1)`, signs from `Rng::derive(seed, "frg-x0")` in element order.
pub fn make_x0(x: &[f32], alpha: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::derive(seed, "frg-x0");
    x.iter()
        .map(|&v| (v + alpha * rng.sign()).clamp(0.0, 1.0))
        .collect()
}

/// Channels per chunk for conv `layer` with B samples: what fits in the backend's memory budget, counting
/// per (channel, sample) item the seed, the input gradient, the adversarial image and a generous allowance for
/// the backward's and the scoring forward's working activations (6 of the widest activation).
pub fn chunk_channels(model: &PreActResNet18, layer: usize, b: usize) -> usize {
    let convs = model.convs();
    let out = convs[layer].params.output_shape();
    let channels = out[1];
    let widest = convs
        .iter()
        .map(|c| c.params.output_shape()[1..].iter().product::<usize>())
        .max()
        .unwrap_or(1);
    let per_item = 4 * (out[2] * out[3] + 3 * 3 * 32 * 32 + 6 * widest);
    let budget = model.backend().memory_budget();
    (budget / (per_item * b.max(1))).clamp(1, channels.max(1))
}

/// What every per-conv scorer reads: the model, the clean images X and their X0 (both [B,3,32,32] on
/// the model's backend), the B labels and the conv (execution index `layer`).
#[derive(Clone, Copy)]
pub struct ConvScan<'a> {
    pub model: &'a PreActResNet18,
    pub x: &'a Tensor,
    pub x0: &'a Tensor,
    pub labels: &'a [u32],
    pub layer: usize,
}

impl ConvScan<'_> {
    /// Every channel of the conv.
    pub fn all_channels(&self) -> Result<Range<usize>> {
        Ok(0..conv_channels(self.model, self.layer)?)
    }
}

/// Score channels `range` of conv `s.layer` with `opts.eps` and `opts.steps` sign steps (the one
/// entry point of both engines): batched, the traces of X and X0 up to the conv once, then
/// `score_channels` for each chunk of at most `chunk` channels from `range.start`; or, with
/// `opts.naive`, one channel at a time (`naive_range`; `chunk` unused). Every channel's images are
/// independent and the scores do not depend on the chunking, so a slice scores exactly as in a
/// whole-conv pass (`ConvScan::all_channels`): the unit the scan journals and shards (`scan_slices`).
pub fn scan_range(
    s: ConvScan,
    range: Range<usize>,
    opts: &ScanOptions,
    chunk: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<LayerScores> {
    if opts.steps == 0 {
        return Err(Error::InvalidArgument("--steps must be at least 1".into()));
    }
    let (eps, steps) = (opts.eps, opts.steps);
    if opts.naive {
        return naive_range(s, range, eps, steps, progress);
    }
    let tx = s.model.forward_trace(s.x, s.layer)?;
    let tx0 = s.model.forward_trace(s.x0, s.layer)?;
    let channels = range.end;
    let mut res = LayerScores::default();
    let mut c0 = range.start;
    while c0 < channels {
        let k = chunk.max(1).min(channels - c0);
        score_channels(
            s.model, &tx, &tx0, s.x0, s.labels, c0, k, eps, steps, &mut res,
        )?;
        c0 += k;
        progress(k);
    }
    Ok(res)
}

/// The K*B input gradients of a chunk's one-channel cotangents `seed` ([K*B,1,H,W]; item i in
/// channel `c0 + i / b`) through `trace`.
pub(crate) fn onehot_grad(
    model: &PreActResNet18,
    trace: &Trace,
    seed: &Tensor,
    c0: usize,
    b: usize,
) -> Result<Tensor> {
    let cot = Cotangent::OneHot {
        seed,
        first_channel: c0,
        group: b,
    };
    model.input_grad(trace, cot)
}

/// One batched chunk: channels `c0..c0+k` of the traced conv (`tx`, `tx0`: traces of X and X0 up to
/// it), stacked with the B samples channel-major: `frg_seed` -> one-hot input gradient -> `sign_step`
/// -> scoring forward. Appends k scores and mean true-class probabilities to `res`. With `steps` > 1
/// every further sign step starts from the previous adversarial images, whose own traces give the
/// one-channel seeds (`frg_steps`: `stacked_seed` on the host).
#[allow(clippy::too_many_arguments)]
pub fn score_channels(
    model: &PreActResNet18,
    tx: &Trace,
    tx0: &Trace,
    x0: &Tensor,
    labels: &[u32],
    c0: usize,
    k: usize,
    eps: f32,
    steps: usize,
    res: &mut LayerScores,
) -> Result<()> {
    let be = model.backend();
    let b = labels.len();
    let (_, c, h, w) = tx.tap().nchw();
    let mut seed = be.empty(&[k * b, 1, h, w])?;
    be.frg_seed(tx.tap(), tx0.tap(), c0, &mut seed)?;
    let g = onehot_grad(model, tx0, &seed, c0, b)?;
    drop(seed);
    let mut xadv = be.empty(&[k * b, 3, 32, 32])?;
    be.sign_step(x0, &g, eps, &mut xadv)?;
    drop(g);
    if steps > 1 {
        let ax = be.to_host(tx.tap())?;
        for _ in 1..steps {
            let tz = model.forward_trace(&xadv, tx.upto())?;
            let az = be.to_host(tz.tap())?;
            let seed = frg_steps::stacked_seed(&az, &ax, b, c, h * w, c0, k);
            let seed = be.from_host(&seed, &[k * b, 1, h, w])?;
            let g = onehot_grad(model, &tz, &seed, c0, b)?;
            drop((tz, seed));
            let mut next = be.empty(&[k * b, 3, 32, 32])?;
            be.sign_step(&xadv, &g, eps, &mut next)?;
            xadv = next;
        }
    }
    let logits = be.to_host(&model.forward(&xadv)?)?;
    score_chunk(&logits, labels, k, res)
}

/// The naive engine (the plain reference loop): channels `range` of conv `s.layer` one at a time,
/// with `steps` sign steps each (1: the spec's single step; more: `frg_steps`): a full cotangent,
/// host-side sign steps.
fn naive_range(
    s: ConvScan,
    range: Range<usize>,
    eps: f32,
    steps: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<LayerScores> {
    let ConvScan {
        model,
        x,
        x0,
        labels,
        layer,
    } = s;
    let be = model.backend().clone();
    let b = labels.len();
    let ax = be.to_host(model.forward_trace(x, layer)?.tap())?;
    let x0h = be.to_host(x0)?;
    let mut res = LayerScores::default();
    for c in range {
        let mut z = x0h.clone();
        for _ in 0..steps.max(1) {
            let zt = be.from_host(&z, &[b, 3, 32, 32])?;
            let tz = model.forward_trace(&zt, layer)?;
            let shape = tz.tap().shape().to_vec();
            let (_, cc, h, w) = tz.tap().nchw();
            let az = be.to_host(tz.tap())?;
            let scale = 2.0 / (b * h * w) as f32;
            let mut cot = vec![0f32; az.len()];
            for bi in 0..b {
                let base = (bi * cc + c) * h * w;
                for i in base..base + h * w {
                    cot[i] = scale * (az[i] - ax[i]);
                }
            }
            let cot = be.from_host(&cot, &shape)?;
            let g = be.to_host(&model.input_grad(&tz, Cotangent::Full(&cot))?)?;
            for (v, &gi) in z.iter_mut().zip(&g) {
                let s = if gi > 0.0 {
                    1.0
                } else if gi < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                *v = (*v + eps * s).clamp(0.0, 1.0);
            }
        }
        let xadv = be.from_host(&z, &[b, 3, 32, 32])?;
        let logits = be.to_host(&model.forward(&xadv)?)?;
        score_chunk(&logits, labels, 1, &mut res)?;
        progress(1);
    }
    Ok(res)
}

/// Append the scores of k channels from logits [k*B, classes] (channel-major): accuracy, mean true-class
/// probability and mean logit margin.
pub fn score_chunk(logits: &[f32], labels: &[u32], k: usize, res: &mut LayerScores) -> Result<()> {
    let b = labels.len();
    if logits.len() % (k * b) != 0 {
        return Err(Error::shape(
            "frg scoring",
            format!("{} logits for {k} channels x {b} samples", logits.len()),
        ));
    }
    let nc = logits.len() / (k * b);
    for ki in 0..k {
        let (mut correct, mut prob, mut margin) = (0usize, 0f64, 0f64);
        for (bi, &y) in labels.iter().enumerate() {
            let row = &logits[(ki * b + bi) * nc..(ki * b + bi + 1) * nc];
            if argmax(row) == y {
                correct += 1;
            }
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let z: f64 = row.iter().map(|&v| ((v - m) as f64).exp()).sum();
            prob += ((row[y as usize] - m) as f64).exp() / z;
            let other = row
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != y as usize)
                .map(|(_, &v)| v)
                .fold(f32::NEG_INFINITY, f32::max);
            margin += (row[y as usize] - other) as f64;
        }
        res.scores.push(correct as f32 / b as f32);
        res.true_prob.push((prob / b as f64) as f32);
        res.margin.push((margin / b as f64) as f32);
    }
    Ok(())
}

/// Output channels of conv `layer`.
pub(crate) fn conv_channels(model: &PreActResNet18, layer: usize) -> Result<usize> {
    model
        .convs()
        .get(layer)
        .map(|c| c.params.output_shape()[1])
        .ok_or_else(|| Error::InvalidArgument(format!("no conv {layer} in the model")))
}

/// A run of channels `start..end` of the conv with execution index `conv`: the unit the scan scores,
/// journals (`fmp::journal`) and splits into shards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    pub conv: usize,
    pub start: usize,
    pub end: usize,
}

/// Every channel of every conv, one slice per conv, in execution order.
pub fn all_slices(model: &PreActResNet18) -> Vec<Slice> {
    model
        .convs()
        .iter()
        .enumerate()
        .map(|(l, c)| Slice {
            conv: l,
            start: 0,
            end: c.params.output_shape()[1],
        })
        .collect()
}

/// The checks the scan makes before any work: images and labels agree, labels fit the model, `p` fits
/// every conv.
pub fn check_scan_inputs(
    model: &PreActResNet18,
    pixels: &[f32],
    labels: &[u32],
    opts: &ScanOptions,
) -> Result<()> {
    let b = labels.len();
    if b == 0 || pixels.len() != b * 3 * 32 * 32 {
        return Err(Error::InvalidArgument(format!(
            "scan needs at least one image; got {} labels and {} pixels",
            b,
            pixels.len()
        )));
    }
    let nc = model.config().num_classes;
    if let Some(&bad) = labels.iter().find(|&&y| y as usize >= nc) {
        return Err(Error::InvalidArgument(format!(
            "label {bad} out of range for a {nc}-class model"
        )));
    }
    if opts.p == 0 {
        return Err(Error::InvalidArgument("--p must be at least 1".into()));
    }
    if opts.steps == 0 {
        return Err(Error::InvalidArgument("--steps must be at least 1".into()));
    }
    for cv in model.convs() {
        let ch = cv.params.output_shape()[1];
        if opts.p > ch {
            return Err(Error::InvalidArgument(format!(
                "--p {} is larger than the width of {} ({ch} channels): it would select nothing there; use --p {ch} or less",
                opts.p, cv.name
            )));
        }
    }
    Ok(())
}

/// Score `slices` (in the given order). After each slice, `done(slice, scores, chunk)` is called (the
/// journal hook; `chunk` is the batched chunk used, 0 for the naive loop); an error from it stops the scan.
pub fn scan_slices(
    model: &PreActResNet18,
    pixels: &[f32],
    labels: &[u32],
    opts: &ScanOptions,
    slices: &[Slice],
    done: &mut dyn FnMut(&Slice, LayerScores, usize) -> Result<()>,
    progress: &mut dyn FnMut(usize),
) -> Result<()> {
    check_scan_inputs(model, pixels, labels, opts)?;
    let be = model.backend().clone();
    let b = labels.len();
    let x = be.from_host(pixels, &[b, 3, 32, 32])?;
    let x0 = be.from_host(&make_x0(pixels, opts.alpha, opts.seed), &[b, 3, 32, 32])?;
    for s in slices {
        let channels = conv_channels(model, s.conv)?;
        if s.start >= s.end || s.end > channels {
            return Err(Error::InvalidArgument(format!(
                "slice {}..{} of conv {} out of range 0..{channels}",
                s.start, s.end, s.conv
            )));
        }
        // the chunk: --chunk or what fits the memory budget (`f`), at most the slice
        let pick = |f: fn(&PreActResNet18, usize, usize) -> usize| {
            let k = opts.chunk.unwrap_or_else(|| f(model, s.conv, b));
            k.min(s.end - s.start).max(1)
        };
        let cs = ConvScan {
            model,
            x: &x,
            x0: &x0,
            labels,
            layer: s.conv,
        };
        let k = if opts.naive {
            0
        } else if opts.steps > 1 {
            pick(frg_steps::chunk_channels)
        } else {
            pick(chunk_channels)
        };
        let ls = scan_range(cs, s.start..s.end, opts, k, progress)?;
        done(s, ls, k)?;
    }
    Ok(())
}

/// Per-conv selection over complete per-conv scores (execution order), then `--reference-order`'s remap:
/// what one scan reports, whether its scores came from one run, a resumed run or merged shards.
pub fn select_convs(
    model_convs: &[(usize, String)],
    scores: Vec<LayerScores>,
    p: usize,
    reference_order: bool,
) -> Result<Vec<ConvReport>> {
    let mut out = Vec::with_capacity(scores.len());
    for ((index, name), ls) in model_convs.iter().zip(scores) {
        let selected = select_lowest(&ls.scores, &ls.true_prob, p)?;
        out.push(ConvReport {
            index: *index,
            name: name.clone(),
            channels: ls.scores.len(),
            scores: ls.scores,
            true_prob: ls.true_prob,
            margin: ls.margin,
            selected,
            stability: None,
        });
    }
    if reference_order {
        let names: Vec<String> = out.iter().map(|c| c.name.clone()).collect();
        let sel: Vec<Vec<usize>> = out.iter().map(|c| c.selected.clone()).collect();
        for (c, s) in out.iter_mut().zip(reference_order_remap(&names, &sel)) {
            c.selected = s;
        }
    }
    Ok(out)
}

/// The full scan: every conv, scores, then per-layer selection. `pixels`: B images [B,3,32,32] in [0,1].
/// `progress(channels_done_now)` is called as channels finish. Returns the per-conv reports and the
/// largest chunk used (0 for the naive loop).
pub fn scan(
    model: &PreActResNet18,
    pixels: &[f32],
    labels: &[u32],
    opts: &ScanOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<ConvReport>, usize)> {
    let mut scores = Vec::new();
    let mut chunk_used = 0;
    scan_slices(
        model,
        pixels,
        labels,
        opts,
        &all_slices(model),
        &mut |_, ls, k| {
            scores.push(ls);
            chunk_used = chunk_used.max(k);
            Ok(())
        },
        progress,
    )?;
    let convs: Vec<(usize, String)> = model
        .convs()
        .iter()
        .map(|c| (c.index, c.name.clone()))
        .collect();
    Ok((
        select_convs(&convs, scores, opts.p, opts.reference_order)?,
        chunk_used,
    ))
}
