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

The callers (``model.py``) validate shapes, dtypes and contiguity; these functions trust them.
"""
import numpy as np

__all__ = [
    "all_finite",
    "elman_backward",
    "elman_forward",
    "linear_backward",
    "linear_forward",
]


def all_finite(a):
    """True when no element of ``a`` is NaN or infinite."""
    return bool(np.isfinite(a).all())


def _activation_derivative(s, relu):
    """f'(pre-activation) from the saved output s = f(pre-activation)."""
    if relu:
        return (s > 0).astype(s.dtype)
    return 1 - s * s


def elman_forward(x, h0, w_ih, w_hh, b_ih, b_hh, relu):
    """Run an Elman layer over a sequence.

    x (T, B, I), h0 (B, H), w_ih (H, I), w_hh (H, H), b_ih (H,), b_hh (H,); relu: bool.
    Returns hs (T+1, B, H) with hs[0] = h0 and hs[t] = s_t: the layer's output is hs[1:],
    its final state hs[T], and hs is the whole cache the backward pass needs.
    """
    T, B, _ = x.shape
    H = w_hh.shape[0]
    hs = np.empty((T + 1, B, H), dtype=x.dtype)
    hs[0] = h0
    for t in range(1, T + 1):
        pre = x[t - 1] @ w_ih.T + b_ih + hs[t - 1] @ w_hh.T + b_hh
        hs[t] = np.maximum(pre, 0) if relu else np.tanh(pre)
    return hs


def elman_backward(d_out, dh_n, x, hs, w_ih, w_hh, relu, clip_step=None, step_norms=None):
    """Backpropagate through an Elman layer run by :func:`elman_forward`.

    d_out (T, B, H): ∂E/∂s_t from above (the readout or the next layer), per step.
    dh_n (B, H) or None: ∂E/∂s_T from beyond the sequence (the caller's d_h_n).
    x, hs: the forward's input and cache; w_ih, w_hh: the weights it ran with.
    clip_step: when given, each sequence's δ_t (one row) is rescaled in place to L2 norm
        ``clip_step`` whenever it is larger, before it flows on to step t-1 and into dW.
    step_norms (T, B) or None: when given, filled with ‖∂E/∂s_t‖ of each row, the
        gradient reaching each step (the vanishing/exploding gradient diagnostic).
    Returns (dx (T, B, I), dh0 (B, H), dw_ih (H, I), dw_hh (H, H), db (H,)); db is the
    gradient of both b_ih and b_hh.
    """
    T, B, H = d_out.shape
    dx = np.empty_like(x)
    dw_ih = np.zeros_like(w_ih)
    dw_hh = np.zeros_like(w_hh)
    db = np.zeros(H, dtype=d_out.dtype)
    ds = np.zeros((B, H), dtype=d_out.dtype) if dh_n is None else dh_n
    for t in range(T, 0, -1):
        ds = d_out[t - 1] + ds                              # ∂E/∂s_t
        if step_norms is not None:
            step_norms[t - 1] = np.sqrt(np.sum(ds * ds, axis=1))
        delta = ds * _activation_derivative(hs[t], relu)     # δ_t
        if clip_step is not None:
            delta = _clip_rows(delta, clip_step)
        dw_hh += delta.T @ hs[t - 1]                        # dW_hh += δ_tᵀ s_{t-1}
        dw_ih += delta.T @ x[t - 1]                         # dW_ih += δ_tᵀ x_t
        db += delta.sum(axis=0)                             # db += Σ_b δ_t
        dx[t - 1] = delta @ w_ih                            # dx_t = δ_t W_ih
        ds = delta @ w_hh                                   # ∂E/∂s_{t-1} through the recurrence
    return dx, ds, dw_ih, dw_hh, db


def _clip_rows(d, max_norm):
    """Rescale each row of d (B, H) whose L2 norm exceeds max_norm down to max_norm."""
    norms = np.sqrt(np.sum(d * d, axis=1, keepdims=True))
    scale = np.where(norms > max_norm, max_norm / np.where(norms > 0, norms, 1), 1)
    return d * scale.astype(d.dtype)


def linear_forward(x, w, b):
    """y = x wᵀ + b: x (M, K), w (N, K), b (N,) -> y (M, N)."""
    return x @ w.T + b


def linear_backward(dy, x, w):
    """Gradients of y = x wᵀ + b: dy (M, N), x (M, K) -> (dx (M, K), dw (N, K), db (N,))."""
    return dy @ w, dy.T @ x, dy.sum(axis=0)
