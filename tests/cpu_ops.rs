//! CPU backend op tests (convolutions: tests/cpu_conv_ops.rs): every other op on seeded random
//! inputs with odd shapes against a naive f64 reference, gradients against f64 analytic references
//! and central finite differences, broadcast rules and error cases.
use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::{Backend, BnGrads, BnLayer, BnUpdate, ConvParams, Sgd};
use fmp_engine::Error;

mod cpu_support;
mod op_refs;
use cpu_support::*;

// ---- affine / batchnorm --------------------------------------------------------------------

#[test]
fn channel_affine_and_backward_with_broadcast() {
    let b = be();
    let (n, c, hh, ww) = (3, 5, 7, 9);
    let mut r = Rng::new(11);
    let x = r.vec(n * c * hh * ww, -1.0, 1.0);
    let sc = r.vec(c, -2.0, 2.0);
    let sh = r.vec(c, -0.5, 0.5);
    let s = [n, c, hh, ww];
    for relu in [false, true] {
        let mut y = z(&b, &s);
        b.channel_affine(
            &t(&b, &x, &s),
            &t(&b, &sc, &[c]),
            &t(&b, &sh, &[c]),
            relu,
            &mut y,
        )
        .unwrap();
        let want: Vec<f64> = (0..x.len())
            .map(|i| {
                let ch = (i / (hh * ww)) % c;
                let v = x[i] as f64 * sc[ch] as f64 + sh[ch] as f64;
                if relu {
                    v.max(0.0)
                } else {
                    v
                }
            })
            .collect();
        assert_close("affine", &h(&b, &y), &want, 1e-6);
    }
    // Backward: saved batch 3, gradient batch 6 (item i reads saved i % 3).
    let mut ys = z(&b, &s);
    b.channel_affine(
        &t(&b, &x, &s),
        &t(&b, &sc, &[c]),
        &t(&b, &sh, &[c]),
        true,
        &mut ys,
    )
    .unwrap();
    let ysv = h(&b, &ys);
    let gs = [2 * n, c, hh, ww];
    let dy = r.vec(2 * x.len(), -1.0, 1.0);
    let mut dx = z(&b, &gs);
    b.channel_affine_backward(Some(&ys), &t(&b, &dy, &gs), &t(&b, &sc, &[c]), &mut dx)
        .unwrap();
    let item = c * hh * ww;
    let want: Vec<f64> = (0..dy.len())
        .map(|i| {
            let ch = (i / (hh * ww)) % c;
            let saved = ysv[((i / item) % n) * item + i % item];
            if saved > 0.0 {
                dy[i] as f64 * sc[ch] as f64
            } else {
                0.0
            }
        })
        .collect();
    assert_close("affine bwd broadcast", &h(&b, &dx), &want, 1e-6);
    let mut dx = z(&b, &gs);
    b.channel_affine_backward(None, &t(&b, &dy, &gs), &t(&b, &sc, &[c]), &mut dx)
        .unwrap();
    let want: Vec<f64> = (0..dy.len())
        .map(|i| dy[i] as f64 * sc[(i / (hh * ww)) % c] as f64)
        .collect();
    assert_close("affine bwd", &h(&b, &dx), &want, 1e-6);
    // Rank-2 input works as [N, F, 1, 1].
    let mut y2 = z(&b, &[4, c]);
    b.channel_affine(
        &t(&b, &x[..4 * c], &[4, c]),
        &t(&b, &sc, &[c]),
        &t(&b, &sh, &[c]),
        false,
        &mut y2,
    )
    .unwrap();
    assert!((h(&b, &y2)[c + 2] - (x[c + 2] * sc[2] + sh[2])).abs() < 1e-6);
    // Errors: saved batch 4 does not divide 6; wrong scale length.
    let bad = z(&b, &[4, c, hh, ww]);
    assert!(matches!(
        b.channel_affine_backward(Some(&bad), &t(&b, &dy, &gs), &t(&b, &sc, &[c]), &mut dx),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        b.channel_affine(
            &t(&b, &x, &s),
            &t(&b, &sc[..4], &[4]),
            &t(&b, &sh, &[c]),
            false,
            &mut z(&b, &s)
        ),
        Err(Error::Shape { .. })
    ));
}

/// f64 training batchnorm: (y, mean, biased var).
fn bn64(
    x: &[f64],
    g: &[f64],
    bt: &[f64],
    n: usize,
    c: usize,
    hw: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let m = (n * hw) as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for i in 0..x.len() {
        mean[(i / hw) % c] += x[i] / m;
    }
    for i in 0..x.len() {
        let ch = (i / hw) % c;
        var[ch] += (x[i] - mean[ch]).powi(2) / m;
    }
    let y = (0..x.len())
        .map(|i| {
            let ch = (i / hw) % c;
            (x[i] - mean[ch]) / (var[ch] + eps).sqrt() * g[ch] + bt[ch]
        })
        .collect();
    (y, mean, var)
}

/// Host outputs of one training batchnorm forward without ReLU.
struct BnTrainOut {
    y: Vec<f32>,
    save_mean: Vec<f32>,
    save_invstd: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

/// `batchnorm_train_forward` (momentum 0.1, no ReLU) of `x` with shape `s`, gamma `gm`, beta `bt` and
/// running statistics starting at `rm0` / `rv0`.
#[allow(clippy::too_many_arguments)]
fn bn_train(
    b: &CpuBackend,
    x: &[f32],
    s: [usize; 4],
    gm: &[f32],
    bt: &[f32],
    rm0: &[f32],
    rv0: &[f32],
    eps: f32,
) -> fmp_engine::Result<BnTrainOut> {
    let c = s[1];
    let (mut rm, mut rv) = (t(b, rm0, &[c]), t(b, rv0, &[c]));
    let (mut sm, mut si, mut y) = (z(b, &[c]), z(b, &[c]), z(b, &s));
    b.batchnorm_train_forward(
        &t(b, x, &s),
        BnLayer::new(&t(b, gm, &[c]), &t(b, bt, &[c]), &mut sm, &mut si, false),
        BnUpdate::new(eps, 0.1, &mut rm, &mut rv),
        Some(&mut y),
    )?;
    Ok(BnTrainOut {
        y: h(b, &y),
        save_mean: h(b, &sm),
        save_invstd: h(b, &si),
        running_mean: h(b, &rm),
        running_var: h(b, &rv),
    })
}

#[test]
fn batchnorm_train_forward_and_running_stats() {
    let b = be();
    let (n, c, hh, ww) = (3, 5, 7, 9);
    let hw = hh * ww;
    let mut r = Rng::new(12);
    let x = r.vec(n * c * hw, -1.0, 3.0);
    let gm = r.vec(c, 0.5, 1.5);
    let bt = r.vec(c, -0.5, 0.5);
    let rm0 = r.vec(c, -0.2, 0.2);
    let rv0 = r.vec(c, 0.5, 1.5);
    let eps = 1e-5;
    let out = bn_train(&b, &x, [n, c, hh, ww], &gm, &bt, &rm0, &rv0, eps).unwrap();
    let (y64, mean, var) = bn64(&f64v(&x), &f64v(&gm), &f64v(&bt), n, c, hw, eps as f64);
    assert_close("bn y", &out.y, &y64, 1e-5);
    assert_close("bn save_mean", &out.save_mean, &mean, 1e-6);
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps as f64).sqrt()).collect();
    assert_close("bn save_invstd", &out.save_invstd, &invstd, 1e-6);
    let m = (n * hw) as f64;
    let want_rm: Vec<f64> = (0..c)
        .map(|i| 0.9 * rm0[i] as f64 + 0.1 * mean[i])
        .collect();
    let want_rv: Vec<f64> = (0..c)
        .map(|i| 0.9 * rv0[i] as f64 + 0.1 * var[i] * m / (m - 1.0))
        .collect();
    assert_close("bn running_mean", &out.running_mean, &want_rm, 1e-6);
    assert_close(
        "bn running_var (unbiased)",
        &out.running_var,
        &want_rv,
        1e-6,
    );
    // A single value per channel is an error (as in PyTorch).
    let r1 = bn_train(&b, &vec![0.0; c], [1, c, 1, 1], &gm, &bt, &rm0, &rv0, eps);
    assert!(matches!(r1, Err(Error::Shape { .. })));
}

/// Channels far from zero relative to their spread (mean 1000 at std 0.01, an outlier as the
/// channel's first element) keep accurate statistics: each channel's mean and 1/std within 1e-6 of
/// the f64 two-pass values, relative to the channel's own scale.
#[test]
fn batchnorm_train_statistics_hold_under_a_large_offset() {
    let b = be();
    let (n, c, hh, ww) = (4, 3, 5, 7);
    let hw = hh * ww;
    let (offset, spread) = ([1000.0f32, -500.0, 0.0], [1e-2f32, 1e-3, 1.0]);
    let mut r = Rng::new(21);
    let mut x = r.vec(n * c * hw, -1.0, 1.0);
    for (i, v) in x.iter_mut().enumerate() {
        let ch = (i / hw) % c;
        *v = offset[ch] + spread[ch] * *v;
    }
    x[hw] = offset[1] + 50.0 * spread[1];
    let (gm, bt) = (vec![1.0f32; c], vec![0.0f32; c]);
    let out = bn_train(
        &b,
        &x,
        [n, c, hh, ww],
        &gm,
        &bt,
        &[0.0; 3],
        &[1.0; 3],
        1e-12,
    )
    .unwrap();
    let (_, mean, var) = bn64(&f64v(&x), &f64v(&gm), &f64v(&bt), n, c, hw, 1e-12);
    let (sm, si) = (out.save_mean, out.save_invstd);
    for ch in 0..c {
        let sd = var[ch].sqrt();
        assert!(
            (sm[ch] as f64 - mean[ch]).abs() <= 1e-6 * (mean[ch].abs() + sd),
            "mean {ch}"
        );
        assert!(
            (si[ch] as f64 * sd - 1.0).abs() <= 1e-6,
            "invstd {ch}: {} against {}",
            si[ch],
            1.0 / sd
        );
    }
}

/// The convolutions that read relu(bn(x)) (the training model's) against the convolution of the
/// batchnorm's output, on every CPU path: the lane layout (16-wide rows, other widths, stride 2 via
/// phase planes, 1x1 at stride 2), the pixel layout (stride 1 and 2) and the GEMM fallback, for
/// the forward and the weight gradient (lane, pixel layout, GEMM).
#[test]
fn conv_bn_is_the_conv_of_the_batchnorm_output() {
    let b = be();
    let mut r = Rng::new(41);
    for p in [
        ConvParams::new(3, 5, 16, 16, 6, 3, 1, 1),
        ConvParams::new(2, 3, 7, 9, 5, 3, 1, 1),
        ConvParams::new(2, 4, 16, 16, 7, 3, 2, 1),
        ConvParams::new(3, 6, 16, 16, 5, 1, 2, 0),
        ConvParams::new(2, 7, 8, 8, 32, 3, 1, 1),
        ConvParams::new(2, 6, 8, 8, 24, 3, 2, 1),
        ConvParams::new(2, 3, 4, 4, 5, 3, 1, 1),
    ] {
        let numel = |s: [usize; 4]| s.iter().product::<usize>();
        let x = r.vec(numel(p.input_shape()), -1.0, 3.0);
        let w = r.vec(numel(p.weight_shape()), -1.0, 1.0);
        let dy = r.vec(numel(p.output_shape()), -1.0, 1.0);
        let c = p.c_in as usize;
        let (gm, bt) = (r.vec(c, 0.5, 1.5), r.vec(c, -0.5, 0.5));
        op_refs::check_conv_bn_fused(&b, &p, &x, &w, &dy, &gm, &bt);
    }
}

#[test]
fn batchnorm_train_relu_fused_is_the_composition() {
    let b = be();
    let s = [3, 5, 7, 9];
    let mut r = Rng::new(31);
    let x = r.vec(s.iter().product(), -1.0, 3.0);
    let dr = r.vec(x.len(), -1.0, 1.0);
    let (gm, bt) = (r.vec(5, 0.5, 1.5), r.vec(5, -0.5, 0.5));
    op_refs::check_bn_relu_fused(&b, &x, &dr, &gm, &bt, s);
}

#[test]
fn batchnorm_train_backward_matches_fd() {
    let b = be();
    let (n, c, hh, ww) = (3, 4, 5, 3);
    let hw = hh * ww;
    let mut r = Rng::new(13);
    let x = r.vec(n * c * hw, -1.0, 2.0);
    let gm = r.vec(c, 0.5, 1.5);
    let bt = r.vec(c, -0.5, 0.5);
    let dy = r.vec(x.len(), -1.0, 1.0);
    let s = [n, c, hh, ww];
    let eps = 1e-5f32;
    let (mut rm, mut rv) = (z(&b, &[c]), z(&b, &[c]));
    let (mut sm, mut si, mut y) = (z(&b, &[c]), z(&b, &[c]), z(&b, &s));
    let xt = t(&b, &x, &s);
    b.batchnorm_train_forward(
        &xt,
        BnLayer::new(
            &t(&b, &gm, &[c]),
            &t(&b, &bt, &[c]),
            &mut sm,
            &mut si,
            false,
        ),
        BnUpdate::new(eps, 0.1, &mut rm, &mut rv),
        Some(&mut y),
    )
    .unwrap();
    let (mut dx, mut dg, mut db) = (z(&b, &s), z(&b, &[c]), z(&b, &[c]));
    b.batchnorm_train_backward(
        &xt,
        &t(&b, &dy, &s),
        BnLayer::new(&t(&b, &gm, &[c]), &t(&b, &bt, &[c]), &sm, &si, false),
        BnGrads::new(&mut dx, &mut dg, &mut db),
    )
    .unwrap();
    let (x64, g64, b64, dy64) = (f64v(&x), f64v(&gm), f64v(&bt), f64v(&dy));
    let loss = |x: &[f64], g: &[f64], bb: &[f64]| {
        bn64(x, g, bb, n, c, hw, eps as f64)
            .0
            .iter()
            .zip(&dy64)
            .map(|(a, b)| a * b)
            .sum::<f64>()
    };
    let fd = |f: &dyn Fn(f64) -> f64| (f(1e-4) - f(-1e-4)) / 2e-4;
    let dxv = h(&b, &dx);
    let fdx: Vec<f64> = (0..x.len())
        .map(|j| {
            fd(&|e| {
                let mut xx = x64.clone();
                xx[j] += e;
                loss(&xx, &g64, &b64)
            })
        })
        .collect();
    assert_close("bn dx", &dxv, &fdx, 1e-4);
    let fdg: Vec<f64> = (0..c)
        .map(|j| {
            fd(&|e| {
                let mut gg = g64.clone();
                gg[j] += e;
                loss(&x64, &gg, &b64)
            })
        })
        .collect();
    assert_close("bn dgamma", &h(&b, &dg), &fdg, 1e-4);
    let want_db: Vec<f64> = (0..c)
        .map(|ch| {
            (0..x.len())
                .filter(|i| (i / hw) % c == ch)
                .map(|i| dy64[i])
                .sum()
        })
        .collect();
    assert_close("bn dbeta", &h(&b, &db), &want_db, 1e-5);
}

// ---- elementwise ---------------------------------------------------------------------------

#[test]
fn relu_and_backward_with_broadcast() {
    let b = be();
    let s = [2, 3, 5, 7];
    let mut r = Rng::new(21);
    let x = r.vec(2 * 105, -1.0, 1.0);
    let mut y = z(&b, &s);
    b.relu(&t(&b, &x, &s), &mut y).unwrap();
    let yv = h(&b, &y);
    assert!(yv.iter().zip(&x).all(|(&a, &v)| a == v.max(0.0)));
    let gs = [6, 3, 5, 7];
    let dy = r.vec(6 * 105, -1.0, 1.0);
    let mut dx = z(&b, &gs);
    b.relu_backward(&y, &t(&b, &dy, &gs), &mut dx).unwrap();
    let dxv = h(&b, &dx);
    for i in 0..dy.len() {
        let saved = yv[((i / 105) % 2) * 105 + i % 105];
        assert_eq!(dxv[i], if saved > 0.0 { dy[i] } else { 0.0 }, "i={i}");
    }
    let mut dx5 = z(&b, &[5, 3, 5, 7]);
    assert!(matches!(
        b.relu_backward(&y, &z(&b, &[5, 3, 5, 7]), &mut dx5),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        b.relu(&t(&b, &x, &s), &mut z(&b, &[2, 3, 7, 5])),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn add_add_assign_mul_assign() {
    let b = be();
    let s = [3, 5, 7, 9];
    let mut r = Rng::new(22);
    let a = r.vec(945, -1.0, 1.0);
    let c = r.vec(945, -1.0, 1.0);
    let mut y = z(&b, &s);
    b.add(&t(&b, &a, &s), &t(&b, &c, &s), &mut y).unwrap();
    assert!(h(&b, &y).iter().enumerate().all(|(i, &v)| v == a[i] + c[i]));
    b.add_assign(&mut y, &t(&b, &c, &s)).unwrap();
    assert!(h(&b, &y)
        .iter()
        .enumerate()
        .all(|(i, &v)| v == (a[i] + c[i]) + c[i]));
    let mut y = t(&b, &a, &s);
    b.mul_assign(&mut y, &t(&b, &c, &s)).unwrap();
    assert!(h(&b, &y).iter().enumerate().all(|(i, &v)| v == a[i] * c[i]));
    assert!(matches!(
        b.add_assign(&mut y, &z(&b, &[3, 5, 9, 7])),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        b.copy(&t(&b, &a, &s), &mut z(&b, &[944])),
        Err(Error::Shape { .. })
    ));
    let mut d = z(&b, &[945]);
    b.copy(&t(&b, &a, &s), &mut d).unwrap();
    assert_eq!(h(&b, &d), a);
    b.fill(&mut d, 2.5).unwrap();
    assert!(h(&b, &d).iter().all(|&v| v == 2.5));
    assert!(b.from_host(&a, &[3, 5]).is_err());
}

#[test]
fn sign_step_broadcast_and_sign_zero() {
    let b = be();
    let s0 = [2, 3, 4, 5];
    let mut r = Rng::new(23);
    let x0 = r.vec(120, 0.0, 1.0);
    let mut g = r.vec(360, -1.0, 1.0);
    for i in (0..360).step_by(7) {
        g[i] = 0.0;
    }
    let gs = [6, 3, 4, 5];
    let eps = 0.03;
    let mut y = z(&b, &gs);
    b.sign_step(&t(&b, &x0, &s0), &t(&b, &g, &gs), eps, &mut y)
        .unwrap();
    let yv = h(&b, &y);
    for i in 0..360 {
        let x = x0[((i / 60) % 2) * 60 + i % 60];
        let sg = if g[i] > 0.0 {
            1.0
        } else if g[i] < 0.0 {
            -1.0
        } else {
            0.0
        };
        assert_eq!(yv[i], (x + eps * sg).clamp(0.0, 1.0), "i={i}");
        if g[i] == 0.0 {
            assert_eq!(yv[i], x);
        }
    }
    assert!(yv.contains(&0.0) && yv.contains(&1.0), "clamping exercised");
    assert!(matches!(
        b.sign_step(
            &t(&b, &x0, &s0),
            &z(&b, &[5, 3, 4, 5]),
            eps,
            &mut z(&b, &[5, 3, 4, 5])
        ),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn sgd_two_steps_by_hand() {
    let b = be();
    let (lr, mom, wd) = (0.1f32, 0.9f32, 0.01f32);
    let mut p = t(&b, &[1.0, -2.0, 0.5], &[3]);
    let mut buf = z(&b, &[3]);
    let g1 = [0.5f32, 0.25, -1.0];
    let g2 = [-0.5f32, 1.0, 0.0];
    b.sgd_step(&mut p, &t(&b, &g1, &[3]), &mut buf, Sgd::new(lr, mom, wd))
        .unwrap();
    // step 1: d = g + wd*p; buf = d; p -= lr*buf
    let p0 = [1.0f64, -2.0, 0.5];
    let d1: Vec<f64> = (0..3).map(|i| g1[i] as f64 + 0.01 * p0[i]).collect();
    let p1: Vec<f64> = (0..3).map(|i| p0[i] - 0.1 * d1[i]).collect();
    assert_close("sgd p1", &h(&b, &p), &p1, 1e-6);
    assert_close("sgd buf1", &h(&b, &buf), &d1, 1e-6);
    b.sgd_step(&mut p, &t(&b, &g2, &[3]), &mut buf, Sgd::new(lr, mom, wd))
        .unwrap();
    let b2: Vec<f64> = (0..3)
        .map(|i| 0.9 * d1[i] + g2[i] as f64 + 0.01 * p1[i])
        .collect();
    let p2: Vec<f64> = (0..3).map(|i| p1[i] - 0.1 * b2[i]).collect();
    assert_close("sgd p2", &h(&b, &p), &p2, 1e-6);
    assert_close("sgd buf2", &h(&b, &buf), &b2, 1e-6);
    // Hand-computed literal for item 0: p1 = 1 - 0.1*(0.5+0.01) = 0.949;
    // buf2 = 0.9*0.51 + (-0.5 + 0.00949) = -0.03151; p2 = 0.949 + 0.003151 = 0.952151.
    assert!((h(&b, &p)[0] - 0.952151).abs() < 1e-6);
    assert!(matches!(
        b.sgd_step(&mut p, &z(&b, &[4]), &mut buf, Sgd::new(lr, mom, wd)),
        Err(Error::Shape { .. })
    ));
}

// ---- pooling, head, losses -----------------------------------------------------------------

#[test]
fn global_avg_pool_and_backward() {
    let b = be();
    let (n, c, hh, ww) = (3, 5, 7, 9);
    let mut r = Rng::new(31);
    let x = r.vec(n * c * hh * ww, -1.0, 1.0);
    let mut y = z(&b, &[n, c]);
    b.global_avg_pool(&t(&b, &x, &[n, c, hh, ww]), &mut y)
        .unwrap();
    let want: Vec<f64> = (0..n * c)
        .map(|i| {
            x[i * 63..(i + 1) * 63]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>()
                / 63.0
        })
        .collect();
    assert_close("gap", &h(&b, &y), &want, 1e-6);
    let dy = r.vec(n * c, -1.0, 1.0);
    let mut dx = z(&b, &[n, c, hh, ww]);
    b.global_avg_pool_backward(&t(&b, &dy, &[n, c]), &mut dx)
        .unwrap();
    let want: Vec<f64> = (0..x.len()).map(|i| dy[i / 63] as f64 / 63.0).collect();
    assert_close("gap bwd", &h(&b, &dx), &want, 1e-6);
    assert!(matches!(
        b.global_avg_pool(&t(&b, &x, &[n, c, hh, ww]), &mut z(&b, &[n, c + 1])),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn linear_forward_and_backward() {
    let b = be();
    let (n, fi, fo) = (5, 13, 7);
    let mut r = Rng::new(32);
    let x = r.vec(n * fi, -1.0, 1.0);
    let w = r.vec(fo * fi, -1.0, 1.0);
    let bias = r.vec(fo, -1.0, 1.0);
    let mut y = z(&b, &[n, fo]);
    b.linear_forward(
        &t(&b, &x, &[n, fi]),
        &t(&b, &w, &[fo, fi]),
        &t(&b, &bias, &[fo]),
        &mut y,
    )
    .unwrap();
    let want = op_refs::linear_forward(&x, &w, &bias, n, fi, fo);
    assert_close("linear fwd", &h(&b, &y), &want, 1e-6);
    let dy = r.vec(n * fo, -1.0, 1.0);
    let mut dx = z(&b, &[n, fi]);
    b.linear_backward_input(&t(&b, &dy, &[n, fo]), &t(&b, &w, &[fo, fi]), &mut dx)
        .unwrap();
    let want = op_refs::linear_backward_input(&dy, &w, n, fi, fo);
    assert_close("linear dx", &h(&b, &dx), &want, 1e-6);
    let (mut dw, mut db) = (z(&b, &[fo, fi]), z(&b, &[fo]));
    b.linear_backward_params(
        &t(&b, &x, &[n, fi]),
        &t(&b, &dy, &[n, fo]),
        &mut dw,
        &mut db,
    )
    .unwrap();
    let (want, want_db) = op_refs::linear_backward_params(&x, &dy, n, fi, fo);
    assert_close("linear dw", &h(&b, &dw), &want, 1e-6);
    assert_close("linear db", &h(&b, &db), &want_db, 1e-6);
    assert!(matches!(
        b.linear_forward(
            &t(&b, &x, &[n, fi]),
            &t(&b, &w[..fo * (fi - 1)], &[fo, fi - 1]),
            &t(&b, &bias, &[fo]),
            &mut y
        ),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn softmax_cross_entropy_matches_f64_and_fd() {
    let b = be();
    let (n, k) = (5, 7);
    let mut r = Rng::new(33);
    let x = r.vec(n * k, -3.0, 3.0);
    let labels = [0u32, 6, 3, 3, 1];
    let lab = b.indices_from_host(&labels).unwrap();
    let (mut loss, mut dl) = (z(&b, &[n]), z(&b, &[n, k]));
    b.softmax_cross_entropy(&t(&b, &x, &[n, k]), &lab, &mut loss, &mut dl)
        .unwrap();
    let ce = |x: &[f64]| -> Vec<f64> {
        (0..n)
            .map(|i| {
                let row = &x[i * k..(i + 1) * k];
                let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
                lse - row[labels[i] as usize]
            })
            .collect()
    };
    let x64 = f64v(&x);
    assert_close("ce loss", &h(&b, &loss), &ce(&x64), 1e-6);
    let mean = |x: &[f64]| ce(x).iter().sum::<f64>() / n as f64;
    let fd: Vec<f64> = (0..x.len())
        .map(|j| {
            let (mut p, mut m) = (x64.clone(), x64.clone());
            p[j] += 1e-5;
            m[j] -= 1e-5;
            (mean(&p) - mean(&m)) / 2e-5
        })
        .collect();
    assert_close("ce dlogits", &h(&b, &dl), &fd, 1e-5);
    let bad = b.indices_from_host(&[0, 7, 1, 1, 1]).unwrap();
    assert!(b
        .softmax_cross_entropy(&t(&b, &x, &[n, k]), &bad, &mut loss, &mut dl)
        .is_err());
    let short = b.indices_from_host(&[0, 1]).unwrap();
    assert!(matches!(
        b.softmax_cross_entropy(&t(&b, &x, &[n, k]), &short, &mut loss, &mut dl),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn channel_mse_and_frg_seed_layout_and_gradient() {
    let b = be();
    let (bb, c, hh, ww) = (3, 5, 7, 9);
    let hw = hh * ww;
    let s = [bb, c, hh, ww];
    let mut r = Rng::new(34);
    let ax = r.vec(bb * c * hw, -1.0, 1.0);
    let ax0 = r.vec(bb * c * hw, -1.0, 1.0);
    let mut loss = z(&b, &[c]);
    b.channel_mse(&t(&b, &ax, &s), &t(&b, &ax0, &s), &mut loss)
        .unwrap();
    let mse = |a: &[f64], a0: &[f64], ch: usize| -> f64 {
        (0..a.len())
            .filter(|i| (i / hw) % c == ch)
            .map(|i| (a[i] - a0[i]).powi(2))
            .sum::<f64>()
            / (bb * hw) as f64
    };
    let (x64, x064) = (f64v(&ax), f64v(&ax0));
    let want: Vec<f64> = (0..c).map(|ch| mse(&x64, &x064, ch)).collect();
    assert_close("channel_mse", &h(&b, &loss), &want, 1e-6);
    // Seeds for channels 1..4 (K = 3): seed[k*B + b] = d mse_c / d a_x0[b, c].
    let (first, kk) = (1, 3);
    let mut seed = z(&b, &[kk * bb, 1, hh, ww]);
    b.frg_seed(&t(&b, &ax, &s), &t(&b, &ax0, &s), first, &mut seed)
        .unwrap();
    let sv = h(&b, &seed);
    let mut fd = vec![0.0f64; sv.len()];
    for k in 0..kk {
        let ch = first + k;
        for i in 0..bb {
            for j in 0..hw {
                let idx = (i * c + ch) * hw + j;
                let (mut p, mut m) = (x064.clone(), x064.clone());
                p[idx] += 1e-5;
                m[idx] -= 1e-5;
                fd[(k * bb + i) * hw + j] = (mse(&x64, &p, ch) - mse(&x64, &m, ch)) / 2e-5;
            }
        }
    }
    assert_close("frg_seed", &sv, &fd, 1e-5);
    assert!(matches!(
        b.frg_seed(&t(&b, &ax, &s), &t(&b, &ax0, &s), 3, &mut seed),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        b.frg_seed(
            &t(&b, &ax, &s),
            &t(&b, &ax0, &s),
            0,
            &mut z(&b, &[7, 1, hh, ww])
        ),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        b.channel_mse(&t(&b, &ax, &s), &t(&b, &ax0, &s), &mut z(&b, &[4])),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn malformed_tensor_buffer_is_an_error_not_a_panic() {
    let b = be();
    let mut x = z(&b, &[2, 3]);
    x.shape = vec![2, 4]; // buffer of 6 for a shape of 8
    let mut y = z(&b, &[2, 4]);
    assert!(matches!(b.relu(&x, &mut y), Err(Error::Shape { .. })));
}

/// Process CPU seconds (user + system) from /proc/self/stat (Linux; None elsewhere).
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Ad-hoc conv throughput: `cargo test --release --test cpu_ops -- --ignored --nocapture conv_gflops`.
/// Prints wall-clock GFLOP/s and GFLOP per CPU-second (per-core efficiency, robust to a busy
/// machine). Set CONV_BATCH to change the batch (default 32).
#[test]
#[ignore]
fn conv_gflops() {
    let b = be();
    let n: usize = std::env::var("CONV_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    println!("{} on {} threads", b.name(), rayon::current_num_threads());
    for (c, hw, k, s) in [
        (64usize, 32usize, 3usize, 1usize),
        (256, 8, 3, 1),
        (128, 16, 3, 1),
        (512, 4, 3, 1),
        (64, 32, 3, 2),
        (64, 32, 1, 2),
    ] {
        let co = if s == 2 { 2 * c } else { c };
        let pad = k / 2;
        let p = ConvParams::new(n, c, hw, hw, co, k, s, pad);
        let mut r = Rng::new(5);
        let x = t(&b, &r.vec(n * c * hw * hw, -1.0, 1.0), &p.input_shape());
        let w = t(&b, &r.vec(co * c * k * k, -0.1, 0.1), &p.weight_shape());
        let dyv = r.vec(p.output_shape().iter().product(), -1.0, 1.0);
        let dy = t(&b, &dyv, &p.output_shape());
        let mut y = z(&b, &p.output_shape());
        let mut dx = z(&b, &p.input_shape());
        let mut dw = z(&b, &p.weight_shape());
        let gf = p.flops() as f64 / 1e9;
        let time = |f: &mut dyn FnMut()| {
            f();
            let (t0, c0) = (std::time::Instant::now(), cpu_seconds());
            let mut reps = 0;
            while reps < 2 || t0.elapsed().as_secs_f64() < 1.0 {
                f();
                reps += 1;
            }
            let wall = t0.elapsed().as_secs_f64() / reps as f64;
            let cpu = cpu_seconds().zip(c0).map(|(a, b)| (a - b) / reps as f64);
            format!(
                "{:6.1} GFLOP/s ({:6.1} per CPU-s)",
                gf / wall,
                cpu.map_or(f64::NAN, |c| gf / c)
            )
        };
        let f = time(&mut || b.conv2d_forward(&p, &x, &w, &mut y).unwrap());
        let i = time(&mut || b.conv2d_input_grad(&p, &dy, &w, &mut dx).unwrap());
        let wg = time(&mut || b.conv2d_weight_grad(&p, &x, &dy, &mut dw).unwrap());
        println!(
            "conv {c}->{co} {k}x{k}/s{s} @{hw}x{hw} batch {n}: fwd {f} | igrad {i} | wgrad {wg}"
        );
    }
}

/// Ad-hoc timings of the non-conv ops at the largest PreActResNet18 activation (batch 32):
/// `cargo test --release --test cpu_ops -- --ignored --nocapture other_op_timings`.
#[test]
#[ignore]
fn other_op_timings() {
    let b = be();
    let s = [32usize, 64, 32, 32];
    let c = s[1];
    let mut r = Rng::new(9);
    let x = t(&b, &r.vec(s.iter().product(), -1.0, 1.0), &s);
    let dy = t(&b, &r.vec(s.iter().product(), -1.0, 1.0), &s);
    let (gm, bt) = (
        t(&b, &r.vec(c, 0.5, 1.5), &[c]),
        t(&b, &r.vec(c, -0.5, 0.5), &[c]),
    );
    let (mut rm, mut rv, mut sm, mut si) = (z(&b, &[c]), z(&b, &[c]), z(&b, &[c]), z(&b, &[c]));
    let (mut y, mut dx, mut dg, mut db) = (z(&b, &s), z(&b, &s), z(&b, &[c]), z(&b, &[c]));
    let time = |name: &str, f: &mut dyn FnMut()| {
        f();
        let t0 = std::time::Instant::now();
        for _ in 0..10 {
            f();
        }
        println!("{name}: {:.2} ms", t0.elapsed().as_secs_f64() * 100.0);
    };
    time("bn_train_forward", &mut || {
        b.batchnorm_train_forward(
            &x,
            BnLayer::new(&gm, &bt, &mut sm, &mut si, false),
            BnUpdate::new(1e-5, 0.1, &mut rm, &mut rv),
            Some(&mut y),
        )
        .unwrap()
    });
    time("bn_train_backward", &mut || {
        b.batchnorm_train_backward(
            &x,
            &dy,
            BnLayer::new(&gm, &bt, &sm, &si, false),
            BnGrads::new(&mut dx, &mut dg, &mut db),
        )
        .unwrap()
    });
    time("channel_affine+relu", &mut || {
        b.channel_affine(&x, &gm, &bt, true, &mut y).unwrap()
    });
    time("channel_affine_backward", &mut || {
        b.channel_affine_backward(Some(&y), &dy, &gm, &mut dx)
            .unwrap()
    });
    time("relu_backward", &mut || {
        b.relu_backward(&y, &dy, &mut dx).unwrap()
    });
    time("add", &mut || b.add(&x, &dy, &mut y).unwrap());
}
