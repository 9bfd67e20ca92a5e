//! Run-time compilation of `src/cuda/kernels/collision.cu` with NVRTC, and the on-disk CUBIN cache.
//!
//! NVRTC needs no GPU and no driver, so everything here also runs (and is tested) on CPU-only
//! machines that have `libnvrtc` (torch's CUDA wheels ship it under `site-packages/nvidia/cu13/lib`).
//! The library is loaded by [`super::dl::nvrtc`]: torch's by full path first, with the
//! `libnvrtc-builtins` next to it; [`library_path`] says which file. Without it every entry point
//! returns an error (or an empty answer), never a panic.
//!
//! Target choice ([`target_for`]): the device's `sm_XY` CUBIN when this NVRTC supports that arch
//! (its PTX, `compute_XY`, is kept as the fallback the driver can JIT), else PTX for the highest
//! `compute_XY` NVRTC supports that is not above the device.
//!
//! Disk cache: `$IC_NETWORKS_KERNEL_CACHE_DIR`, else `$XDG_CACHE_HOME/ic_networks/kernels`, else
//! `~/.cache/ic_networks/kernels`; one file per (source hash, options, arch, NVRTC version), written
//! to a temporary name and renamed (atomic on POSIX), so concurrent processes never read a partial
//! file. `IC_NETWORKS_KERNEL_CACHE=0` disables it.
use super::dl::{self, Nvrtc, NvrtcProgram, NvrtcResult, NVRTC_SUCCESS};
use crate::error::{Error, Result};
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

/// The kernel source, compiled into the crate.
pub const SOURCE: &str = include_str!("../kernels/collision.cu");

/// Every `extern "C"` entry point of [`SOURCE`] (the PTX is checked against this list).
pub const ENTRIES: &[&str] = &[
    "ic_fwd_box_f32",
    "ic_fwd_box_f64",
    "ic_fwd_box_f16",
    "ic_fwd_box_bf16",
    "ic_bwd_box_f32",
    "ic_bwd_box_f64",
    "ic_bwd_box_f16",
    "ic_bwd_box_bf16",
    "ic_boxsum_f32",
    "ic_boxsum_f64",
    "ic_boxsum_f16",
    "ic_boxsum_bf16",
    "ic_boxsum_t_f32",
    "ic_boxsum_t_f64",
    "ic_boxsum_t_f16",
    "ic_boxsum_t_bf16",
    "ic_reduce_f32",
    "ic_reduce_f64",
];

/// Options besides the arch. Part of the cache key.
const OPTIONS: &[&str] = &["-std=c++17", "-default-device"];

/// The loaded NVRTC, or why not.
fn api() -> Result<&'static Nvrtc> {
    dl::nvrtc().map(|l| &l.api).map_err(Error::Runtime)
}

fn nvrtc_err(n: &Nvrtc, what: &str, r: NvrtcResult) -> Error {
    // SAFETY: nvrtcGetErrorString returns a static string (or null) for any code.
    let p = unsafe { (n.nvrtcGetErrorString)(r) };
    let msg =
        if p.is_null() { format!("error {r}") } else { unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned() };
    Error::Runtime(format!("NVRTC {what}: {msg}"))
}

fn check(n: &Nvrtc, what: &str, r: NvrtcResult) -> Result<()> {
    if r == NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(nvrtc_err(n, what, r))
    }
}

/// Whether libnvrtc loads and answers (checked once; never panics).
pub fn nvrtc_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| version_raw().is_some())
}

/// Why NVRTC is not usable (the files tried), `None` when it is.
pub fn unavailable_reason() -> Option<String> {
    match dl::nvrtc() {
        Err(e) => Some(e),
        Ok(l) if version_raw().is_none() => Some(format!("libnvrtc ({}) does not report its version", l.path)),
        Ok(_) => None,
    }
}

/// The full path of the libnvrtc in use, `None` when none loads.
pub fn library_path() -> Option<String> {
    dl::nvrtc().ok().map(|l| l.path.clone())
}

fn version_raw() -> Option<(i32, i32)> {
    let n = api().ok()?;
    let (mut a, mut b) = (0, 0);
    // SAFETY: out-pointers are valid.
    let r = unsafe { (n.nvrtcVersion)(&mut a, &mut b) };
    (r == NVRTC_SUCCESS).then_some((a, b))
}

/// NVRTC's (major, minor) version, `None` without libnvrtc.
pub fn version() -> Option<(i32, i32)> {
    if !nvrtc_available() {
        return None;
    }
    version_raw()
}

/// The `XY` of every `sm_XY` this NVRTC can target, ascending; empty without libnvrtc.
pub fn supported_archs() -> Vec<i32> {
    let Ok(api) = api() else { return Vec::new() };
    let mut n = 0;
    // SAFETY: buffers sized by the first call.
    unsafe {
        if (api.nvrtcGetNumSupportedArchs)(&mut n) != NVRTC_SUCCESS || n <= 0 {
            return Vec::new();
        }
        let mut v = vec![0i32; n as usize];
        if (api.nvrtcGetSupportedArchs)(v.as_mut_ptr()) != NVRTC_SUCCESS {
            return Vec::new();
        }
        v.sort_unstable();
        v
    }
}

/// What to compile for a device of compute capability `cc` (e.g. 90): `(arch, true)` for a CUBIN
/// `sm_XY`, `(arch, false)` for PTX only (`compute_XY`, the highest supported `XY <= cc`).
pub fn target_for(cc: i32) -> Result<(i32, bool)> {
    let archs = supported_archs();
    if archs.contains(&cc) {
        return Ok((cc, true));
    }
    match archs.iter().rev().find(|&&a| a <= cc) {
        Some(&a) => Ok((a, false)),
        None => Err(Error::Runtime(format!(
            "NVRTC {:?} supports none of the archs up to compute capability {}.{} (supported: {archs:?})",
            version(),
            cc / 10,
            cc % 10
        ))),
    }
}

/// One compilation's results.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// `sm_XY` or `compute_XY`.
    pub arch: String,
    pub ptx: String,
    /// The CUBIN (an ELF image) for `sm_XY` targets.
    pub cubin: Option<Vec<u8>>,
    /// NVRTC's log; for CUBIN targets it includes ptxas' per-entry register/spill report.
    pub log: String,
    pub seconds: f64,
}

/// Compiles [`SOURCE`] for `arch` (`XY`): to CUBIN (`cubin = true`, with ptxas' verbose report in
/// the log) or to PTX only. Needs no GPU.
pub fn compile(arch: i32, cubin: bool) -> Result<Compiled> {
    compile_source(SOURCE, arch, cubin)
}

pub fn compile_source(source: &str, arch: i32, cubin: bool) -> Result<Compiled> {
    let api = api()?;
    let arch_name = if cubin { format!("sm_{arch}") } else { format!("compute_{arch}") };
    let src = CString::new(source).map_err(|_| Error::Runtime("kernel source contains a NUL byte".into()))?;
    let name = CString::new("collision.cu").unwrap();
    let mut opts: Vec<CString> = vec![CString::new(format!("--gpu-architecture={arch_name}")).unwrap()];
    opts.extend(OPTIONS.iter().map(|o| CString::new(*o).unwrap()));
    if cubin {
        opts.push(CString::new("-Xptxas").unwrap());
        opts.push(CString::new("-v").unwrap());
    }
    let opt_ptrs: Vec<*const std::ffi::c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let t0 = Instant::now();
    let mut prog: NvrtcProgram = std::ptr::null_mut();
    // SAFETY: all strings NUL-terminated and alive across the calls; the program is destroyed on
    // every path below.
    unsafe {
        check(
            api,
            "create program",
            (api.nvrtcCreateProgram)(&mut prog, src.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null()),
        )?;
        let r = (api.nvrtcCompileProgram)(prog, opt_ptrs.len() as i32, opt_ptrs.as_ptr());
        let seconds = t0.elapsed().as_secs_f64();
        let log = program_log(api, prog);
        let out = if r != NVRTC_SUCCESS {
            Err(Error::Runtime(format!(
                "NVRTC could not compile the fused kernels for {arch_name}: {}\n{log}",
                nvrtc_err(api, "compile", r)
            )))
        } else {
            get_outputs(api, prog, cubin).map(|(ptx, bin)| Compiled {
                arch: arch_name.clone(),
                ptx,
                cubin: bin,
                log,
                seconds,
            })
        };
        (api.nvrtcDestroyProgram)(&mut prog);
        out
    }
}

unsafe fn program_log(api: &Nvrtc, prog: NvrtcProgram) -> String {
    let mut n = 0usize;
    if (api.nvrtcGetProgramLogSize)(prog, &mut n) != NVRTC_SUCCESS || n == 0 {
        return String::new();
    }
    let mut buf = vec![0u8; n];
    if (api.nvrtcGetProgramLog)(prog, buf.as_mut_ptr() as *mut _) != NVRTC_SUCCESS {
        return String::new();
    }
    String::from_utf8_lossy(&buf[..n.saturating_sub(1)]).into_owned()
}

unsafe fn get_outputs(api: &Nvrtc, prog: NvrtcProgram, cubin: bool) -> Result<(String, Option<Vec<u8>>)> {
    let mut n = 0usize;
    check(api, "PTX size", (api.nvrtcGetPTXSize)(prog, &mut n))?;
    let mut ptx = vec![0u8; n];
    check(api, "PTX", (api.nvrtcGetPTX)(prog, ptx.as_mut_ptr() as *mut _))?;
    let ptx = String::from_utf8_lossy(&ptx[..n.saturating_sub(1)]).into_owned();
    let bin = if cubin {
        check(api, "CUBIN size", (api.nvrtcGetCUBINSize)(prog, &mut n))?;
        let mut b = vec![0u8; n];
        check(api, "CUBIN", (api.nvrtcGetCUBIN)(prog, b.as_mut_ptr() as *mut _))?;
        Some(b)
    } else {
        None
    };
    Ok((ptx, bin))
}

/// The `.entry` names of a PTX module.
pub fn ptx_entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| {
            let i = l.find(".entry")?;
            let rest = l[i + 6..].trim();
            Some(rest.trim_end_matches('(').trim().to_string())
        })
        .collect()
}

/// Problems a compilation shows: missing or extra entries, local memory in the PTX, or (CUBIN
/// targets) any entry with a stack frame or spills in ptxas' report. Empty when clean.
pub fn lint(c: &Compiled) -> Vec<String> {
    let mut bad = Vec::new();
    let mut found = ptx_entries(&c.ptx);
    found.sort();
    let mut want: Vec<String> = ENTRIES.iter().map(|s| s.to_string()).collect();
    want.sort();
    if found != want {
        bad.push(format!("{}: PTX entries {found:?}, expected {want:?}", c.arch));
    }
    if c.ptx.contains(".local") {
        bad.push(format!("{}: the PTX uses local memory (.local)", c.arch));
    }
    if c.cubin.is_some() {
        let props: Vec<&str> = c.log.lines().filter(|l| l.contains("spill stores")).collect();
        if props.len() != ENTRIES.len() {
            bad.push(format!("{}: ptxas reported {} entries, expected {}", c.arch, props.len(), ENTRIES.len()));
        }
        for p in props {
            if !p.contains(" 0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads") {
                bad.push(format!("{}: {}", c.arch, p.trim()));
            }
        }
    }
    bad
}

/// 64-bit FNV-1a (stable across Rust versions, unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Cache file name for (source, arch, kind): `sm_90-nvrtc13.0-<hash>.cubin` / `compute_90-...ptx`.
pub fn cache_key(source: &str, arch: i32, cubin: bool) -> String {
    let (a, b) = version().unwrap_or((0, 0));
    let opts = OPTIONS.join(" ");
    let h = fnv1a(&[source.as_bytes(), opts.as_bytes(), format!("{arch}/{cubin}/{a}.{b}").as_bytes()]);
    if cubin {
        format!("sm_{arch}-nvrtc{a}.{b}-{h:016x}.cubin")
    } else {
        format!("compute_{arch}-nvrtc{a}.{b}-{h:016x}.ptx")
    }
}

/// The disk cache directory from the environment, `None` when `IC_NETWORKS_KERNEL_CACHE=0`.
pub fn cache_dir_from_env() -> Option<PathBuf> {
    if std::env::var("IC_NETWORKS_KERNEL_CACHE").map(|v| v.trim() == "0").unwrap_or(false) {
        return None;
    }
    if let Some(d) = std::env::var_os("IC_NETWORKS_KERNEL_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ic_networks").join("kernels"))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("kernel"),
        std::process::id(),
        nanos
    ));
    std::fs::write(&tmp, bytes)?;
    match std::fs::rename(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A module image for the driver: CUBIN bytes, or NUL-terminated PTX.
#[derive(Debug, Clone)]
pub struct Image {
    pub bytes: Vec<u8>,
    pub is_cubin: bool,
    /// PTX of the same compilation (CUBIN images only, when compiled now rather than read from the
    /// cache): the fallback if the driver rejects the CUBIN.
    pub ptx: Option<Vec<u8>>,
    pub from_cache: bool,
}

fn nul_terminated(s: String) -> Vec<u8> {
    let mut v = s.into_bytes();
    v.push(0);
    v
}

/// The cache file for a device of compute capability `cc` in the cache directory `dir`.
pub fn cache_path(dir: &Path, cc: i32) -> Result<PathBuf> {
    let (arch, cubin) = target_for(cc)?;
    Ok(dir.join(cache_key(SOURCE, arch, cubin)))
}

/// A fresh compilation for a device of compute capability `cc` (no cache read or write): the
/// CUBIN with its PTX as the fallback, or PTX only (see [`target_for`]).
pub fn compile_image(cc: i32) -> Result<Image> {
    let (arch, cubin) = target_for(cc)?;
    let c = compile(arch, cubin)?;
    Ok(match c.cubin {
        Some(bin) => Image { bytes: bin, is_cubin: true, ptx: Some(nul_terminated(c.ptx)), from_cache: false },
        None => Image { bytes: nul_terminated(c.ptx), is_cubin: false, ptx: None, from_cache: false },
    })
}

/// The image for a device of compute capability `cc`, through the disk cache in `cache` (`None`:
/// no cache). Cache read or write failures only cost a recompilation. A cached file that only
/// looks right can still be rejected by the driver: `launch.rs` then calls [`compile_image`].
pub fn image_for(cc: i32, cache: Option<&Path>) -> Result<Image> {
    let (_, cubin) = target_for(cc)?;
    let file = cache.map(|d| cache_path(d, cc)).transpose()?;
    if let Some(f) = &file {
        if let Ok(bytes) = std::fs::read(f) {
            let valid = if cubin { bytes.starts_with(b"\x7fELF") } else { bytes.last() == Some(&0) };
            if valid {
                return Ok(Image { bytes, is_cubin: cubin, ptx: None, from_cache: true });
            }
        }
    }
    let img = compile_image(cc)?;
    if let Some(f) = &file {
        let _ = write_atomic(f, &img.bytes);
    }
    Ok(img)
}
