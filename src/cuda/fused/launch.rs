//! The CUDA driver side of the fused kernels: libcuda presence, the primary context, modules per
//! device, launches on a borrowed stream, and the launch plan (tiles, grid, shared memory).
//!
//! * Driver: libcuda loaded by [`super::dl::driver`] (a full path first; the path is reported).
//! * Context: the device's primary context (the one PyTorch uses), retained once per device and
//!   never released or destroyed. Every call makes it current with push/pop and restores what was
//!   current before ([`CtxGuard`]).
//! * Stream: the caller's stream handle (PyTorch's current stream, `torch.cuda.current_stream()
//!   .cuda_stream` in Python), borrowed: never created or destroyed here, and synchronised only
//!   under `IC_NETWORKS_CUDA_SYNC_CHECK=1` ([`sync_check`]).
//! * Modules: compiled at the first use on a device (or by [`super::warm_up`]), cached for the
//!   process. Never compiled or loaded while the stream is capturing a CUDA graph: that returns an
//!   error asking for a warm-up call first. A CUBIN the driver rejects is replaced by a fresh
//!   compilation, then by its PTX ([`module`]).
use super::dl::{self, CuContext, CuDevice, CuFunction, CuModule, CuResult, CuStream, Driver, CUDA_SUCCESS};
use super::nvrtc;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

/// The loaded driver (callers have checked [`driver_problem`]; an error otherwise, never a panic).
pub(crate) fn drv() -> Result<&'static Driver> {
    dl::driver().map(|l| &l.api).map_err(Error::Runtime)
}

/// The driver's message for `r`.
fn error_string(r: CuResult) -> String {
    let mut p: *const std::ffi::c_char = std::ptr::null();
    match dl::driver() {
        // SAFETY: cuGetErrorString writes a static string pointer (or leaves null).
        Ok(d) => unsafe {
            (d.api.cuGetErrorString)(r, &mut p);
            if p.is_null() {
                format!("CUDA error {r}")
            } else {
                format!("{} (CUDA error {r})", CStr::from_ptr(p).to_string_lossy())
            }
        },
        Err(_) => format!("CUDA error {r}"),
    }
}

pub(crate) fn cu_check(what: &str, r: CuResult) -> Result<()> {
    if r == CUDA_SUCCESS {
        return Ok(());
    }
    Err(Error::Runtime(format!("CUDA driver {what}: {}", error_string(r))))
}

/// Why the driver side cannot run, or `None` when libcuda loads, initialises and has a device.
/// The reason names the libcuda file. Checked once; never panics.
pub fn driver_problem() -> Option<String> {
    static P: OnceLock<Option<String>> = OnceLock::new();
    P.get_or_init(|| {
        let l = match dl::driver() {
            Ok(l) => l,
            Err(e) => return Some(e),
        };
        let d = &l.api;
        let probe = || -> Result<i32> {
            // SAFETY: out-pointers valid.
            unsafe {
                cu_check("init", (d.cuInit)(0))?;
                let mut n = 0;
                cu_check("device count", (d.cuDeviceGetCount)(&mut n))?;
                Ok(n)
            }
        };
        match probe() {
            Ok(n) if n > 0 => None,
            Ok(_) => Some(format!("the CUDA driver ({}) reports no device", l.path)),
            Err(e) => Some(format!("{e} (libcuda: {})", l.path)),
        }
    })
    .clone()
}

/// A device's primary context, retained once (never released: PyTorch shares it).
fn primary_ctx(ordinal: usize) -> Result<(CuContext, CuDevice)> {
    static CTX: OnceLock<Mutex<HashMap<usize, (usize, i32)>>> = OnceLock::new();
    let map = CTX.get_or_init(|| Mutex::new(HashMap::new()));
    let mut m = map.lock().map_err(|_| Error::Runtime("CUDA context table poisoned".into()))?;
    if let Some(&(c, d)) = m.get(&ordinal) {
        return Ok((c as CuContext, d));
    }
    let d = drv()?;
    let mut dev: CuDevice = 0;
    let mut ctx: CuContext = std::ptr::null_mut();
    // SAFETY: driver initialised (callers check `driver_problem`); out-pointers valid.
    unsafe {
        cu_check("device get", (d.cuDeviceGet)(&mut dev, ordinal as i32))?;
        cu_check("primary context retain", (d.cuDevicePrimaryCtxRetain)(&mut ctx, dev))?;
    }
    m.insert(ordinal, (ctx as usize, dev));
    Ok((ctx, dev))
}

/// Makes a device's primary context current for its lifetime and restores the previous one.
pub(crate) struct CtxGuard {
    pushed: bool,
    pub dev: CuDevice,
}

impl CtxGuard {
    pub fn new(ordinal: usize) -> Result<Self> {
        let (ctx, dev) = primary_ctx(ordinal)?;
        let d = drv()?;
        let mut cur: CuContext = std::ptr::null_mut();
        // SAFETY: valid out-pointer; ctx is a retained primary context.
        unsafe {
            cu_check("get current context", (d.cuCtxGetCurrent)(&mut cur))?;
            if cur == ctx {
                return Ok(Self { pushed: false, dev });
            }
            cu_check("push context", (d.cuCtxPushCurrent_v2)(ctx))?;
        }
        Ok(Self { pushed: true, dev })
    }
}

impl Drop for CtxGuard {
    fn drop(&mut self) {
        if self.pushed {
            if let Ok(d) = drv() {
                let mut popped: CuContext = std::ptr::null_mut();
                // SAFETY: we pushed exactly one context.
                unsafe {
                    (d.cuCtxPopCurrent_v2)(&mut popped);
                }
            }
        }
    }
}

fn attribute(dev: CuDevice, a: i32) -> Result<i32> {
    let mut v = 0;
    // SAFETY: valid out-pointer and device.
    unsafe { cu_check("device attribute", (drv()?.cuDeviceGetAttribute)(&mut v, a, dev))? };
    Ok(v)
}

/// Whether `stream` is capturing a CUDA graph.
pub(crate) fn capturing(stream: CuStream) -> Result<bool> {
    let mut s = dl::CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: the caller's stream handle (borrowed); valid out-pointer.
    unsafe { cu_check("stream capture status", (drv()?.cuStreamIsCapturing)(stream, &mut s))? };
    Ok(s != dl::CU_STREAM_CAPTURE_STATUS_NONE)
}

/// `IC_NETWORKS_CUDA_SYNC_CHECK=1` (read once): after each launch on a stream that is not
/// capturing, synchronise it and check, so that a fault (an illegal address, a trap) is reported
/// as an error naming the kernel instead of surfacing at some later PyTorch op. A debugging aid:
/// it costs a host round trip per launch.
pub fn sync_check() -> bool {
    static S: OnceLock<bool> = OnceLock::new();
    *S.get_or_init(|| std::env::var("IC_NETWORKS_CUDA_SYNC_CHECK").map(|v| v.trim() == "1").unwrap_or(false))
}

/// A loaded module and its functions.
pub(crate) struct Module {
    funcs: HashMap<&'static str, usize>,
    pub cc: i32,
    pub from_cache: bool,
    pub is_cubin: bool,
    /// Why the first image was not used (a rejected cached or fresh CUBIN), if it was not.
    pub replaced: Option<String>,
}

fn modules() -> &'static Mutex<HashMap<usize, &'static Module>> {
    static M: OnceLock<Mutex<HashMap<usize, &'static Module>>> = OnceLock::new();
    M.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Loads a module image (a CUBIN ELF or NUL-terminated PTX); the driver's error code otherwise.
fn load_image(bytes: &[u8]) -> Result<std::result::Result<CuModule, CuResult>> {
    let d = drv()?;
    let mut m: CuModule = std::ptr::null_mut();
    // SAFETY: images are a CUBIN ELF or NUL-terminated PTX (nvrtc.rs); the module is never unloaded.
    let r = unsafe { (d.cuModuleLoadData)(&mut m, bytes.as_ptr() as *const c_void) };
    Ok(if r == CUDA_SUCCESS { Ok(m) } else { Err(r) })
}

/// Loads the kernels for compute capability `cc`: the image from [`nvrtc::image_for`] (disk cache
/// or a fresh compilation). If the driver rejects a cached image, a fresh compilation (which then
/// replaces the cache entry); if it rejects a CUBIN, that compilation's PTX.
/// Returns (module, is_cubin, from_cache, why the first image was not used).
fn load_for(cc: i32) -> Result<(CuModule, bool, bool, Option<String>)> {
    let cache = nvrtc::cache_dir_from_env();
    let img = nvrtc::image_for(cc, cache.as_deref())?;
    let r = match load_image(&img.bytes)? {
        Ok(m) => return Ok((m, img.is_cubin, img.from_cache, None)),
        Err(r) => r,
    };
    let kind = |cubin: bool| if cubin { "CUBIN" } else { "PTX" };
    let mut why = format!(
        "the driver rejected the {}{}: {}",
        if img.from_cache { "cached " } else { "" },
        kind(img.is_cubin),
        error_string(r)
    );
    let fresh = if img.from_cache {
        let f = nvrtc::compile_image(cc)?;
        match load_image(&f.bytes)? {
            Ok(m) => {
                if let Some(dir) = cache.as_deref() {
                    let _ = nvrtc::write_atomic(&nvrtc::cache_path(dir, cc)?, &f.bytes);
                }
                return Ok((m, f.is_cubin, false, Some(format!("{why}; recompiled"))));
            }
            Err(r) => {
                why = format!("{why}; the fresh {} too: {}", kind(f.is_cubin), error_string(r));
                f
            }
        }
    } else {
        img
    };
    match &fresh.ptx {
        Some(ptx) => match load_image(ptx)? {
            Ok(m) => Ok((m, false, false, Some(format!("{why}; loaded its PTX")))),
            Err(r) => Err(Error::Runtime(format!("CUDA driver module load: {why}; its PTX too: {}", error_string(r)))),
        },
        None => Err(Error::Runtime(format!("CUDA driver module load: {why}"))),
    }
}

/// The module of device `ordinal` (context current): loaded from the in-memory table, or compiled
/// (or read from the disk cache) and loaded, unless `stream` is capturing.
pub(crate) fn module(ordinal: usize, dev: CuDevice, stream: Option<CuStream>) -> Result<&'static Module> {
    let mut table = modules().lock().map_err(|_| Error::Runtime("CUDA module table poisoned".into()))?;
    if let Some(m) = table.get(&ordinal) {
        return Ok(m);
    }
    if let Some(s) = stream {
        if capturing(s)? {
            return Err(Error::Runtime(
                "the fused CUDA kernels are compiled at their first call, which must not happen during CUDA-graph \
                 capture: run one step (or ic_networks warm-up) on this device before capturing"
                    .into(),
            ));
        }
    }
    let cc = 10 * attribute(dev, dl::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?
        + attribute(dev, dl::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let (m, is_cubin, from_cache, replaced) = load_for(cc)?;
    let d = drv()?;
    let mut funcs = HashMap::new();
    for &name in nvrtc::ENTRIES {
        let c = CString::new(name).unwrap();
        let mut f: CuFunction = std::ptr::null_mut();
        // SAFETY: loaded module, NUL-terminated name.
        unsafe { cu_check(&format!("function {name}"), (d.cuModuleGetFunction)(&mut f, m, c.as_ptr()))? };
        funcs.insert(name, f as usize);
    }
    let module: &'static Module = Box::leak(Box::new(Module { funcs, cc, from_cache, is_cubin, replaced }));
    table.insert(ordinal, module);
    Ok(module)
}

impl Module {
    pub fn func(&self, name: &str) -> Result<CuFunction> {
        self.funcs
            .get(name)
            .map(|&f| f as CuFunction)
            .ok_or_else(|| Error::Runtime(format!("fused CUDA kernel {name} not in the module")))
    }
}

/// Launches `name` with the kernel parameters `args` (pointers to each argument, as
/// cuLaunchKernel takes them) on the borrowed `stream`; under [`sync_check`] (and not capturing)
/// it then waits for the kernel and reports its fault, if any, by name.
pub(crate) fn launch(
    m: &Module,
    name: &str,
    grid: [u32; 3],
    block: u32,
    smem: u32,
    stream: CuStream,
    args: &mut [*mut c_void],
) -> Result<()> {
    if grid.contains(&0) {
        return Ok(());
    }
    let f = m.func(name)?;
    let d = drv()?;
    if smem > 48 * 1024 {
        // SAFETY: valid function handle.
        unsafe {
            cu_check(
                "set shared memory size",
                (d.cuFuncSetAttribute)(f, dl::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32),
            )?
        };
    }
    // SAFETY: args point at live values of the kernel's parameter types (see the #[repr(C)]
    // structs below); the stream is the caller's.
    let status = unsafe {
        (d.cuLaunchKernel)(
            f,
            grid[0],
            grid[1],
            grid[2],
            block,
            1,
            1,
            smem,
            stream,
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    };
    if status != CUDA_SUCCESS {
        return cu_check(&format!("launch {name}"), status);
    }
    if sync_check() && !capturing(stream)? {
        // SAFETY: the caller's stream, borrowed.
        let r = unsafe { (d.cuStreamSynchronize)(stream) };
        if r != CUDA_SUCCESS {
            return Err(Error::Runtime(format!(
                "fused CUDA kernel {name} (grid {grid:?}, block {block}, {smem} B shared) failed: {} \
                 (found by IC_NETWORKS_CUDA_SYNC_CHECK=1; the CUDA context may now be unusable)",
                error_string(r)
            )));
        }
    }
    Ok(())
}

/// One call's launch target: the device's primary context made current, the module loaded for it,
/// and the caller's stream.
pub(crate) struct Launcher {
    _ctx: CtxGuard,
    module: &'static Module,
    stream: CuStream,
}

impl Launcher {
    pub(crate) fn new(ordinal: usize, stream: super::RawStream) -> Result<Self> {
        let ctx = CtxGuard::new(ordinal)?;
        let s = stream as CuStream;
        let module = module(ordinal, ctx.dev, Some(s))?;
        Ok(Self { _ctx: ctx, module, stream: s })
    }

    pub(crate) fn run(
        &self,
        name: &str,
        grid: [u32; 3],
        block: u32,
        smem: usize,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        launch(self.module, name, grid, block, smem as u32, self.stream, args)
    }
}

/// A kernel argument: the address of `v`, which must outlive the launch call.
pub(crate) fn arg<T>(v: &mut T) -> *mut c_void {
    v as *mut T as *mut c_void
}
