//! Safe wrapper over `src/cpp/aten_shim.cpp`: the ATen calls that tch 0.26 does not bind
//! (`at::convolution_backward`, `at::parallel_for`, `at::_assert_async`, PyTorch's current CUDA
//! stream, `at::RecordFunction` for the op's stages in profiler traces, a tensor's reference
//! counts). The calls follow the boundary's convention (`c_abi.rs`). Imports only leaves.
use crate::c_abi::{self, IcnErrorSink};
use crate::error::{short_torch_message, Error, Result};
use crate::geometry::ConvGeometry;
use std::os::raw::{c_char, c_int, c_void};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn icn_convolution_backward(
        grad_out: *const C_tensor,
        input: *const C_tensor,
        weight: *const C_tensor,
        stride: *const i64,
        padding: *const i64,
        dilation: *const i64,
        groups: i64,
        need_input: c_int,
        need_weight: c_int,
        grad_input: *mut *mut C_tensor,
        grad_weight: *mut *mut C_tensor,
        sink: IcnErrorSink,
    ) -> c_int;

    fn icn_parallel_for(
        begin: i64,
        end: i64,
        grain: i64,
        f: extern "C" fn(*mut c_void, i64, i64) -> c_int,
        ctx: *mut c_void,
        sink: IcnErrorSink,
    ) -> c_int;

    fn icn_assert_async(cond: *const C_tensor, msg: *const c_char, sink: IcnErrorSink) -> c_int;

    fn icn_range_begin(name: *const c_char) -> *mut c_void;
    fn icn_range_end(range: *mut c_void);

    fn icn_sole_owner(t: *const C_tensor) -> c_int;

    fn icn_current_cuda_stream(index: i64, stream: *mut *mut c_void, sink: IcnErrorSink) -> c_int;
}

/// The op's stages as they appear in `torch.profiler` traces (user-scope ranges inside the op's
/// own `ic_networks::ic_conv2d_*` range).
pub mod stage {
    use std::ffi::CStr;
    /// The main convolution `conv(x, W) + b2`.
    pub const CONV: &CStr = c"ic_networks::conv";
    /// The 1x1 convolution with W' (on x at stride 1, on the box sum otherwise).
    pub const CONV1X1: &CStr = c"ic_networks::conv1x1";
    /// The box sum of x (strided layers: before the 1x1).
    pub const BOXSUM: &CStr = c"ic_networks::boxsum";
    /// The collision `y + alpha * relu(y - p + b1 - b2)`.
    pub const COLLISION: &CStr = c"ic_networks::collision";
    /// The collision with the box sum of the 1x1's output fused into it (stride 1).
    pub const BOXSUM_COLLISION: &CStr = c"ic_networks::boxsum_collision";
    /// Backward: the collision's gradients (into y, into the 1x1 branch, b1, b2, alpha).
    pub const COLLISION_BACKWARD: &CStr = c"ic_networks::collision_backward";
    /// Backward: the main convolution's input and weight gradients.
    pub const CONV_BACKWARD: &CStr = c"ic_networks::conv_backward";
    /// Backward: the 1x1 and box-sum branch's gradients (into x and W').
    pub const ADJUST_BACKWARD: &CStr = c"ic_networks::adjust_backward";
}

/// A named range in `torch.profiler` traces, from [`range`] until dropped (on the same thread).
/// Costs one call into libtorch when no profiler is active, and records nothing then.
pub struct Range(*mut c_void);

/// Begins the range `name` (one of [`stage`]).
pub fn range(name: &'static std::ffi::CStr) -> Range {
    // SAFETY: name is a static NUL-terminated string; the shim never throws.
    Range(unsafe { icn_range_begin(name.as_ptr()) })
}

/// Runs `f` inside the range `name` (one of [`stage`]).
pub fn in_range<T>(name: &'static std::ffi::CStr, f: impl FnOnce() -> T) -> T {
    let _r = range(name);
    f()
}

impl Drop for Range {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: a range the shim began on this thread (Range is neither Send nor Sync).
            unsafe { icn_range_end(self.0) }
        }
    }
}

/// Whether `t` is the only handle on its memory: no other `Tensor` shares its `TensorImpl`, and no
/// view or alias shares its storage. Tells a workspace buffer that no caller holds any more.
pub fn sole_owner(t: &Tensor) -> bool {
    // SAFETY: t is a live tensor; the shim only reads two reference counts and never throws.
    unsafe { icn_sole_owner(t.as_ptr()) != 0 }
}

/// Calls a shim entry point: `Err(message)` when it fails.
fn call_shim(f: impl FnOnce(IcnErrorSink) -> c_int) -> std::result::Result<(), String> {
    c_abi::call(f).map_err(|e| e.to_string())
}

/// PyTorch's current stream on CUDA device `index` (`torch.cuda.current_stream(index)`), as the
/// raw `cudaStream_t` value; borrowed, never destroyed here. An error with CPU-only torch.
pub fn current_cuda_stream(index: usize) -> Result<usize> {
    let mut stream: *mut c_void = std::ptr::null_mut();
    // SAFETY: the out pointer and the sink outlive the call.
    call_shim(|sink| unsafe { icn_current_cuda_stream(index as i64, &mut stream, sink) })
        .map_err(|m| Error::Runtime(format!("libtorch: current CUDA stream: {}", short_torch_message(&m))))?;
    Ok(stream as usize)
}

/// `at::_assert_async(cond, msg)`: fails the stream with `msg` when the one-element bool tensor
/// `cond` is false, without a device-to-host copy (no sync).
pub fn assert_async(cond: &Tensor, msg: &str) -> Result<()> {
    let msg = std::ffi::CString::new(msg).map_err(|_| Error::Runtime("assert_async: NUL in the message".into()))?;
    // SAFETY: cond is a live tensor; msg and the sink outlive the call.
    call_shim(|sink| unsafe { icn_assert_async(cond.as_ptr(), msg.as_ptr(), sink) })
        .map_err(|m| Error::Runtime(format!("libtorch: {}", short_torch_message(&m))))
}

/// Runs `f(begin, end)` over sub-ranges of `0..n` on libtorch's intra-op thread pool
/// (`at::parallel_for`), with at least `grain` items per task. `f` is called concurrently on
/// disjoint ranges. A panic inside `f` is caught and reported as an error.
pub fn parallel_for<F: Fn(usize, usize) + Sync>(n: usize, grain: usize, f: F) -> Result<()> {
    extern "C" fn trampoline<F: Fn(usize, usize) + Sync>(ctx: *mut c_void, b: i64, e: i64) -> c_int {
        // SAFETY: ctx is the `&F` passed below, alive for the whole parallel_for call.
        let f = unsafe { &*(ctx as *const F) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(b as usize, e as usize))) {
            Ok(()) => 0,
            Err(_) => 1,
        }
    }
    if n == 0 {
        return Ok(());
    }
    // SAFETY: the trampoline matches the C signature; ctx outlives the call.
    call_shim(|sink| unsafe {
        icn_parallel_for(0, n as i64, grain.max(1) as i64, trampoline::<F>, &f as *const F as *mut c_void, sink)
    })
    .map_err(|m| Error::Runtime(format!("parallel kernel: {m}")))
}

/// A raw pointer that parallel tasks may share; each task touches a disjoint part.
#[derive(Clone, Copy)]
pub struct SharedMut<T>(pub *mut T);
// SAFETY: users guarantee disjoint access per task (see each kernel).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// # Safety
    /// `[off, off + len)` must be in bounds and not accessed by any other task meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, off: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}

/// Gradients of `conv2d(input, weight)` (no bias) with geometry `g` for a given `grad_out`,
/// computed by `at::convolution_backward`, i.e. by the same backend (oneDNN, cuDNN, ...) as the
/// forward.
///
/// Shapes: `grad_out` (N, Cout, Ho, Wo), `input` (N, Cin, H, W), `weight` (Cout, Cin/g, kh, kw).
/// Returns `(grad_input, grad_weight)`, each `Some` only when requested.
pub fn convolution_backward(
    grad_out: &Tensor,
    input: &Tensor,
    weight: &Tensor,
    g: &ConvGeometry,
    need_input: bool,
    need_weight: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    if !need_input && !need_weight {
        return Ok((None, None));
    }
    let mut gi: *mut C_tensor = std::ptr::null_mut();
    let mut gw: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: all tensor pointers are live tch tensors borrowed for the duration of the call; the
    // arrays hold two elements each, as the shim reads; outputs are fresh `at::Tensor*` that we own.
    call_shim(|sink| unsafe {
        icn_convolution_backward(
            grad_out.as_ptr(),
            input.as_ptr(),
            weight.as_ptr(),
            g.stride.as_ptr(),
            g.padding.as_ptr(),
            g.dilation.as_ptr(),
            g.groups,
            need_input as c_int,
            need_weight as c_int,
            &mut gi,
            &mut gw,
            sink,
        )
    })
    .map_err(|m| Error::Runtime(format!("libtorch convolution_backward: {}", short_torch_message(&m))))?;
    // SAFETY: non-null pointers were allocated by the shim with `new at::Tensor`, which tch frees.
    let wrap = |p: *mut C_tensor| if p.is_null() { None } else { Some(unsafe { Tensor::from_ptr(p) }) };
    Ok((wrap(gi), wrap(gw)))
}

#[cfg(test)]
mod tests {
    use super::parallel_for;
    use std::collections::HashSet;
    use std::sync::Mutex;

    /// With two intra-op threads, two tasks run on two threads: `at::parallel_for` is compiled
    /// with OpenMP (build.rs), not as its one-task fallback.
    #[test]
    fn parallel_for_runs_on_the_intra_op_threads() {
        let old = tch::get_num_threads();
        tch::set_num_threads(2);
        let threads = Mutex::new(HashSet::new());
        let ran = parallel_for(2, 1, |_, _| {
            threads.lock().unwrap().insert(std::thread::current().id());
        });
        tch::set_num_threads(old);
        ran.unwrap();
        assert_eq!(threads.lock().unwrap().len(), 2);
    }
}
