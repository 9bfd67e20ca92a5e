//! The IC convolution (paper eq. 6/7), forward and backward on `tch::Tensor`s.
//!
//! For `x` (N, Cin, H, W), `weight` W (Cout, Cin/g, kh, kw), `adjust_weight` W' (Cout, Cin/g, 1, 1),
//! `adjust_bias` b1 (Cout), optional `bias` b2 (Cout) and a scalar `alpha`:
//!
//! ```text
//! Yb  = conv2d(x, W, b2; s, p, d, g)          (b2 inside the conv call, as nn.Conv2d does)
//! S   = boxsum_{kh x kw}(x; s, p, d)          (N, Cin, Ho, Wo), recomputed in the backward
//! P   = conv2d(S, W'; 1x1, groups g)          (N, Cout, Ho, Wo)
//! Z   = Yb - P + (b1 - b2)                    (= conv(x, W) - P + b1)
//! out = Yb + alpha * relu(Z)
//! ```
//!
//! With `alpha == 0` the output is bit-identical to `conv2d(x, W, b2)`. The forward keeps only `x`
//! and `relu(Z)` for the backward (mask and d alpha both come from it).
//!
//! The ops are libtorch calls, so the same code runs on CPU and CUDA; on dense CPU float tensors
//! the box sum (`boxsum.rs`) and the elementwise collision work (`fused.rs`) run in Rust kernels
//! and the 1x1 conv as GEMMs (`pointwise.rs`).
use crate::aten::convolution_backward;
use crate::boxsum::{boxsum, boxsum_backward, boxsum_backward_sub_};
use crate::error::{Error, Result};
use crate::fused;
use crate::fused_box;
use crate::pointwise;
use crate::{type_err, value_err};
use tch::{Device, Kind, Tensor};

/// Geometry of the main convolution; the box sum shares stride, padding and dilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub stride: [i64; 2],
    pub padding: [i64; 2],
    pub dilation: [i64; 2],
    pub groups: i64,
}

impl Default for ConvGeometry {
    fn default() -> Self {
        Self { stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1 }
    }
}

fn pair(name: &str, v: &[i64]) -> Result<[i64; 2]> {
    match v {
        [a] => Ok([*a, *a]),
        [a, b] => Ok([*a, *b]),
        _ => Err(value_err!("{name}: expected 1 or 2 integers, got {}", v.len())),
    }
}

impl ConvGeometry {
    /// Builds and validates a geometry from Python-style lists (one value is used for both dims).
    pub fn from_lists(stride: &[i64], padding: &[i64], dilation: &[i64], groups: i64) -> Result<Self> {
        let g = Self {
            stride: pair("stride", stride)?,
            padding: pair("padding", padding)?,
            dilation: pair("dilation", dilation)?,
            groups,
        };
        g.validate()?;
        Ok(g)
    }

    pub fn validate(&self) -> Result<()> {
        // Bounds keep every size computation far from i64 overflow (and match libtorch's int32 limits).
        const MAX: i64 = i32::MAX as i64;
        let big = self.stride.iter().chain(&self.padding).chain(&self.dilation).chain([&self.groups]).any(|&v| v > MAX);
        if big {
            return Err(value_err!(
                "stride, padding, dilation and groups must be at most {MAX}, got stride={:?}, padding={:?}, dilation={:?}, groups={}",
                self.stride,
                self.padding,
                self.dilation,
                self.groups
            ));
        }
        if self.stride.iter().any(|&s| s <= 0) {
            return Err(value_err!("stride: expected positive integers, got {:?}", self.stride));
        }
        if self.padding.iter().any(|&p| p < 0) {
            return Err(value_err!("padding: expected non-negative integers, got {:?}", self.padding));
        }
        if self.dilation.iter().any(|&d| d <= 0) {
            return Err(value_err!("dilation: expected positive integers, got {:?}", self.dilation));
        }
        if self.groups <= 0 {
            return Err(value_err!("groups: expected a positive integer, got {}", self.groups));
        }
        Ok(())
    }

    /// Output size of one spatial dim for input size `n` and kernel size `k`.
    pub fn out_size(&self, dim: usize, n: i64, k: i64) -> i64 {
        // i128: no overflow for any i64 sizes (validate() bounds the geometry, not the tensor).
        let (n, k) = (n as i128, k as i128);
        let (p, d, s) = (self.padding[dim] as i128, self.dilation[dim] as i128, self.stride[dim] as i128);
        let o = (n + 2 * p - d * (k - 1) - 1).div_euclid(s) + 1;
        o.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }
}

/// Sizes checked by [`check_inputs`].
#[derive(Debug, Clone, Copy)]
pub struct IcDims {
    pub n: i64,
    pub cin: i64,
    pub cout: i64,
    pub kh: i64,
    pub kw: i64,
    pub ho: i64,
    pub wo: i64,
}

fn is_float(k: Kind) -> bool {
    matches!(k, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

fn dev_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn check_same(name: &str, t: &Tensor, x: &Tensor) -> Result<()> {
    if t.kind() != x.kind() {
        return Err(type_err!("{name}: dtype {:?} does not match x's dtype {:?}", t.kind(), x.kind()));
    }
    if t.device() != x.device() {
        return Err(Error::Runtime(format!(
            "{name}: is on device {} but x is on {}",
            dev_name(t.device()),
            dev_name(x.device())
        )));
    }
    Ok(())
}

fn check_shape(name: &str, t: &Tensor, want: &[i64]) -> Result<()> {
    if t.size() != want {
        return Err(value_err!("{name}: expected shape {want:?}, got {:?}", t.size()));
    }
    Ok(())
}

/// Validates every argument of the IC convolution before libtorch sees it.
pub fn check_inputs(
    x: &Tensor,
    weight: &Tensor,
    adjust_weight: &Tensor,
    adjust_bias: &Tensor,
    alpha: &Tensor,
    bias: Option<&Tensor>,
    g: &ConvGeometry,
) -> Result<IcDims> {
    g.validate()?;
    if x.dim() != 4 {
        return Err(value_err!("x: expected a 4-D (N, C, H, W) tensor, got shape {:?}", x.size()));
    }
    if !is_float(x.kind()) {
        return Err(type_err!("x: expected a floating-point tensor, got dtype {:?}", x.kind()));
    }
    if weight.dim() != 4 {
        return Err(value_err!("weight: expected a 4-D (Cout, Cin/groups, kh, kw) tensor, got shape {:?}", weight.size()));
    }
    check_same("weight", weight, x)?;
    check_same("adjust_weight", adjust_weight, x)?;
    check_same("adjust_bias", adjust_bias, x)?;
    if let Some(b) = bias {
        check_same("bias", b, x)?;
    }
    if !is_float(alpha.kind()) {
        return Err(type_err!("alpha: expected a floating-point tensor, got dtype {:?}", alpha.kind()));
    }
    if alpha.numel() != 1 {
        return Err(value_err!("alpha: expected a scalar (one element), got shape {:?}", alpha.size()));
    }
    if alpha.device() != x.device() && !(alpha.device() == Device::Cpu && alpha.dim() == 0) {
        return Err(Error::Runtime(format!(
            "alpha: is on device {} but x is on {}",
            dev_name(alpha.device()),
            dev_name(x.device())
        )));
    }
    let (xs, ws) = (x.size(), weight.size());
    let (n, cin, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    if h == 0 || w == 0 {
        // libtorch's convolutions refuse them too, less clearly
        return Err(value_err!("x: expected a non-empty image (H, W >= 1), got shape {xs:?}"));
    }
    let (cout, cin_g, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    if kh <= 0 || kw <= 0 || cout <= 0 || cin_g <= 0 {
        return Err(value_err!("weight: every dimension must be positive, got shape {ws:?}"));
    }
    if cin != cin_g * g.groups {
        return Err(value_err!(
            "x: has {cin} channels but weight {ws:?} with groups={} expects {}",
            g.groups,
            cin_g * g.groups
        ));
    }
    if cout % g.groups != 0 {
        return Err(value_err!("groups: out_channels {cout} is not divisible by groups={}", g.groups));
    }
    check_shape("adjust_weight", adjust_weight, &[cout, cin_g, 1, 1])?;
    check_shape("adjust_bias", adjust_bias, &[cout])?;
    if let Some(b) = bias {
        check_shape("bias", b, &[cout])?;
    }
    let (ho, wo) = (g.out_size(0, h, kh), g.out_size(1, w, kw));
    if ho < 1 || wo < 1 {
        return Err(value_err!(
            "x: spatial size ({h}, {w}) with padding {:?} is smaller than the dilated kernel ({}, {})",
            g.padding,
            g.dilation[0] as i128 * (kh as i128 - 1) + 1,
            g.dilation[1] as i128 * (kw as i128 - 1) + 1
        ));
    }
    Ok(IcDims { n, cin, cout, kh, kw, ho, wo })
}

/// What the forward returns: the layer output and `relu(Z)`, the one output-sized tensor the
/// backward needs (with `x`).
pub struct IcForward {
    pub out: Tensor,
    pub relu_z: Tensor,
}

/// The IC convolution forward pass. See the module docs for the formula and shapes.
pub fn forward(
    x: &Tensor,
    weight: &Tensor,
    adjust_weight: &Tensor,
    adjust_bias: &Tensor,
    alpha: &Tensor,
    bias: Option<&Tensor>,
    g: &ConvGeometry,
) -> Result<IcForward> {
    let (out, relu_z) = forward_impl(x, weight, adjust_weight, adjust_bias, alpha, bias, g, true)?;
    let relu_z = relu_z.ok_or_else(|| Error::Runtime("forward: relu_z was not produced".into()))?;
    Ok(IcForward { out, relu_z })
}

/// The forward without a backward to serve (`no_grad`, eval): returns only the output, and the
/// fused CPU path then never writes `relu_z`.
pub fn forward_inference(
    x: &Tensor,
    weight: &Tensor,
    adjust_weight: &Tensor,
    adjust_bias: &Tensor,
    alpha: &Tensor,
    bias: Option<&Tensor>,
    g: &ConvGeometry,
) -> Result<Tensor> {
    Ok(forward_impl(x, weight, adjust_weight, adjust_bias, alpha, bias, g, false)?.0)
}

#[allow(clippy::too_many_arguments)]
fn forward_impl(
    x: &Tensor,
    weight: &Tensor,
    adjust_weight: &Tensor,
    adjust_bias: &Tensor,
    alpha: &Tensor,
    bias: Option<&Tensor>,
    g: &ConvGeometry,
    keep_relu_z: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let d = check_inputs(x, weight, adjust_weight, adjust_bias, alpha, bias, g)?;
    tch::no_grad(|| {
        let y = x.f_conv2d(weight, bias, g.stride, g.padding, g.dilation, g.groups)?;
        if d.n == 0 {
            let relu_z = if keep_relu_z { Some(y.f_zeros_like()?) } else { None };
            return Ok((y, relu_z));
        }
        let shift = match bias {
            Some(b) => adjust_bias.f_sub(b)?,
            None => adjust_bias.shallow_clone(),
        };
        // Where the fused CPU kernel cannot run (CUDA, half types, odd layouts), the shift rides in
        // the 1x1 conv's bias, which saves the generic path a pass over Z.
        let fold = x.device() != Device::Cpu || crate::cpu::dense(&[x]).is_none();
        if !fold && box_fusion_pays(&d, g) {
            // P = boxsum(conv1x1(x, W')) at stride 1: the box sum runs inside the collision kernel.
            let q = pointwise::forward(x, adjust_weight, g.groups, None)?;
            if let Some(r) = fused_box::collision_forward(&y, &q, &shift, alpha, d.kh, d.kw, g, keep_relu_z)? {
                return Ok(r);
            }
        }
        let s = boxsum(x, d.kh, d.kw, g)?;
        let p = if fold {
            pointwise::forward(&s, adjust_weight, g.groups, Some(&shift.f_neg()?))?
        } else {
            pointwise::forward(&s, adjust_weight, g.groups, None)?
        };
        drop(s);
        let (out, relu_z) = collision_forward(y, p, if fold { None } else { Some(&shift) }, alpha)?;
        Ok((out, Some(relu_z)))
    })
}

/// Whether the stride-1 box-sum fusion (`fused_box.rs`) applies and costs no more GEMM work:
/// it runs the 1x1 on x's grid with Cout outputs, against the box sum's grid with Cin inputs.
fn box_fusion_pays(d: &IcDims, g: &ConvGeometry) -> bool {
    g.stride == [1, 1] && d.cout <= 2 * d.cin
}

/// `relu_z = relu(y - p + shift)`, `out = y + alpha * relu_z`. `y`, `p`: (N, C, Ho, Wo); `shift`: (C),
/// `None` when it is already in `p` (as `-shift`). Consumes `p` (the buffer of `relu_z` on the
/// generic path, which is three passes: `z = y - p`, `relu_`, `addcmul`).
pub fn collision_forward(y: Tensor, p: Tensor, shift: Option<&Tensor>, alpha: &Tensor) -> Result<(Tensor, Tensor)> {
    let c = y.size()[1];
    let zeros;
    let fused_shift = match shift {
        Some(s) => s,
        None => {
            zeros = Tensor::f_zeros([c], (y.kind(), y.device()))?;
            &zeros
        }
    };
    if let Some(r) = fused::collision_forward(&y, &p, fused_shift, alpha)? {
        return Ok(r);
    }
    let mut z = p;
    let _ = y.f_sub_out(&z, &z)?;
    if let Some(s) = shift {
        let _ = z.f_add_(&s.f_view([1, c, 1, 1])?)?;
    }
    let _ = z.f_relu_()?;
    let alpha = alpha.f_to_kind(y.kind())?.f_reshape([] as [i64; 0])?;
    let out = y.f_addcmul(&z, &alpha)?;
    Ok((out, z))
}

/// Which gradients the caller wants (autograd's `needs_input_grad`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedsGrad {
    pub x: bool,
    pub weight: bool,
    pub adjust_weight: bool,
    pub adjust_bias: bool,
    pub alpha: bool,
    pub bias: bool,
}

impl NeedsGrad {
    pub fn all() -> Self {
        Self { x: true, weight: true, adjust_weight: true, adjust_bias: true, alpha: true, bias: true }
    }
}

/// Gradients of the IC convolution; `None` where not requested.
#[derive(Default)]
pub struct IcGrads {
    pub x: Option<Tensor>,
    pub weight: Option<Tensor>,
    pub adjust_weight: Option<Tensor>,
    pub adjust_bias: Option<Tensor>,
    pub alpha: Option<Tensor>,
    pub bias: Option<Tensor>,
}

/// Elementwise part of the backward: `gz = alpha * grad * [relu_z > 0]`, `gy = grad + gz`, and the
/// reductions d alpha = sum(grad * relu_z), db1 = sum_{n,h,w} gz, db2 = sum_{n,h,w} grad.
pub struct CollisionGrads {
    pub gy: Option<Tensor>,
    pub adjust: AdjustGrad,
    pub dalpha: Option<Tensor>,
    pub db1: Option<Tensor>,
    pub db2: Option<Tensor>,
}

/// The gradient that flows into the P path.
pub enum AdjustGrad {
    /// `gz = dL/dP` (N, C, Ho, Wo), or `gz / alpha` when `scale` is `Some(alpha)`: the generic path
    /// leaves the scaling to the small or fused ops downstream instead of a pass of its own.
    Gz { gz: Tensor, scale: Option<Tensor> },
    /// `boxsum^T(gz)` on x's grid (N, C, H, W), alpha included (stride 1, `fused_box.rs`).
    OnInput(Tensor),
}

pub fn collision_backward(grad: &Tensor, relu_z: &Tensor, alpha: &Tensor, needs: &NeedsGrad) -> Result<CollisionGrads> {
    let need_gy = needs.x || needs.weight;
    if let Some(r) = fused::collision_backward(grad, relu_z, alpha, need_gy, needs)? {
        return Ok(r);
    }
    let alpha_k = alpha.f_to_kind(grad.kind())?.f_reshape([] as [i64; 0])?;
    let gz = relu_z.f_threshold_backward(grad, 0.0)?;
    let dalpha = if needs.alpha { Some(grad.f_mul(relu_z)?.f_sum(acc_kind(grad.kind()))?) } else { None };
    let sum_nhw = |t: &Tensor| t.f_sum_dim_intlist([0i64, 2, 3].as_slice(), false, None::<Kind>);
    let db1 = if needs.adjust_bias { Some(sum_nhw(&gz)?.f_mul(&alpha_k)?) } else { None };
    let db2 = if needs.bias { Some(sum_nhw(grad)?) } else { None };
    let gy = if need_gy { Some(grad.f_addcmul(&gz, &alpha_k)?) } else { None };
    Ok(CollisionGrads { gy, adjust: AdjustGrad::Gz { gz, scale: Some(alpha_k) }, dalpha, db1, db2 })
}

/// Accumulation dtype of d alpha: float32 for half types, else the input's own.
fn acc_kind(k: Kind) -> Kind {
    match k {
        Kind::Half | Kind::BFloat16 => Kind::Float,
        other => other,
    }
}

/// The IC convolution backward pass.
///
/// `grad` and `relu_z`: (N, Cout, Ho, Wo); the rest as in [`forward`]. Returns the gradients that
/// `needs` asks for, each with its argument's shape and dtype.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    grad: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    adjust_weight: &Tensor,
    adjust_bias: &Tensor,
    alpha: &Tensor,
    relu_z: &Tensor,
    has_bias: bool,
    g: &ConvGeometry,
    needs: &NeedsGrad,
) -> Result<IcGrads> {
    let d = check_inputs(x, weight, adjust_weight, adjust_bias, alpha, None, g)?;
    let want = [d.n, d.cout, d.ho, d.wo];
    check_shape("grad", grad, &want)?;
    check_shape("relu_z", relu_z, &want)?;
    check_same("grad", grad, x)?;
    check_same("relu_z", relu_z, x)?;
    let needs = NeedsGrad { bias: needs.bias && has_bias, ..*needs };
    tch::no_grad(|| {
        if d.n == 0 {
            return zero_grads(x, weight, adjust_weight, adjust_bias, alpha, &needs, d.cout);
        }
        let cg = match box_collision_backward(grad, relu_z, alpha, x, &d, g, &needs)? {
            Some(cg) => cg,
            None => collision_backward(grad, relu_z, alpha, &needs)?,
        };
        let mut out = IcGrads {
            alpha: cg.dalpha.map(|t| t.f_to_kind(alpha.kind())?.f_reshape(alpha.size())).transpose()?,
            adjust_bias: cg.db1,
            bias: cg.db2,
            ..Default::default()
        };
        let (dx_main, dw) = match &cg.gy {
            Some(gy) => convolution_backward(gy, x, weight, g.stride, g.padding, g.dilation, g.groups, needs.x, needs.weight)?,
            None => (None, None),
        };
        drop(cg.gy);
        out.weight = dw;
        if needs.x || needs.adjust_weight {
            let mut dx = dx_main;
            let (dxb, dwa, scale) = match cg.adjust {
                AdjustGrad::OnInput(gq) => {
                    // dx -= W'^T G straight from the GEMM where it can (no temporary, no pass).
                    let done = match &dx {
                        Some(dx) => pointwise::input_grad_sub_(dx, &gq, adjust_weight, g.groups)?,
                        None => false,
                    };
                    let (dxb, dwa) = pointwise::backward(&gq, x, adjust_weight, g.groups, needs.x && !done, needs.adjust_weight)?;
                    (dxb, dwa, None)
                }
                AdjustGrad::Gz { gz, scale } => {
                    let (dxb, dwa) = adjust_path_backward(&gz, dx.as_ref(), x, adjust_weight, &d, g, needs.x, needs.adjust_weight, scale.is_none())?;
                    (dxb, dwa, scale)
                }
            };
            // P enters Z with a minus sign (and gz may still lack its factor alpha).
            let neg_scale = scale.as_ref().map(|a| a.f_neg()).transpose()?;
            out.adjust_weight = match &neg_scale {
                Some(ns) => dwa.map(|t| t.f_mul(ns)).transpose()?,
                None => dwa.map(|t| t.f_neg()).transpose()?,
            };
            if let (Some(dx), Some(dxb)) = (dx.as_mut(), dxb) {
                let _ = match &neg_scale {
                    Some(ns) => dx.f_addcmul_(&dxb, ns)?,
                    None => dx.f_sub_(&dxb)?,
                };
            }
            out.x = dx;
        } else {
            out.x = dx_main;
        }
        Ok(out)
    })
}

/// The stride-1 CPU backward with the transposed box sum fused into the collision kernel
/// (`fused_box.rs`), when it applies and the P path needs a gradient.
fn box_collision_backward(
    grad: &Tensor,
    relu_z: &Tensor,
    alpha: &Tensor,
    x: &Tensor,
    d: &IcDims,
    g: &ConvGeometry,
    needs: &NeedsGrad,
) -> Result<Option<CollisionGrads>> {
    if !(needs.x || needs.adjust_weight) || !box_fusion_pays(d, g) {
        return Ok(None);
    }
    let xs = x.size();
    fused_box::collision_backward(grad, relu_z, alpha, needs, [d.n, d.cout, xs[2], xs[3]], d.kh, d.kw, g)
}

/// Gradients `(dx, dW')` of `P = conv1x1(boxsum(x), W')` for `dP = gz`.
///
/// At stride 1 the box sum and the 1x1 commute (one acts per channel, the other per pixel), so
/// `P = boxsum(conv1x1(x, W'))` and both gradients come from one transposed box sum of `gz` on
/// x's grid, `G = boxsum^T(gz)`: `dx = W'^T G`, `dW' = G x^T`. That is one box-sum pass instead of
/// two (recomputing `S = boxsum(x)` for dW', then the adjoint of dS) for the same GEMM work. With a
/// stride, G would be s^2 times larger than S, so the strided path recomputes S.
#[allow(clippy::too_many_arguments)]
fn adjust_path_backward(
    gz: &Tensor,
    dx: Option<&Tensor>,
    x: &Tensor,
    adjust_weight: &Tensor,
    d: &IcDims,
    g: &ConvGeometry,
    need_x: bool,
    need_w: bool,
    may_subtract: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let xs = x.size();
    if g.stride == [1, 1] {
        let gq = boxsum_backward(gz, &[d.n, d.cout, xs[2], xs[3]], d.kh, d.kw, g)?;
        return pointwise::backward(&gq, x, adjust_weight, g.groups, need_x, need_w);
    }
    let s = boxsum(x, d.kh, d.kw, g)?;
    let (ds, dwa) = pointwise::backward(gz, &s, adjust_weight, g.groups, need_x, need_w)?;
    drop(s);
    let dxb = match (ds, dx) {
        // dx -= boxsum^T(dS) in place where the CPU kernel can (`may_subtract`: gz carries alpha).
        (Some(ds), Some(dx)) if may_subtract && boxsum_backward_sub_(dx, &ds, d.kh, d.kw, g)? => None,
        (Some(ds), _) => Some(boxsum_backward(&ds, &xs, d.kh, d.kw, g)?),
        (None, _) => None,
    };
    Ok((dxb, dwa))
}

fn zero_grads(
    x: &Tensor,
    weight: &Tensor,
    adjust_weight: &Tensor,
    adjust_bias: &Tensor,
    alpha: &Tensor,
    needs: &NeedsGrad,
    cout: i64,
) -> Result<IcGrads> {
    let z = |on: bool, t: &Tensor| -> Result<Option<Tensor>> { if on { Ok(Some(t.f_zeros_like()?)) } else { Ok(None) } };
    Ok(IcGrads {
        x: z(needs.x, x)?,
        weight: z(needs.weight, weight)?,
        adjust_weight: z(needs.adjust_weight, adjust_weight)?,
        adjust_bias: z(needs.adjust_bias, adjust_bias)?,
        alpha: z(needs.alpha, alpha)?,
        bias: if needs.bias { Some(Tensor::f_zeros([cout], (x.kind(), x.device()))?) } else { None },
    })
}
