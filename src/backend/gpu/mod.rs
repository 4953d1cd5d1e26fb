//! GPU-style backend generic over a kernel runner (CUDA driver or CPU emulator) (issues 3, 4, 14).
//!
//! `GpuBackend<R>` implements `Backend` with one launcher per kernel. A launcher states only what
//! differs between kernels: the op's shape check (`backend::shapes`, the same one the CPU backend
//! runs), the kernel id, its `#[repr(C)]` params struct (`kernels.rs`, mirrored in
//! `kernels/params.cuh`) and its grid rule (`Grid`). Everything else -- skipping empty problems,
//! the 32-bit indexing limit of the kernels, launch configurations, the params bytes -- lives in
//! `GpuBackend::launch`. Memory comes from the runner. The launch configurations are the ones the
//! kernels were written for (256-thread blocks, 64x64 conv tiles), so the emulator exercises
//! exactly what the GPU runs.
pub mod cuda;
pub mod kernel_cache;
pub mod kernels;
mod launch;
pub mod nvrtc;
pub mod runner;

#[cfg(feature = "emu")]
pub mod emu;

use bytemuck::Pod;

use self::kernels as k;
use self::runner::{KernelId, Runner};
use super::shapes::{self, numel_is, same_shape};
use super::{delegate, Backend, BnGrads, BnLayer, BnUpdate, ConvParams, Sgd};
use crate::ensure_shape;
use crate::error::Result;
use crate::tensor::{Indices, Tensor};

use self::launch::{
    conv_fits_i32, dgrad_gemm, div_up, fwd_gemm, fwd_tile_m, i32_of, non_empty, pick_tile_m,
    tiled_kernel, us, wgrad_gemm, wgrad_plan, wgrad_tile_m, Grid, BLOCK,
};

pub struct GpuBackend<R: Runner> {
    runner: R,
}

impl<R: Runner> GpuBackend<R> {
    pub fn new(runner: R) -> Self {
        GpuBackend { runner }
    }
    pub fn runner(&self) -> &R {
        &self.runner
    }

    /// Device addresses of tensors, in order, for a params struct.
    fn ptrs<const N: usize>(&self, ts: [&Tensor; N]) -> Result<[u64; N]> {
        let mut out = [0u64; N];
        for (o, t) in out.iter_mut().zip(ts) {
            *o = self.runner.ptr(t)?;
        }
        Ok(out)
    }

    /// The one launch path: nothing to do for an empty grid; the 1-D work count must fit the
    /// kernels' 32-bit indexing; `args` builds the params struct (only when there is work).
    fn launch<A: Pod>(
        &self,
        kernel: KernelId,
        grid: Grid,
        args: impl FnOnce() -> Result<A>,
    ) -> Result<()> {
        let work = grid.work();
        if work == 0 {
            return Ok(());
        }
        if !matches!(grid, Grid::Tiles { .. } | Grid::Shared { .. }) {
            i32_of(kernel.name, "work size", work)?;
        }
        let a = args()?;
        self.runner
            .launch(kernel, grid.config(), bytemuck::bytes_of(&a))
    }

    /// A one-in, one-out elementwise kernel over y's elements (UnaryArgs).
    fn unary(&self, kernel: KernelId, x: &Tensor, y: &Tensor) -> Result<()> {
        let n = y.numel();
        self.launch(kernel, Grid::Elems(n), || {
            let [x, y] = self.ptrs([x, y])?;
            let numel = n as i32;
            Ok(k::UnaryArgs {
                x,
                y,
                numel,
                pad_: 0,
            })
        })
    }

    /// conv2d_forward with an explicit row tile (CONV_TILE_M or CONV_TILE_M_LARGE).
    pub fn conv2d_forward_tiled(
        &self,
        p: &ConvParams,
        x: &Tensor,
        w: &Tensor,
        y: &mut Tensor,
        tile_m: u32,
    ) -> Result<()> {
        self.conv_forward_launch("conv2d_forward", p, x, None, w, y, tile_m)
    }

    /// The forward kernel named `op`, its input read through `bn` when given.
    #[allow(clippy::too_many_arguments)]
    fn conv_forward_launch(
        &self,
        op: &'static str,
        p: &ConvParams,
        x: &Tensor,
        bn: Option<&BnLayer<&Tensor>>,
        w: &Tensor,
        y: &mut Tensor,
        tile_m: u32,
    ) -> Result<()> {
        shapes::conv_forward_of(op, p, x, bn, w, y)?;
        let pair = (k::CONV2D_FORWARD, k::CONV2D_FORWARD_M128);
        self.conv_tiled(op, p, tile_m, pair, fwd_gemm(p), || {
            let [x, w, y] = self.ptrs([x, w, y])?;
            let bn = self.bn_in(bn)?;
            Ok(k::ConvFwdArgs { x, w, y, p: *p, bn })
        })
    }

    /// The kernels' view of a batchnorm that a convolution reads its input through.
    fn bn_in(&self, bn: Option<&BnLayer<&Tensor>>) -> Result<k::BnIn> {
        let Some(bn) = bn else {
            return Ok(k::BnIn::NONE);
        };
        let [gamma, beta, mean, invstd] =
            self.ptrs([bn.gamma, bn.beta, bn.save_mean, bn.save_invstd])?;
        Ok(k::BnIn {
            gamma,
            beta,
            mean,
            invstd,
            relu: bn.relu as i32,
            pad_: 0,
        })
    }

    /// conv2d_input_grad with an explicit row tile (CONV_TILE_M or CONV_TILE_M_LARGE).
    pub fn conv2d_input_grad_tiled(
        &self,
        p: &ConvParams,
        dy: &Tensor,
        w: &Tensor,
        dx: &mut Tensor,
        tile_m: u32,
    ) -> Result<()> {
        shapes::conv_input_grad(p, dy, w, dx)?;
        let pair = (k::CONV2D_INPUT_GRAD, k::CONV2D_INPUT_GRAD_M128);
        self.conv_tiled("conv2d_input_grad", p, tile_m, pair, dgrad_gemm(p), || {
            let [dy, w, dx] = self.ptrs([dy, w, dx])?;
            Ok(k::ConvDgradArgs { dy, w, dx, p: *p })
        })
    }

    /// The tiled implicit-GEMM launch of conv forward and input-grad (after the op's shape check):
    /// the 32-bit limit, the (64-row, 128-row) kernel pair's member for `tile_m`, and `rows` x
    /// `cols` output tiles.
    fn conv_tiled<A: Pod>(
        &self,
        op: &'static str,
        p: &ConvParams,
        tile_m: u32,
        (small, large): (KernelId, KernelId),
        (rows, cols): (usize, usize),
        args: impl FnOnce() -> Result<A>,
    ) -> Result<()> {
        conv_fits_i32(op, p)?;
        let kernel = tiled_kernel(op, tile_m, small, large)?;
        let grid = Grid::Tiles {
            cols,
            rows,
            tile_m,
            z: 1,
        };
        self.launch(kernel, grid, args)
    }

    /// The weight-gradient kernel with an explicit split count (tests use this to cover both the
    /// direct and the split-K path) and the automatic row tile.
    pub fn conv2d_weight_grad_split(
        &self,
        p: &ConvParams,
        x: &Tensor,
        dy: &Tensor,
        dw: &mut Tensor,
        splits: usize,
    ) -> Result<()> {
        self.conv2d_weight_grad_tiled(p, x, dy, dw, wgrad_tile_m(p), splits)
    }

    /// The weight-gradient kernel with an explicit row tile and split count. With more than one
    /// split, each K chunk writes its own slice of a [splits, c_out, c_in*k*k] workspace and a
    /// second kernel sums the slices in a fixed order.
    pub fn conv2d_weight_grad_tiled(
        &self,
        p: &ConvParams,
        x: &Tensor,
        dy: &Tensor,
        dw: &mut Tensor,
        tile_m: u32,
        splits: usize,
    ) -> Result<()> {
        self.conv_weight_grad_launch("conv2d_weight_grad", p, x, None, dy, dw, tile_m, splits)
    }

    /// The weight-gradient kernels for `op`, the input read through `bn` when given.
    #[allow(clippy::too_many_arguments)]
    fn conv_weight_grad_launch(
        &self,
        op: &'static str,
        p: &ConvParams,
        x: &Tensor,
        bn: Option<&BnLayer<&Tensor>>,
        dy: &Tensor,
        dw: &mut Tensor,
        tile_m: u32,
        splits: usize,
    ) -> Result<()> {
        let kernel = tiled_kernel(
            op,
            tile_m,
            k::CONV2D_WEIGHT_GRAD,
            k::CONV2D_WEIGHT_GRAD_M128,
        )?;
        shapes::conv_weight_grad_of(op, p, x, bn, dy, dw)?;
        conv_fits_i32(op, p)?;
        let (rows, cols, kdim) = wgrad_gemm(p);
        let count = rows * cols;
        if kdim == 0 {
            // An empty batch contributes nothing: dw is overwritten with zeros.
            return self.fill(dw, 0.0);
        }
        let tk = k::CONV_TILE_K as usize;
        let splits = splits.clamp(1, div_up(kdim, tk));
        let k_chunk = div_up(div_up(kdim, splits), tk) * tk;
        let splits = div_up(kdim, k_chunk);
        let grid = Grid::Tiles {
            cols,
            rows,
            tile_m,
            z: splits,
        };
        let args = |out: &Tensor| {
            let [x, dy, out] = self.ptrs([x, dy, out])?;
            let (k_chunk, splits) = (k_chunk as i32, splits as i32);
            Ok(k::ConvWgradArgs {
                x,
                dy,
                out,
                p: *p,
                k_chunk,
                splits,
                bn: self.bn_in(bn)?,
            })
        };
        if splits == 1 {
            return self.launch(kernel, grid, || args(dw));
        }
        i32_of(op, "split workspace size", splits * count)?;
        let ws = self.runner.zeros(&[splits, count])?;
        self.launch(kernel, grid, || args(&ws))?;
        self.launch(k::CONV2D_WEIGHT_GRAD_REDUCE, Grid::Elems(count), || {
            let [ws, dw] = self.ptrs([&ws, dw])?;
            let (count, splits) = (count as i32, splits as i32);
            Ok(k::WgradReduceArgs {
                ws,
                dw,
                count,
                splits,
            })
        })
        // The workspace is freed when `ws` drops; the runner orders frees after queued work.
    }
}

impl<R: Runner> Backend for GpuBackend<R> {
    delegate! { runner:
        fn name() -> String;
        fn is_gpu() -> bool;
        fn synchronize() -> Result<()>;
        fn memory_budget() -> usize;
        fn zeros(shape: &[usize]) -> Result<Tensor>;
        fn from_host(data: &[f32], shape: &[usize]) -> Result<Tensor>;
        fn to_host(t: &Tensor) -> Result<Vec<f32>>;
        fn indices_from_host(data: &[u32]) -> Result<Indices>;
    }

    fn copy(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        numel_is("copy", "dst", dst, src.numel())?;
        self.unary(k::COPY_F32, src, dst)
    }

    fn fill(&self, t: &mut Tensor, value: f32) -> Result<()> {
        let n = t.numel();
        self.launch(k::FILL_F32, Grid::Elems(n), || {
            let [y] = self.ptrs([t])?;
            let numel = n as i32;
            Ok(k::FillArgs { y, numel, value })
        })
    }

    fn conv2d_forward(&self, p: &ConvParams, x: &Tensor, w: &Tensor, y: &mut Tensor) -> Result<()> {
        self.conv2d_forward_tiled(p, x, w, y, fwd_tile_m(p))
    }

    fn conv2d_input_grad(
        &self,
        p: &ConvParams,
        dy: &Tensor,
        w: &Tensor,
        dx: &mut Tensor,
    ) -> Result<()> {
        let (rows, cols) = dgrad_gemm(p);
        self.conv2d_input_grad_tiled(p, dy, w, dx, pick_tile_m(rows, cols))
    }

    fn conv2d_weight_grad(
        &self,
        p: &ConvParams,
        x: &Tensor,
        dy: &Tensor,
        dw: &mut Tensor,
    ) -> Result<()> {
        let (tile, splits) = wgrad_plan(p);
        self.conv2d_weight_grad_tiled(p, x, dy, dw, tile, splits)
    }

    fn conv2d_forward_bn(
        &self,
        p: &ConvParams,
        x: &Tensor,
        bn: BnLayer<&Tensor>,
        w: &Tensor,
        y: &mut Tensor,
    ) -> Result<()> {
        let tile = fwd_tile_m(p);
        self.conv_forward_launch("conv2d_forward_bn", p, x, Some(&bn), w, y, tile)
    }

    fn conv2d_weight_grad_bn(
        &self,
        p: &ConvParams,
        x: &Tensor,
        bn: BnLayer<&Tensor>,
        dy: &Tensor,
        dw: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "conv2d_weight_grad_bn";
        let (tile, splits) = wgrad_plan(p);
        self.conv_weight_grad_launch(OP, p, x, Some(&bn), dy, dw, tile, splits)
    }

    fn conv2d_input_grad_onehot(
        &self,
        p: &ConvParams,
        seed: &Tensor,
        w: &Tensor,
        first_channel: usize,
        group: usize,
        dx: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "conv2d_input_grad_onehot";
        shapes::conv_input_grad_onehot(p, seed, w, first_channel, group, dx)?;
        conv_fits_i32(OP, p)?;
        let n = us(p.n);
        ensure_shape!(n <= 65535, OP, "batch {n} exceeds the grid z limit 65535");
        let ct = k::ONEHOT_CHANNEL_TILE;
        let bytes = ct * (p.kernel * p.kernel) as u32 * 4;
        ensure_shape!(
            bytes <= 48 * 1024,
            OP,
            "kernel size {} needs too much shared memory",
            p.kernel
        );
        let grid = [
            div_up(us(p.h_in) * us(p.w_in), BLOCK as usize) as u32,
            div_up(us(p.c_in), ct as usize) as u32,
            n as u32,
        ];
        self.launch(
            k::CONV2D_INPUT_GRAD_ONEHOT,
            Grid::Shared { grid, bytes },
            || {
                let [seed, w, dx] = self.ptrs([seed, w, dx])?;
                let (first_channel, group) = (first_channel as i32, group as i32);
                Ok(k::ConvDgradOnehotArgs {
                    seed,
                    w,
                    dx,
                    p: *p,
                    first_channel,
                    group,
                })
            },
        )
    }

    fn channel_affine(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        relu: bool,
        y: &mut Tensor,
    ) -> Result<()> {
        let (_, c, hw) = shapes::channel_affine(x, scale, shift, y)?;
        let n = x.numel();
        self.launch(k::CHANNEL_AFFINE, Grid::Elems(n), || {
            let [x, scale, shift, y] = self.ptrs([x, scale, shift, y])?;
            let (numel, c, hw, relu) = (n as i32, c as i32, hw as i32, relu as i32);
            Ok(k::ChannelAffineArgs {
                x,
                scale,
                shift,
                y,
                numel,
                c,
                hw,
                relu,
            })
        })
    }

    fn channel_affine_backward(
        &self,
        y_saved: Option<&Tensor>,
        dy: &Tensor,
        scale: &Tensor,
        dx: &mut Tensor,
    ) -> Result<()> {
        let (_, c, hw) = shapes::channel_affine_backward(y_saved, dy, scale, dx)?;
        let n = dy.numel();
        let saved_numel = y_saved.map_or(1, |s| s.numel().max(1)) as i32;
        self.launch(k::CHANNEL_AFFINE_BACKWARD, Grid::Elems(n), || {
            let [dy, scale, dx] = self.ptrs([dy, scale, dx])?;
            // 0: no ReLU mask
            let y_saved = y_saved.map_or(Ok(0), |s| self.runner.ptr(s))?;
            Ok(k::ChannelAffineBwdArgs {
                y_saved,
                dy,
                scale,
                dx,
                numel: n as i32,
                c: c as i32,
                hw: hw as i32,
                saved_numel,
            })
        })
    }

    fn batchnorm_train_forward(
        &self,
        x: &Tensor,
        bn: BnLayer<&mut Tensor>,
        update: BnUpdate,
        y: Option<&mut Tensor>,
    ) -> Result<()> {
        let (n, c, hw) = shapes::batchnorm_train_forward(x, &bn, &update, y.as_deref())?;
        i32_of("batchnorm_train_forward", "numel", x.numel())?;
        self.launch(k::BATCHNORM_TRAIN_FORWARD, Grid::Channels(c), || {
            let [x, gamma, beta] = self.ptrs([x, bn.gamma, bn.beta])?;
            // 0: statistics only.
            let y = y.map_or(Ok(0), |y| self.runner.ptr(y))?;
            let [save_mean, save_invstd] = self.ptrs([&*bn.save_mean, &*bn.save_invstd])?;
            let (rm, rv) = (&*update.running_mean, &*update.running_var);
            let [running_mean, running_var] = self.ptrs([rm, rv])?;
            let (n, c, hw) = (n as i32, c as i32, hw as i32);
            Ok(k::BnFwdArgs {
                x,
                gamma,
                beta,
                running_mean,
                running_var,
                save_mean,
                save_invstd,
                y,
                n,
                c,
                hw,
                eps: update.eps,
                momentum: update.momentum,
                relu: bn.relu as i32,
            })
        })
    }

    fn batchnorm_train_backward(
        &self,
        x: &Tensor,
        dy: &Tensor,
        bn: BnLayer<&Tensor>,
        grads: BnGrads,
    ) -> Result<()> {
        const OP: &str = "batchnorm_train_backward";
        let (n, c, hw) = shapes::batchnorm_train_backward(x, dy, &bn, &grads)?;
        non_empty(OP, "batch", n * hw, x)?;
        i32_of(OP, "numel", x.numel())?;
        self.launch(k::BATCHNORM_TRAIN_BACKWARD, Grid::Channels(c), || {
            let [x, dy, gamma, beta] = self.ptrs([x, dy, bn.gamma, bn.beta])?;
            let [save_mean, save_invstd] = self.ptrs([bn.save_mean, bn.save_invstd])?;
            let [dx, dgamma, dbeta] = self.ptrs([grads.dx, grads.dgamma, grads.dbeta])?;
            let (n, c, hw) = (n as i32, c as i32, hw as i32);
            Ok(k::BnBwdArgs {
                x,
                dy,
                gamma,
                beta,
                save_mean,
                save_invstd,
                dx,
                dgamma,
                dbeta,
                n,
                c,
                hw,
                relu: bn.relu as i32,
            })
        })
    }

    fn relu(&self, x: &Tensor, y: &mut Tensor) -> Result<()> {
        same_shape("relu", "x", x, "y", y)?;
        self.unary(k::RELU_FORWARD, x, y)
    }

    fn relu_backward(&self, y_saved: &Tensor, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
        let names = ["y_saved", "dy", "dx"];
        shapes::broadcast_op("relu_backward", names, y_saved, dy, dx)?;
        let n = dy.numel();
        let saved_numel = y_saved.numel() as i32;
        self.launch(k::RELU_BACKWARD, Grid::Elems(n), || {
            let [y_saved, dy, dx] = self.ptrs([y_saved, dy, dx])?;
            let numel = n as i32;
            Ok(k::ReluBwdArgs {
                y_saved,
                dy,
                dx,
                numel,
                saved_numel,
            })
        })
    }

    fn add(&self, a: &Tensor, b: &Tensor, y: &mut Tensor) -> Result<()> {
        shapes::same_shapes("add", ("a", a), &[("b", b), ("y", y)])?;
        let n = y.numel();
        self.launch(k::ADD_FORWARD, Grid::Elems(n), || {
            let [a, b, y] = self.ptrs([a, b, y])?;
            let numel = n as i32;
            Ok(k::BinaryArgs {
                a,
                b,
                y,
                numel,
                pad_: 0,
            })
        })
    }

    fn add_assign(&self, y: &mut Tensor, x: &Tensor) -> Result<()> {
        same_shape("add_assign", "y", y, "x", x)?;
        self.unary(k::ADD_ASSIGN, x, y)
    }

    fn mul_assign(&self, y: &mut Tensor, m: &Tensor) -> Result<()> {
        same_shape("mul_assign", "y", y, "m", m)?;
        self.unary(k::MUL_ASSIGN, m, y)
    }

    fn global_avg_pool(&self, x: &Tensor, y: &mut Tensor) -> Result<()> {
        const OP: &str = "global_avg_pool";
        let (n, c, hw) = shapes::global_avg_pool(x, y)?;
        non_empty(OP, "spatial size", hw, x)?;
        i32_of(OP, "numel", x.numel())?;
        self.launch(k::GLOBAL_AVG_POOL, Grid::WarpRows(n * c), || {
            let [x, y] = self.ptrs([x, y])?;
            let (rows, hw) = ((n * c) as i32, hw as i32);
            Ok(k::PoolArgs { x, y, rows, hw })
        })
    }

    fn global_avg_pool_backward(&self, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
        const OP: &str = "global_avg_pool_backward";
        let (_, _, hw) = shapes::global_avg_pool_backward(dy, dx)?;
        non_empty(OP, "spatial size", hw, dx)?;
        let n = dx.numel();
        self.launch(k::GLOBAL_AVG_POOL_BACKWARD, Grid::Elems(n), || {
            let [dy, dx] = self.ptrs([dy, dx])?;
            let (numel, hw) = (n as i32, hw as i32);
            Ok(k::PoolBwdArgs { dy, dx, numel, hw })
        })
    }

    fn linear_forward(&self, x: &Tensor, w: &Tensor, b: &Tensor, y: &mut Tensor) -> Result<()> {
        let (n, i, o) = shapes::linear_forward(x, w, b, y)?;
        i32_of("linear_forward", "size", (n * i).max(o * i))?;
        self.launch(k::LINEAR_FORWARD, Grid::WarpRows(n * o), || {
            let [a, b, c, out] = self.ptrs([x, w, b, y])?;
            Ok(linear_args([a, b, c, out, 0], n, i, o))
        })
    }

    fn linear_backward_input(&self, dy: &Tensor, w: &Tensor, dx: &mut Tensor) -> Result<()> {
        let (n, i, o) = shapes::linear_backward_input(dy, w, dx)?;
        i32_of("linear_backward_input", "size", (n * i).max(o * i))?;
        self.launch(k::LINEAR_BACKWARD_INPUT, Grid::Threads(n * i), || {
            let [a, b, out] = self.ptrs([dy, w, dx])?;
            Ok(linear_args([a, b, 0, out, 0], n, i, o))
        })
    }

    fn linear_backward_params(
        &self,
        x: &Tensor,
        dy: &Tensor,
        dw: &mut Tensor,
        db: &mut Tensor,
    ) -> Result<()> {
        let (n, i, o) = shapes::linear_backward_params(x, dy, dw, db)?;
        i32_of("linear_backward_params", "size", (n * i).max(n * o))?;
        self.launch(k::LINEAR_BACKWARD_PARAMS, Grid::Threads(o * i + o), || {
            let [a, b, out, out2] = self.ptrs([x, dy, dw, db])?;
            Ok(linear_args([a, b, 0, out, out2], n, i, o))
        })
    }

    fn softmax_cross_entropy(
        &self,
        logits: &Tensor,
        labels: &Indices,
        loss: &mut Tensor,
        dlogits: &mut Tensor,
    ) -> Result<()> {
        let (n, kc) = shapes::softmax_cross_entropy(logits, labels.len, loss, dlogits)?;
        i32_of("softmax_cross_entropy", "numel", n * kc)?;
        self.launch(k::SOFTMAX_CROSS_ENTROPY, Grid::WarpRows(n), || {
            let [logits, loss, dlogits] = self.ptrs([logits, loss, dlogits])?;
            let labels = self.runner.indices_ptr(labels)?;
            let (n, k) = (n as i32, kc as i32);
            Ok(k::SoftmaxXentArgs {
                logits,
                labels,
                loss,
                dlogits,
                n,
                k,
            })
        })
    }

    fn channel_mse(&self, a: &Tensor, b: &Tensor, loss: &mut Tensor) -> Result<()> {
        const OP: &str = "channel_mse";
        let (n, c, hw) = shapes::channel_mse(a, b, loss)?;
        non_empty(OP, "input", n * hw, a)?;
        i32_of(OP, "numel", a.numel())?;
        self.launch(k::CHANNEL_MSE, Grid::Channels(c), || {
            let [a, b, loss] = self.ptrs([a, b, loss])?;
            let (n, c, hw) = (n as i32, c as i32, hw as i32);
            Ok(k::ChannelMseArgs {
                a,
                b,
                loss,
                n,
                c,
                hw,
                pad_: 0,
            })
        })
    }

    fn frg_seed(
        &self,
        a_x: &Tensor,
        a_x0: &Tensor,
        first_channel: usize,
        seed: &mut Tensor,
    ) -> Result<()> {
        let (b, c, h, w, kcount) = shapes::frg_seed(a_x, a_x0, first_channel, seed)?;
        i32_of("frg_seed", "numel", a_x.numel())?;
        let scale = 2.0 / (b * h * w) as f32;
        self.launch(k::FRG_SEED, Grid::Elems(seed.numel()), || {
            let [a_x, a_x0, seed] = self.ptrs([a_x, a_x0, seed])?;
            Ok(k::FrgSeedArgs {
                a_x,
                a_x0,
                seed,
                b: b as i32,
                c: c as i32,
                hw: (h * w) as i32,
                kcount: kcount as i32,
                first_channel: first_channel as i32,
                scale,
            })
        })
    }

    fn sign_step(&self, x0: &Tensor, g: &Tensor, eps: f32, y: &mut Tensor) -> Result<()> {
        shapes::broadcast_op("sign_step", ["x0", "g", "y"], x0, g, y)?;
        let n = g.numel();
        let x0_numel = x0.numel() as i32;
        self.launch(k::SIGN_STEP, Grid::Elems(n), || {
            let [x0, g, y] = self.ptrs([x0, g, y])?;
            let numel = n as i32;
            Ok(k::SignStepArgs {
                x0,
                g,
                y,
                numel,
                x0_numel,
                eps,
                pad_: 0,
            })
        })
    }

    fn sgd_step(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        momentum_buf: &mut Tensor,
        sgd: Sgd,
    ) -> Result<()> {
        let rest = [("grad", grad), ("momentum_buf", &*momentum_buf)];
        shapes::same_shapes("sgd_step", ("param", param), &rest)?;
        let n = param.numel();
        self.launch(k::SGD_STEP, Grid::Elems(n), || {
            let [param, grad, buf] = self.ptrs([param, grad, momentum_buf])?;
            let numel = n as i32;
            Ok(k::SgdArgs {
                param,
                grad,
                buf,
                numel,
                lr: sgd.lr,
                momentum: sgd.momentum,
                weight_decay: sgd.weight_decay,
            })
        })
    }
}

/// The params struct of the three linear kernels (pointer roles in `kernels::LinearArgs`).
fn linear_args(ptrs: [u64; 5], n: usize, in_f: usize, out_f: usize) -> k::LinearArgs {
    let [a, b, c, out, out2] = ptrs;
    k::LinearArgs {
        a,
        b,
        c,
        out,
        out2,
        n: n as i32,
        in_f: in_f as i32,
        out_f: out_f as i32,
        pad_: 0,
    }
}
