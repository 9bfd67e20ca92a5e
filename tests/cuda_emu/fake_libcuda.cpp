// A stand-in libcuda.so for tests: the driver entry points src/cuda/fused/launch.rs uses, with
// cuLaunchKernel running the kernel under the host emulation (ic_emu.h). Together with
// IC_NETWORKS_CUDA_EMULATION=1 (CPU tensors treated as device 0) it runs the Rust launch code,
// parameter packing and the layer composition end to end on a machine without a GPU.
// Built by tests/test_cuda_kernels.py:  g++ -std=c++17 -O1 -shared -fPIC fake_libcuda.cpp -o libcuda.so
#include "emu_api.cpp"

extern "C" {
typedef int CUresult;
static int launches = 0;
static void* current_ctx = nullptr;
static char primary_ctx_storage;

CUresult cuInit(unsigned) { return 0; }
CUresult cuDriverGetVersion(int* v) { *v = 13000; return 0; }
CUresult cuDeviceGetCount(int* n) { *n = 1; return 0; }
CUresult cuDeviceGet(int* d, int ordinal) { if (ordinal != 0) return 101; *d = 0; return 0; }
CUresult cuDeviceGetAttribute(int* v, int attrib, int) {
    if (attrib == 75) *v = 9;        // COMPUTE_CAPABILITY_MAJOR
    else if (attrib == 76) *v = 0;   // MINOR
    else *v = 0;
    return 0;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, int) { *ctx = &primary_ctx_storage; return 0; }
CUresult cuCtxGetCurrent(void** ctx) { *ctx = current_ctx; return 0; }
static void* ctx_stack[16];
static int ctx_depth = 0;
CUresult cuCtxPushCurrent_v2(void* ctx) { ctx_stack[ctx_depth++] = current_ctx; current_ctx = ctx; return 0; }
CUresult cuCtxPopCurrent_v2(void** ctx) {
    if (ctx_depth == 0) return 201;
    if (ctx) *ctx = current_ctx;
    current_ctx = ctx_stack[--ctx_depth];
    return 0;
}
CUresult cuModuleLoadData(void** m, const void* image) {
    const unsigned char* p = static_cast<const unsigned char*>(image);
    if (!(p[0] == 0x7f && p[1] == 'E' && p[2] == 'L' && p[3] == 'F')) return 200;  // expects a CUBIN
    *m = (void*)0x1;
    return 0;
}
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    static std::vector<std::string>* names = new std::vector<std::string>();
    const std::string all = ic_emu_entries();
    if (all.find(std::string(name) + " ") == std::string::npos) return 500;
    names->push_back(name);
    *f = (void*)strdup(name);
    return 0;
}
CUresult cuFuncSetAttribute(void*, int, int) { return 0; }
CUresult cuStreamIsCapturing(void*, int* status) { *status = 0; return 0; }
CUresult cuGetErrorString(CUresult, const char** s) { *s = "fake driver error"; return 0; }
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, void*, void** params, void**) {
    if (by != 1 || bz != 1 || current_ctx != &primary_ctx_storage) return 1;
    launches++;
    return ic_emu_launch(static_cast<const char*>(f), gx, gy, gz, bx, smem, 0, params) < 0 ? 500 : 0;
}
int fake_libcuda_launches() { return launches; }
}
