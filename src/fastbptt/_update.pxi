# Fused optimizer steps and whole-gradient clipping over flat buffers: the twins of the
# "update" section of _reference.py, same names, same signatures. Included from _kernels.pyx,
# so every CPU build compiles them with its own vector width.
#
# Each step is one pass over the buffer, element by element, in the order of operations of
# the per-array NumPy path in optim.py (and with its constants rounded the same way: the
# callers compute them in double and they are cast once to the buffer's dtype), so that the
# two paths differ only where the C compiler contracts a multiply-add. Gradients are read,
# never written: a global-norm clip enters as ``scale``, multiplied into each gradient as
# it is read (× 1.0 is exact, so scale 1 is no clip).
#
# The square roots go through fb_sqrt_*: GCC does not vectorise sqrtf/sqrt in a loop while
# -fmath-errno is on (the default), so the roots of a block are taken with the build's own
# vector instructions, between two loops the compiler vectorises itself.

from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE
from cpython.buffer cimport PyBuffer_Release, PyObject_GetBuffer
from libc.string cimport strcmp

cdef extern from *:
    """
    #include <math.h>
    #if defined(__AVX512F__) || defined(__AVX__) || defined(__SSE2__)
    #include <immintrin.h>
    #endif
    /* a[i] = sqrt(a[i]), correctly rounded, as sqrtf/sqrt give it. */
    static void fb_sqrt_f32(float* a, Py_ssize_t n) {
        Py_ssize_t i = 0;
    #if defined(__AVX512F__)
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(a + i, _mm512_sqrt_ps(_mm512_loadu_ps(a + i)));
    #elif defined(__AVX__)
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(a + i, _mm256_sqrt_ps(_mm256_loadu_ps(a + i)));
    #elif defined(__SSE2__)
        for (; i + 4 <= n; i += 4) _mm_storeu_ps(a + i, _mm_sqrt_ps(_mm_loadu_ps(a + i)));
    #endif
        for (; i < n; i++) a[i] = sqrtf(a[i]);
    }
    static void fb_sqrt_f64(double* a, Py_ssize_t n) {
        Py_ssize_t i = 0;
    #if defined(__AVX512F__)
        for (; i + 8 <= n; i += 8) _mm512_storeu_pd(a + i, _mm512_sqrt_pd(_mm512_loadu_pd(a + i)));
    #elif defined(__AVX__)
        for (; i + 4 <= n; i += 4) _mm256_storeu_pd(a + i, _mm256_sqrt_pd(_mm256_loadu_pd(a + i)));
    #elif defined(__SSE2__)
        for (; i + 2 <= n; i += 2) _mm_storeu_pd(a + i, _mm_sqrt_pd(_mm_loadu_pd(a + i)));
    #endif
        for (; i < n; i++) a[i] = sqrt(a[i]);
    }
    """
    void fb_sqrt_f32(float* a, Py_ssize_t n) nogil
    void fb_sqrt_f64(double* a, Py_ssize_t n) nogil

# Elements per block of the steps that take square roots: the block's roots live on the stack
# (4 KB in float64), in L1 between the two loops.
cdef enum:
    UPDATE_BLOCK = 512


# The steps over buffers of at least this many elements share their blocks among the thread
# team (each element's arithmetic is the same on any thread, so are the bits), on the team
# size that has been the faster for buffers of that size (``_team.pxi``): a char-RNN LSTM's
# 73K-element Adam step, ~25 µs on one thread, is the largest piece of its update outside
# the layers. Below it, meeting the team costs about what it saves.
cdef Py_ssize_t UPDATE_PARALLEL_MIN = 16 * 1024


cdef inline TeamCall update_call(Py_ssize_t n) noexcept:
    """``team_enter`` for an optimizer step over n elements (none below UPDATE_PARALLEL_MIN)."""
    cdef TeamCall call
    if n < UPDATE_PARALLEL_MIN:
        call.slot = -1
        return call
    return team_enter(TEAM_UPDATE, n, 0, 0, 0, False)


cdef inline int update_threads(Py_ssize_t n) noexcept:
    """The team an optimizer step over n elements runs its blocks on (after ``update_call``)."""
    return fb_max_threads() if n >= UPDATE_PARALLEL_MIN else 1


cdef inline void sqrt_block(floating* a, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fb_sqrt_f32(a, n)
    else:
        fb_sqrt_f64(a, n)


# ------------------------------------------------------------------------ layout


def flat_span(arrays, base, shapes):
    """Where the arrays, in order, lie end to end inside ``base``: (start, stop), the span
    base[start:stop] they fill, or None when they do not. Each must be C-contiguous,
    writeable, of base's dtype and of the shape in ``shapes`` (a tuple of shape tuples, or
    None for any), and begin where the one before it ends.

    base: a 1-D C-contiguous writeable array. Anything else (a list, a read-only or strided
    array, a gap, another order, memory outside base) gives None, never an error: the caller
    then takes its per-array path, which words the errors.
    """
    cdef Py_buffer whole, part
    cdef char* first
    cdef char* expected
    cdef char* end
    cdef Py_ssize_t k, d, count = len(arrays)
    cdef int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE
    cdef bint ok = True
    if count == 0 or (shapes is not None and len(shapes) != count):
        return None
    try:
        PyObject_GetBuffer(base, &whole, flags)
    except (TypeError, ValueError, BufferError):
        return None
    try:
        if whole.ndim != 1:
            return None
        first = NULL
        expected = NULL
        end = <char*>whole.buf + whole.len
        for k in range(count):
            try:
                PyObject_GetBuffer(arrays[k], &part, flags)
            except (TypeError, ValueError, BufferError):
                return None
            if k == 0:
                first = expected = <char*>part.buf
            ok = (<char*>part.buf == expected and part.itemsize == whole.itemsize
                  and strcmp(part.format, whole.format) == 0)
            if ok and shapes is not None:
                shape = shapes[k]
                ok = len(shape) == part.ndim
                d = 0
                while ok and d < part.ndim:
                    ok = part.shape[d] == shape[d]
                    d += 1
            expected += part.len
            PyBuffer_Release(&part)
            if not ok:
                return None
        if (first < <char*>whole.buf or expected > end
                or (first - <char*>whole.buf) % whole.itemsize != 0):
            return None
        return ((first - <char*>whole.buf) // whole.itemsize,
                (expected - <char*>whole.buf) // whole.itemsize)
    finally:
        PyBuffer_Release(&whole)


# ------------------------------------------------------------------------ clipping


def sum_squares(a):
    """Σ a² over the C-contiguous float32/float64 array ``a``, accumulated in float64."""
    if a.size == 0:
        return 0.0
    if a.dtype == np.float32:
        return _sum_squares[float](a.reshape(-1))
    return _sum_squares[double](a.reshape(-1))


cdef double _sum_squares(const floating[::1] a):
    """One pass below SCAN_PARALLEL_MIN elements; from there each SCAN_BLOCK's sum apart,
    the team sharing the blocks, then the block sums added in order (the same bits on any
    thread count)."""
    cdef Py_ssize_t b, n = a.shape[0], blocks = scan_blocks(n)
    cdef const floating* p = &a[0]
    cdef double[::1] partial
    cdef double total = 0
    cdef TeamCall call
    if n < SCAN_PARALLEL_MIN:
        with nogil:
            total = sum_squares_ptr(p, n)
        return total
    partial = np.empty(blocks, dtype=np.float64)
    call = team_enter(TEAM_SCAN, n, 1, 0, 0, False)
    with nogil:
        for b in prange(blocks, num_threads=fb_max_threads(), schedule="static"):
            partial[b] = sum_squares_ptr(p + b * SCAN_BLOCK, min(SCAN_BLOCK, n - b * SCAN_BLOCK))
        for b in range(blocks):
            total += partial[b]
    team_leave(call)
    return total


cdef double sum_squares_ptr(const floating* a, Py_ssize_t n) noexcept nogil:
    # 32 partial sums that the compiler keeps in vector lanes, four registers' worth: one
    # accumulator would be a chain of dependent adds (which it may not reorder), one
    # register's worth a chain of dependent vector adds, 4 cycles each.
    cdef double acc[32]
    cdef double x, total = 0
    cdef Py_ssize_t i = 0, k
    for k in range(32):
        acc[k] = 0
    while i + 32 <= n:
        for k in range(32):
            x = a[i + k]
            acc[k] += x * x
        i += 32
    while i < n:
        x = a[i]
        total += x * x
        i += 1
    for k in range(32):
        total += acc[k]
    return total


def scale_inplace(a, s):
    """a *= s in a's dtype (s cast to it first, as NumPy does with a Python float)."""
    if a.dtype == np.float32:
        _scale_inplace[float](a.reshape(-1), s)
    else:
        _scale_inplace[double](a.reshape(-1), s)


cdef void _scale_inplace(floating[::1] a, floating s):
    cdef Py_ssize_t i, n = a.shape[0]
    with nogil:
        for i in range(n):
            a[i] = a[i] * s


def clip_values(a, v):
    """Every element of ``a`` into [-v, v], in place; NaN stays NaN (as np.clip)."""
    if a.dtype == np.float32:
        _clip_values[float](a.reshape(-1), v)
    else:
        _clip_values[double](a.reshape(-1), v)


cdef void _clip_values(floating[::1] a, floating v):
    cdef Py_ssize_t i, n = a.shape[0]
    cdef floating x, low = -v
    with nogil:
        for i in range(n):
            x = a[i]
            x = low if x < low else x
            a[i] = v if x > v else x


# ------------------------------------------------------------------------ optimizer steps


def sgd_step(p, g, velocity, lr, momentum, nesterov, weight_decay, scale):
    """One SGD step over flat buffers, PyTorch's equations (dampening 0), in place on p and
    velocity (None without momentum); g (read only) is multiplied by ``scale`` as it is read.

        d ← scale·g + weight_decay·p
        b ← momentum·b + d;  d ← d + momentum·b (nesterov) or b      (momentum > 0)
        p ← p - lr·d
    """
    with_momentum = velocity is not None
    if not with_momentum:
        velocity = p        # never read or written
    if p.dtype == np.float32:
        _sgd[float](p, g, velocity, lr, momentum, with_momentum, nesterov, weight_decay, scale)
    else:
        _sgd[double](p, g, velocity, lr, momentum, with_momentum, nesterov, weight_decay, scale)


cdef void _sgd(floating[::1] p, const floating[::1] g, floating[::1] velocity, floating lr,
               floating momentum, bint with_momentum, bint nesterov, floating decay,
               floating scale):
    cdef Py_ssize_t i, n = p.shape[0]
    cdef floating d, b
    with nogil:
        for i in range(n):
            d = p[i] * decay + g[i] * scale
            if with_momentum:
                b = velocity[i] * momentum + d
                velocity[i] = b
                d = d + b * momentum if nesterov else b
            p[i] = p[i] - d * lr


def adagrad_step(p, g, sum_sq, lr, eps, scale):
    """One Adagrad step over flat buffers (ε inside the root, as min-char-rnn), in place:

        d ← scale·g;  sum_sq ← sum_sq + d²;  p ← p - lr·d / √(sum_sq + eps)
    """
    if p.dtype == np.float32:
        _adagrad[float](p, g, sum_sq, lr, eps, scale)
    else:
        _adagrad[double](p, g, sum_sq, lr, eps, scale)


cdef void _adagrad(floating[::1] p, const floating[::1] g, floating[::1] sum_sq, floating lr,
                   floating eps, floating scale):
    cdef Py_ssize_t block, n = p.shape[0], blocks = (n + UPDATE_BLOCK - 1) // UPDATE_BLOCK
    cdef TeamCall call = update_call(n)
    cdef int threads = update_threads(n)
    with nogil:
        for block in prange(blocks, num_threads=threads, schedule="static"):
            _adagrad_block(&p[0], &g[0], &sum_sq[0], block * UPDATE_BLOCK,
                           min(UPDATE_BLOCK, n - block * UPDATE_BLOCK), lr, eps, scale)
    team_leave(call)


cdef inline void _adagrad_block(floating* p, const floating* g, floating* sum_sq,
                                Py_ssize_t start, Py_ssize_t k, floating lr, floating eps,
                                floating scale) noexcept nogil:
    cdef floating root[UPDATE_BLOCK]
    cdef Py_ssize_t i
    cdef floating d, s
    p += start
    g += start
    sum_sq += start
    for i in range(k):
        d = g[i] * scale
        s = sum_sq[i] + d * d
        sum_sq[i] = s
        root[i] = s + eps
    sqrt_block(root, k)
    for i in range(k):
        d = g[i] * scale
        p[i] = p[i] - (d / root[i]) * lr


def adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, step, scale):
    """One Adam (decoupled=False: L2 decay in the gradient) or AdamW (decoupled=True, as
    torch.optim.AdamW) step t = ``step`` over flat buffers, PyTorch's equations, in place:

        p ← p·(1 - lr·weight_decay)                         (AdamW)
        d ← scale·g (+ weight_decay·p for Adam)
        m ← β1·m + (1 - β1)·d;  v ← β2·v + (1 - β2)·d²
        p ← p - lr/(1 - β1ᵗ) · m / (√v / √(1 - β2ᵗ) + eps)
    """
    cdef double step_size = lr / (1.0 - beta1 ** step)
    cdef double root_bias2 = (1.0 - beta2 ** step) ** 0.5
    cdef double l2 = 0.0 if decoupled else weight_decay
    cdef double shrink = 1.0 - lr * weight_decay if decoupled else 1.0
    if p.dtype == np.float32:
        _adam[float](p, g, m, v, beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps, l2, shrink,
                     step_size, root_bias2, scale)
    else:
        _adam[double](p, g, m, v, beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps, l2, shrink,
                      step_size, root_bias2, scale)


cdef void _adam(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
                floating beta1, floating one_minus_beta1, floating beta2, floating one_minus_beta2,
                floating eps, floating l2, floating shrink, floating step_size,
                floating root_bias2, floating scale):
    cdef Py_ssize_t block, n = p.shape[0], blocks = (n + UPDATE_BLOCK - 1) // UPDATE_BLOCK
    cdef TeamCall call = update_call(n)
    cdef int threads = update_threads(n)
    with nogil:
        for block in prange(blocks, num_threads=threads, schedule="static"):
            _adam_block(&p[0], &g[0], &m[0], &v[0], block * UPDATE_BLOCK,
                        min(UPDATE_BLOCK, n - block * UPDATE_BLOCK), beta1, one_minus_beta1,
                        beta2, one_minus_beta2, eps, l2, shrink, step_size, root_bias2, scale)
    team_leave(call)


cdef inline void _adam_block(floating* p, const floating* g, floating* m, floating* v,
                             Py_ssize_t start, Py_ssize_t k, floating beta1,
                             floating one_minus_beta1, floating beta2, floating one_minus_beta2,
                             floating eps, floating l2, floating shrink, floating step_size,
                             floating root_bias2, floating scale) noexcept nogil:
    cdef floating root[UPDATE_BLOCK]
    cdef Py_ssize_t i
    cdef floating d, mi, vi
    p += start
    g += start
    m += start
    v += start
    for i in range(k):
        # l2 and scale are exact no-ops at 0 and 1 (for finite p)
        d = p[i] * l2 + g[i] * scale
        mi = m[i] * beta1 + d * one_minus_beta1
        vi = v[i] * beta2 + (d * d) * one_minus_beta2
        m[i] = mi
        v[i] = vi
        root[i] = vi
    sqrt_block(root, k)
    for i in range(k):
        p[i] = p[i] * shrink - (m[i] / (root[i] / root_bias2 + eps)) * step_size
