"""NumPy kernels: the correctness oracle for every test and the fallback backend.

Each function runs one layer in one direction over a whole sequence, batch-major rows,
time-major arrays, with the same names and signatures as the compiled kernels in
``_kernels.pyx``. They are written to read like the equations, line for line, step by step,
as a careful NumPy user would write BPTT by hand; they are not restructured for speed (the
compiled kernels hoist the input projection and the dW sums out of the time loop, these do
not).

Elman cell, f = tanh or relu::

    s_t  = f(x_t W_ihᵀ + b_ih + s_{t-1} W_hhᵀ + b_hh)
    δ_t  = (∂E/∂y_t + δ_{t+1} W_hh) ⊙ f'(s_t)           δ_t = ∂E/∂(pre-activation at t)
    dW_hh = Σ_t δ_tᵀ s_{t-1}   dW_ih = Σ_t δ_tᵀ x_t   db = Σ_t Σ_b δ_t
    dx_t = δ_t W_ih            ds_0 = δ_1 W_hh

Variable-length batches (PyTorch's PackedSequence semantics) come in as ``batch_sizes``
(T,): the number of sequences still running at each step, the batch sorted longest first,
so that the running ones are always the first ``batch_sizes[t]`` rows. A finished sequence's
rows of the cache are zero from its end on (its outputs past the end are zero, and its own
last state is hs[length], not hs[T]); its d_out there is ignored, and the d_h_n given for it
flows back unchanged to its last step. None means every row runs every step.

Input ids: every layer function takes x either as floats (T, B, I) or as integer ids (T, B)
in [0, I), which mean the one-hot rows np.eye(I)[x] without building them: the input
projection x_t W_ihᵀ is then the gather W_ih[:, x_t]ᵀ and dW_ih += δ_tᵀ x_t the scatter-add
dW_ih[:, x_t] += δ_tᵀ (``_project_input``, ``_add_input_gradient``); there is no dx. The
backward functions' ``need_dx=False`` leaves dx out (None) for float inputs too.

The callers (``model.py``) validate shapes, dtypes and contiguity; these functions trust them.

Floating-point flags: the layer and readout functions run their products with NumPy's
"invalid" flag ignored (``_products_unflagged``). OpenBLAS can raise that flag on finite
operands whose product holds no NaN (numpy/numpy#24067, OpenMathLib/OpenBLAS#1924), which
NumPy would report as a RuntimeWarning the result does not deserve. A real NaN still comes
out in the arrays returned, as it does from the compiled kernels, which raise no warnings;
the training loop checks the loss and the gradients for non-finite values itself.
Overflow is still reported.
"""
import functools

import numpy as np

__all__ = [
    "all_finite",
    "elman_backward",
    "elman_forward",
    "linear_backward",
    "linear_forward",
]


def _products_unflagged(kernel):
    """Run ``kernel`` with NumPy's "invalid" floating-point flag ignored (module docstring)."""
    @functools.wraps(kernel)
    def run(*args, **kwargs):
        with np.errstate(invalid="ignore"):
            return kernel(*args, **kwargs)
    return run


def all_finite(a):
    """True when no element of ``a`` is NaN or infinite."""
    return bool(np.isfinite(a).all())


def _running(batch_sizes, t, B):
    """How many sequences (the first rows) are still running at step t (0-based)."""
    return B if batch_sizes is None else int(batch_sizes[t])


def _is_ids(x):
    return x.dtype.kind in "iu"


def _project_input(x_t, w_ih):
    """x_t W_ihᵀ: x_t (n, I) floats, or (n,) ids whose one-hot rows pick columns of W_ih."""
    return w_ih.T[x_t] if _is_ids(x_t) else x_t @ w_ih.T


def _add_input_gradient(dw_ih, delta, x_t):
    """dW_ih += δᵀ x_t, for ids the scatter-add dW_ih[:, x_t] += δᵀ (repeated ids summed, in
    row order)."""
    if _is_ids(x_t):
        np.add.at(dw_ih.T, x_t, delta)
    else:
        dw_ih += delta.T @ x_t


def _weight_gradient_arrays(out, w_ih, w_hh, biases):
    """The zeroed arrays a backward sums its weight gradients into, dW_ih, dW_hh and
    ``biases`` bias gradients (G,): ``out``'s when given (see the backward functions' out),
    else new ones."""
    if out is None:
        G = w_hh.shape[0]
        return (np.zeros_like(w_ih), np.zeros_like(w_hh),
                *(np.zeros(G, dtype=w_hh.dtype) for _ in range(biases)))
    for a in out:
        a[...] = 0
    return tuple(out)


def _input_gradient_array(x, need_dx):
    """The zeroed dx (T, B, I) a backward fills, or None for ids or when not ``need_dx``."""
    return np.zeros_like(x) if need_dx and not _is_ids(x) else None


def _activation_derivative(s, relu):
    """f'(pre-activation) from the saved output s = f(pre-activation)."""
    if relu:
        return (s > 0).astype(s.dtype)
    return 1 - s * s


@_products_unflagged
def elman_forward(x, h0, w_ih, w_hh, b_ih, b_hh, relu, batch_sizes=None):
    """Run an Elman layer over a sequence.

    x (T, B, I), h0 (B, H), w_ih (H, I), w_hh (H, H), b_ih (H,), b_hh (H,); relu: bool.
    Returns hs (T+1, B, H) with hs[0] = h0 and hs[t] = s_t: the layer's output is hs[1:],
    its final state hs[T], and hs is the whole cache the backward pass needs.
    """
    T, B = x.shape[:2]
    H = w_hh.shape[0]
    hs = np.empty((T + 1, B, H), dtype=w_ih.dtype)
    hs[0] = h0
    for t in range(1, T + 1):
        n = _running(batch_sizes, t - 1, B)
        pre = _project_input(x[t - 1, :n], w_ih) + b_ih + hs[t - 1, :n] @ w_hh.T + b_hh
        hs[t, :n] = np.maximum(pre, 0) if relu else np.tanh(pre)
        hs[t, n:] = 0                                       # finished sequences
    return hs


@_products_unflagged
def elman_backward(d_out, dh_n, x, hs, w_ih, w_hh, relu, clip_step=None, step_norms=None,
                   batch_sizes=None, need_dx=True, out=None):
    """Backpropagate through an Elman layer run by :func:`elman_forward`.

    d_out (T, B, H): ∂E/∂s_t from above (the readout or the next layer), per step.
    dh_n (B, H) or None: ∂E/∂s_T from beyond the sequence (the caller's d_h_n).
    x, hs: the forward's input and cache; w_ih, w_hh: the weights it ran with.
    clip_step: when given, each sequence's δ_t (one row) is rescaled in place to L2 norm
        ``clip_step`` whenever it is larger, before it flows on to step t-1 and into dW.
    step_norms (T, B) or None: when given, filled with ‖∂E/∂s_t‖ of each row, the
        gradient reaching each step (the vanishing/exploding gradient diagnostic); 0 where
        a sequence has finished.
    batch_sizes (T,) or None: see the module's docstring.
    need_dx: False (or ids as x) gives dx = None.
    out: None, or (dw_ih, dw_hh, db): C-contiguous arrays of the shapes and dtype returned,
        which the gradients are written into and returned as (the model's flat buffer).
    Returns (dx (T, B, I), dh0 (B, H), dw_ih (H, I), dw_hh (H, H), db (H,)); db is the
    gradient of both b_ih and b_hh.
    """
    T, B, H = d_out.shape
    dx = _input_gradient_array(x, need_dx)
    dw_ih, dw_hh, db = _weight_gradient_arrays(out, w_ih, w_hh, 1)
    ds = np.zeros((B, H), dtype=d_out.dtype) if dh_n is None else dh_n.copy()
    if step_norms is not None:
        step_norms[...] = 0
    for t in range(T, 0, -1):
        n = _running(batch_sizes, t - 1, B)                 # the first n rows ran step t
        ds[:n] = d_out[t - 1, :n] + ds[:n]                  # ∂E/∂s_t
        if step_norms is not None:
            step_norms[t - 1, :n] = np.sqrt(np.sum(ds[:n] * ds[:n], axis=1))
        delta = ds[:n] * _activation_derivative(hs[t, :n], relu)    # δ_t
        if clip_step is not None:
            delta = _clip_rows(delta, clip_step)
        dw_hh += delta.T @ hs[t - 1, :n]                    # dW_hh += δ_tᵀ s_{t-1}
        _add_input_gradient(dw_ih, delta, x[t - 1, :n])      # dW_ih += δ_tᵀ x_t
        db += delta.sum(axis=0)                             # db += Σ_b δ_t
        if dx is not None:
            dx[t - 1, :n] = delta @ w_ih                        # dx_t = δ_t W_ih
        ds[:n] = delta @ w_hh                               # ∂E/∂s_{t-1} through the recurrence
    return dx, ds, dw_ih, dw_hh, db


def _clip_rows(d, max_norm):
    """Rescale each row of d (B, H) whose L2 norm exceeds max_norm down to max_norm."""
    norms = np.sqrt(np.sum(d * d, axis=1, keepdims=True))
    scale = np.where(norms > max_norm, max_norm / np.where(norms > 0, norms, 1), 1)
    return d * scale.astype(d.dtype)


@_products_unflagged
def linear_forward(x, w, b):
    """y = x wᵀ + b: x (M, K), w (N, K), b (N,) -> y (M, N)."""
    return x @ w.T + b


@_products_unflagged
def linear_backward(dy, x, w, out=None):
    """Gradients of y = x wᵀ + b: dy (M, N), x (M, K) -> (dx (M, K), dw (N, K), db (N,));
    out: None, or (dw, db) to write those two into and return."""
    if out is None:
        return dy @ w, dy.T @ x, dy.sum(axis=0)
    dw, db = out
    np.matmul(dy.T, x, out=dw)
    np.sum(dy, axis=0, out=db)
    return dy @ w, dw, db


# ---------------------------------------------------------------------------- gated cells
#
# LSTM and GRU, PyTorch's equations and gate order exactly, so that torch.nn.LSTM/GRU
# weights (weight_ih_l0 (G·H, I), weight_hh_l0 (G·H, H), bias_ih_l0, bias_hh_l0 (G·H,)) give
# the same outputs and gradients. σ is computed as ½(1 + tanh(v/2)): the same function as
# 1/(1 + e^{-v}), but with no overflow of e^{-v} for large negative v.

__all__ += ["gru_backward", "gru_forward", "lstm_backward", "lstm_forward"]


def _sigmoid(v):
    """σ(v) = 1 / (1 + e^{-v}), as ½(1 + tanh(v/2)) so that no exponential overflows."""
    return 0.5 * (1 + np.tanh(0.5 * v))


@_products_unflagged
def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes=None):
    """Run an LSTM layer over a sequence (PyTorch's cell, gate order i, f, g, o)::

        i, f, g, o = σ, σ, tanh, σ  of  x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh   (blocks of H)
        c_t = f ⊙ c_{t-1} + i ⊙ g
        h_t = o ⊙ tanh(c_t)

    x (T, B, I), h0, c0 (B, H), w_ih (4H, I), w_hh (4H, H), b_ih, b_hh (4H,).
    Returns (hs, cs, gates): hs, cs (T+1, B, H) with hs[0] = h0, cs[0] = c0 and hs[t] = h_t,
    cs[t] = c_t (the layer's output is hs[1:], its final state hs[T], cs[T]); gates (T, B, 4H)
    holds i, f, g, o of each step after their non-linearities. The three together are the
    cache the backward pass needs (it recomputes tanh(c_t) from cs rather than storing it).
    With ``batch_sizes`` (see the module's docstring), finished rows of gates are zero.
    """
    T, B = x.shape[:2]
    H = w_hh.shape[1]
    hs = np.empty((T + 1, B, H), dtype=w_ih.dtype)
    cs = np.empty((T + 1, B, H), dtype=w_ih.dtype)
    gates = np.zeros((T, B, 4 * H), dtype=w_ih.dtype)
    hs[0] = h0
    cs[0] = c0
    for t in range(1, T + 1):
        n = _running(batch_sizes, t - 1, B)
        pre = _project_input(x[t - 1, :n], w_ih) + b_ih + hs[t - 1, :n] @ w_hh.T + b_hh    # (n, 4H)
        i = _sigmoid(pre[:, 0 * H:1 * H])                               # input gate
        f = _sigmoid(pre[:, 1 * H:2 * H])                               # forget gate
        g = np.tanh(pre[:, 2 * H:3 * H])                                # cell candidate
        o = _sigmoid(pre[:, 3 * H:4 * H])                               # output gate
        cs[t, :n] = f * cs[t - 1, :n] + i * g
        hs[t, :n] = o * np.tanh(cs[t, :n])
        gates[t - 1, :n] = np.concatenate([i, f, g, o], axis=1)
        hs[t, n:] = 0                                       # finished sequences
        cs[t, n:] = 0
    return hs, cs, gates


@_products_unflagged
def lstm_backward(d_out, dh_n, dc_n, x, hs, cs, gates, w_ih, w_hh, clip_step=None,
                  step_norms=None, batch_sizes=None, need_dx=True, out=None):
    """Backpropagate through an LSTM layer run by :func:`lstm_forward`.

    d_out (T, B, H): ∂E/∂h_t from above, per step. dh_n, dc_n (B, H) or None: ∂E/∂h_T and
    ∂E/∂c_T from beyond the sequence. x, (hs, cs, gates): the forward's input and cache;
    w_ih, w_hh: the weights it ran with.
    clip_step: when given, each sequence's row of the step's gate pre-activation gradient
        δ_t = ∂E/∂(i, f, g, o pre-activations) (B, 4H) is rescaled to L2 norm ``clip_step``
        whenever it is larger, before it flows on to h_{t-1} and into dW. The cell-state
        gradient f ⊙ ∂E/∂c_t that flows back to c_{t-1} does not pass through δ_t and is
        not clipped.
    step_norms (T, B) or None: when given, filled with ‖∂E/∂h_t‖ of each row (0 where a
        sequence has finished).
    batch_sizes (T,) or None: see the module's docstring.
    need_dx: False (or ids as x) gives dx = None.
    out: None, or (dw_ih, dw_hh, db), as :func:`elman_backward`'s.
    Returns (dx (T, B, I), dh0 (B, H), dc0 (B, H), dw_ih (4H, I), dw_hh (4H, H), db (4H,));
    db is the gradient of both b_ih and b_hh.
    """
    T, B, H = d_out.shape
    dx = _input_gradient_array(x, need_dx)
    dw_ih, dw_hh, db = _weight_gradient_arrays(out, w_ih, w_hh, 1)
    dh_all = np.zeros((B, H), dtype=d_out.dtype) if dh_n is None else dh_n.copy()
    dc_all = np.zeros((B, H), dtype=d_out.dtype) if dc_n is None else dc_n.copy()
    if step_norms is not None:
        step_norms[...] = 0
    for t in range(T, 0, -1):
        n = _running(batch_sizes, t - 1, B)                 # the first n rows ran step t
        i, f, g, o = np.split(gates[t - 1, :n], 4, axis=1)
        dh = d_out[t - 1, :n] + dh_all[:n]                  # ∂E/∂h_t
        if step_norms is not None:
            step_norms[t - 1, :n] = np.sqrt(np.sum(dh * dh, axis=1))
        tanh_c = np.tanh(cs[t, :n])
        do = dh * tanh_c                                    # h_t = o ⊙ tanh(c_t)
        dc = dc_all[:n] + dh * o * (1 - tanh_c * tanh_c)    # ∂E/∂c_t
        di = dc * g                                         # c_t = f ⊙ c_{t-1} + i ⊙ g
        df = dc * cs[t - 1, :n]
        dg = dc * i
        delta = np.concatenate([di * i * (1 - i),           # i = σ(.)
                                df * f * (1 - f),           # f = σ(.)
                                dg * (1 - g * g),           # g = tanh(.)
                                do * o * (1 - o)], axis=1)  # o = σ(.)      δ_t (B, 4H)
        if clip_step is not None:
            delta = _clip_rows(delta, clip_step)
        dw_hh += delta.T @ hs[t - 1, :n]                    # dW_hh += δ_tᵀ h_{t-1}
        _add_input_gradient(dw_ih, delta, x[t - 1, :n])      # dW_ih += δ_tᵀ x_t
        db += delta.sum(axis=0)                             # db += Σ_b δ_t
        if dx is not None:
            dx[t - 1, :n] = delta @ w_ih                        # dx_t = δ_t W_ih
        dh_all[:n] = delta @ w_hh                           # ∂E/∂h_{t-1} through the gates
        dc_all[:n] = dc * f                                 # ∂E/∂c_{t-1}, through f ⊙ c_{t-1}
    return dx, dh_all, dc_all, dw_ih, dw_hh, db


@_products_unflagged
def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes=None):
    """Run a GRU layer over a sequence (PyTorch's cell, gate order r, z, n)::

        r   = σ(x_t W_irᵀ + b_ir + h_{t-1} W_hrᵀ + b_hr)
        z   = σ(x_t W_izᵀ + b_iz + h_{t-1} W_hzᵀ + b_hz)
        hn  = h_{t-1} W_hnᵀ + b_hn
        n   = tanh(x_t W_inᵀ + b_in + r ⊙ hn)
        h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

    x (T, B, I), h0 (B, H), w_ih (3H, I), w_hh (3H, H), b_ih, b_hh (3H,).
    Returns (hs, gates): hs (T+1, B, H) with hs[0] = h0 and hs[t] = h_t; gates (T, B, 4H)
    holds r, z, n, hn of each step. That is the cache the backward pass needs, and no more:
    r, z, n give every gate derivative from saved outputs, and hn (the hidden-side
    pre-activation of n, which r multiplies) is the one intermediate that ∂E/∂r needs and
    that cannot be recovered from the others without redoing the product h_{t-1} W_hnᵀ.
    With ``batch_sizes`` (see the module's docstring), finished rows of gates are zero.
    """
    T, B = x.shape[:2]
    H = w_hh.shape[1]
    hs = np.empty((T + 1, B, H), dtype=w_ih.dtype)
    gates = np.zeros((T, B, 4 * H), dtype=w_ih.dtype)
    hs[0] = h0
    for t in range(1, T + 1):
        n_run = _running(batch_sizes, t - 1, B)
        gi = _project_input(x[t - 1, :n_run], w_ih) + b_ih             # (n, 3H) input side
        gh = hs[t - 1, :n_run] @ w_hh.T + b_hh                          # (n, 3H) hidden side
        r = _sigmoid(gi[:, 0 * H:1 * H] + gh[:, 0 * H:1 * H])           # reset gate
        z = _sigmoid(gi[:, 1 * H:2 * H] + gh[:, 1 * H:2 * H])           # update gate
        hn = gh[:, 2 * H:3 * H]
        n = np.tanh(gi[:, 2 * H:3 * H] + r * hn)                        # candidate state
        hs[t, :n_run] = (1 - z) * n + z * hs[t - 1, :n_run]
        gates[t - 1, :n_run] = np.concatenate([r, z, n, hn], axis=1)
        hs[t, n_run:] = 0                                   # finished sequences
    return hs, gates


@_products_unflagged
def gru_backward(d_out, dh_n, x, hs, gates, w_ih, w_hh, clip_step=None, step_norms=None,
                 batch_sizes=None, need_dx=True, out=None):
    """Backpropagate through a GRU layer run by :func:`gru_forward`.

    d_out (T, B, H): ∂E/∂h_t from above, per step. dh_n (B, H) or None: ∂E/∂h_T from beyond
    the sequence. x, (hs, gates): the forward's input and cache; w_ih, w_hh: its weights.

    Per step two gate gradients flow: δi_t = ∂E/∂(x W_ihᵀ + b_ih) (B, 3H), the input-side
    pre-activations of r, z, n, and δh_t = ∂E/∂(h W_hhᵀ + b_hh) (B, 3H), the hidden-side
    ones. They share their r and z blocks; their n blocks differ by the factor r
    (δh_n = δi_n ⊙ r), which is why db_ih and db_hh differ.
    clip_step: when given, each sequence's row of δi_t is rescaled to L2 norm ``clip_step``
        whenever it is larger, and δh_t is derived from the clipped δi_t, so that both are
        scaled by the same factor: the whole gradient through the step's gates is clipped as
        one, by the norm of ∂E/∂(r, z, n pre-activations). The direct path z ⊙ ∂E/∂h_t back to
        h_{t-1} does not pass through the gates and is not clipped (as the LSTM's cell path).
    step_norms (T, B) or None: when given, filled with ‖∂E/∂h_t‖ of each row (0 where a
        sequence has finished).
    batch_sizes (T,) or None: see the module's docstring.
    need_dx: False (or ids as x) gives dx = None.
    out: None, or (dw_ih, dw_hh, db_ih, db_hh), as :func:`elman_backward`'s.
    Returns (dx (T, B, I), dh0 (B, H), dw_ih (3H, I), dw_hh (3H, H), db_ih (3H,), db_hh (3H,)).
    """
    T, B, H = d_out.shape
    dx = _input_gradient_array(x, need_dx)
    dw_ih, dw_hh, db_ih, db_hh = _weight_gradient_arrays(out, w_ih, w_hh, 2)
    dh_all = np.zeros((B, H), dtype=d_out.dtype) if dh_n is None else dh_n.copy()
    if step_norms is not None:
        step_norms[...] = 0
    for t in range(T, 0, -1):
        m = _running(batch_sizes, t - 1, B)                 # the first m rows ran step t
        r, z, n, hn = np.split(gates[t - 1, :m], 4, axis=1)
        h_prev = hs[t - 1, :m]
        dh = d_out[t - 1, :m] + dh_all[:m]                  # ∂E/∂h_t
        if step_norms is not None:
            step_norms[t - 1, :m] = np.sqrt(np.sum(dh * dh, axis=1))
        dn = dh * (1 - z)                                   # h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
        dz = dh * (h_prev - n)
        dn_pre = dn * (1 - n * n)                           # n = tanh(gi_n + r ⊙ hn)
        dr = dn_pre * hn
        delta_i = np.concatenate([dr * r * (1 - r),         # r = σ(gi_r + gh_r)
                                  dz * z * (1 - z),         # z = σ(gi_z + gh_z)
                                  dn_pre], axis=1)          # δi_t (B, 3H)
        if clip_step is not None:
            delta_i = _clip_rows(delta_i, clip_step)
        delta_h = np.concatenate([delta_i[:, :2 * H],        # gh_r, gh_z enter as gi_r, gi_z do
                                  delta_i[:, 2 * H:] * r],   # gh_n = hn enters as r ⊙ hn
                                 axis=1)                     # δh_t (B, 3H)
        _add_input_gradient(dw_ih, delta_i, x[t - 1, :m])    # dW_ih += δi_tᵀ x_t
        dw_hh += delta_h.T @ h_prev                         # dW_hh += δh_tᵀ h_{t-1}
        db_ih += delta_i.sum(axis=0)                        # db_ih += Σ_b δi_t
        db_hh += delta_h.sum(axis=0)                        # db_hh += Σ_b δh_t
        if dx is not None:
            dx[t - 1, :m] = delta_i @ w_ih                      # dx_t = δi_t W_ih
        dh_all[:m] = delta_h @ w_hh + dh * z                # ∂E/∂h_{t-1}: gates, and z ⊙ h_{t-1}
    return dx, dh_all, dw_ih, dw_hh, db_ih, db_hh


# ============================================================================ the update
#
# Optimizer steps, whole-gradient clipping and losses over flat buffers: the twins of
# _update.pxi and _losses.pxi (same names, same signatures), written as the equations. The
# steps take the per-array path's order of operations in optim.py, so that the fused and the
# per-array paths agree to rounding. Arrays are C-contiguous and checked by the callers.


def flat_span(arrays, base, shapes):
    """Where the arrays, in order, lie end to end inside ``base``: (start, stop), the span
    base[start:stop] they fill, or None when they do not. Each must be C-contiguous,
    writeable, of base's dtype and of the shape in ``shapes`` (a tuple of shape tuples, or
    None for any), and begin where the one before it ends. Anything else gives None, never an
    error."""
    if (not isinstance(base, np.ndarray) or base.ndim != 1 or not base.flags.c_contiguous
            or not base.flags.writeable or not arrays
            or (shapes is not None and len(shapes) != len(arrays))):
        return None
    start = expected = None
    for k, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            return None
        address = a.__array_interface__["data"][0]
        if k == 0:
            start = expected = address
        if not (a.dtype == base.dtype and a.flags.c_contiguous and a.flags.writeable
                and address == expected and (shapes is None or a.shape == tuple(shapes[k]))):
            return None
        expected += a.nbytes
    begin = base.__array_interface__["data"][0]
    if start < begin or expected > begin + base.nbytes or (start - begin) % base.itemsize:
        return None
    return (start - begin) // base.itemsize, (expected - begin) // base.itemsize


def sum_squares(a):
    """Σ a², accumulated in float64."""
    return float(np.square(a, dtype=np.float64).sum())


def scale_inplace(a, s):
    """a *= s in a's dtype."""
    a *= s


def clip_values(a, v):
    """Every element of ``a`` into [-v, v], in place; NaN stays NaN."""
    np.clip(a, -v, v, out=a)


def sgd_step(p, g, velocity, lr, momentum, nesterov, weight_decay, scale):
    """One SGD step, PyTorch's equations (dampening 0), in place on p and velocity (None
    without momentum); g is read only.

        d ← scale·g + weight_decay·p
        b ← momentum·b + d;  d ← d + momentum·b (nesterov) or b      (momentum > 0)
        p ← p - lr·d
    """
    d = p * weight_decay + g * p.dtype.type(scale)
    if velocity is not None:
        velocity *= momentum
        velocity += d
        d = d + velocity * momentum if nesterov else velocity
    p -= d * lr


def adagrad_step(p, g, sum_sq, lr, eps, scale):
    """One Adagrad step (ε inside the root, as min-char-rnn), in place:

        d ← scale·g;  sum_sq ← sum_sq + d²;  p ← p - lr·d / √(sum_sq + eps)
    """
    d = g * p.dtype.type(scale)
    sum_sq += d * d
    p -= (d / np.sqrt(sum_sq + eps)) * lr


def adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, step, scale):
    """One Adam (decoupled=False: L2 decay in the gradient) or AdamW (decoupled=True, as
    torch.optim.AdamW) step t = ``step``, PyTorch's equations, in place:

        p ← p·(1 - lr·weight_decay)                         (AdamW)
        d ← scale·g (+ weight_decay·p for Adam)
        m ← β1·m + (1 - β1)·d;  v ← β2·v + (1 - β2)·d²
        p ← p - lr/(1 - β1ᵗ) · m / (√v / √(1 - β2ᵗ) + eps)
    """
    step_size = lr / (1.0 - beta1 ** step)
    root_bias2 = (1.0 - beta2 ** step) ** 0.5
    d = g * p.dtype.type(scale)
    if decoupled:
        p *= 1.0 - lr * weight_decay
    elif weight_decay:
        d += p * weight_decay
    m *= beta1
    m += d * (1.0 - beta1)
    v *= beta2
    v += (d * d) * (1.0 - beta2)
    p -= (m / (np.sqrt(v) / root_bias2 + eps)) * step_size


def fast_expf(x):
    """e^x of a float32 array (the compiled twin approximates it within 1.3 ulp)."""
    return np.exp(x)


def softmax_cross_entropy(logits, labels, rows, d_out, inv_batch):
    """Softmax cross-entropy of the scored rows, and its gradient.

    logits (N, C); labels (M,) int64; rows (M,) int64, the rows of logits scored (None:
    M = N, every row in order); d_out (N, C) of logits' dtype, where row rows[m] gets
    (softmax - onehot(labels[m])) · inv_batch (other rows are not written).
    Returns (Σ_m -log softmax(logits[rows[m]])[labels[m]], bad): bad is the first m whose
    label lies outside [0, C), in which case nothing is computed, or -1.
    """
    C = logits.shape[1]
    outside = np.flatnonzero((labels < 0) | (labels >= C))
    if outside.size:
        return 0.0, int(outside[0])
    z = logits if rows is None else logits[rows]
    shifted = z - z.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_z                                    # log softmax
    picked = np.arange(len(labels)), labels
    grad = np.exp(log_p)
    grad[picked] -= 1                                          # softmax - onehot
    if rows is None:
        d_out[...] = grad * inv_batch
    else:
        d_out[rows] = grad * inv_batch
    return -float(log_p[picked].sum(dtype=np.float64)), -1


def squared_error(out, target, rows, d_out, two_over_batch):
    """Σ ‖out[rows[m]] - target[m]‖² over the scored rows, and its gradient.

    out (N, O); target (M, O) of out's dtype; rows (M,) int64 or None (every row in order);
    d_out (N, O), where row rows[m] gets (out - target) · two_over_batch (other rows are not
    written). Returns the sum as a float (accumulated in float64).
    """
    diff = (out if rows is None else out[rows]) - target
    with np.errstate(over="ignore"):  # an overflowing loss is returned as inf for the caller to see
        if rows is None:
            d_out[...] = diff * out.dtype.type(two_over_batch)
        else:
            d_out[rows] = diff * out.dtype.type(two_over_batch)
        return float(np.square(diff, dtype=np.float64).sum())


def empty(shape, dtype):
    """np.empty(shape, dtype) in C order (the compiled twin takes large ones from its pool)."""
    return np.empty(shape, dtype=dtype)


__all__ += [
    "adagrad_step",
    "adam_step",
    "clip_values",
    "empty",
    "fast_expf",
    "flat_span",
    "scale_inplace",
    "sgd_step",
    "softmax_cross_entropy",
    "squared_error",
    "sum_squares",
]
