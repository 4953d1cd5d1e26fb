// Shared by every kernel: mirrors of the `#[repr(C)]` params and args structs of
// src/backend/params.rs and src/backend/gpu/kernels.rs (field for field; change both together).
// Every kernel is `extern "C" __global__` and takes exactly one of these args structs by value.
// Pointers are 64-bit device addresses (u64 on the Rust side).
//
// Compiled by NVRTC (no host headers) and, with FMP_EMU defined, by the host C++ compiler for
// the CPU grid emulator (kernels/emu.h supplies the CUDA dialect there).
#pragma once

#ifdef FMP_EMU
#include "emu.h"
#endif

// Dynamic shared memory: `FMP_DYN_SHARED(float, smem);` declares `smem` as a pointer-like array
// to the launch's dynamic shared bytes (aligned to 16).
#ifdef FMP_EMU
#define FMP_DYN_SHARED(T, name) T* name = reinterpret_cast<T*>(::fmp_emu::dyn_shared())
#else
#define FMP_DYN_SHARED(T, name) extern __shared__ __align__(16) T name[]
#endif

struct ConvParams {
    int n, c_in, h_in, w_in, c_out, h_out, w_out, kernel, stride, pad;
};

// A convolution's input read through a training batchnorm (conv2d_forward_bn,
// conv2d_weight_grad_bn): value v of channel c becomes bn_value(v, mean[c], gamma[c] * invstd[c],
// beta[c]), then max(., 0) with relu -- what batchnorm_train_forward writes, bit for bit. gamma null:
// the input as it is. The zero padding stays zero.
struct BnIn {
    const float* gamma; const float* beta; const float* mean; const float* invstd;
    int relu, pad_;
};

// bn(x) with g = gamma * invstd: batchnorm's forward output, its backward's ReLU mask, and the
// convolutions' BnIn inputs alike.
__device__ __forceinline__ float bn_value(float x, float mean, float g, float b) {
    return fmaf(x - mean, g, b);
}

__device__ __forceinline__ float bn_in(const BnIn& bn, int c, float v) {
    if (!bn.gamma) return v;
    const float t = bn_value(v, bn.mean[c], bn.gamma[c] * bn.invstd[c], bn.beta[c]);
    return bn.relu ? fmaxf(t, 0.f) : t;
}

// ---- convolution --------------------------------------------------------------------------
struct ConvFwdArgs {
    const float* x; const float* w; float* y;
    ConvParams p;
    BnIn bn;
};
struct ConvDgradArgs {
    const float* dy; const float* w; float* dx;
    ConvParams p;
};
struct ConvDgradOnehotArgs {
    const float* seed; const float* w; float* dx;
    ConvParams p;
    int first_channel, group;
};
// out is dw when splits == 1, else the [splits, c_out, c_in*k*k] workspace.
struct ConvWgradArgs {
    const float* x; const float* dy; float* out;
    ConvParams p;
    int k_chunk, splits;
    BnIn bn;
};
struct WgradReduceArgs {
    const float* ws; float* dw;
    int count, splits;
};

// ---- per-channel affine and batchnorm -------------------------------------------------------
struct ChannelAffineArgs {
    const float* x; const float* scale; const float* shift; float* y;
    int numel, c, hw, relu;
};
// y_saved may be null (no ReLU mask); it holds saved_numel elements (batch broadcast i % saved_numel).
struct ChannelAffineBwdArgs {
    const float* y_saved; const float* dy; const float* scale; float* dx;
    int numel, c, hw, saved_numel;
};
// y null: statistics only (the consumers read relu(bn(x)) through BnIn).
struct BnFwdArgs {
    const float* x; const float* gamma; const float* beta;
    float* running_mean; float* running_var; float* save_mean; float* save_invstd; float* y;
    int n, c, hw;
    float eps, momentum;
    int relu;  // nonzero: y = relu(bn(x))
};
struct BnBwdArgs {
    const float* x; const float* dy; const float* gamma; const float* beta; const float* save_mean;
    const float* save_invstd;
    float* dx; float* dgamma; float* dbeta;
    int n, c, hw;
    int relu;  // nonzero: dy is the gradient of relu(bn(x)), masked by bn(x) > 0 recomputed from x
};

// ---- elementwise ----------------------------------------------------------------------------
struct UnaryArgs {
    const float* x; float* y;
    int numel, pad_;
};
struct ReluBwdArgs {
    const float* y_saved; const float* dy; float* dx;
    int numel, saved_numel;
};
struct BinaryArgs {
    const float* a; const float* b; float* y;
    int numel, pad_;
};
struct FillArgs {
    float* y;
    int numel;
    float value;
};

// ---- pooling and head -----------------------------------------------------------------------
struct PoolArgs {
    const float* x; float* y;
    int rows, hw;
};
struct PoolBwdArgs {
    const float* dy; float* dx;
    int numel, hw;
};
struct LinearArgs {
    // forward: a = x, b = w, c = bias, out = y; backward input: a = dy, b = w, out = dx;
    // backward params: a = x, b = dy, out = dw, c_out = db.
    const float* a; const float* b; const float* c; float* out; float* out2;
    int n, in_f, out_f, pad_;
};
struct SoftmaxXentArgs {
    const float* logits; const unsigned int* labels; float* loss; float* dlogits;
    int n, k;
};

// ---- FRG and optimisers ---------------------------------------------------------------------
struct ChannelMseArgs {
    const float* a; const float* b; float* loss;
    int n, c, hw, pad_;
};
struct FrgSeedArgs {
    const float* a_x; const float* a_x0; float* seed;
    int b, c, hw, kcount, first_channel;
    float scale;
};
struct SignStepArgs {
    const float* x0; const float* g; float* y;
    int numel, x0_numel;
    float eps;
    int pad_;
};
struct SgdArgs {
    float* param; const float* grad; float* buf;
    int numel;
    float lr, momentum, weight_decay;
};

// ---- small device helpers shared by the reduction kernels -----------------------------------
#define FMP_FULL_MASK 0xffffffffu

// Sum over the 32 lanes of a warp; the result is valid in lane 0 (fixed tree order: deterministic).
__device__ __forceinline__ float fmp_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(FMP_FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float fmp_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(FMP_FULL_MASK, v, o));
    return v;
}

// NCHW index of element e (in (item, pixel) order) of channel c, for the per-channel reductions
// (batchnorm, channel_mse): element e of channel c is item e / hw, pixel e % hw.
__device__ __forceinline__ int fmp_channel_at(int e, int c, int channels, int hw) {
    const int n = e / hw;
    return (n * channels + c) * hw + (e - n * hw);
}

// Sum over a block (blockDim.x a multiple of 32, at most 1024); every thread gets the same total.
// `red` is a __shared__ float[33] scratch owned by the caller; calls may follow each other.
__device__ __forceinline__ float fmp_block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = fmp_warp_sum(v);
    if (lane == 0) red[wid] = v;
    __syncthreads();
    if (wid == 0) {
        float t = lane < nw ? red[lane] : 0.f;
        t = fmp_warp_sum(t);
        if (lane == 0) red[32] = t;
    }
    __syncthreads();
    const float total = red[32];
    __syncthreads();  // red may be reused by the next call
    return total;
}

// The per-channel reductions' one loop (batchnorm, channel_mse; grid: a block per channel
// blockIdx.x): over channel c's n*hw elements, each thread folds its fixed strided subset into
// s = term(s, NCHW index of the element), from 0; then fmp_block_sum, so every thread gets the total.
template <class Term>
__device__ __forceinline__ float fmp_channel_sum(int n, int channels, int hw, float* red, Term term) {
    const int c = blockIdx.x, cnt = n * hw;
    float s = 0.f;
    for (int e = threadIdx.x; e < cnt; e += blockDim.x) s = term(s, fmp_channel_at(e, c, channels, hw));
    return fmp_block_sum(s, red);
}
