//! The whole IC layer on CUDA with the fused kernels: what the op calls behind the switch.
//!
//! `layer_forward` / `layer_backward` take the op's arguments (already validated by the op's
//! input checks) and return `Ok(None)` when the fused path does not apply, so the caller keeps
//! its libtorch path. The convolutions stay with cuDNN/cuBLAS. At stride 1 the 1x1 input gradient
//! is subtracted by one GEMM that accumulates into the conv's dx (beta = 1), with no temporary.
use super::{box_backward, box_forward, boxsum, boxsum_t_, collision_backward, collision_forward, Box2, BoxsumMode, RawStream};
use crate::aten::convolution_backward;
use crate::error::Result;
use tch::{Device, Tensor};

/// Geometry of the main convolution (the box sum shares stride, padding and dilation).
pub use crate::geometry::ConvGeometry as Geometry;

fn on_cuda(x: &Tensor) -> bool {
    (matches!(x.device(), Device::Cuda(_)) || (x.device() == Device::Cpu && super::emulation())) && super::available()
}

/// Forward: `(out, relu_z)` (`relu_z` only with `keep_relu_z`), or `None`.
#[allow(clippy::too_many_arguments)]
pub fn layer_forward(
    x: &Tensor,
    weight: &Tensor,
    adjust_weight: &Tensor,
    adjust_bias: &Tensor,
    alpha: &Tensor,
    bias: Option<&Tensor>,
    g: &Geometry,
    keep_relu_z: bool,
    stream: RawStream,
) -> Result<Option<(Tensor, Option<Tensor>)>> {
    if !on_cuda(x) || x.dim() != 4 || weight.dim() != 4 {
        return Ok(None);
    }
    tch::no_grad(|| {
        let k = [weight.size()[2], weight.size()[3]];
        let y = x.f_conv2d(weight, bias, g.stride, g.padding, g.dilation, g.groups)?;
        if y.numel() == 0 {
            let rz = if keep_relu_z { Some(y.f_zeros_like()?) } else { None };
            return Ok(Some((y, rz)));
        }
        let shift = match bias {
            Some(b) => adjust_bias.f_sub(b)?,
            None => adjust_bias.shallow_clone(),
        };
        if g.stride == [1, 1] {
            let q = x.f_conv2d(adjust_weight, None::<&Tensor>, [1, 1], [0, 0], [1, 1], g.groups)?;
            return box_forward(&y, &q, &shift, alpha, k, g.padding, g.dilation, keep_relu_z, stream);
        }
        let b = Box2 { k, stride: g.stride, padding: g.padding, dilation: g.dilation };
        let Some(s) = boxsum(x, &b, stream)? else { return Ok(None) };
        let p = s.f_conv2d(adjust_weight, None::<&Tensor>, [1, 1], [0, 0], [1, 1], g.groups)?;
        drop(s);
        collision_forward(&y, &p, &shift, alpha, keep_relu_z, stream)
    })
}

/// Which gradients are wanted, in the op's order: x, weight, adjust_weight, adjust_bias, alpha, bias.
pub type Needs = [bool; 6];
/// The gradients in that order.
pub type Grads = [Option<Tensor>; 6];

/// `dx -= W'^T G` (1x1, groups 1) as one GEMM accumulating into `dx`, when `dx` and `g` share a
/// dense layout; `false` if not (the caller subtracts a separately computed product).
fn sub_adjoint_gemm(dx: &Tensor, g: &Tensor, adjust_weight: &Tensor, groups: i64) -> Result<bool> {
    if groups != 1 {
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

/// Backward: the gradients `needs` asks for, or `None`.
#[allow(clippy::too_many_arguments)]
pub fn layer_backward(
    grad: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    adjust_weight: &Tensor,
    alpha: &Tensor,
    relu_z: &Tensor,
    g: &Geometry,
    needs: Needs,
    stream: RawStream,
) -> Result<Option<Grads>> {
    if !on_cuda(x) || x.dim() != 4 || weight.dim() != 4 {
        return Ok(None);
    }
    if x.size()[0] == 0 {
        return Ok(None); // the op's zero-batch path
    }
    let [nx, nw, nwa, nb1, na, nb2] = needs;
    tch::no_grad(|| {
        let k = [weight.size()[2], weight.size()[3]];
        let xs = x.size();
        let need_gy = nx || nw;
        let one = Geometry::pointwise(g.groups);
        let fg = if g.stride == [1, 1] {
            box_backward(grad, relu_z, alpha, [xs[2], xs[3]], k, g.padding, g.dilation, need_gy, stream)?
        } else {
            collision_backward(grad, relu_z, alpha, need_gy, stream)?
        };
        let Some(fg) = fg else { return Ok(None) };
        let (mut dx, dw) = match &fg.gy {
            Some(gy) => convolution_backward(gy, x, weight, g, nx, nw)?,
            None => (None, None),
        };
        let mut dwa = None;
        if g.stride == [1, 1] {
            // G = boxsum^T(gz) on x's grid: dx -= W'^T G (one GEMM into dx where the layouts
            // allow), dW' = -G x^T; whatever is left takes one convolution_backward call
            let need_dxb = match dx.as_mut() {
                Some(d) => !sub_adjoint_gemm(d, &fg.g, adjust_weight, g.groups)?,
                None => false,
            };
            if need_dxb || nwa {
                let (dxb, w) = convolution_backward(&fg.g, x, adjust_weight, &one, need_dxb, nwa)?;
                if let (Some(d), Some(b)) = (dx.as_mut(), dxb) {
                    let _ = d.f_sub_(&b)?;
                }
                dwa = w.map(|t| t.f_neg()).transpose()?;
            }
        } else if nx || nwa {
            // gz on the output grid: dS = W'^T gz, dW' = -gz S^T (S recomputed), dx -= boxsum^T(dS)
            let b = Box2 { k, stride: g.stride, padding: g.padding, dilation: g.dilation };
            let Some(s) = boxsum(x, &b, stream)? else { return Ok(None) };
            let (ds, w) = convolution_backward(&fg.g, &s, adjust_weight, &one, nx, nwa)?;
            dwa = w.map(|t| t.f_neg()).transpose()?;
            if let (Some(d), Some(ds)) = (dx.as_mut(), ds) {
                if !boxsum_t_(d, &ds, &b, BoxsumMode::Subtract, stream)? {
                    let dense = d.f_contiguous()?;
                    if !boxsum_t_(&dense, &ds, &b, BoxsumMode::Subtract, stream)? {
                        return Ok(None);
                    }
                    *d = dense;
                }
            }
        }
        let kind = weight.kind();
        let db1 = if nb1 { Some(fg.db1.f_to_kind(kind)?) } else { None };
        let db2 = if nb2 { Some(fg.db2.f_to_kind(kind)?) } else { None };
        let da = if na { Some(fg.dalpha.f_to_kind(alpha.kind())?.f_reshape(alpha.size())?) } else { None };
        Ok(Some([if nx { dx } else { None }, if nw { dw } else { None }, dwa, db1, da, db2]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

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
            let (adj, _) = convolution_backward(&g, &x, &wa, &Geometry::pointwise(1), true, false).unwrap();
            let want = &dx - adj.unwrap();
            assert!(sub_adjoint_gemm(&dx, &g, &wa, 1).unwrap());
            let err = (&dx - &want).abs().max().double_value(&[]);
            assert!(err < 1e-12, "nhwc={nhwc}: {err}");
        }
        // groups or mixed layouts: declined
        let opts = (Kind::Float, Device::Cpu);
        let dx = Tensor::zeros([1, 4, 3, 3], opts);
        let g = Tensor::zeros([1, 4, 3, 3], opts);
        assert!(!sub_adjoint_gemm(&dx, &g, &Tensor::zeros([4, 2, 1, 1], opts), 2).unwrap());
        let g_nhwc = g.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        assert!(!sub_adjoint_gemm(&dx, &g_nhwc, &Tensor::zeros([4, 4, 1, 1], opts), 1).unwrap());
    }
}
