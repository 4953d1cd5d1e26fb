// conv2d input gradient.
// conv2d_input_grad: implicit GEMM with
//   M = c_in, N = n * h_in * w_in (input pixels), K = c_out * k * k;
//   A[ci][(co,kh,kw)] = w[co][ci][kh][kw], B[(co,kh,kw)][(n,ih,iw)] = dy[n][co][oh][ow] where
//   oh = (ih + pad - kh) / stride when that divides exactly and lands inside the output (else 0).
//   On the tile machinery of conv_tile.cuh, loaders as in conv_fwd.cu (B along columns: one fixed
//   input pixel per thread). Grid: (ceil(N/64), ceil(c_in/(16*MI)), 1).
// conv2d_input_grad_onehot: the cotangent of item i is non-zero only in channel
//   c_i = first_channel + i / group, given as seed[i][0][oh][ow], so
//   dx[i][ci][ih][iw] = sum_{kh,kw} seed[i][0][oh][ow] * w[c_i][ci][kh][kw] (K = k*k only).
//   Block = 256 input pixels of one item x a tile of OH_CT input channels; the tile's filter slice
//   w[c_i][ci0 .. ci0+OH_CT][:][:] is staged in dynamic shared memory (OH_CT*k*k floats); each
//   thread reads its k*k seed values once and accumulates OH_CT outputs in registers.
//   Grid: (ceil(h_in*w_in/256), ceil(c_in/OH_CT), n).
#include "conv_tile.cuh"

#define OH_CT 16

template <int MI>
__device__ __forceinline__ void conv_dgrad_body(const ConvDgradArgs& a) {
    const ConvParams p = a.p;
    const int kk = p.kernel * p.kernel;
    const int K = p.c_out * kk;
    const int hwo = p.h_out * p.w_out;
    const ConvColsThread th = conv_cols_thread<MI>(p.n, p.h_in * p.w_in, p.w_in);
    const float* dyb = a.dy + th.n * p.c_out * hwo;

    auto load = [&](int k0, float (&ra)[MI], float (&rb)[4]) {
        const int ka = k0 + th.a_k;
        const int co_a = ka / kk;
        const int khw_a = ka - co_a * kk;
        conv_load(ra, th.m0 + th.a_m, 16, ka < K, p.c_in,
                  [&](int m) { return __ldg(a.w + (co_a * p.c_in + m) * kk + khw_a); });
        // dy[n][co][oh][ow] where ih = oh * stride - pad + kh (likewise w) for an output pixel, else 0.
        conv_load(rb, k0 + th.b_k, 4, th.col_ok, K, [&](int kb) {
            int co, kh, kw;
            conv_tap(kb, kk, p.kernel, co, kh, kw);
            const int hn = th.h + p.pad - kh, wn = th.w + p.pad - kw;
            if (hn < 0 || wn < 0) return 0.f;
            const int oh = hn / p.stride, ow = wn / p.stride;
            const bool hit = oh * p.stride == hn && ow * p.stride == wn && oh < p.h_out && ow < p.w_out;
            return hit ? __ldg(dyb + (co * p.h_out + oh) * p.w_out + ow) : 0.f;
        });
    };
    conv_tile_cols<MI>(th, K, load, a.dx, p.c_in);
}

extern "C" __global__ void __launch_bounds__(256) conv2d_input_grad(const ConvDgradArgs a) { conv_dgrad_body<4>(a); }
extern "C" __global__ void __launch_bounds__(256) conv2d_input_grad_m128(const ConvDgradArgs a) { conv_dgrad_body<8>(a); }

extern "C" __global__ void __launch_bounds__(256) conv2d_input_grad_onehot(const ConvDgradOnehotArgs a) {
    const ConvParams p = a.p;
    const int kk = p.kernel * p.kernel;
    const int hwi = p.h_in * p.w_in;
    const int item = blockIdx.z;
    const int ci0 = blockIdx.y * OH_CT;
    const int nct = min(OH_CT, p.c_in - ci0);
    const int filt = a.first_channel + item / a.group;
    FMP_DYN_SHARED(float, ws);  // [OH_CT][kk]
    for (int e = threadIdx.x; e < nct * kk; e += blockDim.x)
        ws[e] = __ldg(a.w + (filt * p.c_in + ci0) * kk + e);
    __syncthreads();

    const int pix = blockIdx.x * blockDim.x + threadIdx.x;
    if (pix >= hwi) return;
    const int ih = pix / p.w_in, iw = pix - (pix / p.w_in) * p.w_in;
    const float* sd = a.seed + item * p.h_out * p.w_out;
    float acc[OH_CT];
#pragma unroll
    for (int c = 0; c < OH_CT; ++c) acc[c] = 0.f;
    for (int kh = 0; kh < p.kernel; ++kh) {
        const int hn = ih + p.pad - kh;
        if (hn < 0) continue;
        const int oh = hn / p.stride;
        if (oh * p.stride != hn || oh >= p.h_out) continue;
        for (int kw = 0; kw < p.kernel; ++kw) {
            const int wn = iw + p.pad - kw;
            if (wn < 0) continue;
            const int ow = wn / p.stride;
            if (ow * p.stride != wn || ow >= p.w_out) continue;
            const float s = __ldg(sd + oh * p.w_out + ow);
            const int khw = kh * p.kernel + kw;
#pragma unroll
            for (int c = 0; c < OH_CT; ++c)
                if (c < nct) acc[c] = fmaf(s, ws[c * kk + khw], acc[c]);
        }
    }
    float* out = a.dx + (item * p.c_in + ci0) * hwi + pix;
#pragma unroll
    for (int c = 0; c < OH_CT; ++c)
        if (c < nct) out[c * hwi] = acc[c];
}
