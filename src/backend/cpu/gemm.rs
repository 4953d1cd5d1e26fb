//! Packed, cache-blocked SGEMM C = A * B with a register-tiled micro-kernel (no external BLAS).
//!
//! Design (GotoBLAS-style): K is cut into blocks of `kc` (a multiple of the caller's `k_align`),
//! A into row panels of MR and B into column panels of NR. Operands are never materialised as
//! matrices: callers implement [`Pack`], which writes a (count x kb) block straight into the
//! panel layout, so convolutions pack from NCHW tensors without an im2col buffer. A may instead
//! be packed once up front ([`PackedA`], used for weights shared by every task). C is addressed
//! as `ptr[i * rs + coff[j]]`, which lets one GEMM write a whole batch of NCHW outputs.
//!
//! Parallelism: rayon tasks own disjoint tiles of C (column tiles, then row groups when there
//! are too few columns). With a pre-packed A each task packs its own B blocks; when both
//! operands are packed on the fly (weight gradients: long K, small M and N) each K super-block
//! of A and B is packed once, in parallel, before the tiles run. Every C element is produced by
//! one task that walks K in the same block order, so results are bitwise identical for any
//! thread count. The micro-kernel (AVX-512 12x16, AVX2+FMA 2 x 6x16, or portable; chosen at run
//! time) keeps an accumulator tile in registers and accumulates over p ascending with one
//! multiply-add per term (fused on AVX2/AVX-512); the first K block overwrites C and later
//! blocks add to it.
use rayon::prelude::*;
use std::sync::OnceLock;

pub const MR: usize = 12;
pub const NR: usize = 16;
/// Target K block (rounded down to a multiple of `k_align`).
const KC: usize = 256;
/// Rows of A per macro-kernel call (multiple of MR).
const MC: usize = 96;
/// Widest column tile per task (multiple of NR).
const NC: usize = 256;

/// Writes `count` rows (A) or columns (B) starting at `idx0`, for k in `p0..p0 + kb`, into
/// `out` as ceil(count / R) panels of `kb * R` floats: element (p, r) of panel q lives at
/// `q * kb * R + p * R + r`. Slots r >= count in the last panel must be written as zero.
pub trait Pack: Sync {
    fn pack(&self, idx0: usize, count: usize, p0: usize, kb: usize, out: &mut [f32]);
}

pub fn kernel_name() -> &'static str {
    kernel().1
}

type Tile = [[f32; NR]; MR];
type MicroFn = unsafe fn(usize, &[f32], &[f32]) -> Tile;

/// R rows (starting at row `r0` of each MR-wide A step) x NR columns, summing p ascending.
#[inline(always)]
fn micro_rows<const R: usize, const FMA: bool>(
    kb: usize,
    a: &[f32],
    r0: usize,
    b: &[f32],
    c: &mut [[f32; NR]],
) {
    let mut acc = [[0.0f32; NR]; R];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kb) {
        let ap: &[f32; R] = ap[r0..r0 + R].try_into().unwrap();
        let bp: &[f32; NR] = bp.try_into().unwrap();
        rank1::<R, NR, FMA>(&mut acc, ap, bp);
    }
    c[..R].copy_from_slice(&acc);
}

/// acc[i][j] += a[i] * b[j] for every (i, j), as one fused multiply-add (FMA) or a separate
/// multiply and add: the step of every portable micro-kernel (this GEMM's, Winograd's).
#[inline(always)]
pub(super) fn rank1<const R: usize, const N: usize, const FMA: bool>(
    acc: &mut [[f32; N]; R],
    a: &[f32; R],
    b: &[f32; N],
) {
    for i in 0..R {
        for j in 0..N {
            acc[i][j] = if FMA {
                a[i].mul_add(b[j], acc[i][j])
            } else {
                acc[i][j] + a[i] * b[j]
            };
        }
    }
}

/// The 12-row panel as two 6-row halves (12 accumulator rows at a time).
#[inline(always)]
fn micro_halves<const FMA: bool>(kb: usize, a: &[f32], b: &[f32]) -> Tile {
    let mut c = [[0.0f32; NR]; MR];
    micro_rows::<6, FMA>(kb, a, 0, b, &mut c[..6]);
    micro_rows::<6, FMA>(kb, a, 6, b, &mut c[6..]);
    c
}

/// Portable kernel: separate multiply and add (no libm fma calls).
unsafe fn micro_plain(kb: usize, a: &[f32], b: &[f32]) -> Tile {
    micro_halves::<false>(kb, a, b)
}

/// AVX2: 6 x 16 tiles (12 ymm accumulators).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2(kb: usize, a: &[f32], b: &[f32]) -> Tile {
    micro_halves::<true>(kb, a, b)
}

/// AVX-512: the whole 12 x 16 tile in 12 zmm accumulators. Written with intrinsics because
/// LLVM turns the generic loop into gathers at this width; the arithmetic is the same fused
/// multiply-add per term, in the same order, as the AVX2 kernel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn micro_avx512(kb: usize, a: &[f32], b: &[f32]) -> Tile {
    use std::arch::x86_64::*;
    assert!(
        a.len() >= kb * MR && b.len() >= kb * NR,
        "micro_avx512: short panels"
    );
    let mut acc = [_mm512_setzero_ps(); MR];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for p in 0..kb {
        // SAFETY: p * NR + 16 <= kb * NR <= b.len() and p * MR + i < kb * MR <= a.len() (asserted).
        let bv = unsafe { _mm512_loadu_ps(bp.add(p * NR)) };
        for (i, c) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let av = _mm512_set1_ps(unsafe { *ap.add(p * MR + i) });
            *c = _mm512_fmadd_ps(av, bv, *c);
        }
    }
    let mut c = [[0.0f32; NR]; MR];
    for (row, v) in c.iter_mut().zip(acc) {
        // SAFETY: each row holds NR = 16 floats.
        unsafe { _mm512_storeu_ps(row.as_mut_ptr(), v) };
    }
    c
}

/// The instruction set the CPU micro-kernels (this GEMM's and `direct`'s) use, detected once.
/// `FMP_CPU_KERNEL=portable|avx2` forces a lesser one (to test every path on one machine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Portable,
    Avx2,
    Avx512,
}

pub(crate) fn isa() -> Isa {
    static I: OnceLock<Isa> = OnceLock::new();
    *I.get_or_init(|| {
        let force = std::env::var("FMP_CPU_KERNEL").unwrap_or_default();
        if force == "portable" {
            return Isa::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::is_x86_feature_detected!("fma");
            if force != "avx2" && fma && std::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if fma && std::is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// `by_isa!(avx512, avx2, portable)`: the expression for `isa()`, the one instruction-set choice
/// of every CPU kernel family (the x86 arms are compiled only on x86_64).
macro_rules! by_isa {
    ($avx512:expr, $avx2:expr, $portable:expr $(,)?) => {
        match $crate::backend::cpu::gemm::isa() {
            #[cfg(target_arch = "x86_64")]
            $crate::backend::cpu::gemm::Isa::Avx512 => $avx512,
            #[cfg(target_arch = "x86_64")]
            $crate::backend::cpu::gemm::Isa::Avx2 => $avx2,
            _ => $portable,
        }
    };
}
pub(super) use by_isa;

/// The GEMM micro-kernel for `isa()`.
fn kernel() -> (MicroFn, &'static str) {
    by_isa!(
        (micro_avx512 as MicroFn, "sgemm avx512 12x16"),
        (micro_avx2 as MicroFn, "sgemm avx2+fma 2x6x16"),
        (micro_plain as MicroFn, "sgemm portable 12x16"),
    )
}

fn k_block(k_align: usize) -> usize {
    let a = k_align.max(1);
    if a >= KC {
        a
    } else {
        (KC / a) * a
    }
}

/// A packed once for all tasks: per K block, ceil(m / MR) panels.
pub struct PackedA {
    data: Vec<f32>,
    m: usize,
    k: usize,
    kc: usize,
}

impl PackedA {
    pub fn new(m: usize, k: usize, k_align: usize, src: &dyn Pack) -> Self {
        let kc = k_block(k_align);
        let mp = m.div_ceil(MR) * MR;
        let mut data = vec![0.0f32; mp * k];
        data.par_chunks_mut((mp * kc).max(1))
            .enumerate()
            .for_each(|(bi, blk)| {
                let p0 = bi * kc;
                let kb = kc.min(k - p0);
                src.pack(0, m, p0, kb, &mut blk[..mp * kb]);
            });
        PackedA { data, m, k, kc }
    }
    /// Panels for rows i0.. (i0 a multiple of MR) of the K block starting at p0.
    fn block(&self, i0: usize, p0: usize, kb: usize) -> &[f32] {
        let mp = self.m.div_ceil(MR) * MR;
        &self.data[p0 * mp + i0 * kb..]
    }
}

pub enum ASrc<'a> {
    Packed(&'a PackedA),
    Pack(&'a dyn Pack),
}

/// Output addressing: C(i, j) = ptr[i * rs + coff[j]].
pub struct COut<'a> {
    pub ptr: *mut f32,
    pub rs: usize,
    pub coff: &'a [usize],
}
// SAFETY: tasks write disjoint (i, j) elements, and callers guarantee distinct (i, j) map to
// distinct offsets inside the buffer `ptr` points to, which outlives the GEMM call.
unsafe impl Sync for COut<'_> {}
unsafe impl Send for COut<'_> {}

/// C (m x n) = A (m x k) * B (k x n), overwriting C. `k_align`: K blocks are multiples of it.
pub fn gemm(m: usize, n: usize, k: usize, k_align: usize, a: ASrc<'_>, b: &dyn Pack, c: &COut<'_>) {
    assert_eq!(c.coff.len(), n, "gemm: one column offset per column");
    if m == 0 || n == 0 {
        return;
    }
    let kc = match &a {
        ASrc::Packed(pa) => {
            assert!(
                pa.m == m && pa.k == k,
                "gemm: packed A is {}x{}, expected {m}x{k}",
                pa.m,
                pa.k
            );
            pa.kc
        }
        ASrc::Pack(_) => k_block(k_align),
    };
    if k == 0 {
        for i in 0..m {
            for &o in c.coff {
                // SAFETY: (i, j) is inside C by the COut contract.
                unsafe { *c.ptr.add(i * c.rs + o) = 0.0 };
            }
        }
        return;
    }
    let want = 4 * rayon::current_num_threads();
    let nc = (n.div_ceil(want).div_ceil(NR) * NR).clamp(64.min(n.div_ceil(NR) * NR), NC);
    let col_tiles = n.div_ceil(nc);
    let m_panels = m.div_ceil(MR);
    let row_groups = if col_tiles >= want {
        1
    } else {
        want.div_ceil(col_tiles).min(m_panels)
    };
    let rows_per_group = m_panels.div_ceil(row_groups) * MR;
    let row_groups = m.div_ceil(rows_per_group);
    let micro = kernel().0;
    if let ASrc::Pack(asrc) = a {
        gemm_shared(
            m,
            n,
            k,
            kc,
            asrc,
            b,
            c,
            (row_groups, rows_per_group),
            (col_tiles, nc),
        );
        return;
    }
    (0..row_groups * col_tiles).into_par_iter().for_each_init(
        || (Vec::<f32>::new(), Vec::<f32>::new()),
        |(bbuf, abuf), t| {
            let (rg, ct) = (t / col_tiles, t % col_tiles);
            let (r0, r1) = (rg * rows_per_group, ((rg + 1) * rows_per_group).min(m));
            let (j0, j1) = (ct * nc, ((ct + 1) * nc).min(n));
            let nb = j1 - j0;
            let mut p0 = 0;
            while p0 < k {
                let kb = kc.min(k - p0);
                bbuf.resize(nb.div_ceil(NR) * NR * kb, 0.0);
                b.pack(j0, nb, p0, kb, bbuf);
                let mut i0 = r0;
                while i0 < r1 {
                    let mb = MC.min(r1 - i0);
                    let ablk: &[f32] = match &a {
                        ASrc::Packed(pa) => pa.block(i0, p0, kb),
                        ASrc::Pack(src) => {
                            abuf.resize(mb.div_ceil(MR) * MR * kb, 0.0);
                            src.pack(i0, mb, p0, kb, abuf);
                            abuf
                        }
                    };
                    macro_kernel(micro, mb, nb, kb, ablk, bbuf, c, i0, j0, p0 == 0);
                    i0 += mb;
                }
                p0 += kb;
            }
        },
    );
}

/// Floats of packed A + B held at once by `gemm_shared`.
const SHARED_BUDGET: usize = 1 << 22;

/// Both operands packed on the fly: per K super-block, pack all of A and all of B once (in
/// parallel), then run the tiles in parallel. Used when K is long and M, N are small (weight
/// gradients), where per-task packing would repack an operand once per tile. The arithmetic
/// (K blocks, kernel, store order) is the same as the per-task path.
#[allow(clippy::too_many_arguments)]
fn gemm_shared(
    m: usize,
    n: usize,
    k: usize,
    kc: usize,
    a: &dyn Pack,
    b: &dyn Pack,
    c: &COut<'_>,
    (row_groups, rows_per_group): (usize, usize),
    (col_tiles, nc): (usize, usize),
) {
    let (mp, np) = (m.div_ceil(MR) * MR, n.div_ceil(NR) * NR);
    let sb = ((SHARED_BUDGET / (mp + np)) / kc).max(1) * kc;
    let micro = kernel().0;
    let mut abuf = vec![0.0f32; mp * sb.min(k)];
    let mut bbuf = vec![0.0f32; np * sb.min(k)];
    let mut s0 = 0;
    while s0 < k {
        let s1 = (s0 + sb).min(k);
        pack_super_block(a, m, mp, kc, s0..s1, &mut abuf);
        pack_super_block(b, n, np, kc, s0..s1, &mut bbuf);
        let (ab, bb) = (&abuf, &bbuf);
        (0..row_groups * col_tiles)
            .into_par_iter()
            .for_each(|task| {
                let (rg, ct) = (task / col_tiles, task % col_tiles);
                let (r0, r1) = (rg * rows_per_group, ((rg + 1) * rows_per_group).min(m));
                let (j0, j1) = (ct * nc, ((ct + 1) * nc).min(n));
                let mut p0 = s0;
                while p0 < s1 {
                    let kb = kc.min(s1 - p0);
                    let off = p0 - s0;
                    let bblk = &bb[off * np + j0 * kb..off * np + np * kb];
                    let mut i0 = r0;
                    while i0 < r1 {
                        let mb = MC.min(r1 - i0);
                        let ablk = &ab[off * mp + i0 * kb..off * mp + mp * kb];
                        macro_kernel(micro, mb, j1 - j0, kb, ablk, bblk, c, i0, j0, p0 == 0);
                        i0 += mb;
                    }
                    p0 += kb;
                }
            });
        s0 = s1;
    }
}

/// All `count` rows (A) or columns (B) of an operand for p in `ps`, in parallel: block t covers
/// p in ps.start + t*kc .. and its panels (`padded` = count rounded up to whole panels) start at
/// t*kc*padded of `buf`.
fn pack_super_block(
    src: &dyn Pack,
    count: usize,
    padded: usize,
    kc: usize,
    ps: std::ops::Range<usize>,
    buf: &mut [f32],
) {
    buf[..padded * ps.len()]
        .par_chunks_mut(padded * kc)
        .enumerate()
        .for_each(|(t, blk)| {
            let p0 = ps.start + t * kc;
            let kb = kc.min(ps.end - p0);
            src.pack(0, count, p0, kb, &mut blk[..padded * kb]);
        });
}

#[allow(clippy::too_many_arguments)]
fn macro_kernel(
    micro: MicroFn,
    mb: usize,
    nb: usize,
    kb: usize,
    a: &[f32],
    b: &[f32],
    c: &COut<'_>,
    i0: usize,
    j0: usize,
    first: bool,
) {
    for jp in 0..nb.div_ceil(NR) {
        let bp = &b[jp * kb * NR..(jp + 1) * kb * NR];
        let nr = NR.min(nb - jp * NR);
        let offs = &c.coff[j0 + jp * NR..j0 + jp * NR + nr];
        let contiguous = offs.windows(2).all(|w| w[1] == w[0] + 1);
        for ip in 0..mb.div_ceil(MR) {
            let ap = &a[ip * kb * MR..(ip + 1) * kb * MR];
            // SAFETY: `micro` is the portable kernel or one whose CPU features were detected.
            let acc = unsafe { micro(kb, ap, bp) };
            let mr = MR.min(mb - ip * MR);
            for (r, row) in acc.iter().enumerate().take(mr) {
                let base = (i0 + ip * MR + r) * c.rs;
                if contiguous {
                    // SAFETY: the nr elements base + offs[0] .. are inside C and owned by this
                    // task (COut contract); no other reference to them exists.
                    let d =
                        unsafe { std::slice::from_raw_parts_mut(c.ptr.add(base + offs[0]), nr) };
                    if first {
                        d.copy_from_slice(&row[..nr]);
                    } else {
                        for (d, &v) in d.iter_mut().zip(row) {
                            *d += v;
                        }
                    }
                    continue;
                }
                for (&o, &v) in offs.iter().zip(row) {
                    // SAFETY: (i, j) is inside C and owned by this task (COut contract).
                    unsafe {
                        let d = c.ptr.add(base + o);
                        *d = if first { v } else { *d + v };
                    }
                }
            }
        }
    }
}

/// Packs a row-major matrix M (rows x cols, element (i, p) at i * ld + p) as the A operand.
pub struct RowMajor<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub ld: usize,
}

impl Pack for RowMajor<'_> {
    fn pack(&self, i0: usize, count: usize, p0: usize, kb: usize, out: &mut [f32]) {
        for q in 0..count.div_ceil(MR) {
            let panel = &mut out[q * kb * MR..(q + 1) * kb * MR];
            for r in 0..MR {
                let i = i0 + q * MR + r;
                if q * MR + r < count && i < self.rows {
                    let row = &self.data[i * self.ld + p0..i * self.ld + p0 + kb];
                    for (p, &v) in row.iter().enumerate() {
                        panel[p * MR + r] = v;
                    }
                } else {
                    for p in 0..kb {
                        panel[p * MR + r] = 0.0;
                    }
                }
            }
        }
    }
}
