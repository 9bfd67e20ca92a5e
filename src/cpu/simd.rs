//! The CPU kernels' hot loops compiled twice: for the x86-64 baseline that every wheel targets
//! (SSE2, 4 floats per instruction) and for AVX2 + FMA (8), chosen per call by what the CPU has.
//!
//! [`multiversion!`](crate::multiversion) defines a function whose body is an `#[inline(always)]`
//! inner function, called either directly (baseline code) or through a copy compiled with
//! `#[target_feature(enable = "avx2,fma")]`, into which it is inlined and so vectorised 8 wide.
//! Both copies do the same operations in the same order (Rust never fuses a multiply and an add on
//! its own, and the kernels' reductions have a fixed order), so the results are the same bits;
//! [`set_enabled`] turns the AVX2 copies off, for the tests that check that.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the AVX2 copies on or off (off: the baseline code everywhere); returns the old value.
pub fn set_enabled(on: bool) -> bool {
    ENABLED.swap(on, Ordering::SeqCst)
}

/// Whether this CPU has AVX2 and FMA (read once).
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether the AVX2 copies run: the CPU has the features and [`set_enabled`] did not turn them off.
#[inline]
pub fn avx2() -> bool {
    ENABLED.load(Ordering::Relaxed) && available()
}

/// `multiversion! { /// docs
/// pub(crate) fn name<T: Elem>(args...) -> R { body } }` defines `name` with that body compiled
/// twice: inlined into a copy built for AVX2 + FMA, which runs when [`avx2`] says so, and into the
/// baseline code. Parameters are plain names (rebind one with `let mut` in the body to change it).
#[macro_export]
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident<$T:ident: Elem>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$T: $crate::dtype::Elem>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp<$T: $crate::dtype::Elem>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<$T: $crate::dtype::Elem>($($arg: $ty),*) $(-> $ret)? {
                    imp::<$T>($($arg),*)
                }
                if $crate::cpu::simd::avx2() {
                    // SAFETY: the CPU has AVX2 and FMA (checked by avx2()).
                    return unsafe { avx2::<$T>($($arg),*) };
                }
            }
            imp::<$T>($($arg),*)
        }
    };
}
