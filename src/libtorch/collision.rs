//! The collision of the IC layer with libtorch ops, on any device and dtype: the elementwise work
//! after the two convolutions, in a few passes each way.
//!
//! Forward `relu_z = relu(y - p)`, `out = y + alpha * relu_z` (the shift b1 - b2 already rides in
//! `p` as the 1x1 conv's bias). Backward `gz = grad * [relu_z > 0]` (alpha left to the ops
//! downstream), `gy = grad + alpha * gz`, and the reductions.
use crate::error::Result;
use crate::types::{AdjustGrad, CollisionGrads, NeedsGrad};
use tch::{Kind, Tensor};

/// `y`, `p`: (N, C, Ho, Wo), with `-shift` already in `p`. Returns `(out, relu_z)`; consumes `p`
/// (the buffer of `relu_z`: three passes, `z = y - p`, `relu_`, `addcmul`).
pub fn forward(y: Tensor, p: Tensor, alpha: &Tensor) -> Result<(Tensor, Tensor)> {
    let mut z = p;
    let _ = y.f_sub_out(&z, &z)?;
    let _ = z.f_relu_()?;
    let alpha = alpha_as(alpha, y.kind())?;
    let out = y.f_addcmul(&z, &alpha)?;
    Ok((out, z))
}

/// alpha as a 0-d tensor of `kind`: the factor the collision and the P-path backward apply.
pub fn alpha_as(alpha: &Tensor, kind: Kind) -> Result<Tensor> {
    Ok(alpha.f_to_kind(kind)?.f_reshape([] as [i64; 0])?)
}

/// Accumulation dtype of d alpha: float32 for half types, else the input's own.
fn acc_kind(k: Kind) -> Kind {
    match k {
        Kind::Half | Kind::BFloat16 => Kind::Float,
        other => other,
    }
}

/// Backward of the collision for `grad`, `relu_z` (N, C, Ho, Wo): `gy` when x or W need it,
/// `gz` without its factor alpha ([`AdjustGrad::GzOverAlpha`]), and the
/// reductions `needs` asks for.
pub fn backward(grad: &Tensor, relu_z: &Tensor, alpha: &Tensor, needs: &NeedsGrad) -> Result<CollisionGrads> {
    let alpha_k = alpha_as(alpha, grad.kind())?;
    let gz = relu_z.f_threshold_backward(grad, 0.0)?;
    let dalpha = if needs.alpha { Some(grad.f_mul(relu_z)?.f_sum(acc_kind(grad.kind()))?) } else { None };
    let sum_nhw = |t: &Tensor| t.f_sum_dim_intlist([0i64, 2, 3].as_slice(), false, None::<Kind>);
    let db1 = if needs.adjust_bias { Some(sum_nhw(&gz)?.f_mul(&alpha_k)?) } else { None };
    let db2 = if needs.bias { Some(sum_nhw(grad)?) } else { None };
    let gy = if needs.main_path() { Some(grad.f_addcmul(&gz, &alpha_k)?) } else { None };
    Ok(CollisionGrads { gy, adjust: AdjustGrad::GzOverAlpha(gz), dalpha, db1, db2 })
}
