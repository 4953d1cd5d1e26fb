//! A case's own behaviour: its seeded inputs, its run through the `Backend` trait, its tolerance
//! and its naive host reference.

use super::*;
use crate::backend::{Backend, BnGrads, BnLayer, BnUpdate, Sgd};
use crate::bench::reference::{self as r, Expect};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{Indices, Tensor};

impl Case {
    pub fn gen(&self, rng: &mut Rng) -> HostData {
        let mut ins: Vec<Vec<f32>> = self.ins.iter().map(|(s, i)| draw(rng, s, *i)).collect();
        let outs = self.outs.iter().map(|(s, i)| draw(rng, s, *i)).collect();
        let labels = self.labels.map(|k| {
            (0..self.ins[0].0[0])
                .map(|_| rng.below_mod(k) as u32)
                .collect()
        });
        // Ops that read a batchnorm's saved statistics; whether dy is cleared at the ReLU's kink.
        let zero_kink = match self.op {
            Op::BnTrainBwd { relu } => Some(relu),
            Op::ConvFwdBn(_) | Op::ConvWgradBn(_) => Some(false),
            _ => None,
        };
        if let Some(zero_kink) = zero_kink {
            // save_mean / save_invstd must be the batch statistics of x.
            let [n, c, h, w] = shape4(&self.ins[0].0);
            let (mean, var) = r::channel_stats(&ins[0], n, c, h * w);
            ins[3] = mean.iter().map(|&m| m as f32).collect();
            ins[4] = var
                .iter()
                .map(|&v| (1.0 / (v + 1e-5).sqrt()) as f32)
                .collect();
            if zero_kink {
                // No gradient where bn(x) is within rounding of the ReLU's kink, so the f32 mask
                // and the f64 reference's agree wherever it matters.
                let hw = h * w;
                for i in 0..ins[0].len() {
                    if bn_ref(&ins, i, (i / hw) % c).abs() < 1e-3 {
                        ins[1][i] = 0.0;
                    }
                }
            }
        }
        HostData { ins, outs, labels }
    }

    /// Run the op once on `be`.
    pub fn exec(
        &self,
        be: &dyn Backend,
        ins: &[Tensor],
        outs: &mut [Tensor],
        labels: Option<&Indices>,
    ) -> Result<()> {
        match (&self.op, outs) {
            (Op::ConvFwd(p), [y]) => be.conv2d_forward(p, &ins[0], &ins[1], y),
            (Op::ConvDgrad(p), [dx]) => be.conv2d_input_grad(p, &ins[0], &ins[1], dx),
            (Op::ConvWgrad(p), [dw]) => be.conv2d_weight_grad(p, &ins[0], &ins[1], dw),
            (Op::ConvOneHot { p, first, group }, [dx]) => {
                be.conv2d_input_grad_onehot(p, &ins[0], &ins[1], *first, *group, dx)
            }
            (Op::ConvFwdBn(p), [y]) => {
                let bn = BnLayer::new(&ins[2], &ins[5], &ins[3], &ins[4], true);
                be.conv2d_forward_bn(p, &ins[0], bn, &ins[1], y)
            }
            (Op::ConvWgradBn(p), [dw]) => {
                let bn = BnLayer::new(&ins[2], &ins[5], &ins[3], &ins[4], true);
                be.conv2d_weight_grad_bn(p, &ins[0], bn, &ins[1], dw)
            }
            (Op::Affine { relu }, [y]) => be.channel_affine(&ins[0], &ins[1], &ins[2], *relu, y),
            (Op::AffineBwd, [dx]) => {
                be.channel_affine_backward(Some(&ins[0]), &ins[1], &ins[2], dx)
            }
            (
                Op::BnTrainFwd {
                    eps,
                    momentum,
                    relu,
                },
                [rm, rv, sm, si, y @ ..],
            ) => {
                let bn = BnLayer::new(&ins[1], &ins[2], sm, si, *relu);
                let update = BnUpdate::new(*eps, *momentum, rm, rv);
                be.batchnorm_train_forward(&ins[0], bn, update, y.first_mut())
            }
            (Op::BnTrainBwd { relu }, [dx, dg, db]) => {
                let bn = BnLayer::new(&ins[2], &ins[5], &ins[3], &ins[4], *relu);
                be.batchnorm_train_backward(&ins[0], &ins[1], bn, BnGrads::new(dx, dg, db))
            }
            (Op::Relu, [y]) => be.relu(&ins[0], y),
            (Op::ReluBwd, [dx]) => be.relu_backward(&ins[0], &ins[1], dx),
            (Op::Add, [y]) => be.add(&ins[0], &ins[1], y),
            (Op::AddAssign, [y]) => be.add_assign(y, &ins[0]),
            (Op::MulAssign, [y]) => be.mul_assign(y, &ins[0]),
            (Op::Pool, [y]) => be.global_avg_pool(&ins[0], y),
            (Op::PoolBwd, [dx]) => be.global_avg_pool_backward(&ins[0], dx),
            (Op::LinearFwd, [y]) => be.linear_forward(&ins[0], &ins[1], &ins[2], y),
            (Op::LinearBwdInput, [dx]) => be.linear_backward_input(&ins[0], &ins[1], dx),
            (Op::LinearBwdParams, [dw, db]) => be.linear_backward_params(&ins[0], &ins[1], dw, db),
            (Op::SoftmaxXent, [loss, dl]) => {
                let labels =
                    labels.ok_or_else(|| Error::Msg(format!("{}: no labels", self.name)))?;
                be.softmax_cross_entropy(&ins[0], labels, loss, dl)
            }
            (Op::ChannelMse, [loss]) => be.channel_mse(&ins[0], &ins[1], loss),
            (Op::FrgSeed { first }, [seed]) => be.frg_seed(&ins[0], &ins[1], *first, seed),
            (Op::SignStep { eps }, [y]) => be.sign_step(&ins[0], &ins[1], *eps, y),
            (Op::Sgd { lr, momentum, wd }, [param, buf]) => {
                be.sgd_step(param, &ins[0], buf, Sgd::new(*lr, *momentum, *wd))
            }
            (op, outs) => Err(Error::Msg(format!(
                "bench case {}: {op:?} with {} outputs",
                self.name,
                outs.len()
            ))),
        }
    }

    /// Relative tolerance (of each element's `scale`, the sum of |terms|) of the checks: reductions
    /// allow for f32 accumulation over up to ~10^5 terms (random-walk error ~sqrt(n) x 6e-8).
    pub(super) fn rel_tol(&self) -> f64 {
        match self.op {
            Op::ConvFwd(_)
            | Op::ConvDgrad(_)
            | Op::ConvWgrad(_)
            | Op::ConvOneHot { .. }
            | Op::ConvFwdBn(_)
            | Op::ConvWgradBn(_)
            | Op::BnTrainFwd { .. }
            | Op::BnTrainBwd { .. }
            | Op::Pool
            | Op::LinearFwd
            | Op::LinearBwdInput
            | Op::LinearBwdParams
            | Op::SoftmaxXent
            | Op::ChannelMse => 2e-4,
            _ => 1e-5,
        }
    }

    /// Expected values of every output (all elements, or samples for convolutions).
    pub fn reference(&self, h: &HostData, rng: &mut Rng, samples: usize) -> Vec<Vec<Expect>> {
        let ins = &h.ins;
        let e = |index: usize, value: f64, scale: f64| Expect {
            index,
            value,
            scale,
        };
        let out_len = |k: usize| self.outs[k].0.iter().product::<usize>();
        // A convolution's reference at `samples` sampled output indices.
        let mut sampled = |at: &dyn Fn(usize) -> Expect| {
            vec![r::sample_indices(rng, out_len(0), samples)
                .into_iter()
                .map(at)
                .collect()]
        };
        let (x, y) = (&ins[0], ins.get(1).map_or(&[][..], |v| &v[..]));
        match &self.op {
            Op::ConvFwd(p) => sampled(&|i| r::conv_forward_at(p, x, y, i)),
            Op::ConvDgrad(p) => sampled(&|i| r::conv_input_grad_at(p, x, y, i)),
            Op::ConvWgrad(p) => sampled(&|i| r::conv_weight_grad_at(p, x, y, i)),
            Op::ConvOneHot { p, first, group } => {
                sampled(&|i| r::conv_onehot_at(p, x, y, *first, *group, i))
            }
            Op::ConvFwdBn(p) | Op::ConvWgradBn(p) => {
                // The conv of relu(bn(x)), mapped in f64.
                let hw = (p.h_in * p.w_in) as usize;
                let xm: Vec<f32> = (0..x.len())
                    .map(|i| bn_ref(ins, i, (i / hw) % p.c_in as usize).max(0.0) as f32)
                    .collect();
                match &self.op {
                    Op::ConvFwdBn(_) => sampled(&|i| r::conv_forward_at(p, &xm, y, i)),
                    _ => sampled(&|i| r::conv_weight_grad_at(p, &xm, y, i)),
                }
            }
            Op::Affine { relu } => {
                let [_, c, hh, ww] = shape4(&self.ins[0].0);
                vec![(0..ins[0].len())
                    .map(|i| {
                        let ch = (i / (hh * ww)) % c;
                        let t = ins[0][i] as f64 * ins[1][ch] as f64;
                        let v = t + ins[2][ch] as f64;
                        e(
                            i,
                            if *relu { v.max(0.0) } else { v },
                            t.abs() + (ins[2][ch] as f64).abs(),
                        )
                    })
                    .collect()]
            }
            Op::AffineBwd => {
                let [_, c, hh, ww] = shape4(&self.ins[1].0);
                let saved = ins[0].len();
                vec![(0..ins[1].len())
                    .map(|i| {
                        let ch = (i / (hh * ww)) % c;
                        let v = if ins[0][i % saved] > 0.0 {
                            ins[1][i] as f64 * ins[2][ch] as f64
                        } else {
                            0.0
                        };
                        e(i, v, v.abs())
                    })
                    .collect()]
            }
            Op::BnTrainFwd {
                eps,
                momentum,
                relu,
            } => {
                let [n, c, hh, ww] = shape4(&self.ins[0].0);
                let hw = hh * ww;
                let (mean, var) = r::channel_stats(&ins[0], n, c, hw);
                let m = (n * hw) as f64;
                let (eps, mo) = (*eps as f64, *momentum as f64);
                let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
                let stat = |f: &dyn Fn(usize) -> (f64, f64)| -> Vec<Expect> {
                    (0..c)
                        .map(|ch| {
                            let (v, s) = f(ch);
                            e(ch, v, s)
                        })
                        .collect()
                };
                let rm = stat(&|ch| {
                    let v = (1.0 - mo) * h.outs[0][ch] as f64 + mo * mean[ch];
                    (v, v.abs() + mean[ch].abs() + var[ch].sqrt())
                });
                let rv = stat(&|ch| {
                    let unb = var[ch] * m / (m - 1.0).max(1.0);
                    let v = (1.0 - mo) * h.outs[1][ch] as f64 + mo * unb;
                    (v, v.abs())
                });
                let sm = stat(&|ch| (mean[ch], mean[ch].abs() + var[ch].sqrt()));
                let si = stat(&|ch| (invstd[ch], invstd[ch]));
                let y = (0..ins[0].len())
                    .map(|i| {
                        let ch = (i / hw) % c;
                        let xh = (ins[0][i] as f64 - mean[ch]) * invstd[ch];
                        let g = ins[1][ch] as f64;
                        let v = xh * g + ins[2][ch] as f64;
                        e(
                            i,
                            if *relu { v.max(0.0) } else { v },
                            (xh.abs() + 1.0) * g.abs() + (ins[2][ch] as f64).abs(),
                        )
                    })
                    .collect();
                if self.outs.len() == 4 {
                    // Statistics only.
                    return vec![rm, rv, sm, si];
                }
                vec![rm, rv, sm, si, y]
            }
            Op::BnTrainBwd { relu } => {
                let [n, c, hh, ww] = shape4(&self.ins[0].0);
                let hw = hh * ww;
                let m = (n * hw) as f64;
                let (x, g, mu, is) = (&ins[0], &ins[2], &ins[3], &ins[4]);
                // The gradient reaching the BN: masked by bn(x) > 0 under a fused ReLU.
                let dy: Vec<f32> = (0..x.len())
                    .map(|i| {
                        let off = *relu && bn_ref(ins, i, (i / hw) % c) <= 0.0;
                        if off {
                            0.0
                        } else {
                            ins[1][i]
                        }
                    })
                    .collect();
                let idx = |b: usize, ch: usize| (b * c + ch) * hw..(b * c + ch + 1) * hw;
                let mut sdy = vec![0.0f64; c];
                let mut sdyx = vec![0.0f64; c];
                let mut adyx = vec![0.0f64; c];
                let mut ady = vec![0.0f64; c];
                for b in 0..n {
                    for ch in 0..c {
                        for i in idx(b, ch) {
                            let xh = (x[i] as f64 - mu[ch] as f64) * is[ch] as f64;
                            sdy[ch] += dy[i] as f64;
                            ady[ch] += (dy[i] as f64).abs();
                            sdyx[ch] += dy[i] as f64 * xh;
                            adyx[ch] += (dy[i] as f64 * xh).abs();
                        }
                    }
                }
                let dx = (0..x.len())
                    .map(|i| {
                        let ch = (i / hw) % c;
                        let xh = (x[i] as f64 - mu[ch] as f64) * is[ch] as f64;
                        let k = g[ch] as f64 * is[ch] as f64 / m;
                        let v = k * (m * dy[i] as f64 - sdy[ch] - xh * sdyx[ch]);
                        e(
                            i,
                            v,
                            k.abs() * (m * (dy[i] as f64).abs() + ady[ch] + xh.abs() * adyx[ch]),
                        )
                    })
                    .collect();
                let dg = (0..c).map(|ch| e(ch, sdyx[ch], adyx[ch])).collect();
                let db = (0..c).map(|ch| e(ch, sdy[ch], ady[ch])).collect();
                vec![dx, dg, db]
            }
            Op::Relu => vec![(0..ins[0].len())
                .map(|i| e(i, (ins[0][i] as f64).max(0.0), (ins[0][i] as f64).abs()))
                .collect()],
            Op::ReluBwd => {
                let saved = ins[0].len();
                vec![(0..ins[1].len())
                    .map(|i| {
                        let v = if ins[0][i % saved] > 0.0 {
                            ins[1][i] as f64
                        } else {
                            0.0
                        };
                        e(i, v, v.abs())
                    })
                    .collect()]
            }
            Op::Add => vec![(0..ins[0].len())
                .map(|i| {
                    e(
                        i,
                        ins[0][i] as f64 + ins[1][i] as f64,
                        (ins[0][i] as f64).abs() + (ins[1][i] as f64).abs(),
                    )
                })
                .collect()],
            Op::AddAssign => vec![(0..ins[0].len())
                .map(|i| {
                    e(
                        i,
                        h.outs[0][i] as f64 + ins[0][i] as f64,
                        (h.outs[0][i] as f64).abs() + (ins[0][i] as f64).abs(),
                    )
                })
                .collect()],
            Op::MulAssign => vec![(0..ins[0].len())
                .map(|i| {
                    let v = h.outs[0][i] as f64 * ins[0][i] as f64;
                    e(i, v, v.abs())
                })
                .collect()],
            Op::Pool => {
                let [n, c, hh, ww] = shape4(&self.ins[0].0);
                let hw = hh * ww;
                vec![each(n * c, |j| {
                    let s = &ins[0][j * hw..(j + 1) * hw];
                    (
                        s.iter().map(|&v| v as f64).sum::<f64>() / hw as f64,
                        s.iter().map(|&v| (v as f64).abs()).sum::<f64>() / hw as f64,
                    )
                })]
            }
            Op::PoolBwd => {
                let [_, _, hh, ww] = shape4(&self.outs[0].0);
                let hw = hh * ww;
                vec![each(out_len(0), |i| {
                    let v = ins[0][i / hw] as f64 / hw as f64;
                    (v, v.abs())
                })]
            }
            Op::LinearFwd => {
                let (n, fi) = (self.ins[0].0[0], self.ins[0].0[1]);
                let o = self.ins[1].0[0];
                vec![each(n * o, |j| {
                    let (b, k) = (j / o, j % o);
                    dot(
                        ins[2][k] as f64,
                        (0..fi).map(|i| (x[b * fi + i], y[k * fi + i])),
                    )
                })]
            }
            Op::LinearBwdInput => {
                let (n, o) = (self.ins[0].0[0], self.ins[0].0[1]);
                let fi = self.ins[1].0[1];
                vec![each(n * fi, |j| {
                    let (b, i) = (j / fi, j % fi);
                    dot(0.0, (0..o).map(|k| (x[b * o + k], y[k * fi + i])))
                })]
            }
            Op::LinearBwdParams => {
                let (n, fi) = (self.ins[0].0[0], self.ins[0].0[1]);
                let o = self.ins[1].0[1];
                let dw = each(o * fi, |j| {
                    let (k, i) = (j / fi, j % fi);
                    dot(0.0, (0..n).map(|b| (y[b * o + k], x[b * fi + i])))
                });
                let db = each(o, |k| {
                    let col = (0..n).map(|b| y[b * o + k] as f64);
                    (col.clone().sum(), col.map(f64::abs).sum())
                });
                vec![dw, db]
            }
            Op::SoftmaxXent => {
                let (n, k) = (self.ins[0].0[0], self.ins[0].0[1]);
                let labels = h.labels.as_ref().expect("softmax case has labels");
                let mut loss = Vec::new();
                let mut dl = Vec::new();
                for b in 0..n {
                    let row: Vec<f64> = ins[0][b * k..(b + 1) * k]
                        .iter()
                        .map(|&v| v as f64)
                        .collect();
                    let mx = row.iter().cloned().fold(f64::MIN, f64::max);
                    let se: f64 = row.iter().map(|v| (v - mx).exp()).sum();
                    let lse = mx + se.ln();
                    let y = labels[b] as usize;
                    loss.push(e(b, lse - row[y], lse.abs() + row[y].abs()));
                    for j in 0..k {
                        let p = (row[j] - lse).exp();
                        let v = (p - (j == y) as u8 as f64) / n as f64;
                        dl.push(e(b * k + j, v, (p + 1.0) / n as f64));
                    }
                }
                vec![loss, dl]
            }
            Op::ChannelMse => {
                let [n, c, hh, ww] = shape4(&self.ins[0].0);
                let hw = hh * ww;
                vec![(0..c)
                    .map(|ch| {
                        let mut s = 0.0;
                        for b in 0..n {
                            for i in (b * c + ch) * hw..(b * c + ch + 1) * hw {
                                s += (ins[0][i] as f64 - ins[1][i] as f64).powi(2);
                            }
                        }
                        let v = s / (n * hw) as f64;
                        e(ch, v, v)
                    })
                    .collect()]
            }
            Op::FrgSeed { first } => {
                let [b_n, c, hh, ww] = shape4(&self.ins[0].0);
                let hw = hh * ww;
                let kb = self.outs[0].0[0];
                let f = 2.0 / (b_n * hw) as f64;
                vec![(0..kb * hw)
                    .map(|i| {
                        let (item, pix) = (i / hw, i % hw);
                        let (k, b) = (item / b_n, item % b_n);
                        let j = (b * c + first + k) * hw + pix;
                        let d = ins[1][j] as f64 - ins[0][j] as f64;
                        e(
                            i,
                            f * d,
                            f * (ins[1][j] as f64).abs() + f * (ins[0][j] as f64).abs(),
                        )
                    })
                    .collect()]
            }
            Op::SignStep { eps } => {
                let x0n = ins[0].len();
                vec![(0..ins[1].len())
                    .map(|i| {
                        let g = ins[1][i];
                        let s = if g > 0.0 {
                            1.0
                        } else if g < 0.0 {
                            -1.0
                        } else {
                            0.0
                        };
                        let v = (ins[0][i % x0n] as f64 + *eps as f64 * s).clamp(0.0, 1.0);
                        e(i, v, 1.0)
                    })
                    .collect()]
            }
            Op::Sgd { lr, momentum, wd } => {
                let (lr, mo, wd) = (*lr as f64, *momentum as f64, *wd as f64);
                let mut p_out = Vec::new();
                let mut b_out = Vec::new();
                for i in 0..ins[0].len() {
                    let (p, g, b) = (h.outs[0][i] as f64, ins[0][i] as f64, h.outs[1][i] as f64);
                    let gg = g + wd * p;
                    let nb = mo * b + gg;
                    p_out.push(e(
                        i,
                        p - lr * nb,
                        p.abs() + lr * (mo * b.abs() + g.abs() + wd * p.abs()),
                    ));
                    b_out.push(e(i, nb, mo * b.abs() + g.abs() + wd * p.abs()));
                }
                vec![p_out, b_out]
            }
        }
    }
}

/// The expected (value, scale) `at(i)` of every element i < len.
fn each(len: usize, at: impl Fn(usize) -> (f64, f64)) -> Vec<Expect> {
    (0..len)
        .map(|index| {
            let (value, scale) = at(index);
            Expect {
                index,
                value,
                scale,
            }
        })
        .collect()
}

/// `v0` plus the products of `terms` in order, in f64, and the same sum of absolute values (the
/// linear references' value and error scale).
fn dot(v0: f64, terms: impl Iterator<Item = (f32, f32)>) -> (f64, f64) {
    terms.fold((v0, v0.abs()), |(v, s), (a, b)| {
        let t = a as f64 * b as f64;
        (v + t, s + t.abs())
    })
}

/// bn(x[i]) of a BnTrainBwd case's inputs (x, dy, gamma, save_mean, save_invstd, beta), in f64.
fn bn_ref(ins: &[Vec<f32>], i: usize, ch: usize) -> f64 {
    let xh = (ins[0][i] as f64 - ins[3][ch] as f64) * ins[4][ch] as f64;
    xh * ins[2][ch] as f64 + ins[5][ch] as f64
}
