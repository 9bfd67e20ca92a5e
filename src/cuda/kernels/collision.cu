// Fused CUDA kernels for the IC convolution's memory-bound part ("collision" term).
//
// The same source compiles two ways:
//   * through NVRTC at run time (src/cuda/fused/nvrtc.rs), for the GPU;
//   * as host C++ with ic_emu.h included first (tests/cuda_emu/), where a sequential grid
//     emulation runs every block's threads as fibers between barriers. So: no warp-synchronous
//     code, every block reduction goes through ic_block_reduce3, all shared memory is the dynamic
//     buffer (IC_SHARED), and every __syncthreads is reached by all threads of a block.
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
//   ic_reduce_A    adds the partials in a fixed order (deterministic, no atomics): block c < C
//                  writes sums[c] = (db1[c], db2[c]); block C writes sums[C] = (d alpha, 0).
//   ic_boxsum_T    S = boxsum(x; stride, pad, dilation) (strided path).
//   ic_boxsum_t_T  dx (=, -=, +=) boxsum^T(dS) (strided path).
// Tensors are addressed through element strides (NCHW, channels_last or any other).

#ifndef IC_EMULATION
typedef long long ic_i64;
#define IC_SHARED(type, name) \
    extern __shared__ __align__(16) unsigned char ic_smem_raw[]; \
    type* name = reinterpret_cast<type*>(ic_smem_raw)
#define IC_CHECK(cond) \
    do { if (!(cond)) __trap(); } while (0)
#endif

// ---------------------------------------------------------------------------------------------
// Storage types and conversions (no CUDA headers needed: half and bfloat16 are raw 16-bit words).

struct ic_f16 { unsigned short bits; };
struct ic_bf16 { unsigned short bits; };

__device__ __forceinline__ float ic_bits_to_float(unsigned int u) {
#ifdef IC_EMULATION
    float f; memcpy(&f, &u, 4); return f;
#else
    return __uint_as_float(u);
#endif
}
__device__ __forceinline__ unsigned int ic_float_to_bits(float f) {
#ifdef IC_EMULATION
    unsigned int u; memcpy(&u, &f, 4); return u;
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
        do { man <<= 1; e++; } while ((man & 0x400u) == 0);
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
    if (a < 0x38800000u) {  // result subnormal or zero
        if (a < 0x33000000u) return (unsigned short)sign;  // < 2^-25: rounds to 0
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

template <class T> struct IcTraits;
template <> struct IcTraits<float> {
    typedef float acc;
    static __device__ __forceinline__ float load(const float* p) { return *p; }
    static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
};
template <> struct IcTraits<double> {
    typedef double acc;
    static __device__ __forceinline__ double load(const double* p) { return *p; }
    static __device__ __forceinline__ void store(double* p, double v) { *p = v; }
};
template <> struct IcTraits<ic_f16> {
    typedef float acc;
    static __device__ __forceinline__ float load(const ic_f16* p) {
#ifdef IC_EMULATION
        return ic_half_to_float_sw(p->bits);
#else
        float f; unsigned short h = p->bits;
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
template <> struct IcTraits<ic_bf16> {
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
// Parameters (mirrored by #[repr(C)] structs in src/cuda/fused/launch.rs and by ctypes in
// tests/test_cuda_kernels.py: keep the three in step).

struct IcStrides { ic_i64 n, c, h, w; };

struct IcBoxParams {
    int N, C;
    int H, W;            // box-sum grid: Q (forward) / G (backward), x's grid
    int Ho, Wo;          // conv output grid: Yb, out, relu_z, grad, gy
    int kh, kw, ph, pw, dh, dw;
    int TC, TH, TW;      // tile: channels x rows x cols of the output (fwd) / aligned grid (bwd)
    int tiles_c, tiles_h, tiles_w;
    int cl;              // 1: channel-fastest thread order (channels_last); needs blockDim.x % TC == 0
    IcStrides s_box;     // Q / G
    IcStrides s_a;       // Yb (fwd) / grad (bwd)
    IcStrides s_b;       // out (fwd) / gy (bwd)
    IcStrides s_r;       // relu_z
};

struct IcBoxsumParams {
    int N, C, H, W, Ho, Wo;
    int kh, kw, sh, sw, ph, pw, dh, dw;
    int mode;            // boxsum_t: 0 write, 1 subtract from, 2 add to the output
    int cl;
    IcStrides s_in, s_out;
};

struct IcReduceParams {
    int N, C, TC, tiles_c, tiles_sp;
};

__device__ __forceinline__ ic_i64 ic_off(const IcStrides& s, ic_i64 n, ic_i64 c, ic_i64 h, ic_i64 w) {
    return n * s.n + c * s.c + h * s.h + w * s.w;
}

// relu that keeps NaN (like torch.relu); mask as threshold_backward (NaN in r passes).
template <class A> __device__ __forceinline__ A ic_relu(A v) { return v < A(0) ? A(0) : v; }
template <class A> __device__ __forceinline__ A ic_mask(A g, A r, A alpha) { return r <= A(0) ? A(0) : alpha * g; }

// The one block reduction: three sums at once over the threads t with t % lanes equal
// (blockDim.x and lanes powers of two, lanes <= blockDim.x). red: 3 * blockDim.x values of shared
// memory. After it, threads t < lanes hold their group's sums in v[0..3]. Tree order is fixed,
// so the result is deterministic. Every thread of the block must call it.
template <class A>
__device__ __forceinline__ void ic_block_reduce3(A v[3], A* red, int lanes) {
    const int t = threadIdx.x, nt = blockDim.x;
    red[t] = v[0]; red[nt + t] = v[1]; red[2 * nt + t] = v[2];
    __syncthreads();
    for (int s = nt >> 1; s >= lanes; s >>= 1) {
        if (t < s) {
            red[t] += red[t + s];
            red[nt + t] += red[nt + t + s];
            red[2 * nt + t] += red[2 * nt + t + s];
        }
        __syncthreads();
    }
    v[0] = red[t]; v[1] = red[nt + t]; v[2] = red[2 * nt + t];
    __syncthreads();  // red may be reused right after
}

// Tile element idx -> (c, r, x) in thread order: channel fastest (cl) or column fastest.
__device__ __forceinline__ void ic_unflatten(int idx, int TC, int rows, int cols, int cl, int& c, int& r, int& x) {
    if (cl) { c = idx % TC; idx /= TC; x = idx % cols; r = idx / cols; }
    else { x = idx % cols; idx /= cols; r = idx % rows; c = idx / rows; }
}
// Shared-memory slot of (c, r, x): channel fastest for cl (consecutive threads, consecutive banks).
__device__ __forceinline__ int ic_slot(int c, int r, int x, int TC, int rows, int cols, int cl) {
    return cl ? (r * cols + x) * TC + c : (c * rows + r) * cols + x;
}

// ---------------------------------------------------------------------------------------------
// Forward, stride 1: out = Yb + alpha * relu(Yb - boxsum(Q) + shift), relu_z = relu(...).
// Grid: x = tiles_h * tiles_w, y = tiles_c, z = N. Shared: TC * (TH + dh(kh-1)) * (TW + dw(kw-1)) acc.
// `out` may alias `y` (in place); relu_z may be null (inference).
template <class T>
__device__ __forceinline__ void ic_fwd_box(const T* y, const T* q, T* out, T* rz,
                                           const typename IcTraits<T>::acc* shift,
                                           typename IcTraits<T>::acc alpha_v,
                                           const typename IcTraits<T>::acc* alpha_p, IcBoxParams p) {
    typedef typename IcTraits<T>::acc A;
    IC_SHARED(A, tile);
    const int sp = blockIdx.x, th = sp / p.tiles_w, tw = sp % p.tiles_w;
    const int c0 = blockIdx.y * p.TC, n = blockIdx.z;
    const int oh0 = th * p.TH, ow0 = tw * p.TW;
    const int HH = p.TH + p.dh * (p.kh - 1), HW = p.TW + p.dw * (p.kw - 1);
    const A alpha = alpha_p ? *alpha_p : alpha_v;
    // 1. Q on the tile and its halo (zero outside the image: the box sum's zero padding).
    for (int idx = threadIdx.x; idx < p.TC * HH * HW; idx += blockDim.x) {
        int c, r, x;
        ic_unflatten(idx, p.TC, HH, HW, p.cl, c, r, x);
        const int h = oh0 - p.ph + r, w = ow0 - p.pw + x, ch = c0 + c;
        A v = A(0);
        if (ch < p.C && h >= 0 && h < p.H && w >= 0 && w < p.W) v = IcTraits<T>::load(q + ic_off(p.s_box, n, ch, h, w));
        tile[ic_slot(c, r, x, p.TC, HH, HW, p.cl)] = v;
    }
    __syncthreads();
    // 2. Each output of the tile once.
    for (int idx = threadIdx.x; idx < p.TC * p.TH * p.TW; idx += blockDim.x) {
        int c, r, x;
        ic_unflatten(idx, p.TC, p.TH, p.TW, p.cl, c, r, x);
        const int oh = oh0 + r, ow = ow0 + x, ch = c0 + c;
        if (ch >= p.C || oh >= p.Ho || ow >= p.Wo) continue;
        A s = A(0);
        for (int i = 0; i < p.kh; i++)
            for (int j = 0; j < p.kw; j++) s += tile[ic_slot(c, r + i * p.dh, x + j * p.dw, p.TC, HH, HW, p.cl)];
        const A yv = IcTraits<T>::load(y + ic_off(p.s_a, n, ch, oh, ow));
        const A z = ic_relu(yv - s + shift[ch]);
        IcTraits<T>::store(out + ic_off(p.s_b, n, ch, oh, ow), yv + alpha * z);
        if (rz) IcTraits<T>::store(rz + ic_off(p.s_r, n, ch, oh, ow), z);
    }
}

// Backward, stride 1. Aligned rows a = h + ph, cols b = w + pw: the block owns the outputs (oh, ow)
// = (a, b) of its tile (gy and the sums, each output once over the grid) and computes G on the
// inputs (a - ph, b - pw) of its tile from gz on the output rows a - dh(kh-1) .. a (halo).
// Grid: x = tiles_h * tiles_w with tiles_h = ceil(max(Ho, H + ph) / TH) (same for w), y = tiles_c,
// z = N. partials: (N * tiles_c * tiles_h * tiles_w * TC) x 3 acc values, in grid order.
template <class T>
__device__ __forceinline__ void ic_bwd_box(const T* grad, const T* rz, T* gy, T* G,
                                           typename IcTraits<T>::acc alpha_v,
                                           const typename IcTraits<T>::acc* alpha_p,
                                           typename IcTraits<T>::acc* partials, IcBoxParams p) {
    typedef typename IcTraits<T>::acc A;
    IC_SHARED(A, smem);
    IC_CHECK(p.cl ? (blockDim.x % p.TC == 0) : (p.TC == 1));
    const int sp = blockIdx.x, th = sp / p.tiles_w, tw = sp % p.tiles_w;
    const int c0 = blockIdx.y * p.TC, n = blockIdx.z;
    const int a0 = th * p.TH, b0 = tw * p.TW;
    const int eh = p.dh * (p.kh - 1), ew = p.dw * (p.kw - 1);
    const int HH = p.TH + eh, HW = p.TW + ew;
    A* tile = smem;
    A* red = smem + p.TC * HH * HW;
    const A alpha = alpha_p ? *alpha_p : alpha_v;
    // Thread t always sees channel c0 + t % TC (cl, blockDim.x % TC == 0) or c0 (TC == 1).
    A acc[3] = {A(0), A(0), A(0)};
    // 1. gz on the halo; gy and the sums on the owned part (halo rows >= eh, cols >= ew).
    for (int idx = threadIdx.x; idx < p.TC * HH * HW; idx += blockDim.x) {
        int c, r, x;
        ic_unflatten(idx, p.TC, HH, HW, p.cl, c, r, x);
        const int oh = a0 - eh + r, ow = b0 - ew + x, ch = c0 + c;
        A z = A(0);
        if (ch < p.C && oh >= 0 && oh < p.Ho && ow >= 0 && ow < p.Wo) {
            const A g = IcTraits<T>::load(grad + ic_off(p.s_a, n, ch, oh, ow));
            const A rv = IcTraits<T>::load(rz + ic_off(p.s_r, n, ch, oh, ow));
            z = ic_mask(g, rv, alpha);
            if (r >= eh && x >= ew) {
                if (gy) IcTraits<T>::store(gy + ic_off(p.s_b, n, ch, oh, ow), g + z);
                acc[0] += z;
                acc[1] += g;
                acc[2] += g * rv;
            }
        }
        tile[ic_slot(c, r, x, p.TC, HH, HW, p.cl)] = z;
    }
    __syncthreads();
    // 2. G = boxsum^T(gz) on the tile's inputs.
    for (int idx = threadIdx.x; idx < p.TC * p.TH * p.TW; idx += blockDim.x) {
        int c, r, x;
        ic_unflatten(idx, p.TC, p.TH, p.TW, p.cl, c, r, x);
        const int h = a0 - p.ph + r, w = b0 - p.pw + x, ch = c0 + c;
        if (ch >= p.C || h < 0 || h >= p.H || w < 0 || w >= p.W) continue;
        A s = A(0);
        for (int i = 0; i < p.kh; i++)
            for (int j = 0; j < p.kw; j++)
                s += tile[ic_slot(c, r + eh - i * p.dh, x + ew - j * p.dw, p.TC, HH, HW, p.cl)];
        IcTraits<T>::store(G + ic_off(p.s_box, n, ch, h, w), s);
    }
    // 3. Per-channel partial sums of this block, in grid order.
    ic_block_reduce3(acc, red, p.TC);
    if ((int)threadIdx.x < p.TC) {
        const ic_i64 blk = ((ic_i64)n * p.tiles_c + blockIdx.y) * ((ic_i64)p.tiles_h * p.tiles_w) + sp;
        A* dst = partials + (blk * p.TC + threadIdx.x) * 3;
        dst[0] = acc[0]; dst[1] = acc[1]; dst[2] = acc[2];
    }
}

// Deterministic reduction of ic_bwd_box's partials. Grid: C + 1 blocks. sums: (C + 1) x 2.
template <class A>
__device__ __forceinline__ void ic_reduce(const A* partials, A* sums, IcReduceParams p) {
    IC_SHARED(A, red);
    const int b = blockIdx.x;
    A acc[3] = {A(0), A(0), A(0)};
    if (b < p.C) {
        const int ct = b / p.TC, c = b % p.TC;
        const ic_i64 m = (ic_i64)p.N * p.tiles_sp;
        for (ic_i64 j = threadIdx.x; j < m; j += blockDim.x) {
            const ic_i64 n = j / p.tiles_sp, s = j % p.tiles_sp;
            const A* src = partials + (((n * p.tiles_c + ct) * p.tiles_sp + s) * p.TC + c) * 3;
            acc[0] += src[0];
            acc[1] += src[1];
        }
    } else {
        const ic_i64 m = (ic_i64)p.N * p.tiles_c * p.tiles_sp * p.TC;
        for (ic_i64 j = threadIdx.x; j < m; j += blockDim.x) acc[2] += partials[j * 3 + 2];
    }
    ic_block_reduce3(acc, red, 1);
    if (threadIdx.x == 0) {
        if (b < p.C) { sums[2 * b] = acc[0]; sums[2 * b + 1] = acc[1]; }
        else { sums[2 * b] = acc[2]; sums[2 * b + 1] = A(0); }
    }
}

// Flat index over (N, C, Ho, Wo) in thread order (channel fastest for cl).
__device__ __forceinline__ void ic_unflatten4(ic_i64 i, int C, int H, int W, int cl, int& n, int& c, int& h, int& w) {
    if (cl) { c = (int)(i % C); i /= C; w = (int)(i % W); i /= W; h = (int)(i % H); n = (int)(i / H); }
    else { w = (int)(i % W); i /= W; h = (int)(i % H); i /= H; c = (int)(i % C); n = (int)(i / C); }
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
        if (p.mode == 1) acc = IcTraits<T>::load(dst) - acc;
        else if (p.mode == 2) acc = IcTraits<T>::load(dst) + acc;
        IcTraits<T>::store(dst, acc);
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points (extern "C": plain names for cuModuleGetFunction and the emulation's table).

#define IC_DEFINE_ENTRIES(SUF, T)                                                                        \
    extern "C" __global__ void ic_fwd_box_##SUF(const T* y, const T* q, T* out, T* rz,                 \
                                                const IcTraits<T>::acc* shift, IcTraits<T>::acc alpha,  \
                                                const IcTraits<T>::acc* alpha_p, IcBoxParams p) {       \
        ic_fwd_box<T>(y, q, out, rz, shift, alpha, alpha_p, p);                                         \
    }                                                                                                   \
    extern "C" __global__ void ic_bwd_box_##SUF(const T* grad, const T* rz, T* gy, T* G,               \
                                                IcTraits<T>::acc alpha, const IcTraits<T>::acc* alpha_p,\
                                                IcTraits<T>::acc* partials, IcBoxParams p) {            \
        ic_bwd_box<T>(grad, rz, gy, G, alpha, alpha_p, partials, p);                                    \
    }                                                                                                   \
    extern "C" __global__ void ic_boxsum_##SUF(const T* x, T* s, IcBoxsumParams p) { ic_boxsum<T>(x, s, p); } \
    extern "C" __global__ void ic_boxsum_t_##SUF(const T* ds, T* out, IcBoxsumParams p) { ic_boxsum_t<T>(ds, out, p); }

IC_DEFINE_ENTRIES(f32, float)
IC_DEFINE_ENTRIES(f64, double)
IC_DEFINE_ENTRIES(f16, ic_f16)
IC_DEFINE_ENTRIES(bf16, ic_bf16)

extern "C" __global__ void ic_reduce_f32(const float* partials, float* sums, IcReduceParams p) { ic_reduce<float>(partials, sums, p); }
extern "C" __global__ void ic_reduce_f64(const double* partials, double* sums, IcReduceParams p) { ic_reduce<double>(partials, sums, p); }

// Every entry point, for the emulation's dispatch table and the PTX entry check.
#define IC_FOR_EACH_ENTRY(X)                                                                  \
    X(ic_fwd_box_f32) X(ic_fwd_box_f64) X(ic_fwd_box_f16) X(ic_fwd_box_bf16)                  \
    X(ic_bwd_box_f32) X(ic_bwd_box_f64) X(ic_bwd_box_f16) X(ic_bwd_box_bf16)                  \
    X(ic_boxsum_f32) X(ic_boxsum_f64) X(ic_boxsum_f16) X(ic_boxsum_bf16)                      \
    X(ic_boxsum_t_f32) X(ic_boxsum_t_f64) X(ic_boxsum_t_f16) X(ic_boxsum_t_bf16)              \
    X(ic_reduce_f32) X(ic_reduce_f64)
