// Runtime of the CPU grid emulator (see emu.h for the model): the per-block fiber scheduler,
// barriers, warp exchange and launch validation. Compiled only for `--features emu`.
#define FMP_EMU 1
#include "emu.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define FMP_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FMP_EMU_ASAN 1
#endif
#endif
#ifdef FMP_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// Context switch. x86-64 without ASan: a hand-written switch (callee-saved registers, MXCSR and
// the x87 control word on the stack; ~100x cheaper than swapcontext, which makes two sigprocmask
// system calls). Elsewhere, and under ASan (which understands ucontext plus the fiber
// annotations below): ucontext.
#if defined(__x86_64__) && !defined(FMP_EMU_ASAN) && !defined(FMP_EMU_UCONTEXT)
#define FMP_EMU_FAST_SWITCH 1
extern "C" void fmp_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .globl fmp_emu_switch
    .type fmp_emu_switch, @function
fmp_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size fmp_emu_switch, .-fmp_emu_switch
)");
#endif

namespace fmp_emu {

enum class St { Runnable, BlockBar, WarpBar, Done };

struct Fiber {
#ifdef FMP_EMU_FAST_SWITCH
    void* sp;
#else
    ucontext_t ctx;
#endif
    St state;
    Dim3 tid;
    int lane, warp;
    const char* waiting_at;  // name of the warp collective being waited at
    char* stack;
    size_t stack_size;
    void* fake_stack;
};

struct BlockState {
    Dim3 bidx, bdim, gdim;
    Fiber* fibers;
    int n, cur;
#ifdef FMP_EMU_FAST_SWITCH
    void* sched_sp;
#else
    ucontext_t sched;
#endif
    void* sched_fake;
    const void* sched_bottom;
    size_t sched_size;
    unsigned char* dyn;
    unsigned long long* slots;
    std::string error;
    InvokeFn invoke;
    void (*fn)();
    const void* args;
};

#ifdef FMP_EMU_ASAN
static const size_t kStack = 1 << 20;
#else
static const size_t kStack = 128 << 10;
#endif

// Fiber stacks of this OS thread: mmap'ed with a PROT_NONE guard page at the low end, reused
// across launches, unmapped at thread exit.
struct StackPool {
    std::vector<char*> stacks;
    ~StackPool() {
        for (char* s : stacks) munmap(s - page(), kStack + page());
    }
    static size_t page() { return (size_t)sysconf(_SC_PAGESIZE); }
    char* get(size_t i) {
        while (stacks.size() <= i) {
            void* m = mmap(nullptr, kStack + page(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (m == MAP_FAILED) return nullptr;
            mprotect(m, page(), PROT_NONE);
            stacks.push_back((char*)m + page());
        }
        return stacks[i];
    }
};

static thread_local BlockState* t_cur = nullptr;
static thread_local StackPool t_stacks;

BlockState* current() { return t_cur; }
const Dim3& thread_idx() { return t_cur->fibers[t_cur->cur].tid; }
const Dim3& block_idx() { return t_cur->bidx; }
const Dim3& block_dim() { return t_cur->bdim; }
const Dim3& grid_dim() { return t_cur->gdim; }
int lane_id() { return t_cur->fibers[t_cur->cur].lane; }

void* dyn_shared() { return t_cur->dyn; }

void report_error(const char* msg) {
    BlockState* b = t_cur;
    if (!b->error.empty()) return;
    const Fiber& f = b->fibers[b->cur];
    char where[160];
    snprintf(where, sizeof where, " (block %u,%u,%u thread %u,%u,%u)", b->bidx.x, b->bidx.y, b->bidx.z, f.tid.x, f.tid.y, f.tid.z);
    b->error = std::string(msg) + where;
}

// Fiber -> scheduler.
static void yield_to_scheduler(bool dying) {
    BlockState* b = t_cur;
    Fiber& f = b->fibers[b->cur];
#ifdef FMP_EMU_ASAN
    __sanitizer_start_switch_fiber(dying ? nullptr : &f.fake_stack, b->sched_bottom, b->sched_size);
#else
    (void)dying;
#endif
#ifdef FMP_EMU_FAST_SWITCH
    fmp_emu_switch(&f.sp, b->sched_sp);
#else
    swapcontext(&f.ctx, &b->sched);
#endif
#ifdef FMP_EMU_ASAN
    __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
}

static void fiber_main() {
    BlockState* b = t_cur;
#ifdef FMP_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &b->sched_bottom, &b->sched_size);
#endif
    b->invoke(b->fn, b->args);
    b = t_cur;
    b->fibers[b->cur].state = St::Done;
    yield_to_scheduler(true);
    abort();  // a finished fiber is never resumed
}

void syncthreads() {
    t_cur->fibers[t_cur->cur].state = St::BlockBar;
    yield_to_scheduler(false);
}

static void wait_warp(const char* what) {
    Fiber& f = t_cur->fibers[t_cur->cur];
    f.state = St::WarpBar;
    f.waiting_at = what;
    yield_to_scheduler(false);
}

static bool check_mask(unsigned int mask, const char* what) {
    if (mask == 0xffffffffu) return true;
    std::string m = std::string(what) + ": only the full-warp mask 0xffffffff is emulated";
    report_error(m.c_str());
    return false;
}

unsigned long long warp_exchange(unsigned int mask, unsigned long long bits, int src, const char* what) {
    check_mask(mask, what);
    BlockState* b = t_cur;
    const int me = b->cur;
    const int base = b->fibers[me].warp * 32;
    b->slots[me] = bits;
    wait_warp(what);
    unsigned long long r = bits;
    if (src >= 0) {
        const int s = base + src;
        if (src >= 32 || s >= b->n || b->fibers[s].state == St::Done) {
            std::string m = std::string(what) + ": reads lane " + std::to_string(src) + ", which does not exist or has exited";
            report_error(m.c_str());
        } else {
            r = b->slots[s];
        }
    }
    wait_warp(what);
    return r;
}

unsigned int warp_ballot(unsigned int mask, int pred, const char* what) {
    check_mask(mask, what);
    BlockState* b = t_cur;
    const int me = b->cur;
    const int base = b->fibers[me].warp * 32;
    b->slots[me] = pred ? 1 : 0;
    wait_warp(what);
    unsigned int r = 0;
    for (int l = 0; l < 32 && base + l < b->n; ++l)
        if (b->fibers[base + l].state != St::Done && b->slots[base + l]) r |= 1u << l;
    wait_warp(what);
    return r;
}

// Release the lanes of warp w when every live lane waits at a warp collective.
static void check_warp(BlockState* b, int w) {
    const int lo = w * 32, hi = lo + 32 < b->n ? lo + 32 : b->n;
    const char* what = nullptr;
    int waiting = 0;
    for (int i = lo; i < hi; ++i) {
        const Fiber& f = b->fibers[i];
        if (f.state == St::Done) continue;
        if (f.state != St::WarpBar) return;
        if (what && what != f.waiting_at && b->error.empty())
            b->error = std::string("warp ") + std::to_string(w) + ": lanes meet at different collectives (" + what + " vs " + f.waiting_at + ")";
        what = f.waiting_at;
        ++waiting;
    }
    if (!waiting) return;
    for (int i = lo; i < hi; ++i)
        if (b->fibers[i].state == St::WarpBar) b->fibers[i].state = St::Runnable;
}

static inline unsigned long long next_rand(unsigned long long& s) {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ull;
}

static void switch_to(BlockState* b, int i) {
    b->cur = i;
    Fiber& f = b->fibers[i];
#ifdef FMP_EMU_ASAN
    __sanitizer_start_switch_fiber(&b->sched_fake, f.stack, f.stack_size);
#endif
#ifdef FMP_EMU_FAST_SWITCH
    fmp_emu_switch(&b->sched_sp, f.sp);
#else
    swapcontext(&b->sched, &f.ctx);
#endif
#ifdef FMP_EMU_ASAN
    __sanitizer_finish_switch_fiber(b->sched_fake, nullptr, nullptr);
#endif
}

static bool run_block(BlockState* b, unsigned long long seed, std::vector<int>& order) {
    const int n = b->n;
    for (int i = 0; i < n; ++i) {
        Fiber& f = b->fibers[i];
        f.state = St::Runnable;
        f.tid = Dim3{(unsigned)(i % b->bdim.x), (unsigned)((i / b->bdim.x) % b->bdim.y), (unsigned)(i / (b->bdim.x * b->bdim.y))};
        f.lane = i % 32;
        f.warp = i / 32;
        f.waiting_at = nullptr;
        f.fake_stack = nullptr;
#ifdef FMP_EMU_ASAN
        // A fiber abandoned by an earlier failed launch may have left poisoned frames here.
        __asan_unpoison_memory_region(f.stack, f.stack_size);
#endif
#ifdef FMP_EMU_FAST_SWITCH
        // Initial frame popped by the first switch: FP control words, six callee-saved registers,
        // then `ret` into fiber_main with the stack aligned as after a call.
        uintptr_t top = ((uintptr_t)f.stack + f.stack_size) & ~(uintptr_t)15;
        uint64_t* sp = (uint64_t*)top;
        *--sp = 0;                         // fake return address of fiber_main (never returns)
        *--sp = (uint64_t)(uintptr_t)&fiber_main;
        for (int r = 0; r < 6; ++r) *--sp = 0;  // rbp rbx r12 r13 r14 r15
        uint32_t ctl[2];
        __asm__ volatile("stmxcsr %0" : "=m"(ctl[0]));
        __asm__ volatile("fnstcw %0" : "=m"(ctl[1]));
        --sp;
        memcpy(sp, ctl, 8);
        f.sp = sp;
#else
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = f.stack_size;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main, 0);
#endif
    }
    unsigned long long rng = seed ^ (0x9E3779B97F4A7C15ull * (1 + b->bidx.x + 65536ull * (b->bidx.y + 65536ull * b->bidx.z)));
    if (!rng) rng = 1;
    int live = n;
    order.resize(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    while (live > 0) {
        if (seed) {
            for (int i = n - 1; i > 0; --i) {
                const int j = (int)(next_rand(rng) % (unsigned long long)(i + 1));
                const int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
        }
        bool ran = false;
        for (int k = 0; k < n; ++k) {
            const int i = order[k];
            if (b->fibers[i].state != St::Runnable) continue;
            ran = true;
            switch_to(b, i);
            if (!b->error.empty()) return false;
            const St s = b->fibers[i].state;
            if (s == St::Done) --live;
            if (s == St::Done || s == St::WarpBar) check_warp(b, b->fibers[i].warp);
            if (!b->error.empty()) return false;
        }
        if (ran || live == 0) continue;
        int at_bar = 0, at_warp = 0;
        for (int i = 0; i < n; ++i) {
            at_bar += b->fibers[i].state == St::BlockBar;
            at_warp += b->fibers[i].state == St::WarpBar;
        }
        if (at_bar == live) {
            for (int i = 0; i < n; ++i)
                if (b->fibers[i].state == St::BlockBar) b->fibers[i].state = St::Runnable;
            continue;
        }
        char m[200];
        snprintf(m, sizeof m, "deadlock in block %u,%u,%u: %d live threads, %d wait at __syncthreads, %d at a warp collective",
                 b->bidx.x, b->bidx.y, b->bidx.z, live, at_bar, at_warp);
        b->error = m;
        return false;
    }
    return true;
}

static int fail(char* err, unsigned long long err_len, int code, const std::string& msg) {
    if (err && err_len) {
        snprintf(err, (size_t)err_len, "%s", msg.c_str());
    }
    return code;
}

int launch(InvokeFn invoke, void (*fn)(), const void* args, const unsigned int grid[3], const unsigned int block[3],
           unsigned int shared_bytes, unsigned long long order_seed, char* err, unsigned long long err_len) {
    if (t_cur) return fail(err, err_len, 3, "launch from inside an emulated kernel");
    const unsigned long long nthreads = (unsigned long long)block[0] * block[1] * block[2];
    if (block[0] < 1 || block[1] < 1 || block[2] < 1 || block[0] > 1024 || block[1] > 1024 || block[2] > 64 || nthreads > 1024)
        return fail(err, err_len, 3, "invalid block " + std::to_string(block[0]) + "x" + std::to_string(block[1]) + "x" + std::to_string(block[2]));
    if (grid[0] < 1 || grid[1] < 1 || grid[2] < 1 || grid[0] > 0x7fffffffu || grid[1] > 65535 || grid[2] > 65535)
        return fail(err, err_len, 3, "invalid grid " + std::to_string(grid[0]) + "x" + std::to_string(grid[1]) + "x" + std::to_string(grid[2]));
    if (shared_bytes > 48 * 1024) return fail(err, err_len, 3, "dynamic shared memory " + std::to_string(shared_bytes) + " bytes exceeds 48 KiB");

    static thread_local std::vector<Fiber> fibers;
    static thread_local std::vector<unsigned long long> slots;
    static thread_local std::vector<int> order;
    fibers.resize(nthreads);
    slots.assign(nthreads, 0);
    for (size_t i = 0; i < nthreads; ++i) {
        fibers[i].stack = t_stacks.get(i);
        fibers[i].stack_size = kStack;
        if (!fibers[i].stack) return fail(err, err_len, 4, "cannot map fiber stacks");
    }
    BlockState b;
    b.bdim = Dim3{block[0], block[1], block[2]};
    b.gdim = Dim3{grid[0], grid[1], grid[2]};
    b.fibers = fibers.data();
    b.n = (int)nthreads;
    b.cur = 0;
    b.sched_fake = nullptr;
    b.sched_bottom = nullptr;
    b.sched_size = 0;
    b.dyn = shared_bytes ? (unsigned char*)malloc(shared_bytes) : nullptr;
    b.slots = slots.data();
    b.invoke = invoke;
    b.fn = fn;
    b.args = args;
    t_cur = &b;
    bool ok = true;
    for (unsigned int z = 0; ok && z < grid[2]; ++z)
        for (unsigned int y = 0; ok && y < grid[1]; ++y)
            for (unsigned int x = 0; ok && x < grid[0]; ++x) {
                b.bidx = Dim3{x, y, z};
                if (b.dyn) memset(b.dyn, 0xff, shared_bytes);  // NaN pattern
                ok = run_block(&b, order_seed, order);
            }
    t_cur = nullptr;
    free(b.dyn);
    if (!ok) return fail(err, err_len, 4, b.error);
    return 0;
}

}  // namespace fmp_emu
