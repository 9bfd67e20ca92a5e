//! The kernels as C functions, for the op library in `src/cpp/` (`ops.cpp` registers the ops,
//! `kernels.cpp` calls these functions from its CPU and CUDA implementations).
//!
//! Tensors cross as tch's `C_tensor`, which is an `at::Tensor*`:
//! * inputs are borrowed (`*const C_tensor`, never freed here; an optional one may be null);
//! * outputs are fresh heap `at::Tensor`s written to `*mut *mut C_tensor` slots, owned by the caller
//!   (C++ moves them out and `delete`s the pointer).
//!
//! Errors follow the boundary's convention (`c_abi.rs`): every function returns `ICN_OK`, or the
//! kind of its error after handing the message to the caller's sink; C++ raises it as
//! `ValueError` / `TypeError` / `RuntimeError`. A Rust panic is caught here and reported as a
//! `RuntimeError`: it never unwinds into C++.
//!
//! build.rs generates the C++ prototypes of these functions (`ic_networks_ffi.h`, cbindgen).
use crate::c_abi::{self, IcnErrorSink, IcnIntList, ICN_OK, ICN_RUNTIME_ERROR};
use crate::error::{Error, Result};
use crate::ic_conv::{self, ConvGeometry, NeedsGrad};
use crate::validate::check_boxsum;
use crate::{boxsum, wld};
use std::mem::ManuallyDrop;
use std::os::raw::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};
use tch::Tensor;
use torch_sys::C_tensor;

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs `f`, catching errors and panics: `Ok(())` or the status code and message for C++.
fn catch(f: impl FnOnce() -> Result<()>) -> std::result::Result<(), (c_int, String)> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(c_abi::status_of(e)),
        Err(p) => Err((ICN_RUNTIME_ERROR, format!("ic_networks core: internal error ({})", panic_message(p.as_ref())))),
    }
}

/// Runs `f` (see [`catch`]); returns the status code for C++, the message in `sink`.
fn run(sink: IcnErrorSink, f: impl FnOnce() -> Result<()>) -> c_int {
    let Err((code, msg)) = catch(f) else { return ICN_OK };
    // SAFETY: the sink is the caller's, valid for this call.
    unsafe { sink.report(code, &msg) }
}

/// A borrowed view of a C++ tensor (not freed on drop).
///
/// # Safety
/// `p` must be a live `at::Tensor*` for the duration of the call.
unsafe fn borrow(p: *const C_tensor) -> ManuallyDrop<Tensor> {
    ManuallyDrop::new(Tensor::from_ptr(p as *mut C_tensor))
}

/// # Safety
/// As [`borrow`], or null.
unsafe fn borrow_opt(p: *const C_tensor) -> Option<ManuallyDrop<Tensor>> {
    if p.is_null() {
        None
    } else {
        Some(borrow(p))
    }
}

/// Hands a tensor over to C++ (which frees it).
fn give(t: Tensor) -> *mut C_tensor {
    let mut t = ManuallyDrop::new(t);
    t.as_mut_ptr()
}

/// # Safety
/// `slot` must be a writable pointer slot.
unsafe fn put(slot: *mut *mut C_tensor, t: Option<Tensor>) {
    *slot = t.map(give).unwrap_or(std::ptr::null_mut());
}

unsafe fn geometry(stride: IcnIntList, padding: IcnIntList, dilation: IcnIntList, groups: i64) -> Result<ConvGeometry> {
    ConvGeometry::from_lists(stride.as_slice(), padding.as_slice(), dilation.as_slice(), groups)
}

/// IC convolution forward: writes `out` and, with `keep_relu_z != 0`, `relu_z` (else null).
///
/// # Safety
/// Tensor pointers are live `at::Tensor*` (`bias` may be null); lists are valid; out slots writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn icn_rs_ic_conv2d_forward(
    x: *const C_tensor,
    weight: *const C_tensor,
    adjust_weight: *const C_tensor,
    adjust_bias: *const C_tensor,
    alpha: *const C_tensor,
    bias: *const C_tensor,
    stride: IcnIntList,
    padding: IcnIntList,
    dilation: IcnIntList,
    groups: i64,
    keep_relu_z: c_int,
    out: *mut *mut C_tensor,
    relu_z: *mut *mut C_tensor,
    sink: IcnErrorSink,
) -> c_int {
    run(sink, || {
        let g = geometry(stride, padding, dilation, groups)?;
        let (x, w, wa, ba, a) = (borrow(x), borrow(weight), borrow(adjust_weight), borrow(adjust_bias), borrow(alpha));
        let b = borrow_opt(bias);
        let b = b.as_deref();
        if keep_relu_z != 0 {
            let r = ic_conv::forward(&x, &w, &wa, &ba, &a, b, &g)?;
            put(out, Some(r.out));
            put(relu_z, Some(r.relu_z));
        } else {
            put(out, Some(ic_conv::forward_inference(&x, &w, &wa, &ba, &a, b, &g)?));
            put(relu_z, None);
        }
        Ok(())
    })
}

/// IC convolution backward. `needs` points to 6 flags (x, weight, adjust_weight, adjust_bias,
/// alpha, bias); `grads` to 6 slots, each set to the gradient or null where not needed.
///
/// # Safety
/// As [`icn_rs_ic_conv2d_forward`]; `needs` readable and `grads` writable for 6 entries.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn icn_rs_ic_conv2d_backward(
    grad: *const C_tensor,
    x: *const C_tensor,
    weight: *const C_tensor,
    adjust_weight: *const C_tensor,
    adjust_bias: *const C_tensor,
    alpha: *const C_tensor,
    relu_z: *const C_tensor,
    has_bias: c_int,
    stride: IcnIntList,
    padding: IcnIntList,
    dilation: IcnIntList,
    groups: i64,
    needs: *const u8,
    grads: *mut *mut C_tensor,
    sink: IcnErrorSink,
) -> c_int {
    run(sink, || {
        let g = geometry(stride, padding, dilation, groups)?;
        let n = std::slice::from_raw_parts(needs, 6);
        let needs = NeedsGrad {
            x: n[0] != 0,
            weight: n[1] != 0,
            adjust_weight: n[2] != 0,
            adjust_bias: n[3] != 0,
            alpha: n[4] != 0,
            bias: n[5] != 0,
        };
        let (gr, x, w, wa, ba, a, rz) = (
            borrow(grad),
            borrow(x),
            borrow(weight),
            borrow(adjust_weight),
            borrow(adjust_bias),
            borrow(alpha),
            borrow(relu_z),
        );
        let r = ic_conv::backward(&gr, &x, &w, &wa, &ba, &a, &rz, has_bias != 0, &g, &needs)?;
        let slots = std::slice::from_raw_parts_mut(grads, 6);
        for (slot, t) in slots.iter_mut().zip([r.x, r.weight, r.adjust_weight, r.adjust_bias, r.alpha, r.bias]) {
            put(slot, t);
        }
        Ok(())
    })
}

/// Box sum of `x` over `kernel_size` windows on the conv's output grid.
///
/// # Safety
/// `x` is a live `at::Tensor*`; lists are valid; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn icn_rs_boxsum(
    x: *const C_tensor,
    kernel_size: IcnIntList,
    stride: IcnIntList,
    padding: IcnIntList,
    dilation: IcnIntList,
    out: *mut *mut C_tensor,
    sink: IcnErrorSink,
) -> c_int {
    run(sink, || {
        let g = geometry(stride, padding, dilation, 1)?;
        let x = borrow(x);
        let [kh, kw, _, _] = check_boxsum(&x, kernel_size.as_slice(), &g)?;
        put(out, Some(boxsum::boxsum(&x, kh, kw, &g)?));
        Ok(())
    })
}

/// WLD loss forward: writes `(loss, ce, kd)`.
///
/// # Safety
/// Tensor pointers are live `at::Tensor*`; out slots writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn icn_rs_wld_forward(
    student: *const C_tensor,
    teacher: *const C_tensor,
    target: *const C_tensor,
    lam: f64,
    e: f64,
    tau: f64,
    loss: *mut *mut C_tensor,
    ce: *mut *mut C_tensor,
    kd: *mut *mut C_tensor,
    sink: IcnErrorSink,
) -> c_int {
    run(sink, || {
        let cfg = wld::WldConfig { lam, e, tau };
        let r = wld::forward(&borrow(student), &borrow(teacher), &borrow(target), &cfg)?;
        put(loss, Some(r.loss));
        put(ce, Some(r.ce));
        put(kd, Some(r.kd));
        Ok(())
    })
}

/// WLD loss backward w.r.t. the student logits.
///
/// # Safety
/// Tensor pointers are live `at::Tensor*`; `out` writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn icn_rs_wld_backward(
    grad: *const C_tensor,
    student: *const C_tensor,
    teacher: *const C_tensor,
    target: *const C_tensor,
    lam: f64,
    e: f64,
    tau: f64,
    out: *mut *mut C_tensor,
    sink: IcnErrorSink,
) -> c_int {
    run(sink, || {
        let cfg = wld::WldConfig { lam, e, tau };
        put(out, Some(wld::backward(&borrow(grad), &borrow(student), &borrow(teacher), &borrow(target), &cfg)?));
        Ok(())
    })
}

extern "C" {
    /// `src/cpp/ops.cpp`.
    fn icn_register_ops(sink: IcnErrorSink) -> c_int;
}

/// The registration entry point exported by the extension module, for C++ programs that load it
/// without Python (e.g. to run an AOTInductor package or a TorchScript model that calls the ops):
/// `dlopen` the module, then call `ic_networks_register_ops(err, err_len)`; 0 on success, else 1
/// with the message in `err` (truncated to `err_len - 1` bytes, NUL-terminated).
///
/// # Safety
/// `err` must be writable for `err_len` bytes (or null with `err_len == 0`).
#[no_mangle]
pub unsafe extern "C" fn ic_networks_register_ops(err: *mut c_char, err_len: usize) -> c_int {
    let Err(e) = register_ops() else { return 0 };
    if err_len > 0 && !err.is_null() {
        let msg = e.to_string();
        let n = msg.len().min(err_len - 1);
        std::ptr::copy_nonoverlapping(msg.as_ptr() as *const c_char, err, n);
        *err.add(n) = 0;
    }
    1
}

/// Registers the `ic_networks` ops with libtorch's dispatcher (`src/cpp/ops.cpp`); idempotent.
pub fn register_ops() -> Result<()> {
    // SAFETY: the sink is the one `call` made, alive for the call.
    c_abi::call(|sink| unsafe { icn_register_ops(sink) })
        .map_err(|e| Error::Runtime(format!("ic_networks: registering the ops with libtorch failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::c_abi::{ICN_TYPE_ERROR, ICN_VALUE_ERROR};
    use crate::{type_err, value_err};

    #[test]
    fn errors_and_panics_become_codes() {
        assert_eq!(catch(|| Ok(())), Ok(()));
        assert_eq!(catch(|| Err(value_err!("x: bad"))), Err((ICN_VALUE_ERROR, "x: bad".to_string())));
        assert_eq!(catch(|| Err(type_err!("x: dtype"))).unwrap_err().0, ICN_TYPE_ERROR);
        let (code, msg) = catch(|| panic!("boom")).unwrap_err();
        assert_eq!(code, ICN_RUNTIME_ERROR);
        assert!(msg.contains("internal error") && msg.contains("boom"), "{msg}");
    }
}
