//! The libtorch implementation of the device-specific part of the IC convolution: libtorch ops
//! only, so it runs on every device and float dtype (CPU, CUDA; float16/bfloat16 too) and any
//! memory layout. `ic_conv.rs` picks it as `Backend::Libtorch` (CPU tensors the Rust kernels do
//! not take) and, through `cuda/`, as `Backend::Cuda`.
//!
//! * `boxsum.rs`: the box sum as a depthwise all-ones convolution, and its adjoint;
//! * `pointwise.rs`: the 1x1 adjust convolution and its backward;
//! * `collision.rs`: the elementwise collision, forward and backward.
//!
//! Imports the leaves, `aten.rs` and its own files; nothing of `cpu/`, `cuda/` or `ic_conv.rs`.
pub mod boxsum;
pub mod collision;
pub mod pointwise;

use crate::error::{Error, Result};
use crate::geometry::{ConvGeometry, IcDims};
use crate::layout::{layout_of, Layout};
use crate::types::{AdjustGrad, AdjustParts, IcArgs, NeedsGrad};
use tch::Tensor;

pub use collision::backward as collision_backward;

fn is_nhwc(t: &Tensor) -> bool {
    matches!(layout_of(t), Some(Layout::Nhwc { .. }))
}

/// The forward after `y = conv2d(x, W) + b2` (N, Cout, Ho, Wo): `P = conv1x1(boxsum(x), W')` with
/// `-shift` as the 1x1's bias (saves a pass over Z), then the collision. Returns `(out, relu_z)`.
pub fn forward(y: Tensor, a: &IcArgs, shift: &Tensor, d: &IcDims, g: &ConvGeometry) -> Result<(Tensor, Tensor)> {
    let s = boxsum::forward(a.x, d.kh, d.kw, g)?;
    let p = pointwise::forward(&s, a.adjust_weight, g.groups, Some(&shift.f_neg()?))?;
    drop(s);
    collision::forward(y, p, a.alpha)
}

/// Gradients of `P = conv1x1(boxsum(x), W')` for `dP = gz` (N, Cout, Ho, Wo), `adjust` from
/// [`collision_backward`] (so without alpha: the parts carry `scale`). `dx` is the main path's
/// input gradient, passed through.
///
/// At stride 1 the box sum and the 1x1 commute, so both gradients come from one transposed box sum
/// `G = boxsum^T(gz)` on x's grid: `dx = W'^T G`, `dW' = G x^T` (one box-sum pass instead of two).
/// With a stride, G would be s^2 times larger than S, so the strided path recomputes
/// `S = boxsum(x)`.
pub fn adjust_backward(
    adjust: AdjustGrad,
    dx: Option<Tensor>,
    a: &IcArgs,
    d: &IcDims,
    g: &ConvGeometry,
    needs: &NeedsGrad,
) -> Result<AdjustParts> {
    let (x, adjust_weight) = (a.x, a.adjust_weight);
    let AdjustGrad::Gz { gz, scale } = adjust else {
        return Err(Error::Runtime("internal: the libtorch backward got a box-sum gradient on the input grid".into()));
    };
    let (need_x, need_w) = (needs.x, needs.adjust_weight);
    if g.unit_stride() {
        let gq = boxsum::backward(&gz, d.input_grid_out(), d.kh, d.kw, g, is_nhwc(&gz))?;
        let (dxb, dwa) = pointwise::backward(&gq, x, adjust_weight, g.groups, need_x, need_w)?;
        return Ok(AdjustParts { dx, dxb, dwa, scale });
    }
    let s = boxsum::forward(x, d.kh, d.kw, g)?;
    let (ds, dwa) = pointwise::backward(&gz, &s, adjust_weight, g.groups, need_x, need_w)?;
    drop(s);
    let dxb = ds.map(|ds| boxsum::backward(&ds, d.input_shape(), d.kh, d.kw, g, is_nhwc(&ds))).transpose()?;
    Ok(AdjustParts { dx, dxb, dwa, scale })
}
