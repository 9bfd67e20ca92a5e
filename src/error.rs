//! One error type for the crate. Each variant becomes the matching Python exception in `lib.rs`
//! (`ValueError`, `TypeError`, `RuntimeError`), so a Rust panic never reaches the user.
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A bad argument value or shape (Python `ValueError`).
    Value(String),
    /// A bad argument type or dtype (Python `TypeError`).
    Type(String),
    /// A failure inside libtorch, or a device mismatch (Python `RuntimeError`).
    Runtime(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Value(m) | Error::Type(m) | Error::Runtime(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// Keeps the first meaningful line of a libtorch error and drops the C++ back trace.
pub fn short_torch_message(msg: &str) -> String {
    let cut = ["\nException raised from", "\nframe #", " frame #0"]
        .iter()
        .filter_map(|m| msg.find(m))
        .min()
        .unwrap_or(msg.len());
    let head = msg[..cut].trim();
    let head = head.strip_prefix("Internal torch error: ").unwrap_or(head);
    head.lines().take(3).collect::<Vec<_>>().join(" ").trim().to_string()
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        let text = match &e {
            tch::TchError::Torch(m) => m.clone(),
            other => other.to_string(),
        };
        Error::Runtime(format!("libtorch: {}", short_torch_message(&text)))
    }
}

#[macro_export]
macro_rules! value_err {
    ($($arg:tt)*) => { $crate::error::Error::Value(format!($($arg)*)) };
}

#[macro_export]
macro_rules! type_err {
    ($($arg:tt)*) => { $crate::error::Error::Type(format!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_trace_is_cut() {
        let m = "Internal torch error: bad shape\nException raised from foo at bar.cpp:1\nframe #0";
        assert_eq!(short_torch_message(m), "bad shape");
        let m = "[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: not enough memory\nframe #0: c10::ThrowEnforceNotMet";
        assert!(!short_torch_message(m).contains("frame"));
    }
}
