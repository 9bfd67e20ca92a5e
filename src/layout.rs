//! Memory order of 4-D (N, C, H, W) tensors on any device: contiguous NCHW or channels_last
//! (NHWC in memory). A leaf: it imports nothing of the crate but `error.rs`.
use crate::error::Result;
use tch::{Device, Kind, Tensor};

/// Memory order of a dense 4-D (N, C, H, W) tensor, without its sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Contiguous NCHW.
    Nchw,
    /// channels_last: NHWC in memory.
    Nhwc,
}

/// Memory order of a dense 4-D (N, C, H, W) tensor, with the sizes the kernels step by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Contiguous NCHW: `hw` elements per channel plane.
    Nchw { c: usize, hw: usize },
    /// channels_last: NHWC in memory.
    Nhwc { c: usize },
}

impl Layout {
    pub fn order(self) -> Order {
        match self {
            Layout::Nchw { .. } => Order::Nchw,
            Layout::Nhwc { .. } => Order::Nhwc,
        }
    }
}

/// The layout of `t` if it is a dense 4-D NCHW or NHWC tensor (on any device).
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

/// Whether `t` is a dense channels_last tensor ([`layout_of`]).
pub fn is_nhwc(t: &Tensor) -> bool {
    matches!(layout_of(t), Some(Layout::Nhwc { .. }))
}

/// The memory order a new tensor made after `t` takes, dense or not: channels_last when `t`'s
/// channels are its fastest dim (channel stride 1, more than one channel), else NCHW.
pub fn order_like(t: &Tensor) -> Order {
    if t.size()[1] > 1 && t.stride()[1] == 1 {
        Order::Nhwc
    } else {
        Order::Nchw
    }
}

/// An uninitialised (N, C, H, W) tensor in memory order `order`.
pub fn empty(shape: [i64; 4], opts: (Kind, Device), order: Order) -> Result<Tensor> {
    match order {
        Order::Nhwc => {
            // channels_last strides on a tensor of its own (a permuted view would keep its base
            // alive, and with it a second reference to the storage)
            let [_, c, h, w] = shape;
            Ok(Tensor::f_empty_strided(shape, [h * w * c, 1, w * c, c], opts)?)
        }
        Order::Nchw => Ok(Tensor::f_empty(shape, opts)?),
    }
}

/// `t` in memory order `order`: `t` itself (shared) when it already is, else a copy. Values are
/// unchanged; only where they sit in memory.
pub fn conform(t: &Tensor, order: Order) -> Result<Tensor> {
    if layout_of(t).map(|l| l.order()) == Some(order) {
        return Ok(t.shallow_clone());
    }
    Ok(match order {
        Order::Nchw => t.f_contiguous()?,
        Order::Nhwc => t.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conform_keeps_values_and_sets_order() {
        let t = Tensor::arange(2 * 3 * 4 * 5, (Kind::Double, Device::Cpu)).view([2, 3, 4, 5]);
        let cl = conform(&t, Order::Nhwc).unwrap();
        assert_eq!(layout_of(&cl), Some(Layout::Nhwc { c: 3 }));
        assert!(cl.equal(&t));
        let back = conform(&cl, Order::Nchw).unwrap();
        assert_eq!(layout_of(&back), Some(Layout::Nchw { c: 3, hw: 20 }));
        assert!(back.equal(&t));
        // already in order: the same storage
        assert_eq!(conform(&t, Order::Nchw).unwrap().data_ptr(), t.data_ptr());
        assert_eq!(layout_of(&t.transpose(2, 3)), None);
        assert!(is_nhwc(&cl) && !is_nhwc(&t));
        assert_eq!((order_like(&cl), order_like(&t)), (Order::Nhwc, Order::Nchw));
        // channels fastest without being dense (a channel slice): still made channels_last
        assert_eq!(order_like(&cl.narrow(1, 0, 2)), Order::Nhwc);
        let e = empty([2, 3, 4, 5], (Kind::Float, Device::Cpu), Order::Nhwc).unwrap();
        assert_eq!((e.size(), layout_of(&e)), (vec![2, 3, 4, 5], Some(Layout::Nhwc { c: 3 })));
    }
}
