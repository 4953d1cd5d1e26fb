// Elementwise ops: ReLU and its backward (saved-output batch broadcast i % saved_numel),
// residual add, in-place add / multiply, copy and fill. 1-D grid-stride loops, 256 threads.
#include "params.cuh"

#define FMP_GRID_STRIDE(i, n) for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += gridDim.x * blockDim.x)

extern "C" __global__ void __launch_bounds__(256) relu_forward(const UnaryArgs a) {
    FMP_GRID_STRIDE(i, a.numel) a.y[i] = fmaxf(a.x[i], 0.f);
}

extern "C" __global__ void __launch_bounds__(256) relu_backward(const ReluBwdArgs a) {
    FMP_GRID_STRIDE(i, a.numel) a.dx[i] = a.y_saved[i % a.saved_numel] > 0.f ? a.dy[i] : 0.f;
}

// y = a + b
extern "C" __global__ void __launch_bounds__(256) add_forward(const BinaryArgs a) {
    FMP_GRID_STRIDE(i, a.numel) a.y[i] = a.a[i] + a.b[i];
}

// y += x (x passed as a.x, y as a.y)
extern "C" __global__ void __launch_bounds__(256) add_assign(const UnaryArgs a) {
    FMP_GRID_STRIDE(i, a.numel) a.y[i] += a.x[i];
}

// y *= m (m passed as a.x)
extern "C" __global__ void __launch_bounds__(256) mul_assign(const UnaryArgs a) {
    FMP_GRID_STRIDE(i, a.numel) a.y[i] *= a.x[i];
}

// y = x
extern "C" __global__ void __launch_bounds__(256) copy_f32(const UnaryArgs a) {
    FMP_GRID_STRIDE(i, a.numel) a.y[i] = a.x[i];
}

extern "C" __global__ void __launch_bounds__(256) fill_f32(const FillArgs a) {
    FMP_GRID_STRIDE(i, a.numel) a.y[i] = a.value;
}
