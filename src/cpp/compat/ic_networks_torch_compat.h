// Force-included (`-include`, see .cargo/config.toml) into every C++ file that cargo compiles for
// ic-networks: tch's generated libtorch wrapper (torch-sys) and our src/cpp/aten_shim.cpp.
//
// tch 0.26's wrapper was generated for torch 2.13 and calls `torch::<op>` for every ATen op of that
// release. Later torches removed some of them; this header defines each removed op, in namespace
// torch, in terms of its replacement, with the old arguments and results. Each definition is guarded
// by the op's own per-operator header: it is compiled only when the torch being built against has
// no `ATen/ops/<op>.h` but has the replacement's. With torch 2.13, or in a compile that does not see
// torch's headers at all, this file is empty.
#ifndef IC_NETWORKS_TORCH_COMPAT_H
#define IC_NETWORKS_TORCH_COMPAT_H

#if defined(__cplusplus) && defined(__has_include)
#if __has_include(<ATen/ops/linalg_cholesky.h>) && __has_include(<torch/version.h>)

#include <torch/version.h>

// torch.cholesky(A, upper) -> torch.linalg.cholesky(A, upper=upper): same factor, same convention.
#if !__has_include(<ATen/ops/cholesky.h>)
#include <ATen/ops/linalg_cholesky.h>
namespace torch {
inline at::Tensor cholesky(const at::Tensor &self, bool upper = false) {
  return at::linalg_cholesky(self, upper);
}
inline at::Tensor &cholesky_out(at::Tensor &out, const at::Tensor &self, bool upper = false) {
  return at::linalg_cholesky_out(out, self, upper);
}
} // namespace torch
#endif

// torch.qr(A, some) -> torch.linalg.qr(A, mode): some=true is mode "reduced", some=false "complete".
#if !__has_include(<ATen/ops/qr.h>) && __has_include(<ATen/ops/linalg_qr.h>)
#include <ATen/ops/linalg_qr.h>
namespace torch {
inline std::tuple<at::Tensor, at::Tensor> qr(const at::Tensor &self, bool some = true) {
  return at::linalg_qr(self, some ? "reduced" : "complete");
}
inline std::tuple<at::Tensor &, at::Tensor &> qr_out(at::Tensor &Q, at::Tensor &R,
                                                     const at::Tensor &self, bool some = true) {
  return at::linalg_qr_out(Q, R, self, some ? "reduced" : "complete");
}
} // namespace torch
#endif

#endif // torch headers visible
#endif // C++ with __has_include

#endif // IC_NETWORKS_TORCH_COMPAT_H
