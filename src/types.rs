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

/// The gradient that flows into the P path.
pub enum AdjustGrad {
    /// `gz = dL/dP` (N, Cout, Ho, Wo), or `gz / alpha` when `scale` is `Some(alpha)`: the libtorch
    /// path leaves the scaling to the small or fused ops downstream instead of a pass of its own.
    Gz { gz: Tensor, scale: Option<Tensor> },
    /// `G = boxsum^T(gz)` on x's grid (N, Cout, H, W), alpha included (stride 1,
    /// `cpu/collision_box.rs`).
    OnInput(Tensor),
}

/// The P path's gradients before its sign (P enters Z with a minus) and its scale are applied.
pub struct AdjustParts {
    /// dx: the main path's input gradient, with the P path already subtracted where the backend did
    /// it in place (then `dxb` is `None`).
    pub dx: Option<Tensor>,
    /// The P path's contribution to dx still to subtract (times `scale`), if any.
    pub dxb: Option<Tensor>,
    /// dW' before sign and scale.
    pub dwa: Option<Tensor>,
    /// `Some(alpha)` when `gz` lacked its factor alpha (libtorch path).
    pub scale: Option<Tensor>,
}
