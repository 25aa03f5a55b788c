"""Losses over sequences: each returns ``(loss, d_out)``.

The loss is summed over time steps and averaged over the batch, E = (1/B) Σ_b Σ_t E_t, as in
the BPTT equations (the total loss is the sum of the per-step losses). ``d_out`` is ∂E/∂out,
ready for ``model.backward``. With ``last_step=True`` only the final step is scored
(many-to-one): the target holds one step and ``d_out`` is zero elsewhere.

With ``lengths`` (B,), as given to ``model.forward``, sequence b is scored on its first
lengths[b] steps only (its targets past the end are ignored, and may hold any padding), or,
with ``last_step=True``, on its own last step, lengths[b] - 1.
"""
import numpy as np

from ._validation import FLOAT_DTYPES, check_lengths

__all__ = ["mse", "cross_entropy"]


def _check_out(name, out):
    if not isinstance(out, np.ndarray) or out.dtype not in FLOAT_DTYPES:
        got = out.dtype if isinstance(out, np.ndarray) else type(out).__name__
        raise TypeError(f"{name} must be a float32 or float64 numpy.ndarray, got {got}")
    if out.ndim != 3 or 0 in out.shape:
        raise ValueError(f"{name} must have shape (T, B, O), got {out.shape}")
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _scoring(out, last_step, lengths):
    """(scored, running, place): the scored outputs (S, B, O) with S = 1 for last_step;
    running (S, B) bool, True where a step is scored (None: everywhere); place(d) puts the
    gradient of scored back into a zero array shaped like out."""
    T, B, _ = out.shape
    if lengths is not None:
        lengths = check_lengths(lengths, T, B)
    if last_step:
        rows = np.full(B, T - 1) if lengths is None else lengths - 1
        columns = np.arange(B)

        def place(d):
            d_out = np.zeros_like(out)
            d_out[rows, columns] = d[0]
            return d_out
        return out[rows, columns][None], None, place
    running = None if lengths is None else np.arange(T)[:, None] < lengths
    return out, running, lambda d: d


def mse(out, target, *, last_step=False, lengths=None):
    """Squared error E_t = ‖y_t - target_t‖² per sequence, summed over steps, mean over batch.

    out (T, B, O); target (T, B, O), or (B, O) with ``last_step=True``; lengths (B,) or None.
    """
    _check_out("out", out)
    B = out.shape[1]
    scored, running, place = _scoring(out, last_step, lengths)
    if not isinstance(target, np.ndarray) or not np.issubdtype(target.dtype, np.number):
        raise TypeError(f"target must be a numeric numpy.ndarray, got {type(target).__name__}")
    want = scored.shape[1:] if last_step else scored.shape
    if target.shape != want:
        raise ValueError(f"target must have shape {want}, got {target.shape}")
    target = target.reshape(scored.shape)
    if not np.isfinite(target if running is None else target[running]).all():
        raise ValueError("target contains NaN or infinite values")
    diff = scored - target.astype(out.dtype, copy=False)
    if running is not None:
        diff = np.where(running[..., None], diff, 0).astype(out.dtype, copy=False)
    with np.errstate(over="ignore"):  # an overflowing loss is returned as inf for the caller to see
        loss = float(np.sum(diff * diff)) / B
    return loss, place(diff * (2.0 / B))


def cross_entropy(logits, labels, *, last_step=False, lengths=None):
    """Softmax cross-entropy of integer labels, summed over steps, mean over batch.

    logits (T, B, C); labels int (T, B), or (B,) with ``last_step=True``, each in [0, C);
    lengths (B,) or None.
    """
    _check_out("logits", logits)
    T, B, C = logits.shape
    scored, running, place = _scoring(logits, last_step, lengths)
    want = (B,) if last_step else (T, B)
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        got = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise TypeError(f"labels must be an integer numpy.ndarray, got {got}")
    if labels.shape != want:
        raise ValueError(f"labels must have shape {want}, got {labels.shape}")
    labels = labels.reshape(scored.shape[:2])
    checked = labels if running is None else labels[running]
    if checked.min() < 0 or checked.max() >= C:
        raise ValueError(f"labels must lie in [0, {C}), got values in [{checked.min()}, {checked.max()}]")
    if running is not None:
        labels = np.where(running, labels, 0)       # past the end: any valid index, masked below
    shifted = scored - scored.max(axis=2, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=2, keepdims=True))
    log_p = shifted - log_z
    picked = np.take_along_axis(log_p, labels[..., None], axis=2)
    grad = np.exp(log_p)
    np.put_along_axis(grad, labels[..., None], np.take_along_axis(grad, labels[..., None], axis=2) - 1, axis=2)
    if running is not None:
        picked = np.where(running[..., None], picked, 0)
        grad = np.where(running[..., None], grad, 0).astype(logits.dtype, copy=False)
    loss = -float(picked.sum()) / B
    return loss, place(grad / B)
