//! Fused CUDA kernels for the memory-bound part of the IC layer (opt-in; see docs/cuda-kernels.md).
//!
//! The kernels (`src/cuda/kernels/collision.cu`) are compiled at run time by NVRTC and launched
//! through the CUDA driver API, both loaded at run time by `dl.rs` (torch's NVRTC and the
//! driver's libcuda by full path first; [`libraries`] says which files): nothing CUDA at build or
//! link time, so one build works with CPU-only torch, and on machines without a driver
//! [`available`] is simply `false`.
//!
//! The switch: the libtorch path stays the default on CUDA. With [`enabled`]
//! (`IC_NETWORKS_CUDA_KERNELS=1` or [`set_enabled`]) the op's `Backend::Cuda` (`src/cuda/mod.rs`)
//! runs the steps in `layer.rs` on these kernels. Every op returns `Ok(None)` when it does not
//! apply (CPU tensors, other dtypes, sizes beyond the kernels' int32 indexing, a halo too large
//! for shared memory), and the caller keeps its libtorch path.
//!
//! Composition (what the caller does around these ops, mirrored by tests/cuda_emu/host.py):
//!
//! * stride 1: `q = conv1x1(x, W')`; [`box_forward`]`(y, q)` -> `out` (in `y`), `relu_z`;
//!   backward: [`box_backward`] -> `gy`, `G = boxsum^T(gz)`, db1, db2, d alpha; then
//!   `dx = conv_input_grad(gy) - W'^T G` (a GEMM with beta = 1), `dW = conv_weight_grad(gy)`,
//!   `dW' = -G x^T`;
//! * other strides: `S =` [`boxsum`]`(x)`, `P = conv1x1(S, W')`, [`collision_forward`]`(y, P)`;
//!   backward: [`collision_backward`] -> `gy`, `gz`, sums; `dS = W'^T gz`, `dW' = -gz S^T`
//!   (S recomputed), `dx -= boxsum^T(dS)` by [`boxsum_t_sub_`].
//!
//! Every op takes `stream`: the raw `cudaStream_t` the caller's framework runs on (for the op,
//! `aten::current_cuda_stream`; in Python `torch.cuda.current_stream().cuda_stream`), borrowed.
//! The tensors allocated here come from PyTorch's caching allocator on its current stream, so
//! that must be the same stream.
//!
//! The rooms: `switch.rs` (availability, the switch, the call count, warm-up); `kernels.rs` (one
//! wrapper per kernel); `layer.rs` (the op's steps composed from them and libtorch); `launch.rs`
//! (driver context, modules, launches); `params.rs` (the kernels' parameter structs and launch
//! plan); `nvrtc.rs` and `dl.rs` (run-time compilation and library loading); `emulation.rs` (the
//! test hook, in development builds only).
pub mod dl;
pub mod emulation;
mod kernels;
pub mod launch;
pub mod layer;
pub mod nvrtc;
pub mod params;
mod switch;

pub use kernels::{
    box_backward, box_forward, boxsum, boxsum_t_sub_, collision_backward, collision_forward, FusedGrads,
};
pub(crate) use switch::record_call;
pub use switch::{available, calls, enabled, libraries, set_enabled, unavailable_reason, warm_up, WarmUp};

/// A borrowed `cudaStream_t` / `CUstream` handle (0: the legacy default stream).
pub type RawStream = usize;
