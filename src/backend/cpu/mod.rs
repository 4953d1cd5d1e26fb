//! CPU reference backend: every `Backend` op on host `Vec<f32>` buffers, multi-threaded with rayon.
//!
//! Design: this file holds the storage plumbing (host views, shape validation helpers) and the
//! trait impl, which only validates arguments and dispatches to one module per op family:
//! `conv` (im2col-free convolutions on top of `gemm`, a packed, cache-blocked SGEMM with a
//! register-tiled micro-kernel; stride-1 convs with planes of 8x8 and up go to `direct`, which
//! reads zero-padded items with contiguous vector loads and packs nothing), `norm` (per-channel affine, training-mode batchnorm),
//! `elementwise` (ReLU, adds, sign step, SGD) and `loss` (pooling, linear head, cross-entropy,
//! FRG losses). Every reduction runs in a fixed order that does not depend on the thread count,
//! so results are bitwise reproducible run to run.
mod conv;
mod conv_strided;
mod direct;
mod direct_dgrad;
mod direct_px;
mod direct_wgrad;
mod elementwise;
mod gemm;
mod loss;
mod norm;
mod winograd;
mod winograd_avx512;

use super::{Backend, BnGrads, BnLayer, BnUpdate, ConvParams, Sgd};
use crate::error::{Error, Result};
use crate::tensor::{Indices, Storage, Tensor};

pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        keep_freed_memory();
        CpuBackend
    }
}

/// Every op allocates its output; with glibc's defaults, buffers above 128 KiB to 32 MiB are
/// mmap'ed and unmapped on free, so each op pays page faults and zeroing of fresh pages (a sixth
/// of the scan's time in profiles). Raise the mmap threshold to its maximum and stop trimming, so
/// freed activations are reused from the heap.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            // SAFETY: mallopt only changes allocator tuning parameters; called once, before
            // this backend allocates.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, i32::MAX);
            }
        });
    }
}

/// A vector of `len` floats built in parallel chunks of `chunk`: each chunk is zeroed and then
/// handed to `f(chunk index, chunk)` by the thread that fills it, so there is no serial memset of
/// the whole buffer first and a chunk is still in its core's cache when `f` writes it.
pub(super) fn par_zeroed(
    len: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    use std::mem::MaybeUninit;
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| {
            for e in c.iter_mut() {
                e.write(0.0);
            }
            // SAFETY: every element of c was initialised just above, and MaybeUninit<f32> has the
            // layout of f32.
            let c = unsafe { &mut *(c as *mut [MaybeUninit<f32>] as *mut [f32]) };
            f(i, c);
        });
    // SAFETY: the chunks cover 0..len and every element in them was initialised.
    unsafe { v.set_len(len) };
    v
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// Host view of a tensor; `WrongBackend` for device storage, `Shape` when the buffer length does
/// not match the shape.
pub(crate) fn host<'a>(op: &'static str, what: &str, t: &'a Tensor) -> Result<&'a [f32]> {
    match &t.storage {
        Storage::Host(v) => {
            if v.len() != t.numel() {
                return Err(Error::shape(
                    op,
                    format!(
                        "{what}: buffer holds {} elements but shape {:?} needs {}",
                        v.len(),
                        t.shape,
                        t.numel()
                    ),
                ));
            }
            Ok(v)
        }
        s => Err(Error::WrongBackend {
            backend: "cpu",
            found: s.location(),
        }),
    }
}

/// Raw output pointer that may cross rayon tasks (the conv GEMMs' item groups, Winograd's units),
/// each of which writes its own disjoint part of one live buffer.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: every user hands each task a disjoint part of a buffer that outlives the parallel loop.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Host views of several input tensors (`host`, in order: the first bad one is the error).
pub(crate) fn hosts<'a, const N: usize>(
    op: &'static str,
    ts: [(&str, &'a Tensor); N],
) -> Result<[&'a [f32]; N]> {
    let mut out = [&[][..]; N];
    for (o, (what, t)) in out.iter_mut().zip(ts) {
        *o = host(op, what, t)?;
    }
    Ok(out)
}

pub(crate) fn host_mut<'a>(
    op: &'static str,
    what: &str,
    t: &'a mut Tensor,
) -> Result<&'a mut [f32]> {
    let numel = t.numel();
    let shape = t.shape.clone();
    match &mut t.storage {
        Storage::Host(v) => {
            if v.len() != numel {
                return Err(Error::shape(
                    op,
                    format!(
                        "{what}: buffer holds {} elements but shape {shape:?} needs {numel}",
                        v.len()
                    ),
                ));
            }
            Ok(v)
        }
        s => Err(Error::WrongBackend {
            backend: "cpu",
            found: s.location(),
        }),
    }
}

pub(crate) use super::shapes::{broadcast_batch, numel_is, same_shape};

/// Trait methods that hand their arguments, in order, to one op-family function and return its
/// result: `op(args) => function;` (`&self` and `-> Result<()>` implied).
macro_rules! forward {
    ($($op:ident($($arg:ident: $ty:ty),* $(,)?) => $f:path;)*) => {
        $(fn $op(&self, $($arg: $ty),*) -> Result<()> {
            $f($($arg),*)
        })*
    };
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        let winograd = winograd::kernel_name().map(|k| format!(", {k}"));
        format!(
            "cpu ({} threads, {}, {}{})",
            rayon::current_num_threads(),
            gemm::kernel_name(),
            direct::kernel_name(),
            winograd.unwrap_or_default()
        )
    }
    fn is_gpu(&self) -> bool {
        false
    }
    fn runs_ops_concurrently(&self) -> bool {
        true
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// A working set, not a memory limit: the scan's chunk of stacked (channel, sample) pairs is
    /// sized from it. Since op outputs reuse recycled buffers and the direct convs pack weights
    /// once per call, larger chunks win: 64 MiB against 16 MiB, 24.0-24.9 s against 28.3 s for
    /// the width-16 scan and 1,306 s against 1,334 s projected at width 64 (benches/RESULTS.md).
    /// `FMP_CPU_WORKSET` (bytes) overrides the 64 MiB default.
    fn memory_budget(&self) -> usize {
        std::env::var("FMP_CPU_WORKSET")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&v| v > 0)
            .unwrap_or(64 << 20)
    }

    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        Ok(Tensor::on_host(vec![0.0; n], shape))
    }
    fn empty(&self, shape: &[usize]) -> Result<Tensor> {
        let data = crate::tensor::recycle::take(shape.iter().product());
        Ok(Tensor::on_host(data, shape))
    }
    fn from_host(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        super::shapes::from_host(data.len(), shape)?;
        Ok(Tensor::on_host(data.to_vec(), shape))
    }
    fn to_host(&self, t: &Tensor) -> Result<Vec<f32>> {
        Ok(host("to_host", "tensor", t)?.to_vec())
    }
    fn indices_from_host(&self, data: &[u32]) -> Result<Indices> {
        Ok(Indices::on_host(data))
    }
    fn copy(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        let s = host("copy", "src", src)?;
        numel_is("copy", "dst", dst, s.len())?;
        host_mut("copy", "dst", dst)?.copy_from_slice(s);
        Ok(())
    }
    fn fill(&self, t: &mut Tensor, value: f32) -> Result<()> {
        host_mut("fill", "tensor", t)?.fill(value);
        Ok(())
    }

    forward! {
        conv2d_forward(p: &ConvParams, x: &Tensor, w: &Tensor, y: &mut Tensor) => conv::forward;
        conv2d_input_grad(p: &ConvParams, dy: &Tensor, w: &Tensor, dx: &mut Tensor)
            => conv::input_grad;
        conv2d_weight_grad(p: &ConvParams, x: &Tensor, dy: &Tensor, dw: &mut Tensor)
            => conv::weight_grad;
        conv2d_forward_bn(p: &ConvParams, x: &Tensor, bn: BnLayer<&Tensor>, w: &Tensor,
            y: &mut Tensor) => conv::forward_bn;
        conv2d_weight_grad_bn(p: &ConvParams, x: &Tensor, bn: BnLayer<&Tensor>, dy: &Tensor,
            dw: &mut Tensor) => conv::weight_grad_bn;
        conv2d_input_grad_onehot(p: &ConvParams, seed: &Tensor, w: &Tensor, first_channel: usize,
            group: usize, dx: &mut Tensor) => conv::input_grad_onehot;

        channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor, relu: bool, y: &mut Tensor)
            => norm::channel_affine;
        channel_affine_backward(y_saved: Option<&Tensor>, dy: &Tensor, scale: &Tensor,
            dx: &mut Tensor) => norm::channel_affine_backward;
        batchnorm_train_forward(x: &Tensor, bn: BnLayer<&mut Tensor>, update: BnUpdate,
            y: Option<&mut Tensor>) => norm::bn_train_forward;
        batchnorm_train_backward(x: &Tensor, dy: &Tensor, bn: BnLayer<&Tensor>, grads: BnGrads) => norm::bn_train_backward;

        relu(x: &Tensor, y: &mut Tensor) => elementwise::relu;
        relu_backward(y_saved: &Tensor, dy: &Tensor, dx: &mut Tensor) => elementwise::relu_backward;
        add(a: &Tensor, b: &Tensor, y: &mut Tensor) => elementwise::add;
        add_assign(y: &mut Tensor, x: &Tensor) => elementwise::add_assign;
        mul_assign(y: &mut Tensor, m: &Tensor) => elementwise::mul_assign;

        global_avg_pool(x: &Tensor, y: &mut Tensor) => loss::global_avg_pool;
        global_avg_pool_backward(dy: &Tensor, dx: &mut Tensor) => loss::global_avg_pool_backward;
        linear_forward(x: &Tensor, w: &Tensor, b: &Tensor, y: &mut Tensor) => loss::linear_forward;
        linear_backward_input(dy: &Tensor, w: &Tensor, dx: &mut Tensor)
            => loss::linear_backward_input;
        linear_backward_params(x: &Tensor, dy: &Tensor, dw: &mut Tensor, db: &mut Tensor)
            => loss::linear_backward_params;
        softmax_cross_entropy(logits: &Tensor, labels: &Indices, loss_out: &mut Tensor,
            dlogits: &mut Tensor) => loss::softmax_cross_entropy;

        channel_mse(a: &Tensor, b: &Tensor, loss_out: &mut Tensor) => loss::channel_mse;
        frg_seed(a_x: &Tensor, a_x0: &Tensor, first_channel: usize, seed: &mut Tensor)
            => loss::frg_seed;
        sign_step(x0: &Tensor, g: &Tensor, eps: f32, y: &mut Tensor) => elementwise::sign_step;
        sgd_step(param: &mut Tensor, grad: &Tensor, momentum_buf: &mut Tensor, sgd: Sgd)
            => elementwise::sgd_step;
    }
}
