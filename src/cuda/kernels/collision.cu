// Fused CUDA kernels for the IC convolution's memory-bound part ("collision" term).
//
// The same source compiles two ways:
//   * through NVRTC at run time (src/cuda/fused/nvrtc.rs), for the GPU;
//   * as host C++ with ic_emu.h included first (tests/cuda_emu/), where a sequential grid
//     emulation runs every block's threads as fibers between barriers. So: the only
//     warp-synchronous code is ic_shfl_down (which the emulation runs as a block-wide exchange,
//     so every thread of the block calls it together), every block reduction goes through
//     ic_block_reduce3, all shared memory is the dynamic buffer (IC_SHARED), and every
//     __syncthreads is reached by all threads of a block.
//
// Layer (see src/ic_conv.rs):  Yb = conv(x, W) + b2,  Z = Yb - P + shift  (shift = b1 - b2),
//   out = Yb + alpha * relu(Z),  relu_z = relu(Z).
// Stride 1:  P = boxsum_{kh x kw}(Q) with Q = conv1x1(x, W') on x's grid (box sum and 1x1 commute).
//
// Kernels (entry names: IC_FOR_EACH_ENTRY below; T in f32, f64, f16, bf16, math in float32 or
// float64 for f64):
//   ic_fwd_box_T   reads Yb and Q (kh x kw halo in shared memory), writes out and relu_z.
//                  alpha (here and in ic_bwd_box_T): the value parameter, or *alpha_p when
//                  alpha_p is not null (an alpha that lives on the device), read once per thread.
//                  With kh = kw = 1, pad 0 it is the plain collision kernel on (Yb, P).
//   ic_bwd_box_T   reads grad and relu_z (halo), writes gy = grad + gz (optional),
//                  G = boxsum^T(gz) on x's grid, and per-block per-channel partial sums
//                  [sum gz, sum grad, sum grad * relu_z]  (gz = alpha * grad * [relu_z > 0]).
//                  With kh = kw = 1 it writes gz itself (G = gz).
//   ic_reduce_A    adds the partials in a fixed order (deterministic, no atomics): block c
//                  writes sums[c] = (db1[c], db2[c], d alpha[c]); d alpha is the sum over c.
//   ic_boxsum_T    S = boxsum(x; stride, pad, dilation) (strided path).
//   ic_boxsum_t_T  dx (=, -=, +=) boxsum^T(dS) (strided path).
// Tensors are addressed through element strides (NCHW, channels_last or any other).

#ifndef IC_EMULATION
typedef long long ic_i64;
#define IC_SHARED(type, name)                                    \
    extern __shared__ __align__(16) unsigned char ic_smem_raw[]; \
    type* name = reinterpret_cast<type*>(ic_smem_raw)
#define IC_CHECK(cond)         \
    do {                       \
        if (!(cond)) __trap(); \
    } while (0)
#define IC_UNROLL _Pragma("unroll")
#define IC_NO_UNROLL _Pragma("unroll 1")
#endif

// ---------------------------------------------------------------------------------------------
// Storage types and conversions (no CUDA headers needed: half and bfloat16 are raw 16-bit words).

struct ic_f16 {
    unsigned short bits;
};
struct ic_bf16 {
    unsigned short bits;
};

__device__ __forceinline__ float ic_bits_to_float(unsigned int u) {
#ifdef IC_EMULATION
    float f;
    memcpy(&f, &u, 4);
    return f;
#else
    return __uint_as_float(u);
#endif
}
__device__ __forceinline__ unsigned int ic_float_to_bits(float f) {
#ifdef IC_EMULATION
    unsigned int u;
    memcpy(&u, &f, 4);
    return u;
#else
    return __float_as_uint(f);
#endif
}

// IEEE binary16 <-> float, round to nearest even (software; the GPU uses cvt instructions).
__device__ __forceinline__ float ic_half_to_float_sw(unsigned short h) {
    unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
    unsigned int exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    unsigned int u;
    if (exp == 0x1fu) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else {  // subnormal: normalise
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while ((man & 0x400u) == 0);
        u = sign | ((unsigned int)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    return ic_bits_to_float(u);
}
__device__ __forceinline__ unsigned short ic_float_to_half_sw(float f) {
    unsigned int u = ic_float_to_bits(f);
    unsigned int sign = (u >> 16) & 0x8000u;
    unsigned int a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return (unsigned short)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));
    if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds to >= 65520: inf
    if (a < 0x38800000u) {                                          // result subnormal or zero
        if (a < 0x33000000u) return (unsigned short)sign;           // < 2^-25: rounds to 0
        unsigned int e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        unsigned int shift = 126u - e;  // value = m * 2^(e-150); half subnormal unit 2^-24
        unsigned int r = m >> shift, rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (r & 1u))) r++;
        return (unsigned short)(sign | r);
    }
    unsigned int r = ((a - 0x38000000u) >> 13);  // rebias exponent 127 -> 15
    unsigned int rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
    return (unsigned short)(sign | r);
}
__device__ __forceinline__ unsigned short ic_float_to_bf16_sw(float f) {
    unsigned int u = ic_float_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

template <class T>
struct IcTraits;
template <>
struct IcTraits<float> {
    typedef float acc;
    static __device__ __forceinline__ float load(const float* p) { return *p; }
    static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
};
template <>
struct IcTraits<double> {
    typedef double acc;
    static __device__ __forceinline__ double load(const double* p) { return *p; }
    static __device__ __forceinline__ void store(double* p, double v) { *p = v; }
};
template <>
struct IcTraits<ic_f16> {
    typedef float acc;
    static __device__ __forceinline__ float load(const ic_f16* p) {
#ifdef IC_EMULATION
        return ic_half_to_float_sw(p->bits);
#else
        float f;
        unsigned short h = p->bits;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
        return f;
#endif
    }
    static __device__ __forceinline__ void store(ic_f16* p, float v) {
#ifdef IC_EMULATION
        p->bits = ic_float_to_half_sw(v);
#else
        unsigned short h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
        p->bits = h;
#endif
    }
};
template <>
struct IcTraits<ic_bf16> {
    typedef float acc;
    static __device__ __forceinline__ float load(const ic_bf16* p) {
        return ic_bits_to_float((unsigned int)p->bits << 16);
    }
    static __device__ __forceinline__ void store(ic_bf16* p, float v) {
#if !defined(IC_EMULATION) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        unsigned short h;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
        p->bits = h;
#else
        p->bits = ic_float_to_bf16_sw(v);
#endif
    }
};

// ---------------------------------------------------------------------------------------------
// Parameters: the one source of their layout. build.rs generates the #[repr(C)] Rust structs
// (src/cuda/fused/params.rs) and tests/cuda_emu/params.py the ctypes ones from these declarations;
// params.rs's every_field_sits_where_the_kernel_reads_it and tests/test_cuda_params.py check every
// field's offset. One declaration per line: `type name, name;  // comment`.

struct IcStrides {
    ic_i64 n, c, h, w;
};

struct IcBoxParams {
    int N, C;
    int H, W;    // box-sum grid: Q (forward) / G (backward), x's grid
    int Ho, Wo;  // conv output grid: Yb, out, relu_z, grad, gy
    int kh, kw, ph, pw, dh, dw;
    int TC, TH, TW;  // tile: channels x rows x cols of the output (fwd) / aligned grid (bwd)
    int tiles_c, tiles_h, tiles_w;
    int cl;           // 1: channels_last (the box kernels run channel-fastest either way); blockDim.x % TC == 0
    IcStrides s_box;  // Q / G
    IcStrides s_a;    // Yb (fwd) / grad (bwd)
    IcStrides s_b;    // out (fwd) / gy (bwd)
    IcStrides s_r;    // relu_z
};

struct IcBoxsumParams {
    int N, C, H, W, Ho, Wo;
    int kh, kw, sh, sw, ph, pw, dh, dw;
    int mode;  // boxsum_t: 0 write, 1 subtract from, 2 add to the output
    int cl;
    IcStrides s_in, s_out;
};

struct IcReduceParams {
    int N, C, TC, tiles_c, tiles_sp;
    int dalpha;  // 1: also sum grad * relu_z (d alpha per channel); 0: alpha needs no gradient
};

__device__ __forceinline__ ic_i64 ic_off(const IcStrides& s, ic_i64 n, ic_i64 c, ic_i64 h, ic_i64 w) {
    return n * s.n + c * s.c + h * s.h + w * s.w;
}

// relu that keeps NaN (like torch.relu); mask as threshold_backward (NaN in r passes).
template <class A>
__device__ __forceinline__ A ic_relu(A v) {
    return v < A(0) ? A(0) : v;
}
template <class A>
__device__ __forceinline__ A ic_mask(A g, A r, A alpha) {
    return r <= A(0) ? A(0) : alpha * g;
}

// One warp's shuffle: lane l gets lane l + delta's value (its own where l + delta >= 32). Every
// thread of the block calls it together (the emulation runs it as a barrier).
template <class A>
__device__ __forceinline__ A ic_shfl_down(A v, int delta) {
#ifdef IC_EMULATION
    return ic_emu::shfl_down(v, delta);
#else
    return __shfl_down_sync(0xffffffffu, v, delta);
#endif
}

// The one block reduction: three sums at once over the threads t with t % lanes equal
// (blockDim.x a multiple of 32, lanes a power of two <= 32). Warp shuffles first (offsets 16 ..
// lanes), then the warps' sums through red (3 * blockDim.x / 32 * lanes values of shared
// memory), added in warp order by threads t < lanes, which then hold their group's sums in
// v[0..3]. The order is fixed, so the result is deterministic. Every thread of the block must
// call it.
template <class A>
__device__ __forceinline__ void ic_block_reduce3(A v[3], A* red, int lanes) {
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5, nw = blockDim.x >> 5;
    for (int off = 16; off >= lanes; off >>= 1) {
        v[0] += ic_shfl_down(v[0], off);
        v[1] += ic_shfl_down(v[1], off);
        v[2] += ic_shfl_down(v[2], off);
    }
    if (lane < lanes) {
        A* dst = red + (warp * lanes + lane) * 3;
        dst[0] = v[0];
        dst[1] = v[1];
        dst[2] = v[2];
    }
    __syncthreads();
    if (t < lanes) {
        v[0] = v[1] = v[2] = A(0);
        for (int w = 0; w < nw; w++) {
            const A* src = red + (w * lanes + t) * 3;
            v[0] += src[0];
            v[1] += src[1];
            v[2] += src[2];
        }
    }
    __syncthreads();  // red may be reused right after
}

// The thread layout of the box kernels over a tile of TC channels x TW columns (TC, TW and
// blockDim.x powers of two, TC * TW <= blockDim.x: launch.rs plans it so): channel c = t % TC fastest (channels_last:
// consecutive threads, consecutive channels), then column tx = (t / TC) % TW, then row
// ty = t / (TC * TW); ny rows of the tile at a time. Each thread keeps its channel and column
// and walks rows ty, ty + ny, ...: no division per element, and the offsets advance by adds.
__device__ __forceinline__ int ic_log2(int v) {  // v a power of two
#ifdef IC_EMULATION
    return __builtin_ctz((unsigned)v);
#else
    return __ffs(v) - 1;
#endif
}
struct IcLanes {
    int c, tx, ty, ny;
    __device__ __forceinline__ IcLanes(int TC, int TW) {
        const int lc = ic_log2(TC), lw = ic_log2(TW);
        const int t = threadIdx.x;
        c = t & (TC - 1);
        tx = (t >> lc) & (TW - 1);
        ty = t >> (lc + lw);
        ny = (int)blockDim.x >> (lc + lw);
    }
};

// Shared-memory strides of (c, r, x) in a TC x R x X tile: channel fastest, as the threads run
// (consecutive threads, consecutive banks).
struct IcSlot {
    int sc, sr, sx;
    __device__ __forceinline__ IcSlot(int TC, int X) : sc(1), sr(X * TC), sx(TC) {}
    __device__ __forceinline__ int at(int c, int r, int x) const { return c * sc + r * sr + x * sx; }
};
// Element offset of (c, h, w) inside one image, 32-bit (launch.rs checks that every image of
// every tensor spans less than 2^31 elements).
__device__ __forceinline__ int ic_off32(const IcStrides& s, int c, int h, int w) {
    return c * (int)s.c + h * (int)s.h + w * (int)s.w;
}

// Sum over a KH x KW box of taps at slot s0 + i * di + j * dj, i outer and j inner (the order
// is part of the result). KH = KW = 0: the run-time box kh x kw.
template <int KH, int KW, class A>
__device__ __forceinline__ A ic_taps(const A* tile, int s0, int kh, int kw, int di, int dj) {
    A s = A(0);
    if (KH > 0) {
        IC_UNROLL
        for (int i = 0; i < KH; i++) {
            IC_UNROLL
            for (int j = 0; j < KW; j++) s += tile[s0 + i * di + j * dj];
        }
    } else {
        for (int i = 0; i < kh; i++)
            for (int j = 0; j < kw; j++) s += tile[s0 + i * di + j * dj];
    }
    return s;
}

// ---------------------------------------------------------------------------------------------
// Forward, stride 1: out = Yb + alpha * relu(Yb - boxsum(Q) + shift), relu_z = relu(...).
// Grid: x = tiles_h * tiles_w, y = tiles_c, z = N. Shared: TC * (TH + dh(kh-1)) * (TW + dw(kw-1)) acc.
// `out` may alias `y` (in place): each thread loads the Yb of its next two outputs before it
// stores either. relu_z may be null (inference).
template <class T, int KH, int KW>
__device__ __forceinline__ void ic_fwd_box(const T* y, const T* __restrict__ q, T* out, T* __restrict__ rz,
                                           const typename IcTraits<T>::acc* __restrict__ shift,
                                           typename IcTraits<T>::acc alpha, const IcBoxParams& p) {
    typedef typename IcTraits<T>::acc A;
    IC_SHARED(A, tile);
    IC_CHECK(p.TC * p.TW <= (int)blockDim.x);
    const int kh = KH > 0 ? KH : p.kh, kw = KW > 0 ? KW : p.kw;
    const int sp = blockIdx.x, th = sp / p.tiles_w, tw = sp - th * p.tiles_w;
    const int c0 = blockIdx.y * p.TC, n = blockIdx.z;
    const int oh0 = th * p.TH, ow0 = tw * p.TW;
    const int HH = p.TH + p.dh * (kh - 1), HW = p.TW + p.dw * (kw - 1);
    const IcLanes L(p.TC, p.TW);
    const IcSlot sl(p.TC, HW);
    const int ch = c0 + L.c;
    // 1. Q on the tile and its halo (zero outside the image: the box sum's zero padding).
    {
        const int TW = p.TW, W = p.W, H = p.H;
        const int w0 = ow0 - p.pw + L.tx, wend = w0 + HW - L.tx, h0 = oh0 - p.ph + L.ty, hend = h0 + HH - L.ty;
        const int xstep = TW * (int)p.s_box.w, tstep = TW * sl.sx, ystep = L.ny * (int)p.s_box.h, trow = L.ny * sl.sr;
        const bool ch_in = ch < p.C;
        const T* qr = q + (ic_i64)n * p.s_box.n + ic_off32(p.s_box, ch, h0, w0);
        A* tr = tile + sl.at(L.c, L.ty, L.tx);
        // columns outer (one or two per thread: TW of the HW), rows inner
        IC_NO_UNROLL
        for (int wc = w0; wc < wend; wc += TW, qr += xstep, tr += tstep) {
            const bool col_in = ch_in && (unsigned)wc < (unsigned)W;
            const T* qp = qr;
            A* tp = tr;
            for (int h = h0; h < hend; h += L.ny, qp += ystep, tp += trow)
                *tp = col_in && (unsigned)h < (unsigned)H ? IcTraits<T>::load(qp) : A(0);
        }
    }
    __syncthreads();
    // 2. The tile's outputs of this thread's channel and column, two rows per step.
    const int ow = ow0 + L.tx;
    if (ch >= p.C || ow >= p.Wo) return;
    const T* yn = y + (ic_i64)n * p.s_a.n;
    T* on = out + (ic_i64)n * p.s_b.n;
    T* rn = rz ? rz + (ic_i64)n * p.s_r.n : rz;
    const A sh = shift[ch];
    const int di = p.dh * sl.sr, dj = p.dw * sl.sx;
    const int dy = L.ny * (int)p.s_a.h, dout = L.ny * (int)p.s_b.h, drz = L.ny * (int)p.s_r.h, dslot = L.ny * sl.sr;
    int oy = ic_off32(p.s_a, ch, oh0 + L.ty, ow), oo = ic_off32(p.s_b, ch, oh0 + L.ty, ow);
    int orz = ic_off32(p.s_r, ch, oh0 + L.ty, ow), slot = sl.at(L.c, L.ty, L.tx);
    for (int r = L.ty; r < p.TH; r += 2 * L.ny) {
        const int oh = oh0 + r;
        const bool ok = oh < p.Ho, ok1 = r + L.ny < p.TH && oh + L.ny < p.Ho;
        const A y0 = ok ? IcTraits<T>::load(yn + oy) : A(0);
        const A y1 = ok1 ? IcTraits<T>::load(yn + oy + dy) : A(0);
        if (ok) {
            const A z = ic_relu(y0 - ic_taps<KH, KW>(tile, slot, kh, kw, di, dj) + sh);
            IcTraits<T>::store(on + oo, y0 + alpha * z);
            if (rn) IcTraits<T>::store(rn + orz, z);
        }
        if (ok1) {
            const A z = ic_relu(y1 - ic_taps<KH, KW>(tile, slot + dslot, kh, kw, di, dj) + sh);
            IcTraits<T>::store(on + oo + dout, y1 + alpha * z);
            if (rn) IcTraits<T>::store(rn + orz + drz, z);
        }
        oy += 2 * dy;
        oo += 2 * dout;
        orz += 2 * drz;
        slot += 2 * dslot;
    }
}

// Backward, stride 1. Aligned rows a = h + ph, cols b = w + pw: the block owns the outputs (oh, ow)
// = (a, b) of its tile (gy and the sums, each output once over the grid) and computes G on the
// inputs (a - ph, b - pw) of its tile from gz on the output rows a - dh(kh-1) .. a (halo).
// Grid: x = tiles_h * tiles_w with tiles_h = ceil(max(Ho, H + ph) / TH) (same for w), y = tiles_c,
// z = N. partials: (N * tiles_c * tiles_h * tiles_w * TC) x 3 acc values, in grid order
// ([sum gz, sum grad, sum grad * relu_z] per block and channel). blockDim.x: a multiple of 32.
template <class T, int KH, int KW>
__device__ __forceinline__ void ic_bwd_box(const T* __restrict__ grad, const T* __restrict__ rz, T* __restrict__ gy,
                                           T* __restrict__ G, typename IcTraits<T>::acc alpha,
                                           typename IcTraits<T>::acc* __restrict__ partials, const IcBoxParams& p) {
    typedef typename IcTraits<T>::acc A;
    IC_SHARED(A, smem);
    IC_CHECK(p.TC * p.TW <= (int)blockDim.x && blockDim.x % 32 == 0);
    const int kh = KH > 0 ? KH : p.kh, kw = KW > 0 ? KW : p.kw;
    const int sp = blockIdx.x, th = sp / p.tiles_w, tw = sp - th * p.tiles_w;
    const int c0 = blockIdx.y * p.TC, n = blockIdx.z;
    const int a0 = th * p.TH, b0 = tw * p.TW;
    const int eh = p.dh * (kh - 1), ew = p.dw * (kw - 1);
    const int HH = p.TH + eh, HW = p.TW + ew;
    A* tile = smem;
    A* red = smem + p.TC * HH * HW;
    const IcLanes L(p.TC, p.TW);
    const IcSlot sl(p.TC, HW);
    const int ch = c0 + L.c;  // thread t always sees channel c0 + t % TC
    A acc[3] = {A(0), A(0), A(0)};
    // 1. gz on the halo; gy and the sums on the owned part (halo rows >= eh, cols >= ew).
    {
        const int TW = p.TW, Wo = p.Wo, Ho = p.Ho;
        T* yn = gy ? gy + (ic_i64)n * p.s_b.n : gy;
        // owned: rows oh >= a0, columns ow >= b0
        const int w0 = b0 - ew + L.tx, wend = w0 + HW - L.tx, h0 = a0 - eh + L.ty, hend = h0 + HH - L.ty;
        const int xa = TW * (int)p.s_a.w, xr = TW * (int)p.s_r.w, xb = TW * (int)p.s_b.w, tstep = TW * sl.sx;
        const int ya = L.ny * (int)p.s_a.h, yr = L.ny * (int)p.s_r.h, yb = L.ny * (int)p.s_b.h, trow = L.ny * sl.sr;
        const bool ch_in = ch < p.C;
        const T* gn = grad + (ic_i64)n * p.s_a.n;
        const T* rn = rz + (ic_i64)n * p.s_r.n;
        int oa0 = ic_off32(p.s_a, ch, h0, w0), or0 = ic_off32(p.s_r, ch, h0, w0), ob0 = ic_off32(p.s_b, ch, h0, w0);
        A* ts0 = tile + sl.at(L.c, L.ty, L.tx);
        // columns outer (one or two per thread: TW of the HW), rows inner; 32-bit offsets and loops
        // kept rolled hold the kernel at 48 registers (five 256-thread blocks per SM)
        IC_NO_UNROLL
        for (int ow = w0; ow < wend; ow += TW, oa0 += xa, or0 += xr, ob0 += xb, ts0 += tstep) {
            const bool col_in = ch_in && (unsigned)ow < (unsigned)Wo, col_own = ow >= b0;
            int oa = oa0, orr = or0, ob = ob0;
            A* ts = ts0;
            IC_NO_UNROLL
            for (int oh = h0; oh < hend; oh += L.ny, oa += ya, orr += yr, ob += yb, ts += trow) {
                A z = A(0);
                if (col_in && (unsigned)oh < (unsigned)Ho) {
                    const A g = IcTraits<T>::load(gn + oa);
                    const A rv = IcTraits<T>::load(rn + orr);
                    z = ic_mask(g, rv, alpha);
                    if (col_own && oh >= a0) {
                        if (yn) IcTraits<T>::store(yn + ob, g + z);
                        acc[0] += z;
                        acc[1] += g;
                        acc[2] += g * rv;
                    }
                }
                *ts = z;
            }
        }
    }
    __syncthreads();
    // 2. G = boxsum^T(gz) on the tile's inputs of this thread's channel and column.
    {
        const int wc = b0 - p.pw + L.tx;
        if (ch < p.C && (unsigned)wc < (unsigned)p.W) {
            T* Gn = G + (ic_i64)n * p.s_box.n;
            const int di = p.dh * sl.sr, dj = p.dw * sl.sx, dG = L.ny * (int)p.s_box.h, dslot = L.ny * sl.sr;
            // G(h, w) sums gz over tile rows r .. r + eh and columns tx .. tx + ew
            int oG = ic_off32(p.s_box, ch, a0 - p.ph + L.ty, wc), slot = sl.at(L.c, L.ty, L.tx);
            for (int r = L.ty; r < p.TH; r += L.ny, oG += dG, slot += dslot) {
                const int h = a0 - p.ph + r;
                if ((unsigned)h < (unsigned)p.H)
                    IcTraits<T>::store(Gn + oG, ic_taps<KH, KW>(tile, slot, kh, kw, di, dj));
            }
        }
    }
    // 3. Per-channel partial sums of this block, in grid order.
    ic_block_reduce3(acc, red, p.TC);
    if ((int)threadIdx.x < p.TC) {
        const ic_i64 blk = ((ic_i64)n * p.tiles_c + blockIdx.y) * ((ic_i64)p.tiles_h * p.tiles_w) + sp;
        A* dst = partials + (blk * p.TC + threadIdx.x) * 3;
        dst[0] = acc[0];
        dst[1] = acc[1];
        dst[2] = acc[2];
    }
}

// Deterministic reduction of ic_bwd_box's partials, per channel. Grid: C blocks; block c adds
// channel c's partials in a fixed order and writes sums[c] = (db1[c], db2[c], d alpha[c]) (the
// last 0 without p.dalpha). d alpha is the sum of the C values (launch.rs). blockDim.x: a
// multiple of 32.
template <class A>
__device__ __forceinline__ void ic_reduce(const A* __restrict__ partials, A* __restrict__ sums, IcReduceParams p) {
    IC_SHARED(A, red);
    const int b = blockIdx.x, ct = b / p.TC, c = b - ct * p.TC;
    A acc[3] = {A(0), A(0), A(0)};
    // entries j = (image n, spatial tile s), j = n * tiles_sp + s, in thread order
    int s = threadIdx.x % p.tiles_sp, nn = threadIdx.x / p.tiles_sp;
    const int ds = blockDim.x % p.tiles_sp, dn = blockDim.x / p.tiles_sp;
    for (; nn < p.N; s += ds, nn += dn) {
        if (s >= p.tiles_sp) {
            s -= p.tiles_sp;
            nn++;
            if (nn >= p.N) break;
        }
        const A* src = partials + ((((ic_i64)nn * p.tiles_c + ct) * p.tiles_sp + s) * p.TC + c) * 3;
        acc[0] += src[0];
        acc[1] += src[1];
        if (p.dalpha) acc[2] += src[2];
    }
    ic_block_reduce3(acc, red, 1);
    if (threadIdx.x == 0) {
        sums[3 * b] = acc[0];
        sums[3 * b + 1] = acc[1];
        sums[3 * b + 2] = acc[2];
    }
}

// Flat index over (N, C, Ho, Wo) in thread order (channel fastest for cl).
__device__ __forceinline__ void ic_unflatten4(ic_i64 i, int C, int H, int W, int cl, int& n, int& c, int& h, int& w) {
    if (cl) {
        c = (int)(i % C);
        i /= C;
        w = (int)(i % W);
        i /= W;
        h = (int)(i % H);
        n = (int)(i / H);
    } else {
        w = (int)(i % W);
        i /= W;
        h = (int)(i % H);
        i /= H;
        c = (int)(i % C);
        n = (int)(i / C);
    }
}

// S = boxsum(x) on the conv's output grid, any stride. One thread per output (grid-stride loop).
template <class T>
__device__ __forceinline__ void ic_boxsum(const T* x, T* s, IcBoxsumParams p) {
    typedef typename IcTraits<T>::acc A;
    const ic_i64 total = (ic_i64)p.N * p.C * p.Ho * p.Wo;
    for (ic_i64 i = (ic_i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (ic_i64)gridDim.x * blockDim.x) {
        int n, c, oh, ow;
        ic_unflatten4(i, p.C, p.Ho, p.Wo, p.cl, n, c, oh, ow);
        A acc = A(0);
        for (int a = 0; a < p.kh; a++) {
            const int h = oh * p.sh - p.ph + a * p.dh;
            if (h < 0 || h >= p.H) continue;
            for (int b = 0; b < p.kw; b++) {
                const int w = ow * p.sw - p.pw + b * p.dw;
                if (w >= 0 && w < p.W) acc += IcTraits<T>::load(x + ic_off(p.s_in, n, c, h, w));
            }
        }
        IcTraits<T>::store(s + ic_off(p.s_out, n, c, oh, ow), acc);
    }
}

// out (=, -=, +=) boxsum^T(ds) on x's grid (N, C, H, W), any stride: a gather, one thread per input.
template <class T>
__device__ __forceinline__ void ic_boxsum_t(const T* ds, T* out, IcBoxsumParams p) {
    typedef typename IcTraits<T>::acc A;
    const ic_i64 total = (ic_i64)p.N * p.C * p.H * p.W;
    for (ic_i64 i = (ic_i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (ic_i64)gridDim.x * blockDim.x) {
        int n, c, h, w;
        ic_unflatten4(i, p.C, p.H, p.W, p.cl, n, c, h, w);
        A acc = A(0);
        for (int a = 0; a < p.kh; a++) {
            const int th = h + p.ph - a * p.dh;
            if (th < 0 || th % p.sh) continue;
            const int oh = th / p.sh;
            if (oh >= p.Ho) continue;
            for (int b = 0; b < p.kw; b++) {
                const int tw = w + p.pw - b * p.dw;
                if (tw < 0 || tw % p.sw) continue;
                const int ow = tw / p.sw;
                if (ow < p.Wo) acc += IcTraits<T>::load(ds + ic_off(p.s_in, n, c, oh, ow));
            }
        }
        T* dst = out + ic_off(p.s_out, n, c, h, w);
        if (p.mode == 1)
            acc = IcTraits<T>::load(dst) - acc;
        else if (p.mode == 2)
            acc = IcTraits<T>::load(dst) + acc;
        IcTraits<T>::store(dst, acc);
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points (extern "C": plain names for cuModuleGetFunction and the emulation's table).

// The forward and backward entries take alpha by value and through alpha_p (used when not null:
// an alpha that lives on the device), and run the body specialised for a 3x3 or 1x1 box, or the
// run-time box. (ptxas caps the backward at 48 registers under __launch_bounds__(256) and spills:
// it has none.)
#define IC_BOX_DISPATCH(BODY, ...)   \
    if (p.kh == 3 && p.kw == 3)      \
        BODY<T, 3, 3>(__VA_ARGS__);  \
    else if (p.kh == 1 && p.kw == 1) \
        BODY<T, 1, 1>(__VA_ARGS__);  \
    else                             \
        BODY<T, 0, 0>(__VA_ARGS__)

#define IC_DEFINE_ENTRIES(SUF, T_)                                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                                             \
        ic_fwd_box_##SUF(const T_* y, const T_* __restrict__ q, T_* out, T_* __restrict__ rz,                     \
                         const IcTraits<T_>::acc* __restrict__ shift, IcTraits<T_>::acc alpha,                    \
                         const IcTraits<T_>::acc* alpha_p, IcBoxParams p) {                                       \
        typedef T_ T;                                                                                             \
        const IcTraits<T>::acc a = alpha_p ? *alpha_p : alpha;                                                    \
        IC_BOX_DISPATCH(ic_fwd_box, y, q, out, rz, shift, a, p);                                                  \
    }                                                                                                             \
    extern "C" __global__ void ic_bwd_box_##SUF(const T_* __restrict__ grad, const T_* __restrict__ rz,           \
                                                T_* __restrict__ gy, T_* __restrict__ G, IcTraits<T_>::acc alpha, \
                                                const IcTraits<T_>::acc* alpha_p,                                 \
                                                IcTraits<T_>::acc* __restrict__ partials, IcBoxParams p) {        \
        typedef T_ T;                                                                                             \
        const IcTraits<T>::acc a = alpha_p ? *alpha_p : alpha;                                                    \
        IC_BOX_DISPATCH(ic_bwd_box, grad, rz, gy, G, a, partials, p);                                             \
    }                                                                                                             \
    extern "C" __global__ void ic_boxsum_##SUF(const T_* x, T_* s, IcBoxsumParams p) { ic_boxsum<T_>(x, s, p); }  \
    extern "C" __global__ void ic_boxsum_t_##SUF(const T_* ds, T_* out, IcBoxsumParams p) {                       \
        ic_boxsum_t<T_>(ds, out, p);                                                                              \
    }

IC_DEFINE_ENTRIES(f32, float)
IC_DEFINE_ENTRIES(f64, double)
IC_DEFINE_ENTRIES(f16, ic_f16)
IC_DEFINE_ENTRIES(bf16, ic_bf16)

extern "C" __global__ void __launch_bounds__(256) ic_reduce_f32(const float* partials, float* sums, IcReduceParams p) {
    ic_reduce<float>(partials, sums, p);
}
extern "C" __global__ void __launch_bounds__(256)
    ic_reduce_f64(const double* partials, double* sums, IcReduceParams p) {
    ic_reduce<double>(partials, sums, p);
}

// Every entry point, for the emulation's dispatch table and the PTX entry check.
// clang-format off
#define IC_FOR_EACH_ENTRY(X)                                                                     \
    X(ic_fwd_box_f32) X(ic_fwd_box_f64) X(ic_fwd_box_f16) X(ic_fwd_box_bf16)                     \
    X(ic_bwd_box_f32) X(ic_bwd_box_f64) X(ic_bwd_box_f16) X(ic_bwd_box_bf16)                     \
    X(ic_boxsum_f32) X(ic_boxsum_f64) X(ic_boxsum_f16) X(ic_boxsum_bf16)                         \
    X(ic_boxsum_t_f32) X(ic_boxsum_t_f64) X(ic_boxsum_t_f16) X(ic_boxsum_t_bf16)                 \
    X(ic_reduce_f32) X(ic_reduce_f64)
// clang-format on
