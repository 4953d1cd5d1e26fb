//! Direct weight gradient of 3x3 convolutions in the lane layout of `direct` (any stride: strided
//! inputs are split into the forward's phase planes, so each filter tap reads its own plane).
//!
//! Design: for one input channel and one item, the padded (phase-split) plane is built once and
//! every output channel's dy lanes are walked against it: per 16-lane vector, 3 x loads (one per
//! tap of a filter row) and 8 dy loads feed 24 fused multiply-adds into lane-wise partial sums,
//! for 8 output channels at a time (AVX-512: 24 accumulators + 3 x vectors in registers; AVX2
//! walks the 8 as two groups of 4), added to the call's running sums with one vector add each.
//! Tasks own ranges of input channels and walk the items in L2-sized blocks, so a block of dy is
//! read from cache by every channel of the task; one call takes a few items of a block (as many
//! as keep its dy lanes in L1), its accumulators in registers across all of them.
//! Partial sums run over the call's items and vectors in order, are added to the running sums
//! call by call, and are summed across lanes at the end in lane order: the order follows from
//! the shape alone, so the result does not depend on the thread count, and the AVX-512 and AVX2
//! kernels (one fused multiply-add per term, in the same order) give bitwise equal results.
//! Shapes whose forward takes the pixel layout use `direct_px::weight_grad` instead.
use rayon::prelude::*;

use super::conv::Geom;
use super::direct::{dgeom, k_offsets, keeps_lanes, pad_item, suits, DGeom, V};
use super::gemm::by_isa;
use super::norm::BnMap;
use super::par_zeroed;

/// Output channels per weight-gradient pass (x 3 taps = 24 accumulators: AVX-512 holds them in
/// registers with the 3 x vectors; AVX2 walks them as two groups of 4).
const WR: usize = 8;

/// Bytes of dy lanes per block of items (read from L2 by every input channel of a task) and per
/// kernel call (4 channels' lanes of the call's items, read from L1 by 3 filter rows x 2 halves).
/// Zen 3 (AVX2), width-16 shapes, one thread: blocks of 1 MiB and one item per call gave 54 and
/// 49 GFLOP/s on 16x32x32 and 32x16x16, these 59 and 60.
const DY_BLOCK_BYTES: usize = 128 << 10;
const CALL_BYTES: usize = 16 << 10;

/// Which shapes take the lane-layout weight gradient: 3x3 filters at any stride (strided inputs
/// split into phase planes, as in the forward) whose output lanes are kept as in the forward and
/// whose forward does not take the pixel layout (those take `direct_px::weight_grad`: on 8x8
/// planes at 64 channels, 133 against 81 GFLOP/s here; on whole-row planes it is the slower).
pub(crate) fn suits_weight_grad(g: &Geom) -> bool {
    g.k == 3 && suits(g) && keeps_lanes(&dgeom(g)) && !dgeom(g).px
}

/// Where one plane's 16-lane vectors lie, in order: `rows` runs of `per_row` consecutive vectors,
/// run r's first at x offset `x0 + r * x_stride` (in the padded plane) and dy offset
/// `r * dy_stride` (in the lane buffer). Whole-row layouts have one run per output row; the
/// padded grid is one run.
#[derive(Clone, Copy)]
struct Walk {
    rows: usize,
    per_row: usize,
    x0: usize,
    x_stride: usize,
    dy_stride: usize,
}

impl Walk {
    fn of(d: &DGeom) -> Self {
        if d.row_layout() {
            Walk {
                rows: d.ho,
                per_row: d.wo / V,
                x0: d.in_off(0),
                x_stride: d.wp(),
                dy_stride: d.wo,
            }
        } else {
            Walk {
                rows: 1,
                per_row: d.vectors(),
                x0: d.in_off(0),
                x_stride: 0,
                dy_stride: 0,
            }
        }
    }

    /// Vectors per run: N when the kernel was compiled for runs of N (1: 16x16 planes, 2: 32x32),
    /// else `per_row`. With constant runs the inner loop unrolls (a short loop's exit mispredicts
    /// once a run); the offsets are running sums, not a table read per vector (with 7 vector loads
    /// per 12 multiply-adds, the AVX2 kernel's two table loads cost it up to 15% in L1).
    #[inline(always)]
    fn run_len<const N: usize>(&self) -> usize {
        if N > 0 {
            N
        } else {
            self.per_row
        }
    }
}

/// dy laid out in lanes, all items: whole rows (row layout: dy itself) or the padded grid with
/// zeros in the dropped lanes, so those lanes add exact zeros. Returns the floats per plane.
fn dy_lanes<'a>(d: &DGeom, n: usize, dy: &'a [f32], buf: &'a mut Vec<f32>) -> (&'a [f32], usize) {
    let hw = d.ho * d.wo;
    if d.row_layout() {
        return (dy, hw);
    }
    let (wp, lanes) = (d.wp(), d.vectors() * V);
    *buf = par_zeroed(n * d.co * lanes, lanes, |plane, dst| {
        let src = &dy[plane * hw..][..hw];
        for oh in 0..d.ho {
            dst[oh * wp..][..d.wo].copy_from_slice(&src[oh * d.wo..][..d.wo]);
        }
    });
    (buf, lanes)
}

/// Lane-wise partial sums acc[kh][r][kw][lane] += sum over the items, then the vectors j, of
/// dy[r][dyo_j + lane] * x[kh * wp + kw + xo_j + lane], for WR channels and the 9 taps (`taps`:
/// tap (kh, kw)'s offset in an item's padded, phase-split plane), items and vectors in order;
/// (xo_j, dyo_j) is vector j's place along the `Walk`.
type WMicroFn = unsafe fn(Walk, &[WItem], &[u32; 9], &mut [Acc; 3]);

/// Lane-wise partial sums of WR output channels x 3 taps of one filter row.
type Acc = [[[f32; V]; 3]; WR];

/// One item's operands: its padded input plane and the dy lanes of the WR channels.
#[derive(Clone, Copy)]
struct WItem {
    x: *const f32,
    dy: [*const f32; WR],
}

unsafe fn wmicro_plain<const N: usize>(
    walk: Walk,
    items: &[WItem],
    taps: &[u32; 9],
    accs: &mut [Acc; 3],
) {
    for (kh, acc) in accs.iter_mut().enumerate() {
        let mut a = [[[0f32; V]; 3]; WR];
        for it in items {
            let (mut xo, mut dyo) = (walk.x0, 0);
            for _ in 0..walk.rows {
                for v in 0..walk.run_len::<N>() {
                    for (r, ar) in a.iter_mut().enumerate() {
                        for (kw, ak) in ar.iter_mut().enumerate() {
                            let xb = taps[kh * 3 + kw] as usize + xo + v * V;
                            for (l, al) in ak.iter_mut().enumerate() {
                                // SAFETY: the caller guarantees in-bounds vectors at every offset.
                                let (dv, xv) =
                                    unsafe { (*it.dy[r].add(dyo + v * V + l), *it.x.add(xb + l)) };
                                *al += dv * xv;
                            }
                        }
                    }
                }
                xo += walk.x_stride;
                dyo += walk.dy_stride;
            }
        }
        for (dr, ar) in acc.iter_mut().zip(&a) {
            for (dk, ak) in dr.iter_mut().zip(ar) {
                for (d, &v) in dk.iter_mut().zip(ak) {
                    *d += v;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wmicro_avx2<const N: usize>(
    walk: Walk,
    items: &[WItem],
    taps: &[u32; 9],
    accs: &mut [Acc; 3],
) {
    use std::arch::x86_64::*;
    const G: usize = 4;
    // Groups of 4 channels outermost, so their dy lanes are read from cache by all 3 filter rows.
    for r0 in (0..WR).step_by(G) {
        for (kh, acc) in accs.iter_mut().enumerate() {
            for h in [0, 8] {
                let mut a = [[_mm256_setzero_ps(); 3]; G];
                for it in items {
                    // SAFETY: the caller guarantees in-bounds vectors at every offset.
                    unsafe {
                        let mut x: [*const f32; 3] = std::array::from_fn(|kw| {
                            it.x.add(walk.x0 + taps[kh * 3 + kw] as usize + h)
                        });
                        let mut dy: [*const f32; G] = std::array::from_fn(|r| it.dy[r0 + r].add(h));
                        for _ in 0..walk.rows {
                            for v in 0..walk.run_len::<N>() {
                                let o = v * V;
                                let xv = [
                                    _mm256_loadu_ps(x[0].add(o)),
                                    _mm256_loadu_ps(x[1].add(o)),
                                    _mm256_loadu_ps(x[2].add(o)),
                                ];
                                for (r, ar) in a.iter_mut().enumerate() {
                                    let dv = _mm256_loadu_ps(dy[r].add(o));
                                    for kw in 0..3 {
                                        ar[kw] = _mm256_fmadd_ps(dv, xv[kw], ar[kw]);
                                    }
                                }
                            }
                            x = x.map(|p| p.add(walk.x_stride));
                            dy = dy.map(|p| p.add(walk.dy_stride));
                        }
                    }
                }
                for (r, ar) in a.iter().enumerate() {
                    for (kw, &v) in ar.iter().enumerate() {
                        let dst = acc[r0 + r][kw][h..].as_mut_ptr();
                        // SAFETY: dst holds 8 floats past h (h + 8 <= 16).
                        unsafe { _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), v)) };
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn wmicro_avx512<const N: usize>(
    walk: Walk,
    items: &[WItem],
    taps: &[u32; 9],
    accs: &mut [Acc; 3],
) {
    use std::arch::x86_64::*;
    for (kh, acc) in accs.iter_mut().enumerate() {
        let mut a = [[_mm512_setzero_ps(); 3]; WR];
        for it in items {
            // SAFETY: the caller guarantees in-bounds vectors at every offset.
            unsafe {
                let mut x: [*const f32; 3] =
                    std::array::from_fn(|kw| it.x.add(walk.x0 + taps[kh * 3 + kw] as usize));
                let mut dy = it.dy;
                for _ in 0..walk.rows {
                    for v in 0..walk.run_len::<N>() {
                        let o = v * V;
                        let xv = [
                            _mm512_loadu_ps(x[0].add(o)),
                            _mm512_loadu_ps(x[1].add(o)),
                            _mm512_loadu_ps(x[2].add(o)),
                        ];
                        for r in 0..WR {
                            let dv = _mm512_loadu_ps(dy[r].add(o));
                            for kw in 0..3 {
                                a[r][kw] = _mm512_fmadd_ps(dv, xv[kw], a[r][kw]);
                            }
                        }
                    }
                    x = x.map(|p| p.add(walk.x_stride));
                    dy = dy.map(|p| p.add(walk.dy_stride));
                }
            }
        }
        for (ar, dr) in a.iter().zip(acc.iter_mut()) {
            for (&v, d) in ar.iter().zip(dr.iter_mut()) {
                // SAFETY: d holds 16 floats.
                unsafe {
                    _mm512_storeu_ps(
                        d.as_mut_ptr(),
                        _mm512_add_ps(_mm512_loadu_ps(d.as_ptr()), v),
                    )
                };
            }
        }
    }
}

/// The kernel for `isa()`, compiled for runs of `walk.per_row` vectors where that is 1 or 2.
fn wkernel(walk: &Walk) -> WMicroFn {
    macro_rules! runs {
        ($k:ident) => {
            match walk.per_row {
                1 => $k::<1> as WMicroFn,
                2 => $k::<2> as WMicroFn,
                _ => $k::<0> as WMicroFn,
            }
        };
    }
    by_isa!(
        runs!(wmicro_avx512),
        runs!(wmicro_avx2),
        runs!(wmicro_plain)
    )
}

/// Weight gradient, 3x3: dw[co, ci, kh, kw] = sum over items and output pixels of
/// dy[n, co, oh, ow] * x[n, ci, oh*s - p + kh, ow*s - p + kw], with no im2col panels: for each
/// input channel, its plane is padded once per item and the lanes of every output channel walked;
/// per-lane partial sums run over items and vectors in order and are summed across lanes at the
/// end in lane order, so the result does not depend on the thread count. With `map`, of
/// relu(bn(x)), mapped as each plane is padded.
pub(crate) fn weight_grad(g: &Geom, x: &[f32], map: Option<BnMap>, dy: &[f32], dw: &mut [f32]) {
    let d = dgeom(g);
    let walk = Walk::of(&d);
    let micro = wkernel(&walk);
    let (plane_in, kk) = (g.hi * g.wi, g.k * g.k);
    let one = dgeom(&Geom { ci: 1, ..*g });
    // Offset of tap (kh, kw) in one padded (phase-split) input plane: the forward's K offsets.
    let tap_offs = k_offsets(&one);
    let groups = g.co.div_ceil(WR);
    let mut dybuf = Vec::new();
    let (lanes_all, stride) = dy_lanes(&d, g.n, dy, &mut dybuf);
    // Tasks own ranges of input channels (their accumulators within ~512 KiB) and walk the items
    // in blocks whose dy lanes fit in a quarter of a 512 KiB L2, so every channel of a task reads
    // a block from L2 instead of streaming all of dy once per input channel; within a block, one
    // kernel call takes as many items as keep 4 channels' dy lanes (8 on AVX-512) within L1 across
    // its 3 filter rows and 2 halves, so its accumulators stay in registers over all of them.
    // Both sizes follow from the shape alone, so the sums' order (and rounding) do too.
    let acc_len = groups * 3;
    let per_task = ((512 << 10) / (acc_len * std::mem::size_of::<Acc>()))
        .clamp(1, g.ci.div_ceil(rayon::current_num_threads()).max(1));
    let block = (DY_BLOCK_BYTES / (g.co * stride * 4).max(1)).max(1);
    let per_call = (CALL_BYTES / (4 * stride * 4)).max(1);
    let taps: [u32; 9] = std::array::from_fn(|t| tap_offs[t]);
    let cis: Vec<usize> = (0..g.ci).collect();
    let per_ci: Vec<Vec<f32>> = cis
        .par_chunks(per_task)
        .flat_map_iter(|task| {
            let mut accs = vec![vec![[[[0f32; V]; 3]; WR]; acc_len]; task.len()];
            let mut xbufs: Vec<Vec<f32>> = Vec::new();
            let mut items: Vec<WItem> = Vec::with_capacity(block);
            for n0 in (0..g.n).step_by(block) {
                let ns = n0..(n0 + block).min(g.n);
                xbufs.resize_with(ns.len(), Vec::new);
                for (acc, &ci) in accs.iter_mut().zip(task) {
                    let m = map.map(|m| m.skip(ci));
                    for (xbuf, n) in xbufs.iter_mut().zip(ns.clone()) {
                        pad_item(&one, &x[(n * g.ci + ci) * plane_in..][..plane_in], xbuf, m);
                    }
                    for (gi, chunk) in acc.chunks_exact_mut(3).enumerate() {
                        items.clear();
                        items.extend(xbufs.iter().zip(ns.clone()).map(|(xbuf, n)| {
                            let lanes = &lanes_all[n * g.co * stride..][..g.co * stride];
                            // Rows past co (a partial last group) read channel 0 and are dropped.
                            WItem {
                                x: xbuf.as_ptr(),
                                dy: std::array::from_fn(|r| {
                                    let co = gi * WR + r;
                                    lanes[if co < g.co { co * stride } else { 0 }..].as_ptr()
                                }),
                            }
                        }));
                        let chunk: &mut [Acc; 3] = chunk.try_into().expect("chunks of 3");
                        for sub in items.chunks(per_call) {
                            // SAFETY: every x read is inside its padded plane's buffer (lane base
                            // + the tap's offset + 16 <= buf_len, as in the forward), every dy
                            // read inside the item's lane planes; the kernel's features were
                            // detected.
                            unsafe { micro(walk, sub, &taps, chunk) };
                        }
                    }
                }
            }
            // dw[co][ci][kh][kw] for each ci: lane sums in lane order.
            accs.into_iter().map(|acc| {
                let mut out = vec![0f32; g.co * kk];
                for (gi, chunk) in acc.chunks_exact(3).enumerate() {
                    for (kh, a) in chunk.iter().enumerate() {
                        for r in 0..WR {
                            let co = gi * WR + r;
                            if co < g.co {
                                for kw in 0..3 {
                                    out[co * kk + kh * 3 + kw] = a[r][kw].iter().sum();
                                }
                            }
                        }
                    }
                }
                out
            })
        })
        .collect();
    for (ci, vals) in per_ci.iter().enumerate() {
        for co in 0..g.co {
            dw[(co * g.ci + ci) * kk..][..kk].copy_from_slice(&vals[co * kk..][..kk]);
        }
    }
}
