//! Safe wrapper over `src/cpp/aten_shim.cpp`: the ATen calls that tch 0.26 does not bind.
use crate::error::{Error, Result};
use std::os::raw::{c_char, c_int};
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
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// Gradients of `conv2d(input, weight)` (no bias) for a given `grad_out`, computed by
/// `at::convolution_backward`, i.e. by the same backend (oneDNN, cuDNN, ...) as the forward.
///
/// Shapes: `grad_out` (N, Cout, Ho, Wo), `input` (N, Cin, H, W), `weight` (Cout, Cin/g, kh, kw).
/// Returns `(grad_input, grad_weight)`, each `Some` only when requested.
#[allow(clippy::too_many_arguments)]
pub fn convolution_backward(
    grad_out: &Tensor,
    input: &Tensor,
    weight: &Tensor,
    stride: [i64; 2],
    padding: [i64; 2],
    dilation: [i64; 2],
    groups: i64,
    need_input: bool,
    need_weight: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    if !need_input && !need_weight {
        return Ok((None, None));
    }
    let mut gi: *mut C_tensor = std::ptr::null_mut();
    let mut gw: *mut C_tensor = std::ptr::null_mut();
    let mut err = vec![0 as c_char; 1024];
    // SAFETY: all tensor pointers are live tch tensors borrowed for the duration of the call; the
    // arrays hold two elements each, as the shim reads; outputs are fresh `at::Tensor*` that we own.
    let rc = unsafe {
        icn_convolution_backward(
            grad_out.as_ptr(),
            input.as_ptr(),
            weight.as_ptr(),
            stride.as_ptr(),
            padding.as_ptr(),
            dilation.as_ptr(),
            groups,
            need_input as c_int,
            need_weight as c_int,
            &mut gi,
            &mut gw,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        // SAFETY: the shim always NUL-terminates within err_len.
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        return Err(Error::Runtime(format!(
            "libtorch convolution_backward: {}",
            crate::error::short_torch_message(&msg)
        )));
    }
    // SAFETY: non-null pointers were allocated by the shim with `new at::Tensor`, which tch frees.
    let wrap = |p: *mut C_tensor| if p.is_null() { None } else { Some(unsafe { Tensor::from_ptr(p) }) };
    Ok((wrap(gi), wrap(gw)))
}
