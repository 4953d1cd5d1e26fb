//! Winograd F(2x2, 3x3) convolution for the 3x3, stride-1, pad-1 convs on even planes (every
//! 3x3 conv of a PreActResNet18 block but the strided ones): the forward, the input gradient (the
//! same kind of conv, of dy with the flipped, transposed filters) and the one-hot input gradient.
//!
//! Design: output tiles are 2x2 pixels, read from 4x4 input patches. With the transforms of
//! Lavin & Gray (2016), Y = A^T [ (G g G^T) . (B^T d B) ] A, and the element-wise product summed
//! over input channels is 16 independent GEMMs, one per transform point xi:
//! M[xi][co][t] = sum_ci U[xi][co][ci] * V[xi][ci][t], 16 multiply-adds per tile and channel
//! pair instead of the direct form's 36 (2.25x fewer). Filters are transformed once (U, in
//! panels of MR output channels: [panel][xi][ci][MR]) and cached across calls while they stay
//! the same. Tiles are numbered row-major over (item, tile row, tile column); 16 consecutive
//! tiles are a panel (one per lane), and units of panels, sized so the unit's transformed input
//! V ([xi][panel][ci][16]) and products M ([co][xi][tile]) stay near L2, are the rayon tasks.
//! Per unit: the input transform writes V, the register-tiled micro-kernel (MR channels x 16
//! tiles, K = ci ascending, one fused multiply-add per term) writes M, the output transform
//! writes the 2x2 pixels of each tile. Every output depends only on its own item and is written
//! by one task: results do not depend on the batch or the thread count.
//!
//! The rounding differs from the direct convolution's (the transforms add and subtract inputs
//! before the products), so this path is opt-in (`FMP_CPU_CONV=winograd`): on real models its
//! scans moved 1 to 3 of 75 selected maps in four of ten comparisons (the margin4 recipe's
//! continuous score orders near-ties by the 4th decimal it changes), where the direct kernels give
//! bitwise the same report on AVX-512 and AVX2 (`benches/selection_rounding.sh`,
//! benches/RESULTS.md): short of the bar for a default.
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use super::conv::{Geom, OneHot};
use super::gemm::{by_isa, rank1};
use super::OutPtr;

/// Output channels per weight panel (micro-kernel rows).
const MR: usize = 16;
/// Tiles per panel (micro-kernel lanes).
pub(super) const NT: usize = 16;
/// Transform points of a 4x4 patch.
pub(super) const XI: usize = 16;
/// Bytes of V + M a unit may hold (half of a 1-2 MiB L2).
const UNIT_BYTES: usize = 3 << 18;

/// `FMP_CPU_CONV=winograd` turns this path on, `direct` off (read once; anything else is
/// reported on stderr and treated as the default).
pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| match std::env::var("FMP_CPU_CONV").as_deref() {
        Ok("winograd") => true,
        Ok("direct") => false,
        Ok("") | Err(_) => DEFAULT_ON,
        Ok(other) => {
            eprintln!(
                "warning: FMP_CPU_CONV={other:?} is not one of winograd, direct; using the default"
            );
            DEFAULT_ON
        }
    })
}

/// Whether the path is on without FMP_CPU_CONV.
const DEFAULT_ON: bool = false;

/// The kernel's name for the backend description, when it is on.
pub(crate) fn kernel_name() -> Option<&'static str> {
    enabled().then(|| {
        by_isa!(
            "winograd F(2x2,3x3) avx512",
            "winograd F(2x2,3x3) avx2",
            "winograd F(2x2,3x3) portable",
        )
    })
}

/// 3x3, stride 1, pad 1, same-size even planes.
pub(crate) fn suits(g: &Geom) -> bool {
    enabled()
        && g.k == 3
        && g.s == 1
        && g.p == 1
        && g.n > 0
        && g.ci >= MIN_CHANNELS
        && g.co >= MIN_CHANNELS
        && g.ho == g.hi
        && g.wo == g.wi
        && g.hi >= 2
        && g.hi.is_multiple_of(2)
        && g.wi.is_multiple_of(2)
        && seg_of(g.wi / 2).is_some()
}

/// The input gradient of a `suits` shape is the same kind of conv (dy with the flipped,
/// transposed filters, padding 1): it suits when its input (the `co` channels of dy) does. The
/// one-hot input gradient follows the same rule, so that the two stay bitwise equal.
pub(crate) fn suits_input_grad(g: &Geom) -> bool {
    suits(&transposed(g))
}

/// Fewer input or output channels than this stay direct (the transforms, or the 16-row weight
/// panels, cost more than they save).
const MIN_CHANNELS: usize = 8;

fn transposed(g: &Geom) -> Geom {
    Geom {
        ci: g.co,
        co: g.ci,
        ..*g
    }
}

/// G g G^T for one 3x3 filter (row-major 4x4).
fn filter_transform(f: &[f32]) -> [f32; XI] {
    // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    let col = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    let mut t = [[0.0f32; 3]; 4]; // G g: 4 x 3
    for j in 0..3 {
        let c = col(f[j], f[3 + j], f[6 + j]);
        for i in 0..4 {
            t[i][j] = c[i];
        }
    }
    let mut u = [0.0f32; XI];
    for i in 0..4 {
        let r = col(t[i][0], t[i][1], t[i][2]);
        u[i * 4..i * 4 + 4].copy_from_slice(&r);
    }
    u
}

/// U packed per panel of MR output channels: [co panel][xi][ci][MR], channels beyond `co` zero.
/// Panels are transformed in parallel, each into its own contiguous block.
fn pack_weights(
    co: usize,
    ci: usize,
    filter: impl Fn(usize, usize) -> [f32; 9] + Sync,
) -> Vec<f32> {
    let block = XI * ci * MR;
    let mut u = vec![0.0f32; co.div_ceil(MR) * block];
    u.par_chunks_mut(block.max(1))
        .enumerate()
        .for_each(|(q, blk)| {
            for r in 0..MR.min(co - q * MR) {
                for c in 0..ci {
                    let t = filter_transform(&filter(q * MR + r, c));
                    for (xi, &v) in t.iter().enumerate() {
                        blk[(xi * ci + c) * MR + r] = v;
                    }
                }
            }
        });
    u
}

/// Tile geometry of one call. Tiles are numbered row-major over (item, tile row, tile column);
/// a panel is 16 consecutive tiles, made of `16 / tw` whole tile rows (segments).
#[derive(Clone, Copy)]
pub(super) struct Tiles {
    pub(super) ci: usize,
    pub(super) co: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    /// Tile rows and columns per item, and tiles in all.
    pub(super) th: usize,
    pub(super) tw: usize,
    pub(super) total: usize,
    /// Panels per unit.
    pub(super) per_unit: usize,
}

impl Tiles {
    fn new(g: &Geom) -> Self {
        let (th, tw) = (g.hi / 2, g.wi / 2);
        let total = g.n * th * tw;
        // Panels per unit: V and M within UNIT_BYTES, but at least 8 (the weights, streamed
        // once per unit, then cost at most 1/32 byte per multiply-add), and at least two units
        // per thread.
        let per_panel = XI * NT * (g.ci + g.co.div_ceil(MR) * MR) * 4;
        let fit = (UNIT_BYTES / per_panel).max(8);
        let spread = total
            .div_ceil(NT)
            .div_ceil(2 * rayon::current_num_threads());
        Tiles {
            ci: g.ci,
            co: g.co,
            h: g.hi,
            w: g.wi,
            th,
            tw,
            total,
            per_unit: fit.min(spread).max(1),
        }
    }
    fn panels(&self) -> usize {
        self.total.div_ceil(NT)
    }
    /// V's stride between transform points for `np` panels, padded by a cache line so the 16
    /// points' rows do not all fall in one L1 set.
    pub(super) fn v_stride(&self, np: usize) -> usize {
        np * self.ci * NT + NT
    }
    fn v_len(&self) -> usize {
        XI * self.v_stride(self.per_unit)
    }
    fn m_rows(&self) -> usize {
        self.co.div_ceil(MR) * MR
    }
    /// M's row stride (one output channel): XI x the unit's tiles, plus a cache line (rows a
    /// multiple of 4 KiB apart would share L1 sets).
    pub(super) fn m_stride(&self) -> usize {
        XI * self.per_unit * NT + NT
    }
    pub(super) fn m_len(&self) -> usize {
        self.m_rows() * self.m_stride()
    }
    /// Segment s of panel p: (item, tile row, first tile column), or None past the last tile.
    #[inline(always)]
    pub(super) fn segment<const SEG: usize>(
        &self,
        p: usize,
        s: usize,
    ) -> Option<(usize, usize, usize)> {
        let t = p * NT + s * SEG;
        if t >= self.total {
            return None;
        }
        let (gr, tx0) = (t / self.tw, t % self.tw);
        Some((gr / self.th, gr % self.th, tx0))
    }
}

/// Segment widths with a kernel: whole tile rows of 1, 2, 4, 8 or 16 tiles (planes up to 32
/// wide; wider ones stay on the direct path).
fn seg_of(tw: usize) -> Option<usize> {
    matches!(tw, 1 | 2 | 4 | 8 | 16).then_some(tw)
}

/// y = conv(x, w): 3x3, stride 1, pad 1 (`suits`).
pub(crate) fn forward(g: &Geom, x: &[f32], w: &[f32], y: &mut [f32]) {
    let u = transformed(Pass::Forward, w, g, || {
        pack_weights(g.co, g.ci, |o, c| {
            w[(o * g.ci + c) * 9..][..9].try_into().unwrap()
        })
    });
    run(g, x, &u, y);
}

/// Which filters a cached transform holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Forward,
    InputGrad,
}

/// A transformed filter bank and the filters it was made from.
struct Transformed {
    pass: Pass,
    co: usize,
    ci: usize,
    filters: Vec<f32>,
    u: Arc<Vec<f32>>,
}

/// Recently transformed filters, newest first. The scan runs every conv over many chunks with
/// the same weights, where transforming a 512 x 512 bank each call would cost a quarter of the
/// products at 32 items. A hit needs the filters equal element for element (a copy is kept), so
/// weights changed in place (fine-tuning) are never served stale.
static CACHE: Mutex<Vec<Transformed>> = Mutex::new(Vec::new());
/// Bytes of transforms and filter copies the cache may hold.
const CACHE_BYTES: usize = 256 << 20;

fn transformed(pass: Pass, w: &[f32], g: &Geom, make: impl FnOnce() -> Vec<f32>) -> Arc<Vec<f32>> {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let hit = cache
        .iter()
        .position(|e| e.pass == pass && e.co == g.co && e.ci == g.ci && e.filters == w);
    if let Some(i) = hit {
        let e = cache.remove(i);
        let u = e.u.clone();
        cache.insert(0, e);
        return u;
    }
    let u = Arc::new(make());
    cache.insert(
        0,
        Transformed {
            pass,
            co: g.co,
            ci: g.ci,
            filters: w.to_vec(),
            u: u.clone(),
        },
    );
    let mut bytes = 0;
    cache.retain(|e| {
        bytes += 4 * (e.filters.len() + e.u.len());
        bytes <= CACHE_BYTES
    });
    u
}

/// Filter (input channel ci, output channel co) of the input gradient's conv: w[co][ci] flipped.
fn flipped(g: &Geom, w: &[f32], ci: usize, co: usize) -> [f32; 9] {
    let f = &w[(co * g.ci + ci) * 9..][..9];
    std::array::from_fn(|t| f[8 - t])
}

/// dx = conv(dy, flip(w)^T), padding 1 (`suits_input_grad`).
pub(crate) fn input_grad(g: &Geom, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let t = transposed(g);
    let u = transformed(Pass::InputGrad, w, g, || {
        pack_weights(t.co, t.ci, |ci, co| flipped(g, w, ci, co))
    });
    run(&t, dy, &u, dx);
}

/// One-hot input gradient. The full gradient's products add exact zeros around those of an
/// item's one channel (V of a zero plane is zero, and fma(u, 0, acc) = acc), so running the same
/// transforms and kernel with that channel alone (K = 1) gives bitwise the same result.
pub(crate) fn input_grad_onehot(g: &Geom, oh: OneHot, w: &[f32], dx: &mut [f32]) {
    let OneHot {
        seed,
        first_channel,
        group,
    } = oh;
    let (plane, item) = (g.hi * g.wi, g.ci * g.hi * g.wi);
    let groups = g.n.div_ceil(group);
    let mut parts: Vec<&mut [f32]> = dx[..g.n * item].chunks_mut(group * item).collect();
    parts.par_iter_mut().enumerate().for_each(|(gi, part)| {
        let c = first_channel + gi;
        let items = group.min(g.n - gi * group);
        let one = Geom {
            n: items,
            ..transposed(g)
        };
        let one = Geom { ci: 1, ..one };
        let u = pack_weights(one.co, 1, |ci, _| flipped(g, w, ci, c));
        let x = &seed[gi * group * plane..][..items * plane];
        run_on(&Tiles::new(&one), x, &u, part, false);
    });
    debug_assert_eq!(parts.len(), groups);
}

thread_local! {
    /// Per-thread V and M of the unit in flight (grown, never shrunk or cleared).
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// What every unit of one call shares.
pub(super) struct Call<'a> {
    pub(super) t: &'a Tiles,
    micro: WMicroFn,
    pub(super) x: &'a [f32],
    u: &'a [f32],
    pub(super) out: OutPtr,
}

/// One unit: panels p0..p1 of the call, with the task's V and M.
struct Unit<'a> {
    p0: usize,
    p1: usize,
    v: &'a mut [f32],
    m: &'a mut [f32],
}

/// A unit's body for one segment width and instruction set (`unit_kernel`).
type UnitFn = unsafe fn(&Call, Unit);

fn run(g: &Geom, x: &[f32], u: &[f32], y: &mut [f32]) {
    run_on(&Tiles::new(g), x, u, y, true);
}

/// Every unit of the call, in parallel or (inside an outer parallel loop) on this thread.
fn run_on(t: &Tiles, x: &[f32], u: &[f32], y: &mut [f32], parallel: bool) {
    let items = t.total / (t.th * t.tw);
    assert!(x.len() >= items * t.ci * t.h * t.w && y.len() >= items * t.co * t.h * t.w);
    let seg = seg_of(t.tw).expect("winograd: suits() admits only kernel segment widths");
    let unit = unit_kernel(seg);
    let call = Call {
        t,
        micro: micro_kernel(),
        x,
        u,
        out: OutPtr(y.as_mut_ptr()),
    };
    let units = t.panels().div_ceil(t.per_unit);
    let one = |ui: usize| {
        let p0 = ui * t.per_unit;
        let p1 = (p0 + t.per_unit).min(t.panels());
        SCRATCH.with_borrow_mut(|(v, m)| {
            if v.len() < t.v_len() {
                v.resize(t.v_len(), 0.0);
            }
            if m.len() < t.m_len() {
                m.resize(t.m_len(), 0.0);
            }
            // SAFETY: panels p0..p1 hold tiles whose output pixels no other unit writes, inside
            // y (asserted); v and m are sized for a unit; the kernels' CPU features were detected.
            unsafe { unit(&call, Unit { p0, p1, v, m }) };
        });
    };
    if parallel {
        (0..units).into_par_iter().for_each(one);
    } else {
        (0..units).for_each(one);
    }
}

/// The unit body for a segment width, compiled for the detected instruction set.
fn unit_kernel(seg: usize) -> UnitFn {
    macro_rules! pick {
        ($f:ident) => {
            match seg {
                1 => $f::<1> as UnitFn,
                2 => $f::<2> as UnitFn,
                4 => $f::<4> as UnitFn,
                8 => $f::<8> as UnitFn,
                _ => $f::<16> as UnitFn,
            }
        };
    }
    by_isa!(pick!(unit_avx512), pick!(unit_avx2), pick!(unit_plain))
}

/// AVX-512: the intrinsic transforms (`winograd_avx512`) for segments of 2+ tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn unit_avx512<const SEG: usize>(c: &Call, u: Unit) {
    use super::winograd_avx512 as x512;
    if SEG == 1 {
        // SAFETY: forwarded contract.
        return unsafe { unit_body::<SEG>(c, u) };
    }
    let Unit { p0, p1, v, m } = u;
    // SAFETY: forwarded contract; AVX-512F was detected (this kernel's dispatch).
    unsafe {
        x512::input_transform::<SEG>(c, p0, p1, v);
        products(c.t, c.micro, c.u, p1 - p0, v, m);
        x512::output_transform::<SEG>(c, m, p0, p1);
    }
}

/// The portable transforms compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn unit_avx2<const SEG: usize>(c: &Call, u: Unit) {
    // SAFETY: forwarded contract.
    unsafe { unit_body::<SEG>(c, u) }
}

unsafe fn unit_plain<const SEG: usize>(c: &Call, u: Unit) {
    // SAFETY: forwarded contract.
    unsafe { unit_body::<SEG>(c, u) }
}

/// Input transform, products, output transform of panels p0..p1.
///
/// # Safety
/// `c.out` points to the [n, co, h, w] output; the pixels of these panels' tiles are the
/// caller's alone; `c.micro` runs on this CPU.
#[inline(always)]
unsafe fn unit_body<const SEG: usize>(c: &Call, u: Unit) {
    let Unit { p0, p1, v, m } = u;
    input_transform::<SEG>(c, p0, p1, v);
    products(c.t, c.micro, c.u, p1 - p0, v, m);
    // SAFETY: forwarded contract.
    unsafe { output_transform::<SEG>(c, m, p0, p1) };
}

/// The panel's pixels of input row `2 ty - 1 + a` (zero outside the plane) for each segment,
/// side by side: segment s (a whole tile row, `seg_of`) holds its 2 SEG columns at
/// buf[2 s SEG ..].
#[inline(always)]
fn gather_rows<const SEG: usize>(
    t: &Tiles,
    x: &[f32],
    c: usize,
    p: usize,
    bufs: &mut [[f32; 2 * NT]; 4],
) {
    let plane = t.h * t.w;
    for s in 0..NT / SEG {
        let seg = t.segment::<SEG>(p, s);
        for (a, buf) in bufs.iter_mut().enumerate() {
            let dst = &mut buf[2 * s * SEG..2 * (s + 1) * SEG];
            let row = seg.and_then(|(n, ty, _)| {
                let r = (2 * ty + a).checked_sub(1).filter(|&r| r < t.h)?;
                Some(&x[(n * t.ci + c) * plane + r * t.w..][..2 * SEG])
            });
            match row {
                Some(src) => dst.copy_from_slice(src),
                None => dst.fill(0.0),
            }
        }
    }
}

/// V[xi][panel][ci][lane] = (B^T d B)[xi] for panels p0..p1 (V's panels start at p0): the
/// column transform B^T d on the panel's rows first (contiguous pixels), then d B per tile,
/// d[b] = x[2 tx - 1 + b] (zero left of column 0 and right of the last: whole rows):
/// (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
#[inline(always)]
fn input_transform<const SEG: usize>(c: &Call, p0: usize, p1: usize, v: &mut [f32]) {
    let (t, x) = (c.t, c.x);
    let np = p1 - p0;
    let xi_stride = t.v_stride(np);
    let mut rows = [[0.0f32; 2 * NT]; 4];
    // Channel-major: each plane's rows are read in order.
    for c in 0..t.ci {
        for p in p0..p1 {
            gather_rows::<SEG>(t, x, c, p, &mut rows);
            let base = ((p - p0) * t.ci + c) * NT;
            let [r0, r1, r2, r3] = &rows;
            let mut cols = [[0.0f32; 2 * NT]; 4];
            for j in 0..2 * NT {
                cols[0][j] = r0[j] - r2[j];
                cols[1][j] = r1[j] + r2[j];
                cols[2][j] = r2[j] - r1[j];
                cols[3][j] = r1[j] - r3[j];
            }
            for (i, cb) in cols.iter().enumerate() {
                let mut xe = [0.0f32; NT];
                let mut xo = [0.0f32; NT];
                for l in 0..NT {
                    xe[l] = cb[2 * l];
                    xo[l] = cb[2 * l + 1];
                }
                // Left neighbour of each tile (the previous odd column), right (the next even).
                let mut out = [[0.0f32; NT]; 4];
                for l in 0..NT {
                    let left = if l % SEG == 0 {
                        0.0
                    } else {
                        xo[(l + NT - 1) % NT]
                    };
                    let right = if (l + 1) % SEG == 0 {
                        0.0
                    } else {
                        xe[(l + 1) % NT]
                    };
                    out[0][l] = left - xo[l];
                    out[1][l] = xe[l] + xo[l];
                    out[2][l] = xo[l] - xe[l];
                    out[3][l] = xe[l] - right;
                }
                for (b, o) in out.iter().enumerate() {
                    v[(i * 4 + b) * xi_stride + base..][..NT].copy_from_slice(o);
                }
            }
        }
    }
}

/// (K, U panel [K][MR], V panel [K][NT], M row 0, M row stride).
type WMicroFn = unsafe fn(usize, *const f32, *const f32, *mut f32, usize);

/// M[co][xi][t] = sum_ci U[xi][co][ci] V[xi][ci][t] for the unit's `np` panels.
#[inline(always)]
fn products(t: &Tiles, micro: WMicroFn, u: &[f32], np: usize, v: &[f32], m: &mut [f32]) {
    let (ci, cpanels, rs) = (t.ci, t.co.div_ceil(MR), t.m_stride());
    let tiles = t.per_unit * NT;
    assert!(
        u.len() >= XI * cpanels * ci * MR && v.len() >= XI * t.v_stride(np) && m.len() >= t.m_len()
    );
    for xi in 0..XI {
        for q in 0..cpanels {
            let a = &u[(q * XI + xi) * ci * MR..][..ci * MR];
            for p in 0..np {
                let b = &v[xi * t.v_stride(np) + p * ci * NT..][..ci * NT];
                let o = q * MR * rs + xi * tiles + p * NT;
                // SAFETY: a holds ci x MR, b ci x NT floats; the MR rows o + r * rs .. + NT lie
                // inside m (m_rows x m_stride, asserted); the kernel's CPU features were
                // detected.
                unsafe { micro(ci, a.as_ptr(), b.as_ptr(), m.as_mut_ptr().add(o), rs) };
            }
        }
    }
}

/// A^T M A for panels p0..p1: y[n][co][2 ty + i][2 tx + j].
///
/// # Safety
/// `c.out` points to the [n, co, h, w] output, and these panels' tiles are this caller's alone.
#[inline(always)]
unsafe fn output_transform<const SEG: usize>(c: &Call, m: &[f32], p0: usize, p1: usize) {
    let (t, out) = (c.t, c.out);
    let (plane, rs, tiles) = (t.h * t.w, t.m_stride(), t.per_unit * NT);
    for co in 0..t.co {
        for p in p0..p1 {
            let mc = &m[co * rs + (p - p0) * NT..];
            let at = |xi: usize| -> &[f32; NT] { (&mc[xi * tiles..][..NT]).try_into().unwrap() };
            // r[i][b] = (A^T M)[i][b], then y[i][j] = (r A)[i][j].
            let mut r = [[[0.0f32; NT]; 4]; 2];
            for b in 0..4 {
                let (m0, m1, m2, m3) = (at(b), at(4 + b), at(8 + b), at(12 + b));
                for l in 0..NT {
                    r[0][b][l] = m0[l] + m1[l] + m2[l];
                    r[1][b][l] = m1[l] - m2[l] - m3[l];
                }
            }
            let mut y = [[[0.0f32; NT]; 2]; 2];
            for i in 0..2 {
                for l in 0..NT {
                    y[i][0][l] = r[i][0][l] + r[i][1][l] + r[i][2][l];
                    y[i][1][l] = r[i][1][l] - r[i][2][l] - r[i][3][l];
                }
            }
            for s in 0..NT / SEG {
                let Some((n, ty, tx0)) = t.segment::<SEG>(p, s) else {
                    break;
                };
                for (i, yi) in y.iter().enumerate() {
                    let mut pair = [0.0f32; 32];
                    for k in 0..SEG {
                        pair[2 * k] = yi[0][s * SEG + k];
                        pair[2 * k + 1] = yi[1][s * SEG + k];
                    }
                    let o = (n * t.co + co) * plane + (2 * ty + i) * t.w + 2 * tx0;
                    // SAFETY: 2 SEG pixels of row 2 ty + i of plane (n, co), inside y and this
                    // unit's (tile columns tx0 .. tx0 + SEG exist: tw is a multiple of SEG).
                    unsafe { std::ptr::copy_nonoverlapping(pair.as_ptr(), out.0.add(o), 2 * SEG) };
                }
            }
        }
    }
}

/// R rows (from row r0 of the MR-wide panel) x NT lanes, K ascending, stored to M.
#[inline(always)]
unsafe fn micro_rows<const R: usize, const FMA: bool>(
    kb: usize,
    a: *const f32,
    r0: usize,
    b: *const f32,
    m: *mut f32,
    rs: usize,
) {
    let mut acc = [[0.0f32; NT]; R];
    for p in 0..kb {
        // SAFETY: the caller's panels hold kb x MR and kb x NT floats.
        let (ap, bp) = unsafe {
            (
                &*(a.add(p * MR + r0) as *const [f32; R]),
                &*(b.add(p * NT) as *const [f32; NT]),
            )
        };
        rank1::<R, NT, FMA>(&mut acc, ap, bp);
    }
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: the caller's M rows r0 + i hold NT floats at m + (r0 + i) * rs.
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), m.add((r0 + i) * rs), NT) };
    }
}

/// MR rows as 6 + 6 + 4-row passes (12 AVX2 accumulators at most).
#[inline(always)]
unsafe fn micro_passes<const FMA: bool>(
    kb: usize,
    a: *const f32,
    b: *const f32,
    m: *mut f32,
    rs: usize,
) {
    // SAFETY: forwarded contract.
    unsafe {
        micro_rows::<6, FMA>(kb, a, 0, b, m, rs);
        micro_rows::<6, FMA>(kb, a, 6, b, m, rs);
        micro_rows::<4, FMA>(kb, a, 12, b, m, rs);
    }
}

/// Portable: separate multiply and add.
unsafe fn wmicro_plain(kb: usize, a: *const f32, b: *const f32, m: *mut f32, rs: usize) {
    // SAFETY: forwarded contract.
    unsafe { micro_passes::<false>(kb, a, b, m, rs) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wmicro_avx2(kb: usize, a: *const f32, b: *const f32, m: *mut f32, rs: usize) {
    // SAFETY: forwarded contract.
    unsafe { micro_passes::<true>(kb, a, b, m, rs) }
}

/// The whole MR x NT tile in 16 zmm accumulators (the same fused multiply-add per term, in the
/// same order, as the AVX2 kernel).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn wmicro_avx512(kb: usize, a: *const f32, b: *const f32, m: *mut f32, rs: usize) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); MR];
    for p in 0..kb {
        // SAFETY: the caller's panels hold kb x MR and kb x NT floats.
        let bv = unsafe { _mm512_loadu_ps(b.add(p * NT)) };
        for (i, c) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let av = _mm512_set1_ps(unsafe { *a.add(p * MR + i) });
            *c = _mm512_fmadd_ps(av, bv, *c);
        }
    }
    for (i, v) in acc.into_iter().enumerate() {
        // SAFETY: M row i holds NT floats at m + i * rs.
        unsafe { _mm512_storeu_ps(m.add(i * rs), v) };
    }
}

fn micro_kernel() -> WMicroFn {
    by_isa!(
        wmicro_avx512 as WMicroFn,
        wmicro_avx2 as WMicroFn,
        wmicro_plain as WMicroFn,
    )
}
