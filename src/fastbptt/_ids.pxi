# A layer's input as the cell kernels take it (included by _kernels.pyx, before the cells):
# floats x (T, B, I), or integer ids (T, B) in [0, I) meaning the one-hot rows np.eye(I)[x]
# (see ``_reference``'s docstring). For ids the hoisted input projection x W_ihᵀ is a gather
# of W_ih's columns and dW_ih = Σ δᵀ x a scatter-add into them; there is no dx. The backward
# kernels' ``need_dx=False`` skips the dx product for float inputs too.


cdef object input_pointers(x, const floating** values, const Py_ssize_t** ids):
    """Point ``values`` at float x (T, B, I) or ``ids`` at intp ids (T, B) (the other NULL),
    C-contiguous both, as the model makes them; returns the view to keep while they are
    used."""
    cdef const Py_ssize_t[:, ::1] id_view
    cdef const floating[:, :, ::1] x_view
    values[0] = NULL
    ids[0] = NULL
    if x.dtype.kind in "iu":
        id_view = x
        ids[0] = &id_view[0, 0]
        return id_view
    x_view = x
    values[0] = &x_view[0, 0, 0]
    return x_view


# Gathers and scatters of at least this many elements (rows · G) share their rows (the
# gather) or W_ih's rows (the scatter) among the thread team; below it (a char-RNN's 25 x
# 100) meeting the team costs more than the copy. Either way each element is written, and
# summed, as on one thread.
cdef Py_ssize_t IDS_PARALLEL_MIN = 64 * 1024


cdef inline void gather_columns(const Py_ssize_t* ids, const floating* w_ih, floating* out,
                                Py_ssize_t rows, Py_ssize_t I, Py_ssize_t G,
                                Py_ssize_t stride) noexcept nogil:
    """out[r, :G] = w_ih[:, ids[r]] for each of the rows (out's row stride ``stride``): the
    product of one-hot rows with w_ihᵀ (G, I). Every row is written, finished ones too (the
    time loops zero those). Sixteen of w_ih's rows at a time, each output row's sixteen
    columns one cache line: those w_ih rows (640 KB at I = 10,000) stay in L2 while every
    id reads them, where a whole output row at a time read G lines strewn over all of w_ih
    (a 10,000-word LSTM's gather, 700 x 1024: 2.5 -> 1.3-1.5 ms on 2 threads)."""
    cdef Py_ssize_t r, j, jb, j1
    cdef const floating* w
    cdef int threads = fb_max_threads() if rows * G >= IDS_PARALLEL_MIN else 1
    for jb in prange(0, G, 16, num_threads=threads, schedule="static"):
        j1 = min(jb + 16, G)
        w = w_ih + jb * I
        for r in range(rows):
            for j in range(j1 - jb):
                out[r * stride + jb + j] = w[j * I + ids[r]]


cdef inline void scatter_columns(const floating* delta, const Py_ssize_t* ids, floating* dw_ih,
                                 Py_ssize_t rows, Py_ssize_t I, Py_ssize_t G) noexcept nogil:
    """dw_ih (G, I) = Σ_r δ[r]ᵀ onehot(ids[r]): dw_ih[:, ids[r]] += δ[r] (rows, G). Sixteen
    rows of dw_ih at a time, zeroed just before their sums (so that their lines are in cache
    for them: zeroing all of a 10,000-word W_ih's 41 MB first sent it to memory and back):
    each δ row's sixteen columns one cache line, those dw_ih rows (640 KB at I = 10,000) in
    L2 while every id adds into them, where a row of dw_ih at a time read δ down a column, a
    line per element. Each element sums its rows in row order, so the bits never depend on a
    thread count."""
    cdef Py_ssize_t r, j, jb, j1, col
    cdef floating* w
    cdef const floating* d
    cdef int threads = fb_max_threads() if rows * G >= IDS_PARALLEL_MIN else 1
    for jb in prange(0, G, 16, num_threads=threads, schedule="static"):
        j1 = min(jb + 16, G)
        w = dw_ih + jb * I
        memset(w, 0, (j1 - jb) * I * sizeof(floating))
        for r in range(rows):
            col = ids[r]
            d = delta + r * G + jb
            for j in range(j1 - jb):
                w[j * I + col] += d[j]


cdef inline void project_input(const floating* x, const Py_ssize_t* ids, const floating* w_ih,
                               floating* out, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                               Py_ssize_t G, Py_ssize_t stride, const Py_ssize_t* sizes,
                               floating* work) noexcept nogil:
    """out[t, b, :G] = x[t, b] W_ihᵀ for every step at once: ``input_projection``'s gemm for
    float x, the gather of W_ih's columns for ids."""
    if ids != NULL:
        gather_columns(ids, w_ih, out, T * B, I, G, stride)
    else:
        input_projection(x, w_ih, out, T, B, I, G, stride, sizes, work)


cdef inline void input_gradients(const floating* delta, const floating* delta_h,
                                 const floating* x, const Py_ssize_t* ids,
                                 const floating* h_prev, const floating* w_ih, floating* dx,
                                 floating* dw_ih, floating* dw_hh, Py_ssize_t T, Py_ssize_t B,
                                 Py_ssize_t I, Py_ssize_t H, Py_ssize_t G,
                                 const Py_ssize_t* sizes, floating* work) noexcept nogil:
    """dx (unless NULL), dW_ih and dW_hh after a backward sweep (``weight_gradients``): over
    all T·B rows, or with a work buffer (``_gradient_work``) over the running rows only
    (``packed_weight_gradients``). For ids dW_ih is the scatter over all T·B rows (finished
    rows have zero δ's), and there is no dx."""
    cdef const floating* xf = x if ids == NULL else NULL
    if work == NULL:
        weight_gradients(delta, delta_h, xf, h_prev, w_ih, dx, dw_ih, dw_hh, T * B, I, H, G)
    else:
        packed_weight_gradients(delta, delta_h, xf, h_prev, w_ih, dx, dw_ih, dw_hh, T, B, I, H,
                                G, sizes, work)
    if ids != NULL:
        scatter_columns(delta, ids, dw_ih, T * B, I, G)


cdef check_out(out, shapes, dtype):
    """A backward's ``out``: arrays of these shapes (at least as many) and dtype, or a
    ValueError (their layout the memoryviews taking them check)."""
    if len(out) < len(shapes) or any(a.shape != s or a.dtype != dtype for a, s in zip(out, shapes)):
        raise ValueError(f"out must hold arrays of shapes {shapes} and dtype {np.dtype(dtype)}, "
                         f"got {[(a.shape, a.dtype) for a in out]}")


cdef tuple backward_arrays(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, Py_ssize_t G,
                           dtype, bint packed_rows, bint need_dx, out):
    """A backward's outputs beside the state gradients: dx (T, B, I), None when not
    ``need_dx`` (ids never need it), zeroed when packed_rows (the packed gradients place
    dx's running rows only); dw_ih (G, I), dw_hh (G, H), db (G,), out's first three when
    out is given (a backward's ``out``: the kernels write every element of them, as of
    arrays fresh from the pool)."""
    dx = None
    if need_dx:
        dx = (pooled_zeros((T, B, I), dtype=dtype) if packed_rows
              else pooled_empty((T, B, I), dtype=dtype))
    if out is not None:
        check_out(out, ((G, I), (G, H), (G,)), dtype)
        return dx, out[0], out[1], out[2]
    return dx, pooled_empty((G, I), dtype=dtype), pooled_empty((G, H), dtype=dtype), pooled_empty(G, dtype=dtype)
