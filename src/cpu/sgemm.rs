//! A float32 GEMM for the 1x1 convolution's forward on CPUs with AVX2 and FMA: `C = A @ B` on
//! row-major matrices, in register tiles of up to 6 rows x 16 columns (6 values of A broadcast, two
//! 8-wide vectors of a row of B, 12 accumulators), over tasks on libtorch's thread pool.
//!
//! Why: the 1x1's K is C_in, 64 at the first ResNet stage, where BLAS (MKL's `sgemm`, and oneDNN's
//! matmul alike) runs at 32-40 GMAC/s per core on this project's 2-core Zen 3 machine, against about
//! 48 for the 3x3 conv; these tiles reach about 43. Nothing is packed: A's values are broadcast
//! where they lie and B's rows are read as they lie, which suits a small K (A and a column panel of
//! B stay in L1) and only that: [`suits`] says when the 1x1 takes them.
//!
//! Each output is one chain of fused multiply-adds over k in ascending order from 0, so a result
//! does not depend on the tiling or on how the work is split between threads. It runs wherever the
//! CPU has AVX2 and FMA, whatever [`super::simd::set_enabled`] says: the 1x1 is not one of the
//! loops whose AVX2 and baseline copies give the same bits; elsewhere `gemm.rs` takes BLAS.
use super::simd;
use crate::aten::parallel_for;

/// Whether a 1x1 with K = `k` (its input channels per group) takes these tiles rather than BLAS:
/// AVX2 and FMA ([`simd::available`]), no AVX-512 (where BLAS has twice the vector width), and K at
/// most 64. At larger K, BLAS's packed, cache-blocked GEMM was the faster one here (1x1 stage, N=8,
/// 2 threads: 128@28 1.19 ms against 1.34, 512@7 1.21 against 1.48; at 64@56 channels_last
/// 1.35-1.57 against 1.29).
pub fn suits(k: usize) -> bool {
    simd::available() && !simd::avx512() && k <= 64
}

/// One product `C (m x n) = A (m x k) @ B (k x n)`, each matrix row-major with its own row
/// stride (`lda`, `ldb`, `ldc`, in elements).
#[derive(Debug, Clone, Copy)]
pub struct Product {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: *const f32,
    pub lda: usize,
    pub b: *const f32,
    pub ldb: usize,
    pub c: *mut f32,
    pub ldc: usize,
}

// SAFETY: the pointers are only dereferenced inside `run`, whose caller guarantees them valid and
// the C blocks of different tasks disjoint.
unsafe impl Send for Product {}
unsafe impl Sync for Product {}

/// Rows and columns of C per task.
const TASK_ROWS: usize = 96;
const TASK_COLS: usize = 1024;

/// Computes every product of `products` on libtorch's thread pool, each split into blocks of C
/// ([`TASK_ROWS`] x [`TASK_COLS`]) that run as separate tasks.
///
/// # Safety
/// [`simd::available`] must be true. For each product, `a`, `b` and `c` must point to matrices of the
/// given sizes and strides, A and B readable and not written meanwhile, C writable, and no two
/// products' C may overlap.
pub unsafe fn run(products: &[Product]) -> crate::error::Result<()> {
    let blocks = |p: &Product| p.m.div_ceil(TASK_ROWS) * p.n.div_ceil(TASK_COLS);
    let starts: Vec<usize> = products
        .iter()
        .scan(0, |acc, p| {
            let s = *acc;
            *acc += blocks(p);
            Some(s)
        })
        .collect();
    let total = products.iter().map(blocks).sum();
    parallel_for(total, 1, |lo, hi| {
        for t in lo..hi {
            let i = starts.partition_point(|&s| s <= t) - 1;
            let p = &products[i];
            let cols = p.n.div_ceil(TASK_COLS);
            let (rb, cb) = ((t - starts[i]) / cols, (t - starts[i]) % cols);
            let (r0, c0) = (rb * TASK_ROWS, cb * TASK_COLS);
            let block = Product {
                m: TASK_ROWS.min(p.m - r0),
                n: TASK_COLS.min(p.n - c0),
                a: p.a.add(r0 * p.lda),
                b: p.b.add(c0),
                c: p.c.add(r0 * p.ldc + c0),
                ..*p
            };
            // SAFETY: the caller checked the CPU (simd::available) and the matrices; this task's C block
            // is its own.
            gemm_fma(&block);
        }
    })
}

/// One product on the calling thread: column panels of 16, then 8, then 1; within each, row
/// tiles of 6, then 4, then 1.
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_fma(p: &Product) {
    let mut j = 0;
    while j + 16 <= p.n {
        rows::<16>(p, j);
        j += 16;
    }
    while j + 8 <= p.n {
        rows::<8>(p, j);
        j += 8;
    }
    while j < p.n {
        rows::<1>(p, j);
        j += 1;
    }
}

#[inline(always)]
unsafe fn rows<const NR: usize>(p: &Product, j: usize) {
    let mut i = 0;
    while i + 6 <= p.m {
        tile::<6, NR>(p, i, j);
        i += 6;
    }
    while i + 4 <= p.m {
        tile::<4, NR>(p, i, j);
        i += 4;
    }
    while i < p.m {
        tile::<1, NR>(p, i, j);
        i += 1;
    }
}

/// `C[i..i+MR][j..j+NR]` from A's rows `i..i+MR` and B's columns `j..j+NR`, in registers.
#[inline(always)]
unsafe fn tile<const MR: usize, const NR: usize>(p: &Product, i: usize, j: usize) {
    let mut acc = [[0.0f32; NR]; MR];
    let a = p.a.add(i * p.lda);
    let b = p.b.add(j);
    for kk in 0..p.k {
        let brow = std::slice::from_raw_parts(b.add(kk * p.ldb), NR);
        for (r, acc) in acc.iter_mut().enumerate() {
            let av = *a.add(r * p.lda + kk);
            for (t, &bv) in acc.iter_mut().zip(brow) {
                *t = av.mul_add(bv, *t);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        std::ptr::copy_nonoverlapping(acc.as_ptr(), p.c.add((i + r) * p.ldc + j), NR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) -> Product {
        Product { m, n, k, a: a.as_ptr(), lda: k, b: b.as_ptr(), ldb: n, c: c.as_mut_ptr(), ldc: n }
    }

    /// Against an f64 product, at sizes around every tile and task edge; and the same bits when
    /// one product is run as two halves of its rows.
    #[test]
    fn matches_a_float64_product_and_does_not_depend_on_the_split() {
        if !simd::available() {
            return;
        }
        for (m, n, k) in [(64, 784, 64), (1, 1, 1), (7, 23, 5), (13, 300, 33), (97, 257, 3), (6, 16, 128)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 877) as f32 / 53.0 - 8.0).collect();
            let mut c = vec![f32::NAN; m * n];
            unsafe { run(&[product(m, n, k, &a, &b, &mut c)]).unwrap() };
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|kk| a[i * k + kk] as f64 * b[kk * n + j] as f64).sum();
                    let scale: f64 = (0..k).map(|kk| (a[i * k + kk] as f64 * b[kk * n + j] as f64).abs()).sum();
                    let got = c[i * n + j] as f64;
                    assert!((got - want).abs() <= 1e-6 * scale + 1e-30, "({m},{n},{k}) at ({i},{j}): {got} vs {want}");
                }
            }
            let h = m / 2;
            let mut halves = vec![f32::NAN; m * n];
            let (top, bottom) = halves.split_at_mut(h * n);
            let lower = Product { m: m - h, a: a[h * k..].as_ptr(), ..product(m, n, k, &a, &b, bottom) };
            unsafe { run(&[product(h, n, k, &a, &b, top), lower]).unwrap() };
            assert!(c.iter().zip(&halves).all(|(x, y)| x.to_bits() == y.to_bits()), "({m},{n},{k})");
        }
    }
}
