//! Every non-conv kernel of `kernels/*.cu` (the convs: tests/emu_conv_ops.rs), run through the CPU
//! grid emulator with the real launchers of `GpuBackend`, against naive f64 references (forward and
//! backward, small odd shapes, shape errors). `cargo test --features emu emu`.
#![cfg(feature = "emu")]

use fmp_engine::backend::{Backend, BnGrads, BnLayer, BnUpdate, ConvParams, Sgd};
use fmp_engine::error::Error;

mod emu_support;
mod op_refs;
use emu_support::*;

#[test]
fn emu_channel_affine_and_backward() {
    let b = emu();
    let mut r = Rng::new(5);
    let (bs, n, c, h, w) = (2usize, 6usize, 5usize, 3usize, 7usize);
    let hw = h * w;
    let x = r.vec(n * c * hw);
    let scale = r.vec(c);
    let shift = r.vec(c);
    for relu in [false, true] {
        let want: Vec<f64> = (0..x.len())
            .map(|i| {
                let ch = (i / hw) % c;
                let v = x[i] as f64 * scale[ch] as f64 + shift[ch] as f64;
                if relu {
                    v.max(0.0)
                } else {
                    v
                }
            })
            .collect();
        let mut y = b.zeros(&[n, c, h, w]).unwrap();
        b.channel_affine(
            &t(&b, &x, &[n, c, h, w]),
            &t(&b, &scale, &[c]),
            &t(&b, &shift, &[c]),
            relu,
            &mut y,
        )
        .unwrap();
        assert_close("channel_affine", &host(&b, &y), &want, 1e-6);
    }
    // rank-2 input
    let x2 = r.vec(7 * c);
    let mut y2 = b.zeros(&[7, c]).unwrap();
    b.channel_affine(
        &t(&b, &x2, &[7, c]),
        &t(&b, &scale, &[c]),
        &t(&b, &shift, &[c]),
        false,
        &mut y2,
    )
    .unwrap();
    let want2: Vec<f64> = (0..x2.len())
        .map(|i| x2[i] as f64 * scale[i % c] as f64 + shift[i % c] as f64)
        .collect();
    assert_close("channel_affine rank 2", &host(&b, &y2), &want2, 1e-6);

    // backward, with a saved output of batch bs dividing n
    let saved = r.vec(bs * c * hw);
    let dy = r.vec(n * c * hw);
    for masked in [false, true] {
        let want: Vec<f64> = (0..dy.len())
            .map(|i| {
                let ch = (i / hw) % c;
                if masked && saved[i % saved.len()] <= 0.0 {
                    0.0
                } else {
                    dy[i] as f64 * scale[ch] as f64
                }
            })
            .collect();
        let st = t(&b, &saved, &[bs, c, h, w]);
        let mut dx = b.zeros(&[n, c, h, w]).unwrap();
        b.channel_affine_backward(
            masked.then_some(&st),
            &t(&b, &dy, &[n, c, h, w]),
            &t(&b, &scale, &[c]),
            &mut dx,
        )
        .unwrap();
        assert_close("channel_affine_backward", &host(&b, &dx), &want, 1e-6);
    }
    let st = t(&b, &r.vec(4 * c * hw), &[4, c, h, w]);
    let mut dx = b.zeros(&[n, c, h, w]).unwrap();
    assert!(matches!(
        b.channel_affine_backward(
            Some(&st),
            &t(&b, &dy, &[n, c, h, w]),
            &t(&b, &scale, &[c]),
            &mut dx
        ),
        Err(Error::Shape { .. })
    ));
}

/// The conv kernels reading relu(bn(x)) through `BnIn` against the convolution of the batchnorm
/// kernel's output (forward, and the weight gradient direct and split-K), and the
/// statistics-only batchnorm.
#[test]
fn emu_conv_bn_is_the_conv_of_the_batchnorm_output() {
    let b = emu();
    let mut r = Rng::new(42);
    for p in [
        ConvParams::new(2, 3, 6, 5, 4, 3, 1, 1),
        ConvParams::new(2, 5, 7, 7, 6, 3, 2, 1),
        ConvParams::new(3, 4, 6, 6, 9, 1, 2, 0),
        ConvParams::new(40, 2, 8, 8, 3, 3, 1, 1),
    ] {
        let numel = |s: [usize; 4]| s.iter().product::<usize>();
        let x: Vec<f32> = r
            .vec(numel(p.input_shape()))
            .iter()
            .map(|v| v * 2.0 + 0.5)
            .collect();
        let w = r.vec(numel(p.weight_shape()));
        let dy = r.vec(numel(p.output_shape()));
        let c = p.c_in as usize;
        let gm: Vec<f32> = r.vec(c).iter().map(|v| v.abs() + 0.5).collect();
        let bt = r.vec(c);
        op_refs::check_conv_bn_fused(&b, &p, &x, &w, &dy, &gm, &bt);
    }
}

#[test]
fn emu_batchnorm_train_relu_fused_is_the_composition() {
    let b = emu();
    let mut r = Rng::new(32);
    for s in [[3usize, 5, 7, 6], [2, 70, 4, 4]] {
        let x: Vec<f32> = r
            .vec(s.iter().product())
            .iter()
            .map(|v| v * 2.0 + 0.5)
            .collect();
        let dr = r.vec(x.len());
        let gm: Vec<f32> = r.vec(s[1]).iter().map(|v| v.abs() + 0.5).collect();
        let bt = r.vec(s[1]);
        op_refs::check_bn_relu_fused(&b, &x, &dr, &gm, &bt, s);
    }
}

#[test]
fn emu_batchnorm_train_forward_backward() {
    let b = emu();
    let mut r = Rng::new(6);
    for (n, c, h, w) in [
        (3usize, 5usize, 7usize, 6usize),
        (4, 3, 11, 13),
        (2, 7, 1, 1),
    ] {
        let hw = h * w;
        let cnt = (n * hw) as f64;
        let x: Vec<f32> = r.vec(n * c * hw).iter().map(|v| v * 2.0 + 0.5).collect();
        let gamma = r.vec(c);
        let beta = r.vec(c);
        let rm0 = r.vec(c);
        let rv0: Vec<f32> = r.vec(c).iter().map(|v| v.abs() + 0.5).collect();
        let dy = r.vec(x.len());
        let (eps, mom) = (1e-5f32, 0.1f32);
        let idx = |bi: usize, ch: usize, j: usize| (bi * c + ch) * hw + j;
        let mut mean = vec![0.0f64; c];
        let mut var = vec![0.0f64; c];
        for ch in 0..c {
            let vals: Vec<f64> = (0..n)
                .flat_map(|bi| (0..hw).map(move |j| (bi, j)))
                .map(|(bi, j)| x[idx(bi, ch, j)] as f64)
                .collect();
            mean[ch] = vals.iter().sum::<f64>() / cnt;
            var[ch] = vals.iter().map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / cnt;
        }
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps as f64).sqrt()).collect();
        let mut y_ref = vec![0.0; x.len()];
        let mut dx_ref = vec![0.0; x.len()];
        let mut dg_ref = vec![0.0; c];
        let mut db_ref = vec![0.0; c];
        for ch in 0..c {
            for bi in 0..n {
                for j in 0..hw {
                    let i = idx(bi, ch, j);
                    let xh = (x[i] as f64 - mean[ch]) * invstd[ch];
                    y_ref[i] = xh * gamma[ch] as f64 + beta[ch] as f64;
                    dg_ref[ch] += dy[i] as f64 * xh;
                    db_ref[ch] += dy[i] as f64;
                }
            }
            for bi in 0..n {
                for j in 0..hw {
                    let i = idx(bi, ch, j);
                    let xh = (x[i] as f64 - mean[ch]) * invstd[ch];
                    dx_ref[i] = gamma[ch] as f64 * invstd[ch] / cnt
                        * (cnt * dy[i] as f64 - db_ref[ch] - xh * dg_ref[ch]);
                }
            }
        }
        let unb = |ch: usize| {
            if cnt > 1.0 {
                var[ch] * cnt / (cnt - 1.0)
            } else {
                var[ch]
            }
        };
        let rm_ref: Vec<f64> = (0..c)
            .map(|ch| (1.0 - mom as f64) * rm0[ch] as f64 + mom as f64 * mean[ch])
            .collect();
        let rv_ref: Vec<f64> = (0..c)
            .map(|ch| (1.0 - mom as f64) * rv0[ch] as f64 + mom as f64 * unb(ch))
            .collect();

        let shape = [n, c, h, w];
        let xt = t(&b, &x, &shape);
        let (gt, bt) = (t(&b, &gamma, &[c]), t(&b, &beta, &[c]));
        let (mut rm, mut rv) = (t(&b, &rm0, &[c]), t(&b, &rv0, &[c]));
        let (mut sm, mut si, mut y) = (
            b.zeros(&[c]).unwrap(),
            b.zeros(&[c]).unwrap(),
            b.zeros(&shape).unwrap(),
        );
        b.batchnorm_train_forward(
            &xt,
            BnLayer::new(&gt, &bt, &mut sm, &mut si, false),
            BnUpdate::new(eps, mom, &mut rm, &mut rv),
            Some(&mut y),
        )
        .unwrap();
        assert_close("bn y", &host(&b, &y), &y_ref, 1e-5);
        assert_close("bn save_mean", &host(&b, &sm), &mean, 1e-6);
        assert_close("bn save_invstd", &host(&b, &si), &invstd, 1e-5);
        assert_close("bn running_mean", &host(&b, &rm), &rm_ref, 1e-6);
        assert_close("bn running_var", &host(&b, &rv), &rv_ref, 1e-5);

        let (mut dx, mut dg, mut db) = (
            b.zeros(&shape).unwrap(),
            b.zeros(&[c]).unwrap(),
            b.zeros(&[c]).unwrap(),
        );
        b.batchnorm_train_backward(
            &xt,
            &t(&b, &dy, &shape),
            BnLayer::new(&gt, &bt, &sm, &si, false),
            BnGrads::new(&mut dx, &mut dg, &mut db),
        )
        .unwrap();
        assert_close("bn dx", &host(&b, &dx), &dx_ref, 1e-4);
        assert_close("bn dgamma", &host(&b, &dg), &dg_ref, 1e-5);
        assert_close("bn dbeta", &host(&b, &db), &db_ref, 1e-5);
    }
}

#[test]
fn emu_elementwise_ops() {
    let b = emu();
    let mut r = Rng::new(7);
    let shape = [3usize, 5, 7, 11];
    let n: usize = shape.iter().product();
    let (x, y0, m) = (r.vec(n), r.vec(n), r.vec(n));
    let xt = t(&b, &x, &shape);

    let mut y = b.zeros(&shape).unwrap();
    b.relu(&xt, &mut y).unwrap();
    assert_close(
        "relu",
        &host(&b, &y),
        &x.iter().map(|&v| v.max(0.0) as f64).collect::<Vec<_>>(),
        0.0,
    );

    let saved = r.vec(n / 3);
    let mut dx = b.zeros(&shape).unwrap();
    b.relu_backward(&t(&b, &saved, &[1, 5, 7, 11]), &xt, &mut dx)
        .unwrap();
    let want: Vec<f64> = (0..n)
        .map(|i| {
            if saved[i % saved.len()] > 0.0 {
                x[i] as f64
            } else {
                0.0
            }
        })
        .collect();
    assert_close("relu_backward", &host(&b, &dx), &want, 0.0);

    let mut s = b.zeros(&shape).unwrap();
    b.add(&xt, &t(&b, &y0, &shape), &mut s).unwrap();
    assert_close(
        "add",
        &host(&b, &s),
        &(0..n).map(|i| (x[i] + y0[i]) as f64).collect::<Vec<_>>(),
        0.0,
    );

    let mut acc = t(&b, &y0, &shape);
    b.add_assign(&mut acc, &xt).unwrap();
    assert_close(
        "add_assign",
        &host(&b, &acc),
        &(0..n).map(|i| (y0[i] + x[i]) as f64).collect::<Vec<_>>(),
        0.0,
    );

    let mut prod = t(&b, &y0, &shape);
    b.mul_assign(&mut prod, &t(&b, &m, &shape)).unwrap();
    assert_close(
        "mul_assign",
        &host(&b, &prod),
        &(0..n).map(|i| (y0[i] * m[i]) as f64).collect::<Vec<_>>(),
        0.0,
    );

    let mut f = b.zeros(&[n]).unwrap();
    b.fill(&mut f, -2.5).unwrap();
    assert_close("fill", &host(&b, &f), &vec![-2.5; n], 0.0);

    let mut cp = b.zeros(&[n / 5, 5]).unwrap();
    b.copy(&xt, &mut cp).unwrap();
    assert_close(
        "copy",
        &host(&b, &cp),
        &x.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        0.0,
    );

    let mut bad = b.zeros(&[3, 5, 7, 10]).unwrap();
    assert!(matches!(b.relu(&xt, &mut bad), Err(Error::Shape { .. })));
    assert!(matches!(
        b.add_assign(&mut bad, &xt),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn emu_pool_and_linear() {
    let b = emu();
    let mut r = Rng::new(8);
    let (n, c, h, w) = (3usize, 11usize, 5usize, 7usize);
    let hw = h * w;
    let x = r.vec(n * c * hw);
    let mut y = b.zeros(&[n, c]).unwrap();
    b.global_avg_pool(&t(&b, &x, &[n, c, h, w]), &mut y)
        .unwrap();
    let want: Vec<f64> = (0..n * c)
        .map(|row| {
            x[row * hw..(row + 1) * hw]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>()
                / hw as f64
        })
        .collect();
    assert_close("global_avg_pool", &host(&b, &y), &want, 1e-6);
    let dy = r.vec(n * c);
    let mut dx = b.zeros(&[n, c, h, w]).unwrap();
    b.global_avg_pool_backward(&t(&b, &dy, &[n, c]), &mut dx)
        .unwrap();
    let want: Vec<f64> = (0..n * c * hw)
        .map(|i| dy[i / hw] as f64 / hw as f64)
        .collect();
    assert_close("global_avg_pool_backward", &host(&b, &dx), &want, 1e-6);

    for (n, i, o) in [(5usize, 37usize, 11usize), (2, 512, 10), (9, 3, 43)] {
        let x = r.vec(n * i);
        let w = r.vec(o * i);
        let bias = r.vec(o);
        let dy = r.vec(n * o);
        let mut y = b.zeros(&[n, o]).unwrap();
        let (xt, wt) = (t(&b, &x, &[n, i]), t(&b, &w, &[o, i]));
        b.linear_forward(&xt, &wt, &t(&b, &bias, &[o]), &mut y)
            .unwrap();
        let want = op_refs::linear_forward(&x, &w, &bias, n, i, o);
        assert_close("linear_forward", &host(&b, &y), &want, 1e-5);

        let dyt = t(&b, &dy, &[n, o]);
        let mut dx = b.zeros(&[n, i]).unwrap();
        b.linear_backward_input(&dyt, &wt, &mut dx).unwrap();
        let want = op_refs::linear_backward_input(&dy, &w, n, i, o);
        assert_close("linear_backward_input", &host(&b, &dx), &want, 1e-5);

        let (mut dw, mut db) = (b.zeros(&[o, i]).unwrap(), b.zeros(&[o]).unwrap());
        b.linear_backward_params(&xt, &dyt, &mut dw, &mut db)
            .unwrap();
        let (want, want_db) = op_refs::linear_backward_params(&x, &dy, n, i, o);
        assert_close("linear_backward_params dw", &host(&b, &dw), &want, 1e-5);
        assert_close("linear_backward_params db", &host(&b, &db), &want_db, 1e-5);
    }
}

#[test]
fn emu_softmax_cross_entropy() {
    let b = emu();
    let mut r = Rng::new(9);
    for (n, k) in [(9usize, 43usize), (37, 10), (3, 100)] {
        let logits: Vec<f32> = r.vec(n * k).iter().map(|v| v * 6.0).collect();
        let labels: Vec<u32> = (0..n).map(|_| (r.next() % k as u64) as u32).collect();
        let mut loss = b.zeros(&[n]).unwrap();
        let mut dl = b.zeros(&[n, k]).unwrap();
        b.softmax_cross_entropy(
            &t(&b, &logits, &[n, k]),
            &b.indices_from_host(&labels).unwrap(),
            &mut loss,
            &mut dl,
        )
        .unwrap();
        let mut want_loss = vec![0.0; n];
        let mut want_dl = vec![0.0; n * k];
        for s in 0..n {
            let row = &logits[s * k..(s + 1) * k];
            let m = row.iter().fold(f64::MIN, |a, &v| a.max(v as f64));
            let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            want_loss[s] = z.ln() + m - row[labels[s] as usize] as f64;
            for j in 0..k {
                want_dl[s * k + j] = ((row[j] as f64 - m).exp() / z
                    - if j == labels[s] as usize { 1.0 } else { 0.0 })
                    / n as f64;
            }
        }
        assert_close(
            "softmax_cross_entropy loss",
            &host(&b, &loss),
            &want_loss,
            1e-5,
        );
        assert_close(
            "softmax_cross_entropy dlogits",
            &host(&b, &dl),
            &want_dl,
            1e-6,
        );
    }
}

#[test]
fn emu_channel_mse_frg_seed_sign_sgd() {
    let b = emu();
    let mut r = Rng::new(10);
    let (bs, c, h, w) = (3usize, 6usize, 5usize, 7usize);
    let hw = h * w;
    let shape = [bs, c, h, w];
    let (ax, ax0) = (r.vec(bs * c * hw), r.vec(bs * c * hw));
    let (axt, ax0t) = (t(&b, &ax, &shape), t(&b, &ax0, &shape));
    let mut loss = b.zeros(&[c]).unwrap();
    b.channel_mse(&axt, &ax0t, &mut loss).unwrap();
    let want: Vec<f64> = (0..c)
        .map(|ch| {
            (0..bs)
                .flat_map(|s| (0..hw).map(move |j| (s * c + ch) * hw + j))
                .map(|i| (ax[i] as f64 - ax0[i] as f64).powi(2))
                .sum::<f64>()
                / (bs * hw) as f64
        })
        .collect();
    assert_close("channel_mse", &host(&b, &loss), &want, 1e-6);

    let (kc, first) = (3usize, 2usize);
    let mut seed = b.zeros(&[kc * bs, 1, h, w]).unwrap();
    b.frg_seed(&axt, &ax0t, first, &mut seed).unwrap();
    let scale = 2.0 / (bs * hw) as f64;
    let want: Vec<f64> = (0..kc * bs * hw)
        .map(|i| {
            let (k, s, j) = (i / (bs * hw), i / hw % bs, i % hw);
            let src = (s * c + first + k) * hw + j;
            scale * (ax0[src] as f64 - ax[src] as f64)
        })
        .collect();
    assert_close("frg_seed", &host(&b, &seed), &want, 1e-6);
    let mut bad = b.zeros(&[5 * bs, 1, h, w]).unwrap();
    assert!(matches!(
        b.frg_seed(&axt, &ax0t, 2, &mut bad),
        Err(Error::Shape { .. })
    ));

    // sign step with x0 broadcast over a batch of 2*bs, including exact zeros in g
    let x0: Vec<f32> = r.vec(bs * 3 * hw).iter().map(|v| v.abs()).collect();
    let mut g = r.vec(2 * bs * 3 * hw);
    for v in g.iter_mut().step_by(7) {
        *v = 0.0;
    }
    let mut y = b.zeros(&[2 * bs, 3, h, w]).unwrap();
    b.sign_step(
        &t(&b, &x0, &[bs, 3, h, w]),
        &t(&b, &g, &[2 * bs, 3, h, w]),
        0.3,
        &mut y,
    )
    .unwrap();
    let want: Vec<f64> = (0..g.len())
        .map(|i| {
            (x0[i % x0.len()]
                + 0.3
                    * if g[i] > 0.0 {
                        1.0
                    } else if g[i] < 0.0 {
                        -1.0
                    } else {
                        0.0
                    })
            .clamp(0.0, 1.0) as f64
        })
        .collect();
    assert_close("sign_step", &host(&b, &y), &want, 1e-7);

    let n = 1000;
    let (p0, gr, buf0) = (r.vec(n), r.vec(n), r.vec(n));
    let (mut p, mut buf) = (t(&b, &p0, &[n]), t(&b, &buf0, &[n]));
    b.sgd_step(
        &mut p,
        &t(&b, &gr, &[n]),
        &mut buf,
        Sgd::new(0.05, 0.9, 5e-4),
    )
    .unwrap();
    let bw: Vec<f64> = (0..n)
        .map(|i| 0.9 * buf0[i] as f64 + gr[i] as f64 + 5e-4 * p0[i] as f64)
        .collect();
    let pw: Vec<f64> = (0..n).map(|i| p0[i] as f64 - 0.05 * bw[i]).collect();
    assert_close("sgd buf", &host(&b, &buf), &bw, 1e-6);
    assert_close("sgd param", &host(&b, &p), &pw, 1e-6);
}

/// The kernels must not depend on the order in which the threads of a block run between
/// barriers: shuffled orders give bit-identical results.
#[test]
fn emu_shape_errors_and_wrong_inputs() {
    let b = emu();
    let p = ConvParams::new(2, 3, 8, 8, 4, 3, 1, 1);
    let x = b.zeros(&p.input_shape()).unwrap();
    let w = b.zeros(&[4, 3, 3, 2]).unwrap();
    let mut y = b.zeros(&p.output_shape()).unwrap();
    assert!(matches!(
        b.conv2d_forward(&p, &x, &w, &mut y),
        Err(Error::Shape { .. })
    ));
    let mut bad = p;
    bad.h_out = 7;
    let w = b.zeros(&p.weight_shape()).unwrap();
    assert!(matches!(
        b.conv2d_forward(&bad, &x, &w, &mut y),
        Err(Error::Shape { .. })
    ));
    let mut lin = b.zeros(&[2, 3]).unwrap();
    assert!(matches!(
        b.linear_forward(
            &b.zeros(&[2, 5]).unwrap(),
            &b.zeros(&[3, 4]).unwrap(),
            &b.zeros(&[3]).unwrap(),
            &mut lin
        ),
        Err(Error::Shape { .. })
    ));
}
