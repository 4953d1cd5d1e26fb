//! AVX-512 input and output transforms of the Winograd convolution (`winograd`): one panel
//! (16 tiles, one per lane) per step, segments of 2, 4, 8 or 16 tiles (whole tile rows).
//!
//! Input, per channel and panel: the four input rows of every segment as two vectors of 32
//! pixels (segments side by side), the column transform B^T d as vector adds, then per row of it
//! the even and odd columns (two-source permutes) and their neighbours across tiles (lane
//! shifts, zero at segment edges: the padding), and d B as four vector ops. Output, per channel
//! and panel: A^T M A on 16 vectors of M, the two pixels of each tile row interleaved by two
//! permutes and stored per segment. The arithmetic is the portable transforms' exactly (the same
//! adds and subtracts in the same order).
#![cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::winograd::{Call, NT, XI};

const fn idx(f: [u32; 16]) -> [u32; 16] {
    f
}
const EVEN: [u32; 16] = idx([0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]);
const ODD: [u32; 16] = idx([1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31]);
const SHR: [u32; 16] = idx([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
const SHL: [u32; 16] = idx([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 15]);
const IL_LO: [u32; 16] = idx([0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23]);
const IL_HI: [u32; 16] = idx([8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31]);

/// Zero pixels for rows outside the plane (the longest segment is 32 pixels).
static ZERO: [f32; 2 * NT] = [0.0; 2 * NT];

#[inline(always)]
unsafe fn index(i: &[u32; 16]) -> __m512i {
    // SAFETY: 16 u32 are 64 readable bytes.
    unsafe { _mm512_loadu_si512(i.as_ptr() as *const _) }
}

/// Lanes whose tile has a left (right) neighbour inside its segment.
fn masks<const SEG: usize>() -> (__mmask16, __mmask16) {
    let (mut left, mut right) = (0u16, 0u16);
    for l in 0..NT {
        if l % SEG != 0 {
            left |= 1 << l;
        }
        if (l + 1) % SEG != 0 {
            right |= 1 << l;
        }
    }
    (left, right)
}

/// 32 pixels from 16 / SEG segments of 2 SEG pixels each: (first 16, last 16).
#[inline(always)]
unsafe fn load_segs<const SEG: usize>(p: &[*const f32; NT]) -> (__m512, __m512) {
    // SAFETY: each p[s] (s < 16 / SEG) has 2 SEG readable floats.
    unsafe {
        match SEG {
            16 => (_mm512_loadu_ps(p[0]), _mm512_loadu_ps(p[0].add(16))),
            8 => (_mm512_loadu_ps(p[0]), _mm512_loadu_ps(p[1])),
            4 => {
                let half = |a: *const f32, b: *const f32| {
                    let v = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(a)));
                    let b = _mm256_castps_pd(_mm256_loadu_ps(b));
                    _mm512_castpd_ps(_mm512_insertf64x4::<1>(v, b))
                };
                (half(p[0], p[1]), half(p[2], p[3]))
            }
            _ => {
                let quarter = |q: &[*const f32]| {
                    let v = _mm512_castps128_ps512(_mm_loadu_ps(q[0]));
                    let v = _mm512_insertf32x4::<1>(v, _mm_loadu_ps(q[1]));
                    let v = _mm512_insertf32x4::<2>(v, _mm_loadu_ps(q[2]));
                    _mm512_insertf32x4::<3>(v, _mm_loadu_ps(q[3]))
                };
                (quarter(&p[0..4]), quarter(&p[4..8]))
            }
        }
    }
}

/// Stores 32 pixels to 16 / SEG segments of 2 SEG pixels (null: a tile past the last, skipped).
#[inline(always)]
unsafe fn store_segs<const SEG: usize>(p: &[*mut f32; NT], lo: __m512, hi: __m512) {
    // SAFETY: each non-null p[s] has 2 SEG writable floats the caller owns.
    unsafe {
        match SEG {
            16 => {
                if !p[0].is_null() {
                    _mm512_storeu_ps(p[0], lo);
                    _mm512_storeu_ps(p[0].add(16), hi);
                }
            }
            8 => {
                for (q, v) in [(p[0], lo), (p[1], hi)] {
                    if !q.is_null() {
                        _mm512_storeu_ps(q, v);
                    }
                }
            }
            4 => {
                let halves = [
                    _mm512_castpd_ps(_mm512_castpd256_pd512(_mm512_extractf64x4_pd::<0>(
                        _mm512_castps_pd(lo),
                    ))),
                    _mm512_castpd_ps(_mm512_castpd256_pd512(_mm512_extractf64x4_pd::<1>(
                        _mm512_castps_pd(lo),
                    ))),
                    _mm512_castpd_ps(_mm512_castpd256_pd512(_mm512_extractf64x4_pd::<0>(
                        _mm512_castps_pd(hi),
                    ))),
                    _mm512_castpd_ps(_mm512_castpd256_pd512(_mm512_extractf64x4_pd::<1>(
                        _mm512_castps_pd(hi),
                    ))),
                ];
                for (q, h) in p.iter().zip(halves) {
                    if !q.is_null() {
                        _mm256_storeu_ps(*q, _mm512_castps512_ps256(h));
                    }
                }
            }
            _ => {
                let quarters = [
                    _mm512_extractf32x4_ps::<0>(lo),
                    _mm512_extractf32x4_ps::<1>(lo),
                    _mm512_extractf32x4_ps::<2>(lo),
                    _mm512_extractf32x4_ps::<3>(lo),
                    _mm512_extractf32x4_ps::<0>(hi),
                    _mm512_extractf32x4_ps::<1>(hi),
                    _mm512_extractf32x4_ps::<2>(hi),
                    _mm512_extractf32x4_ps::<3>(hi),
                ];
                for (q, v) in p.iter().zip(quarters) {
                    if !q.is_null() {
                        _mm_storeu_ps(*q, v);
                    }
                }
            }
        }
    }
}

/// `input_transform` for panels p0..p1 (SEG in 2, 4, 8, 16).
///
/// # Safety
/// AVX-512F is available; v holds XI x (p1 - p0) x ci x NT floats.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn input_transform<const SEG: usize>(
    c: &Call,
    p0: usize,
    p1: usize,
    v: &mut [f32],
) {
    let (t, x) = (c.t, c.x);
    let (plane, np) = (t.h * t.w, p1 - p0);
    let xi_stride = t.v_stride(np);
    assert!(v.len() >= XI * xi_stride && x.len() >= t.total / (t.th * t.tw) * t.ci * plane);
    let (ml, mr) = masks::<SEG>();
    // SAFETY: index tables are 16 u32 each.
    let (even, odd, shr, shl) = unsafe { (index(&EVEN), index(&ODD), index(&SHR), index(&SHL)) };
    let vp = v.as_mut_ptr();
    for c in 0..t.ci {
        for p in p0..p1 {
            let mut rows = [[ZERO.as_ptr(); NT]; 4];
            for s in 0..NT / SEG {
                let Some((n, ty, _)) = t.segment::<SEG>(p, s) else {
                    break;
                };
                for (a, r) in rows.iter_mut().enumerate() {
                    if let Some(row) = (2 * ty + a).checked_sub(1).filter(|&r| r < t.h) {
                        // Row `row` of plane (n, c): 2 SEG = w pixels, inside x (asserted).
                        r[s] = x[(n * t.ci + c) * plane + row * t.w..].as_ptr();
                    }
                }
            }
            // SAFETY: every row pointer has 2 SEG = w floats (or is ZERO's 32); stores land in
            // v at (xi * stride + base) + 16 <= v.len().
            unsafe {
                let [(l0, h0), (l1, h1), (l2, h2), (l3, h3)] = rows.map(|r| load_segs::<SEG>(&r));
                let cols = [
                    (_mm512_sub_ps(l0, l2), _mm512_sub_ps(h0, h2)),
                    (_mm512_add_ps(l1, l2), _mm512_add_ps(h1, h2)),
                    (_mm512_sub_ps(l2, l1), _mm512_sub_ps(h2, h1)),
                    (_mm512_sub_ps(l1, l3), _mm512_sub_ps(h1, h3)),
                ];
                let base = ((p - p0) * t.ci + c) * NT;
                for (i, (lo, hi)) in cols.into_iter().enumerate() {
                    let xe = _mm512_permutex2var_ps(lo, even, hi);
                    let xo = _mm512_permutex2var_ps(lo, odd, hi);
                    let left = _mm512_maskz_permutexvar_ps(ml, shr, xo);
                    let right = _mm512_maskz_permutexvar_ps(mr, shl, xe);
                    let out = [
                        _mm512_sub_ps(left, xo),
                        _mm512_add_ps(xe, xo),
                        _mm512_sub_ps(xo, xe),
                        _mm512_sub_ps(xe, right),
                    ];
                    for (b, o) in out.into_iter().enumerate() {
                        _mm512_storeu_ps(vp.add((i * 4 + b) * xi_stride + base), o);
                    }
                }
            }
        }
    }
}

/// `output_transform` for panels p0..p1 (SEG in 2, 4, 8, 16).
///
/// # Safety
/// AVX-512F is available; `c.out` points to the [n, co, h, w] output and these panels' tiles are
/// the caller's alone; m holds the unit's products.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn output_transform<const SEG: usize>(c: &Call, m: &[f32], p0: usize, p1: usize) {
    let (t, out) = (c.t, c.out);
    let (plane, rs, tiles) = (t.h * t.w, t.m_stride(), t.per_unit * NT);
    assert!(m.len() >= t.m_len() && p1 - p0 <= t.per_unit);
    // SAFETY: index tables are 16 u32 each.
    let (il_lo, il_hi) = unsafe { (index(&IL_LO), index(&IL_HI)) };
    for co in 0..t.co {
        for p in p0..p1 {
            let mut dst = [[std::ptr::null_mut::<f32>(); NT]; 2];
            for s in 0..NT / SEG {
                let Some((n, ty, _)) = t.segment::<SEG>(p, s) else {
                    break;
                };
                for (i, d) in dst.iter_mut().enumerate() {
                    // SAFETY: row 2 ty + i of plane (n, co) lies inside the output.
                    d[s] = unsafe { out.0.add((n * t.co + co) * plane + (2 * ty + i) * t.w) };
                }
            }
            // SAFETY: M row co, column (p - p0) * 16 of each xi: 16 floats inside m (asserted);
            // stores go to this unit's output rows.
            unsafe {
                let mc = m.as_ptr().add(co * rs + (p - p0) * NT);
                let at = |xi: usize| _mm512_loadu_ps(mc.add(xi * tiles));
                let mut r = [[_mm512_setzero_ps(); 4]; 2];
                for b in 0..4 {
                    let (m0, m1, m2, m3) = (at(b), at(4 + b), at(8 + b), at(12 + b));
                    r[0][b] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                    r[1][b] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
                }
                for (i, ri) in r.iter().enumerate() {
                    let y0 = _mm512_add_ps(_mm512_add_ps(ri[0], ri[1]), ri[2]);
                    let y1 = _mm512_sub_ps(_mm512_sub_ps(ri[1], ri[2]), ri[3]);
                    let lo = _mm512_permutex2var_ps(y0, il_lo, y1);
                    let hi = _mm512_permutex2var_ps(y0, il_hi, y1);
                    store_segs::<SEG>(&dst[i], lo, hi);
                }
            }
        }
    }
}
