//! f64 references shared by the op tests (`tests/cpu_ops.rs` for the CPU backend,
//! `tests/emu_ops.rs` for the emulated kernels): one definition of what each op computes.
//! Shapes: x [n, i], w [o, i], bias [o], dy [n, o]; sums run in ascending index order.
use fmp_engine::backend::{BnGrads, BnLayer, BnUpdate};

/// y[s, q] = sum_j x[s, j] w[q, j] + bias[q].
pub fn linear_forward(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    n: usize,
    i: usize,
    o: usize,
) -> Vec<f64> {
    (0..n * o)
        .map(|k| {
            (0..i)
                .map(|j| x[k / o * i + j] as f64 * w[k % o * i + j] as f64)
                .sum::<f64>()
                + bias[k % o] as f64
        })
        .collect()
}

/// dx[s, j] = sum_q dy[s, q] w[q, j].
pub fn linear_backward_input(dy: &[f32], w: &[f32], n: usize, i: usize, o: usize) -> Vec<f64> {
    (0..n * i)
        .map(|k| {
            (0..o)
                .map(|q| dy[k / i * o + q] as f64 * w[q * i + k % i] as f64)
                .sum()
        })
        .collect()
}

/// (dw, db): dw[q, j] = sum_s dy[s, q] x[s, j], db[q] = sum_s dy[s, q].
pub fn linear_backward_params(
    x: &[f32],
    dy: &[f32],
    n: usize,
    i: usize,
    o: usize,
) -> (Vec<f64>, Vec<f64>) {
    let dw = (0..o * i)
        .map(|k| {
            (0..n)
                .map(|s| dy[s * o + k / i] as f64 * x[s * i + k % i] as f64)
                .sum()
        })
        .collect();
    let db = (0..o)
        .map(|q| (0..n).map(|s| dy[s * o + q] as f64).sum())
        .collect();
    (dw, db)
}

/// Training batchnorm with its ReLU fused (`relu: true`) gives, bit for bit, what the separate
/// ops give: relu(bn(x)) forward, and batchnorm_train_backward of relu_backward(r, dr) backward,
/// on any backend. x: [n, c, h, w] seeded values, some pre-activations negative.
pub fn check_bn_relu_fused(
    b: &dyn fmp_engine::backend::Backend,
    x: &[f32],
    dr: &[f32],
    gamma: &[f32],
    beta: &[f32],
    shape: [usize; 4],
) {
    let c = shape[1];
    let t = |v: &[f32], s: &[usize]| b.from_host(v, s).unwrap();
    let z = |s: &[usize]| b.zeros(s).unwrap();
    let (xt, gt, bt, drt) = (t(x, &shape), t(gamma, &[c]), t(beta, &[c]), t(dr, &shape));
    let fwd = |relu: bool| {
        let (mut rm, mut rv, mut sm, mut si, mut y) =
            (z(&[c]), z(&[c]), z(&[c]), z(&[c]), z(&shape));
        b.batchnorm_train_forward(
            &xt,
            BnLayer::new(&gt, &bt, &mut sm, &mut si, relu),
            BnUpdate::new(1e-5, 0.1, &mut rm, &mut rv),
            Some(&mut y),
        )
        .unwrap();
        (y, sm, si)
    };
    let (y, sm, si) = fwd(false);
    let (r_fused, sm2, si2) = fwd(true);
    let mut r = z(&shape);
    b.relu(&y, &mut r).unwrap();
    let host = |v: &fmp_engine::Tensor| b.to_host(v).unwrap();
    assert_eq!(host(&sm), host(&sm2), "fused forward: save_mean");
    assert_eq!(host(&si), host(&si2), "fused forward: save_invstd");
    let (rh, rf) = (host(&r), host(&r_fused));
    assert!(
        rh.iter().any(|&v| v == 0.0) && rh.iter().any(|&v| v > 0.0),
        "mask is mixed"
    );
    assert_eq!(rh, rf, "fused forward: relu(bn(x))");
    let bwd = |dy: &fmp_engine::Tensor, relu: bool| {
        let (mut dx, mut dg, mut db) = (z(&shape), z(&[c]), z(&[c]));
        let bn = BnLayer::new(&gt, &bt, &sm, &si, relu);
        b.batchnorm_train_backward(&xt, dy, bn, BnGrads::new(&mut dx, &mut dg, &mut db))
            .unwrap();
        [host(&dx), host(&dg), host(&db)]
    };
    let mut dy = z(&shape);
    b.relu_backward(&r, &drt, &mut dy).unwrap();
    let (want, got) = (bwd(&dy, false), bwd(&drt, true));
    for (what, w, g) in [("dx", 0, 0), ("dgamma", 1, 1), ("dbeta", 2, 2)] {
        assert_eq!(want[w], got[g], "fused backward: {what}");
    }
}

/// A convolution that reads relu(bn(x)) through a training batchnorm's saved statistics
/// (`conv2d_forward_bn`, `conv2d_weight_grad_bn`) gives, bit for bit, the convolution of what
/// `batchnorm_train_forward` writes, with and without the ReLU; and the statistics-only forward
/// (no y) writes the same statistics as the one that writes y: on any backend. x: seeded values
/// of `p.input_shape()`, some pre-activations negative; w, dy: the conv's weight and output shapes.
pub fn check_conv_bn_fused(
    b: &dyn fmp_engine::backend::Backend,
    p: &fmp_engine::backend::ConvParams,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    gamma: &[f32],
    beta: &[f32],
) {
    let (xs, c) = (p.input_shape(), p.c_in as usize);
    let t = |v: &[f32], s: &[usize]| b.from_host(v, s).unwrap();
    let z = |s: &[usize]| b.zeros(s).unwrap();
    let host = |v: &fmp_engine::Tensor| b.to_host(v).unwrap();
    let (xt, gt, bt) = (t(x, &xs), t(gamma, &[c]), t(beta, &[c]));
    let (wt, dyt) = (t(w, &p.weight_shape()), t(dy, &p.output_shape()));
    for relu in [true, false] {
        // Statistics (save_mean, save_invstd, running_mean, running_var) and, when asked, y.
        let bn_fwd = |write: bool| {
            let (mut rm, mut rv, mut sm, mut si) = (z(&[c]), z(&[c]), z(&[c]), z(&[c]));
            let mut y = z(&xs);
            b.batchnorm_train_forward(
                &xt,
                BnLayer::new(&gt, &bt, &mut sm, &mut si, relu),
                BnUpdate::new(1e-5, 0.1, &mut rm, &mut rv),
                write.then_some(&mut y),
            )
            .unwrap();
            (y, [sm, si, rm, rv])
        };
        let (y, stats) = bn_fwd(true);
        let (_, stats_only) = bn_fwd(false);
        for (what, (a, o)) in ["save_mean", "save_invstd", "running_mean", "running_var"]
            .iter()
            .zip(stats.iter().zip(&stats_only))
        {
            assert_eq!(
                host(a),
                host(o),
                "statistics-only forward: {what} (relu {relu})"
            );
        }
        let yh = host(&y);
        assert!(
            !relu || (yh.iter().any(|&v| v == 0.0) && yh.iter().any(|&v| v > 0.0)),
            "the ReLU mask is mixed"
        );
        let bn = BnLayer::new(&gt, &bt, &stats[0], &stats[1], relu);
        // `plain` on the batchnorm's output against `fused` on x, into outputs of `shape`.
        let same = |what: &str,
                    shape: &[usize],
                    plain: &dyn Fn(&mut fmp_engine::Tensor),
                    fused: &dyn Fn(&mut fmp_engine::Tensor)| {
            let (mut want, mut got) = (z(shape), z(shape));
            plain(&mut want);
            fused(&mut got);
            assert_eq!(host(&want), host(&got), "{what} {p:?} (relu {relu})");
        };
        same(
            "conv2d_forward_bn",
            &p.output_shape(),
            &|o| b.conv2d_forward(p, &y, &wt, o).unwrap(),
            &|o| b.conv2d_forward_bn(p, &xt, bn, &wt, o).unwrap(),
        );
        same(
            "conv2d_weight_grad_bn",
            &p.weight_shape(),
            &|o| b.conv2d_weight_grad(p, &y, &dyt, o).unwrap(),
            &|o| b.conv2d_weight_grad_bn(p, &xt, bn, &dyt, o).unwrap(),
        );
    }
}
