//! The IC convolution (paper eq. 6/7), forward and backward on `tch::Tensor`s: the math that is
//! the same on every device, and the one place where a call's backend is chosen ([`choose`]).
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
//! Here, on every device: the argument checks (`validate.rs`), `Yb` and its gradients (libtorch's
//! convolution and `at::convolution_backward`), the shift `b1 - b2`, empty batches, and the sign
//! and scale of the P path's gradients. The rest, `S`, `P` and the collision, is the backend's:
//!
//! | [`Backend`]   | when                                                    | code                         |
//! |---------------|---------------------------------------------------------|------------------------------|
//! | `CpuFusedBox` | CPU f32/f64 dense in one order, stride 1, Cout <= 2 Cin | `cpu/collision_box.rs`, `cpu/gemm.rs` |
//! | `CpuFused`    | CPU f32/f64 dense in one order, otherwise               | `cpu/boxsum.rs`, `cpu/gemm.rs`, `cpu/collision.rs` |
//! | `CpuWidened`  | CPU f16/bf16 dense in one order, on a CPU without matrix instructions for that dtype | `cpu/widened.rs`, `cpu/mod.rs` (one of the two above, in f32) |
//! | `Cuda`        | CUDA tensors                                            | `cuda/`: fused kernels when switched on, else `libtorch/` |
//! | `Libtorch`    | everything else: half types on a CPU with matrix instructions for them, odd strides, mixed memory orders, kernels off | `libtorch/` |
//!
//! `relu_z` means the same whichever backend wrote it, so the forward and the backward of one
//! layer choose independently (the backward may get its gradient in another memory order).
use crate::aten::{convolution_backward, in_range, stage};
use crate::backend::{declined, IcBackend};
use crate::cpu;
use crate::cuda;
use crate::dtype::has_kernel;
use crate::error::Result;
use crate::layout::{conform, layout_of, Layout};
use crate::libtorch;
use crate::validate::{check_args, check_backward};
use tch::{Device, Kind, Tensor};

pub use crate::geometry::{ConvGeometry, IcDims};
pub use crate::types::{AdjustGrad, AdjustGrads, AdjustParts, CollisionGrads, IcArgs, IcForward, IcGrads, NeedsGrad};
pub use crate::validate::check_inputs;

/// The backend of one call: the implementation of the device-specific part (box sum, 1x1,
/// collision), each an [`IcBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Rust CPU kernels with the box sum inside the collision kernel (stride 1, `cpu/collision_box.rs`).
    CpuFusedBox(cpu::FusedBox),
    /// Rust CPU kernels: box sum, 1x1 as GEMMs, fused collision (`cpu/collision.rs`).
    CpuFused(cpu::Fused),
    /// Rust CPU kernels in float32 for a float16/bfloat16 call (`cpu/widened.rs`).
    CpuWidened(cpu::Widened),
    /// CUDA tensors (`cuda/`: the fused kernels when switched on, else the libtorch ops).
    Cuda(cuda::Cuda),
    /// libtorch ops on any device, dtype and layout (`libtorch/`).
    Libtorch(libtorch::Libtorch),
}

impl Backend {
    /// The backend's implementation of the three steps.
    pub fn steps(&self) -> &dyn IcBackend {
        match self {
            Backend::CpuFusedBox(b) => b,
            Backend::CpuFused(b) => b,
            Backend::CpuWidened(b) => b,
            Backend::Cuda(b) => b,
            Backend::Libtorch(b) => b,
        }
    }
}

/// What the backend choice looks at: x's device and dtype, and the memory order the call's
/// activation-sized tensors share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTraits {
    pub device: Device,
    pub kind: Kind,
    /// x's dense layout when every tensor of the call (x and y = conv(x, W) in the forward; x,
    /// grad and relu_z in the backward) is dense in that one order; `None` otherwise.
    pub layout: Option<Layout>,
    /// Whether the CPU kernels are on (`cpu::set_enabled`).
    pub cpu_kernels: bool,
    /// Whether this CPU has matrix instructions for `kind` (`cpu::widened::native_matmul`: only
    /// ever true for float16 and bfloat16).
    pub native_half: bool,
}

impl CallTraits {
    /// The traits of a call whose first tensor is `x`.
    pub fn of(ts: &[&Tensor]) -> Self {
        let x = ts[0];
        let layout =
            layout_of(x).filter(|l| ts[1..].iter().all(|t| layout_of(t).map(|m| m.order()) == Some(l.order())));
        let (device, kind) = (cuda::backend_device(x), x.kind());
        let native_half = device == Device::Cpu && cpu::widened::native_matmul(kind);
        Self { device, kind, layout, cpu_kernels: cpu::enabled(), native_half }
    }
}

/// Whether the CPU kernels can take the call: a plan, or why not.
fn cpu_plan(t: &CallTraits, g: &ConvGeometry) -> std::result::Result<cpu::Plan, &'static str> {
    if !t.cpu_kernels {
        return Err("the CPU kernels are switched off");
    }
    if !has_kernel(t.kind) {
        return Err("the dtype is not float32 or float64");
    }
    let lay = t.layout.ok_or("the call's tensors are not dense in one memory order")?;
    Ok(cpu::Plan::new(t.kind, lay.order(), g.groups))
}

/// `CpuFusedBox`: the CPU kernels take the call, the P path runs (`adjust_path`), stride 1, and
/// the fusion pays: it runs the 1x1 on x's grid with Cout outputs, against the box sum's grid with
/// Cin inputs (no more GEMM work when Cout <= 2 Cin).
fn can_run_cpu_fused_box(
    t: &CallTraits,
    d: &IcDims,
    g: &ConvGeometry,
    adjust_path: bool,
) -> std::result::Result<Backend, &'static str> {
    let plan = cpu_plan(t, g)?;
    if !adjust_path {
        return Err("no gradient through the P path: no box sum to fuse");
    }
    if !g.unit_stride() {
        return Err("the stride is not 1");
    }
    if d.cout > 2 * d.cin {
        return Err("Cout > 2 Cin: the fused 1x1 on x's grid costs more than the box sum first");
    }
    Ok(Backend::CpuFusedBox(cpu::FusedBox(plan)))
}

/// `CpuFused`: the CPU kernels take the call.
fn can_run_cpu_fused(
    t: &CallTraits,
    _d: &IcDims,
    g: &ConvGeometry,
    _adjust_path: bool,
) -> std::result::Result<Backend, &'static str> {
    Ok(Backend::CpuFused(cpu::Fused(cpu_plan(t, g)?)))
}

/// `CpuWidened`: a float16/bfloat16 call that the float32 kernels can take once widened, on a CPU
/// without matrix instructions for that dtype (with them, the libtorch steps keep the 1x1 in half
/// precision, where it is fast). Runs `CpuFusedBox` or `CpuFused` in float32, as they would choose.
fn can_run_cpu_widened(
    t: &CallTraits,
    d: &IcDims,
    g: &ConvGeometry,
    adjust_path: bool,
) -> std::result::Result<Backend, &'static str> {
    if !matches!(t.kind, Kind::Half | Kind::BFloat16) {
        return Err("the dtype is not float16 or bfloat16");
    }
    if t.native_half {
        return Err("this CPU has matrix instructions for the dtype: the libtorch steps keep it");
    }
    let wide = CallTraits { kind: Kind::Float, ..*t };
    let plan = cpu_plan(&wide, g)?;
    let fused_box = can_run_cpu_fused_box(&wide, d, g, adjust_path).is_ok();
    Ok(Backend::CpuWidened(cpu::Widened { plan, fused_box }))
}

type CanRun = fn(&CallTraits, &IcDims, &ConvGeometry, bool) -> std::result::Result<Backend, &'static str>;

/// The CPU backends in order of preference; `Libtorch` takes what they all decline.
const CPU_BACKENDS: [(&str, CanRun); 3] =
    [("cpu-fused-box", can_run_cpu_fused_box), ("cpu-fused", can_run_cpu_fused), ("cpu-widened", can_run_cpu_widened)];

/// The backend of one call, from x's device, dtype and layout (shared with y, or with grad and
/// relu_z: the CPU kernels run in one memory order, and the outputs then keep the layouts
/// libtorch's convolution gives them), the geometry, and whether the P path runs at all
/// (`adjust_path`: always in the forward; in the backward only when x or W' need a gradient).
/// CUDA tensors go to `Cuda`; on the CPU each backend in [`CPU_BACKENDS`] takes the call or says
/// why not (`backend::declined`: counted, logged with `IC_NETWORKS_LOG=debug`); the rest goes to
/// `Libtorch`.
pub fn choose(t: &CallTraits, d: &IcDims, g: &ConvGeometry, adjust_path: bool) -> Backend {
    match t.device {
        Device::Cuda(_) => return Backend::Cuda(cuda::Cuda),
        Device::Cpu => {
            for (name, can_run) in CPU_BACKENDS {
                match can_run(t, d, g, adjust_path) {
                    Ok(b) => return b,
                    Err(why) => declined(name, why),
                }
            }
        }
        _ => {}
    }
    Backend::Libtorch(libtorch::Libtorch)
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
    let args = IcArgs { x, weight, adjust_weight, adjust_bias, alpha, bias };
    let (out, relu_z) = run_forward(&args, g, true)?;
    let relu_z = relu_z.ok_or_else(|| crate::error::Error::Runtime("forward: relu_z was not produced".into()))?;
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
    let args = IcArgs { x, weight, adjust_weight, adjust_bias, alpha, bias };
    Ok(run_forward(&args, g, false)?.0)
}

/// The forward on an [`IcArgs`]: `(out, relu_z)`, `relu_z` only if `keep_relu_z` (the libtorch
/// and CpuFused backends return it always).
pub fn run_forward(a: &IcArgs, g: &ConvGeometry, keep_relu_z: bool) -> Result<(Tensor, Option<Tensor>)> {
    let d = check_args(a, g)?;
    tch::no_grad(|| {
        let y = in_range(stage::CONV, || a.x.f_conv2d(a.weight, a.bias, g.stride, g.padding, g.dilation, g.groups))?;
        if d.n == 0 {
            let relu_z = if keep_relu_z { Some(y.f_zeros_like()?) } else { None };
            return Ok((y, relu_z));
        }
        let shift = match a.bias {
            Some(b) => a.adjust_bias.f_sub(b)?,
            None => a.adjust_bias.shallow_clone(),
        };
        choose(&CallTraits::of(&[a.x, &y]), &d, g, true).steps().forward(y, a, &shift, &d, g, keep_relu_z)
    })
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
    let args = IcArgs { x, weight, adjust_weight, adjust_bias, alpha, bias: None };
    run_backward(grad, relu_z, &args, has_bias, g, needs)
}

/// The backward on an [`IcArgs`] (its `bias` unused: `has_bias` says whether there is one).
pub fn run_backward(
    grad: &Tensor,
    relu_z: &Tensor,
    a: &IcArgs,
    has_bias: bool,
    g: &ConvGeometry,
    needs: &NeedsGrad,
) -> Result<IcGrads> {
    let d = check_args(&IcArgs { bias: None, ..*a }, g)?;
    let IcArgs { x, weight, alpha, .. } = *a;
    check_backward(grad, relu_z, x, &d)?;
    let needs = NeedsGrad { bias: needs.bias && has_bias, ..*needs };
    tch::no_grad(|| {
        if d.n == 0 {
            return zero_grads(a, &needs, d.cout);
        }
        // A CPU gradient that is not dense (`out.sum().backward()` gives an expanded one) is made
        // dense in relu_z's order: one pass, after which the CPU kernels can take the call.
        let dense_grad;
        let grad = match (grad.device(), layout_of(grad), layout_of(relu_z)) {
            (Device::Cpu, None, Some(l)) => {
                dense_grad = conform(grad, l.order())?;
                &dense_grad
            }
            _ => grad,
        };
        let backend = choose(&CallTraits::of(&[x, grad, relu_z]), &d, g, needs.adjust_path());
        let steps = backend.steps();
        let cg = in_range(stage::COLLISION_BACKWARD, || steps.collision_backward(grad, relu_z, alpha, &needs, &d, g))?;
        let mut out = IcGrads {
            alpha: cg.dalpha.map(|t| t.f_to_kind(alpha.kind())?.f_reshape(alpha.size())).transpose()?,
            adjust_bias: cg.db1,
            bias: cg.db2,
            ..Default::default()
        };
        let (dx_main, dw) = match &cg.gy {
            Some(gy) => {
                in_range(stage::CONV_BACKWARD, || convolution_backward(gy, x, weight, g, needs.x, needs.weight))?
            }
            None => (None, None),
        };
        drop(cg.gy);
        out.weight = dw;
        if !needs.adjust_path() {
            out.x = dx_main;
            return Ok(out);
        }
        let p = in_range(stage::ADJUST_BACKWARD, || steps.adjust_backward(cg.adjust, dx_main, a, &d, g, &needs))?;
        out.x = p.x;
        out.adjust_weight = p.adjust_weight;
        Ok(out)
    })
}

/// Gradients of an empty batch: zeros of each argument's shape.
fn zero_grads(a: &IcArgs, needs: &NeedsGrad, cout: i64) -> Result<IcGrads> {
    let z = |on: bool, t: &Tensor| -> Result<Option<Tensor>> {
        if on {
            Ok(Some(t.f_zeros_like()?))
        } else {
            Ok(None)
        }
    };
    Ok(IcGrads {
        x: z(needs.x, a.x)?,
        weight: z(needs.weight, a.weight)?,
        adjust_weight: z(needs.adjust_weight, a.adjust_weight)?,
        adjust_bias: z(needs.adjust_bias, a.adjust_bias)?,
        alpha: z(needs.alpha, a.alpha)?,
        bias: if needs.bias { Some(Tensor::f_zeros([cout], (a.x.kind(), a.x.device()))?) } else { None },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Order;

    fn dims(cin: i64, cout: i64) -> IcDims {
        IcDims { n: 2, cin, cout, h: 9, w: 8, kh: 3, kw: 3, ho: 9, wo: 8 }
    }

    fn traits(device: Device, kind: Kind, layout: Option<Layout>, cpu_kernels: bool) -> CallTraits {
        CallTraits { device, kind, layout, cpu_kernels, native_half: false }
    }

    #[test]
    fn backend_choice_covers_every_case() {
        let nchw = Some(Layout::Nchw { c: 4, hw: 72 });
        let nhwc = Some(Layout::Nhwc { c: 4 });
        let s1 = ConvGeometry { padding: [1, 1], ..Default::default() };
        let s2 = ConvGeometry { stride: [2, 2], padding: [1, 1], ..Default::default() };
        let s1g2 = ConvGeometry { groups: 2, ..s1 };
        let plan = |kind, order, gemm| cpu::Plan { kind, order, gemm };
        let (fbox, fused) = (|p| CpuFusedBox(cpu::FusedBox(p)), |p| CpuFused(cpu::Fused(p)));
        let widened =
            |order, gemm, fused_box| CpuWidened(cpu::Widened { plan: plan(Kind::Float, order, gemm), fused_box });
        use Backend::*;
        let cases = [
            // (device, dtype, layout, kernels on, cin, cout, geometry, adjust path) -> backend
            (Device::Cpu, Kind::Float, nchw, true, 4, 6, s1, true, fbox(plan(Kind::Float, Order::Nchw, true))),
            (Device::Cpu, Kind::Double, nhwc, true, 4, 8, s1, true, fbox(plan(Kind::Double, Order::Nhwc, true))),
            (Device::Cpu, Kind::Float, nhwc, true, 4, 6, s1g2, true, fbox(plan(Kind::Float, Order::Nhwc, false))),
            (Device::Cpu, Kind::Float, nchw, true, 4, 6, s1g2, true, fbox(plan(Kind::Float, Order::Nchw, true))),
            // expanding channels: the box sum first, then the 1x1
            (Device::Cpu, Kind::Float, nchw, true, 2, 8, s1, true, fused(plan(Kind::Float, Order::Nchw, true))),
            // strided
            (Device::Cpu, Kind::Double, nchw, true, 4, 6, s2, true, fused(plan(Kind::Double, Order::Nchw, true))),
            (Device::Cpu, Kind::Float, nhwc, true, 4, 6, s2, true, fused(plan(Kind::Float, Order::Nhwc, true))),
            // backward without dx or dW': no P path to fuse
            (Device::Cpu, Kind::Float, nchw, true, 4, 6, s1, false, fused(plan(Kind::Float, Order::Nchw, true))),
            // half types (on a CPU without matrix instructions for them): float32 kernels, fused
            // box or not as a float32 call would choose
            (Device::Cpu, Kind::Half, nchw, true, 4, 6, s1, true, widened(Order::Nchw, true, true)),
            (Device::Cpu, Kind::BFloat16, nhwc, true, 4, 6, s2, true, widened(Order::Nhwc, true, false)),
            (Device::Cpu, Kind::BFloat16, nhwc, true, 4, 6, s1g2, true, widened(Order::Nhwc, false, true)),
            (Device::Cpu, Kind::BFloat16, nchw, true, 2, 8, s1, true, widened(Order::Nchw, true, false)),
            // odd strides, kernels off: libtorch ops
            (Device::Cpu, Kind::BFloat16, None, true, 4, 6, s1, true, Libtorch(libtorch::Libtorch)),
            (Device::Cpu, Kind::Half, nchw, false, 4, 6, s1, true, Libtorch(libtorch::Libtorch)),
            (Device::Cpu, Kind::Float, None, true, 4, 6, s1, true, Libtorch(libtorch::Libtorch)),
            (Device::Cpu, Kind::Double, nchw, false, 4, 6, s1, true, Libtorch(libtorch::Libtorch)),
            // CUDA, any dtype and layout
            (Device::Cuda(0), Kind::Float, nchw, true, 4, 6, s1, true, Cuda(cuda::Cuda)),
            (Device::Cuda(1), Kind::Half, None, false, 4, 6, s2, false, Cuda(cuda::Cuda)),
            (Device::Mps, Kind::Float, nchw, true, 4, 6, s1, true, Libtorch(libtorch::Libtorch)),
        ];
        for (dev, kind, lay, on, cin, cout, g, adjust, want) in cases {
            let got = choose(&traits(dev, kind, lay, on), &dims(cin, cout), &g, adjust);
            assert_eq!(got, want, "{dev:?} {kind:?} {lay:?} kernels={on} {cin}->{cout} {g:?} adjust={adjust}");
        }
        // a CPU with matrix instructions for the half type: the libtorch steps keep it
        for kind in [Kind::Half, Kind::BFloat16] {
            let t = CallTraits { native_half: true, ..traits(Device::Cpu, kind, nchw, true) };
            assert_eq!(choose(&t, &dims(4, 6), &s1, true), Libtorch(libtorch::Libtorch));
        }
    }

    #[test]
    fn a_declining_backend_says_why_and_is_counted() {
        let count =
            |b: &str, r: &str| crate::backend::declines().iter().find(|e| e.0 == b && e.1 == r).map_or(0, |e| e.2);
        let why = "the stride is not 1";
        let before = count("cpu-fused-box", why);
        let t = traits(Device::Cpu, Kind::Float, Some(Layout::Nchw { c: 4, hw: 72 }), true);
        let s2 = ConvGeometry { stride: [2, 2], ..Default::default() };
        assert!(matches!(choose(&t, &dims(4, 6), &s2, true), Backend::CpuFused(_)));
        assert!(count("cpu-fused-box", why) > before);
        // CUDA tensors and other devices: no CPU backend asked, nothing declined on their behalf
        let off = count("cpu-fused", "the CPU kernels are switched off");
        let t = traits(Device::Cuda(0), Kind::Float, None, false);
        assert!(matches!(choose(&t, &dims(4, 6), &s2, true), Backend::Cuda(_)));
        assert_eq!(count("cpu-fused", "the CPU kernels are switched off"), off);
    }

    #[test]
    fn traits_of_a_tensor() {
        let x = Tensor::zeros([2, 4, 9, 8], (Kind::Float, Device::Cpu));
        let t = CallTraits::of(&[&x]);
        assert_eq!((t.device, t.kind, t.layout), (Device::Cpu, Kind::Float, Some(Layout::Nchw { c: 4, hw: 72 })));
        assert_eq!(CallTraits::of(&[&x.transpose(2, 3)]).layout, None);
        // one memory order for all, or none
        let cl = crate::layout::conform(&x, crate::layout::Order::Nhwc).unwrap();
        let y = crate::layout::conform(
            &Tensor::zeros([2, 6, 7, 6], (Kind::Float, Device::Cpu)),
            crate::layout::Order::Nhwc,
        )
        .unwrap();
        assert_eq!(CallTraits::of(&[&cl, &y]).layout, Some(Layout::Nhwc { c: 4 }));
        // a channel slice of an NHWC tensor is not dense
        assert_eq!(CallTraits::of(&[&cl, &cl.narrow(1, 0, 2)]).layout, None);
        assert_eq!(CallTraits::of(&[&x, &cl]).layout, None);
        assert_eq!(CallTraits::of(&[&x, &x.narrow(0, 0, 1).expand([3, 4, 9, 8], false)]).layout, None);
    }
}
