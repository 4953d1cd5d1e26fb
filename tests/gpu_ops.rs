//! Every backend op, CUDA against the CPU reference, forward and backward, on seeded random
//! non-zero inputs whose sizes are not multiples of the kernels' block/tile sizes, plus every
//! PreActResNet18 conv shape. Skips with a printed reason when there is no usable GPU.
mod gpu_support;

use fmp_engine::backend::{Backend, BnGrads, BnLayer, BnUpdate, ConvParams, Sgd};
use fmp_engine::bench::count::Arch;
use gpu_support::*;

/// Normalised tolerances: long fp32 reductions (convs, GEMMs) vs short/elementwise ops.
const TOL_REDUCE: f64 = 2e-4;
const TOL_ELEM: f64 = 1e-5;

fn conv_case(test: &str, g: &dyn Backend, p: ConvParams, seed: u64) {
    let mut r = Rng::new(seed);
    let x = r.nonzero(p.input_shape().iter().product(), -1.0, 1.0);
    let w = r.nonzero(p.weight_shape().iter().product(), -0.5, 0.5);
    let dy = r.nonzero(p.output_shape().iter().product(), -1.0, 1.0);
    let name = format!("{test} {p:?}");
    compare(&name, g, TOL_REDUCE, |b| {
        let xt = up(b, &x, &p.input_shape());
        let wt = up(b, &w, &p.weight_shape());
        let dyt = up(b, &dy, &p.output_shape());
        let mut y = out(b, &p.output_shape());
        b.conv2d_forward(&p, &xt, &wt, &mut y).unwrap();
        let mut dx = out(b, &p.input_shape());
        b.conv2d_input_grad(&p, &dyt, &wt, &mut dx).unwrap();
        let mut dw = out(b, &p.weight_shape());
        b.conv2d_weight_grad(&p, &xt, &dyt, &mut dw).unwrap();
        vec![
            ("conv2d_forward", down(b, &y)),
            ("conv2d_input_grad", down(b, &dx)),
            ("conv2d_weight_grad", down(b, &dw)),
        ]
    });
}

/// One-hot input gradient: K filters starting at `first`, `group` items each.
fn onehot_case(
    test: &str,
    g: &dyn Backend,
    p1: ConvParams,
    first: usize,
    k: usize,
    group: usize,
    seed: u64,
) {
    let p = p1.with_batch(k * group);
    let mut r = Rng::new(seed);
    let w = r.nonzero(p.weight_shape().iter().product(), -0.5, 0.5);
    let seed_shape = [k * group, 1, p.h_out as usize, p.w_out as usize];
    let s = r.nonzero(seed_shape.iter().product(), -1.0, 1.0);
    let name = format!("{test} {p:?} first {first} k {k} group {group}");
    compare(&name, g, TOL_REDUCE, |b| {
        let wt = up(b, &w, &p.weight_shape());
        let st = up(b, &s, &seed_shape);
        let mut dx = out(b, &p.input_shape());
        b.conv2d_input_grad_onehot(&p, &st, &wt, first, group, &mut dx)
            .unwrap();
        vec![("conv2d_input_grad_onehot", down(b, &dx))]
    });
    // And on the GPU alone: equal to the full input gradient of the one-hot-expanded cotangent.
    let hw = (p.h_out * p.w_out) as usize;
    let co = p.c_out as usize;
    let mut full = vec![0f32; k * group * co * hw];
    for i in 0..k * group {
        let c = first + i / group;
        full[(i * co + c) * hw..(i * co + c + 1) * hw].copy_from_slice(&s[i * hw..(i + 1) * hw]);
    }
    let b = g;
    let wt = up(b, &w, &p.weight_shape());
    let (st, ft) = (up(b, &s, &seed_shape), up(b, &full, &p.output_shape()));
    let (mut a, mut c) = (out(b, &p.input_shape()), out(b, &p.input_shape()));
    b.conv2d_input_grad_onehot(&p, &st, &wt, first, group, &mut a)
        .unwrap();
    b.conv2d_input_grad(&p, &ft, &wt, &mut c).unwrap();
    assert_close(
        &format!("{name}: onehot vs full (GPU)"),
        &down(b, &a),
        &down(b, &c),
        TOL_REDUCE,
    );
}

#[test]
fn gpu_conv_every_resnet18_layer_shape() {
    let Some(g) = gpu("gpu_conv_every_resnet18_layer_shape") else {
        return;
    };
    for (i, (name, p)) in Arch::preact_resnet18(64, 10)
        .convs()
        .into_iter()
        .enumerate()
    {
        conv_case(
            &format!("gpu_conv {name}"),
            g,
            p.with_batch(3),
            100 + i as u64,
        );
    }
}

#[test]
fn gpu_conv_odd_shapes() {
    let Some(g) = gpu("gpu_conv_odd_shapes") else {
        return;
    };
    let cases = [
        ConvParams::new(2, 5, 13, 11, 7, 3, 2, 1),
        ConvParams::new(1, 3, 7, 9, 70, 1, 1, 0),
        ConvParams::new(3, 17, 9, 9, 65, 5, 1, 2),
        ConvParams::new(2, 67, 6, 5, 33, 3, 1, 1),
        ConvParams::new(5, 1, 1, 1, 1, 1, 1, 0),
        ConvParams::new(2, 8, 31, 17, 130, 3, 2, 0),
        ConvParams::new(1, 129, 5, 5, 3, 3, 1, 1),
        ConvParams::new(7, 3, 33, 33, 64, 3, 1, 1),
    ];
    for (i, p) in cases.into_iter().enumerate() {
        conv_case("gpu_conv_odd", g, p, 200 + i as u64);
    }
}

#[test]
fn gpu_conv_onehot_input_grad() {
    let Some(g) = gpu("gpu_conv_onehot_input_grad") else {
        return;
    };
    let convs = Arch::preact_resnet18(64, 10).convs();
    // A stem, a strided, a 1x1 shortcut and a deep conv, plus odd shapes.
    for (i, idx) in [0usize, 6, 7, 19].into_iter().enumerate() {
        let p = convs[idx].1;
        let co = p.c_out as usize;
        onehot_case(
            &format!("gpu_onehot {}", convs[idx].0),
            g,
            p,
            co - 5,
            5,
            3,
            300 + i as u64,
        );
    }
    onehot_case(
        "gpu_onehot odd",
        g,
        ConvParams::new(1, 7, 11, 13, 19, 3, 2, 1),
        2,
        17,
        2,
        310,
    );
    onehot_case(
        "gpu_onehot odd",
        g,
        ConvParams::new(1, 33, 9, 7, 5, 5, 1, 2),
        0,
        5,
        7,
        311,
    );
}

#[test]
fn gpu_channel_affine_and_backward() {
    let Some(g) = gpu("gpu_channel_affine_and_backward") else {
        return;
    };
    let shape = [3usize, 7, 5, 9];
    let n: usize = shape.iter().product();
    let mut r = Rng::new(400);
    let x = r.nonzero(n, -2.0, 2.0);
    let scale = r.nonzero(7, -1.5, 1.5);
    let shift = r.nonzero(7, -0.5, 0.5);
    let dy = r.nonzero(n, -1.0, 1.0);
    for relu in [false, true] {
        compare(
            &format!("gpu_channel_affine relu={relu}"),
            g,
            TOL_ELEM,
            |b| {
                let (xt, st, ht) = (up(b, &x, &shape), up(b, &scale, &[7]), up(b, &shift, &[7]));
                let mut y = out(b, &shape);
                b.channel_affine(&xt, &st, &ht, relu, &mut y).unwrap();
                let dyt = up(b, &dy, &shape);
                let mut dx = out(b, &shape);
                b.channel_affine_backward(if relu { Some(&y) } else { None }, &dyt, &st, &mut dx)
                    .unwrap();
                vec![
                    ("channel_affine", down(b, &y)),
                    ("channel_affine_backward", down(b, &dx)),
                ]
            },
        );
    }
    // Saved output with batch 1 broadcast over a gradient batch of 3.
    let saved = r.nonzero(n / 3, -1.0, 1.0);
    compare("gpu_channel_affine_backward broadcast", g, TOL_ELEM, |b| {
        let (ys, dyt, st) = (
            up(b, &saved, &[1, 7, 5, 9]),
            up(b, &dy, &shape),
            up(b, &scale, &[7]),
        );
        let mut dx = out(b, &shape);
        b.channel_affine_backward(Some(&ys), &dyt, &st, &mut dx)
            .unwrap();
        vec![("channel_affine_backward", down(b, &dx))]
    });
}

#[test]
fn gpu_batchnorm_train_forward_backward() {
    let Some(g) = gpu("gpu_batchnorm_train_forward_backward") else {
        return;
    };
    for (i, shape) in [[4usize, 6, 5, 7], [2, 130, 3, 3], [9, 64, 32, 32]]
        .into_iter()
        .enumerate()
    {
        let n: usize = shape.iter().product();
        let c = shape[1];
        let mut r = Rng::new(500 + i as u64);
        let x: Vec<f32> = r.nonzero(n, -2.0, 3.0);
        let gamma = r.nonzero(c, 0.5, 1.5);
        let beta = r.nonzero(c, -0.5, 0.5);
        let rm = r.nonzero(c, -0.1, 0.1);
        let rv = r.nonzero(c, 0.5, 1.5);
        let dy = r.nonzero(n, -1.0, 1.0);
        compare(&format!("gpu_batchnorm {shape:?}"), g, 1e-4, |b| {
            let (xt, gt, bt) = (up(b, &x, &shape), up(b, &gamma, &[c]), up(b, &beta, &[c]));
            let (mut rmt, mut rvt) = (up(b, &rm, &[c]), up(b, &rv, &[c]));
            let (mut sm, mut si, mut y) = (out(b, &[c]), out(b, &[c]), out(b, &shape));
            b.batchnorm_train_forward(
                &xt,
                BnLayer::new(&gt, &bt, &mut sm, &mut si, false),
                BnUpdate::new(1e-5, 0.1, &mut rmt, &mut rvt),
                Some(&mut y),
            )
            .unwrap();
            let dyt = up(b, &dy, &shape);
            let (mut dx, mut dg, mut db) = (out(b, &shape), out(b, &[c]), out(b, &[c]));
            b.batchnorm_train_backward(
                &xt,
                &dyt,
                BnLayer::new(&gt, &bt, &sm, &si, false),
                BnGrads::new(&mut dx, &mut dg, &mut db),
            )
            .unwrap();
            vec![
                ("y", down(b, &y)),
                ("running_mean", down(b, &rmt)),
                ("running_var", down(b, &rvt)),
                ("save_mean", down(b, &sm)),
                ("save_invstd", down(b, &si)),
                ("dx", down(b, &dx)),
                ("dgamma", down(b, &dg)),
                ("dbeta", down(b, &db)),
            ]
        });
    }
}

#[test]
fn gpu_elementwise_ops() {
    let Some(g) = gpu("gpu_elementwise_ops") else {
        return;
    };
    let shape = [6usize, 7, 41, 41]; // 70,602 elements: not a multiple of 256
    let saved_shape = [2usize, 7, 41, 41];
    let n: usize = shape.iter().product();
    let mut r = Rng::new(600);
    let a = r.nonzero(n, -1.0, 1.0);
    let c = r.nonzero(n, -1.0, 1.0);
    let m: Vec<f32> = (0..n)
        .map(|_| if r.next() < 0.3 { 0.0 } else { 1.0 })
        .collect();
    let saved = r.nonzero(n / 3, -1.0, 1.0);
    compare("gpu_elementwise", g, 0.0, |b| {
        let (at, ct, mt) = (up(b, &a, &shape), up(b, &c, &shape), up(b, &m, &shape));
        let mut y = out(b, &shape);
        b.relu(&at, &mut y).unwrap();
        let relu = down(b, &y);
        let st = up(b, &saved, &saved_shape);
        let mut dx = out(b, &shape);
        b.relu_backward(&st, &ct, &mut dx).unwrap();
        let relu_bwd = down(b, &dx);
        let mut s = out(b, &shape);
        b.add(&at, &ct, &mut s).unwrap();
        let add = down(b, &s);
        b.add_assign(&mut s, &at).unwrap();
        let add_assign = down(b, &s);
        b.mul_assign(&mut s, &mt).unwrap();
        let mul_assign = down(b, &s);
        let mut cp = out(b, &[n]);
        b.copy(&at, &mut cp).unwrap();
        let copy = down(b, &cp);
        b.fill(&mut cp, -0.375).unwrap();
        let fill = down(b, &cp);
        vec![
            ("relu", relu),
            ("relu_backward", relu_bwd),
            ("add", add),
            ("add_assign", add_assign),
            ("mul_assign", mul_assign),
            ("copy", copy),
            ("fill", fill),
        ]
    });
}

#[test]
fn gpu_pool_and_linear() {
    let Some(g) = gpu("gpu_pool_and_linear") else {
        return;
    };
    let mut r = Rng::new(700);
    let (n, c, hw) = (5usize, 67usize, 5usize);
    let x = r.nonzero(n * c * hw * hw, -1.0, 1.0);
    let dp = r.nonzero(n * c, -1.0, 1.0);
    let (fi, fo) = (513usize, 11usize);
    let xl = r.nonzero(n * fi, -1.0, 1.0);
    let w = r.nonzero(fo * fi, -0.2, 0.2);
    let bias = r.nonzero(fo, -0.5, 0.5);
    let dy = r.nonzero(n * fo, -1.0, 1.0);
    compare("gpu_pool_linear", g, TOL_REDUCE, |b| {
        let xt = up(b, &x, &[n, c, hw, hw]);
        let mut p = out(b, &[n, c]);
        b.global_avg_pool(&xt, &mut p).unwrap();
        let dpt = up(b, &dp, &[n, c]);
        let mut dx = out(b, &[n, c, hw, hw]);
        b.global_avg_pool_backward(&dpt, &mut dx).unwrap();
        let (xlt, wt, bt, dyt) = (
            up(b, &xl, &[n, fi]),
            up(b, &w, &[fo, fi]),
            up(b, &bias, &[fo]),
            up(b, &dy, &[n, fo]),
        );
        let mut y = out(b, &[n, fo]);
        b.linear_forward(&xlt, &wt, &bt, &mut y).unwrap();
        let mut dxl = out(b, &[n, fi]);
        b.linear_backward_input(&dyt, &wt, &mut dxl).unwrap();
        let (mut dw, mut db) = (out(b, &[fo, fi]), out(b, &[fo]));
        b.linear_backward_params(&xlt, &dyt, &mut dw, &mut db)
            .unwrap();
        vec![
            ("global_avg_pool", down(b, &p)),
            ("global_avg_pool_backward", down(b, &dx)),
            ("linear_forward", down(b, &y)),
            ("linear_backward_input", down(b, &dxl)),
            ("linear_backward_params dw", down(b, &dw)),
            ("linear_backward_params db", down(b, &db)),
        ]
    });
}

#[test]
fn gpu_softmax_cross_entropy() {
    let Some(g) = gpu("gpu_softmax_cross_entropy") else {
        return;
    };
    for (i, (n, k)) in [(7usize, 10usize), (3, 100), (33, 43)]
        .into_iter()
        .enumerate()
    {
        let mut r = Rng::new(800 + i as u64);
        let logits = r.nonzero(n * k, -6.0, 6.0);
        let labels: Vec<u32> = (0..n).map(|_| r.below(k as u32)).collect();
        compare(
            &format!("gpu_softmax_ce n={n} k={k}"),
            g,
            TOL_ELEM * 10.0,
            |b| {
                let lt = up(b, &logits, &[n, k]);
                let lab = b.indices_from_host(&labels).unwrap();
                let (mut loss, mut dl) = (out(b, &[n]), out(b, &[n, k]));
                b.softmax_cross_entropy(&lt, &lab, &mut loss, &mut dl)
                    .unwrap();
                vec![("loss", down(b, &loss)), ("dlogits", down(b, &dl))]
            },
        );
    }
}

#[test]
fn gpu_frg_ops() {
    let Some(g) = gpu("gpu_frg_ops") else { return };
    let mut r = Rng::new(900);
    let (bsz, c, h, w) = (3usize, 9usize, 7usize, 7usize);
    let a = r.nonzero(bsz * c * h * w, -1.0, 1.0);
    let a0 = r.nonzero(bsz * c * h * w, -1.0, 1.0);
    let (first, k) = (2usize, 5usize);
    // sign_step: x0 batch 2 broadcast over 6 gradients, some exact zeros in g.
    let x0 = r.vec(2 * 3 * 8 * 8, 0.0, 1.0);
    let gr: Vec<f32> = (0..6 * 3 * 8 * 8)
        .map(|_| if r.next() < 0.1 { 0.0 } else { r.next() - 0.5 })
        .collect();
    compare("gpu_frg", g, TOL_ELEM * 10.0, |b| {
        let (at, a0t) = (up(b, &a, &[bsz, c, h, w]), up(b, &a0, &[bsz, c, h, w]));
        let mut loss = out(b, &[c]);
        b.channel_mse(&at, &a0t, &mut loss).unwrap();
        let mut seed = out(b, &[k * bsz, 1, h, w]);
        b.frg_seed(&at, &a0t, first, &mut seed).unwrap();
        let (x0t, gt) = (up(b, &x0, &[2, 3, 8, 8]), up(b, &gr, &[6, 3, 8, 8]));
        let mut y = out(b, &[6, 3, 8, 8]);
        b.sign_step(&x0t, &gt, 8.0 / 255.0, &mut y).unwrap();
        vec![
            ("channel_mse", down(b, &loss)),
            ("frg_seed", down(b, &seed)),
            ("sign_step", down(b, &y)),
        ]
    });
}

#[test]
fn gpu_sgd_step() {
    let Some(g) = gpu("gpu_sgd_step") else { return };
    let mut r = Rng::new(1000);
    let n = 1025usize;
    let p0 = r.nonzero(n, -1.0, 1.0);
    let grads: Vec<Vec<f32>> = (0..3).map(|_| r.nonzero(n, -1.0, 1.0)).collect();
    compare("gpu_sgd_step", g, TOL_ELEM, |b| {
        let mut p = up(b, &p0, &[n]);
        let mut buf = b.zeros(&[n]).unwrap();
        for gv in &grads {
            let gt = up(b, gv, &[n]);
            b.sgd_step(&mut p, &gt, &mut buf, Sgd::new(0.01, 0.9, 5e-4))
                .unwrap();
        }
        vec![("param", down(b, &p)), ("momentum_buf", down(b, &buf))]
    });
}
