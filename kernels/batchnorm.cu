// Training-mode batchnorm, forward and backward. One block per channel reduces over the
// channel's n*hw elements: each thread walks a fixed strided subset, then a fixed-shape
// warp-shuffle tree combines them (fmp_channel_sum, fmp_block_sum), so results are bit-reproducible
// (no atomics).
// Forward is two-pass (mean, then centred sum of squares) for accuracy, then normalises (unless y
// is null: statistics only, the convolutions reading bn(x) through BnIn, params.cuh);
// thread 0 writes save_mean/save_invstd and updates the running stats (unbiased variance).
// Backward: dgamma = sum dy*xhat, dbeta = sum dy,
//   dx = gamma * invstd / M * (M*dy - dbeta - xhat * dgamma).
// ReLU fused (a.relu): the forward writes relu(bn(x)) and no separate bn(x); the backward takes
// the gradient of relu(bn(x)) and masks it by bn(x) > 0, recomputed from x, gamma, beta and the
// saved statistics with the forward's expression (bn_value, params.cuh), so the mask is the forward's bit for
// bit and no activation is read or written for the ReLU.
// Grid: (C, 1, 1), block 256.
#include "params.cuh"

extern "C" __global__ void __launch_bounds__(256) batchnorm_train_forward(const BnFwdArgs a) {
    __shared__ float red[33];
    const int c = blockIdx.x;
    const int cnt = a.n * a.hw;
    const float mean =
        fmp_channel_sum(a.n, a.c, a.hw, red, [&](float s, int i) { return s + a.x[i]; }) / (float)cnt;
    const float m2 = fmp_channel_sum(a.n, a.c, a.hw, red, [&](float q, int i) {
        const float d = a.x[i] - mean;
        return fmaf(d, d, q);
    });
    const float var = m2 / (float)cnt;
    const float invstd = rsqrtf(var + a.eps);
    const float g = a.gamma[c] * invstd, b = a.beta[c];
    for (int e = threadIdx.x; a.y && e < cnt; e += blockDim.x) {
        const int idx = fmp_channel_at(e, c, a.c, a.hw);
        const float v = bn_value(a.x[idx], mean, g, b);
        a.y[idx] = a.relu ? fmaxf(v, 0.f) : v;
    }
    if (threadIdx.x == 0) {
        const float unbiased = cnt > 1 ? m2 / (float)(cnt - 1) : var;
        a.save_mean[c] = mean;
        a.save_invstd[c] = invstd;
        a.running_mean[c] = (1.f - a.momentum) * a.running_mean[c] + a.momentum * mean;
        a.running_var[c] = (1.f - a.momentum) * a.running_var[c] + a.momentum * unbiased;
    }
}

extern "C" __global__ void __launch_bounds__(256) batchnorm_train_backward(const BnBwdArgs a) {
    __shared__ float red[33];
    const int c = blockIdx.x;
    const int cnt = a.n * a.hw;
    const float mean = a.save_mean[c], invstd = a.save_invstd[c];
    const float g = a.gamma[c] * invstd, b = a.beta[c];
    // dy, masked by the forward's ReLU when it was fused.
    auto grad = [&](int idx) {
        const float d = a.dy[idx];
        return a.relu && !(bn_value(a.x[idx], mean, g, b) > 0.f) ? 0.f : d;
    };
    float sdy = 0.f, sdyx = 0.f;
    for (int e = threadIdx.x; e < cnt; e += blockDim.x) {
        const int idx = fmp_channel_at(e, c, a.c, a.hw);
        const float dy = grad(idx);
        sdy += dy;
        sdyx = fmaf(dy, (a.x[idx] - mean) * invstd, sdyx);
    }
    const float dbeta = fmp_block_sum(sdy, red);
    const float dgamma = fmp_block_sum(sdyx, red);
    const float k = a.gamma[c] * invstd / (float)cnt;
    for (int e = threadIdx.x; e < cnt; e += blockDim.x) {
        const int idx = fmp_channel_at(e, c, a.c, a.hw);
        const float xhat = (a.x[idx] - mean) * invstd;
        a.dx[idx] = k * ((float)cnt * grad(idx) - dbeta - xhat * dgamma);
    }
    if (threadIdx.x == 0) {
        a.dgamma[c] = dgamma;
        a.dbeta[c] = dbeta;
    }
}
