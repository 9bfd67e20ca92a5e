// CPU and CUDA kernels of the ic_networks ops: the Rust functions of src/ffi.rs. The same Rust
// code serves both devices (it picks its CPU kernels or libtorch's device ops per call), so both
// keys register the same functions; the CUDA ones run under a device guard for x's device.
//
// Rust validates every argument and reports errors by the boundary's convention (error_sink.h):
// a kind and a message, raised here as c10::ValueError / c10::TypeError / c10::Error, i.e. Python
// ValueError / TypeError / RuntimeError. The functions' prototypes come from the header build.rs
// generates from src/ffi.rs.
#include "error_sink.h"
#include "ops.h"

#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cstddef>
#include <string>
#include <tuple>

namespace icn {

namespace {

[[noreturn]] void raise(int code, const std::string& msg) {
    if (code == ICN_VALUE_ERROR) TORCH_CHECK_VALUE(false, msg);
    if (code == ICN_TYPE_ERROR) TORCH_CHECK_TYPE(false, msg);
    TORCH_CHECK(false, msg);
    __builtin_unreachable();
}

inline void check(int rc, const std::string& err) {
    if (rc != ICN_OK) raise(rc, err);
}

// Takes ownership of a tensor that Rust allocated; an undefined tensor for null.
Tensor take(at::Tensor* p) {
    if (p == nullptr) return Tensor();
    Tensor t = std::move(*p);
    delete p;
    return t;
}

IcnIntList list(IntArrayRef a) { return {a.data(), a.size()}; }

const Tensor* opt(const OptTensor& t) { return t.has_value() && t->defined() ? &*t : nullptr; }

// The libtorch ops that Rust calls run in the dtypes it chose: autocast (which a backward under
// `torch.autocast` still has on) would turn the float32 GEMMs of a widened half-precision call
// into bfloat16 ones.
struct NoAutocast {
    c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

}  // namespace

std::tuple<Tensor, Tensor> ic_conv2d_forward_kernel(const Tensor& x, const Tensor& weight, const Tensor& adjust_weight,
                                                    const Tensor& adjust_bias, const Tensor& alpha,
                                                    const OptTensor& bias, IntArrayRef stride, IntArrayRef padding,
                                                    IntArrayRef dilation, int64_t groups) {
    NoAutocast no_autocast;
    at::Tensor *out = nullptr, *relu_z = nullptr;
    std::string err;
    check(icn_rs_ic_conv2d_forward(&x, &weight, &adjust_weight, &adjust_bias, &alpha, opt(bias), list(stride),
                                   list(padding), list(dilation), groups, 1, &out, &relu_z, icn::sink_into(&err)),
          err);
    return {take(out), take(relu_z)};
}

Tensor ic_conv2d_inference_kernel(const Tensor& x, const Tensor& weight, const Tensor& adjust_weight,
                                  const Tensor& adjust_bias, const Tensor& alpha, const OptTensor& bias,
                                  IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
    NoAutocast no_autocast;
    at::Tensor *out = nullptr, *relu_z = nullptr;
    std::string err;
    check(icn_rs_ic_conv2d_forward(&x, &weight, &adjust_weight, &adjust_bias, &alpha, opt(bias), list(stride),
                                   list(padding), list(dilation), groups, 0, &out, &relu_z, icn::sink_into(&err)),
          err);
    take(relu_z);
    return take(out);
}

Tensor6 ic_conv2d_backward_kernel(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                  const Tensor& adjust_weight, const Tensor& adjust_bias, const Tensor& alpha,
                                  const Tensor& relu_z, bool has_bias, IntArrayRef stride, IntArrayRef padding,
                                  IntArrayRef dilation, int64_t groups, std::array<bool, 6> needs) {
    NoAutocast no_autocast;
    std::array<uint8_t, 6> flags{};
    for (size_t i = 0; i < 6; ++i) flags[i] = needs[i] ? 1 : 0;
    std::array<at::Tensor*, 6> g{};
    std::string err;
    check(icn_rs_ic_conv2d_backward(&grad, &x, &weight, &adjust_weight, &adjust_bias, &alpha, &relu_z, has_bias ? 1 : 0,
                                    list(stride), list(padding), list(dilation), groups, flags.data(), g.data(),
                                    icn::sink_into(&err)),
          err);
    // A gradient that was not asked for comes back as an empty tensor (op outputs cannot be None).
    auto get = [&](size_t i) {
        Tensor t = take(g[i]);
        return t.defined() ? t : at::empty({0}, x.options());
    };
    return {get(0), get(1), get(2), get(3), get(4), get(5)};
}

Tensor boxsum_kernel(const Tensor& x, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                     IntArrayRef dilation) {
    at::Tensor* out = nullptr;
    std::string err;
    check(icn_rs_boxsum(&x, list(kernel_size), list(stride), list(padding), list(dilation), &out, icn::sink_into(&err)),
          err);
    return take(out);
}

std::tuple<Tensor, Tensor, Tensor> wld_loss_kernel(const Tensor& student_logits, const Tensor& teacher_logits,
                                                   const Tensor& target, double lam, double e, double tau) {
    at::Tensor *loss = nullptr, *ce = nullptr, *kd = nullptr;
    std::string err;
    check(icn_rs_wld_forward(&student_logits, &teacher_logits, &target, lam, e, tau, &loss, &ce, &kd,
                             icn::sink_into(&err)),
          err);
    return {take(loss), take(ce), take(kd)};
}

Tensor wld_loss_backward_kernel(const Tensor& grad, const Tensor& student_logits, const Tensor& teacher_logits,
                                const Tensor& target, double lam, double e, double tau) {
    at::Tensor* out = nullptr;
    std::string err;
    check(
        icn_rs_wld_backward(&grad, &student_logits, &teacher_logits, &target, lam, e, tau, &out, icn::sink_into(&err)),
        err);
    return take(out);
}

namespace {

// CUDA: the same kernels, with the device of argument I made current (streams and handles are
// per device): OnDevice<&kernel, I>::call has the kernel's signature.
template <auto Kernel, size_t I>
struct OnDevice;

template <typename R, typename... A, R (*Kernel)(A...), size_t I>
struct OnDevice<Kernel, I> {
    static R call(A... a) {
        c10::OptionalDeviceGuard guard(std::get<I>(std::forward_as_tuple(a...)).device());
        return Kernel(a...);
    }
};

}  // namespace

void register_cpu(torch::Library& m) {
    m.impl("ic_conv2d_forward", TORCH_FN(ic_conv2d_forward_kernel));
    m.impl("ic_conv2d_inference", TORCH_FN(ic_conv2d_inference_kernel));
    m.impl("ic_conv2d_backward", TORCH_FN(ic_conv2d_backward_kernel));
    m.impl("boxsum", TORCH_FN(boxsum_kernel));
    m.impl("wld_loss", TORCH_FN(wld_loss_kernel));
    m.impl("wld_loss_backward", TORCH_FN(wld_loss_backward_kernel));
}

void register_cuda(torch::Library& m) {  // the device of x (student_logits for the losses)
    m.impl("ic_conv2d_forward", TORCH_FN((OnDevice<&ic_conv2d_forward_kernel, 0>::call)));
    m.impl("ic_conv2d_inference", TORCH_FN((OnDevice<&ic_conv2d_inference_kernel, 0>::call)));
    m.impl("ic_conv2d_backward", TORCH_FN((OnDevice<&ic_conv2d_backward_kernel, 1>::call)));
    m.impl("boxsum", TORCH_FN((OnDevice<&boxsum_kernel, 0>::call)));
    m.impl("wld_loss", TORCH_FN((OnDevice<&wld_loss_kernel, 0>::call)));
    m.impl("wld_loss_backward", TORCH_FN((OnDevice<&wld_loss_backward_kernel, 1>::call)));
}

}  // namespace icn
