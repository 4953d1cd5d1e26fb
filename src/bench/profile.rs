//! Op-level profile: a `Backend` that forwards every call to another backend and records, per op
//! and shape, the calls, the wall time (around `synchronize()` on a GPU) and the counted work
//! (`bench::count`). `fmp-engine bench scan --profile` runs the scan's chunk step on it.
//!
//! Convolution times include their operand packing (GEMM path) or padding copies (direct path);
//! `copy` is the backend's tensor copy. Allocation (`zeros`) is recorded too: it is part of what
//! the scan pays per op.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::count::{self, OpCost};
use super::timing::BenchDevice;
use crate::backend::{delegate, Backend, BnGrads, BnLayer, BnUpdate, ConvParams, Sgd};
use crate::error::Result;
use crate::tensor::{Indices, Tensor};

/// Totals of one (op, shape) key.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProfileEntry {
    pub op: String,
    pub shape: String,
    pub calls: u64,
    pub seconds: f64,
    pub counted: OpCost,
}

pub struct ProfiledBackend {
    inner: Arc<dyn Backend>,
    entries: Mutex<BTreeMap<(String, String), ProfileEntry>>,
}

fn conv_shape(p: &ConvParams) -> String {
    format!(
        "{}x{}x{}->{}x{}x{} k{}s{}",
        p.c_in, p.h_in, p.w_in, p.c_out, p.h_out, p.w_out, p.kernel, p.stride
    )
}

/// Item shape (batch left out, so chunks of different sizes share a key).
fn item_dims(s: &[usize]) -> String {
    s[1.min(s.len())..]
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

fn item_shape(t: &Tensor) -> String {
    item_dims(t.shape())
}

fn numel(t: &Tensor) -> u64 {
    t.numel() as u64
}

fn channels(t: &Tensor) -> u64 {
    t.shape().get(1).copied().unwrap_or(1) as u64
}

impl ProfiledBackend {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        ProfiledBackend {
            inner,
            entries: Mutex::new(BTreeMap::new()),
        }
    }

    /// `rec` of an allocation of `shape` (its bytes written, no FLOPs).
    fn rec_alloc(
        &self,
        op: &str,
        shape: &[usize],
        f: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        self.rec(op, item_dims(shape), OpCost::new(0, 4 * n as u64), f)
    }

    fn rec<T>(
        &self,
        op: &str,
        shape: String,
        cost: OpCost,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if self.inner.is_gpu() {
            self.inner.synchronize()?;
        }
        let t = Instant::now();
        let out = f()?;
        if self.inner.is_gpu() {
            self.inner.synchronize()?;
        }
        let dt = t.elapsed().as_secs_f64();
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = m
            .entry((op.to_string(), shape.clone()))
            .or_insert_with(|| ProfileEntry {
                op: op.to_string(),
                shape,
                ..Default::default()
            });
        e.calls += 1;
        e.seconds += dt;
        e.counted += cost;
        Ok(out)
    }

    /// Everything recorded so far, most expensive first; clears the record.
    pub fn take(&self) -> Vec<ProfileEntry> {
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<ProfileEntry> = std::mem::take(&mut *m).into_values().collect();
        v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        v
    }
}

/// With `on`: `dev` with its backend wrapped in a profiler (host-clock timing; events are not
/// used) and the profiler; else nothing (use `dev` as it is).
pub fn profiled(
    dev: &BenchDevice,
    on: bool,
) -> (Option<BenchDevice>, Option<Arc<ProfiledBackend>>) {
    if !on {
        return (None, None);
    }
    let p = Arc::new(ProfiledBackend::new(dev.backend.clone()));
    let d = BenchDevice {
        backend: p.clone(),
        events: None,
    };
    (Some(d), Some(p))
}

/// Totals over several `take()`s, most expensive first.
#[derive(Default)]
pub struct ProfileTotals(BTreeMap<(String, String), ProfileEntry>);

impl ProfileTotals {
    pub fn add(&mut self, entries: Vec<ProfileEntry>) {
        for e in entries {
            let r = self
                .0
                .entry((e.op.clone(), e.shape.clone()))
                .or_insert_with(|| ProfileEntry {
                    op: e.op.clone(),
                    shape: e.shape.clone(),
                    ..Default::default()
                });
            r.calls += e.calls;
            r.seconds += e.seconds;
            r.counted += e.counted;
        }
    }
    pub fn into_sorted(self) -> Vec<ProfileEntry> {
        let mut v: Vec<ProfileEntry> = self.0.into_values().collect();
        v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        v
    }
}

/// A printable table: per (op, shape) and per op, time share, GFLOP/s and GB/s of counted work.
pub fn profile_table(entries: &[ProfileEntry], peak_flops: f64) -> String {
    use std::fmt::Write;
    let total: f64 = entries.iter().map(|e| e.seconds).sum::<f64>().max(1e-12);
    let mut s = String::new();
    let mut by_op: BTreeMap<&str, (u64, f64, OpCost)> = BTreeMap::new();
    for e in entries {
        let t = by_op.entry(&e.op).or_default();
        t.0 += e.calls;
        t.1 += e.seconds;
        t.2 += e.counted;
    }
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    let line = |s: &mut String, name: &str, calls: u64, secs: f64, c: OpCost| {
        let _ = writeln!(
            s,
            "{name:<58} {calls:>7} {secs:>9.3} s {:>6.1}% {:>8.2} GFLOP/s {:>8.2} GB/s {:>6.1}% peak",
            100.0 * secs / total,
            c.flops as f64 / secs.max(1e-12) / 1e9,
            c.bytes as f64 / secs.max(1e-12) / 1e9,
            100.0 * c.flops as f64 / secs.max(1e-12) / peak_flops
        );
    };
    let _ = writeln!(
        s,
        "## by op ({total:.3} s recorded; GFLOP/s and GB/s of counted work)"
    );
    for (op, (calls, secs, c)) in &ops {
        line(&mut s, op, *calls, *secs, *c);
    }
    let _ = writeln!(s, "## by op and shape");
    for e in entries {
        line(
            &mut s,
            &format!("{} {}", e.op, e.shape),
            e.calls,
            e.seconds,
            e.counted,
        );
    }
    s
}

/// Ops recorded under a key and forwarded unchanged: `op(args) => key;`, where `key` evaluates
/// to the (op name, shape, counted cost) of the call (`&self` and `-> Result<()>` implied).
macro_rules! profile {
    ($($op:ident($($arg:ident: $ty:ty),* $(,)?) => $key:expr;)*) => {
        $(fn $op(&self, $($arg: $ty),*) -> Result<()> {
            let (op, shape, cost) = $key;
            self.rec(op, shape, cost, || self.inner.$op($($arg),*))
        })*
    };
}

// `runs_ops_concurrently` keeps its default (false): the profile times one op at a time, so the
// model runs the ops it would overlap on the CPU one after the other (and by-op times add up).
impl Backend for ProfiledBackend {
    fn name(&self) -> String {
        format!("{} [profiled]", self.inner.name())
    }
    delegate! { inner:
        fn is_gpu() -> bool;
        fn synchronize() -> Result<()>;
        fn memory_budget() -> usize;
        fn indices_from_host(data: &[u32]) -> Result<Indices>;
    }
    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        self.rec_alloc("alloc (zeros)", shape, || self.inner.zeros(shape))
    }
    fn empty(&self, shape: &[usize]) -> Result<Tensor> {
        self.rec_alloc("alloc (empty)", shape, || self.inner.empty(shape))
    }
    fn from_host(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        self.rec(
            "from_host",
            String::new(),
            OpCost::new(0, 4 * data.len() as u64),
            || self.inner.from_host(data, shape),
        )
    }
    fn to_host(&self, t: &Tensor) -> Result<Vec<f32>> {
        self.rec(
            "to_host",
            item_shape(t),
            OpCost::new(0, 4 * numel(t)),
            || self.inner.to_host(t),
        )
    }
    fn copy(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        self.rec(
            "copy",
            item_shape(src),
            OpCost::new(0, 8 * numel(src)),
            || self.inner.copy(src, dst),
        )
    }
    fn fill(&self, t: &mut Tensor, value: f32) -> Result<()> {
        let c = OpCost::new(0, 4 * numel(t));
        self.rec("fill", item_shape(t), c, || self.inner.fill(t, value))
    }
    profile! {
        conv2d_forward(p: &ConvParams, x: &Tensor, w: &Tensor, y: &mut Tensor)
            => ("conv_fwd", conv_shape(p), count::conv_forward(p));
        conv2d_input_grad(p: &ConvParams, dy: &Tensor, w: &Tensor, dx: &mut Tensor)
            => ("conv_dgrad", conv_shape(p), count::conv_input_grad(p));
        conv2d_weight_grad(p: &ConvParams, x: &Tensor, dy: &Tensor, dw: &mut Tensor)
            => ("conv_wgrad", conv_shape(p), count::conv_weight_grad(p));
        conv2d_forward_bn(p: &ConvParams, x: &Tensor, bn: BnLayer<&Tensor>, w: &Tensor,
            y: &mut Tensor)
            => ("conv_fwd(bn)", conv_shape(p), count::conv_forward(p) + count::bn_input(p));
        conv2d_weight_grad_bn(p: &ConvParams, x: &Tensor, bn: BnLayer<&Tensor>, dy: &Tensor,
            dw: &mut Tensor)
            => ("conv_wgrad(bn)", conv_shape(p), count::conv_weight_grad(p) + count::bn_input(p));
        conv2d_input_grad_onehot(p: &ConvParams, seed: &Tensor, w: &Tensor, first_channel: usize,
            group: usize, dx: &mut Tensor) => {
            let filters = (p.n as usize).div_ceil(group.max(1));
            let c = count::conv_input_grad_onehot(p, filters);
            ("conv_dgrad_onehot", conv_shape(p), c)
        };
        channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor, relu: bool, y: &mut Tensor)
            => {
            let op = if relu { "bn_affine+relu" } else { "affine (normalise)" };
            (op, item_shape(x), count::channel_affine(numel(x), channels(x), relu))
        };
        channel_affine_backward(y_saved: Option<&Tensor>, dy: &Tensor, scale: &Tensor,
            dx: &mut Tensor) => {
            let saved = y_saved.map(numel).unwrap_or(0);
            let c = count::channel_affine_backward(numel(dy), channels(dy), saved);
            let op = if y_saved.is_some() {
                "bn_affine+relu backward"
            } else {
                "affine backward (normalise)"
            };
            (op, item_shape(dy), c)
        };
        batchnorm_train_forward(x: &Tensor, bn: BnLayer<&mut Tensor>, update: BnUpdate,
            y: Option<&mut Tensor>) => {
            let write = y.is_some();
            let c = count::batchnorm_train_forward(numel(x), channels(x), bn.relu, write);
            let op = match (write, bn.relu) {
                (false, _) => "batchnorm_train_stats",
                (true, true) => "batchnorm_train_fwd+relu",
                (true, false) => "batchnorm_train_fwd",
            };
            (op, item_shape(x), c)
        };
        batchnorm_train_backward(x: &Tensor, dy: &Tensor, bn: BnLayer<&Tensor>, grads: BnGrads) => {
            let c = count::batchnorm_train_backward(numel(x), channels(x), bn.relu);
            let op = if bn.relu { "batchnorm_train_bwd+relu" } else { "batchnorm_train_bwd" };
            (op, item_shape(x), c)
        };
        relu(x: &Tensor, y: &mut Tensor) => ("relu", item_shape(x), count::relu(numel(x)));
        relu_backward(y_saved: &Tensor, dy: &Tensor, dx: &mut Tensor) => {
            let c = count::relu_backward(numel(dy), numel(y_saved));
            ("relu_backward", item_shape(dy), c)
        };
        add(a: &Tensor, b: &Tensor, y: &mut Tensor)
            => ("residual add", item_shape(a), count::add(numel(a)));
        add_assign(y: &mut Tensor, x: &Tensor) => {
            let c = count::binary_in_place(numel(x));
            ("residual add (in place)", item_shape(x), c)
        };
        mul_assign(y: &mut Tensor, m: &Tensor)
            => ("mask multiply", item_shape(m), count::binary_in_place(numel(m)));
        global_avg_pool(x: &Tensor, y: &mut Tensor) => {
            let (n, c, h, w) = x.nchw();
            let cost = count::global_avg_pool(n as u64, c as u64, (h * w) as u64);
            ("global_avg_pool", item_shape(x), cost)
        };
        global_avg_pool_backward(dy: &Tensor, dx: &mut Tensor) => {
            let (n, c, h, w) = dx.nchw();
            let cost = count::global_avg_pool_backward(n as u64, c as u64, (h * w) as u64);
            ("global_avg_pool_backward", item_shape(dx), cost)
        };
        linear_forward(x: &Tensor, w: &Tensor, b: &Tensor, y: &mut Tensor) => {
            let (n, i, o) = (x.batch() as u64, w.shape()[1] as u64, w.shape()[0] as u64);
            ("linear", format!("{i}->{o}"), count::linear_forward(n, i, o))
        };
        linear_backward_input(dy: &Tensor, w: &Tensor, dx: &mut Tensor) => {
            let (n, i, o) = (dy.batch() as u64, w.shape()[1] as u64, w.shape()[0] as u64);
            let c = count::linear_backward_input(n, i, o);
            ("linear backward input", format!("{i}->{o}"), c)
        };
        linear_backward_params(x: &Tensor, dy: &Tensor, dw: &mut Tensor, db: &mut Tensor) => {
            let (n, i, o) = (x.batch() as u64, dw.shape()[1] as u64, dw.shape()[0] as u64);
            let c = count::linear_backward_params(n, i, o);
            ("linear backward params", format!("{i}->{o}"), c)
        };
        softmax_cross_entropy(logits: &Tensor, labels: &Indices, loss: &mut Tensor,
            dlogits: &mut Tensor) => {
            let (n, k) = (logits.batch() as u64, channels(logits));
            ("softmax_xent", item_shape(logits), count::softmax_cross_entropy(n, k))
        };
        channel_mse(a: &Tensor, b: &Tensor, loss: &mut Tensor)
            => ("channel_mse", item_shape(a), count::channel_mse(numel(a), channels(a)));
        frg_seed(a_x: &Tensor, a_x0: &Tensor, first_channel: usize, seed: &mut Tensor) => {
            let (kb, b) = (seed.batch() as u64, a_x.batch().max(1) as u64);
            let hw = (seed.numel() / seed.batch().max(1)) as u64;
            ("frg_seed", item_shape(a_x), count::frg_seed(kb / b, b, hw))
        };
        sign_step(x0: &Tensor, g: &Tensor, eps: f32, y: &mut Tensor)
            => ("sign_step", item_shape(g), count::sign_step(numel(g), numel(x0)));
        sgd_step(param: &mut Tensor, grad: &Tensor, momentum_buf: &mut Tensor, sgd: Sgd)
            => ("sgd_step", String::new(), count::sgd_step(numel(grad)));
    }
}
