//! Naive host references for the kernel benchmarks' correctness checks.
//!
//! Each function computes, in f64 from host copies of the inputs, the expected value of one output
//! element together with a `scale` (the sum of the absolute values of the terms that make it up),
//! so a check can allow an f32 rounding error proportional to the work behind each element. Cheap
//! ops are checked at every element, convolutions at sampled elements.
use crate::backend::ConvParams;
use crate::rng::Rng;

/// Expected value of one output element.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    pub index: usize,
    pub value: f64,
    pub scale: f64,
}

impl Expect {
    /// An empty sum for output element `index`.
    fn at(index: usize) -> Self {
        Expect {
            index,
            value: 0.0,
            scale: 0.0,
        }
    }
    /// Add one term of the element's sum.
    fn add(&mut self, t: f64) {
        self.value += t;
        self.scale += t.abs();
    }
}

/// Flat index -> (n, c, h, w) for a [N, C, H, W] tensor.
pub fn unflat(i: usize, s: [usize; 4]) -> [usize; 4] {
    let w = i % s[3];
    let h = (i / s[3]) % s[2];
    let c = (i / (s[3] * s[2])) % s[1];
    let n = i / (s[3] * s[2] * s[1]);
    [n, c, h, w]
}

pub fn flat(ix: [usize; 4], s: [usize; 4]) -> usize {
    ((ix[0] * s[1] + ix[1]) * s[2] + ix[2]) * s[3] + ix[3]
}

/// `count` distinct-ish sample indices below `n`, always including the first and the last.
pub fn sample_indices(rng: &mut Rng, n: usize, count: usize) -> Vec<usize> {
    let mut v = vec![0, n - 1];
    while v.len() < count.min(n) {
        v.push(rng.below_mod(n));
    }
    v.sort_unstable();
    v.dedup();
    v
}

fn p4(
    p: &ConvParams,
) -> (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
) {
    (
        p.c_in as usize,
        p.h_in as usize,
        p.w_in as usize,
        p.c_out as usize,
        p.h_out as usize,
        p.w_out as usize,
        p.kernel as usize,
        p.stride as usize,
        p.pad as usize,
    )
}

/// y[n,co,oh,ow] of `conv2d_forward`.
pub fn conv_forward_at(p: &ConvParams, x: &[f32], w: &[f32], index: usize) -> Expect {
    let (ci_n, hi, wi, _, _, _, k, s, pad) = p4(p);
    let [n, co, oh, ow] = unflat(index, p.output_shape());
    let mut e = Expect::at(index);
    for ci in 0..ci_n {
        for kh in 0..k {
            for kw in 0..k {
                let ih = (oh * s + kh) as isize - pad as isize;
                let iw = (ow * s + kw) as isize - pad as isize;
                if ih < 0 || iw < 0 || ih >= hi as isize || iw >= wi as isize {
                    continue;
                }
                let t = x[flat([n, ci, ih as usize, iw as usize], p.input_shape())] as f64
                    * w[flat([co, ci, kh, kw], p.weight_shape())] as f64;
                e.add(t);
            }
        }
    }
    e
}

/// The input position (ih, iw) receives output (oh, ow) through tap kh: oh*s - pad + kh = ih.
fn out_of(i: usize, kidx: usize, s: usize, pad: usize, out: usize) -> Option<usize> {
    let num = i as isize + pad as isize - kidx as isize;
    if num < 0 || num % s as isize != 0 {
        return None;
    }
    let o = (num / s as isize) as usize;
    (o < out).then_some(o)
}

/// The (kh, kw, oh, ow) through which input position (ih, iw) receives outputs, kh then kw
/// ascending (the order the references sum in).
fn taps(
    (ih, iw): (usize, usize),
    (ho, wo): (usize, usize),
    k: usize,
    s: usize,
    pad: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..k).flat_map(move |kh| {
        let oh = out_of(ih, kh, s, pad, ho);
        (0..k).filter_map(move |kw| Some((kh, kw, oh?, out_of(iw, kw, s, pad, wo)?)))
    })
}

/// dx[n,ci,ih,iw] of `conv2d_input_grad`.
pub fn conv_input_grad_at(p: &ConvParams, dy: &[f32], w: &[f32], index: usize) -> Expect {
    let (_, _, _, co_n, ho, wo, k, s, pad) = p4(p);
    let [n, ci, ih, iw] = unflat(index, p.input_shape());
    let mut e = Expect::at(index);
    for co in 0..co_n {
        for (kh, kw, oh, ow) in taps((ih, iw), (ho, wo), k, s, pad) {
            let t = dy[flat([n, co, oh, ow], p.output_shape())] as f64
                * w[flat([co, ci, kh, kw], p.weight_shape())] as f64;
            e.add(t);
        }
    }
    e
}

/// dw[co,ci,kh,kw] of `conv2d_weight_grad`.
pub fn conv_weight_grad_at(p: &ConvParams, x: &[f32], dy: &[f32], index: usize) -> Expect {
    let (_, hi, wi, _, ho, wo, _, s, pad) = p4(p);
    let [co, ci, kh, kw] = unflat(index, p.weight_shape());
    let mut e = Expect::at(index);
    for n in 0..p.n as usize {
        for oh in 0..ho {
            let ih = (oh * s + kh) as isize - pad as isize;
            if ih < 0 || ih >= hi as isize {
                continue;
            }
            for ow in 0..wo {
                let iw = (ow * s + kw) as isize - pad as isize;
                if iw < 0 || iw >= wi as isize {
                    continue;
                }
                let t = x[flat([n, ci, ih as usize, iw as usize], p.input_shape())] as f64
                    * dy[flat([n, co, oh, ow], p.output_shape())] as f64;
                e.add(t);
            }
        }
    }
    e
}

/// dx[i,ci,ih,iw] of `conv2d_input_grad_onehot`: item i uses filter first + i / group.
pub fn conv_onehot_at(
    p: &ConvParams,
    seed: &[f32],
    w: &[f32],
    first: usize,
    group: usize,
    index: usize,
) -> Expect {
    let (_, _, _, _, ho, wo, k, s, pad) = p4(p);
    let [n, ci, ih, iw] = unflat(index, p.input_shape());
    let f = first + n / group;
    let mut e = Expect::at(index);
    for (kh, kw, oh, ow) in taps((ih, iw), (ho, wo), k, s, pad) {
        let t = seed[(n * ho + oh) * wo + ow] as f64
            * w[flat([f, ci, kh, kw], p.weight_shape())] as f64;
        e.add(t);
    }
    e
}

/// Per-channel mean and biased variance of [N, C, HW] data, in f64.
pub fn channel_stats(x: &[f32], n: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (n * hw) as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for ch in 0..c {
        let mut s = 0.0;
        for b in 0..n {
            s += x[(b * c + ch) * hw..(b * c + ch + 1) * hw]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>();
        }
        let mu = s / m;
        let mut q = 0.0;
        for b in 0..n {
            q += x[(b * c + ch) * hw..(b * c + ch + 1) * hw]
                .iter()
                .map(|&v| (v as f64 - mu).powi(2))
                .sum::<f64>();
        }
        mean[ch] = mu;
        var[ch] = q / m;
    }
    (mean, var)
}
