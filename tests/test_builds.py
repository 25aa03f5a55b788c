"""Every compiled build this CPU runs (baseline, AVX2, AVX-512) against the NumPy oracle.

The backend uses only the widest build, so the others would go untested without this file.
"""
import numpy as np
import pytest

from fastbptt import _backend, _reference

BUILDS = _backend.compiled_builds()
pytestmark = pytest.mark.skipif(not BUILDS, reason="the compiled kernels are not in use (FASTBPTT_PUREPYTHON)")


def _layer(rng, T, B, I, H, dtype):
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    w_ih = (rng.standard_normal((H, I)) / np.sqrt(I)).astype(dtype)
    w_hh = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(dtype)
    b_ih = rng.standard_normal(H).astype(dtype)
    b_hh = rng.standard_normal(H).astype(dtype)
    return x, h0, w_ih, w_hh, b_ih, b_hh


@pytest.mark.parametrize("level", sorted(BUILDS, key=_backend.CPU_LEVELS.index))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(7, 1, 5, 100), (6, 3, 4, 9), (3, 32, 17, 128)])
def test_build_matches_oracle(level, dtype, relu, shape, tol):
    kernels = BUILDS[level]
    rng = np.random.default_rng(sum(shape) + relu)
    T, B, I, H = shape
    x, h0, w_ih, w_hh, b_ih, b_hh = _layer(rng, T, B, I, H, dtype)
    expected = _reference.elman_forward(x, h0, w_ih, w_hh, b_ih, b_hh, relu)
    hs = kernels.elman_forward(x, h0, w_ih, w_hh, b_ih, b_hh, relu)
    np.testing.assert_allclose(hs, expected, **tol(dtype))

    d_out = rng.standard_normal((T, B, H)).astype(dtype)
    dh_n = rng.standard_normal((B, H)).astype(dtype)
    norms_ref = np.empty((T, B), dtype)
    norms = np.empty((T, B), dtype)
    ref = _reference.elman_backward(d_out, dh_n, x, expected, w_ih, w_hh, relu, 0.5, norms_ref)
    got = kernels.elman_backward(d_out, dh_n, x, expected, w_ih, w_hh, relu, 0.5, norms)
    for name, a, b in zip(("dx", "dh0", "dw_ih", "dw_hh", "db"), got, ref):
        np.testing.assert_allclose(a, b, err_msg=f"{level} {name}", **tol(dtype))
    np.testing.assert_allclose(norms, norms_ref, **tol(dtype))


def test_widest_allowed_build_is_the_one_in_use():
    allowed = [level for level in BUILDS if _backend.CPU_LEVELS.index(level) <= _backend._cpu_cap()]
    widest = max(allowed, key=_backend.CPU_LEVELS.index)
    assert _backend.compiled_level == widest
    assert _backend._compiled is BUILDS[widest]
