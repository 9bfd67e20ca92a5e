//! The hand-written CPU kernels of the IC convolution, and the CPU pipelines that chain them.
//!
//! ```text
//! cpu/
//!   mod.rs            this file: the on/off switch, Plan (dtype, memory order, GEMM or not) and the
//!                     CPU backends: Fused and FusedBox, and Widened (half types in f32)
//!   dense.rs          which tensors the kernels read (dense f32/f64, NCHW or NHWC), raw views
//!   boxsum.rs         the box sum S = boxsum(x) and its adjoint, separable row kernels
//!   collision.rs      the CPU forward and backward of the collision: fused single-pass kernels
//!   collision_box.rs  the same with the box sum folded in (stride 1)
//!   plane_box.rs      the stride-1 box sum of whole small NCHW planes as flat passes
//!   simd.rs           the hot loops compiled for the x86-64 baseline and for AVX2, chosen at run time
//!   gemm.rs           the 1x1 adjust convolution as GEMMs (BLAS, or sgemm.rs in float32)
//!   sgemm.rs          a float32 GEMM in FMA register tiles, for the 1x1's small K
//!   widened.rs        which CPUs multiply half types natively; the widening copy of Widened
//!   workspace.rs      scratch tensors that never leave an op call, kept between calls
//! ```
//!
//! Every kernel takes float32/float64 CPU tensors dense in the one memory order of the [`Plan`]:
//! the order `ic_conv.rs` checked that x, y (forward) or x, grad, relu_z (backward) share when it
//! chose a CPU pipeline, once per call. Nothing here falls back to another path. The outputs of
//! the libtorch convolutions used on the way are brought into the plan's order ([`conform`], a
//! no-op unless oneDNN picked another order).
//!
//! Imports the leaves, `aten.rs`, and `libtorch/pointwise.rs` for the one op it does not replace
//! (the 1x1 convolution on channels_last with groups).
pub mod boxsum;
pub mod collision;
pub mod collision_box;
pub mod dense;
pub mod gemm;
pub mod plane_box;
pub mod sgemm;
pub mod simd;
pub mod widened;
pub mod workspace;

pub use crate::layout::{layout_of, Layout, Order};
pub use dense::dense;

use crate::aten::{in_range, range, stage};
use crate::backend::IcBackend;
use crate::error::{Error, Result};
use crate::geometry::{ConvGeometry, IcDims};
use crate::layout::conform;
use crate::libtorch;
use crate::types::{AdjustGrad, AdjustGrads, AdjustParts, CollisionGrads, IcArgs, NeedsGrad};
use gemm::Gemm1x1;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Kind, Tensor};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the hand-written CPU kernels on or off (off: every op takes the libtorch path that CUDA
/// uses, which is how the tests cover that path on a machine without a GPU). Returns the old value.
pub fn set_enabled(on: bool) -> bool {
    ENABLED.swap(on, Ordering::SeqCst)
}

/// Whether the CPU kernels are on ([`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `Some((kind, layout))` when the kernels are on and can read `ts` ([`dense`]).
pub fn kernel_plan(ts: &[&Tensor]) -> Option<(Kind, Layout)> {
    if enabled() {
        dense(ts)
    } else {
        None
    }
}

/// How a CPU pipeline runs one call: element type, the memory order of every tensor it touches
/// (x's), and whether the 1x1 convolution runs as GEMMs (`gemm.rs`) or as oneDNN's convolution
/// (channels_last with groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub kind: Kind,
    pub order: Order,
    pub gemm: bool,
}

impl Plan {
    /// The plan for dense CPU tensors of `kind` in `order`, with `groups` groups.
    pub fn new(kind: Kind, order: Order, groups: i64) -> Self {
        Self { kind, order, gemm: gemm::supports(order, groups) }
    }

    fn gemm(&self, groups: i64) -> Gemm1x1 {
        Gemm1x1 { groups, kind: self.kind, order: self.order }
    }

    /// The dtype and memory order the kernels run in.
    fn elem(&self) -> (Kind, Order) {
        (self.kind, self.order)
    }

    /// `conv1x1(s, W')` in the plan's order.
    fn pointwise(&self, s: &Tensor, w: &Tensor, groups: i64) -> Result<Tensor> {
        if self.gemm {
            self.gemm(groups).forward(s, w)
        } else {
            conform(&libtorch::pointwise::forward(s, w, groups, None)?, self.order)
        }
    }

    /// [`Self::pointwise`] into a pooled buffer ([`workspace::scratch`]) when it runs as GEMMs: for
    /// a temporary, or a result that is reused once nothing holds it any more.
    fn pointwise_scratch(&self, s: &Tensor, w: &Tensor, groups: i64) -> Result<Tensor> {
        if !self.gemm {
            return self.pointwise(s, w, groups);
        }
        let sz = s.size();
        let out = workspace::scratch([sz[0], w.size()[0], sz[2], sz[3]], self.kind, self.order)?;
        self.gemm(groups).forward_into(s, w, &out)?;
        Ok(out)
    }

    /// `(dS, dW')` of [`Self::pointwise`] for `gp`, dS in the plan's order.
    fn pointwise_backward(
        &self,
        gp: &Tensor,
        s: &Tensor,
        w: &Tensor,
        groups: i64,
        need_s: bool,
        need_w: bool,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if self.gemm {
            return self.gemm(groups).backward(gp, s, w, need_s, need_w);
        }
        let (ds, dw) = libtorch::pointwise::backward(gp, s, w, groups, need_s, need_w)?;
        Ok((ds.map(|t| conform(&t, self.order)).transpose()?, dw))
    }

    /// Gradients of `P = conv1x1(boxsum(x), W')` from the collision's `adjust` gradient (alpha
    /// included). `dx`, the main path's input gradient, comes back with the P path subtracted in
    /// place when it is in the plan's order (`dx -= W'^T G` by the GEMM, `dx -= boxsum^T(dS)` by the
    /// box-sum kernel); otherwise (oneDNN gave dx another layout, which dx keeps) the P path's part
    /// is in `dxb`. Stride 1 needs one transposed box sum of `gz`; with a stride, S is recomputed
    /// (as in `libtorch/mod.rs`).
    fn adjust_parts(
        &self,
        adjust: AdjustGrad,
        dx: Option<Tensor>,
        a: &IcArgs,
        d: &IcDims,
        g: &ConvGeometry,
        needs: &NeedsGrad,
    ) -> Result<AdjustParts> {
        let (x, adjust_weight) = (a.x, a.adjust_weight);
        let (need_x, need_w) = (needs.x, needs.adjust_weight);
        let dx_in_order = dx.as_ref().is_some_and(|t| layout_of(t).map(|l| l.order()) == Some(self.order));
        match adjust {
            AdjustGrad::OnInput(gq) if self.gemm => {
                let gemm = self.gemm(g.groups);
                if let (true, Some(dx)) = (dx_in_order, &dx) {
                    gemm.input_grad_sub_(dx, &gq, adjust_weight)?;
                }
                let (dxb, dwa) = gemm.backward(&gq, x, adjust_weight, need_x && !dx_in_order, need_w)?;
                Ok(AdjustParts { dx, dxb, dwa })
            }
            AdjustGrad::OnInput(gq) => {
                let (dxb, dwa) = self.pointwise_backward(&gq, x, adjust_weight, g.groups, need_x, need_w)?;
                Ok(AdjustParts { dx, dxb, dwa })
            }
            AdjustGrad::Gz(gz) if g.unit_stride() => {
                let gq = boxsum::backward(&gz, d.input_grid_out(), d.kh, d.kw, g, self.elem(), workspace::scratch)?;
                let (dxb, dwa) = self.pointwise_backward(&gq, x, adjust_weight, g.groups, need_x, need_w)?;
                Ok(AdjustParts { dx, dxb, dwa })
            }
            AdjustGrad::Gz(gz) => {
                let s = boxsum::forward(x, d.kh, d.kw, g, self.elem(), workspace::scratch)?;
                let (ds, dwa) = self.pointwise_backward(&gz, &s, adjust_weight, g.groups, need_x, need_w)?;
                drop(s);
                let dxb = match (ds, &dx) {
                    (Some(ds), Some(dx)) if dx_in_order => {
                        boxsum::backward_sub_(dx, &ds, d.kh, d.kw, g, self.kind, self.order)?;
                        None
                    }
                    (Some(ds), _) => {
                        Some(boxsum::backward(&ds, d.input_shape(), d.kh, d.kw, g, self.elem(), dense::empty)?)
                    }
                    (None, _) => None,
                };
                Ok(AdjustParts { dx, dxb, dwa })
            }
            AdjustGrad::GzOverAlpha(_) => {
                Err(Error::Runtime("internal: the CPU kernels got another backend's P-path gradient".into()))
            }
        }
    }
}

/// The CPU kernels: box sum, 1x1 as GEMMs, fused collision (`collision.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fused(pub Plan);

/// The CPU kernels with the box sum inside the collision kernel (stride 1, `collision_box.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FusedBox(pub Plan);

impl IcBackend for Fused {
    fn name(&self) -> &'static str {
        "cpu-fused"
    }

    /// `S = boxsum(x)` (N, Cin, Ho, Wo), `P = conv1x1(S, W')`, then the fused collision writes
    /// `out` into y's buffer and `relu_z` into p's (always).
    fn forward(
        &self,
        y: Tensor,
        a: &IcArgs,
        shift: &Tensor,
        d: &IcDims,
        g: &ConvGeometry,
        _keep_relu_z: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let p = self.0;
        let s = in_range(stage::BOXSUM, || boxsum::forward(a.x, d.kh, d.kw, g, p.elem(), workspace::scratch))?;
        // P becomes relu_z, saved for the backward: a pooled buffer, reused once autograd lets it go
        let pp = in_range(stage::CONV1X1, || p.pointwise_scratch(&s, a.adjust_weight, g.groups))?;
        drop(s);
        let _r = range(stage::COLLISION);
        let (out, relu_z) = collision::forward(&y, &pp, shift, a.alpha, p.kind, p.order)?;
        Ok((out, Some(relu_z)))
    }

    /// `gy`, `gz` (alpha included) and the reductions.
    fn collision_backward(
        &self,
        grad: &Tensor,
        relu_z: &Tensor,
        alpha: &Tensor,
        needs: &NeedsGrad,
        _d: &IcDims,
        _g: &ConvGeometry,
    ) -> Result<CollisionGrads> {
        collision::backward(grad, relu_z, alpha, needs, self.0.kind, self.0.order)
    }

    fn adjust_backward(
        &self,
        adjust: AdjustGrad,
        dx: Option<Tensor>,
        a: &IcArgs,
        d: &IcDims,
        g: &ConvGeometry,
        needs: &NeedsGrad,
    ) -> Result<AdjustGrads> {
        Ok(self.0.adjust_parts(adjust, dx, a, d, g, needs)?.finish(None)?)
    }
}

impl IcBackend for FusedBox {
    fn name(&self) -> &'static str {
        "cpu-fused-box"
    }

    /// Stride 1: `Q = conv1x1(x, W')` (N, Cout, H, W) on x's grid, then the collision kernel
    /// box-sums Q row by row into `out` (y's buffer); `relu_z` only when `keep_relu_z`.
    fn forward(
        &self,
        y: Tensor,
        a: &IcArgs,
        shift: &Tensor,
        d: &IcDims,
        g: &ConvGeometry,
        keep_relu_z: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (p, k) = (self.0, [d.kh, d.kw]);
        let x_shape = dense::shape4(a.x)?;
        if p.gemm && p.order == Order::Nchw && g.groups == 1 && collision_box::channel_major_fits(x_shape, k, g) {
            // small images: one GEMM over all of them, Q channel-major (C, N, H, W)
            let [n, cin, h, w] = x_shape;
            let q = in_range(stage::CONV1X1, || -> Result<Tensor> {
                let mut x_t = workspace::scratch([cin, n, h, w], p.kind, Order::Nchw)?;
                let q = workspace::scratch([a.adjust_weight.size()[0], n, h, w], p.kind, Order::Nchw)?;
                p.gemm(g.groups).forward_channel_major(a.x, a.adjust_weight, &mut x_t, &q)?;
                Ok(q)
            })?;
            let _r = range(stage::BOXSUM_COLLISION);
            let q = (&q, collision_box::QLayout::ChannelMajor);
            return collision_box::forward(&y, q, shift, a.alpha, k, g, p.elem(), keep_relu_z);
        }
        let q = in_range(stage::CONV1X1, || p.pointwise_scratch(a.x, a.adjust_weight, g.groups))?;
        let _r = range(stage::BOXSUM_COLLISION);
        collision_box::forward(&y, (&q, collision_box::QLayout::LikeY), shift, a.alpha, k, g, p.elem(), keep_relu_z)
    }

    /// `gy`, `G = boxsum^T(gz)` on x's grid and the reductions.
    fn collision_backward(
        &self,
        grad: &Tensor,
        relu_z: &Tensor,
        alpha: &Tensor,
        needs: &NeedsGrad,
        d: &IcDims,
        g: &ConvGeometry,
    ) -> Result<CollisionGrads> {
        collision_box::backward(grad, relu_z, alpha, needs, d.input_grid_out(), [d.kh, d.kw], g, self.0.elem())
    }

    fn adjust_backward(
        &self,
        adjust: AdjustGrad,
        dx: Option<Tensor>,
        a: &IcArgs,
        d: &IcDims,
        g: &ConvGeometry,
        needs: &NeedsGrad,
    ) -> Result<AdjustGrads> {
        Ok(self.0.adjust_parts(adjust, dx, a, d, g, needs)?.finish(None)?)
    }
}

/// The float32 CPU pipeline that runs a half-precision call: `plan` is float32 in the call's
/// memory order, `fused_box` picks [`FusedBox`] (stride 1) or [`Fused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Widened {
    pub plan: Plan,
    pub fused_box: bool,
}

impl Widened {
    /// Runs `f` on the float32 pipeline, its temporaries unpooled ([`workspace::unpooled`]).
    fn inner<R>(&self, f: impl FnOnce(&dyn IcBackend) -> R) -> R {
        workspace::unpooled(|| if self.fused_box { f(&FusedBox(self.plan)) } else { f(&Fused(self.plan)) })
    }
}

impl IcBackend for Widened {
    fn name(&self) -> &'static str {
        "cpu-widened"
    }

    /// `y` (the call's dtype) and x widened, the float32 forward, then `out` rounded into y's
    /// buffer and `relu_z` into a tensor of the call's dtype.
    fn forward(
        &self,
        y: Tensor,
        a: &IcArgs,
        shift: &Tensor,
        d: &IcDims,
        g: &ConvGeometry,
        keep_relu_z: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let order = self.plan.order;
        let (x, w) = (widened::widen(a.x, order)?, a.adjust_weight.f_to_kind(Kind::Float)?);
        let wide = IcArgs { x: &x, adjust_weight: &w, ..*a };
        let (out, relu_z) = self.inner(|b| {
            b.forward(widened::widen(&y, order)?, &wide, &shift.f_to_kind(Kind::Float)?, d, g, keep_relu_z)
        })?;
        let mut y = y;
        y.f_copy_(&out)?;
        let relu_z = if keep_relu_z { relu_z.map(|r| r.f_to_kind(y.kind())).transpose()? } else { None };
        Ok((y, relu_z))
    }

    /// `grad` and `relu_z` widened; `gy`, d alpha, db1 and db2 come back in the call's dtype,
    /// the P path's gradient stays float32 for [`Self::adjust_backward`].
    fn collision_backward(
        &self,
        grad: &Tensor,
        relu_z: &Tensor,
        alpha: &Tensor,
        needs: &NeedsGrad,
        d: &IcDims,
        g: &ConvGeometry,
    ) -> Result<CollisionGrads> {
        let order = self.plan.order;
        let kind = grad.kind();
        let (gw, rw) = (widened::widen(grad, order)?, widened::widen(relu_z, order)?);
        let cg = self.inner(|b| b.collision_backward(&gw, &rw, alpha, needs, d, g))?;
        let narrow = |t: Option<Tensor>| t.map(|t| t.f_to_kind(kind)).transpose();
        Ok(CollisionGrads {
            gy: narrow(cg.gy)?,
            adjust: cg.adjust,
            dalpha: cg.dalpha,
            db1: narrow(cg.db1)?,
            db2: narrow(cg.db2)?,
        })
    }

    /// The float32 P-path gradients from widened x and W', then `dx -= dxb` into the main path's
    /// dx (the call's dtype) and dW' rounded to W''s dtype.
    fn adjust_backward(
        &self,
        adjust: AdjustGrad,
        dx: Option<Tensor>,
        a: &IcArgs,
        d: &IcDims,
        g: &ConvGeometry,
        needs: &NeedsGrad,
    ) -> Result<AdjustGrads> {
        let (x, w) = (widened::widen(a.x, self.plan.order)?, a.adjust_weight.f_to_kind(Kind::Float)?);
        let wide = IcArgs { x: &x, adjust_weight: &w, ..*a };
        let parts = workspace::unpooled(|| self.plan.adjust_parts(adjust, None, &wide, d, g, needs))?;
        let dwa = parts.dwa.map(|t| t.f_to_kind(a.adjust_weight.kind())).transpose()?;
        Ok(AdjustParts { dx, dxb: parts.dxb, dwa }.finish(None)?)
    }
}
