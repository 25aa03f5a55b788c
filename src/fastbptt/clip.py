"""Clipping of whole gradients, in place (per-step clipping lives in ``backward(clip_step=)``).

When the gradients are the consecutive views of one flat buffer (``g.params`` of ``g.flat``,
in the buffer's order), or that buffer itself, each function is one compiled pass over it
(plus the scaling pass when ``clip_grad_norm`` clips); any other dict or list of arrays is
clipped array by array, with the same result.
"""
import math

import numpy as np

from . import _backend, _reference
from ._validation import FLOAT_DTYPES, check_positive_number

__all__ = ["clip_grad_norm", "clip_grad_value"]


def _arrays(grads):
    """The gradient arrays, checked: floating-point numpy arrays that may be written."""
    if isinstance(grads, np.ndarray):
        arrays = [grads]
    else:
        arrays = list(grads.values()) if isinstance(grads, dict) else list(grads)
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"grads[{i}] must be a floating-point numpy.ndarray, got "
                            f"{a.dtype if isinstance(a, np.ndarray) else type(a).__name__}")
        if not a.flags.writeable:
            raise ValueError(f"grads[{i}] is read-only; clipping works in place")
    return arrays


def _flat(grads):
    """The 1-D float32/float64 span of memory the gradients fill end to end, in their order
    (their base, or a slice of it), or None.
    Checked first and cheaply: the common case then needs no per-array validation."""
    if isinstance(grads, dict):
        arrays = tuple(grads.values())
    elif isinstance(grads, np.ndarray):
        arrays = (grads,)
    else:
        return None
    if not arrays or not isinstance(arrays[0], np.ndarray):
        return None
    first = arrays[0]
    base = first if first.base is None else first.base
    if not isinstance(base, np.ndarray) or base.dtype not in FLOAT_DTYPES:
        return None
    span = (_backend._compiled or _reference).flat_span(arrays, base, None)
    if span is None:
        return None
    return base if span == (0, base.size) else base[span[0]:span[1]]


def sum_squares(a):
    """Σ a², accumulated in float64 (a float32 sum of squares overflows past ~1e19).

    Element-wise NumPy only, on purpose: np.dot would wake numpy's OpenBLAS thread pool,
    whose spinning threads then fight the compiled kernels' (scipy's) pool for the cores
    and slow a training loop several times over.
    """
    return _reference.sum_squares(a)


def clip_grad_norm(grads, max_norm):
    """Scale all gradients together so that their joint L2 norm is at most ``max_norm``.

    grads: dict of arrays (``g.params``), a list of arrays, or one array (``g.flat``),
    modified in place. Returns the joint norm before clipping (inf or nan when a gradient
    is not finite, in which case nothing is scaled).
    """
    max_norm = check_positive_number("max_norm", max_norm, allow_none=False)
    flat = _flat(grads)
    if flat is not None:
        kernels = _backend._compiled or _reference
        total = math.sqrt(kernels.sum_squares(flat))
        if math.isfinite(total) and total > max_norm:
            kernels.scale_inplace(flat, max_norm / total)
        return total
    arrays = _arrays(grads)
    total = math.sqrt(math.fsum(sum_squares(a) for a in arrays))
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / total
        for a in arrays:
            a *= scale
    return total


def clip_grad_value(grads, value):
    """Clip every gradient element into [-value, value], in place."""
    value = check_positive_number("value", value, allow_none=False)
    flat = _flat(grads)
    if flat is not None:
        (_backend._compiled or _reference).clip_values(flat, value)
        return
    for a in _arrays(grads):
        np.clip(a, -value, value, out=a)
