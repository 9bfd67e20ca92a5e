//! The CUDA backend of the IC convolution ([`Cuda`]): `ic_conv.rs` picks it for CUDA tensors.
//!
//! Two routes, chosen per call:
//!
//! * the fused kernels (`fused/`): CUDA C compiled at run time by NVRTC and launched through the
//!   driver API (both loaded at run time by `fused/dl.rs`) on PyTorch's current stream, one pass
//!   over the output forward and backward, the box sum inside the collision at stride 1. Taken
//!   when the switch is on ([`fused::enabled`]: `IC_NETWORKS_CUDA_KERNELS=1` or
//!   `_core.cuda_fused_set_enabled(True)`, and libcuda + NVRTC present) and the kernels take the
//!   call;
//! * the libtorch ops (`libtorch/`): cuDNN for the 1x1 and the depthwise box-sum convolutions,
//!   libtorch's CUDA kernels for the elementwise collision. The default, and the fallback for
//!   every call the kernels decline.
//!
//! The switch is off by default until the fused route has passed the GPU suite
//! (docs/cuda-kernels.md).
//!
//! Imports `libtorch/`, `aten.rs` (the current stream) and the leaves.
pub mod fused;

use crate::backend::{declined, IcBackend};
use crate::error::Result;
use crate::geometry::{ConvGeometry, IcDims};
use crate::libtorch::{self, Libtorch};
use crate::types::{AdjustGrad, AdjustGrads, CollisionGrads, IcArgs, NeedsGrad};
use tch::{Device, Tensor};

/// The device a call's backend is chosen for: x's, except that in development builds the test
/// hook of `fused/emulation.rs` can make CPU tensors count as CUDA device 0 (with the stand-in
/// driver of tests/cuda_emu, the whole CUDA route then runs without a GPU).
pub fn backend_device(x: &Tensor) -> Device {
    fused::emulation::cuda_ordinal(x.device()).map_or(x.device(), Device::Cuda)
}

/// Runs one step on the fused kernels when they are switched on, on `t`'s stream: `Some` when the
/// kernels took it (counted in `fused::calls`), `None` when they are off or declined (a decline is
/// recorded with `reason`); the caller then runs the libtorch step.
fn try_fused<T>(
    t: &Tensor,
    reason: &'static str,
    run: impl FnOnce(fused::RawStream) -> Result<Option<T>>,
) -> Result<Option<T>> {
    let Some(stream) = fused_stream(t)? else { return Ok(None) };
    let taken = run(stream)?;
    match taken {
        Some(_) => fused::record_call(),
        None => declined(FUSED, reason),
    }
    Ok(taken)
}

/// PyTorch's current stream for `t`'s device when the fused route is on, `None` when it is off.
fn fused_stream(t: &Tensor) -> Result<Option<fused::RawStream>> {
    if !fused::enabled() {
        return Ok(None);
    }
    match t.device() {
        Device::Cuda(i) => Ok(Some(crate::aten::current_cuda_stream(i)?)),
        _ => Ok(Some(0)), // a CPU tensor under the emulation: the stand-in driver ignores streams
    }
}

/// The CUDA backend: per step, the fused kernels when switched on and they take the step, else
/// the libtorch steps (see the module docs). A declined step is counted (`backend::declines`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cuda;

/// The fused route's name in the decline counts.
const FUSED: &str = "cuda-fused";

impl IcBackend for Cuda {
    fn name(&self) -> &'static str {
        "cuda"
    }

    /// `relu_z` only with `keep_relu_z` on the fused route (the libtorch route always returns it).
    fn forward(
        &self,
        y: Tensor,
        a: &IcArgs,
        shift: &Tensor,
        d: &IcDims,
        g: &ConvGeometry,
        keep_relu_z: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let reason = "forward: dtype, int32 indexing or shared memory out of the kernels' range";
        if let Some(r) = try_fused(&y, reason, |stream| fused::layer::forward(&y, a, shift, d, g, keep_relu_z, stream))?
        {
            return Ok(r);
        }
        Libtorch.forward(y, a, shift, d, g, keep_relu_z)
    }

    fn collision_backward(
        &self,
        grad: &Tensor,
        relu_z: &Tensor,
        alpha: &Tensor,
        needs: &NeedsGrad,
        d: &IcDims,
        g: &ConvGeometry,
    ) -> Result<CollisionGrads> {
        let reason = "collision backward: dtype, int32 indexing or shared memory out of the kernels' range";
        let fused = try_fused(grad, reason, |stream| {
            fused::layer::collision_backward(grad, relu_z, alpha, needs, d, g, stream)
        })?;
        match fused {
            Some(r) => Ok(r),
            None => Libtorch.collision_backward(grad, relu_z, alpha, needs, d, g),
        }
    }

    /// For the route [`collision_backward`](Self::collision_backward) took (its [`AdjustGrad`]
    /// says which).
    fn adjust_backward(
        &self,
        adjust: AdjustGrad,
        dx: Option<Tensor>,
        a: &IcArgs,
        d: &IcDims,
        g: &ConvGeometry,
        needs: &NeedsGrad,
    ) -> Result<AdjustGrads> {
        let parts = match adjust {
            AdjustGrad::OnInput(gq) => fused::layer::adjust_on_input(&gq, dx, a, g, needs)?,
            AdjustGrad::Gz(gz) => {
                let reason = "box sum: dtype, int32 indexing or shared memory out of the kernels' range";
                let boxsum = |stream| Ok(fused::boxsum(a.x, [d.kh, d.kw], g, stream)?.map(|s| (s, stream)));
                match try_fused(a.x, reason, boxsum)? {
                    Some((s, stream)) => fused::layer::adjust_strided(&gz, s, dx, a, d, g, needs, stream)?,
                    None => libtorch::adjust_parts(&gz, dx, a, d, g, needs)?,
                }
            }
            adjust => return Libtorch.adjust_backward(adjust, dx, a, d, g, needs),
        };
        Ok(parts.finish(None)?)
    }
}
