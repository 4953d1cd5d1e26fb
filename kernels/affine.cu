// Per-channel affine (eval-mode batchnorm, input normalisation), optionally fused with ReLU, and
// its backward. Elementwise over NCHW with channel c = (i / hw) % C; 1-D grid-stride loops.
// The backward's ReLU mask comes from the saved forward output, whose batch may divide dy's
// batch: element i reads y_saved[i % saved_numel].
#include "params.cuh"

extern "C" __global__ void __launch_bounds__(256) channel_affine(const ChannelAffineArgs a) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < a.numel; i += gridDim.x * blockDim.x) {
        const int c = (i / a.hw) % a.c;
        float v = fmaf(a.x[i], __ldg(a.scale + c), __ldg(a.shift + c));
        if (a.relu) v = fmaxf(v, 0.f);
        a.y[i] = v;
    }
}

extern "C" __global__ void __launch_bounds__(256) channel_affine_backward(const ChannelAffineBwdArgs a) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < a.numel; i += gridDim.x * blockDim.x) {
        const int c = (i / a.hw) % a.c;
        float v = a.dy[i] * __ldg(a.scale + c);
        if (a.y_saved != 0 && !(a.y_saved[i % a.saved_numel] > 0.f)) v = 0.f;
        a.dx[i] = v;
    }
}
