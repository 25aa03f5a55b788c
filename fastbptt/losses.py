"""Losses over sequences: each returns ``(loss, d_out)``.

The loss is summed over time steps and averaged over the batch, E = (1/B) Σ_b Σ_t E_t, as in
the BPTT equations (the total loss is the sum of the per-step losses). ``d_out`` is ∂E/∂out,
ready for ``model.backward``. With ``last_step=True`` only the final step is scored
(many-to-one): the target holds one step and ``d_out`` is zero elsewhere.
"""
import numpy as np

from ._validation import FLOAT_DTYPES

__all__ = ["mse", "cross_entropy"]


def _check_out(name, out):
    if not isinstance(out, np.ndarray) or out.dtype not in FLOAT_DTYPES:
        got = out.dtype if isinstance(out, np.ndarray) else type(out).__name__
        raise TypeError(f"{name} must be a float32 or float64 numpy.ndarray, got {got}")
    if out.ndim != 3 or 0 in out.shape:
        raise ValueError(f"{name} must have shape (T, B, O), got {out.shape}")
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def mse(out, target, *, last_step=False):
    """Squared error E_t = ‖y_t - target_t‖² per sequence, summed over steps, mean over batch.

    out (T, B, O); target (T, B, O), or (B, O) with ``last_step=True``.
    """
    _check_out("out", out)
    T, B, O = out.shape
    scored = out[-1] if last_step else out
    if not isinstance(target, np.ndarray) or not np.issubdtype(target.dtype, np.number):
        raise TypeError(f"target must be a numeric numpy.ndarray, got {type(target).__name__}")
    if target.shape != scored.shape:
        raise ValueError(f"target must have shape {scored.shape}, got {target.shape}")
    if not np.isfinite(target).all():
        raise ValueError("target contains NaN or infinite values")
    diff = scored - target.astype(out.dtype, copy=False)
    with np.errstate(over="ignore"):  # an overflowing loss is returned as inf for the caller to see
        loss = float(np.sum(diff * diff)) / B
    d_out = np.zeros_like(out)
    if last_step:
        d_out[-1] = diff * (2.0 / B)
    else:
        d_out[...] = diff * (2.0 / B)
    return loss, d_out


def cross_entropy(logits, labels, *, last_step=False):
    """Softmax cross-entropy of integer labels, summed over steps, mean over batch.

    logits (T, B, C); labels int (T, B), or (B,) with ``last_step=True``, each in [0, C).
    """
    _check_out("logits", logits)
    T, B, C = logits.shape
    scored = logits[-1:] if last_step else logits
    want = (B,) if last_step else (T, B)
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        got = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise TypeError(f"labels must be an integer numpy.ndarray, got {got}")
    if labels.shape != want:
        raise ValueError(f"labels must have shape {want}, got {labels.shape}")
    if labels.min() < 0 or labels.max() >= C:
        raise ValueError(f"labels must lie in [0, {C}), got values in [{labels.min()}, {labels.max()}]")
    labels = labels.reshape(scored.shape[:2])
    shifted = scored - scored.max(axis=2, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=2, keepdims=True))
    log_p = shifted - log_z
    picked = np.take_along_axis(log_p, labels[..., None], axis=2)
    loss = -float(picked.sum()) / B
    grad = np.exp(log_p)
    np.put_along_axis(grad, labels[..., None], np.take_along_axis(grad, labels[..., None], axis=2) - 1, axis=2)
    d_out = np.zeros_like(logits)
    d_out[-scored.shape[0]:] = grad / B
    return loss, d_out
