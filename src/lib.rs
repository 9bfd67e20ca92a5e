//! The ic_networks core as a Python extension module (`ic_networks._core`).
//!
//! Importing it registers the `ic_networks` ops with libtorch's dispatcher (`ffi::register_ops`,
//! the C++ in `src/cpp/`, whose kernels are the Rust functions of `ffi.rs`); Python calls them as
//! `torch.ops.ic_networks.*`. The module itself only adds the argument checks that the fake (meta)
//! kernels share with the real ones, the IC neuron (numpy) and a switch for the CPU kernels.
pub mod aten;
pub mod backend;
pub mod boxsum;
pub mod c_abi;
pub mod cpu;
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod ffi;
pub mod geometry;
pub mod ic_conv;
pub mod layout;
pub mod libtorch;
pub mod neuron;
mod py_cuda_fused;
pub mod types;
pub mod validate;
pub mod wld;

use error::Error;
use ndarray::{Array1, Ix1, Ix2};
use numpy::{IntoPyArray, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;

pub(crate) fn to_py(e: Error) -> PyErr {
    match e {
        Error::Value(m) => PyValueError::new_err(m),
        Error::Type(m) => PyTypeError::new_err(m),
        Error::Runtime(m) => PyRuntimeError::new_err(m),
    }
}

/// Argument check of the IC convolution, for the fake (meta) kernels in `functional.py`: the same
/// validator as the real kernels (`ic_conv::check_inputs`), on stand-in tensors with the fake
/// tensors' shapes and dtypes. Returns `(n, cout, ho, wo)`.
#[pyfunction]
#[pyo3(signature = (x, weight, adjust_weight, adjust_bias, alpha, bias, stride, padding, dilation, groups))]
#[allow(clippy::too_many_arguments)]
fn check_ic_conv2d(
    x: PyTensor,
    weight: PyTensor,
    adjust_weight: PyTensor,
    adjust_bias: PyTensor,
    alpha: PyTensor,
    bias: Option<PyTensor>,
    stride: Vec<i64>,
    padding: Vec<i64>,
    dilation: Vec<i64>,
    groups: i64,
) -> PyResult<(i64, i64, i64, i64)> {
    let g = ic_conv::ConvGeometry::from_lists(&stride, &padding, &dilation, groups).map_err(to_py)?;
    let d = ic_conv::check_inputs(
        &x.0,
        &weight.0,
        &adjust_weight.0,
        &adjust_bias.0,
        &alpha.0,
        bias.as_ref().map(|b| &b.0),
        &g,
    )
    .map_err(to_py)?;
    Ok((d.n, d.cout, d.ho, d.wo))
}

/// Argument check of the box sum (see [`check_ic_conv2d`]). Returns `(kh, kw, ho, wo)`.
#[pyfunction]
#[pyo3(signature = (x, kernel_size, stride, padding, dilation))]
fn check_boxsum(
    x: PyTensor,
    kernel_size: Vec<i64>,
    stride: Vec<i64>,
    padding: Vec<i64>,
    dilation: Vec<i64>,
) -> PyResult<(i64, i64, i64, i64)> {
    let g = ic_conv::ConvGeometry::from_lists(&stride, &padding, &dilation, 1).map_err(to_py)?;
    let [kh, kw, ho, wo] = validate::check_boxsum(&x.0, &kernel_size, &g).map_err(to_py)?;
    Ok((kh, kw, ho, wo))
}

/// Argument check of the WLD loss (shapes, dtypes, hyper-parameters; see [`check_ic_conv2d`]).
#[pyfunction]
#[pyo3(signature = (student_logits, teacher_logits, target, lam, e, tau))]
fn check_wld(
    student_logits: PyTensor,
    teacher_logits: PyTensor,
    target: PyTensor,
    lam: f64,
    e: f64,
    tau: f64,
) -> PyResult<()> {
    wld::WldConfig { lam, e, tau }.validate().map_err(to_py)?;
    wld::check_args(&student_logits.0, &teacher_logits.0, &target.0).map_err(to_py)?;
    Ok(())
}

/// A float32 or float64 numpy array (ints and others are rejected by the Python wrapper).
#[derive(FromPyObject)]
enum FloatArray<'py> {
    F64(PyReadonlyArrayDyn<'py, f64>),
    F32(PyReadonlyArrayDyn<'py, f32>),
}

impl FloatArray<'_> {
    fn is_f32(&self) -> bool {
        matches!(self, FloatArray::F32(_))
    }
    /// The data as f64: a view for float64 input (zero copy), a converted copy for float32.
    fn with_f64<R>(&self, f: impl FnOnce(ndarray::ArrayViewD<'_, f64>) -> PyResult<R>) -> PyResult<R> {
        match self {
            FloatArray::F64(a) => f(a.as_array()),
            FloatArray::F32(a) => {
                let owned = a.as_array().mapv(|v| v as f64);
                f(owned.view())
            }
        }
    }
    fn ndim(&self) -> usize {
        match self {
            FloatArray::F64(a) => a.ndim(),
            FloatArray::F32(a) => a.ndim(),
        }
    }
}

fn neuron_params(w_prime: Option<f64>, b1: Option<f64>, b2: f64, activation: &str) -> PyResult<neuron::Params> {
    let act = neuron::Activation::parse(activation).map_err(to_py)?;
    Ok(match (w_prime, b1) {
        (Some(wp), Some(b1)) => neuron::Params::ic(wp, b1, b2, act),
        (None, None) => neuron::Params::plain(b2, act),
        _ => return Err(PyValueError::new_err("w_prime and b1: give both (IC neuron) or neither (plain neuron)")),
    })
}

fn as2<'a>(a: ndarray::ArrayViewD<'a, f64>, name: &str) -> PyResult<ndarray::ArrayView2<'a, f64>> {
    a.into_dimensionality::<Ix2>().map_err(|_| PyValueError::new_err(format!("{name}: expected a 2-D array")))
}

fn as1<'a>(a: ndarray::ArrayViewD<'a, f64>, name: &str) -> PyResult<ndarray::ArrayView1<'a, f64>> {
    a.into_dimensionality::<Ix1>().map_err(|_| PyValueError::new_err(format!("{name}: expected a 1-D array")))
}

/// IC neuron forward on x (n, d) -> y (n), in x's dtype.
#[pyfunction]
#[pyo3(signature = (x, w, w_prime, b1, b2, activation))]
fn neuron_forward(
    py: Python<'_>,
    x: FloatArray<'_>,
    w: FloatArray<'_>,
    w_prime: Option<f64>,
    b1: Option<f64>,
    b2: f64,
    activation: &str,
) -> PyResult<PyObject> {
    let p = neuron_params(w_prime, b1, b2, activation)?;
    let f32_out = x.is_f32();
    if x.ndim() != 2 || w.ndim() != 1 {
        return Err(PyValueError::new_err("x: expected (n, d) and w: expected (d,)"));
    }
    let y: Array1<f64> =
        x.with_f64(|xv| w.with_f64(|wv| neuron::forward(as2(xv.view(), "x")?, as1(wv, "w")?, &p).map_err(to_py)))?;
    Ok(if f32_out {
        y.mapv(|v| v as f32).into_pyarray(py).into_any().unbind()
    } else {
        y.into_pyarray(py).into_any().unbind()
    })
}

/// Gradients of sum_i grad_output_i * y_i: a dict with x, w, w_prime, b1, b2.
#[pyfunction]
#[pyo3(signature = (x, w, w_prime, b1, b2, activation, grad_output))]
#[allow(clippy::too_many_arguments)]
fn neuron_grad<'py>(
    py: Python<'py>,
    x: FloatArray<'py>,
    w: FloatArray<'py>,
    w_prime: Option<f64>,
    b1: Option<f64>,
    b2: f64,
    activation: &str,
    grad_output: FloatArray<'py>,
) -> PyResult<Bound<'py, PyDict>> {
    let p = neuron_params(w_prime, b1, b2, activation)?;
    let f32_out = x.is_f32();
    let g = x.with_f64(|xv| {
        w.with_f64(|wv| {
            grad_output.with_f64(|gv| {
                neuron::grad(as2(xv.view(), "x")?, as1(wv, "w")?, &p, as1(gv, "grad_output")?).map_err(to_py)
            })
        })
    })?;
    let d = PyDict::new(py);
    if f32_out {
        d.set_item("x", g.x.mapv(|v| v as f32).into_pyarray(py))?;
        d.set_item("w", g.w.mapv(|v| v as f32).into_pyarray(py))?;
    } else {
        d.set_item("x", g.x.into_pyarray(py))?;
        d.set_item("w", g.w.into_pyarray(py))?;
    }
    d.set_item("w_prime", g.w_prime)?;
    d.set_item("b1", g.b1)?;
    d.set_item("b2", g.b2)?;
    Ok(d)
}

/// Linear pieces of a 2-D neuron on a grid: `(count, labels)`.
#[pyfunction]
#[pyo3(signature = (w, w_prime, b1, b2, activation, bounds, resolution))]
#[allow(clippy::too_many_arguments)]
fn neuron_regions(
    py: Python<'_>,
    w: FloatArray<'_>,
    w_prime: Option<f64>,
    b1: Option<f64>,
    b2: f64,
    activation: &str,
    bounds: [f64; 4],
    resolution: usize,
) -> PyResult<(usize, PyObject)> {
    let p = neuron_params(w_prime, b1, b2, activation)?;
    let (n, labels) = w.with_f64(|wv| neuron::regions(as1(wv, "w")?, &p, bounds, resolution).map_err(to_py))?;
    Ok((n, labels.into_pyarray(py).into_any().unbind()))
}

/// Enables or disables the Rust CPU kernels (box sum, fused collision); returns the old setting.
/// With them off, CPU tensors take the libtorch path that CUDA tensors take.
#[pyfunction]
fn set_cpu_kernels(enabled: bool) -> bool {
    cpu::set_enabled(enabled)
}

/// Turns the CPU kernels' AVX2 copies on or off (off: the x86-64 baseline code); returns the old
/// setting. The results are the same bits either way; tests use it to check that.
#[pyfunction]
fn set_cpu_simd(enabled: bool) -> bool {
    cpu::simd::set_enabled(enabled)
}

/// Whether this CPU has what the kernels' AVX2 copies need (AVX2 and FMA).
#[pyfunction]
fn cpu_simd_available() -> bool {
    cpu::simd::available()
}

/// Whether this CPU has matrix instructions for bfloat16 (`bf16 = True`) or float16 that libtorch
/// uses; without them half-precision calls run on the CPU kernels in float32 (`cpu/widened.rs`).
#[pyfunction]
#[pyo3(signature = (bf16 = true))]
fn cpu_native_half(bf16: bool) -> bool {
    cpu::widened::native_matmul(if bf16 { tch::Kind::BFloat16 } else { tch::Kind::Half })
}

/// Bytes the CPU kernels' scratch pool holds between calls (`cpu/workspace.rs`).
#[pyfunction]
fn cpu_workspace_bytes() -> usize {
    cpu::workspace::held_bytes()
}

/// Frees the CPU scratch pool's free buffers; returns the bytes still held by running calls.
#[pyfunction]
fn release_cpu_workspace() -> usize {
    cpu::workspace::release()
}

/// Sets the CPU scratch pool's limit in bytes (0 keeps nothing between calls); returns the old one.
#[pyfunction]
fn set_cpu_workspace_limit(bytes: usize) -> usize {
    cpu::workspace::set_limit(bytes)
}

/// How often each backend declined a call so far, as `{"backend: reason": count}` (the reasons
/// `ic_conv::choose` and the CUDA backend give; `IC_NETWORKS_LOG=debug` also logs each one).
#[pyfunction]
fn backend_declines() -> std::collections::BTreeMap<String, u64> {
    backend::declines().into_iter().map(|(b, r, n)| (format!("{b}: {r}"), n)).collect()
}

/// The torch version this extension was compiled against (build.rs). Stored with a marker so that
/// python/ic_networks/_torch_check.py can read it from the file before loading the library.
#[pyfunction]
fn built_torch_version() -> &'static str {
    const STAMP: &str = concat!("ic-networks-built-against-torch=", env!("IC_NETWORKS_BUILT_TORCH_VERSION"), "\0");
    &STAMP["ic-networks-built-against-torch=".len()..STAMP.len() - 1]
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The ops themselves (torch.ops.ic_networks.*) are registered with libtorch's dispatcher here.
    ffi::register_ops().map_err(to_py)?;
    m.add_function(wrap_pyfunction!(check_ic_conv2d, m)?)?;
    m.add_function(wrap_pyfunction!(check_boxsum, m)?)?;
    m.add_function(wrap_pyfunction!(check_wld, m)?)?;
    m.add_function(wrap_pyfunction!(neuron_forward, m)?)?;
    m.add_function(wrap_pyfunction!(neuron_grad, m)?)?;
    m.add_function(wrap_pyfunction!(neuron_regions, m)?)?;
    m.add_function(wrap_pyfunction!(set_cpu_kernels, m)?)?;
    m.add_function(wrap_pyfunction!(backend_declines, m)?)?;
    m.add_function(wrap_pyfunction!(set_cpu_simd, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_simd_available, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_native_half, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_workspace_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(release_cpu_workspace, m)?)?;
    m.add_function(wrap_pyfunction!(set_cpu_workspace_limit, m)?)?;
    py_cuda_fused::register(m)?;
    m.add_function(wrap_pyfunction!(built_torch_version, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
