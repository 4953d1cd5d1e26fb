//! Shape and argument checks shared by every backend, so the CPU reference and the GPU launchers
//! reject the same inputs with the same messages (`Error::Shape`, naming the op and the tensor).
//!
//! Two layers: primitives (`same_shape`, `broadcast_batch`, `numel_is`, `dims4`, `exact`, `rows`,
//! `conv_params`) and one check per op family (`same_shapes` and `broadcast_op` for the elementwise ops, that returns the dimensions the op works with
//! (`conv_*`, `per_channel`, `batchnorm_train_forward`, `linear_*`, `softmax_cross_entropy`,
//! `global_avg_pool*`, `frg_seed`). A backend calls the op's check first, then adds only what its
//! own implementation needs (the GPU: 32-bit indexing limits, grid limits).
use std::ops::Deref;

use crate::backend::{BnGrads, BnLayer, BnUpdate, ConvParams};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `from_host`: `data_len` values fill `shape`; returns its element count.
pub fn from_host(data_len: usize, shape: &[usize]) -> Result<usize> {
    let n: usize = shape.iter().product();
    crate::ensure_shape!(
        data_len == n,
        "from_host",
        "{data_len} values for shape {shape:?} ({n} elements)"
    );
    Ok(n)
}

pub fn same_shape(
    op: &'static str,
    a_name: &str,
    a: &Tensor,
    b_name: &str,
    b: &Tensor,
) -> Result<()> {
    if a.shape != b.shape {
        return Err(Error::shape(
            op,
            format!("{a_name} {:?} and {b_name} {:?} differ", a.shape, b.shape),
        ));
    }
    Ok(())
}

/// The elementwise ops' check (add, sgd_step): every tensor of `rest` has the shape of `first`
/// (the first that differs is named in the error, beside `first`).
pub fn same_shapes(
    op: &'static str,
    (first_name, first): (&str, &Tensor),
    rest: &[(&str, &Tensor)],
) -> Result<()> {
    for &(name, t) in rest {
        same_shape(op, first_name, first, name, t)?;
    }
    Ok(())
}

/// The check of an elementwise op whose `saved` input broadcasts over the gradient's batch
/// (relu_backward, sign_step): `out` has g's shape and `saved` passes `broadcast_batch`; `names`
/// are the (saved, g, out) names in errors. Returns saved's batch B.
pub fn broadcast_op(
    op: &'static str,
    [saved_name, g_name, out_name]: [&str; 3],
    saved: &Tensor,
    g: &Tensor,
    out: &Tensor,
) -> Result<usize> {
    same_shape(op, g_name, g, out_name, out)?;
    broadcast_batch(op, saved_name, saved, g_name, g)
}

/// Saved tensor with batch B dividing the gradient batch N and the same per-item shape.
pub fn broadcast_batch(
    op: &'static str,
    saved_name: &str,
    saved: &Tensor,
    grad_name: &str,
    grad: &Tensor,
) -> Result<usize> {
    let b = saved.batch();
    let n = grad.batch();
    if saved.shape.len() != grad.shape.len()
        || saved.shape[1..] != grad.shape[1..]
        || b == 0
        || !n.is_multiple_of(b)
    {
        return Err(Error::shape(
            op,
            format!(
                "{saved_name} {:?} must have the per-item shape of {grad_name} {:?} and a batch dividing its batch",
                saved.shape, grad.shape
            ),
        ));
    }
    Ok(b)
}

pub fn numel_is(op: &'static str, what: &str, t: &Tensor, n: usize) -> Result<()> {
    if t.numel() != n {
        return Err(Error::shape(
            op,
            format!(
                "{what} has shape {:?} ({} elements), expected {n} elements",
                t.shape,
                t.numel()
            ),
        ));
    }
    Ok(())
}

/// (N, C, H, W) of a rank-4 tensor, or (N, F, 1, 1) of a rank-2 one; error otherwise.
pub fn dims4(op: &'static str, what: &str, t: &Tensor) -> Result<(usize, usize, usize, usize)> {
    match t.shape.as_slice() {
        [n, c, h, w] => Ok((*n, *c, *h, *w)),
        [n, f] => Ok((*n, *f, 1, 1)),
        s => Err(Error::shape(
            op,
            format!("{what} must be [N,C,H,W] or [N,F], got {s:?}"),
        )),
    }
}

/// The tensor has exactly the shape `want`.
pub fn exact(op: &'static str, what: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.shape != want {
        return Err(Error::shape(
            op,
            format!("{what} must be {want:?}, got {:?}", t.shape),
        ));
    }
    Ok(())
}

/// [N, F] view of a tensor of rank >= 2 (trailing dims flattened).
pub fn rows(op: &'static str, what: &str, t: &Tensor) -> Result<(usize, usize)> {
    if t.shape.len() < 2 {
        return Err(Error::shape(
            op,
            format!("{what} must be [N, F], got {:?}", t.shape),
        ));
    }
    Ok((t.batch(), t.item_numel()))
}

/// Non-negative sizes, kernel and stride >= 1, and output sizes that follow from the input.
pub fn conv_params(op: &'static str, p: &ConvParams) -> Result<()> {
    let vals = [
        p.n, p.c_in, p.h_in, p.w_in, p.c_out, p.h_out, p.w_out, p.kernel, p.stride, p.pad,
    ];
    if vals.iter().any(|&v| v < 0) || p.kernel < 1 || p.stride < 1 {
        return Err(Error::shape(
            op,
            format!("invalid conv params {p:?} (negative size, kernel < 1 or stride < 1)"),
        ));
    }
    // In i64, so no i32 sum overflows; None when the padded input is smaller than the kernel.
    let out = |i: i32| {
        let span = i as i64 + 2 * p.pad as i64 - p.kernel as i64;
        (span >= 0).then(|| span / p.stride as i64 + 1)
    };
    if out(p.h_in) != Some(p.h_out as i64) || out(p.w_in) != Some(p.w_out as i64) {
        return Err(Error::shape(
            op,
            format!(
                "conv params {p:?}: output {}x{} does not match input {}x{} with kernel {}, stride {}, pad {}",
                p.h_out, p.w_out, p.h_in, p.w_in, p.kernel, p.stride, p.pad
            ),
        ));
    }
    Ok(())
}

/// Valid conv params and three tensors of the shapes they imply (in the op's argument order).
fn conv_three(
    op: &'static str,
    p: &ConvParams,
    ts: [(&str, &Tensor, [usize; 4]); 3],
) -> Result<()> {
    conv_params(op, p)?;
    for (what, t, want) in ts {
        exact(op, what, t, &want)?;
    }
    Ok(())
}

pub fn conv_forward(p: &ConvParams, x: &Tensor, w: &Tensor, y: &Tensor) -> Result<()> {
    conv_forward_of("conv2d_forward", p, x, None, w, y)
}

/// The forward of x, or of relu(bn(x)) with `bn` (`conv2d_forward_bn`), named `op` in errors.
pub fn conv_forward_of(
    op: &'static str,
    p: &ConvParams,
    x: &Tensor,
    bn: Option<&BnLayer<&Tensor>>,
    w: &Tensor,
    y: &Tensor,
) -> Result<()> {
    let three = [
        ("x", x, p.input_shape()),
        ("w", w, p.weight_shape()),
        ("y", y, p.output_shape()),
    ];
    conv_three(op, p, three)?;
    bn_input(op, p, bn)
}

pub fn conv_input_grad(p: &ConvParams, dy: &Tensor, w: &Tensor, dx: &Tensor) -> Result<()> {
    conv_three(
        "conv2d_input_grad",
        p,
        [
            ("dy", dy, p.output_shape()),
            ("w", w, p.weight_shape()),
            ("dx", dx, p.input_shape()),
        ],
    )
}

pub fn conv_weight_grad(p: &ConvParams, x: &Tensor, dy: &Tensor, dw: &Tensor) -> Result<()> {
    conv_weight_grad_of("conv2d_weight_grad", p, x, None, dy, dw)
}

/// The weight gradient of x, or of relu(bn(x)) with `bn` (`conv2d_weight_grad_bn`), named `op` in
/// errors.
pub fn conv_weight_grad_of(
    op: &'static str,
    p: &ConvParams,
    x: &Tensor,
    bn: Option<&BnLayer<&Tensor>>,
    dy: &Tensor,
    dw: &Tensor,
) -> Result<()> {
    let three = [
        ("x", x, p.input_shape()),
        ("dy", dy, p.output_shape()),
        ("dw", dw, p.weight_shape()),
    ];
    conv_three(op, p, three)?;
    bn_input(op, p, bn)
}

/// A convolution's input read through a training batchnorm: its gamma, beta, save_mean and
/// save_invstd are each [c_in].
fn bn_input(op: &'static str, p: &ConvParams, bn: Option<&BnLayer<&Tensor>>) -> Result<()> {
    for (name, t) in bn.map(bn_stats).into_iter().flatten() {
        numel_is(op, name, t, p.c_in as usize)?;
    }
    Ok(())
}

/// The one-hot input gradient: seed [N, 1, h_out, w_out], item i uses filter
/// `first_channel + i / group`, which must exist.
pub fn conv_input_grad_onehot(
    p: &ConvParams,
    seed: &Tensor,
    w: &Tensor,
    first_channel: usize,
    group: usize,
    dx: &Tensor,
) -> Result<()> {
    const OP: &str = "conv2d_input_grad_onehot";
    let [n, _, ho, wo] = p.output_shape();
    conv_three(
        OP,
        p,
        [
            ("seed", seed, [n, 1, ho, wo]),
            ("w", w, p.weight_shape()),
            ("dx", dx, p.input_shape()),
        ],
    )?;
    if group == 0 {
        return Err(Error::shape(OP, "group must be at least 1"));
    }
    let co = p.c_out as usize;
    if n > 0 && first_channel + (n - 1) / group >= co {
        return Err(Error::shape(
            OP,
            format!(
                "items 0..{n} with group {group} need filters {first_channel}..={} but w has {co}",
                first_channel + (n - 1) / group
            ),
        ));
    }
    Ok(())
}

/// A per-channel op on `x` ([N,C,H,W] or [N,F]): every tensor in `same` has x's shape, every one
/// in `channels` has C elements. Returns (N, C, H*W).
pub fn per_channel(
    op: &'static str,
    x_name: &str,
    x: &Tensor,
    same: &[(&str, &Tensor)],
    channels: &[(&str, &Tensor)],
) -> Result<(usize, usize, usize)> {
    let (n, c, h, w) = dims4(op, x_name, x)?;
    for (name, t) in same {
        same_shape(op, x_name, x, name, t)?;
    }
    for (name, t) in channels {
        numel_is(op, name, t, c)?;
    }
    Ok((n, c, h * w))
}

/// y = x * scale[c] + shift[c] (optionally ReLU'd). Returns (N, C, H*W).
pub fn channel_affine(
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    y: &Tensor,
) -> Result<(usize, usize, usize)> {
    let channels = [("scale", scale), ("shift", shift)];
    per_channel("channel_affine", "x", x, &[("y", y)], &channels)
}

/// dx = dy * scale[c], masked by y_saved (batch dividing dy's). Returns (N, C, H*W).
pub fn channel_affine_backward(
    y_saved: Option<&Tensor>,
    dy: &Tensor,
    scale: &Tensor,
    dx: &Tensor,
) -> Result<(usize, usize, usize)> {
    const OP: &str = "channel_affine_backward";
    let dims = per_channel(OP, "dy", dy, &[("dx", dx)], &[("scale", scale)])?;
    if let Some(s) = y_saved {
        broadcast_batch(OP, "y_saved", s, "dy", dy)?;
    }
    Ok(dims)
}

/// A training batchnorm's affine parameters and saved statistics, named as in errors.
fn bn_stats<'t, S: Deref<Target = Tensor>>(bn: &'t BnLayer<S>) -> [(&'static str, &'t Tensor); 4] {
    let (mean, invstd) = (&*bn.save_mean, &*bn.save_invstd);
    [
        ("gamma", bn.gamma),
        ("beta", bn.beta),
        ("save_mean", mean),
        ("save_invstd", invstd),
    ]
}

/// Training-mode batchnorm forward: y (when written) has x's shape; gamma, beta, running_mean, running_var,
/// save_mean and save_invstd are each [C]. More than one value per channel (the unbiased running
/// variance divides by N*H*W - 1). Returns (N, C, H*W).
pub fn batchnorm_train_forward<S: Deref<Target = Tensor>>(
    x: &Tensor,
    bn: &BnLayer<S>,
    update: &BnUpdate,
    y: Option<&Tensor>,
) -> Result<(usize, usize, usize)> {
    const OP: &str = "batchnorm_train_forward";
    let [gamma, beta, mean, invstd] = bn_stats(bn);
    let (rm, rv) = (&*update.running_mean, &*update.running_var);
    let channels = [
        gamma,
        beta,
        ("running_mean", rm),
        ("running_var", rv),
        mean,
        invstd,
    ];
    let same: Vec<(&str, &Tensor)> = y.into_iter().map(|y| ("y", y)).collect();
    let (n, c, hw) = per_channel(OP, "x", x, &same, &channels)?;
    if n * hw < 2 {
        return Err(Error::shape(
            OP,
            format!(
                "training batchnorm needs more than 1 value per channel, x is {:?}",
                x.shape
            ),
        ));
    }
    Ok((n, c, hw))
}

/// Training-mode batchnorm backward: dy and dx have x's shape; gamma, beta, save_mean,
/// save_invstd, dgamma and dbeta are each [C]. Returns (N, C, H*W).
pub fn batchnorm_train_backward(
    x: &Tensor,
    dy: &Tensor,
    bn: &BnLayer<&Tensor>,
    grads: &BnGrads,
) -> Result<(usize, usize, usize)> {
    let [gamma, beta, mean, invstd] = bn_stats(bn);
    let (dgamma, dbeta) = (&*grads.dgamma, &*grads.dbeta);
    let channels = [
        gamma,
        beta,
        mean,
        invstd,
        ("dgamma", dgamma),
        ("dbeta", dbeta),
    ];
    let same = [("dy", dy), ("dx", &*grads.dx)];
    per_channel("batchnorm_train_backward", "x", x, &same, &channels)
}

/// loss[c] = mean over (n, h, w) of (a - b)^2. Returns (N, C, H*W).
pub fn channel_mse(a: &Tensor, b: &Tensor, loss: &Tensor) -> Result<(usize, usize, usize)> {
    per_channel("channel_mse", "a", a, &[("b", b)], &[("loss", loss)])
}

/// [N,C,H,W] (or [N,F]) pooled to [N,C]: returns (N, C, H*W).
fn pooled(
    op: &'static str,
    big_name: &str,
    big: &Tensor,
    small_name: &str,
    small: &Tensor,
) -> Result<(usize, usize, usize)> {
    let (n, c, h, w) = dims4(op, big_name, big)?;
    if small.shape != [n, c] {
        return Err(Error::shape(
            op,
            format!(
                "{small_name} must be [{n}, {c}] for {big_name} {:?}, got {:?}",
                big.shape, small.shape
            ),
        ));
    }
    Ok((n, c, h * w))
}

pub fn global_avg_pool(x: &Tensor, y: &Tensor) -> Result<(usize, usize, usize)> {
    pooled("global_avg_pool", "x", x, "y", y)
}

pub fn global_avg_pool_backward(dy: &Tensor, dx: &Tensor) -> Result<(usize, usize, usize)> {
    pooled("global_avg_pool_backward", "dx", dx, "dy", dy)
}

/// y [N, out] = x [N, in] w^T [out, in] + b [out] (x may have trailing dims, flattened).
/// Returns (N, in, out).
pub fn linear_forward(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    y: &Tensor,
) -> Result<(usize, usize, usize)> {
    const OP: &str = "linear_forward";
    let (n, fi) = rows(OP, "x", x)?;
    let (fo, wi) = rows(OP, "w", w)?;
    if w.shape.len() != 2 || wi != fi {
        return Err(Error::shape(
            OP,
            format!(
                "w must be [out, {fi}] for x {:?}, got {:?}",
                x.shape, w.shape
            ),
        ));
    }
    numel_is(OP, "b", b, fo)?;
    exact(OP, "y", y, &[n, fo])?;
    Ok((n, fi, fo))
}

/// dx [N, in] = dy [N, out] w [out, in]. Returns (N, in, out).
pub fn linear_backward_input(
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
) -> Result<(usize, usize, usize)> {
    const OP: &str = "linear_backward_input";
    let (n, fo) = rows(OP, "dy", dy)?;
    let (wo, fi) = rows(OP, "w", w)?;
    if w.shape.len() != 2 || wo != fo || dy.shape.len() != 2 {
        return Err(Error::shape(
            OP,
            format!(
                "dy {:?} must be [N, out] and w {:?} [out, in]",
                dy.shape, w.shape
            ),
        ));
    }
    let (dn, dfi) = rows(OP, "dx", dx)?;
    if dn != n || dfi != fi {
        return Err(Error::shape(
            OP,
            format!("dx must be [{n}, {fi}], got {:?}", dx.shape),
        ));
    }
    Ok((n, fi, fo))
}

/// dw [out, in] = dy^T x, db [out] = sum_n dy. Returns (N, in, out).
pub fn linear_backward_params(
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    db: &Tensor,
) -> Result<(usize, usize, usize)> {
    const OP: &str = "linear_backward_params";
    let (n, fi) = rows(OP, "x", x)?;
    let (gn, fo) = rows(OP, "dy", dy)?;
    if gn != n || dy.shape.len() != 2 {
        return Err(Error::shape(
            OP,
            format!(
                "dy must be [{n}, out] for x {:?}, got {:?}",
                x.shape, dy.shape
            ),
        ));
    }
    exact(OP, "dw", dw, &[fo, fi])?;
    numel_is(OP, "db", db, fo)?;
    Ok((n, fi, fo))
}

/// logits and dlogits [N, K] with K >= 1, loss [N], `labels` labels. Returns (N, K).
pub fn softmax_cross_entropy(
    logits: &Tensor,
    labels: usize,
    loss: &Tensor,
    dlogits: &Tensor,
) -> Result<(usize, usize)> {
    const OP: &str = "softmax_cross_entropy";
    if logits.shape.len() != 2 {
        return Err(Error::shape(
            OP,
            format!("logits must be [N, K], got {:?}", logits.shape),
        ));
    }
    let (n, k) = (logits.shape[0], logits.shape[1]);
    same_shape(OP, "logits", logits, "dlogits", dlogits)?;
    numel_is(OP, "loss", loss, n)?;
    if labels != n {
        return Err(Error::shape(
            OP,
            format!("{labels} labels for {n} logit rows"),
        ));
    }
    if k == 0 {
        return Err(Error::shape(OP, "logits have zero classes"));
    }
    Ok((n, k))
}

/// The batched FRG seed: a_x, a_x0 [B,C,H,W], seed [K*B, 1, H, W] with channels
/// first_channel..first_channel+K in range. Returns (B, C, H, W, K).
pub fn frg_seed(
    a_x: &Tensor,
    a_x0: &Tensor,
    first_channel: usize,
    seed: &Tensor,
) -> Result<(usize, usize, usize, usize, usize)> {
    const OP: &str = "frg_seed";
    let (b, c, h, w) = dims4(OP, "a_x", a_x)?;
    same_shape(OP, "a_x", a_x, "a_x0", a_x0)?;
    let ok = seed.shape.len() == 4
        && seed.shape[1] == 1
        && seed.shape[2] == h
        && seed.shape[3] == w
        && b > 0
        && seed.shape[0].is_multiple_of(b);
    if !ok {
        return Err(Error::shape(
            OP,
            format!(
                "seed must be [K*{b}, 1, {h}, {w}] for activations {:?}, got {:?}",
                a_x.shape, seed.shape
            ),
        ));
    }
    let k = seed.shape[0] / b;
    if first_channel + k > c {
        return Err(Error::shape(
            OP,
            format!(
                "channels {first_channel}..{} out of range for {c} channels",
                first_channel + k
            ),
        ));
    }
    Ok((b, c, h, w, k))
}
