# Products: the one place that chooses how a product runs (included by _kernels.pyx).
#
# Two kinds of product, two choosers:
#
# * Hoisted products (the input projection before a time loop; dx, dW_ih, dW_hh after the
#   backward sweep; the linear layer): ``matmul``, by dtype. float32 on fastbptt's own gemm
#   (``_step_gemm.h``, B packed as it goes) at every size, or where a side is a few columns
#   (an input of a few features) on its narrow forms, which pack nothing; float64 on BLAS
#   (``_matmul_path`` reports it).
# * The per-step recurrent product of a time loop: ``step_path`` picks one of four
#   ``ProductPath``s once per kernel call (``plan_loop`` in _plans.pxi stores it in the
#   loop's ``StepProduct``; ``_step_path`` reports it) and ``step_product`` runs it at every
#   step:
#     PRODUCT_LOOP        backward: a plain loop (``small_matmul_acc``), for products too
#                         small for any gemm's overhead (a char-RNN step is 1x100 @ 100x100);
#     PRODUCT_DOT         float32 forward, the same sizes: dot products along the rows of
#                         W_hh as it is stored (``fb_dot_rows``), so nothing is copied or
#                         packed per call (packing a 400x100 W_hh costs 13 µs, a whole
#                         char-RNN LSTM step 1.5);
#     PRODUCT_PACKED      float32: the own gemm (``fb_gemm``) on weights packed once;
#     PRODUCT_TRANSPOSED  float64, many weights: BLAS with the batch rows as its m
#                         (``gemm_into_transposed``) and a transposed add into place;
#     PRODUCT_BLAS        float64, fewer weights: one row-major BLAS gemm.
#
# Over variable-length batches the hoisted products run over the running rows only,
# gathered into one packed block (PyTorch's PackedSequence layout) and placed back after.

# Elman per-step products with at most this many multiply-adds (B·H·H) skip BLAS: below it
# OpenBLAS's call and threading overhead costs more than the arithmetic.
cdef long SMALL_STEP = 32 * 1024

# ... and in float32, only with at most this many batch rows: the own gemm has no call
# overhead to speak of, and packing W_hh (H·H floats) once per time loop costs less than the
# plain loop loses from two rows up. Whole update, in-process alternation, T = 50, I = 32:
# B = 32, H = 32 0.71-0.76x of the loop's time on the gemm; B = 8, H = 32 0.87-0.93x, H = 64
# 0.72-0.74x; B = 1, H = 64 1.08x and the char-RNN (H = 100) 1.11x, so a single sequence keeps
# the loop (and the forward's dot form, on W_hh as stored).
cdef long SMALL_STEP_ROWS = 1

# Per-step products with at least this many weights (G·H·H) run with the batch as BLAS's m
# (``gemm_into_transposed``) and a transposed add into place; below it the plain row-major
# gemm is as fast or faster (32x128 @ 128x128: 105 against 90 GFLOP/s).
cdef long TRANSPOSED_STEP = 48 * 1024

# A single sequence's (B = 1) per-step product over a gated cell's W_hh runs in a plain loop
# up to this many multiply-adds (G·H·H), and by a gemm above it or for B > 1: backward,
# δ_t (1, G·H) @ W_hh (G·H, H) in axpy form; forward, s_{t-1} (1, H) @ W_hhᵀ as dot products
# along W_hh's rows (the per-step weights stream from L2 at this size either way, and the
# loop saves the gemm's packing, 13 µs a call at H = 100). Measured here (scipy-openblas 0.3.30, float32, whole backward at
# T = 25): for one row the loop is 0-10 % faster than sgemm at H = 64-200 on a quiet
# machine, and up to 2x faster (noisily) while the other core is busy; from B = 2 up,
# sgemm is 1.4-2.5x faster than the loop at every size tried. The forward pass has no small
# path: its loop would need W_hhᵀ row-major, and that copy (12 µs at H = 100, 40 µs at
# H = 128) costs more than the loop saves over tens of steps; the dot form needs no copy.
cdef long SMALL_GATED_STEP = 256 * 1024


cdef extern from "_step_gemm.h" nogil:
    void fb_dot_rows(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* a, const float* w,
                     float* c, bint accumulate)
    int fb_narrow_form(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, bint a_transposed,
                       bint b_transposed)
    enum: FB_NARROW_K, FB_NARROW_N, FB_NARROW_T, FB_NARROW_M
    void fb_axpy_rows(Py_ssize_t m, Py_ssize_t k, Py_ssize_t n, const float* a, const float* w,
                      float* c)
    enum: FB_VW


cdef enum ProductPath:
    PRODUCT_LOOP
    PRODUCT_PACKED
    PRODUCT_TRANSPOSED
    PRODUCT_BLAS
    PRODUCT_DOT

# The names ``_step_path`` reports, in ProductPath's order.
PRODUCT_PATH_NAMES = ("loop", "packed", "transposed", "blas", "dot")


cdef struct StepProduct:
    # A time loop's per-step product c (m, n) (+)= a (m, k) @ B, B (k, n) the same at every
    # step (W_hhᵀ forward, W_hh backward); filled once by ``plan_loop``. The arrays are of
    # the kernel's dtype (void*: a Cython struct cannot hold a fused type).
    ProductPath path
    const void* b          # B row-major (k, n), or NULL (PRODUCT_LOOP; PRODUCT_BLAS if set)
    const void* b_t        # Bᵀ row-major (n, k), or NULL (PRODUCT_DOT, PRODUCT_TRANSPOSED;
                           # PRODUCT_BLAS when b is NULL)
    const float* packed    # PRODUCT_PACKED: B packed by ``_step_weights``
    void* scratch          # PRODUCT_TRANSPOSED: n·B elements for the transposed product


cdef inline bint step_is_small(bint is_double, Py_ssize_t gates, Py_ssize_t B,
                               Py_ssize_t H) noexcept nogil:
    """Whether a time loop's per-step product (B rows, gates·H by H weights) runs in a plain
    loop: an Elman step up to SMALL_STEP multiply-adds (in float32, of up to SMALL_STEP_ROWS
    rows); a gated cell's only for a single sequence (SMALL_GATED_STEP)."""
    if gates == 1:
        return B * H * H <= SMALL_STEP and (is_double or B <= SMALL_STEP_ROWS)
    return B == 1 and gates * H * H <= SMALL_GATED_STEP


cdef inline ProductPath step_path(bint is_double, Py_ssize_t gates, Py_ssize_t B, Py_ssize_t H,
                                  bint backward) noexcept nogil:
    """How a time loop's per-step product runs (see the top of this file); gates: 1 for an
    Elman cell, 4 for an LSTM, 3 for a GRU."""
    if step_is_small(is_double, gates, B, H):
        if not (backward or is_double):
            return PRODUCT_DOT
        if backward or gates == 1:
            return PRODUCT_LOOP
        # float64 gated forward: its loop would need W_hhᵀ copied (see SMALL_GATED_STEP)
    if not is_double:
        return PRODUCT_PACKED
    if gates * H * H >= TRANSPOSED_STEP:
        return PRODUCT_TRANSPOSED
    return PRODUCT_BLAS


cdef inline void step_product(const StepProduct* p, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                              const floating* a, bint accumulate, floating* c,
                              int threads) noexcept nogil:
    """c (m, n) = a (m, k) @ B, or += when accumulate, on the path the plan chose; a, c
    row-major; ``threads``: the own gemm's team (PRODUCT_PACKED)."""
    cdef const floating* b = <const floating*> p.b
    cdef const floating* b_t = <const floating*> p.b_t
    cdef floating* scratch = <floating*> p.scratch
    if p.path == PRODUCT_LOOP:
        if not accumulate:
            memset(c, 0, m * n * sizeof(floating))
        small_matmul_acc(a, b, c, m, k, n)
    elif p.path == PRODUCT_DOT:
        if floating is float:
            fb_dot_rows(m, n, k, a, b_t, c, accumulate)
    elif p.path == PRODUCT_PACKED:
        if floating is float:
            fb_gemm(m, n, k, a, k, False, p.packed, c, n, accumulate, threads)
    elif p.path == PRODUCT_TRANSPOSED:
        if m == 1 and not accumulate:
            gemm_into_transposed(False, True, m, n, k, a, k, b_t, k, c)   # c (n, 1) is c (1, n)
        else:
            gemm_into_transposed(False, True, m, n, k, a, k, b_t, k, scratch)
            add_transposed(scratch, c, m, n, accumulate)
    elif b != NULL:
        gemm(False, False, m, n, k, 1, a, k, b, n, 1 if accumulate else 0, c, n)
    else:
        gemm(False, True, m, n, k, 1, a, k, b_t, k, 1 if accumulate else 0, c, n)


cdef inline void small_matmul_acc(const floating* a, const floating* w, floating* c,
                                  Py_ssize_t M, Py_ssize_t K, Py_ssize_t N) noexcept nogil:
    """c (M, N) += a (M, K) @ w (K, N), row-major, for products too small for BLAS.

    Each row of c is built as a sum of scaled rows of w (axpy form), four at a time, so the
    inner loop is contiguous and vectorizes without reassociating a reduction. float32 rows of at
    least a vector run the same sums in fb_axpy_rows (_step_gemm.h), c's vectors held in
    registers.
    """
    cdef Py_ssize_t m, k, j
    cdef floating a0, a1, a2, a3
    cdef const floating* w0
    cdef const floating* w1
    cdef const floating* w2
    cdef const floating* w3
    cdef floating* row
    if floating is float and N >= FB_VW:
        fb_axpy_rows(M, K, N, a, w, c)
        return
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


cdef inline void matmul(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                        const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                        bint accumulate, floating* c, Py_ssize_t ldc) noexcept nogil:
    """c (m, n) = op(a) @ op(b), or += when accumulate; row-major operands as in ``gemm``.

    float32 runs on fastbptt's own gemm (``_step_gemm.h``) at every size, so that one thread
    team (OpenMP's) serves the hoisted products and the time loop's: OpenBLAS's idle threads
    spin for a long while after each call and halve the speed of any other team that runs
    meanwhile. The small ones too: with its packing vectorised the own gemm runs the char-RNN's
    products (25 rows by 65-100 by 65-100) in 3-4.5 µs, as soon as or sooner than OpenBLAS
    on the calling thread, and the whole char-RNN and adding-problem updates 2-6 % faster
    than with those left to OpenBLAS. float64 (and float32 in the unlikely case the packing
    buffer cannot be allocated) runs on BLAS.
    """
    if floating is float:
        if fb_matmul(m, n, k, a, lda, trans_a, b, ldb, trans_b, c, ldc, accumulate) == 0:
            return
    gemm(trans_a, trans_b, m, n, k, 1, a, lda, b, ldb, 1 if accumulate else 0, c, ldc)


cdef inline void weight_gradients(const floating* delta, const floating* delta_h,
                                  const floating* x, const floating* h_prev,
                                  const floating* w_ih, floating* dx, floating* dw_ih,
                                  floating* dw_hh, Py_ssize_t TB, Py_ssize_t I, Py_ssize_t H,
                                  Py_ssize_t G) noexcept nogil:
    """After the backward sweep, from the stored gate gradients of TB rows: dx, dW_ih and
    dW_hh, one gemm each (the adjoint accumulation dW += δ_tᵀ s_{t-1} over all t at once).

    delta (TB, G): ∂E/∂(input-side pre-activations); delta_h (TB, G): the hidden side's,
    delta itself but for the GRU (whose r multiplies the hidden side of its n gate); x (TB,
    I), or NULL to leave dW_ih to the caller (ids scatter it); h_prev (TB, H) the states
    s_{t-1}, i.e. hs[:-1]; dx NULL: no dx. float32 dW_ih and dW_hh over one delta share its
    reads (``fb_matmul_pair``) where they can.
    """
    if dx != NULL:
        # dx = delta @ w_ih                     (TB, G) @ (G, I)
        matmul(False, False, TB, I, G, delta, G, w_ih, I, False, dx, I)
    if floating is float:
        if x != NULL and delta_h == delta and fb_matmul_pair(
                G, TB, delta, G, True, x, I, I, dw_ih, I, h_prev, H, H, dw_hh, H) == 0:
            return
    if x != NULL:
        # dw_ih = delta.T @ x                   (G, TB) @ (TB, I)
        matmul(True, False, G, I, TB, delta, G, x, I, False, dw_ih, I)
    # dw_hh = delta_h.T @ h_prev                (G, TB) @ (TB, H)
    matmul(True, False, G, H, TB, delta_h, G, h_prev, H, False, dw_hh, H)


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


cdef inline void packed_weight_gradients(const floating* delta, const floating* delta_h,
                                         const floating* x, const floating* h_prev,
                                         const floating* w_ih, floating* dx, floating* dw_ih,
                                         floating* dw_hh, Py_ssize_t T, Py_ssize_t B,
                                         Py_ssize_t I, Py_ssize_t H, Py_ssize_t G,
                                         const Py_ssize_t* sizes, floating* work) noexcept nogil:
    """``weight_gradients`` over the running rows only (the others' δ's are zero): each
    operand gathered into work (``_gradient_work``), the gemms over N rows, dx placed back
    (its other rows are left as they are)."""
    cdef Py_ssize_t rows = gather_rows(delta, work, sizes, T, B, G)
    # the operands one after the other, each of rows rows, as _gradient_work counts them
    cdef floating* dp = work
    cdef floating* cursor = dp + rows * G
    cdef floating* dhp = dp
    cdef floating* hp
    cdef floating* xp = NULL
    cdef floating* dxp = NULL
    if delta_h != delta:
        dhp = cursor
        cursor += rows * G
        gather_rows(delta_h, dhp, sizes, T, B, G)
    hp = cursor
    cursor += rows * H
    gather_rows(h_prev, hp, sizes, T, B, H)
    if x != NULL:
        xp = cursor
        cursor += rows * I
        gather_rows(x, xp, sizes, T, B, I)
    if dx != NULL:
        dxp = cursor
    weight_gradients(dp, dhp, xp, hp, w_ih, dxp, dw_ih, dw_hh, rows, I, H, G)
    if dx != NULL:
        place_rows(dxp, dx, sizes, T, B, I, I)


cdef object _transposed(const floating[:, ::1] w):
    """w.T as a new row-major array (numpy's copy of a transposed view takes 29 ms for
    4096x1024 floats here, this one 4.5)."""
    out = pooled_empty((w.shape[1], w.shape[0]), dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, ::1] o = out
    with nogil:
        transpose_tiles(&w[0, 0], &o[0, 0], w.shape[1], w.shape[0])
    return out


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
        raw = pooled_empty(size + FB_ALIGN // 4, dtype=np.float32)
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


def _matmul_pair(const float[:, ::1] a, const float[:, ::1] b1, const float[:, ::1] b2,
                 bint trans_a=True):
    """(op(a) @ b1, op(a) @ b2), op transposing when trans_a as a layer's weight gradients
    take them (``weight_gradients``): through ``fb_matmul_pair``, or as two products where it
    declines; and whether it took them. float32: for the tests."""
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t m = a.shape[1] if trans_a else a.shape[0], n1 = b1.shape[1], n2 = b2.shape[1]
    if b1.shape[0] != k or b2.shape[0] != k:
        raise ValueError(f"inner dimensions differ: {k}, {b1.shape[0]} and {b2.shape[0]}")
    if m == 0 or n1 == 0 or n2 == 0 or k == 0:
        raise ValueError("every side must be positive")
    c1_arr = pooled_empty((m, n1), dtype=np.float32)
    c2_arr = pooled_empty((m, n2), dtype=np.float32)
    cdef float[:, ::1] c1 = c1_arr
    cdef float[:, ::1] c2 = c2_arr
    cdef int taken
    with nogil:
        taken = fb_matmul_pair(m, k, &a[0, 0], a.shape[1], trans_a, &b1[0, 0], n1, n1,
                               &c1[0, 0], n1, &b2[0, 0], n2, n2, &c2[0, 0], n2)
        if taken != 0:
            matmul(trans_a, False, m, n1, k, &a[0, 0], a.shape[1], &b1[0, 0], n1, False,
                   &c1[0, 0], n1)
            matmul(trans_a, False, m, n2, k, &a[0, 0], a.shape[1], &b2[0, 0], n2, False,
                   &c2[0, 0], n2)
    return c1_arr, c2_arr, taken == 0


cdef object _matmul_typed(const floating[:, ::1] a, const floating[:, ::1] b, bint trans_a,
                          bint trans_b, c):
    cdef Py_ssize_t m = a.shape[1] if trans_a else a.shape[0]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t n = b.shape[0] if trans_b else b.shape[1]
    if (b.shape[1] if trans_b else b.shape[0]) != k:
        raise ValueError(f"inner dimensions differ: {k} and {b.shape[1] if trans_b else b.shape[0]}")
    out_arr = (pooled_zeros((m, n), dtype=np.asarray(a).dtype) if c is None
               else np.array(c, dtype=np.asarray(a).dtype, order="C"))
    if out_arr.shape != (m, n):
        raise ValueError(f"c has shape {out_arr.shape}, expected {(m, n)}")
    cdef floating[:, ::1] out = out_arr
    cdef bint accumulate = c is not None
    cdef const floating* ap = &a[0, 0] if a.shape[0] and a.shape[1] else NULL
    cdef const floating* bp = &b[0, 0] if b.shape[0] and b.shape[1] else NULL
    if m and n:
        with nogil:
            matmul(trans_a, trans_b, m, n, k, ap, a.shape[1], bp, b.shape[1], accumulate,
                        &out[0, 0], n)
    return out_arr


def _step_gemm(a, w, int threads):
    """a @ w.T for float32 a (m, k), w (n, k), as a time loop's per-step product runs it
    (weights packed once, ``fb_gemm`` on ``threads`` threads): for the tests."""
    cdef const float[:, ::1] av = a
    cdef const float[:, ::1] wv = w
    cdef Py_ssize_t m = av.shape[0], k = av.shape[1], n = wv.shape[0]
    if wv.shape[1] != k:
        raise ValueError(f"inner dimensions differ: {k} and {wv.shape[1]}")
    cdef float[::1] packed = _step_weights(wv, True, True)
    out_arr = pooled_zeros((m, n), dtype=np.float32)
    cdef float[:, ::1] out = out_arr
    with nogil:
        fb_gemm(m, n, k, &av[0, 0], k, False, &packed[0], &out[0, 0], n, False, threads)
    return out_arr


# The widest narrow side each of ``fb_matmul_narrow``'s forms takes in this build: k and n
# with A as stored, n with A transposed, m with B as stored (0: the form is off): for the tests.
NARROW_LIMITS = {"k": FB_NARROW_K, "n": FB_NARROW_N, "n_transposed": FB_NARROW_T,
                 "m": FB_NARROW_M}


def _matmul_path(dtype, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, bint trans_a=False,
                 bint trans_b=False):
    """Where the kernels' hoisted product of this size, op(a) (m, k) @ (k, n), runs: "blas",
    "own gemm" (the panels), or "own narrow" (a side of a few columns: ``fb_matmul_narrow``)
    (``matmul``'s choice; the own code falls back to BLAS only if its buffers cannot be
    allocated): for the tests."""
    if np.dtype(dtype) == np.float64:
        return "blas"
    return "own narrow" if fb_narrow_form(m, n, k, trans_a, trans_b) else "own gemm"


def _step_path(dtype, Py_ssize_t gates, Py_ssize_t B, Py_ssize_t H, bint backward):
    """How a time loop's per-step product runs for B rows of a cell with this many gates
    (1: Elman, 4: LSTM, 3: GRU) and H units, forward or backward, under the thresholds now
    set (``_tuning``): "loop", "packed", "transposed" or "blas": for the tests."""
    return PRODUCT_PATH_NAMES[step_path(np.dtype(dtype) == np.float64, gates, B, H, backward)]
