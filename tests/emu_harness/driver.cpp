// Standalone checks of the kernel emulator itself (tests/emu_harness.rs compiles this with g++,
// with and without AddressSanitizer, and runs one mode per process):
//   real      real kernels (conv fwd/dgrad/onehot/wgrad, batchnorm, pool) on host buffers vs naive loops
//   oob       a kernel reading one element past its input (ASan must report heap-buffer-overflow)
//   dynoob    a kernel writing one float past its dynamic shared memory (ASan must report it)
//   deadlock  lane 0 waits at __syncthreads while its warp waits for it in a shuffle (launch error)
//   shuffles  __shfl*_sync / votes semantics, including width < 32
//   order     a kernel with a data race between barriers: in-order vs seeded order results differ
#include "params.cuh"
#include "conv_fwd.cu"
#include "conv_dgrad.cu"
#include "conv_wgrad.cu"
#include "batchnorm.cu"
#include "pool.cu"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

struct TestArgs {
    const float* x;
    float* y;
    int n, pad_;
};

extern "C" __global__ void oob_read(const TestArgs a) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < a.n) a.y[i] = a.x[i + 1];  // planted: reads x[n]
}

extern "C" __global__ void dyn_oob(const TestArgs a) {
    FMP_DYN_SHARED(float, s);
    s[threadIdx.x + 1] = 1.f;  // planted: the last thread writes one float past the buffer
    __syncthreads();
    a.y[threadIdx.x] = s[threadIdx.x];
}

extern "C" __global__ void divergent_deadlock(const TestArgs a) {
    float v = (float)threadIdx.x;
    if (threadIdx.x == 0) __syncthreads();
    else v = __shfl_sync(0xffffffffu, v, 0);
    a.y[threadIdx.x] = v;
}

extern "C" __global__ void shuffles(const TestArgs a) {
    const int l = threadIdx.x & 31;
    float* o = a.y + threadIdx.x * 9;
    o[0] = (float)__shfl_down_sync(0xffffffffu, l, 1);
    o[1] = (float)__shfl_up_sync(0xffffffffu, l, 3);
    o[2] = (float)__shfl_xor_sync(0xffffffffu, l, 5);
    o[3] = (float)__shfl_sync(0xffffffffu, l, 7);
    o[4] = (float)__shfl_down_sync(0xffffffffu, l, 2, 16);
    o[5] = (float)__shfl_sync(0xffffffffu, l, 3, 8);
    o[6] = (float)(__ballot_sync(0xffffffffu, l % 3 == 0) == 0x49249249u);
    o[7] = (float)__any_sync(0xffffffffu, l == 17 && threadIdx.x < 32);
    o[8] = (float)__all_sync(0xffffffffu, l < 31);
}

extern "C" __global__ void racy(const TestArgs a) {
    __shared__ float s[1024];
    const int t = threadIdx.x;
    s[t] = (float)(t + 1000 * a.n);
    // planted: missing __syncthreads; correct only if thread t-1 happens to run before thread t
    a.y[t] = t > 0 ? s[t - 1] : 0.f;
}

template <class A>
static int run(void (*k)(A), const A& args, unsigned grid, unsigned block, unsigned shared = 0, unsigned long long seed = 0,
               unsigned grid_y = 1, unsigned grid_z = 1) {
    char err[512] = {0};
    unsigned g[3] = {grid, grid_y, grid_z}, b[3] = {block, 1, 1};
    int rc = fmp_emu::launch(&fmp_emu::invoke<A>, reinterpret_cast<void (*)()>(k), &args, g, b, shared, seed, err, sizeof err);
    if (rc) printf("launch error %d: %s\n", rc, err);
    return rc;
}

static unsigned long long rng = 88172645463325252ull;
static float frand() {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 40) & 0xffffff) / 16777216.f * 2.f - 1.f;
}
static std::vector<float> rvec(size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = frand();
    return v;
}
static bool close(const char* what, const float* got, const std::vector<double>& want) {
    for (size_t i = 0; i < want.size(); ++i)
        if (!(fabs(got[i] - want[i]) <= 1e-4 * (1 + fabs(want[i])))) {
            printf("%s: element %zu is %g, want %g\n", what, i, got[i], want[i]);
            return false;
        }
    return true;
}

static int real() {
    // Exact-size heap buffers so ASan sees any overrun of the real kernels.
    ConvParams p{2, 5, 9, 7, 7, 5, 4, 3, 2, 1};
    const int xin = p.n * p.c_in * p.h_in * p.w_in, yout = p.n * p.c_out * p.h_out * p.w_out, wn = p.c_out * p.c_in * 9;
    std::vector<float> x = rvec(xin), w = rvec(wn), dy = rvec(yout);
    float* xb = (float*)malloc(xin * 4); memcpy(xb, x.data(), xin * 4);
    float* wb = (float*)malloc(wn * 4); memcpy(wb, w.data(), wn * 4);
    float* dyb = (float*)malloc(yout * 4); memcpy(dyb, dy.data(), yout * 4);
    float* yb = (float*)malloc(yout * 4);
    float* dxb = (float*)malloc(xin * 4);
    float* dwb = (float*)malloc(wn * 4);
    std::vector<double> y_ref(yout, 0), dx_ref(xin, 0), dw_ref(wn, 0);
    for (int n = 0; n < p.n; ++n) for (int co = 0; co < p.c_out; ++co) for (int oh = 0; oh < p.h_out; ++oh) for (int ow = 0; ow < p.w_out; ++ow)
        for (int ci = 0; ci < p.c_in; ++ci) for (int kh = 0; kh < 3; ++kh) for (int kw = 0; kw < 3; ++kw) {
            const int ih = oh * 2 - 1 + kh, iw = ow * 2 - 1 + kw;
            if (ih < 0 || iw < 0 || ih >= p.h_in || iw >= p.w_in) continue;
            const int xi = ((n * p.c_in + ci) * p.h_in + ih) * p.w_in + iw, wi = ((co * p.c_in + ci) * 3 + kh) * 3 + kw;
            const int yi = ((n * p.c_out + co) * p.h_out + oh) * p.w_out + ow;
            y_ref[yi] += (double)x[xi] * w[wi];
            dx_ref[xi] += (double)dy[yi] * w[wi];
            dw_ref[wi] += (double)dy[yi] * x[xi];
        }
    bool ok = true;
    ConvFwdArgs fa{xb, wb, yb, p};
    ok &= run(conv2d_forward, fa, (p.n * p.h_out * p.w_out + 63) / 64, 256, 0, 0, (p.c_out + 63) / 64) == 0 && close("conv2d_forward", yb, y_ref);
    ConvDgradArgs da{dyb, wb, dxb, p};
    ok &= run(conv2d_input_grad, da, (p.n * p.h_in * p.w_in + 63) / 64, 256, 0, 0, (p.c_in + 63) / 64) == 0 && close("conv2d_input_grad", dxb, dx_ref);
    ConvWgradArgs wa{xb, dyb, dwb, p, 1 << 20, 1};
    ok &= run(conv2d_weight_grad, wa, (p.c_in * 9 + 63) / 64, 256, 0, 0, (p.c_out + 63) / 64) == 0 && close("conv2d_weight_grad", dwb, dw_ref);
    // one-hot input gradient with every item on filter 0 .. n-1 (group 1) vs the full dgrad of a one-hot dy
    float* seed = (float*)malloc(p.n * p.h_out * p.w_out * 4);
    std::vector<float> dy1(yout, 0.f);
    for (int n = 0; n < p.n; ++n) for (int j = 0; j < p.h_out * p.w_out; ++j) {
        seed[n * p.h_out * p.w_out + j] = dy[j + n * p.h_out * p.w_out];
        dy1[(n * p.c_out + n) * p.h_out * p.w_out + j] = seed[n * p.h_out * p.w_out + j];
    }
    std::vector<double> dx1(xin, 0);
    for (int n = 0; n < p.n; ++n) for (int co = 0; co < p.c_out; ++co) for (int oh = 0; oh < p.h_out; ++oh) for (int ow = 0; ow < p.w_out; ++ow)
        for (int ci = 0; ci < p.c_in; ++ci) for (int kh = 0; kh < 3; ++kh) for (int kw = 0; kw < 3; ++kw) {
            const int ih = oh * 2 - 1 + kh, iw = ow * 2 - 1 + kw;
            if (ih < 0 || iw < 0 || ih >= p.h_in || iw >= p.w_in) continue;
            dx1[((n * p.c_in + ci) * p.h_in + ih) * p.w_in + iw] +=
                (double)dy1[((n * p.c_out + co) * p.h_out + oh) * p.w_out + ow] * w[((co * p.c_in + ci) * 3 + kh) * 3 + kw];
        }
    ConvDgradOnehotArgs oa{seed, wb, dxb, p, 0, 1};
    ok &= run(conv2d_input_grad_onehot, oa, (p.h_in * p.w_in + 255) / 256, 256, 16 * 9 * 4, 0, (p.c_in + 15) / 16, p.n) == 0 &&
          close("conv2d_input_grad_onehot", dxb, dx1);
    // batchnorm forward over the conv output (channels = 7), then global average pooling
    float* g = (float*)malloc(p.c_out * 4);
    float* be = (float*)malloc(p.c_out * 4);
    float* st[4];
    for (auto& s : st) { s = (float*)malloc(p.c_out * 4); memset(s, 0, p.c_out * 4); }
    for (int c = 0; c < p.c_out; ++c) { g[c] = 1.f; be[c] = 0.f; }
    float* yn = (float*)malloc(yout * 4);
    BnFwdArgs ba{yb, g, be, st[0], st[1], st[2], st[3], yn, p.n, p.c_out, p.h_out * p.w_out, 1e-5f, 0.1f, 0};
    ok &= run(batchnorm_train_forward, ba, p.c_out, 256) == 0;
    float* pooled = (float*)malloc(p.n * p.c_out * 4);
    PoolArgs pa{yn, pooled, p.n * p.c_out, p.h_out * p.w_out};
    ok &= run(global_avg_pool, pa, (p.n * p.c_out + 7) / 8, 256) == 0;
    std::vector<double> zero_mean(p.c_out, 0.0);
    for (int c = 0; c < p.c_out; ++c) zero_mean[c] = 0.0;
    std::vector<float> chan(p.c_out, 0.f);
    for (int n = 0; n < p.n; ++n) for (int c = 0; c < p.c_out; ++c) chan[c] += pooled[n * p.c_out + c] / p.n;
    ok &= close("batchnorm output has zero channel means", chan.data(), zero_mean);
    printf(ok ? "real kernels ok\n" : "real kernels FAILED\n");
    return ok ? 0 : 1;
}

int main(int argc, char** argv) {
    const char* mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "real")) return real();
    if (!strcmp(mode, "oob")) {
        const int n = 300;
        float* x = (float*)malloc(n * 4);
        float* y = (float*)malloc(n * 4);
        for (int i = 0; i < n; ++i) x[i] = (float)i;
        TestArgs a{x, y, n, 0};
        run(oob_read, a, 2, 256);
        printf("oob kernel finished without a report\n");
        return 0;
    }
    if (!strcmp(mode, "dynoob")) {
        float* y = (float*)malloc(64 * 4);
        TestArgs a{nullptr, y, 64, 0};
        run(dyn_oob, a, 1, 64, 64 * 4);
        printf("dynamic shared overrun finished without a report\n");
        return 0;
    }
    if (!strcmp(mode, "deadlock")) {
        float* y = (float*)malloc(64 * 4);
        TestArgs a{nullptr, y, 64, 0};
        return run(divergent_deadlock, a, 1, 64) == 4 ? 0 : 1;
    }
    if (!strcmp(mode, "shuffles")) {
        std::vector<float> y(64 * 9);
        TestArgs a{nullptr, y.data(), 64, 0};
        if (run(shuffles, a, 1, 64)) return 1;
        for (int t = 0; t < 64; ++t) {
            const int l = t & 31;
            const float want[9] = {(float)(l + 1 < 32 ? l + 1 : l), (float)(l >= 3 ? l - 3 : l), (float)(l ^ 5), 7.f,
                                   (float)((l % 16) + 2 < 16 ? l + 2 : l), (float)((l / 8) * 8 + 3), 1.f, t < 32 ? 1.f : 0.f, 0.f};
            for (int j = 0; j < 9; ++j)
                if (y[t * 9 + j] != want[j]) {
                    printf("shuffle check %d of thread %d: got %g want %g\n", j, t, y[t * 9 + j], want[j]);
                    return 1;
                }
        }
        printf("shuffles ok\n");
        return 0;
    }
    if (!strcmp(mode, "order")) {
        // in index order the race is invisible; a seeded order exposes it
        std::vector<float> y0(128), y1(128);
        TestArgs a0{nullptr, y0.data(), 1, 0}, a1{nullptr, y1.data(), 2, 0};
        if (run(racy, a0, 1, 128, 0, 0) || run(racy, a1, 1, 128, 0, 12345)) return 1;
        int wrong0 = 0, wrong1 = 0;
        for (int t = 1; t < 128; ++t) {
            wrong0 += y0[t] != (float)(t - 1 + 1000 * 1);
            wrong1 += y1[t] != (float)(t - 1 + 1000 * 2);
        }
        printf("racy kernel: %d wrong in index order, %d wrong in seeded order\n", wrong0, wrong1);
        return wrong0 == 0 && wrong1 > 0 ? 0 : 1;
    }
    printf("unknown mode %s\n", mode);
    return 2;
}
