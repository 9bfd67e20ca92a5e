//! The adjusting 1x1 convolution `P = conv1x1(S, W') + bias` with libtorch's convolution (cuDNN,
//! oneDNN, ...) on any device and dtype, and its backward by `at::convolution_backward`.
//!
//! `S` (N, Cin, Ho, Wo), `W'` (Cout, Cin/g, 1, 1) -> `P` (N, Cout, Ho, Wo).
use crate::aten::convolution_backward;
use crate::error::Result;
use crate::geometry::ConvGeometry;
use tch::Tensor;

/// `P = conv1x1(S, W') + bias` (the convolution adds the bias itself).
pub fn forward(s: &Tensor, w: &Tensor, groups: i64, bias: Option<&Tensor>) -> Result<Tensor> {
    let g = ConvGeometry::pointwise(groups);
    Ok(s.f_conv2d(w, bias, g.stride, g.padding, g.dilation, groups)?)
}

/// Gradients `(dS, dW')` of [`forward`] for the output gradient `gp`; each only when asked for.
pub fn backward(
    gp: &Tensor,
    s: &Tensor,
    w: &Tensor,
    groups: i64,
    need_s: bool,
    need_w: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    convolution_backward(gp, s, w, &ConvGeometry::pointwise(groups), need_s, need_w)
}
