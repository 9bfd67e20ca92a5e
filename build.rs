//! Build script.
//!
//! 1. Generates `ic_networks_ffi.h` (cbindgen) from `src/c_abi.rs` and `src/ffi.rs`: the status
//!    codes, the error sink, `IcnIntList` and the prototypes of the Rust functions that C++ calls.
//!    It goes to `$OUT_DIR/include`; `src/cpp/` includes it, so the boundary is declared once.
//! 2. Generates `kernel_params.rs` from the parameter structs of `src/cuda/kernels/collision.cu`
//!    (the one source of their layout): `#[repr(C)]` structs that `src/cuda/fused/params.rs`
//!    includes. tests/cuda_emu/params.py builds its ctypes copies from the same source.
//! 3. Compiles `src/cpp/`: the op library (`ops.cpp` defines and registers the `ic_networks` ops,
//!    `kernels.cpp`, `autograd.cpp`, `autocast.cpp` implement them per dispatch key) and
//!    `aten_shim.cpp`, the libtorch entry points that tch 0.26 does not bind.
//! 4. Gives the extension module an rpath to `torch/lib` next to it in site-packages, so that it also
//!    loads before `import torch` has run.
//! 5. Makes `cargo test` binaries runnable: rpath to libtorch, CUDA libs kept, and libpython linked
//!    (pyo3's `extension-module` feature leaves it out); docs/design.md has the build facts.
//! 6. Records the torch version it builds against (`_core.built_torch_version()`, checked at import
//!    by python/ic_networks/_torch_check.py) and picks the C++ standard from it; see `torch_build`.
use std::path::{Path, PathBuf};

const MANYLINUX_COMPAT: &str = "src/cpp/compat/manylinux_2_28.c";

fn main() {
    const CPP: [&str; 5] = [
        "src/cpp/aten_shim.cpp",
        "src/cpp/ops.cpp",
        "src/cpp/kernels.cpp",
        "src/cpp/autograd.cpp",
        "src/cpp/autocast.cpp",
    ];
    for f in CPP.iter().chain(&["src/cpp/ops.h", "src/cpp/error_sink.h"]) {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=IC_NETWORKS_CXX11_ABI");
    let lib_dir =
        PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report the libtorch lib dir"));
    let torch_root = lib_dir.parent().expect("libtorch lib dir has a parent").to_path_buf();
    let abi = std::env::var("IC_NETWORKS_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    let cxx_std = torch_build(&torch_root);
    let generated = ffi_header();
    kernel_params();

    // Our own C++ builds with -Wall -Wextra at zero warnings; torch's headers are system headers
    // (-isystem), so that their warnings are not ours.
    let mut cpp = cc::Build::new();
    openmp(&mut cpp, &torch_root, &lib_dir);
    cpp.cpp(true)
        .pic(true)
        .warnings(true)
        .extra_warnings(true)
        .flag("-isystem")
        .flag(torch_root.join("include").display().to_string())
        .flag("-isystem")
        .flag(torch_root.join("include/torch/csrc/api/include").display().to_string())
        .include(&generated)
        .flag(cxx_std)
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .files(CPP)
        .compile("icn_aten_shim");

    // Stand-ins for the few glibc/libstdc++ entry points newer than manylinux_2_28 (the file says
    // which); linked whole, so that every reference in the library binds to them.
    println!("cargo:rerun-if-changed={MANYLINUX_COMPAT}");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64")
        && std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        cc::Build::new()
            .pic(true)
            .warnings(true)
            .extra_warnings(true)
            .warnings_into_errors(true)
            .file(MANYLINUX_COMPAT)
            .link_lib_modifier("+whole-archive")
            .compile("icn_manylinux_2_28");
    }

    // The wheel installs ic_networks/_core.*.so next to site-packages/torch.
    println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN/../torch/lib");
    println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,{}", lib_dir.display());

    // Test binaries (tests/*.rs).
    println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg-tests=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg-tests=-ltorch");
        println!("cargo:rustc-link-arg-tests=-ltorch_cuda");
        println!("cargo:rustc-link-arg-tests=-Wl,--as-needed");
    }
    let py = pyo3_build_config::get();
    if let (Some(dir), Some(name)) = (&py.lib_dir, &py.lib_name) {
        println!("cargo:rustc-link-arg-tests=-L{dir}");
        println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{dir}");
        println!("cargo:rustc-link-arg-tests=-l{name}");
    }
}

/// With torch's OpenMP backend (`AT_PARALLEL_OPENMP` in `ATen/Config.h`, every pip wheel for
/// Linux), `at::parallel_for` is an inline template whose threads come from `#pragma omp parallel`
/// in the code that calls it: our C++ must be compiled with `-fopenmp`, or every kernel run through
/// `aten.rs`'s `parallel_for` is silently one task on the calling thread. It links the libgomp
/// that torch ships (`torch/lib/libgomp.so.1`, the runtime torch's own threads use; the system's
/// if torch has none there), never a second OpenMP runtime.
fn openmp(cpp: &mut cc::Build, torch_root: &Path, lib_dir: &Path) {
    let config = torch_root.join("include/ATen/Config.h");
    println!("cargo:rerun-if-changed={}", config.display());
    let text = std::fs::read_to_string(&config).unwrap_or_else(|e| panic!("cannot read {}: {e}", config.display()));
    if !text.lines().any(|l| l.split_whitespace().eq(["#define", "AT_PARALLEL_OPENMP", "1"])) {
        return; // the native backend: at::parallel_for calls into libtorch
    }
    cpp.flag("-fopenmp");
    if lib_dir.join("libgomp.so.1").exists() {
        println!("cargo:rustc-link-search=native={}", lib_dir.display());
        println!("cargo:rustc-link-lib=dylib:+verbatim=libgomp.so.1");
    } else {
        println!("cargo:rustc-link-lib=dylib=gomp");
    }
}

/// The tested torch range (docs/install.md); others get a warning, not an error.
const TORCH_TESTED: ((u32, u32), (u32, u32)) = ((2, 13), (2, 15));

/// Reads the version of the torch that torch-sys links (`<torch>/version.py`, else the C++ header),
/// embeds it as `IC_NETWORKS_BUILT_TORCH_VERSION`, refuses a tch wrapper compiled before that torch
/// was installed, and returns the C++ standard for our own C++ (torch >= 2.14's headers need C++20).
fn torch_build(torch_root: &Path) -> &'static str {
    let version_py = torch_root.join("version.py");
    let version_h = ["include/torch/headeronly/version.h", "include/torch/csrc/api/include/torch/version.h"]
        .iter()
        .map(|p| torch_root.join(p))
        .find(|p| p.exists())
        .unwrap_or_else(|| torch_root.join("include/torch/version.h"));
    println!("cargo:rerun-if-changed={}", version_py.display());
    println!("cargo:rerun-if-changed=src/cpp/compat/ic_networks_torch_compat.h");
    let from_py = std::fs::read_to_string(&version_py).ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("__version__ = "))
            .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
    });
    let version = from_py.or_else(|| {
        let text = std::fs::read_to_string(&version_h).ok()?;
        let field = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(&format!("#define TORCH_VERSION_{name} "))).map(str::trim)
        };
        Some(format!("{}.{}.{}", field("MAJOR")?, field("MINOR")?, field("PATCH")?))
    });
    let version = version.unwrap_or_else(|| {
        panic!("cannot read the torch version from {} or {}", version_py.display(), version_h.display())
    });
    let mut parts = version.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    let major_minor = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    println!("cargo:rustc-env=IC_NETWORKS_BUILT_TORCH_VERSION={version}");
    let (lo, hi) = TORCH_TESTED;
    if major_minor < lo || major_minor > hi {
        println!(
            "cargo:warning=building against torch {version}, outside the tested range {}.{}-{}.{} (docs/install.md)",
            lo.0, lo.1, hi.0, hi.1
        );
    }
    // torch-sys only re-runs its build when its environment variables change, not when another torch
    // is installed in the same environment: its wrapper would then still be compiled against the old
    // torch's headers. Refuse that (pip rewrites version.py when it installs a torch).
    let installed = std::fs::metadata(&version_py).and_then(|m| m.modified()).ok();
    let build_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("../..");
    let newest_wrapper = std::fs::read_dir(&build_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("torch-sys-"))
        .filter_map(|e| std::fs::metadata(e.path().join("out/libtch.a")).and_then(|m| m.modified()).ok())
        .max();
    // The wrapper this build script last accepted, with its torch: a reinstall of the same torch
    // version (newer version.py, same wrapper) is fine.
    let stamp = build_dir.join("ic-networks-tch-wrapper-torch");
    let key = |t: std::time::SystemTime| {
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("{}.{:09} {version}", d.as_secs(), d.subsec_nanos())
    };
    if let (Some(installed), Some(wrapper)) = (installed, newest_wrapper) {
        let accepted = std::fs::read_to_string(&stamp).map(|s| s.trim() == key(wrapper)).unwrap_or(false);
        if wrapper >= installed || accepted {
            let _ = std::fs::write(&stamp, key(wrapper));
        } else {
            panic!(
                "tch's C++ wrapper in {} was compiled before torch {version} was installed at {}: \
                 run `cargo clean --release -p torch-sys` (with the same CARGO_TARGET_DIR) and build again",
                build_dir.display(),
                torch_root.display()
            );
        }
    }
    if major_minor >= (2, 14) {
        "-std=c++20"
    } else {
        "-std=c++17"
    }
}

/// Writes `ic_networks_ffi.h` (see the module docs) into `$OUT_DIR/include`; returns that folder.
fn ffi_header() -> PathBuf {
    const SOURCES: [&str; 2] = ["src/c_abi.rs", "src/ffi.rs"];
    for f in SOURCES {
        println!("cargo:rerun-if-changed={f}");
    }
    let dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("include");
    std::fs::create_dir_all(&dir).expect("creating $OUT_DIR/include");
    let config = cbindgen::Config {
        language: cbindgen::Language::Cxx,
        header: Some("// Generated by build.rs (cbindgen) from src/c_abi.rs and src/ffi.rs: do not edit.".into()),
        pragma_once: true,
        no_includes: true,
        sys_includes: vec!["cstddef".into(), "cstdint".into()],
        // tch's C_tensor is an at::Tensor*.
        after_includes: Some("namespace at {\nclass Tensor;\n}\nusing C_tensor = at::Tensor;".into()),
        usize_is_size_t: true,
        documentation: true,
        ..Default::default()
    };
    let mut builder = cbindgen::Builder::new().with_config(config);
    for f in SOURCES {
        builder = builder.with_src(f);
    }
    builder
        .generate()
        .expect("cbindgen: generating ic_networks_ffi.h from src/c_abi.rs and src/ffi.rs")
        .write_to_file(dir.join("ic_networks_ffi.h"));
    dir
}

/// The kernel source whose parameter structs [`kernel_params`] mirrors.
const KERNEL_SOURCE: &str = "src/cuda/kernels/collision.cu";
/// The structs of [`KERNEL_SOURCE`] that the launcher passes by value.
const KERNEL_PARAMS: [&str; 4] = ["IcStrides", "IcBoxParams", "IcBoxsumParams", "IcReduceParams"];

/// Writes `$OUT_DIR/kernel_params.rs`: each of [`KERNEL_PARAMS`] as a `#[repr(C)]` Rust struct,
/// field for field (C's `int` as `i32`, `ic_i64` as `i64`, a nested struct by name; names in lower
/// case; a field's trailing `//` comment as its doc).
fn kernel_params() {
    println!("cargo:rerun-if-changed={KERNEL_SOURCE}");
    let src = std::fs::read_to_string(KERNEL_SOURCE).expect("reading the kernel source");
    let mut out = format!("// Generated by build.rs from {KERNEL_SOURCE}: do not edit.\n");
    for name in KERNEL_PARAMS {
        let start =
            src.find(&format!("\nstruct {name} {{")).unwrap_or_else(|| panic!("{KERNEL_SOURCE}: no struct {name}"));
        let body = &src[start..][..src[start..].find("};").expect("struct end")];
        out += &format!(
            "\n/// `{name}` of collision.cu.\n#[repr(C)]\n#[derive(Debug, Clone, Copy, Default)]\npub struct {name} {{\n"
        );
        for line in body.lines().skip(2) {
            let (decl, comment) = line.split_once("//").unwrap_or((line, ""));
            let decl = decl.trim().trim_end_matches(';');
            let Some((ty, names)) = decl.split_once(' ') else { continue };
            let ty = match ty {
                "int" => "i32",
                "ic_i64" => "i64",
                t if KERNEL_PARAMS.contains(&t) => t,
                t => panic!("{KERNEL_SOURCE}: struct {name}: unexpected field type {t}"),
            };
            for field in names.split(',').map(str::trim) {
                if !comment.trim().is_empty() {
                    out += &format!("    /// {}\n", comment.trim());
                }
                out += &format!("    pub {}: {ty},\n", field.to_lowercase());
            }
        }
        out += "}\n";
    }
    let dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(dir.join("kernel_params.rs"), out).expect("writing kernel_params.rs");
}
