//! The fused kernels' parameter structs, `#[repr(C)]` mirrors of the ones `collision.cu` declares
//! (a test below checks every field's offset against the kernel source), and the launch plan:
//! tiles, grid, threads and shared memory per call, bounded so that the kernels' int32 indexing and
//! the hardware's grid limits hold.

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IcStrides {
    pub n: i64,
    pub c: i64,
    pub h: i64,
    pub w: i64,
}

impl IcStrides {
    pub fn of(stride: &[i64]) -> Self {
        Self { n: stride[0], c: stride[1], h: stride[2], w: stride[3] }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IcBoxParams {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub ho: i32,
    pub wo: i32,
    pub kh: i32,
    pub kw: i32,
    pub ph: i32,
    pub pw: i32,
    pub dh: i32,
    pub dw: i32,
    pub tc: i32,
    pub th: i32,
    pub tw: i32,
    pub tiles_c: i32,
    pub tiles_h: i32,
    pub tiles_w: i32,
    pub cl: i32,
    pub s_box: IcStrides,
    pub s_a: IcStrides,
    pub s_b: IcStrides,
    pub s_r: IcStrides,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IcBoxsumParams {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub ho: i32,
    pub wo: i32,
    pub kh: i32,
    pub kw: i32,
    pub sh: i32,
    pub sw: i32,
    pub ph: i32,
    pub pw: i32,
    pub dh: i32,
    pub dw: i32,
    pub mode: i32,
    pub cl: i32,
    pub s_in: IcStrides,
    pub s_out: IcStrides,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IcReduceParams {
    pub n: i32,
    pub c: i32,
    pub tc: i32,
    pub tiles_c: i32,
    pub tiles_sp: i32,
    /// 1: also sum d alpha (per channel); 0: alpha needs no gradient.
    pub dalpha: i32,
}

/// Threads per block of the flat kernels (box sums, reduce), and the most the box kernels use.
pub const THREADS: u32 = 256;
/// Dynamic shared memory the plan may use without an opt-in.
pub const SMEM_LIMIT: usize = 48 * 1024;

fn pow2ceil(v: i64) -> i64 {
    let v = v.max(1) as u64;
    v.next_power_of_two() as i64
}

/// Default tile (channels, rows, cols) for `rows x cols` of work: channels_last 8 channels x 8 x 16
/// (fewer channels when C is small; channel-fastest threads, coalesced on NHWC), NCHW one channel x
/// up to 512 pixels shaped after the image. Mirrored in tests/cuda_emu/host.py (`plan_tile`).
pub fn plan_tile(c: i64, rows: i64, cols: i64, cl: bool) -> (i64, i64, i64) {
    if cl {
        (pow2ceil(c).min(8), pow2ceil(rows).min(8), pow2ceil(cols).min(16))
    } else {
        let tw = pow2ceil(cols).clamp(8, 32);
        let th = (512 / tw).max(1).min(pow2ceil(rows));
        (1, th, tw)
    }
}

/// Threads per block of the box kernels for a tile (TC, TH, TW), all powers of two: about four
/// outputs per thread (the per-thread set-up is paid once for them), at least one row of the
/// tile's channels x columns (the kernels' thread layout) and 64 threads (two warps, and blocks
/// small enough for small images: 64 threads for an 8 x 8 tile at 7 x 7), at most [`THREADS`].
/// Mirrored in tests/cuda_emu/host.py and tests/cuda_emu/ptx_stats.py.
pub fn threads_for(tc: i64, th: i64, tw: i64) -> u32 {
    (pow2ceil(tc * th * tw) / 4).max(tc * tw).max(64).min(THREADS as i64) as u32
}

/// Whether every element offset `c * s.c + h * s.h + w * s.w` inside one image of a tensor of
/// `size`, `stride`, with indices up to `extra` past its size (the kernels' halo and tile
/// overhang), fits the kernels' 32-bit in-image offsets.
pub fn fits_i32(size: &[i64], stride: &[i64], extra: i64) -> bool {
    let span: i128 = (1..4).map(|d| stride[d].unsigned_abs() as i128 * (size[d] + extra) as i128).sum();
    span < i32::MAX as i128 && (1..4).all(|d| stride[d].unsigned_abs() < i32::MAX as u64)
}

/// The box kernels' plan: params, shared-memory bytes and threads per block, shrinking the tile
/// until the halo fits in [`SMEM_LIMIT`]; `None` if even a 1 x 1 tile does not (huge dilated
/// boxes: libtorch path).
#[allow(clippy::too_many_arguments)]
pub fn plan_box(
    size_out: [i64; 4],
    size_in_hw: [i64; 2],
    k: [i64; 2],
    pad: [i64; 2],
    dil: [i64; 2],
    cl: bool,
    bwd: bool,
    acc_bytes: usize,
) -> Option<(IcBoxParams, usize, u32)> {
    let [n, c, ho, wo] = size_out;
    let [h, w] = size_in_hw;
    let (rows, cols) = if bwd { (ho.max(h + pad[0]), wo.max(w + pad[1])) } else { (ho, wo) };
    let (tc, mut th, mut tw) = plan_tile(c, rows, cols, cl);
    let (eh, ew) = (dil[0] * (k[0] - 1), dil[1] * (k[1] - 1));
    let red = if bwd { 3 * THREADS as usize } else { 0 }; // the block reduction's warp sums fit in it
    let bytes = |th: i64, tw: i64| ((tc * (th + eh) * (tw + ew)) as usize + red) * acc_bytes;
    while bytes(th, tw) > SMEM_LIMIT {
        if th >= tw && th > 1 {
            th /= 2;
        } else if tw > 1 {
            tw /= 2;
        } else {
            return None;
        }
    }
    let fits = |v: i64| v >= 0 && v <= i32::MAX as i64;
    let all = [n, c, h, w, ho, wo, k[0], k[1], pad[0], pad[1], dil[0], dil[1], rows, cols];
    if !all.iter().all(|&v| fits(v)) {
        return None;
    }
    let p = IcBoxParams {
        n: n as i32,
        c: c as i32,
        h: h as i32,
        w: w as i32,
        ho: ho as i32,
        wo: wo as i32,
        kh: k[0] as i32,
        kw: k[1] as i32,
        ph: pad[0] as i32,
        pw: pad[1] as i32,
        dh: dil[0] as i32,
        dw: dil[1] as i32,
        tc: tc as i32,
        th: th as i32,
        tw: tw as i32,
        tiles_c: ((c + tc - 1) / tc) as i32,
        tiles_h: ((rows + th - 1) / th) as i32,
        tiles_w: ((cols + tw - 1) / tw) as i32,
        cl: cl as i32,
        ..Default::default()
    };
    // grid.y (channel tiles) and grid.z (batch) are limited to 65535 by the hardware
    if p.tiles_c > 65535 || p.n > 65535 || (p.tiles_h as i64) * (p.tiles_w as i64) > i32::MAX as i64 {
        return None;
    }
    Some((p, bytes(th, tw), threads_for(tc, th, tw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_fits_and_covers() {
        for &(k, d) in &[(1, 1), (3, 1), (5, 2), (7, 3)] {
            for &cl in &[false, true] {
                for &bwd in &[false, true] {
                    let (p, smem, threads) =
                        plan_box([4, 64, 56, 56], [56, 56], [k, k], [d * (k - 1) / 2; 2], [d, d], cl, bwd, 4).unwrap();
                    assert!(smem <= SMEM_LIMIT);
                    // the kernels' thread layout: powers of two, a row of channels x columns per pass
                    assert!(threads.is_power_of_two() && threads % 32 == 0 && threads <= THREADS);
                    assert!(
                        p.tc * p.tw <= threads as i32
                            && (p.tc as u32).is_power_of_two()
                            && (p.tw as u32).is_power_of_two()
                    );
                    assert!(p.tiles_h * p.th >= 56 && p.tiles_w * p.tw >= 56 && p.tiles_c * p.tc >= 64);
                    if cl {
                        assert_eq!(THREADS as i32 % p.tc, 0);
                    } else {
                        assert_eq!(p.tc, 1);
                    }
                }
            }
        }
        // a box whose halo cannot fit: no plan (the caller keeps the libtorch path)
        assert!(plan_box([1, 8, 4, 4], [4000, 4000], [3, 3], [0, 0], [3000, 3000], false, false, 4).is_none());
    }

    /// `(field, offset)` of a C struct of collision.cu, by C's natural-alignment rules (its fields
    /// are `int`, `ic_i64` and `IcStrides`), and the struct's size.
    fn c_layout(name: &str) -> (Vec<(String, usize)>, usize) {
        let src = super::super::nvrtc::SOURCE;
        let start = src.find(&format!("struct {name} {{")).unwrap_or_else(|| panic!("no struct {name}"));
        let body = &src[start..][..src[start..].find("};").unwrap()];
        let (mut fields, mut off, mut align) = (Vec::new(), 0usize, 1usize);
        for line in body.lines().skip(1) {
            let decl = line.split("//").next().unwrap().trim().trim_end_matches(';');
            let Some((ty, names)) = decl.split_once(' ') else { continue };
            let (size, al) = match ty {
                "int" => (4, 4),
                "ic_i64" => (8, 8),
                "IcStrides" => (32, 8),
                other => panic!("{name}: unexpected field type {other}"),
            };
            align = align.max(al);
            for f in names.split(',').map(str::trim) {
                off = off.next_multiple_of(al);
                fields.push((f.to_lowercase(), off));
                off += size;
            }
        }
        (fields, off.next_multiple_of(align))
    }

    macro_rules! rust_layout {
        ($t:ty; $($f:ident),*) => {
            (vec![$((stringify!($f).to_string(), std::mem::offset_of!($t, $f))),*], std::mem::size_of::<$t>())
        };
    }

    #[test]
    fn every_field_sits_where_the_kernel_reads_it() {
        assert_eq!(rust_layout!(IcStrides; n, c, h, w), c_layout("IcStrides"));
        assert_eq!(
            rust_layout!(IcBoxParams; n, c, h, w, ho, wo, kh, kw, ph, pw, dh, dw, tc, th, tw, tiles_c, tiles_h,
                tiles_w, cl, s_box, s_a, s_b, s_r),
            c_layout("IcBoxParams")
        );
        assert_eq!(
            rust_layout!(IcBoxsumParams; n, c, h, w, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, mode, cl, s_in, s_out),
            c_layout("IcBoxsumParams")
        );
        assert_eq!(rust_layout!(IcReduceParams; n, c, tc, tiles_c, tiles_sp, dalpha), c_layout("IcReduceParams"));
    }

    #[test]
    fn repr_c_layout_matches_the_kernel() {
        // 19 ints, 4 bytes of padding, 4 x 32-byte stride blocks (the C struct, natural alignment)
        assert_eq!(std::mem::size_of::<IcBoxParams>(), 80 + 4 * 32);
        assert_eq!(std::mem::size_of::<IcBoxsumParams>(), 64 + 2 * 32);
        assert_eq!(std::mem::size_of::<IcReduceParams>(), 24);
    }

    #[test]
    fn threads_fit_the_tile() {
        assert_eq!(threads_for(1, 16, 32), 128); // 64@56 NCHW: four outputs per thread
        assert_eq!(threads_for(8, 8, 16), 256);
        assert_eq!(threads_for(1, 8, 8), 64); // 512@7 NCHW: a block as small as the image
        assert_eq!(threads_for(8, 8, 8), 128);
        assert!(fits_i32(&[1, 64, 56, 56], &[200704, 3136, 56, 1], 40));
        assert!(!fits_i32(&[1, 3, 40000, 40000], &[4_800_000_000, 1_600_000_000, 40000, 1], 0));
    }
}
