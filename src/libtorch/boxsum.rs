//! The box sum with libtorch ops, on any device and dtype: a depthwise convolution with an
//! all-ones kernel, and for the adjoint that convolution's input gradient.
//!
//! `x` (N, C, H, W) -> `S` (N, C, Ho, Wo). (Not `avg_pool2d` with `divisor_override=1`: on an H200
//! its backward took 2.0 ms against the depthwise conv's 0.9 ms at 64@56, N=256, and for
//! channels_last input it returns wrong values.)
use crate::aten::convolution_backward;
use crate::error::{Error, Result};
use crate::geometry::ConvGeometry;
use crate::layout::{empty, Order};
use tch::Tensor;

/// The depthwise all-ones kernel (C, 1, kh, kw) of the box sum over `x`'s channels.
fn ones_kernel(x: &Tensor, kh: i64, kw: i64) -> Result<Tensor> {
    Ok(Tensor::f_ones([x.size()[1], 1, kh, kw], (x.kind(), x.device()))?)
}

/// `x` (N, C, H, W) -> `S` (N, C, Ho, Wo).
pub fn forward(x: &Tensor, kh: i64, kw: i64, g: &ConvGeometry) -> Result<Tensor> {
    let ones = ones_kernel(x, kh, kw)?;
    Ok(x.f_conv2d(&ones, None::<Tensor>, g.stride, g.padding, g.dilation, x.size()[1])?)
}

/// Adjoint of [`forward`]: `grad` (N, C, Ho, Wo) -> (N, C, H, W) = `in_shape`; channels_last when
/// `nhwc`.
pub fn backward(grad: &Tensor, in_shape: [i64; 4], kh: i64, kw: i64, g: &ConvGeometry, nhwc: bool) -> Result<Tensor> {
    // libtorch reads only the input's shape and memory format: an uninitialised stand-in will do.
    let order = if nhwc { Order::Nhwc } else { Order::Nchw };
    let like = empty(in_shape, (grad.kind(), grad.device()), order)?;
    let c = in_shape[1];
    let ones = ones_kernel(&like, kh, kw)?;
    let depthwise = ConvGeometry { groups: c, ..*g };
    let (gi, _) = convolution_backward(grad, &like, &ones, &depthwise, true, false)?;
    gi.ok_or_else(|| Error::Runtime("convolution_backward returned no input gradient".into()))
}
