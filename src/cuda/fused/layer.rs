//! The device-specific steps of the IC convolution on the fused kernels: what `Backend::Cuda`
//! (`src/cuda/mod.rs`) runs when the switch is on. The same three steps as every backend
//! (`ic_conv.rs` does the main convolution, its gradients and the signs):
//!
//! * [`forward`]: after `y = conv(x, W) + b2`, the P path and the collision, `y` overwritten by
//!   `out`;
//! * [`collision_backward`]: `gy`, the gradient into the P path, db1, db2, d alpha;
//! * [`adjust_on_input`] / [`adjust_strided`]: the P path's gradients (dx, dW').
//!
//! `forward` and `collision_backward` return `Ok(None)` when the kernels do not apply (dtype,
//! int32 indexing, halo too large for shared memory) before they have written anything, and the
//! caller takes the libtorch path; the P-path steps take what those left (`G`, or `gz` and the
//! recomputed `S`) and never decline.
//! The convolutions stay with cuDNN/cuBLAS. At stride 1 the 1x1 input gradient is subtracted by
//! one GEMM that accumulates into the conv's dx (beta = 1), with no temporary.
use super::{
    box_backward, box_forward, boxsum, boxsum_t_sub_, collision_backward as fused_collision_backward,
    collision_forward, RawStream,
};
use crate::aten::convolution_backward;
use crate::error::Result;
use crate::geometry::{ConvGeometry, IcDims};
use crate::layout::is_nhwc;
use crate::types::{AdjustGrad, AdjustParts, CollisionGrads, IcArgs, NeedsGrad};
use tch::Tensor;

/// Forward after `y = conv(x, W) + b2` (N, Cout, Ho, Wo), `shift = b1 - b2`: `(out, relu_z)`
/// (`relu_z` only with `keep_relu_z`), `out` written over `y`; or `None`.
///
/// Stride 1: `Q = conv1x1(x, W')` on x's grid, then one kernel does the box sum of `Q` (box and
/// 1x1 commute) and the collision. Other strides: `S = boxsum(x)`, `P = conv1x1(S, W')`, then the
/// collision kernel.
pub fn forward(
    y: &Tensor,
    a: &IcArgs,
    shift: &Tensor,
    d: &IcDims,
    g: &ConvGeometry,
    keep_relu_z: bool,
    stream: RawStream,
) -> Result<Option<(Tensor, Option<Tensor>)>> {
    if g.unit_stride() {
        let q = a.x.f_conv2d(a.adjust_weight, None::<&Tensor>, [1, 1], [0, 0], [1, 1], g.groups)?;
        return box_forward(y, &q, shift, a.alpha, [d.kh, d.kw], g.padding, g.dilation, keep_relu_z, stream);
    }
    let Some(s) = boxsum(a.x, [d.kh, d.kw], g, stream)? else { return Ok(None) };
    let p = s.f_conv2d(a.adjust_weight, None::<&Tensor>, [1, 1], [0, 0], [1, 1], g.groups)?;
    drop(s);
    collision_forward(y, &p, shift, a.alpha, keep_relu_z, stream)
}

/// The collision backward for `grad`, `relu_z` (N, Cout, Ho, Wo), or `None`. At stride 1 with the
/// P path needed, the transposed box sum is fused in: the gradient into the P path comes back as
/// `G = boxsum^T(gz)` on x's grid ([`AdjustGrad::OnInput`], for [`adjust_on_input`]); otherwise as
/// `gz` itself ([`AdjustGrad::Gz`], for [`adjust_strided`]). The sums are
/// deterministic (no atomics); d alpha is summed only when alpha needs a gradient.
pub fn collision_backward(
    grad: &Tensor,
    relu_z: &Tensor,
    alpha: &Tensor,
    needs: &NeedsGrad,
    d: &IcDims,
    g: &ConvGeometry,
    stream: RawStream,
) -> Result<Option<CollisionGrads>> {
    let need_gy = needs.main_path();
    let on_input = g.unit_stride() && needs.adjust_path();
    let fg = if on_input {
        box_backward(
            grad,
            relu_z,
            alpha,
            [d.h, d.w],
            [d.kh, d.kw],
            g.padding,
            g.dilation,
            need_gy,
            needs.alpha,
            stream,
        )?
    } else {
        fused_collision_backward(grad, relu_z, alpha, need_gy, needs.alpha, stream)?
    };
    let Some(fg) = fg else { return Ok(None) };
    let kind = grad.kind();
    Ok(Some(CollisionGrads {
        gy: fg.gy,
        adjust: if on_input { AdjustGrad::OnInput(fg.g) } else { AdjustGrad::Gz(fg.g) },
        dalpha: fg.dalpha,
        db1: if needs.adjust_bias { Some(fg.db1.f_to_kind(kind)?) } else { None },
        db2: if needs.bias { Some(fg.db2.f_to_kind(kind)?) } else { None },
    }))
}

/// The P path's gradients from `G = boxsum^T(gz)` on x's grid (stride 1): `dx -= W'^T G` (one
/// GEMM into `dx` where the layouts allow, else returned as `dxb`) and `dW' = G x^T`, before the
/// sign (`ic_conv.rs` applies it). Plain libtorch calls: never declines.
pub fn adjust_on_input(
    gq: &Tensor,
    dx: Option<Tensor>,
    a: &IcArgs,
    g: &ConvGeometry,
    needs: &NeedsGrad,
) -> Result<AdjustParts> {
    let mut dx = dx;
    let subtracted = match dx.as_mut() {
        Some(d) if needs.x => sub_adjoint_gemm(d, gq, a.adjust_weight, g.groups)?,
        _ => false,
    };
    let need_dxb = needs.x && !subtracted;
    let (dxb, dwa) = if need_dxb || needs.adjust_weight {
        convolution_backward(
            gq,
            a.x,
            a.adjust_weight,
            &ConvGeometry::pointwise(g.groups),
            need_dxb,
            needs.adjust_weight,
        )?
    } else {
        (None, None)
    };
    Ok(AdjustParts { dx, dxb, dwa })
}

/// The P path's gradients from `gz` (N, Cout, Ho, Wo) on the output grid, alpha included (any
/// stride), and `s = boxsum(x)` recomputed by the caller (`boxsum(a.x, [d.kh, d.kw], g, stream)`,
/// which may decline): `dS = W'^T gz`, `dW' = gz S^T`, and `dx -= boxsum^T(dS)` in place, before
/// the sign of dW'.
#[allow(clippy::too_many_arguments)]
pub fn adjust_strided(
    gz: &Tensor,
    s: Tensor,
    dx: Option<Tensor>,
    a: &IcArgs,
    d: &IcDims,
    g: &ConvGeometry,
    needs: &NeedsGrad,
    stream: RawStream,
) -> Result<AdjustParts> {
    let (ds, dwa) = convolution_backward(
        gz,
        &s,
        a.adjust_weight,
        &ConvGeometry::pointwise(g.groups),
        needs.x,
        needs.adjust_weight,
    )?;
    drop(s);
    let mut dx = dx;
    let mut dxb = None;
    if let (Some(dxm), Some(ds)) = (dx.as_mut(), ds) {
        if !boxsum_t_sub_(dxm, &ds, [d.kh, d.kw], g, stream)? {
            let dense = dxm.f_contiguous()?;
            if boxsum_t_sub_(&dense, &ds, [d.kh, d.kw], g, stream)? {
                *dxm = dense;
            } else {
                dxb = Some(crate::libtorch::boxsum::backward(&ds, d.input_shape(), d.kh, d.kw, g, is_nhwc(&ds))?);
            }
        }
    }
    Ok(AdjustParts { dx, dxb, dwa })
}

/// `dx -= W'^T G` (1x1, groups 1) as one GEMM accumulating into `dx`, when `dx` and `g` share a
/// dense layout; `false` if not (the caller subtracts a separately computed product).
fn sub_adjoint_gemm(dx: &Tensor, g: &Tensor, adjust_weight: &Tensor, groups: i64) -> Result<bool> {
    if groups != 1 || dx.kind() != g.kind() || adjust_weight.kind() != g.kind() {
        return Ok(false);
    }
    let (xs, gs) = (dx.size(), g.size());
    let (n, cin, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    let cout = gs[1];
    let wneg = adjust_weight.f_reshape([cout, cin])?.f_neg()?;
    let nhwc = |t: &Tensor, c: i64| {
        let s = t.stride();
        s[1] == 1 && s[3] == c && s[2] == w * c && s[0] == h * w * c
    };
    if dx.is_contiguous() && g.is_contiguous() {
        // dx[n] (Cin x HW) += (-W'^T) (Cin x Cout) @ G[n] (Cout x HW)
        let mut dx3 = dx.f_view([n, cin, h * w])?;
        let g3 = g.f_view([n, cout, h * w])?;
        let wt = wneg.f_tr()?.f_unsqueeze(0)?.f_expand([n, cin, cout], false)?;
        let _ = dx3.f_baddbmm_(&wt, &g3)?;
        return Ok(true);
    }
    if nhwc(dx, cin) && nhwc(g, cout) {
        // dx (N*HW x Cin) += G (N*HW x Cout) @ (-W') (Cout x Cin)
        let mut dx2 = dx.f_permute([0, 2, 3, 1])?.f_view([n * h * w, cin])?;
        let g2 = g.f_permute([0, 2, 3, 1])?.f_view([n * h * w, cout])?;
        let _ = dx2.f_addmm_(&g2, &wneg)?;
        return Ok(true);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The accumulating GEMM equals dx - conv1x1^T(G, W') in NCHW and NHWC (CPU: pure tch code).
    #[test]
    fn adjoint_gemm_matches_the_conv_adjoint() {
        tch::manual_seed(0);
        for nhwc in [false, true] {
            let opts = (Kind::Double, Device::Cpu);
            let (n, cin, cout, h, w) = (2, 5, 3, 4, 6);
            let mut dx = Tensor::randn([n, cin, h, w], opts);
            let mut g = Tensor::randn([n, cout, h, w], opts);
            if nhwc {
                dx = dx.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                g = g.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
            }
            let wa = Tensor::randn([cout, cin, 1, 1], opts);
            let x = Tensor::zeros([n, cin, h, w], opts);
            let (adj, _) = convolution_backward(&g, &x, &wa, &ConvGeometry::pointwise(1), true, false).unwrap();
            let want = &dx - adj.unwrap();
            assert!(sub_adjoint_gemm(&dx, &g, &wa, 1).unwrap());
            let err = (&dx - &want).abs().max().double_value(&[]);
            assert!(err < 1e-12, "nhwc={nhwc}: {err}");
        }
        // groups, mixed layouts or mixed dtypes: declined
        let opts = (Kind::Float, Device::Cpu);
        let dx = Tensor::zeros([1, 4, 3, 3], opts);
        let g = Tensor::zeros([1, 4, 3, 3], opts);
        assert!(!sub_adjoint_gemm(&dx, &g, &Tensor::zeros([4, 2, 1, 1], opts), 2).unwrap());
        let g_nhwc = g.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        assert!(!sub_adjoint_gemm(&dx, &g_nhwc, &Tensor::zeros([4, 4, 1, 1], opts), 1).unwrap());
        assert!(!sub_adjoint_gemm(&dx, &g, &Tensor::zeros([4, 4, 1, 1], (Kind::Double, Device::Cpu)), 1).unwrap());
    }
}
