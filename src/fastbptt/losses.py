"""Losses over sequences: each returns ``(loss, d_out)``.

The loss is summed over time steps and averaged over the batch, E = (1/B) Σ_b Σ_t E_t, as in
the BPTT equations (the total loss is the sum of the per-step losses). ``d_out`` is ∂E/∂out,
ready for ``model.backward``. With ``last_step=True`` only the final step is scored
(many-to-one): the target holds one step and ``d_out`` is zero elsewhere.

With ``lengths`` (B,), as given to ``model.forward``, sequence b is scored on its first
lengths[b] steps only (its targets past the end are ignored, and may hold any padding), or,
with ``last_step=True``, on its own last step, lengths[b] - 1.

The work runs in the compiled kernels (``softmax_cross_entropy``, ``squared_error``: one
pass per scored row), or in their NumPy twins in ``_reference.py`` without the extension;
this module checks the input and chooses the scored rows.
"""
import numpy as np

from . import _backend, _reference
from ._validation import FLOAT_DTYPES, check_float_array, check_int_array, check_lengths, shape_str

__all__ = ["mse", "cross_entropy"]


def _kernels():
    return _backend._compiled or _reference


def _check_outputs(name, a, dims, all_finite):
    """``a`` (T, B, ·) checked by check_float_array; the common case in a few attribute reads."""
    if (type(a) is np.ndarray and a.ndim == 3 and a.flags.c_contiguous and a.size
            and a.dtype in FLOAT_DTYPES and all_finite(a)):
        return a
    return check_float_array(name, a, dims, finite_check=all_finite)


def _gradient_like(kernels, out, rows):
    """d_out's array, shaped like out: from the kernels' pool (a word-level model's logits are
    tens of MB, which NumPy would map fresh, and the loss fault in, at every step); zeroed
    when only some rows are scored (the loss writes those)."""
    d_out = kernels.empty(out.shape, out.dtype)
    if rows is not None:
        d_out.fill(0)
    return d_out


def _scored_rows(T, B, last_step, lengths):
    """The rows of out.reshape(T·B, O) that are scored, as int64 (None: every row), and
    the (t, b) positions of the targets that go with them (None: all, in order)."""
    if lengths is not None:
        lengths = check_lengths(lengths, T, B)
        if last_step:
            return (lengths - 1) * B + np.arange(B), None
        if lengths.min() == T:
            return None, None
        running = np.arange(T)[:, None] < lengths          # (T, B)
        return np.flatnonzero(running), running
    if last_step:
        return np.arange((T - 1) * B, T * B), None
    return None, None


def mse(out, target, *, last_step=False, lengths=None):
    """Squared error E_t = ‖y_t - target_t‖² per sequence, summed over steps, mean over batch.

    out (T, B, O) float32/float64; target (T, B, O), or (B, O) with ``last_step=True``, any
    real dtype (converted to out's); lengths (B,) or None. Returns (loss, d_out (T, B, O)).
    """
    kernels = _kernels()
    out = _check_outputs("out", out, ("T", "B", "O"), kernels.all_finite)
    T, B, O = out.shape
    rows, running = _scored_rows(T, B, last_step, lengths)
    if not isinstance(target, np.ndarray) or target.dtype.kind not in "fiu":
        got = target.dtype if isinstance(target, np.ndarray) else type(target).__name__
        raise TypeError(f"target must be a numpy.ndarray of real numbers, got {got}")
    want = (B, O) if last_step else (T, B, O)
    if target.shape != want:
        raise ValueError(f"target must have shape {shape_str(want)}, got {shape_str(target.shape)}")
    scored = target.reshape(-1, O) if running is None else target[running]
    if scored.dtype in FLOAT_DTYPES and scored.flags.c_contiguous:
        finite = kernels.all_finite(scored)
    else:
        finite = scored.dtype.kind != "f" or bool(np.isfinite(scored).all())
    if not finite:
        raise ValueError("target contains NaN or infinite values")
    scored = np.ascontiguousarray(scored, dtype=out.dtype)
    d_out = _gradient_like(kernels, out, rows)
    total = kernels.squared_error(out.reshape(T * B, O), scored, rows, d_out.reshape(T * B, O), 2.0 / B)
    return total / B, d_out


def cross_entropy(logits, labels, *, last_step=False, lengths=None):
    """Softmax cross-entropy of integer labels, summed over steps, mean over batch.

    logits (T, B, C) float32/float64; labels int (T, B), or (B,) with ``last_step=True``,
    each scored one in [0, C) (labels past a sequence's length are ignored and may hold
    anything); lengths (B,) or None. Returns (loss, d_out (T, B, C)).
    """
    kernels = _kernels()
    logits = _check_outputs("logits", logits, ("T", "B", "C"), kernels.all_finite)
    T, B, C = logits.shape
    rows, running = _scored_rows(T, B, last_step, lengths)
    check_int_array("labels", labels, (B,) if last_step else (T, B))
    scored = labels.reshape(-1) if running is None else labels[running]
    # uint64 labels past 2^63 wrap to negative int64: still outside [0, C), still caught
    scored64 = np.ascontiguousarray(scored, dtype=np.int64)
    d_out = _gradient_like(kernels, logits, rows)
    total, bad = kernels.softmax_cross_entropy(logits.reshape(T * B, C), scored64, rows,
                                               d_out.reshape(T * B, C), 1.0 / B)
    if bad >= 0:
        raise ValueError(f"labels must lie in [0, {C}), got values in [{scored.min()}, {scored.max()}]")
    return total / B, d_out


# The losses by the names ``fit`` and ``model.train_step`` take.
LOSSES = {"mse": mse, "cross_entropy": cross_entropy}


def resolve(loss):
    """The loss function ``loss`` names ("mse", "cross_entropy"), or ``loss`` itself when
    it is a callable."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)} or a callable, got {loss!r}")
    return LOSSES[loss]


def with_lengths(lengths):
    """The keyword arguments that pass ``lengths`` on to a loss: none without lengths, so
    that a callable loss need not take them."""
    return {} if lengths is None else {"lengths": lengths}
