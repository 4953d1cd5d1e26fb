// conv2d forward as an implicit GEMM (no im2col buffer).
//   M = c_out (filters), N = n * h_out * w_out (output pixels), K = c_in * k * k.
//   A[m][k] = w[m][k] (weights are already [c_out][c_in*k*k]), B[k][col] = x at the receptive-field
//   position of pixel `col` for reduction index k (zero in the padding), y[n][m][pixel] = (A B)[m][col].
// Block: 256 threads compute a (16*MI)x64 output tile (MI = 4: 64x64, MI = 8: 128x64, chosen by the
// launcher from the GEMM size); K advances in slabs of 16 staged in shared memory, the next slab's
// global loads are issued into registers before the current slab is multiplied (latency hiding);
// each thread owns an MIx4 micro-tile at rows ty + 16i, cols tx + 16j (stores coalesced along
// pixels, shared reads broadcast / conflict-free). Loader mapping: each thread loads one fixed
// reduction column of A (MI rows) and one fixed pixel column of B (4 rows), so the pixel's
// (n, oh, ow) decomposition is computed once per thread.
// Grid: (ceil(N/64), ceil(c_out/(16*MI)), 1).
#include "params.cuh"

#define CF_TN 64
#define CF_TK 16

template <int MI>
__device__ __forceinline__ void conv_fwd_body(const ConvFwdArgs& a) {
    constexpr int TM = 16 * MI;
    const ConvParams p = a.p;
    const int kk = p.kernel * p.kernel;
    const int K = p.c_in * kk;
    const int hwo = p.h_out * p.w_out;
    const int NC = p.n * hwo;
    const int m0 = blockIdx.y * TM;
    const int n0 = blockIdx.x * CF_TN;
    __shared__ float As[CF_TK][TM + 4];
    __shared__ float Bs[CF_TK][CF_TN];
    const int t = threadIdx.x;
    const int tx = t % 16, ty = t / 16;
    const int a_k = t % CF_TK, a_m = t / CF_TK;   // A loader: column a_k, rows a_m + 16 r
    const int b_col = t % CF_TN, b_k = t / CF_TN;  // B loader: column b_col, rows b_k + 4 r
    const int col = n0 + b_col;
    const bool col_ok = col < NC;
    int bn = 0, boh = 0, bow = 0;
    if (col_ok) {
        bn = col / hwo;
        const int r = col - bn * hwo;
        boh = r / p.w_out;
        bow = r - boh * p.w_out;
    }
    const int ih0 = boh * p.stride - p.pad, iw0 = bow * p.stride - p.pad;
    const float* xb = a.x + bn * p.c_in * p.h_in * p.w_in;

    float ra[MI], rb[4];
    auto load = [&](int k0) {
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
                const int ci = kb / kk;
                const int rem = kb - ci * kk;
                const int kh = rem / p.kernel;
                const int kw = rem - kh * p.kernel;
                const int ih = ih0 + kh, iw = iw0 + kw;
                if (ih >= 0 && ih < p.h_in && iw >= 0 && iw < p.w_in) v = __ldg(xb + (ci * p.h_in + ih) * p.w_in + iw);
            }
            rb[r] = v;
        }
    };

    float acc[MI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

    load(0);
    for (int k0 = 0; k0 < K; k0 += CF_TK) {
#pragma unroll
        for (int r = 0; r < MI; ++r) As[a_k][a_m + 16 * r] = ra[r];
#pragma unroll
        for (int r = 0; r < 4; ++r) Bs[b_k + 4 * r][b_col] = rb[r];
        __syncthreads();
        if (k0 + CF_TK < K) load(k0 + CF_TK);
#pragma unroll
        for (int q = 0; q < CF_TK; ++q) {
            float av[MI], bv[4];
#pragma unroll
            for (int i = 0; i < MI; ++i) av[i] = As[q][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) bv[j] = Bs[q][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }

#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int c = n0 + tx + 16 * j;
        if (c >= NC) continue;
        const int n = c / hwo;
        const int r = c - n * hwo;
#pragma unroll
        for (int i = 0; i < MI; ++i) {
            const int m = m0 + ty + 16 * i;
            if (m < p.c_out) a.y[(n * p.c_out + m) * hwo + r] = acc[i][j];
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) conv2d_forward(const ConvFwdArgs a) { conv_fwd_body<4>(a); }
extern "C" __global__ void __launch_bounds__(256) conv2d_forward_m128(const ConvFwdArgs a) { conv_fwd_body<8>(a); }
