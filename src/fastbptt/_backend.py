"""Choosing between the compiled kernels and their NumPy twins.

Both modules expose the same layer functions (see ``_reference.py``); the model asks this
module for one of them by name and never knows which it got. ``FASTBPTT_PUREPYTHON=1`` in the
environment forces the NumPy backend, as if the extension had not been built.

The compiled kernels come in up to three builds of one source (baseline, AVX2, AVX-512; see
setup.py). The widest one this CPU runs is used; ``FASTBPTT_CPU=baseline|avx2|avx512`` caps
the choice, for testing each build or ruling one out.
"""
import importlib
import os
import warnings

from . import _reference

PUREPYTHON = os.environ.get("FASTBPTT_PUREPYTHON", "") not in ("", "0")
CPU_LEVELS = ("baseline", "avx2", "avx512")


def _cpu_cap():
    cap = os.environ.get("FASTBPTT_CPU", "avx512") or "avx512"
    if cap not in CPU_LEVELS:
        raise ImportError(f"FASTBPTT_CPU must be one of {CPU_LEVELS}, got {cap!r}")
    return CPU_LEVELS.index(cap)


def compiled_builds():
    """{level: module} of the compiled builds this CPU can run (empty when not compiled)."""
    if PUREPYTHON:
        return {}
    try:
        baseline = importlib.import_module("._kernels", __package__)
    except ImportError:
        return {}
    builds = {"baseline": baseline}
    for level in baseline.cpu_features():  # only levels the CPU runs: importing is safe
        try:
            builds[level] = importlib.import_module(f"._kernels_{level}", __package__)
        except ImportError:  # not built on this platform
            pass
    return builds


_compiled = None
_import_error = None
compiled_level = None
if PUREPYTHON:
    _import_error = "FASTBPTT_PUREPYTHON is set in the environment"
else:
    try:
        from . import _kernels  # noqa: F401  (the import error, if any, is the message)
    except ImportError as exc:  # the extension was not built
        _import_error = f"{type(exc).__name__}: {exc}"
    else:
        _usable = {level: m for level, m in compiled_builds().items()
                   if CPU_LEVELS.index(level) <= _cpu_cap()}
        compiled_level = max(_usable, key=CPU_LEVELS.index)
        _compiled = _usable[compiled_level]

_warned = False

BACKENDS = ("auto", "cython", "numpy")


def available_backends():
    """The backends this installation can run: ('cython', 'numpy') when compiled."""
    return ("cython", "numpy") if _compiled is not None else ("numpy",)


def describe():
    """One line for a person: which backend and build runs, on how many threads, and when it
    is the NumPy fallback, why and what to do about it."""
    if _compiled is not None:
        return (f"backend: cython ({compiled_level} build), {_compiled.threads()} "
                f"thread{'s' if _compiled.threads() != 1 else ''}")
    if PUREPYTHON:
        return "backend: numpy, because FASTBPTT_PUREPYTHON is set (unset it for the compiled kernels)"
    return (f"backend: numpy -- the compiled kernels did not import ({_import_error}), so this "
            "runs the NumPy fallback, several times slower. Fix: reinstall with a C compiler "
            "(pip install --force-reinstall .) and run Python from outside a source tree that "
            "lacks the built extension")


def resolve(backend):
    """Map a backend name to (name, module); 'auto' prefers the compiled kernels."""
    global _warned
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numpy":
        return "numpy", _reference
    if _compiled is not None:
        return "cython", _compiled
    if backend == "cython":
        raise ImportError(
            "backend='cython' was requested but the compiled kernels are not available "
            f"({_import_error}); reinstall fastbptt with a C compiler, or use backend='numpy'"
        )
    if not _warned and not PUREPYTHON:
        warnings.warn(
            f"fastbptt's compiled kernels are not available ({_import_error}); "
            "falling back to the much slower NumPy backend",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned = True
    return "numpy", _reference


_numpy_threads = 1


def set_num_threads(n):
    """Set how many threads the compiled float32 kernels run on (their OpenMP team), for the
    kernels this Python thread calls; n ≥ 1. Results do not depend on it (the same bits on
    any number of threads). With the NumPy backend only the number is kept."""
    global _numpy_threads
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    n = int(n.__index__())
    if n < 1:
        raise ValueError(f"set_num_threads: n must be at least 1, got {n}")
    if _compiled is not None:
        _compiled.set_num_threads(n)
    _numpy_threads = n


def get_num_threads():
    """How many threads the compiled kernels run on when called from this Python thread
    (OMP_NUM_THREADS, threadpoolctl or ``set_num_threads``); with NumPy, the number set."""
    return _compiled.threads() if _compiled is not None else _numpy_threads
