"""Compiled BPTT kernels: the twins of ``_reference.py``, same names, same signatures.

Each ``def`` checks nothing the model has not checked already (bounds checks are off: the
Python layer validates shapes, dtypes and contiguity first), allocates its outputs as
NumPy arrays (large ones from ``_pool.pxi``), then runs all of its work in one ``with nogil:``
block.

One compiled module per CPU build (``_kernels_avx2.pyx`` and ``_kernels_avx512.pyx`` include
this file), written in files by concern and included here, so that every helper inlines
into every loop of each build:

* ``_pool.pxi``: large work arrays whose memory stays resident between calls;
* ``_team.pxi``: each kind of call's team size (all threads or one), chosen by timing;
* ``_elementwise.pxi``: tanh and σ as the loops evaluate them, row norms and clipping;
* ``_products.pxi``: the one place that chooses how a product runs (plain loop, fastbptt's
  own packed gemm, BLAS, or BLAS transposed) and runs it, hoisted or per step;
* ``_plans.pxi``: the ``Loop`` struct a plan fills once per call, the shards of the batch,
  and the one dispatcher that runs a time loop whole or in shards;
* ``_elman.pxi``, ``_lstm.pxi``, ``_gru.pxi``: each cell's fused element-wise passes, its
  time loops and its ``*_forward``/``*_backward`` kernels.

Where the speed comes from:

* The input projection of all T steps is one gemm before the time loop, and dW_ih, dW_hh,
  dx are one gemm each after the backward sweep over the stored δ's (dW_ih and dW_hh, over
  one δ, a pair reading it once where that pays); the loop itself only does s_{t-1} W_hhᵀ
  (forward) and δ_t W_hh (backward) per step.
* The element-wise work of a step is one fused pass (bias + activation, or
  δ = (dy + carry) ⊙ f'(s)) that the C compiler vectorizes; float32 tanh is a clamped
  rational approximation because a libm call in that loop costs more than the gemm.
* float32 products run on fastbptt's own gemm (``_step_gemm.h``, register-tiled, vectorised
  for each build, on an OpenMP team): the time loop's weights are packed once per call rather
  than by BLAS at every step, and one thread team serves every product (OpenBLAS's idle
  threads spin after each call and would halve any other team's speed), the smallest too.
  float64, the checking dtype, runs on scipy's BLAS.
* float32 time loops with few recurrent weights run in shards of the batch, one per thread
  (``_shards``; the ``*_rows`` functions are the loops over a range of rows): rows never
  meet in a time loop, so the shards never wait for each other.
* Per-step products too small for any gemm's overhead (a char-RNN step is 1x100 @ 100x100)
  run in a plain loop instead.
* float64's larger per-step products run with the batch rows as BLAS's m and are added into
  place transposed: scipy's OpenBLAS is 1.2-1.9x faster in that orientation.

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
    int fb_matmul_pair(Py_ssize_t m, Py_ssize_t k, const float* a, Py_ssize_t lda,
                       bint a_transposed, const float* b1, Py_ssize_t ldb1, Py_ssize_t n1,
                       float* c1, Py_ssize_t ldc1, const float* b2, Py_ssize_t ldb2,
                       Py_ssize_t n2, float* c2, Py_ssize_t ldc2)
    const int FB_PEAK_ACC
    const int FB_VW
    double fb_fma_peak(long rounds, int threads)

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

include "_pool.pxi"
include "_team.pxi"
include "_elementwise.pxi"
include "_products.pxi"
include "_plans.pxi"


def _tuning(small_step=None, transposed_step=None, shard_step=None, pass_units=None,
            small_rows=None):
    """Set the size thresholds that choose between code paths (for tests, which run every
    path on small problems); returns the previous (small_step, transposed_step, shard_step,
    pass_units, small_rows)."""
    global SMALL_STEP, TRANSPOSED_STEP, SHARD_STEP, PASS_SHARED_UNITS, SMALL_STEP_ROWS
    previous = (SMALL_STEP, TRANSPOSED_STEP, SHARD_STEP, PASS_SHARED_UNITS, SMALL_STEP_ROWS)
    if small_step is not None:
        SMALL_STEP = small_step
    if transposed_step is not None:
        TRANSPOSED_STEP = transposed_step
    if shard_step is not None:
        SHARD_STEP = shard_step
    if pass_units is not None:
        PASS_SHARED_UNITS = pass_units
    if small_rows is not None:
        SMALL_STEP_ROWS = small_rows
    return previous


def threads():
    """How many threads the float32 kernels' OpenMP team has (OMP_NUM_THREADS, threadpoolctl,
    ``set_num_threads``); a call runs on all of them or, where that measures faster, one."""
    return fb_team_threads()


def fma_peak(double seconds=0.02, int repeats=5):
    """The float32 multiply-add rate (FLOP/s) this build reaches on the kernels' team, from
    registers alone: the best of ``repeats`` runs of about ``seconds`` each. The limit that
    the products' rates are measured against (``python -m fastbptt bench``'s "% peak").

    A run shorter than seconds / 2 only sizes the next one (rounds only grow), so a first
    run slowed by other threads (OpenBLAS's spin after a call halves it) cannot leave the
    counted runs so short that meeting the team dominates them."""
    if not seconds > 0 or repeats < 1:
        raise ValueError(f"seconds and repeats must be positive, got {seconds}, {repeats}")
    cdef int team = fb_max_threads(), counted = 0
    cdef long rounds = 1 << 12, limit = 1L << 40
    cdef double took = 0.0, best = 0.0, grow
    cdef double per_round = <double> team * FB_PEAK_ACC * FB_VW * 2
    with nogil:
        while counted < repeats:
            took = fb_fma_peak(rounds, team)
            if took < seconds / 2 and rounds < limit:
                grow = seconds / took if took > 0 else 16.0
                rounds = <long> (rounds * min(max(grow, 2.0), 16.0))
                continue
            if took > 0:
                best = max(best, per_round * rounds / took)
            counted += 1
    return best


def cpu_features():
    """The instruction-set levels this CPU runs, best last: a subset of ('avx2', 'avx512')."""
    return tuple(name for name, ok in (("avx2", fastbptt_has_avx2()),
                                       ("avx512", fastbptt_has_avx512())) if ok)


# Each public kernel picks its float or double specialisation by hand: the automatic
# dispatch of a fused ``def`` matches signatures in Python and costs a microsecond a call,
# which is what a whole char-RNN step costs.

def linear_forward(x, w, b):
    """y = x wᵀ + b: x (M, K), w (N, K), b (N,) -> y (M, N)."""
    cdef TeamCall call
    if x.dtype == np.float32:
        call = team_enter(TEAM_LINEAR_FORWARD, x.shape[0], x.shape[1], w.shape[0], 0, False)
        try:
            return _linear_forward[float](x, w, b)
        finally:
            team_leave(call)
    return _linear_forward[double](x, w, b)


cdef object _linear_forward(const floating[:, ::1] x, const floating[:, ::1] w, const floating[::1] b):
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1], N = w.shape[0], m
    y_arr = pooled_empty((M, N), dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, ::1] y = y_arr
    with nogil:
        for m in range(M):
            memcpy(&y[m, 0], &b[0], N * sizeof(floating))
        # y += x @ w.T
        matmul(False, True, M, N, K, &x[0, 0], K, &w[0, 0], K, True, &y[0, 0], N)
    return y_arr


def linear_backward(dy, x, w, out=None):
    """Gradients of y = x wᵀ + b: dy (M, N), x (M, K) -> (dx (M, K), dw (N, K), db (N,));
    out: None, or (dw, db) to write those two into and return (C-contiguous, dy's dtype)."""
    cdef TeamCall call
    if dy.dtype == np.float32:
        call = team_enter(TEAM_LINEAR_BACKWARD, dy.shape[0], dy.shape[1], x.shape[1], 0, False)
        try:
            return _linear_backward[float](dy, x, w, out)
        finally:
            team_leave(call)
    return _linear_backward[double](dy, x, w, out)


cdef object _linear_backward(const floating[:, ::1] dy, const floating[:, ::1] x, const floating[:, ::1] w,
                             out):
    cdef Py_ssize_t M = dy.shape[0], N = dy.shape[1], K = x.shape[1]
    dtype = np.float32 if floating is float else np.float64
    dx_arr = pooled_empty((M, K), dtype=dtype)
    if out is None:
        dw_arr, db_arr = pooled_empty((N, K), dtype=dtype), np.empty(N, dtype=dtype)
    else:
        check_out(out, ((N, K), (N,)), dtype)
        dw_arr, db_arr = out
    cdef floating[:, ::1] dx = dx_arr
    cdef floating[:, ::1] dw = dw_arr
    cdef floating[::1] db = db_arr
    with nogil:
        # dx = dy @ w
        matmul(False, False, M, K, N, &dy[0, 0], N, &w[0, 0], K, False, &dx[0, 0], K)
        # dw = dy.T @ x
        matmul(True, False, N, K, M, &dy[0, 0], N, &x[0, 0], K, False, &dw[0, 0], K)
        # db = dy.sum(axis=0)
        column_sums(&dy[0, 0], &db[0], M, N, N)
    return dx_arr, dw_arr, db_arr


include "_ids.pxi"
include "_elman.pxi"
include "_lstm.pxi"
include "_gru.pxi"
include "_update.pxi"
include "_losses.pxi"
