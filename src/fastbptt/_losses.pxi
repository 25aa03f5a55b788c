# Losses over rows of outputs: the twins of the "losses" section of _reference.py, same
# names, same signatures. Included from _kernels.pyx. losses.py validates everything and
# chooses the scored rows (all of them, those inside ``lengths``, or one per sequence for
# ``last_step``); these functions trust it.
#
# float32 softmax runs on fb_expf, a vectorisable e^x for x <= 0 (a logit minus its row's
# maximum): Cody-Waite reduction x = n·ln 2 + r and Cephes' degree-6 polynomial for e^r, then
# 2^n through the exponent bits; within 1.3 ulp of the true value (checked over the whole range
# in the tests). A libm expf call per element would cost more than the rest of the loss.
# float64, the checking dtype, calls libm's exp.

from libc.math cimport exp, log
from libc.stdint cimport int64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <immintrin.h>
    /* e^x for -87 <= x <= 0 (the caller clamps), on 16 lanes at once: within 1.3 ulp. */
    typedef float fb_exp_vf __attribute__((vector_size(64), aligned(4)));
    typedef int32_t fb_exp_vi __attribute__((vector_size(64), aligned(4)));
    static inline fb_exp_vf fb_expf16(fb_exp_vf x) {
        const float round_magic = 12582912.0f;     /* 1.5 * 2^23: adding it rounds to an int */
        fb_exp_vf n = (x * 1.44269504088896341f + round_magic) - round_magic;
        fb_exp_vf r = x - n * 0.693359375f;         /* ln 2 in two parts, exact products */
        r = r - n * -2.12194440e-4f;
        fb_exp_vf y = (fb_exp_vf){0} + 1.9875691500e-4f;
        y = y * r + 1.3981999507e-3f;
        y = y * r + 8.3334519073e-3f;
        y = y * r + 4.1665795894e-2f;
        y = y * r + 1.6666665459e-1f;
        y = y * r + 5.0000001201e-1f;
        y = y * (r * r) + r + 1.0f;
        fb_exp_vi bits = (__builtin_convertvector(n, fb_exp_vi) + 127) << 23;   /* 2^n, n in [-126, 0] */
        return y * (fb_exp_vf) bits;
    }

    /* fb_expf16 of one value (its lane 0): the arithmetic the softmax runs, for the tests. */
    static inline float fb_expf(float x) {
        fb_exp_vf v = {0};
        v[0] = x;
        return fb_expf16(v)[0];
    }

    /* max a[0:n] (n >= 1, finite values) in one register of partial maxima per vector width
       of the build: a maximum is the same in any order, and a running scalar maximum (what
       the compiler makes of the plain loop, lane by lane too) is a chain of dependent
       compares, half of a 10,000-word softmax's time. */
    static inline float fb_max_f32(const float* a, ptrdiff_t n) {
        ptrdiff_t i = 0;
        float top = a[0], lanes[16];
    #if defined(__AVX512F__)
        if (n >= 16) {
            __m512 acc = _mm512_loadu_ps(a);
            for (i = 16; i + 16 <= n; i += 16) acc = _mm512_max_ps(acc, _mm512_loadu_ps(a + i));
            _mm512_storeu_ps(lanes, acc);
            for (int k = 0; k < 16; k++) top = lanes[k] > top ? lanes[k] : top;
        }
    #elif defined(__AVX__)
        if (n >= 8) {
            __m256 acc = _mm256_loadu_ps(a);
            for (i = 8; i + 8 <= n; i += 8) acc = _mm256_max_ps(acc, _mm256_loadu_ps(a + i));
            _mm256_storeu_ps(lanes, acc);
            for (int k = 0; k < 8; k++) top = lanes[k] > top ? lanes[k] : top;
        }
    #else
        if (n >= 4) {
            __m128 acc = _mm_loadu_ps(a);
            for (i = 4; i + 4 <= n; i += 4) acc = _mm_max_ps(acc, _mm_loadu_ps(a + i));
            _mm_storeu_ps(lanes, acc);
            for (int k = 0; k < 4; k++) top = lanes[k] > top ? lanes[k] : top;
        }
    #endif
        for (; i < n; i++) top = a[i] > top ? a[i] : top;
        return top;
    }

    /* e^(t - top) of 16 values, clamped at `low` and 0 where t - top < low (the probability
       underflows). */
    static inline fb_exp_vf fb_softmax_exp16(const float* z, float top, float low) {
        fb_exp_vf t;
        memcpy(&t, z, sizeof t);
        t = t - top;
        fb_exp_vi under = t < low;
        fb_exp_vf clamped = (fb_exp_vf) (((fb_exp_vi) t & ~under) | ((fb_exp_vi) ((fb_exp_vf){0} + low) & under));
        return (fb_exp_vf) ((fb_exp_vi) fb_expf16(clamped) & ~under);
    }

    /* d = e^(z - top) over a row of n, in one pass: each element clamped at `low`, fb_expf'd,
       and 0 where z - top < low (the probability underflows); returns Σ d in float64, summed
       as the kernels' sum_ptr sums (eight partial sums over the chunks of eight, the rest in
       order, then the partial sums in order), so the bits are those of the passes one after
       the other, which read the row three times more. */
    static inline double fb_softmax_exp_f32(const float* z, float* d, ptrdiff_t n, float top,
                                            float low) {
        typedef float v8f __attribute__((vector_size(32)));
        typedef double v8d __attribute__((vector_size(64)));
        v8d sums = {0, 0, 0, 0, 0, 0, 0, 0};
        double acc[8], total = 0;
        ptrdiff_t i = 0;
        for (; i + 16 <= n; i += 16) {
            fb_exp_vf e = fb_softmax_exp16(z + i, top, low);
            memcpy(d + i, &e, sizeof e);
            v8f lo = __builtin_shufflevector(e, e, 0, 1, 2, 3, 4, 5, 6, 7);
            v8f hi = __builtin_shufflevector(e, e, 8, 9, 10, 11, 12, 13, 14, 15);
    #if defined(__AVX512F__)
            /* the one-instruction widening the generic conversion is not lowered to */
            sums += (v8d) _mm512_cvtps_pd((__m256) lo);
            sums += (v8d) _mm512_cvtps_pd((__m256) hi);
    #else
            sums += __builtin_convertvector(lo, v8d);
            sums += __builtin_convertvector(hi, v8d);
    #endif
        }
        memcpy(acc, &sums, sizeof acc);
        if (i < n) {    /* the last n % 16: the same lanes over a zero-padded copy */
            float pad[16] = {0};
            memcpy(pad, z + i, (size_t)(n - i) * sizeof(float));
            fb_exp_vf e = fb_softmax_exp16(pad, top, low);
            memcpy(d + i, &e, (size_t)(n - i) * sizeof(float));
        }
        for (; i + 8 <= n; i += 8)
            for (int k = 0; k < 8; k++) acc[k] += d[i + k];
        for (; i < n; i++) total += d[i];
        for (int k = 0; k < 8; k++) total += acc[k];
        return total;
    }
    """
    float fb_expf(float x) nogil
    float fb_max_f32(const float* a, Py_ssize_t n) nogil
    double fb_softmax_exp_f32(const float* z, float* d, Py_ssize_t n, float top, float low) nogil

# Below this, e^x underflows float32's normal range: the probability is taken as exactly 0.
cdef float EXPF_LOW = -87.0


def fast_expf(x):
    """e^x by fb_expf, element by element: x a 1-D float32 array of values in [-87, 0]."""
    out = np.empty_like(x)
    cdef const float[::1] xs = x
    cdef float[::1] ys = out
    cdef Py_ssize_t i
    for i in range(xs.shape[0]):
        ys[i] = fb_expf(xs[i])
    return out


# stands for rows=None (a memoryview cannot be None here): never read
_ALL_ROWS = np.zeros(1, np.int64)


cdef double sum_ptr(const floating* a, Py_ssize_t n) noexcept nogil:
    """Σ a in float64, in eight partial sums (vector lanes)."""
    cdef double acc[8]
    cdef double total = 0
    cdef Py_ssize_t i = 0, k
    for k in range(8):
        acc[k] = 0
    while i + 8 <= n:
        for k in range(8):
            acc[k] += a[i + k]
        i += 8
    while i < n:
        total += a[i]
        i += 1
    for k in range(8):
        total += acc[k]
    return total


cdef inline floating max_ptr(const floating* a, Py_ssize_t n) noexcept nogil:
    """max a over n >= 1 finite values: fb_max_f32 in float32."""
    cdef floating top = a[0]
    cdef Py_ssize_t i
    if floating is float:
        return fb_max_f32(a, n)
    for i in range(1, n):
        top = a[i] if a[i] > top else top
    return top


def softmax_cross_entropy(logits, labels, rows, d_out, inv_batch):
    """Softmax cross-entropy of the scored rows, and its gradient, in one pass per row.

    logits (N, C) float32/float64; labels (M,) int64; rows (M,) int64, the rows of logits
    scored (None: M = N, every row in order); d_out (N, C) of logits' dtype, where row
    rows[m] gets (softmax - onehot(labels[m])) · inv_batch (other rows are not written).
    Returns (Σ_m -log softmax(logits[rows[m]])[labels[m]], bad): bad is the first m whose
    label lies outside [0, C) (then nothing is computed and the sum is 0), or -1.
    """
    cdef Py_ssize_t bad
    cdef double total
    cdef const int64_t[::1] rows_view = _ALL_ROWS if rows is None else rows
    if logits.dtype == np.float32:
        total, bad = _cross_entropy[float](logits, labels, rows_view, rows is not None, d_out,
                                           inv_batch)
    else:
        total, bad = _cross_entropy[double](logits, labels, rows_view, rows is not None, d_out,
                                            inv_batch)
    return total, bad


# The rows of a cross-entropy of at least this many logits are shared among the thread team
# (on the team size that has been the faster for its size, ``_team.pxi``): a word-level
# model's 700 rows of 10,000 logits take 7-8 ms on one thread. Each row's arithmetic and
# the rows' sum in order are the same on any thread, and so are the bits.
cdef Py_ssize_t LOSS_PARALLEL_MIN = 128 * 1024


cdef (double, Py_ssize_t) _cross_entropy(const floating[:, ::1] logits,
                                         const int64_t[::1] labels,
                                         const int64_t[::1] rows, bint gather,
                                         floating[:, ::1] d_out, double inv_batch):
    cdef Py_ssize_t m, M = labels.shape[0], C = logits.shape[1]
    cdef double total = 0
    cdef int threads = 1
    cdef TeamCall call
    call.slot = -1
    for m in range(M):
        if labels[m] < 0 or labels[m] >= C:
            return 0, m
    if M == 0:
        return 0, -1
    cdef double[::1] row_loss = np.empty(M, dtype=np.float64)
    if M > 1 and M * C >= LOSS_PARALLEL_MIN:
        call = team_enter(TEAM_LOSS, M, C, 0, 0, False)
        threads = fb_max_threads()
    with nogil:
        for m in prange(M, num_threads=threads, schedule="static"):
            row_loss[m] = _cross_entropy_row(&logits[rows[m] if gather else m, 0],
                                             &d_out[rows[m] if gather else m, 0], C,
                                             labels[m], inv_batch)
        for m in range(M):
            total += row_loss[m]
    team_leave(call)
    return total, -1


cdef double _cross_entropy_row(const floating* z, floating* d, Py_ssize_t C, int64_t label,
                               double inv_batch) noexcept nogil:
    """One row's -log softmax(z)[label]; d = (softmax(z) - onehot(label)) · inv_batch."""
    cdef Py_ssize_t j
    cdef floating top = max_ptr(z, C), t
    cdef double norm, per_prob
    # d = e^(z - max z), then divided by its sum
    if floating is float:
        norm = fb_softmax_exp_f32(z, d, C, top, EXPF_LOW)
    else:
        for j in range(C):
            d[j] = exp(z[j] - top)
        norm = sum_ptr(d, C)
    per_prob = inv_batch / norm
    for j in range(C):
        d[j] = d[j] * <floating>per_prob
    d[label] = d[label] - <floating>inv_batch
    # -log p[label] = log Σ e^(z - max z) - (z[label] - max z)
    return log(norm) - (<double>z[label] - top)


def squared_error(out, target, rows, d_out, two_over_batch):
    """Σ ‖out[rows[m]] - target[m]‖² over the scored rows, and its gradient.

    out (N, O) float32/float64; target (M, O) of out's dtype; rows (M,) int64 or None (every
    row in order); d_out (N, O), where row rows[m] gets (out - target) · two_over_batch (other
    rows are not written). Returns the sum as a float (accumulated in float64).
    """
    cdef const int64_t[::1] rows_view = _ALL_ROWS if rows is None else rows
    if out.dtype == np.float32:
        return _squared_error[float](out, target, rows_view, rows is not None, d_out,
                                     two_over_batch)
    return _squared_error[double](out, target, rows_view, rows is not None, d_out,
                                  two_over_batch)


cdef double _squared_error(const floating[:, ::1] out, const floating[:, ::1] target,
                           const int64_t[::1] rows, bint gather, floating[:, ::1] d_out,
                           floating two_over_batch):
    cdef Py_ssize_t m, j, row, M = target.shape[0], O = out.shape[1]
    cdef const floating* y
    cdef const floating* goal
    cdef floating* d
    cdef double total = 0
    if not gather:
        # every row in order: one run over the whole block, as if it were one long row
        O = M * O
        M = 1
    with nogil:
        for m in range(M):
            row = rows[m] if gather else m
            y = &out[row, 0]
            goal = &target[m, 0]
            d = &d_out[row, 0]
            for j in range(O):
                d[j] = y[j] - goal[j]
            total += sum_squares_ptr(d, O)
            for j in range(O):
                d[j] = d[j] * two_over_batch
    return total
