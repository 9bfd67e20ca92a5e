//! The box sum as a device-independent entry point (the Python binding `_core.boxsum` and the
//! tests call it): `x` (N, C, H, W) -> `S` (N, C, Ho, Wo), `Ho = (H + 2p - d(kh-1) - 1) / s + 1`,
//! and its adjoint.
//!
//! Dense CPU float32/float64 tensors (NCHW or channels_last) go to the Rust kernel
//! (`cpu/boxsum.rs`) while the CPU kernels are on; everything else to libtorch ops
//! (`libtorch/boxsum.rs`). The IC convolution itself does not come through here: its backend,
//! chosen once per call in `ic_conv.rs`, calls one of the two directly.
use crate::cpu;
use crate::error::{Error, Result};
use crate::geometry::ConvGeometry;
use crate::libtorch;
use tch::Tensor;

/// `x` (N, C, H, W) -> `S` (N, C, Ho, Wo). Geometry must already be validated.
pub fn boxsum(x: &Tensor, kh: i64, kw: i64, g: &ConvGeometry) -> Result<Tensor> {
    match cpu::kernel_plan(&[x]) {
        Some((kind, lay)) => cpu::boxsum::forward(x, kh, kw, g, kind, lay.order()),
        None => libtorch::boxsum::forward(x, kh, kw, g),
    }
}

/// Adjoint of [`boxsum`]: `grad` (N, C, Ho, Wo) -> (N, C, H, W), the gradient on an input of shape
/// `in_shape`, laid out like `grad`.
pub fn boxsum_backward(grad: &Tensor, in_shape: &[i64], kh: i64, kw: i64, g: &ConvGeometry) -> Result<Tensor> {
    let shape: [i64; 4] = in_shape
        .try_into()
        .map_err(|_| Error::Runtime(format!("boxsum_backward: expected a 4-D input shape, got {in_shape:?}")))?;
    match cpu::kernel_plan(&[grad]) {
        Some((kind, lay)) => cpu::boxsum::backward(grad, shape, kh, kw, g, kind, lay.order()),
        None => {
            let nhwc = matches!(cpu::layout_of(grad), Some(cpu::Layout::Nhwc { .. }));
            libtorch::boxsum::backward(grad, shape, kh, kw, g, nhwc)
        }
    }
}
