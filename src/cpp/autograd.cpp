// Autograd kernels of the ic_networks ops (torch::autograd::Function, as torchvision's
// deform_conv2d). Each forward calls the op below autograd; each backward calls the backward op
// through the dispatcher, so torch.compile traces it and its fake kernel. Double backward is not
// supported: differentiating a gradient raises an error naming ic_networks.reference.
#include "ops.h"

#include <c10/core/GradMode.h>
#include <torch/autograd.h>

namespace icn {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::vector<int64_t> vec(IntArrayRef a) { return a.vec(); }

class IcConv2dFunction : public torch::autograd::Function<IcConv2dFunction> {
  public:
    static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                                 const Tensor& adjust_weight, const Tensor& adjust_bias, const Tensor& alpha,
                                 const OptTensor& bias, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                 int64_t groups) {
        at::AutoDispatchBelowADInplaceOrView below;
        auto [out, relu_z] = call_ic_conv2d_forward(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding,
                                                    dilation, groups);
        ctx->save_for_backward({x, weight, adjust_weight, adjust_bias, alpha, relu_z});
        ctx->saved_data["stride"] = vec(stride);
        ctx->saved_data["padding"] = vec(padding);
        ctx->saved_data["dilation"] = vec(dilation);
        ctx->saved_data["groups"] = groups;
        ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
        ctx->mark_non_differentiable({relu_z});
        return {out, relu_z};
    }

    static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
        // An absent bias is not an autograd input (no edge): 5 edges then, else 6.
        const bool has_bias = ctx->saved_data["has_bias"].toBool();
        std::array<bool, 6> needs{};
        bool any = false;
        for (size_t i = 0; i < (has_bias ? 6u : 5u); ++i) any |= (needs[i] = ctx->needs_input_grad(i));
        variable_list grads(10);
        if (!any || !grad_outputs[0].defined()) return grads;
        auto saved = ctx->get_saved_variables();
        const Tensor& alpha = saved[4];
        auto r = call_ic_conv2d_backward(
            grad_outputs[0], saved[0], saved[1], saved[2], saved[3], alpha, saved[5], has_bias,
            ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
            ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["groups"].toInt(), needs);
        Tensor g[6] = {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r), std::get<5>(r)};
        for (size_t i = 0; i < 6; ++i) {
            if (needs[i]) grads[i] = g[i];
        }
        // d alpha is computed on x's device; alpha may be a CPU scalar.
        if (grads[4].defined() && grads[4].device() != alpha.device()) grads[4] = grads[4].to(alpha.device());
        return grads;
    }
};

class IcConv2dBackwardFunction : public torch::autograd::Function<IcConv2dBackwardFunction> {
  public:
    static variable_list forward(AutogradContext* /*ctx*/, const Tensor& grad, const Tensor& x, const Tensor& weight,
                                 const Tensor& adjust_weight, const Tensor& adjust_bias, const Tensor& alpha,
                                 const Tensor& relu_z, bool has_bias, IntArrayRef stride, IntArrayRef padding,
                                 IntArrayRef dilation, int64_t groups, std::array<bool, 6> needs) {
        at::AutoDispatchBelowADInplaceOrView below;
        auto r = call_ic_conv2d_backward(grad, x, weight, adjust_weight, adjust_bias, alpha, relu_z, has_bias, stride,
                                         padding, dilation, groups, needs);
        return {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r), std::get<5>(r)};
    }

    // Reached only when a graph through the gradients is differentiated (create_graph=True, then a
    // backward through the result): refused, naming the twice-differentiable plain-PyTorch formula.
    static variable_list backward(AutogradContext*, variable_list) {
        TORCH_CHECK(false,
                    "ic_conv2d: double backward (a gradient of the gradient, e.g. a gradient penalty built with "
                    "create_graph=True) is not supported by the native op; where a second derivative is needed, "
                    "compute the layer with ic_networks.reference.ic_conv2d_reference (plain PyTorch, twice "
                    "differentiable, same arguments as ic_networks.functional.ic_conv2d)");
    }
};

class InferenceFunction : public torch::autograd::Function<InferenceFunction> {
  public:
    static variable_list forward(AutogradContext*, const Tensor& x, const Tensor& weight, const Tensor& adjust_weight,
                                 const Tensor& adjust_bias, const Tensor& alpha, const OptTensor& bias,
                                 IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
        at::AutoDispatchBelowADInplaceOrView below;
        return {call_ic_conv2d_inference(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation,
                                         groups)};
    }

    static variable_list backward(AutogradContext*, variable_list) {
        TORCH_CHECK(false,
                    "ic_conv2d_inference keeps nothing for a backward; call ic_conv2d (or ic_conv2d_forward) "
                    "when a gradient is needed");
    }
};

class BoxsumFunction : public torch::autograd::Function<BoxsumFunction> {
  public:
    static variable_list forward(AutogradContext* ctx, const Tensor& x, IntArrayRef kernel_size, IntArrayRef stride,
                                 IntArrayRef padding, IntArrayRef dilation) {
        at::AutoDispatchBelowADInplaceOrView below;
        Tensor out = call_boxsum(x, kernel_size, stride, padding, dilation);
        ctx->save_for_backward({x});
        const int64_t kh = kernel_size[0], kw = kernel_size.size() > 1 ? kernel_size[1] : kernel_size[0];
        ctx->saved_data["kernel"] = std::vector<int64_t>{kh, kw};
        ctx->saved_data["stride"] = vec(stride);
        ctx->saved_data["padding"] = vec(padding);
        ctx->saved_data["dilation"] = vec(dilation);
        return {out};
    }

    // The adjoint of a depthwise all-ones convolution: its input gradient. Plain ATen, so it is
    // differentiable again (the box sum is linear).
    static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
        variable_list grads(5);
        if (!ctx->needs_input_grad(0) || !grad_outputs[0].defined()) return grads;
        const Tensor x = ctx->get_saved_variables()[0];
        const Tensor& grad = grad_outputs[0];
        auto kernel = ctx->saved_data["kernel"].toIntVector();
        const int64_t c = x.size(1);
        Tensor ones = at::ones({c, 1, kernel[0], kernel[1]}, grad.options());
        auto pair = [](std::vector<int64_t> v) { return v.size() == 1 ? std::vector<int64_t>{v[0], v[0]} : v; };
        grads[0] = std::get<0>(at::convolution_backward(
            grad, x, ones, std::nullopt, pair(ctx->saved_data["stride"].toIntVector()),
            pair(ctx->saved_data["padding"].toIntVector()), pair(ctx->saved_data["dilation"].toIntVector()), false,
            {0, 0}, c, {true, false, false}));
        return grads;
    }
};

class WldFunction : public torch::autograd::Function<WldFunction> {
  public:
    static variable_list forward(AutogradContext* ctx, const Tensor& student_logits, const Tensor& teacher_logits,
                                 const Tensor& target, double lam, double e, double tau) {
        at::AutoDispatchBelowADInplaceOrView below;
        auto [loss, ce, kd] = call_wld_loss(student_logits, teacher_logits, target, lam, e, tau);
        ctx->save_for_backward({student_logits, teacher_logits, target});
        ctx->saved_data["lam"] = lam;
        ctx->saved_data["e"] = e;
        ctx->saved_data["tau"] = tau;
        ctx->mark_non_differentiable({ce, kd});
        return {loss, ce, kd};
    }

    // Only the student gets a gradient: the teacher is a constant of the loss.
    static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
        variable_list grads(6);
        if (!ctx->needs_input_grad(0) || !grad_outputs[0].defined()) return grads;
        auto saved = ctx->get_saved_variables();
        grads[0] =
            call_wld_loss_backward(grad_outputs[0], saved[0], saved[1], saved[2], ctx->saved_data["lam"].toDouble(),
                                   ctx->saved_data["e"].toDouble(), ctx->saved_data["tau"].toDouble());
        return grads;
    }
};

class WldBackwardFunction : public torch::autograd::Function<WldBackwardFunction> {
  public:
    static variable_list forward(AutogradContext*, const Tensor& grad, const Tensor& student_logits,
                                 const Tensor& teacher_logits, const Tensor& target, double lam, double e, double tau) {
        at::AutoDispatchBelowADInplaceOrView below;
        return {call_wld_loss_backward(grad, student_logits, teacher_logits, target, lam, e, tau)};
    }

    static variable_list backward(AutogradContext*, variable_list) {
        TORCH_CHECK(false, "wld_loss: double backward (a gradient of the gradient) is not supported");
    }
};

std::tuple<Tensor, Tensor> ic_conv2d_forward_autograd(const Tensor& x, const Tensor& weight,
                                                      const Tensor& adjust_weight, const Tensor& adjust_bias,
                                                      const Tensor& alpha, const OptTensor& bias, IntArrayRef stride,
                                                      IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
    auto r =
        IcConv2dFunction::apply(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups);
    return {r[0], r[1]};
}

Tensor ic_conv2d_inference_autograd(const Tensor& x, const Tensor& weight, const Tensor& adjust_weight,
                                    const Tensor& adjust_bias, const Tensor& alpha, const OptTensor& bias,
                                    IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
    if (!wants_grad({&x, &weight, &adjust_weight, &adjust_bias, &alpha,
                     bias.has_value()
                         ? &*bias
                         : nullptr})) {  // the usual case (ic_conv2d calls it only then): no graph node to build
        at::AutoDispatchBelowADInplaceOrView below;
        return call_ic_conv2d_inference(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation,
                                        groups);
    }
    return InferenceFunction::apply(x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation,
                                    groups)[0];
}

Tensor6 ic_conv2d_backward_autograd(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                    const Tensor& adjust_weight, const Tensor& adjust_bias, const Tensor& alpha,
                                    const Tensor& relu_z, bool has_bias, IntArrayRef stride, IntArrayRef padding,
                                    IntArrayRef dilation, int64_t groups, std::array<bool, 6> needs) {
    auto r = IcConv2dBackwardFunction::apply(grad, x, weight, adjust_weight, adjust_bias, alpha, relu_z, has_bias,
                                             stride, padding, dilation, groups, needs);
    return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

Tensor boxsum_autograd(const Tensor& x, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                       IntArrayRef dilation) {
    return BoxsumFunction::apply(x, kernel_size, stride, padding, dilation)[0];
}

std::tuple<Tensor, Tensor, Tensor> wld_loss_autograd(const Tensor& student_logits, const Tensor& teacher_logits,
                                                     const Tensor& target, double lam, double e, double tau) {
    auto r = WldFunction::apply(student_logits, teacher_logits, target, lam, e, tau);
    return {r[0], r[1], r[2]};
}

Tensor wld_loss_backward_autograd(const Tensor& grad, const Tensor& student_logits, const Tensor& teacher_logits,
                                  const Tensor& target, double lam, double e, double tau) {
    return WldBackwardFunction::apply(grad, student_logits, teacher_logits, target, lam, e, tau)[0];
}

}  // namespace

void register_autograd(torch::Library& m) {
    m.impl("ic_conv2d_forward", TORCH_FN(ic_conv2d_forward_autograd));
    m.impl("ic_conv2d_inference", TORCH_FN(ic_conv2d_inference_autograd));
    m.impl("ic_conv2d_backward", TORCH_FN(ic_conv2d_backward_autograd));
    m.impl("boxsum", TORCH_FN(boxsum_autograd));
    m.impl("wld_loss", TORCH_FN(wld_loss_autograd));
    m.impl("wld_loss_backward", TORCH_FN(wld_loss_backward_autograd));
}

}  // namespace icn
