// Update steps: the FRG/PGD sign step with clamp to [0,1] (x0 broadcast over the batch:
// element i reads x0[i % x0_numel]; sign(0) = 0) and PyTorch SGD with momentum and weight decay
// (dampening 0, no Nesterov). Elementwise grid-stride loops, 256 threads.
#include "params.cuh"

extern "C" __global__ void __launch_bounds__(256) sign_step(const SignStepArgs a) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < a.numel; i += gridDim.x * blockDim.x) {
        const float g = a.g[i];
        const float s = g > 0.f ? 1.f : (g < 0.f ? -1.f : 0.f);
        a.y[i] = fminf(fmaxf(a.x0[i % a.x0_numel] + a.eps * s, 0.f), 1.f);
    }
}

extern "C" __global__ void __launch_bounds__(256) sgd_step(const SgdArgs a) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < a.numel; i += gridDim.x * blockDim.x) {
        const float p = a.param[i];
        const float g = a.grad[i] + a.weight_decay * p;
        const float b = a.momentum * a.buf[i] + g;
        a.buf[i] = b;
        a.param[i] = p - a.lr * b;
    }
}
