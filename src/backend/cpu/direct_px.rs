//! Direct convolution of small planes, vectorised over output channels (the pixel layout).
//!
//! Design: on 4x4 (and other small) output planes the lane layout of `direct` computes up to
//! twice the lanes it keeps (a 16-lane vector spans rows of the padded grid). Here a tile is
//! 8 output pixels x 32 output channels: per K step, 2 weight vectors (panels of 32 channels,
//! K-major) and 8 scalar broadcasts of the pixels' input terms feed 16 fused multiply-adds, and
//! every pixel has its own base offset in the same padded (or phase-split) buffer and reads term
//! p at base + koff[p], so no lane is wasted and no im2col panel is written. The 16 accumulators
//! stay in registers over the whole K loop.
//!
//! Every output element sums its K terms in ascending order with one multiply-add per term, from
//! zero (as `direct`), so the one-hot input gradient stays bitwise equal to the full one.
//!
//! The weight gradient turns the same layout around: 32 output channels in lanes, 12 filter
//! terms in registers, the sum running over every (item, pixel) in order (see `weight_grad`).
use rayon::prelude::*;

use super::conv::Geom;
use super::direct::{dgeom, fills_panels, k_offsets, pad_into, DGeom};
use super::gemm::by_isa;
use super::norm::BnMap;
use super::par_zeroed;

/// Output channels per tile (two 16-lane vectors) and pixels per tile.
pub(super) const CW: usize = 32;
const PX: usize = 8;

type PTile = [[f32; CW]; PX];
/// (K, weight panel [K][CW], the tile's pixel bases, K offsets, tile): adds the K terms to the tile.
type PMicroFn = unsafe fn(usize, *const f32, &[*const f32; PX], *const u32, &mut PTile);

/// K terms per block: a block of a panel (16 KiB) stays in L1 while every tile of the items uses
/// it.
const KB: usize = 128;

/// All `d.co` output planes of one item from CW-wide `panels`: y is [co, ho, wo].
pub(super) fn run_item(d: &DGeom, panels: &[f32], koff: &[u32], xp: &[f32], y: &mut [f32]) {
    run_items(d, panels, koff, &[xp], &mut [y]);
}

/// Items of one layer that share their filters (`xps[i]` padded, `ys[i]` its [co, ho, wo]
/// output), computed together: every K block of a weight panel is read from L1 by the tiles of
/// all the items, so a layer whose filters outgrow the caches (512 x 4,608 at 4x4) streams them
/// once per group of items rather than once per item. Each output still sums its K terms in
/// ascending order, as one item alone.
pub(super) fn run_items(
    d: &DGeom,
    panels: &[f32],
    koff: &[u32],
    xps: &[&[f32]],
    ys: &mut [&mut [f32]],
) {
    let micro = kernel();
    let (kdim, hw) = (koff.len(), d.ho * d.wo);
    let npanels = d.co.div_ceil(CW);
    assert!(xps.len() == ys.len() && panels.len() >= npanels * kdim * CW && hw > 0);
    let per_item = hw.div_ceil(PX);
    // A partial last tile repeats the last pixel; its extra columns are dropped.
    let xbs: Vec<[*const f32; PX]> = xps
        .iter()
        .flat_map(|xp| {
            assert!(xp.len() >= d.buf_len());
            (0..hw).step_by(PX).map(move |t0| {
                // SAFETY: each base is a valid output pixel's grid offset, below the padded plane.
                std::array::from_fn(|i| unsafe {
                    xp.as_ptr().add(d.pixel_off((t0 + i).min(hw - 1)))
                })
            })
        })
        .collect();
    let mut tiles = vec![[[0f32; CW]; PX]; xbs.len()];
    for q in 0..npanels {
        let wpanel = &panels[q * kdim * CW..(q + 1) * kdim * CW];
        let rows = CW.min(d.co - q * CW);
        tiles.iter_mut().for_each(|t| *t = [[0f32; CW]; PX]);
        // K blocks outermost: each block of the panel is read from L1 by every tile; a tile's
        // terms still run in ascending order.
        for k0 in (0..kdim).step_by(KB) {
            let kb = KB.min(kdim - k0);
            for (tile, xb) in tiles.iter_mut().zip(&xbs) {
                // SAFETY: the kernel reads wpanel[k0 * CW..(k0 + kb) * CW] and xp[base + koff[p]]
                // for the tile's bases; base + koff[p] is a valid pixel's term inside its item's
                // padded buffer, and the kernel's CPU features were detected.
                unsafe {
                    micro(
                        kb,
                        wpanel[k0 * CW..].as_ptr(),
                        xb,
                        koff[k0..].as_ptr(),
                        tile,
                    )
                };
            }
        }
        for (y, item_tiles) in ys.iter_mut().zip(tiles.chunks_exact(per_item)) {
            for (t, tile) in item_tiles.iter().enumerate() {
                let (t0, px) = (t * PX, PX.min(hw - t * PX));
                for r in 0..rows {
                    let out = &mut y[(q * CW + r) * hw + t0..][..px];
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = tile[i][r];
                    }
                }
            }
        }
    }
}

/// Portable kernel: separate multiply and add.
unsafe fn pmicro_plain(
    kdim: usize,
    w: *const f32,
    xb: &[*const f32; PX],
    koff: *const u32,
    acc: &mut PTile,
) {
    for p in 0..kdim {
        // SAFETY: the caller guarantees kdim weights x CW, kdim offsets and in-bounds loads.
        let (o, wv) = unsafe {
            (
                *koff.add(p) as usize,
                std::slice::from_raw_parts(w.add(p * CW), CW),
            )
        };
        for (a, &b) in acc.iter_mut().zip(xb) {
            // SAFETY: as above.
            let x = unsafe { *b.add(o) };
            for (ar, &wr) in a.iter_mut().zip(wv) {
                *ar += x * wr;
            }
        }
    }
}

/// AVX2 + FMA: three passes of 12, 12 and 8 ymm accumulators (16 channels x pixels 0-5, the
/// other 16 channels x pixels 0-5, all 32 channels x pixels 6-7), each with its weight vectors
/// and one broadcast in the 16 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pmicro_avx2(
    kdim: usize,
    w: *const f32,
    xb: &[*const f32; PX],
    koff: *const u32,
    out: &mut PTile,
) {
    use std::arch::x86_64::*;
    /// Pixels px0..px0 + P x channels ch0..ch0 + 8 NW of the tile.
    #[inline(always)]
    unsafe fn pass<const P: usize, const NW: usize>(
        kdim: usize,
        w: *const f32,
        xb: &[*const f32; PX],
        koff: *const u32,
        out: &mut PTile,
        px0: usize,
        ch0: usize,
    ) {
        // Plain loops, not `array::from_fn`: its closures do not inherit the target features, so
        // their intrinsics would be calls.
        let mut acc = [[_mm256_setzero_ps(); NW]; P];
        for (i, a) in acc.iter_mut().enumerate() {
            for (j, v) in a.iter_mut().enumerate() {
                // SAFETY: each row holds CW floats; ch0 + 8 * NW <= CW.
                *v = unsafe { _mm256_loadu_ps(out[px0 + i].as_ptr().add(ch0 + 8 * j)) };
            }
        }
        let bases: [*const f32; P] = std::array::from_fn(|i| xb[px0 + i]);
        for p in 0..kdim {
            // SAFETY: the caller guarantees kdim weights x CW, kdim offsets, in-bounds loads.
            unsafe {
                let o = *koff.add(p) as usize;
                let wp = w.add(p * CW + ch0);
                let wv: [__m256; NW] = std::array::from_fn(|j| _mm256_loadu_ps(wp.add(8 * j)));
                for (a, &b) in acc.iter_mut().zip(&bases) {
                    let xv = _mm256_broadcast_ss(&*b.add(o));
                    for j in 0..NW {
                        a[j] = _mm256_fmadd_ps(xv, wv[j], a[j]);
                    }
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (j, &v) in a.iter().enumerate() {
                // SAFETY: as for the loads.
                unsafe { _mm256_storeu_ps(out[px0 + i].as_mut_ptr().add(ch0 + 8 * j), v) };
            }
        }
    }
    // SAFETY: the caller's guarantees, for every pass.
    unsafe {
        pass::<6, 2>(kdim, w, xb, koff, out, 0, 0);
        pass::<6, 2>(kdim, w, xb, koff, out, 0, 16);
        pass::<2, 4>(kdim, w, xb, koff, out, 6, 0);
    }
}

/// A tile's rows of CW floats as pairs of zmm accumulators, and back.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_rows<const N: usize>(rows: &[[f32; CW]; N]) -> [[std::arch::x86_64::__m512; 2]; N] {
    use std::arch::x86_64::*;
    // SAFETY: each row holds CW = 32 floats.
    std::array::from_fn(|i| unsafe {
        let row = rows[i].as_ptr();
        [_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16))]
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_rows<const N: usize>(
    acc: &[[std::arch::x86_64::__m512; 2]; N],
    rows: &mut [[f32; CW]; N],
) {
    use std::arch::x86_64::*;
    for (row, a) in rows.iter_mut().zip(acc) {
        // SAFETY: each row holds CW = 32 floats.
        unsafe {
            _mm512_storeu_ps(row.as_mut_ptr(), a[0]);
            _mm512_storeu_ps(row.as_mut_ptr().add(16), a[1]);
        }
    }
}

/// AVX-512: the whole 8 x 32 tile in 16 zmm accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn pmicro_avx512(
    kdim: usize,
    w: *const f32,
    xb: &[*const f32; PX],
    koff: *const u32,
    out: &mut PTile,
) {
    use std::arch::x86_64::*;
    // SAFETY: the features were detected (the caller's contract).
    let mut acc = unsafe { load_rows(out) };
    for p in 0..kdim {
        // SAFETY: the caller guarantees kdim weights x CW, kdim offsets and in-bounds loads.
        unsafe {
            let o = *koff.add(p) as usize;
            let wp = w.add(p * CW);
            let (w0, w1) = (_mm512_loadu_ps(wp), _mm512_loadu_ps(wp.add(16)));
            for (a, &b) in acc.iter_mut().zip(xb) {
                let xv = _mm512_set1_ps(*b.add(o));
                a[0] = _mm512_fmadd_ps(xv, w0, a[0]);
                a[1] = _mm512_fmadd_ps(xv, w1, a[1]);
            }
        }
    }
    // SAFETY: as above.
    unsafe { store_rows(&acc, out) };
}

/// The pixel-layout kernel for `gemm::isa()`.
fn kernel() -> PMicroFn {
    by_isa!(
        pmicro_avx512 as PMicroFn,
        pmicro_avx2 as PMicroFn,
        pmicro_plain as PMicroFn
    )
}

// ---- weight gradient -------------------------------------------------------------------------

/// Filter terms per weight-gradient tile, at most: each kernel takes the `wt` it holds in registers
/// (`wkernel`). AVX-512: 8 terms x 2 vectors of 16 output channels = 16 accumulators, + 2 dy
/// vectors and the 8 broadcast terms the compiler hoists = 26 of the 32 zmm registers (12 terms
/// spilled accumulators to the stack). AVX2: passes of 6 terms x 16 channels (12 of the 16 ymm
/// registers, + 2 dy vectors and a broadcast), two per half of the 32 channels.
const WT: usize = 12;
/// Terms the AVX-512 kernel holds (the first WT_AVX512 rows of a tile).
const WT_AVX512: usize = 8;
type WTile = [[f32; CW]; WT];
/// (pixels, dy rows [pixels][CW], per-pixel input bases, padded inputs, term offsets, tile):
/// adds the pixels' products to the tile's first `wt` rows.
type WMicroFn = unsafe fn(usize, *const f32, *const usize, *const f32, &[u32; WT], &mut WTile);

/// Pixels per block (a block's dy rows, 32 KiB, stay in cache across a task's term blocks) and
/// term blocks per task.
const PB: usize = 256;
const TB: usize = 8;

/// Which shapes take the pixel-layout weight gradient: output channels that fill its panels.
pub(super) fn suits_weight_grad(g: &Geom) -> bool {
    g.n > 0 && g.ho > 0 && g.wo > 0 && g.s > 0 && fills_panels(g.co)
}

/// Weight gradient as a sum over (item, output pixel) in order: dw[co, t] = sum of
/// dy[n, co, pixel] * xpad[n][base(pixel) + koff[t]] for the forward's terms t = (ci, kh, kw),
/// vectorised over 32 output channels with the kernel's `wt` terms per tile held in registers over
/// the whole sum (every dw element is one sum over the pixels in order, whatever the tiling). dy
/// is first transposed to pixel-major rows of 32 channels and every item padded once (phase-split
/// when strided, through `map` for relu(bn(x))), so a task reads 2 dy vectors and `wt` scalars
/// per pixel.
pub(super) fn weight_grad(g: &Geom, x: &[f32], map: Option<BnMap>, dy: &[f32], dw: &mut [f32]) {
    let d = dgeom(g);
    let koff = k_offsets(&d);
    let (kdim, hw, blen) = (koff.len(), g.ho * g.wo, d.buf_len());
    let npanels = g.co.div_ceil(CW);
    let npix = g.n * hw;
    // dyt[q][n * hw + pixel][r] = dy[n, q * CW + r, pixel] (zero past co).
    let dyt = par_zeroed(npanels * npix * CW, hw * CW, |qn, rows| {
        let (q, n) = (qn / g.n, qn % g.n);
        for r in 0..CW.min(g.co - q * CW) {
            let src = &dy[(n * g.co + q * CW + r) * hw..][..hw];
            for (px, &v) in src.iter().enumerate() {
                rows[px * CW + r] = v;
            }
        }
    });
    let item_in = g.ci * g.hi * g.wi;
    let xpad = par_zeroed(g.n * blen, blen, |n, dst| {
        pad_into(&d, &x[n * item_in..(n + 1) * item_in], dst, map)
    });
    let bases: Vec<usize> = (0..npix)
        .map(|j| (j / hw) * blen + d.pixel_off(j % hw))
        .collect();
    let (micro, wt) = wkernel();
    let blocks = kdim.div_ceil(wt);
    let groups = blocks.div_ceil(TB);
    // Tasks own (panel, TB term blocks); each walks the pixels in blocks of PB, in order.
    let tiles: Vec<WTile> = (0..npanels * groups)
        .into_par_iter()
        .flat_map_iter(|task| {
            let (q, b0) = (task / groups, (task % groups) * TB);
            let b1 = (b0 + TB).min(blocks);
            // A partial last block repeats its last term; the extra rows are dropped.
            let toffs: Vec<[u32; WT]> = (b0..b1)
                .map(|b| std::array::from_fn(|i| koff[(b * wt + i).min(kdim - 1)]))
                .collect();
            let mut acc = vec![[[0f32; CW]; WT]; b1 - b0];
            let panel = &dyt[q * npix * CW..(q + 1) * npix * CW];
            for j0 in (0..npix).step_by(PB) {
                let np = PB.min(npix - j0);
                for (a, toff) in acc.iter_mut().zip(&toffs) {
                    // SAFETY: the panel holds npix rows of CW floats; every base + term offset
                    // is a valid pixel's term inside its item's padded buffer; the kernel's
                    // features were detected.
                    unsafe {
                        micro(
                            np,
                            panel[j0 * CW..].as_ptr(),
                            bases[j0..].as_ptr(),
                            xpad.as_ptr(),
                            toff,
                            a,
                        )
                    }
                }
            }
            acc
        })
        .collect();
    for (task, tile) in tiles.iter().enumerate() {
        let (q, b) = (task / blocks, task % blocks);
        for (i, row) in tile.iter().enumerate().take(wt.min(kdim - b * wt)) {
            let t = b * wt + i;
            for (r, &v) in row.iter().enumerate().take(CW.min(g.co - q * CW)) {
                dw[(q * CW + r) * kdim + t] = v;
            }
        }
    }
}

unsafe fn wmicro_plain(
    npix: usize,
    dyt: *const f32,
    bases: *const usize,
    x: *const f32,
    toff: &[u32; WT],
    acc: &mut WTile,
) {
    for j in 0..npix {
        // SAFETY: the caller guarantees npix rows, bases and in-bounds term reads.
        let (dv, base) = unsafe {
            (
                std::slice::from_raw_parts(dyt.add(j * CW), CW),
                x.add(*bases.add(j)),
            )
        };
        for (a, &o) in acc.iter_mut().zip(toff) {
            // SAFETY: as above.
            let xv = unsafe { *base.add(o as usize) };
            for (ar, &d) in a.iter_mut().zip(dv) {
                *ar += xv * d;
            }
        }
    }
}

/// AVX2 + FMA: four passes of 6 terms x 16 channels (12 ymm accumulators each).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wmicro_avx2(
    npix: usize,
    dyt: *const f32,
    bases: *const usize,
    x: *const f32,
    toff: &[u32; WT],
    out: &mut WTile,
) {
    use std::arch::x86_64::*;
    const H: usize = WT / 2;
    for half in 0..2 {
        for tp in 0..2 {
            // SAFETY: each row holds CW floats; half * 16 + 16 <= CW.
            let mut acc: [[__m256; 2]; H] = std::array::from_fn(|i| unsafe {
                let row = out[tp * H + i].as_ptr().add(half * 16);
                [_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8))]
            });
            let offs: [usize; H] = std::array::from_fn(|i| toff[tp * H + i] as usize);
            for j in 0..npix {
                // SAFETY: the caller guarantees npix rows, bases and in-bounds term reads.
                unsafe {
                    let dp = dyt.add(j * CW + half * 16);
                    let (d0, d1) = (_mm256_loadu_ps(dp), _mm256_loadu_ps(dp.add(8)));
                    let base = x.add(*bases.add(j));
                    for (a, &o) in acc.iter_mut().zip(&offs) {
                        let xv = _mm256_broadcast_ss(&*base.add(o));
                        a[0] = _mm256_fmadd_ps(xv, d0, a[0]);
                        a[1] = _mm256_fmadd_ps(xv, d1, a[1]);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                let row = &mut out[tp * H + i];
                // SAFETY: each row holds CW floats; half * 16 + 16 <= CW.
                unsafe {
                    _mm256_storeu_ps(row.as_mut_ptr().add(half * 16), a[0]);
                    _mm256_storeu_ps(row.as_mut_ptr().add(half * 16 + 8), a[1]);
                }
            }
        }
    }
}

/// AVX-512: the first WT_AVX512 terms x 32 channels in 16 zmm accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn wmicro_avx512(
    npix: usize,
    dyt: *const f32,
    bases: *const usize,
    x: *const f32,
    toff: &[u32; WT],
    out: &mut WTile,
) {
    use std::arch::x86_64::*;
    let out: &mut [[f32; CW]; WT_AVX512] = (&mut out[..WT_AVX512])
        .try_into()
        .expect("WT_AVX512 <= WT rows");
    // SAFETY: the features were detected (the caller's contract).
    let mut acc = unsafe { load_rows(out) };
    for j in 0..npix {
        // SAFETY: the caller guarantees npix rows, bases and in-bounds term reads.
        unsafe {
            let dp = dyt.add(j * CW);
            let (d0, d1) = (_mm512_loadu_ps(dp), _mm512_loadu_ps(dp.add(16)));
            let base = x.add(*bases.add(j));
            for (a, &o) in acc.iter_mut().zip(toff) {
                let xv = _mm512_set1_ps(*base.add(o as usize));
                a[0] = _mm512_fmadd_ps(xv, d0, a[0]);
                a[1] = _mm512_fmadd_ps(xv, d1, a[1]);
            }
        }
    }
    // SAFETY: as above.
    unsafe { store_rows(&acc, out) };
}

/// The weight-gradient kernel and the terms per tile it holds in registers.
fn wkernel() -> (WMicroFn, usize) {
    by_isa!(
        (wmicro_avx512 as WMicroFn, WT_AVX512),
        (wmicro_avx2 as WMicroFn, WT),
        (wmicro_plain as WMicroFn, WT)
    )
}
