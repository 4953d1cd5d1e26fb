//! Convolutions (square kernel, zero padding, no bias, NCHW).
//!
//! First version: direct loops, parallel over output planes. Summation orders are fixed:
//! forward sums (ci, kh, kw) ascending; the input gradient sums (co, kh, kw) ascending per input
//! pixel, and the one-hot input gradient runs the very same per-plane routine restricted to one
//! filter, so it is bitwise equal to the full input gradient of the one-hot-expanded cotangent
//! (the skipped terms are exact zeros); the weight gradient sums (n, oh, ow) ascending.
use rayon::prelude::*;

use super::{host, host_mut};
use crate::backend::ConvParams;
use crate::error::{Error, Result};
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
    pub fn new(op: &'static str, p: &ConvParams) -> Result<Self> {
        let vals = [
            p.n, p.c_in, p.h_in, p.w_in, p.c_out, p.h_out, p.w_out, p.kernel, p.stride, p.pad,
        ];
        if vals.iter().any(|&v| v < 0) || p.kernel < 1 || p.stride < 1 {
            return Err(Error::shape(
                op,
                format!("invalid conv params {p:?} (negative size, kernel < 1 or stride < 1)"),
            ));
        }
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
        let out = |i: usize| (i + 2 * g.p).checked_sub(g.k).map(|v| v / g.s + 1);
        if out(g.hi) != Some(g.ho) || out(g.wi) != Some(g.wo) {
            return Err(Error::shape(
                op,
                format!(
                    "conv params {p:?}: output {}x{} does not match input {}x{} with kernel {}, stride {}, pad {}",
                    g.ho, g.wo, g.hi, g.wi, g.k, g.s, g.p
                ),
            ));
        }
        Ok(g)
    }
    pub fn x_shape(&self) -> [usize; 4] {
        [self.n, self.ci, self.hi, self.wi]
    }
    pub fn y_shape(&self) -> [usize; 4] {
        [self.n, self.co, self.ho, self.wo]
    }
    pub fn w_shape(&self) -> [usize; 4] {
        [self.co, self.ci, self.k, self.k]
    }
}

pub(crate) fn check(op: &'static str, what: &str, t: &Tensor, want: [usize; 4]) -> Result<()> {
    if t.shape != want {
        return Err(Error::shape(
            op,
            format!(
                "{what} must be {want:?} for these conv params, got {:?}",
                t.shape
            ),
        ));
    }
    Ok(())
}

pub fn forward(p: &ConvParams, x: &Tensor, w: &Tensor, y: &mut Tensor) -> Result<()> {
    const OP: &str = "conv2d_forward";
    let g = Geom::new(OP, p)?;
    check(OP, "x", x, g.x_shape())?;
    check(OP, "w", w, g.w_shape())?;
    check(OP, "y", y, g.y_shape())?;
    let xs = host(OP, "x", x)?;
    let ws = host(OP, "w", w)?;
    let ys = host_mut(OP, "y", y)?;
    let (hwi, hwo) = (g.hi * g.wi, g.ho * g.wo);
    if ys.is_empty() {
        return Ok(());
    }
    ys.par_chunks_mut(hwo).enumerate().for_each(|(plane, yp)| {
        let (n, co) = (plane / g.co, plane % g.co);
        yp.fill(0.0);
        for ci in 0..g.ci {
            let xp = &xs[(n * g.ci + ci) * hwi..(n * g.ci + ci + 1) * hwi];
            for kh in 0..g.k {
                for kw in 0..g.k {
                    let wv = ws[((co * g.ci + ci) * g.k + kh) * g.k + kw];
                    for oh in 0..g.ho {
                        let ih = (oh * g.s + kh) as isize - g.p as isize;
                        if ih < 0 || ih >= g.hi as isize {
                            continue;
                        }
                        for ow in 0..g.wo {
                            let iw = (ow * g.s + kw) as isize - g.p as isize;
                            if iw >= 0 && iw < g.wi as isize {
                                yp[oh * g.wo + ow] += wv * xp[ih as usize * g.wi + iw as usize];
                            }
                        }
                    }
                }
            }
        }
    });
    Ok(())
}

/// One input-gradient plane dx[ci] from cotangent planes `dy_planes(co)` for co in `cos`,
/// summing (co, kh, kw) ascending.
fn igrad_plane<'a>(
    g: &Geom,
    dxp: &mut [f32],
    ci: usize,
    ws: &[f32],
    cos: std::ops::Range<usize>,
    dy_plane: impl Fn(usize) -> &'a [f32],
) {
    dxp.fill(0.0);
    for co in cos {
        let dyp = dy_plane(co);
        for kh in 0..g.k {
            for kw in 0..g.k {
                let wv = ws[((co * g.ci + ci) * g.k + kh) * g.k + kw];
                for oh in 0..g.ho {
                    let ih = (oh * g.s + kh) as isize - g.p as isize;
                    if ih < 0 || ih >= g.hi as isize {
                        continue;
                    }
                    for ow in 0..g.wo {
                        let iw = (ow * g.s + kw) as isize - g.p as isize;
                        if iw >= 0 && iw < g.wi as isize {
                            dxp[ih as usize * g.wi + iw as usize] += wv * dyp[oh * g.wo + ow];
                        }
                    }
                }
            }
        }
    }
}

pub fn input_grad(p: &ConvParams, dy: &Tensor, w: &Tensor, dx: &mut Tensor) -> Result<()> {
    const OP: &str = "conv2d_input_grad";
    let g = Geom::new(OP, p)?;
    check(OP, "dy", dy, g.y_shape())?;
    check(OP, "w", w, g.w_shape())?;
    check(OP, "dx", dx, g.x_shape())?;
    let gs = host(OP, "dy", dy)?;
    let ws = host(OP, "w", w)?;
    let o = host_mut(OP, "dx", dx)?;
    let (hwi, hwo) = (g.hi * g.wi, g.ho * g.wo);
    if o.is_empty() {
        return Ok(());
    }
    o.par_chunks_mut(hwi).enumerate().for_each(|(plane, dxp)| {
        let (n, ci) = (plane / g.ci, plane % g.ci);
        igrad_plane(&g, dxp, ci, ws, 0..g.co, |co| {
            &gs[(n * g.co + co) * hwo..(n * g.co + co + 1) * hwo]
        });
    });
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
    check(OP, "seed", seed, [g.n, 1, g.ho, g.wo])?;
    check(OP, "w", w, g.w_shape())?;
    check(OP, "dx", dx, g.x_shape())?;
    if group == 0 {
        return Err(Error::shape(OP, "group must be at least 1"));
    }
    if g.n > 0 && first_channel + (g.n - 1) / group >= g.co {
        return Err(Error::shape(
            OP,
            format!(
                "items 0..{} with group {group} need filters {first_channel}..={} but w has {}",
                g.n,
                first_channel + (g.n - 1) / group,
                g.co
            ),
        ));
    }
    let ss = host(OP, "seed", seed)?;
    let ws = host(OP, "w", w)?;
    let o = host_mut(OP, "dx", dx)?;
    let (hwi, hwo) = (g.hi * g.wi, g.ho * g.wo);
    if o.is_empty() {
        return Ok(());
    }
    o.par_chunks_mut(hwi).enumerate().for_each(|(plane, dxp)| {
        let (n, ci) = (plane / g.ci, plane % g.ci);
        let c = first_channel + n / group;
        igrad_plane(&g, dxp, ci, ws, c..c + 1, |_| &ss[n * hwo..(n + 1) * hwo]);
    });
    Ok(())
}

pub fn weight_grad(p: &ConvParams, x: &Tensor, dy: &Tensor, dw: &mut Tensor) -> Result<()> {
    const OP: &str = "conv2d_weight_grad";
    let g = Geom::new(OP, p)?;
    check(OP, "x", x, g.x_shape())?;
    check(OP, "dy", dy, g.y_shape())?;
    check(OP, "dw", dw, g.w_shape())?;
    let xs = host(OP, "x", x)?;
    let gs = host(OP, "dy", dy)?;
    let o = host_mut(OP, "dw", dw)?;
    let (hwi, hwo, kk) = (g.hi * g.wi, g.ho * g.wo, g.k * g.k);
    if o.is_empty() {
        return Ok(());
    }
    o.par_chunks_mut(kk).enumerate().for_each(|(pair, dwp)| {
        let (co, ci) = (pair / g.ci, pair % g.ci);
        for kh in 0..g.k {
            for kw in 0..g.k {
                let mut s = 0.0f32;
                for n in 0..g.n {
                    let xp = &xs[(n * g.ci + ci) * hwi..(n * g.ci + ci + 1) * hwi];
                    let dyp = &gs[(n * g.co + co) * hwo..(n * g.co + co + 1) * hwo];
                    for oh in 0..g.ho {
                        let ih = (oh * g.s + kh) as isize - g.p as isize;
                        if ih < 0 || ih >= g.hi as isize {
                            continue;
                        }
                        for ow in 0..g.wo {
                            let iw = (ow * g.s + kw) as isize - g.p as isize;
                            if iw >= 0 && iw < g.wi as isize {
                                s += dyp[oh * g.wo + ow] * xp[ih as usize * g.wi + iw as usize];
                            }
                        }
                    }
                }
                dwp[kh * g.k + kw] = s;
            }
        }
    });
    Ok(())
}
