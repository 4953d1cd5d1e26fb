//! The kernel suite: every backend op at the shapes of PreActResNet18 on 32x32 inputs.
//!
//! A `Case` is one op at one shape: how to make its inputs (seeded, non-zero), how to run it through
//! the `Backend` trait, its naive host reference and its counted cost. `run_case` checks before it
//! times: the outputs of one run are compared with the naive reference (every element for cheap ops,
//! sampled elements for convolutions), and on a GPU also elementwise with the CPU backend's output.
//! Output buffers start filled with random values, so an op that accumulates where it should
//! overwrite fails its check.
use std::collections::BTreeMap;

use super::count::{self, Arch, OpCost};
use super::device::Ceilings;
use super::reference::{self as r, Expect};
use super::timing::{time_op, BenchDevice, Repeats, Stats};
use crate::backend::{Backend, ConvParams};
use crate::error::{Error, Result};
use crate::rng::{Rng, Stream};
use crate::tensor::{Indices, Tensor};

/// What to run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SuiteConfig {
    /// Stem width of the model whose shapes are used (64 for PreActResNet18).
    pub width: usize,
    pub num_classes: usize,
    /// Batch of the activations (the scan's B).
    pub batch: usize,
    /// Channels per one-hot backward / sign-step chunk (their batch is `onehot_filters * batch`).
    pub onehot_filters: usize,
    pub repeats: Repeats,
    /// Run only cases whose name contains this.
    pub filter: Option<String>,
    /// Sampled elements per output for the convolution checks.
    pub check_samples: usize,
    pub seed: u64,
}

impl SuiteConfig {
    /// Full run: batch 32 (the reference scan's batch), 3 warm-ups, up to 20 repeats or 2 s per case.
    pub fn full() -> Self {
        SuiteConfig {
            width: 64,
            num_classes: 10,
            batch: 32,
            onehot_filters: 8,
            repeats: Repeats::new(3, 20, 2.0),
            filter: None,
            check_samples: 48,
            seed: 5,
        }
    }
    /// CI run: batch 2, 1 warm-up, 3 repeats.
    pub fn quick() -> Self {
        SuiteConfig {
            batch: 2,
            onehot_filters: 2,
            repeats: Repeats::new(1, 3, 0.5),
            check_samples: 16,
            ..Self::full()
        }
    }
    /// `full()` or, with `FMP_BENCH_QUICK=1`, `quick()`; then FMP_BENCH_BATCH, FMP_BENCH_REPEATS,
    /// FMP_BENCH_WIDTH and FMP_BENCH_FILTER override single fields.
    pub fn from_env() -> Result<Self> {
        let quick = std::env::var("FMP_BENCH_QUICK")
            .map(|v| !v.is_empty() && v != "0")
            .unwrap_or(false);
        let mut c = if quick { Self::quick() } else { Self::full() };
        let num = |key: &str| -> Result<Option<usize>> {
            match std::env::var(key) {
                Ok(v) => v.parse::<usize>().map(Some).map_err(|_| {
                    Error::InvalidArgument(format!("{key}={v}: expected a positive integer"))
                }),
                Err(_) => Ok(None),
            }
        };
        if let Some(b) = num("FMP_BENCH_BATCH")? {
            c.batch = b.max(1);
        }
        if let Some(n) = num("FMP_BENCH_REPEATS")? {
            c.repeats.repeats = n.max(1);
        }
        if let Some(w) = num("FMP_BENCH_WIDTH")? {
            c.width = w.max(1);
        }
        c.filter = std::env::var("FMP_BENCH_FILTER")
            .ok()
            .filter(|s| !s.is_empty());
        Ok(c)
    }
}

/// One op, with the parameters that are not tensors.
#[derive(Clone, Debug)]
pub enum Op {
    ConvFwd(ConvParams),
    ConvDgrad(ConvParams),
    ConvWgrad(ConvParams),
    ConvOneHot {
        p: ConvParams,
        first: usize,
        group: usize,
    },
    Affine {
        relu: bool,
    },
    AffineBwd,
    BnTrainFwd {
        eps: f32,
        momentum: f32,
    },
    BnTrainBwd,
    Relu,
    ReluBwd,
    Add,
    AddAssign,
    MulAssign,
    Pool,
    PoolBwd,
    LinearFwd,
    LinearBwdInput,
    LinearBwdParams,
    SoftmaxXent,
    ChannelMse,
    FrgSeed {
        first: usize,
    },
    SignStep {
        eps: f32,
    },
    Sgd {
        lr: f32,
        momentum: f32,
        wd: f32,
    },
}

/// How a tensor's initial host data is drawn.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    Normal(f32),
    Uniform(f32, f32),
    /// 1 with probability p, else 0.
    Mask(f32),
}

/// One benchmark: an op at a shape.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub family: &'static str,
    pub op: Op,
    pub ins: Vec<(Vec<usize>, Init)>,
    /// Outputs (and in-place operands), with the data they hold before the op.
    pub outs: Vec<(Vec<usize>, Init)>,
    /// Class count for softmax cross-entropy labels.
    pub labels: Option<usize>,
    pub cost: OpCost,
}

/// Host data of a case.
pub struct HostData {
    pub ins: Vec<Vec<f32>>,
    pub outs: Vec<Vec<f32>>,
    pub labels: Option<Vec<u32>>,
}

fn shape4(s: &[usize]) -> [usize; 4] {
    match *s {
        [n, c, h, w] => [n, c, h, w],
        [n, f] => [n, f, 1, 1],
        [n] => [n, 1, 1, 1],
        _ => panic!("shape4 of rank {}", s.len()),
    }
}

fn draw(rng: &mut Rng, shape: &[usize], init: Init) -> Vec<f32> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|_| match init {
            Init::Normal(s) => s * rng.normal_approx(),
            Init::Uniform(lo, hi) => rng.range(lo, hi),
            Init::Mask(p) => (rng.uniform() < p) as u32 as f32,
        })
        .collect()
}

impl Case {
    pub fn gen(&self, rng: &mut Rng) -> HostData {
        let mut ins: Vec<Vec<f32>> = self.ins.iter().map(|(s, i)| draw(rng, s, *i)).collect();
        let outs = self.outs.iter().map(|(s, i)| draw(rng, s, *i)).collect();
        let labels = self.labels.map(|k| {
            (0..self.ins[0].0[0])
                .map(|_| rng.below_mod(k) as u32)
                .collect()
        });
        if let Op::BnTrainBwd = self.op {
            // save_mean / save_invstd must be the batch statistics of x.
            let [n, c, h, w] = shape4(&self.ins[0].0);
            let (mean, var) = r::channel_stats(&ins[0], n, c, h * w);
            ins[3] = mean.iter().map(|&m| m as f32).collect();
            ins[4] = var
                .iter()
                .map(|&v| (1.0 / (v + 1e-5).sqrt()) as f32)
                .collect();
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
            (Op::Affine { relu }, [y]) => be.channel_affine(&ins[0], &ins[1], &ins[2], *relu, y),
            (Op::AffineBwd, [dx]) => {
                be.channel_affine_backward(Some(&ins[0]), &ins[1], &ins[2], dx)
            }
            (Op::BnTrainFwd { eps, momentum }, [rm, rv, sm, si, y]) => be.batchnorm_train_forward(
                &ins[0], &ins[1], &ins[2], *eps, *momentum, rm, rv, sm, si, y,
            ),
            (Op::BnTrainBwd, [dx, dg, db]) => {
                be.batchnorm_train_backward(&ins[0], &ins[1], &ins[2], &ins[3], &ins[4], dx, dg, db)
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
                be.sgd_step(param, &ins[0], buf, *lr, *momentum, *wd)
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
    fn rel_tol(&self) -> f64 {
        match self.op {
            Op::ConvFwd(_)
            | Op::ConvDgrad(_)
            | Op::ConvWgrad(_)
            | Op::ConvOneHot { .. }
            | Op::BnTrainFwd { .. }
            | Op::BnTrainBwd
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
        match &self.op {
            Op::ConvFwd(p) => vec![r::sample_indices(rng, out_len(0), samples)
                .into_iter()
                .map(|i| r::conv_forward_at(p, &ins[0], &ins[1], i))
                .collect()],
            Op::ConvDgrad(p) => vec![r::sample_indices(rng, out_len(0), samples)
                .into_iter()
                .map(|i| r::conv_input_grad_at(p, &ins[0], &ins[1], i))
                .collect()],
            Op::ConvWgrad(p) => vec![r::sample_indices(rng, out_len(0), samples)
                .into_iter()
                .map(|i| r::conv_weight_grad_at(p, &ins[0], &ins[1], i))
                .collect()],
            Op::ConvOneHot { p, first, group } => vec![r::sample_indices(rng, out_len(0), samples)
                .into_iter()
                .map(|i| r::conv_onehot_at(p, &ins[0], &ins[1], *first, *group, i))
                .collect()],
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
            Op::BnTrainFwd { eps, momentum } => {
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
                        e(
                            i,
                            xh * g + ins[2][ch] as f64,
                            (xh.abs() + 1.0) * g.abs() + (ins[2][ch] as f64).abs(),
                        )
                    })
                    .collect();
                vec![rm, rv, sm, si, y]
            }
            Op::BnTrainBwd => {
                let [n, c, hh, ww] = shape4(&self.ins[0].0);
                let hw = hh * ww;
                let m = (n * hw) as f64;
                let (x, dy, g, mu, is) = (&ins[0], &ins[1], &ins[2], &ins[3], &ins[4]);
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
                vec![(0..n * c)
                    .map(|j| {
                        let s = &ins[0][j * hw..(j + 1) * hw];
                        e(
                            j,
                            s.iter().map(|&v| v as f64).sum::<f64>() / hw as f64,
                            s.iter().map(|&v| (v as f64).abs()).sum::<f64>() / hw as f64,
                        )
                    })
                    .collect()]
            }
            Op::PoolBwd => {
                let [_, _, hh, ww] = shape4(&self.outs[0].0);
                let hw = hh * ww;
                vec![(0..out_len(0))
                    .map(|i| {
                        let v = ins[0][i / hw] as f64 / hw as f64;
                        e(i, v, v.abs())
                    })
                    .collect()]
            }
            Op::LinearFwd => {
                let (n, fi) = (self.ins[0].0[0], self.ins[0].0[1]);
                let o = self.ins[1].0[0];
                vec![(0..n * o)
                    .map(|j| {
                        let (b, k) = (j / o, j % o);
                        let (mut v, mut s) = (ins[2][k] as f64, (ins[2][k] as f64).abs());
                        for i in 0..fi {
                            let t = ins[0][b * fi + i] as f64 * ins[1][k * fi + i] as f64;
                            v += t;
                            s += t.abs();
                        }
                        e(j, v, s)
                    })
                    .collect()]
            }
            Op::LinearBwdInput => {
                let (n, o) = (self.ins[0].0[0], self.ins[0].0[1]);
                let fi = self.ins[1].0[1];
                vec![(0..n * fi)
                    .map(|j| {
                        let (b, i) = (j / fi, j % fi);
                        let (mut v, mut s) = (0.0, 0.0);
                        for k in 0..o {
                            let t = ins[0][b * o + k] as f64 * ins[1][k * fi + i] as f64;
                            v += t;
                            s += t.abs();
                        }
                        e(j, v, s)
                    })
                    .collect()]
            }
            Op::LinearBwdParams => {
                let (n, fi) = (self.ins[0].0[0], self.ins[0].0[1]);
                let o = self.ins[1].0[1];
                let dw = (0..o * fi)
                    .map(|j| {
                        let (k, i) = (j / fi, j % fi);
                        let (mut v, mut s) = (0.0, 0.0);
                        for b in 0..n {
                            let t = ins[1][b * o + k] as f64 * ins[0][b * fi + i] as f64;
                            v += t;
                            s += t.abs();
                        }
                        e(j, v, s)
                    })
                    .collect();
                let db = (0..o)
                    .map(|k| {
                        let col = (0..n).map(|b| ins[1][b * o + k] as f64);
                        e(k, col.clone().sum(), col.map(f64::abs).sum())
                    })
                    .collect();
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
        push(
            "bn_train_fwd",
            "bn_train_fwd",
            Op::BnTrainFwd {
                eps: 1e-5,
                momentum: 0.1,
            },
            vec![
                (s.clone(), Init::Uniform(-1.0, 3.0)),
                vecc(0.5, 1.5),
                vecc(-0.5, 0.5),
            ],
            vec![
                vecc(-0.5, 0.5),
                vecc(0.5, 1.5),
                vecc(-1.0, 1.0),
                vecc(-1.0, 1.0),
                act.clone(),
            ],
            count::batchnorm_train_forward(numel, cu),
        );
        push(
            "bn_train_bwd",
            "bn_train_bwd",
            Op::BnTrainBwd,
            vec![
                (s.clone(), Init::Uniform(-1.0, 3.0)),
                act.clone(),
                vecc(0.5, 1.5),
                vecc(0.0, 1.0),
                vecc(0.5, 1.0),
            ],
            vec![act.clone(), vecc(-1.0, 1.0), vecc(-1.0, 1.0)],
            count::batchnorm_train_backward(numel, cu),
        );
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

/// Outcome of a case's correctness check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    /// Elements compared with the naive reference.
    pub points: usize,
    /// Largest |got - expected| / tolerance over them (<= 1 passes).
    pub worst_vs_reference: f64,
    /// Largest |gpu - cpu| / tolerance over every element, on a GPU backend.
    pub worst_vs_cpu_backend: Option<f64>,
    pub passed: bool,
}

/// One benchmark result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelResult {
    pub name: String,
    pub family: String,
    pub flops: u64,
    pub bytes: u64,
    pub check: Option<Check>,
    pub time: Option<Stats>,
    pub gflops: Option<f64>,
    pub gbytes_per_s: Option<f64>,
    /// Achieved FLOP/s over the roofline bound min(peak, intensity x bandwidth).
    pub frac_roofline: Option<f64>,
    pub frac_peak_flops: Option<f64>,
    pub frac_peak_bandwidth: Option<f64>,
    /// Why the case has no timing (an op error or a failed check).
    pub error: Option<String>,
}

fn upload(
    be: &dyn Backend,
    data: &[Vec<f32>],
    specs: &[(Vec<usize>, Init)],
) -> Result<Vec<Tensor>> {
    data.iter()
        .zip(specs)
        .map(|(d, (s, _))| be.from_host(d, s))
        .collect()
}

/// Compare outputs `got` of one run of `case` on `h` with the naive reference; returns (elements
/// compared, worst error / tolerance). The check passes when the worst ratio is at most 1.
pub fn check_outputs(
    case: &Case,
    h: &HostData,
    got: &[Vec<f32>],
    rng: &mut Rng,
    samples: usize,
) -> (usize, f64) {
    let want = case.reference(h, rng, samples);
    compare(got, &want, case.rel_tol())
}

fn compare(got: &[Vec<f32>], want: &[Vec<Expect>], rel: f64) -> (usize, f64) {
    let mut worst = 0.0f64;
    let mut points = 0;
    for (g, w) in got.iter().zip(want) {
        for ex in w {
            let v = g[ex.index] as f64;
            let tol = rel * ex.scale + 1e-6;
            let ratio = if v.is_finite() {
                (v - ex.value).abs() / tol
            } else {
                f64::INFINITY
            };
            worst = worst.max(ratio);
            points += 1;
        }
    }
    (points, worst)
}

/// Run one case once from its initial data and return the outputs on the host.
pub fn run_once(be: &dyn Backend, case: &Case, h: &HostData) -> Result<Vec<Vec<f32>>> {
    let ins = upload(be, &h.ins, &case.ins)?;
    let mut outs = upload(be, &h.outs, &case.outs)?;
    let labels = h
        .labels
        .as_ref()
        .map(|l| be.indices_from_host(l))
        .transpose()?;
    case.exec(be, &ins, &mut outs, labels.as_ref())?;
    be.synchronize()?;
    outs.iter().map(|t| be.to_host(t)).collect()
}

/// Check `case` on `dev` (against the naive reference, and against `cpu` when given), then time it.
pub fn run_case(
    dev: &BenchDevice,
    cpu: Option<&dyn Backend>,
    case: &Case,
    cfg: &SuiteConfig,
    ceil: &Ceilings,
    index: usize,
) -> KernelResult {
    let mut res = KernelResult {
        name: case.name.clone(),
        family: case.family.into(),
        flops: case.cost.flops,
        bytes: case.cost.bytes,
        check: None,
        time: None,
        gflops: None,
        gbytes_per_s: None,
        frac_roofline: None,
        frac_peak_flops: None,
        frac_peak_bandwidth: None,
        error: None,
    };
    let be = dev.backend.as_ref();
    let mut rng = Rng::stream(
        Stream::Bench,
        cfg.seed.wrapping_mul(1000).wrapping_add(index as u64),
    );
    let h = case.gen(&mut rng);
    let outcome = (|| -> Result<Stats> {
        let got = run_once(be, case, &h)?;
        let (points, worst) = check_outputs(case, &h, &got, &mut rng, cfg.check_samples);
        let rel = case.rel_tol();
        let vs_cpu = match cpu {
            Some(cpu) => {
                let c = run_once(cpu, case, &h)?;
                let mut worst = 0.0f64;
                for (g, c) in got.iter().zip(&c) {
                    let mean_abs =
                        c.iter().map(|v| v.abs() as f64).sum::<f64>() / c.len().max(1) as f64;
                    for (a, b) in g.iter().zip(c) {
                        let tol = 2.0 * rel * ((*b as f64).abs().max(mean_abs)) + 1e-6;
                        let d = (*a as f64 - *b as f64).abs();
                        worst = worst.max(if d.is_finite() {
                            d / tol
                        } else {
                            f64::INFINITY
                        });
                    }
                }
                Some(worst)
            }
            None => None,
        };
        let passed = worst <= 1.0 && vs_cpu.map_or(true, |w| w <= 1.0);
        res.check = Some(Check {
            points,
            worst_vs_reference: worst,
            worst_vs_cpu_backend: vs_cpu,
            passed,
        });
        if !passed {
            return Err(Error::Msg(format!(
                "check failed: worst error {worst:.3e} x tolerance vs the naive reference{}",
                vs_cpu
                    .map(|w| format!(", {w:.3e} x tolerance vs the CPU backend"))
                    .unwrap_or_default()
            )));
        }
        let ins = upload(be, &h.ins, &case.ins)?;
        let mut outs = upload(be, &h.outs, &case.outs)?;
        let labels = h
            .labels
            .as_ref()
            .map(|l| be.indices_from_host(l))
            .transpose()?;
        time_op(dev, cfg.repeats, || {
            case.exec(be, &ins, &mut outs, labels.as_ref())
        })
    })();
    match outcome {
        Ok(st) => {
            let t = st.median_s;
            let fl = case.cost.flops as f64 / t;
            let bw = case.cost.bytes as f64 / t;
            res.gflops = Some(fl / 1e9);
            res.gbytes_per_s = Some(bw / 1e9);
            res.frac_peak_flops = Some(fl / ceil.peak_flops);
            res.frac_peak_bandwidth = Some(bw / ceil.peak_bytes_per_s);
            res.frac_roofline = Some(ceil.min_time(case.cost.flops, case.cost.bytes) / t);
            res.time = Some(st);
        }
        Err(e) => res.error = Some(e.to_string()),
    }
    res
}

/// A whole suite run on one backend.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SuiteReport {
    pub backend: String,
    pub ceilings: Ceilings,
    pub config: SuiteConfig,
    pub commit: Option<String>,
    pub unix_time: u64,
    pub results: Vec<KernelResult>,
}

impl SuiteReport {
    pub fn failures(&self) -> Vec<&KernelResult> {
        self.results.iter().filter(|r| r.error.is_some()).collect()
    }
    /// The timed case with the lowest fraction of its roofline bound.
    pub fn furthest_from_roofline(&self) -> Option<&KernelResult> {
        self.results
            .iter()
            .filter(|r| r.frac_roofline.is_some())
            .min_by(|a, b| {
                a.frac_roofline
                    .unwrap()
                    .total_cmp(&b.frac_roofline.unwrap())
            })
    }
}

/// The current commit (short hash), when run inside a git checkout.
pub fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Run every case of `cfg` on `be`; `cpu` (for GPU backends) is the reference backend to compare
/// with; `progress` is called after each case.
pub fn run_suite(
    dev: &BenchDevice,
    cpu: Option<&dyn Backend>,
    cfg: &SuiteConfig,
    ceil: Ceilings,
    mut progress: impl FnMut(&KernelResult),
) -> SuiteReport {
    let mut results = Vec::new();
    for (i, case) in cases(cfg).iter().enumerate() {
        let r = run_case(dev, cpu, case, cfg, &ceil, i);
        progress(&r);
        results.push(r);
    }
    SuiteReport {
        backend: dev.backend.name(),
        ceilings: ceil,
        config: cfg.clone(),
        commit: git_commit(),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        results,
    }
}

/// Header and one line per result, for terminals and RESULTS.md.
pub fn table_header() -> String {
    format!(
        "{:<58} {:>10} {:>9} {:>9} {:>8} {:>7}  {}",
        "kernel", "median", "GFLOP/s", "GB/s", "%peakFL", "%roof", "check"
    )
}

pub fn table_line(r: &KernelResult) -> String {
    let check = match (&r.check, &r.error) {
        (Some(c), _) if c.passed => format!(
            "ok ({:.2})",
            c.worst_vs_reference
                .max(c.worst_vs_cpu_backend.unwrap_or(0.0))
        ),
        (_, Some(e)) => format!("ERROR: {e}"),
        _ => "-".into(),
    };
    match &r.time {
        Some(t) => format!(
            "{:<58} {:>10} {:>9.2} {:>9.2} {:>7.2}% {:>6.1}%  {}",
            r.name,
            fmt_time(t.median_s),
            r.gflops.unwrap_or(0.0),
            r.gbytes_per_s.unwrap_or(0.0),
            100.0 * r.frac_peak_flops.unwrap_or(0.0),
            100.0 * r.frac_roofline.unwrap_or(0.0),
            check
        ),
        None => format!(
            "{:<58} {:>10} {:>9} {:>9} {:>8} {:>7}  {}",
            r.name, "-", "-", "-", "-", "-", check
        ),
    }
}

pub fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}

/// Write `value` as pretty JSON to `path` (through a temporary file and a rename).
pub fn write_json<T: serde::Serialize>(path: &std::path::Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::File {
        path: path.into(),
        msg: e.to_string(),
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Run the suite on `be`, print a table line per case, write the JSON report to `json`, and print
/// the case furthest from its roofline. Returns the report; failed cases are listed in it.
pub fn run_and_report(
    dev: &BenchDevice,
    cpu: Option<&dyn Backend>,
    cfg: &SuiteConfig,
    json: Option<&std::path::Path>,
) -> Result<SuiteReport> {
    let be = dev.backend.as_ref();
    let ceil = super::device::ceilings_for(&be.name(), be.is_gpu());
    println!(
        "# kernels on {} (batch {}, width {})",
        be.name(),
        cfg.batch,
        cfg.width
    );
    println!("# ceilings: {}", ceil.source);
    println!("{}", table_header());
    let report = run_suite(dev, cpu, cfg, ceil, |r| println!("{}", table_line(r)));
    if let Some(w) = report.furthest_from_roofline() {
        println!(
            "# furthest from its roofline: {} at {:.1}% ({:.2} GFLOP/s, {:.2} GB/s)",
            w.name,
            100.0 * w.frac_roofline.unwrap_or(0.0),
            w.gflops.unwrap_or(0.0),
            w.gbytes_per_s.unwrap_or(0.0)
        );
    }
    let timed: Vec<&KernelResult> = report.results.iter().filter(|r| r.time.is_some()).collect();
    if !timed.is_empty() {
        let t: f64 = timed
            .iter()
            .map(|r| r.time.as_ref().unwrap().median_s)
            .sum();
        let f: u64 = timed.iter().map(|r| r.flops).sum();
        println!(
            "# {} cases timed, {} in total, {:.2} GFLOP/s overall",
            timed.len(),
            fmt_time(t),
            f as f64 / t / 1e9
        );
    }
    if let Some(path) = json {
        write_json(path, &report)?;
        println!("# wrote {}", path.display());
    }
    Ok(report)
}
