//! Run-time compilation of `src/cuda/kernels/collision.cu` with NVRTC, and the on-disk CUBIN cache.
//!
//! NVRTC needs no GPU and no driver, so everything here also runs (and is tested) on CPU-only
//! machines that have `libnvrtc` (torch's CUDA wheels ship it under `site-packages/nvidia/cu13/lib`,
//! loaded by `import torch`; `libnvrtc-builtins` must be loadable too, else NVRTC reports "failed to
//! open libnvrtc-builtins"). cudarc panics when a library is missing, so every entry point checks
//! [`nvrtc_available`] first.
//!
//! Target choice ([`target_for`]): the device's `sm_XY` CUBIN when this NVRTC supports that arch
//! (its PTX, `compute_XY`, is kept as the fallback the driver can JIT), else PTX for the highest
//! `compute_XY` NVRTC supports that is not above the device.
//!
//! Disk cache: `$IC_NETWORKS_KERNEL_CACHE_DIR`, else `$XDG_CACHE_HOME/ic_networks/kernels`, else
//! `~/.cache/ic_networks/kernels`; one file per (source hash, options, arch, NVRTC version), written
//! to a temporary name and renamed (atomic on POSIX), so concurrent processes never read a partial
//! file. `IC_NETWORKS_KERNEL_CACHE=0` disables it.
use crate::error::{Error, Result};
use cudarc::nvrtc::sys;
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

fn nvrtc_err(what: &str, r: sys::nvrtcResult) -> Error {
    // SAFETY: nvrtcGetErrorString returns a static string for any code.
    let msg = unsafe { CStr::from_ptr(sys::nvrtcGetErrorString(r)) }.to_string_lossy().into_owned();
    Error::Runtime(format!("NVRTC {what}: {msg}"))
}

fn check(what: &str, r: sys::nvrtcResult) -> Result<()> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(nvrtc_err(what, r))
    }
}

/// Whether libnvrtc can be loaded (checked once; never panics).
pub fn nvrtc_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // SAFETY: only tries to dlopen the candidates.
        let present = unsafe { sys::is_culib_present() };
        present && std::panic::catch_unwind(version_raw).map(|v| v.is_some()).unwrap_or(false)
    })
}

fn version_raw() -> Option<(i32, i32)> {
    let (mut a, mut b) = (0, 0);
    // SAFETY: the library is present (checked by the caller); out-pointers are valid.
    let r = unsafe { sys::nvrtcVersion(&mut a, &mut b) };
    (r == sys::nvrtcResult::NVRTC_SUCCESS).then_some((a, b))
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
    if !nvrtc_available() {
        return Vec::new();
    }
    let mut n = 0;
    // SAFETY: library present; buffers sized by the first call.
    unsafe {
        if sys::nvrtcGetNumSupportedArchs(&mut n) != sys::nvrtcResult::NVRTC_SUCCESS || n <= 0 {
            return Vec::new();
        }
        let mut v = vec![0i32; n as usize];
        if sys::nvrtcGetSupportedArchs(v.as_mut_ptr()) != sys::nvrtcResult::NVRTC_SUCCESS {
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
    if !nvrtc_available() {
        return Err(Error::Runtime("NVRTC (libnvrtc) is not loadable: install torch with CUDA or put libnvrtc on LD_LIBRARY_PATH".into()));
    }
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
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: library present; all strings NUL-terminated and alive across the calls; the program
    // is destroyed on every path below.
    unsafe {
        check("create program", sys::nvrtcCreateProgram(&mut prog, src.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null()))?;
        let r = sys::nvrtcCompileProgram(prog, opt_ptrs.len() as i32, opt_ptrs.as_ptr());
        let seconds = t0.elapsed().as_secs_f64();
        let log = program_log(prog);
        let out = if r != sys::nvrtcResult::NVRTC_SUCCESS {
            Err(Error::Runtime(format!("NVRTC could not compile the fused kernels for {arch_name}: {}\n{log}", nvrtc_err("compile", r))))
        } else {
            get_outputs(prog, cubin).map(|(ptx, bin)| Compiled { arch: arch_name.clone(), ptx, cubin: bin, log, seconds })
        };
        sys::nvrtcDestroyProgram(&mut prog);
        out
    }
}

unsafe fn program_log(prog: sys::nvrtcProgram) -> String {
    let mut n = 0usize;
    if sys::nvrtcGetProgramLogSize(prog, &mut n) != sys::nvrtcResult::NVRTC_SUCCESS || n == 0 {
        return String::new();
    }
    let mut buf = vec![0u8; n];
    if sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr() as *mut _) != sys::nvrtcResult::NVRTC_SUCCESS {
        return String::new();
    }
    String::from_utf8_lossy(&buf[..n.saturating_sub(1)]).into_owned()
}

unsafe fn get_outputs(prog: sys::nvrtcProgram, cubin: bool) -> Result<(String, Option<Vec<u8>>)> {
    let mut n = 0usize;
    check("PTX size", sys::nvrtcGetPTXSize(prog, &mut n))?;
    let mut ptx = vec![0u8; n];
    check("PTX", sys::nvrtcGetPTX(prog, ptx.as_mut_ptr() as *mut _))?;
    let ptx = String::from_utf8_lossy(&ptx[..n.saturating_sub(1)]).into_owned();
    let bin = if cubin {
        check("CUBIN size", sys::nvrtcGetCUBINSize(prog, &mut n))?;
        let mut b = vec![0u8; n];
        check("CUBIN", sys::nvrtcGetCUBIN(prog, b.as_mut_ptr() as *mut _))?;
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
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
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

/// The image for a device of compute capability `cc`, through the disk cache in `cache` (`None`:
/// no cache). Cache read or write failures only cost a recompilation.
pub fn image_for(cc: i32, cache: Option<&Path>) -> Result<Image> {
    let (arch, cubin) = target_for(cc)?;
    let file = cache.map(|d| d.join(cache_key(SOURCE, arch, cubin)));
    if let Some(f) = &file {
        if let Ok(bytes) = std::fs::read(f) {
            let valid = if cubin { bytes.starts_with(b"\x7fELF") } else { bytes.last() == Some(&0) };
            if valid {
                return Ok(Image { bytes, is_cubin: cubin, ptx: None, from_cache: true });
            }
        }
    }
    let c = compile(arch, cubin)?;
    let img = match c.cubin {
        Some(bin) => Image { bytes: bin, is_cubin: true, ptx: Some(nul_terminated(c.ptx)), from_cache: false },
        None => Image { bytes: nul_terminated(c.ptx), is_cubin: false, ptx: None, from_cache: false },
    };
    if let Some(f) = &file {
        let _ = write_atomic(f, &img.bytes);
    }
    Ok(img)
}
