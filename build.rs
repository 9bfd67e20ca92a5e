//! Build script.
//!
//! 1. Compiles `src/cpp/`: the op library (`ops.cpp` defines and registers the `ic_networks` ops,
//!    `kernels.cpp`, `autograd.cpp`, `autocast.cpp` implement them per dispatch key) and
//!    `aten_shim.cpp`, the libtorch entry points that tch 0.26 does not bind.
//! 2. Gives the extension module an rpath to `torch/lib` next to it in site-packages, so that it also
//!    loads before `import torch` has run.
//! 3. Makes `cargo test` binaries runnable: rpath to libtorch, CUDA libs kept, and libpython linked
//!    (pyo3's `extension-module` feature leaves it out). See shared BUILD.md.
use std::path::PathBuf;

fn main() {
    const CPP: [&str; 5] = ["src/cpp/aten_shim.cpp", "src/cpp/ops.cpp", "src/cpp/kernels.cpp", "src/cpp/autograd.cpp", "src/cpp/autocast.cpp"];
    for f in CPP.iter().chain(&["src/cpp/ops.h", "src/cpp/error_buf.h"]) {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=IC_NETWORKS_CXX11_ABI");
    let lib_dir = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report the libtorch lib dir"),
    );
    let torch_root = lib_dir.parent().expect("libtorch lib dir has a parent").to_path_buf();
    let abi = std::env::var("IC_NETWORKS_CXX11_ABI").unwrap_or_else(|_| "1".to_string());

    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(torch_root.join("include"))
        .include(torch_root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .files(CPP)
        .compile("icn_aten_shim");

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
