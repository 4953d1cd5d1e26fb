//! Direct input gradient of a strided convolution, by output phases.
//!
//! Design: with stride s, input pixel ih receives dy[oh] only through the taps kh with
//! kh = (ih + p) mod s + s * t, at oh = (ih + p) div s - t. So the input pixels of one phase
//! (a, b) = ((ih + p) mod s, (iw + p) mod s) form a stride-1 convolution of dy (zero-padded by
//! `P` on every side) with the taps (a + s * th, b + s * tw) of the flipped, transposed filters:
//! dx[ci, s*u + a - p, s*v + b - p] = sum over (co, th, tw) of w[co, ci, a + s*th, b + s*tw] *
//! dy[co, u - th, v - tw]. Each phase runs on the direct kernels of `direct` over the one padded
//! copy of the item's dy (its output pixel (u, v) at grid offset u * Wq + v, its term
//! (co, th, tw) at co * plane + (P - th) * Wq + P - tw), into a phase-major buffer that is then
//! interleaved into dx. No structural zeros are multiplied (the GEMM form of a strided input
//! gradient multiplies s*s - 1 zeros per useful term, or scatters through a col2im buffer).
//!
//! Every dx element sums its terms in ascending (co, th, tw) order from zero; the one-hot form
//! runs the terms of its one channel in the same order, so it is bitwise equal to the full
//! gradient of a cotangent that is zero elsewhere. Tasks own whole items: results do not depend
//! on the thread count.
use rayon::prelude::*;

use super::conv::{Geom, OneHot};
use super::direct::{fits, kernel, pack_panels, pad_item, run_item, transposed, DGeom, DMicroFn};

/// One output phase (a, b): its dx pixels are (s * (u0 + u) + a - p, s * (v0 + v) + b - p) for
/// u < nu, v < nv; taps (a + s * th, b + s * tw) for th < ta, tw < tb.
#[derive(Clone, Copy, Debug)]
struct Phase {
    a: usize,
    b: usize,
    u0: usize,
    v0: usize,
    nu: usize,
    nv: usize,
    ta: usize,
    tb: usize,
}

/// First and count of the phase positions u with 0 <= s * u + a - p < n; taps a + s * t < k.
fn axis(n: usize, k: usize, s: usize, p: usize, a: usize) -> (usize, usize, usize) {
    let u0 = p.saturating_sub(a).div_ceil(s);
    let count = if n + p > a {
        ((n + p - 1 - a) / s + 1).saturating_sub(u0)
    } else {
        0
    };
    let taps = if a < k { (k - a).div_ceil(s) } else { 0 };
    (u0, count, taps)
}

struct Plan {
    phases: Vec<Phase>,
    /// Padding of the dy copy (every side).
    pad: usize,
    /// The padded dy copy's geometry (`ci` = channels of dy).
    dpad: DGeom,
    /// Per phase: grid offsets of its terms.
    koffs: Vec<Vec<u32>>,
}

fn plan(g: &Geom, dy_channels: usize) -> Plan {
    let mut phases = Vec::new();
    for a in 0..g.s {
        let (u0, nu, ta) = axis(g.hi, g.k, g.s, g.p, a);
        for b in 0..g.s {
            let (v0, nv, tb) = axis(g.wi, g.k, g.s, g.p, b);
            if nu > 0 && nv > 0 {
                phases.push(Phase {
                    a,
                    b,
                    u0,
                    v0,
                    nu,
                    nv,
                    ta,
                    tb,
                });
            }
        }
    }
    // Leading pad: the largest tap index; trailing: how far the last position passes dy's end.
    let mut pad = 0;
    for ph in &phases {
        pad = pad
            .max(ph.ta.saturating_sub(1))
            .max(ph.tb.saturating_sub(1));
        pad = pad.max((ph.u0 + ph.nu).saturating_sub(g.ho));
        pad = pad.max((ph.v0 + ph.nv).saturating_sub(g.wo));
    }
    // dy's grid padded by `pad`, as the stride-1 transposed convolution reads it, with output
    // planes the size of dy's (each phase's run narrows them, `Plan::geom`).
    let dpad = DGeom {
        geom: Geom {
            ci: dy_channels,
            ho: g.ho,
            wo: g.wo,
            p: pad,
            ..transposed(g)
        },
        origin: 0,
        px: false,
    };
    let mut plan = Plan {
        phases,
        pad,
        dpad,
        koffs: Vec::new(),
    };
    plan.koffs = plan
        .phases
        .iter()
        .map(|ph| plan.offsets(ph, dy_channels))
        .collect();
    plan
}

impl Plan {
    /// The run geometry of phase `ph`: `g.ci` output planes of nu x nv over the padded dy grid.
    fn geom(&self, ph: &Phase) -> DGeom {
        let wq = self.dpad.wp();
        DGeom {
            geom: Geom {
                ho: ph.nu,
                wo: ph.nv,
                ..self.dpad.geom
            },
            origin: ph.u0 * wq + ph.v0,
            ..self.dpad
        }
        .with_layout()
    }
    /// Grid offsets of a phase's terms (c, th, tw) for `channels` dy channels.
    fn offsets(&self, ph: &Phase, channels: usize) -> Vec<u32> {
        let (plane, wq, pad) = (self.dpad.plane(), self.dpad.wp(), self.pad);
        let mut v = Vec::with_capacity(channels * ph.ta * ph.tb);
        for c in 0..channels {
            for th in 0..ph.ta {
                for tw in 0..ph.tb {
                    v.push((c * plane + (pad - th) * wq + pad - tw) as u32);
                }
            }
        }
        v
    }
    /// Floats of one item's phase-major output.
    fn phase_len(&self, g: &Geom) -> usize {
        self.phases.iter().map(|ph| g.ci * ph.nu * ph.nv).sum()
    }
}

/// Writes one item's phase-major outputs into its dx planes.
fn interleave(g: &Geom, plan: &Plan, tmp: &[f32], dx: &mut [f32]) {
    let ph = &plan.phases;
    let pairs = g.s == 2
        && g.wi.is_multiple_of(2)
        && ph.len().is_multiple_of(2)
        && ph.chunks(2).all(|q| {
            q[0].a == q[1].a
                && (q[0].b, q[1].b) == (0, 1)
                && q[0].nu == q[1].nu
                && q[0].nv == g.wi / 2
                && q[1].nv == g.wi / 2
        });
    if pairs {
        // Stride 2, even width: dx column 2m comes from column m of phase b = p % 2 and column
        // 2m + 1 from column m of the other (both phases hold wi / 2 columns): one zip per row.
        let (be, cols) = (g.p % 2, g.wi / 2);
        let mut at = 0;
        for q in ph.chunks(2) {
            let rows = q[0].nu;
            let (even, odd) = (
                at + be * g.ci * rows * cols,
                at + (1 - be) * g.ci * rows * cols,
            );
            for c in 0..g.ci {
                for u in 0..rows {
                    let ih = 2 * (q[0].u0 + u) + q[0].a - g.p;
                    let r = (c * rows + u) * cols;
                    let (se, so) = (&tmp[even + r..][..cols], &tmp[odd + r..][..cols]);
                    let dst = &mut dx[(c * g.hi + ih) * g.wi..][..g.wi];
                    for ((d, &e), &o) in dst.chunks_exact_mut(2).zip(se).zip(so) {
                        d[0] = e;
                        d[1] = o;
                    }
                }
            }
            at += 2 * g.ci * rows * cols;
        }
        return;
    }
    let mut at = 0;
    for ph in &plan.phases {
        let (rows, cols) = (ph.nu, ph.nv);
        for c in 0..g.ci {
            for u in 0..rows {
                let ih = g.s * (ph.u0 + u) + ph.a - g.p;
                let iw0 = g.s * ph.v0 + ph.b - g.p;
                let src = &tmp[at + (c * rows + u) * cols..][..cols];
                let dst = &mut dx[(c * g.hi + ih) * g.wi + iw0..];
                for (d, &v) in dst.iter_mut().step_by(g.s).zip(src) {
                    *d = v;
                }
            }
        }
        at += g.ci * rows * cols;
    }
}

/// dx for every item of the cotangent batch `dy` (the plan's dy channels): `panels_of(i)` are
/// item i's panels, one set per phase (in plan order), with the plan's offsets.
fn run<'a>(
    g: &Geom,
    plan: &Plan,
    dy: &[f32],
    panels_of: impl Fn(usize) -> &'a [Vec<f32>] + Sync,
    dx: &mut [f32],
) {
    let micro: DMicroFn = kernel().0;
    let geoms: Vec<DGeom> = plan.phases.iter().map(|ph| plan.geom(ph)).collect();
    let item = g.ci * g.hi * g.wi;
    let tmp_len = plan.phase_len(g);
    dx.par_chunks_mut(item).enumerate().for_each_init(
        || (Vec::new(), vec![0f32; tmp_len]),
        |(buf, tmp), (i, dxi)| {
            pad_item(&plan.dpad, plan.dpad.item(dy, i), buf, None);
            let panels = panels_of(i);
            let mut at = 0;
            for (q, d) in geoms.iter().enumerate() {
                let out = &mut tmp[at..at + g.ci * d.ho * d.wo];
                if plan.koffs[q].is_empty() {
                    out.fill(0.0); // no tap reaches this phase (stride above the filter size)
                } else {
                    run_item(d, micro, &panels[q], &plan.koffs[q], buf, out);
                }
                at += out.len();
            }
            interleave(g, plan, tmp, dxi);
        },
    );
}

/// Filter term of phase `ph` for dx channel ci: dy channel co, tap (th, tw).
#[inline]
fn tap(g: &Geom, w: &[f32], ph: &Phase, co: usize, ci: usize, th: usize, tw: usize) -> f32 {
    let (kh, kw) = (ph.a + g.s * th, ph.b + g.s * tw);
    w[((co * g.ci + ci) * g.k + kh) * g.k + kw]
}

/// Which strided shapes take this path: every phase with taps fits the direct kernels (the
/// direct forward's rule).
pub(crate) fn suits(g: &Geom) -> bool {
    if g.s < 2 || g.n == 0 || g.hi == 0 || g.wi == 0 || g.ho == 0 || g.wo == 0 {
        return false;
    }
    let plan = plan(g, g.co);
    plan.phases
        .iter()
        .filter(|ph| ph.ta * ph.tb > 0)
        .all(|ph| fits(&plan.geom(ph)))
}

/// Every phase's panels for the dy channels `cos` (all of them, or a one-hot gradient's one):
/// terms (co, th, tw) in ascending order.
fn phase_panels(g: &Geom, w: &[f32], plan: &Plan, cos: std::ops::Range<usize>) -> Vec<Vec<f32>> {
    plan.phases
        .iter()
        .map(|ph| {
            let t = ph.ta * ph.tb;
            pack_panels(plan.geom(ph).panel_width(), g.ci, cos.len() * t, |ci, p| {
                tap(g, w, ph, cos.start + p / t, ci, (p % t) / ph.tb, p % ph.tb)
            })
        })
        .collect()
}

/// Input gradient of a strided conv.
pub(crate) fn input_grad(g: &Geom, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let plan = plan(g, g.co);
    let panels = phase_panels(g, w, &plan, 0..g.co);
    run(g, &plan, dy, |_| &panels, dx);
}

/// One-hot input gradient: the terms are those of `input_grad` for item i's channel alone.
pub(crate) fn input_grad_onehot(g: &Geom, oh: OneHot, w: &[f32], dx: &mut [f32]) {
    let plan = plan(g, 1);
    let panels = oh.per_filter(g.n, |c| phase_panels(g, w, &plan, c..c + 1));
    run(g, &plan, oh.seed, |i| &panels[i / oh.group], dx);
}
