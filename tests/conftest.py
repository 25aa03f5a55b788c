"""Shared test configuration: the tolerances, seeded rngs, and the backend parametrisation.

Every numerical tolerance of the suite is stated in this file and nowhere else.

The suite runs in two modes (see .ci/run):

* compiled (the default): the compiled kernels must import, or the run stops at once with an
  error -- a broken build must never pass quietly as the NumPy fallback;
* ``FASTBPTT_PUREPYTHON=1``: the NumPy backend alone; tests of the compiled backend are
  skipped, saying why.

Test modules are imported with ``--import-mode=importlib`` (pyproject.toml), so they cannot
import this file: the tolerances come as fixtures (``assert_close``, ``assert_close_to_math``,
``tol``, ``math_tol``, ``fd``, ``estimate_tol``), as do the parametrisations (``backend``,
``compiled_backend``, ``compiled_kernels``, ``dtype``, ``rng``). Everything else they share is
in ``_support.py`` beside this file, which they import (this file puts the folder on
``sys.path``); its layer builders are fixtures too (``layer_arrays``, ``run_layer``,
``random_state``).

A comparison takes its tolerance by kind -- ``tol(dtype, kind)`` or ``assert_close(..., kind=)``,
with ``kind`` a key of TOLERANCES below -- and never states a number of its own.
"""
import os
import sys
import zlib
from types import MappingProxyType

import numpy as np
import pytest

import fastbptt as fb
from fastbptt import _backend

# The test-support module beside this file, importable from every test module in pytest's
# importlib import mode (which does not put this folder on sys.path) as in the prepend mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _support  # noqa: E402

PUREPYTHON = os.environ.get("FASTBPTT_PUREPYTHON", "") not in ("", "0")
PURE_REASON = "FASTBPTT_PUREPYTHON is set: only the NumPy backend is under test"

# Compiled kernels against the NumPy oracle, per dtype. ``atol`` is relative to the largest
# magnitude of the expected array (times max(1, max|expected|)): a weight gradient sums T·B
# products, and cancellation leaves some of its elements far smaller than the terms, so
# their error is set by the terms, not by themselves.
#
# float32: the compiled tanh is a clamped rational approximation (<= 6 ulp, 3.6e-7 relative)
#   and the gemms sum in another order than NumPy's; through tens of steps of recurrence and
#   the backward sweep, 600 random layers (T <= 50, H <= 80, tanh and relu, with clipping)
#   needed at most atol 3e-6 (scaled) with rtol 0, or rtol 1.8e-4 at atol 1e-6.
#   rtol 1e-4 with atol 1e-5 leaves a 3x margin on both.
# float64: libm tanh on both sides, only the summation order differs: the same 600 layers
#   needed rtol 6e-14 at atol 1e-15; 1e-11 / 1e-13 leaves two orders of magnitude.
TOL = {
    np.dtype(np.float32): dict(rtol=1e-4, atol=1e-5),
    np.dtype(np.float64): dict(rtol=1e-11, atol=1e-13),
}

# LSTM and GRU compiled kernels against the NumPy oracle, and the compiled model against the NumPy
# model: longer chains of σ and tanh than the Elman cell's. Same ``atol`` scaling as TOL.
# float32: tanh_fast (<= 6 ulp) and σ built on it, and other summation orders than NumPy's; the
#   kernel tests' shapes need about 2e-6 (scaled), so atol 3e-5 leaves a 10x margin.
# float64: libm tanh on both sides, only the summation order differs (about 2e-15).
GATED_TOL = {
    np.dtype(np.float32): dict(rtol=3e-4, atol=3e-5),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
}

# A result against the same formula computed independently in float64 (a loss, one step of
# clipping, the linear layer, a few steps of the cell, W Wᵀ = I, a clipped norm): only the result
# dtype's own rounding, over a handful of operations, separates them. The relative part also
# serves as the slack of inequalities that hold in exact arithmetic (|w| <= 1/√H, ...).
# Same ``atol`` scaling as TOL.
MATH_TOL = {
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13),
}

# The same computation with its sums taken in other pieces or in another order: checkpointed
# segments against full BPTT, truncated windows summed against full BPTT, a batch against its rows
# one by one, a recorded loss against the loss recomputed. No approximation differs, only where
# the rounding falls: the suite's cases need under a third of it in float32 and a twentieth in
# float64 (with atol unscaled).
SPLIT_TOL = {
    np.dtype(np.float32): dict(rtol=2e-5, atol=2e-6),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-14),
}

# The float64 oracle and model against torch.nn.LSTM / torch.nn.GRU in float64: the same math, so
# only rounding differs (σ is ½(1 + tanh(v/2)) here and 1/(1 + e^{-v}) in torch).
# TORCH_STATE_TOL: the states (out, h_n, c_n), a few steps of the cell; the suite's cases need
#   about 1% of it.
# TORCH_TOL: the gradients, sums of T·B products; the suite's cases need under 0.1% of it.
TORCH_STATE_TOL = {np.dtype(np.float64): dict(rtol=1e-12, atol=1e-14)}
TORCH_TOL = {np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12)}

# A float64 constant against an expression equal to it in exact arithmetic, of a couple of
# operations (1/6 against 2·(1/12), a baseline against its formula): a few ulp (2.2e-16) at most.
ULP_TOL = {np.dtype(np.float64): dict(rtol=1e-15, atol=0.0)}

# Central finite differences, always in float64: step FD_EPS, truncation error ~ eps²·f''' and
# rounding error ~ 1e-16·|E|/eps ~ 1e-9 for the losses of the small problems used (|E| ~ 10).
FD_EPS = 1e-6
FD_TOL = dict(rtol=1e-6, atol=1e-7)
# The float64 LSTM/GRU oracle against central differences (step FD_EPS) on single small layers,
# atol scaled as in TOL: truncation error ~ eps²·|E'''| and rounding error ~ 1e-16·|E|/eps are
# both ~1e-10 there.
GATED_FD_TOL = {np.dtype(np.float64): dict(rtol=1e-6, atol=1e-8)}

# The other way round: the guard that an effect took place (the clip clipped),
# ``assert not np.allclose(a, b, **tol(dtype, "effect"))``. Far above every rounding tolerance
# above, so that a difference outside it is no rounding and the comparison it guards is not void.
EFFECT_TOL = {
    np.dtype(np.float32): dict(rtol=1e-2, atol=1e-3),
    np.dtype(np.float64): dict(rtol=1e-2, atol=1e-3),
}

# Two MPI ranks, each on its block of every batch, against one process on the whole batches
# (tests/test_distributed.py): the ranks' gradients are summed by MPI instead of inside one
# gemm, and the global loss's 1/B reaches d_out as 1/B_r times B_r/B. Through a few Adam
# updates, whose step g/√v magnifies the rounding of elements with tiny gradients, the cases
# need at most 4e-13; 1e-10 (the bound) leaves two orders of magnitude.
DISTRIBUTED_TOL = {np.dtype(np.float64): dict(rtol=1e-10, atol=1e-10)}

# onnxruntime running an exported model against ``forward``, float32 (the graph's only dtype;
# a float64 model's expected values are cast): another implementation of the same math (its own
# sigmoid, tanh and gemm), so the bound, 1e-4 scaled by the largest magnitude (atol
# only; assert_close scales atol by max(1, max|expected|)). The suite's combinations need about
# 3e-7, so a wrong gate order or a missing linear_before_reset (errors of order 0.1) fails it.
ONNX_TOL = {np.dtype(np.float32): dict(rtol=0.0, atol=1e-4)}

# Integer ids against their one-hot rows, float64, same backend: the gather adds the same
# products as the one-hot gemm minus exact zeros, so only the gemm's blocking of the sum (and
# the scatter's order against the gemm's) can differ; the bound, 1e-12 (assert_close
# scales atol by max(1, max|expected|)). A wrong column, a missed repeated id or a dropped
# bias is of order 0.1 and fails it.
IDS_TOL = {np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12)}

# Every tolerance above by the kind of comparison it serves: ``tol(dtype, kind)``.
TOLERANCES = {
    "oracle": TOL,
    "gated": GATED_TOL,
    "math": MATH_TOL,
    "split": SPLIT_TOL,
    "torch_states": TORCH_STATE_TOL,
    "torch": TORCH_TOL,
    "ulp": ULP_TOL,
    "gated_fd": GATED_FD_TOL,
    "effect": EFFECT_TOL,
    "distributed": DISTRIBUTED_TOL,
    "onnx": ONNX_TOL,
    "ids": IDS_TOL,
}

# Estimates from random samples, and one approximation, against the value they approach: the
# bound is set by a sampling or an approximation error, not by rounding. Named by their test.
ESTIMATE_TOL = {
    # The first Adam step lr·g/(|g| + eps) against lr·sign(g), relative: off by eps/|g| = 1e-5 for
    # the test's smallest |g| (1e-3, eps 1e-8), plus float32 rounding.
    "adam_first_step_rtol": 1e-4,
    # 1e5 values of U(0, 1), mean 1/2 and variance 1/12: standard errors near 1e-3 and 2.4e-4.
    "uniform_mean_abs": 0.005,
    "uniform_variance_abs": 0.003,
    # The MSE of the constant answer 1 on 4e5 adding-problem targets: (s - 1)² has a standard
    # deviation near 0.2, so the standard error is 3e-4.
    "adding_baseline_mse_abs": 2e-3,
    # The frequency of each of 5 symbols over 4e4 draws: standard error √(0.2·0.8/4e4) = 2e-3.
    "symbol_frequency_abs": 0.01,
    # The cross-entropy per step of the memoryless model fitted on 4e4 sequences and scored on
    # 4e4 others, against copy_memory_baseline, relative.
    "memoryless_cross_entropy_rtol": 0.01,
    # The frequency of each of 6 tokens over 4000 draws from a language model's softmax, against
    # its probability: standard error at most √(0.25/4000) = 8e-3, so 0.035 is over 4 of them.
    "sampled_frequency_abs": 0.035,
}


def tol(dtype, kind="oracle"):
    """The tolerance dict(rtol=, atol=) of comparison ``kind`` (a key of TOLERANCES) for ``dtype``."""
    table = TOLERANCES[kind]
    dt = np.dtype(dtype)
    if dt not in table:
        raise KeyError(f"no {kind!r} tolerance for {dt}")
    return dict(table[dt])


def math_tol(dtype):
    """The tolerance dict(rtol=, atol=) of a ``dtype`` result against float64 math."""
    return tol(dtype, "math")


def assert_close(actual, expected, dtype, name, *, kind="oracle"):
    """Compare a result with its reference at the ``kind`` tolerance of ``dtype`` (TOLERANCES).

    ``actual`` must have exactly ``dtype`` and the shape of ``expected`` (a float32 result
    computed in float64 and cast, or the reverse, fails here); NaNs never compare equal.
    ``atol`` is scaled by max(1, max|expected|), as explained at TOL.
    """
    dt = np.dtype(dtype)
    assert isinstance(actual, np.ndarray), f"{name}: expected an ndarray, got {type(actual).__name__}"
    expected = np.asarray(expected)
    assert actual.dtype == dt, f"{name}: dtype {actual.dtype}, expected {dt}"
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape}, expected {expected.shape}"
    t = tol(dt, kind)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=t["rtol"], atol=t["atol"] * scale,
                               equal_nan=False, err_msg=name)


def assert_close_to_math(actual, expected, dtype, name):
    """``assert_close`` at MATH_TOL: ``expected`` is the formula evaluated in float64."""
    assert_close(actual, expected, dtype, name, kind="math")


# --------------------------------------------------------------------------- session hooks


def pytest_configure(config):
    if not PUREPYTHON and "cython" not in fb.available_backends():
        pytest.exit(
            "fastbptt's compiled extension did not import "
            f"({_backend._import_error}); the tests will not pass the NumPy fallback off as "
            "the compiled backend. Build it in place (python setup.py build_ext --inplace), "
            "or set FASTBPTT_PUREPYTHON=1 to test the NumPy backend alone.",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


def pytest_report_header(config):
    level = _backend.compiled_level
    mode = "FASTBPTT_PUREPYTHON=1 (NumPy backend only)" if PUREPYTHON else f"compiled build {level!r}"
    return f"fastbptt {fb.__version__}: backends {fb.available_backends()}, {mode}"


# --------------------------------------------------------------------------- parametrisations

_CYTHON = pytest.param("cython", id="cython", marks=pytest.mark.skipif(PUREPYTHON, reason=PURE_REASON))
BACKENDS = [pytest.param("numpy", id="numpy"), _CYTHON]
DTYPES = [pytest.param(np.dtype(np.float32), id="float32"),
          pytest.param(np.dtype(np.float64), id="float64")]


@pytest.fixture(params=BACKENDS, scope="session")
def backend(request):
    """Each backend name; 'cython' is skipped only in FASTBPTT_PUREPYTHON mode."""
    return request.param


@pytest.fixture(params=[_CYTHON], scope="session")
def compiled_backend(request):
    """'cython', for tests that compare the compiled backend with the oracle."""
    return request.param


@pytest.fixture(scope="session")
def compiled_kernels(compiled_backend):
    """The compiled kernel module the 'cython' backend uses (the widest build this CPU runs)."""
    name, module = _backend.resolve(compiled_backend)
    assert name == "cython"
    return module


@pytest.fixture(params=DTYPES, scope="session")
def dtype(request):
    return request.param


# --------------------------------------------------------------------------- helpers as fixtures


@pytest.fixture
def restore_threads():
    """Put fastbptt's thread count back as it was after a test that sets it."""
    before = fb.get_num_threads()
    yield
    fb.set_num_threads(before)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: reproducible, and different for every test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(name="assert_close", scope="session")
def _assert_close_fixture():
    return assert_close


@pytest.fixture(name="tol", scope="session")
def _tol_fixture():
    return tol


@pytest.fixture(name="assert_close_to_math", scope="session")
def _assert_close_to_math_fixture():
    return assert_close_to_math


@pytest.fixture(name="math_tol", scope="session")
def _math_tol_fixture():
    return math_tol


@pytest.fixture(scope="session")
def fd():
    """Finite-difference settings: dict(eps=, rtol=, atol=)."""
    return dict(eps=FD_EPS, **FD_TOL)


@pytest.fixture(scope="session")
def estimate_tol():
    """ESTIMATE_TOL: the bounds of sampled estimates and of an approximation, by name (read-only)."""
    return MappingProxyType(ESTIMATE_TOL)


@pytest.fixture(name="layer_arrays", scope="session")
def _layer_arrays_fixture():
    """The suite's one builder of random layers (``_support.layer_arrays``)."""
    return _support.layer_arrays


@pytest.fixture(name="run_layer", scope="session")
def _run_layer_fixture():
    return _support.run_layer


@pytest.fixture(name="random_state", scope="session")
def _random_state_fixture():
    return _support.random_state
