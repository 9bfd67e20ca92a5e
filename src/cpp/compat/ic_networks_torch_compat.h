// Force-included (`-include`, see .cargo/config.toml) into every C++ file that cargo compiles for
// ic-networks: tch's generated libtorch wrapper (torch-sys) and our src/cpp/aten_shim.cpp.
//
// tch 0.26's wrapper was generated for torch 2.13 and calls `torch::<op>` for every ATen op of that
// release. Later torches removed some of them; this header defines each removed op, in namespace
// torch, in terms of its replacement, with the old arguments and results. Each definition is guarded
// by the op's own per-operator header: it is compiled only when the torch being built against has
// no `ATen/ops/<op>.h` but has the replacement's. Ops that an older torch does not have yet become
// functions that throw (tch turns that into an error naming the op). With torch 2.13, or in a
// compile that does not see torch's headers at all, this file defines nothing that is used.
#ifndef IC_NETWORKS_TORCH_COMPAT_H
#define IC_NETWORKS_TORCH_COMPAT_H

#if defined(__cplusplus) && defined(__has_include)
#if __has_include(<ATen/ops/linalg_cholesky.h>) && __has_include(<torch/version.h>)

#include <torch/version.h>

// torch.cholesky(A, upper) -> torch.linalg.cholesky(A, upper=upper): same factor, same convention.
#if !__has_include(<ATen/ops/cholesky.h>)
#include <ATen/ops/linalg_cholesky.h>
namespace torch {
inline at::Tensor cholesky(const at::Tensor &self, bool upper = false) { return at::linalg_cholesky(self, upper); }
inline at::Tensor &cholesky_out(at::Tensor &out, const at::Tensor &self, bool upper = false) {
    return at::linalg_cholesky_out(out, self, upper);
}
}  // namespace torch
#endif

// torch.qr(A, some) -> torch.linalg.qr(A, mode): some=true is mode "reduced", some=false "complete".
#if !__has_include(<ATen/ops/qr.h>) && __has_include(<ATen/ops/linalg_qr.h>)
#include <ATen/ops/linalg_qr.h>
namespace torch {
inline std::tuple<at::Tensor, at::Tensor> qr(const at::Tensor &self, bool some = true) {
    return at::linalg_qr(self, some ? "reduced" : "complete");
}
inline std::tuple<at::Tensor &, at::Tensor &> qr_out(at::Tensor &Q, at::Tensor &R, const at::Tensor &self,
                                                     bool some = true) {
    return at::linalg_qr_out(Q, R, self, some ? "reduced" : "complete");
}
}  // namespace torch
#endif

// Ops that tch's wrapper calls but an older torch (2.11) does not have yet: defined as functions that
// throw, which tch reports as an error naming the op. ic-networks never calls them.
#include <ATen/core/Tensor.h>
#include <stdexcept>
#include <tuple>
using ic_networks_tensor_pair = std::tuple<at::Tensor, at::Tensor>;
#define IC_NETWORKS_TORCH_MISSING(ret, name)                                          \
    namespace torch {                                                                 \
    template <class... Args>                                                          \
    inline ret name(Args &&...) {                                                     \
        throw std::runtime_error("torch::" #name                                      \
                                 " does not exist in the torch that ic-networks was " \
                                 "built against (it is newer); see docs/install.md"); \
    }                                                                                 \
    }
#if !__has_include(<ATen/ops/_flash_attention_forward_no_dropout_inplace.h>)
IC_NETWORKS_TORCH_MISSING(at::Tensor, _flash_attention_forward_no_dropout_inplace)
#endif
#if !__has_include(<ATen/ops/_philox_key_fold_in.h>)
IC_NETWORKS_TORCH_MISSING(at::Tensor, _philox_key_fold_in)
#endif
#if !__has_include(<ATen/ops/_philox_key_split.h>)
IC_NETWORKS_TORCH_MISSING(at::Tensor, _philox_key_split)
#endif
#if !__has_include(<ATen/ops/_philox_normal.h>)
IC_NETWORKS_TORCH_MISSING(at::Tensor, _philox_normal)
#endif
#if !__has_include(<ATen/ops/_philox_normal.h>)
IC_NETWORKS_TORCH_MISSING(at::Tensor, _philox_normal_)
#endif
#if !__has_include(<ATen/ops/_philox_normal.h>)
IC_NETWORKS_TORCH_MISSING(at::Tensor, _philox_normal_out)
#endif
#if !__has_include(<ATen/ops/_philox_uniform.h>)
IC_NETWORKS_TORCH_MISSING(at::Tensor, _philox_uniform)
#endif
#if !__has_include(<ATen/ops/_philox_uniform.h>)
IC_NETWORKS_TORCH_MISSING(at::Tensor, _philox_uniform_)
#endif
#if !__has_include(<ATen/ops/_philox_uniform.h>)
IC_NETWORKS_TORCH_MISSING(at::Tensor, _philox_uniform_out)
#endif
#if !__has_include(<ATen/ops/_upsample_lanczos2d_aa.h>)
IC_NETWORKS_TORCH_MISSING(at::Tensor, _upsample_lanczos2d_aa)
#endif
#if !__has_include(<ATen/ops/_upsample_lanczos2d_aa_backward.h>)
IC_NETWORKS_TORCH_MISSING(at::Tensor, _upsample_lanczos2d_aa_backward)
#endif
#if !__has_include(<ATen/ops/_upsample_lanczos2d_aa_backward.h>)
IC_NETWORKS_TORCH_MISSING(at::Tensor, _upsample_lanczos2d_aa_backward_out)
#endif
#if !__has_include(<ATen/ops/_upsample_lanczos2d_aa.h>)
IC_NETWORKS_TORCH_MISSING(at::Tensor, _upsample_lanczos2d_aa_out)
#endif
// torch 2.12 added `enable_gqa` to this MPS-only op: the wrapper passes it, older torches do not take it.
#if defined(TORCH_VERSION_MAJOR) && TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR < 12
IC_NETWORKS_TORCH_MISSING(ic_networks_tensor_pair, _scaled_dot_product_attention_math_for_mps)
#endif

#endif  // torch headers visible
#endif  // C++ with __has_include

#endif  // IC_NETWORKS_TORCH_COMPAT_H
