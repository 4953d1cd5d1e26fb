// conv2d weight gradient as an implicit GEMM with a deterministic split-K.
//   M = c_out, N = c_in * k * k (filter taps), K = n * h_out * w_out (output pixels);
//   A[co][(n,oh,ow)] = dy[n][co][oh][ow], B[(n,oh,ow)][(ci,kh,kw)] = x[n][ci][oh*s-p+kh][ow*s-p+kw].
// Tiling as in conv_fwd.cu (256 threads, (16*MI)x64 tile with MI = 4 or 8 (`_m128`), K slabs of 16
// in shared memory with register prefetch of the next slab, MIx4 micro-tiles),
// but both loaders run along K (consecutive threads read consecutive output pixels, so global reads
// are coalesced), with padded shared rows against bank conflicts.
// K is huge for early layers and M*N small, so blockIdx.z takes K chunk z ([z*k_chunk, (z+1)*k_chunk))
// and writes its partial product to workspace slice z; conv2d_weight_grad_reduce then sums the
// slices in a fixed order (no atomics: bit-reproducible). With splits == 1 the GEMM writes dw directly.
// Grid: (ceil(N/64), ceil(c_out/(16*MI)), splits); reduce: 1-D grid-stride over c_out*c_in*k*k.
#include "params.cuh"

#define CW_TN 64
#define CW_TK 16

template <int MI>
__device__ __forceinline__ void conv_wgrad_body(const ConvWgradArgs& a) {
    constexpr int TM = 16 * MI;
    const ConvParams p = a.p;
    const int kk = p.kernel * p.kernel;
    const int hwo = p.h_out * p.w_out;
    const int hwi = p.h_in * p.w_in;
    const int K = p.n * hwo;
    const int NC = p.c_in * kk;
    const int m0 = blockIdx.y * TM;
    const int n0 = blockIdx.x * CW_TN;
    const int kbeg = blockIdx.z * a.k_chunk;
    const int kend = min(K, kbeg + a.k_chunk);
    __shared__ float As[CW_TK][TM + 4];
    __shared__ float Bs[CW_TK][CW_TN + 4];
    const int t = threadIdx.x;
    const int tx = t % 16, ty = t / 16;
    const int l_k = t % CW_TK, l_r = t / CW_TK;  // both loaders: column l_k, rows l_r + 16 r

    float ra[MI], rb[4];
    auto load = [&](int k0) {
        const int k = k0 + l_k;
        const bool k_ok = k < kend;
        int n = 0, oh = 0, ow = 0, r = 0;
        if (k_ok) {
            n = k / hwo;
            r = k - n * hwo;
            oh = r / p.w_out;
            ow = r - oh * p.w_out;
        }
#pragma unroll
        for (int q = 0; q < MI; ++q) {
            const int m = m0 + l_r + 16 * q;
            ra[q] = (k_ok && m < p.c_out) ? __ldg(a.dy + (n * p.c_out + m) * hwo + r) : 0.f;
        }
        const int ih0 = oh * p.stride - p.pad, iw0 = ow * p.stride - p.pad;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int c = n0 + l_r + 16 * q;
            float v = 0.f;
            if (k_ok && c < NC) {
                const int ci = c / kk;
                const int rem = c - ci * kk;
                const int kh = rem / p.kernel;
                const int kw = rem - kh * p.kernel;
                const int ih = ih0 + kh, iw = iw0 + kw;
                if (ih >= 0 && ih < p.h_in && iw >= 0 && iw < p.w_in)
                    v = __ldg(a.x + (n * p.c_in + ci) * hwi + ih * p.w_in + iw);
            }
            rb[q] = v;
        }
    };

    float acc[MI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

    if (kbeg < kend) load(kbeg);
    for (int k0 = kbeg; k0 < kend; k0 += CW_TK) {
#pragma unroll
        for (int q = 0; q < MI; ++q) As[l_k][l_r + 16 * q] = ra[q];
#pragma unroll
        for (int q = 0; q < 4; ++q) Bs[l_k][l_r + 16 * q] = rb[q];
        __syncthreads();
        if (k0 + CW_TK < kend) load(k0 + CW_TK);
#pragma unroll
        for (int q = 0; q < CW_TK; ++q) {
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

    float* out = a.out + blockIdx.z * p.c_out * NC;
#pragma unroll
    for (int i = 0; i < MI; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= p.c_out) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int c = n0 + tx + 16 * j;
            if (c < NC) out[m * NC + c] = acc[i][j];
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) conv2d_weight_grad(const ConvWgradArgs a) { conv_wgrad_body<4>(a); }
extern "C" __global__ void __launch_bounds__(256) conv2d_weight_grad_m128(const ConvWgradArgs a) { conv_wgrad_body<8>(a); }

extern "C" __global__ void __launch_bounds__(256) conv2d_weight_grad_reduce(const WgradReduceArgs a) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < a.count; i += gridDim.x * blockDim.x) {
        float s = 0.f;
        for (int z = 0; z < a.splits; ++z) s += a.ws[z * a.count + i];
        a.dw[i] = s;
    }
}
