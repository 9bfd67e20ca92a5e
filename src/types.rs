//! The values that cross module boundaries: the arguments of one IC convolution call
//! ([`IcArgs`]), which gradients are wanted ([`NeedsGrad`]), and what the passes return. A leaf:
//! it imports nothing of the crate.
//!
//! Shapes: `x` (N, Cin, H, W), `weight` W (Cout, Cin/g, kh, kw), `adjust_weight` W' (Cout, Cin/g,
//! 1, 1), `adjust_bias` b1 (Cout), `bias` b2 (Cout), `alpha` one element; output and `relu_z`
//! (N, Cout, Ho, Wo).
use tch::Tensor;

/// The tensors of one IC convolution call (geometry apart).
#[derive(Clone, Copy)]
pub struct IcArgs<'a> {
    pub x: &'a Tensor,
    pub weight: &'a Tensor,
    pub adjust_weight: &'a Tensor,
    pub adjust_bias: &'a Tensor,
    pub alpha: &'a Tensor,
    pub bias: Option<&'a Tensor>,
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
    /// `gy = dL/dY` is needed (for dx or dW through the main convolution).
    pub fn main_path(&self) -> bool {
        self.x || self.weight
    }
    /// The P path (box sum and 1x1) needs a gradient (for dx or dW').
    pub fn adjust_path(&self) -> bool {
        self.x || self.adjust_weight
    }
}

/// What the forward returns: the layer output and `relu(Z)`, the one output-sized tensor the
/// backward needs (with `x`).
pub struct IcForward {
    pub out: Tensor,
    pub relu_z: Tensor,
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
    /// `gy` (N, Cout, Ho, Wo), when x or W need a gradient.
    pub gy: Option<Tensor>,
    pub adjust: AdjustGrad,
    pub dalpha: Option<Tensor>,
    pub db1: Option<Tensor>,
    pub db2: Option<Tensor>,
}

/// The gradient that flows into the P path, from a backend's collision backward to the same
/// backend's P-path backward (the variant says which kind of step wrote it).
pub enum AdjustGrad {
    /// `gz = dL/dP` (N, Cout, Ho, Wo) on the output grid, alpha included.
    Gz(Tensor),
    /// `gz / alpha`: the libtorch steps leave the factor alpha to the small ops of their P-path
    /// backward instead of a pass of its own (`libtorch/mod.rs`).
    GzOverAlpha(Tensor),
    /// `G = boxsum^T(gz)` on x's grid (N, Cout, H, W), alpha included (stride 1, the box sum fused
    /// into the collision backward).
    OnInput(Tensor),
}

/// The P path's gradients as a backend's steps compute them, before the sign (P enters Z with a
/// minus) and the backend's scale are applied ([`AdjustParts::finish`]).
pub struct AdjustParts {
    /// dx: the main path's input gradient, with the P path already subtracted where the backend did
    /// it in place (then `dxb` is `None`).
    pub dx: Option<Tensor>,
    /// The P path's contribution to dx still to subtract (times the scale), if any.
    pub dxb: Option<Tensor>,
    /// dW' before sign and scale.
    pub dwa: Option<Tensor>,
}

/// The gradients of x and W' once the P path's are in: what every backend's P-path backward returns.
pub struct AdjustGrads {
    pub x: Option<Tensor>,
    pub adjust_weight: Option<Tensor>,
}

impl AdjustParts {
    /// Applies the sign and `scale` (`Some(alpha)` for a backend whose `gz` lacked its factor alpha):
    /// `dW' = -scale * dwa`, `dx -= scale * dxb`.
    pub fn finish(self, scale: Option<&Tensor>) -> Result<AdjustGrads, tch::TchError> {
        let neg_scale = scale.map(|a| a.f_neg()).transpose()?;
        let dwa = match &neg_scale {
            Some(ns) => self.dwa.map(|t| t.f_mul(ns)).transpose()?,
            None => self.dwa.map(|t| t.f_neg()).transpose()?,
        };
        let mut dx = self.dx;
        if let (Some(dx), Some(dxb)) = (dx.as_mut(), self.dxb) {
            let _ = match &neg_scale {
                Some(ns) => dx.f_addcmul_(&dxb, ns)?,
                None => dx.f_sub_(&dxb)?,
            };
        }
        Ok(AdjustGrads { x: dx, adjust_weight: dwa })
    }
}
