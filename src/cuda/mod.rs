//! The CUDA backend of the IC convolution: `Backend::Cuda` in `ic_conv.rs` runs these three
//! functions for CUDA tensors.
//!
//! Today the CUDA route is the libtorch implementation (`libtorch/`): cuDNN for the 1x1 and the
//! depthwise box-sum convolutions, libtorch's CUDA kernels for the elementwise collision (three
//! passes forward, a few backward). The re-exports below are that route, not placeholders: every
//! CUDA call runs them.
//!
//! This directory is where the fused CUDA kernels go, the counterparts of `cpu/collision.rs` and
//! `cpu/collision_box.rs` (one pass over the output forward and backward, the box sum inside the
//! collision at stride 1), written in CUDA C, compiled at run time with NVRTC and launched
//! through `cudarc` on libtorch's current stream, with one `.rs` file per kernel family as in
//! `cpu/`. A kernel replaces its re-export here; `ic_conv.rs` does not change.
//!
//! Imports only `libtorch/` (and, with the kernels, the leaves).
pub use crate::libtorch::{adjust_backward, collision_backward, forward};

/// The fused kernels (not yet routed from the op: reached through the `_core.cuda_fused_*`
/// bindings until validated on a GPU; see docs/cuda-kernels.md).
pub mod fused;
