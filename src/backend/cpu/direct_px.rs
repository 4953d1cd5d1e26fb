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
use super::direct::DGeom;
use super::gemm::{isa, Isa};

/// Output channels per tile (two 16-lane vectors) and pixels per tile.
pub(super) const CW: usize = 32;
const PX: usize = 8;

type PTile = [[f32; CW]; PX];
/// (K, weight panel [K][CW], the tile's pixel bases, K offsets) -> tile.
type PMicroFn = unsafe fn(usize, *const f32, &[*const f32; PX], *const u32) -> PTile;

/// All `d.co` output planes of one item from CW-wide `panels`: y is [co, ho, wo].
pub(super) fn run_item(d: &DGeom, panels: &[f32], koff: &[u32], xp: &[f32], y: &mut [f32]) {
    let micro = kernel();
    let (kdim, hw, wp) = (koff.len(), d.ho * d.wo, d.wp());
    let npanels = d.co.div_ceil(CW);
    assert!(xp.len() >= d.buf_len() && panels.len() >= npanels * kdim * CW && hw > 0);
    let bases: Vec<usize> = (0..hw)
        .map(|q| d.origin + (q / d.wo) * wp + q % d.wo)
        .collect();
    for q in 0..npanels {
        let wpanel = &panels[q * kdim * CW..(q + 1) * kdim * CW];
        let rows = CW.min(d.co - q * CW);
        for t0 in (0..hw).step_by(PX) {
            // A partial last tile repeats the last pixel; its extra columns are dropped.
            // SAFETY: each base is a valid output pixel's grid offset, below the padded plane.
            let xb: [*const f32; PX] =
                std::array::from_fn(|i| unsafe { xp.as_ptr().add(bases[(t0 + i).min(hw - 1)]) });
            // SAFETY: the kernel reads wpanel[..kdim * CW] and xp[base + koff[p]] for the tile's
            // bases; base + koff[p] is a valid pixel's term inside the padded buffer, and the
            // kernel's CPU features were detected.
            let tile = unsafe { micro(kdim, wpanel.as_ptr(), &xb, koff.as_ptr()) };
            let px = PX.min(hw - t0);
            for r in 0..rows {
                let out = &mut y[(q * CW + r) * hw + t0..][..px];
                for (i, o) in out.iter_mut().enumerate() {
                    *o = tile[i][r];
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
) -> PTile {
    let mut acc = [[0.0f32; CW]; PX];
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
    acc
}

/// AVX2 + FMA: two passes of 16 channels x 8 pixels (16 ymm accumulators each).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pmicro_avx2(
    kdim: usize,
    w: *const f32,
    xb: &[*const f32; PX],
    koff: *const u32,
) -> PTile {
    use std::arch::x86_64::*;
    let mut out = [[0.0f32; CW]; PX];
    for half in 0..2 {
        let mut acc = [[_mm256_setzero_ps(); 2]; PX];
        for p in 0..kdim {
            // SAFETY: the caller guarantees kdim weights x CW, kdim offsets, in-bounds loads.
            unsafe {
                let o = *koff.add(p) as usize;
                let wp = w.add(p * CW + half * 16);
                let (w0, w1) = (_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8)));
                for (a, &b) in acc.iter_mut().zip(xb) {
                    let xv = _mm256_broadcast_ss(&*b.add(o));
                    a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                    a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
                }
            }
        }
        for (row, a) in out.iter_mut().zip(&acc) {
            // SAFETY: each row holds CW floats; half * 16 + 16 <= CW.
            unsafe {
                _mm256_storeu_ps(row.as_mut_ptr().add(half * 16), a[0]);
                _mm256_storeu_ps(row.as_mut_ptr().add(half * 16 + 8), a[1]);
            }
        }
    }
    out
}

/// AVX-512: the whole 8 x 32 tile in 16 zmm accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn pmicro_avx512(
    kdim: usize,
    w: *const f32,
    xb: &[*const f32; PX],
    koff: *const u32,
) -> PTile {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; PX];
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
    let mut out = [[0.0f32; CW]; PX];
    for (row, a) in out.iter_mut().zip(&acc) {
        // SAFETY: each row holds CW = 32 floats.
        unsafe {
            _mm512_storeu_ps(row.as_mut_ptr(), a[0]);
            _mm512_storeu_ps(row.as_mut_ptr().add(16), a[1]);
        }
    }
    out
}

/// The pixel-layout kernel for `gemm::isa()`.
fn kernel() -> PMicroFn {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => pmicro_avx512 as PMicroFn,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => pmicro_avx2 as PMicroFn,
        _ => pmicro_plain as PMicroFn,
    }
}
