//! The CPU kernels' hot loops compiled twice: for the x86-64 baseline that every wheel targets
//! (SSE2, 4 floats per instruction) and for AVX2 + FMA (8), chosen per call by what the CPU has.
//!
//! [`multiversion!`](crate::multiversion) defines a function whose body is an `#[inline(always)]`
//! inner function, called either directly (baseline code) or through a copy compiled with
//! `#[target_feature(enable = "avx2,fma")]`, into which it is inlined and so vectorised 8 wide.
//! Both copies do the same operations in the same order (Rust never fuses a multiply and an add on
//! its own, and the kernels' reductions have a fixed order), so the results are the same bits;
//! [`set_enabled`] turns the AVX2 copies off, for the tests that check that.
//!
//! Loops the compiler cannot vectorise from plain code are written here with AVX2 intrinsics, for
//! f32, doing the same additions in the same order as the scalar loop they stand in for:
//! [`stride2_taps3`].
use crate::dtype::Elem;
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

/// Whether this CPU has AVX-512F, where BLAS works twice as wide as the AVX2 loops here
/// (`is_x86_feature_detected!` reads cpuid once and caches it).
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
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

/// The horizontal taps of a stride-2, 3-wide box on a row: `out[o] = (src[2o] + src[2o + 1]) +
/// src[2o + 2]`, for the first outputs, 8 per step, when `T` is f32 and [`avx2`] is on (the even
/// and odd values come apart by shuffles, which the compiler does not find for a strided loop).
/// Returns how many outputs it wrote, 0 when it did not run; the caller's scalar loop does the
/// rest. Needs `src.len() >= 2 * out.len() + 1`.
#[inline]
pub(crate) fn stride2_taps3<T: Elem>(src: &[T], out: &mut [T]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if let (true, Some(src), Some(out)) = (avx2(), T::as_f32(src), T::as_f32_mut(out)) {
        // SAFETY: the CPU has AVX2 (checked by avx2()).
        return unsafe { stride2_taps3_avx2(src, out) };
    }
    let _ = (src, out);
    0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stride2_taps3_avx2(src: &[f32], out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let mut o = 0;
    // a step reads src[2o .. 2o + 18) and writes out[o .. o + 8)
    while o + 8 <= out.len() && 2 * o + 18 <= src.len() {
        // SAFETY: both ranges are inside the slices (the loop condition).
        unsafe {
            let p = src.as_ptr().add(2 * o);
            let (a, b) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
            let (c, d) = (_mm256_loadu_ps(p.add(2)), _mm256_loadu_ps(p.add(10)));
            // per 128-bit lane, outputs (o, o+1, o+4, o+5 | o+2, o+3, o+6, o+7) of each tap
            let first = _mm256_shuffle_ps::<0x88>(a, b);
            let second = _mm256_shuffle_ps::<0xDD>(a, b);
            let third = _mm256_shuffle_ps::<0x88>(c, d);
            let sum = _mm256_add_ps(_mm256_add_ps(first, second), third);
            // 64-bit pairs (0, 2, 1, 3): outputs o .. o+8 in order
            let sum = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(sum)));
            _mm256_storeu_ps(out.as_mut_ptr().add(o), sum);
        }
        o += 8;
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 stride-2 taps give the scalar loop's bits, at every length around the 8-wide steps.
    #[test]
    fn stride2_taps3_matches_the_scalar_loop() {
        let src: Vec<f32> = (0..80).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
        for n in 0..=39 {
            let mut out = vec![f32::NAN; n];
            let done = stride2_taps3(&src[..2 * n + 1], &mut out);
            assert_eq!(done > 0, available() && n >= 8 && 2 * n + 1 >= 18, "n {n}");
            for (o, t) in out.iter().enumerate() {
                let want = if o < done { (src[2 * o] + src[2 * o + 1]) + src[2 * o + 2] } else { f32::NAN };
                assert!(t.to_bits() == want.to_bits(), "n {n} o {o}: {t} vs {want}");
            }
        }
    }
}
