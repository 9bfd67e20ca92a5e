//! The libtorch implementation of the device-specific part of the IC convolution: libtorch ops
//! only, so it runs on every device and float dtype (CPU, CUDA; float16/bfloat16 too) and any
//! memory layout. `ic_conv.rs` picks it ([`Libtorch`]) for the calls no other backend takes; the
//! CUDA backend (`cuda/`) runs it for the steps its fused kernels decline.
//!
//! * `boxsum.rs`: the box sum as a depthwise all-ones convolution, and its adjoint;
//! * `pointwise.rs`: the 1x1 adjust convolution and its backward;
//! * `collision.rs`: the elementwise collision, forward and backward.
//!
//! Imports the leaves, `aten.rs` and its own files; nothing of `cpu/`, `cuda/` or `ic_conv.rs`.
pub mod boxsum;
pub mod collision;
pub mod pointwise;

use crate::aten::{in_range, range, stage};
use crate::backend::IcBackend;
use crate::error::{Error, Result};
use crate::geometry::{ConvGeometry, IcDims};
use crate::layout::is_nhwc;
use crate::types::{AdjustGrad, AdjustGrads, AdjustParts, CollisionGrads, IcArgs, NeedsGrad};
use tch::Tensor;

/// The libtorch backend (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Libtorch;

impl IcBackend for Libtorch {
    fn name(&self) -> &'static str {
        "libtorch"
    }

    /// `P = conv1x1(boxsum(x), W')` with `-shift` as the 1x1's bias (saves a pass over Z), then the
    /// collision; `relu_z` always.
    fn forward(
        &self,
        y: Tensor,
        a: &IcArgs,
        shift: &Tensor,
        d: &IcDims,
        g: &ConvGeometry,
        _keep_relu_z: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let s = in_range(stage::BOXSUM, || boxsum::forward(a.x, d.kh, d.kw, g))?;
        let neg_shift = shift.f_neg()?;
        let p = in_range(stage::CONV1X1, || pointwise::forward(&s, a.adjust_weight, g.groups, Some(&neg_shift)))?;
        drop(s);
        let _r = range(stage::COLLISION);
        let (out, relu_z) = collision::forward(y, p, a.alpha)?;
        Ok((out, Some(relu_z)))
    }

    /// `gz` comes back without its factor alpha ([`AdjustGrad::GzOverAlpha`]).
    fn collision_backward(
        &self,
        grad: &Tensor,
        relu_z: &Tensor,
        alpha: &Tensor,
        needs: &NeedsGrad,
        _d: &IcDims,
        _g: &ConvGeometry,
    ) -> Result<CollisionGrads> {
        collision::backward(grad, relu_z, alpha, needs)
    }

    /// Gradients of `P = conv1x1(boxsum(x), W')` for `dP = alpha * gz`.
    ///
    /// At stride 1 the box sum and the 1x1 commute, so both gradients come from one transposed box
    /// sum `G = boxsum^T(gz)` on x's grid: `dx = W'^T G`, `dW' = G x^T` (one box-sum pass instead of
    /// two). With a stride, G would be s^2 times larger than S, so the strided path recomputes
    /// `S = boxsum(x)`. The factor alpha is applied last, on dW' and on the subtraction from dx.
    fn adjust_backward(
        &self,
        adjust: AdjustGrad,
        dx: Option<Tensor>,
        a: &IcArgs,
        d: &IcDims,
        g: &ConvGeometry,
        needs: &NeedsGrad,
    ) -> Result<AdjustGrads> {
        let AdjustGrad::GzOverAlpha(gz) = adjust else {
            return Err(Error::Runtime("internal: the libtorch backward got another backend's P-path gradient".into()));
        };
        let scale = collision::alpha_as(a.alpha, gz.kind())?;
        Ok(adjust_parts(&gz, dx, a, d, g, needs)?.finish(Some(&scale))?)
    }
}

/// The P path's gradients for `dP = gz` (N, Cout, Ho, Wo) on the output grid, before sign and
/// scale; `dx` passed through. Also what the CUDA backend runs for a `gz` with alpha included.
pub fn adjust_parts(
    gz: &Tensor,
    dx: Option<Tensor>,
    a: &IcArgs,
    d: &IcDims,
    g: &ConvGeometry,
    needs: &NeedsGrad,
) -> Result<AdjustParts> {
    let (x, adjust_weight) = (a.x, a.adjust_weight);
    let (need_x, need_w) = (needs.x, needs.adjust_weight);
    if g.unit_stride() {
        let gq = boxsum::backward(gz, d.input_grid_out(), d.kh, d.kw, g, is_nhwc(gz))?;
        let (dxb, dwa) = pointwise::backward(&gq, x, adjust_weight, g.groups, need_x, need_w)?;
        return Ok(AdjustParts { dx, dxb, dwa });
    }
    let s = boxsum::forward(x, d.kh, d.kw, g)?;
    let (ds, dwa) = pointwise::backward(gz, &s, adjust_weight, g.groups, need_x, need_w)?;
    drop(s);
    let dxb = ds.map(|ds| boxsum::backward(&ds, d.input_shape(), d.kh, d.kw, g, is_nhwc(&ds))).transpose()?;
    Ok(AdjustParts { dx, dxb, dwa })
}
