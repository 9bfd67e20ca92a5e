//! The CPU kernels for float16 and bfloat16 tensors, on a CPU that has no matrix instructions for
//! that dtype: the P path and the collision run in float32 on widened copies, and the results are
//! rounded to the call's dtype once.
//!
//! Without such instructions (AVX-512 BF16 or AMX on x86-64, the BF16 / FP16 extensions on
//! AArch64), oneDNN and BLAS compute a half-precision matrix product at a small fraction of the
//! float32 rate: on a 2-core AVX2 machine a bfloat16 3x3 convolution runs at 2-5 GMAC/s against
//! 75-90 in float32. The 1x1 of the P path then costs as much as a ninth of the main convolution
//! in half precision, and almost nothing as a float32 GEMM. The widening passes (x, y, the gradient
//! and relu_z in, the output, relu_z and gy out) are memory passes over activation-sized tensors.
//!
//! On a CPU with those instructions the backend choice (`ic_conv.rs`) leaves half-precision calls
//! to the libtorch steps, which keep the 1x1 in half precision ([`native_matmul`]).
//!
//! Numerics: every sum and product of the P path and the collision is in float32 (the libtorch
//! steps round after each op); the main convolution and its gradients stay libtorch's, in the
//! call's dtype. `relu_z` is saved in the call's dtype, as every backend saves it.
//!
//! Here: which CPUs have those instructions, and the widening copy. The backend is
//! [`Widened`](super::Widened) in `cpu/mod.rs`, beside the two float32 pipelines it runs.
use super::dense::Order;
use crate::error::Result;
use std::sync::OnceLock;
use tch::{Kind, Tensor};

/// Whether this CPU has matrix instructions for `kind` (float16 or bfloat16) that oneDNN uses:
/// AVX-512 BF16 / AMX-BF16 (bfloat16) and AVX-512 FP16 / AMX-FP16 (float16) on x86-64, the BF16
/// and FP16 extensions on AArch64. Read once.
pub fn native_matmul(kind: Kind) -> bool {
    static NATIVE: OnceLock<Native> = OnceLock::new();
    let n = NATIVE.get_or_init(detect);
    match kind {
        Kind::BFloat16 => n.bf16,
        Kind::Half => n.f16,
        _ => false,
    }
}

/// What [`detect`] found.
struct Native {
    bf16: bool,
    f16: bool,
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Native {
    use std::arch::x86_64::__cpuid_count;
    // AMX bits (not in `is_x86_feature_detected!` on stable): leaf 7.0 EDX bit 22 AMX-BF16,
    // leaf 7.1 EAX bit 21 AMX-FP16
    #[allow(unused_unsafe)]
    // SAFETY: cpuid exists on every x86-64 CPU; leaf 7 is read only when the CPU reports it.
    let (amx_bf16, amx_fp16) = unsafe {
        if __cpuid_count(0, 0).eax < 7 {
            (false, false)
        } else {
            let l70 = __cpuid_count(7, 0);
            let l71 = if l70.eax >= 1 { __cpuid_count(7, 1).eax } else { 0 };
            (l70.edx & (1 << 22) != 0, l71 & (1 << 21) != 0)
        }
    };
    Native {
        bf16: amx_bf16 || std::is_x86_feature_detected!("avx512bf16"),
        f16: amx_fp16 || std::is_x86_feature_detected!("avx512fp16"),
    }
}

#[cfg(target_arch = "aarch64")]
fn detect() -> Native {
    Native {
        bf16: std::arch::is_aarch64_feature_detected!("bf16"),
        f16: std::arch::is_aarch64_feature_detected!("fp16"),
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect() -> Native {
    Native { bf16: false, f16: false }
}

/// A float32 copy of the activation-sized `t` in `order`: a fresh tensor, like every temporary of
/// a widened call (`workspace::unpooled`). Pooled, the float32 copies of every layer's x, y,
/// gradient and relu_z stay held between steps: an IC-ResNet-50 train step under bf16 autocast
/// then peaked at 1.20x ResNet-50's memory, against 1.08x with them fresh.
pub(crate) fn widen(t: &Tensor, order: Order) -> Result<Tensor> {
    crate::layout::conform(&t.f_to_kind(Kind::Float)?, order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_half_types_can_be_native() {
        assert!(!native_matmul(Kind::Float) && !native_matmul(Kind::Double));
        // read twice: the cached answer is the first one
        assert_eq!(native_matmul(Kind::BFloat16), native_matmul(Kind::BFloat16));
    }
}
