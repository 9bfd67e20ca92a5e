//! The box sum as a device-independent entry point (the Python binding `_core.boxsum` and the
//! tests call it): `x` (N, C, H, W) -> `S` (N, C, Ho, Wo) (sizes: `ConvGeometry::out_size`).
//!
//! Dense CPU float32/float64 tensors (NCHW or channels_last) go to the Rust kernel
//! (`cpu/boxsum.rs`) while the CPU kernels are on; everything else to libtorch ops
//! (`libtorch/boxsum.rs`). The IC convolution itself does not come through here: its backend,
//! chosen once per call in `ic_conv.rs`, calls one of the two directly.
use crate::cpu;
use crate::error::Result;
use crate::geometry::ConvGeometry;
use crate::libtorch;
use tch::Tensor;

/// `x` (N, C, H, W) -> `S` (N, C, Ho, Wo). Geometry must already be validated.
pub fn boxsum(x: &Tensor, kh: i64, kw: i64, g: &ConvGeometry) -> Result<Tensor> {
    match cpu::kernel_plan(&[x]) {
        Some((kind, lay)) => cpu::boxsum::forward(x, kh, kw, g, (kind, lay.order()), cpu::dense::empty),
        None => libtorch::boxsum::forward(x, kh, kw, g),
    }
}
