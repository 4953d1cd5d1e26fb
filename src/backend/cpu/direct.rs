//! Direct convolution (no im2col packing): the forward pass (any stride: strided inputs are split
//! into phase planes, see `DGeom`), the stride-1 input gradient (a stride-1 convolution of dy with
//! the flipped, transposed filters) and the one-hot input gradient of the FRG scan; its 3x3 weight
//! gradient is `direct_wgrad`, strided input gradients `direct_dgrad`, small planes `direct_px`.
//!
//! Design: each item's input is copied once into a zero-padded buffer (`Hp x Wp` per channel), so
//! every output vector of 16 pixels reads its (ci, kh, kw) term as one contiguous, unaligned
//! 16-float load at `ci * plane + kh * Wp + kw` from its base offset: the im2col panel the GEMM path
//! packs (K x N floats for every conv, amortised over only M = C_out rows, which at 16-64 channels
//! costs as much as the arithmetic) is never written. A tile is 8 output channels x 32 pixels (two
//! vectors): per K step, 2 loads and 8 weight broadcasts feed 16 fused multiply-adds. Weights are
//! repacked once per call into panels of 8 channels, K-major.
//!
//! Pixel layouts: when the output width is a multiple of 16, vectors are whole 16-pixel runs of
//! output rows (no waste). Otherwise vectors run over the padded grid (lane q = oh * Wp + ow, the
//! lanes with ow >= Wo are computed and dropped), which keeps every load contiguous.
//!
//! Every output element sums its K terms in ascending (ci, kh, kw) order with one multiply-add per
//! term, from zero, in registers; the AVX-512 and AVX2 kernels give bitwise equal results. The
//! one-hot input gradient runs the same terms of its one channel: the full gradient of a
//! cotangent that is zero elsewhere adds exact zeros around them, so the two are bitwise equal.
//! Tasks own disjoint (item, channel-panel) ranges: results do not depend on the thread count.
use std::ops::Range;

use rayon::prelude::*;

use super::conv::{Geom, OneHot};
use super::direct_px::{self, CW};
use super::gemm::by_isa;
use super::norm::BnMap;

/// Output channels per tile.
const DR: usize = 8;
/// Pixels per vector, and vectors per tile.
pub(super) const V: usize = 16;
const NV: usize = 2;

pub(super) type DTile = [[[f32; V]; NV]; DR];
/// What a kernel reads for one tile: K, the weight panel [K][DR], the input bases of the tile's
/// vectors, the K offsets.
#[derive(Clone, Copy)]
pub(super) struct DCall {
    kdim: usize,
    w: *const f32,
    x: [*const f32; NV],
    koff: *const u32,
}
pub(super) type DMicroFn = unsafe fn(DCall) -> DTile;

/// Geometry of one direct convolution: input planes `ci` of `hi x wi` padded by `p`, `k x k`
/// filters, stride `s`, output `co` planes of `ho x wo`.
///
/// With stride s the padded input is split into phase planes: phase (a, b) of channel c holds the
/// padded pixels (i * s + a, j * s + b) at (i, j) of a `hp() x wp()` grid (`hp() = ceil(Hp / s)`),
/// so output pixel (oh, ow) reads term (c, kh, kw) at (oh + kh / s, ow + kw / s) of phase
/// (kh % s, kw % s): a stride-1 walk over the grid, the same kernels and lane layouts as stride 1
/// (where the grid is the padded plane itself). Phases no filter tap reads (a >= k) are not stored.
///
/// `origin` is the grid offset of output pixel (0, 0) (non-zero for the phases of a strided input
/// gradient, `direct_dgrad`).
///
/// The convolution's fields are those of its `Geom` (read through `Deref`; `n` is not used: a
/// geometry describes one item).
#[derive(Clone, Copy, Debug)]
pub(super) struct DGeom {
    pub geom: Geom,
    pub origin: usize,
    /// Pixel layout (`direct_px`), fixed when the geometry is built (`with_layout`).
    pub px: bool,
}

impl std::ops::Deref for DGeom {
    type Target = Geom;
    fn deref(&self) -> &Geom {
        &self.geom
    }
}

impl DGeom {
    /// Grid rows and columns (of one phase plane).
    fn hp(&self) -> usize {
        (self.hi + 2 * self.p).div_ceil(self.s)
    }
    pub fn wp(&self) -> usize {
        (self.wi + 2 * self.p).div_ceil(self.s)
    }
    /// Phases stored per dimension.
    fn phases(&self) -> usize {
        self.s.min(self.k)
    }
    /// Floats per phase plane (rounded up to a cache line).
    pub fn plane(&self) -> usize {
        (self.hp() * self.wp()).div_ceil(16) * 16
    }
    /// Padded buffer length: every (garbage-lane) read stays inside.
    pub fn buf_len(&self) -> usize {
        self.ci * self.phases().pow(2) * self.plane() + self.k * self.wp() + NV * V + V
    }
    /// Planes not made of whole 16-pixel rows are vectorised over output channels instead when
    /// the channels fill the pixel layout's panels (no lane wasted either way).
    pub fn with_layout(self) -> Self {
        DGeom {
            px: !self.row_layout() && fills_panels(self.co),
            ..self
        }
    }
    pub fn pixel_layout(&self) -> bool {
        self.px
    }
    /// Output channels per weight panel.
    pub fn panel_width(&self) -> usize {
        if self.pixel_layout() {
            CW
        } else {
            DR
        }
    }
    pub fn row_layout(&self) -> bool {
        self.wo % V == 0
    }
    /// Vectors per output plane.
    pub fn vectors(&self) -> usize {
        if self.row_layout() {
            self.ho * self.wo / V
        } else {
            ((self.ho - 1) * self.wp() + self.wo).div_ceil(V)
        }
    }
    /// Item i's input planes (`ci` of `hi x wi`) in the batch `x`.
    pub fn item<'a>(&self, x: &'a [f32], i: usize) -> &'a [f32] {
        let len = self.ci * self.hi * self.wi;
        &x[i * len..(i + 1) * len]
    }
    /// Grid offset of output pixel q (row-major over ho x wo).
    pub fn pixel_off(&self, q: usize) -> usize {
        self.origin + (q / self.wo) * self.wp() + q % self.wo
    }
    /// Input offset (in the padded plane) of vector j's first lane.
    pub fn in_off(&self, j: usize) -> usize {
        if self.row_layout() {
            self.pixel_off(j * V)
        } else {
            self.origin + j * V
        }
    }
}

/// Which shapes take the direct path: at least 60% of the computed lanes kept (32x32 and 16x16
/// output planes: all of them; 8x8: 64 of 96 at stride 1 and 2; 4x4 planes, 16 of 32, stay on the
/// GEMM path).
/// Smaller planes take the pixel layout (`direct_px`) when their channels fill its 32-wide panels
/// to 75% or more (4x4 planes at 24, 48, 64.. channels); the rest stay on the GEMM path.
pub(crate) fn suits(g: &Geom) -> bool {
    g.s > 0 && g.n > 0 && g.ho > 0 && g.wo > 0 && fits(&dgeom(g))
}

/// At least 60% of the lanes a geometry computes are output pixels.
pub(super) fn keeps_lanes(d: &DGeom) -> bool {
    let lanes = d.vectors().div_ceil(NV) * NV * V;
    10 * d.ho * d.wo >= 6 * lanes
}

/// The lane layout keeps its lanes, or the pixel layout its channels.
pub(super) fn fits(d: &DGeom) -> bool {
    keeps_lanes(d) || fills_panels(d.co)
}

/// `co` channels fill the pixel layout's 32-wide panels to 75% or more.
pub(super) fn fills_panels(co: usize) -> bool {
    4 * co >= 3 * co.div_ceil(CW) * CW
}

/// The input gradient of a stride-1 conv is a stride-1 conv of dy with padding k - 1 - p.
pub(crate) fn suits_input_grad(g: &Geom) -> bool {
    g.s == 1 && g.p < g.k && suits(&transposed(g))
}

pub(super) fn transposed(g: &Geom) -> Geom {
    Geom {
        n: g.n,
        ci: g.co,
        hi: g.ho,
        wi: g.wo,
        co: g.ci,
        ho: g.hi,
        wo: g.wi,
        k: g.k,
        s: 1,
        p: g.k - 1 - g.p,
    }
}

pub(super) fn dgeom(g: &Geom) -> DGeom {
    DGeom {
        geom: *g,
        origin: 0,
        px: false,
    }
    .with_layout()
}

/// Packs filters `wf(o, p)` (o < co output channels, p < K) into panels of `width` channels
/// (`DGeom::panel_width`), K-major; channels beyond `co` are zero. Panels are packed in parallel
/// and written once each (no clearing pass first): at 4x4 the 512-channel filters (9.4 MB) are a
/// tenth of a batch-32 convolution's time when packed on one thread.
pub(super) fn pack_panels(
    width: usize,
    co: usize,
    kdim: usize,
    wf: impl Fn(usize, usize) -> f32 + Sync,
) -> Vec<f32> {
    let len = co.div_ceil(width) * kdim * width;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if len > 0 {
        out.spare_capacity_mut()[..len]
            .par_chunks_exact_mut(kdim * width)
            .enumerate()
            .for_each(|(q, panel)| {
                for (p, terms) in panel.chunks_exact_mut(width).enumerate() {
                    for (r, t) in terms.iter_mut().enumerate() {
                        let o = q * width + r;
                        t.write(if o < co { wf(o, p) } else { 0.0 });
                    }
                }
            });
    }
    // SAFETY: the loop above wrote every one of the first `len` elements.
    unsafe { out.set_len(len) };
    out
}

/// K offsets of term p = (ci, kh, kw) in the padded buffer: phase plane (kh % s, kw % s) of
/// channel ci, grid offset (kh / s, kw / s).
pub(super) fn k_offsets(d: &DGeom) -> Vec<u32> {
    let (plane, wp, s, ph) = (d.plane(), d.wp(), d.s, d.phases());
    let mut v = Vec::with_capacity(d.ci * d.k * d.k);
    for ci in 0..d.ci {
        for kh in 0..d.k {
            for kw in 0..d.k {
                let phase = (ci * ph + kh % s) * ph + kw % s;
                v.push((phase * plane + (kh / s) * wp + kw / s) as u32);
            }
        }
    }
    v
}

/// Copies one item's `ci` planes into the zero-padded buffer (split into phase planes when the
/// stride is above 1), through `map` when the convolution reads relu(bn(x)) (`conv2d_*_bn`). A
/// buffer serves one geometry (one call): its border and slack are zeroed when it is first sized
/// and never written after, so later items only overwrite the interior.
pub(super) fn pad_item(d: &DGeom, x: &[f32], buf: &mut Vec<f32>, map: Option<BnMap>) {
    if buf.len() != d.buf_len() {
        buf.clear();
        buf.resize(d.buf_len(), 0.0);
    }
    pad_into(d, x, buf, map);
}

/// Writes one item's planes into the interior of a padded buffer whose border is already zero.
/// Compiled for the CPU's vector width, as the batchnorm map's rows vectorise.
pub(super) fn pad_into(d: &DGeom, x: &[f32], buf: &mut [f32], map: Option<BnMap>) {
    by_isa!(
        // SAFETY: the instruction set was detected (gemm::isa).
        unsafe { pad_into_avx512(d, x, buf, map) },
        // SAFETY: as above.
        unsafe { pad_into_avx2(d, x, buf, map) },
        pad_rows(d, x, buf, map),
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn pad_into_avx512(d: &DGeom, x: &[f32], buf: &mut [f32], map: Option<BnMap>) {
    pad_rows(d, x, buf, map)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pad_into_avx2(d: &DGeom, x: &[f32], buf: &mut [f32], map: Option<BnMap>) {
    pad_rows(d, x, buf, map)
}

/// `pad_into`'s body, inlined into each instruction set's copy.
#[inline(always)]
fn pad_rows(d: &DGeom, x: &[f32], buf: &mut [f32], map: Option<BnMap>) {
    let (plane, wp, hw, s, ph) = (d.plane(), d.wp(), d.hi * d.wi, d.s, d.phases());
    // A mapped row, for the strided layouts.
    let mut mapped = vec![0.0; if map.is_some() && s > 1 { d.wi } else { 0 }];
    for c in 0..d.ci {
        let src = &x[c * hw..(c + 1) * hw];
        for (h, row) in src.chunks_exact(d.wi).enumerate() {
            let hh = h + d.p;
            if hh % s >= ph {
                continue;
            }
            let base = (c * ph + hh % s) * ph * plane + (hh / s) * wp;
            if s == 1 {
                let dst = &mut buf[base + d.p..][..d.wi];
                match map {
                    Some(m) => m.apply(c, row, dst),
                    None => dst.copy_from_slice(row),
                }
                continue;
            }
            let row = match map {
                Some(m) => {
                    m.apply(c, row, &mut mapped);
                    &mapped[..]
                }
                None => row,
            };
            if s == 2 && ph == 2 && d.wi.is_multiple_of(2) {
                // Even and odd columns in one pass (a loop the compiler vectorises).
                let (be, bo) = (d.p % 2, (d.p + 1) % 2);
                let (oe, oo) = (
                    base + be * plane + d.p / 2,
                    base + bo * plane + d.p.div_ceil(2),
                );
                let (lo, hi) = buf.split_at_mut(oe.max(oo));
                let (de, dodd) = if oe < oo {
                    (&mut lo[oe..], hi)
                } else {
                    (hi, &mut lo[oo..])
                };
                for ((pair, e), o) in row.chunks_exact(2).zip(de.iter_mut()).zip(dodd.iter_mut()) {
                    *e = pair[0];
                    *o = pair[1];
                }
                continue;
            }
            if s == 2 && ph == 1 && d.wi.is_multiple_of(2) {
                // 1x1 at stride 2: the columns of one parity, in one vectorised pass.
                let w0 = d.p % 2;
                let dst = &mut buf[base + (w0 + d.p) / 2..];
                for (o, pair) in dst.iter_mut().zip(row.chunks_exact(2)) {
                    *o = pair[w0];
                }
                continue;
            }
            // Column phase b holds the columns w = w0, w0 + s, .. with (w0 + p) % s == b.
            for b in 0..ph {
                let w0 = (b + s - d.p % s) % s;
                if w0 >= d.wi {
                    continue;
                }
                let dst = &mut buf[base + b * plane + (w0 + d.p) / s..];
                for (o, &v) in dst.iter_mut().zip(row[w0..].iter().step_by(s)) {
                    *o = v;
                }
            }
        }
    }
}

/// Writes the valid lanes of a tile's vectors (j0, j0 + 1) for panel channels o0.. to y planes.
fn store_tile(d: &DGeom, tile: &DTile, j0: usize, o0: usize, y: &mut [f32]) {
    let hw = d.ho * d.wo;
    let rows = DR.min(d.co - o0);
    for v in 0..NV {
        let j = j0 + v;
        if j >= d.vectors() {
            break;
        }
        if d.row_layout() {
            for r in 0..rows {
                y[(o0 + r) * hw + j * V..][..V].copy_from_slice(&tile[r][v]);
            }
        } else {
            let wp = d.wp();
            let mut lane = 0;
            while lane < V {
                let q = j * V + lane;
                let (oh, ow) = (q / wp, q % wp);
                if oh >= d.ho {
                    break;
                }
                if ow >= d.wo {
                    lane += wp - ow;
                    continue;
                }
                let run = (d.wo - ow).min(V - lane);
                for r in 0..rows {
                    y[(o0 + r) * hw + oh * d.wo + ow..][..run]
                        .copy_from_slice(&tile[r][v][lane..lane + run]);
                }
                lane += run;
            }
        }
    }
}

/// All `d.co` output planes of one item from `panels` (theirs, in order): y is [co, ho, wo].
pub(super) fn run_item(
    d: &DGeom,
    micro: DMicroFn,
    panels: &[f32],
    koff: &[u32],
    xp: &[f32],
    y: &mut [f32],
) {
    if d.pixel_layout() {
        direct_px::run_item(d, panels, koff, xp, y);
        return;
    }
    let kdim = koff.len();
    let npanels = d.co.div_ceil(DR);
    assert!(xp.len() >= d.buf_len() && panels.len() >= npanels * kdim * DR);
    let nvec = d.vectors();
    for q in 0..npanels {
        let wpanel = &panels[q * kdim * DR..(q + 1) * kdim * DR];
        for j0 in (0..nvec).step_by(NV) {
            let o0 = d.in_off(j0);
            let o1 = if j0 + 1 < nvec { d.in_off(j0 + 1) } else { o0 };
            // SAFETY: the kernel reads wpanel[..kdim * DR] and xp[o + koff[p] .. + V] for o in
            // {o0, o1}; koff[p] + o + V <= buf_len by construction of the padded buffer (the
            // largest offset is (ci-1) * plane + (k-1) * (wp + 1) plus a lane base below
            // hp * wp), and its CPU features were detected.
            let tile = unsafe {
                micro(DCall {
                    kdim,
                    w: wpanel.as_ptr(),
                    x: [xp.as_ptr().add(o0), xp.as_ptr().add(o1)],
                    koff: koff.as_ptr(),
                })
            };
            store_tile(d, &tile, j0, q * DR, y);
        }
    }
}

/// Items per group of the pixel layout (direct_px::run_items).
const ITEMS_PER_GROUP: usize = 8;

/// y[n] = conv(x[n]) for every item of the batch `x`, with filters in panels (`co` channels);
/// `panels_of(n)` is item n's panels (the one-hot gradient switches filters by item).
fn run<'a>(
    d: &DGeom,
    n: usize,
    x: &[f32],
    map: Option<BnMap>,
    panels_of: impl Fn(usize) -> &'a [f32] + Sync,
    y: &mut [f32],
) {
    let micro = kernel().0;
    let koff = k_offsets(d);
    let item = d.co * d.ho * d.wo;
    let pw = d.panel_width();
    let npanels = d.co.div_ceil(pw);
    // Split an item's panels over tasks only when there are too few items to go round.
    let want = 4 * rayon::current_num_threads();
    let groups = want.div_ceil(n).clamp(1, npanels);
    let per = npanels.div_ceil(groups);
    let groups = npanels.div_ceil(per);
    if groups == 1 {
        // One task per item, or in the pixel layout per group of items that share their
        // filters' panels from L1 (direct_px::run_items), as many per group as keep 4 tasks per
        // thread.
        let per = if d.pixel_layout() {
            (n / want).clamp(1, ITEMS_PER_GROUP)
        } else {
            1
        };
        y.par_chunks_mut(item * per).enumerate().for_each_init(
            Vec::new,
            |bufs: &mut Vec<Vec<f32>>, (gi, yg)| {
                let items = gi * per..gi * per + yg.len() / item;
                bufs.resize_with(items.len(), Vec::new);
                for (buf, i) in bufs.iter_mut().zip(items.clone()) {
                    pad_item(d, d.item(x, i), buf, map);
                }
                let mut ys: Vec<&mut [f32]> = yg.chunks_mut(item).collect();
                let panels = panels_of(items.start);
                if per > 1 && items.clone().all(|i| std::ptr::eq(panels_of(i), panels)) {
                    let xps: Vec<&[f32]> = bufs.iter().map(Vec::as_slice).collect();
                    direct_px::run_items(d, panels, &koff, &xps, &mut ys);
                } else {
                    for ((buf, i), yi) in bufs.iter().zip(items).zip(ys) {
                        run_item(d, micro, panels_of(i), &koff, buf, yi);
                    }
                }
            },
        );
        return;
    }
    // Channel groups of one item are contiguous ranges of its output: split the item's slice.
    let plane = d.ho * d.wo;
    let mut parts: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(n * groups);
    for (i, yi) in y.chunks_mut(item).enumerate() {
        let mut rest = yi;
        for gi in 0..groups {
            let (q0, q1) = (gi * per, ((gi + 1) * per).min(npanels));
            let take = ((q1 * pw).min(d.co) - q0 * pw) * plane;
            let (head, tail) = rest.split_at_mut(take);
            parts.push((i, q0, head));
            rest = tail;
        }
    }
    parts
        .into_par_iter()
        .for_each_init(Vec::new, |buf, (i, q0, part)| {
            let q1 = (q0 + per).min(npanels);
            pad_item(d, d.item(x, i), buf, map);
            // The part holds channels q0 * DR.. of the item: a geometry of just those channels.
            let kdim = koff.len();
            let sub = DGeom {
                geom: Geom {
                    co: (q1 * pw).min(d.co) - q0 * pw,
                    ..d.geom
                },
                ..*d
            };
            let panels = &panels_of(i)[q0 * kdim * pw..q1 * kdim * pw];
            run_item(&sub, micro, panels, &koff, buf, part);
        });
}

/// Forward: y = conv(x, w), of relu(bn(x)) with `map`.
pub(crate) fn forward(g: &Geom, x: &[f32], map: Option<BnMap>, w: &[f32], y: &mut [f32]) {
    let d = dgeom(g);
    let kdim = g.ci * g.k * g.k;
    let panels = pack_panels(d.panel_width(), g.co, kdim, |o, p| w[o * kdim + p]);
    run(&d, g.n, x, map, |_| &panels, y);
}

/// Filter term of the input gradient: output channel ci, term (co, kh', kw') of the flipped filter.
#[inline]
fn flipped(g: &Geom, w: &[f32], ci: usize, co: usize, t: usize) -> f32 {
    let kk = g.k * g.k;
    w[(co * g.ci + ci) * kk + (kk - 1 - t)]
}

/// Input gradient: dx = conv(dy, flip(w)^T) with padding k - 1 - p, stride 1.
pub(crate) fn input_grad(g: &Geom, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let t = transposed(g);
    let d = dgeom(&t);
    let kk = g.k * g.k;
    let panels = pack_panels(d.panel_width(), g.ci, g.co * kk, |ci, p| {
        flipped(g, w, ci, p / kk, p % kk)
    });
    run(&d, g.n, dy, None, |_| &panels, dx);
}

/// One-hot input gradient: the terms are those of `input_grad` for item i's channel alone.
pub(crate) fn input_grad_onehot(g: &Geom, oh: OneHot, w: &[f32], dx: &mut [f32]) {
    let t = transposed(g);
    let d = dgeom(&Geom { ci: 1, ..t });
    let kk = g.k * g.k;
    let panels = oh.per_filter(g.n, |c| {
        pack_panels(d.panel_width(), g.ci, kk, |ci, p| flipped(g, w, ci, c, p))
    });
    run(&d, g.n, oh.seed, None, |i| &panels[i / oh.group], dx);
}

/// Portable kernel: separate multiply and add.
unsafe fn dmicro_plain(c: DCall) -> DTile {
    let DCall { kdim, w, x, koff } = c;
    let mut acc = [[[0.0f32; V]; NV]; DR];
    for p in 0..kdim {
        // SAFETY: the caller guarantees kdim weights x DR, kdim offsets and in-bounds loads.
        let (o, wp) = unsafe { (*koff.add(p) as usize, w.add(p * DR)) };
        for (v, base) in x.into_iter().enumerate() {
            // SAFETY: as above.
            let xv = unsafe { std::slice::from_raw_parts(base.add(o), V) };
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let wr = unsafe { *wp.add(r) };
                for (l, &xl) in xv.iter().enumerate() {
                    a[v][l] += wr * xl;
                }
            }
        }
    }
    acc
}

/// K terms per block of the AVX2 kernel's passes: the three passes read a block's input vectors
/// (96 x 4 x 32 bytes) from L1, where passes over the whole K (576 at 64 channels) read each three
/// times from L2. Zen 3, batch 32 and 64, two threads, interleaved in one process: 64x32x32
/// forward and input gradient 5-25% faster; 128x16x16 and the width-16 shapes level.
const AVX2_KB: usize = 96;

/// AVX2 + FMA: three passes over the tile's 32 lanes (four ymm vectors), of 3, 3 and 2 channels:
/// 12 accumulators (8 in the last pass) keep both FMA pipes busy past their latency, and each
/// input vector loaded feeds 3 channels' multiply-adds. The passes run block by block of K
/// (`AVX2_KB`), each carrying its partial sums over in the tile, so every output still adds its
/// terms in ascending order from zero.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dmicro_avx2(c: DCall) -> DTile {
    use std::arch::x86_64::*;
    /// Channels r0..r0 + R of the tile, terms `k` added to the partial sums in `out`.
    #[inline(always)]
    unsafe fn pass<const R: usize>(c: DCall, k: Range<usize>, r0: usize, out: &mut DTile) {
        let DCall { w, x, koff, .. } = c;
        let mut acc = [[_mm256_setzero_ps(); 2 * NV]; R];
        for (r, a) in acc.iter_mut().enumerate() {
            for (j, v) in a.iter_mut().enumerate() {
                // SAFETY: each vector of a row holds V = 16 floats.
                *v = unsafe { _mm256_loadu_ps(out[r0 + r][j / 2].as_ptr().add(8 * (j % 2))) };
            }
        }
        for p in k {
            // SAFETY: the caller guarantees kdim weights x DR, kdim offsets, in-bounds loads.
            unsafe {
                let o = *koff.add(p) as usize;
                let wp = w.add(p * DR + r0);
                let wv: [__m256; R] = std::array::from_fn(|r| _mm256_broadcast_ss(&*wp.add(r)));
                // One input vector live at a time: 12 accumulators + 3 weights + 1 input fill
                // the 16 ymm registers.
                for j in 0..2 * NV {
                    let xv = _mm256_loadu_ps(x[j / 2].add(o + 8 * (j % 2)));
                    for r in 0..R {
                        acc[r][j] = _mm256_fmadd_ps(wv[r], xv, acc[r][j]);
                    }
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (j, &v) in a.iter().enumerate() {
                // SAFETY: each vector of a row holds V = 16 floats.
                unsafe { _mm256_storeu_ps(out[r0 + r][j / 2].as_mut_ptr().add(8 * (j % 2)), v) };
            }
        }
    }
    let mut out = [[[0.0f32; V]; NV]; DR];
    for k0 in (0..c.kdim).step_by(AVX2_KB) {
        let k = k0..(k0 + AVX2_KB).min(c.kdim);
        // SAFETY: the caller's guarantees, for every pass.
        unsafe {
            pass::<3>(c, k.clone(), 0, &mut out);
            pass::<3>(c, k.clone(), 3, &mut out);
            pass::<2>(c, k, 6, &mut out);
        }
    }
    out
}

/// AVX-512: the whole 8 x 32 tile in 16 zmm accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dmicro_avx512(c: DCall) -> DTile {
    let DCall { kdim, w, x, koff } = c;
    use std::arch::x86_64::*;
    let mut a0 = [_mm512_setzero_ps(); DR];
    let mut a1 = [_mm512_setzero_ps(); DR];
    for p in 0..kdim {
        // SAFETY: the caller guarantees kdim weights x DR, kdim offsets and in-bounds loads.
        unsafe {
            let o = *koff.add(p) as usize;
            let (v0, v1) = (_mm512_loadu_ps(x[0].add(o)), _mm512_loadu_ps(x[1].add(o)));
            let wp = w.add(p * DR);
            for r in 0..DR {
                let wv = _mm512_set1_ps(*wp.add(r));
                a0[r] = _mm512_fmadd_ps(wv, v0, a0[r]);
                a1[r] = _mm512_fmadd_ps(wv, v1, a1[r]);
            }
        }
    }
    let mut out = [[[0.0f32; V]; NV]; DR];
    for r in 0..DR {
        // SAFETY: each row holds 16 floats.
        unsafe {
            _mm512_storeu_ps(out[r][0].as_mut_ptr(), a0[r]);
            _mm512_storeu_ps(out[r][1].as_mut_ptr(), a1[r]);
        }
    }
    out
}

/// The direct kernel for `gemm::isa()` (the GEMM's selection and `FMP_CPU_KERNEL` override).
pub(super) fn kernel() -> (DMicroFn, &'static str) {
    by_isa!(
        (dmicro_avx512 as DMicroFn, "direct avx512 8x32"),
        (dmicro_avx2 as DMicroFn, "direct avx2+fma 3x32"),
        (dmicro_plain as DMicroFn, "direct portable 8x32"),
    )
}

pub fn kernel_name() -> &'static str {
    kernel().1
}
