//! Dense CPU tensor access for the hand-written kernels: which tensors they can read
//! ([`dense`]), raw views, and fresh outputs in a memory order.
//!
//! A kernel reads and writes tensor memory directly, so it first checks [`require`] (an internal
//! error, never a silent fallback, if a caller broke the plan).
use crate::aten::SharedMut;
use crate::dtype::{has_kernel, Elem};
use crate::error::{Error, Result};
pub use crate::layout::{layout_of, Layout, Order};
use tch::{Device, Kind, Tensor};

/// `Some((kind, layout))` when every tensor is a CPU float32/float64 tensor of the first one's
/// dtype and a dense NCHW or NHWC layout (each may have its own shape, not its own order).
pub fn dense(ts: &[&Tensor]) -> Option<(Kind, Layout)> {
    let first = ts[0];
    let kind = first.kind();
    if first.device() != Device::Cpu || !has_kernel(kind) {
        return None;
    }
    let lay = layout_of(first)?;
    for t in &ts[1..] {
        if t.device() != Device::Cpu || t.kind() != kind || layout_of(t)?.order() != lay.order() {
            return None;
        }
    }
    Some((kind, lay))
}

/// The layout of the first tensor after checking that all are dense CPU tensors of `kind` in
/// `order`: the precondition of every raw view below. An error here is a bug in the caller.
pub fn require(ts: &[&Tensor], kind: Kind, order: Order) -> Result<Layout> {
    match dense(ts) {
        Some((k, lay)) if k == kind && lay.order() == order => Ok(lay),
        _ => Err(Error::Runtime(format!(
            "internal: a CPU kernel planned for {kind:?} {order:?} got tensors {:?}",
            ts.iter().map(|t| (t.kind(), t.size(), t.stride())).collect::<Vec<_>>()
        ))),
    }
}

/// The sizes of a 4-d tensor (an internal error for any other rank).
pub fn shape4(t: &Tensor) -> Result<[i64; 4]> {
    <[i64; 4]>::try_from(t.size())
        .map_err(|s| Error::Runtime(format!("internal: a CPU kernel got a {}-d tensor", s.len())))
}

/// An uninitialised (N, C, H, W) CPU tensor in memory order `order`.
pub fn empty(shape: [i64; 4], kind: Kind, order: Order) -> Result<Tensor> {
    crate::layout::empty(shape, (kind, Device::Cpu), order)
}

/// # Safety
/// `t` must be a dense CPU tensor of element type `T` (see [`require`]), not written meanwhile.
pub unsafe fn view<T: Elem>(t: &Tensor) -> &[T] {
    std::slice::from_raw_parts(t.data_ptr() as *const T, t.numel())
}

/// A pointer for disjoint writes from parallel tasks.
///
/// # Safety
/// `t` must be a dense CPU tensor of element type `T` (see [`require`]) that nothing else
/// accesses meanwhile.
pub unsafe fn shared<T: Elem>(t: &Tensor) -> SharedMut<T> {
    SharedMut(t.data_ptr() as *mut T)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_checks_dtype_and_order() {
        let t = Tensor::zeros([2, 3, 4, 5], (Kind::Double, Device::Cpu));
        let cl = crate::layout::conform(&t, Order::Nhwc).unwrap();
        assert!(require(&[&t, &cl], Kind::Double, Order::Nchw).is_err());
        assert!(require(&[&t], Kind::Float, Order::Nchw).is_err());
        assert_eq!(require(&[&cl], Kind::Double, Order::Nhwc).unwrap(), Layout::Nhwc { c: 3 });
        assert_eq!(dense(&[&t, &t.view([2, 3, 20, 1])]), Some((Kind::Double, Layout::Nchw { c: 3, hw: 20 })));
        assert_eq!(dense(&[&t.to_kind(Kind::Half)]), None);
    }
}
