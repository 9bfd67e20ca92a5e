//! What every backend of the IC convolution owes ([`IcBackend`]), and the record of the backends
//! that declined a call ([`declined`], [`declines`]).
//!
//! A backend computes the device-specific part of one call: the P path (`S = boxsum(x)`,
//! `P = conv1x1(S, W')`) and the collision, forward and backward. `ic_conv.rs` does the rest (the
//! argument checks, the main convolution and its gradients, empty batches) the same way for every
//! backend, and picks the backend once per call (`ic_conv::choose`).
//!
//! Imports the leaves only.
use crate::error::Result;
use crate::geometry::{ConvGeometry, IcDims};
use crate::types::{AdjustGrad, AdjustGrads, CollisionGrads, IcArgs, NeedsGrad};
use std::sync::{Mutex, OnceLock};
use tch::Tensor;

/// The three steps of the IC convolution that differ per backend. The gradient into the P path
/// ([`AdjustGrad`]) goes from a backend's [`collision_backward`](Self::collision_backward) to the
/// same backend's [`adjust_backward`](Self::adjust_backward); each backend applies its own scale.
pub trait IcBackend {
    /// The name in logs and in the decline counts.
    fn name(&self) -> &'static str;

    /// After `y = conv2d(x, W) + b2` (N, Cout, Ho, Wo) and `shift = b1 - b2`: `(out, relu_z)`.
    /// `relu_z` may be left out when `keep_relu_z` is false (no backward to serve).
    fn forward(
        &self,
        y: Tensor,
        a: &IcArgs,
        shift: &Tensor,
        d: &IcDims,
        g: &ConvGeometry,
        keep_relu_z: bool,
    ) -> Result<(Tensor, Option<Tensor>)>;

    /// The collision backward for `grad`, `relu_z` (N, Cout, Ho, Wo): `gy` (when x or W need a
    /// gradient), the gradient into the P path, d alpha, db1 and db2 as `needs` asks.
    fn collision_backward(
        &self,
        grad: &Tensor,
        relu_z: &Tensor,
        alpha: &Tensor,
        needs: &NeedsGrad,
        d: &IcDims,
        g: &ConvGeometry,
    ) -> Result<CollisionGrads>;

    /// The P path's gradients from `adjust`: `dx` (the main path's input gradient, taken in and
    /// returned with the P path's part subtracted) and dW', signs and scale applied.
    fn adjust_backward(
        &self,
        adjust: AdjustGrad,
        dx: Option<Tensor>,
        a: &IcArgs,
        d: &IcDims,
        g: &ConvGeometry,
        needs: &NeedsGrad,
    ) -> Result<AdjustGrads>;
}

/// `(backend, reason) -> count` of the declines so far in this process.
static DECLINES: Mutex<Vec<(&str, &str, u64)>> = Mutex::new(Vec::new());

/// Whether `IC_NETWORKS_LOG=debug` is set (read once).
fn debug_log() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("IC_NETWORKS_LOG").is_ok_and(|v| v.eq_ignore_ascii_case("debug")))
}

/// Records that `backend` declined a call for `reason`: counted ([`declines`]) and, with
/// `IC_NETWORKS_LOG=debug`, logged to stderr.
pub fn declined(backend: &'static str, reason: &'static str) {
    if debug_log() {
        eprintln!("ic_networks: backend {backend} declined: {reason}");
    }
    let mut d = DECLINES.lock().unwrap_or_else(|e| e.into_inner());
    match d.iter_mut().find(|(b, r, _)| *b == backend && *r == reason) {
        Some(e) => e.2 += 1,
        None => d.push((backend, reason, 1)),
    }
}

/// The declines so far: `(backend, reason, count)`, in the order they first happened.
pub fn declines() -> Vec<(&'static str, &'static str, u64)> {
    DECLINES.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declines_are_counted_per_backend_and_reason() {
        let count = |b: &str, r: &str| declines().iter().find(|e| e.0 == b && e.1 == r).map_or(0, |e| e.2);
        let before = count("test-backend", "reason a");
        declined("test-backend", "reason a");
        declined("test-backend", "reason b");
        declined("test-backend", "reason a");
        assert_eq!(count("test-backend", "reason a"), before + 2);
        assert!(count("test-backend", "reason b") >= 1);
    }
}
