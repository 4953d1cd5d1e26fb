//! Elementwise ops: ReLU (+ backward with batch broadcast of the saved output), residual adds,
//! mask multiply, the FGSM-style sign step and the PyTorch SGD update. Large tensors are split into
//! fixed-size chunks processed in parallel; each element is independent, so results never depend
//! on the thread count.
use rayon::prelude::*;

use super::{host, host_mut, hosts, same_shape};
use crate::backend::{shapes, Sgd};
use crate::error::Result;
use crate::tensor::Tensor;

/// Elements per parallel chunk.
pub(crate) const CHUNK: usize = 1 << 14;

pub fn relu(x: &Tensor, y: &mut Tensor) -> Result<()> {
    const OP: &str = "relu";
    same_shape(OP, "x", x, "y", y)?;
    let xs = host(OP, "x", x)?;
    let ys = host_mut(OP, "y", y)?;
    zip_apply(ys, xs, |o, v| *o = if v > 0.0 { v } else { 0.0 });
    Ok(())
}

/// `f(&mut y[i], x[i])` for every element, in parallel chunks of `CHUNK`.
fn zip_apply(ys: &mut [f32], xs: &[f32], f: impl Fn(&mut f32, f32) + Sync) {
    ys.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK))
        .for_each(|(yc, xc)| {
            for (o, &v) in yc.iter_mut().zip(xc) {
                f(o, v);
            }
        });
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
    let names = ["y_saved", "dy", "dx"];
    broadcast_op("relu_backward", names, y_saved, dy, dx, |g, s| {
        if s > 0.0 {
            g
        } else {
            0.0
        }
    })
}

/// `out[i] = f(g[i], saved[i])` of an op whose `saved` input's batch divides g's (gradient item i
/// reads saved item i % B); `names` are the (saved, g, out) names in errors.
fn broadcast_op(
    op: &'static str,
    [saved_name, g_name, out_name]: [&str; 3],
    saved: &Tensor,
    g: &Tensor,
    out: &mut Tensor,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<()> {
    let b = shapes::broadcast_op(op, [saved_name, g_name, out_name], saved, g, out)?;
    let [s, gs] = hosts(op, [(saved_name, saved), (g_name, g)])?;
    let o = host_mut(op, out_name, out)?;
    broadcast_zip(s, b, gs, o, |o, g, s| {
        for ((o, &g), &s) in o.iter_mut().zip(g).zip(s) {
            *o = f(g, s);
        }
    });
    Ok(())
}

pub fn add(a: &Tensor, b: &Tensor, y: &mut Tensor) -> Result<()> {
    const OP: &str = "add";
    shapes::same_shapes(OP, ("a", a), &[("b", b), ("y", y)])?;
    let [av, bv] = hosts(OP, [("a", a), ("b", b)])?;
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
    in_place("add_assign", y, "x", x, |o, v| *o += v)
}

pub fn mul_assign(y: &mut Tensor, m: &Tensor) -> Result<()> {
    in_place("mul_assign", y, "m", m, |o, v| *o *= v)
}

/// `y[i] = f(y[i], x[i])` of an in-place binary op (`x_name` names x in errors).
fn in_place(
    op: &'static str,
    y: &mut Tensor,
    x_name: &str,
    x: &Tensor,
    f: impl Fn(&mut f32, f32) + Sync,
) -> Result<()> {
    same_shape(op, "y", y, x_name, x)?;
    let xv = host(op, x_name, x)?;
    let yv = host_mut(op, "y", y)?;
    zip_apply(yv, xv, f);
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
    broadcast_op("sign_step", ["x0", "g", "y"], x0, g, y, |g, x| {
        (x + eps * sign0(g)).clamp(0.0, 1.0)
    })
}

pub fn sgd_step(
    param: &mut Tensor,
    grad: &Tensor,
    momentum_buf: &mut Tensor,
    sgd: Sgd,
) -> Result<()> {
    const OP: &str = "sgd_step";
    let Sgd {
        lr,
        momentum,
        weight_decay,
    } = sgd;
    let rest = [("grad", grad), ("momentum_buf", &*momentum_buf)];
    shapes::same_shapes(OP, ("param", param), &rest)?;
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
