/* fastbptt's own float32 gemm: the float32 kernels' per-step products and their hoisted
 * products, every size (``matmul`` in _products.pxi; float64 goes to BLAS).
 *
 *     C (m x n, row-major, ldc)  =  or  +=  op(A) (m x k) . B (k x n)
 *
 * A time loop multiplies by the same B (W_hhᵀ forward, W_hh backward) at every step. BLAS
 * repacks B at each of those calls and meets its thread team for ~1 MFLOP of work; here B
 * is packed once per kernel call into panels of NR columns (panel p: k rows of NR floats,
 * contiguous, zero-padded past n; NR = 32 floats, or 64 for a wide B in the AVX-512 build:
 * fb_panel_vectors) and each step runs a register-tiled micro-kernel
 * straight from A's rows (fb_gemm). The hoisted products (input projection, dx, dW) pack
 * their B as they go, a chunk of its rows at a time (fb_matmul, fb_pack_rows); dW's A is δᵀ,
 * copied a block at a time (fb_pack_a), and dW_ih and dW_hh, one δᵀ times two B's, share
 * each block where that pays (fb_matmul_pair). Those with a side of a few columns (a few
 * inputs, one output) pack nothing and run in axpy or dot-product form instead
 * (fb_matmul_narrow).
 * One OpenMP team serves them all: blocks of rows are shared among its threads when there
 * are enough of them, else the panels (a time step's few batch rows).
 *
 * Measured on this project's 2-core AVX-512 machines, 2 threads, against scipy's OpenBLAS
 * on the same products: per step, 32x128 @ 128x512 at 191-207 GFLOP/s against 137, 32x128 @
 * 128x128 at 172-212 against 104, 64x1024 @ 1024x4096 at 201-215 against 165; hoisted,
 * 3200x256 @ 256x2048 at 199 against 158, 4096x1600 @ 1600x1024 (a dW) at 196 against 189.
 *
 * Written with GCC/Clang vector extensions, so one source serves every build of
 * _kernels.pyx (setup.py): the vector width and tile follow the instruction set compiled for.
 * Each element of C is summed in the same order however the work is split among threads.
 */
#ifndef FASTBPTT_STEP_GEMM_H
#define FASTBPTT_STEP_GEMM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* FB_VW floats per vector register, FB_NV vectors across a panel, FB_MR rows per register
 * tile: FB_MR * FB_NV accumulators plus FB_NV + 1 operands fit the register file (32 zmm;
 * 16 ymm or xmm). */
#if defined(__AVX512F__)
#define FB_VW 16
#define FB_MR 8
#elif defined(__AVX__)
#define FB_VW 8
#define FB_MR 6
#else
#define FB_VW 4
#define FB_MR 6
#endif
#define FB_NV 2
#define FB_NR (FB_NV * FB_VW)
/* AVX-512 builds pack a B of at least FB_WIDE_MIN columns in wide panels of FB_WIDE_NV
 * vectors (64 floats), multiplied by tiles of FB_WIDE_MR rows: 24 accumulators fed by 6
 * broadcasts and 4 panel loads per 24 multiply-adds, where the 8 x 32 tile has 8 and 2 per
 * 16. Measured on a Zen 4 (2 threads, per-step shapes, alternating): 64x1024 @ 1024x4096
 * 198-205 -> 212-214 GFLOP/s, 1600x1024 @ 1024x4096 193-199 -> 205-210, 64x256 @ 256x1024
 * +4 %; 64x1024 @ 1024x256 1.5 % slower and 32x384 @ 384x128 (a GRU step's backward) 15 %
 * slower, hence the narrow panels below FB_WIDE_MIN columns. The same tile reading two
 * neighbouring 32-column panels gained nothing: the gain is the contiguous 256-byte row. */
#if FB_VW == 16
#define FB_WIDE_NV 4
#define FB_WIDE_MR 6
#define FB_WIDE_MIN 512
#endif
/* Packed panels are aligned to this many bytes (the widest vector). */
#define FB_ALIGN 64

typedef float fb_vf __attribute__((vector_size(FB_VW * 4)));                 /* aligned */
typedef float fb_vfu __attribute__((vector_size(FB_VW * 4), aligned(4)));    /* unaligned */

/* The calling thread's cap on its team for the current kernel call (0: none; _team.pxi). */
static __thread int fb_thread_cap = 0;

/* The team size OpenMP gives the calling thread's parallel regions (OMP_NUM_THREADS,
   threadpoolctl, set_num_threads), before any cap. */
static int fb_team_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* How many threads this call's products and loops share: the team, or fewer when capped. */
static int fb_max_threads(void) {
    int n = fb_team_threads();
    return fb_thread_cap > 0 && fb_thread_cap < n ? fb_thread_cap : n;
}

/* Cap the calling thread's team at n threads for what it runs next (0 lifts the cap). */
static void fb_cap_threads(int n) {
    fb_thread_cap = n;
}

/* Set the team size of the calling thread's later parallel regions (every build of the
   kernels shares one OpenMP runtime, so one call serves them all). */
static void fb_set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

/* Whether a B of n columns is packed in wide panels (FB_WIDE_NV vectors; else FB_NV). The
 * layout is a function of n alone, so that packing and product agree without being told. */
static inline int fb_wide(ptrdiff_t n) {
#ifdef FB_WIDE_NV
    return n >= FB_WIDE_MIN;
#else
    (void)n;
    return 0;
#endif
}

/* Vectors across a panel of a packed B of n columns. */
static inline int fb_panel_vectors(ptrdiff_t n) {
#ifdef FB_WIDE_NV
    if (fb_wide(n)) return FB_WIDE_NV;
#endif
    return FB_NV;
}

/* Floats in the packed form of a k x n operand. */
static size_t fb_packed_size(ptrdiff_t n, ptrdiff_t k) {
    ptrdiff_t nr = fb_panel_vectors(n) * FB_VW;
    return (size_t)((n + nr - 1) / nr) * (size_t)k * nr;
}

/* A square tile of FB_VW x FB_VW floats, one row a vector, transposed in registers: four
 * (AVX-512), three (AVX) or two (baseline) rounds, round s exchanging bit s of the row and
 * column indices between the rows r and r + s (r & s == 0) with two two-vector shuffles. */
#define FB_LIST(...) __VA_ARGS__
#define FB_XCHG(S, LO, HI)                                                                  \
    for (int r = 0; r < FB_VW; r++)                                                         \
        if (!(r & (S))) {                                                                   \
            fb_vf lo = __builtin_shufflevector(t[r], t[r + (S)], FB_LIST LO);               \
            fb_vf hi = __builtin_shufflevector(t[r], t[r + (S)], FB_LIST HI);               \
            t[r] = lo;                                                                      \
            t[r + (S)] = hi;                                                                \
        }
static inline __attribute__((always_inline)) void fb_transpose_tile(fb_vf* t) {
#if FB_VW == 16
    FB_XCHG(8, (0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
               (8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31))
    FB_XCHG(4, (0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27),
               (4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31))
    FB_XCHG(2, (0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29),
               (2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31))
    FB_XCHG(1, (0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30),
               (1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31))
#elif FB_VW == 8
    FB_XCHG(4, (0, 1, 2, 3, 8, 9, 10, 11),
               (4, 5, 6, 7, 12, 13, 14, 15))
    FB_XCHG(2, (0, 1, 8, 9, 4, 5, 12, 13),
               (2, 3, 10, 11, 6, 7, 14, 15))
    FB_XCHG(1, (0, 8, 2, 10, 4, 12, 6, 14),
               (1, 9, 3, 11, 5, 13, 7, 15))
#else
    FB_XCHG(2, (0, 1, 4, 5),
               (2, 3, 6, 7))
    FB_XCHG(1, (0, 4, 2, 6),
               (1, 5, 3, 7))
#endif
}
#undef FB_XCHG
#undef FB_LIST

/* Pack B = Wᵀ, W (n x k) row-major with leading dimension ldw: out[p][kk][j] = W[p*NR + j][kk],
 * NR = fb_panel_vectors(n) * FB_VW. A panel is NR / FB_VW column strips of FB_VW of W's rows;
 * each strip is read FB_VW x FB_VW floats at a time (a vector from each row: contiguous
 * loads), transposed in registers and stored as FB_VW aligned vectors of the panel's rows
 * kk. Rows past n are zero; the last k % FB_VW columns are copied one by one. Panels are
 * shared among threads. */
static void fb_pack_transposed(const float* w, ptrdiff_t n, ptrdiff_t k, ptrdiff_t ldw,
                               float* out, int threads) {
    int nv = fb_panel_vectors(n);
    ptrdiff_t nr = nv * FB_VW, panels = (n + nr - 1) / nr, k0 = k - k % FB_VW;
    if (threads > panels) threads = (int)panels;
#ifdef _OPENMP
    #pragma omp parallel for schedule(static) num_threads(threads) if(threads > 1 && n * k >= 65536)
#endif
    for (ptrdiff_t p = 0; p < panels; p++) {
        float* dst = out + (size_t)p * k * nr;
        for (int v = 0; v < nv; v++) {
            ptrdiff_t row0 = p * nr + v * FB_VW;
            ptrdiff_t rows = n - row0 < FB_VW ? (n - row0 > 0 ? n - row0 : 0) : FB_VW;
            for (ptrdiff_t kk = 0; kk < k0; kk += FB_VW) {
                fb_vf t[FB_VW];
                for (int r = 0; r < FB_VW; r++)
                    t[r] = r < rows ? (fb_vf)*(const fb_vfu*)(w + (row0 + r) * ldw + kk)
                                    : (fb_vf){0};
                fb_transpose_tile(t);
                for (int c = 0; c < FB_VW; c++)
                    *(fb_vf*)(dst + (kk + c) * nr + v * FB_VW) = t[c];
            }
            for (int r = 0; r < FB_VW; r++)
                for (ptrdiff_t kk = k0; kk < k; kk++)
                    dst[kk * nr + v * FB_VW + r] = r < rows ? w[(row0 + r) * ldw + kk] : 0.0f;
        }
    }
}

/* A whole panel's k row segments of NV vectors, moved as vectors. */
static inline __attribute__((always_inline)) void fb_copy_panel(
        const float* w, ptrdiff_t k, ptrdiff_t ldw, float* dst, int nv) {
    for (ptrdiff_t kk = 0; kk < k; kk++)
        for (int v = 0; v < nv; v++)
            *(fb_vf*)(dst + kk * nv * FB_VW + v * FB_VW) =
                (fb_vf)*(const fb_vfu*)(w + kk * ldw + v * FB_VW);
}

/* Pack B = W, W (k x n) row-major with leading dimension ldw: out[p][kk][j] = W[kk][p*NR + j],
 * a row segment at a time: a whole panel's vectors moved as vectors (memcpy's call, for the
 * 128 bytes of a row segment, had cost more than the copy: 4 % of a small Elman backward's
 * time), a last panel's narrower segment copied and zero-padded. Panels are shared among
 * threads. */
static void fb_pack(const float* w, ptrdiff_t n, ptrdiff_t k, ptrdiff_t ldw, float* out,
                    int threads) {
    int nv = fb_panel_vectors(n);
    ptrdiff_t nr = nv * FB_VW, panels = (n + nr - 1) / nr;
    if (threads > panels) threads = (int)panels;
#ifdef _OPENMP
    #pragma omp parallel for schedule(static) num_threads(threads) if(threads > 1 && n * k >= 65536)
#endif
    for (ptrdiff_t p = 0; p < panels; p++) {
        float* dst = out + (size_t)p * k * nr;
        ptrdiff_t cols = n - p * nr < nr ? n - p * nr : nr;
        if (cols == nr) {   /* a constant count of vectors per copy */
#ifdef FB_WIDE_NV
            if (nv == FB_WIDE_NV) {
                fb_copy_panel(w + p * nr, k, ldw, dst, FB_WIDE_NV);
                continue;
            }
#endif
            fb_copy_panel(w + p * nr, k, ldw, dst, FB_NV);
            continue;
        }
        for (ptrdiff_t kk = 0; kk < k; kk++) {
            memcpy(dst + kk * nr, w + kk * ldw + p * nr, (size_t)cols * sizeof(float));
            for (ptrdiff_t j = cols; j < nr; j++) dst[kk * nr + j] = 0.0f;
        }
    }
}

/* The micro-kernel: R rows of C times NV vectors of one panel block, C[r][:cols] (+)=
 * sum_kk A[r][kk] b[kk][:], kk < k. One broadcast of A and NV panel loads per kk feed R * NV
 * fused multiply-adds; the panel's rows are NR floats apart. NV is the panel's vectors, or
 * fewer for a last panel of fewer columns (n = 100 is three panels and 4 columns at NR = 32:
 * a one-vector kernel skips the padding's half).
 * AIDX reads A[r][kk]: from A's rows (a[r * lda + kk]) or from a transposed A whose rows are
 * A's columns (a[kk * lda + r], the δᵀ of the weight gradients).
 * The tile's lines of C are prefetched for writing as it starts, to arrive during its k
 * multiply-adds: a wide C (a block's rows by many panels, 64 x 10000 for a 10,000-word
 * readout) is written a few lines per row and panel, more streams than the hardware
 * prefetchers follow, so without it every tile stalled on its stores' misses. Measured
 * in-process, alternating, 2 threads: 700x256 @ 256x10000 0.79-0.82x of the time, 3200x256
 * @ 256x2048 0.83-0.85x, 1600x1024 @ 1024x4096 0.89x; products whose C stays in cache
 * (a time step's, a dW's) 0.95-1.01x. */
#define FB_TILE(R, NV, NR, NAME, AIDX)                                                      \
static inline __attribute__((always_inline)) void NAME(                                   \
        ptrdiff_t k, const float* __restrict a, ptrdiff_t lda, const float* __restrict b,   \
        float* __restrict c, ptrdiff_t ldc, ptrdiff_t cols, int accumulate) {              \
    fb_vf acc[R][NV];                                                                       \
    _Pragma("GCC unroll 16") for (int r = 0; r < R; r++) {                                  \
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) {                              \
            acc[r][v] = (fb_vf){0};                                                         \
            __builtin_prefetch(c + r * ldc + v * FB_VW, 1, 3);                              \
        }                                                                                   \
    }                                                                                       \
    for (ptrdiff_t kk = 0; kk < k; kk++) {                                                  \
        fb_vf bv[NV];                                                                       \
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                \
            bv[v] = *(const fb_vf*)(b + kk * NR + v * FB_VW);                               \
        _Pragma("GCC unroll 16") for (int r = 0; r < R; r++) {                              \
            /* scalar - vector broadcasts; x - 0 folds away, 0 + x would not (-0.0) */      \
            fb_vf ar = a[AIDX] - (fb_vf){0};                                                \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) acc[r][v] += ar * bv[v];   \
        }                                                                                   \
    }                                                                                       \
    if (cols == NV * FB_VW) {                                                               \
        _Pragma("GCC unroll 16") for (int r = 0; r < R; r++)                                \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) {                          \
                fb_vfu* out = (fb_vfu*)(c + r * ldc + v * FB_VW);                           \
                if (accumulate) *out += acc[r][v]; else *out = acc[r][v];                   \
            }                                                                               \
    } else {                                                                                \
        float row[NV * FB_VW] __attribute__((aligned(FB_ALIGN)));                          \
        for (int r = 0; r < R; r++) {                                                       \
            for (int v = 0; v < NV; v++) *(fb_vf*)(row + v * FB_VW) = acc[r][v];            \
            float* out = c + r * ldc;                                                       \
            if (accumulate) for (ptrdiff_t j = 0; j < cols; j++) out[j] += row[j];          \
            else for (ptrdiff_t j = 0; j < cols; j++) out[j] = row[j];                      \
        }                                                                                   \
    }                                                                                       \
}

/* The narrow panels' kernels: fb_tile_R (A's rows), fb_tilet_R (A transposed), and their
 * one-vector forms fb_tile1_R, fb_tile1t_R. */
#define FB_TILES(R)                                                                         \
    FB_TILE(R, FB_NV, FB_NR, fb_tile_##R, r * lda + kk)                                     \
    FB_TILE(R, FB_NV, FB_NR, fb_tilet_##R, kk * lda + r)                                    \
    FB_TILE(R, 1, FB_NR, fb_tile1_##R, r * lda + kk)                                        \
    FB_TILE(R, 1, FB_NR, fb_tile1t_##R, kk * lda + r)
FB_TILES(1) FB_TILES(2) FB_TILES(3) FB_TILES(4) FB_TILES(5) FB_TILES(6) FB_TILES(7) FB_TILES(8)

/* R rows of C against one panel: the kernel for A's orientation and the panel's width. */
#define FB_RUN(R, a_transposed, narrow, k, a, lda, b, c, ldc, cols, accumulate) do {       \
        if (narrow) {                                                                       \
            if (a_transposed) fb_tile1t_##R(k, a, lda, b, c, ldc, cols, accumulate);        \
            else fb_tile1_##R(k, a, lda, b, c, ldc, cols, accumulate);                      \
        } else {                                                                            \
            if (a_transposed) fb_tilet_##R(k, a, lda, b, c, ldc, cols, accumulate);         \
            else fb_tile_##R(k, a, lda, b, c, ldc, cols, accumulate);                       \
        }                                                                                   \
    } while (0)

#define FB_CASE(R) case R:                                                                  \
    FB_RUN(R, a_transposed, narrow, k, a, lda, b, c, ldc, cols, accumulate); break;

/* rows (< FB_MR) rows of C: the tail of a block. */
static __attribute__((noinline)) void fb_tile_rows(
        int rows, int a_transposed, ptrdiff_t k, const float* a, ptrdiff_t lda, const float* b,
        float* c, ptrdiff_t ldc, ptrdiff_t cols, int accumulate) {
    int narrow = cols <= FB_VW;
    switch (rows) {
        FB_CASE(1) FB_CASE(2) FB_CASE(3) FB_CASE(4) FB_CASE(5) FB_CASE(6) FB_CASE(7)
        default: break;
    }
}

#define FB_FULL_(R, ...) FB_RUN(R, __VA_ARGS__)
#define FB_FULL(...) FB_FULL_(FB_MR, __VA_ARGS__)

#ifdef FB_WIDE_NV
#if FB_WIDE_NV != 4 || FB_WIDE_MR != 6
#error "the wide kernels below are written out for 6 rows by 4 vectors"
#endif
/* The wide panels' kernels, R rows by NV vectors: fb_wtileNV_R (A's rows) and fb_wtileNVt_R
 * (A transposed); NV < FB_WIDE_NV for a last panel of fewer columns. */
#define FB_WTILES_NV(R, NV)                                                                 \
    FB_TILE(R, NV, FB_WIDE_NV * FB_VW, fb_wtile##NV##_##R, r * lda + kk)                    \
    FB_TILE(R, NV, FB_WIDE_NV * FB_VW, fb_wtile##NV##t_##R, kk * lda + r)
#define FB_WTILES(R) FB_WTILES_NV(R, 1) FB_WTILES_NV(R, 2) FB_WTILES_NV(R, 3) FB_WTILES_NV(R, 4)
FB_WTILES(1) FB_WTILES(2) FB_WTILES(3) FB_WTILES(4) FB_WTILES(5) FB_WTILES(6)

#define FB_WRUN(R, NV) do {                                                                 \
        if (a_transposed) fb_wtile##NV##t_##R(k, a, lda, b, c, ldc, cols, accumulate);      \
        else fb_wtile##NV##_##R(k, a, lda, b, c, ldc, cols, accumulate);                    \
    } while (0)
#define FB_WCASE(R) case R:                                                                 \
    switch (nv) {                                                                           \
        case 1: FB_WRUN(R, 1); break;                                                       \
        case 2: FB_WRUN(R, 2); break;                                                       \
        case 3: FB_WRUN(R, 3); break;                                                       \
        default: FB_WRUN(R, 4); break;                                                      \
    }                                                                                       \
    break;

/* rows (<= FB_WIDE_MR) rows of C against a wide panel of cols columns: a block's last tiles,
   or a last panel of fewer columns. */
static __attribute__((noinline)) void fb_wide_tile_rows(
        int rows, int a_transposed, ptrdiff_t k, const float* a, ptrdiff_t lda, const float* b,
        float* c, ptrdiff_t ldc, ptrdiff_t cols, int accumulate) {
    int nv = (int)((cols + FB_VW - 1) / FB_VW);
    switch (rows) {
        FB_WCASE(1) FB_WCASE(2) FB_WCASE(3) FB_WCASE(4) FB_WCASE(5) FB_WCASE(6)
        default: break;
    }
}
#undef FB_WCASE
#endif

/* Rows per register tile over a B of n columns packed as fb_panel_vectors(n) says. */
static inline int fb_tile_height(ptrdiff_t n) {
#ifdef FB_WIDE_NV
    if (fb_wide(n)) return FB_WIDE_MR;
#endif
    (void)n;
    return FB_MR;
}

/* The height of the register tile that starts `left` rows before the end of a block of rows,
 * tiles of at most mr rows. Over wide panels a block's last mr + 1 to mr + 3 rows are two
 * tiles of about half each (8 rows: 4 + 4, where 6 + 2 ran the two-row tile at half the
 * loads' worth of multiply-adds); the narrow tile keeps its plain remainder. */
static inline int fb_next_tile(ptrdiff_t left, int mr, int balance) {
    if (left <= mr) return (int)left;
    if (balance && left < mr + 4) return (int)(left + 1) / 2;
    return mr;
}

/* k is walked in blocks of FB_KC: a block of a panel (FB_KC x NR floats, 32 KB at NR = 32,
 * 64 KB at 64) is reused by every row tile of a block of rows (FB_BLOCK_ROWS), whose
 * rows x FB_KC elements of A stay in L2 while every panel takes its turn. FB_KC is also
 * where each element's sum is grouped (a block's sum is added to C), so it is the same for
 * every panel width: the same bits whichever layout a product runs on. */
#define FB_KC 256
#define FB_MC (8 * FB_MR)
/* Rows per block for tiles of mr rows (FB_MC for the narrow tile; 48 for the wide, where
   its 64 x FB_KC floats of A would crowd L2 beside the panel block). */
#define FB_BLOCK_ROWS(mr) (8 * (mr))
/* Products of fewer multiply-adds run on one thread: below this, meeting the team costs more
 * than it saves (25x65 @ 65x100, 162K: 9 µs on one thread, 16-18 on two; 32x128 @ 128x128,
 * 524K: 9.5 on one, 6.1 on two). */
#define FB_PARALLEL_MIN (256 * 1024)
/* fb_matmul packs B this many of its k rows at a time, or for a narrow B as many more whole
 * FB_KC blocks of rows as FB_KB_FLOATS floats hold (fb_pack_rows): a chunk of B is packed on
 * the panels' threads, one panel to a thread, and a narrow B's few panels left the second
 * thread idle through each chunk's packing, then met it again for each chunk's product. dW
 * over T·B = 1600 rows (64 x 1600 @ 1600 x 32): one chunk where there were two. The chunks
 * end on FB_KC blocks either way, so each element is summed as before. */
#define FB_KB 1024
#define FB_KB_FLOATS (256 * 1024)

/* How many of a B's rows fb_matmul packs at a time, for a B of n columns. */
static ptrdiff_t fb_pack_rows(ptrdiff_t n) {
    ptrdiff_t rows = FB_KB_FLOATS / n / FB_KC * FB_KC;
    return rows > FB_KB ? rows : FB_KB;
}

/* Buffers kept per thread between calls (fb_a_buffer, fb_pack_buffer), so that their pages
 * are not faulted in again at every product. Each is registered under a pthread key whose
 * destructor, run on the thread as it ends, frees it and forgets it: a program that runs its
 * products on short-lived threads does not leak them. */
static __thread float* fb_a_block = NULL;
static __thread float* fb_b_pack = NULL;
static __thread size_t fb_b_pack_capacity = 0;
static pthread_key_t fb_buffer_keys[2];
static pthread_once_t fb_buffer_keys_once = PTHREAD_ONCE_INIT;

static void fb_free_a_block(void* p) { free(p); fb_a_block = NULL; }
static void fb_free_b_pack(void* p) { free(p); fb_b_pack = NULL; fb_b_pack_capacity = 0; }
static void fb_make_buffer_keys(void) {
    pthread_key_create(&fb_buffer_keys[0], fb_free_a_block);
    pthread_key_create(&fb_buffer_keys[1], fb_free_b_pack);
}
static void fb_keep_buffer(int which, void* p) {
    pthread_once(&fb_buffer_keys_once, fb_make_buffer_keys);
    pthread_setspecific(fb_buffer_keys[which], p);
}

/* The calling thread's buffer for one block of a transposed A (FB_MC x FB_KC floats), or
 * NULL if it cannot be allocated (fb_block then reads A in place). */
static float* fb_a_buffer(void) {
    if (fb_a_block == NULL) {
        fb_a_block = (float*)aligned_alloc(FB_ALIGN, (size_t)FB_MC * FB_KC * sizeof(float));
        if (fb_a_block != NULL) fb_keep_buffer(0, fb_a_block);
    }
    return fb_a_block;
}

/* Rows i0:i1 of a transposed A (a[kk * lda + i], the δᵀ of the weight gradients, read in
 * place), its k rows kk < kc, copied to out tile by tile (fb_next_tile's tiles of at most mr
 * rows): each tile's kc x r floats contiguous (out[i * kc + kk * r + j] = a[kk * lda + i + j]),
 * which the tile kernels read with lda = r. In place, a tile walks δ's rows at a stride of G
 * floats, a power of two at the usual sizes (4096 at H = 1024), so its lines fall in a few
 * cache sets and evict each other and the panel; copied once per block, they are read from
 * L1 and L2 by every panel (dW 4096x1024 over 1600 rows: 312-351 -> 356-411 GFLOP/s;
 * 2048x512 over 3200: 301-351 -> 336-389). A's rows (the other orientation) gain nothing
 * measurable from the same copy. */
static inline __attribute__((always_inline)) void fb_copy_tile(
        const float* a, ptrdiff_t lda, ptrdiff_t kc, float* dst, int r) {
    for (ptrdiff_t kk = 0; kk < kc; kk++)
        memcpy(dst + kk * r, a + kk * lda, (size_t)r * sizeof(float));
}

static void fb_pack_a(const float* a, ptrdiff_t lda, ptrdiff_t rows, ptrdiff_t kc, float* out,
                      int mr, int balance) {
    int r;
    for (ptrdiff_t i = 0; i < rows; i += r) {
        r = fb_next_tile(rows - i, mr, balance);
        /* a full tile's rows in one vector move each: its height a constant */
        if (r == FB_MR) fb_copy_tile(a + i, lda, kc, out + i * kc, FB_MR);
#ifdef FB_WIDE_NV
        else if (r == FB_WIDE_MR) fb_copy_tile(a + i, lda, kc, out + i * kc, FB_WIDE_MR);
#endif
        else fb_copy_tile(a + i, lda, kc, out + i * kc, r);
    }
}

/* One block of k rows (k0:k0 + kc) of C[i0:i1, panels p0:p1] (+)= A[i0:i1] . B[:, panels
 * p0:p1]: its sums added to C unless acc is 0 (then they replace it). a_block: A[i0:i1]'s
 * block copied by fb_pack_a for tiles of this n, or NULL (A read in place). The panels and
 * tiles are those of a B of n columns (fb_panel_vectors, fb_tile_height), of k rows in all. */
static void fb_block_panels(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t n,
                            ptrdiff_t k, ptrdiff_t k0, ptrdiff_t kc, const float* a,
                            ptrdiff_t lda, int a_transposed, const float* a_block,
                            const float* packed, float* c, ptrdiff_t ldc, int acc) {
    int wide = fb_wide(n), mr = fb_tile_height(n);
    ptrdiff_t nr = fb_panel_vectors(n) * FB_VW;
    for (ptrdiff_t p = p0; p < p1; p++) {
        ptrdiff_t cols = n - p * nr < nr ? n - p * nr : nr;
        const float* b = packed + (size_t)p * k * nr + k0 * nr;
        float* cp = c + p * nr;
        int narrow = cols <= FB_VW, r;
        for (ptrdiff_t i = i0; i < i1; i += r) {
            r = fb_next_tile(i1 - i, mr, wide);
            /* the tile's A: a row per kk (transposed, copied or in place) or its rows */
            const float* at;
            ptrdiff_t ld;
            if (!a_transposed) {
                at = a + i * lda + k0;
                ld = lda;
            } else if (a_block != NULL) {
                at = a_block + (i - i0) * kc;
                ld = r;
            } else {
                at = a + k0 * lda + i;
                ld = lda;
            }
#ifdef FB_WIDE_NV
            if (wide) {
                if (r == FB_WIDE_MR && cols == nr) {
                    if (a_transposed)
                        fb_wtile4t_6(kc, at, ld, b, cp + i * ldc, ldc, cols, acc);
                    else
                        fb_wtile4_6(kc, at, ld, b, cp + i * ldc, ldc, cols, acc);
                } else {
                    fb_wide_tile_rows(r, a_transposed, kc, at, ld, b, cp + i * ldc, ldc, cols,
                                      acc);
                }
                continue;
            }
#endif
            if (r == FB_MR)
                FB_FULL(a_transposed, narrow, kc, at, ld, b, cp + i * ldc, ldc, cols, acc);
            else
                fb_tile_rows(r, a_transposed, kc, at, ld, b, cp + i * ldc, ldc, cols, acc);
        }
    }
}

/* C[i0:i1, panels p0:p1] (+)= A[i0:i1] . B[:, panels p0:p1]; i1 - i0 <= FB_MC. The panels and
 * tiles are those of a B of n columns (fb_panel_vectors, fb_tile_height). */
static void fb_block(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t n,
                     ptrdiff_t k, const float* a, ptrdiff_t lda, int a_transposed,
                     const float* packed, float* c, ptrdiff_t ldc, int accumulate) {
    /* a transposed A read by more than one panel is copied a block at a time (fb_pack_a) */
    float* a_block = a_transposed && p1 - p0 > 1 && i1 - i0 <= FB_MC ? fb_a_buffer() : NULL;
    for (ptrdiff_t k0 = 0; k0 < k; k0 += FB_KC) {
        ptrdiff_t kc = k - k0 < FB_KC ? k - k0 : FB_KC;
        if (a_block != NULL)
            fb_pack_a(a + k0 * lda + i0, lda, i1 - i0, kc, a_block, fb_tile_height(n),
                      fb_wide(n));
        fb_block_panels(i0, i1, p0, p1, n, k, k0, kc, a, lda, a_transposed, a_block, packed, c,
                        ldc, accumulate || k0 > 0);
    }
}

/* Thread t's range of rows [*i0, *i1) of m when `threads` share rows: the same number of
 * register tiles of mr rows per thread, to within one (400 rows are 25 tiles each, where
 * blocks of 64 rows dealt out gave one thread 4 blocks and the other 3). */
static inline void fb_thread_rows(int t, int threads, ptrdiff_t m, int mr, ptrdiff_t* i0,
                                  ptrdiff_t* i1) {
    ptrdiff_t tiles = (m + mr - 1) / mr, per = (tiles + threads - 1) / threads;
    *i0 = t * per * mr;
    *i1 = *i0 + per * mr < m ? *i0 + per * mr : m;
}

/* C (m x n, row-major, ldc) = A . B, or += when accumulate.
 *   A (m x k): a[i * lda + kk], or with a_transposed a[kk * lda + i] (A is the transpose of
 *   the row-major array at a);
 *   B (k x n): packed by fb_pack or fb_pack_transposed with this n and k.
 * threads > 1 shares the work among that many OpenMP threads: one range of rows per thread
 * when there are enough rows (at least two blocks of FB_BLOCK_ROWS per thread, or two
 * register tiles per thread when the panels are few too), else the panels (a time step's few
 * batch rows against many weights). Whatever tile holds an element, its sum runs over k in
 * the same order, so the split changes no bits. */
static void fb_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float* a, ptrdiff_t lda,
                    int a_transposed, const float* packed, float* c, ptrdiff_t ldc,
                    int accumulate, int threads) {
    if (m <= 0 || n <= 0) return;
    int mr = fb_tile_height(n);
    ptrdiff_t nr = fb_panel_vectors(n) * FB_VW, mc = FB_BLOCK_ROWS(mr);
    ptrdiff_t panels = (n + nr - 1) / nr, blocks = (m + mc - 1) / mc;
    if (k <= 0) {   /* an empty sum */
        if (!accumulate)
            for (ptrdiff_t i = 0; i < m; i++) memset(c + i * ldc, 0, (size_t)n * sizeof(float));
        return;
    }
    if ((double)m * n * k < FB_PARALLEL_MIN) threads = 1;
    int by_rows = blocks >= 2 * threads || (panels < 2 * threads && m >= 2 * mr * threads);
    if (threads > 1 && by_rows) {
        /* each thread's rows (fb_thread_rows) walked in blocks of mc rows */
#ifdef _OPENMP
        #pragma omp parallel for schedule(static) num_threads(threads)
#endif
        for (int t = 0; t < threads; t++) {
            ptrdiff_t i0, i1;
            fb_thread_rows(t, threads, m, mr, &i0, &i1);
            for (ptrdiff_t i = i0; i < i1; i += mc)
                fb_block(i, i + mc < i1 ? i + mc : i1, 0, panels, n, k, a, lda,
                         a_transposed, packed, c, ldc, accumulate);
        }
    } else if (threads > 1 && panels > 1) {
        if (threads > panels) threads = (int)panels;
#ifdef _OPENMP
        #pragma omp parallel for schedule(static) num_threads(threads)
#endif
        for (ptrdiff_t p = 0; p < panels; p++)
            fb_block(0, m, p, p + 1, n, k, a, lda, a_transposed, packed, c, ldc, accumulate);
    } else {
        for (ptrdiff_t i = 0; i < m; i += mc)
            fb_block(i, i + mc < m ? i + mc : m, 0, panels, n, k, a, lda, a_transposed,
                     packed, c, ldc, accumulate);
    }
}

/* The calling thread's buffer for fb_matmul's packed B, of at least size floats, aligned:
 * kept between calls and grown when a product needs more, so that its pages are not faulted
 * in again at every product (fresh multi-MB blocks from malloc are). NULL if it cannot grow.
 * At most fb_pack_rows rows of the widest B the thread multiplied; freed when the thread ends. */
static float* fb_pack_buffer(size_t size) {
    if (size > fb_b_pack_capacity) {
        size_t bytes = (size * sizeof(float) + 4095) & ~(size_t)4095;
        float* grown = (float*)aligned_alloc(4096, bytes);
        if (grown == NULL) return NULL;
        free(fb_b_pack);
        fb_b_pack = grown;
        fb_b_pack_capacity = bytes / sizeof(float);
        fb_keep_buffer(1, fb_b_pack);
    }
    return fb_b_pack;
}

static int fb_matmul_narrow(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float* a,
                            ptrdiff_t lda, int a_transposed, const float* b, ptrdiff_t ldb,
                            int b_transposed, float* c, ptrdiff_t ldc, int accumulate);

/* C (m x n, row-major, ldc) = op(A) . op(B), or += when accumulate, for products whose B is
 * used once: A as in fb_gemm; B (k x n) is b[kk * ldb + j], or with b_transposed b[j * ldb + kk]
 * (B is the transpose of the row-major array at b), packed here fb_pack_rows of its rows at a time,
 * or with a narrow side not packed at all (fb_matmul_narrow, which it tries first).
 * Uses all of OpenMP's threads. Returns -1, having done nothing, if the packing buffer cannot
 * be allocated. */
static int fb_matmul(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float* a, ptrdiff_t lda,
                     int a_transposed, const float* b, ptrdiff_t ldb, int b_transposed,
                     float* c, ptrdiff_t ldc, int accumulate) {
    if (m <= 0 || n <= 0) return 0;
    int threads = fb_max_threads();
    if (k <= 0) {
        fb_gemm(m, n, 0, a, lda, a_transposed, NULL, c, ldc, accumulate, 1);
        return 0;
    }
    if (fb_matmul_narrow(m, n, k, a, lda, a_transposed, b, ldb, b_transposed, c, ldc, accumulate))
        return 0;
    ptrdiff_t kb_step = fb_pack_rows(n), kb_max = k < kb_step ? k : kb_step;
    /* on one thread if chunks of FB_KB rows would each be too small to share (FB_PARALLEL_MIN):
       a longer chunk of a narrow B is not more work to share (100 x 2500 @ 2500 x 2, an
       adding-problem dW_ih, ran 1.24x slower on two threads here; it takes
       fb_matmul_narrow's transposed form now; a narrow B no such form takes still comes
       here) */
    if ((double)m * n * (k < FB_KB ? k : FB_KB) < FB_PARALLEL_MIN) threads = 1;
    float* work = fb_pack_buffer(fb_packed_size(n, kb_max));
    if (work == NULL) return -1;
    for (ptrdiff_t k0 = 0; k0 < k; k0 += kb_step) {
        ptrdiff_t kb = k - k0 < kb_step ? k - k0 : kb_step;
        if (b_transposed) fb_pack_transposed(b + k0, n, kb, ldb, work, threads);
        else fb_pack(b + k0 * ldb, n, kb, ldb, work, threads);
        fb_gemm(m, n, kb, a_transposed ? a + k0 * lda : a + k0, lda, a_transposed, work, c, ldc,
                accumulate || k0 > 0, threads);
    }
    return 0;
}

/* c (m, n) = a (m, k) @ wᵀ, or += when accumulate; w (n, k) row-major as a recurrent weight
   matrix is stored, so that nothing is packed or copied per call: the forward per-step
   product of a single sequence (a char-RNN step is 1x100 @ 100x400), where packing W_hh
   (13 µs at H = 100) costs as much as ten steps. Each c[i, j] is a dot product of two
   contiguous rows in FB_DOT lanes (GCC's vector type: one register in the AVX builds, two in
   the baseline's), eight rows of w at a time, so each chunk of a's row is loaded once for
   eight independent chains. The order of every sum is fixed whatever the build or the
   thread count: the lanes' partial sums (the tail of k one more chunk of them), added
   pairwise (fb_hsum8, fb_hsum), then c's old value when accumulating. */
#define FB_DOT 8
typedef float fb_dotv __attribute__((vector_size(FB_DOT * sizeof(float))));
#define FB_DOT_ROWS 8

static inline fb_dotv fb_dot_load(const float* p) {
    fb_dotv v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* The sum of v's lanes, ((0+1) + (2+3)) + ((4+5) + (6+7)): the order fb_hsum8 adds in. */
static inline float fb_hsum(fb_dotv v) {
    float s[FB_DOT];
    memcpy(s, &v, sizeof(v));
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* fb_hsum of eight vectors at once, lane r of the result that of s[r]: three rounds of
   shuffles and adds instead of eight reductions' scalar chains (which cost as much as the
   dot products themselves at k = 100). */
static inline fb_dotv fb_hsum8(const fb_dotv* s) {
#define FB_EVEN(x, y) __builtin_shufflevector(x, y, 0, 8, 2, 10, 4, 12, 6, 14)
#define FB_ODD(x, y) __builtin_shufflevector(x, y, 1, 9, 3, 11, 5, 13, 7, 15)
    fb_dotv u0 = FB_EVEN(s[0], s[1]) + FB_ODD(s[0], s[1]);
    fb_dotv u1 = FB_EVEN(s[2], s[3]) + FB_ODD(s[2], s[3]);
    fb_dotv u2 = FB_EVEN(s[4], s[5]) + FB_ODD(s[4], s[5]);
    fb_dotv u3 = FB_EVEN(s[6], s[7]) + FB_ODD(s[6], s[7]);
#undef FB_EVEN
#undef FB_ODD
    fb_dotv v0 = __builtin_shufflevector(u0, u1, 0, 1, 8, 9, 4, 5, 12, 13)
               + __builtin_shufflevector(u0, u1, 2, 3, 10, 11, 6, 7, 14, 15);
    fb_dotv v1 = __builtin_shufflevector(u2, u3, 0, 1, 8, 9, 4, 5, 12, 13)
               + __builtin_shufflevector(u2, u3, 2, 3, 10, 11, 6, 7, 14, 15);
    return __builtin_shufflevector(v0, v1, 0, 1, 2, 3, 8, 9, 10, 11)
         + __builtin_shufflevector(v0, v1, 4, 5, 6, 7, 12, 13, 14, 15);
}

static void fb_dot_rows_ld(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float* a,
                           ptrdiff_t lda, const float* w, ptrdiff_t ldw, float* c,
                           ptrdiff_t ldc, int accumulate) {
    ptrdiff_t k0 = k - k % FB_DOT;
    /* The tail of k (k % FB_DOT elements) as one more chunk: the last FB_DOT elements of the
       row, with the lanes the chunks before already covered zeroed in a's copy, so a zero
       product adds nothing. Below FB_DOT elements, scalar sums. */
    int tail = k0 < k && k >= FB_DOT;
    for (ptrdiff_t i = 0; i < m; i++) {
        const float* ar = a + i * lda;
        float* row = c + i * ldc;
        fb_dotv xt = (fb_dotv){0};
        if (tail) {
            xt = fb_dot_load(ar + k - FB_DOT);
            for (int l = 0; l < FB_DOT - (int)(k - k0); l++) xt[l] = 0;
        }
        ptrdiff_t j = 0;
        for (; j + FB_DOT_ROWS <= n; j += FB_DOT_ROWS) {
            const float* wj = w + j * ldw;
            fb_dotv s[FB_DOT_ROWS];
            for (int r = 0; r < FB_DOT_ROWS; r++) s[r] = (fb_dotv){0};
            for (ptrdiff_t kk = 0; kk < k0; kk += FB_DOT) {
                fb_dotv x = fb_dot_load(ar + kk);
                for (int r = 0; r < FB_DOT_ROWS; r++) s[r] += x * fb_dot_load(wj + r * ldw + kk);
            }
            if (tail)
                for (int r = 0; r < FB_DOT_ROWS; r++)
                    s[r] += xt * fb_dot_load(wj + r * ldw + k - FB_DOT);
            fb_dotv sum = fb_hsum8(s);
            if (!tail) {
                for (ptrdiff_t kk = k0; kk < k; kk++) {
                    fb_dotv col;
                    for (int r = 0; r < FB_DOT_ROWS; r++) col[r] = wj[r * ldw + kk];
                    sum += ar[kk] * col;
                }
            }
            if (accumulate) sum += fb_dot_load(row + j);
            memcpy(row + j, &sum, sizeof(sum));
        }
        for (; j < n; j++) {
            const float* wj = w + j * ldw;
            fb_dotv s0 = (fb_dotv){0};
            for (ptrdiff_t kk = 0; kk < k0; kk += FB_DOT) s0 += fb_dot_load(ar + kk) * fb_dot_load(wj + kk);
            if (tail) s0 += xt * fb_dot_load(wj + k - FB_DOT);
            float sum = fb_hsum(s0);
            if (!tail)
                for (ptrdiff_t kk = k0; kk < k; kk++) sum += ar[kk] * wj[kk];
            row[j] = accumulate ? sum + row[j] : sum;
        }
    }
}

/* c (m, n) += a (m, k) @ w (k, n), all row-major: the backward per-step product of a single
   sequence (δ_t (1, G·H) @ W_hh (G·H, H), a char-RNN LSTM's 1x400 @ 400x100), in axpy form,
   four rows of w at a time. Each element is the sum small_matmul_acc (_products.pxi) forms,
   c + (((a0 w0 + a1 w1) + a2 w2) + a3 w3) per four rows and c + a w for the last k % 4, with
   the same contractions into multiply-adds, so the bits are its own; but the accumulators of
   up to FB_AXPY_NV vectors of c stay in registers over all of k, where that loop loaded and
   stored c for every four rows of w (and summed n % FB_VW columns in scalars): the stores
   alone cost as much as the streaming of w from L2. The last n % FB_VW columns run in one
   more vector over c's last FB_VW columns, whose lanes that other vectors cover are computed
   and dropped; so n >= FB_VW (a narrower c stays on small_matmul_acc's loop). */
#define FB_AXPY_NV 8

static inline __attribute__((always_inline)) void fb_axpy_block(
        ptrdiff_t k, ptrdiff_t ldw, const float* a, const float* w, float* c,
        const ptrdiff_t* start, int nv, int tail, ptrdiff_t keep_from) {
    /* vectors loaded and stored through fb_vfu pointers, as the tile kernels do: copied
       through memcpy into locals, the AVX2 build kept the accumulators on the stack, each
       multiply-add a 32-byte store reloaded as two 16-byte halves (8-12x slower) */
    fb_vf acc[FB_AXPY_NV];
    for (int v = 0; v < nv; v++) acc[v] = *(const fb_vfu*)(c + start[v]);
    ptrdiff_t kk = 0;
    for (; kk + 4 <= k; kk += 4) {
        float a0 = a[kk], a1 = a[kk + 1], a2 = a[kk + 2], a3 = a[kk + 3];
        const float* w0 = w + kk * ldw;
        for (int v = 0; v < nv; v++) {
            fb_vf x0 = *(const fb_vfu*)(w0 + start[v]);
            fb_vf x1 = *(const fb_vfu*)(w0 + ldw + start[v]);
            fb_vf x2 = *(const fb_vfu*)(w0 + 2 * ldw + start[v]);
            fb_vf x3 = *(const fb_vfu*)(w0 + 3 * ldw + start[v]);
            acc[v] += a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3;
        }
    }
    for (; kk < k; kk++) {
        float a0 = a[kk];
        for (int v = 0; v < nv; v++) acc[v] += a0 * (fb_vf)*(const fb_vfu*)(w + kk * ldw + start[v]);
    }
    for (int v = 0; v < nv; v++) {
        if (v != tail) {
            *(fb_vfu*)(c + start[v]) = acc[v];
        } else {    /* the overlapping last vector: only its columns from keep_from on */
            float lanes[FB_VW];
            memcpy(lanes, &acc[v], sizeof(lanes));
            for (ptrdiff_t j = keep_from; j < start[v] + FB_VW; j++) c[j] = lanes[j - start[v]];
        }
    }
}

static void fb_axpy_rows_ld(ptrdiff_t m, ptrdiff_t k, ptrdiff_t n, const float* a,
                            ptrdiff_t lda, const float* w, ptrdiff_t ldw, float* c,
                            ptrdiff_t ldc) {    /* n >= FB_VW */
    for (ptrdiff_t i = 0; i < m; i++) {
        const float* ar = a + i * lda;
        float* row = c + i * ldc;
        /* vector starts: 0, FB_VW, ... over the whole vectors, then n - FB_VW for a tail;
           that overlaps the last whole one and stores only its columns from `done` (the
           first column no whole vector covers) */
        ptrdiff_t whole = n / FB_VW, done = whole * FB_VW, count = whole + (done < n);
        for (ptrdiff_t v0 = 0; v0 < count; v0 += FB_AXPY_NV) {
            ptrdiff_t start[FB_AXPY_NV];
            int nv = (int)(count - v0 < FB_AXPY_NV ? count - v0 : FB_AXPY_NV);
            for (int v = 0; v < nv; v++)
                start[v] = v0 + v < whole ? (v0 + v) * FB_VW : n - FB_VW;
            int tail = v0 + nv > whole ? (int)(whole - v0) : -1;
            switch (nv) {   /* a constant count per copy, so the accumulators stay in registers */
            case 1: fb_axpy_block(k, ldw, ar, w, row, start, 1, tail, done); break;
            case 2: fb_axpy_block(k, ldw, ar, w, row, start, 2, tail, done); break;
            case 3: fb_axpy_block(k, ldw, ar, w, row, start, 3, tail, done); break;
            case 4: fb_axpy_block(k, ldw, ar, w, row, start, 4, tail, done); break;
            case 5: fb_axpy_block(k, ldw, ar, w, row, start, 5, tail, done); break;
            case 6: fb_axpy_block(k, ldw, ar, w, row, start, 6, tail, done); break;
            case 7: fb_axpy_block(k, ldw, ar, w, row, start, 7, tail, done); break;
            default: fb_axpy_block(k, ldw, ar, w, row, start, 8, tail, done); break;
            }
        }
    }
}

static void fb_axpy_rows(ptrdiff_t m, ptrdiff_t k, ptrdiff_t n, const float* a,
                         const float* w, float* c) {    /* n >= FB_VW */
    fb_axpy_rows_ld(m, k, n, a, k, w, n, c, n);
}

static void fb_dot_rows(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float* a,
                        const float* w, float* c, int accumulate) {
    fb_dot_rows_ld(m, n, k, a, k, w, k, c, n, accumulate);
}

/* c (m, n) = a (m, k) @ wᵀ, or += when accumulate, for a narrow c (n of a few columns):
   fb_dot_rows' dot products with the roles of the rows turned, eight rows of a at a time
   for each row of w, so that eight chains run side by side where one row's few dot
   products would each wait on its own chain. Every element is summed exactly as
   fb_dot_rows sums it (FB_DOT lanes of partial sums, the tail of k one more chunk, the
   lanes added as fb_hsum adds them), so a row's bits do not depend on its group. */
static void fb_dot_cols(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float* a, ptrdiff_t lda,
                        const float* w, ptrdiff_t ldw, float* c, ptrdiff_t ldc, int accumulate) {
    ptrdiff_t k0 = k - k % FB_DOT, i = 0;
    int tail = k0 < k && k >= FB_DOT;
    if (k >= FB_DOT) {
        for (; i + FB_DOT_ROWS <= m; i += FB_DOT_ROWS) {
            const float* ai = a + i * lda;
            fb_dotv xt[FB_DOT_ROWS];
            if (tail)
                for (int r = 0; r < FB_DOT_ROWS; r++) {
                    xt[r] = fb_dot_load(ai + r * lda + k - FB_DOT);
                    for (int l = 0; l < FB_DOT - (int)(k - k0); l++) xt[r][l] = 0;
                }
            for (ptrdiff_t j = 0; j < n; j++) {
                const float* wj = w + j * ldw;
                fb_dotv s[FB_DOT_ROWS];
                for (int r = 0; r < FB_DOT_ROWS; r++) s[r] = (fb_dotv){0};
                for (ptrdiff_t kk = 0; kk < k0; kk += FB_DOT) {
                    fb_dotv x = fb_dot_load(wj + kk);
                    for (int r = 0; r < FB_DOT_ROWS; r++) s[r] += fb_dot_load(ai + r * lda + kk) * x;
                }
                if (tail) {
                    fb_dotv x = fb_dot_load(wj + k - FB_DOT);
                    for (int r = 0; r < FB_DOT_ROWS; r++) s[r] += xt[r] * x;
                }
                fb_dotv sum = fb_hsum8(s);
                for (int r = 0; r < FB_DOT_ROWS; r++) {
                    float* cr = c + (i + r) * ldc + j;
                    *cr = accumulate ? sum[r] + *cr : sum[r];
                }
            }
        }
    }
    if (i < m) fb_dot_rows_ld(m - i, n, k, a + i * lda, lda, w, ldw, c + i * ldc, ldc, accumulate);
}

/* c (m, n) = a (m, k) @ w (k, n), or += when accumulate, for a short k (a few input
   features): each row of c a vector at a time, its k multiply-adds in order from c's old
   value or zero, w's k rows read from L1. (fb_axpy_rows' blocks of vectors held over a long
   k cost more to set up per row than k = 2 multiply-adds take.) The last n % FB_VW columns
   are summed in scalars in the same order, so each element's bits depend on k alone. */
static void fb_axpy_short(ptrdiff_t m, ptrdiff_t k, ptrdiff_t n, const float* a, ptrdiff_t lda,
                          const float* w, ptrdiff_t ldw, float* c, ptrdiff_t ldc, int accumulate) {
    ptrdiff_t whole = n - n % FB_VW;
    for (ptrdiff_t i = 0; i < m; i++) {
        const float* ar = a + i * lda;
        float* cr = c + i * ldc;
        for (ptrdiff_t j = 0; j < whole; j += FB_VW) {   /* loads and stores as fb_axpy_block's */
            fb_vf acc = accumulate ? (fb_vf)*(const fb_vfu*)(cr + j) : (fb_vf){0};
            for (ptrdiff_t p = 0; p < k; p++) acc += ar[p] * (fb_vf)*(const fb_vfu*)(w + p * ldw + j);
            *(fb_vfu*)(cr + j) = acc;
        }
        for (ptrdiff_t j = whole; j < n; j++) {
            float acc = accumulate ? cr[j] : 0.0f;
            for (ptrdiff_t p = 0; p < k; p++) acc += ar[p] * w[p * ldw + j];
            cr[j] = acc;
        }
    }
}

/* Hoisted products with a narrow side (FB_NARROW_K, _N, _T, _M below), as a few input
 * features or outputs make them (the adding problem's I = 2: x_t W_ihᵀ over T·B rows has
 * k = 2; dx = δ W_ih and dW_ih = δᵀ x have n = 2; its readout's dW has m = 1). On the
 * panels a B of 2 columns fills 2 of every 32 lanes, and a k of 2 packs B and meets the team
 * for 2 multiply-adds a row: 1600 x 100 @ 100 x 2 took 33-38 µs where OpenBLAS takes 12,
 * and takes 10-17 in its narrow form. These forms pack nothing:
 *   k narrow, a as stored:  c's rows in axpy form (fb_axpy_short), B's k rows row-major;
 *   n narrow, a as stored:  dot products along a's rows and Bᵀ's (fb_dot_cols);
 *   n narrow, a transposed: cᵀ in axpy form over a's rows (δᵀ x: each row of cᵀ a sum of
 *                           scaled rows of δ), then cᵀ added into c;
 *   m narrow, B as stored:  c's rows in axpy form over B's rows (a readout's dW = dyᵀ s over
 *                           one output or two), A's rows copied if A is transposed.
 * Each element is summed in an order that depends on nothing but k, so the rows (or the
 * columns) are shared among the team in any split with the same bits. B is copied first when
 * its layout does not suit the form (n x k or k x n floats; the m narrow form copies a
 * transposed A's m x k instead). Returns 1 when it ran the product, 0 when the shape is not
 * one of these (or the copies cannot be allocated): the caller's gemm runs it. Uses the
 * calling thread's packing buffer (fb_pack_buffer). */
/* k, A as stored: c's rows in axpy form write c as the panels do, and both are bound by
   those writes from k = 8 (1600 x 8 @ 8 x 400, new / old time, 0.98-1.65 in the AVX2 build,
   1.01 in the AVX-512), where k <= 4 gains (0.74-0.90; k = 2 0.88). */
#define FB_NARROW_K 4
/* n, A as stored: eight rows of dot products at a time. From n = 8 they lose in the AVX2
   build (1600 x 400 @ 400 x 8: 1.05-1.21; n = 4 0.47) and gain in the AVX-512 (0.73-0.76).
   The baseline build (SSE2) holds eight rows' partial sums in 16 registers, all it has, and
   spills (n = 8 2.54, 4 1.79, 2 1.09): off there. */
#if FB_VW >= 16
#define FB_NARROW_N 8
#elif FB_VW >= 8
#define FB_NARROW_N 4
#else
#define FB_NARROW_N 0
#endif
/* ... and with a transposed A (δᵀ x), n of at most FB_NARROW_T: each row of cᵀ reads all of
   δ again, which from 8 columns on costs the panel gemm's time or more (400 x 1600 @ 1600 x n,
   new / old time: n = 2 0.25, 4 0.50, 8 0.93-1.10). */
#define FB_NARROW_T 4
/* ... and a c of at most FB_NARROW_M rows (B as stored), each row of c a pass over all of B
   (m x 1600 @ 1600 x 100 with A transposed, new / old time: m = 1 0.27-0.28, 2 0.37, 4 1.13;
   1 x 3200 @ 3200 x 128 0.27). */
#define FB_NARROW_M 2

/* c (m, n) += a (m, k) @ w (k, n) in axpy form (fb_axpy_rows_ld) for a c of few rows: its
   columns shared among `threads` in runs of whole vectors (each run at least FB_VW wide, as
   fb_axpy_rows_ld needs), w's rows walked FB_KC at a time so that each chunk is read from L2
   by all m rows of c (400 x 1600 @ 1600 x 8 read δ's 2.5 MB eight times whole).
   fb_axpy_rows_ld adds k's rows four at a time into c's old value, so chunks of a multiple
   of four rows, and any runs of columns, sum every element exactly as one pass would. */
static void fb_axpy_runs(ptrdiff_t m, ptrdiff_t k, ptrdiff_t n, const float* a, ptrdiff_t lda,
                         const float* w, ptrdiff_t ldw, float* c, ptrdiff_t ldc, int threads) {
    ptrdiff_t vectors = n / FB_VW;
    if (threads > vectors) threads = (int)vectors;
#ifdef _OPENMP
    #pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int t = 0; t < threads; t++) {
        ptrdiff_t j0 = vectors * t / threads * FB_VW;
        ptrdiff_t j1 = t + 1 == threads ? n : vectors * (t + 1) / threads * FB_VW;
        for (ptrdiff_t k0 = 0; k0 < k; k0 += FB_KC) {
            ptrdiff_t kc = k - k0 < FB_KC ? k - k0 : FB_KC;
            fb_axpy_rows_ld(m, kc, j1 - j0, a + k0, lda, w + k0 * ldw + j0, ldw, c + j0, ldc);
        }
    }
}

/* Which of fb_matmul_narrow's forms a product takes: 1 k narrow, 2 n narrow with a as
   stored, 3 n narrow with a transposed, 4 m narrow with B as stored; 0 none (the panel
   gemm). */
static int fb_narrow_form(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, int a_transposed,
                          int b_transposed) {
    if (k <= FB_NARROW_K && !a_transposed) return 1;
    if (n <= FB_NARROW_N && !a_transposed) return 2;
    if (n <= FB_NARROW_T && a_transposed && m >= FB_VW) return 3;
    if (m <= FB_NARROW_M && !b_transposed && n >= FB_VW) return 4;
    return 0;
}

static int fb_matmul_narrow(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float* a,
                            ptrdiff_t lda, int a_transposed, const float* b, ptrdiff_t ldb,
                            int b_transposed, float* c, ptrdiff_t ldc, int accumulate) {
    int form = fb_narrow_form(m, n, k, a_transposed, b_transposed);
    if (form == 0) return 0;
    int threads = (double)m * n * k < FB_PARALLEL_MIN ? 1 : fb_max_threads();
    if (form == 4) {
        /* c's few rows in axpy form over all of B's rows, B as stored (row-major k x n);
           A's rows copied when A is transposed (m x k floats); its columns shared out in
           runs of whole vectors, as form 3's */
        const float* ar = a;
        ptrdiff_t ldar = lda;
        if (a_transposed) {
            float* rows = fb_pack_buffer((size_t)m * k);
            if (rows == NULL) return 0;
            for (ptrdiff_t p = 0; p < k; p++)
                for (ptrdiff_t i = 0; i < m; i++) rows[i * k + p] = a[p * lda + i];
            ar = rows;
            ldar = k;
        }
        if (!accumulate)
            for (ptrdiff_t i = 0; i < m; i++) memset(c + i * ldc, 0, (size_t)n * sizeof(float));
        fb_axpy_runs(m, k, n, ar, ldar, b, ldb, c, ldc, threads);
        return 1;
    }
    /* B as the form reads it: row-major k x n (form 1), or Bᵀ row-major n x k (2, 3) */
    int want_rows = form == 1;
    const float* bb = b;
    ptrdiff_t ldbb = ldb;
    size_t need = (size_t)n * k + (form == 3 ? (size_t)n * m : 0);
    float* work = NULL;
    if (b_transposed == want_rows || form == 3) {
        work = fb_pack_buffer(need);
        if (work == NULL) return 0;
    }
    if (b_transposed == want_rows) {   /* copy op(B) into the layout wanted */
        ptrdiff_t rows = want_rows ? k : n, cols = want_rows ? n : k;
        for (ptrdiff_t r = 0; r < rows; r++)
            for (ptrdiff_t q = 0; q < cols; q++) work[r * cols + q] = b[q * ldb + r];
        bb = work;
        ldbb = cols;
    }
    if (form == 1 || form == 2) {
#ifdef _OPENMP
        #pragma omp parallel for schedule(static) num_threads(threads)
#endif
        for (int t = 0; t < threads; t++) {
            ptrdiff_t i0 = m * t / threads, i1 = m * (t + 1) / threads;
            if (form == 1)
                fb_axpy_short(i1 - i0, k, n, a + i0 * lda, lda, bb, ldbb, c + i0 * ldc, ldc,
                              accumulate);
            else
                fb_dot_cols(i1 - i0, n, k, a + i0 * lda, lda, bb, ldbb, c + i0 * ldc, ldc,
                            accumulate);
        }
        return 1;
    }
    /* form 3: cᵀ (n x m) = Bᵀ (n x k) . A (k x m), A = a as stored */
    float* ct = work + (size_t)n * k;
    memset(ct, 0, (size_t)n * m * sizeof(float));
    fb_axpy_runs(n, k, m, bb, ldbb, a, lda, ct, m, threads);
    for (ptrdiff_t i = 0; i < m; i++)
        for (ptrdiff_t j = 0; j < n; j++)
            c[i * ldc + j] = accumulate ? c[i * ldc + j] + ct[j * m + i] : ct[j * m + i];
    return 1;
}

/* Rows i0:i1 (at most FB_MC) of C1 (+)= op(A) . B1 and C2 (+)= op(A) . B2 (fb_matmul_pair), B1
 * and B2 of narrow panels: A's block of each FB_KC of its k rows (a transposed A copied, once)
 * is multiplied by B1's panels and then by B2's while it is in cache. */
static void fb_block_pair(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t k, const float* a,
                          ptrdiff_t lda, int a_transposed, const float* packed1, ptrdiff_t n1,
                          float* c1, ptrdiff_t ldc1, const float* packed2, ptrdiff_t n2,
                          float* c2, ptrdiff_t ldc2, int accumulate) {
    float* a_block = a_transposed ? fb_a_buffer() : NULL;
    for (ptrdiff_t k0 = 0; k0 < k; k0 += FB_KC) {
        ptrdiff_t kc = k - k0 < FB_KC ? k - k0 : FB_KC;
        int acc = accumulate || k0 > 0;
        if (a_block != NULL) fb_pack_a(a + k0 * lda + i0, lda, i1 - i0, kc, a_block, FB_MR, 0);
        fb_block_panels(i0, i1, 0, (n1 + FB_NR - 1) / FB_NR, n1, k, k0, kc, a, lda,
                        a_transposed, a_block, packed1, c1, ldc1, acc);
        fb_block_panels(i0, i1, 0, (n2 + FB_NR - 1) / FB_NR, n2, k, k0, kc, a, lda,
                        a_transposed, a_block, packed2, c2, ldc2, acc);
    }
}

/* C1 (m x n1, ldc1) = op(A) . B1 and C2 (m x n2, ldc2) = op(A) . B2, one A (as in fb_gemm) and
 * B1, B2 (k x n1, k x n2) row-major: an Elman or LSTM layer's weight gradients dW_ih = δᵀ x and
 * dW_hh = δᵀ s_{t-1}, whose A is the same δᵀ. Two fb_matmul calls read A twice from memory
 * (δ is T·B x G floats: 6.5 MB for the LSTM at (100, 32, 32, 128), copied a block at a time
 * by fb_pack_a for each); here each block of A's rows meets both B's while it is in cache.
 * Each element is summed as fb_matmul sums it (the tiles' FB_KC blocks, B packed in chunks
 * that end on them): the same bits as the two products apart, on any thread count.
 * It pays where A is the large operand, read from memory, and the two B's blocks of FB_KC
 * rows stay in L2 together while each thread's blocks of A's rows (four or more) take their
 * turns: measured in C, 2 threads, pair over apart, δᵀ (3200 x G) by n1 + n2 columns: G 512,
 * 32 + 128 (an LSTM at H = 128) 0.92; G 1024, 32 + 256 0.89; 64 + 128 0.86; G 512, 256 + 512
 * 0.98; but G 128 (a thread's single block), 32 + 128 1.04; G 256, 32 + 64 1.02; and
 * 1024 + 1024 over 1600 rows 1.05-1.08 (two 1 MB blocks of B evict each other). So it takes
 * n1 + n2 <= FB_PAIR_COLS and at least FB_PAIR_BLOCKS blocks of rows a thread; both B's are
 * narrow then (FB_WIDE_MIN), their tiles one height, so one copy of A's block serves both.
 * Returns 1, having done nothing, where it does not take the pair (the caller then runs the
 * two products apart): those sizes, or a product fb_matmul would run in a narrow form; -1 if
 * the packing buffer cannot be allocated. */
#define FB_PAIR_COLS 512
#define FB_PAIR_BLOCKS 4
#if defined(FB_WIDE_MIN) && FB_PAIR_COLS > FB_WIDE_MIN
#error "fb_block_pair takes both B's in narrow panels"
#endif
static int fb_matmul_pair(ptrdiff_t m, ptrdiff_t k, const float* a, ptrdiff_t lda,
                          int a_transposed, const float* b1, ptrdiff_t ldb1, ptrdiff_t n1,
                          float* c1, ptrdiff_t ldc1, const float* b2, ptrdiff_t ldb2,
                          ptrdiff_t n2, float* c2, ptrdiff_t ldc2) {
    if (m <= 0 || k <= 0 || n1 <= 0 || n2 <= 0 || fb_narrow_form(m, n1, k, a_transposed, 0)
            || fb_narrow_form(m, n2, k, a_transposed, 0))
        return 1;
    int threads = fb_max_threads();
    ptrdiff_t mc = FB_BLOCK_ROWS(FB_MR);
    if ((double)m * (n1 + n2) * (k < FB_KB ? k : FB_KB) < FB_PARALLEL_MIN) threads = 1;
    if (n1 + n2 > FB_PAIR_COLS || m < FB_PAIR_BLOCKS * mc * threads) return 1;
    ptrdiff_t kb_step = fb_pack_rows(n1) < fb_pack_rows(n2) ? fb_pack_rows(n1) : fb_pack_rows(n2);
    ptrdiff_t kb_max = k < kb_step ? k : kb_step;
    size_t size1 = fb_packed_size(n1, kb_max);
    float* work = fb_pack_buffer(size1 + fb_packed_size(n2, kb_max));
    if (work == NULL) return -1;
    for (ptrdiff_t k0 = 0; k0 < k; k0 += kb_step) {
        ptrdiff_t kb = k - k0 < kb_step ? k - k0 : kb_step;
        const float* ak = a_transposed ? a + k0 * lda : a + k0;
        fb_pack(b1 + k0 * ldb1, n1, kb, ldb1, work, threads);
        fb_pack(b2 + k0 * ldb2, n2, kb, ldb2, work + size1, threads);
#ifdef _OPENMP
        #pragma omp parallel for schedule(static) num_threads(threads) if(threads > 1)
#endif
        for (int t = 0; t < threads; t++) {     /* rows shared as fb_gemm shares them */
            ptrdiff_t i0, i1;
            fb_thread_rows(t, threads, m, FB_MR, &i0, &i1);
            for (ptrdiff_t i = i0; i < i1; i += mc)
                fb_block_pair(i, i + mc < i1 ? i + mc : i1, kb, ak, lda, a_transposed, work, n1,
                              c1, ldc1, work + size1, n2, c2, ldc2, k0 > 0);
        }
    }
    return 0;
}

/* The machine's multiply-add limit, as this build's vectors reach it: each of `threads`
 * threads runs `rounds` rounds of FB_PEAK_ACC independent vector multiply-adds (enough chains
 * to cover the latency of two FMA units), all from registers; returns the wall time of the
 * slowest, after the team has met. Each round is FB_PEAK_ACC * FB_VW * 2 FLOP a thread
 * (fused where the build has FMA, a multiply and an add otherwise). */
#define FB_PEAK_ACC 12
static volatile float fb_peak_sink;

static double fb_now(void) {
#ifdef _OPENMP
    return omp_get_wtime();
#else
    return (double)clock() / CLOCKS_PER_SEC;
#endif
}

static double fb_fma_peak(long rounds, int threads) {
    double start = 0.0, seconds = 0.0;
    float total = 0.0f;
#ifdef _OPENMP
    #pragma omp parallel num_threads(threads) reduction(+:total)
#endif
    {
        /* read through a volatile, so that no chain's values are known while compiling
           (a chain starting at its fixed point would be folded away) */
        fb_vf acc[FB_PEAK_ACC];
        fb_vf scale = (fb_vf){0} + fb_peak_sink * 0.0f + 0.9999999f;
        fb_vf shift = (fb_vf){0} + fb_peak_sink * 0.0f + 1e-7f;
        for (int i = 0; i < FB_PEAK_ACC; i++) acc[i] = scale * (float)(i + 2);
#ifdef _OPENMP
        #pragma omp barrier
        #pragma omp master
#endif
        start = fb_now();
        for (long r = 0; r < rounds; r++) {
            _Pragma("GCC unroll 16") for (int i = 0; i < FB_PEAK_ACC; i++)
                acc[i] = acc[i] * scale + shift;
        }
#ifdef _OPENMP
        #pragma omp barrier
        #pragma omp master
#endif
        seconds = fb_now() - start;
        for (int i = 0; i < FB_PEAK_ACC; i++)
            for (int l = 0; l < FB_VW; l++) total += acc[i][l];
    }
    fb_peak_sink = total;
    return seconds;
}

#endif
