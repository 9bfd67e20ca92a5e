//! The CUDA driver (`libcuda`) and NVRTC (`libnvrtc`), loaded at run time from a chosen file:
//! nothing CUDA at build or link time, and on a machine without them every entry point returns
//! an error (never a panic).
//!
//! Which file (the first that loads and has every entry point this crate calls):
//!
//! * libcuda: `$IC_NETWORKS_LIBCUDA` (a full path; only that file) when set; else a libcuda
//!   already mapped into the process (PyTorch's, once it has initialised CUDA); else
//!   `libcuda.so.1`, the driver's own name, through the loader's search; else `libcuda.so` (a
//!   toolkit's stub has that name, and its `cuInit` then says so).
//! * NVRTC: `$IC_NETWORKS_LIBNVRTC` (a full path; only that file) when set; else a libnvrtc already
//!   mapped; else torch's, next to the libtorch this process runs on
//!   (`site-packages/nvidia/<pkg>/lib/libnvrtc.so.*`, or one shipped in `torch/lib`); else
//!   `libnvrtc.so.13`, `libnvrtc.so.12` and `libnvrtc.so` through the loader's search. The
//!   `libnvrtc-builtins` next to the chosen file is loaded first, so NVRTC finds it without
//!   `LD_LIBRARY_PATH`.
//!
//! [`Loaded::path`] is the full path of the file used (reported by `cuda_fused_libraries()` and
//! in every "unavailable" reason).
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub type CuResult = c_int;
pub type CuDevice = c_int;
pub type CuContext = *mut c_void;
pub type CuModule = *mut c_void;
pub type CuFunction = *mut c_void;
pub type CuStream = *mut c_void;
pub type NvrtcResult = c_int;
pub type NvrtcProgram = *mut c_void;

pub const CUDA_SUCCESS: CuResult = 0;
pub const NVRTC_SUCCESS: NvrtcResult = 0;
pub const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
pub const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: c_int = 76;
pub const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: c_int = 8;
pub const CU_STREAM_CAPTURE_STATUS_NONE: c_int = 0;

/// A library and its entry points, and the file they came from.
pub struct Loaded<T> {
    pub api: T,
    /// Full path of the file loaded.
    pub path: String,
    _lib: Library,
}

macro_rules! api {
    ($name:ident { $($f:ident : fn($($a:ty),*) -> $r:ty;)* }) => {
        #[allow(non_snake_case)]
        pub struct $name { $(pub $f: unsafe extern "C" fn($($a),*) -> $r,)* }
        impl $name {
            /// Every entry point from `lib`, or the first one missing.
            unsafe fn load_from(lib: &Library) -> Result<Self, String> {
                Ok(Self { $($f: *lib.get::<unsafe extern "C" fn($($a),*) -> $r>(concat!(stringify!($f), "\0").as_bytes())
                    .map_err(|_| format!("lacks {}", stringify!($f)))?,)* })
            }
            /// The address of one entry point (to find the file it lives in).
            fn any(&self) -> *const c_void { let s = self; api!(@first s $($f)*) }
        }
    };
    (@first $s:ident $f:ident $($rest:ident)*) => { $s.$f as *const c_void };
}

api!(Driver {
    cuInit: fn(c_uint) -> CuResult;
    cuDriverGetVersion: fn(*mut c_int) -> CuResult;
    cuDeviceGetCount: fn(*mut c_int) -> CuResult;
    cuDeviceGet: fn(*mut CuDevice, c_int) -> CuResult;
    cuDeviceGetAttribute: fn(*mut c_int, c_int, CuDevice) -> CuResult;
    cuDevicePrimaryCtxRetain: fn(*mut CuContext, CuDevice) -> CuResult;
    cuCtxGetCurrent: fn(*mut CuContext) -> CuResult;
    cuCtxPushCurrent_v2: fn(CuContext) -> CuResult;
    cuCtxPopCurrent_v2: fn(*mut CuContext) -> CuResult;
    cuModuleLoadData: fn(*mut CuModule, *const c_void) -> CuResult;
    cuModuleGetFunction: fn(*mut CuFunction, CuModule, *const c_char) -> CuResult;
    cuFuncSetAttribute: fn(CuFunction, c_int, c_int) -> CuResult;
    cuStreamIsCapturing: fn(CuStream, *mut c_int) -> CuResult;
    cuStreamSynchronize: fn(CuStream) -> CuResult;
    cuGetErrorString: fn(CuResult, *mut *const c_char) -> CuResult;
    cuLaunchKernel: fn(CuFunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CuStream, *mut *mut c_void, *mut *mut c_void) -> CuResult;
});

api!(Nvrtc {
    nvrtcVersion: fn(*mut c_int, *mut c_int) -> NvrtcResult;
    nvrtcGetErrorString: fn(NvrtcResult) -> *const c_char;
    nvrtcGetNumSupportedArchs: fn(*mut c_int) -> NvrtcResult;
    nvrtcGetSupportedArchs: fn(*mut c_int) -> NvrtcResult;
    nvrtcCreateProgram: fn(*mut NvrtcProgram, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> NvrtcResult;
    nvrtcCompileProgram: fn(NvrtcProgram, c_int, *const *const c_char) -> NvrtcResult;
    nvrtcGetProgramLogSize: fn(NvrtcProgram, *mut usize) -> NvrtcResult;
    nvrtcGetProgramLog: fn(NvrtcProgram, *mut c_char) -> NvrtcResult;
    nvrtcGetPTXSize: fn(NvrtcProgram, *mut usize) -> NvrtcResult;
    nvrtcGetPTX: fn(NvrtcProgram, *mut c_char) -> NvrtcResult;
    nvrtcGetCUBINSize: fn(NvrtcProgram, *mut usize) -> NvrtcResult;
    nvrtcGetCUBIN: fn(NvrtcProgram, *mut c_char) -> NvrtcResult;
    nvrtcDestroyProgram: fn(*mut NvrtcProgram) -> NvrtcResult;
});

/// The full path of the object that holds `addr` (dladdr), if the loader knows it.
fn object_path(addr: *const c_void) -> Option<String> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables; info is a valid out-pointer.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader.
    let p = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_string_lossy().into_owned();
    Some(std::fs::canonicalize(&p).map(|c| c.to_string_lossy().into_owned()).unwrap_or(p))
}

/// Files mapped into this process whose name starts with `prefix` (from /proc/self/maps).
fn mapped(prefix: &str) -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        let Some(i) = line.find('/') else { continue };
        let p = PathBuf::from(line[i..].trim());
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(prefix) && !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Tries `candidates` in order (a full path, or a bare name for the loader's search); the first
/// that loads with every entry point wins. The error lists what each candidate said.
fn load_first<T>(
    what: &str,
    candidates: &[String],
    api: unsafe fn(&Library) -> Result<T, String>,
    any: fn(&T) -> *const c_void,
) -> Result<Loaded<T>, String> {
    let mut tried = Vec::new();
    for c in candidates {
        // SAFETY: loading a CUDA library runs its initialisers, which have no preconditions.
        let lib = match unsafe { Library::open(Some(c.as_str()), RTLD_NOW | RTLD_LOCAL) } {
            Ok(l) => l,
            Err(e) => {
                tried.push(format!("{c}: {e}"));
                continue;
            }
        };
        // SAFETY: the signatures in `api!` are the libraries' C prototypes.
        match unsafe { api(&lib) } {
            Ok(a) => {
                let path = object_path(any(&a)).unwrap_or_else(|| c.clone());
                return Ok(Loaded { api: a, path, _lib: lib });
            }
            Err(e) => tried.push(format!("{c}: {e}")),
        }
    }
    Err(format!("{what} is not loadable (tried {})", tried.join("; ")))
}

fn env_path(var: &str) -> Option<String> {
    std::env::var(var).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The libcuda candidates, in order (see the module docs).
pub fn libcuda_candidates() -> Vec<String> {
    if let Some(p) = env_path("IC_NETWORKS_LIBCUDA") {
        return vec![p];
    }
    let mut c: Vec<String> = mapped("libcuda.so").into_iter().map(|p| p.to_string_lossy().into_owned()).collect();
    c.push("libcuda.so.1".into());
    c.push("libcuda.so".into());
    c
}

/// torch's `lib` directory, from the libtorch mapped into this process.
fn torch_lib_dir() -> Option<PathBuf> {
    ["libtorch_cpu.so", "libc10.so", "libtorch.so"]
        .iter()
        .flat_map(|n| mapped(n))
        .find(|p| p.file_name().and_then(|s| s.to_str()).map(|s| s.starts_with("lib")).unwrap_or(false))
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

fn is_nvrtc(name: &str) -> bool {
    name.starts_with("libnvrtc") && name.contains(".so") && !name.contains("builtins")
}

/// libnvrtc files in `dir`, the highest version first.
fn nvrtc_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_str().map(is_nvrtc).unwrap_or(false))
                .map(|e| e.path().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| b.cmp(a));
    v
}

/// The NVRTC candidates, in order (see the module docs).
pub fn nvrtc_candidates() -> Vec<String> {
    if let Some(p) = env_path("IC_NETWORKS_LIBNVRTC") {
        return vec![p];
    }
    let mut c: Vec<String> = mapped("libnvrtc")
        .into_iter()
        .filter(|p| p.file_name().and_then(|s| s.to_str()).map(is_nvrtc).unwrap_or(false))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(lib) = torch_lib_dir() {
        if let Some(site) = lib.parent().and_then(Path::parent) {
            let nvidia = site.join("nvidia");
            // cu13 wheels: nvidia/cu13/lib; cu12 wheels: nvidia/cuda_nvrtc/lib
            for pkg in ["cu13", "cuda_nvrtc"] {
                c.extend(nvrtc_in(&nvidia.join(pkg).join("lib")));
            }
            let mut others: Vec<PathBuf> = std::fs::read_dir(&nvidia)
                .map(|rd| rd.flatten().map(|e| e.path().join("lib")).collect())
                .unwrap_or_default();
            others.sort();
            for d in others {
                c.extend(nvrtc_in(&d));
            }
        }
        c.extend(nvrtc_in(&lib));
    }
    for n in ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"] {
        c.push(n.into());
    }
    let mut seen = Vec::new();
    c.retain(|p| {
        if seen.contains(p) {
            false
        } else {
            seen.push(p.clone());
            true
        }
    });
    c
}

/// libcuda, loaded once (see the module docs); the error says what was tried.
pub fn driver() -> Result<&'static Loaded<Driver>, String> {
    static D: OnceLock<Result<Loaded<Driver>, String>> = OnceLock::new();
    D.get_or_init(|| load_first("libcuda (the NVIDIA driver)", &libcuda_candidates(), Driver::load_from, Driver::any))
        .as_ref()
        .map_err(Clone::clone)
}

/// NVRTC, loaded once (see the module docs); the error says what was tried.
pub fn nvrtc() -> Result<&'static Loaded<Nvrtc>, String> {
    static N: OnceLock<Result<Loaded<Nvrtc>, String>> = OnceLock::new();
    N.get_or_init(|| {
        let cands = nvrtc_candidates();
        // The builtins next to a full-path candidate, loaded first and kept: NVRTC opens them by
        // their soname, which then matches the loaded file.
        if let Some(c) = cands.iter().find(|c| c.starts_with('/')) {
            if let Some(dir) = Path::new(c).parent() {
                let mut b: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| e.path())
                            .filter(|p| {
                                p.file_name()
                                    .and_then(|s| s.to_str())
                                    .map(|s| s.starts_with("libnvrtc-builtins.so"))
                                    .unwrap_or(false)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                b.sort();
                if let Some(f) = b.last() {
                    // SAFETY: as in load_first; kept for the process (NVRTC needs it for every compile).
                    if let Ok(l) = unsafe { Library::open(Some(f.as_os_str()), RTLD_NOW | RTLD_LOCAL) } {
                        std::mem::forget(l);
                    }
                }
            }
        }
        load_first("libnvrtc (NVRTC; torch with CUDA ships it)", &cands, Nvrtc::load_from, Nvrtc::any)
    })
    .as_ref()
    .map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_prefer_full_paths_and_versioned_names() {
        let c = libcuda_candidates();
        if std::env::var_os("IC_NETWORKS_LIBCUDA").is_none() {
            let i1 = c.iter().position(|s| s == "libcuda.so.1").unwrap();
            let i0 = c.iter().position(|s| s == "libcuda.so").unwrap();
            assert!(i1 < i0, "{c:?}");
            assert!(c[..i1].iter().all(|s| s.starts_with('/')), "{c:?}");
        }
        let n = nvrtc_candidates();
        if std::env::var_os("IC_NETWORKS_LIBNVRTC").is_none() {
            let first_bare = n.iter().position(|s| !s.starts_with('/')).unwrap();
            assert!(n[first_bare..].iter().all(|s| !s.starts_with('/')), "{n:?}");
            assert_eq!(n.last().unwrap(), "libnvrtc.so", "{n:?}");
        }
    }

    #[test]
    fn a_missing_library_is_an_error_that_lists_what_was_tried() {
        let e = load_first(
            "libnothing",
            &["/nonexistent/libnothing.so".into(), "libnothing_at_all.so".into()],
            Driver::load_from,
            Driver::any,
        )
        .err()
        .unwrap();
        assert!(e.contains("/nonexistent/libnothing.so") && e.contains("libnothing_at_all.so"), "{e}");
    }
}
