# The Elman (tanh, ReLU) layer's kernels (included by _kernels.pyx): the twins of
# ``_reference.elman_forward`` and ``_reference.elman_backward``, tested in
# tests/test_elman_kernels.py.
#
# Forward: hs[1:] = x W_ihᵀ for all steps at once, then per step s_t = f(s_{t-1} W_hhᵀ +
# hs[t] + b). Backward: per step δ_t = (∂E/∂s_t) ⊙ f'(s_t) from the saved s_t, the carry
# δ_t W_hh passed to step t-1; then dx, dW_ih, dW_hh as one gemm each over the stored δ's
# (of the running rows only, with lengths; for ids dW_ih is a scatter).

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


cdef void elman_forward_rows(const Loop* L, Py_ssize_t r0, Py_ssize_t r1, int threads,
                             floating* dtype) noexcept nogil:
    """The time loop of ``_elman_forward`` over batch rows r0:r1 (all of them, or a shard);
    threads: the team of the per-step products."""
    cdef Py_ssize_t T = L.T, B = L.B, H = L.H
    cdef const Py_ssize_t* sizes = L.sizes
    cdef bint relu = L.relu
    cdef floating* hs = <floating*> L.hs
    cdef const floating* bias = <const floating*> L.bias
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
        # hs[t, :n] += hs[t-1, :n] @ w_hh.T
        step_product(&L.product, n, H, H, prev, True, cur, threads)
        bias_activation(cur, bias, n, H, relu)


def elman_forward(x, h0, w_ih, w_hh, b_ih, b_hh, bint relu, batch_sizes=None):
    """Run an Elman layer over a sequence; see ``_reference.elman_forward``.

    x (T, B, I) floats or (T, B) intp ids (``_ids.pxi``), h0 (B, H), w_ih (H, I), w_hh (H, H),
    b_ih, b_hh (H,); batch_sizes (T,) intp or None. Returns hs (T+1, B, H): hs[0] = h0, hs[t] = s_t, the output and the
    backward's cache.
    """
    cdef TeamCall call
    if w_ih.dtype == np.float32:
        call = layer_call(TEAM_ELMAN_FORWARD, x, w_ih, w_hh, batch_sizes)
        try:
            return _elman_forward[float](x, h0, w_ih, w_hh, b_ih, b_hh, relu, batch_sizes)
        finally:
            team_leave(call)
    return _elman_forward[double](x, h0, w_ih, w_hh, b_ih, b_hh, relu, batch_sizes)


cdef object _elman_forward(x, const floating[:, ::1] h0,
                           const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                           const floating[::1] b_ih, const floating[::1] b_hh, bint relu,
                           batch_sizes):
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = w_ih.shape[1], H = w_hh.shape[0]
    cdef const floating* xp
    cdef const Py_ssize_t* ids
    keep_x = input_pointers(x, &xp, &ids)
    dtype = np.float32 if floating is float else np.float64
    hs_arr = pooled_empty((T + 1, B, H), dtype=dtype)
    cdef floating[:, :, ::1] hs = hs_arr
    cdef floating[::1] bias = np.add(b_ih, b_hh)
    cdef floating[::1] work = None if ids != NULL else _packed_work(batch_sizes, T, B, I + H, dtype)
    cdef Loop L
    keep = plan_loop(&L, w_hh, T, B, H, 1, False, batch_sizes)
    L.relu = relu
    L.hs = &hs[0, 0, 0]
    L.bias = &bias[0]
    with nogil:
        memcpy(&hs[0, 0, 0], &h0[0, 0], B * H * sizeof(floating))
        # hs[1:] = x @ w_ih.T       (all steps' input projections at once)
        project_input(xp, ids, &w_ih[0, 0], &hs[1, 0, 0], T, B, I, H, H, L.sizes,
                      &work[0] if work is not None else NULL)
        run_rows(elman_forward_rows[floating], &L)
    return hs_arr


cdef void elman_backward_rows(const Loop* L, Py_ssize_t r0, Py_ssize_t r1, int threads,
                              floating* dtype) noexcept nogil:
    """The backward sweep of ``_elman_backward`` over batch rows r0:r1 (all, or a shard)."""
    cdef Py_ssize_t T = L.T, B = L.B, H = L.H
    cdef const Py_ssize_t* sizes = L.sizes
    cdef bint relu = L.relu, clip = L.clip
    cdef double max_norm = L.max_norm
    cdef const floating* d_out = <const floating*> L.d_out
    cdef const floating* hs = <const floating*> L.hs
    cdef floating* delta = <floating*> L.delta
    cdef floating* norms = <floating*> L.norms
    cdef Py_ssize_t t, rows = r1 - r0, n = r1 - r0
    cdef floating* d
    cdef floating* c = (<floating*> L.carry) + r0 * H
    cdef const floating* dy
    for t in range(T - 1, -1, -1):
        d = delta + (t * B + r0) * H
        dy = d_out + (t * B + r0) * H
        # carry holds ∂E/∂s_t arriving from step t+1 (or d_h_n at the end); rows n: finished
        # before step t: δ_t = 0, their carry passes on unchanged
        n = running_at(sizes, t, r0, r1)
        zero_rows(d, n, rows, H)
        if norms != NULL:
            step_norms(norms + t * B + r0, dy, c, n, rows, H)
        if n == 0:
            continue
        # 1: s_t = f(pre_t): δ_t = ∂E/∂s_t ⊙ f'(s_t)
        delta_step(dy, c, hs + ((t + 1) * B + r0) * H, d, n * H, relu)
        if clip:
            clip_rows(d, n, H, max_norm)
        # 2: pre_t = s_{t-1} W_hhᵀ + ...: carry[:n] = delta[t, :n] @ w_hh
        step_product(&L.product, n, H, H, d, False, c, threads)


def elman_backward(d_out, dh_n, x, hs, w_ih, w_hh, bint relu, clip_step=None, step_norms=None,
                   batch_sizes=None, bint need_dx=True, out=None):
    """Backpropagate through an Elman layer; see ``_reference.elman_backward`` (and its out).

    Returns (dx (T, B, I), dh0 (B, H), dw_ih (H, I), dw_hh (H, H), db (H,)); dx is None when
    not ``need_dx`` or for ids.
    """
    cdef TeamCall call
    if d_out.dtype == np.float32:
        call = layer_call(TEAM_ELMAN_BACKWARD, d_out, w_ih, w_hh, batch_sizes)
        try:
            return _elman_backward[float](d_out, dh_n, x, hs, w_ih, w_hh, relu, clip_step,
                                          step_norms, batch_sizes, need_dx, out)
        finally:
            team_leave(call)
    return _elman_backward[double](d_out, dh_n, x, hs, w_ih, w_hh, relu, clip_step, step_norms,
                                   batch_sizes, need_dx, out)


cdef object _elman_backward(const floating[:, :, ::1] d_out, dh_n, x,
                            const floating[:, :, ::1] hs, const floating[:, ::1] w_ih,
                            const floating[:, ::1] w_hh, bint relu, clip_step, step_norms,
                            batch_sizes, bint need_dx, out):
    cdef Py_ssize_t T = d_out.shape[0], B = d_out.shape[1], H = d_out.shape[2], I = w_ih.shape[1]
    cdef const floating* xp
    cdef const Py_ssize_t* ids
    keep_x = input_pointers(x, &xp, &ids)
    need_dx = need_dx and ids == NULL
    dtype = np.float32 if floating is float else np.float64
    cdef floating[::1] work = _gradient_work(batch_sizes, T, B, I, H, H, False, ids == NULL,
                                             need_dx, dtype)
    cdef floating[:, ::1] carry = _carry(dh_n, B, H, dtype)
    delta_arr = pooled_empty((T, B, H), dtype=dtype)
    cdef floating[:, :, ::1] delta = delta_arr
    dx_arr, dw_ih_arr, dw_hh_arr, db_arr = backward_arrays(T, B, I, H, H, dtype, work is not None,
                                                           need_dx, out)
    cdef floating[:, :, ::1] dx
    cdef floating* dxp = NULL
    if need_dx:
        dx = dx_arr
        dxp = &dx[0, 0, 0]
    cdef floating[:, ::1] dw_ih = dw_ih_arr
    cdef floating[:, ::1] dw_hh = dw_hh_arr
    cdef floating[::1] db = db_arr
    cdef Loop L
    keep = plan_backward(&L, w_hh, T, B, H, 1, clip_step, step_norms, batch_sizes)
    L.relu = relu
    L.d_out = &d_out[0, 0, 0]
    L.hs = <void*> &hs[0, 0, 0]
    L.carry = &carry[0, 0]
    L.delta = &delta[0, 0, 0]
    with nogil:
        run_rows(elman_backward_rows[floating], &L)
        # 3: dx = delta @ w_ih; dw_ih = delta.T @ x; dw_hh = delta.T @ hs[:-1]
        input_gradients(&delta[0, 0, 0], &delta[0, 0, 0], xp, ids, &hs[0, 0, 0],
                        &w_ih[0, 0], dxp, &dw_ih[0, 0], &dw_hh[0, 0], T, B, I, H, H, L.sizes,
                        &work[0] if work is not None else NULL)
        # db = delta.sum(axis=(0, 1))
        column_sums(&delta[0, 0, 0], &db[0], T * B, H, H)
    return dx_arr, np.asarray(carry), dw_ih_arr, dw_hh_arr, db_arr
