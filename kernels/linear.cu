// Fully connected head (small: 512 -> 10..100 classes).
// linear_forward: one warp per (n, o) output, lanes stride the input features, shuffle-tree sum.
//   Grid ceil(n*out_f / 8), block 256.
// linear_backward_input: dx[n][i] = sum_o dy[n][o] w[o][i]; one thread per (n, i), loop over o.
// linear_backward_params: dw[o][i] = sum_n dy[n][o] x[n][i]; one thread per (o, i), loop over n;
//   the out_f threads after the dw range write db[o] = sum_n dy[n][o]. Fixed loop order: deterministic.
#include "params.cuh"

extern "C" __global__ void __launch_bounds__(256) linear_forward(const LinearArgs a) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= a.n * a.out_f) return;  // whole warps leave together
    const int n = row / a.out_f, o = row - n * a.out_f;
    const float* x = a.a + n * a.in_f;
    const float* w = a.b + o * a.in_f;
    float s = 0.f;
    for (int i = lane; i < a.in_f; i += 32) s = fmaf(x[i], __ldg(w + i), s);
    s = fmp_warp_sum(s);
    if (lane == 0) a.out[row] = s + a.c[o];
}

extern "C" __global__ void __launch_bounds__(256) linear_backward_input(const LinearArgs a) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= a.n * a.in_f) return;
    const int n = idx / a.in_f, i = idx - n * a.in_f;
    const float* dy = a.a + n * a.out_f;
    float s = 0.f;
    for (int o = 0; o < a.out_f; ++o) s = fmaf(dy[o], __ldg(a.b + o * a.in_f + i), s);
    a.out[idx] = s;
}

extern "C" __global__ void __launch_bounds__(256) linear_backward_params(const LinearArgs a) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    const int nw = a.out_f * a.in_f;
    if (idx < nw) {
        const int o = idx / a.in_f, i = idx - o * a.in_f;
        float s = 0.f;
        for (int n = 0; n < a.n; ++n) s = fmaf(a.b[n * a.out_f + o], a.a[n * a.in_f + i], s);
        a.out[idx] = s;
    } else if (idx < nw + a.out_f) {
        const int o = idx - nw;
        float s = 0.f;
        for (int n = 0; n < a.n; ++n) s += a.b[n * a.out_f + o];
        a.out2[o] = s;
    }
}
