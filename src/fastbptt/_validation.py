"""Checks on arrays crossing the public API.

The compiled kernels run without bounds checks, so everything they receive is checked here
first: type, dtype, shape, finiteness. Errors name the argument and say what was expected.
"""
from collections.abc import Mapping

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_dtype(dtype):
    """np.dtype for 'float32'/'float64' (or the numpy types); anything else is a TypeError."""
    dt = None
    if dtype is not None:  # np.dtype(None) would be float64
        try:
            dt = np.dtype(dtype)
        except TypeError:
            pass
    if dt is None or dt.name not in ("float32", "float64") or not dt.isnative:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dt


def shape_str(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_array(name, a, shape, dtype, *, finite=True, finite_check=None, copy_strided=True):
    """Return ``a`` as a C-contiguous array after checking it; never modifies ``a``.

    shape: a tuple whose entries are ints or None (any size). A strided input is copied into
    contiguous memory when ``copy_strided``, and rejected otherwise (for arrays the model owns
    and updates in place). ``finite_check`` is the backend's ``all_finite``, so the scan runs
    compiled where it can.
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(
            f"{name} must have dtype {dtype}, got {a.dtype}; convert it with .astype(np.{dtype})"
        )
    if a.ndim != len(shape) or any(e is not None and e != s for e, s in zip(shape, a.shape)):
        want = shape_str("*" if e is None else e for e in shape)
        raise ValueError(f"{name} must have shape {want}, got {shape_str(a.shape)}")
    if any(s == 0 for s in a.shape):
        raise ValueError(f"{name} must not be empty, got shape {shape_str(a.shape)}")
    return _contiguous_and_finite(name, a, finite, finite_check, copy_strided)


def _contiguous_and_finite(name, a, finite, finite_check, copy_strided):
    """The checks every array ends with: C order (a copy, or refused) and finite values."""
    if not a.flags.c_contiguous:
        if not copy_strided:
            raise ValueError(f"{name} must be C-contiguous; pass np.ascontiguousarray({name})")
        a = np.ascontiguousarray(a)
    if finite and not (finite_check or _all_finite)(a):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _all_finite(a):
    return bool(np.isfinite(a).all())


def check_positive_number(name, value, *, allow_none=True):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def check_positive_int(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_lengths(lengths, T, B):
    """lengths as an int64 array (B,) with every entry in [1, T]."""
    arr = np.asarray(lengths)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"lengths must hold integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), one length per sequence, got {arr.shape}")
    if arr.min() < 1 or arr.max() > T:
        raise ValueError(f"lengths must lie in [1, {T}] (T, the sequence length), got values in "
                         f"[{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


# ------------------------------------------------------------------ optimizers, losses, clipping


def _shape_spec_str(spec):
    """(T, B, 3) from a shape spec whose entries are ints, names (any size) or None ('*')."""
    return shape_str("*" if e is None else e for e in spec)


def check_float_array(name, a, shape=None, *, finite=True, finite_check=None, copy_strided=True,
                      writeable=False):
    """Return ``a``, a float32 or float64 array, C-contiguous, after checking it; never modifies it.

    shape: None (any shape), or a tuple whose entries are ints, names such as "T" (any size,
    printed in the message: "out must have shape (T, B, O), got (3, 2)") or None. A strided
    input is copied when ``copy_strided``, rejected otherwise (arrays updated in place, which
    is also why ``writeable`` may be demanded). ``finite_check`` as in :func:`check_array`.
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    if shape is not None and (a.ndim != len(shape) or any(
            isinstance(e, int) and e != s for e, s in zip(shape, a.shape))):
        raise ValueError(f"{name} must have shape {_shape_spec_str(shape)}, got {shape_str(a.shape)}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {shape_str(a.shape)}")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name} is read-only; it is updated in place")
    return _contiguous_and_finite(name, a, finite, finite_check, copy_strided)


def check_int_array(name, a, shape):
    """Return ``a``, an integer (not bool) array of ``shape`` (as in :func:`check_float_array`),
    after checking it; never modifies it."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of integers, got {type(a).__name__}")
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {a.dtype}")
    if a.ndim != len(shape) or any(isinstance(e, int) and e != s for e, s in zip(shape, a.shape)):
        raise ValueError(f"{name} must have shape {_shape_spec_str(shape)}, got {shape_str(a.shape)}")
    return a


def check_number(name, value, *, low, high=float("inf"), high_open=True):
    """``value`` as a float in [low, high) (or [low, high] when not ``high_open``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    inside = low <= value < high if high_open else low <= value <= high
    if not (np.isfinite(value) and inside):
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be a finite number in [{low}, {high}{bracket}, got {value!r}")
    return value


def check_choice(name, value, choices):
    """``value`` when it is one of ``choices``; a ValueError listing them otherwise."""
    if not any(isinstance(value, type(c)) and value == c for c in choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(name, value):
    """``value`` as a bool; only True/False (Python's or NumPy's) are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def check_seed(name, value):
    """None, or a non-negative int (a bool is not one)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a non-negative int or None, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int or None, got {value}")
    return int(value)


def check_keys(name, mapping, expected, owner):
    """The keys of ``mapping`` must be exactly ``expected``; the error lists what is missing
    and what is unexpected, both in order."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{name} must be a dict of arrays, got {type(mapping).__name__}")
    if mapping.keys() != set(expected):
        missing = [k for k in expected if k not in mapping]
        extra = [k for k in mapping if k not in expected]
        raise ValueError(f"{name} keys do not match {owner}: missing {missing}, unexpected {extra}")


def check_float_values(name, value, shape):
    """An array of finite floating-point values of ``shape`` (any float dtype: the caller
    converts), e.g. one entry of a state_dict; never modifies ``value``."""
    if value.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {shape_str(shape)}, got {shape_str(value.shape)}")
    if not np.issubdtype(value.dtype, np.floating):
        raise TypeError(f"{name} must hold floating-point values, got dtype {value.dtype}")
    if not _all_finite(value):
        raise ValueError(f"{name} contains NaN or infinite values")
    return value
