"""Compiled BPTT kernels: the twins of ``_reference.py``, same names, same signatures.

Each ``def`` checks nothing the model has not checked already (bounds checks are off: the
Python layer validates shapes, dtypes and contiguity first), allocates its outputs with
NumPy, then runs all of its work in one ``with nogil:`` block.

Where the speed comes from:

* The input projection of all T steps is one gemm before the time loop, and dW_ih, dW_hh,
  dx are one gemm each after the backward sweep over the stored δ's; the loop itself only
  does s_{t-1} W_hhᵀ (forward) and δ_t W_hh (backward) per step.
* The element-wise work of a step is one fused pass (bias + activation, or
  δ = (dy + carry) ⊙ f'(s)) that the C compiler vectorizes; float32 tanh is a clamped
  rational approximation because a libm call in that loop costs more than the gemm.
* float32 products run on fastbptt's own gemm (``_step_gemm.h``, register-tiled, vectorised
  for each build, on an OpenMP team): the time loop's weights are packed once per call rather
  than by BLAS at every step, and one thread team serves every product (OpenBLAS's idle
  threads spin after each call and would halve any other team's speed). Products of at
  most 256K multiply-adds go to OpenBLAS, which runs them on the calling thread. float64,
  the checking dtype, runs on scipy's BLAS.
* float32 time loops with few recurrent weights run in shards of the batch, one per thread
  (``_shards``; the ``*_rows`` functions are the loops over a range of rows): rows never
  meet in a time loop, so the shards never wait for each other.
* Per-step products too small for any gemm's overhead (a char-RNN step is 1x100 @ 100x100)
  run in a plain loop instead.
* float64's larger per-step products run with the batch rows as BLAS's m and are added into
  place transposed (``step_product``): scipy's OpenBLAS is 1.2-1.9x faster in that orientation.

Variable-length batches come in as ``batch_sizes`` (T,), as in ``_reference.py``: the batch
sorted longest first, step t runs only its first batch_sizes[t] rows (the per-step product
and element-wise pass shrink with it), and the cache's rows of finished sequences are zero.
The hoisted gemms run over the running rows only, gathered step after step into one packed
block (PyTorch's PackedSequence layout) and placed back after.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, tanh
from libc.string cimport memcpy, memset

from ._blas cimport gemm, gemm_into_transposed

cdef extern from "_step_gemm.h" nogil:
    const int FB_ALIGN
    int fb_max_threads()
    size_t fb_packed_size(Py_ssize_t n, Py_ssize_t k)
    void fb_pack(const float* w, Py_ssize_t n, Py_ssize_t k, Py_ssize_t ldw, float* out,
                 int threads)
    void fb_pack_transposed(const float* w, Py_ssize_t n, Py_ssize_t k, Py_ssize_t ldw,
                            float* out, int threads)
    void fb_gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* a, Py_ssize_t lda,
                 bint a_transposed, const float* packed, float* c, Py_ssize_t ldc,
                 bint accumulate, int threads)
    int fb_matmul(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* a, Py_ssize_t lda,
                  bint a_transposed, const float* b, Py_ssize_t ldb, bint b_transposed,
                  float* c, Py_ssize_t ldc, bint accumulate)

cdef extern from *:
    """
    /* CPU features, for choosing among this module's builds (see setup.py). libgcc's
       __builtin_cpu_supports also checks that the OS saves the wide registers. */
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    static int fastbptt_has_avx2(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    static int fastbptt_has_avx512(void) {
        __builtin_cpu_init();
        return fastbptt_has_avx2() && __builtin_cpu_supports("avx512f")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
            && __builtin_cpu_supports("avx512vl");
    }
    #else
    static int fastbptt_has_avx2(void) { return 0; }
    static int fastbptt_has_avx512(void) { return 0; }
    #endif
    """
    int fastbptt_has_avx2() nogil
    int fastbptt_has_avx512() nogil

# Per-step products with at most this many multiply-adds (B·H·H) skip BLAS: below it
# OpenBLAS's call and threading overhead costs more than the arithmetic.
cdef long SMALL_STEP = 32 * 1024

# Per-step products with at least this many weights (G·H·H) run with the batch as BLAS's m
# (``gemm_into_transposed``) and a transposed add into place; below it the plain row-major
# gemm is as fast or faster (32x128 @ 128x128: 105 against 90 GFLOP/s).
cdef long TRANSPOSED_STEP = 48 * 1024


# OpenBLAS runs a gemm of at most this many multiply-adds on the calling thread alone
# (SMP_THRESHOLD_MIN · GEMM_MULTITHREAD_THRESHOLD in its interface/gemm.c), never waking its
# pool; the float32 kernels leave such products to it (``matmul``).
cdef double BLAS_ONE_THREAD = 65536 * 4

# float32 time loops whose recurrent weights (G·H·H) are at most this many run in shards of
# the batch, one per thread, each shard's whole loop on its own thread: a sequence's steps
# never touch another row, so the shards never wait for each other, and the element-wise
# passes are shared out too. Past it, the packed weights outgrow L2 and a step's product is
# better shared by panels (measured per step: 32x128 @ 128x512, 20.7 against 21.9 µs;
# 64x1024 @ 1024x4096, 3149 against 2927).
cdef long SHARD_STEP = 256 * 1024
# Each shard has at least this many rows (a register tile's height in the AVX-512 build).
cdef Py_ssize_t SHARD_ROWS = 8


def _tuning(small_step=None, transposed_step=None, shard_step=None):
    """Set the size thresholds that choose between code paths (for tests, which run every
    path on small problems); returns the previous (small_step, transposed_step, shard_step)."""
    global SMALL_STEP, TRANSPOSED_STEP, SHARD_STEP
    previous = (SMALL_STEP, TRANSPOSED_STEP, SHARD_STEP)
    if small_step is not None:
        SMALL_STEP = small_step
    if transposed_step is not None:
        TRANSPOSED_STEP = transposed_step
    if shard_step is not None:
        SHARD_STEP = shard_step
    return previous


# ---------------------------------------------------------------------------- element-wise

# tanh_fast's clamp bounds, |v| ≤ 9 in and |tanh| ≤ 1 out, read at run time: see tanh_fast.
cdef float TANH_V_MAX = 9.0
cdef float TANH_T_MAX = 1.0


cdef inline floating tanh_fast(floating v, floating v_max, floating t_max) noexcept nogil:
    """tanh: libm for double; for float a clamped rational approximation that vectorizes.

    tanh(v) ≈ v·P(v²)/Q(v²) on |v| ≤ v_max = 9 (beyond it tanh rounds to ±1 in float32),
    degree 4 over 4 in v², fitted for minimax relative error (2e-8 in exact arithmetic; at
    most 6 ulp, 3.6e-7 relative, evaluated in float32 over every float32 input), the result
    clamped to ±t_max = ±1.

    The bounds come in as arguments (TANH_V_MAX, TANH_T_MAX) rather than literals: with
    literals gcc 12 specialises the code after each clamp for its clamped branch, leaving
    floating-point operations in branches it will not if-convert under the default
    -ftrapping-math, and the calling loops stay scalar in the baseline and AVX2 builds
    (-fopt-info-vec: "control flow in loop"). Bounds read at run time leave nothing to
    specialise, and the loops vectorize.
    """
    cdef floating z, p, q, r
    if floating is double:
        return tanh(v)
    else:
        v = min(max(v, -v_max), v_max)
        z = v * v
        p = (((<float> 1.3353277630953247e-08 * z + <float> 2.060820368271201e-05) * z
              + <float> 0.003495541604163021) * z + <float> 0.13380989168127425) * z \
            + <float> 0.9999999796790445
        q = (((<float> 7.776024320070959e-07 * z + <float> 0.000328555360422324) * z
              + <float> 0.02587681338707093) * z + <float> 0.467143048959488) * z + <float> 1.0
        r = v * p / q
        return min(max(r, -t_max), t_max)


cdef inline void bias_activation(floating* pre, const floating* bias, Py_ssize_t B,
                                 Py_ssize_t H, bint relu) noexcept nogil:
    """pre[b, :] = f(pre[b, :] + bias), in place; pre (B, H)."""
    cdef Py_ssize_t b, j
    cdef floating* row
    cdef floating v
    cdef floating v_max = TANH_V_MAX, t_max = TANH_T_MAX
    for b in range(B):
        row = pre + b * H
        if relu:
            for j in range(H):
                v = row[j] + bias[j]
                row[j] = v if v > 0 else 0
        else:
            for j in range(H):
                row[j] = tanh_fast(row[j] + bias[j], v_max, t_max)


cdef inline void delta_step(const floating* d_out, const floating* carry, const floating* s,
                            floating* delta, Py_ssize_t n, bint relu) noexcept nogil:
    """δ = (d_out + carry) ⊙ f'(s), f' from the saved output s; all arrays of n elements."""
    cdef Py_ssize_t j
    cdef floating g
    if relu:
        for j in range(n):
            g = d_out[j] + carry[j]
            delta[j] = g if s[j] > 0 else 0
    else:
        for j in range(n):
            delta[j] = (d_out[j] + carry[j]) * (<floating> 1 - s[j] * s[j])


cdef inline void row_norms(const floating* a, const floating* b, floating* out,
                           Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    """out[r] = ‖a[r, :] + b[r, :]‖ for each of B rows of H."""
    cdef Py_ssize_t r, j
    cdef double acc, v
    for r in range(B):
        acc = 0
        for j in range(H):
            v = a[r * H + j] + b[r * H + j]
            acc += v * v
        out[r] = <floating> sqrt(acc)


cdef inline void clip_rows(floating* d, Py_ssize_t B, Py_ssize_t H, double max_norm) noexcept nogil:
    """Rescale each row of d (B, H) whose L2 norm exceeds max_norm down to max_norm."""
    cdef Py_ssize_t r, j
    cdef double acc
    cdef floating scale
    for r in range(B):
        acc = 0
        for j in range(H):
            acc += <double> d[r * H + j] * d[r * H + j]
        if acc > max_norm * max_norm:
            scale = <floating> (max_norm / sqrt(acc))
            for j in range(H):
                d[r * H + j] *= scale


cdef inline void small_matmul_acc(const floating* a, const floating* w, floating* c,
                                  Py_ssize_t M, Py_ssize_t K, Py_ssize_t N) noexcept nogil:
    """c (M, N) += a (M, K) @ w (K, N), row-major, for products too small for BLAS.

    Each row of c is built as a sum of scaled rows of w (axpy form), four at a time, so the
    inner loop is contiguous and vectorizes without reassociating a reduction.
    """
    cdef Py_ssize_t m, k, j
    cdef floating a0, a1, a2, a3
    cdef const floating* w0
    cdef const floating* w1
    cdef const floating* w2
    cdef const floating* w3
    cdef floating* row
    for m in range(M):
        row = c + m * N
        k = 0
        while k + 4 <= K:
            a0 = a[m * K + k]
            a1 = a[m * K + k + 1]
            a2 = a[m * K + k + 2]
            a3 = a[m * K + k + 3]
            w0 = w + k * N
            w1 = w0 + N
            w2 = w1 + N
            w3 = w2 + N
            for j in range(N):
                row[j] += a0 * w0[j] + a1 * w1[j] + a2 * w2[j] + a3 * w3[j]
            k += 4
        while k < K:
            a0 = a[m * K + k]
            w0 = w + k * N
            for j in range(N):
                row[j] += a0 * w0[j]
            k += 1


cdef inline void add_transposed(const floating* s, floating* c, Py_ssize_t m, Py_ssize_t n,
                                bint accumulate) noexcept nogil:
    """c (m, n) = sᵀ, or += sᵀ when accumulate; s (n, m) row-major.

    In blocks of 64 columns of c: the 64 rows of s a block reads stay in L1 while every row
    of c takes its turn, so each line of s is fetched once.
    """
    cdef Py_ssize_t i, j, j0, j1
    cdef floating* row
    for j0 in range(0, n, 64):
        j1 = min(j0 + 64, n)
        for i in range(m):
            row = c + i * n
            if accumulate:
                for j in range(j0, j1):
                    row[j] += s[j * m + i]
            else:
                for j in range(j0, j1):
                    row[j] = s[j * m + i]


cdef void transpose_tiles(const floating* s, floating* c, Py_ssize_t m, Py_ssize_t n) noexcept nogil:
    """c (m, n) = sᵀ, s (n, m) row-major, for large matrices: through 16x16 tiles on the stack,
    each line of s read whole once and each line of c written whole once. (Walking s or c
    with a stride instead keeps 16+ lines a power-of-two stride apart in one cache set,
    which thrashes: 2.8 ns an element against 1 here.)"""
    cdef floating buf[16][16]
    cdef Py_ssize_t i0, j0, ii, jj, ni, nj
    for j0 in range(0, n, 16):
        nj = min(<Py_ssize_t> 16, n - j0)
        for i0 in range(0, m, 16):
            ni = min(<Py_ssize_t> 16, m - i0)
            for jj in range(nj):
                for ii in range(ni):
                    buf[ii][jj] = s[(j0 + jj) * m + i0 + ii]
            for ii in range(ni):
                for jj in range(nj):
                    c[(i0 + ii) * n + j0 + jj] = buf[ii][jj]


cdef inline void own_or_blas(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n,
                             Py_ssize_t k, const floating* a, Py_ssize_t lda, const floating* b,
                             Py_ssize_t ldb, bint accumulate, floating* c,
                             Py_ssize_t ldc) noexcept nogil:
    """``matmul`` with float32 on the own gemm at every size (``matmul`` calls it above
    BLAS_ONE_THREAD, the tests of the gemm at any size); float64 on BLAS."""
    if floating is float:
        if fb_matmul(m, n, k, a, lda, trans_a, b, ldb, trans_b, c, ldc, accumulate) == 0:
            return
    gemm(trans_a, trans_b, m, n, k, 1, a, lda, b, ldb, 1 if accumulate else 0, c, ldc)


cdef inline void matmul(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                        const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                        bint accumulate, floating* c, Py_ssize_t ldc) noexcept nogil:
    """c (m, n) = op(a) @ op(b), or += when accumulate; row-major operands as in ``gemm``.

    float32 runs on fastbptt's own gemm (``_step_gemm.h``), so that one thread team (OpenMP's)
    serves the hoisted products and the time loop's: OpenBLAS's idle threads spin for a long
    while after each call and halve the speed of any other team that runs meanwhile. Except
    products of at most BLAS_ONE_THREAD multiply-adds: OpenBLAS runs those in the calling
    thread, its pool left asleep, and sooner than the own gemm can pack its operand (the
    char-RNN backward's three: 27.6 µs against 37.1). float64 (and float32 in the unlikely
    case its packing buffer cannot be allocated) runs on BLAS.
    """
    if <double> m * n * k <= BLAS_ONE_THREAD:
        gemm(trans_a, trans_b, m, n, k, 1, a, lda, b, ldb, 1 if accumulate else 0, c, ldc)
    else:
        own_or_blas(trans_a, trans_b, m, n, k, a, lda, b, ldb, accumulate, c, ldc)


cdef inline void step_product(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                              const floating* w, bint accumulate, floating* c,
                              floating* scratch, const float* packed, int threads) noexcept nogil:
    """c (m, n) = a (m, k) @ wᵀ, or += when accumulate: a per-step recurrent product, a and
    w (n, k) row-major.

    float32: on fastbptt's own gemm, from ``packed``, the weights packed once per kernel call
    by ``_step_weights`` (w is not read), on ``threads`` threads. float64: with a scratch of
    n·m elements it runs in the faster orientation for OpenBLAS (``gemm_into_transposed``)
    and is added into c transposed; with NULL, as one gemm."""
    if floating is float:
        fb_gemm(m, n, k, a, k, False, packed, c, n, accumulate, threads)
    elif scratch == NULL:
        gemm(False, True, m, n, k, 1, a, k, w, k, 1 if accumulate else 0, c, n)
    elif m == 1 and not accumulate:
        gemm_into_transposed(False, True, m, n, k, a, k, w, k, c)   # c (n, 1) is c (1, n)
    else:
        gemm_into_transposed(False, True, m, n, k, a, k, w, k, scratch)
        add_transposed(scratch, c, m, n, accumulate)


cdef inline void weight_gradients(const floating* d_in, const floating* d_rec,
                                  const floating* x, const floating* h_prev,
                                  const floating* w_ih, floating* dx, floating* dw_ih,
                                  floating* dw_hh, Py_ssize_t TB, Py_ssize_t I, Py_ssize_t H,
                                  Py_ssize_t G) noexcept nogil:
    """After the backward sweep, from the stored gate gradients of all T·B rows: dx, dW_ih
    and dW_hh, one gemm each (the adjoint accumulation dW += δ_tᵀ s_{t-1} over all t at once).

    d_in (TB, G): ∂E/∂(input-side pre-activations); d_rec (TB, G): ∂E/∂(recurrent-side
    pre-activations), the same array except in the GRU; x (TB, I); h_prev (TB, H) the states
    s_{t-1}, i.e. hs[:-1].
    """
    # dx = d_in @ w_ih                          (TB, G) @ (G, I)
    matmul(False, False, TB, I, G, d_in, G, w_ih, I, False, dx, I)
    # dw_ih = d_in.T @ x                        (G, TB) @ (TB, I)
    matmul(True, False, G, I, TB, d_in, G, x, I, False, dw_ih, I)
    # dw_hh = d_rec.T @ h_prev                  (G, TB) @ (TB, H)
    matmul(True, False, G, H, TB, d_rec, G, h_prev, H, False, dw_hh, H)


cdef inline Py_ssize_t gather_rows(const floating* src, floating* dst, const Py_ssize_t* sizes,
                                   Py_ssize_t T, Py_ssize_t B, Py_ssize_t width) noexcept nogil:
    """dst = the running rows of src (T, B, width), src[t, :sizes[t]] for t = 0, 1, ...,
    packed one after the other; returns how many rows that is."""
    cdef Py_ssize_t t, rows = 0
    for t in range(T):
        memcpy(dst + rows * width, src + t * B * width, sizes[t] * width * sizeof(floating))
        rows += sizes[t]
    return rows


cdef inline void place_rows(const floating* src, floating* dst, const Py_ssize_t* sizes,
                            Py_ssize_t T, Py_ssize_t B, Py_ssize_t width,
                            Py_ssize_t stride) noexcept nogil:
    """The inverse of ``gather_rows``: dst[t, :sizes[t], :width] = the packed rows of src,
    into a dst (T, B, stride) whose rows may be wider than ``width``."""
    cdef Py_ssize_t t, r, rows = 0
    for t in range(T):
        if width == stride:
            memcpy(dst + t * B * stride, src + rows * width, sizes[t] * width * sizeof(floating))
        else:
            for r in range(sizes[t]):
                memcpy(dst + (t * B + r) * stride, src + (rows + r) * width, width * sizeof(floating))
        rows += sizes[t]


cdef inline void input_projection(const floating* x, const floating* w_ih, floating* out,
                                  Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t G,
                                  Py_ssize_t stride, const Py_ssize_t* sizes,
                                  floating* work) noexcept nogil:
    """out[t, b, :G] = x[t, b] @ w_ihᵀ for every step at once, one gemm, into out (T, B,
    stride). With batch_sizes (sizes, and a work buffer of N·(I + G) for N running rows),
    for the running rows only: gathered, projected, placed back (other rows untouched)."""
    cdef Py_ssize_t rows
    if work == NULL:
        # out = x.reshape(T*B, I) @ w_ih.T
        matmul(False, True, T * B, G, I, x, I, w_ih, I, False, out, stride)
        return
    rows = gather_rows(x, work, sizes, T, B, I)
    # proj = x_packed @ w_ih.T
    matmul(False, True, rows, G, I, work, I, w_ih, I, False, work + rows * I, G)
    place_rows(work + rows * I, out, sizes, T, B, G, stride)


cdef inline void packed_weight_gradients(const floating* d_in, const floating* d_rec,
                                         const floating* x, const floating* h_prev,
                                         const floating* w_ih, floating* dx, floating* dw_ih,
                                         floating* dw_hh, Py_ssize_t T, Py_ssize_t B,
                                         Py_ssize_t I, Py_ssize_t H, Py_ssize_t G,
                                         const Py_ssize_t* sizes, floating* work) noexcept nogil:
    """``weight_gradients`` over the running rows only (the others' δ's are zero): each
    operand gathered into work (N·(G + I + H + I), plus N·G when d_rec is not d_in), the
    three gemms over N rows, dx placed back (its other rows are left as they are)."""
    cdef Py_ssize_t rows
    cdef floating* dp = work
    rows = gather_rows(d_in, dp, sizes, T, B, G)
    cdef floating* xp = dp + rows * G
    cdef floating* hp = xp + rows * I
    cdef floating* dxp = hp + rows * H
    cdef floating* rp = dp
    if d_rec != d_in:
        rp = dxp + rows * I
        gather_rows(d_rec, rp, sizes, T, B, G)
    gather_rows(x, xp, sizes, T, B, I)
    gather_rows(h_prev, hp, sizes, T, B, H)
    weight_gradients(dp, rp, xp, hp, w_ih, dxp, dw_ih, dw_hh, rows, I, H, G)
    place_rows(dxp, dx, sizes, T, B, I, I)


cdef inline void zero_rows(floating* a, Py_ssize_t start, Py_ssize_t stop,
                           Py_ssize_t width) noexcept nogil:
    """a[start:stop, :] = 0 for a row-major a with rows of ``width``."""
    if stop > start:
        memset(a + start * width, 0, (stop - start) * width * sizeof(floating))


cdef inline void column_sums(const floating* a, floating* out, Py_ssize_t M, Py_ssize_t N) noexcept nogil:
    """out (N,) = a (M, N).sum(axis=0)."""
    cdef Py_ssize_t m, j
    memset(out, 0, N * sizeof(floating))
    for m in range(M):
        for j in range(N):
            out[j] += a[m * N + j]


# ---------------------------------------------------------------------------- public kernels

cdef object _transposed(const floating[:, ::1] w):
    """w.T as a new row-major array (numpy's copy of a transposed view takes 29 ms for
    4096x1024 floats here, this one 4.5)."""
    out = np.empty((w.shape[1], w.shape[0]), dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, ::1] o = out
    with nogil:
        transpose_tiles(&w[0, 0], &o[0, 0], w.shape[1], w.shape[0])
    return out


cdef object _packed_work(batch_sizes, Py_ssize_t T, Py_ssize_t B, Py_ssize_t per_row, dtype):
    """The work buffer of ``input_projection``/``packed_weight_gradients``: per_row elements
    for each running row; None without batch_sizes, or when every row runs every step."""
    if batch_sizes is None:
        return None
    rows = int(np.sum(batch_sizes))
    return None if rows == T * B else np.empty(max(rows * per_row, 1), dtype=dtype)


cdef inline Py_ssize_t running(Py_ssize_t size, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """How many of rows r0:r1 run at a step whose batch_sizes entry is ``size`` (a prefix)."""
    return min(max(size - r0, 0), r1 - r0)


cdef object _shards(bint single, Py_ssize_t B, Py_ssize_t weights, batch_sizes, int threads):
    """The row bounds (intp, shards + 1) of a float32 time loop run in shards (SHARD_STEP),
    or None to run it whole. single: the loop is float64 or takes the plain small path.

    The shards carry equal work: equal rows, or with batch_sizes equal sums of lengths (the
    batch is sorted longest first, so equal rows would leave the first shard the most)."""
    cdef Py_ssize_t shards = min(<Py_ssize_t> threads, B // SHARD_ROWS)
    if single or shards < 2 or weights > SHARD_STEP:
        return None
    if batch_sizes is None:
        return (np.arange(shards + 1, dtype=np.intp) * B) // shards
    lengths = np.count_nonzero(np.asarray(batch_sizes)[:, None] > np.arange(B), axis=0)
    work = np.concatenate(([0], np.cumsum(lengths)))
    bounds = np.searchsorted(work, work[B] * np.arange(shards + 1) / shards).astype(np.intp)
    bounds[0] = 0
    bounds[shards] = B
    bounds = np.maximum.accumulate(bounds)
    return bounds if np.all(np.diff(bounds) > 0) else None


cdef object _scratch(Py_ssize_t size, dtype, bint wanted):
    """A scratch buffer for ``step_product``'s transposed orientation (float64), or None."""
    return np.empty(max(size, 1), dtype=dtype) if wanted and dtype == np.float64 else None


cdef object _step_weights(const floating[:, ::1] w, bint transposed, bint wanted):
    """float32: w packed once for the per-step products of a time loop (``step_product``), as
    ``fb_gemm``'s B operand: wᵀ when transposed (the forward's a @ W_hhᵀ), else w (the
    backward's δ @ W_hh); an aligned float32 array. float64, or not wanted: None."""
    cdef Py_ssize_t n = w.shape[0] if transposed else w.shape[1]
    cdef Py_ssize_t k = w.shape[1] if transposed else w.shape[0]
    cdef Py_ssize_t size = fb_packed_size(n, k)
    cdef Py_ssize_t start
    cdef float[::1] out
    cdef int threads = fb_max_threads()
    if floating is double or not wanted:
        return None
    else:
        raw = np.empty(size + FB_ALIGN // 4, dtype=np.float32)
        start = (-raw.ctypes.data % FB_ALIGN) // 4
        out = raw[start:start + size]
        with nogil:
            if transposed:
                fb_pack_transposed(&w[0, 0], n, k, w.shape[1], &out[0], threads)
            else:
                fb_pack(&w[0, 0], n, k, w.shape[1], &out[0], threads)
        return out.base


def _matmul(a, b, bint trans_a=False, bint trans_b=False, c=None):
    """op(a) @ op(b), plus c when given, through fastbptt's own gemm at every size (float32;
    float64: BLAS): for the tests. a, b, c row-major of one dtype; op transposes when its flag
    is set."""
    if a.dtype == np.float32:
        return _matmul_typed[float](a, b, trans_a, trans_b, c)
    return _matmul_typed[double](a, b, trans_a, trans_b, c)


cdef object _matmul_typed(const floating[:, ::1] a, const floating[:, ::1] b, bint trans_a,
                          bint trans_b, c):
    cdef Py_ssize_t m = a.shape[1] if trans_a else a.shape[0]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t n = b.shape[0] if trans_b else b.shape[1]
    if (b.shape[1] if trans_b else b.shape[0]) != k:
        raise ValueError(f"inner dimensions differ: {k} and {b.shape[1] if trans_b else b.shape[0]}")
    out_arr = (np.zeros((m, n), dtype=np.asarray(a).dtype) if c is None
               else np.array(c, dtype=np.asarray(a).dtype, order="C"))
    if out_arr.shape != (m, n):
        raise ValueError(f"c has shape {out_arr.shape}, expected {(m, n)}")
    cdef floating[:, ::1] out = out_arr
    cdef bint accumulate = c is not None
    cdef const floating* ap = &a[0, 0] if a.shape[0] and a.shape[1] else NULL
    cdef const floating* bp = &b[0, 0] if b.shape[0] and b.shape[1] else NULL
    if m and n:
        with nogil:
            own_or_blas(trans_a, trans_b, m, n, k, ap, a.shape[1], bp, b.shape[1], accumulate,
                        &out[0, 0], n)
    return out_arr


def _shard_bounds(Py_ssize_t B, Py_ssize_t weights, batch_sizes=None):
    """The row bounds a float32 time loop over B rows with this many recurrent weights
    would run in (None: whole), on this many threads as OpenMP allows now: for the tests."""
    return _shards(False, B, weights, batch_sizes, fb_max_threads())


def threads():
    """How many threads the float32 kernels' OpenMP team has (OMP_NUM_THREADS, threadpoolctl)."""
    return fb_max_threads()


def _step_gemm(a, w, int threads):
    """a @ w.T for float32 a (m, k), w (n, k), as a time loop's per-step product runs it
    (weights packed once, ``fb_gemm`` on ``threads`` threads): for the tests."""
    cdef const float[:, ::1] av = a
    cdef const float[:, ::1] wv = w
    cdef Py_ssize_t m = av.shape[0], k = av.shape[1], n = wv.shape[0]
    if wv.shape[1] != k:
        raise ValueError(f"inner dimensions differ: {k} and {wv.shape[1]}")
    cdef float[::1] packed = _step_weights(wv, True, True)
    out_arr = np.zeros((m, n), dtype=np.float32)
    cdef float[:, ::1] out = out_arr
    with nogil:
        fb_gemm(m, n, k, &av[0, 0], k, False, &packed[0], &out[0, 0], n, False, threads)
    return out_arr


def cpu_features():
    """The instruction-set levels this CPU runs, best last: a subset of ('avx2', 'avx512')."""
    return tuple(name for name, ok in (("avx2", fastbptt_has_avx2()),
                                       ("avx512", fastbptt_has_avx512())) if ok)


# Each public kernel picks its float or double specialisation by hand: the automatic
# dispatch of a fused ``def`` matches signatures in Python and costs a microsecond a call,
# which is what a whole char-RNN step costs.

def all_finite(a):
    """True when no element of the C-contiguous float32/float64 array ``a`` is NaN or inf."""
    if a.dtype == np.float32:
        return _all_finite[float](a.reshape(-1))
    return _all_finite[double](a.reshape(-1))


cdef bint _all_finite(const floating[::1] a):
    cdef Py_ssize_t i, start, stop, n = a.shape[0]
    cdef int bad = 0
    with nogil:
        # In blocks, so a NaN near the front stops the scan early, while the block's loop
        # stays an integer OR-reduction that vectorizes (x - x is NaN for inf and NaN).
        start = 0
        while start < n and not bad:
            stop = min(start + 4096, n)
            for i in range(start, stop):
                bad |= (a[i] - a[i]) != 0
            start = stop
    return not bad


cdef void elman_forward_rows(floating* hs, const floating* w_hh, const floating* w_hh_t,
                             const floating* bias, floating* scr, const float* wp,
                             const Py_ssize_t* sizes, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
                             Py_ssize_t r0, Py_ssize_t r1, bint relu, bint small,
                             int threads) noexcept nogil:
    """The time loop of ``_elman_forward`` over batch rows r0:r1 (all of them, or a shard);
    sizes: batch_sizes or NULL; threads: the team of the per-step products."""
    cdef Py_ssize_t t, rows = r1 - r0, n = r1 - r0
    cdef floating* cur
    cdef const floating* prev
    for t in range(1, T + 1):
        cur = hs + (t * B + r0) * H
        prev = hs + ((t - 1) * B + r0) * H
        if sizes != NULL:
            n = running(sizes[t - 1], r0, r1)
            zero_rows(cur, n, rows, H)        # finished sequences
            if n == 0:
                continue
        if small:
            # hs[t, :n] += hs[t-1, :n] @ w_hh.T
            small_matmul_acc(prev, w_hh_t, cur, n, H, H)
        else:
            # hs[t, :n] += hs[t-1, :n] @ w_hh.T
            step_product(n, H, H, prev, w_hh, True, cur, scr, wp, threads)
        bias_activation(cur, bias, n, H, relu)


def elman_forward(x, h0, w_ih, w_hh, b_ih, b_hh, bint relu, batch_sizes=None):
    """Run an Elman layer over a sequence; see ``_reference.elman_forward``.

    x (T, B, I), h0 (B, H), w_ih (H, I), w_hh (H, H), b_ih, b_hh (H,); batch_sizes (T,)
    intp or None. Returns hs (T+1, B, H): hs[0] = h0, hs[t] = s_t, the output and the
    backward's cache.
    """
    if x.dtype == np.float32:
        return _elman_forward[float](x, h0, w_ih, w_hh, b_ih, b_hh, relu, batch_sizes)
    return _elman_forward[double](x, h0, w_ih, w_hh, b_ih, b_hh, relu, batch_sizes)


cdef object _elman_forward(const floating[:, :, ::1] x, const floating[:, ::1] h0,
                           const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                           const floating[::1] b_ih, const floating[::1] b_hh, bint relu,
                           batch_sizes):
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = w_hh.shape[0]
    dtype = np.float32 if floating is float else np.float64
    hs_arr = np.empty((T + 1, B, H), dtype=dtype)
    cdef floating[:, :, ::1] hs = hs_arr
    cdef floating[::1] bias = np.add(b_ih, b_hh)
    cdef bint small = B * H * H <= SMALL_STEP
    cdef floating[:, ::1] w_hh_t
    if small:
        # The small path wants W_hhᵀ row-major, so that each step is a sum of rows.
        w_hh_t = np.ascontiguousarray(np.asarray(w_hh).T)
    cdef floating[::1] scratch = _scratch(B * H, dtype, not small and H * H >= TRANSPOSED_STEP)
    cdef floating* scr = &scratch[0] if scratch is not None else NULL
    cdef float[::1] w_packed = _step_weights(w_hh, True, not small)
    cdef const float* wp = &w_packed[0] if w_packed is not None else NULL
    cdef const floating* w_t = &w_hh_t[0, 0] if small else NULL
    cdef bint packed = batch_sizes is not None
    cdef const Py_ssize_t[::1] sizes = batch_sizes if packed else None
    cdef const Py_ssize_t* sp = &sizes[0] if packed else NULL
    cdef floating[::1] work = _packed_work(batch_sizes, T, B, I + H, dtype)
    cdef int threads = fb_max_threads()
    cdef const Py_ssize_t[::1] bounds = _shards(floating is double or small, B, H * H,
                                                batch_sizes, threads)
    cdef Py_ssize_t shard, shards = bounds.shape[0] - 1 if bounds is not None else 1
    with nogil:
        memcpy(&hs[0, 0, 0], &h0[0, 0], B * H * sizeof(floating))
        # hs[1:] = x @ w_ih.T       (all steps' input projections at once)
        input_projection(&x[0, 0, 0], &w_ih[0, 0], &hs[1, 0, 0], T, B, I, H, H,
                         sp, &work[0] if work is not None else NULL)
        if shards > 1:
            for shard in prange(shards, num_threads=shards, schedule="static", chunksize=1):
                elman_forward_rows(&hs[0, 0, 0], &w_hh[0, 0], w_t, &bias[0], scr, wp, sp, T, B,
                                   H, bounds[shard], bounds[shard + 1], relu, small, 1)
        else:
            elman_forward_rows(&hs[0, 0, 0], &w_hh[0, 0], w_t, &bias[0], scr, wp, sp, T, B, H,
                               0, B, relu, small, threads)
    return hs_arr


cdef void elman_backward_rows(const floating* d_out, floating* carry, const floating* hs,
                              floating* delta, floating* norms, const floating* w_hh,
                              const floating* w_step, floating* scr, const float* wp,
                              const Py_ssize_t* sizes, Py_ssize_t T, Py_ssize_t B,
                              Py_ssize_t H, Py_ssize_t r0, Py_ssize_t r1, bint relu, bint clip,
                              double max_norm, bint want_norms, bint small, bint transposed,
                              int threads) noexcept nogil:
    """The backward sweep of ``_elman_backward`` over batch rows r0:r1 (all, or a shard)."""
    cdef Py_ssize_t t, rows = r1 - r0, n = r1 - r0
    cdef floating* d
    cdef floating* c = carry + r0 * H
    cdef const floating* dy
    for t in range(T - 1, -1, -1):
        d = delta + (t * B + r0) * H
        dy = d_out + (t * B + r0) * H
        if sizes != NULL:
            # rows n: finished before step t: δ_t = 0, their carry passes on unchanged
            n = running(sizes[t], r0, r1)
            zero_rows(d, n, rows, H)
            if want_norms:
                zero_rows(norms + t * B + r0, n, rows, 1)
            if n == 0:
                continue
        # carry holds ∂E/∂s_t arriving from step t+1 (or d_h_n at the end)
        if want_norms:
            row_norms(dy, c, norms + t * B + r0, n, H)
        delta_step(dy, c, hs + ((t + 1) * B + r0) * H, d, n * H, relu)
        if clip:
            clip_rows(d, n, H, max_norm)
        if small:
            # carry[:n] = delta[t, :n] @ w_hh
            memset(c, 0, n * H * sizeof(floating))
            small_matmul_acc(d, w_hh, c, n, H, H)
        elif transposed or wp != NULL:
            # carry[:n] = delta[t, :n] @ w_hh
            step_product(n, H, H, d, w_step, False, c, scr, wp, threads)
        else:
            # carry[:n] = delta[t, :n] @ w_hh
            gemm(False, False, n, H, H, 1, d, H, w_hh, H, 0, c, H)


def elman_backward(d_out, dh_n, x, hs, w_ih, w_hh, bint relu, clip_step=None, step_norms=None,
                   batch_sizes=None):
    """Backpropagate through an Elman layer; see ``_reference.elman_backward``.

    Returns (dx (T, B, I), dh0 (B, H), dw_ih (H, I), dw_hh (H, H), db (H,)).
    """
    if d_out.dtype == np.float32:
        return _elman_backward[float](d_out, dh_n, x, hs, w_ih, w_hh, relu, clip_step, step_norms,
                                      batch_sizes)
    return _elman_backward[double](d_out, dh_n, x, hs, w_ih, w_hh, relu, clip_step, step_norms,
                                   batch_sizes)


cdef object _elman_backward(const floating[:, :, ::1] d_out, dh_n, const floating[:, :, ::1] x,
                            const floating[:, :, ::1] hs, const floating[:, ::1] w_ih,
                            const floating[:, ::1] w_hh, bint relu, clip_step, step_norms,
                            batch_sizes):
    cdef Py_ssize_t T = d_out.shape[0], B = d_out.shape[1], H = d_out.shape[2], I = x.shape[2]
    dtype = np.float32 if floating is float else np.float64
    cdef bint clip = clip_step is not None
    cdef double max_norm = float(clip_step) if clip else 0.0
    cdef bint want_norms = step_norms is not None
    cdef floating[:, ::1] norms
    if want_norms:
        norms = step_norms
    else:
        norms = np.empty((1, 1), dtype=dtype)
    cdef floating[:, ::1] carry = (np.zeros((B, H), dtype=dtype) if dh_n is None
                                   else np.array(dh_n, dtype=dtype, order="C"))
    delta_arr = np.empty((T, B, H), dtype=dtype)
    dx_arr = np.empty((T, B, I), dtype=dtype)
    dw_ih_arr = np.empty((H, I), dtype=dtype)
    dw_hh_arr = np.empty((H, H), dtype=dtype)
    db_arr = np.empty(H, dtype=dtype)
    cdef floating[:, :, ::1] delta = delta_arr
    cdef floating[:, :, ::1] dx = dx_arr
    cdef floating[:, ::1] dw_ih = dw_ih_arr
    cdef floating[:, ::1] dw_hh = dw_hh_arr
    cdef floating[::1] db = db_arr
    cdef bint small = B * H * H <= SMALL_STEP
    # float32's per-step products run on packed weights instead
    cdef bint transposed = floating is double and not small and H * H >= TRANSPOSED_STEP
    cdef float[::1] w_packed = _step_weights(w_hh, False, not small)
    cdef const float* wp = &w_packed[0] if w_packed is not None else NULL
    cdef floating[::1] scratch = _scratch(B * H, dtype, transposed)
    cdef floating* scr = &scratch[0] if transposed else NULL
    # the transposed orientation wants w_hh.T row-major
    cdef const floating[:, ::1] w_step = _transposed(w_hh) if transposed else w_hh
    cdef bint packed = batch_sizes is not None
    cdef const Py_ssize_t[::1] sizes = batch_sizes if packed else None
    cdef floating[::1] work = _packed_work(batch_sizes, T, B, H + 2 * I + H, dtype)
    if work is not None:
        dx[...] = 0     # the packed gradients place dx's running rows only
    cdef const Py_ssize_t* sp = &sizes[0] if packed else NULL
    cdef int threads = fb_max_threads()
    cdef const Py_ssize_t[::1] bounds = _shards(floating is double or small, B, H * H,
                                                batch_sizes, threads)
    cdef Py_ssize_t shard, shards = bounds.shape[0] - 1 if bounds is not None else 1
    with nogil:
        if shards > 1:
            for shard in prange(shards, num_threads=shards, schedule="static", chunksize=1):
                elman_backward_rows(&d_out[0, 0, 0], &carry[0, 0], &hs[0, 0, 0], &delta[0, 0, 0],
                                    &norms[0, 0], &w_hh[0, 0], &w_step[0, 0], scr, wp, sp, T, B,
                                    H, bounds[shard], bounds[shard + 1], relu, clip, max_norm,
                                    want_norms, small, transposed, 1)
        else:
            elman_backward_rows(&d_out[0, 0, 0], &carry[0, 0], &hs[0, 0, 0], &delta[0, 0, 0],
                                &norms[0, 0], &w_hh[0, 0], &w_step[0, 0], scr, wp, sp, T, B, H,
                                0, B, relu, clip, max_norm, want_norms, small, transposed,
                                threads)
        if work is None:
            weight_gradients(&delta[0, 0, 0], &delta[0, 0, 0], &x[0, 0, 0], &hs[0, 0, 0],
                             &w_ih[0, 0], &dx[0, 0, 0], &dw_ih[0, 0], &dw_hh[0, 0], T * B, I, H, H)
        else:
            packed_weight_gradients(&delta[0, 0, 0], &delta[0, 0, 0], &x[0, 0, 0], &hs[0, 0, 0],
                                    &w_ih[0, 0], &dx[0, 0, 0], &dw_ih[0, 0], &dw_hh[0, 0],
                                    T, B, I, H, H, &sizes[0], &work[0])
        # db = delta.sum(axis=(0, 1))
        column_sums(&delta[0, 0, 0], &db[0], T * B, H)
    return dx_arr, np.asarray(carry), dw_ih_arr, dw_hh_arr, db_arr


def linear_forward(x, w, b):
    """y = x wᵀ + b: x (M, K), w (N, K), b (N,) -> y (M, N)."""
    if x.dtype == np.float32:
        return _linear_forward[float](x, w, b)
    return _linear_forward[double](x, w, b)


cdef object _linear_forward(const floating[:, ::1] x, const floating[:, ::1] w, const floating[::1] b):
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1], N = w.shape[0], m
    y_arr = np.empty((M, N), dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, ::1] y = y_arr
    with nogil:
        for m in range(M):
            memcpy(&y[m, 0], &b[0], N * sizeof(floating))
        # y += x @ w.T
        matmul(False, True, M, N, K, &x[0, 0], K, &w[0, 0], K, True, &y[0, 0], N)
    return y_arr


def linear_backward(dy, x, w):
    """Gradients of y = x wᵀ + b: dy (M, N), x (M, K) -> (dx (M, K), dw (N, K), db (N,))."""
    if dy.dtype == np.float32:
        return _linear_backward[float](dy, x, w)
    return _linear_backward[double](dy, x, w)


cdef object _linear_backward(const floating[:, ::1] dy, const floating[:, ::1] x, const floating[:, ::1] w):
    cdef Py_ssize_t M = dy.shape[0], N = dy.shape[1], K = x.shape[1]
    dtype = np.float32 if floating is float else np.float64
    dx_arr = np.empty((M, K), dtype=dtype)
    dw_arr = np.empty((N, K), dtype=dtype)
    db_arr = np.empty(N, dtype=dtype)
    cdef floating[:, ::1] dx = dx_arr
    cdef floating[:, ::1] dw = dw_arr
    cdef floating[::1] db = db_arr
    with nogil:
        # dx = dy @ w
        matmul(False, False, M, K, N, &dy[0, 0], N, &w[0, 0], K, False, &dx[0, 0], K)
        # dw = dy.T @ x
        matmul(True, False, N, K, M, &dy[0, 0], N, &x[0, 0], K, False, &dw[0, 0], K)
        # db = dy.sum(axis=0)
        column_sums(&dy[0, 0], &db[0], M, N)
    return dx_arr, dw_arr, db_arr


# ---------------------------------------------------------------------------- gated cells
#
# LSTM and GRU layers, the twins of the ones in ``_reference.py`` (PyTorch's equations, gate
# order i, f, g, o and r, z, n). The recipe is the Elman kernels': all gates' input
# projections in one gemm before the time loop, one recurrent product over all gates per
# step, one fused element-wise pass per step, and the weight gradients and dx as one gemm
# each over the stored gate gradients after the backward sweep.

# The backward sweep of a single sequence (B = 1) multiplies one row δ_t (1, G·H) by W_hh
# (G·H, H) per step in a plain loop up to this many multiply-adds (G·H·H), and by BLAS
# above it or for B > 1. Measured here (scipy-openblas 0.3.30, float32, whole backward at
# T = 25): for one row the loop is 0-10 % faster than sgemm at H = 64-200 on a quiet
# machine, and up to 2x faster (noisily) while the other core is busy; from B = 2 up,
# sgemm is 1.4-2.5x faster than the loop at every size tried. The forward pass has no small
# path: its loop would need W_hhᵀ row-major, and that copy (12 µs at H = 100, 40 µs at
# H = 128) costs more than the loop saves over tens of steps.
cdef long SMALL_GATED_STEP = 256 * 1024


cdef inline floating sigmoid_fast(floating v, floating v_max, floating t_max) noexcept nogil:
    """σ(v) = ½(1 + tanh(v/2)): the same function as 1/(1 + e^{-v}), built on tanh_fast's
    approximation so that it vectorizes, and e^{-v} never overflows."""
    return <floating> 0.5 * (<floating> 1 + tanh_fast(<floating> 0.5 * v, v_max, t_max))


# The gated cells' fused passes work through a row LANES elements at a time, into buffers
# on the stack that are copied out after each chunk. Written straight into the caller's
# arrays, these loops stay scalar with gcc 12 in every build (-fopt-info-vec): the outputs
# might alias the inputs, with more pairs to check at run time than gcc will check (10).
# Stack buffers alias nothing, and with tanh_fast's run-time bounds every build vectorizes all four passes.
cdef enum:
    LANES = 128


cdef inline void lstm_cell(floating* pre, const floating* bias, const floating* c_prev,
                           floating* c, floating* h, Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    """One LSTM step after the products, in one pass over pre (B, 4H).

    pre holds x_t W_ihᵀ + h_{t-1} W_hhᵀ and is overwritten with the activations i, f, g, o
    (the cache); c (B, H) = f ⊙ c_prev + i ⊙ g and h (B, H) = o ⊙ tanh(c) are written.
    """
    cdef floating v_max = TANH_V_MAX, t_max = TANH_T_MAX
    cdef floating i[LANES]
    cdef floating f[LANES]
    cdef floating g[LANES]
    cdef floating o[LANES]
    cdef floating c_t[LANES]
    cdef floating h_t[LANES]
    cdef Py_ssize_t b, j, j0, n, size
    cdef floating* p
    cdef const floating* bp
    cdef const floating* cp
    for b in range(B):
        j0 = 0
        while j0 < H:
            n = min(<Py_ssize_t> LANES, H - j0)
            p = pre + b * 4 * H + j0
            bp = bias + j0
            cp = c_prev + b * H + j0
            for j in range(n):
                i[j] = sigmoid_fast(p[j] + bp[j], v_max, t_max)
                f[j] = sigmoid_fast(p[H + j] + bp[H + j], v_max, t_max)
                g[j] = tanh_fast(p[2 * H + j] + bp[2 * H + j], v_max, t_max)
                o[j] = sigmoid_fast(p[3 * H + j] + bp[3 * H + j], v_max, t_max)
                c_t[j] = f[j] * cp[j] + i[j] * g[j]
                h_t[j] = o[j] * tanh_fast(c_t[j], v_max, t_max)
            size = n * sizeof(floating)
            memcpy(p, i, size)
            memcpy(p + H, f, size)
            memcpy(p + 2 * H, g, size)
            memcpy(p + 3 * H, o, size)
            memcpy(c + b * H + j0, c_t, size)
            memcpy(h + b * H + j0, h_t, size)
            j0 += n


cdef inline void lstm_cell_backward(const floating* d_out, const floating* carry_h,
                                    floating* carry_c, const floating* gates,
                                    const floating* c_prev, const floating* c,
                                    floating* delta, Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    """One LSTM step of the backward sweep, in one pass; all (B, H) but gates, delta (B, 4H).

    Reads ∂E/∂h_t = d_out + carry_h and ∂E/∂c_t's part from step t+1 (carry_c); writes the
    gate pre-activation gradient δ_t into delta and f ⊙ ∂E/∂c_t into carry_c.
    """
    cdef floating v_max = TANH_V_MAX, t_max = TANH_T_MAX
    cdef floating d_i[LANES]
    cdef floating d_f[LANES]
    cdef floating d_g[LANES]
    cdef floating d_o[LANES]
    cdef floating dc_prev[LANES]
    cdef Py_ssize_t b, j, j0, n, size
    cdef const floating* gt
    cdef const floating* dy
    cdef const floating* ch
    cdef const floating* cc
    cdef const floating* ct
    cdef const floating* cp
    cdef floating* d
    cdef floating i, f, g, o, dh, tc, dc
    for b in range(B):
        j0 = 0
        while j0 < H:
            n = min(<Py_ssize_t> LANES, H - j0)
            gt = gates + b * 4 * H + j0
            dy = d_out + b * H + j0
            ch = carry_h + b * H + j0
            cc = carry_c + b * H + j0
            ct = c + b * H + j0
            cp = c_prev + b * H + j0
            for j in range(n):
                i = gt[j]
                f = gt[H + j]
                g = gt[2 * H + j]
                o = gt[3 * H + j]
                dh = dy[j] + ch[j]
                # h_t = o ⊙ tanh(c_t), o = σ(.)
                tc = tanh_fast(ct[j], v_max, t_max)
                dc = cc[j] + dh * o * (<floating> 1 - tc * tc)
                d_o[j] = dh * tc * o * (<floating> 1 - o)
                # c_t = f ⊙ c_{t-1} + i ⊙ g;  i = σ(.), f = σ(.), g = tanh(.)
                d_i[j] = dc * g * i * (<floating> 1 - i)
                d_f[j] = dc * cp[j] * f * (<floating> 1 - f)
                d_g[j] = dc * i * (<floating> 1 - g * g)
                dc_prev[j] = dc * f
            size = n * sizeof(floating)
            d = delta + b * 4 * H + j0
            memcpy(d, d_i, size)
            memcpy(d + H, d_f, size)
            memcpy(d + 2 * H, d_g, size)
            memcpy(d + 3 * H, d_o, size)
            memcpy(carry_c + b * H + j0, dc_prev, size)
            j0 += n


cdef inline void gru_cell(floating* gates, const floating* gh, const floating* bias,
                          const floating* b_ih, const floating* b_hh, const floating* h_prev,
                          floating* h, Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    """One GRU step after the products, in one pass.

    gates (B, 4H) holds x_t W_ihᵀ in its first 3H columns, gh (B, 3H) h_{t-1} W_hhᵀ; bias
    is b_ih + b_hh (its r, z blocks are used). gates is overwritten with r, z, n, hn (the
    cache) and h (B, H) = (1 - z) ⊙ n + z ⊙ h_prev is written.
    """
    cdef floating v_max = TANH_V_MAX, t_max = TANH_T_MAX
    cdef floating r[LANES]
    cdef floating z[LANES]
    cdef floating n_t[LANES]
    cdef floating hn[LANES]
    cdef floating h_t[LANES]
    cdef Py_ssize_t b, j, j0, n, size
    cdef floating* gi
    cdef const floating* gp
    cdef const floating* hp
    for b in range(B):
        j0 = 0
        while j0 < H:
            n = min(<Py_ssize_t> LANES, H - j0)
            gi = gates + b * 4 * H + j0
            gp = gh + b * 3 * H + j0
            hp = h_prev + b * H + j0
            for j in range(n):
                r[j] = sigmoid_fast(gi[j] + gp[j] + bias[j0 + j], v_max, t_max)
                z[j] = sigmoid_fast(gi[H + j] + gp[H + j] + bias[H + j0 + j], v_max, t_max)
                hn[j] = gp[2 * H + j] + b_hh[2 * H + j0 + j]
                n_t[j] = tanh_fast(gi[2 * H + j] + b_ih[2 * H + j0 + j] + r[j] * hn[j],
                                   v_max, t_max)
                h_t[j] = (<floating> 1 - z[j]) * n_t[j] + z[j] * hp[j]
            size = n * sizeof(floating)
            memcpy(gi, r, size)
            memcpy(gi + H, z, size)
            memcpy(gi + 2 * H, n_t, size)
            memcpy(gi + 3 * H, hn, size)
            memcpy(h + b * H + j0, h_t, size)
            j0 += n


cdef inline void gru_cell_backward(const floating* d_out, floating* carry, const floating* gates,
                                   const floating* h_prev, floating* delta_i,
                                   Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    """One GRU step of the backward sweep, in one pass; d_out, carry, h_prev (B, H).

    Reads ∂E/∂h_t = d_out + carry; writes the input-side gate gradient δi_t (B, 3H) and
    replaces carry with the direct part z ⊙ ∂E/∂h_t of ∂E/∂h_{t-1}.
    """
    cdef floating d_r[LANES]
    cdef floating d_z[LANES]
    cdef floating d_n[LANES]
    cdef floating dh_prev[LANES]
    cdef Py_ssize_t b, j, j0, n, size
    cdef const floating* gt
    cdef const floating* dy
    cdef const floating* ch
    cdef const floating* hp
    cdef floating* d
    cdef floating r, z, n_t, hn, dh, dn_pre
    for b in range(B):
        j0 = 0
        while j0 < H:
            n = min(<Py_ssize_t> LANES, H - j0)
            gt = gates + b * 4 * H + j0
            dy = d_out + b * H + j0
            ch = carry + b * H + j0
            hp = h_prev + b * H + j0
            for j in range(n):
                r = gt[j]
                z = gt[H + j]
                n_t = gt[2 * H + j]
                hn = gt[3 * H + j]
                dh = dy[j] + ch[j]
                # h_t = (1 - z) ⊙ n + z ⊙ h_{t-1};  n = tanh(gi_n + r ⊙ hn), z = σ(.)
                dn_pre = dh * (<floating> 1 - z) * (<floating> 1 - n_t * n_t)
                d_n[j] = dn_pre
                d_z[j] = dh * (hp[j] - n_t) * z * (<floating> 1 - z)
                # r = σ(.)
                d_r[j] = dn_pre * hn * r * (<floating> 1 - r)
                dh_prev[j] = dh * z
            size = n * sizeof(floating)
            d = delta_i + b * 3 * H + j0
            memcpy(d, d_r, size)
            memcpy(d + H, d_z, size)
            memcpy(d + 2 * H, d_n, size)
            memcpy(carry + b * H + j0, dh_prev, size)
            j0 += n


cdef inline void gru_hidden_delta(const floating* delta_i, const floating* gates,
                                  floating* delta_h, Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    """δh_t (B, 3H) from δi_t: the same r, z blocks, and δi_n ⊙ r (gh_n enters as r ⊙ hn)."""
    cdef Py_ssize_t b, j
    cdef const floating* dn
    cdef const floating* gr
    cdef floating* dhn
    for b in range(B):
        memcpy(delta_h + b * 3 * H, delta_i + b * 3 * H, 2 * H * sizeof(floating))
        dn = delta_i + b * 3 * H + 2 * H
        gr = gates + b * 4 * H
        dhn = delta_h + b * 3 * H + 2 * H
        for j in range(H):
            dhn[j] = dn[j] * gr[j]


cdef void lstm_forward_rows(floating* hs, floating* cs, floating* gates, const floating* w_hh,
                            const floating* bias, floating* scr, const float* wp,
                            const Py_ssize_t* sizes, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
                            Py_ssize_t r0, Py_ssize_t r1, int threads) noexcept nogil:
    """The time loop of ``_lstm_forward`` over batch rows r0:r1 (all, or a shard)."""
    cdef Py_ssize_t t, G = 4 * H, rows = r1 - r0, n = r1 - r0
    cdef floating* pre
    for t in range(T):
        pre = gates + (t * B + r0) * G
        if sizes != NULL:
            n = running(sizes[t], r0, r1)
            zero_rows(hs + ((t + 1) * B + r0) * H, n, rows, H)      # finished sequences
            zero_rows(cs + ((t + 1) * B + r0) * H, n, rows, H)
            zero_rows(pre, n, rows, G)
            if n == 0:
                continue
        # gates[t, :n] += hs[t, :n] @ w_hh.T
        step_product(n, G, H, hs + (t * B + r0) * H, w_hh, True, pre, scr, wp, threads)
        lstm_cell(pre, bias, cs + (t * B + r0) * H, cs + ((t + 1) * B + r0) * H,
                  hs + ((t + 1) * B + r0) * H, n, H)


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes=None):
    """Run an LSTM layer over a sequence; see ``_reference.lstm_forward``.

    x (T, B, I), h0, c0 (B, H), w_ih (4H, I), w_hh (4H, H), b_ih, b_hh (4H,).
    Returns (hs, cs, gates): hs, cs (T+1, B, H) from h0, c0; gates (T, B, 4H) the
    activations i, f, g, o of each step (zero in finished rows, with batch_sizes).
    """
    if x.dtype == np.float32:
        return _lstm_forward[float](x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes)
    return _lstm_forward[double](x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes)


cdef object _lstm_forward(const floating[:, :, ::1] x, const floating[:, ::1] h0,
                          const floating[:, ::1] c0, const floating[:, ::1] w_ih,
                          const floating[:, ::1] w_hh, const floating[::1] b_ih,
                          const floating[::1] b_hh, batch_sizes):
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = w_hh.shape[1]
    cdef Py_ssize_t G = 4 * H
    dtype = np.float32 if floating is float else np.float64
    hs_arr = np.empty((T + 1, B, H), dtype=dtype)
    cs_arr = np.empty((T + 1, B, H), dtype=dtype)
    gates_arr = np.empty((T, B, G), dtype=dtype)
    cdef floating[:, :, ::1] hs = hs_arr
    cdef floating[:, :, ::1] cs = cs_arr
    cdef floating[:, :, ::1] gates = gates_arr
    cdef floating[::1] bias = np.add(b_ih, b_hh)
    cdef floating[::1] scratch = _scratch(B * G, dtype, G * H >= TRANSPOSED_STEP)
    cdef floating* scr = &scratch[0] if scratch is not None else NULL
    cdef float[::1] w_packed = _step_weights(w_hh, True, True)
    cdef const float* wp = &w_packed[0] if w_packed is not None else NULL
    cdef bint packed = batch_sizes is not None
    cdef const Py_ssize_t[::1] sizes = batch_sizes if packed else None
    cdef floating[::1] work = _packed_work(batch_sizes, T, B, I + G, dtype)
    cdef const Py_ssize_t* sp = &sizes[0] if packed else NULL
    cdef int threads = fb_max_threads()
    cdef const Py_ssize_t[::1] bounds = _shards(floating is double, B, G * H, batch_sizes, threads)
    cdef Py_ssize_t shard, shards = bounds.shape[0] - 1 if bounds is not None else 1
    with nogil:
        memcpy(&hs[0, 0, 0], &h0[0, 0], B * H * sizeof(floating))
        memcpy(&cs[0, 0, 0], &c0[0, 0], B * H * sizeof(floating))
        # gates = x @ w_ih.T        (all steps' input projections at once)
        input_projection(&x[0, 0, 0], &w_ih[0, 0], &gates[0, 0, 0], T, B, I, G, G,
                         sp, &work[0] if work is not None else NULL)
        if shards > 1:
            for shard in prange(shards, num_threads=shards, schedule="static", chunksize=1):
                lstm_forward_rows(&hs[0, 0, 0], &cs[0, 0, 0], &gates[0, 0, 0], &w_hh[0, 0],
                                  &bias[0], scr, wp, sp, T, B, H, bounds[shard],
                                  bounds[shard + 1], 1)
        else:
            lstm_forward_rows(&hs[0, 0, 0], &cs[0, 0, 0], &gates[0, 0, 0], &w_hh[0, 0], &bias[0],
                              scr, wp, sp, T, B, H, 0, B, threads)
    return hs_arr, cs_arr, gates_arr


cdef void lstm_backward_rows(const floating* d_out, floating* carry_h, floating* carry_c,
                             const floating* cs, const floating* gates, floating* delta,
                             floating* norms, const floating* w_hh, const floating* w_step,
                             floating* scr, const float* wp, const Py_ssize_t* sizes,
                             Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, Py_ssize_t r0,
                             Py_ssize_t r1, bint clip, double max_norm, bint want_norms,
                             bint small, bint transposed, int threads) noexcept nogil:
    """The backward sweep of ``_lstm_backward`` over batch rows r0:r1 (all, or a shard)."""
    cdef Py_ssize_t t, G = 4 * H, rows = r1 - r0, n = r1 - r0
    cdef floating* d
    cdef floating* ch = carry_h + r0 * H
    cdef const floating* dy
    for t in range(T - 1, -1, -1):
        d = delta + (t * B + r0) * G
        dy = d_out + (t * B + r0) * H
        if sizes != NULL:
            # rows n: finished before step t: δ_t = 0, carry_h and carry_c pass on unchanged
            n = running(sizes[t], r0, r1)
            zero_rows(d, n, rows, G)
            if want_norms:
                zero_rows(norms + t * B + r0, n, rows, 1)
            if n == 0:
                continue
        if want_norms:
            row_norms(dy, ch, norms + t * B + r0, n, H)
        lstm_cell_backward(dy, ch, carry_c + r0 * H, gates + (t * B + r0) * G,
                           cs + (t * B + r0) * H, cs + ((t + 1) * B + r0) * H, d, n, H)
        if clip:
            clip_rows(d, n, G, max_norm)
        if small:
            # carry_h[:n] = delta[t, :n] @ w_hh
            memset(ch, 0, n * H * sizeof(floating))
            small_matmul_acc(d, w_hh, ch, n, G, H)
        elif transposed or wp != NULL:
            # carry_h[:n] = delta[t, :n] @ w_hh
            step_product(n, H, G, d, w_step, False, ch, scr, wp, threads)
        else:
            # carry_h[:n] = delta[t, :n] @ w_hh
            gemm(False, False, n, H, G, 1, d, G, w_hh, H, 0, ch, H)


def lstm_backward(d_out, dh_n, dc_n, x, hs, cs, gates, w_ih, w_hh, clip_step=None,
                  step_norms=None, batch_sizes=None):
    """Backpropagate through an LSTM layer; see ``_reference.lstm_backward``.

    Returns (dx (T, B, I), dh0 (B, H), dc0 (B, H), dw_ih (4H, I), dw_hh (4H, H), db (4H,)).
    """
    if d_out.dtype == np.float32:
        return _lstm_backward[float](d_out, dh_n, dc_n, x, hs, cs, gates, w_ih, w_hh,
                                     clip_step, step_norms, batch_sizes)
    return _lstm_backward[double](d_out, dh_n, dc_n, x, hs, cs, gates, w_ih, w_hh,
                                  clip_step, step_norms, batch_sizes)


cdef object _lstm_backward(const floating[:, :, ::1] d_out, dh_n, dc_n,
                           const floating[:, :, ::1] x, const floating[:, :, ::1] hs,
                           const floating[:, :, ::1] cs, const floating[:, :, ::1] gates,
                           const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                           clip_step, step_norms, batch_sizes):
    cdef Py_ssize_t T = d_out.shape[0], B = d_out.shape[1], H = d_out.shape[2], I = x.shape[2]
    cdef Py_ssize_t G = 4 * H
    dtype = np.float32 if floating is float else np.float64
    cdef bint clip = clip_step is not None
    cdef double max_norm = float(clip_step) if clip else 0.0
    cdef bint want_norms = step_norms is not None
    cdef floating[:, ::1] norms
    if want_norms:
        norms = step_norms
    else:
        norms = np.empty((1, 1), dtype=dtype)
    # carry_h, carry_c hold the parts of ∂E/∂h_t, ∂E/∂c_t arriving from step t+1
    cdef floating[:, ::1] carry_h = (np.zeros((B, H), dtype=dtype) if dh_n is None
                                     else np.array(dh_n, dtype=dtype, order="C"))
    cdef floating[:, ::1] carry_c = (np.zeros((B, H), dtype=dtype) if dc_n is None
                                     else np.array(dc_n, dtype=dtype, order="C"))
    delta_arr = np.empty((T, B, G), dtype=dtype)
    dx_arr = np.empty((T, B, I), dtype=dtype)
    dw_ih_arr = np.empty((G, I), dtype=dtype)
    dw_hh_arr = np.empty((G, H), dtype=dtype)
    db_arr = np.empty(G, dtype=dtype)
    cdef floating[:, :, ::1] delta = delta_arr
    cdef floating[:, :, ::1] dx = dx_arr
    cdef floating[:, ::1] dw_ih = dw_ih_arr
    cdef floating[:, ::1] dw_hh = dw_hh_arr
    cdef floating[::1] db = db_arr
    cdef bint small = B == 1 and G * H <= SMALL_GATED_STEP   # δ_t (1, 4H) @ W_hh (4H, H)
    # float32's per-step products run on packed weights instead
    cdef bint transposed = floating is double and not small and G * H >= TRANSPOSED_STEP
    cdef float[::1] w_packed = _step_weights(w_hh, False, not small)
    cdef const float* wp = &w_packed[0] if w_packed is not None else NULL
    cdef floating[::1] scratch = _scratch(B * H, dtype, transposed)
    cdef floating* scr = &scratch[0] if transposed else NULL
    # the transposed orientation wants w_hh.T row-major
    cdef const floating[:, ::1] w_step = _transposed(w_hh) if transposed else w_hh
    cdef bint packed = batch_sizes is not None
    cdef const Py_ssize_t[::1] sizes = batch_sizes if packed else None
    cdef floating[::1] work = _packed_work(batch_sizes, T, B, G + 2 * I + H, dtype)
    if work is not None:
        dx[...] = 0     # the packed gradients place dx's running rows only
    cdef const Py_ssize_t* sp = &sizes[0] if packed else NULL
    cdef int threads = fb_max_threads()
    cdef const Py_ssize_t[::1] bounds = _shards(floating is double or small, B, G * H,
                                                batch_sizes, threads)
    cdef Py_ssize_t shard, shards = bounds.shape[0] - 1 if bounds is not None else 1
    with nogil:
        if shards > 1:
            for shard in prange(shards, num_threads=shards, schedule="static", chunksize=1):
                lstm_backward_rows(&d_out[0, 0, 0], &carry_h[0, 0], &carry_c[0, 0], &cs[0, 0, 0],
                                   &gates[0, 0, 0], &delta[0, 0, 0], &norms[0, 0], &w_hh[0, 0],
                                   &w_step[0, 0], scr, wp, sp, T, B, H, bounds[shard],
                                   bounds[shard + 1], clip, max_norm, want_norms, small,
                                   transposed, 1)
        else:
            lstm_backward_rows(&d_out[0, 0, 0], &carry_h[0, 0], &carry_c[0, 0], &cs[0, 0, 0],
                               &gates[0, 0, 0], &delta[0, 0, 0], &norms[0, 0], &w_hh[0, 0],
                               &w_step[0, 0], scr, wp, sp, T, B, H, 0, B, clip, max_norm,
                               want_norms, small, transposed, threads)
        if work is None:
            weight_gradients(&delta[0, 0, 0], &delta[0, 0, 0], &x[0, 0, 0], &hs[0, 0, 0],
                             &w_ih[0, 0], &dx[0, 0, 0], &dw_ih[0, 0], &dw_hh[0, 0], T * B, I, H, G)
        else:
            packed_weight_gradients(&delta[0, 0, 0], &delta[0, 0, 0], &x[0, 0, 0], &hs[0, 0, 0],
                                    &w_ih[0, 0], &dx[0, 0, 0], &dw_ih[0, 0], &dw_hh[0, 0],
                                    T, B, I, H, G, &sizes[0], &work[0])
        # db = delta.sum(axis=(0, 1))
        column_sums(&delta[0, 0, 0], &db[0], T * B, G)
    return dx_arr, np.asarray(carry_h), np.asarray(carry_c), dw_ih_arr, dw_hh_arr, db_arr


cdef void gru_forward_rows(floating* hs, floating* gates, floating* gh, const floating* w_hh,
                           const floating* bias, const floating* b_ih, const floating* b_hh,
                           floating* scr, const float* wp, const Py_ssize_t* sizes,
                           Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, Py_ssize_t r0,
                           Py_ssize_t r1, int threads) noexcept nogil:
    """The time loop of ``_gru_forward`` over batch rows r0:r1 (all, or a shard)."""
    cdef Py_ssize_t t, G = 3 * H, rows = r1 - r0, n = r1 - r0
    cdef floating* g = gh + r0 * G
    for t in range(T):
        if sizes != NULL:
            n = running(sizes[t], r0, r1)
            zero_rows(hs + ((t + 1) * B + r0) * H, n, rows, H)      # finished sequences
            zero_rows(gates + (t * B + r0) * 4 * H, n, rows, 4 * H)
            if n == 0:
                continue
        # gh[:n] = hs[t, :n] @ w_hh.T
        step_product(n, G, H, hs + (t * B + r0) * H, w_hh, False, g, scr, wp, threads)
        gru_cell(gates + (t * B + r0) * 4 * H, g, bias, b_ih, b_hh, hs + (t * B + r0) * H,
                 hs + ((t + 1) * B + r0) * H, n, H)


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes=None):
    """Run a GRU layer over a sequence; see ``_reference.gru_forward``.

    x (T, B, I), h0 (B, H), w_ih (3H, I), w_hh (3H, H), b_ih, b_hh (3H,).
    Returns (hs, gates): hs (T+1, B, H) from h0; gates (T, B, 4H) r, z, n, hn of each step
    (zero in finished rows, with batch_sizes).
    """
    if x.dtype == np.float32:
        return _gru_forward[float](x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes)
    return _gru_forward[double](x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes)


cdef object _gru_forward(const floating[:, :, ::1] x, const floating[:, ::1] h0,
                         const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                         const floating[::1] b_ih, const floating[::1] b_hh, batch_sizes):
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = w_hh.shape[1]
    cdef Py_ssize_t G = 3 * H
    dtype = np.float32 if floating is float else np.float64
    hs_arr = np.empty((T + 1, B, H), dtype=dtype)
    gates_arr = np.empty((T, B, 4 * H), dtype=dtype)
    cdef floating[:, :, ::1] hs = hs_arr
    cdef floating[:, :, ::1] gates = gates_arr
    # gh: one step's hidden-side products (B, 3H), kept apart because r multiplies its n block
    cdef floating[:, ::1] gh = np.empty((B, G), dtype=dtype)
    cdef floating[::1] bias = np.add(b_ih, b_hh)
    cdef floating[::1] scratch = _scratch(B * G, dtype, G * H >= TRANSPOSED_STEP)
    cdef floating* scr = &scratch[0] if scratch is not None else NULL
    cdef float[::1] w_packed = _step_weights(w_hh, True, True)
    cdef const float* wp = &w_packed[0] if w_packed is not None else NULL
    cdef bint packed = batch_sizes is not None
    cdef const Py_ssize_t[::1] sizes = batch_sizes if packed else None
    cdef floating[::1] work = _packed_work(batch_sizes, T, B, I + G, dtype)
    cdef const Py_ssize_t* sp = &sizes[0] if packed else NULL
    cdef int threads = fb_max_threads()
    cdef const Py_ssize_t[::1] bounds = _shards(floating is double, B, G * H, batch_sizes, threads)
    cdef Py_ssize_t shard, shards = bounds.shape[0] - 1 if bounds is not None else 1
    with nogil:
        memcpy(&hs[0, 0, 0], &h0[0, 0], B * H * sizeof(floating))
        # gates[:, :, :3H] = x @ w_ih.T     (all steps' input projections at once)
        input_projection(&x[0, 0, 0], &w_ih[0, 0], &gates[0, 0, 0], T, B, I, G, 4 * H,
                         sp, &work[0] if work is not None else NULL)
        if shards > 1:
            for shard in prange(shards, num_threads=shards, schedule="static", chunksize=1):
                gru_forward_rows(&hs[0, 0, 0], &gates[0, 0, 0], &gh[0, 0], &w_hh[0, 0], &bias[0],
                                 &b_ih[0], &b_hh[0], scr, wp, sp, T, B, H, bounds[shard],
                                 bounds[shard + 1], 1)
        else:
            gru_forward_rows(&hs[0, 0, 0], &gates[0, 0, 0], &gh[0, 0], &w_hh[0, 0], &bias[0],
                             &b_ih[0], &b_hh[0], scr, wp, sp, T, B, H, 0, B, threads)
    return hs_arr, gates_arr


cdef void gru_backward_rows(const floating* d_out, floating* carry, const floating* hs,
                            const floating* gates, floating* delta_i, floating* delta_h,
                            floating* norms, const floating* w_hh, const floating* w_step,
                            floating* scr, const float* wp, const Py_ssize_t* sizes,
                            Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, Py_ssize_t r0,
                            Py_ssize_t r1, bint clip, double max_norm, bint want_norms,
                            bint small, bint transposed, int threads) noexcept nogil:
    """The backward sweep of ``_gru_backward`` over batch rows r0:r1 (all, or a shard)."""
    cdef Py_ssize_t t, G = 3 * H, rows = r1 - r0, n = r1 - r0
    cdef floating* di
    cdef floating* dh
    cdef floating* c = carry + r0 * H
    cdef const floating* dy
    cdef const floating* gt
    for t in range(T - 1, -1, -1):
        di = delta_i + (t * B + r0) * G
        dh = delta_h + (t * B + r0) * G
        dy = d_out + (t * B + r0) * H
        gt = gates + (t * B + r0) * 4 * H
        if sizes != NULL:
            # rows n: finished before step t: δ_t = 0, their carry passes on unchanged
            n = running(sizes[t], r0, r1)
            zero_rows(di, n, rows, G)
            zero_rows(dh, n, rows, G)
            if want_norms:
                zero_rows(norms + t * B + r0, n, rows, 1)
            if n == 0:
                continue
        if want_norms:
            row_norms(dy, c, norms + t * B + r0, n, H)
        gru_cell_backward(dy, c, gt, hs + (t * B + r0) * H, di, n, H)
        if clip:
            clip_rows(di, n, G, max_norm)
        gru_hidden_delta(di, gt, dh, n, H)
        if small:
            # carry[:n] += delta_h[t, :n] @ w_hh
            small_matmul_acc(dh, w_hh, c, n, G, H)
        elif transposed or wp != NULL:
            # carry[:n] += delta_h[t, :n] @ w_hh
            step_product(n, H, G, dh, w_step, True, c, scr, wp, threads)
        else:
            # carry[:n] += delta_h[t, :n] @ w_hh
            gemm(False, False, n, H, G, 1, dh, G, w_hh, H, 1, c, H)


def gru_backward(d_out, dh_n, x, hs, gates, w_ih, w_hh, clip_step=None, step_norms=None,
                 batch_sizes=None):
    """Backpropagate through a GRU layer; see ``_reference.gru_backward`` (and its clipping).

    Returns (dx (T, B, I), dh0 (B, H), dw_ih (3H, I), dw_hh (3H, H), db_ih (3H,), db_hh (3H,)).
    """
    if d_out.dtype == np.float32:
        return _gru_backward[float](d_out, dh_n, x, hs, gates, w_ih, w_hh, clip_step, step_norms,
                                    batch_sizes)
    return _gru_backward[double](d_out, dh_n, x, hs, gates, w_ih, w_hh, clip_step, step_norms,
                                 batch_sizes)


cdef object _gru_backward(const floating[:, :, ::1] d_out, dh_n, const floating[:, :, ::1] x,
                          const floating[:, :, ::1] hs, const floating[:, :, ::1] gates,
                          const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                          clip_step, step_norms, batch_sizes):
    cdef Py_ssize_t T = d_out.shape[0], B = d_out.shape[1], H = d_out.shape[2], I = x.shape[2]
    cdef Py_ssize_t G = 3 * H
    dtype = np.float32 if floating is float else np.float64
    cdef bint clip = clip_step is not None
    cdef double max_norm = float(clip_step) if clip else 0.0
    cdef bint want_norms = step_norms is not None
    cdef floating[:, ::1] norms
    if want_norms:
        norms = step_norms
    else:
        norms = np.empty((1, 1), dtype=dtype)
    # carry holds the part of ∂E/∂h_t arriving from step t+1 (or d_h_n at the end)
    cdef floating[:, ::1] carry = (np.zeros((B, H), dtype=dtype) if dh_n is None
                                   else np.array(dh_n, dtype=dtype, order="C"))
    # The input- and hidden-side gate gradients differ in their n block; both are kept,
    # so that each weight gradient is one gemm over all steps.
    delta_i_arr = np.empty((T, B, G), dtype=dtype)
    delta_h_arr = np.empty((T, B, G), dtype=dtype)
    dx_arr = np.empty((T, B, I), dtype=dtype)
    dw_ih_arr = np.empty((G, I), dtype=dtype)
    dw_hh_arr = np.empty((G, H), dtype=dtype)
    db_ih_arr = np.empty(G, dtype=dtype)
    db_hh_arr = np.empty(G, dtype=dtype)
    cdef floating[:, :, ::1] delta_i = delta_i_arr
    cdef floating[:, :, ::1] delta_h = delta_h_arr
    cdef floating[:, :, ::1] dx = dx_arr
    cdef floating[:, ::1] dw_ih = dw_ih_arr
    cdef floating[:, ::1] dw_hh = dw_hh_arr
    cdef floating[::1] db_ih = db_ih_arr
    cdef floating[::1] db_hh = db_hh_arr
    cdef bint small = B == 1 and G * H <= SMALL_GATED_STEP   # δh_t (1, 3H) @ W_hh (3H, H)
    # float32's per-step products run on packed weights instead
    cdef bint transposed = floating is double and not small and G * H >= TRANSPOSED_STEP
    cdef float[::1] w_packed = _step_weights(w_hh, False, not small)
    cdef const float* wp = &w_packed[0] if w_packed is not None else NULL
    cdef floating[::1] scratch = _scratch(B * H, dtype, transposed)
    cdef floating* scr = &scratch[0] if transposed else NULL
    # the transposed orientation wants w_hh.T row-major
    cdef const floating[:, ::1] w_step = _transposed(w_hh) if transposed else w_hh
    cdef bint packed = batch_sizes is not None
    cdef const Py_ssize_t[::1] sizes = batch_sizes if packed else None
    cdef floating[::1] work = _packed_work(batch_sizes, T, B, 2 * G + 2 * I + H, dtype)
    if work is not None:
        dx[...] = 0     # the packed gradients place dx's running rows only
    cdef const Py_ssize_t* sp = &sizes[0] if packed else NULL
    cdef int threads = fb_max_threads()
    cdef const Py_ssize_t[::1] bounds = _shards(floating is double or small, B, G * H,
                                                batch_sizes, threads)
    cdef Py_ssize_t shard, shards = bounds.shape[0] - 1 if bounds is not None else 1
    with nogil:
        if shards > 1:
            for shard in prange(shards, num_threads=shards, schedule="static", chunksize=1):
                gru_backward_rows(&d_out[0, 0, 0], &carry[0, 0], &hs[0, 0, 0], &gates[0, 0, 0],
                                  &delta_i[0, 0, 0], &delta_h[0, 0, 0], &norms[0, 0],
                                  &w_hh[0, 0], &w_step[0, 0], scr, wp, sp, T, B, H,
                                  bounds[shard], bounds[shard + 1], clip, max_norm, want_norms,
                                  small, transposed, 1)
        else:
            gru_backward_rows(&d_out[0, 0, 0], &carry[0, 0], &hs[0, 0, 0], &gates[0, 0, 0],
                              &delta_i[0, 0, 0], &delta_h[0, 0, 0], &norms[0, 0], &w_hh[0, 0],
                              &w_step[0, 0], scr, wp, sp, T, B, H, 0, B, clip, max_norm,
                              want_norms, small, transposed, threads)
        if work is None:
            weight_gradients(&delta_i[0, 0, 0], &delta_h[0, 0, 0], &x[0, 0, 0], &hs[0, 0, 0],
                             &w_ih[0, 0], &dx[0, 0, 0], &dw_ih[0, 0], &dw_hh[0, 0], T * B, I, H, G)
        else:
            packed_weight_gradients(&delta_i[0, 0, 0], &delta_h[0, 0, 0], &x[0, 0, 0], &hs[0, 0, 0],
                                    &w_ih[0, 0], &dx[0, 0, 0], &dw_ih[0, 0], &dw_hh[0, 0],
                                    T, B, I, H, G, &sizes[0], &work[0])
        # db_ih = delta_i.sum(axis=(0, 1)); db_hh = delta_h.sum(axis=(0, 1))
        column_sums(&delta_i[0, 0, 0], &db_ih[0], T * B, G)
        column_sums(&delta_h[0, 0, 0], &db_hh[0], T * B, G)
    return dx_arr, np.asarray(carry), dw_ih_arr, dw_hh_arr, db_ih_arr, db_hh_arr

include "_update.pxi"
include "_losses.pxi"
