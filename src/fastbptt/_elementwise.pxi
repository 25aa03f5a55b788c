# Element-wise math shared by every cell's loops (included by _kernels.pyx).
#
# tanh and σ as the loops evaluate them (float32: a clamped rational approximation that
# vectorizes), the per-row norms and clipping of the backward sweeps, and the small fills and
# sums around them. Each cell's own fused passes (bias + activation, the gate equations)
# stand in that cell's file: _elman.pxi, _lstm.pxi, _gru.pxi.

# tanh_fast's clamp bounds, |v| ≤ 9 in and |tanh| ≤ 1 out, read at run time: see tanh_fast.
cdef float TANH_V_MAX = 9.0
cdef float TANH_T_MAX = 1.0

# The gated cells' fused passes work through a row LANES elements at a time, into buffers
# on the stack that are copied out after each chunk. Written straight into the caller's
# arrays, these loops stay scalar with gcc 12 in every build (-fopt-info-vec): the outputs
# might alias the inputs, with more pairs to check at run time than gcc will check (10).
# Stack buffers alias nothing, and with tanh_fast's run-time bounds every build vectorizes all four passes.
cdef enum:
    LANES = 128


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


cdef inline floating sigmoid_fast(floating v, floating v_max, floating t_max) noexcept nogil:
    """σ(v) = ½(1 + tanh(v/2)): the same function as 1/(1 + e^{-v}), built on tanh_fast's
    approximation so that it vectorizes, and e^{-v} never overflows."""
    return <floating> 0.5 * (<floating> 1 + tanh_fast(<floating> 0.5 * v, v_max, t_max))


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


cdef inline void step_norms(floating* norms, const floating* d_out, const floating* carry,
                            Py_ssize_t n, Py_ssize_t rows, Py_ssize_t H) noexcept nogil:
    """A backward step's norms (rows,) of ∂E/∂h_t = d_out + carry, rows (·, H): of the n
    running rows, and zero for the finished rows n:rows."""
    zero_rows(norms, n, rows, 1)
    row_norms(d_out, carry, norms, n, H)


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


cdef inline void zero_rows(floating* a, Py_ssize_t start, Py_ssize_t stop,
                           Py_ssize_t width) noexcept nogil:
    """a[start:stop, :] = 0 for a row-major a with rows of ``width``."""
    if stop > start:
        memset(a + start * width, 0, (stop - start) * width * sizeof(floating))


cdef inline void column_sums(const floating* a, floating* out, Py_ssize_t M, Py_ssize_t N,
                             Py_ssize_t lda) noexcept nogil:
    """out (N,) = a[:, :N].sum(axis=0), a's M rows lda apart. (Shared among the team by runs
    of columns, the sums of a backward's δ measured no faster: tanh small 1.03-1.05x of the
    time, GRU small 0.98x, LSTM 0.99-1.01x.)"""
    cdef Py_ssize_t m, j
    memset(out, 0, N * sizeof(floating))
    for m in range(M):
        for j in range(N):
            out[j] += a[m * lda + j]


# Scans of a whole buffer (the finiteness check of a model's parameters before each forward,
# the global norm of its gradients): from SCAN_PARALLEL_MIN elements up, in blocks of
# SCAN_BLOCK that the thread team shares, each block's result kept apart and combined in
# block order, so that a sum has the same bits on any thread count. A 10,000-word model's 13M
# parameters are 52 MB: one core's scan of them takes about 2 ms, half of it on two.
DEF SCAN_BLOCK = 256 * 1024
cdef Py_ssize_t SCAN_PARALLEL_MIN = 2 * SCAN_BLOCK


cdef inline Py_ssize_t scan_blocks(Py_ssize_t n) noexcept nogil:
    return (n + SCAN_BLOCK - 1) // SCAN_BLOCK


def all_finite(a):
    """True when no element of the C-contiguous float32/float64 array ``a`` is NaN or inf."""
    if a.dtype == np.float32:
        return _all_finite[float](a.reshape(-1))
    return _all_finite[double](a.reshape(-1))


cdef inline bint finite_ptr(const floating* a, Py_ssize_t n) noexcept nogil:
    """In sub-blocks, so a NaN near the front stops the scan early, while a sub-block's loop
    stays an integer OR-reduction that vectorizes (x - x is NaN for inf and NaN)."""
    cdef Py_ssize_t i, start = 0, stop
    cdef int bad = 0
    while start < n and not bad:
        stop = min(start + 4096, n)
        for i in range(start, stop):
            bad |= (a[i] - a[i]) != 0
        start = stop
    return not bad


cdef bint _all_finite(const floating[::1] a):
    cdef Py_ssize_t b, n = a.shape[0], blocks = scan_blocks(n)
    cdef const floating* p = &a[0] if n else NULL
    cdef unsigned char[::1] finite
    cdef TeamCall call
    cdef bint ok
    if n < SCAN_PARALLEL_MIN:
        with nogil:
            ok = finite_ptr(p, n)
        return ok
    finite = np.empty(blocks, dtype=np.uint8)
    call = team_enter(TEAM_SCAN, n, 0, 0, 0, False)
    with nogil:
        for b in prange(blocks, num_threads=fb_max_threads(), schedule="static"):
            finite[b] = finite_ptr(p + b * SCAN_BLOCK, min(SCAN_BLOCK, n - b * SCAN_BLOCK))
    team_leave(call)
    for b in range(blocks):
        if not finite[b]:
            return False
    return True
