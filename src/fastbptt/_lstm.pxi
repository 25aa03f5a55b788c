# The LSTM layer's kernels (included by _kernels.pyx): the twins of ``_reference.lstm_forward``
# and ``_reference.lstm_backward`` (PyTorch's equations, gate order i, f, g, o), tested in
# tests/test_lstm_gru_kernels.py.
#
# The recipe is the Elman kernels': all gates' input projections in one gemm before the time
# loop, one recurrent product over all gates per step, one fused element-wise pass per step,
# and the weight gradients and dx as one gemm each over the stored gate gradients after the
# backward sweep.

cdef inline void lstm_cell(floating* pre, const floating* bias, const floating* c_prev,
                           floating* c, floating* h, Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    """One LSTM step after the products, in one pass over pre (B, 4H).

    pre holds x_t W_ihᵀ + h_{t-1} W_hhᵀ and is overwritten with the activations i, f, g, o
    (the cache); c (B, H) = f ⊙ c_prev + i ⊙ g and h (B, H) = o ⊙ tanh(c) are written.
    """
    cdef floating v_max = TANH_V_MAX, t_max = TANH_T_MAX
    cdef floating i[LANES]
    cdef floating f[LANES]
    cdef floating g[LANES]
    cdef floating o[LANES]
    cdef floating c_t[LANES]
    cdef floating h_t[LANES]
    cdef Py_ssize_t b, j, j0, n, size
    cdef floating* p
    cdef const floating* bp
    cdef const floating* cp
    for b in range(B):
        j0 = 0
        while j0 < H:
            n = min(<Py_ssize_t> LANES, H - j0)
            p = pre + b * 4 * H + j0
            bp = bias + j0
            cp = c_prev + b * H + j0
            for j in range(n):
                i[j] = sigmoid_fast(p[j] + bp[j], v_max, t_max)
                f[j] = sigmoid_fast(p[H + j] + bp[H + j], v_max, t_max)
                g[j] = tanh_fast(p[2 * H + j] + bp[2 * H + j], v_max, t_max)
                o[j] = sigmoid_fast(p[3 * H + j] + bp[3 * H + j], v_max, t_max)
                c_t[j] = f[j] * cp[j] + i[j] * g[j]
                h_t[j] = o[j] * tanh_fast(c_t[j], v_max, t_max)
            size = n * sizeof(floating)
            memcpy(p, i, size)
            memcpy(p + H, f, size)
            memcpy(p + 2 * H, g, size)
            memcpy(p + 3 * H, o, size)
            memcpy(c + b * H + j0, c_t, size)
            memcpy(h + b * H + j0, h_t, size)
            j0 += n


cdef inline void lstm_cell_backward(const floating* d_out, const floating* carry_h,
                                    floating* carry_c, const floating* gates,
                                    const floating* c_prev, const floating* c,
                                    floating* delta, Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    """One LSTM step of the backward sweep, in one pass; all (B, H) but gates, delta (B, 4H).

    Reads ∂E/∂h_t = d_out + carry_h and ∂E/∂c_t's part from step t+1 (carry_c); writes the
    gate pre-activation gradient δ_t into delta and f ⊙ ∂E/∂c_t into carry_c.
    """
    cdef floating v_max = TANH_V_MAX, t_max = TANH_T_MAX
    cdef floating d_i[LANES]
    cdef floating d_f[LANES]
    cdef floating d_g[LANES]
    cdef floating d_o[LANES]
    cdef floating dc_prev[LANES]
    cdef Py_ssize_t b, j, j0, n, size
    cdef const floating* gt
    cdef const floating* dy
    cdef const floating* ch
    cdef const floating* cc
    cdef const floating* ct
    cdef const floating* cp
    cdef floating* d
    cdef floating i, f, g, o, dh, tc, dc
    for b in range(B):
        j0 = 0
        while j0 < H:
            n = min(<Py_ssize_t> LANES, H - j0)
            gt = gates + b * 4 * H + j0
            dy = d_out + b * H + j0
            ch = carry_h + b * H + j0
            cc = carry_c + b * H + j0
            ct = c + b * H + j0
            cp = c_prev + b * H + j0
            for j in range(n):
                i = gt[j]
                f = gt[H + j]
                g = gt[2 * H + j]
                o = gt[3 * H + j]
                dh = dy[j] + ch[j]
                # h_t = o ⊙ tanh(c_t), o = σ(.)
                tc = tanh_fast(ct[j], v_max, t_max)
                dc = cc[j] + dh * o * (<floating> 1 - tc * tc)
                d_o[j] = dh * tc * o * (<floating> 1 - o)
                # c_t = f ⊙ c_{t-1} + i ⊙ g;  i = σ(.), f = σ(.), g = tanh(.)
                d_i[j] = dc * g * i * (<floating> 1 - i)
                d_f[j] = dc * cp[j] * f * (<floating> 1 - f)
                d_g[j] = dc * i * (<floating> 1 - g * g)
                dc_prev[j] = dc * f
            size = n * sizeof(floating)
            d = delta + b * 4 * H + j0
            memcpy(d, d_i, size)
            memcpy(d + H, d_f, size)
            memcpy(d + 2 * H, d_g, size)
            memcpy(d + 3 * H, d_o, size)
            memcpy(carry_c + b * H + j0, dc_prev, size)
            j0 += n


cdef inline void lstm_cell_team(floating* pre, const floating* bias, const floating* c_prev,
                                floating* c, floating* h, Py_ssize_t B, Py_ssize_t H,
                                int parts) noexcept nogil:
    """``lstm_cell`` over B rows, shared by rows among ``parts`` threads (``pass_team``)."""
    cdef int part
    cdef Py_ssize_t a, e
    if parts == 1:
        lstm_cell(pre, bias, c_prev, c, h, B, H)
        return
    for part in prange(parts, num_threads=parts, schedule="static", chunksize=1):
        a = part_start(part, parts, B)
        e = part_start(part + 1, parts, B)
        lstm_cell(pre + a * 4 * H, bias, c_prev + a * H, c + a * H, h + a * H, e - a, H)


cdef inline void lstm_backward_team(const floating* d_out, const floating* carry_h,
                                    floating* carry_c, const floating* gates,
                                    const floating* c_prev, const floating* c, floating* delta,
                                    Py_ssize_t B, Py_ssize_t H, bint clip, double max_norm,
                                    int parts) noexcept nogil:
    """``lstm_cell_backward`` and the rows' clip over B rows, shared by rows among ``parts``
    threads (``pass_team``)."""
    cdef int part
    cdef Py_ssize_t a, e, G = 4 * H
    if parts == 1:
        lstm_cell_backward(d_out, carry_h, carry_c, gates, c_prev, c, delta, B, H)
        if clip:
            clip_rows(delta, B, G, max_norm)
        return
    for part in prange(parts, num_threads=parts, schedule="static", chunksize=1):
        a = part_start(part, parts, B)
        e = part_start(part + 1, parts, B)
        lstm_cell_backward(d_out + a * H, carry_h + a * H, carry_c + a * H, gates + a * G,
                           c_prev + a * H, c + a * H, delta + a * G, e - a, H)
        if clip:
            clip_rows(delta + a * G, e - a, G, max_norm)


cdef void lstm_forward_rows(const Loop* L, Py_ssize_t r0, Py_ssize_t r1, int threads,
                            floating* dtype) noexcept nogil:
    """The time loop of ``_lstm_forward`` over batch rows r0:r1 (all, or a shard)."""
    cdef Py_ssize_t T = L.T, B = L.B, H = L.H
    cdef const Py_ssize_t* sizes = L.sizes
    cdef floating* hs = <floating*> L.hs
    cdef floating* cs = <floating*> L.cs
    cdef floating* gates = <floating*> L.gates
    cdef const floating* bias = <const floating*> L.bias
    cdef Py_ssize_t t, G = 4 * H, rows = r1 - r0, n = r1 - r0
    cdef floating* pre
    for t in range(T):
        pre = gates + (t * B + r0) * G
        if sizes != NULL:
            n = running(sizes[t], r0, r1)
            zero_rows(hs + ((t + 1) * B + r0) * H, n, rows, H)      # finished sequences
            zero_rows(cs + ((t + 1) * B + r0) * H, n, rows, H)
            zero_rows(pre, n, rows, G)
            if n == 0:
                continue
        # gates[t, :n] += hs[t, :n] @ w_hh.T
        step_product(&L.product, n, G, H, hs + (t * B + r0) * H, True, pre, threads)
        lstm_cell_team(pre, bias, cs + (t * B + r0) * H, cs + ((t + 1) * B + r0) * H,
                       hs + ((t + 1) * B + r0) * H, n, H, pass_team(n, H, threads))


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes=None):
    """Run an LSTM layer over a sequence; see ``_reference.lstm_forward``.

    x (T, B, I) floats or (T, B) intp ids (``_ids.pxi``), h0, c0 (B, H), w_ih (4H, I), w_hh (4H, H), b_ih, b_hh (4H,).
    Returns (hs, cs, gates): hs, cs (T+1, B, H) from h0, c0; gates (T, B, 4H) the
    activations i, f, g, o of each step (zero in finished rows, with batch_sizes).
    """
    cdef TeamCall call
    if w_ih.dtype == np.float32:
        call = layer_call(TEAM_LSTM_FORWARD, x, w_ih, w_hh, batch_sizes)
        try:
            return _lstm_forward[float](x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes)
        finally:
            team_leave(call)
    return _lstm_forward[double](x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes)


cdef object _lstm_forward(x, const floating[:, ::1] h0,
                          const floating[:, ::1] c0, const floating[:, ::1] w_ih,
                          const floating[:, ::1] w_hh, const floating[::1] b_ih,
                          const floating[::1] b_hh, batch_sizes):
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = w_ih.shape[1], H = w_hh.shape[1]
    cdef Py_ssize_t G = 4 * H
    cdef const floating* xp
    cdef const Py_ssize_t* ids
    keep_x = input_pointers(x, &xp, &ids)
    dtype = np.float32 if floating is float else np.float64
    hs_arr = pooled_empty((T + 1, B, H), dtype=dtype)
    cs_arr = pooled_empty((T + 1, B, H), dtype=dtype)
    gates_arr = pooled_empty((T, B, G), dtype=dtype)
    cdef floating[:, :, ::1] hs = hs_arr
    cdef floating[:, :, ::1] cs = cs_arr
    cdef floating[:, :, ::1] gates = gates_arr
    cdef floating[::1] bias = np.add(b_ih, b_hh)
    cdef floating[::1] work = None if ids != NULL else _packed_work(batch_sizes, T, B, I + G, dtype)
    cdef Loop L
    keep = plan_loop(&L, w_hh, T, B, H, 4, False, batch_sizes)
    L.hs = &hs[0, 0, 0]
    L.cs = &cs[0, 0, 0]
    L.gates = &gates[0, 0, 0]
    L.bias = &bias[0]
    with nogil:
        memcpy(&hs[0, 0, 0], &h0[0, 0], B * H * sizeof(floating))
        memcpy(&cs[0, 0, 0], &c0[0, 0], B * H * sizeof(floating))
        # gates = x @ w_ih.T        (all steps' input projections at once)
        project_input(xp, ids, &w_ih[0, 0], &gates[0, 0, 0], T, B, I, G, G, L.sizes,
                      &work[0] if work is not None else NULL)
        run_rows(lstm_forward_rows[floating], &L)
    return hs_arr, cs_arr, gates_arr


cdef void lstm_backward_rows(const Loop* L, Py_ssize_t r0, Py_ssize_t r1, int threads,
                             floating* dtype) noexcept nogil:
    """The backward sweep of ``_lstm_backward`` over batch rows r0:r1 (all, or a shard)."""
    cdef Py_ssize_t T = L.T, B = L.B, H = L.H
    cdef const Py_ssize_t* sizes = L.sizes
    cdef bint clip = L.clip
    cdef double max_norm = L.max_norm
    cdef const floating* d_out = <const floating*> L.d_out
    cdef const floating* cs = <const floating*> L.cs
    cdef const floating* gates = <const floating*> L.gates
    cdef floating* delta = <floating*> L.delta
    cdef floating* norms = <floating*> L.norms
    cdef floating* cc = (<floating*> L.carry_c) + r0 * H
    cdef Py_ssize_t t, G = 4 * H, rows = r1 - r0, n = r1 - r0
    cdef floating* d
    cdef floating* ch = (<floating*> L.carry) + r0 * H
    cdef const floating* dy
    for t in range(T - 1, -1, -1):
        d = delta + (t * B + r0) * G
        dy = d_out + (t * B + r0) * H
        # rows n: finished before step t: δ_t = 0, carry_h and carry_c pass on unchanged
        n = running_at(sizes, t, r0, r1)
        zero_rows(d, n, rows, G)
        if norms != NULL:
            step_norms(norms + t * B + r0, dy, ch, n, rows, H)
        if n == 0:
            continue
        # 1: h_t = o ⊙ tanh(c_t), c_t = f ⊙ c_{t-1} + i ⊙ g: δ_t and carry_c = f ⊙ ∂E/∂c_t
        lstm_backward_team(dy, ch, cc, gates + (t * B + r0) * G, cs + (t * B + r0) * H,
                           cs + ((t + 1) * B + r0) * H, d, n, H, clip, max_norm,
                           pass_team(n, H, threads))
        # 2: gates_t = h_{t-1} W_hhᵀ + ...: carry_h[:n] = delta[t, :n] @ w_hh
        step_product(&L.product, n, H, G, d, False, ch, threads)


def lstm_backward(d_out, dh_n, dc_n, x, hs, cs, gates, w_ih, w_hh, clip_step=None,
                  step_norms=None, batch_sizes=None, bint need_dx=True, out=None):
    """Backpropagate through an LSTM layer; see ``_reference.lstm_backward`` (and its out).

    Returns (dx (T, B, I), dh0 (B, H), dc0 (B, H), dw_ih (4H, I), dw_hh (4H, H), db (4H,));
    dx is None when not ``need_dx`` or for ids.
    """
    cdef TeamCall call
    if d_out.dtype == np.float32:
        call = layer_call(TEAM_LSTM_BACKWARD, d_out, w_ih, w_hh, batch_sizes)
        try:
            return _lstm_backward[float](d_out, dh_n, dc_n, x, hs, cs, gates, w_ih, w_hh,
                                         clip_step, step_norms, batch_sizes, need_dx, out)
        finally:
            team_leave(call)
    return _lstm_backward[double](d_out, dh_n, dc_n, x, hs, cs, gates, w_ih, w_hh,
                                  clip_step, step_norms, batch_sizes, need_dx, out)


cdef object _lstm_backward(const floating[:, :, ::1] d_out, dh_n, dc_n,
                           x, const floating[:, :, ::1] hs,
                           const floating[:, :, ::1] cs, const floating[:, :, ::1] gates,
                           const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                           clip_step, step_norms, batch_sizes, bint need_dx, out):
    cdef Py_ssize_t T = d_out.shape[0], B = d_out.shape[1], H = d_out.shape[2], I = w_ih.shape[1]
    cdef Py_ssize_t G = 4 * H
    cdef const floating* xp
    cdef const Py_ssize_t* ids
    keep_x = input_pointers(x, &xp, &ids)
    need_dx = need_dx and ids == NULL
    dtype = np.float32 if floating is float else np.float64
    cdef floating[::1] work = _gradient_work(batch_sizes, T, B, I, H, G, False, ids == NULL,
                                             need_dx, dtype)
    # carry_h, carry_c hold the parts of ∂E/∂h_t, ∂E/∂c_t arriving from step t+1
    cdef floating[:, ::1] carry_h = _carry(dh_n, B, H, dtype)
    cdef floating[:, ::1] carry_c = _carry(dc_n, B, H, dtype)
    delta_arr = pooled_empty((T, B, G), dtype=dtype)
    cdef floating[:, :, ::1] delta = delta_arr
    dx_arr, dw_ih_arr, dw_hh_arr, db_arr = backward_arrays(T, B, I, H, G, dtype, work is not None,
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
    keep = plan_backward(&L, w_hh, T, B, H, 4, clip_step, step_norms, batch_sizes)
    L.d_out = &d_out[0, 0, 0]
    L.cs = <void*> &cs[0, 0, 0]
    L.gates = <void*> &gates[0, 0, 0]
    L.carry = &carry_h[0, 0]
    L.carry_c = &carry_c[0, 0]
    L.delta = &delta[0, 0, 0]
    with nogil:
        run_rows(lstm_backward_rows[floating], &L)
        # 3: dx = delta @ w_ih; dw_ih = delta.T @ x; dw_hh = delta.T @ hs[:-1]
        input_gradients(&delta[0, 0, 0], &delta[0, 0, 0], xp, ids, &hs[0, 0, 0],
                        &w_ih[0, 0], dxp, &dw_ih[0, 0], &dw_hh[0, 0], T, B, I, H, G, L.sizes,
                        &work[0] if work is not None else NULL)
        # db = delta.sum(axis=(0, 1))
        column_sums(&delta[0, 0, 0], &db[0], T * B, G, G)
    return dx_arr, np.asarray(carry_h), np.asarray(carry_c), dw_ih_arr, dw_hh_arr, db_arr
