//! Python bindings of the fused CUDA kernels (`ic_networks._core.cuda_fused_*`): the switch, the
//! warm-up, a count of the op's fused steps, and the raw kernels for the GPU validation suite
//! (scripts/gpu_check.sh, tests/test_cuda_fused_gpu.py). The op itself takes the fused route
//! through the CUDA backend (`cuda/mod.rs`). `stream` is `torch.cuda.current_stream().cuda_stream`.
//! A binding module beside `lib.rs`, which registers it.
use crate::cuda::fused::{self, FusedGrads, RawStream};
use crate::geometry::{self, ConvGeometry};
use crate::to_py;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;

/// One or two non-negative integers as a pair ([`geometry::pair`]).
fn pair(name: &str, v: &[i64]) -> PyResult<[i64; 2]> {
    let p = geometry::pair(name, v).map_err(to_py)?;
    if p.iter().any(|&x| x < 0) {
        return Err(PyValueError::new_err(format!("{name}: expected non-negative integers, got {v:?}")));
    }
    Ok(p)
}

/// How many steps of the op (a forward, a collision backward, a P-path backward) ran on the
/// fused kernels in this process: tells a test or a benchmark that the route was taken.
#[pyfunction]
fn cuda_fused_calls() -> u64 {
    fused::calls()
}

/// `None` when libcuda (with a device) and NVRTC are present, else why not.
#[pyfunction]
fn cuda_fused_unavailable_reason() -> Option<String> {
    fused::unavailable_reason()
}

#[pyfunction]
fn cuda_fused_available() -> bool {
    fused::available()
}

/// The switch (`IC_NETWORKS_CUDA_KERNELS=1`, or `cuda_fused_set_enabled`) and availability.
#[pyfunction]
fn cuda_fused_enabled() -> bool {
    fused::enabled()
}

#[pyfunction]
fn cuda_fused_set_enabled(on: bool) {
    fused::set_enabled(on)
}

/// Compiles (or reads the disk cache) and loads the kernels on CUDA device `device`.
#[pyfunction]
fn cuda_fused_warm_up(py: Python<'_>, device: usize) -> PyResult<Bound<'_, PyDict>> {
    let w = py.allow_threads(move || fused::warm_up(device)).map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("compute_capability", w.cc)?;
    d.set_item("cubin", w.cubin)?;
    d.set_item("from_cache", w.from_cache)?;
    d.set_item("replaced", w.replaced)?;
    Ok(d)
}

/// The files the fused route uses: `{"libcuda": path, "nvrtc": path}`, each a full path, or None
/// where none loads (the candidates, in order, are in src/cuda/fused/dl.rs).
#[pyfunction]
fn cuda_fused_libraries(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let (cuda, nvrtc) = py.allow_threads(fused::libraries);
    let d = PyDict::new(py);
    d.set_item("libcuda", cuda)?;
    d.set_item("nvrtc", nvrtc)?;
    Ok(d)
}

/// Whether this core was built with the test hook `IC_NETWORKS_CUDA_EMULATION` (the cargo feature
/// `cuda-emulation` of development builds; release wheels leave it out).
#[pyfunction]
fn cuda_emulation_built() -> bool {
    fused::emulation::BUILT
}

/// Whether `IC_NETWORKS_CUDA_SYNC_CHECK=1` is in effect (synchronise and check after each launch).
#[pyfunction]
fn cuda_fused_sync_check() -> bool {
    fused::launch::sync_check()
}

type Fwd = Option<(PyTensor, Option<PyTensor>)>;

/// Stride-1 fused forward: `y` becomes `out` in place; returns `(out, relu_z)` or None.
#[pyfunction]
#[pyo3(signature = (y, q, shift, alpha, kernel_size, padding, dilation, keep_relu_z, stream))]
#[allow(clippy::too_many_arguments)]
fn cuda_fused_box_forward(
    py: Python<'_>,
    y: PyTensor,
    q: PyTensor,
    shift: PyTensor,
    alpha: PyTensor,
    kernel_size: Vec<i64>,
    padding: Vec<i64>,
    dilation: Vec<i64>,
    keep_relu_z: bool,
    stream: RawStream,
) -> PyResult<Fwd> {
    let (k, p, d) = (pair("kernel_size", &kernel_size)?, pair("padding", &padding)?, pair("dilation", &dilation)?);
    let r = py
        .allow_threads(move || fused::box_forward(&y.0, &q.0, &shift.0, &alpha.0, k, p, d, keep_relu_z, stream))
        .map_err(to_py)?;
    Ok(r.map(|(o, rz)| (PyTensor(o), rz.map(PyTensor))))
}

fn grads(g: Option<FusedGrads>) -> Bwd {
    g.map(|g| (g.gy.map(PyTensor), PyTensor(g.g), PyTensor(g.db1), PyTensor(g.db2), g.dalpha.map(PyTensor)))
}

type Bwd = Option<(Option<PyTensor>, PyTensor, PyTensor, PyTensor, Option<PyTensor>)>;

/// Stride-1 fused backward: `(gy, G, db1, db2, dalpha)` (sums in float32/float64; dalpha None
/// without `need_dalpha`) or None.
#[pyfunction]
#[pyo3(signature = (grad, relu_z, alpha, in_hw, kernel_size, padding, dilation, need_gy, stream, need_dalpha=true))]
#[allow(clippy::too_many_arguments)]
fn cuda_fused_box_backward(
    py: Python<'_>,
    grad: PyTensor,
    relu_z: PyTensor,
    alpha: PyTensor,
    in_hw: Vec<i64>,
    kernel_size: Vec<i64>,
    padding: Vec<i64>,
    dilation: Vec<i64>,
    need_gy: bool,
    stream: RawStream,
    need_dalpha: bool,
) -> PyResult<Bwd> {
    let (hw, k, p, d) = (
        pair("in_hw", &in_hw)?,
        pair("kernel_size", &kernel_size)?,
        pair("padding", &padding)?,
        pair("dilation", &dilation)?,
    );
    let r = py
        .allow_threads(move || {
            fused::box_backward(&grad.0, &relu_z.0, &alpha.0, hw, k, p, d, need_gy, need_dalpha, stream)
        })
        .map_err(to_py)?;
    Ok(grads(r))
}

#[pyfunction]
fn cuda_fused_collision_forward(
    py: Python<'_>,
    y: PyTensor,
    p: PyTensor,
    shift: PyTensor,
    alpha: PyTensor,
    keep_relu_z: bool,
    stream: RawStream,
) -> PyResult<Fwd> {
    let r = py
        .allow_threads(move || fused::collision_forward(&y.0, &p.0, &shift.0, &alpha.0, keep_relu_z, stream))
        .map_err(to_py)?;
    Ok(r.map(|(o, rz)| (PyTensor(o), rz.map(PyTensor))))
}

#[pyfunction]
#[pyo3(signature = (grad, relu_z, alpha, need_gy, stream, need_dalpha=true))]
fn cuda_fused_collision_backward(
    py: Python<'_>,
    grad: PyTensor,
    relu_z: PyTensor,
    alpha: PyTensor,
    need_gy: bool,
    stream: RawStream,
    need_dalpha: bool,
) -> PyResult<Bwd> {
    let r = py
        .allow_threads(move || fused::collision_backward(&grad.0, &relu_z.0, &alpha.0, need_gy, need_dalpha, stream))
        .map_err(to_py)?;
    Ok(grads(r))
}

/// The box (kernel size) and its geometry (groups unused).
fn box2(kernel_size: &[i64], stride: &[i64], padding: &[i64], dilation: &[i64]) -> PyResult<([i64; 2], ConvGeometry)> {
    let k = pair("kernel_size", kernel_size)?;
    let g = ConvGeometry {
        stride: pair("stride", stride)?,
        padding: pair("padding", padding)?,
        dilation: pair("dilation", dilation)?,
        groups: 1,
    };
    if k.iter().chain(&g.stride).chain(&g.dilation).any(|&v| v < 1) {
        return Err(PyValueError::new_err("kernel_size, stride and dilation must be positive"));
    }
    Ok((k, g))
}

#[pyfunction]
fn cuda_fused_boxsum(
    py: Python<'_>,
    x: PyTensor,
    kernel_size: Vec<i64>,
    stride: Vec<i64>,
    padding: Vec<i64>,
    dilation: Vec<i64>,
    stream: RawStream,
) -> PyResult<Option<PyTensor>> {
    let (k, g) = box2(&kernel_size, &stride, &padding, &dilation)?;
    Ok(py.allow_threads(move || fused::boxsum(&x.0, k, &g, stream)).map_err(to_py)?.map(PyTensor))
}

/// `out -= boxsum^T(ds)` (mode "sub", the one the layer uses); False if not applicable.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_fused_boxsum_t_(
    py: Python<'_>,
    out: PyTensor,
    ds: PyTensor,
    kernel_size: Vec<i64>,
    stride: Vec<i64>,
    padding: Vec<i64>,
    dilation: Vec<i64>,
    mode: &str,
    stream: RawStream,
) -> PyResult<bool> {
    let (k, g) = box2(&kernel_size, &stride, &padding, &dilation)?;
    if mode != "sub" {
        return Err(PyValueError::new_err(format!("mode: expected 'sub', got {mode:?}")));
    }
    py.allow_threads(move || fused::boxsum_t_sub_(&out.0, &ds.0, k, &g, stream)).map_err(to_py)
}

/// Adds the `cuda_fused_*` functions to the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cuda_fused_unavailable_reason, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_fused_available, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_fused_enabled, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_fused_set_enabled, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_fused_warm_up, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_fused_box_forward, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_fused_box_backward, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_fused_collision_forward, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_fused_collision_backward, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_fused_boxsum, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_fused_boxsum_t_, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_fused_calls, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_fused_libraries, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_fused_sync_check, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_emulation_built, m)?)?;
    Ok(())
}
