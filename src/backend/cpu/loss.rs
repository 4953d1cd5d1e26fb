//! Pooling, the linear head, softmax cross-entropy and the FRG losses (per-channel MSE and its
//! batched gradient seed). These are small next to the convolutions: plain loops with f64
//! accumulators in a fixed order, parallel over rows/channels where it pays.
use rayon::prelude::*;

use super::{host, host_mut, hosts};
use crate::backend::shapes;
use crate::error::{Error, Result};
use crate::tensor::{Indices, Storage, Tensor};

pub fn global_avg_pool(x: &Tensor, y: &mut Tensor) -> Result<()> {
    const OP: &str = "global_avg_pool";
    let (_, _, hw) = shapes::global_avg_pool(x, y)?;
    let xs = host(OP, "x", x)?;
    let ys = host_mut(OP, "y", y)?;
    if hw == 0 {
        ys.fill(0.0);
        return Ok(());
    }
    ys.par_iter_mut().enumerate().for_each(|(i, o)| {
        let s: f64 = xs[i * hw..(i + 1) * hw].iter().map(|&v| v as f64).sum();
        *o = (s / hw as f64) as f32;
    });
    Ok(())
}

pub fn global_avg_pool_backward(dy: &Tensor, dx: &mut Tensor) -> Result<()> {
    const OP: &str = "global_avg_pool_backward";
    let (_, _, hw) = shapes::global_avg_pool_backward(dy, dx)?;
    let g = host(OP, "dy", dy)?;
    let o = host_mut(OP, "dx", dx)?;
    if hw == 0 {
        return Ok(());
    }
    let inv = 1.0 / hw as f32;
    o.par_chunks_mut(hw)
        .zip(g.par_iter())
        .for_each(|(o, &g)| o.fill(g * inv));
    Ok(())
}

pub fn linear_forward(x: &Tensor, w: &Tensor, b: &Tensor, y: &mut Tensor) -> Result<()> {
    const OP: &str = "linear_forward";
    let (_, fi, fo) = shapes::linear_forward(x, w, b, y)?;
    let [xs, ws, bs] = hosts(OP, [("x", x), ("w", w), ("b", b)])?;
    let ys = host_mut(OP, "y", y)?;
    ys.par_iter_mut().enumerate().for_each(|(k, o)| {
        let (i, j) = (k / fo, k % fo);
        let xr = &xs[i * fi..(i + 1) * fi];
        let wr = &ws[j * fi..(j + 1) * fi];
        let s: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
        *o = (s + bs[j] as f64) as f32;
    });
    Ok(())
}

pub fn linear_backward_input(dy: &Tensor, w: &Tensor, dx: &mut Tensor) -> Result<()> {
    const OP: &str = "linear_backward_input";
    let (_, fi, fo) = shapes::linear_backward_input(dy, w, dx)?;
    let [g, ws] = hosts(OP, [("dy", dy), ("w", w)])?;
    let o = host_mut(OP, "dx", dx)?;
    o.par_iter_mut().enumerate().for_each(|(k, o)| {
        let (i, f) = (k / fi, k % fi);
        *o = strided_dot((g, i * fo, 1), (ws, f, fi), fo);
    });
    Ok(())
}

/// The sum over j < n of a[a0 + j * sa] * b[b0 + j * sb], in f64 with j ascending (the linear
/// head's gradients), rounded once to f32.
fn strided_dot(
    (a, a0, sa): (&[f32], usize, usize),
    (b, b0, sb): (&[f32], usize, usize),
    n: usize,
) -> f32 {
    let mut s = 0.0f64;
    for j in 0..n {
        s += a[a0 + j * sa] as f64 * b[b0 + j * sb] as f64;
    }
    s as f32
}

pub fn linear_backward_params(
    x: &Tensor,
    dy: &Tensor,
    dw: &mut Tensor,
    db: &mut Tensor,
) -> Result<()> {
    const OP: &str = "linear_backward_params";
    let (n, fi, fo) = shapes::linear_backward_params(x, dy, dw, db)?;
    let [xs, g] = hosts(OP, [("x", x), ("dy", dy)])?;
    host_mut(OP, "dw", dw)?
        .par_iter_mut()
        .enumerate()
        .for_each(|(k, o)| {
            let (j, f) = (k / fi, k % fi);
            *o = strided_dot((g, j, fo), (xs, f, fi), n);
        });
    for (j, o) in host_mut(OP, "db", db)?.iter_mut().enumerate() {
        *o = (0..n).map(|i| g[i * fo + j] as f64).sum::<f64>() as f32;
    }
    Ok(())
}

pub fn softmax_cross_entropy(
    logits: &Tensor,
    labels: &Indices,
    loss: &mut Tensor,
    dlogits: &mut Tensor,
) -> Result<()> {
    const OP: &str = "softmax_cross_entropy";
    let (n, k) = shapes::softmax_cross_entropy(logits, labels.len, loss, dlogits)?;
    let lab = match &labels.storage {
        Storage::Host(v) => v,
        s => {
            return Err(Error::WrongBackend {
                backend: "cpu",
                found: s.location(),
            })
        }
    };
    if lab.len() != n {
        return Err(Error::shape(
            OP,
            format!("{} labels for {n} logit rows", lab.len()),
        ));
    }
    if let Some((i, &l)) = lab.iter().enumerate().find(|(_, &l)| l as usize >= k) {
        return Err(Error::InvalidArgument(format!(
            "{OP}: label {l} of item {i} is out of range for {k} classes"
        )));
    }
    let xs = host(OP, "logits", logits)?;
    let ls = host_mut(OP, "loss", loss)?;
    let ds = host_mut(OP, "dlogits", dlogits)?;
    let inv_n = 1.0 / n as f64;
    ds.par_chunks_mut(k)
        .zip(ls.par_iter_mut())
        .enumerate()
        .for_each(|(i, (d, l))| {
            let row = &xs[i * k..(i + 1) * k];
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            let lse = m + z.ln();
            let y = lab[i] as usize;
            *l = (lse - row[y] as f64) as f32;
            for (j, (o, &v)) in d.iter_mut().zip(row).enumerate() {
                let p = (v as f64 - lse).exp();
                let t = if j == y { 1.0 } else { 0.0 };
                *o = ((p - t) * inv_n) as f32;
            }
        });
    Ok(())
}

pub fn channel_mse(a: &Tensor, b: &Tensor, loss: &mut Tensor) -> Result<()> {
    const OP: &str = "channel_mse";
    let (n, c, hw) = shapes::channel_mse(a, b, loss)?;
    let [av, bv] = hosts(OP, [("a", a), ("b", b)])?;
    let cnt = (n * hw) as f64;
    host_mut(OP, "loss", loss)?
        .par_iter_mut()
        .enumerate()
        .for_each(|(ch, o)| {
            let mut s = 0.0f64;
            for i in 0..n {
                let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                for (&x, &y) in av[r.clone()].iter().zip(&bv[r]) {
                    let d = x as f64 - y as f64;
                    s += d * d;
                }
            }
            *o = if cnt > 0.0 { (s / cnt) as f32 } else { 0.0 };
        });
    Ok(())
}

pub fn frg_seed(
    a_x: &Tensor,
    a_x0: &Tensor,
    first_channel: usize,
    seed: &mut Tensor,
) -> Result<()> {
    const OP: &str = "frg_seed";
    let (b, c, h, w, _) = shapes::frg_seed(a_x, a_x0, first_channel, seed)?;
    let hw = h * w;
    let [xv, x0v] = hosts(OP, [("a_x", a_x), ("a_x0", a_x0)])?;
    let s = 2.0f32 / (b * hw) as f32;
    let out = host_mut(OP, "seed", seed)?;
    if hw == 0 {
        return Ok(());
    }
    out.par_chunks_mut(hw).enumerate().for_each(|(i, o)| {
        let (kk, bb) = (i / b, i % b);
        let base = (bb * c + first_channel + kk) * hw;
        for (j, o) in o.iter_mut().enumerate() {
            *o = s * (x0v[base + j] - xv[base + j]);
        }
    });
    Ok(())
}
