//! Grid rules and the GPU's own launch limits, used by the launchers in `gpu/mod.rs`: how each
//! kind of kernel sizes its grid (`Grid`), the 32-bit indexing limit of the kernels, and the conv
//! tile and split-K choices.
use super::kernels as k;
use super::runner::{KernelId, Launch};
use crate::backend::ConvParams;
use crate::ensure_shape;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Threads per block of every kernel.
pub(super) const BLOCK: u32 = 256;
/// Cap on 1-D grids (the kernels use grid-stride loops beyond it).
pub(super) const MAX_GRID_1D: usize = 1 << 16;
/// Target block count when splitting the weight-gradient reduction (about 2 waves on a big GPU).
pub(super) const WGRAD_TARGET_BLOCKS: usize = 264;
/// Minimum K elements per weight-gradient split.
pub(super) const WGRAD_MIN_CHUNK: usize = 256;
pub(super) const WGRAD_MAX_SPLITS: usize = 64;

pub(super) fn div_up(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// How a kernel's grid is sized; every rule uses BLOCK-thread blocks.
#[derive(Clone, Copy, Debug)]
pub(super) enum Grid {
    /// One thread per element, at most MAX_GRID_1D blocks (the kernel loops grid-stride).
    Elems(usize),
    /// One thread per element, no cap (the kernel has no grid-stride loop).
    Threads(usize),
    /// One warp per row, BLOCK / 32 rows per block.
    WarpRows(usize),
    /// One block per channel.
    Channels(usize),
    /// The conv GEMMs: `cols` output columns in CONV_TILE_N tiles, `rows` in `tile_m` tiles,
    /// `z` K splits.
    Tiles {
        cols: usize,
        rows: usize,
        tile_m: u32,
        z: usize,
    },
    /// A grid with dynamic shared memory (the one-hot input gradient).
    Shared { grid: [u32; 3], bytes: u32 },
}

impl Grid {
    /// Elements, rows or channels the kernel indexes with 32-bit ints (0: nothing to launch).
    pub(super) fn work(&self) -> usize {
        match *self {
            Grid::Elems(n) | Grid::Threads(n) | Grid::WarpRows(n) | Grid::Channels(n) => n,
            Grid::Tiles { cols, rows, z, .. } => cols * rows * z,
            Grid::Shared { grid, .. } => grid.iter().map(|&g| g as usize).product(),
        }
    }

    pub(super) fn config(&self) -> Launch {
        let b = BLOCK as usize;
        let (grid, shared_bytes) = match *self {
            Grid::Elems(n) => ([div_up(n, b).clamp(1, MAX_GRID_1D) as u32, 1, 1], 0),
            Grid::Threads(n) => ([div_up(n, b) as u32, 1, 1], 0),
            Grid::WarpRows(n) => ([div_up(n, b / 32) as u32, 1, 1], 0),
            Grid::Channels(c) => ([c as u32, 1, 1], 0),
            Grid::Tiles {
                cols,
                rows,
                tile_m,
                z,
            } => (
                [
                    div_up(cols, k::CONV_TILE_N as usize) as u32,
                    div_up(rows, tile_m as usize) as u32,
                    z as u32,
                ],
                0,
            ),
            Grid::Shared { grid, bytes } => (grid, bytes),
        };
        Launch {
            grid,
            block: [BLOCK, 1, 1],
            shared_bytes,
        }
    }
}

pub(super) fn i32_of(op: &'static str, what: &str, n: usize) -> Result<i32> {
    ensure_shape!(
        n <= i32::MAX as usize,
        op,
        "{what} = {n} exceeds the 32-bit indexing of the kernels"
    );
    Ok(n as i32)
}

/// The GPU's own limit on a conv (on top of `shapes::conv_*`): every tensor indexable in 32 bits.
pub(super) fn conv_fits_i32(op: &'static str, p: &ConvParams) -> Result<()> {
    let size = |s: [usize; 4]| s.iter().product::<usize>();
    let big = size(p.input_shape())
        .max(size(p.output_shape()))
        .max(size(p.weight_shape()));
    i32_of(op, "tensor size", big).map(|_| ())
}

/// A kernel that needs a non-empty spatial/batch extent (its reductions divide by it).
pub(super) fn non_empty(op: &'static str, what: &str, count: usize, t: &Tensor) -> Result<()> {
    ensure_shape!(count > 0, op, "empty {what} {:?}", t.shape());
    Ok(())
}

/// Row tile of a conv GEMM with `rows` output rows and `cols` output columns: 128 rows when there
/// are enough rows and the larger tiles still give about two waves of blocks on a big GPU.
pub(super) fn pick_tile_m(rows: usize, cols: usize) -> u32 {
    let large = k::CONV_TILE_M_LARGE as usize;
    if rows >= large
        && div_up(rows, large) * div_up(cols, k::CONV_TILE_N as usize) >= WGRAD_TARGET_BLOCKS
    {
        k::CONV_TILE_M_LARGE
    } else {
        k::CONV_TILE_M
    }
}

/// The conv kernels' implicit GEMMs, the one rule for both the tile choice and the launch:
/// forward (rows, cols) = (c_out, N*Ho*Wo), input gradient (c_in, N*H*W), weight gradient
/// (c_out, c_in*k*k) over a reduction of N*Ho*Wo.
pub(super) fn fwd_gemm(p: &ConvParams) -> (usize, usize) {
    (us(p.c_out), us(p.n) * us(p.h_out) * us(p.w_out))
}
pub(super) fn dgrad_gemm(p: &ConvParams) -> (usize, usize) {
    (us(p.c_in), us(p.n) * us(p.h_in) * us(p.w_in))
}
/// (rows, cols, reduction) of the weight gradient.
pub(super) fn wgrad_gemm(p: &ConvParams) -> (usize, usize, usize) {
    let cols = us(p.c_in) * us(p.kernel) * us(p.kernel);
    (us(p.c_out), cols, us(p.n) * us(p.h_out) * us(p.w_out))
}

/// The weight gradient splits K for parallelism, so it takes the large tile whenever c_out allows.
pub(super) fn wgrad_tile_m(p: &ConvParams) -> u32 {
    if p.c_out >= k::CONV_TILE_M_LARGE as i32 {
        k::CONV_TILE_M_LARGE
    } else {
        k::CONV_TILE_M
    }
}

/// Weight-gradient split count for a GEMM of `tiles` output tiles over `kdim` reduction elements.
pub(super) fn wgrad_splits(tiles: usize, kdim: usize) -> usize {
    let by_blocks = div_up(WGRAD_TARGET_BLOCKS, tiles.max(1));
    let by_chunk = (kdim / WGRAD_MIN_CHUNK).max(1);
    by_blocks.min(by_chunk).clamp(1, WGRAD_MAX_SPLITS)
}

/// The forward's row tile.
pub(super) fn fwd_tile_m(p: &ConvParams) -> u32 {
    let (rows, cols) = fwd_gemm(p);
    pick_tile_m(rows, cols)
}

/// The weight gradient's row tile and split count.
pub(super) fn wgrad_plan(p: &ConvParams) -> (u32, usize) {
    let tile = wgrad_tile_m(p);
    let (rows, cols, kdim) = wgrad_gemm(p);
    let tiles = div_up(rows, tile as usize) * div_up(cols, k::CONV_TILE_N as usize);
    (tile, wgrad_splits(tiles, kdim))
}

pub(super) fn tiled_kernel(
    op: &'static str,
    tile_m: u32,
    small: KernelId,
    large: KernelId,
) -> Result<KernelId> {
    match tile_m {
        k::CONV_TILE_M => Ok(small),
        k::CONV_TILE_M_LARGE => Ok(large),
        t => Err(Error::InvalidArgument(format!(
            "{op}: row tile {t} (expected {} or {})",
            k::CONV_TILE_M,
            k::CONV_TILE_M_LARGE
        ))),
    }
}

/// Conv sizes as usize (valid after `shapes::conv_params`).
pub(super) fn us(v: i32) -> usize {
    v.max(0) as usize
}
