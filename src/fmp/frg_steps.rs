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
//! all of them. With S = 1 it is the scan's single-step chunk. Naive (`frg::scan_range` with
//! `ScanOptions::naive`): one channel at a time with a full cotangent and host-side sign steps (the
//! loop that also runs the single step). Both give identical scores (tests/fmp_steps.rs).
use crate::model::PreActResNet18;

/// Channels per chunk with several steps: a third of the single-step chunk (`frg::chunk_channels`), since
/// every stacked item also keeps a trace of the prefix.
pub fn chunk_channels(model: &PreActResNet18, layer: usize, b: usize) -> usize {
    (super::frg::chunk_channels(model, layer, b) / 3).max(1)
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
