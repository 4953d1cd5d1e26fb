//! The kernel sources (`kernels/*.cu`, embedded with `include_str!`), the list of every kernel,
//! and the `#[repr(C)]` args structs each kernel takes by value. Every struct is mirrored field for
//! field in `kernels/params.cuh` (pointers are `u64` device addresses here); change both together.
//! Fields are ordered pointers first, then 4-byte scalars padded to a multiple of 8, so the
//! structs have no implicit padding (required by `Pod`) and the same layout in C.
use bytemuck::{Pod, Zeroable};

use super::runner::KernelId;
use crate::backend::params::ConvParams;

/// The header every kernel includes (register it with NVRTC under this name).
pub const PARAMS_HEADER: (&str, &str) = ("params.cuh", include_str!("../../../kernels/params.cuh"));

/// The implicit-GEMM tile machinery of the three conv kernels (included by conv_*.cu).
pub const CONV_TILE_HEADER: (&str, &str) = (
    "conv_tile.cuh",
    include_str!("../../../kernels/conv_tile.cuh"),
);

/// (file stem, source) of every kernel file.
pub const KERNEL_FILES: &[(&str, &str)] = &[
    ("affine", include_str!("../../../kernels/affine.cu")),
    ("batchnorm", include_str!("../../../kernels/batchnorm.cu")),
    ("conv_dgrad", include_str!("../../../kernels/conv_dgrad.cu")),
    ("conv_fwd", include_str!("../../../kernels/conv_fwd.cu")),
    ("conv_wgrad", include_str!("../../../kernels/conv_wgrad.cu")),
    (
        "elementwise",
        include_str!("../../../kernels/elementwise.cu"),
    ),
    ("linear", include_str!("../../../kernels/linear.cu")),
    ("loss", include_str!("../../../kernels/loss.cu")),
    ("optim", include_str!("../../../kernels/optim.cu")),
    ("pool", include_str!("../../../kernels/pool.cu")),
];

macro_rules! kernel_ids {
    ($($id:ident = $file:literal : $name:literal;)*) => {
        $(pub const $id: KernelId = KernelId { file: $file, name: $name };)*
        /// Every kernel the backend launches.
        pub const ALL_KERNELS: &[KernelId] = &[$($id),*];
    };
}

kernel_ids! {
    CONV2D_FORWARD = "conv_fwd": "conv2d_forward";
    CONV2D_FORWARD_M128 = "conv_fwd": "conv2d_forward_m128";
    CONV2D_INPUT_GRAD = "conv_dgrad": "conv2d_input_grad";
    CONV2D_INPUT_GRAD_M128 = "conv_dgrad": "conv2d_input_grad_m128";
    CONV2D_INPUT_GRAD_ONEHOT = "conv_dgrad": "conv2d_input_grad_onehot";
    CONV2D_WEIGHT_GRAD = "conv_wgrad": "conv2d_weight_grad";
    CONV2D_WEIGHT_GRAD_M128 = "conv_wgrad": "conv2d_weight_grad_m128";
    CONV2D_WEIGHT_GRAD_REDUCE = "conv_wgrad": "conv2d_weight_grad_reduce";
    CHANNEL_AFFINE = "affine": "channel_affine";
    CHANNEL_AFFINE_BACKWARD = "affine": "channel_affine_backward";
    BATCHNORM_TRAIN_FORWARD = "batchnorm": "batchnorm_train_forward";
    BATCHNORM_TRAIN_BACKWARD = "batchnorm": "batchnorm_train_backward";
    RELU_FORWARD = "elementwise": "relu_forward";
    RELU_BACKWARD = "elementwise": "relu_backward";
    ADD_FORWARD = "elementwise": "add_forward";
    ADD_ASSIGN = "elementwise": "add_assign";
    MUL_ASSIGN = "elementwise": "mul_assign";
    COPY_F32 = "elementwise": "copy_f32";
    FILL_F32 = "elementwise": "fill_f32";
    GLOBAL_AVG_POOL = "pool": "global_avg_pool";
    GLOBAL_AVG_POOL_BACKWARD = "pool": "global_avg_pool_backward";
    LINEAR_FORWARD = "linear": "linear_forward";
    LINEAR_BACKWARD_INPUT = "linear": "linear_backward_input";
    LINEAR_BACKWARD_PARAMS = "linear": "linear_backward_params";
    SOFTMAX_CROSS_ENTROPY = "loss": "softmax_cross_entropy";
    CHANNEL_MSE = "loss": "channel_mse";
    FRG_SEED = "loss": "frg_seed";
    SIGN_STEP = "optim": "sign_step";
    SGD_STEP = "optim": "sgd_step";
}

/// Source of a kernel file by stem.
pub fn kernel_source(file: &str) -> Option<&'static str> {
    KERNEL_FILES
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, s)| *s)
}

// ---- conv tiling constants (must match kernels/conv_tile.cuh and OH_CT in conv_dgrad.cu) ---------
/// Output tile of the implicit-GEMM conv kernels (rows = filters/channels, cols = pixels); the
/// `_m128` variants use CONV_TILE_M_LARGE rows.
pub const CONV_TILE_M: u32 = 64;
pub const CONV_TILE_M_LARGE: u32 = 128;
pub const CONV_TILE_N: u32 = 64;
/// K slab of the conv kernels.
pub const CONV_TILE_K: u32 = 16;
/// Input channels per block of the one-hot input-gradient kernel.
pub const ONEHOT_CHANNEL_TILE: u32 = 16;

/// A convolution's input read through a training batchnorm (`conv2d_forward_bn`,
/// `conv2d_weight_grad_bn`): gamma, beta and the saved statistics, and the fused ReLU. All zero
/// (`BnIn::NONE`): the input as it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BnIn {
    pub gamma: u64,
    pub beta: u64,
    pub mean: u64,
    pub invstd: u64,
    pub relu: i32,
    pub pad_: i32,
}

impl BnIn {
    pub const NONE: BnIn = BnIn {
        gamma: 0,
        beta: 0,
        mean: 0,
        invstd: 0,
        relu: 0,
        pad_: 0,
    };
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ConvFwdArgs {
    pub x: u64,
    pub w: u64,
    pub y: u64,
    pub p: ConvParams,
    pub bn: BnIn,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ConvDgradArgs {
    pub dy: u64,
    pub w: u64,
    pub dx: u64,
    pub p: ConvParams,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ConvDgradOnehotArgs {
    pub seed: u64,
    pub w: u64,
    pub dx: u64,
    pub p: ConvParams,
    pub first_channel: i32,
    pub group: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ConvWgradArgs {
    pub x: u64,
    pub dy: u64,
    /// dw when splits == 1, else the [splits, c_out, c_in*k*k] workspace.
    pub out: u64,
    pub p: ConvParams,
    pub k_chunk: i32,
    pub splits: i32,
    pub bn: BnIn,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct WgradReduceArgs {
    pub ws: u64,
    pub dw: u64,
    pub count: i32,
    pub splits: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ChannelAffineArgs {
    pub x: u64,
    pub scale: u64,
    pub shift: u64,
    pub y: u64,
    pub numel: i32,
    pub c: i32,
    pub hw: i32,
    pub relu: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ChannelAffineBwdArgs {
    /// 0 when there is no ReLU mask.
    pub y_saved: u64,
    pub dy: u64,
    pub scale: u64,
    pub dx: u64,
    pub numel: i32,
    pub c: i32,
    pub hw: i32,
    pub saved_numel: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BnFwdArgs {
    pub x: u64,
    pub gamma: u64,
    pub beta: u64,
    pub running_mean: u64,
    pub running_var: u64,
    pub save_mean: u64,
    pub save_invstd: u64,
    /// 0: statistics only.
    pub y: u64,
    pub n: i32,
    pub c: i32,
    pub hw: i32,
    pub eps: f32,
    pub momentum: f32,
    pub relu: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BnBwdArgs {
    pub x: u64,
    pub dy: u64,
    pub gamma: u64,
    pub beta: u64,
    pub save_mean: u64,
    pub save_invstd: u64,
    pub dx: u64,
    pub dgamma: u64,
    pub dbeta: u64,
    pub n: i32,
    pub c: i32,
    pub hw: i32,
    pub relu: i32,
}

/// relu_forward (x -> y), add_assign (y += x), mul_assign (y *= x), copy_f32 (y = x).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct UnaryArgs {
    pub x: u64,
    pub y: u64,
    pub numel: i32,
    pub pad_: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ReluBwdArgs {
    pub y_saved: u64,
    pub dy: u64,
    pub dx: u64,
    pub numel: i32,
    pub saved_numel: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BinaryArgs {
    pub a: u64,
    pub b: u64,
    pub y: u64,
    pub numel: i32,
    pub pad_: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct FillArgs {
    pub y: u64,
    pub numel: i32,
    pub value: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct PoolArgs {
    pub x: u64,
    pub y: u64,
    pub rows: i32,
    pub hw: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct PoolBwdArgs {
    pub dy: u64,
    pub dx: u64,
    pub numel: i32,
    pub hw: i32,
}

/// forward: a = x, b = w, c = bias, out = y; backward input: a = dy, b = w, out = dx;
/// backward params: a = x, b = dy, out = dw, out2 = db.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct LinearArgs {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub out: u64,
    pub out2: u64,
    pub n: i32,
    pub in_f: i32,
    pub out_f: i32,
    pub pad_: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SoftmaxXentArgs {
    pub logits: u64,
    pub labels: u64,
    pub loss: u64,
    pub dlogits: u64,
    pub n: i32,
    pub k: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ChannelMseArgs {
    pub a: u64,
    pub b: u64,
    pub loss: u64,
    pub n: i32,
    pub c: i32,
    pub hw: i32,
    pub pad_: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct FrgSeedArgs {
    pub a_x: u64,
    pub a_x0: u64,
    pub seed: u64,
    pub b: i32,
    pub c: i32,
    pub hw: i32,
    pub kcount: i32,
    pub first_channel: i32,
    pub scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SignStepArgs {
    pub x0: u64,
    pub g: u64,
    pub y: u64,
    pub numel: i32,
    pub x0_numel: i32,
    pub eps: f32,
    pub pad_: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SgdArgs {
    pub param: u64,
    pub grad: u64,
    pub buf: u64,
    pub numel: i32,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel id names a file in KERNEL_FILES whose source defines it as `extern "C" __global__`.
    #[test]
    fn every_kernel_is_defined_in_its_file() {
        for k in ALL_KERNELS {
            let src = kernel_source(k.file)
                .unwrap_or_else(|| panic!("{}: no kernel file {}", k.name, k.file));
            let decl = src.lines().any(|l| {
                l.starts_with("extern \"C\" __global__") && l.contains(&format!(" {}(", k.name))
            });
            assert!(
                decl,
                "kernels/{}.cu does not define extern \"C\" __global__ {}",
                k.file, k.name
            );
        }
        // and every defined kernel is listed
        for (file, src) in KERNEL_FILES {
            for l in src
                .lines()
                .filter(|l| l.starts_with("extern \"C\" __global__"))
            {
                assert!(
                    ALL_KERNELS
                        .iter()
                        .any(|k| k.file == *file && l.contains(&format!(" {}(", k.name))),
                    "unlisted kernel in {file}.cu: {l}"
                );
            }
        }
    }

    #[test]
    fn args_struct_sizes_match_params_cuh() {
        use std::mem::size_of;
        assert_eq!(size_of::<ConvParams>(), 40);
        assert_eq!(size_of::<BnIn>(), 40);
        assert_eq!(size_of::<ConvFwdArgs>(), 104);
        assert_eq!(size_of::<ConvWgradArgs>(), 112);
        assert_eq!(size_of::<BnFwdArgs>(), 88);
        assert_eq!(size_of::<BnBwdArgs>(), 88);
        assert_eq!(size_of::<LinearArgs>(), 56);
        assert_eq!(size_of::<SgdArgs>(), 40);
    }
}
