//! The strided input gradient on the GEMM path (`conv`'s fallback for strides above 1): col =
//! W^T * dy, one GEMM per chunk of items, then a col2im gather that sums each input pixel's
//! (kh, kw) terms in ascending order. The one-hot form fills col with its one product per term
//! instead of the GEMM, and shares the chunk loop and the gather.
use rayon::prelude::*;

use super::conv::{Geom, OneHot};
use super::gemm::{gemm, ASrc, COut, Pack, PackedA, MR, NR};

/// Floats of column buffer per chunk of items on the strided input-gradient path.
const COL_BUDGET: usize = 1 << 18;

/// A operand W^T of the strided input gradient: A[(ci, kh, kw), co] = w[co, ci, kh, kw].
struct ColMajor<'a> {
    data: &'a [f32],
    ld: usize,
}

impl Pack for ColMajor<'_> {
    fn pack(&self, i0: usize, count: usize, p0: usize, kb: usize, out: &mut [f32]) {
        for q in 0..count.div_ceil(MR) {
            let panel = &mut out[q * kb * MR..(q + 1) * kb * MR];
            let nv = MR.min(count - q * MR);
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                let src = &self.data[(p0 + p) * self.ld + i0 + q * MR..];
                dst[..nv].copy_from_slice(&src[..nv]);
                dst[nv..].fill(0.0);
            }
        }
    }
}

/// B operand of the strided input gradient: dy of items n0.., rows co, columns (item, pixel).
struct DyRows<'a> {
    dy: &'a [f32],
    n0: usize,
    g: Geom,
}

impl Pack for DyRows<'_> {
    fn pack(&self, j0: usize, count: usize, p0: usize, kb: usize, out: &mut [f32]) {
        let hwo = self.g.ho * self.g.wo;
        for q in 0..count.div_ceil(NR) {
            let panel = &mut out[q * kb * NR..(q + 1) * kb * NR];
            let nv = NR.min(count - q * NR);
            let mut base = [0usize; NR];
            for (jj, b) in base.iter_mut().enumerate().take(nv) {
                let j = j0 + q * NR + jj;
                *b = (self.n0 + j / hwo) * self.g.co * hwo + j % hwo;
            }
            let contiguous = nv == NR && (1..NR).all(|jj| base[jj] == base[0] + jj);
            for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                let off = (p0 + p) * hwo;
                if contiguous {
                    dst.copy_from_slice(&self.dy[base[0] + off..base[0] + off + NR]);
                } else {
                    for jj in 0..NR {
                        dst[jj] = if jj < nv {
                            self.dy[base[jj] + off]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// dx planes of `items` items from col[(ci, kh, kw), (item, oh, ow)]: each input pixel sums its
/// (kh, kw) contributions in ascending order (the same routine serves the one-hot path).
fn col2im(g: &Geom, col: &[f32], items: usize, dx: &mut [f32]) {
    let (hwi, hwo, kk) = (g.hi * g.wi, g.ho * g.wo, g.k * g.k);
    let ld = items * hwo;
    dx.par_chunks_mut(hwi.max(1))
        .enumerate()
        .for_each(|(plane, d)| {
            let (nl, ci) = (plane / g.ci, plane % g.ci);
            d.fill(0.0);
            for kh in 0..g.k {
                for kw in 0..g.k {
                    let row = &col[(ci * kk + kh * g.k + kw) * ld + nl * hwo..][..hwo];
                    for oh in 0..g.ho {
                        let ih = (oh * g.s + kh) as isize - g.p as isize;
                        if ih < 0 || ih >= g.hi as isize {
                            continue;
                        }
                        let drow = &mut d[ih as usize * g.wi..(ih as usize + 1) * g.wi];
                        for ow in 0..g.wo {
                            let iw = (ow * g.s + kw) as isize - g.p as isize;
                            if iw >= 0 && iw < g.wi as isize {
                                drow[iw as usize] += row[oh * g.wo + ow];
                            }
                        }
                    }
                }
            }
        });
}

/// Items per chunk of the strided path.
fn col_chunk(g: &Geom) -> usize {
    (COL_BUDGET / (g.ci * g.k * g.k * g.ho * g.wo).max(1)).max(1)
}

/// The strided path's chunk loop: for each chunk of items, `fill(n0, items, col)` writes
/// col[(ci, kh, kw), (item, oh, ow)] for items n0.., and col2im sums it into their dx planes.
fn by_col_chunks(g: &Geom, o: &mut [f32], mut fill: impl FnMut(usize, usize, &mut [f32])) {
    let (hwi, hwo) = (g.hi * g.wi, g.ho * g.wo);
    let rows = g.ci * g.k * g.k;
    let chunk = col_chunk(g);
    let mut col = Vec::new();
    for n0 in (0..g.n).step_by(chunk) {
        let items = chunk.min(g.n - n0);
        col.resize(rows * items * hwo, 0.0);
        fill(n0, items, &mut col);
        col2im(
            g,
            &col,
            items,
            &mut o[n0 * g.ci * hwi..(n0 + items) * g.ci * hwi],
        );
    }
}

/// Strided input gradient: col = W^T * dy (one GEMM per chunk of items), then col2im. The
/// direct form would multiply (s*s - 1)/(s*s) structural zeros.
pub(super) fn input_grad(g: &Geom, gs: &[f32], ws: &[f32], o: &mut [f32]) {
    let hwo = g.ho * g.wo;
    let rows = g.ci * g.k * g.k;
    let pa = PackedA::new(rows, g.co, 1, &ColMajor { data: ws, ld: rows });
    by_col_chunks(g, o, |n0, items, col| {
        let coff: Vec<usize> = (0..items * hwo).collect();
        let c = COut {
            ptr: col.as_mut_ptr(),
            rs: items * hwo,
            coff: &coff,
        };
        gemm(
            rows,
            items * hwo,
            g.co,
            1,
            ASrc::Packed(&pa),
            &DyRows { dy: gs, n0, g: *g },
            &c,
        );
    });
}

/// One-hot version of `input_grad`: col[r, (i, pix)] = w[c_i, r] * seed[i, pix], which is
/// exactly what the GEMM produces for a one-hot cotangent (one product, exact zeros elsewhere).
pub(super) fn input_grad_onehot(g: &Geom, oh: OneHot, ws: &[f32], o: &mut [f32]) {
    let hwo = g.ho * g.wo;
    let rows = g.ci * g.k * g.k;
    by_col_chunks(g, o, |n0, items, col| {
        col.par_chunks_mut(items * hwo)
            .enumerate()
            .for_each(|(r, crow)| {
                for (nl, cseg) in crow.chunks_exact_mut(hwo).enumerate() {
                    let n = n0 + nl;
                    let wv = ws[(oh.first_channel + n / oh.group) * rows + r];
                    for (d, &sv) in cseg.iter_mut().zip(&oh.seed[n * hwo..(n + 1) * hwo]) {
                        *d = wv * sv;
                    }
                }
            });
    });
}
