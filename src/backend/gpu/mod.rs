//! GPU-style backend generic over a kernel runner (CUDA driver or CPU emulator) (issues 3, 4).
//!
//! `GpuBackend<R>` implements `Backend` with one typed launcher per kernel: it validates shapes
//! exactly like the CPU backend (`Error::Shape`), fills the `#[repr(C)]` args struct of
//! `kernels.rs` (mirrored in `kernels/params.cuh`), picks the launch configuration and hands
//! (kernel id, config, args bytes) to the runner. Memory comes from the runner. The launch
//! configurations here are the ones the kernels were written for (256-thread blocks, 64x64 conv
//! tiles), so the emulator exercises exactly what the GPU runs.
pub mod cuda;
pub mod kernel_cache;
pub mod kernels;
pub mod nvrtc;
pub mod runner;

#[cfg(feature = "emu")]
pub mod emu;

use bytemuck::Pod;

use self::kernels as k;
use self::runner::{KernelId, Launch, Runner};
use super::shapes::{broadcast_batch, same_shape};
use super::{Backend, ConvParams};
use crate::ensure_shape;
use crate::error::Result;
use crate::tensor::{Indices, Tensor};

/// Threads per block of every 1-D kernel.
const BLOCK: u32 = 256;
/// Cap on 1-D grids (the kernels use grid-stride loops beyond it).
const MAX_GRID_1D: usize = 1 << 16;
/// Target block count when splitting the weight-gradient reduction (about 2 waves on a big GPU).
const WGRAD_TARGET_BLOCKS: usize = 264;
/// Minimum K elements per weight-gradient split.
const WGRAD_MIN_CHUNK: usize = 256;
const WGRAD_MAX_SPLITS: usize = 64;

pub struct GpuBackend<R: Runner> {
    runner: R,
}

fn div_up(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// 1-D launch of `n` elements (grid-stride beyond MAX_GRID_1D blocks).
fn launch_1d(n: usize) -> Launch {
    Launch {
        grid: [div_up(n, BLOCK as usize).clamp(1, MAX_GRID_1D) as u32, 1, 1],
        block: [BLOCK, 1, 1],
        shared_bytes: 0,
    }
}

/// Launch with one warp per row, 8 rows per 256-thread block.
fn launch_warp_rows(rows: usize) -> Launch {
    Launch {
        grid: [div_up(rows, (BLOCK / 32) as usize).max(1) as u32, 1, 1],
        block: [BLOCK, 1, 1],
        shared_bytes: 0,
    }
}

fn i32_of(op: &'static str, what: &str, n: usize) -> Result<i32> {
    ensure_shape!(
        n <= i32::MAX as usize,
        op,
        "{what} = {n} exceeds the 32-bit indexing of the kernels"
    );
    Ok(n as i32)
}

fn check_rank(op: &'static str, t: &Tensor, name: &str, ranks: &[usize]) -> Result<()> {
    ensure_shape!(
        ranks.contains(&t.shape().len()),
        op,
        "{name} has shape {:?}, expected rank {:?}",
        t.shape(),
        ranks
    );
    Ok(())
}

fn check_conv(op: &'static str, p: &ConvParams) -> Result<()> {
    ensure_shape!(
        p.n > 0
            && p.c_in > 0
            && p.c_out > 0
            && p.kernel > 0
            && p.stride > 0
            && p.pad >= 0
            && p.h_in > 0
            && p.w_in > 0,
        op,
        "invalid conv params {p:?}"
    );
    ensure_shape!(
        p.h_in + 2 * p.pad >= p.kernel
            && p.w_in + 2 * p.pad >= p.kernel
            && p.h_out == (p.h_in + 2 * p.pad - p.kernel) / p.stride + 1
            && p.w_out == (p.w_in + 2 * p.pad - p.kernel) / p.stride + 1,
        op,
        "inconsistent conv output size in {p:?}"
    );
    let big = [p.input_shape(), p.output_shape()]
        .iter()
        .map(|s| s.iter().product::<usize>())
        .max()
        .unwrap_or(0);
    let wn: usize = p.weight_shape().iter().product();
    i32_of(op, "tensor size", big.max(wn))?;
    Ok(())
}

/// Row tile of a conv GEMM with `rows` output rows and `cols` output columns: 128 rows when there
/// are enough rows and the larger tiles still give about two waves of blocks on a big GPU.
fn pick_tile_m(rows: usize, cols: usize) -> u32 {
    let large = k::CONV_TILE_M_LARGE as usize;
    if rows >= large
        && div_up(rows, large) * div_up(cols, k::CONV_TILE_N as usize) >= WGRAD_TARGET_BLOCKS
    {
        k::CONV_TILE_M_LARGE
    } else {
        k::CONV_TILE_M
    }
}

/// The weight gradient splits K for parallelism, so it takes the large tile whenever c_out allows.
fn wgrad_tile_m(p: &ConvParams) -> u32 {
    if p.c_out >= k::CONV_TILE_M_LARGE as i32 {
        k::CONV_TILE_M_LARGE
    } else {
        k::CONV_TILE_M
    }
}

fn tiled_kernel(
    op: &'static str,
    tile_m: u32,
    small: KernelId,
    large: KernelId,
) -> Result<KernelId> {
    match tile_m {
        k::CONV_TILE_M => Ok(small),
        k::CONV_TILE_M_LARGE => Ok(large),
        t => Err(crate::error::Error::InvalidArgument(format!(
            "{op}: row tile {t} (expected {} or {})",
            k::CONV_TILE_M,
            k::CONV_TILE_M_LARGE
        ))),
    }
}

fn check_shape(op: &'static str, t: &Tensor, name: &str, want: &[usize]) -> Result<()> {
    ensure_shape!(
        t.shape() == want,
        op,
        "{name} has shape {:?}, expected {:?}",
        t.shape(),
        want
    );
    Ok(())
}

impl<R: Runner> GpuBackend<R> {
    pub fn new(runner: R) -> Self {
        GpuBackend { runner }
    }
    pub fn runner(&self) -> &R {
        &self.runner
    }

    fn ptr(&self, t: &Tensor) -> Result<u64> {
        self.runner.ptr(t)
    }

    fn go<A: Pod>(&self, kernel: KernelId, cfg: Launch, args: &A) -> Result<()> {
        self.runner.launch(kernel, cfg, bytemuck::bytes_of(args))
    }

    /// Weight-gradient split count for a GEMM of `tiles` output tiles over `kdim` reduction elements.
    fn wgrad_splits(tiles: usize, kdim: usize) -> usize {
        let by_blocks = div_up(WGRAD_TARGET_BLOCKS, tiles.max(1));
        let by_chunk = (kdim / WGRAD_MIN_CHUNK).max(1);
        by_blocks.min(by_chunk).clamp(1, WGRAD_MAX_SPLITS)
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
        const OP: &str = "conv2d_forward";
        check_conv(OP, p)?;
        check_shape(OP, x, "x", &p.input_shape())?;
        check_shape(OP, w, "w", &p.weight_shape())?;
        check_shape(OP, y, "y", &p.output_shape())?;
        let kernel = tiled_kernel(OP, tile_m, k::CONV2D_FORWARD, k::CONV2D_FORWARD_M128)?;
        let ncols = (p.n * p.h_out * p.w_out) as usize;
        let grid = [
            div_up(ncols, k::CONV_TILE_N as usize) as u32,
            div_up(p.c_out as usize, tile_m as usize) as u32,
            1,
        ];
        let args = k::ConvFwdArgs {
            x: self.ptr(x)?,
            w: self.ptr(w)?,
            y: self.ptr(y)?,
            p: *p,
        };
        self.go(
            kernel,
            Launch {
                grid,
                block: [BLOCK, 1, 1],
                shared_bytes: 0,
            },
            &args,
        )
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
        const OP: &str = "conv2d_input_grad";
        check_conv(OP, p)?;
        check_shape(OP, dy, "dy", &p.output_shape())?;
        check_shape(OP, w, "w", &p.weight_shape())?;
        check_shape(OP, dx, "dx", &p.input_shape())?;
        let kernel = tiled_kernel(OP, tile_m, k::CONV2D_INPUT_GRAD, k::CONV2D_INPUT_GRAD_M128)?;
        let ncols = (p.n * p.h_in * p.w_in) as usize;
        let grid = [
            div_up(ncols, k::CONV_TILE_N as usize) as u32,
            div_up(p.c_in as usize, tile_m as usize) as u32,
            1,
        ];
        let args = k::ConvDgradArgs {
            dy: self.ptr(dy)?,
            w: self.ptr(w)?,
            dx: self.ptr(dx)?,
            p: *p,
        };
        self.go(
            kernel,
            Launch {
                grid,
                block: [BLOCK, 1, 1],
                shared_bytes: 0,
            },
            &args,
        )
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

    /// The weight-gradient kernel with an explicit row tile and split count.
    pub fn conv2d_weight_grad_tiled(
        &self,
        p: &ConvParams,
        x: &Tensor,
        dy: &Tensor,
        dw: &mut Tensor,
        tile_m: u32,
        splits: usize,
    ) -> Result<()> {
        const OP: &str = "conv2d_weight_grad";
        let kernel = tiled_kernel(
            OP,
            tile_m,
            k::CONV2D_WEIGHT_GRAD,
            k::CONV2D_WEIGHT_GRAD_M128,
        )?;
        check_conv(OP, p)?;
        check_shape(OP, x, "x", &p.input_shape())?;
        check_shape(OP, dy, "dy", &p.output_shape())?;
        check_shape(OP, dw, "dw", &p.weight_shape())?;
        let kdim = (p.n * p.h_out * p.w_out) as usize;
        let ncols = (p.c_in * p.kernel * p.kernel) as usize;
        let count = p.c_out as usize * ncols;
        let tk = k::CONV_TILE_K as usize;
        let splits = splits.clamp(1, div_up(kdim, tk));
        let k_chunk = div_up(div_up(kdim, splits), tk) * tk;
        let splits = div_up(kdim, k_chunk);
        let grid = [
            div_up(ncols, k::CONV_TILE_N as usize) as u32,
            div_up(p.c_out as usize, tile_m as usize) as u32,
            splits as u32,
        ];
        let cfg = Launch {
            grid,
            block: [BLOCK, 1, 1],
            shared_bytes: 0,
        };
        if splits == 1 {
            let args = k::ConvWgradArgs {
                x: self.ptr(x)?,
                dy: self.ptr(dy)?,
                out: self.ptr(dw)?,
                p: *p,
                k_chunk: k_chunk as i32,
                splits: 1,
            };
            return self.go(kernel, cfg, &args);
        }
        i32_of(OP, "split workspace size", splits * count)?;
        let ws = self.runner.zeros(&[splits, count])?;
        let args = k::ConvWgradArgs {
            x: self.ptr(x)?,
            dy: self.ptr(dy)?,
            out: self.ptr(&ws)?,
            p: *p,
            k_chunk: k_chunk as i32,
            splits: splits as i32,
        };
        self.go(kernel, cfg, &args)?;
        let r = k::WgradReduceArgs {
            ws: self.ptr(&ws)?,
            dw: self.ptr(dw)?,
            count: count as i32,
            splits: splits as i32,
        };
        self.go(k::CONV2D_WEIGHT_GRAD_REDUCE, launch_1d(count), &r)?;
        // The workspace is freed when `ws` drops; the runner orders frees after queued work.
        drop(ws);
        Ok(())
    }

    fn unary(&self, kernel: KernelId, x: &Tensor, y: &mut Tensor) -> Result<()> {
        let n = i32_of(kernel.name, "numel", y.numel())?;
        if n == 0 {
            return Ok(());
        }
        let args = k::UnaryArgs {
            x: self.ptr(x)?,
            y: self.ptr(y)?,
            numel: n,
            pad_: 0,
        };
        self.go(kernel, launch_1d(n as usize), &args)
    }
}

/// (N, C, HW) of a rank-4 or rank-2 tensor.
fn nc_hw(t: &Tensor) -> (usize, usize, usize) {
    let (n, c, h, w) = t.nchw();
    (n, c, h * w)
}

impl<R: Runner> Backend for GpuBackend<R> {
    fn name(&self) -> String {
        self.runner.name()
    }
    fn is_gpu(&self) -> bool {
        self.runner.is_gpu()
    }
    fn synchronize(&self) -> Result<()> {
        self.runner.synchronize()
    }
    fn memory_budget(&self) -> usize {
        self.runner.memory_budget()
    }
    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        self.runner.zeros(shape)
    }
    fn from_host(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        self.runner.from_host(data, shape)
    }
    fn to_host(&self, t: &Tensor) -> Result<Vec<f32>> {
        self.runner.to_host(t)
    }
    fn indices_from_host(&self, data: &[u32]) -> Result<Indices> {
        self.runner.indices_from_host(data)
    }

    fn copy(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        ensure_shape!(
            src.numel() == dst.numel(),
            "copy",
            "src {:?} and dst {:?} differ in element count",
            src.shape(),
            dst.shape()
        );
        self.unary(k::COPY_F32, src, dst)
    }

    fn fill(&self, t: &mut Tensor, value: f32) -> Result<()> {
        let n = i32_of("fill", "numel", t.numel())?;
        if n == 0 {
            return Ok(());
        }
        let args = k::FillArgs {
            y: self.ptr(t)?,
            numel: n,
            value,
        };
        self.go(k::FILL_F32, launch_1d(n as usize), &args)
    }

    fn conv2d_forward(&self, p: &ConvParams, x: &Tensor, w: &Tensor, y: &mut Tensor) -> Result<()> {
        let tile = pick_tile_m(
            p.c_out.max(0) as usize,
            (p.n * p.h_out * p.w_out).max(0) as usize,
        );
        self.conv2d_forward_tiled(p, x, w, y, tile)
    }

    fn conv2d_input_grad(
        &self,
        p: &ConvParams,
        dy: &Tensor,
        w: &Tensor,
        dx: &mut Tensor,
    ) -> Result<()> {
        let tile = pick_tile_m(
            p.c_in.max(0) as usize,
            (p.n * p.h_in * p.w_in).max(0) as usize,
        );
        self.conv2d_input_grad_tiled(p, dy, w, dx, tile)
    }

    fn conv2d_weight_grad(
        &self,
        p: &ConvParams,
        x: &Tensor,
        dy: &Tensor,
        dw: &mut Tensor,
    ) -> Result<()> {
        let tile = wgrad_tile_m(p);
        let tiles = div_up(p.c_out.max(0) as usize, tile as usize)
            * div_up(
                (p.c_in.max(0) * p.kernel.max(0) * p.kernel.max(0)) as usize,
                k::CONV_TILE_N as usize,
            );
        let kdim = (p.n.max(0) as usize) * (p.h_out.max(0) as usize) * (p.w_out.max(0) as usize);
        self.conv2d_weight_grad_tiled(p, x, dy, dw, tile, Self::wgrad_splits(tiles, kdim))
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
        check_conv(OP, p)?;
        let (n, h_out, w_out) = (p.n as usize, p.h_out as usize, p.w_out as usize);
        check_shape(OP, seed, "seed", &[n, 1, h_out, w_out])?;
        check_shape(OP, w, "w", &p.weight_shape())?;
        check_shape(OP, dx, "dx", &p.input_shape())?;
        ensure_shape!(group > 0, OP, "group must be positive");
        ensure_shape!(
            first_channel + (n - 1) / group < p.c_out as usize,
            OP,
            "channels {first_channel}..={} exceed the {} filters",
            first_channel + (n - 1) / group,
            p.c_out
        );
        let kk = (p.kernel * p.kernel) as u32;
        let ct = k::ONEHOT_CHANNEL_TILE;
        let hwi = (p.h_in * p.w_in) as usize;
        ensure_shape!(n <= 65535, OP, "batch {n} exceeds the grid z limit 65535");
        let cfg = Launch {
            grid: [
                div_up(hwi, BLOCK as usize) as u32,
                div_up(p.c_in as usize, ct as usize) as u32,
                n as u32,
            ],
            block: [BLOCK, 1, 1],
            shared_bytes: ct * kk * 4,
        };
        ensure_shape!(
            cfg.shared_bytes <= 48 * 1024,
            OP,
            "kernel size {} needs too much shared memory",
            p.kernel
        );
        let args = k::ConvDgradOnehotArgs {
            seed: self.ptr(seed)?,
            w: self.ptr(w)?,
            dx: self.ptr(dx)?,
            p: *p,
            first_channel: first_channel as i32,
            group: group as i32,
        };
        self.go(k::CONV2D_INPUT_GRAD_ONEHOT, cfg, &args)
    }

    fn channel_affine(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        relu: bool,
        y: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "channel_affine";
        check_rank(OP, x, "x", &[2, 4])?;
        same_shape(OP, "x", x, "y", y)?;
        let (_, c, hw) = nc_hw(x);
        ensure_shape!(
            scale.numel() == c && shift.numel() == c,
            OP,
            "scale {:?} / shift {:?} must have {c} elements",
            scale.shape(),
            shift.shape()
        );
        let n = i32_of(OP, "numel", x.numel())?;
        if n == 0 {
            return Ok(());
        }
        let args = k::ChannelAffineArgs {
            x: self.ptr(x)?,
            scale: self.ptr(scale)?,
            shift: self.ptr(shift)?,
            y: self.ptr(y)?,
            numel: n,
            c: c as i32,
            hw: hw as i32,
            relu: relu as i32,
        };
        self.go(k::CHANNEL_AFFINE, launch_1d(n as usize), &args)
    }

    fn channel_affine_backward(
        &self,
        y_saved: Option<&Tensor>,
        dy: &Tensor,
        scale: &Tensor,
        dx: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "channel_affine_backward";
        check_rank(OP, dy, "dy", &[2, 4])?;
        same_shape(OP, "dy", dy, "dx", dx)?;
        let (_, c, hw) = nc_hw(dy);
        ensure_shape!(
            scale.numel() == c,
            OP,
            "scale {:?} must have {c} elements",
            scale.shape()
        );
        if let Some(s) = y_saved {
            broadcast_batch(OP, "y_saved", s, "dy", dy)?;
        }
        let n = i32_of(OP, "numel", dy.numel())?;
        if n == 0 {
            return Ok(());
        }
        let args = k::ChannelAffineBwdArgs {
            y_saved: match y_saved {
                Some(s) => self.ptr(s)?,
                None => 0,
            },
            dy: self.ptr(dy)?,
            scale: self.ptr(scale)?,
            dx: self.ptr(dx)?,
            numel: n,
            c: c as i32,
            hw: hw as i32,
            saved_numel: y_saved.map_or(1, |s| s.numel().max(1)) as i32,
        };
        self.go(k::CHANNEL_AFFINE_BACKWARD, launch_1d(n as usize), &args)
    }

    fn batchnorm_train_forward(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
        momentum: f32,
        running_mean: &mut Tensor,
        running_var: &mut Tensor,
        save_mean: &mut Tensor,
        save_invstd: &mut Tensor,
        y: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "batchnorm_train_forward";
        check_rank(OP, x, "x", &[2, 4])?;
        same_shape(OP, "x", x, "y", y)?;
        let (n, c, hw) = nc_hw(x);
        for (t, name) in [
            (gamma, "gamma"),
            (beta, "beta"),
            (&*running_mean, "running_mean"),
            (&*running_var, "running_var"),
            (&*save_mean, "save_mean"),
            (&*save_invstd, "save_invstd"),
        ] {
            ensure_shape!(
                t.numel() == c,
                OP,
                "{name} {:?} must have {c} elements",
                t.shape()
            );
        }
        ensure_shape!(n * hw > 0, OP, "empty batch {:?}", x.shape());
        i32_of(OP, "numel", x.numel())?;
        ensure_shape!(c <= i32::MAX as usize, OP, "too many channels");
        let args = k::BnFwdArgs {
            x: self.ptr(x)?,
            gamma: self.ptr(gamma)?,
            beta: self.ptr(beta)?,
            running_mean: self.ptr(running_mean)?,
            running_var: self.ptr(running_var)?,
            save_mean: self.ptr(save_mean)?,
            save_invstd: self.ptr(save_invstd)?,
            y: self.ptr(y)?,
            n: n as i32,
            c: c as i32,
            hw: hw as i32,
            eps,
            momentum,
            pad_: 0,
        };
        self.go(
            k::BATCHNORM_TRAIN_FORWARD,
            Launch {
                grid: [c as u32, 1, 1],
                block: [BLOCK, 1, 1],
                shared_bytes: 0,
            },
            &args,
        )
    }

    fn batchnorm_train_backward(
        &self,
        x: &Tensor,
        dy: &Tensor,
        gamma: &Tensor,
        save_mean: &Tensor,
        save_invstd: &Tensor,
        dx: &mut Tensor,
        dgamma: &mut Tensor,
        dbeta: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "batchnorm_train_backward";
        check_rank(OP, x, "x", &[2, 4])?;
        same_shape(OP, "x", x, "dy", dy)?;
        same_shape(OP, "x", x, "dx", dx)?;
        let (n, c, hw) = nc_hw(x);
        for (t, name) in [
            (gamma, "gamma"),
            (save_mean, "save_mean"),
            (save_invstd, "save_invstd"),
            (&*dgamma, "dgamma"),
            (&*dbeta, "dbeta"),
        ] {
            ensure_shape!(
                t.numel() == c,
                OP,
                "{name} {:?} must have {c} elements",
                t.shape()
            );
        }
        ensure_shape!(n * hw > 0, OP, "empty batch {:?}", x.shape());
        i32_of(OP, "numel", x.numel())?;
        let args = k::BnBwdArgs {
            x: self.ptr(x)?,
            dy: self.ptr(dy)?,
            gamma: self.ptr(gamma)?,
            save_mean: self.ptr(save_mean)?,
            save_invstd: self.ptr(save_invstd)?,
            dx: self.ptr(dx)?,
            dgamma: self.ptr(dgamma)?,
            dbeta: self.ptr(dbeta)?,
            n: n as i32,
            c: c as i32,
            hw: hw as i32,
            pad_: 0,
        };
        self.go(
            k::BATCHNORM_TRAIN_BACKWARD,
            Launch {
                grid: [c as u32, 1, 1],
                block: [BLOCK, 1, 1],
                shared_bytes: 0,
            },
            &args,
        )
    }

    fn relu(&self, x: &Tensor, y: &mut Tensor) -> Result<()> {
        same_shape("relu", "x", x, "y", y)?;
        self.unary(k::RELU_FORWARD, x, y)
    }

    fn relu_backward(&self, y_saved: &Tensor, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
        const OP: &str = "relu_backward";
        same_shape(OP, "dy", dy, "dx", dx)?;
        broadcast_batch(OP, "y_saved", y_saved, "dy", dy)?;
        let n = i32_of(OP, "numel", dy.numel())?;
        if n == 0 {
            return Ok(());
        }
        let args = k::ReluBwdArgs {
            y_saved: self.ptr(y_saved)?,
            dy: self.ptr(dy)?,
            dx: self.ptr(dx)?,
            numel: n,
            saved_numel: y_saved.numel() as i32,
        };
        self.go(k::RELU_BACKWARD, launch_1d(n as usize), &args)
    }

    fn add(&self, a: &Tensor, b: &Tensor, y: &mut Tensor) -> Result<()> {
        const OP: &str = "add";
        same_shape(OP, "a", a, "b", b)?;
        same_shape(OP, "a", a, "y", y)?;
        let n = i32_of(OP, "numel", y.numel())?;
        if n == 0 {
            return Ok(());
        }
        let args = k::BinaryArgs {
            a: self.ptr(a)?,
            b: self.ptr(b)?,
            y: self.ptr(y)?,
            numel: n,
            pad_: 0,
        };
        self.go(k::ADD_FORWARD, launch_1d(n as usize), &args)
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
        check_rank(OP, x, "x", &[4])?;
        let (n, c, hw) = nc_hw(x);
        check_shape(OP, y, "y", &[n, c])?;
        ensure_shape!(hw > 0, OP, "empty spatial size {:?}", x.shape());
        i32_of(OP, "numel", x.numel())?;
        if n * c == 0 {
            return Ok(());
        }
        let args = k::PoolArgs {
            x: self.ptr(x)?,
            y: self.ptr(y)?,
            rows: (n * c) as i32,
            hw: hw as i32,
        };
        self.go(k::GLOBAL_AVG_POOL, launch_warp_rows(n * c), &args)
    }

    fn global_avg_pool_backward(&self, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
        const OP: &str = "global_avg_pool_backward";
        check_rank(OP, dx, "dx", &[4])?;
        let (n, c, hw) = nc_hw(dx);
        check_shape(OP, dy, "dy", &[n, c])?;
        ensure_shape!(hw > 0, OP, "empty spatial size {:?}", dx.shape());
        let numel = i32_of(OP, "numel", dx.numel())?;
        if numel == 0 {
            return Ok(());
        }
        let args = k::PoolBwdArgs {
            dy: self.ptr(dy)?,
            dx: self.ptr(dx)?,
            numel,
            hw: hw as i32,
        };
        self.go(
            k::GLOBAL_AVG_POOL_BACKWARD,
            launch_1d(numel as usize),
            &args,
        )
    }

    fn linear_forward(&self, x: &Tensor, w: &Tensor, b: &Tensor, y: &mut Tensor) -> Result<()> {
        const OP: &str = "linear_forward";
        check_rank(OP, x, "x", &[2])?;
        check_rank(OP, w, "w", &[2])?;
        let (n, i) = (x.shape()[0], x.shape()[1]);
        let o = w.shape()[0];
        check_shape(OP, w, "w", &[o, i])?;
        check_shape(OP, b, "b", &[o])?;
        check_shape(OP, y, "y", &[n, o])?;
        i32_of(OP, "size", (n * i).max(o * i))?;
        if n * o == 0 {
            return Ok(());
        }
        let args = k::LinearArgs {
            a: self.ptr(x)?,
            b: self.ptr(w)?,
            c: self.ptr(b)?,
            out: self.ptr(y)?,
            out2: 0,
            n: n as i32,
            in_f: i as i32,
            out_f: o as i32,
            pad_: 0,
        };
        self.go(k::LINEAR_FORWARD, launch_warp_rows(n * o), &args)
    }

    fn linear_backward_input(&self, dy: &Tensor, w: &Tensor, dx: &mut Tensor) -> Result<()> {
        const OP: &str = "linear_backward_input";
        check_rank(OP, w, "w", &[2])?;
        let (o, i) = (w.shape()[0], w.shape()[1]);
        check_rank(OP, dy, "dy", &[2])?;
        let n = dy.shape()[0];
        check_shape(OP, dy, "dy", &[n, o])?;
        check_shape(OP, dx, "dx", &[n, i])?;
        i32_of(OP, "size", (n * i).max(o * i))?;
        if n * i == 0 {
            return Ok(());
        }
        let args = k::LinearArgs {
            a: self.ptr(dy)?,
            b: self.ptr(w)?,
            c: 0,
            out: self.ptr(dx)?,
            out2: 0,
            n: n as i32,
            in_f: i as i32,
            out_f: o as i32,
            pad_: 0,
        };
        self.go(
            k::LINEAR_BACKWARD_INPUT,
            Launch {
                grid: [div_up(n * i, BLOCK as usize) as u32, 1, 1],
                block: [BLOCK, 1, 1],
                shared_bytes: 0,
            },
            &args,
        )
    }

    fn linear_backward_params(
        &self,
        x: &Tensor,
        dy: &Tensor,
        dw: &mut Tensor,
        db: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "linear_backward_params";
        check_rank(OP, x, "x", &[2])?;
        check_rank(OP, dy, "dy", &[2])?;
        let (n, i) = (x.shape()[0], x.shape()[1]);
        let o = dy.shape()[1];
        check_shape(OP, dy, "dy", &[n, o])?;
        check_shape(OP, dw, "dw", &[o, i])?;
        check_shape(OP, db, "db", &[o])?;
        let total = i32_of(OP, "size", o * i + o)? as usize;
        if total == 0 {
            return Ok(());
        }
        let args = k::LinearArgs {
            a: self.ptr(x)?,
            b: self.ptr(dy)?,
            c: 0,
            out: self.ptr(dw)?,
            out2: self.ptr(db)?,
            n: n as i32,
            in_f: i as i32,
            out_f: o as i32,
            pad_: 0,
        };
        self.go(
            k::LINEAR_BACKWARD_PARAMS,
            Launch {
                grid: [div_up(total, BLOCK as usize) as u32, 1, 1],
                block: [BLOCK, 1, 1],
                shared_bytes: 0,
            },
            &args,
        )
    }

    fn softmax_cross_entropy(
        &self,
        logits: &Tensor,
        labels: &Indices,
        loss: &mut Tensor,
        dlogits: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "softmax_cross_entropy";
        check_rank(OP, logits, "logits", &[2])?;
        let (n, kc) = (logits.shape()[0], logits.shape()[1]);
        ensure_shape!(
            labels.len == n,
            OP,
            "{} labels for {n} logit rows",
            labels.len
        );
        check_shape(OP, loss, "loss", &[n])?;
        same_shape(OP, "logits", logits, "dlogits", dlogits)?;
        ensure_shape!(kc > 0, OP, "no classes");
        i32_of(OP, "numel", n * kc)?;
        if n == 0 {
            return Ok(());
        }
        let args = k::SoftmaxXentArgs {
            logits: self.ptr(logits)?,
            labels: self.runner.indices_ptr(labels)?,
            loss: self.ptr(loss)?,
            dlogits: self.ptr(dlogits)?,
            n: n as i32,
            k: kc as i32,
        };
        self.go(k::SOFTMAX_CROSS_ENTROPY, launch_warp_rows(n), &args)
    }

    fn channel_mse(&self, a: &Tensor, b: &Tensor, loss: &mut Tensor) -> Result<()> {
        const OP: &str = "channel_mse";
        check_rank(OP, a, "a", &[2, 4])?;
        same_shape(OP, "a", a, "b", b)?;
        let (n, c, hw) = nc_hw(a);
        ensure_shape!(
            loss.numel() == c,
            OP,
            "loss {:?} must have {c} elements",
            loss.shape()
        );
        ensure_shape!(n * hw > 0, OP, "empty input {:?}", a.shape());
        i32_of(OP, "numel", a.numel())?;
        let args = k::ChannelMseArgs {
            a: self.ptr(a)?,
            b: self.ptr(b)?,
            loss: self.ptr(loss)?,
            n: n as i32,
            c: c as i32,
            hw: hw as i32,
            pad_: 0,
        };
        self.go(
            k::CHANNEL_MSE,
            Launch {
                grid: [c as u32, 1, 1],
                block: [BLOCK, 1, 1],
                shared_bytes: 0,
            },
            &args,
        )
    }

    fn frg_seed(
        &self,
        a_x: &Tensor,
        a_x0: &Tensor,
        first_channel: usize,
        seed: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "frg_seed";
        check_rank(OP, a_x, "a_x", &[4])?;
        same_shape(OP, "a_x", a_x, "a_x0", a_x0)?;
        let (b, c, h, w) = a_x.nchw();
        check_rank(OP, seed, "seed", &[4])?;
        let kb = seed.batch();
        ensure_shape!(
            b > 0 && kb % b == 0,
            OP,
            "seed batch {kb} is not a multiple of the activation batch {b}"
        );
        check_shape(OP, seed, "seed", &[kb, 1, h, w])?;
        let kcount = kb / b;
        ensure_shape!(
            first_channel + kcount <= c,
            OP,
            "channels {first_channel}..{} exceed {c}",
            first_channel + kcount
        );
        i32_of(OP, "numel", seed.numel().max(a_x.numel()))?;
        if seed.numel() == 0 {
            return Ok(());
        }
        let args = k::FrgSeedArgs {
            a_x: self.ptr(a_x)?,
            a_x0: self.ptr(a_x0)?,
            seed: self.ptr(seed)?,
            b: b as i32,
            c: c as i32,
            hw: (h * w) as i32,
            kcount: kcount as i32,
            first_channel: first_channel as i32,
            scale: 2.0 / (b * h * w) as f32,
        };
        self.go(k::FRG_SEED, launch_1d(seed.numel()), &args)
    }

    fn sign_step(&self, x0: &Tensor, g: &Tensor, eps: f32, y: &mut Tensor) -> Result<()> {
        const OP: &str = "sign_step";
        same_shape(OP, "g", g, "y", y)?;
        broadcast_batch(OP, "x0", x0, "g", g)?;
        let n = i32_of(OP, "numel", g.numel())?;
        if n == 0 {
            return Ok(());
        }
        let args = k::SignStepArgs {
            x0: self.ptr(x0)?,
            g: self.ptr(g)?,
            y: self.ptr(y)?,
            numel: n,
            x0_numel: x0.numel() as i32,
            eps,
            pad_: 0,
        };
        self.go(k::SIGN_STEP, launch_1d(n as usize), &args)
    }

    fn sgd_step(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        momentum_buf: &mut Tensor,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<()> {
        const OP: &str = "sgd_step";
        same_shape(OP, "param", param, "grad", grad)?;
        same_shape(OP, "param", param, "momentum_buf", momentum_buf)?;
        let n = i32_of(OP, "numel", param.numel())?;
        if n == 0 {
            return Ok(());
        }
        let args = k::SgdArgs {
            param: self.ptr(param)?,
            grad: self.ptr(grad)?,
            buf: self.ptr(momentum_buf)?,
            numel: n,
            lr,
            momentum,
            weight_decay,
        };
        self.go(k::SGD_STEP, launch_1d(n as usize), &args)
    }
}
