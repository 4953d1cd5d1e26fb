//! The suite's cases: every op at the shapes of PreActResNet18 (distinct conv shapes, one entry per
//! stage for the per-activation ops, the head, the FRG step and the optimiser).
use std::collections::BTreeMap;

use super::*;
use crate::backend::ConvParams;
use crate::bench::count::{self, Arch, OpCost};

/// Build every case of the suite for `cfg`, in a stable order.
pub fn cases(cfg: &SuiteConfig) -> Vec<Case> {
    let arch = Arch::preact_resnet18(cfg.width, cfg.num_classes);
    let n = cfg.batch;
    let nu = n as u64;
    let mut out = Vec::new();
    let dims = |p: &ConvParams| {
        format!(
            "{}x{}x{}->{}x{}x{} k{}s{}",
            p.c_in, p.h_in, p.w_in, p.c_out, p.h_out, p.w_out, p.kernel, p.stride
        )
    };
    // Distinct conv shapes, named after their first conv (and how many convs share the shape).
    let mut distinct: BTreeMap<usize, (String, ConvParams, usize)> = BTreeMap::new();
    let mut seen: Vec<ConvParams> = Vec::new();
    for (name, p) in arch.convs() {
        if let Some(k) = seen.iter().position(|q| *q == p) {
            distinct.get_mut(&k).expect("seen shape").2 += 1;
        } else {
            distinct.insert(seen.len(), (name, p, 1));
            seen.push(p);
        }
    }
    let w_init = |p: &ConvParams| {
        Init::Normal((2.0 / (p.c_in as f32 * (p.kernel * p.kernel) as f32)).sqrt())
    };
    for (name, p1, count) in distinct.values() {
        let p = p1.with_batch(n);
        let tag = format!(
            "{name}{} {}",
            if *count > 1 {
                format!(" (x{count})")
            } else {
                String::new()
            },
            dims(&p)
        );
        let x = (p.input_shape().to_vec(), Init::Normal(1.0));
        let wt = (p.weight_shape().to_vec(), w_init(&p));
        let y = (p.output_shape().to_vec(), Init::Normal(1.0));
        out.push(Case {
            name: format!("conv_fwd {tag}"),
            family: "conv_fwd",
            op: Op::ConvFwd(p),
            ins: vec![x.clone(), wt.clone()],
            outs: vec![y.clone()],
            labels: None,
            cost: count::conv_forward(&p),
        });
        out.push(Case {
            name: format!("conv_dgrad {tag}"),
            family: "conv_dgrad",
            op: Op::ConvDgrad(p),
            ins: vec![y.clone(), wt.clone()],
            outs: vec![x.clone()],
            labels: None,
            cost: count::conv_input_grad(&p),
        });
        out.push(Case {
            name: format!("conv_wgrad {tag}"),
            family: "conv_wgrad",
            op: Op::ConvWgrad(p),
            ins: vec![x.clone(), y.clone()],
            outs: vec![wt.clone()],
            labels: None,
            cost: count::conv_weight_grad(&p),
        });
        if p.c_in > 3 {
            // Every conv but the stem reads a BN's relu(bn(x)) in training: inputs x, w or dy,
            // gamma, save_mean, save_invstd (the batch statistics of x, set by `gen`), beta.
            let ci = p.c_in as usize;
            let bn = |a: (Vec<usize>, Init)| {
                vec![
                    x.clone(),
                    a,
                    (vec![ci], Init::Uniform(0.5, 1.5)),
                    (vec![ci], Init::Uniform(0.0, 1.0)),
                    (vec![ci], Init::Uniform(0.5, 1.0)),
                    (vec![ci], Init::Uniform(-0.5, 0.5)),
                ]
            };
            out.push(Case {
                name: format!("conv_fwd_bn {tag}"),
                family: "conv_fwd_bn",
                op: Op::ConvFwdBn(p),
                ins: bn(wt.clone()),
                outs: vec![y.clone()],
                labels: None,
                cost: count::conv_forward(&p) + count::bn_input(&p),
            });
            out.push(Case {
                name: format!("conv_wgrad_bn {tag}"),
                family: "conv_wgrad_bn",
                op: Op::ConvWgradBn(p),
                ins: bn(y.clone()),
                outs: vec![wt.clone()],
                labels: None,
                cost: count::conv_weight_grad(&p) + count::bn_input(&p),
            });
        }
        let k = cfg.onehot_filters.min(p.c_out as usize);
        let first = (p.c_out as usize - k) / 2;
        let po = p1.with_batch(k * n);
        out.push(Case {
            name: format!("conv_dgrad_onehot {tag} K={k}"),
            family: "conv_dgrad_onehot",
            op: Op::ConvOneHot {
                p: po,
                first,
                group: n,
            },
            ins: vec![
                (
                    vec![k * n, 1, po.h_out as usize, po.w_out as usize],
                    Init::Normal(1.0),
                ),
                wt.clone(),
            ],
            outs: vec![(po.input_shape().to_vec(), Init::Normal(1.0))],
            labels: None,
            cost: count::conv_input_grad_onehot(&po, k),
        });
    }
    // Per-stage activation shapes: the input normalisation, then one entry per stage.
    let x_in = vec![n, 3, 32, 32];
    out.push(Case {
        name: "normalize [N,3,32,32]".into(),
        family: "channel_affine",
        op: Op::Affine { relu: false },
        ins: vec![
            (x_in.clone(), Init::Uniform(0.0, 1.0)),
            (vec![3], Init::Uniform(3.0, 4.5)),
            (vec![3], Init::Uniform(-2.0, -1.5)),
        ],
        outs: vec![(x_in.clone(), Init::Normal(1.0))],
        labels: None,
        cost: count::channel_affine(nu * 3 * 1024, 3, false),
    });
    for stage in 0..4 {
        let c = cfg.width << stage;
        let hh = 32 >> stage;
        let s = vec![n, c, hh, hh];
        let numel = (n * c * hh * hh) as u64;
        let (cu, hw) = (c as u64, (hh * hh) as u64);
        let tag = format!("{c}x{hh}x{hh}");
        let act = (s.clone(), Init::Normal(1.0));
        let vecc = |lo: f32, hi: f32| (vec![c], Init::Uniform(lo, hi));
        let mut push = |name: &str, family: &'static str, op: Op, ins, outs, cost| {
            out.push(Case {
                name: format!("{name} {tag}"),
                family,
                op,
                ins,
                outs,
                labels: None,
                cost,
            });
        };
        push(
            "bn_eval_relu",
            "channel_affine",
            Op::Affine { relu: true },
            vec![act.clone(), vecc(0.5, 1.5), vecc(-0.5, 0.5)],
            vec![act.clone()],
            count::channel_affine(numel, cu, true),
        );
        push(
            "bn_eval_relu_bwd",
            "channel_affine_bwd",
            Op::AffineBwd,
            vec![act.clone(), act.clone(), vecc(0.5, 1.5)],
            vec![act.clone()],
            count::channel_affine_backward(numel, cu, numel),
        );
        // Training BN forward: x, gamma, beta in; running mean and var, save_mean, save_invstd
        // out, then y unless only the statistics are asked for.
        let bn_ins = vec![
            (s.clone(), Init::Uniform(-1.0, 3.0)),
            vecc(0.5, 1.5),
            vecc(-0.5, 0.5),
        ];
        let bn_stats = vec![
            vecc(-0.5, 0.5),
            vecc(0.5, 1.5),
            vecc(-1.0, 1.0),
            vecc(-1.0, 1.0),
        ];
        let bn_fwd = |relu| Op::BnTrainFwd {
            eps: 1e-5,
            momentum: 0.1,
            relu,
        };
        for relu in [false, true] {
            let suffix = if relu { "_relu" } else { "" };
            push(
                &format!("bn_train_fwd{suffix}"),
                "bn_train_fwd",
                bn_fwd(relu),
                bn_ins.clone(),
                [bn_stats.clone(), vec![act.clone()]].concat(),
                count::batchnorm_train_forward(numel, cu, relu, true),
            );
            if relu {
                // The training model's: statistics only (its convs read relu(bn(x)) themselves).
                push(
                    "bn_train_stats",
                    "bn_train_fwd",
                    bn_fwd(relu),
                    bn_ins.clone(),
                    bn_stats.clone(),
                    count::batchnorm_train_forward(numel, cu, relu, false),
                );
            }
            push(
                &format!("bn_train_bwd{suffix}"),
                "bn_train_bwd",
                Op::BnTrainBwd { relu },
                vec![
                    (s.clone(), Init::Uniform(-1.0, 3.0)),
                    act.clone(),
                    vecc(0.5, 1.5),
                    vecc(0.0, 1.0),
                    vecc(0.5, 1.0),
                    vecc(-0.5, 0.5),
                ],
                vec![act.clone(), vecc(-1.0, 1.0), vecc(-1.0, 1.0)],
                count::batchnorm_train_backward(numel, cu, relu),
            );
        }
        push(
            "relu",
            "relu",
            Op::Relu,
            vec![act.clone()],
            vec![act.clone()],
            count::relu(numel),
        );
        push(
            "relu_bwd",
            "relu_bwd",
            Op::ReluBwd,
            vec![act.clone(), act.clone()],
            vec![act.clone()],
            count::relu_backward(numel, numel),
        );
        push(
            "add",
            "add",
            Op::Add,
            vec![act.clone(), act.clone()],
            vec![act.clone()],
            count::add(numel),
        );
        push(
            "add_assign",
            "add_assign",
            Op::AddAssign,
            vec![act.clone()],
            vec![act.clone()],
            count::binary_in_place(numel),
        );
        push(
            "mul_assign",
            "mul_assign",
            Op::MulAssign,
            vec![(s.clone(), Init::Mask(0.9))],
            vec![act.clone()],
            count::binary_in_place(numel),
        );
        push(
            "channel_mse",
            "channel_mse",
            Op::ChannelMse,
            vec![act.clone(), act.clone()],
            vec![vecc(-1.0, 1.0)],
            count::channel_mse(numel, cu),
        );
        push(
            "frg_seed",
            "frg_seed",
            Op::FrgSeed { first: 0 },
            vec![act.clone(), act.clone()],
            vec![(vec![c * n, 1, hh, hh], Init::Normal(1.0))],
            count::frg_seed(cu, nu, hw),
        );
    }
    // Head.
    let c = cfg.width * 8;
    let k = cfg.num_classes;
    let (cu, ku) = (c as u64, k as u64);
    let feat = (vec![n, c], Init::Normal(1.0));
    let lw = (vec![k, c], Init::Normal(1.0 / (c as f32).sqrt()));
    let logits = (vec![n, k], Init::Normal(1.0));
    let head: Vec<(
        &str,
        &'static str,
        Op,
        Vec<(Vec<usize>, Init)>,
        Vec<(Vec<usize>, Init)>,
        OpCost,
        Option<usize>,
    )> = vec![
        (
            "avgpool",
            "avgpool",
            Op::Pool,
            vec![(vec![n, c, 4, 4], Init::Normal(1.0))],
            vec![feat.clone()],
            count::global_avg_pool(nu, cu, 16),
            None,
        ),
        (
            "avgpool_bwd",
            "avgpool_bwd",
            Op::PoolBwd,
            vec![feat.clone()],
            vec![(vec![n, c, 4, 4], Init::Normal(1.0))],
            count::global_avg_pool_backward(nu, cu, 16),
            None,
        ),
        (
            "linear_fwd",
            "linear_fwd",
            Op::LinearFwd,
            vec![feat.clone(), lw.clone(), (vec![k], Init::Normal(0.1))],
            vec![logits.clone()],
            count::linear_forward(nu, cu, ku),
            None,
        ),
        (
            "linear_bwd_input",
            "linear_bwd_input",
            Op::LinearBwdInput,
            vec![logits.clone(), lw.clone()],
            vec![feat.clone()],
            count::linear_backward_input(nu, cu, ku),
            None,
        ),
        (
            "linear_bwd_params",
            "linear_bwd_params",
            Op::LinearBwdParams,
            vec![feat.clone(), logits.clone()],
            vec![lw.clone(), (vec![k], Init::Normal(1.0))],
            count::linear_backward_params(nu, cu, ku),
            None,
        ),
        (
            "softmax_xent",
            "softmax_xent",
            Op::SoftmaxXent,
            vec![(vec![n, k], Init::Normal(3.0))],
            vec![(vec![n], Init::Normal(1.0)), logits.clone()],
            count::softmax_cross_entropy(nu, ku),
            Some(k),
        ),
    ];
    for (name, family, op, ins, outs, cost, labels) in head {
        out.push(Case {
            name: format!("{name} {c}->{k}"),
            family,
            op,
            ins,
            outs,
            labels,
            cost,
        });
    }
    // FRG step and optimiser.
    let kf = cfg.onehot_filters;
    let img = (kf * n * 3 * 1024) as u64;
    out.push(Case {
        name: format!("sign_step [K*N,3,32,32] K={kf}"),
        family: "sign_step",
        op: Op::SignStep { eps: 4.0 / 255.0 },
        ins: vec![
            (x_in.clone(), Init::Uniform(0.0, 1.0)),
            (vec![kf * n, 3, 32, 32], Init::Normal(1.0)),
        ],
        outs: vec![(vec![kf * n, 3, 32, 32], Init::Normal(1.0))],
        labels: None,
        cost: count::sign_step(img, nu * 3 * 1024),
    });
    let wshape = vec![c, c, 3, 3];
    let wn = (c * c * 9) as u64;
    out.push(Case {
        name: format!("sgd_step {c}x{c}x3x3"),
        family: "sgd_step",
        op: Op::Sgd {
            lr: 0.01,
            momentum: 0.9,
            wd: 5e-4,
        },
        ins: vec![(wshape.clone(), Init::Normal(0.01))],
        outs: vec![
            (wshape.clone(), Init::Normal(0.02)),
            (wshape, Init::Normal(0.01)),
        ],
        labels: None,
        cost: count::sgd_step(wn),
    });
    if let Some(f) = &cfg.filter {
        out.retain(|c| c.name.contains(f.as_str()));
    }
    out
}
