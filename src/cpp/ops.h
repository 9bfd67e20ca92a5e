// The ic_networks op library: declarations shared by ops.cpp (schemas, the public composite op,
// registration), kernels.cpp (CPU and CUDA kernels: the Rust functions of src/ffi.rs),
// autograd.cpp and autocast.cpp.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include <array>
#include <initializer_list>
#include <optional>
#include <tuple>

namespace icn {

using at::IntArrayRef;
using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Tensor6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// Device kernels (kernels.cpp): argument checks and computation in Rust.
std::tuple<Tensor, Tensor> ic_conv2d_forward_kernel(const Tensor& x, const Tensor& weight, const Tensor& adjust_weight,
                                                    const Tensor& adjust_bias, const Tensor& alpha,
                                                    const OptTensor& bias, IntArrayRef stride, IntArrayRef padding,
                                                    IntArrayRef dilation, int64_t groups);
Tensor ic_conv2d_inference_kernel(const Tensor& x, const Tensor& weight, const Tensor& adjust_weight,
                                  const Tensor& adjust_bias, const Tensor& alpha, const OptTensor& bias,
                                  IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups);
Tensor6 ic_conv2d_backward_kernel(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                  const Tensor& adjust_weight, const Tensor& adjust_bias, const Tensor& alpha,
                                  const Tensor& relu_z, bool has_bias, IntArrayRef stride, IntArrayRef padding,
                                  IntArrayRef dilation, int64_t groups, std::array<bool, 6> needs);
Tensor boxsum_kernel(const Tensor& x, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                     IntArrayRef dilation);
std::tuple<Tensor, Tensor, Tensor> wld_loss_kernel(const Tensor& student_logits, const Tensor& teacher_logits,
                                                   const Tensor& target, double lam, double e, double tau);
Tensor wld_loss_backward_kernel(const Tensor& grad, const Tensor& student_logits, const Tensor& teacher_logits,
                                const Tensor& target, double lam, double e, double tau);

// Typed handles to the registered ops, for calls through the dispatcher (ops.cpp).
std::tuple<Tensor, Tensor> call_ic_conv2d_forward(const Tensor& x, const Tensor& weight, const Tensor& adjust_weight,
                                                  const Tensor& adjust_bias, const Tensor& alpha, const OptTensor& bias,
                                                  IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                                  int64_t groups);
Tensor call_ic_conv2d_inference(const Tensor& x, const Tensor& weight, const Tensor& adjust_weight,
                                const Tensor& adjust_bias, const Tensor& alpha, const OptTensor& bias,
                                IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups);
Tensor6 call_ic_conv2d_backward(const Tensor& grad, const Tensor& x, const Tensor& weight, const Tensor& adjust_weight,
                                const Tensor& adjust_bias, const Tensor& alpha, const Tensor& relu_z, bool has_bias,
                                IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                                std::array<bool, 6> needs);
Tensor call_boxsum(const Tensor& x, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                   IntArrayRef dilation);
std::tuple<Tensor, Tensor, Tensor> call_wld_loss(const Tensor& student_logits, const Tensor& teacher_logits,
                                                 const Tensor& target, double lam, double e, double tau);
Tensor call_wld_loss_backward(const Tensor& grad, const Tensor& student_logits, const Tensor& teacher_logits,
                              const Tensor& target, double lam, double e, double tau);

// Whether autograd records a call on these tensors (grad mode on, one of them requires grad;
// null or undefined entries are skipped).
inline bool wants_grad(std::initializer_list<const Tensor*> ts) {
    if (!c10::GradMode::is_enabled()) return false;
    for (const Tensor* t : ts) {
        if (t != nullptr && t->defined() && t->requires_grad()) return true;
    }
    return false;
}

// Registration bodies, one per dispatch key (each file registers its own).
void define_ops(torch::Library& m);              // ops.cpp: schemas + CompositeImplicitAutograd ic_conv2d
void register_cpu(torch::Library& m);            // kernels.cpp
void register_cuda(torch::Library& m);           // kernels.cpp
void register_autograd(torch::Library& m);       // autograd.cpp
void register_autocast_cpu(torch::Library& m);   // autocast.cpp
void register_autocast_cuda(torch::Library& m);  // autocast.cpp

}  // namespace icn
