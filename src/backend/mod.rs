//! One backend trait, three implementations:
//! - `cpu`: the reference implementation and the default when no GPU is present;
//! - `gpu` + CUDA runner: hand-written kernels from `kernels/*.cu`, compiled by NVRTC;
//! - `gpu` + emulator runner (`--features emu`, tests only): the same kernels compiled as host C++.
//!
//! Conventions shared by every op:
//! - tensors are f32, NCHW (rank 4) or [N, F] (rank 2); outputs are passed in, already allocated,
//!   and are overwritten (never accumulated into) unless the op says otherwise;
//! - "saved" tensors (forward outputs kept for a backward pass) may have a batch B that divides the
//!   batch N of the gradient: item i then reads saved item `i % B`. The batched FRG scan stacks
//!   (channel, sample) pairs channel-major, so one copy of the B saved activations serves all pairs.
pub mod cpu;
pub mod gpu;
pub mod params;
pub mod select;
pub mod shapes;

pub use params::ConvParams;

use crate::error::Result;
use crate::tensor::{Indices, Tensor};

/// The ops of `Backend`, which write into outputs passed in: `fn op(args);` declares
/// `fn op(&self, args) -> Result<()>;` (one line an op, so the list reads as the op table).
macro_rules! ops {
    ($($(#[$meta:meta])* fn $op:ident($($arg:ident: $ty:ty),* $(,)?);)*) => {
        $($(#[$meta])* fn $op(&self, $($arg: $ty),*) -> Result<()>;)*
    };
}

/// Trait methods that call the method of the same name on `self.<field>` with the same arguments:
/// `delegate! { field: fn op(args) -> Ret; ... }` (`&self` implied).
macro_rules! delegate {
    ($field:ident: $(fn $op:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty;)*) => {
        $(fn $op(&self, $($arg: $ty),*) -> $ret {
            self.$field.$op($($arg),*)
        })*
    };
}
pub(crate) use delegate;

/// A training batchnorm as one op sees it: its affine parameters and batch statistics (mean,
/// invstd = 1/sqrt(var + eps)), each [C], which the forward writes (`S` = `&mut Tensor`) and the
/// backward reads (`S` = `&Tensor`), and whether the ReLU that follows it is fused (`relu`: the
/// forward writes relu(bn(x)), the backward takes that output's gradient).
#[derive(Clone, Copy)]
pub struct BnLayer<'a, S> {
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub save_mean: S,
    pub save_invstd: S,
    pub relu: bool,
}

/// What only a training batchnorm's forward needs: `eps` of its batch statistics, and the running
/// statistics [C] it updates in place with `momentum`.
pub struct BnUpdate<'a> {
    pub eps: f32,
    pub momentum: f32,
    pub running_mean: &'a mut Tensor,
    pub running_var: &'a mut Tensor,
}

impl<'a, S> BnLayer<'a, S> {
    pub fn new(
        gamma: &'a Tensor,
        beta: &'a Tensor,
        save_mean: S,
        save_invstd: S,
        relu: bool,
    ) -> Self {
        BnLayer {
            gamma,
            beta,
            save_mean,
            save_invstd,
            relu,
        }
    }
}

impl<'a> BnUpdate<'a> {
    pub fn new(
        eps: f32,
        momentum: f32,
        running_mean: &'a mut Tensor,
        running_var: &'a mut Tensor,
    ) -> Self {
        BnUpdate {
            eps,
            momentum,
            running_mean,
            running_var,
        }
    }
}

/// The gradients a training batchnorm's backward writes (overwritten): dx (x's shape), dgamma and
/// dbeta [C].
pub struct BnGrads<'a> {
    pub dx: &'a mut Tensor,
    pub dgamma: &'a mut Tensor,
    pub dbeta: &'a mut Tensor,
}

impl<'a> BnGrads<'a> {
    pub fn new(dx: &'a mut Tensor, dgamma: &'a mut Tensor, dbeta: &'a mut Tensor) -> Self {
        BnGrads { dx, dgamma, dbeta }
    }
}

/// PyTorch SGD's hyperparameters (dampening 0, no Nesterov).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

impl Sgd {
    pub fn new(lr: f32, momentum: f32, weight_decay: f32) -> Self {
        Sgd {
            lr,
            momentum,
            weight_decay,
        }
    }
}

pub trait Backend: Send + Sync {
    /// Human-readable description, e.g. "cpu (2 threads)" or "cuda:0 NVIDIA H100 (sm_90)".
    fn name(&self) -> String;
    fn is_gpu(&self) -> bool;
    /// Wait until all queued work has finished (no-op on the CPU).
    fn synchronize(&self) -> Result<()>;
    /// Bytes of work buffers the scan's chunks are sized for: device memory on a GPU, a working
    /// set on the CPU (64 MiB by default, `FMP_CPU_WORKSET`).
    fn memory_budget(&self) -> usize;
    /// Whether the model may run independent ops at once from several host threads (the CPU
    /// backend: their tasks share one thread pool, and every op's result is independent of which
    /// threads run it). Not on a GPU (one stream), nor under the op profiler, which times one op
    /// at a time.
    fn runs_ops_concurrently(&self) -> bool {
        false
    }

    // ---- memory ------------------------------------------------------------------------------
    fn zeros(&self, shape: &[usize]) -> Result<Tensor>;
    /// A tensor for an op to overwrite: its contents are unspecified (the CPU backend hands out
    /// recycled buffers without clearing them). Only for outputs every element of which the next
    /// op writes; everything else takes `zeros`.
    fn empty(&self, shape: &[usize]) -> Result<Tensor> {
        self.zeros(shape)
    }
    fn from_host(&self, data: &[f32], shape: &[usize]) -> Result<Tensor>;
    fn to_host(&self, t: &Tensor) -> Result<Vec<f32>>;
    fn indices_from_host(&self, data: &[u32]) -> Result<Indices>;
    /// dst <- src (same element count; shapes may differ).
    fn copy(&self, src: &Tensor, dst: &mut Tensor) -> Result<()>;
    fn fill(&self, t: &mut Tensor, value: f32) -> Result<()>;

    ops! {
        // ---- convolution (square kernel, zero padding, no bias) ---------------------------------
        /// y[n,co,oh,ow] = sum_{ci,kh,kw} x[n,ci,oh*s-p+kh,ow*s-p+kw] * w[co,ci,kh,kw]
        fn conv2d_forward(p: &ConvParams, x: &Tensor, w: &Tensor, y: &mut Tensor);
        /// dx = d(sum y*dy)/dx.
        fn conv2d_input_grad(p: &ConvParams, dy: &Tensor, w: &Tensor, dx: &mut Tensor);
        /// dw = d(sum y*dy)/dw, overwritten.
        fn conv2d_weight_grad(p: &ConvParams, x: &Tensor, dy: &Tensor, dw: &mut Tensor);
        /// `conv2d_forward` of relu(bn(x)) (of bn(x) without `bn.relu`), `bn` a training
        /// batchnorm's parameters and saved statistics, computed as the convolution reads x: bit
        /// for bit `conv2d_forward` of what `batchnorm_train_forward` writes, without storing it.
        fn conv2d_forward_bn(p: &ConvParams, x: &Tensor, bn: BnLayer<&Tensor>, w: &Tensor,
            y: &mut Tensor);
        /// `conv2d_weight_grad` of the input relu(bn(x)), read as `conv2d_forward_bn` reads it.
        fn conv2d_weight_grad_bn(p: &ConvParams, x: &Tensor, bn: BnLayer<&Tensor>, dy: &Tensor,
            dw: &mut Tensor);
        /// Input gradient of a cotangent that is non-zero in a single output channel per item:
        /// `seed` is [N, 1, h_out, w_out]; item i uses filter `first_channel + i / group`.
        /// Equals `conv2d_input_grad` of the one-hot-expanded cotangent. `p.n` is N, `p.c_out` the
        /// full filter count of `w`.
        fn conv2d_input_grad_onehot(p: &ConvParams, seed: &Tensor, w: &Tensor, first_channel: usize,
            group: usize, dx: &mut Tensor);

        // ---- per-channel affine: eval-mode batchnorm and input normalisation --------------------
        /// y = x * scale[c] + shift[c], then max(., 0) when `relu`.
        fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor, relu: bool, y: &mut Tensor);
        /// dx = dy * scale[c], masked by (y_saved > 0) when `y_saved` (the forward output of a
        /// fused affine+ReLU) is given. y_saved's batch may divide dy's batch (see module docs).
        fn channel_affine_backward(y_saved: Option<&Tensor>, dy: &Tensor, scale: &Tensor,
            dx: &mut Tensor);

        // ---- training-mode batchnorm ------------------------------------------------------------
        /// Normalises with batch statistics (biased variance), writes `bn.save_mean` and
        /// `bn.save_invstd` and updates `update`'s running statistics in place with PyTorch semantics:
        /// r = (1 - momentum) * r + momentum * stat, using the *unbiased* batch variance for
        /// running_var. With `bn.relu`, y = relu(bn(x)) in the same pass (the ReLU that follows
        /// every training BN of the model), and bn(x) itself is not kept. Without `y`, only the
        /// statistics: the consumers read relu(bn(x)) through `conv2d_forward_bn` and
        /// `conv2d_weight_grad_bn`.
        fn batchnorm_train_forward(x: &Tensor, bn: BnLayer<&mut Tensor>, update: BnUpdate,
            y: Option<&mut Tensor>);
        /// Gradients of training-mode batchnorm. With `bn.relu`, dy is the gradient of relu(bn(x))
        /// (the forward's `relu`): it is masked by bn(x) > 0, recomputed from x, gamma, beta and the
        /// saved statistics exactly as the forward computed it, so no ReLU output is read and no
        /// masked gradient is written.
        fn batchnorm_train_backward(x: &Tensor, dy: &Tensor, bn: BnLayer<&Tensor>, grads: BnGrads);

        // ---- elementwise ------------------------------------------------------------------------
        fn relu(x: &Tensor, y: &mut Tensor);
        /// dx = dy * (y_saved > 0); y_saved's batch may divide dy's batch.
        fn relu_backward(y_saved: &Tensor, dy: &Tensor, dx: &mut Tensor);
        /// y = a + b (residual add).
        fn add(a: &Tensor, b: &Tensor, y: &mut Tensor);
        /// y += x.
        fn add_assign(y: &mut Tensor, x: &Tensor);
        /// y *= m elementwise (masks for pruned filters).
        fn mul_assign(y: &mut Tensor, m: &Tensor);

        // ---- pooling and head -------------------------------------------------------------------
        /// [N,C,H,W] -> [N,C] mean over H*W.
        fn global_avg_pool(x: &Tensor, y: &mut Tensor);
        fn global_avg_pool_backward(dy: &Tensor, dx: &mut Tensor);
        /// y[n,o] = sum_i x[n,i] w[o,i] + b[o].
        fn linear_forward(x: &Tensor, w: &Tensor, b: &Tensor, y: &mut Tensor);
        fn linear_backward_input(dy: &Tensor, w: &Tensor, dx: &mut Tensor);
        /// dw = dy^T x, db = sum_n dy (overwritten).
        fn linear_backward_params(x: &Tensor, dy: &Tensor, dw: &mut Tensor, db: &mut Tensor);
        /// Per-sample loss[n] = -log softmax(logits[n])[label[n]] and
        /// dlogits = (softmax - onehot) / N (the gradient of the *mean* loss).
        fn softmax_cross_entropy(logits: &Tensor, labels: &Indices, loss: &mut Tensor,
            dlogits: &mut Tensor);

        // ---- FRG --------------------------------------------------------------------------------
        /// loss[c] = mean over (n,h,w) of (a - b)^2, for every channel c.
        fn channel_mse(a: &Tensor, b: &Tensor, loss: &mut Tensor);
        /// Batched FRG cotangent: a_x, a_x0 are [B,C,H,W] activations of X and X0 at a conv
        /// output; seed is [K*B,1,H,W] with seed[k*B+b] = 2/(B*H*W) * (a_x0[b,c] - a_x[b,c]),
        /// c = first_channel+k: the gradient of channel c's `channel_mse(a_x, a_x0)` with respect
        /// to a_x0[:, c].
        fn frg_seed(a_x: &Tensor, a_x0: &Tensor, first_channel: usize, seed: &mut Tensor);
        /// y[i] = clamp(x0[i % B] + eps * sign(g[i]), 0, 1), sign(0) = 0; x0 has batch B
        /// dividing N.
        fn sign_step(x0: &Tensor, g: &Tensor, eps: f32, y: &mut Tensor);
        /// PyTorch SGD (`Sgd`): g = grad + weight_decay * param; buf = momentum * buf + g;
        /// param -= lr * buf. `momentum_buf` starts at zero.
        fn sgd_step(param: &mut Tensor, grad: &Tensor, momentum_buf: &mut Tensor, sgd: Sgd);
    }
}
