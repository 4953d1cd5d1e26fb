// Global average pooling [N,C,H,W] -> [N,C] and its backward.
// Forward: one warp per (n,c) row; lanes stride the row, a shuffle tree sums (deterministic).
// 256-thread blocks hold 8 rows; grid ceil(rows/8). Backward: elementwise dx[i] = dy[i / hw] / hw.
#include "params.cuh"

extern "C" __global__ void __launch_bounds__(256) global_avg_pool(const PoolArgs a) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= a.rows) return;  // whole warps leave together
    const float* xr = a.x + row * a.hw;
    float s = 0.f;
    for (int j = lane; j < a.hw; j += 32) s += xr[j];
    s = fmp_warp_sum(s);
    if (lane == 0) a.y[row] = s / (float)a.hw;
}

extern "C" __global__ void __launch_bounds__(256) global_avg_pool_backward(const PoolBwdArgs a) {
    const float inv = 1.f / (float)a.hw;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < a.numel; i += gridDim.x * blockDim.x)
        a.dx[i] = a.dy[i / a.hw] * inv;
}
