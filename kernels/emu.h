// CPU grid emulator: makes the kernels' CUDA dialect compile with the host C++ compiler
// (included by params.cuh when FMP_EMU is defined; never seen by NVRTC).
//
// Model: a launch runs its blocks one after another on the calling OS thread. The threads of a
// block are cooperative fibers (ucontext, each with its own guarded stack) driven by a scheduler:
// a fiber runs until it reaches __syncthreads (released when every live thread of the block has
// arrived), a warp collective (released when every live lane of its warp has arrived: shuffles
// and votes exchange values through per-warp slots between two such barriers), or returns.
// No progress possible = deadlock, reported as a launch error (e.g. __syncthreads in divergent
// code). Optionally the order in which runnable fibers are resumed is shuffled per round with a
// seed, so kernels that rely on an execution order the GPU does not promise give wrong results.
//
// `__shared__` variables are block-scope `thread_local` (one instance per OS thread, shared by
// the fibers of the block; blocks run sequentially). Dynamic shared memory is a malloc'd buffer
// of exactly the launch's size, filled with NaN bytes per block (reads of unwritten shared data
// show up; under AddressSanitizer overruns are reported); declare it with FMP_DYN_SHARED.
// Anything of CUDA not provided here and listed below fails to compile with a message naming it;
// anything else unknown fails as an undeclared identifier.
#pragma once
#ifndef FMP_EMU
#error "kernels/emu.h is only for the host-C++ emulation build (define FMP_EMU)"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

namespace fmp_emu {

struct Dim3 {
    unsigned int x, y, z;
};

// Per-OS-thread state of the block being emulated (defined in the dispatch translation unit).
struct BlockState;
BlockState* current();
const Dim3& thread_idx();
const Dim3& block_idx();
const Dim3& block_dim();
const Dim3& grid_dim();
void* dyn_shared();
void syncthreads();
// Warp exchange: every live lane of the calling warp deposits `bits` and gets the value of lane
// `src` (its own value when src < 0 or src is not a live lane of the warp).
unsigned long long warp_exchange(unsigned int mask, unsigned long long bits, int src, const char* what);
// Warp vote: OR of (pred != 0) << lane over the live lanes.
unsigned int warp_ballot(unsigned int mask, int pred, const char* what);
int lane_id();
void report_error(const char* msg);

// Launch entry used by the generated dispatch table: runs `fn` (an extern "C" kernel taking one
// args struct by value) over the grid. Returns 0, or 3 (bad launch configuration) / 4 (emulation
// error: deadlock, warp misuse) with a message in err.
using InvokeFn = void (*)(void (*fn)(), const void* args);
int launch(InvokeFn invoke, void (*fn)(), const void* args, const unsigned int grid[3], const unsigned int block[3],
           unsigned int shared_bytes, unsigned long long order_seed, char* err, unsigned long long err_len);
template <class A>
void invoke(void (*fn)(), const void* args) {
    A a;
    memcpy(&a, args, sizeof(A));
    reinterpret_cast<void (*)(A)>(fn)(a);
}

template <class... A>
struct dependent_false {
    static constexpr bool value = false;
};

template <class T>
inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8, "emu.h: warp shuffles of types wider than 8 bytes are not supported");
    unsigned long long b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
inline T from_bits(unsigned long long b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

}  // namespace fmp_emu

// ---- qualifiers -------------------------------------------------------------------------------
#define __global__
#define __device__ static
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ thread_local
#define __constant__ static

// ---- built-in variables -------------------------------------------------------------------------
#define threadIdx (::fmp_emu::thread_idx())
#define blockIdx (::fmp_emu::block_idx())
#define blockDim (::fmp_emu::block_dim())
#define gridDim (::fmp_emu::grid_dim())
#define warpSize 32

// ---- synchronisation ------------------------------------------------------------------------------
inline void __syncthreads() { ::fmp_emu::syncthreads(); }
inline void __syncwarp(unsigned int mask = 0xffffffffu) { (void)::fmp_emu::warp_ballot(mask, 1, "__syncwarp"); }
// Fibers of a block share one OS thread: memory is always coherent between them.
inline void __threadfence() {}
inline void __threadfence_block() {}

// ---- warp shuffles and votes --------------------------------------------------------------------
template <class T>
inline T __shfl_sync(unsigned int mask, T v, int src, int width = 32) {
    const int lane = ::fmp_emu::lane_id();
    const int s = (lane / width) * width + (src % width);
    return ::fmp_emu::from_bits<T>(::fmp_emu::warp_exchange(mask, ::fmp_emu::to_bits(v), s, "__shfl_sync"));
}
template <class T>
inline T __shfl_down_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
    const int lane = ::fmp_emu::lane_id();
    const int s = (lane % width) + (int)delta < width ? lane + (int)delta : -1;
    return ::fmp_emu::from_bits<T>(::fmp_emu::warp_exchange(mask, ::fmp_emu::to_bits(v), s, "__shfl_down_sync"));
}
template <class T>
inline T __shfl_up_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
    const int lane = ::fmp_emu::lane_id();
    const int s = (lane % width) >= (int)delta ? lane - (int)delta : -1;
    return ::fmp_emu::from_bits<T>(::fmp_emu::warp_exchange(mask, ::fmp_emu::to_bits(v), s, "__shfl_up_sync"));
}
template <class T>
inline T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = 32) {
    const int lane = ::fmp_emu::lane_id();
    const int t = lane ^ lane_mask;
    const int s = (t / width) == (lane / width) ? t : -1;
    return ::fmp_emu::from_bits<T>(::fmp_emu::warp_exchange(mask, ::fmp_emu::to_bits(v), s, "__shfl_xor_sync"));
}
inline unsigned int __ballot_sync(unsigned int mask, int pred) { return ::fmp_emu::warp_ballot(mask, pred, "__ballot_sync"); }
inline int __any_sync(unsigned int mask, int pred) { return ::fmp_emu::warp_ballot(mask, pred, "__any_sync") != 0; }
inline int __all_sync(unsigned int mask, int pred) {
    return ::fmp_emu::warp_ballot(mask, !pred, "__all_sync") == 0;
}

// ---- atomics (fibers never preempt each other, so a plain read-modify-write is atomic) ---------
// FMP_EMU_ATOMIC(name, new): `name(p, v)` stores `new` (of `old` = *p and v) and returns old.
#define FMP_EMU_ATOMIC(name, new_value) \
    template <class T>                  \
    inline T name(T* p, T v) {          \
        T old = *p;                     \
        *p = new_value;                 \
        return old;                     \
    }
FMP_EMU_ATOMIC(atomicAdd, old + v)
FMP_EMU_ATOMIC(atomicSub, old - v)
FMP_EMU_ATOMIC(atomicMax, old > v ? old : v)
FMP_EMU_ATOMIC(atomicMin, old < v ? old : v)
FMP_EMU_ATOMIC(atomicExch, v)
#undef FMP_EMU_ATOMIC
template <class T>
inline T atomicCAS(T* p, T cmp, T v) {
    T old = *p;
    if (old == cmp) *p = v;
    return old;
}

// ---- loads and intrinsics ---------------------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) {
    return *p;
}
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __int_as_float(int i) { return ::fmp_emu::from_bits<float>((unsigned int)i); }
inline float __uint_as_float(unsigned int i) { return ::fmp_emu::from_bits<float>(i); }
inline int __float_as_int(float f) { return (int)(unsigned int)::fmp_emu::to_bits(f); }
inline unsigned int __float_as_uint(float f) { return (unsigned int)::fmp_emu::to_bits(f); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

// ---- what the emulator lacks: using any of these fails to compile, naming it ---------------------
#define FMP_EMU_LACKS(name)                                                                   \
    template <class... A>                                                                     \
    inline int name(A...) {                                                                   \
        static_assert(::fmp_emu::dependent_false<A...>::value,                                \
                      "kernels/emu.h lacks " #name ": implement it there before using it in a kernel"); \
        return 0;                                                                             \
    }
FMP_EMU_LACKS(__activemask)
FMP_EMU_LACKS(__match_any_sync)
FMP_EMU_LACKS(__match_all_sync)
FMP_EMU_LACKS(__reduce_add_sync)
FMP_EMU_LACKS(__reduce_min_sync)
FMP_EMU_LACKS(__reduce_max_sync)
FMP_EMU_LACKS(__syncthreads_count)
FMP_EMU_LACKS(__syncthreads_and)
FMP_EMU_LACKS(__syncthreads_or)
FMP_EMU_LACKS(__shfl)
FMP_EMU_LACKS(__shfl_down)
FMP_EMU_LACKS(__shfl_up)
FMP_EMU_LACKS(__shfl_xor)
FMP_EMU_LACKS(__ballot)
FMP_EMU_LACKS(__any)
FMP_EMU_LACKS(__all)
FMP_EMU_LACKS(clock)
FMP_EMU_LACKS(clock64)
FMP_EMU_LACKS(__nanosleep)
FMP_EMU_LACKS(atomicAdd_block)
FMP_EMU_LACKS(atomicAdd_system)
FMP_EMU_LACKS(__ldcg)
FMP_EMU_LACKS(__ldcs)
FMP_EMU_LACKS(__stcg)
FMP_EMU_LACKS(__stcs)
FMP_EMU_LACKS(make_float2)
FMP_EMU_LACKS(make_float4)
FMP_EMU_LACKS(__float2half)
FMP_EMU_LACKS(__half2float)
FMP_EMU_LACKS(__float2bfloat16)
FMP_EMU_LACKS(__bfloat162float)
FMP_EMU_LACKS(tex1Dfetch)
FMP_EMU_LACKS(__cvta_generic_to_shared)
#undef FMP_EMU_LACKS

#define FMP_EMU_LACKS_TYPE(name)                                                                \
    template <int N>                                                                            \
    struct fmp_emu_lacks_##name {                                                               \
        static_assert(N != N, "kernels/emu.h lacks the type " #name ": add it there before using it in a kernel"); \
    };                                                                                          \
    using name = fmp_emu_lacks_##name<0>;
FMP_EMU_LACKS_TYPE(__half)
FMP_EMU_LACKS_TYPE(__half2)
FMP_EMU_LACKS_TYPE(__nv_bfloat16)
FMP_EMU_LACKS_TYPE(float2)
FMP_EMU_LACKS_TYPE(float4)
FMP_EMU_LACKS_TYPE(int4)
#undef FMP_EMU_LACKS_TYPE
