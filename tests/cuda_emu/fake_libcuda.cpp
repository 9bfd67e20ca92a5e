// A stand-in libcuda.so for tests: the driver entry points src/cuda/fused/dl.rs loads, with
// cuLaunchKernel running the kernel under the host emulation (ic_emu.h). Together with
// IC_NETWORKS_CUDA_EMULATION=1 (CPU tensors treated as device 0) and IC_NETWORKS_LIBCUDA naming
// this file, it runs the Rust launch code, parameter packing and the layer composition end to end
// on a machine without a GPU.
// Built by tests/test_cuda_launch_path.py:  g++ -std=c++17 -O1 -shared -fPIC fake_libcuda.cpp -o libcuda.so
// With -DIC_FAKE_STUB it is a toolkit-style stub instead: cuInit fails with
// CUDA_ERROR_STUB_LIBRARY (34), as the real stub does.
//
// Test controls (ctypes): fake_libcuda_set(capturing, fault_at_launch, reject_cubin) makes
// cuStreamIsCapturing report an active capture, makes the stream report an illegal address
// (700) from the given launch on (1-based; 0: never), and rejects every CUBIN (209, as a driver
// too old for it would); fake_libcuda_launches / _syncs / _module_loads count calls;
// fake_libcuda_last_alpha reports how the last ic_fwd_box / ic_bwd_box launch got alpha.
#include "emu_api.cpp"

extern "C" {
typedef int CUresult;
static int launches = 0, syncs = 0, module_loads = 0, last_image = 0;
static int capturing = 0, fault_at = 0, reject_cubin = 0, sticky = 0;
static double last_alpha = 0.0;
static int last_alpha_ptr = -1;
static void* current_ctx = nullptr;
static char primary_ctx_storage;

#ifdef IC_FAKE_STUB
CUresult cuInit(unsigned) { return 34; }
#else
CUresult cuInit(unsigned) { return 0; }
#endif
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return 0;
}
CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return 0;
}
CUresult cuDeviceGet(int* d, int ordinal) {
    if (ordinal != 0) return 101;
    *d = 0;
    return 0;
}
CUresult cuDeviceGetAttribute(int* v, int attrib, int) {
    if (attrib == 75)
        *v = 9;  // COMPUTE_CAPABILITY_MAJOR
    else if (attrib == 76)
        *v = 0;  // MINOR
    else
        *v = 0;
    return 0;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, int) {
    *ctx = &primary_ctx_storage;
    return 0;
}
CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = current_ctx;
    return 0;
}
static void* ctx_stack[16];
static int ctx_depth = 0;
CUresult cuCtxPushCurrent_v2(void* ctx) {
    ctx_stack[ctx_depth++] = current_ctx;
    current_ctx = ctx;
    return 0;
}
CUresult cuCtxPopCurrent_v2(void** ctx) {
    if (ctx_depth == 0) return 201;
    if (ctx) *ctx = current_ctx;
    current_ctx = ctx_stack[--ctx_depth];
    return 0;
}
// A CUBIN: an ELF64 image for EM_CUDA (190), as NVRTC writes it; PTX: text with a .version line.
CUresult cuModuleLoadData(void** m, const void* image) {
    const unsigned char* p = static_cast<const unsigned char*>(image);
    module_loads++;
    if (p[0] == 0x7f && p[1] == 'E' && p[2] == 'L' && p[3] == 'F') {
        unsigned short machine;
        memcpy(&machine, p + 18, 2);
        if (p[4] != 2 || machine != 190) return 200;  // CUDA_ERROR_INVALID_IMAGE
        if (reject_cubin) return 209;                 // CUDA_ERROR_NO_BINARY_FOR_GPU
        last_image = 1;
    } else if (strstr(reinterpret_cast<const char*>(p), ".version") != nullptr) {
        last_image = 2;
    } else {
        return 200;
    }
    *m = (void*)0x1;
    return 0;
}
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    const std::string all = ic_emu_entries();
    if (all.find(std::string(name) + " ") == std::string::npos) return 500;
    *f = (void*)strdup(name);
    return 0;
}
CUresult cuFuncSetAttribute(void*, int, int) { return 0; }
CUresult cuStreamIsCapturing(void*, int* status) {
    *status = capturing ? 1 : 0;
    return 0;
}
CUresult cuStreamSynchronize(void*) {
    syncs++;
    if (capturing) return 901;  // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: never sync a capturing stream
    return sticky;
}
CUresult cuGetErrorString(CUresult r, const char** s) {
    switch (r) {
        case 34:
            *s = "CUDA driver is a stub library";
            break;
        case 200:
            *s = "device kernel image is invalid";
            break;
        case 209:
            *s = "no kernel image is available for execution on the device";
            break;
        case 700:
            *s = "an illegal memory access was encountered";
            break;
        default:
            *s = "fake driver error";
    }
    return 0;
}
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, void*, void** params, void**) {
    if (by != 1 || bz != 1 || current_ctx != &primary_ctx_storage) return 1;
    if (sticky) return sticky;
    launches++;
    const std::string name(static_cast<const char*>(f));
    const bool f64 = name.size() > 4 && name.compare(name.size() - 4, 4, "_f64") == 0;
    int ia = -1;  // the index of the by-value alpha (the pointer follows it)
    if (name.rfind("ic_fwd_box_", 0) == 0)
        ia = 5;
    else if (name.rfind("ic_bwd_box_", 0) == 0)
        ia = 4;
    if (ia >= 0) {
        last_alpha = f64 ? *static_cast<double*>(params[ia]) : *static_cast<float*>(params[ia]);
        last_alpha_ptr = *static_cast<void**>(params[ia + 1]) != nullptr;
    }
    const long r = ic_emu_launch(name.c_str(), gx, gy, gz, bx, smem, 0, params);
    if (fault_at && launches >= fault_at) sticky = 700;
    return r < 0 ? 500 : 0;
}
void fake_libcuda_set(int capture, int fault_at_launch, int reject) {
    capturing = capture;
    fault_at = fault_at_launch;
    reject_cubin = reject;
    if (!fault_at_launch) sticky = 0;
}
int fake_libcuda_launches() { return launches; }
int fake_libcuda_syncs() { return syncs; }
int fake_libcuda_module_loads() { return module_loads; }
int fake_libcuda_last_image() { return last_image; }
int fake_libcuda_last_alpha(double* v) {
    *v = last_alpha;
    return last_alpha_ptr;
}
}
