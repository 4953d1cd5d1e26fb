// Losses and the FRG cotangent seed.
// softmax_cross_entropy: one warp per sample row (max, sum of exp, log-sum-exp via shuffle trees);
//   loss[n] = lse - logit[label], dlogits = (softmax - onehot) / N. A label >= k gives NaN (the
//   host cannot cheaply validate device labels; NaN makes the error visible). Grid ceil(n/8), block 256.
// channel_mse: one block per channel, loss[c] = mean over (n, hw) of (a - b)^2 (deterministic tree).
// frg_seed: seed[k*B + b][0][hw] = scale * (a_x0[b][c][hw] - a_x[b][c][hw]), c = first_channel + k;
//   elementwise over K*B*hw.
#include "params.cuh"

extern "C" __global__ void __launch_bounds__(256) softmax_cross_entropy(const SoftmaxXentArgs a) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= a.n) return;  // whole warps leave together
    const float* l = a.logits + row * a.k;
    float m = __int_as_float(0xff800000);  // -inf
    for (int j = lane; j < a.k; j += 32) m = fmaxf(m, l[j]);
    m = __shfl_sync(FMP_FULL_MASK, fmp_warp_max(m), 0);
    float s = 0.f;
    for (int j = lane; j < a.k; j += 32) s += expf(l[j] - m);
    s = __shfl_sync(FMP_FULL_MASK, fmp_warp_sum(s), 0);
    const unsigned int label = a.labels[row];
    const bool ok = label < (unsigned int)a.k;
    const float inv_n = 1.f / (float)a.n;
    for (int j = lane; j < a.k; j += 32) {
        const float pj = expf(l[j] - m) / s;
        a.dlogits[row * a.k + j] = ok ? (pj - (j == (int)label ? 1.f : 0.f)) * inv_n : __int_as_float(0x7fc00000);
    }
    if (lane == 0) a.loss[row] = ok ? logf(s) + m - l[label] : __int_as_float(0x7fc00000);
}

extern "C" __global__ void __launch_bounds__(256) channel_mse(const ChannelMseArgs a) {
    __shared__ float red[33];
    const float s = fmp_channel_sum(a.n, a.c, a.hw, red, [&](float s, int i) {
        const float d = a.a[i] - a.b[i];
        return fmaf(d, d, s);
    });
    if (threadIdx.x == 0) a.loss[blockIdx.x] = s / (float)(a.n * a.hw);
}

extern "C" __global__ void __launch_bounds__(256) frg_seed(const FrgSeedArgs a) {
    const int per_k = a.b * a.hw;
    const int total = a.kcount * per_k;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int k = i / per_k;
        const int rem = i - k * per_k;
        const int b = rem / a.hw;
        const int j = rem - b * a.hw;
        const int src = (b * a.c + a.first_channel + k) * a.hw + j;
        a.seed[i] = a.scale * (a.a_x0[src] - a.a_x[src]);
    }
}
