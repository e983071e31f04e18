// AdaGC fused kernels (SPEC §1-3): one CUDA source, loaded into one cupy.RawModule.
//
// Three launches per step, none of them allocating or reading anything back to the host:
//
//   adagc_sumsq          sum of squares of every chunk of every tensor (one launch for all
//                        tensors; persistent grid; one partial per chunk, written by one block,
//                        so the result is deterministic without atomics or a memset);
//   adagc_finalize_{f32,f64}
//                        one block: per-tensor norms n_i from the partials (a warp per
//                        tensor, fixed order), the
//                        global norm G, the warmup/adaptive phase from the step counter k, the
//                        coefficients h_i, the gamma_i/seen update, the non-finite policy, k+1
//                        and the statistics;
//   adagc_scale_{f32,f64}
//                        g_i <- h_i g_i; a chunk whose tensor has h_i == 1 is skipped without
//                        touching its memory (in place), "zero" writes exact zeros.
//
// The suffix is the norm dtype N (float32 norms and gamma for float16/bfloat16/float32
// gradients, float64 when gamma is float64). Gradients of any of the four float dtypes can be
// mixed in one launch: each chunk switches on its tensor's dtype code.
//
// Paper symbols: lambda_rel, beta, T_start (= warmup_steps), lambda_abs, gamma_i, h_i.
//
// The host-side planner (adagc/backends/_cupy_plan.py) defines the compile-time constants and
// the metadata layout below; tests/kernels/emulate.py mirrors every loop of this file in NumPy.
//
// Metadata: one int64 array of 5T+1 entries, built once per parameter set:
//   [0, T)       data pointer of tensor i (lowest address of its dense memory; 0 if absent)
//   [T, 2T)      numel taking part (0 for absent, empty and repeated/tied tensors)
//   [2T, 3T)     info: dtype code (bits 0-7) | head (bits 8-15) | vector flag (bit 16)
//   [3T, 4T)     byte offset of tensor i's output from dst_base (out-of-place scaling)
//   [4T, 5T+1)   cumulative chunk table: tensor i owns chunks [start[i], start[i+1])

#include <cuda_fp16.h>
#include <cuda_bf16.h>

#if !defined(ADAGC_BLOCK) || !defined(ADAGC_CHUNK) || !defined(ADAGC_FINALIZE_BLOCK) || \
    !defined(ADAGC_UNROLL)
#error "compile with the -D options of adagc.backends._cupy_plan.compile_defines()"
#endif

#define ADAGC_F32 0
#define ADAGC_F16 1
#define ADAGC_BF16 2
#define ADAGC_F64 3

namespace adagc {

typedef long long i64;
typedef unsigned long long u64;

// ---------------------------------------------------------------------------------------
// IEEE float32 arithmetic without flush-to-zero. CuPy compiles every RawModule with
// -ftz=true; written as plain operators, a float32 sum of squares of tiny gradients would
// flush to 0 (a "zero" tensor) where NumPy, torch and the SPEC see a small positive norm.
// Separate mul and add (no FMA contraction) keep every rounding identical to NumPy's, so
// the NumPy mirror of these kernels is exact. float64 is never flushed.
// ---------------------------------------------------------------------------------------
__device__ __forceinline__ float f_add(float a, float b) {
    float r;
    asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float f_mul(float a, float b) {
    float r;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float f_div(float a, float b) {
    float r;
    asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float f_sqrt(float a) {
    float r;
    asm("sqrt.rn.f32 %0, %1;" : "=f"(r) : "f"(a));
    return r;
}
__device__ __forceinline__ double f_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double f_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double f_div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double f_sqrt(double a) { return __dsqrt_rn(a); }

__device__ __forceinline__ double widen(float a) {  // exact, denormals kept
    double r;
    asm("cvt.f64.f32 %0, %1;" : "=d"(r) : "f"(a));
    return r;
}
__device__ __forceinline__ float narrow(double a) {  // round to nearest, denormals kept
    float r;
    asm("cvt.rn.f32.f64 %0, %1;" : "=f"(r) : "d"(a));
    return r;
}

template <typename To> __device__ __forceinline__ To convert(float a);
template <typename To> __device__ __forceinline__ To convert(double a);
template <> __device__ __forceinline__ float convert<float>(float a) { return a; }
template <> __device__ __forceinline__ double convert<double>(float a) { return widen(a); }
template <> __device__ __forceinline__ float convert<float>(double a) { return narrow(a); }
template <> __device__ __forceinline__ double convert<double>(double a) { return a; }

// numpy.minimum: NaN in either operand gives NaN.
template <typename N> __device__ __forceinline__ N min_nan(N a, N b) {
    return (a < b || a != a) ? a : b;
}

// ---------------------------------------------------------------------------------------
// Element types: how a 16-byte vector is loaded, squared, scaled and stored.
// Acc is the accumulation type of the sum of squares (float32 for float32 and half types,
// float64 for float64, SPEC §3); Mul the type the coefficient multiplies in.
// ---------------------------------------------------------------------------------------
template <typename E> struct Elem;

template <> struct Elem<float> {
    typedef float Acc;
    enum { VW = 4 };
    static __device__ __forceinline__ float get(const float* p) { return *p; }
    static __device__ __forceinline__ void put(float* p, float v) { *p = v; }
    static __device__ __forceinline__ void get_vec(const float* p, float (&v)[VW]) {
        const float4 q = *reinterpret_cast<const float4*>(p);
        v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
    }
    static __device__ __forceinline__ void put_vec(float* p, const float (&v)[VW]) {
        *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    }
};

template <> struct Elem<double> {
    typedef double Acc;
    enum { VW = 2 };
    static __device__ __forceinline__ double get(const double* p) { return *p; }
    static __device__ __forceinline__ void put(double* p, double v) { *p = v; }
    static __device__ __forceinline__ void get_vec(const double* p, double (&v)[VW]) {
        const double2 q = *reinterpret_cast<const double2*>(p);
        v[0] = q.x; v[1] = q.y;
    }
    static __device__ __forceinline__ void put_vec(double* p, const double (&v)[VW]) {
        *reinterpret_cast<double2*>(p) = make_double2(v[0], v[1]);
    }
};

template <> struct Elem<__half> {
    typedef float Acc;
    enum { VW = 8 };
    static __device__ __forceinline__ float get(const __half* p) { return __half2float(*p); }
    static __device__ __forceinline__ void put(__half* p, float v) { *p = __float2half_rn(v); }
    static __device__ __forceinline__ void get_vec(const __half* p, float (&v)[VW]) {
        const uint4 q = *reinterpret_cast<const uint4*>(p);
        const __half2* h = reinterpret_cast<const __half2*>(&q);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const float2 f = __half22float2(h[k]);
            v[2 * k] = f.x;
            v[2 * k + 1] = f.y;
        }
    }
    static __device__ __forceinline__ void put_vec(__half* p, const float (&v)[VW]) {
        uint4 q;
        __half2* h = reinterpret_cast<__half2*>(&q);
#pragma unroll
        for (int k = 0; k < 4; ++k) h[k] = __floats2half2_rn(v[2 * k], v[2 * k + 1]);
        *reinterpret_cast<uint4*>(p) = q;
    }
};

template <> struct Elem<__nv_bfloat16> {
    typedef float Acc;
    enum { VW = 8 };
    static __device__ __forceinline__ float get(const __nv_bfloat16* p) {
        return __bfloat162float(*p);
    }
    static __device__ __forceinline__ void put(__nv_bfloat16* p, float v) {
        *p = __float2bfloat16_rn(v);
    }
    static __device__ __forceinline__ void get_vec(const __nv_bfloat16* p, float (&v)[VW]) {
        const uint4 q = *reinterpret_cast<const uint4*>(p);
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&q);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const float2 f = __bfloat1622float2(h[k]);
            v[2 * k] = f.x;
            v[2 * k + 1] = f.y;
        }
    }
    static __device__ __forceinline__ void put_vec(__nv_bfloat16* p, const float (&v)[VW]) {
        uint4 q;
        __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&q);
#pragma unroll
        for (int k = 0; k < 4; ++k) h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
        *reinterpret_cast<uint4*>(p) = q;
    }
};

// ---------------------------------------------------------------------------------------
// Metadata access and block reductions.
// ---------------------------------------------------------------------------------------
struct Meta {
    const i64* ptr;
    const i64* numel;
    const i64* info;
    const i64* dst_off;
    const i64* start;
    __device__ Meta(const i64* m, int T)
        : ptr(m), numel(m + T), info(m + 2 * (i64)T), dst_off(m + 3 * (i64)T),
          start(m + 4 * (i64)T) {}
};

__device__ __forceinline__ int dtype_code(i64 info) { return (int)(info & 0xff); }
__device__ __forceinline__ int head_of(i64 info) { return (int)((info >> 8) & 0xff); }
__device__ __forceinline__ bool vec_of(i64 info) { return ((info >> 16) & 1) != 0; }

// The tensor owning chunk c: the largest i with start[i] <= c (tensors without chunks have
// start[i] == start[i+1] and are never returned for a chunk they do not own).
__device__ __forceinline__ int tensor_of(const i64* start, int T, i64 c) {
    int lo = 0, hi = T - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (start[mid] <= c) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// Tree sum over a warp (lane 0 holds the result). The order is fixed: deterministic.
template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = f_add(v, __shfl_down_sync(0xffffffffu, v, off));
    return v;
}
__device__ __forceinline__ int warp_sum(int v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    return v;
}

// Sum over the block: each warp's tree, then warp 0's tree over the warp sums (zero-padded
// to 32 lanes). Valid in thread 0. Every thread of the block must call it.
template <int BLOCK, typename A> __device__ A block_sum(A v, A* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    A r = A(0);
    if (warp == 0) {
        r = (lane < BLOCK / 32) ? shared[lane] : A(0);
        r = warp_sum(r);
    }
    __syncthreads();  // the shared slots may be reused right after
    return r;
}

// ---------------------------------------------------------------------------------------
// One chunk [lo, hi) of one tensor. Element j of a tensor is 16-byte aligned when
// j = head (mod VW); chunks are CHUNK elements (a multiple of every VW) from the tensor's
// start, so every chunk has the same head. Layout of a chunk: a scalar head (< VW
// elements; all of the chunk when vector loads are impossible), whole 16-byte vectors, a
// scalar tail (< VW). Thread t takes head element t, vectors t, t+BLOCK, ... in order, then
// tail element t; the mirror in tests/kernels/emulate.py follows exactly this order.
// ---------------------------------------------------------------------------------------
template <typename E>
__device__ typename Elem<E>::Acc chunk_sumsq(const E* x, i64 lo, i64 hi, int head, bool vec) {
    typedef typename Elem<E>::Acc A;
    const int VW = Elem<E>::VW;
    const int t = threadIdx.x;
    const i64 n = hi - lo;
    const i64 h = vec ? (head < n ? (i64)head : n) : n;
    A acc = A(0);
    for (i64 k = t; k < h; k += ADAGC_BLOCK) {
        const A v = convert<A>(Elem<E>::get(x + lo + k));
        acc = f_add(acc, f_mul(v, v));
    }
    const i64 nv = (n - h) / VW;
    const E* body = x + lo + h;
    i64 j = t;
    // ADAGC_UNROLL vectors in flight per thread, accumulated in the same order as one by one.
    for (; j + (i64)(ADAGC_UNROLL - 1) * ADAGC_BLOCK < nv; j += (i64)ADAGC_UNROLL * ADAGC_BLOCK) {
        A v[ADAGC_UNROLL][VW];
#pragma unroll
        for (int u = 0; u < ADAGC_UNROLL; ++u)
            Elem<E>::get_vec(body + (j + (i64)u * ADAGC_BLOCK) * VW, v[u]);
#pragma unroll
        for (int u = 0; u < ADAGC_UNROLL; ++u) {
#pragma unroll
            for (int e = 0; e < VW; ++e) acc = f_add(acc, f_mul(v[u][e], v[u][e]));
        }
    }
    for (; j < nv; j += ADAGC_BLOCK) {
        A v[VW];
        Elem<E>::get_vec(body + j * VW, v);
#pragma unroll
        for (int e = 0; e < VW; ++e) acc = f_add(acc, f_mul(v[e], v[e]));
    }
    for (i64 k = h + nv * VW + t; k < n; k += ADAGC_BLOCK) {
        const A v = convert<A>(Elem<E>::get(x + lo + k));
        acc = f_add(acc, f_mul(v, v));
    }
    return acc;
}

// g <- g * h in the accumulation type (float32 for float32 and half types), or a copy
// (h == 1 out of place), or exact zeros: a store, never a multiply (0 * Inf is NaN).
enum Mode { kMul = 0, kCopy = 1, kZero = 2 };

template <typename E>
__device__ __forceinline__ void scale_one(const E* src, E* dst, i64 k, typename Elem<E>::Acc h,
                                          int mode) {
    if (mode == kZero) dst[k] = E(0.0f);
    else if (mode == kCopy) dst[k] = src[k];
    else Elem<E>::put(dst + k, f_mul(convert<typename Elem<E>::Acc>(Elem<E>::get(src + k)), h));
}

template <typename E>
__device__ void chunk_scale(const E* src, E* dst, i64 lo, i64 hi, int head, bool vec,
                            typename Elem<E>::Acc h, int mode) {
    typedef typename Elem<E>::Acc A;
    const int VW = Elem<E>::VW;
    const int t = threadIdx.x;
    const i64 n = hi - lo;
    const i64 h0 = vec ? (head < n ? (i64)head : n) : n;
    const i64 nv = (n - h0) / VW;
    for (i64 k = t; k < h0; k += ADAGC_BLOCK) scale_one(src, dst, lo + k, h, mode);
    const E* sb = src + lo + h0;
    E* db = dst + lo + h0;
    // ADAGC_UNROLL vectors in flight per thread, as in the sum of squares.
    const i64 step = (i64)ADAGC_UNROLL * ADAGC_BLOCK;
    i64 j = t;
    if (mode == kMul) {
        for (; j + (i64)(ADAGC_UNROLL - 1) * ADAGC_BLOCK < nv; j += step) {
            A v[ADAGC_UNROLL][VW];
#pragma unroll
            for (int u = 0; u < ADAGC_UNROLL; ++u)
                Elem<E>::get_vec(sb + (j + (i64)u * ADAGC_BLOCK) * VW, v[u]);
#pragma unroll
            for (int u = 0; u < ADAGC_UNROLL; ++u) {
#pragma unroll
                for (int e = 0; e < VW; ++e) v[u][e] = f_mul(v[u][e], h);
                Elem<E>::put_vec(db + (j + (i64)u * ADAGC_BLOCK) * VW, v[u]);
            }
        }
        for (; j < nv; j += ADAGC_BLOCK) {
            A v[VW];
            Elem<E>::get_vec(sb + j * VW, v);
#pragma unroll
            for (int e = 0; e < VW; ++e) v[e] = f_mul(v[e], h);
            Elem<E>::put_vec(db + j * VW, v);
        }
    } else {
        // Bits are moved as they are: a copy is bit-identical, and +0.0 is all zero bits in
        // every float format.
        const uint4* s4 = reinterpret_cast<const uint4*>(sb);
        uint4* d4 = reinterpret_cast<uint4*>(db);
        const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
        for (; j + (i64)(ADAGC_UNROLL - 1) * ADAGC_BLOCK < nv; j += step) {
            uint4 v[ADAGC_UNROLL];
#pragma unroll
            for (int u = 0; u < ADAGC_UNROLL; ++u)
                v[u] = (mode == kZero) ? zero : s4[j + (i64)u * ADAGC_BLOCK];
#pragma unroll
            for (int u = 0; u < ADAGC_UNROLL; ++u) d4[j + (i64)u * ADAGC_BLOCK] = v[u];
        }
        for (; j < nv; j += ADAGC_BLOCK) d4[j] = (mode == kZero) ? zero : s4[j];
    }
    for (i64 k = h0 + nv * VW + t; k < n; k += ADAGC_BLOCK) scale_one(src, dst, lo + k, h, mode);
}

template <typename E> __device__ __forceinline__ const E* as_ptr(i64 p) {
    return reinterpret_cast<const E*>((u64)p);
}

// ---------------------------------------------------------------------------------------
// The per-tensor and global logic of SPEC §1-3, one block (see _algorithm.generic_update,
// the oracle, and tests/kernels/emulate.py, its line-by-line NumPy mirror).
// ---------------------------------------------------------------------------------------
template <typename N>
__device__ void finalize(const i64* meta, int T, const double* partials, const i64* step_in,
                         const N* gamma_in, const unsigned char* seen_in, i64* step_out,
                         N* gamma_out, unsigned char* seen_out, N* norms, N* coef, N* gnorm,
                         N* cgnorm, i64* num_clipped, unsigned char* nonfinite,
                         unsigned char* warmup, N lambda_rel, N beta, N one_minus_beta,
                         N lambda_abs, N eps, i64 warmup_steps, int global_mode,
                         int zero_policy, int raw_warmup_gamma) {
    __shared__ N sh[ADAGC_FINALIZE_BLOCK / 32];
    __shared__ int sh_i[ADAGC_FINALIZE_BLOCK / 32];
    __shared__ N bcast;
    const Meta m(meta, T);
    const int tid = threadIdx.x;
    // Everything read from the state is read before the first barrier; it is written (maybe
    // in place) only after it, by the thread that read it (thread 0 for k and global gamma).
    const i64 step = step_in[0];
    const bool warm = step < warmup_steps;  // the phase, decided on the device from k
    N gamma_g = N(0);
    bool seen_g = false;
    if (global_mode) {
        gamma_g = gamma_in[0];
        seen_g = seen_in[0] != 0;
    }

    // Pass 1: n_i^2 from the partials of tensor i. One warp per tensor: lane l adds chunks
    // c0+l, c0+l+32, ... in order, then the warp's tree (GPT-2's embedding has 589 chunks,
    // 1e9 parameters' 1,572: 19 or 50 loads per lane, not that many dependent ones in one
    // thread). Lane 0 of each warp keeps the running sum of its tensors' n_i^2, in order.
    const int lane = tid & 31, warp = tid >> 5;
    N g2_local = N(0);
    int bad_local = 0;
    for (int i = warp; i < T; i += ADAGC_FINALIZE_BLOCK / 32) {  // warp-uniform
        const i64 c0 = m.start[i], c1 = m.start[i + 1];
        N sq;
        if (dtype_code(m.info[i]) == ADAGC_F64) {
            double s = 0.0;
            for (i64 c = c0 + lane; c < c1; c += 32) s = f_add(s, partials[c]);
            sq = convert<N>(warp_sum(s));
        } else {
            float s = 0.0f;
            for (i64 c = c0 + lane; c < c1; c += 32) s = f_add(s, narrow(partials[c]));
            sq = convert<N>(warp_sum(s));
        }
        if (lane == 0) {
            norms[i] = f_sqrt(sq);  // read by another thread in pass 2, after the barriers
            g2_local = f_add(g2_local, sq);
            bad_local |= !isfinite(sq);
        }
    }
    N g2 = block_sum<ADAGC_FINALIZE_BLOCK>(g2_local, sh);
    const int any_bad = __syncthreads_or(bad_local);
    if (tid == 0) bcast = g2;
    __syncthreads();
    g2 = bcast;
    const bool bad = any_bad != 0 || !isfinite(g2);  // a float32 overflow of G^2 counts too
    const N G = f_sqrt(g2);
    const N h_warm = min_nan(f_div(lambda_abs, f_add(G, eps)), N(1));
    // AdaGC-Global: one threshold for G.
    const bool g_obs = G > N(0);
    const N t_g = f_mul(lambda_rel, gamma_g);
    const bool clip_g = g_obs && seen_g && G > t_g;
    const N h_adapt_g = clip_g ? f_div(t_g, f_add(G, eps)) : N(1);
    const N fill = zero_policy ? N(0) : N(1);

    // Pass 2: h_i, gamma_i, seen_i.
    N cg2_local = N(0);
    int clipped_local = 0;
    for (int i = tid; i < T; i += ADAGC_FINALIZE_BLOCK) {
        const N n = norms[i];
        const bool observed = n > N(0);  // zero, absent, empty, tied repeat, NaN: not observed
        N c;
        if (!global_mode) {
            const N gamma = gamma_in[i];
            const bool seen = seen_in[i] != 0;
            // Warmup: global-norm clipping; gamma_i = running minimum of h * n_i
            // (warmup_gamma="clipped") or of n_i ("raw").
            const N cw = raw_warmup_gamma ? n : f_mul(h_warm, n);
            const N gamma_w = seen ? min_nan(gamma, cw) : cw;
            // Adaptive: t_i = lambda_rel * gamma_i; clip above t_i; EMA of min(n_i, t_i).
            const N t = f_mul(lambda_rel, gamma);
            const bool clip = observed && seen && n > t;
            const N h_adapt = clip ? f_div(t, f_add(n, eps)) : N(1);
            const N gamma_a =
                seen ? f_add(f_mul(beta, gamma), f_mul(one_minus_beta, min_nan(n, t))) : n;
            c = observed ? (warm ? h_warm : h_adapt) : N(1);
            const N gamma_new = observed ? (warm ? gamma_w : gamma_a) : gamma;
            const bool seen_new = seen || observed;
            gamma_out[i] = bad ? gamma : gamma_new;  // a non-finite step changes no state
            seen_out[i] = (bad ? seen : seen_new) ? 1 : 0;
        } else {
            c = observed ? (warm ? h_warm : h_adapt_g) : N(1);
        }
        const N applied = bad ? fill : c;
        coef[i] = applied;
        clipped_local += (c < N(1) && !bad) ? 1 : 0;
        const N hn = f_mul(applied, n);
        cg2_local = f_add(cg2_local, f_mul(hn, hn));
    }
    const N cg2 = block_sum<ADAGC_FINALIZE_BLOCK>(cg2_local, sh);
    int clipped = warp_sum(clipped_local);
    if ((tid & 31) == 0) sh_i[tid >> 5] = clipped;
    __syncthreads();
    if (tid == 0) {
        clipped = 0;
        for (int w = 0; w < ADAGC_FINALIZE_BLOCK / 32; ++w) clipped += sh_i[w];
        gnorm[0] = G;
        cgnorm[0] = f_sqrt(cg2);
        num_clipped[0] = clipped;
        nonfinite[0] = bad ? 1 : 0;
        warmup[0] = warm ? 1 : 0;
        if (global_mode) {
            const N mg = raw_warmup_gamma ? G : min_nan(G, lambda_abs);
            const N gamma_w = seen_g ? min_nan(gamma_g, mg) : mg;
            const N gamma_a =
                seen_g ? f_add(f_mul(beta, gamma_g), f_mul(one_minus_beta, min_nan(G, t_g))) : G;
            const N gamma_new = g_obs ? (warm ? gamma_w : gamma_a) : gamma_g;
            const bool seen_new = seen_g || g_obs;
            gamma_out[0] = bad ? gamma_g : gamma_new;
            seen_out[0] = (bad ? seen_g : seen_new) ? 1 : 0;
        }
        step_out[0] = bad ? step : step + 1;  // k counts finite steps
    }
}

template <typename N>
__device__ void scale(const i64* meta, int T, i64 chunk_begin, i64 chunk_end, const N* coef,
                      const unsigned char* nonfinite, int zero_policy, u64 dst_base) {
    const Meta m(meta, T);
    const bool zero = zero_policy && nonfinite[0] != 0;
    const bool inplace = dst_base == 0;
    for (i64 c = chunk_begin + blockIdx.x; c < chunk_end; c += gridDim.x) {
        const int i = tensor_of(m.start, T, c);
        const N h = coef[i];
        // Coefficient 1 in place: this chunk is neither read nor written (SPEC §3 skipping).
        if (!zero && inplace && h == N(1)) continue;
        const int mode = zero ? kZero : (h == N(1) ? kCopy : kMul);
        const i64 info = m.info[i];
        const i64 lo = (c - m.start[i]) * (i64)ADAGC_CHUNK;
        const i64 hi = min(lo + (i64)ADAGC_CHUNK, m.numel[i]);
        const u64 src = (u64)m.ptr[i];
        const u64 dst = inplace ? src : dst_base + (u64)m.dst_off[i];
        // Vector stores need the output in the same 16-byte phase as the input.
        const bool vec = vec_of(info) && ((dst - src) & 15u) == 0;
        const int head = head_of(info);
        switch (dtype_code(info)) {
            case ADAGC_F32:
                chunk_scale<float>((const float*)src, (float*)dst, lo, hi, head, vec,
                                   convert<float>(h), mode);
                break;
            case ADAGC_F16:
                chunk_scale<__half>((const __half*)src, (__half*)dst, lo, hi, head, vec,
                                    convert<float>(h), mode);
                break;
            case ADAGC_BF16:
                chunk_scale<__nv_bfloat16>((const __nv_bfloat16*)src, (__nv_bfloat16*)dst, lo,
                                           hi, head, vec, convert<float>(h), mode);
                break;
            default:
                chunk_scale<double>((const double*)src, (double*)dst, lo, hi, head, vec,
                                    convert<double>(h), mode);
                break;
        }
    }
}

}  // namespace adagc

// ---------------------------------------------------------------------------------------
// Entry points. Pointers arrive as 64-bit integers from any framework (CuPy, torch, Paddle).
// ---------------------------------------------------------------------------------------
using adagc::i64;
using adagc::u64;

extern "C" __global__ void __launch_bounds__(ADAGC_BLOCK)
adagc_sumsq(const i64* __restrict__ meta, int T, i64 chunk_begin, i64 chunk_end,
            double* __restrict__ partials) {
    __shared__ float sh_f[ADAGC_BLOCK / 32];
    __shared__ double sh_d[ADAGC_BLOCK / 32];
    const adagc::Meta m(meta, T);
    // Persistent grid: each block walks the chunks; exactly one block writes partials[c].
    for (i64 c = chunk_begin + blockIdx.x; c < chunk_end; c += gridDim.x) {
        const int i = adagc::tensor_of(m.start, T, c);
        const i64 info = m.info[i];
        const i64 lo = (c - m.start[i]) * (i64)ADAGC_CHUNK;
        const i64 hi = min(lo + (i64)ADAGC_CHUNK, m.numel[i]);
        const int head = adagc::head_of(info);
        const bool vec = adagc::vec_of(info);
        const i64 p = m.ptr[i];
        double result;
        switch (adagc::dtype_code(info)) {
            case ADAGC_F32: {
                const float a = adagc::chunk_sumsq(adagc::as_ptr<float>(p), lo, hi, head, vec);
                result = adagc::widen(adagc::block_sum<ADAGC_BLOCK>(a, sh_f));
                break;
            }
            case ADAGC_F16: {
                const float a = adagc::chunk_sumsq(adagc::as_ptr<__half>(p), lo, hi, head, vec);
                result = adagc::widen(adagc::block_sum<ADAGC_BLOCK>(a, sh_f));
                break;
            }
            case ADAGC_BF16: {
                const float a =
                    adagc::chunk_sumsq(adagc::as_ptr<__nv_bfloat16>(p), lo, hi, head, vec);
                result = adagc::widen(adagc::block_sum<ADAGC_BLOCK>(a, sh_f));
                break;
            }
            default: {
                const double a = adagc::chunk_sumsq(adagc::as_ptr<double>(p), lo, hi, head, vec);
                result = adagc::block_sum<ADAGC_BLOCK>(a, sh_d);
                break;
            }
        }
        if (threadIdx.x == 0) partials[c] = result;
    }
}

#define ADAGC_FINALIZE(SUFFIX, N)                                                               \
    extern "C" __global__ void __launch_bounds__(ADAGC_FINALIZE_BLOCK) adagc_finalize_##SUFFIX( \
        const i64* meta, int T, const double* partials, const i64* step_in, const N* gamma_in, \
        const unsigned char* seen_in, i64* step_out, N* gamma_out, unsigned char* seen_out,     \
        N* norms, N* coef, N* gnorm, N* cgnorm, i64* num_clipped, unsigned char* nonfinite,     \
        unsigned char* warmup, N lambda_rel, N beta, N one_minus_beta, N lambda_abs, N eps,     \
        i64 warmup_steps, int global_mode, int zero_policy, int raw_warmup_gamma) {             \
        adagc::finalize<N>(meta, T, partials, step_in, gamma_in, seen_in, step_out, gamma_out,  \
                           seen_out, norms, coef, gnorm, cgnorm, num_clipped, nonfinite,        \
                           warmup, lambda_rel, beta, one_minus_beta, lambda_abs, eps,           \
                           warmup_steps, global_mode, zero_policy, raw_warmup_gamma);           \
    }

#define ADAGC_SCALE(SUFFIX, N)                                                                  \
    extern "C" __global__ void __launch_bounds__(ADAGC_BLOCK) adagc_scale_##SUFFIX(             \
        const i64* meta, int T, i64 chunk_begin, i64 chunk_end, const N* coef,                  \
        const unsigned char* nonfinite, int zero_policy, u64 dst_base) {                        \
        adagc::scale<N>(meta, T, chunk_begin, chunk_end, coef, nonfinite, zero_policy,          \
                        dst_base);                                                              \
    }

ADAGC_FINALIZE(f32, float)
ADAGC_FINALIZE(f64, double)
ADAGC_SCALE(f32, float)
ADAGC_SCALE(f64, double)
