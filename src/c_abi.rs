//! What every call across the Rust/C++ boundary shares, in both directions (Rust's `ffi.rs` called
//! by `src/cpp/kernels.cpp`, and `src/cpp/aten_shim.cpp` / `ops.cpp` called by Rust): the status
//! codes, the error sink and the `int[]` argument. build.rs generates the C++ header
//! `ic_networks_ffi.h` from this file and `ffi.rs` (cbindgen), and `src/cpp/` includes it, so these
//! definitions exist once.
//!
//! The convention: a function returns [`ICN_OK`], or the kind of its error after handing the
//! message (UTF-8, any length) to the caller's [`IcnErrorSink`] once. The caller turns the code back
//! into its own error type: C++ raises `ValueError` / `TypeError` / `RuntimeError`, Rust builds an
//! [`Error`]. A leaf: imports only `error.rs`.
use crate::error::Error;
use std::os::raw::{c_char, c_int, c_void};

/// Success.
pub const ICN_OK: c_int = 0;
/// A bad argument value (Python `ValueError`).
pub const ICN_VALUE_ERROR: c_int = 1;
/// A bad argument type or dtype (Python `TypeError`).
pub const ICN_TYPE_ERROR: c_int = 2;
/// Anything else (Python `RuntimeError`).
pub const ICN_RUNTIME_ERROR: c_int = 3;

/// Where a failing callee puts its error message: the caller's object `ctx` and the caller's
/// function that stores the `len` bytes at `msg` in it. A null `set` drops the message.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcnErrorSink {
    pub ctx: *mut c_void,
    pub set: Option<unsafe extern "C" fn(ctx: *mut c_void, msg: *const c_char, len: usize)>,
}

impl IcnErrorSink {
    /// Hands `msg` to the caller and returns `code`, for `return sink.report(..)`.
    ///
    /// # Safety
    /// `ctx` and `set` are what the caller passed: `set` accepts `ctx` for the whole call.
    pub unsafe fn report(self, code: c_int, msg: &str) -> c_int {
        if let Some(set) = self.set {
            set(self.ctx, msg.as_ptr() as *const c_char, msg.len());
        }
        code
    }
}

/// An `int[]` argument: `len` values at `data`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcnIntList {
    pub data: *const i64,
    pub len: usize,
}

impl IcnIntList {
    /// # Safety
    /// `data` must point to `len` readable values (or `len == 0`).
    pub unsafe fn as_slice<'a>(self) -> &'a [i64] {
        if self.len == 0 || self.data.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts(self.data, self.len)
        }
    }
}

/// The code and message that carry `e` across the boundary.
pub fn status_of(e: Error) -> (c_int, String) {
    match e {
        Error::Value(m) => (ICN_VALUE_ERROR, m),
        Error::Type(m) => (ICN_TYPE_ERROR, m),
        Error::Runtime(m) => (ICN_RUNTIME_ERROR, m),
    }
}

/// The error that a non-zero `code` and its message stand for (unknown codes are runtime errors).
pub fn error_of(code: c_int, msg: String) -> Error {
    match code {
        ICN_VALUE_ERROR => Error::Value(msg),
        ICN_TYPE_ERROR => Error::Type(msg),
        _ => Error::Runtime(msg),
    }
}

/// Calls a C++ entry point with a sink that collects its message: `Ok(())` on [`ICN_OK`], else
/// the error its code and message stand for.
pub fn call(f: impl FnOnce(IcnErrorSink) -> c_int) -> Result<(), Error> {
    unsafe extern "C" fn store(ctx: *mut c_void, msg: *const c_char, len: usize) {
        // SAFETY: ctx is the `String` below, alive for the call; msg holds `len` bytes.
        let s = &mut *(ctx as *mut String);
        *s = String::from_utf8_lossy(std::slice::from_raw_parts(msg as *const u8, len)).into_owned();
    }
    let mut msg = String::new();
    let sink = IcnErrorSink { ctx: &mut msg as *mut String as *mut c_void, set: Some(store) };
    match f(sink) {
        ICN_OK => Ok(()),
        code if msg.is_empty() => Err(error_of(code, "unknown error (no message)".into())),
        code => Err(error_of(code, msg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn fails(sink: IcnErrorSink, code: c_int) -> c_int {
        sink.report(code, "w: expected 4-D")
    }

    #[test]
    fn codes_and_messages_round_trip() {
        for e in [Error::Value("a".into()), Error::Type("b".into()), Error::Runtime("c".into())] {
            let (code, msg) = status_of(e.clone());
            assert_eq!(error_of(code, msg), e);
        }
        assert_eq!(call(|_| ICN_OK), Ok(()));
        // SAFETY: the sink is the one `call` made, alive for the call.
        assert_eq!(call(|s| unsafe { fails(s, ICN_TYPE_ERROR) }), Err(Error::Type("w: expected 4-D".into())));
        assert!(matches!(call(|_| ICN_VALUE_ERROR), Err(Error::Value(m)) if m.contains("no message")));
        let no_sink = IcnErrorSink { ctx: std::ptr::null_mut(), set: None };
        // SAFETY: a null `set` is never called.
        assert_eq!(unsafe { no_sink.report(ICN_RUNTIME_ERROR, "dropped") }, ICN_RUNTIME_ERROR);
    }
}
