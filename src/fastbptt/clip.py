"""Clipping of whole gradients, in place (per-step clipping lives in ``backward(clip_step=)``)."""
import numpy as np

from ._validation import check_positive_number

__all__ = ["clip_grad_norm", "clip_grad_value"]


def _arrays(grads):
    arrays = list(grads.values()) if isinstance(grads, dict) else list(grads)
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"grads[{i}] must be a floating-point numpy.ndarray, got {type(a).__name__}")
        if not a.flags.writeable:
            raise ValueError(f"grads[{i}] is read-only; clipping works in place")
    return arrays


def sum_squares(a):
    """Σ a², accumulated in float64 (a float32 sum of squares overflows past ~1e19).

    Element-wise NumPy only, on purpose: np.dot would wake numpy's OpenBLAS thread pool,
    whose spinning threads then fight the compiled kernels' (scipy's) pool for the cores
    and slow a training loop several times over.
    """
    return float(np.square(a, dtype=np.float64).sum())


def clip_grad_norm(grads, max_norm):
    """Scale all gradients together so that their joint L2 norm is at most ``max_norm``.

    grads: dict of arrays (``g.params``) or a list of arrays, modified in place.
    Returns the joint norm before clipping (inf or nan when a gradient is not finite, in
    which case nothing is scaled).
    """
    max_norm = check_positive_number("max_norm", max_norm, allow_none=False)
    arrays = _arrays(grads)
    total = float(np.sqrt(sum(sum_squares(a) for a in arrays)))
    if np.isfinite(total) and total > max_norm:
        scale = max_norm / total
        for a in arrays:
            a *= scale
    return total


def clip_grad_value(grads, value):
    """Clip every gradient element into [-value, value], in place."""
    value = check_positive_number("value", value, allow_none=False)
    for a in _arrays(grads):
        np.clip(a, -value, value, out=a)
