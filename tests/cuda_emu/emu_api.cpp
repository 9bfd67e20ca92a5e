// ctypes entry point of the host emulation of src/cuda/kernels/collision.cu (tests only).
// Built by tests/cuda_emu/host.py:  g++ -std=c++17 -O1 -shared -fPIC emu_api.cpp -o emu.so
// ic_emu_launch mirrors cuLaunchKernel: a kernel name, grid, block, dynamic shared memory and an
// array of pointers to each argument.
#include "../../src/cuda/kernels/ic_emu.h"
#include "../../src/cuda/kernels/collision.cu"
#include <string>
#include <tuple>
#include <utility>

namespace {
template <class... A, size_t... I>
void call(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<typename std::remove_reference<A>::type*>(args[I])...);
}
template <class... A>
std::function<void()> bind(void (*k)(A...), void** args) {
    return [k, args] { call(k, args, std::index_sequence_for<A...>{}); };
}
}  // namespace

extern "C" long ic_emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, size_t smem,
                              int order, void** args) {
    std::function<void()> body;
    const std::string n(name);
#define IC_EMU_ENTRY(k) \
    if (n == #k) body = bind(k, args);
    IC_FOR_EACH_ENTRY(IC_EMU_ENTRY)
#undef IC_EMU_ENTRY
    if (!body) return -1;
    return ic_emu::launch(dim3(gx, gy, gz), dim3(bx), smem, order, body);
}

// The entry names, space separated (the tests compare them with the PTX's .entry list).
extern "C" const char* ic_emu_entries() {
    static std::string s;
    if (s.empty()) {
#define IC_EMU_NAME(k) s += #k " ";
        IC_FOR_EACH_ENTRY(IC_EMU_NAME)
#undef IC_EMU_NAME
    }
    return s.c_str();
}

// The storage conversions of collision.cu: kind 0 half, 1 bfloat16; dir 0 float -> T, 1 T -> float.
extern "C" void ic_emu_convert(float* f, unsigned short* h, long n, int kind, int dir) {
    for (long i = 0; i < n; i++) {
        if (kind == 0) {
            ic_f16* p = reinterpret_cast<ic_f16*>(h + i);
            if (dir == 0)
                IcTraits<ic_f16>::store(p, f[i]);
            else
                f[i] = IcTraits<ic_f16>::load(p);
        } else {
            ic_bf16* p = reinterpret_cast<ic_bf16*>(h + i);
            if (dir == 0)
                IcTraits<ic_bf16>::store(p, f[i]);
            else
                f[i] = IcTraits<ic_bf16>::load(p);
        }
    }
}
