//! Elementwise ops: ReLU (+ backward with batch broadcast of the saved output), residual adds,
//! mask multiply, the FGSM-style sign step and the PyTorch SGD update. Large tensors are split into
//! fixed-size chunks processed in parallel; each element is independent, so results never depend
//! on the thread count.
use rayon::prelude::*;

use super::{broadcast_batch, host, host_mut, same_shape};
use crate::error::Result;
use crate::tensor::Tensor;

/// Elements per parallel chunk.
pub(crate) const CHUNK: usize = 1 << 14;

pub fn relu(x: &Tensor, y: &mut Tensor) -> Result<()> {
    const OP: &str = "relu";
    same_shape(OP, "x", x, "y", y)?;
    let xs = host(OP, "x", x)?;
    let ys = host_mut(OP, "y", y)?;
    ys.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK))
        .for_each(|(yc, xc)| {
            for (o, &v) in yc.iter_mut().zip(xc) {
                *o = if v > 0.0 { v } else { 0.0 };
            }
        });
    Ok(())
}

/// Applies `f(out, dy, saved)` over a gradient tensor whose saved tensor has a batch dividing its
/// own: gradient item i reads saved item i % B.
pub(crate) fn broadcast_zip(
    saved: &[f32],
    b: usize,
    dy: &[f32],
    dx: &mut [f32],
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) {
    let item = saved.len() / b.max(1);
    if item == 0 {
        return;
    }
    dx.par_chunks_mut(item)
        .zip(dy.par_chunks(item))
        .enumerate()
        .for_each(|(i, (o, g))| {
            let s = &saved[(i % b) * item..(i % b + 1) * item];
            f(o, g, s)
        });
}

pub fn relu_backward(y_saved: &Tensor, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
    const OP: &str = "relu_backward";
    same_shape(OP, "dy", dy, "dx", dx)?;
    let b = broadcast_batch(OP, "y_saved", y_saved, "dy", dy)?;
    let s = host(OP, "y_saved", y_saved)?;
    let g = host(OP, "dy", dy)?;
    let o = host_mut(OP, "dx", dx)?;
    broadcast_zip(s, b, g, o, |o, g, s| {
        for ((o, &g), &s) in o.iter_mut().zip(g).zip(s) {
            *o = if s > 0.0 { g } else { 0.0 };
        }
    });
    Ok(())
}

pub fn add(a: &Tensor, b: &Tensor, y: &mut Tensor) -> Result<()> {
    const OP: &str = "add";
    same_shape(OP, "a", a, "b", b)?;
    same_shape(OP, "a", a, "y", y)?;
    let av = host(OP, "a", a)?;
    let bv = host(OP, "b", b)?;
    let yv = host_mut(OP, "y", y)?;
    yv.par_chunks_mut(CHUNK)
        .zip(av.par_chunks(CHUNK))
        .zip(bv.par_chunks(CHUNK))
        .for_each(|((y, a), b)| {
            for ((o, &a), &b) in y.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
    Ok(())
}

pub fn add_assign(y: &mut Tensor, x: &Tensor) -> Result<()> {
    const OP: &str = "add_assign";
    same_shape(OP, "y", y, "x", x)?;
    let xv = host(OP, "x", x)?;
    let yv = host_mut(OP, "y", y)?;
    yv.par_chunks_mut(CHUNK)
        .zip(xv.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (o, &v) in y.iter_mut().zip(x) {
                *o += v;
            }
        });
    Ok(())
}

pub fn mul_assign(y: &mut Tensor, m: &Tensor) -> Result<()> {
    const OP: &str = "mul_assign";
    same_shape(OP, "y", y, "m", m)?;
    let mv = host(OP, "m", m)?;
    let yv = host_mut(OP, "y", y)?;
    yv.par_chunks_mut(CHUNK)
        .zip(mv.par_chunks(CHUNK))
        .for_each(|(y, m)| {
            for (o, &v) in y.iter_mut().zip(m) {
                *o *= v;
            }
        });
    Ok(())
}

/// sign with sign(0) = 0 (and sign(NaN) = 0, so a NaN gradient never moves the input).
#[inline]
fn sign0(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

pub fn sign_step(x0: &Tensor, g: &Tensor, eps: f32, y: &mut Tensor) -> Result<()> {
    const OP: &str = "sign_step";
    same_shape(OP, "g", g, "y", y)?;
    let b = broadcast_batch(OP, "x0", x0, "g", g)?;
    let xs = host(OP, "x0", x0)?;
    let gs = host(OP, "g", g)?;
    let ys = host_mut(OP, "y", y)?;
    broadcast_zip(xs, b, gs, ys, |o, g, x| {
        for ((o, &g), &x) in o.iter_mut().zip(g).zip(x) {
            *o = (x + eps * sign0(g)).clamp(0.0, 1.0);
        }
    });
    Ok(())
}

pub fn sgd_step(
    param: &mut Tensor,
    grad: &Tensor,
    momentum_buf: &mut Tensor,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
) -> Result<()> {
    const OP: &str = "sgd_step";
    same_shape(OP, "param", param, "grad", grad)?;
    same_shape(OP, "param", param, "momentum_buf", momentum_buf)?;
    let gs = host(OP, "grad", grad)?;
    let bs = host_mut(OP, "momentum_buf", momentum_buf)?;
    let ps = host_mut(OP, "param", param)?;
    ps.par_chunks_mut(CHUNK)
        .zip(bs.par_chunks_mut(CHUNK))
        .zip(gs.par_chunks(CHUNK))
        .for_each(|((p, b), g)| {
            for ((p, b), &g) in p.iter_mut().zip(b.iter_mut()).zip(g) {
                let d = g + weight_decay * *p;
                *b = momentum * *b + d;
                *p -= lr * *b;
            }
        });
    Ok(())
}
