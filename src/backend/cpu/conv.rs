//! Convolutions (square kernel, zero padding, no bias, NCHW).
//!
//! Each pass first offers its shape to the direct paths (`direct`: lane layout, any stride via
//! phase planes; `direct_px`: small planes, channels in lanes; `direct_dgrad`: strided input
//! gradients by output phase; `direct_wgrad`: 3x3 weight gradients), which take the scan's and
//! fine-tuning's shapes. The rest (few channels on small planes, 5x5 on tiny ones, ...) is one
//! `gemm` per pass, with operands packed straight from the NCHW tensors (no im2col buffer):
//! - forward: Y[co, (n,oh,ow)] = W[co, (ci,kh,kw)] * im2col(x)[(ci,kh,kw), (n,oh,ow)];
//! - input gradient, computed directly per input pixel (no col2im scatter):
//!   dX[ci, (n,ih,iw)] = W'[ci, (co,kh,kw)] * D[(co,kh,kw), (n,ih,iw)], where D holds
//!   dy[n, co, oh, ow] when ih = oh*s - p + kh and iw = ow*s - p + kw for some (oh, ow), else 0;
//!   K blocks are multiples of k*k, so one filter's k*k terms always sit in one block
//!   (stride 1 only; with stride s that form multiplies (s*s - 1)/(s*s) structural zeros, so
//!   strided convs use col = W^T * dy, one GEMM per chunk of items, then a col2im gather that
//!   sums each input pixel's (kh, kw) terms in ascending order);
//! - one-hot input gradient: the same GEMM restricted to the k*k terms of the item's filter
//!   (stride 1), or col = w[c] * seed followed by the same col2im (strided). The full GEMM adds
//!   exact zeros around those terms, in the same order and the same K block, so the two are
//!   bitwise equal;
//! - weight gradient: dW[co, (ci,kh,kw)] = dy[co, (n,oh,ow)] * im2col(x)^T, with K
//!   running over the whole batch in a fixed order (deterministic for any thread count).
use rayon::prelude::*;

use super::gemm::{gemm, ASrc, COut, Pack, PackedA, RowMajor, MR, NR};
use super::norm::BnCoefs;
use super::{conv_strided, direct, direct_dgrad, direct_px, direct_wgrad, winograd};
use super::{host_mut, hosts, OutPtr};
use crate::backend::{shapes, BnLayer, ConvParams};
use crate::error::Result;
use crate::tensor::Tensor;

/// Validated convolution geometry in usize.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub n: usize,
    pub ci: usize,
    pub hi: usize,
    pub wi: usize,
    pub co: usize,
    pub ho: usize,
    pub wo: usize,
    pub k: usize,
    pub s: usize,
    pub p: usize,
}

impl Geom {
    /// Checked by `shapes::conv_params` (the rule every backend applies).
    pub fn new(op: &'static str, p: &ConvParams) -> Result<Self> {
        shapes::conv_params(op, p)?;
        let g = Geom {
            n: p.n as usize,
            ci: p.c_in as usize,
            hi: p.h_in as usize,
            wi: p.w_in as usize,
            co: p.c_out as usize,
            ho: p.h_out as usize,
            wo: p.w_out as usize,
            k: p.kernel as usize,
            s: p.stride as usize,
            p: p.pad as usize,
        };
        Ok(g)
    }
}

/// A one-hot cotangent (`Backend::conv2d_input_grad_onehot`): item i's is `seed[i]` (one plane)
/// in channel `first_channel + i / group`, zero in every other channel.
#[derive(Clone, Copy)]
pub(crate) struct OneHot<'a> {
    pub seed: &'a [f32],
    pub first_channel: usize,
    pub group: usize,
}

impl OneHot<'_> {
    /// `pack(c)` for the filter c of every group of the n items (channels `first_channel..`, one
    /// per `group` items), in parallel; item i's is entry `i / group`.
    pub fn per_filter<T: Send>(&self, n: usize, pack: impl Fn(usize) -> T + Sync) -> Vec<T> {
        (0..n.div_ceil(self.group))
            .into_par_iter()
            .map(|f| pack(self.first_channel + f))
            .collect()
    }
}

/// Column offsets for a batch of planes: column j = (item, pixel) -> item * item_stride + pixel.
fn batch_offsets(items: usize, plane: usize, item_stride: usize) -> Vec<usize> {
    (0..items * plane)
        .map(|j| (j / plane) * item_stride + j % plane)
        .collect()
}

/// B operand of the forward pass: im2col(x), rows p = (ci, kh, kw), columns j = (n, oh, ow).
struct Im2col<'a> {
    x: &'a [f32],
    g: Geom,
}

impl Pack for Im2col<'_> {
    fn pack(&self, j0: usize, count: usize, p0: usize, kb: usize, out: &mut [f32]) {
        let g = &self.g;
        let (hwi, hwo, kk) = (g.hi * g.wi, g.ho * g.wo, g.k * g.k);
        let (hi, wi) = (g.hi as isize, g.wi as isize);
        for q in 0..count.div_ceil(NR) {
            let panel = &mut out[q * kb * NR..(q + 1) * kb * NR];
            // Per column: item base offset and top-left input coordinate of its window.
            let mut base = [0usize; NR];
            let mut ih0 = [isize::MIN / 4; NR];
            let mut iw0 = [0isize; NR];
            let nv = NR.min(count - q * NR);
            for jj in 0..nv {
                let j = j0 + q * NR + jj;
                let (n, pix) = (j / hwo, j % hwo);
                base[jj] = n * g.ci * hwi;
                ih0[jj] = (pix / g.wo * g.s) as isize - g.p as isize;
                iw0[jj] = (pix % g.wo * g.s) as isize - g.p as isize;
            }
            let s = g.s as isize;
            let contiguous = nv == NR
                && (1..NR).all(|jj| {
                    base[jj] == base[0] && ih0[jj] == ih0[0] && iw0[jj] == iw0[0] + s * jj as isize
                });
            // Whole output rows of one item (small images: wo divides NR); any stride.
            let rows_mode = !contiguous
                && nv == NR
                && NR % g.wo == 0
                && iw0[0] == -(g.p as isize)
                && (1..NR).all(|jj| {
                    base[jj] == base[0]
                        && ih0[jj] == ih0[0] + s * (jj / g.wo) as isize
                        && iw0[jj] == iw0[0] + s * (jj % g.wo) as isize
                });
            for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                let pp = p0 + p;
                let (ci, t) = (pp / kk, pp % kk);
                let (kh, kw) = ((t / g.k) as isize, (t % g.k) as isize);
                let plane = &self.x[ci * hwi..];
                if rows_mode {
                    for (rr, seg) in dst.chunks_exact_mut(g.wo).enumerate() {
                        let ih = ih0[0] + s * rr as isize + kh;
                        if ih < 0 || ih >= hi {
                            seg.fill(0.0);
                        } else {
                            let o = base[0] + ih as usize * g.wi;
                            copy_window(seg, &plane[o..o + g.wi], iw0[0] + kw, g.s);
                        }
                    }
                } else if contiguous {
                    let ih = ih0[0] + kh;
                    if ih < 0 || ih >= hi {
                        dst.fill(0.0);
                        continue;
                    }
                    let row =
                        &plane[base[0] + ih as usize * g.wi..base[0] + (ih as usize + 1) * g.wi];
                    let st = iw0[0] + kw;
                    copy_window(dst, row, st, g.s);
                } else {
                    for jj in 0..NR {
                        let (ih, iw) = (ih0[jj] + kh, iw0[jj] + kw);
                        dst[jj] = if ih >= 0 && ih < hi && iw >= 0 && iw < wi {
                            plane[base[jj] + ih as usize * g.wi + iw as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// B operand of the input gradient: rows p = (co, kh, kw), columns j = (n, ih, iw); the value is
/// dy[n_off + n, co, oh, ow] when ih + pad - kh = oh * s and iw + pad - kw = ow * s, else 0.
/// `cn` is dy's channel count (1 for the one-hot seed).
struct IgradB<'a> {
    dy: &'a [f32],
    cn: usize,
    n_off: usize,
    g: Geom,
}

impl Pack for IgradB<'_> {
    fn pack(&self, j0: usize, count: usize, p0: usize, kb: usize, out: &mut [f32]) {
        let g = &self.g;
        let (hwi, hwo, kk) = (g.hi * g.wi, g.ho * g.wo, g.k * g.k);
        let (s, ho, wo) = (g.s as isize, g.ho as isize, g.wo as isize);
        for q in 0..count.div_ceil(NR) {
            let panel = &mut out[q * kb * NR..(q + 1) * kb * NR];
            let mut base = [0usize; NR];
            let mut a = [isize::MIN / 4; NR]; // ih + pad
            let mut b = [0isize; NR]; // iw + pad
            let nv = NR.min(count - q * NR);
            for jj in 0..nv {
                let j = j0 + q * NR + jj;
                let (n, pix) = (j / hwi, j % hwi);
                base[jj] = (self.n_off + n) * self.cn * hwo;
                a[jj] = (pix / g.wi + g.p) as isize;
                b[jj] = (pix % g.wi + g.p) as isize;
            }
            let contiguous = nv == NR
                && g.s == 1
                && (1..NR)
                    .all(|jj| base[jj] == base[0] && a[jj] == a[0] && b[jj] == b[0] + jj as isize);
            // Whole input rows of one item (small images: wi divides NR).
            let rows_mode = !contiguous
                && nv == NR
                && g.s == 1
                && NR % g.wi == 0
                && b[0] == g.p as isize
                && (1..NR).all(|jj| {
                    base[jj] == base[0]
                        && a[jj] == a[0] + (jj / g.wi) as isize
                        && b[jj] == b[0] + (jj % g.wi) as isize
                });
            for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                let pp = p0 + p;
                let (co, t) = (pp / kk, pp % kk);
                let (kh, kw) = ((t / g.k) as isize, (t % g.k) as isize);
                let plane = &self.dy[co * hwo..];
                if rows_mode {
                    for (rr, seg) in dst.chunks_exact_mut(g.wi).enumerate() {
                        let oh = a[0] + rr as isize - kh;
                        if oh < 0 || oh >= ho {
                            seg.fill(0.0);
                        } else {
                            let o = base[0] + oh as usize * g.wo;
                            copy_window(seg, &plane[o..o + g.wo], b[0] - kw, 1);
                        }
                    }
                } else if contiguous {
                    let oh = a[0] - kh;
                    if oh < 0 || oh >= ho {
                        dst.fill(0.0);
                        continue;
                    }
                    let row =
                        &plane[base[0] + oh as usize * g.wo..base[0] + (oh as usize + 1) * g.wo];
                    let st = b[0] - kw;
                    copy_window(dst, row, st, 1);
                } else if g.s == 1 {
                    for jj in 0..NR {
                        let (th, tw) = (a[jj] - kh, b[jj] - kw);
                        dst[jj] = if th >= 0 && tw >= 0 && th < ho && tw < wo {
                            plane[base[jj] + th as usize * g.wo + tw as usize]
                        } else {
                            0.0
                        };
                    }
                } else {
                    for jj in 0..NR {
                        let (th, tw) = (a[jj] - kh, b[jj] - kw);
                        dst[jj] = if th >= 0
                            && tw >= 0
                            && th % s == 0
                            && tw % s == 0
                            && th / s < ho
                            && tw / s < wo
                        {
                            plane[base[jj] + (th / s) as usize * g.wo + (tw / s) as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// A operand of the input gradient: W'[ci, (co, kh, kw)] = w[co, ci, kh, kw].
struct WTrans<'a> {
    w: &'a [f32],
    g: Geom,
}

impl Pack for WTrans<'_> {
    fn pack(&self, i0: usize, count: usize, p0: usize, kb: usize, out: &mut [f32]) {
        let (ci_n, kk) = (self.g.ci, self.g.k * self.g.k);
        for q in 0..count.div_ceil(MR) {
            let panel = &mut out[q * kb * MR..(q + 1) * kb * MR];
            for r in 0..MR {
                let ci = i0 + q * MR + r;
                let valid = q * MR + r < count;
                for p in 0..kb {
                    let pp = p0 + p;
                    panel[p * MR + r] = if valid {
                        self.w[((pp / kk) * ci_n + ci) * kk + pp % kk]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Writes im2col(x)[r, p0 .. p0 + kb] (r = (ci, kh, kw), p = (n, oh, ow)) to dst[t * step].
fn im2col_run(g: &Geom, x: &[f32], r: usize, p0: usize, kb: usize, dst: &mut [f32], step: usize) {
    let (hwi, hwo, kk) = (g.hi * g.wi, g.ho * g.wo, g.k * g.k);
    let (ci, t) = (r / kk, r % kk);
    let (kh, kw) = (
        (t / g.k) as isize - g.p as isize,
        (t % g.k) as isize - g.p as isize,
    );
    let (hi, wi, s) = (g.hi as isize, g.wi as isize, g.s as isize);
    // Output columns whose input column ow * s + kw lies inside [0, wi).
    let ow_lo = if kw < 0 {
        ((-kw + s - 1) / s) as usize
    } else {
        0
    }
    .min(g.wo);
    let ow_hi = if wi - 1 - kw < 0 {
        0
    } else {
        ((wi - 1 - kw) / s + 1) as usize
    }
    .clamp(ow_lo, g.wo);
    let (mut n, mut pix) = (p0 / hwo, p0 % hwo);
    let mut p = 0;
    while p < kb {
        // One run along an output row: columns ow0 .. ow1 of row oh of item n.
        let (oh, ow0) = (pix / g.wo, pix % g.wo);
        let ow1 = ow0 + (g.wo - ow0).min(kb - p);
        let ih = (oh * g.s) as isize + kh;
        let d = &mut dst[p * step..];
        if ih < 0 || ih >= hi {
            for ow in ow0..ow1 {
                d[(ow - ow0) * step] = 0.0;
            }
        } else {
            let row = &x[(n * g.ci + ci) * hwi + ih as usize * g.wi..];
            let (lo, hi_) = (
                ow_lo.clamp(ow0, ow1),
                ow_hi.clamp(ow0, ow1).max(ow_lo.clamp(ow0, ow1)),
            );
            for ow in ow0..lo {
                d[(ow - ow0) * step] = 0.0;
            }
            for ow in lo..hi_ {
                d[(ow - ow0) * step] = row[(ow as isize * s + kw) as usize];
            }
            for ow in hi_..ow1 {
                d[(ow - ow0) * step] = 0.0;
            }
        }
        p += ow1 - ow0;
        pix += ow1 - ow0;
        if pix == hwo {
            pix = 0;
            n += 1;
        }
    }
}

/// B operand of the weight gradient: im2col(x)^T, rows k = (n, oh, ow), columns r = (ci, kh, kw).
struct Im2colT<'a> {
    x: &'a [f32],
    g: Geom,
}

impl Pack for Im2colT<'_> {
    fn pack(&self, j0: usize, count: usize, p0: usize, kb: usize, out: &mut [f32]) {
        for q in 0..count.div_ceil(NR) {
            let panel = &mut out[q * kb * NR..(q + 1) * kb * NR];
            for jj in 0..NR {
                if q * NR + jj < count {
                    im2col_run(
                        &self.g,
                        self.x,
                        j0 + q * NR + jj,
                        p0,
                        kb,
                        &mut panel[jj..],
                        NR,
                    );
                } else {
                    for p in 0..kb {
                        panel[p * NR + jj] = 0.0;
                    }
                }
            }
        }
    }
}

/// A operand of the weight gradient: dy as rows co, k = (n, oh, ow).
struct DyA<'a> {
    dy: &'a [f32],
    g: Geom,
}

impl Pack for DyA<'_> {
    fn pack(&self, i0: usize, count: usize, p0: usize, kb: usize, out: &mut [f32]) {
        let g = &self.g;
        let hwo = g.ho * g.wo;
        for q in 0..count.div_ceil(MR) {
            let panel = &mut out[q * kb * MR..(q + 1) * kb * MR];
            for r in 0..MR {
                if q * MR + r >= count {
                    for p in 0..kb {
                        panel[p * MR + r] = 0.0;
                    }
                    continue;
                }
                let co = i0 + q * MR + r;
                let (mut n, mut pix) = (p0 / hwo, p0 % hwo);
                let mut p = 0;
                while p < kb {
                    let seg = (hwo - pix).min(kb - p);
                    let src = &self.dy[(n * g.co + co) * hwo + pix..][..seg];
                    for (t, &v) in src.iter().enumerate() {
                        panel[(p + t) * MR + r] = v;
                    }
                    p += seg;
                    pix += seg;
                    if pix == hwo {
                        pix = 0;
                        n += 1;
                    }
                }
            }
        }
    }
}

/// dst[jj] = row[st + step * jj] where that index is inside `row`, else 0 (one row of a padded,
/// possibly strided window). Windows are 4 to 16 floats: the inside case copies fixed-size arrays
/// (stride 1) or gathers with a fixed step, and the border case goes element by element, so none
/// calls memmove/memset (whose call overhead dominated packing).
#[inline]
fn copy_window(dst: &mut [f32], row: &[f32], st: isize, step: usize) {
    let n = dst.len();
    if n > 0 && st >= 0 && st as usize + step * (n - 1) < row.len() {
        let src = &row[st as usize..];
        if step == 1 {
            let src = &src[..n];
            match n {
                16 => copy_fixed::<16>(dst, src),
                8 => copy_fixed::<8>(dst, src),
                4 => copy_fixed::<4>(dst, src),
                _ => dst.copy_from_slice(src),
            }
        } else {
            for (jj, d) in dst.iter_mut().enumerate() {
                *d = src[step * jj];
            }
        }
        return;
    }
    let len = row.len() as isize;
    for (jj, d) in dst.iter_mut().enumerate() {
        let i = st + (step * jj) as isize;
        *d = if i >= 0 && i < len {
            row[i as usize]
        } else {
            0.0
        };
    }
}

#[inline(always)]
fn copy_fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
    let d: &mut [f32; N] = dst.try_into().expect("window length");
    *d = *<&[f32; N]>::try_from(src).expect("window length");
}

pub fn forward(p: &ConvParams, x: &Tensor, w: &Tensor, y: &mut Tensor) -> Result<()> {
    forward_of("conv2d_forward", p, x, None, w, y)
}

pub fn forward_bn(
    p: &ConvParams,
    x: &Tensor,
    bn: BnLayer<&Tensor>,
    w: &Tensor,
    y: &mut Tensor,
) -> Result<()> {
    forward_of("conv2d_forward_bn", p, x, Some(bn), w, y)
}

/// The forward of x, or of relu(bn(x)) with `bn`: the direct paths map x as they pad it; the
/// others (Winograd, the GEMM) read a mapped copy, which is what `batchnorm_train_forward` would
/// have written.
fn forward_of(
    op: &'static str,
    p: &ConvParams,
    x: &Tensor,
    bn: Option<BnLayer<&Tensor>>,
    w: &Tensor,
    y: &mut Tensor,
) -> Result<()> {
    let g = Geom::new(op, p)?;
    shapes::conv_forward_of(op, p, x, bn.as_ref(), w, y)?;
    let coefs = bn.map(|bn| BnCoefs::new(op, &bn)).transpose()?;
    let map = coefs.as_ref().map(BnCoefs::map);
    let [xs, ws] = hosts(op, [("x", x), ("w", w)])?;
    let ys = host_mut(op, "y", y)?;
    let mapped = map
        .filter(|_| winograd::suits(&g) || !direct::suits(&g))
        .map(|m| m.materialize(xs, g.ci, g.hi * g.wi));
    let xs = mapped.as_deref().unwrap_or(xs);
    if winograd::suits(&g) {
        winograd::forward(&g, xs, ws, ys);
        return Ok(());
    }
    if direct::suits(&g) {
        direct::forward(&g, xs, map, ws, ys);
        return Ok(());
    }
    let (hwo, kdim) = (g.ho * g.wo, g.ci * g.k * g.k);
    let pa = PackedA::new(
        g.co,
        kdim,
        1,
        &RowMajor {
            data: ws,
            rows: g.co,
            ld: kdim,
        },
    );
    let coff = batch_offsets(g.n, hwo, g.co * hwo);
    let c = COut {
        ptr: ys.as_mut_ptr(),
        rs: hwo,
        coff: &coff,
    };
    gemm(
        g.co,
        g.n * hwo,
        kdim,
        1,
        ASrc::Packed(&pa),
        &Im2col { x: xs, g },
        &c,
    );
    Ok(())
}

pub fn input_grad(p: &ConvParams, dy: &Tensor, w: &Tensor, dx: &mut Tensor) -> Result<()> {
    const OP: &str = "conv2d_input_grad";
    let g = Geom::new(OP, p)?;
    shapes::conv_input_grad(p, dy, w, dx)?;
    let [gs, ws] = hosts(OP, [("dy", dy), ("w", w)])?;
    let o = host_mut(OP, "dx", dx)?;
    if winograd::suits_input_grad(&g) {
        winograd::input_grad(&g, gs, ws, o);
        return Ok(());
    }
    if direct::suits_input_grad(&g) {
        direct::input_grad(&g, gs, ws, o);
        return Ok(());
    }
    if direct_dgrad::suits(&g) {
        direct_dgrad::input_grad(&g, gs, ws, o);
        return Ok(());
    }
    if g.s > 1 {
        conv_strided::input_grad(&g, gs, ws, o);
        return Ok(());
    }
    let (hwi, kk) = (g.hi * g.wi, g.k * g.k);
    let pa = PackedA::new(g.ci, g.co * kk, kk, &WTrans { w: ws, g });
    let coff = batch_offsets(g.n, hwi, g.ci * hwi);
    let c = COut {
        ptr: o.as_mut_ptr(),
        rs: hwi,
        coff: &coff,
    };
    gemm(
        g.ci,
        g.n * hwi,
        g.co * kk,
        kk,
        ASrc::Packed(&pa),
        &IgradB {
            dy: gs,
            cn: g.co,
            n_off: 0,
            g,
        },
        &c,
    );
    Ok(())
}

pub fn input_grad_onehot(
    p: &ConvParams,
    seed: &Tensor,
    w: &Tensor,
    first_channel: usize,
    group: usize,
    dx: &mut Tensor,
) -> Result<()> {
    const OP: &str = "conv2d_input_grad_onehot";
    let g = Geom::new(OP, p)?;
    shapes::conv_input_grad_onehot(p, seed, w, first_channel, group, dx)?;
    let [ss, ws] = hosts(OP, [("seed", seed), ("w", w)])?;
    let oh = OneHot {
        seed: ss,
        first_channel,
        group,
    };
    let o = host_mut(OP, "dx", dx)?;
    if winograd::suits_input_grad(&g) {
        winograd::input_grad_onehot(&g, oh, ws, o);
        return Ok(());
    }
    if direct::suits_input_grad(&g) {
        direct::input_grad_onehot(&g, oh, ws, o);
        return Ok(());
    }
    if direct_dgrad::suits(&g) {
        direct_dgrad::input_grad_onehot(&g, oh, ws, o);
        return Ok(());
    }
    if g.s > 1 {
        conv_strided::input_grad_onehot(&g, oh, ws, o);
        return Ok(());
    }
    let (hwi, kk) = (g.hi * g.wi, g.k * g.k);
    let item = g.ci * hwi;
    let out = OutPtr(o.as_mut_ptr());
    // One GEMM per filter: items [gi * group, ..) use filter first_channel + gi.
    (0..g.n.div_ceil(group)).into_par_iter().for_each(|gi| {
        // Capture the whole OutPtr (Sync), not its raw-pointer field (edition-2021 closures).
        #[allow(clippy::redundant_locals)]
        let out = out;
        let ch = first_channel + gi;
        let items = group.min(g.n - gi * group);
        let a = RowMajor {
            data: &ws[ch * g.ci * kk..(ch + 1) * g.ci * kk],
            rows: g.ci,
            ld: kk,
        };
        let b = IgradB {
            dy: ss,
            cn: 1,
            n_off: gi * group,
            g,
        };
        let coff = batch_offsets(items, hwi, item);
        // SAFETY: items of different groups are disjoint ranges of dx.
        let c = COut {
            ptr: unsafe { out.0.add(gi * group * item) },
            rs: hwi,
            coff: &coff,
        };
        gemm(g.ci, items * hwi, kk, kk, ASrc::Pack(&a), &b, &c);
    });
    Ok(())
}

pub fn weight_grad(p: &ConvParams, x: &Tensor, dy: &Tensor, dw: &mut Tensor) -> Result<()> {
    weight_grad_of("conv2d_weight_grad", p, x, None, dy, dw)
}

pub fn weight_grad_bn(
    p: &ConvParams,
    x: &Tensor,
    bn: BnLayer<&Tensor>,
    dy: &Tensor,
    dw: &mut Tensor,
) -> Result<()> {
    weight_grad_of("conv2d_weight_grad_bn", p, x, Some(bn), dy, dw)
}

/// The weight gradient of x, or of relu(bn(x)) with `bn`, mapped as `forward_of` maps it.
fn weight_grad_of(
    op: &'static str,
    p: &ConvParams,
    x: &Tensor,
    bn: Option<BnLayer<&Tensor>>,
    dy: &Tensor,
    dw: &mut Tensor,
) -> Result<()> {
    let g = Geom::new(op, p)?;
    shapes::conv_weight_grad_of(op, p, x, bn.as_ref(), dy, dw)?;
    let coefs = bn.map(|bn| BnCoefs::new(op, &bn)).transpose()?;
    let map = coefs.as_ref().map(BnCoefs::map);
    let [xs, gs] = hosts(op, [("x", x), ("dy", dy)])?;
    let o = host_mut(op, "dw", dw)?;
    if direct_wgrad::suits_weight_grad(&g) {
        direct_wgrad::weight_grad(&g, xs, map, gs, o);
        return Ok(());
    }
    if direct_px::suits_weight_grad(&g) {
        direct_px::weight_grad(&g, xs, map, gs, o);
        return Ok(());
    }
    let mapped = map.map(|m| m.materialize(xs, g.ci, g.hi * g.wi));
    let xs = mapped.as_deref().unwrap_or(xs);
    let r = g.ci * g.k * g.k;
    let coff: Vec<usize> = (0..r).collect();
    let c = COut {
        ptr: o.as_mut_ptr(),
        rs: r,
        coff: &coff,
    };
    let (a, b) = (DyA { dy: gs, g }, Im2colT { x: xs, g });
    gemm(g.co, r, g.n * g.ho * g.wo, 1, ASrc::Pack(&a), &b, &c);
    Ok(())
}
