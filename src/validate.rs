//! Argument checks of the IC convolution, run before libtorch or a kernel sees a tensor. Every
//! error names the argument (`x`, `weight`, `adjust_weight`, ...) and becomes a Python
//! `ValueError`, `TypeError` or `RuntimeError` in `lib.rs`.
//!
//! Imports only the leaves (`error.rs`, `geometry.rs`, `types.rs`, `dtype.rs`).
use crate::dtype::is_float;
use crate::error::{Error, Result};
use crate::geometry::{ConvGeometry, IcDims};
use crate::types::IcArgs;
use crate::{type_err, value_err};
use tch::{Device, Tensor};

/// `cpu`, `cuda:0`, ...: the device as PyTorch prints it.
pub fn dev_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// `t` has x's dtype and device.
pub fn check_same(name: &str, t: &Tensor, x: &Tensor) -> Result<()> {
    if t.kind() != x.kind() {
        return Err(type_err!("{name}: dtype {:?} does not match x's dtype {:?}", t.kind(), x.kind()));
    }
    if t.device() != x.device() {
        return Err(Error::Runtime(format!(
            "{name}: is on device {} but x is on {}",
            dev_name(t.device()),
            dev_name(x.device())
        )));
    }
    Ok(())
}

pub fn check_shape(name: &str, t: &Tensor, want: &[i64]) -> Result<()> {
    if t.size() != want {
        return Err(value_err!("{name}: expected shape {want:?}, got {:?}", t.size()));
    }
    Ok(())
}

/// Validates every argument of the IC convolution; returns the call's sizes.
pub fn check_inputs(
    x: &Tensor,
    weight: &Tensor,
    adjust_weight: &Tensor,
    adjust_bias: &Tensor,
    alpha: &Tensor,
    bias: Option<&Tensor>,
    g: &ConvGeometry,
) -> Result<IcDims> {
    check_args(&IcArgs { x, weight, adjust_weight, adjust_bias, alpha, bias }, g)
}

/// [`check_inputs`] on an [`IcArgs`].
pub fn check_args(a: &IcArgs, g: &ConvGeometry) -> Result<IcDims> {
    let IcArgs { x, weight, adjust_weight, adjust_bias, alpha, bias } = *a;
    g.validate()?;
    if x.dim() != 4 {
        return Err(value_err!("x: expected a 4-D (N, C, H, W) tensor, got shape {:?}", x.size()));
    }
    if !is_float(x.kind()) {
        return Err(type_err!("x: expected a floating-point tensor, got dtype {:?}", x.kind()));
    }
    if weight.dim() != 4 {
        return Err(value_err!(
            "weight: expected a 4-D (Cout, Cin/groups, kh, kw) tensor, got shape {:?}",
            weight.size()
        ));
    }
    check_same("weight", weight, x)?;
    check_same("adjust_weight", adjust_weight, x)?;
    check_same("adjust_bias", adjust_bias, x)?;
    if let Some(b) = bias {
        check_same("bias", b, x)?;
    }
    if !is_float(alpha.kind()) {
        return Err(type_err!("alpha: expected a floating-point tensor, got dtype {:?}", alpha.kind()));
    }
    if alpha.numel() != 1 {
        return Err(value_err!("alpha: expected a scalar (one element), got shape {:?}", alpha.size()));
    }
    if alpha.device() != x.device() && !(alpha.device() == Device::Cpu && alpha.dim() == 0) {
        return Err(Error::Runtime(format!(
            "alpha: is on device {} but x is on {}",
            dev_name(alpha.device()),
            dev_name(x.device())
        )));
    }
    let (xs, ws) = (x.size(), weight.size());
    let (n, cin, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    if h == 0 || w == 0 {
        // libtorch's convolutions refuse them too, less clearly
        return Err(value_err!("x: expected a non-empty image (H, W >= 1), got shape {xs:?}"));
    }
    let (cout, cin_g, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    if kh <= 0 || kw <= 0 || cout <= 0 || cin_g <= 0 {
        return Err(value_err!("weight: every dimension must be positive, got shape {ws:?}"));
    }
    if cin != cin_g * g.groups {
        return Err(value_err!(
            "x: has {cin} channels but weight {ws:?} with groups={} expects {}",
            g.groups,
            cin_g * g.groups
        ));
    }
    if cout % g.groups != 0 {
        return Err(value_err!("groups: out_channels {cout} is not divisible by groups={}", g.groups));
    }
    check_shape("adjust_weight", adjust_weight, &[cout, cin_g, 1, 1])?;
    check_shape("adjust_bias", adjust_bias, &[cout])?;
    if let Some(b) = bias {
        check_shape("bias", b, &[cout])?;
    }
    let (ho, wo) = output_size(g, h, w, kh, kw)?;
    Ok(IcDims { n, cin, cout, h, w, kh, kw, ho, wo })
}

/// The output size `(ho, wo)` of a `kh x kw` window over an `h x w` image with geometry `g`, or
/// the error naming `x` when the image is smaller than the dilated window.
pub fn output_size(g: &ConvGeometry, h: i64, w: i64, kh: i64, kw: i64) -> Result<(i64, i64)> {
    let (ho, wo) = (g.out_size(0, h, kh), g.out_size(1, w, kw));
    if ho < 1 || wo < 1 {
        return Err(value_err!(
            "x: spatial size ({h}, {w}) with padding {:?} is smaller than the dilated kernel ({}, {})",
            g.padding,
            g.dilation[0] as i128 * (kh as i128 - 1) + 1,
            g.dilation[1] as i128 * (kw as i128 - 1) + 1
        ));
    }
    Ok((ho, wo))
}

/// Validates the box sum's arguments; returns `(kh, kw, ho, wo)`.
pub fn check_boxsum(x: &Tensor, kernel_size: &[i64], g: &ConvGeometry) -> Result<[i64; 4]> {
    let [kh, kw] = match kernel_size {
        [k] => [*k, *k],
        [a, b] => [*a, *b],
        _ => return Err(value_err!("kernel_size: expected 1 or 2 integers, got {}", kernel_size.len())),
    };
    if kh <= 0 || kw <= 0 || kh > i32::MAX as i64 || kw > i32::MAX as i64 {
        return Err(value_err!("kernel_size: expected integers in [1, {}], got {kernel_size:?}", i32::MAX));
    }
    if x.dim() != 4 {
        return Err(value_err!("x: expected a 4-D (N, C, H, W) tensor, got shape {:?}", x.size()));
    }
    if !is_float(x.kind()) {
        return Err(type_err!(
            "x: expected a floating-point tensor (float16/bfloat16/float32/float64), got dtype {:?}",
            x.kind()
        ));
    }
    let s = x.size();
    if s[1] == 0 || s[2] == 0 || s[3] == 0 {
        return Err(value_err!("x: expected channels and a non-empty image (C, H, W >= 1), got shape {s:?}"));
    }
    let (ho, wo) = output_size(g, s[2], s[3], kh, kw)?;
    Ok([kh, kw, ho, wo])
}

/// The backward's own tensors: `grad` and `relu_z` are (N, Cout, Ho, Wo) with x's dtype and device.
pub fn check_backward(grad: &Tensor, relu_z: &Tensor, x: &Tensor, d: &IcDims) -> Result<()> {
    let want = d.output_shape();
    check_shape("grad", grad, &want)?;
    check_shape("relu_z", relu_z, &want)?;
    check_same("grad", grad, x)?;
    check_same("relu_z", relu_z, x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn boxsum_arguments_are_checked() {
        let g = ConvGeometry::default();
        let x = Tensor::zeros([1, 2, 5, 5], (Kind::Float, tch::Device::Cpu));
        assert_eq!(check_boxsum(&x, &[3], &g).unwrap(), [3, 3, 3, 3]);
        assert!(matches!(check_boxsum(&x, &[0, 3], &g), Err(Error::Value(m)) if m.starts_with("kernel_size")));
        assert!(
            matches!(check_boxsum(&x, &[6, 6], &g), Err(Error::Value(m)) if m.contains("smaller than the dilated kernel"))
        );
        let xi = Tensor::zeros([1, 2, 5, 5], (Kind::Int64, tch::Device::Cpu));
        assert!(matches!(check_boxsum(&xi, &[3], &g), Err(Error::Type(m)) if m.starts_with("x:")));
    }
}
