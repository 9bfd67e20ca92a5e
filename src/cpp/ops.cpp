// The ic_networks operators: their schemas, the public composite `ic_conv2d`, and the one entry
// point that registers everything with libtorch's dispatcher.
//
// Layout (as torchvision's csrc/ops): this file defines the ops; kernels.cpp holds the CPU and CUDA
// kernels (Rust, src/ffi.rs); autograd.cpp the Autograd kernels; autocast.cpp the AutocastCPU /
// AutocastCUDA kernels. The fake (meta) kernels live in Python (ic_networks/functional.py, named
// by set_python_module below) because torch.compile's symbolic shapes are easiest to serve there.
//
// Registration is explicit: icn_register_ops() is called once from the Python module's init
// (src/lib.rs) or by a C++ program that loads the library. Static registrars (TORCH_LIBRARY at
// namespace scope) would live in object files that nothing references, and the linker drops those
// from the static archive that `cc` builds.
#include "error_sink.h"
#include "ops.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>

#include <cstring>
#include <exception>
#include <mutex>

namespace icn {

namespace {

template <typename Sig>
c10::TypedOperatorHandle<Sig> handle(const char* name) {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// The public op: the training forward when a gradient may be needed (its relu_z output is kept for
// the backward), else the inference forward (no relu_z is written). An unbatched (C, H, W) input is
// treated as a batch of one, as nn.Conv2d does.
Tensor ic_conv2d_composite(const Tensor& x, const Tensor& weight, const Tensor& adjust_weight,
                           const Tensor& adjust_bias, const Tensor& alpha, const OptTensor& bias, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
    const bool unbatched = x.dim() == 3;
    const Tensor xb = unbatched ? x.unsqueeze(0) : x;
    const Tensor* b = bias.has_value() ? &*bias : nullptr;
    Tensor out;
    if (wants_grad({&xb, &weight, &adjust_weight, &adjust_bias, &alpha, b})) {
        out = std::get<0>(call_ic_conv2d_forward(xb, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding,
                                                 dilation, groups));
    } else {
        out = call_ic_conv2d_inference(xb, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation,
                                       groups);
    }
    return unbatched ? out.squeeze(0) : out;
}

}  // namespace

std::tuple<Tensor, Tensor> call_ic_conv2d_forward(const Tensor& x, const Tensor& weight, const Tensor& adjust_weight,
                                                  const Tensor& adjust_bias, const Tensor& alpha, const OptTensor& bias,
                                                  IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                                  int64_t groups) {
    static auto op = handle<decltype(ic_conv2d_forward_kernel)>("ic_networks::ic_conv2d_forward");
    return op.call(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups);
}

Tensor call_ic_conv2d_inference(const Tensor& x, const Tensor& weight, const Tensor& adjust_weight,
                                const Tensor& adjust_bias, const Tensor& alpha, const OptTensor& bias,
                                IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
    static auto op = handle<decltype(ic_conv2d_inference_kernel)>("ic_networks::ic_conv2d_inference");
    return op.call(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups);
}

Tensor6 call_ic_conv2d_backward(const Tensor& grad, const Tensor& x, const Tensor& weight, const Tensor& adjust_weight,
                                const Tensor& adjust_bias, const Tensor& alpha, const Tensor& relu_z, bool has_bias,
                                IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                                std::array<bool, 6> needs) {
    static auto op = handle<decltype(ic_conv2d_backward_kernel)>("ic_networks::ic_conv2d_backward");
    return op.call(grad, x, weight, adjust_weight, adjust_bias, alpha, relu_z, has_bias, stride, padding, dilation,
                   groups, needs);
}

Tensor call_boxsum(const Tensor& x, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                   IntArrayRef dilation) {
    static auto op = handle<decltype(boxsum_kernel)>("ic_networks::boxsum");
    return op.call(x, kernel_size, stride, padding, dilation);
}

std::tuple<Tensor, Tensor, Tensor> call_wld_loss(const Tensor& student_logits, const Tensor& teacher_logits,
                                                 const Tensor& target, double lam, double e, double tau) {
    static auto op = handle<decltype(wld_loss_kernel)>("ic_networks::wld_loss");
    return op.call(student_logits, teacher_logits, target, lam, e, tau);
}

Tensor call_wld_loss_backward(const Tensor& grad, const Tensor& student_logits, const Tensor& teacher_logits,
                              const Tensor& target, double lam, double e, double tau) {
    static auto op = handle<decltype(wld_loss_backward_kernel)>("ic_networks::wld_loss_backward");
    return op.call(grad, student_logits, teacher_logits, target, lam, e, tau);
}

void define_ops(torch::Library& m) {
    m.set_python_module("ic_networks.functional");
    const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
    m.def(
        "ic_conv2d(Tensor x, Tensor weight, Tensor adjust_weight, Tensor adjust_bias, Tensor alpha, "
        "Tensor? bias=None, int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1) -> Tensor",
        tags);
    m.def(
        "ic_conv2d_forward(Tensor x, Tensor weight, Tensor adjust_weight, Tensor adjust_bias, Tensor alpha, "
        "Tensor? bias, int[] stride, int[] padding, int[] dilation, int groups) -> (Tensor, Tensor)",
        tags);
    m.def(
        "ic_conv2d_inference(Tensor x, Tensor weight, Tensor adjust_weight, Tensor adjust_bias, Tensor alpha, "
        "Tensor? bias, int[] stride, int[] padding, int[] dilation, int groups) -> Tensor",
        tags);
    m.def(
        "ic_conv2d_backward(Tensor grad, Tensor x, Tensor weight, Tensor adjust_weight, Tensor adjust_bias, "
        "Tensor alpha, Tensor relu_z, bool has_bias, int[] stride, int[] padding, int[] dilation, int groups, "
        "bool[6] needs) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
        tags);
    m.def("boxsum(Tensor x, int[] kernel_size, int[] stride, int[] padding, int[] dilation) -> Tensor", tags);
    m.def(
        "wld_loss(Tensor student_logits, Tensor teacher_logits, Tensor target, float lam, float e, float tau) "
        "-> (Tensor, Tensor, Tensor)",
        tags);
    m.def(
        "wld_loss_backward(Tensor grad, Tensor student_logits, Tensor teacher_logits, Tensor target, float lam, "
        "float e, float tau) -> Tensor",
        tags);
    m.impl("ic_conv2d", c10::DispatchKey::CompositeImplicitAutograd, TORCH_FN(ic_conv2d_composite));
}

}  // namespace icn

extern "C" {

// Registers the ic_networks ops (schemas and every kernel) once per process; later calls do
// nothing. Errors follow the boundary's convention (error_sink.h).
int icn_register_ops(IcnErrorSink sink) {
    using torch::Library;
    using torch::detail::TorchLibraryInit;
    static std::mutex mu;
    static bool done = false;
    std::lock_guard<std::mutex> lock(mu);
    if (done) return ICN_OK;
    try {
        // Kept for the life of the process: dropping a Library deregisters what it registered.
        static TorchLibraryInit def(Library::DEF, &icn::define_ops, "ic_networks", std::nullopt, __FILE__, __LINE__);
        static TorchLibraryInit cpu(Library::IMPL, &icn::register_cpu, "ic_networks", c10::DispatchKey::CPU, __FILE__,
                                    __LINE__);
        static TorchLibraryInit cuda(Library::IMPL, &icn::register_cuda, "ic_networks", c10::DispatchKey::CUDA,
                                     __FILE__, __LINE__);
        static TorchLibraryInit autograd(Library::IMPL, &icn::register_autograd, "ic_networks",
                                         c10::DispatchKey::Autograd, __FILE__, __LINE__);
        static TorchLibraryInit autocast_cpu(Library::IMPL, &icn::register_autocast_cpu, "ic_networks",
                                             c10::DispatchKey::AutocastCPU, __FILE__, __LINE__);
        static TorchLibraryInit autocast_cuda(Library::IMPL, &icn::register_autocast_cuda, "ic_networks",
                                              c10::DispatchKey::AutocastCUDA, __FILE__, __LINE__);
        done = true;
        return ICN_OK;
    } catch (const std::exception& e) { return icn::report(sink, ICN_RUNTIME_ERROR, e.what()); }
}

}  // extern "C"
