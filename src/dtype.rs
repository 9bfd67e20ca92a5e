//! Element types of the hand-written kernels and the one dtype dispatch: [`Elem`] (f32, f64) and
//! [`dispatch_float!`](crate::dispatch_float), which maps a `tch::Kind` to the Rust type. A leaf:
//! it imports nothing of the crate but `error.rs` (through the macro).
use tch::Kind;

/// Float element types the CPU kernels are written for.
pub trait Elem:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::AddAssign
{
    const ZERO: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    /// `s` as f32 values when `Self` is f32, else `None`: how a kernel reaches a hand-vectorised
    /// f32 loop from generic code.
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    /// [`Self::as_f32`] for a mutable slice.
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        Some(s)
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
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

/// Whether the CPU kernels have an element type for `k` (float32, float64).
pub fn has_kernel(k: Kind) -> bool {
    matches!(k, Kind::Float | Kind::Double)
}

/// Whether `k` is a floating-point dtype (the IC convolution accepts these).
pub fn is_float(k: Kind) -> bool {
    matches!(k, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

/// Runs `body` with the type name `T` bound to the Rust element type of `kind` (f32 for
/// `Kind::Float`, f64 for `Kind::Double`). `body` evaluates to a `Result<_>`; any other dtype gives
/// an internal `Error::Runtime` (the backend choice never sends one to a kernel).
///
/// ```ignore
/// dispatch_float!(kind, T => forward_cpu::<T>(x, &out, blocks))?;
/// ```
#[macro_export]
macro_rules! dispatch_float {
    ($kind:expr, $t:ident => $body:expr) => {
        match $kind {
            tch::Kind::Float => {
                type $t = f32;
                $body
            }
            tch::Kind::Double => {
                type $t = f64;
                $body
            }
            other => Err($crate::error::Error::Runtime(format!("internal: no CPU kernel for dtype {other:?}"))),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Result;

    fn size_of_elem<T: Elem>() -> Result<usize> {
        Ok(std::mem::size_of::<T>())
    }

    #[test]
    fn dispatch_maps_kinds() {
        assert_eq!(dispatch_float!(Kind::Float, T => size_of_elem::<T>()).unwrap(), 4);
        assert_eq!(dispatch_float!(Kind::Double, T => size_of_elem::<T>()).unwrap(), 8);
        let e = dispatch_float!(Kind::Half, T => size_of_elem::<T>()).unwrap_err();
        assert!(e.to_string().contains("Half"), "{e}");
        assert!(
            has_kernel(Kind::Double) && !has_kernel(Kind::BFloat16) && is_float(Kind::Half) && !is_float(Kind::Int64)
        );
    }
}
