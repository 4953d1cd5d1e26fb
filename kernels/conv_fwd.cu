// conv2d forward as an implicit GEMM (no im2col buffer), on the tile machinery of conv_tile.cuh.
//   M = c_out (filters), N = n * h_out * w_out (output pixels), K = c_in * k * k.
//   A[m][k] = w[m][k] (weights are already [c_out][c_in*k*k]), B[k][col] = x at the receptive-field
//   position of pixel `col` for reduction index k (zero in the padding; read through a.bn when set:
//   conv2d_forward_bn), y[n][m][pixel] = (A B)[m][col].
// Loader: each thread loads one fixed reduction column of A (MI rows) and one fixed pixel column of
// B (4 rows, ConvB::Cols), so the pixel's (n, oh, ow) decomposition is computed once per thread.
// Grid: (ceil(N/64), ceil(c_out/(16*MI)), 1).
#include "conv_tile.cuh"

template <int MI>
__device__ __forceinline__ void conv_fwd_body(const ConvFwdArgs& a) {
    const ConvParams p = a.p;
    const int kk = p.kernel * p.kernel;
    const int K = p.c_in * kk;
    const ConvColsThread th = conv_cols_thread<MI>(p.n, p.h_out * p.w_out, p.w_out);
    const int ih0 = th.h * p.stride - p.pad, iw0 = th.w * p.stride - p.pad;
    const float* xb = a.x + th.n * p.c_in * p.h_in * p.w_in;

    auto load = [&](int k0, float (&ra)[MI], float (&rb)[4]) {
        const int ka = k0 + th.a_k;
        conv_load(ra, th.m0 + th.a_m, 16, ka < K, p.c_out, [&](int m) { return __ldg(a.w + m * K + ka); });
        conv_load(rb, k0 + th.b_k, 4, th.col_ok, K, [&](int kb) { return conv_x_tap(xb, p, a.bn, kb, kk, ih0, iw0); });
    };
    conv_tile_cols<MI>(th, K, load, a.y, p.c_out);
}

extern "C" __global__ void __launch_bounds__(256) conv2d_forward(const ConvFwdArgs a) { conv_fwd_body<4>(a); }
extern "C" __global__ void __launch_bounds__(256) conv2d_forward_m128(const ConvFwdArgs a) { conv_fwd_body<8>(a); }
