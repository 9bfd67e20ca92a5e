//! The fused CUDA kernels without a GPU: NVRTC compiles every kernel for every target arch (clean
//! PTX: the expected entries, no local memory; CUBIN: no stack frame or spills), the disk cache,
//! and the no-driver behaviour (`available()` false, nothing panics, ops decline CPU tensors).
//!
//! NVRTC is found like the Python side finds it: libnvrtc.so.13 and libnvrtc-builtins on the
//! loader path (torch's CUDA wheel: site-packages/nvidia/cu13/lib). Without it the NVRTC tests
//! print why and pass vacuously (CPU-only torch).
use _core::cuda::fused::{self as fused, nvrtc};

const ARCHS: &[i32] = &[75, 80, 86, 89, 90, 100, 120];

fn nvrtc_or_skip(test: &str) -> bool {
    if nvrtc::nvrtc_available() {
        return true;
    }
    eprintln!("SKIPPED {test}: libnvrtc is not loadable (put site-packages/nvidia/cu13/lib on LD_LIBRARY_PATH)");
    false
}

#[test]
fn nvrtc_compiles_every_kernel_for_every_arch() {
    if !nvrtc_or_skip("nvrtc_compiles_every_kernel_for_every_arch") {
        return;
    }
    let supported = nvrtc::supported_archs();
    eprintln!("NVRTC {:?}, supported archs {supported:?}", nvrtc::version());
    let mut bad = Vec::new();
    for &a in ARCHS {
        assert!(supported.contains(&a), "NVRTC does not list sm_{a}");
        let c = nvrtc::compile(a, true).unwrap_or_else(|e| panic!("sm_{a}: {e}"));
        assert!(c.cubin.as_ref().unwrap().starts_with(b"\x7fELF"));
        eprintln!(
            "NVRTC sm_{a}: CUBIN {} bytes + PTX {} chars in {:.2} s",
            c.cubin.as_ref().unwrap().len(),
            c.ptx.len(),
            c.seconds
        );
        bad.extend(nvrtc::lint(&c));
    }
    let hi = *supported.last().unwrap();
    let c = nvrtc::compile(hi, false).unwrap();
    eprintln!("NVRTC compute_{hi} (PTX fallback): {} chars in {:.2} s", c.ptx.len(), c.seconds);
    assert!(c.cubin.is_none());
    bad.extend(nvrtc::lint(&c));
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn target_choice() {
    if !nvrtc_or_skip("target_choice") {
        return;
    }
    assert_eq!(nvrtc::target_for(90).unwrap(), (90, true));
    // a device newer than NVRTC: PTX for the highest arch it knows
    let hi = *nvrtc::supported_archs().last().unwrap();
    assert_eq!(nvrtc::target_for(hi + 7).unwrap(), (hi, false));
    assert!(nvrtc::target_for(10).is_err());
}

#[test]
fn disk_cache_round_trip() {
    if !nvrtc_or_skip("disk_cache_round_trip") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ic_kernel_cache_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = nvrtc::image_for(80, Some(&dir)).unwrap();
    assert!(!a.from_cache && a.is_cubin && a.ptx.is_some());
    let files: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with("sm_80-nvrtc") && files[0].ends_with(".cubin"), "{files:?}");
    let b = nvrtc::image_for(80, Some(&dir)).unwrap();
    assert!(b.from_cache);
    assert_eq!(a.bytes, b.bytes);
    // a corrupt entry is recompiled and replaced
    std::fs::write(dir.join(&files[0]), b"garbage").unwrap();
    let c = nvrtc::image_for(80, Some(&dir)).unwrap();
    assert!(!c.from_cache && c.bytes == a.bytes);
    // keys differ by arch and kind; no cache: nothing written
    assert_ne!(nvrtc::cache_key(nvrtc::SOURCE, 80, true), nvrtc::cache_key(nvrtc::SOURCE, 90, true));
    assert_ne!(nvrtc::cache_key(nvrtc::SOURCE, 90, true), nvrtc::cache_key(nvrtc::SOURCE, 90, false));
    assert_ne!(nvrtc::cache_key(nvrtc::SOURCE, 90, true), nvrtc::cache_key("x", 90, true));
    std::fs::remove_dir_all(&dir).unwrap();
    let d = nvrtc::image_for(80, None).unwrap();
    assert!(!d.from_cache);
    assert!(!dir.exists());
}

#[test]
fn atomic_write_leaves_no_temporary() {
    let dir = std::env::temp_dir().join(format!("ic_atomic_{}", std::process::id()));
    let f = dir.join("a.bin");
    nvrtc::write_atomic(&f, b"one").unwrap();
    nvrtc::write_atomic(&f, b"two").unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"two");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compile_errors_are_errors_not_panics() {
    if !nvrtc_or_skip("compile_errors_are_errors_not_panics") {
        return;
    }
    let e = nvrtc::compile_source("this is not CUDA", 90, true).unwrap_err().to_string();
    assert!(e.contains("could not compile"), "{e}");
}

#[test]
fn without_a_driver_nothing_is_available_and_nothing_panics() {
    // This machine (and CI) has no NVIDIA driver; on a GPU machine this checks the opposite.
    let has_driver = std::path::Path::new("/proc/driver/nvidia/version").exists();
    assert_eq!(fused::available(), has_driver && nvrtc::nvrtc_available(), "{:?}", fused::unavailable_reason());
    if !has_driver {
        let why = fused::unavailable_reason().unwrap();
        assert!(why.contains("libcuda") || why.contains("driver"), "{why}");
        assert!(!fused::enabled());
        fused::set_enabled(true);
        assert!(!fused::enabled(), "the switch cannot enable what is not available");
        fused::set_enabled(false);
        let e = fused::warm_up(0).unwrap_err().to_string();
        assert!(e.contains("unavailable"), "{e}");
    }
}

#[test]
fn the_current_stream_comes_from_pytorch_or_as_an_error() {
    // The op takes PyTorch's current CUDA stream through c10's device-guard interface: on a GPU a
    // handle (the default stream is 0), without one an error, never an abort.
    let r = _core::aten::current_cuda_stream(0);
    if tch::Cuda::is_available() {
        r.unwrap();
    } else {
        let e = r.unwrap_err().to_string();
        assert!(e.contains("current CUDA stream"), "{e}");
    }
}
