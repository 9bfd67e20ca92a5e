//! Scratch tensors of the CPU pipelines, kept between calls.
//!
//! Most of the pipelines' tensors never reach the user: the 1x1's output `Q` in the stride-1
//! forward, `gy` (the gradient into the main conv's output) and `G = boxsum^T(gz)` or `gz` in the
//! backward never leave an op call, and `relu_z` lives until autograd has run the backward. A
//! fresh tensor of that size costs more than the kernel that fills it: glibc hands blocks of a few
//! MB back to the kernel on `free`, so every call page-faults them in again (64@56, N = 8: about
//! 5 ms of a 9 ms collision backward). [`scratch`] keeps such buffers in a pool and hands one out
//! again once nothing but the pool holds it ([`crate::aten::sole_owner`]: no other tensor, view or
//! alias of its memory is alive), so a buffer is never handed out twice at once, whatever the
//! caller or thread, and a `relu_z` that autograd (or a caller) still holds is never reused.
//!
//! The pool holds at most [`limit`] bytes (`IC_NETWORKS_CPU_WORKSPACE_MB`, default 512; 0 turns
//! it off): a buffer that would pass it is used once and freed, and free buffers are dropped,
//! least recently used first, to make room. [`held_bytes`] and [`release`] are the Python
//! `ic_networks.memory.cpu_workspace_bytes()` and `release_cpu_workspace()`.
use super::dense::{empty, Order};
use crate::aten::sole_owner;
use crate::error::Result;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use tch::{Kind, Tensor};

/// The pool: buffers with the memory order they were made in, in order of last use (the most
/// recent last), and their bytes.
struct Pool {
    buffers: Vec<(Tensor, Order)>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { buffers: Vec::new(), bytes: 0 });

/// `usize::MAX` until the limit is first read or set.
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

fn pool() -> MutexGuard<'static, Pool> {
    // A panic while the lock was held cannot leave the pool inconsistent (every change is one push,
    // remove or counter update); go on with it.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

fn nbytes(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

/// The most bytes the pool keeps: `IC_NETWORKS_CPU_WORKSPACE_MB` (MiB) when set and valid, else
/// 512 MiB, until [`set_limit`] changes it.
pub fn limit() -> usize {
    static FROM_ENV: OnceLock<usize> = OnceLock::new();
    match LIMIT.load(Ordering::Relaxed) {
        usize::MAX => *FROM_ENV.get_or_init(|| {
            let mb = std::env::var("IC_NETWORKS_CPU_WORKSPACE_MB").ok().and_then(|v| v.trim().parse::<usize>().ok());
            mb.unwrap_or(512).saturating_mul(1 << 20)
        }),
        n => n,
    }
}

/// Sets the pool's limit in bytes (0: keep nothing) and drops free buffers beyond it; returns the
/// old limit.
pub fn set_limit(bytes: usize) -> usize {
    let old = limit();
    LIMIT.store(bytes.min(usize::MAX - 1), Ordering::Relaxed);
    let mut p = pool();
    shrink(&mut p, bytes);
    old
}

/// Drops free buffers, least recently used first, until the pool holds at most `target` bytes
/// (or only buffers in use are left).
fn shrink(p: &mut Pool, target: usize) {
    let mut i = 0;
    while p.bytes > target && i < p.buffers.len() {
        if sole_owner(&p.buffers[i].0) {
            let (t, _) = p.buffers.remove(i);
            p.bytes -= nbytes(&t);
        } else {
            i += 1;
        }
    }
}

thread_local! {
    /// Set while [`unpooled`] runs on this thread.
    static UNPOOLED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with [`scratch`] handing out fresh tensors on this thread, none kept: for the
/// float32 pipeline of a widened half-precision call (`cpu::Widened`), whose temporaries are twice
/// the call's activation size and whose step is dominated by the half-precision convolution (so
/// the page faults of fresh buffers cost little there, and the pool would hold float32 copies of
/// every layer's temporaries between steps).
pub fn unpooled<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            UNPOOLED.with(|u| u.set(self.0));
        }
    }
    let _reset = Reset(UNPOOLED.with(|u| u.replace(true)));
    f()
}

/// An uninitialised CPU tensor of `shape`, `kind`, dense in `order`, for a temporary that does
/// not outlive the op call: a free pooled buffer of exactly that shape, kind and order when there
/// is one, else a new one (kept in the pool when it fits under [`limit`]; never inside
/// [`unpooled`]).
pub fn scratch(shape: [i64; 4], kind: Kind, order: Order) -> Result<Tensor> {
    if UNPOOLED.with(|u| u.get()) {
        return empty(shape, kind, order);
    }
    let cap = limit();
    let mut p = pool();
    let hit = p.buffers.iter().position(|(t, o)| *o == order && t.kind() == kind && t.size() == shape && sole_owner(t));
    if let Some(i) = hit {
        let entry = p.buffers.remove(i);
        let out = entry.0.shallow_clone();
        p.buffers.push(entry);
        return Ok(out);
    }
    let t = empty(shape, kind, order)?;
    let size = nbytes(&t);
    if cap > 0 && size <= cap {
        shrink(&mut p, cap - size);
        if p.bytes + size <= cap {
            p.bytes += size;
            p.buffers.push((t.shallow_clone(), order));
        }
    }
    Ok(t)
}

/// Bytes the pool holds (in use or free).
pub fn held_bytes() -> usize {
    pool().bytes
}

/// Drops every free buffer; returns the bytes still held (buffers a running call uses).
pub fn release() -> usize {
    let mut p = pool();
    shrink(&mut p, 0);
    p.bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the pool and its limit are process-wide.
    #[test]
    fn reuses_only_free_buffers_and_keeps_its_limit() {
        let shape = [2, 3, 4, 5];
        let a = scratch(shape, Kind::Float, Order::Nchw).unwrap();
        let b = scratch(shape, Kind::Float, Order::Nchw).unwrap();
        assert_ne!(a.data_ptr(), b.data_ptr(), "a buffer in use was handed out again");
        let pa = a.data_ptr();
        let view = a.narrow(0, 0, 1);
        drop(a);
        let c = scratch(shape, Kind::Float, Order::Nchw).unwrap();
        assert_ne!(c.data_ptr(), pa, "a buffer with a live view was handed out again");
        drop(view);
        let d = scratch(shape, Kind::Float, Order::Nchw).unwrap();
        assert_eq!(d.data_ptr(), pa, "a free buffer was not reused");
        let e = scratch(shape, Kind::Float, Order::Nhwc).unwrap();
        assert_ne!(e.data_ptr(), pa);
        assert_eq!(super::super::layout_of(&e).map(|l| l.order()), Some(Order::Nhwc));
        let pe = e.data_ptr();
        drop(e);
        let e = scratch(shape, Kind::Float, Order::Nhwc).unwrap();
        assert_eq!(e.data_ptr(), pe, "a free channels_last buffer was not reused");
        drop((b, c, d, e));
        assert!(held_bytes() > 0);
        assert_eq!(release(), 0);
        let old = set_limit(0);
        let f = scratch(shape, Kind::Float, Order::Nchw).unwrap();
        drop(f);
        assert_eq!(held_bytes(), 0, "a limit of 0 keeps nothing");
        set_limit(old);
    }
}
