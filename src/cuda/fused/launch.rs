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

// ------------------------------------------------------------------ parameters (collision.cu)

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IcStrides {
    pub n: i64,
    pub c: i64,
    pub h: i64,
    pub w: i64,
}

impl IcStrides {
    pub fn of(stride: &[i64]) -> Self {
        Self { n: stride[0], c: stride[1], h: stride[2], w: stride[3] }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IcBoxParams {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub ho: i32,
    pub wo: i32,
    pub kh: i32,
    pub kw: i32,
    pub ph: i32,
    pub pw: i32,
    pub dh: i32,
    pub dw: i32,
    pub tc: i32,
    pub th: i32,
    pub tw: i32,
    pub tiles_c: i32,
    pub tiles_h: i32,
    pub tiles_w: i32,
    pub cl: i32,
    pub s_box: IcStrides,
    pub s_a: IcStrides,
    pub s_b: IcStrides,
    pub s_r: IcStrides,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IcBoxsumParams {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub ho: i32,
    pub wo: i32,
    pub kh: i32,
    pub kw: i32,
    pub sh: i32,
    pub sw: i32,
    pub ph: i32,
    pub pw: i32,
    pub dh: i32,
    pub dw: i32,
    pub mode: i32,
    pub cl: i32,
    pub s_in: IcStrides,
    pub s_out: IcStrides,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IcReduceParams {
    pub n: i32,
    pub c: i32,
    pub tc: i32,
    pub tiles_c: i32,
    pub tiles_sp: i32,
    /// 1: also sum d alpha (per channel); 0: alpha needs no gradient.
    pub dalpha: i32,
}

/// Threads per block of the flat kernels (box sums, reduce), and the most the box kernels use.
pub const THREADS: u32 = 256;
/// Dynamic shared memory the plan may use without an opt-in.
pub const SMEM_LIMIT: usize = 48 * 1024;

fn pow2ceil(v: i64) -> i64 {
    let v = v.max(1) as u64;
    v.next_power_of_two() as i64
}

/// Default tile (channels, rows, cols) for `rows x cols` of work: channels_last 8 channels x 8 x 16
/// (fewer channels when C is small; channel-fastest threads, coalesced on NHWC), NCHW one channel x
/// up to 512 pixels shaped after the image. Mirrored in tests/cuda_emu/host.py (`plan_tile`).
pub fn plan_tile(c: i64, rows: i64, cols: i64, cl: bool) -> (i64, i64, i64) {
    if cl {
        (pow2ceil(c).min(8), pow2ceil(rows).min(8), pow2ceil(cols).min(16))
    } else {
        let tw = pow2ceil(cols).clamp(8, 32);
        let th = (512 / tw).max(1).min(pow2ceil(rows));
        (1, th, tw)
    }
}

/// Threads per block of the box kernels for a tile (TC, TH, TW), all powers of two: about four
/// outputs per thread (the per-thread set-up is paid once for them), at least one row of the
/// tile's channels x columns (the kernels' thread layout) and 64 threads (two warps, and blocks
/// small enough for small images: 64 threads for an 8 x 8 tile at 7 x 7), at most [`THREADS`].
/// Mirrored in tests/cuda_emu/host.py and tests/cuda_emu/ptx_stats.py.
pub fn threads_for(tc: i64, th: i64, tw: i64) -> u32 {
    (pow2ceil(tc * th * tw) / 4).max(tc * tw).max(64).min(THREADS as i64) as u32
}

/// Whether every element offset `c * s.c + h * s.h + w * s.w` inside one image of a tensor of
/// `size`, `stride`, with indices up to `extra` past its size (the kernels' halo and tile
/// overhang), fits the kernels' 32-bit in-image offsets.
pub fn fits_i32(size: &[i64], stride: &[i64], extra: i64) -> bool {
    let span: i128 = (1..4).map(|d| stride[d].unsigned_abs() as i128 * (size[d] + extra) as i128).sum();
    span < i32::MAX as i128 && (1..4).all(|d| stride[d].unsigned_abs() < i32::MAX as u64)
}

/// The box kernels' plan: params, shared-memory bytes and threads per block, shrinking the tile
/// until the halo fits in [`SMEM_LIMIT`]; `None` if even a 1 x 1 tile does not (huge dilated
/// boxes: libtorch path).
#[allow(clippy::too_many_arguments)]
pub fn plan_box(
    size_out: [i64; 4],
    size_in_hw: [i64; 2],
    k: [i64; 2],
    pad: [i64; 2],
    dil: [i64; 2],
    cl: bool,
    bwd: bool,
    acc_bytes: usize,
) -> Option<(IcBoxParams, usize, u32)> {
    let [n, c, ho, wo] = size_out;
    let [h, w] = size_in_hw;
    let (rows, cols) = if bwd { (ho.max(h + pad[0]), wo.max(w + pad[1])) } else { (ho, wo) };
    let (tc, mut th, mut tw) = plan_tile(c, rows, cols, cl);
    let (eh, ew) = (dil[0] * (k[0] - 1), dil[1] * (k[1] - 1));
    let red = if bwd { 3 * THREADS as usize } else { 0 }; // the block reduction's warp sums fit in it
    let bytes = |th: i64, tw: i64| ((tc * (th + eh) * (tw + ew)) as usize + red) * acc_bytes;
    while bytes(th, tw) > SMEM_LIMIT {
        if th >= tw && th > 1 {
            th /= 2;
        } else if tw > 1 {
            tw /= 2;
        } else {
            return None;
        }
    }
    let fits = |v: i64| v >= 0 && v <= i32::MAX as i64;
    let all = [n, c, h, w, ho, wo, k[0], k[1], pad[0], pad[1], dil[0], dil[1], rows, cols];
    if !all.iter().all(|&v| fits(v)) {
        return None;
    }
    let p = IcBoxParams {
        n: n as i32,
        c: c as i32,
        h: h as i32,
        w: w as i32,
        ho: ho as i32,
        wo: wo as i32,
        kh: k[0] as i32,
        kw: k[1] as i32,
        ph: pad[0] as i32,
        pw: pad[1] as i32,
        dh: dil[0] as i32,
        dw: dil[1] as i32,
        tc: tc as i32,
        th: th as i32,
        tw: tw as i32,
        tiles_c: ((c + tc - 1) / tc) as i32,
        tiles_h: ((rows + th - 1) / th) as i32,
        tiles_w: ((cols + tw - 1) / tw) as i32,
        cl: cl as i32,
        ..Default::default()
    };
    // grid.y (channel tiles) and grid.z (batch) are limited to 65535 by the hardware
    if p.tiles_c > 65535 || p.n > 65535 || (p.tiles_h as i64) * (p.tiles_w as i64) > i32::MAX as i64 {
        return None;
    }
    Some((p, bytes(th, tw), threads_for(tc, th, tw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_fits_and_covers() {
        for &(k, d) in &[(1, 1), (3, 1), (5, 2), (7, 3)] {
            for &cl in &[false, true] {
                for &bwd in &[false, true] {
                    let (p, smem, threads) =
                        plan_box([4, 64, 56, 56], [56, 56], [k, k], [d * (k - 1) / 2; 2], [d, d], cl, bwd, 4).unwrap();
                    assert!(smem <= SMEM_LIMIT);
                    // the kernels' thread layout: powers of two, a row of channels x columns per pass
                    assert!(threads.is_power_of_two() && threads % 32 == 0 && threads <= THREADS);
                    assert!(
                        p.tc * p.tw <= threads as i32
                            && (p.tc as u32).is_power_of_two()
                            && (p.tw as u32).is_power_of_two()
                    );
                    assert!(p.tiles_h * p.th >= 56 && p.tiles_w * p.tw >= 56 && p.tiles_c * p.tc >= 64);
                    if cl {
                        assert_eq!(THREADS as i32 % p.tc, 0);
                    } else {
                        assert_eq!(p.tc, 1);
                    }
                }
            }
        }
        // a box whose halo cannot fit: no plan (the caller keeps the libtorch path)
        assert!(plan_box([1, 8, 4, 4], [4000, 4000], [3, 3], [0, 0], [3000, 3000], false, false, 4).is_none());
    }

    /// `(field, offset)` of a C struct of collision.cu, by C's natural-alignment rules (its fields
    /// are `int`, `ic_i64` and `IcStrides`), and the struct's size.
    fn c_layout(name: &str) -> (Vec<(String, usize)>, usize) {
        let src = super::super::nvrtc::SOURCE;
        let start = src.find(&format!("struct {name} {{")).unwrap_or_else(|| panic!("no struct {name}"));
        let body = &src[start..][..src[start..].find("};").unwrap()];
        let (mut fields, mut off, mut align) = (Vec::new(), 0usize, 1usize);
        for line in body.lines().skip(1) {
            let decl = line.split("//").next().unwrap().trim().trim_end_matches(';');
            let Some((ty, names)) = decl.split_once(' ') else { continue };
            let (size, al) = match ty {
                "int" => (4, 4),
                "ic_i64" => (8, 8),
                "IcStrides" => (32, 8),
                other => panic!("{name}: unexpected field type {other}"),
            };
            align = align.max(al);
            for f in names.split(',').map(str::trim) {
                off = off.next_multiple_of(al);
                fields.push((f.to_lowercase(), off));
                off += size;
            }
        }
        (fields, off.next_multiple_of(align))
    }

    macro_rules! rust_layout {
        ($t:ty; $($f:ident),*) => {
            (vec![$((stringify!($f).to_string(), std::mem::offset_of!($t, $f))),*], std::mem::size_of::<$t>())
        };
    }

    #[test]
    fn every_field_sits_where_the_kernel_reads_it() {
        assert_eq!(rust_layout!(IcStrides; n, c, h, w), c_layout("IcStrides"));
        assert_eq!(
            rust_layout!(IcBoxParams; n, c, h, w, ho, wo, kh, kw, ph, pw, dh, dw, tc, th, tw, tiles_c, tiles_h,
                tiles_w, cl, s_box, s_a, s_b, s_r),
            c_layout("IcBoxParams")
        );
        assert_eq!(
            rust_layout!(IcBoxsumParams; n, c, h, w, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, mode, cl, s_in, s_out),
            c_layout("IcBoxsumParams")
        );
        assert_eq!(rust_layout!(IcReduceParams; n, c, tc, tiles_c, tiles_sp, dalpha), c_layout("IcReduceParams"));
    }

    #[test]
    fn repr_c_layout_matches_the_kernel() {
        // 19 ints, 4 bytes of padding, 4 x 32-byte stride blocks (the C struct, natural alignment)
        assert_eq!(std::mem::size_of::<IcBoxParams>(), 80 + 4 * 32);
        assert_eq!(std::mem::size_of::<IcBoxsumParams>(), 64 + 2 * 32);
        assert_eq!(std::mem::size_of::<IcReduceParams>(), 24);
    }

    #[test]
    fn threads_fit_the_tile() {
        assert_eq!(threads_for(1, 16, 32), 128); // 64@56 NCHW: four outputs per thread
        assert_eq!(threads_for(8, 8, 16), 256);
        assert_eq!(threads_for(1, 8, 8), 64); // 512@7 NCHW: a block as small as the image
        assert_eq!(threads_for(8, 8, 8), 128);
        assert!(fits_i32(&[1, 64, 56, 56], &[200704, 3136, 56, 1], 40));
        assert!(!fits_i32(&[1, 3, 40000, 40000], &[4_800_000_000, 1_600_000_000, 40000, 1], 0));
    }
}
