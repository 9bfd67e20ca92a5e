// Host emulation of the CUDA execution model for collision.cu (tests only; never shipped to NVRTC).
//
// Include this header first, then collision.cu, and compile as C++17 with g++. Kernels become
// plain functions; ic_emu::launch runs a grid sequentially: block after block (in a chosen order),
// and inside a block every thread as a fiber (ucontext) that runs until its next __syncthreads.
// The scheduler resumes the fibers in thread order (ascending or descending), so
//   * code between two barriers runs for thread 0, 1, ... (or the reverse) in turn: a race
//     between threads of one block shows up as a difference between the two orders;
//   * a barrier reached by only some threads of a block (divergent __syncthreads, undefined on a
//     GPU) is detected and aborts with a message;
//   * dynamic shared memory (IC_SHARED) is one buffer per block, poisoned with NaN bytes before
//     each block so reads of unwritten slots show up;
//   * a warp shuffle (shfl_down) is an exchange through a per-block buffer between two
//     barriers: every thread of the block must call it together, and blocks must be whole warps.
#pragma once
#define IC_EMULATION 1
#include <ucontext.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <functional>

typedef long long ic_i64;

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace ic_emu {

struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    bool done = false;
    long barriers = 0;
};

struct State {
    dim3 grid, block, bidx, tidx;
    ucontext_t sched;
    std::vector<Fiber> fibers;
    int cur = -1;
    std::vector<unsigned char> smem;
    std::vector<unsigned char> xchg;  // shfl_down's exchange buffer
    const std::function<void()>* body = nullptr;
    long total_barriers = 0;
    char error[256] = {0};
};

inline State& st() {
    static State s;
    return s;
}

inline void fail(const char* msg) {
    std::fprintf(stderr, "ic_emu: %s (block %u,%u,%u thread %u)\n", msg, st().bidx.x, st().bidx.y, st().bidx.z,
                 st().tidx.x);
    std::abort();
}

inline void syncthreads() {
    State& s = st();
    Fiber& f = s.fibers[s.cur];
    f.barriers++;
    swapcontext(&f.ctx, &s.sched);
}

inline void fiber_entry() {
    State& s = st();
    (*s.body)();
    s.fibers[s.cur].done = true;
    swapcontext(&s.fibers[s.cur].ctx, &s.sched);
}

// Runs body() as kernel<<<grid, block, smem_bytes>>>; order 0: blocks and threads ascending,
// 1: both descending. Returns the number of barrier phases executed.
inline long launch(dim3 grid, dim3 block, size_t smem_bytes, int order, const std::function<void()>& body) {
    State& s = st();
    if (block.y != 1 || block.z != 1) fail("only 1-D blocks are emulated");
    const unsigned nt = block.x;
    s.grid = grid;
    s.block = block;
    s.body = &body;
    s.total_barriers = 0;
    if (s.fibers.size() < nt) s.fibers.resize(nt);
    const size_t stack_bytes = 256 * 1024;
    for (unsigned t = 0; t < nt; t++)
        if (s.fibers[t].stack.size() < stack_bytes) s.fibers[t].stack.resize(stack_bytes);
    s.smem.assign(smem_bytes + 16, 0xff);
    const unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
    for (unsigned long long bb = 0; bb < nblocks; bb++) {
        const unsigned long long b = order ? nblocks - 1 - bb : bb;
        s.bidx = dim3((unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y),
                      (unsigned)(b / ((unsigned long long)grid.x * grid.y)));
        std::memset(s.smem.data(), 0xff, s.smem.size());
        for (unsigned t = 0; t < nt; t++) {
            Fiber& f = s.fibers[t];
            f.done = false;
            f.barriers = 0;
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack.data();
            f.ctx.uc_stack.ss_size = f.stack.size();
            f.ctx.uc_link = nullptr;
            makecontext(&f.ctx, fiber_entry, 0);
        }
        for (long phase = 0;; phase++) {
            for (unsigned tt = 0; tt < nt; tt++) {
                const unsigned t = order ? nt - 1 - tt : tt;
                s.cur = (int)t;
                s.tidx = dim3(t);
                swapcontext(&s.sched, &s.fibers[t].ctx);
            }
            unsigned n_done = 0;
            for (unsigned t = 0; t < nt; t++) {
                const Fiber& f = s.fibers[t];
                if (f.done)
                    n_done++;
                else if (f.barriers != phase + 1)
                    fail("threads of a block are at different barriers");
            }
            if (n_done == nt) break;
            if (n_done != 0) fail("__syncthreads reached by only some threads of a block");
            s.total_barriers++;
        }
    }
    s.cur = -1;
    return s.total_barriers;
}

// __shfl_down_sync(all lanes, v, delta): lane l gets lane l + delta's v (its own past lane 31).
template <class V>
inline V shfl_down(V v, int delta) {
    State& s = st();
    const unsigned nt = s.block.x, t = s.tidx.x;
    if (nt % 32) fail("warp shuffle in a block that is not whole warps");
    if (s.xchg.size() < nt * sizeof(V)) s.xchg.resize(nt * sizeof(V));
    std::memcpy(&s.xchg[t * sizeof(V)], &v, sizeof(V));
    syncthreads();  // every lane has written
    const unsigned lane = t & 31u, src = lane + (unsigned)delta < 32u ? t + (unsigned)delta : t;
    V out;
    std::memcpy(&out, &s.xchg[src * sizeof(V)], sizeof(V));
    syncthreads();  // every lane has read before the next exchange writes
    return out;
}

inline void* block_smem() {
    // 16-byte aligned, like __align__(16) on the device.
    uintptr_t p = (uintptr_t)st().smem.data();
    return (void*)((p + 15) & ~(uintptr_t)15);
}

}  // namespace ic_emu

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define IC_UNROLL
#define IC_NO_UNROLL
#define blockIdx (ic_emu::st().bidx)
#define threadIdx (ic_emu::st().tidx)
#define blockDim (ic_emu::st().block)
#define gridDim (ic_emu::st().grid)
#define __syncthreads() ic_emu::syncthreads()
#define IC_SHARED(type, name) type* name = reinterpret_cast<type*>(ic_emu::block_smem())
#define IC_CHECK(cond)                                        \
    do {                                                      \
        if (!(cond)) ic_emu::fail("IC_CHECK failed: " #cond); \
    } while (0)
