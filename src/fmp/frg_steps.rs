//! FRG with several sign steps per feature map (`scan --steps S`).
//!
//! Step 1 is the spec's: `Xadv_1 = clamp(X0 + eps * sign(G_c(X0)), 0, 1)`. Every further step repeats it
//! from the previous adversarial image: `Xadv_(t+1) = clamp(Xadv_t + eps * sign(G_c(Xadv_t)), 0, 1)` with
//! `G_c(Z) = d/dZ mean_(b,h,w) (A_l(X) - A_l(Z))[:, c]^2` (each step moves every pixel by at most eps; after
//! S steps by at most S * eps from X0; only the [0, 1] clamp bounds it). The score is taken on `Xadv_S`.
//!
//! Batched (`frg::score_channels` with `steps`): the K*B stacked images of a chunk keep their own traces
//! after step 1, so the one-channel seed of step t >= 2 is formed on the host from the stacked activations
//! (`stacked_seed`), then one `input_grad(Cotangent::OneHot)` over the K*B trace and one `sign_step` advance
//! all of them. With S = 1 it is the scan's single-step chunk (checked in tests/fmp_steps.rs). Naive
//! (`scan_layer_naive_steps`): one channel at a time with a full cotangent and host-side sign steps
//! (`frg::scan_layer_naive_range`, which also runs the single step). Both give identical scores
//! (tests/fmp_steps.rs).
use std::ops::Range;

use super::frg::{
    scan_chunks, scan_layer_naive_range, score_channels, ConvScan, LayerScores, ScanOptions,
};
use crate::error::{Error, Result};
use crate::model::PreActResNet18;

/// Channels per chunk with several steps: a third of the single-step chunk (`frg::chunk_channels`), since
/// every stacked item also keeps a trace of the prefix.
pub fn chunk_channels(model: &PreActResNet18, layer: usize, b: usize) -> usize {
    (super::frg::chunk_channels(model, layer, b) / 3).max(1)
}

/// Score every channel of conv `s.layer` with `opts.steps` sign steps (batched, or naive with
/// `opts.naive`).
pub fn scan_layer_steps(
    s: ConvScan,
    opts: &ScanOptions,
    chunk: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<LayerScores> {
    scan_layer_steps_range(s, s.all_channels()?, opts, chunk, progress)
}

/// Score channels `range` of conv `s.layer` with `opts.steps` sign steps (chunks start at
/// `range.start`; every channel's images are independent, so a slice scores exactly as in a
/// whole-conv pass). The unit the scan journals and shards (`frg::scan_slices`).
pub fn scan_layer_steps_range(
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
        return scan_layer_naive_range(s, range, eps, steps, progress);
    }
    scan_chunks(s, range, chunk, progress, &mut |tx, tx0, c0, k, res| {
        score_channels(s.model, tx, tx0, s.x0, s.labels, c0, k, eps, steps, res)
    })
}

/// `2/(B*H*W) * (a_z[i, c] - a_x[i % B, c])` for item i = ki*B + bi, c = c0 + ki: the one-channel
/// cotangents of the stacked items (a_z: [K*B, C, H, W], a_x: [B, C, H, W], host copies).
pub(crate) fn stacked_seed(
    a_z: &[f32],
    a_x: &[f32],
    b: usize,
    c: usize,
    hw: usize,
    c0: usize,
    k: usize,
) -> Vec<f32> {
    let scale = 2.0 / (b * hw) as f32;
    let mut seed = vec![0f32; k * b * hw];
    for ki in 0..k {
        let ch = c0 + ki;
        for bi in 0..b {
            let i = ki * b + bi;
            let z = &a_z[(i * c + ch) * hw..(i * c + ch + 1) * hw];
            let xx = &a_x[(bi * c + ch) * hw..(bi * c + ch + 1) * hw];
            for (j, s) in seed[i * hw..(i + 1) * hw].iter_mut().enumerate() {
                *s = scale * (z[j] - xx[j]);
            }
        }
    }
    seed
}

/// The plain loop with `steps` sign steps: one channel at a time, full cotangents, host sign steps
/// (`frg::scan_layer_naive_range`).
pub fn scan_layer_naive_steps(
    s: ConvScan,
    eps: f32,
    steps: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<LayerScores> {
    scan_layer_naive_range(s, s.all_channels()?, eps, steps, progress)
}
