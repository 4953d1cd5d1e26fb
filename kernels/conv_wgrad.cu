// conv2d weight gradient as an implicit GEMM with a deterministic split-K.
//   M = c_out, N = c_in * k * k (filter taps), K = n * h_out * w_out (output pixels);
//   A[co][(n,oh,ow)] = dy[n][co][oh][ow], B[(n,oh,ow)][(ci,kh,kw)] = x[n][ci][oh*s-p+kh][ow*s-p+kw]
//   (read through a.bn when set: conv2d_weight_grad_bn).
// On the tile machinery of conv_tile.cuh, with both loaders running along K (ConvB::K: consecutive
// threads read consecutive output pixels, so global reads are coalesced).
// K is huge for early layers and M*N small, so blockIdx.z takes K chunk z ([z*k_chunk, (z+1)*k_chunk))
// and writes its partial product to workspace slice z; conv2d_weight_grad_reduce then sums the
// slices in a fixed order (no atomics: bit-reproducible). With splits == 1 the GEMM writes dw directly.
// Grid: (ceil(N/64), ceil(c_out/(16*MI)), splits); reduce: 1-D grid-stride over c_out*c_in*k*k.
#include "conv_tile.cuh"

template <int MI>
__device__ __forceinline__ void conv_wgrad_body(const ConvWgradArgs& a) {
    const ConvParams p = a.p;
    const int kk = p.kernel * p.kernel;
    const int hwo = p.h_out * p.w_out;
    const int hwi = p.h_in * p.w_in;
    const int K = p.n * hwo;
    const int NC = p.c_in * kk;
    const int m0 = blockIdx.y * (16 * MI);
    const int n0 = blockIdx.x * CONV_TN;
    const int kbeg = blockIdx.z * a.k_chunk;
    const int kend = min(K, kbeg + a.k_chunk);
    const int t = threadIdx.x;
    const int l_k = t % CONV_TK, l_r = t / CONV_TK;  // both loaders: column l_k, rows l_r + 16 r

    auto load = [&](int k0, float (&ra)[MI], float (&rb)[4]) {
        const int k = k0 + l_k;
        const bool k_ok = k < kend;
        int n = 0, oh = 0, ow = 0, r = 0;
        if (k_ok) r = conv_split(k, hwo, p.w_out, n, oh, ow);
        conv_load(ra, m0 + l_r, 16, k_ok, p.c_out, [&](int m) { return __ldg(a.dy + (n * p.c_out + m) * hwo + r); });
        const int ih0 = oh * p.stride - p.pad, iw0 = ow * p.stride - p.pad;
        const float* xn = a.x + n * p.c_in * hwi;
        conv_load(rb, n0 + l_r, 16, k_ok, NC, [&](int c) { return conv_x_tap(xn, p, a.bn, c, kk, ih0, iw0); });
    };
    float acc[MI][4];
    conv_tile_gemm<MI, ConvB::K>(kbeg, kend, load, acc);

    const int tx = t % 16, ty = t / 16;
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
