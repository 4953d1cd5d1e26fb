//! Per-channel affine (eval-mode batchnorm, input normalisation) and training-mode batchnorm.
//! Batch statistics are accumulated per channel in f64 in a fixed (item, pixel) order, so they are
//! exact to f32 precision and independent of the thread count; one rayon task per group of
//! channels (which also writes the group's output while its inputs are in cache).
use std::ops::Range;

use rayon::prelude::*;

use super::elementwise::broadcast_zip;
use super::gemm::by_isa;
use super::{broadcast_batch, host, host_mut, hosts};
use crate::backend::{shapes, BnGrads, BnLayer, BnUpdate};
use crate::error::Result;
use crate::tensor::Tensor;

pub fn channel_affine(
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    relu: bool,
    y: &mut Tensor,
) -> Result<()> {
    const OP: &str = "channel_affine";
    let (_, c, hw) = shapes::channel_affine(x, scale, shift, y)?;
    let [xs, sc, sh] = hosts(OP, [("x", x), ("scale", scale), ("shift", shift)])?;
    let ys = host_mut(OP, "y", y)?;
    per_plane(ys, xs, c, hw, |ch, yo, xo| {
        let (a, b) = (sc[ch], sh[ch]);
        if relu {
            for (o, &v) in yo.iter_mut().zip(xo) {
                let t = v * a + b;
                *o = if t > 0.0 { t } else { 0.0 };
            }
        } else {
            for (o, &v) in yo.iter_mut().zip(xo) {
                *o = v * a + b;
            }
        }
    });
    Ok(())
}

/// `f(channel, out plane, in plane)` for every (item, channel) plane of [N, C, HW] tensors `ys`
/// and `xs`, items in parallel.
fn per_plane(
    ys: &mut [f32],
    xs: &[f32],
    c: usize,
    hw: usize,
    f: impl Fn(usize, &mut [f32], &[f32]) + Sync,
) {
    if ys.is_empty() || hw == 0 {
        return;
    }
    ys.par_chunks_mut((c * hw).max(1))
        .zip(xs.par_chunks((c * hw).max(1)))
        .for_each(|(yi, xi)| {
            for ch in 0..c {
                let r = ch * hw..(ch + 1) * hw;
                f(ch, &mut yi[r.clone()], &xi[r]);
            }
        });
}

pub fn channel_affine_backward(
    y_saved: Option<&Tensor>,
    dy: &Tensor,
    scale: &Tensor,
    dx: &mut Tensor,
) -> Result<()> {
    const OP: &str = "channel_affine_backward";
    let (_, c, hw) = shapes::channel_affine_backward(y_saved, dy, scale, dx)?;
    let [sc, g] = hosts(OP, [("scale", scale), ("dy", dy)])?;
    match y_saved {
        None => {
            let o = host_mut(OP, "dx", dx)?;
            per_plane(o, g, c, hw, |ch, o, g| {
                let a = sc[ch];
                for (o, &g) in o.iter_mut().zip(g) {
                    *o = g * a;
                }
            });
        }
        Some(ys) => {
            let b = broadcast_batch(OP, "y_saved", ys, "dy", dy)?;
            let s = host(OP, "y_saved", ys)?;
            let o = host_mut(OP, "dx", dx)?;
            if hw == 0 {
                return Ok(());
            }
            broadcast_zip(s, b, g, o, |o, g, s| {
                for ch in 0..c {
                    let a = sc[ch];
                    let r = ch * hw..(ch + 1) * hw;
                    for ((o, &g), &s) in o[r.clone()].iter_mut().zip(&g[r.clone()]).zip(&s[r]) {
                        let v = g * a; // computed unconditionally so the loop vectorises as a select
                        *o = if s > 0.0 { v } else { 0.0 };
                    }
                }
            });
        }
    }
    Ok(())
}

/// Channels per task of the training BN: enough that one item's slice of a group of channels
/// ([channels x HW] floats, contiguous in NCHW) is 4 KiB or more, so each task streams memory in
/// page-sized runs the prefetchers follow (a 4x4 plane is one cache line, and walking one
/// channel's planes strides by C x HW floats: past a 4 KiB page at C >= 64), and a task's share of
/// the tensor (N x 4 KiB: 1 MiB at batch 256) stays in the core's cache between its passes; at
/// least one task per thread while there are channels to split.
fn channels_per_task(c: usize, hw: usize) -> usize {
    let per_page = (1024 / hw.max(1)).max(1);
    per_page
        .min(c.div_ceil(rayon::current_num_threads()))
        .max(1)
}

/// `f(channels, planes)` for the groups of `channels_per_task` channels of an [N, C, HW] output in
/// parallel, `planes` being the group's output planes in (item, channel) order; `f` returns one
/// result per channel, and they come back in channel order. One task does all of its channels'
/// passes (statistics, then output), so its inputs are read from memory about once per op.
fn per_group<T: Send>(
    out: &mut [f32],
    c: usize,
    hw: usize,
    f: impl Fn(Range<usize>, Vec<&mut [f32]>) -> Vec<T> + Sync,
) -> Vec<T> {
    let cg = channels_per_task(c, hw);
    let mut planes: Vec<Vec<&mut [f32]>> = (0..c.div_ceil(cg)).map(|_| Vec::new()).collect();
    for (p, plane) in out.chunks_exact_mut(hw.max(1)).enumerate() {
        planes[(p % c) / cg].push(plane);
    }
    let groups: Vec<Vec<T>> = planes
        .into_par_iter()
        .enumerate()
        .map(|(g, planes)| f(g * cg..((g + 1) * cg).min(c), planes))
        .collect();
    groups.into_iter().flatten().collect()
}

/// Per channel of `chs`, the f64 sums of f(ch)(a, b) over the channel's (n, h, w) elements of two
/// [N, C, HW] tensors, in a fixed order: eight interleaved partial sums (element k of a plane goes
/// to partial k % 8, items in order; a plane's tail to partial 0) combined in index order, so the
/// adds do not wait on one another's latency. The group is walked item by item (its channels'
/// planes are contiguous there), each channel's partials carried from plane to plane, so every
/// channel's sums are the same whatever the grouping. Planes are walked as slices in chunks of 8,
/// so the loop vectorises: the eight partials are the lanes of one AVX-512 register (two AVX2
/// ones), compiled for the CPU's instruction set; every width gives the same sums. `f(ch)` returns
/// a closure holding the channel's constants by value (one that reads them through references
/// keeps the loop from vectorising).
fn group_sums<G>(p: Planes, chs: Range<usize>, f: impl Fn(usize) -> G) -> Vec<(f64, f64)>
where
    G: Fn(f32, f32) -> (f64, f64),
{
    by_isa!(
        // SAFETY: the instruction set was detected (gemm::isa).
        unsafe { sums_avx512(p, chs, f) },
        // SAFETY: as above.
        unsafe { sums_avx2(p, chs, f) },
        sums(p, chs, f),
    )
}

/// The two [N, C, HW] tensors `group_sums` walks (`a` may be `b`).
#[derive(Clone, Copy)]
struct Planes<'a> {
    n: usize,
    c: usize,
    hw: usize,
    a: &'a [f32],
    b: &'a [f32],
}

impl<'a> Planes<'a> {
    fn new(n: usize, c: usize, hw: usize, a: &'a [f32], b: &'a [f32]) -> Self {
        Planes { n, c, hw, a, b }
    }
}

#[inline(always)]
fn sums<G: Fn(f32, f32) -> (f64, f64)>(
    p: Planes,
    chs: Range<usize>,
    f: impl Fn(usize) -> G,
) -> Vec<(f64, f64)> {
    const L: usize = 8;
    let Planes { n, c, hw, a, b } = p;
    let mut acc = vec![([0.0f64; L], [0.0f64; L]); chs.len()];
    for i in 0..n {
        for (ch, part) in chs.clone().zip(acc.iter_mut()) {
            let f = f(ch);
            let base = (i * c + ch) * hw;
            let (pa, pb) = (&a[base..base + hw], &b[base..base + hw]);
            let (mut s0, mut s1) = *part;
            let (mut ca, mut cb) = (pa.chunks_exact(L), pb.chunks_exact(L));
            for (xa, xb) in (&mut ca).zip(&mut cb) {
                // Two phases (the chunk's terms, then the adds), which the compiler vectorises.
                let (mut u, mut v) = ([0.0f64; L], [0.0f64; L]);
                for j in 0..L {
                    (u[j], v[j]) = f(xa[j], xb[j]);
                }
                for j in 0..L {
                    s0[j] += u[j];
                    s1[j] += v[j];
                }
            }
            for (&xa, &xb) in ca.remainder().iter().zip(cb.remainder()) {
                let (u, v) = f(xa, xb);
                s0[0] += u;
                s1[0] += v;
            }
            *part = (s0, s1);
        }
    }
    let total = |s: &[f64; L]| s.iter().fold(0.0, |t, &v| t + v);
    acc.iter().map(|(s0, s1)| (total(s0), total(s1))).collect()
}

/// `sums` compiled for an instruction set (the caller checks it is present).
macro_rules! sums_for {
    ($name:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<G: Fn(f32, f32) -> (f64, f64)>(
            p: Planes,
            chs: Range<usize>,
            f: impl Fn(usize) -> G,
        ) -> Vec<(f64, f64)> {
            sums(p, chs, f)
        }
    };
}
sums_for!(sums_avx512, "avx512f,avx2,fma");
sums_for!(sums_avx2, "avx2,fma");

/// bn(x) = x * a + b with (a, b) from the saved f32 statistics: the forward's output and, with a
/// fused ReLU, the backward's mask are computed from the same (a, b), so they agree bit for bit.
fn bn_coefs(gamma: f32, beta: f32, mean: f32, invstd: f32) -> (f32, f32) {
    let a = gamma * invstd;
    (a, beta - mean * a)
}

/// One value of relu(bn(x)) (bn(x) without `relu`) from its channel's `bn_coefs`: the training
/// forward's output, and the convolutions' inputs read through `BnMap`.
#[inline(always)]
fn bn_out(v: f32, (a, b): (f32, f32), relu: bool) -> f32 {
    let t = v * a + b;
    if relu && !(t > 0.0) {
        0.0
    } else {
        t
    }
}

/// A training batchnorm's per-channel map x -> relu(bn(x)) from its parameters and saved
/// statistics, computed exactly as `bn_train_forward` writes its output: the input of
/// `conv2d_forward_bn` and `conv2d_weight_grad_bn`, applied where the convolutions copy their input
/// (`direct::pad_into`), so the activation is never stored.
pub(super) struct BnCoefs {
    coefs: Vec<(f32, f32)>,
    relu: bool,
}

impl BnCoefs {
    pub fn new(op: &'static str, bn: &BnLayer<&Tensor>) -> Result<Self> {
        let [g, b, m, s] = hosts(
            op,
            [
                ("gamma", bn.gamma),
                ("beta", bn.beta),
                ("save_mean", bn.save_mean),
                ("save_invstd", bn.save_invstd),
            ],
        )?;
        let coefs = (0..g.len())
            .map(|c| bn_coefs(g[c], b[c], m[c], s[c]))
            .collect();
        Ok(BnCoefs {
            coefs,
            relu: bn.relu,
        })
    }
    pub fn map(&self) -> BnMap<'_> {
        BnMap {
            coefs: &self.coefs,
            relu: self.relu,
        }
    }
}

/// A view of `BnCoefs` from some channel on (channel 0 of the view is that channel).
#[derive(Clone, Copy)]
pub(super) struct BnMap<'a> {
    coefs: &'a [(f32, f32)],
    relu: bool,
}

impl<'a> BnMap<'a> {
    /// The channels from c0 on.
    pub fn skip(self, c0: usize) -> Self {
        BnMap {
            coefs: &self.coefs[c0..],
            relu: self.relu,
        }
    }
    /// dst[i] = relu(bn(src[i])) for channel c.
    #[inline(always)]
    pub fn apply(self, c: usize, src: &[f32], dst: &mut [f32]) {
        let (k, relu) = (self.coefs[c], self.relu);
        for (o, &v) in dst.iter_mut().zip(src) {
            *o = bn_out(v, k, relu);
        }
    }
    /// The whole [N, C, HW] input mapped, for the convolution paths that do not pad their input.
    pub fn materialize(self, x: &[f32], c: usize, hw: usize) -> Vec<f32> {
        let mut y = vec![0.0; x.len()];
        per_plane(&mut y, x, c, hw, |ch, yo, xo| self.apply(ch, xo, yo));
        y
    }
}

pub fn bn_train_forward(
    x: &Tensor,
    bn: BnLayer<&mut Tensor>,
    update: BnUpdate,
    y: Option<&mut Tensor>,
) -> Result<()> {
    const OP: &str = "batchnorm_train_forward";
    let (n, c, hw) = shapes::batchnorm_train_forward(x, &bn, &update, y.as_deref())?;
    let BnLayer {
        gamma,
        beta,
        save_mean,
        save_invstd,
        relu,
    } = bn;
    let BnUpdate {
        running_mean,
        running_var,
        momentum,
        eps,
    } = update;
    let m = n * hw;
    let [xs, gs, bs] = hosts(OP, [("x", x), ("gamma", gamma), ("beta", beta)])?;
    let xx = Planes::new(n, c, hw, xs, xs);
    // (mean, centred sum of squares, invstd) of a group of channels.
    let stats = |chs: Range<usize>| -> Vec<(f64, f64, f64)> {
        // One pass of shifted sums in f64: s1 = sum(x - x0), s2 = sum((x - x0)^2) with x0 the
        // channel's first element, so mean = x0 + s1 / m and the centred sum of squares s2 - s1^2 / m
        // lose nothing that matters (x0 lies within the channel's spread, and f64 holds the squares of
        // f32 differences): one read of x for the statistics instead of two.
        let shift = |ch: usize| xs[ch * hw] as f64;
        let s = group_sums(xx, chs.clone(), |ch| {
            let x0 = shift(ch);
            move |x: f32, _| {
                let d = x as f64 - x0;
                (d, d * d)
            }
        });
        chs.zip(s)
            .map(|(ch, (s1, s2))| {
                let sq = (s2 - s1 * s1 / m as f64).max(0.0);
                let invstd = 1.0 / (sq / m as f64 + eps as f64).sqrt();
                (shift(ch) + s1 / m as f64, sq, invstd)
            })
            .collect()
    };
    let st = match y {
        Some(y) => {
            let ys = host_mut(OP, "y", y)?;
            per_group(ys, c, hw, |chs, planes| {
                let (c0, k) = (chs.start, chs.len());
                let st = stats(chs);
                // Output pass from the last item back: the planes the statistics read last are
                // the ones still in cache (a group's share is about the size of a 1 MiB L2 at
                // batch 256).
                for (p, yo) in planes.into_iter().enumerate().rev() {
                    let (i, j) = (p / k, p % k);
                    let ch = c0 + j;
                    let (mean, _, invstd) = st[j];
                    let ab = bn_coefs(gs[ch], bs[ch], mean as f32, invstd as f32);
                    for (o, &v) in yo.iter_mut().zip(&xs[(i * c + ch) * hw..][..hw]) {
                        *o = bn_out(v, ab, relu);
                    }
                }
                st
            })
        }
        None => {
            // The same channel groups, statistics only.
            let cg = channels_per_task(c, hw);
            let groups: Vec<Vec<_>> = (0..c.div_ceil(cg))
                .into_par_iter()
                .map(|g| stats(g * cg..((g + 1) * cg).min(c)))
                .collect();
            groups.into_iter().flatten().collect()
        }
    };
    let mom = momentum as f64;
    let rm = host_mut(OP, "running_mean", running_mean)?;
    for (r, s) in rm.iter_mut().zip(&st) {
        *r = ((1.0 - mom) * *r as f64 + mom * s.0) as f32;
    }
    let rv = host_mut(OP, "running_var", running_var)?;
    for (r, s) in rv.iter_mut().zip(&st) {
        let unbiased = s.1 / (m - 1) as f64;
        *r = ((1.0 - mom) * *r as f64 + mom * unbiased) as f32;
    }
    let sm = host_mut(OP, "save_mean", save_mean)?;
    for (o, s) in sm.iter_mut().zip(&st) {
        *o = s.0 as f32;
    }
    let si = host_mut(OP, "save_invstd", save_invstd)?;
    for (o, s) in si.iter_mut().zip(&st) {
        *o = s.2 as f32;
    }
    Ok(())
}

/// g where the forward's ReLU passed bn(x) = x * ka + kb (or without a ReLU), else +0.0:
/// branch-free, g's bits kept or cleared.
#[inline(always)]
fn relu_masked(g: f32, x: f32, (ka, kb): (f32, f32), relu: bool) -> f32 {
    let keep = !relu | (x * ka + kb > 0.0);
    f32::from_bits(g.to_bits() & (keep as u32).wrapping_neg())
}

/// One channel's constants of the training backward's dx pass.
#[derive(Clone, Copy)]
struct BwdDx {
    ka: f32,
    kb: f32,
    mu: f32,
    is: f32,
    mdy: f32,
    mdyx: f32,
    relu: bool,
}

impl BwdDx {
    /// dx = gamma * invstd * (dy' - mean(dy') - xhat * mean(dy' * xhat)) over one plane, dy' being dy
    /// masked by the forward's ReLU (the sums pass's mask, computed the same way), compiled for the
    /// CPU's vector width (Rust contracts no mul+add into an FMA: every width gives the same bits).
    fn plane(self, o: &mut [f32], g: &[f32], x: &[f32]) {
        by_isa!(
            // SAFETY: the instruction set was detected (gemm::isa).
            unsafe { self.plane_avx512(o, g, x) },
            // SAFETY: as above.
            unsafe { self.plane_avx2(o, g, x) },
            self.plane_body(o, g, x),
        )
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn plane_avx512(self, o: &mut [f32], g: &[f32], x: &[f32]) {
        self.plane_body(o, g, x)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn plane_avx2(self, o: &mut [f32], g: &[f32], x: &[f32]) {
        self.plane_body(o, g, x)
    }

    #[inline(always)]
    fn plane_body(self, o: &mut [f32], g: &[f32], x: &[f32]) {
        let BwdDx {
            ka,
            kb,
            mu,
            is,
            mdy,
            mdyx,
            relu,
        } = self;
        for ((o, &g), &v) in o.iter_mut().zip(g).zip(x) {
            let g = relu_masked(g, v, (ka, kb), relu);
            let xhat = (v - mu) * is;
            *o = ka * (g - mdy - xhat * mdyx);
        }
    }
}

pub fn bn_train_backward(
    x: &Tensor,
    dy: &Tensor,
    bn: BnLayer<&Tensor>,
    grads: BnGrads,
) -> Result<()> {
    const OP: &str = "batchnorm_train_backward";
    let (n, c, hw) = shapes::batchnorm_train_backward(x, dy, &bn, &grads)?;
    let BnGrads { dx, dgamma, dbeta } = grads;
    let (m, relu) = (n * hw, bn.relu);
    let [xs, gs, gamma, beta, mean, invstd] = hosts(
        OP,
        [
            ("x", x),
            ("dy", dy),
            ("gamma", bn.gamma),
            ("beta", bn.beta),
            ("save_mean", bn.save_mean),
            ("save_invstd", bn.save_invstd),
        ],
    )?;
    let o = host_mut(OP, "dx", dx)?;
    // dy of channel ch, masked by the forward's ReLU when it was fused, the channel's constants
    // held by value.
    let coefs = |ch: usize| bn_coefs(gamma[ch], beta[ch], mean[ch], invstd[ch]);
    let grad = |k: (f32, f32)| move |x: f32, g: f32| relu_masked(g, x, k, relu);
    let xg = Planes::new(n, c, hw, xs, gs);
    let sums = per_group(o, c, hw, |chs, planes| {
        // sum(dy) and sum(dy * xhat), then dx = gamma * invstd * (dy - mean(dy) - xhat *
        // mean(dy * xhat)).
        let (c0, k) = (chs.start, chs.len());
        let sums = group_sums(xg, chs, |ch| {
            let (mu, is, grad) = (mean[ch], invstd[ch], grad(coefs(ch)));
            move |x: f32, g: f32| {
                let g = grad(x, g);
                let xhat = (x - mu) as f64 * is as f64;
                (g as f64, g as f64 * xhat)
            }
        });
        // dx from the last item back, as in the forward: the last-read planes are in cache.
        for (p, o) in planes.into_iter().enumerate().rev() {
            let (i, j) = (p / k, p % k);
            let ch = c0 + j;
            let (ka, kb) = coefs(ch);
            let dx = BwdDx {
                ka,
                kb,
                mu: mean[ch],
                is: invstd[ch],
                mdy: (sums[j].0 / m as f64) as f32,
                mdyx: (sums[j].1 / m as f64) as f32,
                relu,
            };
            let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
            dx.plane(o, &gs[r.clone()], &xs[r]);
        }
        sums
    });
    let db = host_mut(OP, "dbeta", dbeta)?;
    for (d, s) in db.iter_mut().zip(&sums) {
        *d = s.0 as f32;
    }
    let dg = host_mut(OP, "dgamma", dgamma)?;
    for (d, s) in dg.iter_mut().zip(&sums) {
        *d = s.1 as f32;
    }
    Ok(())
}
