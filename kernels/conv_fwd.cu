// conv2d forward as an implicit GEMM (no im2col buffer), on the tile machinery of conv_tile.cuh.
//   M = c_out (filters), N = n * h_out * w_out (output pixels), K = c_in * k * k.
//   A[m][k] = w[m][k] (weights are already [c_out][c_in*k*k]), B[k][col] = x at the receptive-field
//   position of pixel `col` for reduction index k (zero in the padding), y[n][m][pixel] = (A B)[m][col].
// Loader: each thread loads one fixed reduction column of A (MI rows) and one fixed pixel column of
// B (4 rows, ConvB::Cols), so the pixel's (n, oh, ow) decomposition is computed once per thread.
// Grid: (ceil(N/64), ceil(c_out/(16*MI)), 1).
#include "conv_tile.cuh"

template <int MI>
__device__ __forceinline__ void conv_fwd_body(const ConvFwdArgs& a) {
    const ConvParams p = a.p;
    const int kk = p.kernel * p.kernel;
    const int K = p.c_in * kk;
    const int hwo = p.h_out * p.w_out;
    const int NC = p.n * hwo;
    const int m0 = blockIdx.y * (16 * MI);
    const int n0 = blockIdx.x * CONV_TN;
    const int t = threadIdx.x;
    const int a_k = t % CONV_TK, a_m = t / CONV_TK;    // A loader: column a_k, rows a_m + 16 r
    const int b_col = t % CONV_TN, b_k = t / CONV_TN;  // B loader: column b_col, rows b_k + 4 r
    const int col = n0 + b_col;
    const bool col_ok = col < NC;
    int bn = 0, boh = 0, bow = 0;
    if (col_ok) conv_split(col, hwo, p.w_out, bn, boh, bow);
    const int ih0 = boh * p.stride - p.pad, iw0 = bow * p.stride - p.pad;
    const float* xb = a.x + bn * p.c_in * p.h_in * p.w_in;

    auto load = [&](int k0, float (&ra)[MI], float (&rb)[4]) {
        const int ka = k0 + a_k;
#pragma unroll
        for (int r = 0; r < MI; ++r) {
            const int m = m0 + a_m + 16 * r;
            ra[r] = (m < p.c_out && ka < K) ? __ldg(a.w + m * K + ka) : 0.f;
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int kb = k0 + b_k + 4 * r;
            float v = 0.f;
            if (col_ok && kb < K) {
                int ci, kh, kw;
                conv_tap(kb, kk, p.kernel, ci, kh, kw);
                const int ih = ih0 + kh, iw = iw0 + kw;
                if (ih >= 0 && ih < p.h_in && iw >= 0 && iw < p.w_in) v = __ldg(xb + (ci * p.h_in + ih) * p.w_in + iw);
            }
            rb[r] = v;
        }
    };
    float acc[MI][4];
    conv_tile_gemm<MI, ConvB::Cols>(0, K, load, acc);
    conv_tile_store_nchw<MI>(acc, a.y, m0, n0, p.c_out, hwo, NC);
}

extern "C" __global__ void __launch_bounds__(256) conv2d_forward(const ConvFwdArgs a) { conv_fwd_body<4>(a); }
extern "C" __global__ void __launch_bounds__(256) conv2d_forward_m128(const ConvFwdArgs a) { conv_fwd_body<8>(a); }
