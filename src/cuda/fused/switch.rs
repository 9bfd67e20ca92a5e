//! Whether the fused kernels run: their availability (libcuda with a device, and NVRTC, both
//! loaded at run time), the switch (`IC_NETWORKS_CUDA_KERNELS=1` or [`set_enabled`]), the count of
//! steps they ran, and the warm-up that compiles and loads them before a CUDA graph capture.
use super::{dl, launch, nvrtc};
use crate::error::{Error, Result};
use launch::CtxGuard;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

/// Why the fused path cannot run here, `None` when it can (libcuda with a device, and NVRTC).
/// Checked once; never panics.
pub fn unavailable_reason() -> Option<String> {
    static R: OnceLock<Option<String>> = OnceLock::new();
    R.get_or_init(|| {
        if let Some(p) = launch::driver_problem() {
            return Some(p);
        }
        nvrtc::unavailable_reason()
    })
    .clone()
}

/// The files in use: (libcuda, libnvrtc), each a full path, or `None` where none loads.
pub fn libraries() -> (Option<String>, Option<String>) {
    (dl::driver().ok().map(|l| l.path.clone()), nvrtc::library_path())
}

/// libcuda (with at least one device) and NVRTC are present. Checked once, never panics.
pub fn available() -> bool {
    unavailable_reason().is_none()
}

static ENABLED: AtomicU8 = AtomicU8::new(2); // 0 off, 1 on, 2 not read yet

/// The switch: `IC_NETWORKS_CUDA_KERNELS=1` (read once) or [`set_enabled`], and [`available`].
pub fn enabled() -> bool {
    let mut v = ENABLED.load(Ordering::Relaxed);
    if v == 2 {
        let on = std::env::var("IC_NETWORKS_CUDA_KERNELS").map(|s| s.trim() == "1").unwrap_or(false);
        v = on as u8;
        ENABLED.store(v, Ordering::Relaxed);
    }
    v == 1 && available()
}

/// Overrides `IC_NETWORKS_CUDA_KERNELS` for this process (benchmarks, tests).
pub fn set_enabled(on: bool) {
    ENABLED.store(on as u8, Ordering::Relaxed);
}

static CALLS: AtomicU64 = AtomicU64::new(0);

/// Counts one step of the op that ran on the fused kernels (see [`calls`]); `src/cuda/mod.rs`
/// calls it where it takes the fused route.
pub(crate) fn record_call() {
    CALLS.fetch_add(1, Ordering::Relaxed);
}

/// Steps of the op that ran on the fused kernels in this process (forwards, collision backwards,
/// strided P-path backwards).
pub fn calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

/// What [`warm_up`] did.
#[derive(Debug, Clone)]
pub struct WarmUp {
    /// Compute capability (e.g. 90).
    pub cc: i32,
    /// The module is a CUBIN (else PTX, JIT-compiled by the driver).
    pub cubin: bool,
    /// Read from the disk cache rather than compiled now.
    pub from_cache: bool,
    /// Why the first image was not used (the driver rejected a cached or fresh CUBIN; it was
    /// recompiled, or its PTX loaded), `None` when it was.
    pub replaced: Option<String>,
}

/// Compiles (or reads from the disk cache) and loads the kernels for CUDA device `ordinal`. Call it
/// before capturing a CUDA graph; the first op on a device otherwise does it.
pub fn warm_up(ordinal: usize) -> Result<WarmUp> {
    if let Some(r) = unavailable_reason() {
        return Err(Error::Runtime(format!("fused CUDA kernels unavailable: {r}")));
    }
    let g = CtxGuard::new(ordinal)?;
    let m = launch::module(ordinal, g.dev, None)?;
    Ok(WarmUp { cc: m.cc, cubin: m.is_cubin, from_cache: m.from_cache, replaced: m.replaced.clone() })
}
