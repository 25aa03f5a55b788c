# Loop plans and shards (included by _kernels.pyx).
#
# A time loop's pointers, sizes and flags travel in one ``Loop`` struct that a plan fills
# once per kernel call (``plan_loop``; ``plan_backward`` adds the backward's clipping and
# step norms), and every loop runs through one dispatcher, ``run_rows``: whole, on the
# calling thread with an OpenMP team for its per-step products, or in shards of the batch
# rows, one shard per thread. Rows never meet in a time loop, so the shards never wait for
# each other.
#
# Variable-length batches come in as ``batch_sizes`` (T,), as in ``_reference.py``: the batch
# sorted longest first, step t runs only its first batch_sizes[t] rows (the per-step product
# and element-wise pass shrink with it), and the cache's rows of finished sequences are zero.

# float32 time loops whose recurrent weights (G·H·H) are at most this many run in shards of
# the batch, one per thread, each shard's whole loop on its own thread: a sequence's steps
# never touch another row, so the shards never wait for each other, and the element-wise
# passes are shared out too. Past it, the packed weights outgrow L2 and a step's product is
# better shared by panels (measured per step: 32x128 @ 128x512, 20.7 against 21.9 µs;
# 64x1024 @ 1024x4096, 3149 against 2927).
cdef long SHARD_STEP = 256 * 1024
# Each shard has at least this many rows (a register tile's height in the AVX-512 build).
cdef Py_ssize_t SHARD_ROWS = 8
# A loop run whole on a team shares each step's element-wise pass among the team too, by
# rows, from this many of the step's units (rows × H) up: below it meeting the team costs
# more than the half pass saves.
cdef Py_ssize_t PASS_SHARED_UNITS = 8 * 1024


cdef inline int pass_team(Py_ssize_t n, Py_ssize_t H, int threads) noexcept nogil:
    """How many threads share a step's element-wise pass over n rows of H units: the loop's
    team (``threads``) when it is large enough (PASS_SHARED_UNITS), else 1."""
    return threads if threads > 1 and n * H >= PASS_SHARED_UNITS and n >= threads else 1


cdef inline Py_ssize_t part_start(Py_ssize_t part, Py_ssize_t parts, Py_ssize_t n) noexcept nogil:
    """Where part ``part`` of ``parts`` equal parts of n rows starts (part = parts: n)."""
    return part * n // parts


cdef extern from "_step_gemm.h" nogil:
    void fb_set_threads(int n)


cdef struct Loop:
    # One time loop, forward or backward, of any cell; filled once by ``plan_loop`` and the
    # kernel, read by its ``*_rows`` function.
    Py_ssize_t T, B, H             # steps, batch rows, hidden units
    const Py_ssize_t* sizes        # batch_sizes (T,), or NULL: every row runs every step
    StepProduct product            # how each step's recurrent product runs (_products.pxi)
    int threads                    # the product's team when the loop runs whole
    Py_ssize_t shards              # > 1: in shards of rows bounds[s]:bounds[s + 1], else whole
    const Py_ssize_t* bounds
    bint relu                      # Elman: ReLU, else tanh
    bint clip                      # backward: each row of δ_t rescaled to at most max_norm
    double max_norm
    # The layer's arrays, of the kernel's dtype (void*: a Cython struct cannot hold a fused
    # type; each loop casts them back on entry), NULL where a loop has none.
    void* hs                       # (T+1, B, H) states s_t, hs[0] = h0
    void* cs                       # LSTM: (T+1, B, H) cell states
    void* gates                    # LSTM: (T, B, 4H) i, f, g, o; GRU: (T, B, 4H) r, z, n, hn
    void* gh                       # GRU forward: (B, 3H) one step's hidden-side products
    const void* bias               # (G,) b_ih + b_hh
    const void* b_ih               # GRU forward: (3H,) each, for the n gate
    const void* b_hh
    const void* d_out              # backward: (T, B, H) ∂E/∂(outputs)
    void* carry                    # backward: (B, H) ∂E/∂h_t arriving from step t+1
    void* carry_c                  # LSTM backward: (B, H) ∂E/∂c_t arriving from step t+1
    void* delta                    # backward: (T, B, G) gate gradients (GRU: input side)
    void* delta_h                  # GRU backward: (T, B, G) the hidden side's gate gradients
    void* norms                    # backward: (T, B) step norms ‖∂E/∂h_t‖, or NULL


cdef inline Py_ssize_t running(Py_ssize_t size, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """How many of rows r0:r1 run at a step whose batch_sizes entry is ``size`` (a prefix)."""
    return min(max(size - r0, 0), r1 - r0)


cdef inline Py_ssize_t running_at(const Py_ssize_t* sizes, Py_ssize_t t, Py_ssize_t r0,
                                  Py_ssize_t r1) noexcept nogil:
    """How many of rows r0:r1 run at step t: all of them without batch_sizes (sizes NULL)."""
    return running(sizes[t], r0, r1) if sizes != NULL else r1 - r0


cdef object _packed_work(batch_sizes, Py_ssize_t T, Py_ssize_t B, Py_ssize_t per_row, dtype):
    """The work buffer of ``input_projection``/``packed_weight_gradients``: per_row elements
    for each running row; None without batch_sizes, or when every row runs every step."""
    if batch_sizes is None:
        return None
    rows = int(np.sum(batch_sizes))
    return None if rows == T * B else pooled_empty(max(rows * per_row, 1), dtype=dtype)


cdef object _gradient_work(batch_sizes, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                           Py_ssize_t H, Py_ssize_t G, bint hidden_apart, bint float_x,
                           bint need_dx, dtype):
    """``packed_weight_gradients``' work buffer (``_packed_work``), as it lays a running row
    out: δ (G), the hidden-side δ (G, when ``hidden_apart``: the GRU's), s_{t-1} (H), x (I,
    for float x; ids have none) and dx (I, when ``need_dx``)."""
    return _packed_work(batch_sizes, T, B, G * (2 if hidden_apart else 1) + H
                        + (I if float_x else 0) + (I if need_dx else 0), dtype)


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
    return pooled_empty(max(size, 1), dtype=dtype) if wanted and dtype == np.float64 else None


cdef object _carry(d_state, Py_ssize_t B, Py_ssize_t H, dtype):
    """A backward sweep's carry (B, H), starting from the gradient of the final state (a
    copy: the sweep overwrites it) or zero."""
    return (pooled_zeros((B, H), dtype=dtype) if d_state is None
            else np.array(d_state, dtype=dtype, order="C"))


cdef tuple plan_loop(Loop* L, const floating[:, ::1] w_hh, Py_ssize_t T, Py_ssize_t B,
                     Py_ssize_t H, Py_ssize_t gates, bint backward, batch_sizes):
    """Fill L's sizes, per-step product and sharding for a time loop over w_hh (gates·H, H);
    the arrays and flags stay NULL and 0 for the kernel to set. Returns the arrays L points
    into (the packed weights, scratch, copies of w_hh, shard bounds), for the caller to keep.

    The per-step product is c = a @ W_hhᵀ forward, δ @ W_hh backward: B is w_hh.T forward,
    w_hh backward, and the plan makes whichever other layout its path wants (the plain
    loop's B row-major, the transposed path's Bᵀ row-major, the own gemm's packing)."""
    cdef bint is_double = floating is double
    cdef ProductPath path = step_path(is_double, gates, B, H, backward)
    cdef Py_ssize_t n = H if backward else gates * H
    dtype = np.float64 if is_double else np.float32
    memset(L, 0, sizeof(Loop))
    L.T = T
    L.B = B
    L.H = H
    cdef const Py_ssize_t[::1] sizes
    if batch_sizes is not None:
        sizes = batch_sizes
        L.sizes = &sizes[0]
    L.product.path = path
    # b: B (k, n) row-major; b_t: Bᵀ (n, k) row-major
    cdef const floating[:, ::1] b = None
    cdef const floating[:, ::1] b_t = None
    if backward:
        b = w_hh
        if path == PRODUCT_TRANSPOSED:
            b_t = _transposed(w_hh)
    else:
        b_t = w_hh
        if path == PRODUCT_LOOP:
            b = np.ascontiguousarray(np.asarray(w_hh).T)    # small: numpy's copy is the quicker
    if b is not None:
        L.product.b = &b[0, 0]
    if b_t is not None:
        L.product.b_t = &b_t[0, 0]
    cdef float[::1] packed = _step_weights(w_hh, not backward, path == PRODUCT_PACKED)
    if packed is not None:
        L.product.packed = &packed[0]
    cdef floating[::1] scratch = _scratch(n * B, dtype, path == PRODUCT_TRANSPOSED)
    if scratch is not None:
        L.product.scratch = &scratch[0]
    L.threads = fb_max_threads()
    cdef const Py_ssize_t[::1] bounds = _shards(path != PRODUCT_PACKED, B, gates * H * H,
                                                batch_sizes, L.threads)
    L.shards = 1
    if bounds is not None:
        L.shards = bounds.shape[0] - 1
        L.bounds = &bounds[0]
    return (b, b_t, packed, scratch, bounds)


cdef tuple plan_backward(Loop* L, const floating[:, ::1] w_hh, Py_ssize_t T, Py_ssize_t B,
                         Py_ssize_t H, Py_ssize_t gates, clip_step, step_norms, batch_sizes):
    """``plan_loop`` for a backward sweep, with its clipping (clip_step: a max norm or None)
    and step norms (step_norms: a (T, B) array to fill, or None)."""
    keep = plan_loop(L, w_hh, T, B, H, gates, True, batch_sizes)
    L.clip = clip_step is not None
    L.max_norm = float(clip_step) if L.clip else 0.0
    cdef floating[:, ::1] norms
    if step_norms is not None:
        norms = step_norms
        L.norms = &norms[0, 0]
    return keep


cdef void run_rows(void (*rows)(const Loop*, Py_ssize_t, Py_ssize_t, int,
                                floating*) noexcept nogil,
                   const Loop* L) noexcept nogil:
    """Run a time loop, ``rows`` over batch rows r0:r1: in L.shards shards, one per thread
    (each shard's products on its own thread), or whole, its products on L.threads threads.
    The loop's last argument only picks its float or double specialisation."""
    cdef Py_ssize_t shard
    if L.shards > 1:
        for shard in prange(L.shards, num_threads=L.shards, schedule="static", chunksize=1):
            rows(L, L.bounds[shard], L.bounds[shard + 1], 1, NULL)
    else:
        rows(L, 0, L.B, L.threads, NULL)


def _shard_bounds(Py_ssize_t B, Py_ssize_t weights, batch_sizes=None):
    """The row bounds a float32 time loop over B rows with this many recurrent weights
    would run in (None: whole), on this many threads as OpenMP allows now: for the tests."""
    return _shards(False, B, weights, batch_sizes, fb_max_threads())


def set_num_threads(n):
    """Set how many threads the float32 kernels' OpenMP team has, for kernels called from
    this thread (OpenMP keeps the setting per calling thread); n ≥ 1."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    fb_set_threads(min(int(n), 1 << 20))
