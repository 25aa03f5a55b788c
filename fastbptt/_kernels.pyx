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
* Per-step products too small for BLAS's call overhead (a char-RNN step is 1x100 @ 100x100)
  run in a plain loop instead.
"""
import numpy as np

from cython cimport floating
from libc.math cimport sqrt, tanh
from libc.string cimport memcpy, memset

from ._blas cimport gemm

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


# ---------------------------------------------------------------------------- element-wise

cdef inline floating tanh_fast(floating v) noexcept nogil:
    """tanh: libm for double; for float a clamped rational approximation that vectorizes.

    tanh(v) ≈ v·P(v²)/Q(v²) on |v| ≤ 9 (beyond it tanh rounds to ±1 in float32), degree 4
    over 4 in v², fitted for minimax relative error (2e-8 in exact arithmetic; at most 6 ulp,
    3.6e-7 relative, evaluated in float32 over every float32 input).
    """
    cdef floating z, p, q, r
    if floating is double:
        return tanh(v)
    else:
        v = min(max(v, <float> -9.0), <float> 9.0)
        z = v * v
        p = (((<float> 1.3353277630953247e-08 * z + <float> 2.060820368271201e-05) * z
              + <float> 0.003495541604163021) * z + <float> 0.13380989168127425) * z \
            + <float> 0.9999999796790445
        q = (((<float> 7.776024320070959e-07 * z + <float> 0.000328555360422324) * z
              + <float> 0.02587681338707093) * z + <float> 0.467143048959488) * z + <float> 1.0
        r = v * p / q
        return min(max(r, <float> -1.0), <float> 1.0)


cdef inline void bias_activation(floating* pre, const floating* bias, Py_ssize_t B,
                                 Py_ssize_t H, bint relu) noexcept nogil:
    """pre[b, :] = f(pre[b, :] + bias), in place; pre (B, H)."""
    cdef Py_ssize_t b, j
    cdef floating* row
    cdef floating v
    for b in range(B):
        row = pre + b * H
        if relu:
            for j in range(H):
                v = row[j] + bias[j]
                row[j] = v if v > 0 else 0
        else:
            for j in range(H):
                row[j] = tanh_fast(row[j] + bias[j])


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
            delta[j] = (d_out[j] + carry[j]) * (1 - s[j] * s[j])


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


cdef inline void column_sums(const floating* a, floating* out, Py_ssize_t M, Py_ssize_t N) noexcept nogil:
    """out (N,) = a (M, N).sum(axis=0)."""
    cdef Py_ssize_t m, j
    memset(out, 0, N * sizeof(floating))
    for m in range(M):
        for j in range(N):
            out[j] += a[m * N + j]


# ---------------------------------------------------------------------------- public kernels

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


def elman_forward(x, h0, w_ih, w_hh, b_ih, b_hh, bint relu):
    """Run an Elman layer over a sequence; see ``_reference.elman_forward``.

    x (T, B, I), h0 (B, H), w_ih (H, I), w_hh (H, H), b_ih, b_hh (H,).
    Returns hs (T+1, B, H): hs[0] = h0, hs[t] = s_t, the output and the backward's cache.
    """
    if x.dtype == np.float32:
        return _elman_forward[float](x, h0, w_ih, w_hh, b_ih, b_hh, relu)
    return _elman_forward[double](x, h0, w_ih, w_hh, b_ih, b_hh, relu)


cdef object _elman_forward(const floating[:, :, ::1] x, const floating[:, ::1] h0,
                           const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                           const floating[::1] b_ih, const floating[::1] b_hh, bint relu):
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
    cdef Py_ssize_t t
    cdef floating* cur
    with nogil:
        memcpy(&hs[0, 0, 0], &h0[0, 0], B * H * sizeof(floating))
        # hs[1:] = x.reshape(T*B, I) @ w_ih.T       (all steps' input projections at once)
        gemm(False, True, T * B, H, I, 1, &x[0, 0, 0], I, &w_ih[0, 0], I, 0, &hs[1, 0, 0], H)
        for t in range(1, T + 1):
            cur = &hs[t, 0, 0]
            if small:
                # hs[t] += hs[t-1] @ w_hh.T
                small_matmul_acc(&hs[t - 1, 0, 0], &w_hh_t[0, 0], cur, B, H, H)
            else:
                # hs[t] += hs[t-1] @ w_hh.T
                gemm(False, True, B, H, H, 1, &hs[t - 1, 0, 0], H, &w_hh[0, 0], H, 1, cur, H)
            bias_activation(cur, &bias[0], B, H, relu)
    return hs_arr


def elman_backward(d_out, dh_n, x, hs, w_ih, w_hh, bint relu, clip_step=None, step_norms=None):
    """Backpropagate through an Elman layer; see ``_reference.elman_backward``.

    Returns (dx (T, B, I), dh0 (B, H), dw_ih (H, I), dw_hh (H, H), db (H,)).
    """
    if d_out.dtype == np.float32:
        return _elman_backward[float](d_out, dh_n, x, hs, w_ih, w_hh, relu, clip_step, step_norms)
    return _elman_backward[double](d_out, dh_n, x, hs, w_ih, w_hh, relu, clip_step, step_norms)


cdef object _elman_backward(const floating[:, :, ::1] d_out, dh_n, const floating[:, :, ::1] x,
                            const floating[:, :, ::1] hs, const floating[:, ::1] w_ih,
                            const floating[:, ::1] w_hh, bint relu, clip_step, step_norms):
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
    cdef Py_ssize_t t
    cdef floating* d
    with nogil:
        for t in range(T - 1, -1, -1):
            # carry holds ∂E/∂s_t arriving from step t+1 (or d_h_n at the end)
            if want_norms:
                row_norms(&d_out[t, 0, 0], &carry[0, 0], &norms[t, 0], B, H)
            d = &delta[t, 0, 0]
            delta_step(&d_out[t, 0, 0], &carry[0, 0], &hs[t + 1, 0, 0], d, B * H, relu)
            if clip:
                clip_rows(d, B, H, max_norm)
            if small:
                # carry = delta[t] @ w_hh
                memset(&carry[0, 0], 0, B * H * sizeof(floating))
                small_matmul_acc(d, &w_hh[0, 0], &carry[0, 0], B, H, H)
            else:
                # carry = delta[t] @ w_hh
                gemm(False, False, B, H, H, 1, d, H, &w_hh[0, 0], H, 0, &carry[0, 0], H)
        # dx = delta @ w_ih                             (T*B, H) @ (H, I)
        gemm(False, False, T * B, I, H, 1, &delta[0, 0, 0], H, &w_ih[0, 0], I, 0, &dx[0, 0, 0], I)
        # dw_ih = delta.reshape(T*B, H).T @ x.reshape(T*B, I)
        gemm(True, False, H, I, T * B, 1, &delta[0, 0, 0], H, &x[0, 0, 0], I, 0, &dw_ih[0, 0], I)
        # dw_hh = delta.reshape(T*B, H).T @ hs[:-1].reshape(T*B, H)
        gemm(True, False, H, H, T * B, 1, &delta[0, 0, 0], H, &hs[0, 0, 0], H, 0, &dw_hh[0, 0], H)
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
        gemm(False, True, M, N, K, 1, &x[0, 0], K, &w[0, 0], K, 1, &y[0, 0], N)
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
        gemm(False, False, M, K, N, 1, &dy[0, 0], N, &w[0, 0], K, 0, &dx[0, 0], K)
        # dw = dy.T @ x
        gemm(True, False, N, K, M, 1, &dy[0, 0], N, &x[0, 0], K, 0, &dw[0, 0], K)
        # db = dy.sum(axis=0)
        column_sums(&dy[0, 0], &db[0], M, N)
    return dx_arr, dw_arr, db_arr
