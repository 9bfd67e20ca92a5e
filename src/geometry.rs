//! Geometry of the IC convolution: [`ConvGeometry`] (stride, padding, dilation, groups), output
//! sizes, and [`IcDims`], the sizes of one call. A leaf: it imports nothing of the crate but
//! `error.rs`.
//!
//! Output size of one spatial dim, input `n`, kernel `k`: `(n + 2p - d(k-1) - 1) / s + 1`.
use crate::error::Result;
use crate::value_err;

/// Geometry of the main convolution; the box sum shares stride, padding and dilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub stride: [i64; 2],
    pub padding: [i64; 2],
    pub dilation: [i64; 2],
    pub groups: i64,
}

impl Default for ConvGeometry {
    fn default() -> Self {
        Self { stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1 }
    }
}

/// One integer for both dims, or one per dim (the Python API's `int | tuple[int, int]`).
pub fn pair(name: &str, v: &[i64]) -> Result<[i64; 2]> {
    match v {
        [a] => Ok([*a, *a]),
        [a, b] => Ok([*a, *b]),
        _ => Err(value_err!("{name}: expected 1 or 2 integers, got {}", v.len())),
    }
}

impl ConvGeometry {
    /// Builds and validates a geometry from Python-style lists (one value is used for both dims).
    pub fn from_lists(stride: &[i64], padding: &[i64], dilation: &[i64], groups: i64) -> Result<Self> {
        let g = Self {
            stride: pair("stride", stride)?,
            padding: pair("padding", padding)?,
            dilation: pair("dilation", dilation)?,
            groups,
        };
        g.validate()?;
        Ok(g)
    }

    /// The 1x1 convolution with `groups` groups (stride 1, no padding, no dilation).
    pub fn pointwise(groups: i64) -> Self {
        Self { groups, ..Self::default() }
    }

    /// Whether the stride is 1 in both dims (the box sum and a 1x1 conv then commute).
    pub fn unit_stride(&self) -> bool {
        self.stride == [1, 1]
    }

    pub fn validate(&self) -> Result<()> {
        // Bounds keep every size computation far from i64 overflow (and match libtorch's int32 limits).
        const MAX: i64 = i32::MAX as i64;
        let big = self.stride.iter().chain(&self.padding).chain(&self.dilation).chain([&self.groups]).any(|&v| v > MAX);
        if big {
            return Err(value_err!(
                "stride, padding, dilation and groups must be at most {MAX}, got stride={:?}, padding={:?}, dilation={:?}, groups={}",
                self.stride,
                self.padding,
                self.dilation,
                self.groups
            ));
        }
        if self.stride.iter().any(|&s| s <= 0) {
            return Err(value_err!("stride: expected positive integers, got {:?}", self.stride));
        }
        if self.padding.iter().any(|&p| p < 0) {
            return Err(value_err!("padding: expected non-negative integers, got {:?}", self.padding));
        }
        if self.dilation.iter().any(|&d| d <= 0) {
            return Err(value_err!("dilation: expected positive integers, got {:?}", self.dilation));
        }
        if self.groups <= 0 {
            return Err(value_err!("groups: expected a positive integer, got {}", self.groups));
        }
        Ok(())
    }

    /// Output size of one spatial dim for input size `n` and kernel size `k`.
    pub fn out_size(&self, dim: usize, n: i64, k: i64) -> i64 {
        // i128: no overflow for any i64 sizes (validate() bounds the geometry, not the tensor).
        let (n, k) = (n as i128, k as i128);
        let (p, d, s) = (self.padding[dim] as i128, self.dilation[dim] as i128, self.stride[dim] as i128);
        let o = (n + 2 * p - d * (k - 1) - 1).div_euclid(s) + 1;
        o.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }
}

/// Sizes of one IC convolution call: `x` (n, cin, h, w), `weight` (cout, cin/g, kh, kw), output
/// (n, cout, ho, wo). Built by the argument checks (`validate.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcDims {
    pub n: i64,
    pub cin: i64,
    pub cout: i64,
    pub h: i64,
    pub w: i64,
    pub kh: i64,
    pub kw: i64,
    pub ho: i64,
    pub wo: i64,
}

impl IcDims {
    /// Shape of `x`, and of every gradient on x's grid: (N, Cin, H, W).
    pub fn input_shape(&self) -> [i64; 4] {
        [self.n, self.cin, self.h, self.w]
    }
    /// Shape of `Q = conv1x1(x, W')` and of `G = boxsum^T(gz)`: (N, Cout, H, W).
    pub fn input_grid_out(&self) -> [i64; 4] {
        [self.n, self.cout, self.h, self.w]
    }
    /// Shape of the output, `relu_z` and the output gradient: (N, Cout, Ho, Wo).
    pub fn output_shape(&self) -> [i64; 4] {
        [self.n, self.cout, self.ho, self.wo]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes() {
        let g = ConvGeometry { stride: [2, 1], padding: [1, 0], dilation: [1, 2], groups: 1 };
        assert_eq!(g.out_size(0, 9, 3), 5); // (9 + 2 - 2 - 1) / 2 + 1
        assert_eq!(g.out_size(1, 8, 3), 4); // (8 - 4 - 1) / 1 + 1
        assert_eq!(ConvGeometry::default().out_size(0, 2, 3), 0);
        assert_eq!(ConvGeometry::pointwise(4), ConvGeometry { groups: 4, ..Default::default() });
    }

    #[test]
    fn lists_are_checked() {
        assert_eq!(ConvGeometry::from_lists(&[2], &[1, 0], &[1], 1).unwrap().stride, [2, 2]);
        for (s, p, d, g, name) in [
            (&[0][..], &[0][..], &[1][..], 1, "stride"),
            (&[1], &[-1], &[1], 1, "padding"),
            (&[1], &[0], &[0], 1, "dilation"),
            (&[1], &[0], &[1], 0, "groups"),
            (&[1, 1, 1], &[0], &[1], 1, "stride"),
        ] {
            let e = ConvGeometry::from_lists(s, p, d, g).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
    }
}
