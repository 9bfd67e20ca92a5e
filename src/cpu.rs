//! Dense CPU tensor access for the hand-written kernels (`boxsum.rs`, `fused.rs`): element types,
//! memory layouts, and raw views. Every kernel first checks [`dense`] and falls back to libtorch
//! ops when it returns `None`.
use crate::aten::SharedMut;
use crate::error::Result;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Kind, Tensor};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the hand-written CPU kernels on or off (off: every op takes the libtorch path that CUDA
/// uses, which is how the tests cover that path on a machine without a GPU). Returns the old value.
pub fn set_enabled(on: bool) -> bool {
    ENABLED.swap(on, Ordering::SeqCst)
}

/// Float element types the kernels are written for.
pub trait Elem:
    Copy + Send + Sync + PartialOrd + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> + std::ops::Mul<Output = Self> + std::ops::AddAssign
{
    const ZERO: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Elem for f64 {
    const ZERO: Self = 0.0;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// Memory order of a dense 4-D (N, C, H, W) tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Contiguous NCHW: `hw` elements per channel plane.
    Nchw { c: usize, hw: usize },
    /// channels_last: NHWC in memory.
    Nhwc { c: usize },
}

/// The layout of `t` if it is a dense 4-D NCHW or NHWC tensor.
pub fn layout_of(t: &Tensor) -> Option<Layout> {
    if t.dim() != 4 {
        return None;
    }
    let s = t.size();
    let (c, h, w) = (s[1], s[2], s[3]);
    if t.is_contiguous() {
        return Some(Layout::Nchw { c: c as usize, hw: (h * w) as usize });
    }
    let st = t.stride();
    let want = [h * w * c, 1, w * c, c];
    if (0..4).all(|i| s[i] == 1 || st[i] == want[i]) {
        Some(Layout::Nhwc { c: c as usize })
    } else {
        None
    }
}

/// `Some((kind, layout))` when every tensor is a CPU float32/float64 tensor of the first one's
/// dtype and a dense NCHW or NHWC layout (each may have its own shape, not its own layout kind).
pub fn dense(ts: &[&Tensor]) -> Option<(Kind, Layout)> {
    let first = ts[0];
    let kind = first.kind();
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    if first.device() != Device::Cpu || !matches!(kind, Kind::Float | Kind::Double) {
        return None;
    }
    let lay = layout_of(first)?;
    for t in &ts[1..] {
        if t.device() != Device::Cpu || t.kind() != kind {
            return None;
        }
        match (layout_of(t)?, lay) {
            (Layout::Nchw { .. }, Layout::Nchw { .. }) | (Layout::Nhwc { .. }, Layout::Nhwc { .. }) => {}
            _ => return None,
        }
    }
    Some((kind, lay))
}

/// An uninitialised (N, C, H, W) tensor in the given layout's memory order.
pub fn empty(shape: [i64; 4], kind: Kind, nhwc: bool) -> Result<Tensor> {
    let opts = (kind, Device::Cpu);
    if nhwc {
        let [n, c, h, w] = shape;
        Ok(Tensor::f_empty([n, h, w, c], opts)?.f_permute([0, 3, 1, 2])?)
    } else {
        Ok(Tensor::f_empty(shape, opts)?)
    }
}

/// # Safety
/// `t` must be a dense CPU tensor of element type `T`, not written meanwhile.
pub unsafe fn view<T: Elem>(t: &Tensor) -> &[T] {
    std::slice::from_raw_parts(t.data_ptr() as *const T, t.numel())
}

/// A pointer for disjoint writes from parallel tasks.
///
/// # Safety
/// `t` must be a dense CPU tensor of element type `T` that nothing else accesses meanwhile.
pub unsafe fn shared<T: Elem>(t: &Tensor) -> SharedMut<T> {
    SharedMut(t.data_ptr() as *mut T)
}
