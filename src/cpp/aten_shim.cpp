// The libtorch entry points that tch 0.26 does not expose: at::convolution_backward,
// at::parallel_for, at::_assert_async, PyTorch's current CUDA stream, and the reference counts of a
// tensor and its storage. convolution_backward
// selects the same backend as the forward convolution (oneDNN / slow im2col on CPU, cuDNN on
// CUDA), which gives an efficient weight gradient. All arithmetic of the IC layer stays in Rust; this file
// only forwards arguments and turns C++ exceptions into an error string.
#include "error_sink.h"
#include <ATen/ATen.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <atomic>
#include <array>
#include <cstring>
#include <exception>
#include <memory>

extern "C" {

// Tensors are tch's `C_tensor`, i.e. `at::Tensor*`. Outputs are heap-allocated `at::Tensor`s that
// the Rust side owns (tch frees them with `delete`). Errors follow the boundary's convention
// (error_sink.h): ICN_OK, or ICN_RUNTIME_ERROR with the message handed to `sink`.
int icn_convolution_backward(const at::Tensor* grad_out, const at::Tensor* input, const at::Tensor* weight,
                             const int64_t* stride, const int64_t* padding, const int64_t* dilation, int64_t groups,
                             int need_input, int need_weight, at::Tensor** grad_input, at::Tensor** grad_weight,
                             IcnErrorSink sink) {
    *grad_input = nullptr;
    *grad_weight = nullptr;
    try {
        std::array<bool, 3> mask{need_input != 0, need_weight != 0, false};
        std::vector<int64_t> output_padding{0, 0};
        auto res = at::convolution_backward(*grad_out, *input, *weight, c10::nullopt, at::IntArrayRef(stride, 2),
                                            at::IntArrayRef(padding, 2), at::IntArrayRef(dilation, 2), false,
                                            output_padding, groups, mask);
        if (need_input) *grad_input = new at::Tensor(std::get<0>(res));
        if (need_weight) *grad_weight = new at::Tensor(std::get<1>(res));
        return ICN_OK;
    } catch (const std::exception& e) { return icn::report(sink, ICN_RUNTIME_ERROR, e.what()); }
}

// Runs f(ctx, b, e) over [begin, end) split by at::parallel_for, i.e. on libtorch's own intra-op
// thread pool (so torch.set_num_threads applies and no second pool competes for the cores).
// f returns non-zero on failure; a failure makes this return ICN_RUNTIME_ERROR.
typedef int (*icn_range_fn)(void* ctx, int64_t begin, int64_t end);

int icn_parallel_for(int64_t begin, int64_t end, int64_t grain, icn_range_fn f, void* ctx, IcnErrorSink sink) {
    std::atomic<int> failed{0};
    try {
        at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) {
            if (f(ctx, b, e) != 0) failed.store(1);
        });
    } catch (const std::exception& e) { return icn::report(sink, ICN_RUNTIME_ERROR, e.what()); }
    if (failed.load()) return icn::report(sink, ICN_RUNTIME_ERROR, "a parallel kernel task failed");
    return ICN_OK;
}

// at::_assert_async(cond, msg): a device-side check of a one-element boolean tensor (no host sync on
// CUDA). Fails only when the call itself fails.
int icn_assert_async(const at::Tensor* cond, const char* msg, IcnErrorSink sink) {
    try {
        at::_assert_async(*cond, msg);
        return ICN_OK;
    } catch (const std::exception& e) { return icn::report(sink, ICN_RUNTIME_ERROR, e.what()); }
}

// PyTorch's current stream on CUDA device `index` as a raw cudaStream_t (borrowed), through the
// device-guard interface that torch's CUDA library registers in c10: no CUDA header or library is
// needed at build time. Fails with CPU-only torch (CUDA is not registered).
int icn_current_cuda_stream(int64_t index, void** stream, IcnErrorSink sink) {
    *stream = nullptr;
    try {
        const c10::impl::DeviceGuardImplInterface* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
        const c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
        *stream = impl->getStreamNativeHandle(impl->getStream(device));
        return ICN_OK;
    } catch (const std::exception& e) { return icn::report(sink, ICN_RUNTIME_ERROR, e.what()); }
}

// A named range (user scope) in torch.profiler traces and other RecordFunction observers, begun
// here and ended by icn_range_end on the same thread; null, and nothing recorded, when no observer
// is active. `name` must outlive the range (Rust passes static strings).
void* icn_range_begin(const char* name) noexcept {
    try {
        auto range = std::make_unique<at::RecordFunction>(at::RecordScope::USER_SCOPE);
        if (!range->isActive()) return nullptr;
        range->before(name, c10::ArrayRef<const c10::IValue>{});
        return range.release();
    } catch (...) { return nullptr; }
}

void icn_range_end(void* range) noexcept { delete static_cast<at::RecordFunction*>(range); }

// 1 when `t` is the only handle on its TensorImpl and that impl the only one on its storage: no
// other tensor, view or alias can read or write the memory (a workspace buffer nobody holds).
int icn_sole_owner(const at::Tensor* t) noexcept {
    return t->defined() && t->use_count() == 1 && t->storage().use_count() == 1;
}

}  // extern "C"
