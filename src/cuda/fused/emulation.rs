//! The test hook that runs the CUDA route without a GPU: with `IC_NETWORKS_CUDA_EMULATION=1`, CPU
//! tensors count as CUDA device 0. Only meaningful with the stand-in libcuda of
//! tests/cuda_emu/fake_libcuda.cpp on the loader path, which runs the kernels under the host
//! emulation: that way the launch code, the parameter packing and the layer composition are tested
//! end to end without a GPU (tests/test_cuda_launch_path.py, `GPU_CHECK_EMULATE=1`).
//!
//! Compiled only with the cargo feature `cuda-emulation`, which the development build of
//! scripts/setup.sh turns on; release wheels and `pip install .` leave it out, and there
//! [`cpu_as_cuda`] is the constant `false`.
use tch::Device;

/// The core was built with the hook (the cargo feature `cuda-emulation`).
pub const BUILT: bool = cfg!(feature = "cuda-emulation");

/// CPU tensors take the CUDA route (`IC_NETWORKS_CUDA_EMULATION=1`, read once).
#[cfg(feature = "cuda-emulation")]
fn cpu_as_cuda() -> bool {
    static E: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *E.get_or_init(|| std::env::var("IC_NETWORKS_CUDA_EMULATION").map(|v| v.trim() == "1").unwrap_or(false))
}

/// Without the `cuda-emulation` feature CPU tensors never take the CUDA route.
#[cfg(not(feature = "cuda-emulation"))]
const fn cpu_as_cuda() -> bool {
    false
}

/// The CUDA ordinal the CUDA route runs a tensor on `d` on: a CUDA device's own, device 0 for a CPU
/// tensor under the emulation, else `None`. The one place the hook maps devices.
pub fn cuda_ordinal(d: Device) -> Option<usize> {
    match d {
        Device::Cuda(i) => Some(i),
        Device::Cpu if cpu_as_cuda() => Some(0),
        _ => None,
    }
}
