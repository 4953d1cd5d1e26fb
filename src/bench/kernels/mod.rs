//! The kernel suite: every backend op at the shapes of PreActResNet18 on 32x32 inputs.
//!
//! A `Case` is one op at one shape: how to make its inputs (seeded, non-zero), how to run it through
//! the `Backend` trait, its naive host reference and its counted cost. `run_case` checks before it
//! times: the outputs of one run are compared with the naive reference (every element for cheap ops,
//! sampled elements for convolutions), and on a GPU also elementwise with the CPU backend's output.
//! Output buffers start filled with random values, so an op that accumulates where it should
//! overwrite fails its check.
//!
//! Files by concern: `cases` (the suite's cases), `case` (inputs, run, reference of one case),
//! `check` (comparison with the reference), `run` (checking then timing, per case and per suite),
//! `report` (table, JSON, commit).
mod case;
mod cases;
mod check;
mod report;
mod run;

pub use cases::cases;
pub use check::{check_outputs, run_once, Check};
pub use report::{fmt_time, git_commit, run_and_report, table_header, table_line, write_json};
pub use run::{run_case, run_suite, KernelResult, SuiteReport};

use crate::backend::ConvParams;
use crate::bench::count::OpCost;
use crate::bench::timing::Repeats;
use crate::error::{Error, Result};
use crate::rng::Rng;

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
    /// The conv of relu(bn(x)): inputs x, w, gamma, save_mean, save_invstd, beta.
    ConvFwdBn(ConvParams),
    /// The weight gradient of relu(bn(x)): inputs x, dy, gamma, save_mean, save_invstd, beta.
    ConvWgradBn(ConvParams),
    Affine {
        relu: bool,
    },
    AffineBwd,
    BnTrainFwd {
        eps: f32,
        momentum: f32,
        relu: bool,
    },
    /// Inputs x, dy, gamma, save_mean, save_invstd, beta.
    BnTrainBwd {
        relu: bool,
    },
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
