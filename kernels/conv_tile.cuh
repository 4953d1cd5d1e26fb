// The implicit-GEMM tile machinery shared by the three conv kernels (conv_fwd.cu, conv_dgrad.cu,
// conv_wgrad.cu), which differ only in how they read A and B from the tensors and where they write
// C. Each kernel supplies a loader; this file owns the tile, the shared memory, the pipeline and
// the micro-tile body.
//
// Block: 256 threads compute a TM x CONV_TN output tile, TM = 16*MI (MI = 4: 64 rows, MI = 8: 128
// rows, the `_m128` kernels; the launcher picks one from the GEMM size). K advances in slabs of
// CONV_TK staged in shared memory; the next slab's global loads are issued into registers (ra: MI
// values of A, rb: 4 of B) before the current slab is multiplied (latency hiding). Each thread owns
// an MI x 4 micro-tile of C at rows ty + 16i, cols tx + 16j (tx = t % 16, ty = t / 16): stores are
// coalesced along columns, shared reads are broadcast / conflict-free.
// Loader layout (thread t, what `load(k0, ra, rb)` must fill):
//   A: ra[r] = A[row t / 16 + 16 r][k0 + t % 16]                                   (r < MI)
//   B, ConvB::Cols (fwd, dgrad): rb[r] = B[k0 + t / 64 + 4 r][col t % 64]          (r < 4)
//        one fixed output column per thread, so its (n, h, w) decomposition is computed once;
//   B, ConvB::K (wgrad): rb[r] = B[k0 + t % 16][col t / 16 + 16 r]                  (r < 4)
//        consecutive threads read consecutive K (output pixels): coalesced; rows padded by 4
//        against bank conflicts.
// Loads outside the matrices (padding, ragged tiles, k >= kend) must give 0.
#pragma once
#include "params.cuh"

#define CONV_TN 64
#define CONV_TK 16

enum class ConvB { Cols, K };

// (n, h, w) of a flat index over [N][H][W] (plane = H*W, width = W); returns the in-plane offset.
__device__ __forceinline__ int conv_split(int i, int plane, int width, int& n, int& h, int& w) {
    n = i / plane;
    const int r = i - n * plane;
    h = r / width;
    w = r - h * width;
    return r;
}

// (c, kh, kw) of a filter-tap index over [C][kernel][kernel] (kk = kernel * kernel).
__device__ __forceinline__ void conv_tap(int i, int kk, int kernel, int& c, int& kh, int& kw) {
    c = i / kk;
    const int rem = i - c * kk;
    kh = rem / kernel;
    kw = rem - kh * kernel;
}

// Loader registers: out[r] = at(first + step * r) where `ok` and that index is below `limit`, else 0
// (the zero of the padding and of ragged tiles).
template <int N, class At>
__device__ __forceinline__ void conv_load(float (&out)[N], int first, int step, bool ok, int limit, At at) {
#pragma unroll
    for (int r = 0; r < N; ++r) {
        const int i = first + step * r;
        out[r] = (ok && i < limit) ? at(i) : 0.f;
    }
}

// x[ci][ih0 + kh][iw0 + kw] of one item's planes `xn` at filter tap i = (ci, kh, kw) (kk = kernel *
// kernel), read through `bn` (params.cuh): the im2col element of a receptive field at (ih0, iw0); 0
// in the padding (fwd, wgrad).
__device__ __forceinline__ float conv_x_tap(const float* xn, const ConvParams& p, const BnIn& bn, int i, int kk,
                                            int ih0, int iw0) {
    int ci, kh, kw;
    conv_tap(i, kk, p.kernel, ci, kh, kw);
    const int ih = ih0 + kh, iw = iw0 + kw;
    return (ih >= 0 && ih < p.h_in && iw >= 0 && iw < p.w_in)
               ? bn_in(bn, ci, __ldg(xn + (ci * p.h_in + ih) * p.w_in + iw))
               : 0.f;
}

// A ConvB::Cols thread's place in its tile (fwd, dgrad), whose columns are the pixels of N planes
// of `plane` = H x width pixels (cols = N * plane): the tile's first row m0 and column n0, the A
// loader's column a_k and first row a_m, the B loader's first row b_k, and the one fixed column it
// loads of B (col_ok: inside the columns), split into (n, h, w).
struct ConvColsThread {
    int plane, cols;
    int m0, n0, a_k, a_m, b_k;
    bool col_ok;
    int n, h, w;
};

template <int MI>
__device__ __forceinline__ ConvColsThread conv_cols_thread(int n_planes, int plane, int width) {
    ConvColsThread th;
    const int t = threadIdx.x;
    th.plane = plane;
    th.cols = n_planes * plane;
    th.m0 = blockIdx.y * (16 * MI);
    th.n0 = blockIdx.x * CONV_TN;
    th.a_k = t % CONV_TK;
    th.a_m = t / CONV_TK;
    th.b_k = t / CONV_TN;
    const int col = th.n0 + t % CONV_TN;
    th.col_ok = col < th.cols;
    th.n = th.h = th.w = 0;
    if (th.col_ok) conv_split(col, plane, width, th.n, th.h, th.w);
    return th;
}

// acc = A[rows of this tile][kbeg, kend) * B[kbeg, kend)[cols of this tile], kend - kbeg any size.
template <int MI, ConvB BL, class Load>
__device__ __forceinline__ void conv_tile_gemm(int kbeg, int kend, Load load, float (&acc)[MI][4]) {
    constexpr int TM = 16 * MI;
    constexpr int BPAD = BL == ConvB::K ? 4 : 0;
    __shared__ float As[CONV_TK][TM + 4];
    __shared__ float Bs[CONV_TK][CONV_TN + BPAD];
    const int t = threadIdx.x;
    const int tx = t % 16, ty = t / 16;
    float ra[MI], rb[4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

    if (kbeg < kend) load(kbeg, ra, rb);
    for (int k0 = kbeg; k0 < kend; k0 += CONV_TK) {
#pragma unroll
        for (int r = 0; r < MI; ++r) As[t % CONV_TK][t / CONV_TK + 16 * r] = ra[r];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            if (BL == ConvB::K) Bs[t % CONV_TK][t / CONV_TK + 16 * r] = rb[r];
            else Bs[t / CONV_TN + 4 * r][t % CONV_TN] = rb[r];
        }
        __syncthreads();
        if (k0 + CONV_TK < kend) load(k0 + CONV_TK, ra, rb);
#pragma unroll
        for (int q = 0; q < CONV_TK; ++q) {
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
}

// Store a tile whose rows are channels and whose columns are (n, pixel) of an NCHW tensor `out`
// with `rows` channels, `hw` pixels per plane and `cols` = N * hw columns (fwd: y, dgrad: dx).
template <int MI>
__device__ __forceinline__ void conv_tile_store_nchw(const float (&acc)[MI][4], float* out, int m0, int n0,
                                                     int rows, int hw, int cols) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int c = n0 + tx + 16 * j;
        if (c >= cols) continue;
        const int n = c / hw;
        const int r = c - n * hw;
#pragma unroll
        for (int i = 0; i < MI; ++i) {
            const int m = m0 + ty + 16 * i;
            if (m < rows) out[(n * rows + m) * hw + r] = acc[i][j];
        }
    }
}

// The whole ConvB::Cols tile (fwd, dgrad): the GEMM over [0, K) stored into the NCHW tensor `out`
// of `rows` channels.
template <int MI, class Load>
__device__ __forceinline__ void conv_tile_cols(const ConvColsThread& th, int K, Load load, float* out, int rows) {
    float acc[MI][4];
    conv_tile_gemm<MI, ConvB::Cols>(0, K, load, acc);
    conv_tile_store_nchw<MI>(acc, out, th.m0, th.n0, rows, th.plane, th.cols);
}
