# The GRU layer's kernels (included by _kernels.pyx): the twins of ``_reference.gru_forward``
# and ``_reference.gru_backward`` (PyTorch's equations, gate order r, z, n), tested in
# tests/test_lstm_gru_kernels.py.
#
# The LSTM's recipe, with one difference: r multiplies the hidden side of the n gate, so a
# step's hidden-side products (gh) are kept apart from the input side's, and the backward's
# gate gradients differ on the two sides in their n block: δi (input side) and δh (hidden
# side, the same r, z blocks and δh_n = δi_n ⊙ r) are each kept whole, (T, B, 3H), so that
# δh feeds the step's product and dW_hh is one gemm over it, as dW_ih is over δi. Both are
# written in the cell's one pass (unless the rows' clip comes between them).

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
                                   const floating* h_prev, floating* delta_i, floating* delta_h,
                                   Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    """One GRU step of the backward sweep, in one pass; d_out, carry, h_prev (B, H).

    Reads ∂E/∂h_t = d_out + carry; writes the input-side gate gradient δi_t (B, 3H), and the
    hidden side's δh_t (B, 3H) unless delta_h is NULL (``gru_hidden_delta`` then follows);
    replaces carry with the direct part z ⊙ ∂E/∂h_t of ∂E/∂h_{t-1}.
    """
    cdef floating d_r[LANES]
    cdef floating d_z[LANES]
    cdef floating d_n[LANES]
    cdef floating d_hn[LANES]
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
                # gh_n enters as r ⊙ hn: δh_n = δi_n ⊙ r
                d_hn[j] = dn_pre * r
            size = n * sizeof(floating)
            d = delta_i + b * 3 * H + j0
            memcpy(d, d_r, size)
            memcpy(d + H, d_z, size)
            memcpy(d + 2 * H, d_n, size)
            memcpy(carry + b * H + j0, dh_prev, size)
            if delta_h != NULL:
                d = delta_h + b * 3 * H + j0
                memcpy(d, d_r, size)
                memcpy(d + H, d_z, size)
                memcpy(d + 2 * H, d_hn, size)
            j0 += n


cdef inline void gru_hidden_delta(const floating* delta_i, const floating* gates,
                                  floating* delta_h, Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    """δh_t (B, 3H) from δi_t: the same r, z blocks, and δi_n ⊙ r (gh_n enters as r ⊙ hn);
    after the rows' clip, which δh_t must see."""
    cdef Py_ssize_t b, j
    cdef const floating* dn
    cdef const floating* gr
    cdef floating* dh
    for b in range(B):
        memcpy(delta_h + b * 3 * H, delta_i + b * 3 * H, 2 * H * sizeof(floating))
        dn = delta_i + b * 3 * H + 2 * H
        gr = gates + b * 4 * H
        dh = delta_h + b * 3 * H + 2 * H
        for j in range(H):
            dh[j] = dn[j] * gr[j]


cdef inline void gru_cell_team(floating* gates, const floating* gh, const floating* bias,
                               const floating* b_ih, const floating* b_hh, const floating* h_prev,
                               floating* h, Py_ssize_t B, Py_ssize_t H, int parts) noexcept nogil:
    """``gru_cell`` over B rows, shared by rows among ``parts`` threads (``pass_team``)."""
    cdef int part
    cdef Py_ssize_t a, e
    if parts == 1:
        gru_cell(gates, gh, bias, b_ih, b_hh, h_prev, h, B, H)
        return
    for part in prange(parts, num_threads=parts, schedule="static", chunksize=1):
        a = part_start(part, parts, B)
        e = part_start(part + 1, parts, B)
        gru_cell(gates + a * 4 * H, gh + a * 3 * H, bias, b_ih, b_hh, h_prev + a * H, h + a * H,
                 e - a, H)


cdef inline void gru_backward_pass(const floating* d_out, floating* carry, const floating* gates,
                                   const floating* h_prev, floating* delta_i, floating* delta_h,
                                   Py_ssize_t B, Py_ssize_t H, bint clip,
                                   double max_norm) noexcept nogil:
    """δi_t and δh_t of B rows: in the cell's one pass, or with the rows' clip of δi_t between
    them."""
    if not clip:
        gru_cell_backward(d_out, carry, gates, h_prev, delta_i, delta_h, B, H)
        return
    gru_cell_backward(d_out, carry, gates, h_prev, delta_i, NULL, B, H)
    clip_rows(delta_i, B, 3 * H, max_norm)
    gru_hidden_delta(delta_i, gates, delta_h, B, H)


cdef inline void gru_backward_team(const floating* d_out, floating* carry, const floating* gates,
                                   const floating* h_prev, floating* delta_i, floating* delta_h,
                                   Py_ssize_t B, Py_ssize_t H, bint clip, double max_norm,
                                   int parts) noexcept nogil:
    """``gru_backward_pass`` over B rows, shared by rows among ``parts`` threads
    (``pass_team``)."""
    cdef int part
    cdef Py_ssize_t a, e, G = 3 * H
    if parts == 1:
        gru_backward_pass(d_out, carry, gates, h_prev, delta_i, delta_h, B, H, clip, max_norm)
        return
    for part in prange(parts, num_threads=parts, schedule="static", chunksize=1):
        a = part_start(part, parts, B)
        e = part_start(part + 1, parts, B)
        gru_backward_pass(d_out + a * H, carry + a * H, gates + a * 4 * H, h_prev + a * H,
                          delta_i + a * G, delta_h + a * G, e - a, H, clip, max_norm)


cdef void gru_forward_rows(const Loop* L, Py_ssize_t r0, Py_ssize_t r1, int threads,
                           floating* dtype) noexcept nogil:
    """The time loop of ``_gru_forward`` over batch rows r0:r1 (all, or a shard)."""
    cdef Py_ssize_t T = L.T, B = L.B, H = L.H
    cdef const Py_ssize_t* sizes = L.sizes
    cdef floating* hs = <floating*> L.hs
    cdef floating* gates = <floating*> L.gates
    cdef const floating* bias = <const floating*> L.bias
    cdef const floating* b_ih = <const floating*> L.b_ih
    cdef const floating* b_hh = <const floating*> L.b_hh
    cdef Py_ssize_t t, G = 3 * H, rows = r1 - r0, n = r1 - r0
    cdef floating* g = (<floating*> L.gh) + r0 * G
    for t in range(T):
        if sizes != NULL:
            n = running(sizes[t], r0, r1)
            zero_rows(hs + ((t + 1) * B + r0) * H, n, rows, H)      # finished sequences
            zero_rows(gates + (t * B + r0) * 4 * H, n, rows, 4 * H)
            if n == 0:
                continue
        # gh[:n] = hs[t, :n] @ w_hh.T
        step_product(&L.product, n, G, H, hs + (t * B + r0) * H, False, g, threads)
        gru_cell_team(gates + (t * B + r0) * 4 * H, g, bias, b_ih, b_hh, hs + (t * B + r0) * H,
                      hs + ((t + 1) * B + r0) * H, n, H, pass_team(n, H, threads))


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes=None):
    """Run a GRU layer over a sequence; see ``_reference.gru_forward``.

    x (T, B, I) floats or (T, B) intp ids, h0 (B, H), w_ih (3H, I), w_hh (3H, H), b_ih, b_hh (3H,).
    Returns (hs, gates): hs (T+1, B, H) from h0; gates (T, B, 4H) r, z, n, hn of each step
    (zero in finished rows, with batch_sizes).
    """
    cdef TeamCall call
    if w_ih.dtype == np.float32:
        call = layer_call(TEAM_GRU_FORWARD, x, w_ih, w_hh, batch_sizes)
        try:
            return _gru_forward[float](x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes)
        finally:
            team_leave(call)
    return _gru_forward[double](x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes)


cdef object _gru_forward(x, const floating[:, ::1] h0,
                         const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                         const floating[::1] b_ih, const floating[::1] b_hh, batch_sizes):
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = w_ih.shape[1], H = w_hh.shape[1]
    cdef Py_ssize_t G = 3 * H
    cdef const floating* xp
    cdef const Py_ssize_t* ids
    keep_x = input_pointers(x, &xp, &ids)
    dtype = np.float32 if floating is float else np.float64
    hs_arr = pooled_empty((T + 1, B, H), dtype=dtype)
    gates_arr = pooled_empty((T, B, 4 * H), dtype=dtype)
    cdef floating[:, :, ::1] hs = hs_arr
    cdef floating[:, :, ::1] gates = gates_arr
    # gh: one step's hidden-side products (B, 3H), kept apart because r multiplies its n block
    cdef floating[:, ::1] gh = pooled_empty((B, G), dtype=dtype)
    cdef floating[::1] bias = np.add(b_ih, b_hh)
    cdef floating[::1] work = None if ids != NULL else _packed_work(batch_sizes, T, B, I + G, dtype)
    cdef Loop L
    keep = plan_loop(&L, w_hh, T, B, H, 3, False, batch_sizes)
    L.hs = &hs[0, 0, 0]
    L.gates = &gates[0, 0, 0]
    L.gh = &gh[0, 0]
    L.bias = &bias[0]
    L.b_ih = &b_ih[0]
    L.b_hh = &b_hh[0]
    with nogil:
        memcpy(&hs[0, 0, 0], &h0[0, 0], B * H * sizeof(floating))
        # gates[:, :, :3H] = x @ w_ih.T     (all steps' input projections at once)
        project_input(xp, ids, &w_ih[0, 0], &gates[0, 0, 0], T, B, I, G, 4 * H, L.sizes,
                      &work[0] if work is not None else NULL)
        run_rows(gru_forward_rows[floating], &L)
    return hs_arr, gates_arr


cdef void gru_backward_rows(const Loop* L, Py_ssize_t r0, Py_ssize_t r1, int threads,
                            floating* dtype) noexcept nogil:
    """The backward sweep of ``_gru_backward`` over batch rows r0:r1 (all, or a shard)."""
    cdef Py_ssize_t T = L.T, B = L.B, H = L.H
    cdef const Py_ssize_t* sizes = L.sizes
    cdef bint clip = L.clip
    cdef double max_norm = L.max_norm
    cdef const floating* d_out = <const floating*> L.d_out
    cdef const floating* hs = <const floating*> L.hs
    cdef const floating* gates = <const floating*> L.gates
    cdef floating* delta_i = <floating*> L.delta
    cdef floating* delta_h = <floating*> L.delta_h
    cdef floating* norms = <floating*> L.norms
    cdef Py_ssize_t t, G = 3 * H, rows = r1 - r0, n = r1 - r0
    cdef floating* di
    cdef floating* dh
    cdef floating* c = (<floating*> L.carry) + r0 * H
    cdef const floating* dy
    cdef const floating* gt
    for t in range(T - 1, -1, -1):
        di = delta_i + (t * B + r0) * G
        dh = delta_h + (t * B + r0) * G
        dy = d_out + (t * B + r0) * H
        gt = gates + (t * B + r0) * 4 * H
        # rows n: finished before step t: δ_t = 0, their carry passes on unchanged
        n = running_at(sizes, t, r0, r1)
        zero_rows(di, n, rows, G)
        zero_rows(dh, n, rows, G)
        if norms != NULL:
            step_norms(norms + t * B + r0, dy, c, n, rows, H)
        if n == 0:
            continue
        # 1: h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}: δi_t, and carry = z ⊙ ∂E/∂h_t;
        # 2: n = tanh(gi_n + r ⊙ gh_n): δh_t from δi_t
        gru_backward_team(dy, c, gt, hs + (t * B + r0) * H, di, dh, n, H, clip, max_norm,
                          pass_team(n, H, threads))
        # 3: gh_t = h_{t-1} W_hhᵀ: carry[:n] += delta_h[t, :n] @ w_hh
        step_product(&L.product, n, H, G, dh, True, c, threads)


def gru_backward(d_out, dh_n, x, hs, gates, w_ih, w_hh, clip_step=None, step_norms=None,
                 batch_sizes=None, bint need_dx=True, out=None):
    """Backpropagate through a GRU layer; see ``_reference.gru_backward`` (its clipping, its
    out).

    Returns (dx (T, B, I), dh0 (B, H), dw_ih (3H, I), dw_hh (3H, H), db_ih (3H,), db_hh (3H,));
    dx is None when not ``need_dx`` or for ids.
    """
    cdef TeamCall call
    if d_out.dtype == np.float32:
        call = layer_call(TEAM_GRU_BACKWARD, d_out, w_ih, w_hh, batch_sizes)
        try:
            return _gru_backward[float](d_out, dh_n, x, hs, gates, w_ih, w_hh, clip_step,
                                        step_norms, batch_sizes, need_dx, out)
        finally:
            team_leave(call)
    return _gru_backward[double](d_out, dh_n, x, hs, gates, w_ih, w_hh, clip_step, step_norms,
                                 batch_sizes, need_dx, out)


cdef object _gru_backward(const floating[:, :, ::1] d_out, dh_n, x,
                          const floating[:, :, ::1] hs, const floating[:, :, ::1] gates,
                          const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                          clip_step, step_norms, batch_sizes, bint need_dx, out):
    cdef Py_ssize_t T = d_out.shape[0], B = d_out.shape[1], H = d_out.shape[2], I = w_ih.shape[1]
    cdef Py_ssize_t G = 3 * H
    cdef const floating* xp
    cdef const Py_ssize_t* ids
    keep_x = input_pointers(x, &xp, &ids)
    need_dx = need_dx and ids == NULL
    dtype = np.float32 if floating is float else np.float64
    cdef floating[::1] work = _gradient_work(batch_sizes, T, B, I, H, G, True, ids == NULL,
                                             need_dx, dtype)
    # carry holds the part of ∂E/∂h_t arriving from step t+1 (or d_h_n at the end)
    cdef floating[:, ::1] carry = _carry(dh_n, B, H, dtype)
    # The input- and hidden-side gate gradients, which differ in their n block
    delta_i_arr = pooled_empty((T, B, G), dtype=dtype)
    delta_h_arr = pooled_empty((T, B, G), dtype=dtype)
    cdef floating[:, :, ::1] delta_i = delta_i_arr
    cdef floating[:, :, ::1] delta_h = delta_h_arr
    dx_arr, dw_ih_arr, dw_hh_arr, db_ih_arr = backward_arrays(T, B, I, H, G, dtype,
                                                              work is not None, need_dx, out)
    if out is not None:
        check_out(out[3:], ((G,),), dtype)          # the first three backward_arrays checked
    db_hh_arr = pooled_empty(G, dtype=dtype) if out is None else out[3]
    cdef floating[:, :, ::1] dx
    cdef floating* dxp = NULL
    if need_dx:
        dx = dx_arr
        dxp = &dx[0, 0, 0]
    cdef floating[:, ::1] dw_ih = dw_ih_arr
    cdef floating[:, ::1] dw_hh = dw_hh_arr
    cdef floating[::1] db_ih = db_ih_arr
    cdef floating[::1] db_hh = db_hh_arr
    cdef Loop L
    keep = plan_backward(&L, w_hh, T, B, H, 3, clip_step, step_norms, batch_sizes)
    L.d_out = &d_out[0, 0, 0]
    L.hs = <void*> &hs[0, 0, 0]
    L.gates = <void*> &gates[0, 0, 0]
    L.carry = &carry[0, 0]
    L.delta = &delta_i[0, 0, 0]
    L.delta_h = &delta_h[0, 0, 0]
    with nogil:
        run_rows(gru_backward_rows[floating], &L)
        # 4: dx = delta_i @ w_ih; dw_ih = delta_i.T @ x; dw_hh = delta_h.T @ hs[:-1]
        input_gradients(&delta_i[0, 0, 0], &delta_h[0, 0, 0], xp, ids, &hs[0, 0, 0],
                        &w_ih[0, 0], dxp, &dw_ih[0, 0], &dw_hh[0, 0], T, B, I, H, G, L.sizes,
                        &work[0] if work is not None else NULL)
        # db_ih = delta_i.sum(axis=(0, 1)); db_hh = delta_h.sum(axis=(0, 1)), whose r, z
        # blocks are delta_i's (the same columns, the same sums): only its n block is summed
        column_sums(&delta_i[0, 0, 0], &db_ih[0], T * B, G, G)
        memcpy(&db_hh[0], &db_ih[0], 2 * H * sizeof(floating))
        column_sums(&delta_h[0, 0, 0] + 2 * H, &db_hh[0] + 2 * H, T * B, H, G)
    return dx_arr, np.asarray(carry), dw_ih_arr, dw_hh_arr, db_ih_arr, db_hh_arr
