// Autocast kernels (AutocastCPU / AutocastCUDA) of the IC convolution: like conv2d, the float
// tensors on the autocast device (x, W, W', b1, b2) are cast to the current autocast dtype
// (float64 is left alone; weights are cached as autocast caches them for conv2d), alpha keeps its
// dtype, and the op runs below autocast. The box sum and the WLD loss have no rule: they run in
// their input's dtype (the WLD loss computes half-precision logits in float32 itself).
#include "ops.h"

#include <ATen/autocast_mode.h>

namespace icn {

namespace {

template <c10::DeviceType D, c10::DispatchKey K>
std::tuple<Tensor, Tensor> forward_autocast(const Tensor& x, const Tensor& weight, const Tensor& adjust_weight,
                                            const Tensor& adjust_bias, const Tensor& alpha, const OptTensor& bias,
                                            IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                            int64_t groups) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(K);
    const auto dt = at::autocast::get_autocast_dtype(D);
    using at::autocast::cached_cast;
    return call_ic_conv2d_forward(cached_cast(dt, x, D), cached_cast(dt, weight, D), cached_cast(dt, adjust_weight, D),
                                  cached_cast(dt, adjust_bias, D), alpha, cached_cast(dt, bias, D), stride, padding,
                                  dilation, groups);
}

template <c10::DeviceType D, c10::DispatchKey K>
Tensor inference_autocast(const Tensor& x, const Tensor& weight, const Tensor& adjust_weight, const Tensor& adjust_bias,
                          const Tensor& alpha, const OptTensor& bias, IntArrayRef stride, IntArrayRef padding,
                          IntArrayRef dilation, int64_t groups) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(K);
    const auto dt = at::autocast::get_autocast_dtype(D);
    using at::autocast::cached_cast;
    return call_ic_conv2d_inference(cached_cast(dt, x, D), cached_cast(dt, weight, D),
                                    cached_cast(dt, adjust_weight, D), cached_cast(dt, adjust_bias, D), alpha,
                                    cached_cast(dt, bias, D), stride, padding, dilation, groups);
}

}  // namespace

void register_autocast_cpu(torch::Library& m) {
    m.impl("ic_conv2d_forward", TORCH_FN((forward_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>)));
    m.impl("ic_conv2d_inference", TORCH_FN((inference_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>)));
}

void register_autocast_cuda(torch::Library& m) {
    m.impl("ic_conv2d_forward", TORCH_FN((forward_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>)));
    m.impl("ic_conv2d_inference",
           TORCH_FN((inference_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>)));
}

}  // namespace icn
