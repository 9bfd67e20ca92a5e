//! The kernel wrappers: one Rust function per operation of `collision.cu` (box forward and
//! backward, the plain collision, the box sum and its transpose), each checking that the kernels
//! apply (dtype, device, int32 indexing, shared memory) and returning `None` / `false` when they do
//! not, then packing the parameters and launching on the caller's stream.
use super::launch::{arg, Launcher};
use super::params::{self, IcBoxParams, IcBoxsumParams, IcReduceParams, IcStrides, THREADS};
use super::{available, emulation, RawStream};
use crate::error::{Error, Result};
use crate::geometry::ConvGeometry;
use crate::layout::{empty, layout_of, order_like, Order};
use std::ffi::c_void;
use tch::{Device, Kind, Tensor};

/// (entry suffix, accumulation kind) for the kernels' dtypes.
fn dtype(k: Kind) -> Option<(&'static str, Kind)> {
    match k {
        Kind::Float => Some(("f32", Kind::Float)),
        Kind::Double => Some(("f64", Kind::Double)),
        Kind::Half => Some(("f16", Kind::Float)),
        Kind::BFloat16 => Some(("bf16", Kind::Float)),
        _ => None,
    }
}

/// Bytes per element of a tensor of a kernel dtype.
fn elem_bytes(k: Kind) -> usize {
    match k {
        Kind::Half | Kind::BFloat16 => 2,
        Kind::Double => 8,
        _ => 4,
    }
}

fn acc_bytes(k: Kind) -> usize {
    if k == Kind::Double {
        8
    } else {
        4
    }
}

/// The CUDA ordinal and dtype shared by 4-D tensors `ts`, or `None`.
fn common(ts: &[&Tensor]) -> Option<(usize, Kind)> {
    let d = ts[0].device();
    let k = ts[0].kind();
    let ordinal = emulation::cuda_ordinal(d)?;
    if ts.iter().any(|t| t.device() != d || t.kind() != k || t.dim() != 4) {
        return None;
    }
    dtype(k)?;
    Some((ordinal, k))
}

/// Channel-fastest thread order (channels_last tensors, dense or not).
fn is_cl(t: &Tensor) -> bool {
    order_like(t) == Order::Nhwc
}

/// Dense (NCHW- or NHWC-contiguous): safe to write in place.
fn dense(t: &Tensor) -> bool {
    layout_of(t).is_some()
}

/// An empty tensor shaped `shape`, in `like`'s memory format (NCHW or channels_last).
fn empty_as(shape: [i64; 4], like: &Tensor) -> Result<Tensor> {
    empty(shape, (like.kind(), like.device()), order_like(like))
}

fn ptr(t: &Tensor) -> u64 {
    t.data_ptr() as u64
}

/// How a kernel gets alpha: by value (`ptr` 0) or, for an alpha on a CUDA device, through a
/// pointer the kernel reads once per thread.
///
/// * an alpha on the CPU (a 0-d CPU tensor, which the op accepts) is read here, once per call,
///   and passed by value: no copy to the device, no synchronisation, nothing that breaks CUDA-graph
///   capture (the captured value is the one at capture time, as for any host scalar);
/// * an alpha on a CUDA device stays there: its own memory when it has the accumulation dtype,
///   else a one-element cast on the stream (capture-safe). Reading it on the host would
///   synchronise, and in a graph it would freeze a parameter that training changes.
struct AlphaArg {
    value: f64,
    ptr: u64,
    _keep: Option<Tensor>,
}

fn alpha_arg(alpha: &Tensor, acc: Kind) -> Result<AlphaArg> {
    if alpha.device() == Device::Cpu {
        let value = alpha.f_double_value(&vec![0; alpha.dim()])?;
        return Ok(AlphaArg { value, ptr: 0, _keep: None });
    }
    let t = if alpha.kind() == acc { alpha.shallow_clone() } else { alpha.f_to_kind(acc)? };
    Ok(AlphaArg { value: 0.0, ptr: ptr(&t), _keep: Some(t) })
}

/// A kernel's by-value alpha in the accumulation dtype (`f32` or `f64`), laid out as its parameter.
enum AlphaValue {
    F32(f32),
    F64(f64),
}

impl AlphaValue {
    fn new(v: f64, acc: Kind) -> Self {
        if acc == Kind::Double {
            AlphaValue::F64(v)
        } else {
            AlphaValue::F32(v as f32)
        }
    }
    fn arg(&mut self) -> *mut c_void {
        match self {
            AlphaValue::F32(v) => arg(v),
            AlphaValue::F64(v) => arg(v),
        }
    }
}

/// Stride-1 forward with the box sum fused: `y` = conv(x, W) + b2 (N, C, Ho, Wo) becomes
/// `out = y + alpha * relu(y - boxsum(q) + shift)` in place; `q` = conv1x1(x, W') (N, C, H, W) on
/// x's grid; `shift` = b1 - b2 (C). Returns `(out, relu_z)` (`relu_z` only with `keep_relu_z`), or
/// `None` when the fused path does not apply.
#[allow(clippy::too_many_arguments)]
pub fn box_forward(
    y: &Tensor,
    q: &Tensor,
    shift: &Tensor,
    alpha: &Tensor,
    k: [i64; 2],
    padding: [i64; 2],
    dilation: [i64; 2],
    keep_relu_z: bool,
    stream: RawStream,
) -> Result<Option<(Tensor, Option<Tensor>)>> {
    let Some((ordinal, kind)) = common(&[y, q]) else { return Ok(None) };
    if !available() || !dense(y) {
        return Ok(None);
    }
    let (ys, qs) = (y.size(), q.size());
    if qs[0] != ys[0] || qs[1] != ys[1] || shift.numel() as i64 != ys[1] {
        return Err(Error::Value(format!("fused forward: q {qs:?} / shift {:?} do not match y {ys:?}", shift.size())));
    }
    let (suffix, acc) = dtype(kind).unwrap();
    let Some((mut p, smem, threads)) = params::plan_box(
        [ys[0], ys[1], ys[2], ys[3]],
        [qs[2], qs[3]],
        k,
        padding,
        dilation,
        is_cl(y),
        false,
        elem_bytes(kind),
        acc_bytes(acc),
    ) else {
        return Ok(None);
    };
    let extra = halo_extra(&p);
    if !params::fits_i32(&ys, &y.stride(), extra) || !params::fits_i32(&qs, &q.stride(), extra) {
        return Ok(None);
    }
    let rz = if keep_relu_z { Some(y.f_empty_like()?) } else { None };
    if y.numel() == 0 {
        return Ok(Some((y.shallow_clone(), rz)));
    }
    let sh = shift.f_to_device(y.device())?.f_to_kind(acc)?.f_contiguous()?;
    let al = alpha_arg(alpha, acc)?;
    p.s_box = IcStrides::of(&q.stride());
    p.s_a = IcStrides::of(&y.stride());
    p.s_b = p.s_a;
    p.s_r = rz.as_ref().map(|r| IcStrides::of(&r.stride())).unwrap_or_default();
    let l = Launcher::new(ordinal, stream)?;
    let (mut py, mut pq, mut po) = (ptr(y), ptr(q), ptr(y));
    let mut pr = rz.as_ref().map(ptr).unwrap_or(0);
    let (mut ps, mut av, mut pa) = (ptr(&sh), AlphaValue::new(al.value, acc), al.ptr);
    let grid = [(p.tiles_h * p.tiles_w) as u32, p.tiles_c as u32, p.n as u32];
    l.run(
        &format!("ic_fwd_box_{suffix}"),
        grid,
        threads,
        smem,
        &mut [
            arg(&mut py),
            arg(&mut pq),
            arg(&mut po),
            arg(&mut pr),
            arg(&mut ps),
            av.arg(),
            arg(&mut pa),
            arg(&mut p),
        ],
    )?;
    Ok(Some((y.shallow_clone(), rz)))
}

/// The plain collision forward (any stride): `y` becomes `y + alpha * relu(y - p + shift)` in
/// place, `p` = conv1x1(boxsum(x), W') on the same grid. [`box_forward`] with a 1 x 1 box.
pub fn collision_forward(
    y: &Tensor,
    p: &Tensor,
    shift: &Tensor,
    alpha: &Tensor,
    keep_relu_z: bool,
    stream: RawStream,
) -> Result<Option<(Tensor, Option<Tensor>)>> {
    if y.size() != p.size() {
        return Ok(None);
    }
    box_forward(y, p, shift, alpha, [1, 1], [0, 0], [1, 1], keep_relu_z, stream)
}

/// How far past a tensor's size the box kernels' indices reach (tile overhang and halo), for
/// [`params::fits_i32`].
fn halo_extra(p: &IcBoxParams) -> i64 {
    (p.tc + p.th + p.tw) as i64 + (p.dh as i64) * (p.kh as i64) + (p.dw as i64) * (p.kw as i64) + (p.ph + p.pw) as i64
}

/// Outputs of the fused backward. The sums are in the accumulation dtype (float32, or float64 for
/// float64 inputs) on the device; the caller casts them to the parameters' dtypes.
pub struct FusedGrads {
    /// `grad + gz` (the conv's output gradient), when asked for.
    pub gy: Option<Tensor>,
    /// [`box_backward`]: `G = boxsum^T(gz)` on x's grid (N, C, H, W), alpha included.
    /// [`collision_backward`]: `gz = alpha * grad * [relu_z > 0]` itself.
    pub g: Tensor,
    /// (C): sum over N, H, W of gz (db1).
    pub db1: Tensor,
    /// (C): sum of grad (db2).
    pub db2: Tensor,
    /// (): sum of grad * relu_z (d alpha), when asked for.
    pub dalpha: Option<Tensor>,
}

/// Stride-1 backward with the transposed box sum fused, for an input of spatial size `in_hw`:
/// reads `grad` and `relu_z` (N, C, Ho, Wo) once (plus halo). Deterministic: the per-block partial
/// sums are added in a fixed order by a second kernel, one block per channel, no atomics; d alpha
/// (only with `need_dalpha`) is then the sum of its C per-channel values. `None` when it does not
/// apply.
#[allow(clippy::too_many_arguments)]
pub fn box_backward(
    grad: &Tensor,
    relu_z: &Tensor,
    alpha: &Tensor,
    in_hw: [i64; 2],
    k: [i64; 2],
    padding: [i64; 2],
    dilation: [i64; 2],
    need_gy: bool,
    need_dalpha: bool,
    stream: RawStream,
) -> Result<Option<FusedGrads>> {
    let Some((ordinal, kind)) = common(&[grad, relu_z]) else { return Ok(None) };
    if !available() || grad.size() != relu_z.size() {
        return Ok(None);
    }
    let gs = grad.size();
    let (suffix, acc) = dtype(kind).unwrap();
    let Some((mut p, smem, threads)) = params::plan_box(
        [gs[0], gs[1], gs[2], gs[3]],
        in_hw,
        k,
        padding,
        dilation,
        is_cl(grad),
        true,
        elem_bytes(kind),
        acc_bytes(acc),
    ) else {
        return Ok(None);
    };
    let extra = halo_extra(&p);
    let g_size = [gs[0], gs[1], in_hw[0], in_hw[1]];
    // G and gy are made below in grad's memory format: their strides are those of a dense tensor
    let dense_of = |s: &[i64]| -> Vec<i64> {
        if is_cl(grad) {
            vec![s[1] * s[2] * s[3], 1, s[3] * s[1], s[1]]
        } else {
            vec![s[1] * s[2] * s[3], s[2] * s[3], s[3], 1]
        }
    };
    if ![
        (&gs[..], grad.stride()),
        (&relu_z.size()[..], relu_z.stride()),
        (&gs[..], dense_of(&gs)),
        (&g_size[..], dense_of(&g_size)),
    ]
    .iter()
    .all(|(z, s)| params::fits_i32(z, s, extra))
    {
        return Ok(None);
    }
    let (n, c) = (gs[0], gs[1]);
    let gy = if need_gy { Some(grad.f_empty_like()?) } else { None };
    let mut g = empty_as([n, c, in_hw[0], in_hw[1]], grad)?;
    let tiles_sp = (p.tiles_h as i64) * (p.tiles_w as i64);
    if tiles_sp > i32::MAX as i64 {
        return Err(Error::Runtime("fused backward: too many tiles".into()));
    }
    let n_part = n * p.tiles_c as i64 * tiles_sp * p.tc as i64 * 3;
    let opts = (acc, grad.device());
    let sums = Tensor::f_zeros([c, 3], opts)?;
    if n > 0 {
        let part = Tensor::f_empty([n_part], opts)?;
        let al = alpha_arg(alpha, acc)?;
        p.s_box = IcStrides::of(&g.stride());
        p.s_a = IcStrides::of(&grad.stride());
        p.s_b = gy.as_ref().map(|t| IcStrides::of(&t.stride())).unwrap_or_default();
        p.s_r = IcStrides::of(&relu_z.stride());
        let l = Launcher::new(ordinal, stream)?;
        let (mut pg, mut pr, mut pgy, mut pgg) = (ptr(grad), ptr(relu_z), gy.as_ref().map(ptr).unwrap_or(0), ptr(&g));
        let (mut av, mut pa, mut pp) = (AlphaValue::new(al.value, acc), al.ptr, ptr(&part));
        let grid = [tiles_sp as u32, p.tiles_c as u32, p.n as u32];
        l.run(
            &format!("ic_bwd_box_{suffix}"),
            grid,
            threads,
            smem,
            &mut [
                arg(&mut pg),
                arg(&mut pr),
                arg(&mut pgy),
                arg(&mut pgg),
                av.arg(),
                arg(&mut pa),
                arg(&mut pp),
                arg(&mut p),
            ],
        )?;
        let mut rp = IcReduceParams {
            n: p.n,
            c: p.c,
            tc: p.tc,
            tiles_c: p.tiles_c,
            tiles_sp: tiles_sp as i32,
            dalpha: need_dalpha as i32,
        };
        let (mut pp2, mut ps) = (ptr(&part), ptr(&sums));
        let red_name = if acc == Kind::Double { "ic_reduce_f64" } else { "ic_reduce_f32" };
        l.run(
            red_name,
            [c as u32, 1, 1],
            THREADS,
            3 * THREADS as usize * acc_bytes(acc),
            &mut [arg(&mut pp2), arg(&mut ps), arg(&mut rp)],
        )?;
    } else {
        // nothing to launch; G is all zeros
        let _ = g.f_zero_()?;
    }
    // d alpha: the per-channel values added by one small reduction (deterministic: torch's sum of
    // a C-element tensor takes a fixed order)
    let dalpha = if need_dalpha { Some(sums.f_select(1, 2)?.f_sum(acc)?) } else { None };
    Ok(Some(FusedGrads { gy, g, db1: sums.f_select(1, 0)?, db2: sums.f_select(1, 1)?, dalpha }))
}

/// The plain collision backward (any stride): `gz`, `gy` and the sums on the output grid.
/// [`box_backward`] with a 1 x 1 box.
pub fn collision_backward(
    grad: &Tensor,
    relu_z: &Tensor,
    alpha: &Tensor,
    need_gy: bool,
    need_dalpha: bool,
    stream: RawStream,
) -> Result<Option<FusedGrads>> {
    let s = grad.size();
    if s.len() != 4 {
        return Ok(None);
    }
    box_backward(grad, relu_z, alpha, [s[2], s[3]], [1, 1], [0, 0], [1, 1], need_gy, need_dalpha, stream)
}

/// The kernels' parameters for a box of `k` with `g`'s stride, padding and dilation over `x`
/// (N, C, H, W) and its grid (ho, wo); `None` outside int32 or with an empty grid.
fn box_params(
    k: [i64; 2],
    g: &ConvGeometry,
    x: [i64; 4],
    ho: i64,
    wo: i64,
    mode: i32,
    cl: bool,
) -> Option<IcBoxsumParams> {
    let all = [
        x[0],
        x[1],
        x[2],
        x[3],
        ho,
        wo,
        k[0],
        k[1],
        g.stride[0],
        g.stride[1],
        g.padding[0],
        g.padding[1],
        g.dilation[0],
        g.dilation[1],
    ];
    if ho < 1 || wo < 1 || all.iter().any(|&v| v < 0 || v > i32::MAX as i64) || x.iter().product::<i64>() > i64::MAX / 2
    {
        return None;
    }
    Some(IcBoxsumParams {
        n: x[0] as i32,
        c: x[1] as i32,
        h: x[2] as i32,
        w: x[3] as i32,
        ho: ho as i32,
        wo: wo as i32,
        kh: k[0] as i32,
        kw: k[1] as i32,
        sh: g.stride[0] as i32,
        sw: g.stride[1] as i32,
        ph: g.padding[0] as i32,
        pw: g.padding[1] as i32,
        dh: g.dilation[0] as i32,
        dw: g.dilation[1] as i32,
        mode,
        cl: cl as i32,
        ..Default::default()
    })
}

/// Blocks of a grid-stride elementwise launch: enough for every SM, bounded.
fn flat_blocks(total: i64) -> u32 {
    ((total + THREADS as i64 - 1) / THREADS as i64).clamp(1, 65535 * 8) as u32
}

/// `S = boxsum(x)` on the conv's output grid (any stride), in x's memory format.
pub fn boxsum(x: &Tensor, k: [i64; 2], g: &ConvGeometry, stream: RawStream) -> Result<Option<Tensor>> {
    let Some((ordinal, kind)) = common(&[x]) else { return Ok(None) };
    if !available() {
        return Ok(None);
    }
    let xs = x.size();
    let (ho, wo) = (g.out_size(0, xs[2], k[0]), g.out_size(1, xs[3], k[1]));
    let Some(mut p) = box_params(k, g, [xs[0], xs[1], xs[2], xs[3]], ho, wo, 0, is_cl(x)) else { return Ok(None) };
    let s = empty_as([xs[0], xs[1], ho, wo], x)?;
    if s.numel() == 0 {
        return Ok(Some(s));
    }
    p.s_in = IcStrides::of(&x.stride());
    p.s_out = IcStrides::of(&s.stride());
    let l = Launcher::new(ordinal, stream)?;
    let (mut px, mut ps) = (ptr(x), ptr(&s));
    let suffix = dtype(kind).unwrap().0;
    l.run(
        &format!("ic_boxsum_{suffix}"),
        [flat_blocks(s.numel() as i64), 1, 1],
        THREADS,
        0,
        &mut [arg(&mut px), arg(&mut ps), arg(&mut p)],
    )?;
    Ok(Some(s))
}

/// The kernel's mode for `out -= boxsum^T(ds)` (`ic_boxsum_t_*` also writes (0) and adds (2)).
const BOXSUM_T_SUBTRACT: i32 = 1;

/// `out -= boxsum^T(ds)` in place; `out` (N, C, H, W) on x's grid, dense; `ds` on the conv's output
/// grid. `Ok(false)` when it does not apply (the caller uses libtorch).
pub fn boxsum_t_sub_(out: &Tensor, ds: &Tensor, k: [i64; 2], g: &ConvGeometry, stream: RawStream) -> Result<bool> {
    let Some((ordinal, kind)) = common(&[out, ds]) else { return Ok(false) };
    if !available() || !dense(out) {
        return Ok(false);
    }
    let (os, ss) = (out.size(), ds.size());
    if ss[0] != os[0] || ss[1] != os[1] || ss[2] != g.out_size(0, os[2], k[0]) || ss[3] != g.out_size(1, os[3], k[1]) {
        return Err(Error::Value(format!("boxsum_t: ds {ss:?} is not the box-sum grid of {os:?}")));
    }
    let Some(mut p) = box_params(k, g, [os[0], os[1], os[2], os[3]], ss[2], ss[3], BOXSUM_T_SUBTRACT, is_cl(out))
    else {
        return Ok(false);
    };
    if out.numel() == 0 {
        return Ok(true);
    }
    p.s_in = IcStrides::of(&ds.stride());
    p.s_out = IcStrides::of(&out.stride());
    let l = Launcher::new(ordinal, stream)?;
    let (mut pd, mut po) = (ptr(ds), ptr(out));
    let suffix = dtype(kind).unwrap().0;
    l.run(
        &format!("ic_boxsum_t_{suffix}"),
        [flat_blocks(out.numel() as i64), 1, 1],
        THREADS,
        0,
        &mut [arg(&mut pd), arg(&mut po), arg(&mut p)],
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_tensors_never_touch_the_driver() {
        let y = Tensor::zeros([1, 2, 3, 3], (Kind::Float, Device::Cpu));
        let a = Tensor::from(0.5f32);
        let sh = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        assert!(box_forward(&y, &y, &sh, &a, [3, 3], [1, 1], [1, 1], true, 0).unwrap().is_none());
        assert!(box_backward(&y, &y, &a, [3, 3], [3, 3], [1, 1], [1, 1], true, true, 0).unwrap().is_none());
        let g = ConvGeometry { stride: [2, 2], padding: [1, 1], ..Default::default() };
        assert!(boxsum(&y, [3, 3], &g, 0).unwrap().is_none());
        assert!(!boxsum_t_sub_(&y, &y, [3, 3], &g, 0).unwrap());
    }
}
